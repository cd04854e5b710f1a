"""End to end on real PostgreSQL: both seed scenarios, lock timeouts, concurrent migrators, verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from schemagate import demo
from schemagate.contract.stepresult import (
    Outcome,
    StepResult,
    from_termination_message,
    to_termination_message,
)
from schemagate.contract.target import Target
from schemagate.runner import pipeline, verify
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.lock import ADVISORY_LOCK_KEY
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import (
    FOODTRUCK,
    ROOT,
    WHOLESALE,
    engine,
    execute,
    query,
    scalar,
    schema_snapshot,
    version,
)


def _run(url: str, config: Path, tmp_path: Path, **kw) -> tuple[StepResult, list[StepResult]]:
    steps: list[StepResult] = []
    r = pipeline.run(Target(config, "head", url), backup_dir=tmp_path / "backups", on_step=steps.append, **kw)
    return r, steps


def test_foodtruck_goes_through(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    r, steps = _run(fresh_db, FOODTRUCK, tmp_path)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.reason == "Verified"
    assert [s.step for s in steps] == ["backup", "precheck", "migrate", "verify"]
    assert all(s.ok for s in steps)
    backup, pre, mig, ver = steps
    assert Path(backup.data["path"]).exists() and backup.data["verified"]
    assert pre.data["total"] == 0
    assert {c["name"]: c["count"] for c in pre.data["checks"]}["check_stock_non_negative"] == 0
    assert mig.data["applied"] == ["0002", "0003"]
    assert {"name": "check_stock_non_negative", "schema": "public", "table": "menu_items", "exists": True,
            "validated": True} in [{k: c[k] for k in ("name", "schema", "table", "exists", "validated")}
                                   for c in ver.data["constraints"]]
    assert {"name": "idx_menu_items_version", "valid": True} in ver.data["indexes"]
    assert ver.data["failures"] == []
    assert version(fresh_db) == "0003"
    assert scalar(fresh_db, "select count(*) from menu_items where version = 0") == 4
    assert len(to_termination_message(r).encode()) <= 4096


def test_intermediate_target_leaves_not_valid_constraint_on_purpose(fresh_db: str, tmp_path: Path) -> None:
    """Revision 0002 adds check_stock_non_negative NOT VALID (0003 validates it): verify at 0002 must accept
    that state, and still report it, instead of calling it a leftover."""
    demo.seed_foodtruck(fresh_db)
    steps: list[StepResult] = []
    r = pipeline.run(Target(FOODTRUCK, "0002", fresh_db), backup_dir=tmp_path / "backups", on_step=steps.append)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    pre, ver = steps[1], steps[3]
    assert {"name": "check_stock_non_negative", "table": "public.menu_items"} in pre.data["notValid"]
    assert ver.data["failures"] == []
    assert [e["name"] for e in ver.data["notValid"]] == ["check_stock_non_negative"]
    assert version(fresh_db) == "0002"
    # a NOT VALID constraint that the plan does not expect is still a failure
    execute(fresh_db, "ALTER TABLE menu_items ADD CONSTRAINT stray_check CHECK (stock < 1000000) NOT VALID")
    again = verify.verify(Target(FOODTRUCK, "0002", fresh_db), plan=pre.data)
    assert again.outcome is Outcome.CHECKS_FAILED
    assert any("stray_check" in f for f in again.data["failures"])
    assert not any("check_stock_non_negative" in f for f in again.data["failures"])


def test_wholesale_is_blocked_with_exact_counts_and_untouched(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_wholesale(fresh_db)
    before = schema_snapshot(fresh_db)
    r, steps = _run(fresh_db, WHOLESALE, tmp_path)
    assert (r.outcome, r.reason) == (Outcome.CHECKS_FAILED, "ViolationsFound"), r.message
    assert r.exit_code == 3
    assert [s.step for s in steps] == ["backup", "precheck"]
    counts = {c["name"]: c["count"] for c in steps[1].data["checks"] if c["count"]}
    assert counts == demo.WHOLESALE_VIOLATIONS
    assert steps[1].data["total"] == demo.WHOLESALE_TOTAL == 13
    assert {c["name"]: c["count"] for c in r.data["checks"]} == demo.WHOLESALE_VIOLATIONS
    assert schema_snapshot(fresh_db) == before and version(fresh_db) == "0001"
    assert scalar(fresh_db, "select count(*) from pg_database where datname <> current_database() and datname "
                            "like current_database() || '%'") == 0  # no shadow database left behind
    msg = to_termination_message(r)
    assert len(msg.encode()) <= 4096 and from_termination_message(msg)["reason"] == "ViolationsFound"


def test_wholesale_passes_once_the_data_is_fixed(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_wholesale(fresh_db)
    execute(fresh_db, """
        update credit_accounts set used_credit = credit_limit where used_credit > credit_limit;
        update credit_accounts set credit_limit = 0 where credit_limit < 0;
        delete from credit_transactions where amount <= 0;
        update credit_transactions set order_id = null where order_id not in (select id from orders);
        delete from ledger_entries where amount <= 0;
        delete from retailer_payments where amount <= 0;
        update wholesaler_products set stock = greatest(stock, 0, reserved_stock),
                                       reserved_stock = greatest(reserved_stock, 0);
        update orders set total_amount = null where total_amount <= 0;
        delete from stock_reservations where quantity <= 0;
    """)
    r, steps = _run(fresh_db, WHOLESALE, tmp_path, user_checks=["no_orphan_reservations=select count(*) from "
                                                                 "stock_reservations s left join orders o on "
                                                                 "o.id = s.order_id where o.id is null"])
    assert r.outcome is Outcome.SUCCEEDED, r.message
    ver = steps[-1]
    assert len([c for c in ver.data["constraints"] if c["validated"]]) >= 11
    assert len(ver.data["indexes"]) == 3 and all(i["valid"] for i in ver.data["indexes"])
    assert "no_orphan_reservations" in {c["name"] for c in ver.data["checks"]}
    assert query(fresh_db, "select confdeltype from pg_constraint where conname = 'credit_transactions_order_id_fkey'"
                 ) == [("n",)]


def test_bad_input_changes_nothing(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    before = schema_snapshot(fresh_db)
    for kw, reason in (({"target": "nope"}, "UnknownRevision"), ({"max_violations": -1}, "InvalidInput"),
                       ({"lock_timeout": "5 parsecs"}, "InvalidInput"), ({"user_checks": ["novalue"]},
                                                                          "InvalidInput")):
        target = kw.pop("target", "head")
        r = pipeline.run(Target(FOODTRUCK, target, fresh_db), backup_dir=tmp_path / "b", **kw)
        assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, reason), (kw, r.message)
    assert schema_snapshot(fresh_db) == before
    assert not (tmp_path / "b").exists()


def test_lock_timeout_retries_until_the_blocker_leaves(fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    e = engine(fresh_db)
    blocker = e.connect()
    blocker.exec_driver_sql("select * from menu_items limit 1")  # ACCESS SHARE held until the transaction ends
    released = threading.Event()

    def release() -> None:
        time.sleep(2.0)
        blocker.rollback()
        blocker.close()
        released.set()

    t = threading.Thread(target=release)
    t.start()
    log: list[str] = []
    try:
        r = migrate(Target(FOODTRUCK, "head", fresh_db), lock_timeout="200ms", retries=8, backoff=0.25, max_backoff=1.0,
                        log=log.append)
    finally:
        t.join()
        e.dispose()
    assert released.is_set()
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.data["attempts"] >= 2 and r.data["applied"] == ["0002", "0003"]
    assert r.data["lockTimeout"] == "200ms"
    assert any("lock timeout" in line for line in log)
    assert version(fresh_db) == "0003"


def test_lock_timeout_gives_up_as_transient(fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    e = engine(fresh_db)
    with e.connect() as blocker:
        blocker.exec_driver_sql("select * from menu_items limit 1")
        r = migrate(Target(FOODTRUCK, "head", fresh_db), lock_timeout="100ms", retries=1, backoff=0.1)
        blocker.rollback()
    e.dispose()
    assert (r.outcome, r.reason) == (Outcome.TRANSIENT_ERROR, "LockTimeout"), r.message
    assert r.exit_code == 5 and "0002" in r.message and r.data["attempts"] == 2
    assert version(fresh_db) == "0001"


def test_two_migrators_are_serialised_and_apply_once(fresh_db: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=fresh_db)
    e = engine(fresh_db)
    holder = e.connect().execution_options(isolation_level="AUTOCOMMIT")
    holder.execute(sa.text("select pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
    cmd = [sys.executable, "-m", "schemagate.runner.inject", "migrate", "-c", str(WHOLESALE), "--lock-timeout", "5s"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        # both reach the lock and poll it (the machine may be slow to start them: wait for it, not a fixed time)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and scalar(
                fresh_db, "select count(*) from pg_stat_activity where application_name = 'schemagate-runner' "
                          "and query like '%advisory%' and datname = current_database()") < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.2)
        time.sleep(1.5)  # a few more polls each
        assert all(p.poll() is None for p in procs)  # both wait for the lock
        assert version(fresh_db) is None
    finally:
        holder.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
        holder.close()
        e.dispose()
    outs = [p.communicate(timeout=180) for p in procs]
    results = [json.loads(o[0]) for o in outs]
    assert [p.returncode for p in procs] == [0, 0], outs
    applied = sorted(len(r["data"]["applied"]) for r in results)
    assert applied == [0, 3], results
    assert all("waiting for another migrator" in o[1] for o in outs), [o[1][-3000:] for o in outs]
    assert query(fresh_db, "select version_num from alembic_version") == [("0003",)]


def test_verify_finds_not_valid_constraint_invalid_index_and_user_violations(fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    upgrade(Target(FOODTRUCK, "0002", fresh_db))
    execute(fresh_db, "insert into menu_items (id, name, price, stock) values ('dup', 'Churros', 0, 1)")
    ec = engine(fresh_db).connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        ec.exec_driver_sql("create unique index concurrently menu_items_name_uq on menu_items (name)")
    except Exception:  # noqa: BLE001 - duplicate names: the build fails and leaves an INVALID index
        pass
    ec.close()
    plan = {"targetRevision": "0002",
            "checks": [{"name": "check_stock_non_negative", "table": "menu_items", "kind": "check"}],
            "indexes": []}
    r = verify.verify(Target(None, None, fresh_db), plan=plan, user_checks=["free_items=select count(*) from menu_items "
                                                                   "where price = 0"])
    assert (r.outcome, r.reason) == (Outcome.CHECKS_FAILED, "VerificationFailed"), r.message
    f = "\n".join(r.data["failures"])
    assert "check_stock_non_negative on menu_items is NOT VALID" in f
    assert "menu_items_name_uq" in f and "INVALID" in f
    assert "free_items" in f and "counts 1" in f
    assert r.data["currentRevision"] == "0002"
    # with the project: the revision is behind the target
    r = verify.verify(Target(FOODTRUCK, "head", fresh_db))
    assert any("pending" in x for x in r.data["failures"]), r.data


def test_verify_with_a_partial_plan_looks_at_every_table(fresh_db: str) -> None:
    """A ``partial`` plan (the operator had only the summary of the precheck's result, whose lists may be short):
    a NOT VALID constraint on a table the plan does not name is found all the same."""
    demo.seed_foodtruck(fresh_db)
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    execute(fresh_db, "alter table order_items add constraint ck_left_behind check (id <> '') not valid")
    plan = {"targetRevision": "0003", "checks": [{"name": "check_stock_non_negative", "table": "menu_items",
                                                  "kind": "check"}], "indexes": []}
    r = verify.verify(Target(None, None, fresh_db), plan=plan)
    assert r.outcome is Outcome.SUCCEEDED, r.data  # the plan names menu_items only
    r = verify.verify(Target(None, None, fresh_db), plan={**plan, "partial": True})
    assert (r.outcome, r.reason) == (Outcome.CHECKS_FAILED, "VerificationFailed"), r.message
    assert any("ck_left_behind on order_items is NOT VALID" in f for f in r.data["failures"]), r.data


def test_verify_plan_from_env(fresh_db: str, monkeypatch) -> None:
    demo.seed_foodtruck(fresh_db)
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    res = StepResult(step="precheck", outcome=Outcome.SUCCEEDED, reason="PrecheckPassed", message="ok",
                     data={"targetRevision": "0003", "checks": [
                         {"name": "check_stock_non_negative", "table": "menu_items", "kind": "check", "count": 0}],
                         "indexes": [{"name": "idx_menu_items_version", "table": "menu_items"}]})
    monkeypatch.setenv("SCHEMAGATE_PLAN", res.to_json())
    plan = verify.load_plan(env="SCHEMAGATE_PLAN")
    r = verify.verify(Target(None, None, fresh_db), plan=plan)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.data["checks"][0]["count"] == 0 and r.data["indexes"] == [{"name": "idx_menu_items_version",
                                                                       "valid": True}]
