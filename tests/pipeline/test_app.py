"""The injected runner (schemagate.runner.inject): plan, upgrade, migrate, errors; against real PostgreSQL."""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest

import schemagate.runner.inject as inject
from schemagate.contract.errors import MultipleHeads
from schemagate.contract.stepresult import ExitCode, Outcome
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.config import make_config
from schemagate.runner.inject.migrate import migrate
from schemagate.runner.inject.revisions import plan
from tests.pipeline.helpers import (
    FOODTRUCK,
    HALFWAY,
    MULTIHEAD,
    ORMAPP,
    WHOLESALE,
    execute,
    query,
    run_module,
    scalar,
    schema_snapshot,
    version,
)


def test_plan_on_empty_database(fresh_db: str) -> None:
    p = plan(Target(FOODTRUCK, "head", fresh_db))
    assert p == {"current": None, "currentHeads": [], "target": "0003", "pending": ["0001", "0002", "0003"],
                 "expected": ["0003"], "heads": ["0003"], "versionTable": "alembic_version",
                 "versionTableSchema": "public", "source": "env.py"}  # where env.py's session creates it
    assert version(fresh_db) is None  # planning changes nothing


def test_upgrade_foodtruck_then_downgrade_matches_seed_rollback(fresh_db: str) -> None:
    out = upgrade(Target(FOODTRUCK, "0001", fresh_db))
    assert out["applied"] == ["0001"] and out["toRevision"] == "0001"
    execute(fresh_db, "insert into menu_items (id, name, price, stock) values ('m1', 'Taco', 3.5, 10)")
    out = upgrade(Target(FOODTRUCK, "head", fresh_db), lock_timeout="2s", statement_timeout="1m")  # the CRD grammar
    assert out["fromRevision"] == "0001" and out["applied"] == ["0002", "0003"] and out["toRevision"] == "0003"
    assert query(fresh_db, "select conname, convalidated from pg_constraint where conname='check_stock_non_negative'") \
        == [("check_stock_non_negative", True)]
    assert scalar(fresh_db, "select indisvalid from pg_index where indexrelid = 'idx_menu_items_version'::regclass")
    assert scalar(fresh_db, "select version from menu_items where id='m1'") == 0
    # the seed's rollback section: constraint, index and column gone
    from alembic import command

    cfg = make_config(FOODTRUCK, fresh_db)
    os.environ["DATABASE_URL"] = fresh_db
    try:
        command.downgrade(cfg, "0001")
    finally:
        del os.environ["DATABASE_URL"]
    assert version(fresh_db) == "0001"
    assert scalar(fresh_db, "select count(*) from pg_constraint where conname='check_stock_non_negative'") == 0
    assert scalar(fresh_db, "select to_regclass('idx_menu_items_version')") is None
    assert scalar(fresh_db, "select count(*) from information_schema.columns where table_name='menu_items' "
                            "and column_name='version'") == 0
    assert scalar(fresh_db, "select count(*) from menu_items") == 1


def test_wholesale_upgrade_and_full_downgrade(fresh_db: str) -> None:
    out = upgrade(Target(WHOLESALE, "head", fresh_db))
    assert out["applied"] == ["0001", "0002", "0003"]
    rows = query(fresh_db, "select conname, convalidated, confdeltype from pg_constraint "
                           "where conname like 'check_%' or conname in "
                           "('ledger_entries_order_id_fkey', 'credit_transactions_order_id_fkey') order by 1")
    assert len(rows) == 12 and all(r[1] for r in rows)
    deltypes = {r[0]: r[2] for r in rows}
    assert deltypes["ledger_entries_order_id_fkey"] == "c"
    assert deltypes["credit_transactions_order_id_fkey"] == "n"
    assert {r[0] for r in query(fresh_db, "select indexname from pg_indexes where tablename='orders'")} >= {
        "orders_status_created_at_idx", "orders_status_deleted_at_idx",
        "orders_wholesaler_id_final_wholesaler_id_status_idx"}
    from alembic import command

    os.environ["DATABASE_URL"] = fresh_db
    try:
        command.downgrade(make_config(WHOLESALE, fresh_db), "0001")
    finally:
        del os.environ["DATABASE_URL"]
    assert scalar(fresh_db, "select count(*) from pg_constraint where conname like 'check_%'") == 0
    assert query(fresh_db, "select confdeltype from pg_constraint where conname='ledger_entries_order_id_fkey'") \
        == [("a",)]
    assert scalar(fresh_db, "select count(*) from pg_constraint where conname='credit_transactions_order_id_fkey'") == 0
    assert scalar(fresh_db, "select count(*) from pg_indexes where indexname like 'orders_status%'") == 0


