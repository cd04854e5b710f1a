"""The DatabaseRestore controller's passes: observe → :func:`schemagate.core.restore.decide_restore` → apply.

No Kopf here (``schemagate.handlers`` registers the watches and calls :meth:`Restorer.trigger`); Kubernetes only
through :class:`schemagate.k8s.Kube`, whose blocking calls run in the reconciler's thread pool. Passes of one
DatabaseRestore never overlap (one lock per object). Apply order: database Lease acquire (``replace: true``; a lost
race writes nothing and looks again), status merge patch (with ``resourceVersion``: a stale pass gets
:class:`~schemagate.contract.errors.Conflict` and looks again), the Job, the stop of a Job whose pod can never start
(``RestoreAction.stop``), Lease release, Events: the status names
the Job (and the restore's uid) before the Job exists, so a restart creates the same Job (a 409 is "already
there") and never a second one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from schemagate import k8s
from schemagate.contract.errors import Conflict, KubernetesApiError
from schemagate.core import jobs as J
from schemagate.core import status as S
from schemagate.core.decide import JobObs
from schemagate.core.model import Migration
from schemagate.core.restore import Restore, RestoreAction, RestoreObs, backup_file, decide_restore
from schemagate.settings import OperatorSettings

log = logging.getLogger("schemagate.restore")

Key = tuple[str, str]
T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]
LEASE_RACE_REQUEUE = 0.2  # seconds: another holder took the database Lease between the look and the acquire


class Restorer:
    """Reconciles DatabaseRestores. ``call`` runs a blocking function in a thread pool (the reconciler's)."""

    def __init__(self, kube: k8s.Kube, settings: OperatorSettings, call: Call) -> None:
        self.kube, self.settings, self.call = kube, settings, call
        self.locks: dict[Key, asyncio.Lock] = {}
        self.leases: dict[Key, tuple[str, str]] = {}  # key -> (database Lease name, holder id) of a replace

    def trigger(self, key: Key, delay: float | None = None) -> None:
        """A pass for ``key`` now (or after ``delay`` seconds)."""
        loop = asyncio.get_running_loop()
        if delay:
            loop.call_later(delay, lambda: loop.create_task(self.run(key)))
        else:
            loop.create_task(self.run(key))

    async def run(self, key: Key) -> None:
        """One pass, errors logged and retried later."""
        lock = self.locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                requeue = await self.reconcile(key)
        except Conflict:
            requeue = 0.2
        except KubernetesApiError as e:
            log.warning("restore %s/%s: API error %s", *key, e)
            requeue = 5.0
        except Exception:  # noqa: BLE001 - keep the controller alive, look again later
            log.exception("restore %s/%s failed", *key)
            requeue = 10.0
        if requeue is not None:
            self.trigger(key, requeue)

    def forget(self, key: Key) -> None:
        self.locks.pop(key, None)
        self.leases.pop(key, None)

    async def deleted(self, key: Key) -> None:
        """The DatabaseRestore is gone: give back the database Lease it may hold (best effort), forget it."""
        lease = self.leases.get(key)
        if lease:
            try:
                await self.call(self.kube.release_lease, self.settings.lease_namespace, *lease)
            except KubernetesApiError as e:
                log.info("restore %s/%s: lease %s not released: %s", *key, lease[0], e)
        self.forget(key)

    def _observe_lease(self, ns: str, r: Restore, migration: dict[str, Any] | None) -> RestoreObs:
        """``replace``: the database Lease (named from the DatabaseMigration's database, as its runs name it) as
        seen by this restore, and a missing Secret; nothing for a restore into a new database."""
        if not r.replace or migration is None:
            return RestoreObs()
        secret_error, identity = self.kube.check_database_secret(ns, Migration.from_body(migration).database)
        lock = self.kube.lease_state(self.settings.lease_namespace, k8s.lease_name(identity), r.holder)
        return RestoreObs(lock=lock, secret_error=secret_error, policy=self.settings.retry_policy)

    def _observe(self, ns: str, name: str) -> tuple[dict[str, Any], dict[str, Any] | None, RestoreObs] | None:
        body = self.kube.get_restore(ns, name)
        if body is None:
            return None
        r = Restore.from_body(body)
        migration = self.kube.get_migration(ns, r.migration) if r.migration else None
        job: JobObs | None = None
        for j in self.kube.list_jobs(ns, r.uid):
            if j["metadata"]["name"] != r.job_name:
                continue
            job = k8s.job_observation(j)
            if not job.active:
                job = k8s.job_observation(j, *self.kube.job_result(ns, r.job_name))
            elif stuck := self.kube.job_stuck(ns, r.job_name):  # a pod that can never start
                job = dataclasses.replace(job, reason=stuck[0], message=stuck[1], stuck=True)
        obs = self._observe_lease(ns, r, migration)
        return body, migration, dataclasses.replace(obs, job=job)

    async def reconcile(self, key: Key) -> float | None:
        """Observe, decide, apply; returns when to look again."""
        seen = await self.call(self._observe, *key)
        if seen is None:
            self.forget(key)
            return None
        body, migration, obs = seen
        r = Restore.from_body(body)
        if obs.lock.name:
            self.leases[key] = (obs.lock.name, r.holder)
        act = decide_restore(r, body.get("status"), migration, obs.job, _dt.datetime.now(_dt.timezone.utc), obs)
        if act.lock == "acquire" and not await self.call(self.kube.acquire_lease, self.settings.lease_namespace,
                                                         obs.lock.name, r.holder, ""):
            log.info("restore %s/%s: lease %s taken meanwhile; looking again", *key, obs.lock.name)
            return LEASE_RACE_REQUEUE
        await self._apply(key, body, r, migration, act)
        for job in act.stop:  # failed by the status just written: nothing waits for the Job's deadline
            await self.call(self.kube.stop_job, key[0], job)
            log.info("restore %s/%s: stopped job %s: its pod cannot start", *key, job)
        if act.lock == "release":
            await self.call(self.kube.release_lease, self.settings.lease_namespace, obs.lock.name, r.holder)
        for type_, reason, message in act.events:
            await self.call(self.kube.post_event, body, type_, reason, message)
        return act.requeue_after

    async def _apply(self, key: Key, body: dict[str, Any], r: Restore, migration: dict[str, Any] | None,
                     act: RestoreAction) -> None:
        """The status, then the Job."""
        old = dict(body.get("status") or {})
        old.pop("kopf", None)
        patch = S.merge_patch(old, act.status)
        if patch:
            await self.call(self.kube.patch_restore_status, *key, patch, body["metadata"].get("resourceVersion"))
        if act.create and act.backup is not None and migration is not None:
            m = Migration.from_body(migration)
            manifest = J.build_restore_job(m, r.name, r.uid, r.job_name, backup_file(act.backup),
                                           self.settings.job_settings, sha256=act.backup.get("sha256"),
                                           into=r.into, replace=r.replace, jobs=r.jobs, no_owner=r.no_owner)
            outcome = await self.call(self.kube.create_job, manifest)
            log.info("restore %s/%s: job %s %s", *key, r.job_name, outcome)
