"""The operator's rehearsal (spec.rehearsal): decide() sequences a rehearse step after backup and precheck,
before migrate; the rendered rehearse Job; the status it leaves. Without a cluster (the real rehearsal runs on the
test bed in tests/e2e/test_operator_rehearsal.py)."""

from __future__ import annotations

import copy
import json
import secrets

from schemagate.core import jobs as J
from schemagate.core.decide import FAILED, JobObs
from tests.unit.helpers import Sim, mig, result

SETTINGS = J.JobSettings(runner_image="ghcr.io/schemagate/operator:test")
LOCK = {"table": "menu_items", "mode": "ACCESS EXCLUSIVE", "heldSeconds": 2.1,
        "statement": "ALTER TABLE menu_items ADD COLUMN version INTEGER DEFAULT '0' NOT NULL"}
REHEARSED = result("rehearse", reason="Rehearsed",
                   message="the pending revisions ran on a restored copy of shop (0002 2.20s); locks: 0002: ACCESS "
                           "EXCLUSIVE on menu_items for 2.1 s, 0 rows changed; the copy verified",
                   scratchDatabase="shop_sg_rehearsal_0123abcd", scratchDropped=True,
                   revisions=[{"revision": "0002", "seconds": 2.2, "succeeded": True, "rowsChanged": 0,
                               "strongestLock": LOCK}],
                   statements=[{"revision": "0002", "statement": LOCK["statement"], "seconds": 0.01,
                                "lock": {k: LOCK[k] for k in ("table", "mode", "heldSeconds")}}],
                   verify={"outcome": "Succeeded", "reason": "Verified", "message": "verified", "data": {"x": 1}})
FAILED_REHEARSAL = result("rehearse", outcome="ChecksFailed", reason="RehearsalFailed",
                          message="the rehearsal on a restored copy failed: revision 0002 failed at statement "
                                  "`ALTER TABLE orders ADD CONSTRAINT ck CHECK (qty > 0)`: check violated",
                          failedRevision="0002", failedStatement="ALTER TABLE orders ADD CONSTRAINT ck CHECK (qty > 0)",
                          revisions=[{"revision": "0002", "seconds": 0.1, "succeeded": False, "rowsChanged": 0,
                                      "strongestLock": None}])
ON = {"enabled": True}


def test_off_by_default_no_rehearse_step():
    sim = Sim(mig())
    sim.run()
    assert sim.phases == ["BackingUp", "Prechecking", "Migrating", "Verifying", "Succeeded"]
    assert "rehearsal" not in sim.status


def test_rehearse_runs_after_backup_and_precheck_before_migrate():
    sim = Sim(mig(rehearsal=ON))
    a = sim.run({"rehearse": REHEARSED})
    assert sim.phases == ["BackingUp", "Prechecking", "Rehearsing", "Migrating", "Verifying", "Succeeded"]
    assert [n.split("-")[2] for n in sim.created] == ["backup", "precheck", "rehearse", "migrate", "verify"]
    r = a.status["rehearsal"]
    assert r["reason"] == "Rehearsed" and r["revisions"][0]["strongestLock"]["mode"] == "ACCESS EXCLUSIVE"
    assert r["statements"][0]["lock"]["table"] == "menu_items" and r["scratchDropped"] is True
    assert r["verify"] == {"outcome": "Succeeded", "reason": "Verified", "message": "verified"}  # details dropped
    assert "Rehearsed" in [e.reason for e in sim.events]


def test_thousands_of_rehearsed_statements_keep_the_status_small():
    """The whole result comes from the step's log, so the statements are not cut on the way: the status keeps
    MAX_STATUS_STATEMENTS, those that took a lock or changed rows first, and counts the rest."""
    from schemagate.core.decide import MAX_STATUS_STATEMENTS

    quiet = [{"revision": "0002", "statement": f"UPDATE t SET x = {i} WHERE false", "seconds": 0.0, "lock": None,
              "rows": 0} for i in range(3000)]
    quiet[2500] = {**quiet[2500], "rows": 12}
    many = copy.deepcopy(REHEARSED)
    many["data"]["statements"] = quiet + REHEARSED["data"]["statements"]
    a = Sim(mig(rehearsal=ON)).run({"rehearse": many})
    r = a.status["rehearsal"]
    assert len(r["statements"]) == MAX_STATUS_STATEMENTS and r["omitted"] == {"statements": 3001 - MAX_STATUS_STATEMENTS}
    assert r["statements"][-1]["lock"]["table"] == "menu_items"  # the one that took a lock, in its place (last)
    assert any(x.get("rows") == 12 for x in r["statements"])


