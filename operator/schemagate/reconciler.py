"""The reconciler: a per-resource work queue over observe → decide → apply. No Kopf here (``schemagate.handlers``
only registers the watches and feeds :meth:`Reconciler.trigger`); Kubernetes only through
:class:`schemagate.k8s.Kube` (errors: ``KubernetesApiError`` and its subclasses in
:mod:`schemagate.contract.errors`), whose blocking calls run in a thread pool.

- **Queue**: one task per resource; passes of one resource never overlap; triggers during a pass coalesce into one
  more pass. A pass returns when to look again (``requeue``); timers keep only the earliest due time per resource.
- **Echo suppression**: the resourceVersion of our own last status write is remembered, so the watch event it
  causes does not trigger another pass (:meth:`Reconciler.is_echo`).
- **Apply order**: Lease acquire → status merge patch (with ``resourceVersion``: a stale pass gets
  :class:`~schemagate.contract.errors.Conflict` and retries) → stop the Jobs the decision names (a pod that can never
  start, ``Action.stop``) → Job create → Lease release → Events. The decision already
  recorded the Lease in ``status.run.lease``; when the acquire loses a race, nothing is written and the resource is
  requeued (the next pass observes the new holder and decides to wait).
- **Lease cache**: the Lease name and holder id of each known resource, to release it when the resource is deleted.
- **Errors**: :class:`~schemagate.contract.errors.Conflict` requeues after 0.2 s, any other API error after 5 s, anything else
  after 10 s (logged with its traceback).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from schemagate import gatekeeper, k8s, metrics, observe
from schemagate.contract.errors import Conflict, KubernetesApiError
from schemagate.core import gate
from schemagate.core import jobs as J
from schemagate.core import status as S
from schemagate.core.decide import Action, decide
from schemagate.settings import OperatorSettings

log = logging.getLogger("schemagate.operator")

Key = tuple[str, str]  # (namespace, name) of a DatabaseMigration
T = TypeVar("T")

CONFLICT_REQUEUE = 0.2  # seconds: a stale resourceVersion or a lost Lease race
API_ERROR_REQUEUE = 5.0
ERROR_REQUEUE = 10.0
FOREIGN_JOB_REQUEUE = 5.0


class Reconciler:
    """Reconciles DatabaseMigrations: :meth:`trigger` queues a pass, :meth:`reconcile` is one pass.

    ``kube`` is a :class:`schemagate.k8s.Kube`; ``settings`` the operator's settings (lease namespace, retry
    policy, Job rendering). Must be used from one asyncio event loop."""

    def __init__(self, kube: k8s.Kube, settings: OperatorSettings, workers: int = 16) -> None:
        self.kube, self.settings = kube, settings
        self.policy = settings.retry_policy
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k8s")
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.dirty: set[Key] = set()
        self.timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self.written_rv: dict[Key, str] = {}
        self.leases: dict[Key, tuple[str, str]] = {}  # key -> (Lease name, holder id)
        self.known: set[Key] = set()
        self.sem = asyncio.Semaphore(workers)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking (Kubernetes) call in the thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --- the queue --------------------------------------------------------------------------------------------

    def trigger(self, key: Key, delay: float | None = None) -> None:
        """Reconcile ``key`` now (or after ``delay`` seconds; an earlier pending timer wins)."""
        loop = asyncio.get_running_loop()
        if delay and delay > 0:
            due = loop.time() + delay
            old = self.timers.get(key)
            if old and old[0] <= due:
                return
            if old:
                old[1].cancel()
            self.timers[key] = (due, loop.call_at(due, self._fire, key))
            return
        if key in self.tasks:
            self.dirty.add(key)
            return
        self.tasks[key] = asyncio.create_task(self._loop(key))

    def _fire(self, key: Key) -> None:
        self.timers.pop(key, None)
        self.trigger(key)

    def is_echo(self, key: Key, resource_version: str | None) -> bool:
        """Whether a watch event carries exactly the resourceVersion of our own last status write."""
        return bool(resource_version) and self.written_rv.get(key) == resource_version

    def forget(self, key: Key) -> None:
        """Drop everything known about a deleted resource (timers, echo state, metrics series)."""
        self.known.discard(key)
        t = self.timers.pop(key, None)
        if t:
            t[1].cancel()
        self.written_rv.pop(key, None)
        metrics.forget(*key)

    async def deleted(self, key: Key) -> None:
        """The resource is gone: release its Lease (best effort) and forget it."""
        await self.release_known(key)
        self.forget(key)

    async def _loop(self, key: Key) -> None:
        try:
            while True:
                self.dirty.discard(key)
                requeue = await self._pass(key)
                if requeue is not None:
                    self.trigger(key, requeue)
                if key not in self.dirty:
                    break
        finally:
            self.tasks.pop(key, None)

    async def _pass(self, key: Key) -> float | None:
        started = time.monotonic()
        try:
            async with self.sem:
                return await self.reconcile(key)
        except KubernetesApiError as e:
            metrics.RECONCILE_ERRORS.labels(f"api{e.status}").inc()
            log.warning("reconcile %s/%s: API error %s", *key, e)
            return CONFLICT_REQUEUE if isinstance(e, Conflict) else API_ERROR_REQUEUE
        except Exception as e:  # noqa: BLE001 - keep the loop alive, retry later
            metrics.RECONCILE_ERRORS.labels(type(e).__name__).inc()
            log.exception("reconcile %s/%s failed", *key)
            return ERROR_REQUEUE
        finally:
            metrics.RECONCILE.observe(time.monotonic() - started)

    # --- one pass ---------------------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        """One pass: gather, decide, apply. Returns the seconds until the next pass, or None."""
        snap = await self.call(observe.gather, self.kube, *key, self.settings.lease_namespace, self.policy)
        if snap is None:
            await self.deleted(key)
            return None
        self.known.add(key)
        self.leases[key] = (snap.lease, snap.holder)
        action = decide(snap.migration, snap.status, snap.observed)
        return await self.apply(key, snap, action)

    async def apply(self, key: Key, snap: observe.Snapshot, action: Action) -> float | None:
        """Carry out ``action``: Lease, status, metrics, stop the Jobs it names (``action.stop``), new Job, Lease
        release, Events (in that order)."""
        ns, name = key
        lease_ns = self.settings.lease_namespace
        if action.lock == "acquire" and not await self.call(self.kube.acquire_lease, lease_ns, snap.lease,
                                                            snap.holder, ""):
            log.info("%s/%s: lease %s taken meanwhile; looking again", ns, name, snap.lease)
            return CONFLICT_REQUEUE
        await self._write_status(key, snap, action)
        for step, res in action.consumed:  # the series follow the status just written
            metrics.observe_result(ns, name, step, res)
        metrics.observe_phase(ns, name, action.phase, snap.status.get("phase"))
        for job in action.stop:  # failed by the status just written; its pod would wait for its deadline
            await self.call(self.kube.stop_job, ns, job)
            log.info("%s/%s: stopped job %s: its pod cannot start", ns, name, job)
        if action.create is not None and not await self._create_job(key, snap, action):
            return FOREIGN_JOB_REQUEUE
        if action.lock == "release":
            await self.call(self.kube.release_lease, lease_ns, snap.lease, snap.holder)
        for ev in action.events:
            await self.call(self.kube.post_event, snap.body, ev.type, ev.reason, ev.message)
        return action.requeue_after

    async def _write_status(self, key: Key, snap: observe.Snapshot, action: Action) -> None:
        patch = S.merge_patch(snap.status, action.status)
        if patch:
            patch.pop("kopf", None)
        if patch:
            rv = snap.body["metadata"].get("resourceVersion")
            self.written_rv[key] = await self.call(self.kube.patch_status, *key, patch, rv)

    async def _create_job(self, key: Key, snap: observe.Snapshot, action: Action) -> bool:
        """Create the Job the action asks for; False when a foreign object holds its name."""
        assert action.create is not None
        req = action.create
        manifest = J.build_job(snap.migration, req.step, req.name, req.counter, self.settings.job_settings,
                               action.status.get("plan"), run_generation=int(action.status["run"]["generation"]),
                               backup=action.status.get("backup"))
        outcome = await self.call(self.kube.create_job, manifest)
        if outcome == "created":
            metrics.JOBS_CREATED.labels(req.step).inc()
            log.info("%s/%s: created job %s", *key, req.name)
        elif outcome == "foreign":
            log.warning("%s/%s: job %s exists and is not ours; waiting for it to go", *key, req.name)
            return False
        return True

    async def release_known(self, key: Key) -> None:
        """Release the Lease remembered for ``key`` (best effort: an API error is logged)."""
        lease = self.leases.pop(key, None)
        if lease:
            try:
                await self.call(self.kube.release_lease, self.settings.lease_namespace, *lease)
            except KubernetesApiError as e:
                log.info("%s/%s: lease %s not released: %s", *key, lease[0], e)

    async def resync(self) -> None:
        """Trigger every known resource every ``settings.resync_seconds`` (runs until cancelled)."""
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self.known):
                self.trigger(key)

    # --- the rollout gate (decision: schemagate.core.gate; I/O: schemagate.gatekeeper) --------------------

    async def release_gated(self, key: Key, migration: Mapping[str, Any]) -> None:
        """Release the pods waiting for this DatabaseMigration when it is Ready for its generation.

        Level-based: every DatabaseMigration event (our own status writes included, and Kopf's initial listing
        at start-up) re-evaluates from the current objects. Errors are logged; the next event retries."""
        if not gate.migration_state(migration)[0]:
            return  # not Ready for its generation: nothing can be released
        try:
            released = await self.call(gatekeeper.release_waiting, self.kube, *key, dict(migration))
            if released:
                log.info("rollout gate: released %d pod(s) waiting for %s/%s", len(released), *key)
        except Exception:  # noqa: BLE001 - the next pod or migration event retries
            log.exception("rollout gate: releasing pods waiting for %s/%s failed", *key)

    async def evaluate_pod(self, pod: Mapping[str, Any]) -> None:
        """Decide for one gated pod and remove its gate when allowed (:func:`schemagate.gatekeeper.evaluate_pod`)."""
        await self.call(gatekeeper.evaluate_pod, self.kube, pod)
