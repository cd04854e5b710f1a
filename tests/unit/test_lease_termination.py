"""The database Lease logic of schemagate.k8s.Kube (over the in-memory API of tests/unit/fakeapi.py) and the
termination-message parsing (pure), without a cluster."""

from __future__ import annotations

import json

from schemagate import k8s
from schemagate.core.decide import LockObs
from tests.unit.fakeapi import FakeKube
from tests.unit.helpers import OK_RESULTS, body

LNS, LEASE = "schemagate-system", "schemagate-db-0123456789abcdef"
ME = "team/shop/uid-1234"
OTHER = "team/billing/uid-other"


def kube_with_other(phase: str | None, *, generation: int = 1, observed: int = 1, active_job: bool = False):
    k = FakeKube()
    other = body(name="billing", generation=generation)
    other["metadata"]["uid"] = "uid-other"
    k.add_migration(other, None if phase is None else {"phase": phase, "observedGeneration": observed})
    if active_job:
        k.store.put("Job", {"metadata": {"name": "billing-1-migrate-1", "namespace": "team",
                                         "labels": {"schemagate.dev/migration-uid": "uid-other"}}})
    return k


def test_free_absent_lease_is_created_for_me():
    k = FakeKube()
    assert k.lease_state(LNS, LEASE, ME) == LockObs(mine=False, holder=None, name=LEASE)
    assert k.acquire_lease(LNS, LEASE, ME)
    assert k.lease_holder(LNS, LEASE) == ME
    assert k.lease_state(LNS, LEASE, ME) == LockObs(mine=True, holder=None, name=LEASE)
    assert k.acquire_lease(LNS, LEASE, ME)  # idempotent, no second write
    assert [w[0] for w in k.store.writes] == ["create"]


def test_a_running_holder_keeps_the_lease():
    k = kube_with_other("Migrating")
    k.add_lease(LNS, LEASE, OTHER)
    assert k.lease_state(LNS, LEASE, ME) == LockObs(mine=False, holder="team/billing", name=LEASE)
    assert not k.acquire_lease(LNS, LEASE, ME)
    assert k.lease_holder(LNS, LEASE) == OTHER


def test_a_finished_holder_with_a_job_still_active_keeps_the_lease():
    k = kube_with_other("Succeeded", active_job=True)
    k.add_lease(LNS, LEASE, OTHER)
    assert k.lease_state(LNS, LEASE, ME).holder == "team/billing"


def test_a_holder_not_observed_at_its_generation_is_not_finished():
    k = kube_with_other("Succeeded", generation=2, observed=1)
    k.add_lease(LNS, LEASE, OTHER)
    assert k.lease_state(LNS, LEASE, ME).holder == "team/billing"


def test_stale_holders_are_replaced():
    for k, holder in ((kube_with_other("Failed"), OTHER),  # finished, nothing active
                      (kube_with_other("Suspended"), OTHER),
                      (kube_with_other(None), "team/gone/uid-x"),  # deleted
                      (kube_with_other("Migrating"), "team/billing/uid-recreated"),  # same name, other uid
                      (kube_with_other("Migrating"), "not-a-holder")):  # malformed
        k.add_lease(LNS, LEASE, holder)
        assert k.lease_state(LNS, LEASE, ME) == LockObs(mine=False, holder=None, name=LEASE), holder
        assert k.acquire_lease(LNS, LEASE, ME), holder
        assert k.lease_holder(LNS, LEASE) == ME


def test_replacing_a_stale_holder_loses_to_a_concurrent_writer():
    k = kube_with_other("Failed")
    k.add_lease(LNS, LEASE, OTHER)
    k.store.hooks[("patch", "Lease")] = lambda _: k.add_lease(LNS, LEASE, "team/third/uid-3")  # new rv
    assert not k.acquire_lease(LNS, LEASE, ME)
    assert k.lease_holder(LNS, LEASE) == "team/third/uid-3"


def test_release_only_by_the_holder():
    k = FakeKube()
    k.add_lease(LNS, LEASE, OTHER)
    k.release_lease(LNS, LEASE, ME)
    assert k.lease_holder(LNS, LEASE) == OTHER
    k.add_lease(LNS, LEASE, ME)
    k.release_lease(LNS, LEASE, ME)
    assert k.lease_holder(LNS, LEASE) is None
    k.release_lease(LNS, "schemagate-db-absent", ME)  # no Lease: nothing to do


def test_lease_name_is_a_hash_of_the_identity():
    name = k8s.lease_name("db.team.svc:5432/shop")
    assert name.startswith("schemagate-db-") and len(name) == len("schemagate-db-") + 16
    assert name != k8s.lease_name("db.team.svc:5432/billing")


# --- termination messages ---------------------------------------------------------------------------------------


def test_a_step_result_document_is_parsed():
    doc = json.dumps(OK_RESULTS["migrate"])
    assert k8s.parse_termination(doc, 0) == (OK_RESULTS["migrate"], 0, "")
    assert k8s.parse_termination(f"  {doc}\n", "5")[1] == 5


def test_other_text_keeps_its_last_line_redacted():
    res, code, text = k8s.parse_termination(
        "Traceback (most recent call last):\n  ...\nOperationalError: postgresql://app:s3cret@db:5432/shop", 1)
    assert res is None and code == 1
    assert text.startswith("OperationalError") and "s3cret" not in text


def test_json_that_is_not_a_step_result_and_broken_json_are_text():
    assert k8s.parse_termination('{"kind": "Other"}', 4) == (None, 4, '{"kind": "Other"}')
    assert k8s.parse_termination('{"kind": "StepResult"', 4) == (None, 4, '{"kind": "StepResult"')
    assert k8s.parse_termination("", None) == (None, None, "")
    assert len(k8s.parse_termination("x" * 5000, 1)[2]) == 512