def test_env_py_imports_application_models_and_orm_data_migration(fresh_db: str) -> None:
    upgrade(Target(ORMAPP, "0001", fresh_db))
    execute(fresh_db, "insert into customers (id, full_name) values (1, 'Ada Lovelace'), (2, 'Plato')")
    out = upgrade(Target(ORMAPP, "head", fresh_db))
    assert out["applied"] == ["0002"]
    assert query(fresh_db, "select id, first_name, last_name from customers order by id") == [
        (1, "Ada", "Lovelace"), (2, "Plato", None)]


def test_application_modules_do_not_leak_between_projects(fresh_db: str) -> None:
    """env.py imports ``shopapp``; after the run the process forgets it (and sys.path is restored), so a second
    project with its own ``shopapp`` package (tests/precheck/projects/shop) imports its own."""
    import sys

    path_before = list(sys.path)
    upgrade(Target(ORMAPP, "head", fresh_db))
    assert not [m for m in sys.modules if m == "shopapp" or m.startswith("shopapp.")]
    assert sys.path == path_before
    assert "sqlalchemy" in sys.modules and "schemagate.runner.inject.apply" in sys.modules, "libraries stay loaded"


def test_multiple_heads_is_a_clear_error_and_nothing_changes(fresh_db: str) -> None:
    before = schema_snapshot(fresh_db)
    with pytest.raises(MultipleHeads) as ei:
        plan(Target(MULTIHEAD, "head", fresh_db))
    assert "0002a" in str(ei.value) and "0002b" in str(ei.value)
    r = migrate(Target(MULTIHEAD, "head", fresh_db))
    assert r.outcome is Outcome.PERMANENT_ERROR and r.reason == "MultipleHeads"
    assert "0002a" in r.message and "0002b" in r.message
    assert schema_snapshot(fresh_db) == before
    # one explicit head is a valid target
    assert plan(Target(MULTIHEAD, "0002b", fresh_db))["pending"] == ["0001", "0002b"]


def test_unknown_target_revision(fresh_db: str) -> None:
    before = schema_snapshot(fresh_db)
    r = migrate(Target(FOODTRUCK, "9999", fresh_db))
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "UnknownRevision")
    assert "9999" in r.message
    assert schema_snapshot(fresh_db) == before


def test_downgrade_target_refused(fresh_db: str) -> None:
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    r = migrate(Target(FOODTRUCK, "0001", fresh_db))
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "DowngradeNotAllowed"), r.message
    assert "--allow-downgrade" in r.message and r.data["field"] == "targetRevision"
    assert version(fresh_db) == "0003"


def test_revision_failing_half_way_keeps_previous_revision(fresh_db: str) -> None:
    r = migrate(Target(HALFWAY, "head", fresh_db))
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "MigrationFailed")
    assert "revision 0003" in r.message
    assert "ADD CONSTRAINT items_qty_positive" in r.message
    assert r.data["failedRevision"] == "0003"
    assert "items_qty_positive" in r.data["failedStatement"]
    assert r.data["toRevision"] == "0002"
    assert version(fresh_db) == "0002"
    # 0003's first statement (add column) was rolled back with it
    assert scalar(fresh_db, "select count(*) from information_schema.columns where table_name='items' "
                            "and column_name='note'") == 0
    assert scalar(fresh_db, "select to_regclass('audit') is not null")


