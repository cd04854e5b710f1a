"""Gather, then decide: one consistent :class:`Snapshot` of what the decision needs about one DatabaseMigration
(the resource, its Jobs, the result of its finished current Job, its Secrets and its database Lease), read
before :func:`schemagate.core.decide.decide` runs, as CloudNativePG's reconciler gathers its ``managedResources``.

Synchronous: the reconciler runs :func:`gather` in a worker thread. No Kopf here; Kubernetes only through
:class:`schemagate.k8s.Kube` (which raises ``KubernetesApiError`` and its subclasses, :mod:`schemagate.contract.errors`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from typing import Any, cast

from schemagate import k8s
from schemagate.core.decide import JobObs, Observed, RetryPolicy, result_wanted, settled
from schemagate.core.lease import MIGRATION_KIND, Holder
from schemagate.core.model import Migration
from schemagate.core.status import MigrationStatus


@dataclass(frozen=True)
class Snapshot:
    """One DatabaseMigration as observed: its body, the parsed spec, its status (a copy), what ``decide`` needs
    (``observed``; ``observed.lock.name`` is the database Lease) and this resource's Lease holder id
    (``<namespace>/<name>/<uid>``)."""

    body: dict[str, Any]
    migration: Migration
    status: MigrationStatus
    observed: Observed
    holder: str

    @property
    def lease(self) -> str:
        return self.observed.lock.name


def holder_id(m: Migration) -> str:
    """The Lease ``holderIdentity`` of a DatabaseMigration: ``<namespace>/<name>/<uid>``
    (:class:`schemagate.core.lease.Holder`)."""
    return Holder(MIGRATION_KIND, m.namespace, m.name, m.uid).id


def observe_jobs(kube: k8s.Kube, ns: str, m: Migration, status: MigrationStatus) -> tuple[JobObs, ...]:
    """The resource's Jobs; the termination message is read only for the Job whose result ``decide`` wants
    (:func:`schemagate.core.decide.result_wanted`) and only once it has finished. While that Job is active, its
    pod is looked at: one that can never start marks it ``stuck`` (``k8s.Kube.job_stuck``: reason and message)."""
    wanted = result_wanted(status)
    out = []
    for job in kube.list_jobs(ns, m.uid):
        name = job["metadata"]["name"]
        obs = k8s.job_observation(job)
        if wanted and name == wanted and obs.state != k8s.ACTIVE:
            obs = k8s.job_observation(job, *kube.job_result(ns, wanted))
        elif obs.active and name == wanted:
            stuck = kube.job_stuck(ns, name)
            if stuck:  # still active: decide fails the step and asks for the Job to be stopped (Action.stop)
                obs = replace(obs, reason=stuck[0], message=stuck[1], stuck=True)
        out.append(obs)
    return tuple(out)


def gather(kube: k8s.Kube, ns: str, name: str, lease_namespace: str, policy: RetryPolicy,
           now: _dt.datetime | None = None) -> Snapshot | None:
    """Read everything ``decide`` needs for ``ns/name``; None when the resource does not exist.

    The Secrets are read (and the Lease name derived from the database identity) unless the run has settled
    and the status already names its Lease. Raises ``KubernetesApiError`` (or a subclass) on API failures."""
    body = kube.get_migration(ns, name)
    if body is None:
        return None
    m = Migration.from_body(body)
    status = cast(MigrationStatus, dict(body.get("status") or {}))
    jobs = observe_jobs(kube, ns, m, status)
    secret_error: str | None = None
    lease = (status.get("run") or {}).get("lease")
    if not settled(m, status) or not lease:
        secret_error, identity = kube.check_database_secret(ns, m.database)
        lease = k8s.lease_name(identity)
    me = holder_id(m)
    lock = kube.lease_state(lease_namespace, lease, me)
    observed = Observed(now=now or _dt.datetime.now(_dt.timezone.utc), jobs=jobs, secret_error=secret_error,
                        lock=lock, policy=policy)
    return Snapshot(body=body, migration=m, status=status, observed=observed, holder=me)
