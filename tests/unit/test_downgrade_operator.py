"""The operator's downgrade (spec.allowDowngrade): decide() and the rendered Jobs, without a cluster.

The real downgrade (shadow, data at risk, alembic downgrade, verify) runs on the test bed in
tests/e2e/test_operator_downgrade.py; here: the refusal before any Job, the precheck's downgrade plan carried to
the migrate and verify Jobs, DataAtRisk blocking, and the status a downgrade leaves."""

from __future__ import annotations

import json

import pytest

from schemagate.core import jobs as J
from tests.unit.helpers import Sim, mig, result

SETTINGS = J.JobSettings(runner_image="ghcr.io/schemagate/operator:test")
DOWN = {"fromRevision": "0002", "targetRevisions": [], "maxDataLoss": 500, "rowsAtRisk": 120,
        "removes": {"tables": ["public.menu_items"], "columns": [], "constraints": ["public.menu_items.ck_price"],
                    "indexes": []},
        "dataAtRisk": [{"schema": "public", "table": "menu_items", "column": None, "rows": 120,
                        "what": "downgrade drops table public.menu_items: 120 rows"}]}
PRE_DOWN = result("precheck", reason="DowngradePlanned", message="downgrade from 0002 to base",
                  direction="downgrade", currentRevision="0002", targetRevision="base", expectedRevisions=[],
                  pending=[], total=0, checks=[], downgrade=DOWN)
MIGRATE_DOWN = result("migrate", reason="Downgraded", direction="downgrade", fromRevision="0002", toRevision="base")
VERIFY_DOWN = result("verify", reason="Verified", currentRevision=None, targetRevision="base")


def _migrations(target: str) -> dict:
    return {"image": "registry.example/shop:1.2", "directory": "/app", "targetRevision": target}


