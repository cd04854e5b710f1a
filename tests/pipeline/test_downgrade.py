"""Downgrades on real PostgreSQL: refused unless allowed, the data-at-risk count from the shadow's catalog diff,
blocked above --max-data-loss with nothing changed, a backup first, the downgraded schema verified. Both seeds'
rollbacks (food truck, wholesale) to 0001 and to base, with and without data at risk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemagate import cli, demo
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import backup as bk
from schemagate.runner import downgrade as dg
from schemagate.runner.inject.apply import upgrade
from tests.pipeline.helpers import FOODTRUCK, WHOLESALE, execute, query, schema_snapshot, version


def _databases(url: str) -> list[str]:
    return [r[0] for r in query(url, "select datname from pg_database order by 1")]


def test_foodtruck_refused_without_allow_then_rollback_to_0001(fresh_db: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    demo.seed_foodtruck(fresh_db)
    at_0001 = schema_snapshot(fresh_db)
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    at_head = schema_snapshot(fresh_db)
    args = ["run", "-c", str(FOODTRUCK), "--target", "0001", "--database-url", fresh_db, "--json",
            "--backup-dir", str(tmp_path / "b")]
    code = cli.main(args)
    out = json.loads(capsys.readouterr().out)
    assert code == 4 and out["reason"] == "DowngradeNotAllowed" and "--allow-downgrade" in out["message"]
    assert schema_snapshot(fresh_db) == at_head and not (tmp_path / "b").exists()
    # allowed: version = 1 (its default) everywhere, nothing at risk; a backup first; verified
    code = cli.main([*args, "--allow-downgrade"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    d = out["data"]
    assert out["reason"] == "Downgraded" and d["rowsAtRisk"] == 0 and d["verified"] is True
    assert d["fromRevision"] == "0003" and d["toRevision"] == "0001"
    assert "public.menu_items.version" in d["removes"]["columns"]
    assert "public.menu_items.check_stock_non_negative" in d["removes"]["constraints"]
    assert any("version" in c for c in d["removes"]["indexes"]) or d["removes"]["indexes"] == []
    assert bk.verify_backup(d["backup"]["path"])[0]
    assert schema_snapshot(fresh_db) == at_0001 and version(fresh_db) == "0001"


def test_foodtruck_data_at_risk_blocks_until_allowed(fresh_db: str, pg_server: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    execute(fresh_db, "update menu_items set version = version + 1 where id in ('m1', 'm2')")
    at_head, dbs = schema_snapshot(fresh_db), _databases(pg_server)
    r = dg.downgrade(Target(FOODTRUCK, "0001", fresh_db), allow=True, backup_dir=tmp_path)
    assert (r.outcome, r.reason) == (Outcome.CHECKS_FAILED, "DataAtRisk"), r.message
    assert "downgrade drops menu_items.version: 2 rows hold non-default values" in r.message
    assert r.data["rowsAtRisk"] == 2 and "backup" not in r.data
    assert schema_snapshot(fresh_db) == at_head and not list(tmp_path.iterdir())
    assert _databases(pg_server) == dbs  # the shadow was dropped
    r = dg.downgrade(Target(FOODTRUCK, "0001", fresh_db), allow=True, max_data_loss=2, backup_dir=tmp_path)
    assert r.ok and r.data["rowsAtRisk"] == 2, r.message
    assert version(fresh_db) == "0001"


def test_wholesale_rollback_to_0001_removes_constraints_and_indexes(fresh_db: str, tmp_path: Path) -> None:
    upgrade(Target(WHOLESALE, "0001", fresh_db))
    at_0001 = schema_snapshot(fresh_db)
    upgrade(Target(WHOLESALE, "head", fresh_db))
    r = dg.downgrade(Target(WHOLESALE, "0001", fresh_db), allow=True, backup_dir=tmp_path)
    assert r.ok, r.message
    gone = r.data["removes"]
    assert len(gone["constraints"]) >= 10 and len(gone["indexes"]) >= 3, gone
    assert r.data["rowsAtRisk"] == 0 and r.data["verified"] is True
    assert schema_snapshot(fresh_db) == at_0001


@pytest.mark.parametrize("project", [FOODTRUCK, WHOLESALE], ids=["foodtruck", "wholesale"])
def test_rollback_to_base_with_and_without_data_at_risk(project: Path, make_db: object, tmp_path: Path) -> None:
    empty, seeded = make_db(), make_db()  # type: ignore[operator]
    for url in (empty, seeded):
        upgrade(Target(project, "head", url))
    if project == FOODTRUCK:
        execute(seeded, "insert into menu_items (id, name, price, stock) values ('m1', 'Taco', 3.5, 4), "
                        "('m2', 'Churros', 4.25, 0)")
        expected = 2
    else:
        execute(seeded, "insert into retailers (id, name) values ('r1', 'Corner Shop'); insert into wholesalers "
                        "(id, name) values ('w1', 'FreshCo'), ('w2', 'BulkMart')")
        expected = 3
    r = dg.downgrade(Target(project, "base", empty), allow=True, backup_dir=tmp_path)
    assert r.ok and r.data["rowsAtRisk"] == 0, r.message
    assert version(empty) is None and r.data["toRevision"] is None
    assert query(empty, "select count(*) from pg_tables where schemaname = 'public' "
                        "and tablename <> 'alembic_version'") == [(0,)]
    before = schema_snapshot(seeded)
    r = dg.downgrade(Target(project, "base", seeded), allow=True, backup_dir=tmp_path)
    assert r.reason == "DataAtRisk" and r.data["rowsAtRisk"] == expected, r.message
    assert "downgrade drops table public." in r.message and schema_snapshot(seeded) == before
    r = dg.downgrade(Target(project, "base", seeded), allow=True, max_data_loss=expected, backup_dir=tmp_path)
    assert r.ok and r.data["verified"] is True, r.message
    assert version(seeded) is None


def test_not_a_downgrade_and_bad_input(fresh_db: str) -> None:
    upgrade(Target(FOODTRUCK, "0002", fresh_db))
    r = dg.downgrade(Target(FOODTRUCK, "head", fresh_db), allow=True)
    assert r.reason == "InvalidInput" and "not a downgrade" in r.message
    r = dg.downgrade(Target(FOODTRUCK, "0001", fresh_db))
    assert r.reason == "DowngradeNotAllowed" and r.data["field"] == "targetRevision"
    r = dg.downgrade(Target(FOODTRUCK, "nope", fresh_db), allow=True)
    assert r.reason == "UnknownRevision"
    assert version(fresh_db) == "0002"
