"""The reconciler (observe → decide → apply) and the Kube wrapper over an in-memory Kubernetes API
(tests/unit/fakeapi.py), without a cluster. The e2e tests drive the same code against the real kube-apiserver."""

from __future__ import annotations

import asyncio
import json

import pytest

from schemagate import k8s, metrics, observe, reconciler
from schemagate.contract import errors
from schemagate.core import decide as decide_module
from schemagate.core.decide import RetryPolicy
from schemagate.reconciler import CONFLICT_REQUEUE, Reconciler
from schemagate.settings import OperatorSettings
from tests.unit.fakeapi import FakeKube, fail
from tests.unit.helpers import OK_RESULTS, body

NS, NAME, LEASE_NS = "team", "shop", "schemagate-system"
KEY = (NS, NAME)
URL = "postgresql://app:s3cret@db.team.svc:5432/shop"
LEASE = k8s.lease_name("db.team.svc:5432/shop")
ME = f"{NS}/{NAME}/uid-1234"


def settings() -> OperatorSettings:
    return OperatorSettings(runner_image="registry.example/schemagate:0.1.0", lease_namespace=LEASE_NS)


@pytest.fixture(autouse=True)
def _forget_metric_series():
    """The reconciler records per-migration series in the process-wide Prometheus registry: drop them again."""
    yield
    for name in (NAME, "billing"):
        metrics.forget(NS, name)


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    k.add_migration(body())
    k.add_secret(NS, "db", {"url": URL})
    return k


def run(coro):
    return asyncio.run(coro)


def reconcile(kube: FakeKube, key=KEY) -> float | None:
    async def once():
        r = Reconciler(kube, settings(), workers=2)
        try:
            return await r.reconcile(key), r
        finally:
            r.pool.shutdown()
    requeue, _ = run(once())
    return requeue


def status(kube: FakeKube) -> dict:
    return kube.migration(NS, NAME)["status"]


def test_first_pass_takes_the_lease_records_it_writes_status_then_creates_the_job(kube):
    # an active Job's watch events do not start a pass, so the pass that created it looks again once its pod
    # should exist (RetryPolicy.start_poll_seconds): a pod the API refuses fails the step then
    assert reconcile(kube) == RetryPolicy().start_poll_seconds
    st = status(kube)
    assert st["phase"] == "BackingUp" and st["jobs"] == {"backup": "shop-1-backup-1"}
    assert st["run"]["lease"] == LEASE  # recorded by decide, not patched in afterwards
    assert kube.lease_holder(LEASE_NS, LEASE) == ME
    order = [(verb, kind) for verb, kind, _, _ in kube.store.writes]
    assert order == [("create", "Lease"), ("patch", "DatabaseMigration"), ("create", "Job")]
    job = kube.job(NS, "shop-1-backup-1")
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"
    reasons = [e["reason"] for e in kube.core.events]
    assert reasons == ["RunStarted", "JobCreated"]
    assert all(URL not in json.dumps(o) for o in kube.store.objects.values() if o.get("kind") != "Secret"
               and "data" not in o)


def test_a_finished_job_is_consumed_from_its_termination_message(kube):
    reconcile(kube)
    kube.finish_job(NS, "shop-1-backup-1", json.dumps(OK_RESULTS["backup"]), 0)
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Prechecking" and st["backup"]["path"] == "/backups/x.dump"
    assert st["jobs"]["precheck"] == "shop-1-precheck-1"
    assert kube.lease_holder(LEASE_NS, LEASE) == ME


def test_a_crash_without_a_result_fails_with_the_redacted_log_tail(kube):
    reconcile(kube)
    kube.finish_job(NS, "shop-1-backup-1", f"Traceback ...\nOperationalError: connecting to {URL}", 4)
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Failed"
    assert "s3cret" not in st["lastError"]["message"] and "OperationalError" in st["lastError"]["message"]
    assert kube.lease_holder(LEASE_NS, LEASE) is None  # released: terminal, nothing of ours runs