def test_unreachable_database_is_transient() -> None:
    from schemagate.local.postgres import free_port

    r = migrate(Target(FOODTRUCK, "head", f"postgresql://u:NotThePw9@127.0.0.1:{free_port()}/db"))
    assert (r.outcome, r.reason) == (Outcome.TRANSIENT_ERROR, "DatabaseUnreachable"), r.message
    assert "NotThePw9" not in r.to_json()


def test_wrong_password_cli_never_prints_it(fresh_db: str, tmp_path) -> None:
    u = urllib.parse.urlsplit(fresh_db)
    bad = fresh_db.replace(f":{u.password}@", ":Wr0ngPassw0rd-xyz@")
    log = tmp_path / "termination-log"
    env = dict(os.environ, PYTHONPATH=str(inject.__file__).rsplit("/schemagate/", 1)[0], APP_DB=bad)
    p = run_module(["-m", "schemagate.runner.inject", "migrate", "-c", str(FOODTRUCK), "--database-url-env", "APP_DB",
                    "--termination-log", str(log)], env)
    assert p.returncode == ExitCode.PERMANENT_ERROR, p.stderr
    out = json.loads(p.stdout)
    assert out["reason"] == "AuthenticationFailed"
    for text in (p.stdout, p.stderr, log.read_text()):
        assert "Wr0ngPassw0rd-xyz" not in text
        assert u.password not in text  # type: ignore[operator]
    assert json.loads(log.read_text())["reason"] == "AuthenticationFailed"
    assert version(fresh_db) is None


def test_cli_migrate_json_fits_termination_message(fresh_db: str, tmp_path) -> None:
    log = tmp_path / "tl"
    env = dict(os.environ, PYTHONPATH=str(inject.__file__).rsplit("/schemagate/", 1)[0], DATABASE_URL=fresh_db)
    p = run_module(["-m", "schemagate.runner.inject", "migrate", "-c", str(WHOLESALE), "--termination-log", str(log),
                    "--lock-timeout", "3s"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert res["step"] == "migrate" and res["reason"] == "Migrated"
    assert res["data"]["applied"] == ["0001", "0002", "0003"] and res["data"]["lockTimeout"] == "3s"
    assert len(log.read_bytes()) <= 4096
    assert fresh_db.split("@")[0].split(":")[-1] not in p.stdout + p.stderr


def test_bad_duration_is_invalid_input(fresh_db: str) -> None:
    r = migrate(Target(FOODTRUCK, "head", fresh_db), lock_timeout="soon")
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "InvalidInput")
    assert "--lock-timeout" in r.message and "soon" in r.message
    assert version(fresh_db) is None


def test_shadow_upgrade_workdir_contract(make_db, tmp_path) -> None:
    real = make_db()
    shadow = make_db()
    from schemagate.contract.dburl import database_name

    (tmp_path / "prepare.json").write_text(json.dumps({"shadowDatabase": database_name(shadow), "created": True}))
    env = dict(os.environ, PYTHONPATH=str(inject.__file__).rsplit("/schemagate/", 1)[0], DATABASE_URL=real)
    p = run_module(["-m", "schemagate.runner.inject", "shadow-upgrade", "-c", str(ORMAPP), "--workdir", str(tmp_path)],
                   env)
    assert p.returncode == 0, p.stdout + p.stderr
    up = json.loads((tmp_path / "shadow-upgrade.json").read_text())
    assert up["pending"] == ["0001", "0002"] and up["applied"] == ["0001", "0002"]
    # the statements executed are what the lint reads: nothing is rendered offline
    assert any(s["sql"].strip().startswith("CREATE TABLE customers") for s in up["statements"]), up["statements"]
    assert not (tmp_path / "pending.sql").exists()
    kinds = {(s["revision"], s["kind"]) for s in up["statements"]}
    assert ("0001", "ddl") in kinds and ("0002", "ddl") in kinds
    # the Kubernetes path reports a revision that reads rows (0002 queries customers through the ORM), as the
    # local path does (tests/precheck/test_derive.py): one classifier, contract.sqlkind
    assert ("0002", "read") in kinds, kinds
    assert version(shadow) == "0002" and version(real) is None
