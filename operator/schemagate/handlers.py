"""Kopf registration: thin. Every DatabaseMigration event and every finished step Job triggers one
reconciliation of the resource: read it fresh, list its Jobs, read the finished current Job's termination message,
check its Secret and database Lease, ``decide()``, then apply the Action (Lease, status first, then Job, Events).

Only ``@kopf.on.event`` handlers are used, so Kopf adds no finalizer and writes no diff-base or progress; the
persistence settings still point at ``status.kopf`` so nothing large ever lands in annotations. Reconciliations
of one resource never overlap (one task per resource; triggers during a run coalesce into one more pass).

Run: ``schemagate operator [--namespace NS ...|--all-namespaces]`` or
``kopf run -m schemagate.handlers --liveness http://0.0.0.0:8080/healthz [--all-namespaces|-n NS]``.
Environment: ``SCHEMAGATE_RUNNER_IMAGE`` (required: the operator's own image, used by step Jobs),
``SCHEMAGATE_LEASE_NAMESPACE``/``POD_NAMESPACE``, ``SCHEMAGATE_METRICS_PORT`` (8000; 0 disables),
``SCHEMAGATE_RETRY_BASE_SECONDS`` (10), ``SCHEMAGATE_RETRY_CAP_SECONDS`` (300), ``SCHEMAGATE_NAMESPACES``
(comma separated) or ``SCHEMAGATE_ALL_NAMESPACES=1`` for ``main()``.

Namespace-restricted mode (``main()`` with exact namespace names) turns Kopf's cluster scanning off: Kopf would
otherwise list and watch Namespaces cluster-wide (403 under the per-namespace RBAC, retried for about a minute
before it serves anything). Then CRDs are discovered once at start-up, not watched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import logging
import os
import re
import time
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from schemagate import gatekeeper, k8s, metrics
from schemagate.core import gate
from schemagate.core import jobs as J
from schemagate.core import status as S
from schemagate.core.decide import Action, LockObs, Observed, RetryPolicy, decide
from schemagate.core.model import GROUP, PLURAL, VERSION, Migration

log = logging.getLogger("schemagate.operator")

Key = tuple[str, str]

# Namespace names (not Kopf's glob patterns): serving them needs no cluster-wide list/watch of Namespaces.
_NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_static_namespaces = False  # set by main(): watching only these exact namespaces


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def policy_from_env() -> RetryPolicy:
    return RetryPolicy(
        base_seconds=_env_float("SCHEMAGATE_RETRY_BASE_SECONDS", 10.0),
        cap_seconds=_env_float("SCHEMAGATE_RETRY_CAP_SECONDS", 300.0),
        secret_poll_seconds=_env_float("SCHEMAGATE_SECRET_POLL_SECONDS", 30.0),
        lock_poll_seconds=_env_float("SCHEMAGATE_LOCK_POLL_SECONDS", 5.0),
    )


class Controller:
    def __init__(self, kube: k8s.Kube, settings: J.JobSettings, policy: RetryPolicy, lease_ns: str,
                 workers: int = 16) -> None:
        self.kube, self.settings, self.policy, self.lease_ns = kube, settings, policy, lease_ns
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k8s")
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.dirty: set[Key] = set()
        self.timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self.written_rv: dict[Key, str] = {}
        self.leases: dict[Key, tuple[str, str]] = {}  # key -> (lease name, holder id)
        self.known: set[Key] = set()
        self.sem = asyncio.Semaphore(workers)

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --- triggering ------------------------------------------------------------------------------------------

    def trigger(self, key: Key, delay: float | None = None) -> None:
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

    def forget(self, key: Key) -> None:
        self.known.discard(key)
        t = self.timers.pop(key, None)
        if t:
            t[1].cancel()
        self.written_rv.pop(key, None)
        metrics.forget(*key)

    async def _loop(self, key: Key) -> None:
        try:
            while True:
                self.dirty.discard(key)
                started = time.monotonic()
                try:
                    async with self.sem:
                        requeue = await self.reconcile(key)
                except ApiException as e:
                    metrics.RECONCILE_ERRORS.labels(f"api{e.status}").inc()
                    log.warning("reconcile %s/%s: API error %s %s", *key, e.status, e.reason)
                    requeue = 0.2 if e.status == 409 else 5.0
                except Exception as e:  # noqa: BLE001 - keep the loop alive, retry later
                    metrics.RECONCILE_ERRORS.labels(type(e).__name__).inc()
                    log.exception("reconcile %s/%s failed", *key)
                    requeue = 10.0
                metrics.RECONCILE.observe(time.monotonic() - started)
                if requeue is not None:
                    self.trigger(key, requeue)
                if key not in self.dirty:
                    break
        finally:
            self.tasks.pop(key, None)

    # --- one reconciliation ----------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        ns, name = key
        body = await self.call(self.kube.get_migration, ns, name)
        if body is None:
            await self.release_known(key)
            self.forget(key)
            return None
        self.known.add(key)
        m = Migration.from_body(body)
        status: dict[str, Any] = dict(body.get("status") or {})
        run = status.get("run") or {}
        raw_jobs = await self.call(self.kube.list_jobs, ns, m.uid)
        current = (status.get("jobs") or {}).get(run.get("step") or "")
        observed_jobs = []
        for j in raw_jobs:
            if j["metadata"]["name"] == current and k8s.job_state(j) != k8s.ACTIVE \
                    and status.get("phase") not in S.TERMINAL_PHASES and not run.get("retryAt"):
                res, code, text = await self.call(self.kube.job_result, ns, current)
                observed_jobs.append(k8s.job_observation(j, res, code, text))
            else:
                observed_jobs.append(k8s.job_observation(j))
        me = f"{ns}/{name}/{m.uid}"
        settled = (status.get("phase") in S.TERMINAL_PHASES and run.get("specHash") == m.spec_hash
                   and run.get("retry") == m.retry_token)
        secret_error: str | None = None
        lease = run.get("lease")
        if not settled or not lease:
            secret_error, identity = await self.call(self.kube.check_database_secret, ns, m.database)
            lease = k8s.lease_name(identity)
        self.leases[key] = (lease, me)
        lock = await self.call(self.kube.lease_state, self.lease_ns, lease, me)
        now = _dt.datetime.now(_dt.timezone.utc)
        obs = Observed(now=now, jobs=tuple(observed_jobs), secret_error=secret_error, lock=lock, policy=self.policy)
        action = decide(m, status, obs)
        if action.lock == "acquire":
            ok = await self.call(self.kube.acquire_lease, self.lease_ns, lease, me, "")
            if not ok:
                lock = await self.call(self.kube.lease_state, self.lease_ns, lease, me)
                if not lock.holder:
                    lock = LockObs(mine=False, holder="another DatabaseMigration")
                action = decide(m, status, Observed(now=now, jobs=obs.jobs, secret_error=secret_error, lock=lock,
                                                    policy=self.policy))
        action.status.setdefault("run", {})["lease"] = lease
        return await self.apply(key, body, m, status, action)

    async def apply(self, key: Key, body: dict[str, Any], m: Migration, old: dict[str, Any],
                    action: Action) -> float | None:
        ns, name = key
        patch = S.merge_patch(old, action.status)
        if patch:
            patch.pop("kopf", None)
        if patch:
            rv = await self.call(self.kube.patch_status, ns, name, patch, body["metadata"].get("resourceVersion"))
            self.written_rv[key] = rv
        if action.create is not None:
            run_gen = int(action.status["run"]["generation"])
            manifest = J.build_job(m, action.create.step, action.create.name, action.create.counter, self.settings,
                                   action.status.get("plan"), run_generation=run_gen)
            outcome = await self.call(self.kube.create_job, manifest)
            if outcome == "created":
                metrics.JOBS_CREATED.labels(action.create.step).inc()
                log.info("%s/%s: created job %s", ns, name, action.create.name)
            elif outcome == "foreign":
                log.warning("%s/%s: job %s exists and is not ours; waiting for it to go", ns, name,
                            action.create.name)
                return 5.0
        if action.lock == "release":
            lease, me = self.leases.get(key, ("", ""))
            if lease:
                await self.call(self.kube.release_lease, self.lease_ns, lease, me)
        for step, res in action.consumed:
            metrics.observe_result(ns, name, step, res)
        metrics.observe_phase(ns, name, action.phase, old.get("phase"))
        for ev in action.events:
            await self.call(self.kube.post_event, body, ev.type, ev.reason, ev.message)
        return action.requeue_after

    async def release_known(self, key: Key) -> None:
        lease = self.leases.pop(key, None)
        if lease:
            try:
                await self.call(self.kube.release_lease, self.lease_ns, lease[0], lease[1])
            except ApiException:
                pass

    async def resync(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for key in list(self.known):
                self.trigger(key)


_controller: Controller | None = None


def controller() -> Controller:
    if _controller is None:
        raise RuntimeError("the operator has not started")
    return _controller


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _controller
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled-configuration")
    settings.persistence.finalizer = "schemagate.dev/finalizer"
    settings.posting.enabled = False  # our own Events, one per transition
    if _static_namespaces:
        settings.scanning.disabled = True  # no cluster-wide Namespace list/watch: the per-namespace RBAC suffices
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    image = os.environ.get("SCHEMAGATE_RUNNER_IMAGE", "")
    if not image:
        raise kopf.PermanentError("SCHEMAGATE_RUNNER_IMAGE is not set (the operator's own image, used by step Jobs)")
    _controller = Controller(k8s.Kube(), J.JobSettings(runner_image=image,
                                                       runner_pull_policy=os.environ.get(
                                                           "SCHEMAGATE_RUNNER_PULL_POLICY", "IfNotPresent")),
                             policy_from_env(), k8s.lease_namespace())
    metrics.serve(int(os.environ.get("SCHEMAGATE_METRICS_PORT", "8000")))
    asyncio.get_running_loop().create_task(_controller.resync(_env_float("SCHEMAGATE_RESYNC_SECONDS", 300.0)))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def migration_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    c = controller()
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event.get("type") == "DELETED":
        await c.release_known(key)
        c.forget(key)
        return
    await _release_gated_pods(c, key, event.get("object") or dict(body))
    rv = body["metadata"].get("resourceVersion")
    if rv and c.written_rv.get(key) == rv:
        return  # the echo of our own status write
    c.trigger(key)


# --- rollout gate (decision: schemagate.core.gate; I/O: schemagate.gatekeeper) --------------------------------
# Level-based: every gated pod event and every DatabaseMigration event (our own status writes included, and
# Kopf's initial listing at start-up) re-evaluates from the current objects, so restarts and missed events are safe.


async def _release_gated_pods(c: Controller, key: Key, migration: Any) -> None:
    if not gate.migration_state(migration)[0]:
        return  # not Ready for its generation: nothing can be released
    try:
        released = await c.call(gatekeeper.release_waiting, c.kube, key[0], key[1], migration)
        if released:
            log.info("rollout gate: released %d pod(s) waiting for %s/%s", len(released), *key)
    except Exception:  # noqa: BLE001 - the next pod or migration event retries
        log.exception("rollout gate: releasing pods waiting for %s/%s failed", *key)


@kopf.on.event("", "v1", "pods", when=lambda body, **_: gate.is_gated(body))
async def gated_pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    if event.get("type") == "DELETED":
        return
    c = controller()
    await c.call(gatekeeper.evaluate_pod, c.kube, event.get("object") or dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={J.LABEL_MANAGED_BY: J.MANAGED_BY})
async def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    finished = k8s.job_state(dict(body)) != k8s.ACTIVE
    if not (finished or event.get("type") == "DELETED"):
        return
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "DatabaseMigration" and ref.get("controller"):
            controller().trigger((body["metadata"]["namespace"], ref["name"]))


def main(namespaces: list[str] | None = None, all_namespaces: bool | None = None, health_port: int | None = None,
         metrics_port: int | None = None, log_level: str = "info", liveness: str | None = None) -> None:
    """Run the operator in this process (what ``schemagate operator`` calls). Without namespaces it watches all."""
    global _static_namespaces
    env_ns = [n.strip() for n in os.environ.get("SCHEMAGATE_NAMESPACES", "").split(",") if n.strip()]
    namespaces = list(namespaces or env_ns)
    if all_namespaces is None or (not all_namespaces and not namespaces):
        all_namespaces = os.environ.get("SCHEMAGATE_ALL_NAMESPACES", "") in ("1", "true", "yes") or not namespaces
    _static_namespaces = not all_namespaces and all(_NAMESPACE_NAME.match(n) for n in namespaces)
    if metrics_port is not None:
        os.environ["SCHEMAGATE_METRICS_PORT"] = str(metrics_port)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if liveness is None:
        port = health_port if health_port is not None else int(os.environ.get("SCHEMAGATE_HEALTH_PORT", "8080"))
        liveness = f"http://0.0.0.0:{port}/healthz" if port > 0 else None
    kopf.run(clusterwide=bool(all_namespaces), namespaces=[] if all_namespaces else namespaces,
             liveness_endpoint=liveness or None, standalone=True)
