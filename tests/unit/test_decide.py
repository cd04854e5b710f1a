"""decide(): the whole phase machine, table-driven (no cluster)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools

import pytest

from schemagate.core import status as S
from schemagate.core.decide import ACTIVE, FAILED, SUCCEEDED, JobObs, LockObs, Observed, RetryPolicy, decide
from tests.unit.helpers import OK_RESULTS, T0, Sim, body, finished, mig, result

STEPS = ("backup", "precheck", "migrate", "verify")
PHASE = {"backup": "BackingUp", "precheck": "Prechecking", "migrate": "Migrating", "verify": "Verifying"}


def cond(st, t):
    return next(c for c in st["conditions"] if c["type"] == t)


def assert_kstatus(st, generation):
    ready, rec, stalled = cond(st, "Ready"), cond(st, "Reconciling"), cond(st, "Stalled")
    assert st["observedGeneration"] == generation
    assert all(c["observedGeneration"] == generation for c in st["conditions"])
    assert (ready["status"] == "True") == (st["phase"] == "Succeeded")
    if st["phase"] in ("Blocked", "Failed"):
        assert (ready["status"], rec["status"], stalled["status"]) == ("False", "False", "True")
    if st["phase"] in S.RUNNING_PHASES:
        assert (ready["status"], rec["status"], stalled["status"]) == ("False", "True", "False")
    if st["phase"] == "Suspended":
        assert (ready["status"], rec["status"], ready["reason"]) == ("False", "False", "Suspended")
    assert not (rec["status"] == "True" and stalled["status"] == "True")


# ---------------------------------------------------------------------------------------------------------------
# Happy paths


def test_full_run_with_backup():
    sim = Sim(mig())
    a = sim.run()
    assert sim.phases == ["BackingUp", "Prechecking", "Migrating", "Verifying", "Succeeded"]
    assert sim.created == ["shop-1-backup-1", "shop-1-precheck-1", "shop-1-migrate-1", "shop-1-verify-1"]
    st = a.status
    assert_kstatus(st, 1)
    assert st["currentRevision"] == "0002" and st["resolvedTargetRevision"] == "0002"
    assert st["appliedRevisions"] == ["0002"]
    assert st["backup"]["path"] == "/backups/x.dump" and st["backup"]["time"]
    assert st["violations"]["total"] == 0 and st["violations"]["checks"][0]["name"] == "ck_price"
    assert st["jobs"] == {"backup": "shop-1-backup-1", "precheck": "shop-1-precheck-1",
                          "migrate": "shop-1-migrate-1", "verify": "shop-1-verify-1"}
    assert st["startedAt"] and st["finishedAt"]
    assert a.lock == "release" and not sim.lock_mine
    reasons = [e.reason for e in sim.events]
    for r in ("RunStarted", "JobCreated", "BackupCompleted", "PrecheckPassed", "Migrated", "Succeeded"):
        assert r in reasons


def test_run_without_backup_starts_with_precheck():
    sim = Sim(mig(backup={"enabled": False}))
    sim.run()
    assert sim.phases[0] == "Prechecking" and sim.phases[-1] == "Succeeded"
    assert not any("backup" in n for n in sim.created)


def test_nothing_pending_skips_migrate():
    pre = result("precheck", currentRevision="0002", targetRevision="0002", pending=[], total=0, checks=[])
    sim = Sim(mig())
    sim.run({"precheck": pre})
    assert sim.phases == ["BackingUp", "Prechecking", "Verifying", "Succeeded"]


def test_verify_plan_comes_from_precheck():
    sim = Sim(mig())
    a = sim.step()
    sim.finish("backup", OK_RESULTS["backup"])
    a = sim.step()
    sim.finish("precheck", OK_RESULTS["precheck"])
    a = sim.step()
    assert a.create.step == "migrate"
    plan = a.status["plan"]
    assert plan["targetRevision"] == "0002" and plan["pending"] == ["0002"]
    assert plan["checks"] == [{"name": "ck_price", "table": "orders", "kind": "check", "definition": "price >= 0"}]
    assert plan["indexes"][0]["name"] == "ix"


def test_idempotent_when_nothing_changes():
    sim = Sim(mig())
    a1 = sim.step()
    a2 = decide(sim.m, copy.deepcopy(sim.status), sim.observed())
    assert a2.create is None and a2.status == a1.status and a2.events == []
    assert S.merge_patch(a1.status, a2.status) is None


# ---------------------------------------------------------------------------------------------------------------
# Blocked, failures, retries


def test_a_summarised_precheck_result_makes_a_partial_plan_and_says_so():
    """Only the termination message's summary came back (``data.omitted``; the log could not be read): the plan is
    ``partial`` (verify then looks for leftovers on every table) and a Warning Event names the missing right."""
    summary = copy.deepcopy(OK_RESULTS["precheck"])
    summary["truncated"] = True
    summary["data"]["omitted"] = {"zeroChecks": 40}
    sim = Sim(mig())
    sim.step()
    sim.finish("backup", OK_RESULTS["backup"])
    sim.step()
    sim.finish("precheck", summary)
    a = sim.step()
    assert a.create.step == "migrate" and a.status["plan"]["partial"] is True
    (warning,) = [e for e in a.events if e.reason == "PrecheckResultSummarized"]
    assert warning.type == "Warning" and "pods/log" in warning.message
    whole = Sim(mig())
    whole.step()
    whole.finish("backup", OK_RESULTS["backup"])
    whole.step()
    whole.finish("precheck", OK_RESULTS["precheck"])
    assert "partial" not in whole.step().status["plan"]


def test_a_result_with_thousands_of_checks_keeps_the_status_small_and_what_blocks():
    """A first deploy from base can plan thousands of checks, and the whole result now comes from the step's log:
    the status lists at most MAX_STATUS_CHECKS of them (those with rows and those not evaluated first), counts the
    rest in ``omitted``, and makes the plan ``partial`` (verify then looks at every table)."""
    from schemagate.core.decide import MAX_STATUS_CHECKS

    checks = [{"name": f"ck_{i:04d}", "table": f"t{i}", "kind": "check", "definition": "x > 0", "count": 0}
              for i in range(1200)]
    checks[1100]["count"], checks[7]["count"] = 5, 2
    checks[900] = {**checks[900], "count": None, "evaluatedBy": "not-evaluated"}
    pre = result("precheck", "ChecksFailed", "ViolationsFound", "7 rows violate", currentRevision="0001",
                 targetRevision="0002", pending=["0002"], total=7, maxViolations=0, checks=checks,
                 indexes=[{"name": f"ix_{i}", "table": "t"} for i in range(MAX_STATUS_CHECKS + 3)])
    a = Sim(mig()).run({"precheck": pre})
    listed = [c["name"] for c in a.status["violations"]["checks"]]
    assert len(listed) == MAX_STATUS_CHECKS and listed == sorted(listed)  # in their order
    assert {"ck_1100", "ck_0007", "ck_0900"} <= set(listed)
    assert a.status["violations"]["omitted"] == {"statusChecks": 700, "statusIndexes": 3}
    assert a.status["violations"]["total"] == 7 and a.status["plan"]["partial"] is True
    assert len(a.status["plan"]["checks"]) == len(a.status["plan"]["indexes"]) == MAX_STATUS_CHECKS
    assert not [e for e in a.events if e.reason == "PrecheckResultSummarized"]  # the result itself was whole


def test_blocked_on_violations_records_counts_and_never_migrates():
    pre = result("precheck", "ChecksFailed", "ViolationsFound", "12 rows violate", currentRevision="0001",
                 targetRevision="0002", pending=["0002"], total=12, maxViolations=0,
                 checks=[{"name": "ck_qty", "table": "lines", "kind": "check", "definition": "qty > 0", "count": 5},
                         {"name": "uq_sku", "table": "products", "kind": "unique", "definition": "(sku)",
                          "count": 7}])
    sim = Sim(mig())
    a = sim.run({"precheck": pre})
    st = a.status
    assert st["phase"] == "Blocked"
    assert_kstatus(st, 1)
    assert cond(st, "Ready")["reason"] == "ViolationsFound" and cond(st, "Stalled")["reason"] == "ViolationsFound"
    assert st["violations"]["total"] == 12
    assert {c["name"]: c["count"] for c in st["violations"]["checks"]} == {"ck_qty": 5, "uq_sku": 7}
    assert st["lastError"]["phase"] == "Prechecking" and st["lastError"]["reason"] == "ViolationsFound"
    assert not any("migrate" in n for n in sim.created)
    assert a.lock == "release"
    # stays blocked, quietly
    a2 = sim.step()
    assert a2.create is None and a2.events == [] and a2.status["phase"] == "Blocked"


def test_precheck_over_limit_blocks_even_if_runner_said_succeeded():
    pre = result("precheck", currentRevision="0001", targetRevision="0002", pending=["0002"], total=3,
                 checks=[{"name": "c", "count": 3}])
    sim = Sim(mig(precheck={"maxViolations": 2}))
    a = sim.run({"precheck": pre})
    assert a.status["phase"] == "Blocked" and a.status["violations"]["maxViolations"] == 2


def test_under_the_limit_passes():
    pre = result("precheck", currentRevision="0001", targetRevision="0002", pending=["0002"], total=3,
                 maxViolations=5, checks=[{"name": "c", "count": 3}])
    sim = Sim(mig(precheck={"maxViolations": 5}))
    assert sim.run({"precheck": pre}).status["phase"] == "Succeeded"


def test_retry_annotation_restarts_a_blocked_run():
    bad = result("precheck", "ChecksFailed", "ViolationsFound", "bad", total=2, targetRevision="0002",
                 pending=["0002"], checks=[{"name": "c", "count": 2}])
    sim = Sim(mig(retry="1"))
    sim.run({"precheck": bad})
    assert sim.status["phase"] == "Blocked"
    sim.m = mig(retry="2")
    a = sim.run()
    assert a.status["phase"] == "Succeeded"
    assert sim.created == ["shop-1-backup-1", "shop-1-precheck-1", "shop-1-backup-2", "shop-1-precheck-2",
                           "shop-1-migrate-1", "shop-1-verify-1"]
    assert "RetryRequested" in [e.reason for e in sim.events]
    assert "lastError" not in a.status and a.status["violations"]["total"] == 0


def test_transient_failure_backs_off_exponentially_with_cap_and_never_stops():
    policy = RetryPolicy(base_seconds=10, cap_seconds=40)
    m = mig(backup={"enabled": False})
    st: dict = {}
    jobs: dict[str, JobObs] = {}
    now = T0
    waits = []
    for attempt in range(1, 8):
        a = decide(m, st, Observed(now=now, jobs=tuple(jobs.values()), lock=LockObs(mine=True), policy=policy))
        assert a.create is not None and a.create.name == f"shop-1-precheck-{attempt}"
        assert a.status["attempts"] == attempt and a.status["phase"] == "Prechecking"
        st = a.status
        jobs[a.create.name] = finished(a.create.name, "precheck",
                                       result("precheck", "TransientError", "DatabaseUnreachable", "no route"))
        a = decide(m, st, Observed(now=now, jobs=tuple(jobs.values()), lock=LockObs(mine=True), policy=policy))
        st = a.status
        assert a.create is None and a.lock is None  # keeps the lock while retrying
        assert st["phase"] == "Prechecking" and st["lastError"]["reason"] == "DatabaseUnreachable"
        assert cond(st, "Ready")["reason"] == "DatabaseUnreachable" and cond(st, "Stalled")["status"] == "False"
        assert cond(st, "Reconciling")["status"] == "True"
        waits.append(a.requeue_after)
        assert any(e.type == "Warning" and e.reason == "DatabaseUnreachable" for e in a.events)
        # too early: nothing happens
        a = decide(m, st, Observed(now=now + dt.timedelta(seconds=a.requeue_after - 1),
                                   jobs=tuple(jobs.values()), lock=LockObs(mine=True), policy=policy))
        assert a.create is None
        now = now + dt.timedelta(seconds=waits[-1])
    assert waits == [10, 20, 40, 40, 40, 40, 40]


def test_transient_then_success():
    sim = Sim(mig(backup={"enabled": False}))
    a = sim.step()
    sim.finish("precheck", result("precheck", "TransientError", "LockTimeout", "lock"))
    a = sim.step()
    assert a.create is None and a.requeue_after == 10
    sim.now += dt.timedelta(seconds=10)
    a = sim.run()
    assert a.status["phase"] == "Succeeded"
    assert "shop-1-precheck-2" in sim.created and "lastError" not in a.status


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("outcome,reason,phase,ready_reason", [
    ("PermanentError", "UnknownRevision", "Failed", "UnknownRevision"),
    ("PermanentError", "MigrationFailed", "Failed", "MigrationFailed"),
    ("PermanentError", "BackupFailed", "Failed", "BackupFailed"),
    ("ChecksFailed", "ChecksFailed", None, None),
])
def test_permanent_failures_stall(step, outcome, reason, phase, ready_reason):
    if phase is None:  # ChecksFailed: precheck blocks, verify fails, others fail with their reason
        phase = "Blocked" if step == "precheck" else "Failed"
        ready_reason = {"precheck": "ViolationsFound", "verify": "VerificationFailed"}.get(step, "ChecksFailed")
    sim = Sim(mig())
    a = sim.run({step: result(step, outcome, reason, "it broke")})
    st = a.status
    assert st["phase"] == phase, st
    assert_kstatus(st, 1)
    assert cond(st, "Ready")["reason"] == ready_reason
    assert st["lastError"] == {"phase": PHASE[step], "reason": ready_reason,
                               "message": "it broke" if not (step == "precheck" and outcome == "ChecksFailed")
                               else st["lastError"]["message"]}
    later = STEPS[STEPS.index(step) + 1:]
    assert not any(n.split("-")[2] in later for n in sim.created)
    assert a.lock == "release"
    # stays stalled: no new Job without a spec change or the retry annotation
    sim.now += dt.timedelta(hours=1)
    assert sim.step().create is None


@pytest.mark.parametrize("exit_code,outcome_phase", [(None, "Failed"), (1, "Failed"), (4, "Failed"), (137, "Failed"),
                                                     (5, "Prechecking"), (3, "Blocked")])
def test_no_termination_message_falls_back_to_exit_code(exit_code, outcome_phase):
    m = mig(backup={"enabled": False})
    a = decide(m, {}, Observed(now=T0, lock=LockObs(mine=True)))
    j = JobObs(name=a.create.name, step="precheck", generation=1, state=FAILED, result=None, exit_code=exit_code,
               reason="DeadlineExceeded" if exit_code is None else "BackoffLimitExceeded",
               message="Job was active longer than specified deadline" if exit_code is None else "")
    a = decide(m, a.status, Observed(now=T0, jobs=(j,), lock=LockObs(mine=True)))
    assert a.status["phase"] == outcome_phase
    if exit_code is None:
        assert a.status["lastError"]["reason"] == "DeadlineExceeded"


@pytest.mark.parametrize("step", STEPS)
def test_a_stuck_job_fails_its_step_and_is_stopped_by_the_decision(step):
    """A step's Job whose pod can never start (observed ``stuck``, still active): the failure is recorded with the
    kubelet's or the API's words, the Action names the Job in ``stop`` (the reconciler ends it), no other Job is
    created, and the Lease is released although the stuck Job is still listed as active."""
    sim = Sim(mig())
    results = {s: OK_RESULTS[s] for s in STEPS[:STEPS.index(step)]}
    a = sim.step()
    while a.create is not None and a.create.step != step:
        sim.finish(a.create.step, results[a.create.step])
        a = sim.step()
    assert a.create is not None and a.create.step == step and a.stop == []
    name = a.create.name
    sim.jobs[name] = JobObs(name=name, step=step, generation=1, stuck=True, reason="ErrImagePull",
                            message='container "migrate": image "x" not found')
    assert sim.jobs[name].active
    a = sim.step()
    assert a.stop == [name] and a.create is None and a.lock == "release"
    assert a.status["phase"] == "Failed" and a.status["lastError"]["reason"] == "ErrImagePull"
    assert 'image "x" not found' in a.status["lastError"]["message"]
    again = sim.step()  # recorded once: the next pass (the Job still active until stopped) asks nothing more
    assert again.stop == [] and again.create is None and again.events == []


def test_an_active_job_that_is_not_stuck_is_not_stopped():
    sim = Sim(mig())
    a = sim.step()
    for _ in range(3):
        a = sim.step()
        assert a.stop == [] and a.status["phase"] == "BackingUp" and a.create is None


def test_succeeded_job_without_result_advances():
    m = mig(backup={"enabled": False})
    a = decide(m, {}, Observed(now=T0, lock=LockObs(mine=True)))
    j = JobObs(name=a.create.name, step="precheck", generation=1, state=SUCCEEDED, exit_code=0)
    a = decide(m, a.status, Observed(now=T0, jobs=(j,), lock=LockObs(mine=True)))
    assert a.create.step == "migrate"


# ---------------------------------------------------------------------------------------------------------------
# The exhaustive table: phase (current step) x job state x suspend x lock x retry annotation


JOB_STATES = ["active", "ok", "transient", "permanent", "checks", "missing"]
LOCKS = ["mine", "free", "other"]


def _status_at(step: str, m) -> tuple[dict, dict]:
    """Drive a Sim to the point where the Job of ``step`` was just created."""
    sim = Sim(m)
    a = sim.step()
    while a.create.step != step:
        sim.finish(a.create.step, OK_RESULTS[a.create.step])
        a = sim.step()
    return sim.status, sim.jobs


@pytest.mark.parametrize("step,job_state,suspend,lock,retry_changed",
                         list(itertools.product(STEPS, JOB_STATES, [False, True], LOCKS, [False, True])))
def test_table(step, job_state, suspend, lock, retry_changed):
    m0 = mig()
    st, jobs = _status_at(step, m0)
    name = st["jobs"][step]
    res = {"ok": OK_RESULTS[step],
           "transient": result(step, "TransientError", "DatabaseUnreachable", "down"),
           "permanent": result(step, "PermanentError", "InternalError", "boom"),
           "checks": result(step, "ChecksFailed", "ChecksFailed", "checks", total=3,
                            checks=[{"name": "x", "count": 3}])}.get(job_state)
    jl = []
    if job_state == "active":
        jl = [jobs[name]]
    elif job_state != "missing":
        jl = [finished(name, step, res)]
    m = mig(suspend=suspend, retry="new" if retry_changed else None)
    if suspend:  # a suspend-only change bumps the generation but keeps the run
        m = mig(suspend=True, generation=2, retry="new" if retry_changed else None)
    obs = Observed(now=T0, jobs=tuple(jl), lock=LockObs(mine=lock == "mine",
                                                           holder="team/other" if lock == "other" else None))
    a = decide(m, copy.deepcopy(st), obs)
    out = a.status
    assert_kstatus(out, m.generation)
    assert out["run"]["generation"] == 1  # same run: suspend is not a spec change
    # never create a Job without the lock; never release while something of ours runs
    if a.create:
        assert lock != "other" and not suspend
        assert (a.lock == "acquire") == (lock == "free")
        assert out["jobs"][a.create.step] == a.create.name
    if job_state == "active":
        assert a.create is None and a.lock is None and out["phase"] == PHASE[step]
        return
    if job_state == "missing":  # crash between the status write and the create: same name again
        if not suspend and lock != "other":
            assert a.create.name == name
        else:
            assert a.create is None
            assert out["phase"] == ("Suspended" if suspend else "Pending")
        return
    if job_state == "transient":
        assert a.create is None and out["phase"] == PHASE[step] and out["run"]["retryAt"]
        assert a.lock is None
        return
    if job_state in ("permanent", "checks"):
        expected = "Blocked" if (step == "precheck" and job_state == "checks") else "Failed"
        # the retry annotation only restarts a run that was already stalled before
        assert out["phase"] == expected and a.create is None
        assert (a.lock == "release") == (lock == "mine")
        return
    # ok: the next step's Job, unless suspended / locked out; verify ends the run
    if step == "verify":
        assert out["phase"] == "Succeeded" and a.create is None
        assert (a.lock == "release") == (lock == "mine")
        return
    nxt = STEPS[STEPS.index(step) + 1]
    if suspend:
        assert out["phase"] == "Suspended" and a.create is None
        assert (a.lock == "release") == (lock == "mine")
    elif lock == "other":
        assert out["phase"] == "Pending" and cond(out, "Ready")["reason"] == "WaitingForDatabaseLock"
        assert "team/other" in cond(out, "Ready")["message"] and a.requeue_after
    else:
        assert a.create.step == nxt and out["phase"] == PHASE[nxt]


@pytest.mark.parametrize("stalled_phase", ["Blocked", "Failed"])
@pytest.mark.parametrize("lock", LOCKS)
def test_retry_annotation_on_stalled(stalled_phase, lock):
    bad = {"Blocked": {"precheck": result("precheck", "ChecksFailed", "ViolationsFound", "bad", total=1,
                                          checks=[{"name": "c", "count": 1}])},
           "Failed": {"migrate": result("migrate", "PermanentError", "MigrationFailed", "bad")}}[stalled_phase]
    sim = Sim(mig(retry="a"))
    sim.run(bad)
    assert sim.status["phase"] == stalled_phase
    obs = Observed(now=T0, jobs=tuple(sim.jobs.values()),
                   lock=LockObs(mine=lock == "mine", holder="team/other" if lock == "other" else None))
    same = decide(mig(retry="a"), copy.deepcopy(sim.status), obs)
    assert same.create is None and same.status["phase"] == stalled_phase
    a = decide(mig(retry="b"), copy.deepcopy(sim.status), obs)
    if lock == "other":
        assert a.create is None and a.status["phase"] == "Pending"
    else:
        assert a.create.name == "shop-1-backup-2" and a.status["phase"] == "BackingUp"
        assert "lastError" not in a.status and a.status["run"]["retry"] == "b"


def test_retry_annotation_is_ignored_while_running_and_after_success():
    sim = Sim(mig(retry="a"))
    sim.step()
    sim.m = mig(retry="b")
    assert sim.step().create is None  # the backup Job is still running
    sim.run()
    assert sim.status["phase"] == "Succeeded"
    sim.m = mig(retry="c")
    a = sim.step()
    assert a.create is None and a.status["phase"] == "Succeeded"


# ---------------------------------------------------------------------------------------------------------------
# Generations


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("old_job", ["active", "done"])
def test_spec_change_during_a_run_starts_a_new_run(step, old_job):
    sim = Sim(mig())
    st, jobs = _status_at(step, sim.m)
    name = st["jobs"][step]
    sim.status, sim.jobs = st, dict(jobs)
    if old_job == "done":
        sim.finish(step, OK_RESULTS[step])
    sim.lock_mine = True
    sim.m = mig(generation=2, migrations={"image": "registry.example/shop:1.3", "targetRevision": "head"})
    a = sim.step()
    assert a.status["observedGeneration"] == 2 and a.status["run"]["generation"] == 2
    assert "RunStarted" in [e.reason for e in a.events]
    if old_job == "active":
        assert a.create is None and a.status["phase"] == "Pending"
        assert cond(a.status, "Ready")["reason"] == "WaitingForPreviousRun" and name in cond(a.status, "Ready")["message"]
        sim.finish(step, OK_RESULTS[step], name=name)
        a = sim.step()
    assert a.create.name == "shop-2-backup-1"
    a = sim.run()
    assert a.status["phase"] == "Succeeded" and a.status["observedGeneration"] == 2


def test_suspend_before_start_then_resume_keeps_the_run():
    sim = Sim(mig(suspend=True))
    a = sim.step()
    assert a.status["phase"] == "Suspended" and a.create is None and sim.created == []
    assert_kstatus(a.status, 1)
    sim.m = mig(suspend=False, generation=2)
    a = sim.step()
    assert a.create.name == "shop-1-backup-1"  # same run, first generation's names
    a = sim.run()
    assert a.status["phase"] == "Succeeded" and a.status["observedGeneration"] == 2


def test_ready_false_until_the_new_generation_succeeds():
    sim = Sim(mig())
    sim.run()
    assert cond(sim.status, "Ready")["status"] == "True"
    sim.m = mig(generation=2, migrations={"image": "x:2"})
    a = sim.step()
    assert cond(a.status, "Ready")["status"] == "False" and a.status["phase"] == "BackingUp"
    b = body(generation=2)
    b["status"] = a.status
    assert not S.is_ready(b)


def test_new_run_keeps_database_facts_only():
    sim = Sim(mig())
    sim.run()
    old = copy.deepcopy(sim.status)
    sim.m = mig(generation=2, migrations={"image": "x:2"})
    a = sim.step()
    assert a.status["currentRevision"] == old["currentRevision"] and a.status["backup"]["path"]
    for k in ("violations", "appliedRevisions", "lastError", "plan", "finishedAt"):
        assert k not in a.status


# ---------------------------------------------------------------------------------------------------------------
# Secrets and the database lock


def test_missing_secret_stalls_without_creating_and_recovers():
    sim = Sim(mig())
    sim.secret_error = 'Secret "db" not found in namespace team'
    a = sim.step()
    st = a.status
    assert a.create is None and st["phase"] == "Pending" and sim.created == []
    assert cond(st, "Ready")["reason"] == "SecretNotFound" and cond(st, "Stalled")["status"] == "True"
    assert st["lastError"]["reason"] == "SecretNotFound" and a.requeue_after == 30
    assert [e.type for e in a.events if e.reason == "SecretNotFound"] == ["Warning"]
    assert sim.step().events == []  # no repeated events while nothing changes
    sim.secret_error = None
    a = sim.step()
    assert a.create.name == "shop-1-backup-1" and "lastError" not in a.status


def test_lock_held_by_other_waits_then_proceeds():
    sim = Sim(mig(), lock_holder="other-ns/billing")
    a = sim.step()
    assert a.create is None and a.status["phase"] == "Pending" and a.requeue_after == 5
    assert cond(a.status, "Reconciling")["status"] == "True"
    assert cond(a.status, "Ready")["reason"] == "WaitingForDatabaseLock"
    sim.lock_holder = None
    a = sim.step()
    assert a.lock == "acquire" and a.create.name == "shop-1-backup-1"


def test_lock_released_only_after_own_jobs_finished():
    m = mig()
    sim = Sim(m)
    sim.run()
    st = sim.status
    # an old-generation Job still running holds on to the lock
    other = JobObs(name="shop-0-migrate-1", step="migrate", generation=0, state=ACTIVE)
    a = decide(m, copy.deepcopy(st), Observed(now=T0, jobs=(other,), lock=LockObs(mine=True)))
    assert a.lock is None
    a = decide(m, copy.deepcopy(st), Observed(now=T0, jobs=(), lock=LockObs(mine=True)))
    assert a.lock == "release"
    a = decide(m, copy.deepcopy(st), Observed(now=T0, jobs=(), lock=LockObs(mine=False)))
    assert a.lock is None


def test_status_first_intent_log_survives_crash_before_create():
    """The operator wrote status (jobs.migrate=X) and died before creating X: X is created, never X+1."""
    sim = Sim(mig())
    a = sim.step()
    sim.finish("backup", OK_RESULTS["backup"])
    a = sim.step()
    name = a.create.name
    del sim.jobs[name]  # the create never happened
    sim.created.remove(name)
    a = sim.step()
    assert a.create.name == name and "JobCreated" not in [e.reason for e in a.events]
    a = sim.run()
    assert sim.created.count(name) == 1 and a.status["phase"] == "Succeeded"


def test_every_phase_has_valid_conditions():
    seen = set()
    for bad_step, bad in [(None, None)] + [(s, result(s, "PermanentError", "X", "y")) for s in STEPS]:
        sim = Sim(mig())
        sim.run({bad_step: bad} if bad_step else None)
        seen.update(sim.phases)
    assert {"BackingUp", "Prechecking", "Migrating", "Verifying", "Succeeded", "Failed"} <= seen


def test_long_messages_are_cut():
    sim = Sim(mig())
    a = sim.run({"backup": result("backup", "PermanentError", "BackupFailed", "x" * 5000)})
    assert len(a.status["lastError"]["message"]) <= 1024
    assert all(len(c["message"]) <= 1024 for c in a.status["conditions"])


def test_migrate_leftovers_become_events():
    """An INVALID index a failed attempt left (data.leftovers of the migrate result) is one Warning Event each:
    LeftoverIndexFound while it is there, LeftoverIndexDropped once dropped before the retry."""
    sim = Sim(mig(backup={"enabled": False}))
    sim.step()
    sim.finish("precheck", OK_RESULTS["precheck"])
    sim.step()
    left = {"schema": "Sales", "table": "Ev", "index": "ix_Ev_Code", "revision": "0002"}
    sim.finish("migrate", result("migrate", "TransientError", "LockTimeout", "lock timeout",
                                 leftovers=[{**left, "dropped": False}]))
    a = sim.step()
    found = [e for e in a.events if e.reason == "LeftoverIndexFound"]
    assert len(found) == 1 and found[0].type == "Warning"
    assert "ix_Ev_Code" in found[0].message and "schema Sales" in found[0].message and "0002" in found[0].message
    sim.now += dt.timedelta(seconds=10)
    sim.step()
    sim.finish("migrate", result("migrate", reason="Migrated", fromRevision="0001", toRevision="0002",
                                 applied=["0002"], leftovers=[{**left, "dropped": True}]))
    a = sim.step()
    dropped = [e for e in a.events if e.reason == "LeftoverIndexDropped"]
    assert len(dropped) == 1 and "DROP INDEX CONCURRENTLY" in dropped[0].message


def test_plan_carries_expected_revisions_version_table_and_separate_identifiers_to_verify():
    pre = result("precheck", reason="PrecheckPassed", currentRevision="0002a", targetRevision="0002b",
                 pending=["0002b"], expectedRevisions=["0002a", "0002b"], total=0, maxViolations=0,
                 versionTable={"schema": "billing", "name": "billing_alembic_version"},
                 checks=[{"name": "n", "schema": "Sales", "table": "order.archive", "column": "Note",
                          "kind": "notnull", "definition": '"Note" NOT NULL', "count": 0, "presentAtTarget": True}])
    sim = Sim(mig(backup={"enabled": False}))
    sim.step()
    sim.finish("precheck", pre)
    a = sim.step()
    plan = a.status["plan"]
    assert plan["expectedRevisions"] == ["0002a", "0002b"]
    assert plan["versionTable"] == {"schema": "billing", "name": "billing_alembic_version"}
    assert plan["checks"] == [{"name": "n", "schema": "Sales", "table": "order.archive", "column": "Note",
                               "kind": "notnull", "definition": '"Note" NOT NULL', "presentAtTarget": True}]