def test_failed_rehearsal_blocks_before_migrate():
    sim = Sim(mig(rehearsal=ON))
    a = sim.run({"rehearse": FAILED_REHEARSAL})
    assert sim.phases[-1] == "Blocked" and not any("-migrate-" in n for n in sim.created)
    assert a.status["lastError"]["reason"] == "RehearsalFailed"
    ready = next(c for c in a.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RehearsalFailed" and "0002" in ready["message"] and "ALTER TABLE orders" in ready["message"]
    assert a.status["rehearsal"]["failedRevision"] == "0002"


def test_the_smoke_test_failing_blocks_like_a_failed_rehearsal():
    sim = Sim(mig(rehearsal={**ON, "job": {"command": ["pytest", "-x"]}}))
    from tests.unit.helpers import OK_RESULTS

    a = sim.step()
    while a.create is None or a.create.step != "rehearse":  # backup and precheck succeed
        if a.create is not None:
            sim.finish(a.create.step, OK_RESULTS[a.create.step])
        a = sim.step()
    name = sim.status["jobs"]["rehearse"]
    j = sim.jobs[name]
    # the user's container printed its own output, no StepResult: exit code 1
    sim.jobs[name] = JobObs(name=j.name, step=j.step, generation=j.generation, counter=j.counter, state=FAILED,
                            result=None, exit_code=1, message="FAILED tests/test_orders.py::test_total")
    a = sim.step()
    assert a.phase == "Blocked" and a.status["lastError"]["reason"] == "RehearsalFailed"
    assert "spec.rehearsal.job" in a.status["lastError"]["message"]
    assert "test_orders.py" in a.status["lastError"]["message"] and a.create is None


def test_nothing_pending_skips_the_rehearsal():
    pre = result("precheck", reason="PrecheckPassed", currentRevision="0002", targetRevision="0002", pending=[],
                 total=0, checks=[])
    sim = Sim(mig(rehearsal=ON))
    sim.run({"precheck": pre})
    assert "Rehearsing" not in sim.phases and sim.phases[-1] == "Succeeded"


def _job(m, backup=None, plan=None):
    job = J.build_job(m, "rehearse", "shop-1-rehearse-1", 1, SETTINGS, plan or {"targetRevision": "0003"},
                      backup=backup)
    spec = job["spec"]["template"]["spec"]
    return job, {c["name"]: c for c in spec["initContainers"] + spec["containers"]}, spec


def test_rehearse_job_rendering():
    m = mig(rehearsal={**ON, "maxSize": "10Gi"})
    job, c, spec = _job(m, backup={"path": "/backups/shop-1.dump"})
    assert [x["name"] for x in spec["initContainers"]] == ["install-runner", "scratch-guard", "prepare",
                                                           "rehearse-upgrade"]
    assert [x["name"] for x in spec["containers"]] == ["finish"]
    scratch = J.scratch_database(m)
    assert scratch.startswith("shop_sg_rehearsal_") and len(scratch) <= 63
    assert J.scratch_database(mig(name="shop", rehearsal=ON)) == scratch  # the same for every run
    assert c["scratch-guard"]["restartPolicy"] == "Always"
    for name in ("scratch-guard", "prepare", "rehearse-upgrade", "finish"):
        cmd = c[name]["command"]
        assert cmd[cmd.index("--scratch-database") + 1] == scratch, name
    prep = c["prepare"]["command"]
    assert prep[prep.index("--backup") + 1] == "/backups/shop-1.dump" and prep[prep.index("--max-size") + 1] == "10Gi"
    assert {"name": "backups", "mountPath": J.BACKUP_DIR, "readOnly": True} in c["prepare"]["volumeMounts"]
    up = c["rehearse-upgrade"]
    assert up["image"] == "registry.example/shop:1.2" and up["command"][3] == "rehearse-upgrade"
    assert up["command"][up["command"].index("--target") + 1] == "0003"
    assert up["command"][up["command"].index("--lock-timeout") + 1] == "5s"
    fin = c["finish"]
    assert fin["image"] == SETTINGS.runner_image and "--plan-env" in fin["command"]
    env = {e["name"]: e.get("value") for e in fin["env"]}
    assert json.loads(env[J.PLAN_ENV])["targetRevision"] == "0003"
    text = json.dumps(job)
    assert "password" not in text.lower() or "secretKeyRef" in text  # credentials only as secretKeyRef
    # no backup of this run (or backups on an emptyDir): a fresh one in the pod's work directory
    _, c, spec = _job(mig(rehearsal=ON, backup={"enabled": False}))
    prep = c["prepare"]["command"]
    assert prep[prep.index("--backup-dir") + 1] == "/work/backup" and "--backup" not in prep
    assert all(v["name"] != "backups" for v in spec["volumes"])


def test_rehearse_job_with_smoke_test_and_separate_server():
    m = mig(rehearsal={**ON, "databaseUrlFrom": {"secretKeyRef": {"name": "staging", "key": "url"}},
                       "job": {"command": ["pytest"], "args": ["-x", "tests/smoke"],
                               "env": [{"name": "APP_ENV", "value": "rehearsal"}]}})
    _, c, spec = _job(m)
    assert [x["name"] for x in spec["initContainers"]][-1] == "job"
    job = c["job"]
    cmd = job["command"]
    assert cmd[:4] == ["python", "-m", "schemagate.runner.inject", "with-rehearsal-url"]
    assert cmd[cmd.index("--") + 1:] == ["pytest", "-x", "tests/smoke"]
    assert cmd[cmd.index("--scratch-url-env") + 1] == J.REHEARSAL_URL_ENV
    env = {e["name"]: e for e in job["env"]}
    assert env["APP_ENV"]["value"] == "rehearsal"
    assert env[J.REHEARSAL_URL_ENV]["valueFrom"]["secretKeyRef"] == {"name": "staging", "key": "url"}
    assert job["image"] == "registry.example/shop:1.2"
    for name in ("scratch-guard", "prepare", "rehearse-upgrade", "finish"):
        assert J.REHEARSAL_URL_ENV in {e["name"] for e in c[name]["env"]}, name


def test_a_large_lock_report_fits_the_termination_message():
    from schemagate.contract.stepresult import (
        TERMINATION_MESSAGE_LIMIT,
        Outcome,
        StepResult,
        from_termination_message,
        to_termination_message,
    )

    statements = [{"revision": "0002", "statement": f"UPDATE orders SET x = '{secrets.token_hex(40)}' WHERE id % 300 = {i}",
                   "seconds": 0.01, "lock": None, "rows": 0} for i in range(150)]
    statements += [{"revision": "0002", "statement": "ALTER TABLE orders ADD COLUMN y int", "seconds": 0.01,
                    "lock": {"table": "orders", "mode": "ACCESS EXCLUSIVE", "heldSeconds": 2.1}}]
    r = StepResult(step="rehearse", outcome=Outcome.SUCCEEDED, reason="Rehearsed", message="ok",
                   data={"revisions": REHEARSED["data"]["revisions"], "statements": statements,
                         "verify": {"outcome": "Succeeded", "reason": "Verified", "message": "v",
                                    "data": {"constraints": ["x" * 50] * 40}},
                         "verification": "sha256 ok, full read"})
    text = to_termination_message(r)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    d = from_termination_message(text)["data"]
    assert d["revisions"][0]["strongestLock"]["mode"] == "ACCESS EXCLUSIVE"  # the per-revision summary stays
    assert any(s.get("lock") for s in d["statements"])  # statements with a lock stay, those without go first
    assert d["verify"]["reason"] == "Verified" and d["omitted"]["statements"] >= 150