def test_a_step_pod_the_api_refused_fails_the_step_at_once(kube):
    """No pod and a FailedCreate Event of the Job controller: Failed with its words, before any deadline; while
    a step's pod has not started, the resource is looked at again after start_poll_seconds, not 120 s."""
    reconcile(kube)
    assert reconcile(kube) == settings().retry_policy.start_poll_seconds  # created, no pod yet
    kube.store.put("Event", {"metadata": {"name": "e1", "namespace": NS}, "reason": "FailedCreate",
                             "involvedObject": {"kind": "Job", "name": "shop-1-backup-1"},
                             "message": 'Error creating: pods "p" is forbidden: violates PodSecurity "restricted"'})
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Failed" and st["lastError"]["reason"] == "FailedCreate", st
    assert 'violates PodSecurity "restricted"' in st["lastError"]["message"]
    # the stuck Job is ended (its deadline set to 1 s) after the failure is in the status: nothing waits for it
    job = kube.job(NS, "shop-1-backup-1")
    assert job["spec"]["activeDeadlineSeconds"] == 1
    writes = [w[:2] for w in kube.store.writes]
    assert writes.index(("patch", "Job")) > max(i for i, w in enumerate(writes) if w == ("patch", "DatabaseMigration"))



def test_a_stuck_job_without_the_patch_right_ends_at_its_deadline(kube):
    """An older Role without ``patch`` on Jobs: the failure is still recorded and the pass ends normally (the
    Job is left to its own activeDeadlineSeconds)."""
    reconcile(kube)
    reconcile(kube)
    kube.store.put("Event", {"metadata": {"name": "e1", "namespace": NS}, "reason": "FailedCreate",
                             "involvedObject": {"kind": "Job", "name": "shop-1-backup-1"},
                             "message": 'Error creating: serviceaccount "x" not found'})

    def forbidden(_body):
        raise fail(403)

    kube.store.hooks[("patch", "Job")] = forbidden
    deadline = kube.job(NS, "shop-1-backup-1")["spec"].get("activeDeadlineSeconds")
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Failed" and st["lastError"]["reason"] == "FailedCreate", st
    assert kube.job(NS, "shop-1-backup-1")["spec"].get("activeDeadlineSeconds") == deadline != 1

def test_a_running_step_is_resynced_slowly(kube):
    reconcile(kube)
    kube.job(NS, "shop-1-backup-1")["status"] = {"active": 1, "ready": 1}
    assert reconcile(kube) == settings().retry_policy.active_resync_seconds


def test_a_lost_lease_race_is_a_requeue_without_any_write(kube, monkeypatch):
    """Another DatabaseMigration on the same database takes the Lease between the observation and the acquire:
    nothing is written, decide is not asked again, and the next pass waits for the holder."""
    other = body(name="billing")
    other["metadata"]["uid"] = "uid-other"
    kube.add_migration(other, {"phase": "BackingUp", "observedGeneration": 1})
    kube.store.hooks[("create", "Lease")] = lambda _: kube.add_lease(LEASE_NS, LEASE, f"{NS}/billing/uid-other")
    calls = []
    real = decide_module.decide
    monkeypatch.setattr(reconciler, "decide", lambda *a: calls.append(1) or real(*a))
    assert reconcile(kube) == CONFLICT_REQUEUE
    assert len(calls) == 1
    assert "status" not in kube.migration(NS, NAME)
    assert not [w for w in kube.store.writes if w[1] in ("Job", "DatabaseMigration")]
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Pending"
    assert st["conditions"][0]["reason"] == "WaitingForDatabaseLock" and "team/billing" in st["conditions"][0]["message"]
    assert st["run"]["lease"] == LEASE and kube.lease_holder(LEASE_NS, LEASE) == f"{NS}/billing/uid-other"


def test_a_stale_resource_version_is_a_conflict_requeued_quickly(kube):
    kube.store.hooks[("patch", "DatabaseMigration")] = lambda _: kube.store.put(
        "DatabaseMigration", kube.migration(NS, NAME))  # someone else wrote meanwhile: a new resourceVersion

    async def one_pass():
        r = Reconciler(kube, settings(), workers=2)
        try:
            return await r._pass(KEY)
        finally:
            r.pool.shutdown()
    assert run(one_pass()) == CONFLICT_REQUEUE
    assert not [w for w in kube.store.writes if w[1] == "Job"]


