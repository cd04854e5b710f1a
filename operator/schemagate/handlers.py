"""Kopf registration and start-up only; the watches feed :class:`schemagate.reconciler.Reconciler`.

Only ``@kopf.on.event`` handlers: Kopf adds no finalizer and writes no diff-base or progress (both storages point
at ``status.kopf`` anyway). Settings: :class:`schemagate.settings.OperatorSettings`. Run ``schemagate operator``
or ``kopf run -m schemagate.handlers``. With exact namespace names Kopf's cluster-wide Namespace scanning is off
(it would be denied under per-namespace RBAC); CRDs are then discovered once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from typing import Any

import kopf

from schemagate import k8s, leader, metrics
from schemagate.contract import names
from schemagate.core import gate
from schemagate.core import jobs as J
from schemagate.core.model import GROUP, KIND, PLURAL, VERSION
from schemagate.core.restore import KIND as RESTORE_KIND
from schemagate.core.restore import PLURAL as RESTORE_PLURAL
from schemagate.reconciler import Reconciler
from schemagate.restorer import Restorer
from schemagate.settings import OperatorSettings, SettingsError

_settings: OperatorSettings | None = None  # set by main(); `kopf run -m` reads the environment at start-up
_reconciler: Reconciler | None = None
_restorer: Restorer | None = None


def reconciler() -> Reconciler:
    if _reconciler is None:
        raise RuntimeError("the operator has not started")
    return _reconciler


def restorer() -> Restorer:
    if _restorer is None:
        raise RuntimeError("the operator has not started")
    return _restorer


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _reconciler, _restorer
    try:
        ours = _settings or OperatorSettings.from_env()
    except SettingsError as e:
        raise kopf.PermanentError(str(e)) from e
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled-configuration")
    settings.persistence.finalizer = names.FINALIZER
    settings.posting.enabled = False  # our own Events, one per transition
    settings.scanning.disabled = ours.exact_namespaces  # then the per-namespace RBAC suffices
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    _reconciler = Reconciler(k8s.Kube(instance=ours.instance), ours)
    _restorer = Restorer(_reconciler.kube, ours, _reconciler.call)
    metrics.serve(ours.metrics_port)
    asyncio.get_running_loop().create_task(_reconciler.resync())


@kopf.on.event(GROUP, VERSION, PLURAL)
async def migration_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    r = reconciler()
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event.get("type") == "DELETED":
        await r.deleted(key)
        return
    await r.release_gated(key, event.get("object") or dict(body))
    if not r.is_echo(key, body["metadata"].get("resourceVersion")):
        r.trigger(key)


@kopf.on.event(GROUP, VERSION, RESTORE_PLURAL)
async def restore_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event.get("type") == "DELETED":
        await restorer().deleted(key)
        return
    await restorer().run(key)


@kopf.on.event("", "v1", "pods", when=lambda body, **_: gate.is_gated(body))
async def gated_pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    if event.get("type") != "DELETED":
        await reconciler().evaluate_pod(event.get("object") or dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={J.LABEL_MANAGED_BY: J.MANAGED_BY})
async def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    if k8s.job_state(dict(body)) == k8s.ACTIVE and event.get("type") != "DELETED":
        return  # only finished (or deleted) Jobs move a run on
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller"):
            reconciler().trigger((body["metadata"]["namespace"], ref["name"]))
        elif ref.get("kind") == RESTORE_KIND and ref.get("controller"):
            restorer().trigger((body["metadata"]["namespace"], ref["name"]))


def main(namespaces: list[str] | None = None, all_namespaces: bool | None = None, health_port: int | None = None,
         metrics_port: int | None = None, log_level: str = "info", liveness: str | None = None) -> None:
    """Run the operator in this process (what ``schemagate operator`` calls). Arguments override the environment
    (:class:`OperatorSettings`); without namespaces it watches all. Raises SettingsError on a bad variable."""
    global _settings
    env = OperatorSettings.from_env()
    names = tuple(namespaces or env.namespaces)
    if all_namespaces is None or (not all_namespaces and not names):
        all_namespaces = env.all_namespaces or not names
    _settings = dataclasses.replace(
        env, namespaces=names, all_namespaces=bool(all_namespaces),
        metrics_port=env.metrics_port if metrics_port is None else metrics_port,
        health_port=env.health_port if health_port is None else health_port)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if liveness is None and _settings.health_port > 0:
        liveness = f"http://0.0.0.0:{_settings.health_port}/healthz"
    elector = _lead(_settings) if _settings.leader_election else None
    try:
        kopf.run(clusterwide=_settings.all_namespaces, namespaces=[] if _settings.all_namespaces else list(names),
                 liveness_endpoint=liveness or None, standalone=True)
    finally:
        if elector is not None:
            elector.release()


def _lead(s: OperatorSettings) -> leader.LeaderElector:
    """Block until this process holds the leader Lease (answering ``/healthz`` meanwhile, so a standby replica is
    live and ready), then keep renewing it; losing it ends the process at once (exit code 1), so two replicas
    never act together and Kubernetes restarts this one as a standby."""
    elector = leader.LeaderElector(
        k8s.Kube(instance=s.instance), s.lease_namespace, s.leader_election_lease,
        identity=f"{s.instance}_{uuid.uuid4().hex[:8]}", duration=s.leader_lease_seconds,
        renew=s.leader_lease_seconds / 3, retry=min(2.0, s.leader_lease_seconds / 5))
    with leader.standby_health(s.health_port):
        elector.acquire()

    def lost(reason: str) -> None:
        logging.getLogger("schemagate.leader").error("lost leadership (%s): exiting", reason)
        os._exit(1)

    elector.renew_loop(lost)
    return elector