def test_base_without_allow_downgrade_is_refused_before_any_job():
    sim = Sim(mig(migrations=_migrations("base")))
    a = sim.run()
    assert sim.created == [] and a.create is None and a.lock is None
    st = a.status
    assert st["phase"] == "Failed" and st["lastError"]["reason"] == "DowngradeNotAllowed"
    assert "spec.allowDowngrade: true" in st["lastError"]["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DowngradeNotAllowed" and "spec.allowDowngrade" in ready["message"]
    assert [e.reason for e in sim.events].count("DowngradeNotAllowed") == 1
    again = sim.step()  # a re-sync changes nothing and posts nothing
    assert again.create is None and again.events == [] and again.status["phase"] == "Failed"


def test_allowed_downgrade_runs_backup_precheck_downgrade_verify():
    sim = Sim(mig(migrations=_migrations("base"), allowDowngrade=True, maxDataLoss=500))
    a = sim.run({"precheck": PRE_DOWN, "migrate": MIGRATE_DOWN, "verify": VERIFY_DOWN})
    assert sim.phases == ["BackingUp", "Prechecking", "Migrating", "Verifying", "Succeeded"]
    st = a.status
    assert st["plan"]["downgrade"]["removes"]["tables"] == ["public.menu_items"]
    assert st["currentRevision"] == "base"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["message"].startswith("downgraded to base")
    assert "Downgraded" in [e.reason for e in sim.events]


def test_downgrade_jobs_carry_the_plan():
    m = mig(migrations=_migrations("0001"), allowDowngrade=True, maxDataLoss=7)
    pre = J.build_job(m, "precheck", "shop-1-precheck-1", 1, SETTINGS)
    inits = {c["name"]: c for c in pre["spec"]["template"]["spec"]["initContainers"]}
    assert "--allow-downgrade" in inits["shadow-upgrade"]["command"]
    count = pre["spec"]["template"]["spec"]["containers"][0]["command"]
    assert count[count.index("--max-data-loss") + 1] == "7"
    plan = {"targetRevision": "0001", "expectedRevisions": ["0001"], "pending": [],
            "downgrade": {**DOWN, "targetRevisions": ["0001"]}}
    job = J.build_job(m, "migrate", "shop-1-migrate-1", 1, SETTINGS, plan)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["name"] == "downgrade" and c["image"] == "registry.example/shop:1.2"
    cmd = c["command"]
    assert cmd[:4] == ["python", "-m", "schemagate.runner.inject", "downgrade"]
    assert cmd[cmd.index("--target") + 1] == "0001" and cmd[cmd.index("--expect-from") + 1] == "0002"
    assert cmd[cmd.index("--lock-timeout") + 1] == "5s"
    verify = J.build_job(m, "verify", "shop-1-verify-1", 1, SETTINGS, plan)
    env = {e["name"]: e.get("value") for e in verify["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert '"downgrade"' in env[J.PLAN_ENV]


def test_without_allow_downgrade_the_precheck_tries_no_downgrade():
    pre = J.build_job(mig(), "precheck", "shop-1-precheck-1", 1, SETTINGS)
    inits = {c["name"]: c for c in pre["spec"]["template"]["spec"]["initContainers"]}
    assert "--allow-downgrade" not in inits["shadow-upgrade"]["command"]
    up = J.build_job(mig(), "migrate", "shop-1-migrate-1", 1, SETTINGS, {"targetRevision": "0002"})
    assert up["spec"]["template"]["spec"]["containers"][0]["name"] == "migrate"


def test_data_at_risk_blocks_and_never_downgrades():
    blocked = result("precheck", "ChecksFailed", "DataAtRisk",
                     "the downgrade to base would lose 120 rows (spec.maxDataLoss 0): downgrade drops "
                     "menu_items.version: 120 rows hold non-default values; nothing was changed",
                     direction="downgrade", currentRevision="0002", targetRevision="base", pending=[], total=0,
                     checks=[], downgrade={**DOWN, "maxDataLoss": 0})
    sim = Sim(mig(migrations=_migrations("base"), allowDowngrade=True))
    a = sim.run({"precheck": blocked})
    st = a.status
    assert st["phase"] == "Blocked" and st["lastError"]["reason"] == "DataAtRisk"
    assert "menu_items.version: 120 rows" in st["lastError"]["message"]
    assert not any("migrate" in n for n in sim.created) and a.lock == "release"


def test_a_named_revision_below_is_refused_by_the_precheck():
    refused = result("precheck", "PermanentError", "DowngradeNotAllowed",
                     "target revision '0001' is older than the database's revision(s) 0002: a downgrade, which runs "
                     "only when allowed (schemagate run --allow-downgrade; spec.allowDowngrade: true)")
    sim = Sim(mig(migrations=_migrations("0001")))
    a = sim.run({"precheck": refused})
    assert a.status["phase"] == "Failed" and a.status["lastError"]["reason"] == "DowngradeNotAllowed"
    assert not any("migrate" in n for n in sim.created)
    assert "shop-1-backup-1" in sim.created  # reading the revision graph needs the application's image


def test_a_large_downgrade_plan_fits_the_termination_message():
    """Wholesale to base removes 9 tables, 66 constraints and 13 indexes: listed by table, the precheck's result
    keeps its downgrade plan within the kubelet's 4096 bytes (a plan cut to ``omitted.all`` would lose it)."""
    from schemagate.contract.stepresult import from_termination_message, to_termination_message
    from schemagate.runner.downgrade import compact_removes

    tables = {("public", f"table_{i}"): "" for i in range(9)}
    gone = {"tables": tables, "columns": {},
            "constraints": {("public", f"table_{i % 9}", f"constraint_number_{i}_of_the_table"): "CHECK (x > 0)"
                            for i in range(66)},
            "indexes": {("public", f"table_{i % 9}", f"ix_table_{i}_column"): "CREATE INDEX ..." for i in range(13)}}
    removes = compact_removes(gone)
    assert removes["tables"] == sorted(f"public.table_{i}" for i in range(9))
    assert removes["constraints"] == [] and "truncated" not in removes
    down = {**DOWN, "removes": removes, "dataAtRisk": [{"table": f"public.table_{i}", "column": None, "rows": 5}
                                                       for i in range(9)]}
    res = {**PRE_DOWN, "data": {**PRE_DOWN["data"], "downgrade": down}}
    assert from_termination_message(to_termination_message(res))["data"]["downgrade"]["removes"] == removes
    many = {**gone, "tables": {}, "constraints": {("public", "t", f"c_{i:04d}_" + "x" * 40): "" for i in range(200)}}
    cut = compact_removes(many)
    assert cut["truncated"]["constraints"] > 0 and len(json.dumps(cut)) <= 1800


def test_omitted_counts_in_the_status_are_integers():
    """A result cut to its envelope says ``omitted: {all: true}``; the CRD counts per list (integers)."""
    pre = result("precheck", currentRevision="0001", targetRevision="0002", pending=["0002"], total=0,
                 truncated=True, omitted={"all": True, "checks": 3})
    sim = Sim(mig())
    a = sim.run({"precheck": pre})
    assert a.status["violations"]["omitted"] == {"all": 1, "checks": 3}


# ---------------------------------------------------------------------------------------------------------------
# A named revision below the database, known from this resource's earlier runs: refused before any Job

PRE_UP = result("precheck", reason="PrecheckPassed", currentRevision=None, targetRevision="0003",
                expectedRevisions=["0003"], pending=["0001", "0002", "0003"], total=0, checks=[])
MIGRATE_UP = result("migrate", reason="Migrated", fromRevision=None, toRevision="0003",
                    applied=["0001", "0002", "0003"])
VERIFY_UP = result("verify", reason="Verified", currentRevision="0003", targetRevision="0003")


def _upgraded_to_0003(**spec) -> Sim:
    sim = Sim(mig(**spec))
    a = sim.run({"precheck": PRE_UP, "migrate": MIGRATE_UP, "verify": VERIFY_UP})
    assert a.status["phase"] == "Succeeded" and a.status["currentRevision"] == "0003"
    return sim


def _new_spec(sim: Sim, generation: int = 2, **spec) -> None:
    sim.m = mig(generation=generation, **spec)


@pytest.mark.parametrize("target", ["0001", "0002", "0001,0002", "0003", "heads", "0004", "00", "0002+1",
                                    "branch@0002"])
def test_a_named_target_gets_its_jobs_whatever_the_status_remembers(target):
    """After a run to 0003, a lower named target is still a question for the revision graph and the database as
    they are now (a DatabaseRestore or a downgrade by hand may have moved it back, making 0002 an upgrade): the
    backup Job is created, and its ``plan`` init container refuses a real downgrade before anything is dumped."""
    sim = _upgraded_to_0003()
    _new_spec(sim, migrations=_migrations(target))
    a = sim.step()
    assert a.create is not None and a.create.step == "backup" and a.status["phase"] == "BackingUp"
    assert "revisionsBelow" not in a.status


def test_allow_downgrade_runs_a_lower_target():
    sim = _upgraded_to_0003()
    _new_spec(sim, migrations=_migrations("0001"), allowDowngrade=True)
    a = sim.step()
    assert a.create is not None and a.create.step == "backup"


def test_an_upgrade_after_the_database_moved_back_outside_the_resource():
    """The database was downgraded by hand to 0001 after a run to 0003: target 0002 is an upgrade, and runs."""
    sim = _upgraded_to_0003()
    _new_spec(sim, migrations=_migrations("0002"))
    moved = result("precheck", reason="PrecheckPassed", currentRevision="0001", targetRevision="0002",
                   expectedRevisions=["0002"], pending=["0002"], total=0, checks=[])
    a = sim.run({"precheck": moved, "migrate": result("migrate", reason="Migrated", toRevision="0002",
                                                      applied=["0002"]),
                 "verify": result("verify", reason="Verified", currentRevision="0002")})
    assert a.status["phase"] == "Succeeded" and a.status["currentRevision"] == "0002", a.status


def test_the_backup_job_plans_a_named_target_before_it_dumps():
    """First run (nothing known): the backup pod's ``plan`` init container (application image) refuses a target
    below the database before the backup container starts; head needs no plan, nor does an allowed downgrade."""
    job = J.build_job(mig(migrations=_migrations("0001")), "backup", "shop-1-backup-1", 1, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    inits = [c["name"] for c in pod["initContainers"]]
    assert inits == ["install-runner", "plan"] and [c["name"] for c in pod["containers"]] == ["backup"]
    plan = pod["initContainers"][1]
    assert plan["image"] == "registry.example/shop:1.2" and plan["workingDir"] == "/app"
    assert plan["command"][:4] == ["python", "-m", "schemagate.runner.inject", "plan"]
    assert plan["command"][plan["command"].index("--target") + 1] == "0001"
    assert plan["terminationMessagePath"] == J.TERMINATION_LOG
    assert {v["name"] for v in pod["volumes"]} >= {"backups", "schemagate-runner", "tmp"}
    for m in (mig(), mig(migrations=_migrations("heads")), mig(migrations=_migrations("0001"), allowDowngrade=True)):
        pod = J.build_job(m, "backup", "shop-1-backup-1", 1, SETTINGS)["spec"]["template"]["spec"]
        assert "initContainers" not in pod


def test_a_refusal_by_the_backup_jobs_plan_fails_the_run_without_a_backup():
    refused = result("plan", "PermanentError", "DowngradeNotAllowed",
                     "target revision '0001' is older than the database's revision(s) 0003: a downgrade, which runs "
                     "only when allowed (schemagate run --allow-downgrade; spec.allowDowngrade: true); nothing was "
                     "changed")
    sim = Sim(mig(migrations=_migrations("0001")))
    a = sim.run({"backup": refused})
    st = a.status
    assert st["phase"] == "Failed" and st["lastError"]["reason"] == "DowngradeNotAllowed", st
    assert st["lastError"]["phase"] == "BackingUp" and "backup" not in st and "backups" not in st
    assert sim.created == ["shop-1-backup-1"] and a.lock == "release"