def _pod(created: str, init=(), main=()):
    return {"metadata": {"name": f"p-{created}", "creationTimestamp": created},
            "status": {"initContainerStatuses": list(init), "containerStatuses": list(main)}}


def _term(code: int, message: str = "", last: bool = False):
    return {"lastState" if last else "state": {"terminated": {"exitCode": code, "message": message}}}


def test_pod_termination_picks_the_newest_pod_and_the_first_failed_container():
    old = _pod("2025-01-01T10:00:00Z", main=[_term(4, "old")])
    new = _pod("2025-01-01T11:00:00Z", init=[_term(0, "copied"), _term(5, "init failed")], main=[_term(0, "main")])
    assert k8s.pod_termination([new, old])["message"] == "init failed"
    assert k8s.pod_termination([_pod("t", main=[_term(0, "a"), _term(0, "b")])])["message"] == "b"
    assert k8s.pod_termination([_pod("t", main=[_term(3, "restarted", last=True)])])["message"] == "restarted"
    assert k8s.pod_termination([_pod("t", main=[{"state": {"running": {}}}])]) is None
    assert k8s.pod_termination([]) is None


def test_termination_source_names_the_pod_and_container_whose_log_holds_the_whole_result():
    new = _pod("2025-01-01T11:00:00Z", init=[{"name": "plan", **_term(0, "planned")}],
               main=[{"name": "count", **_term(3, "counted")}])
    assert k8s.termination_source([new]) == k8s.TerminationSource(
        "p-2025-01-01T11:00:00Z", "count", False, {"exitCode": 3, "message": "counted"})
    restarted = _pod("t", main=[{"name": "migrate", "state": {"running": {}}, **_term(5, "crashed", last=True)}])
    assert k8s.termination_source([restarted]).previous is True  # its log is the previous run's
    assert k8s.termination_source([_pod("t", main=[{"name": "x", "state": {"running": {}}}])]) is None


def test_job_result_reads_the_pods_of_the_job():
    k = FakeKube()
    k.store.put("Job", {"metadata": {"name": "j", "namespace": "team"}})
    k.finish_job("team", "j", json.dumps(OK_RESULTS["verify"]), 0)
    assert k.job_result("team", "j") == (OK_RESULTS["verify"], 0, "")
    assert k.job_result("team", "no-such-job") == (None, None, "")


def test_job_observation_reads_labels_and_failure_condition():
    job = {"metadata": {"name": "shop-2-verify-3", "labels": {"schemagate.dev/step": "verify",
                                                              "schemagate.dev/generation": "2",
                                                              "schemagate.dev/counter": "3"}},
           "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                      "message": "Job was active longer than specified deadline"}]}}
    obs = k8s.job_observation(job)
    assert (obs.step, obs.generation, obs.counter, obs.state) == ("verify", 2, 3, k8s.FAILED)
    assert obs.reason == "DeadlineExceeded" and "deadline" in obs.message


def test_an_oom_killed_step_says_so() -> None:
    """The kubelet's terminated.reason OOMKilled (exit 137, no termination message) becomes the status reason."""
    from schemagate.core.decide import FAILED, JobObs, synthesize_result

    k = FakeKube()
    k.store.put("Job", {"metadata": {"name": "j", "namespace": "team"}})
    k.store.put("Pod", {"metadata": {"name": "j-pod", "namespace": "team", "labels": {"job-name": "j"},
                                     "creationTimestamp": "2025-01-01T12:00:00Z"},
                        "status": {"containerStatuses": [{"name": "step", "state": {"terminated": {
                            "exitCode": 137, "reason": "OOMKilled", "message": "loading psycopg"}}}]}})
    result, code, text = k.job_result("team", "j")
    assert result is None and code == 137 and text.startswith("OOMKilled: ") and "memory limit" in text
    assert text.endswith("last output: loading psycopg")
    res = synthesize_result(JobObs("j", "precheck", 1, state=FAILED, exit_code=code, message=text))
    assert res["reason"] == "OOMKilled" and res["outcome"] == "PermanentError" and "137" in res["message"]
    # an ordinary crash stays an internal error
    plain = synthesize_result(JobObs("j", "precheck", 1, state=FAILED, exit_code=1, message="Traceback"))
    assert plain["reason"] == "InternalError"


def test_a_pod_that_never_ran_reports_the_kubelets_waiting_reason() -> None:
    waiting = {"waiting": {"reason": "ErrImageNeverPull",
                           "message": 'Container image "shop:9" is not present with pull policy of Never'}}
    pod = {"metadata": {"creationTimestamp": "t"}, "status": {
        "initContainerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": 0}}}],
        "containerStatuses": [{"name": "step", "state": waiting}]}}
    assert k8s.pod_waiting([pod]) == 'ErrImageNeverPull: Container image "shop:9" is not present with pull policy of Never'
    starting = {"metadata": {"creationTimestamp": "t"},
                "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert k8s.pod_waiting([starting]) == "" and k8s.pod_waiting([]) == ""


def test_pod_termination_never_takes_a_sidecars_exit():
    """The precheck's shadow-server sidecar (restartPolicy Always) is stopped after the count: even killed (137)
    its exit is not the step's result."""
    pod = _pod("t", init=[{"name": "install-runner", **_term(0, "")}, {"name": "shadow-server", **_term(137, "")},
                          {"name": "prepare", **_term(0, "prepared")}],
               main=[{"name": "count", **_term(3, "counted")}])
    pod["spec"] = {"initContainers": [{"name": "install-runner"}, {"name": "shadow-server", "restartPolicy": "Always"},
                                      {"name": "prepare"}]}
    assert k8s.pod_termination([pod])["message"] == "counted"