def test_our_own_status_write_is_recognised_as_an_echo(kube):
    async def scenario():
        r = Reconciler(kube, settings(), workers=2)
        try:
            await r.reconcile(KEY)
            rv = kube.migration(NS, NAME)["metadata"]["resourceVersion"]
            return r.is_echo(KEY, rv), r.is_echo(KEY, "1"), r.is_echo(KEY, None)
        finally:
            r.pool.shutdown()
    assert run(scenario()) == (True, False, False)


def test_deleted_resource_releases_its_lease_and_is_forgotten(kube):
    async def scenario():
        r = Reconciler(kube, settings(), workers=2)
        try:
            await r.reconcile(KEY)
            assert KEY in r.known and kube.lease_holder(LEASE_NS, LEASE) == ME
            del kube.store.objects[("DatabaseMigration", NS, NAME)]
            assert await r.reconcile(KEY) is None
            return r
        finally:
            r.pool.shutdown()
    r = run(scenario())
    assert KEY not in r.known and KEY not in r.leases
    assert kube.lease_holder(LEASE_NS, LEASE) is None


def test_triggers_during_a_pass_coalesce_into_one_more_pass(kube, monkeypatch):
    passes = []

    async def scenario():
        r = Reconciler(kube, settings(), workers=2)
        gate = asyncio.Event()

        async def slow(key):
            passes.append(key)
            await gate.wait()
            return None
        monkeypatch.setattr(r, "reconcile", slow)
        try:
            r.trigger(KEY)
            await asyncio.sleep(0)
            for _ in range(5):
                r.trigger(KEY)  # during the first pass
            gate.set()
            while r.tasks:
                await asyncio.sleep(0.01)
        finally:
            r.pool.shutdown()
    run(scenario())
    assert passes == [KEY, KEY]


def test_timers_keep_the_earliest_due_time(kube):
    async def scenario():
        r = Reconciler(kube, settings(), workers=2)
        try:
            r.trigger(KEY, 30)
            first = r.timers[KEY][0]
            r.trigger(KEY, 60)
            assert r.timers[KEY][0] == first
            r.trigger(KEY, 1)
            assert r.timers[KEY][0] < first
            r.forget(KEY)
            return r.timers
        finally:
            r.pool.shutdown()
    assert run(scenario()) == {}


def test_observe_reads_the_termination_message_only_of_the_wanted_finished_job(kube, monkeypatch):
    reconcile(kube)
    kube.finish_job(NS, "shop-1-backup-1", json.dumps(OK_RESULTS["backup"]), 0)
    reads = []
    real = kube.job_result
    monkeypatch.setattr(kube, "job_result", lambda *a: reads.append(a) or real(*a))
    snap = observe.gather(kube, NS, NAME, LEASE_NS, settings().retry_policy)
    assert snap is not None and reads == [(NS, "shop-1-backup-1")]
    assert snap.observed.jobs[0].result == OK_RESULTS["backup"] and snap.lease == LEASE
    reconcile(kube)  # consumed: the next Job is current, and it is still running
    reads.clear()
    observe.gather(kube, NS, NAME, LEASE_NS, settings().retry_policy)
    assert reads == []


def test_missing_secret_waits_without_taking_the_lease(kube):
    del kube.store.objects[("Secret", NS, "db")]
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Pending" and st["lastError"]["reason"] == "SecretNotFound"
    assert ("Lease", LEASE_NS, k8s.lease_name("secret:db/url")) not in kube.store.objects


def test_api_errors_are_translated_once_into_the_shared_tree():
    assert isinstance(k8s.translate(fail(404)), errors.NotFound)
    assert isinstance(k8s.translate(fail(409)), errors.Conflict)
    assert isinstance(k8s.translate(fail(401)), errors.Forbidden)
    assert isinstance(k8s.translate(fail(403)), errors.Forbidden)
    assert isinstance(k8s.translate(fail(422)), errors.Invalid)
    other = k8s.translate(fail(503))
    assert type(other) is errors.KubernetesApiError and other.status == 503
    assert isinstance(other, errors.SchemagateError) and other.outcome.value == "TransientError"
    assert str(k8s.translate(fail(409))) == "409 Conflict" and k8s.translate(fail(403)).outcome.value == "PermanentError"
