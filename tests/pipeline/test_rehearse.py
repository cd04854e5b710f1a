"""``schemagate rehearse`` on real PostgreSQL: the pending revisions run on a restored copy (per-revision
durations), a revision that fails on production-like data is caught there with the real database untouched, and
the scratch database is dropped in every case (also a leftover of a killed run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from schemagate import cli, demo
from schemagate.contract.dburl import database_name, with_database
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import backup as bk
from schemagate.runner import rehearse as rh
from tests.pgfixtures import _admin_exec
from tests.pipeline.helpers import FOODTRUCK, WHOLESALE, execute, query, schema_snapshot, version


def _databases(url: str) -> list[str]:
    return [r[0] for r in query(url, "select datname from pg_database order by 1")]


def test_foodtruck_rehearsal_passes_and_leaves_the_database_alone(fresh_db: str, pg_server: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    demo.seed_foodtruck(fresh_db)
    before, dbs = schema_snapshot(fresh_db), _databases(pg_server)
    # a leftover of a killed rehearsal is dropped, not reused
    leftover = rh.scratch_name(database_name(fresh_db))
    _admin_exec(pg_server, f'CREATE DATABASE "{leftover}"')
    execute(with_database(fresh_db, leftover), "create table junk (id int)")
    code = cli.main(["rehearse", "-c", str(FOODTRUCK), "--backup-dir", str(tmp_path), "--database-url", fresh_db,
                     "--json", "--lock-timeout", "2s"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    d = out["data"]
    assert out["reason"] == "Rehearsed" and d["scratchDropped"] is True
    assert [r["revision"] for r in d["revisions"]] == ["0002", "0003"]
    assert all(r["succeeded"] and r["seconds"] >= 0 for r in d["revisions"])
    assert d["toRevision"] == "0003" and bk.verify_backup(d["backup"])[0]
    assert schema_snapshot(fresh_db) == before and version(fresh_db) == "0001"
    assert _databases(pg_server) == dbs  # the scratch database (and the leftover) are gone


def test_wholesale_failure_caught_in_rehearsal(fresh_db: str, pg_server: str, tmp_path: Path) -> None:
    demo.seed_wholesale(fresh_db)  # rows that violate the constraints 0003 validates
    b = bk.backup(fresh_db, backup_dir=tmp_path)
    assert b.ok, b.message
    before, dbs = schema_snapshot(fresh_db), _databases(pg_server)
    r = rh.rehearse(Target(WHOLESALE, "head", fresh_db), backup=b.data["path"])
    assert (r.outcome, r.reason) == (Outcome.CHECKS_FAILED, "RehearsalFailed"), r.message
    d = r.data
    assert d["failedRevision"] in ("0002", "0003") and d["failedStatement"], d
    assert d["failedRevision"] in r.message or d["failedStatement"][:20] in r.message
    assert d["revisions"][-1] == {**d["revisions"][-1], "revision": d["failedRevision"], "succeeded": False}
    assert d["scratchDropped"] is True and _databases(pg_server) == dbs
    assert schema_snapshot(fresh_db) == before and version(fresh_db) == "0001"


def test_corrupt_backup_refused_before_anything(fresh_db: str, pg_server: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    b = bk.backup(fresh_db, backup_dir=tmp_path / "b")
    assert b.ok, b.message
    p = Path(b.data["path"])
    bad = tmp_path / p.name
    shutil.copy(bk.sidecar(p), bk.sidecar(bad))
    bad.write_bytes(p.read_bytes()[:-200])
    dbs = _databases(pg_server)
    r = rh.rehearse(Target(FOODTRUCK, "head", fresh_db), backup=bad)
    assert r.reason == "BackupCorrupt" and "scratchDatabase" not in r.data, r.message
    assert _databases(pg_server) == dbs
    r = rh.rehearse(Target(FOODTRUCK, "head", fresh_db))
    assert r.reason == "InvalidInput" and r.data["field"] == "--backup"


def test_run_rehearse_blocks_a_failing_revision_and_passes_a_good_one(make_db: object, pg_server: str,
                                                                      tmp_path: Path) -> None:
    from schemagate.runner import pipeline
    from schemagate.runner.inject.apply import upgrade

    good, bad = make_db(), make_db()  # type: ignore[operator]
    demo.seed_foodtruck(good)
    dbs = _databases(pg_server)
    r = pipeline.run(Target(FOODTRUCK, "head", good), backup_dir=tmp_path / "g", rehearse=True, lint=False)
    assert r.ok, r.message
    assert [s["step"] for s in r.data["steps"]] == ["backup", "precheck", "rehearse", "migrate", "verify"]
    assert version(good) == "0003" and _databases(pg_server) == dbs
    # a revision that fails only on the real rows: an event trigger (pg_dump copies it) raises on any DDL while a
    # 'Churros' row exists; the precheck's schema-only shadow has no rows, the rehearsal's restored copy has them
    upgrade(Target(FOODTRUCK, "0001", bad))
    execute(bad, "create function no_alter() returns event_trigger language plpgsql as $$ begin "
                 "if exists (select 1 from menu_items where name = 'Churros') then raise exception 'churros'; end if;"
                 " end $$; create event trigger no_alter on ddl_command_end execute function no_alter(); "
                 "insert into menu_items (id, name, price, stock) values ('m3', 'Churros', 4.25, 0)")
    before = schema_snapshot(bad)
    r = pipeline.run(Target(FOODTRUCK, "head", bad), backup_dir=tmp_path / "b", rehearse=True, lint=False)
    assert r.reason == "RehearsalFailed", r.message
    assert "blocked by the rehearsal, nothing was applied" in r.message and "0002" in r.message
    assert [s["step"] for s in r.data["steps"]][-1] == "rehearse"
    assert schema_snapshot(bad) == before and version(bad) == "0001" and _databases(pg_server) == dbs
    r = pipeline.run(Target(FOODTRUCK, "head", bad), backup=False, rehearse=True)
    assert r.reason == "InvalidInput" and r.data["field"] == "--rehearse"


def _by_statement(statements: list[dict], start: str) -> dict:
    found = [s for s in statements if s["statement"].upper().startswith(start.upper())]
    assert len(found) == 1, (start, [s["statement"] for s in statements])
    return found[0]


def test_foodtruck_lock_report(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    r = rh.rehearse(Target(FOODTRUCK, "head", fresh_db), backup_dir=tmp_path)
    assert r.ok, r.message
    st = r.data["statements"]
    # 0002: ADD COLUMN takes ACCESS EXCLUSIVE on menu_items in 0002's transaction (read from pg_locks in it), held
    # until 0002 commits; the NOT VALID check that follows needs the same lock, already held: nothing new
    add = _by_statement(st, "ALTER TABLE menu_items ADD COLUMN version")
    assert add["revision"] == "0002" and add["transactional"] and add["source"] == "pg_locks"
    assert add["lock"]["table"] == "menu_items" and add["lock"]["mode"] == "ACCESS EXCLUSIVE"
    assert add["lock"]["heldSeconds"] >= add["seconds"] >= 0
    check = _by_statement(st, "ALTER TABLE menu_items ADD CONSTRAINT check_stock_non_negative")
    assert check["revision"] == "0002" and check["lock"] is None
    # 0003: VALIDATE takes SHARE UPDATE EXCLUSIVE (reads and writes go on)
    validate = _by_statement(st, 'ALTER TABLE "menu_items" VALIDATE CONSTRAINT')
    assert validate["revision"] == "0003"
    assert validate["lock"]["table"] == "menu_items" and validate["lock"]["mode"] == "SHARE UPDATE EXCLUSIVE"
    # the concurrent index build runs outside a transaction: sampled from a second session, or (a build shorter than
    # one sampling interval) the lock the documentation gives for it
    cic = _by_statement(st, "CREATE INDEX CONCURRENTLY")
    assert cic["revision"] == "0003" and not cic["transactional"] and cic["source"] in ("sampled", "documented")
    assert cic["lock"]["mode"] == "SHARE UPDATE EXCLUSIVE" and cic["lock"]["table"] == "menu_items"
    assert all("alembic_version" not in s["statement"] for s in st)  # Alembic's bookkeeping is not reported
    revs = {x["revision"]: x for x in r.data["revisions"]}
    assert revs["0002"]["strongestLock"]["mode"] == "ACCESS EXCLUSIVE" and revs["0002"]["rowsChanged"] == 0
    assert revs["0003"]["strongestLock"]["mode"] == "SHARE UPDATE EXCLUSIVE"
    assert "0002: ACCESS EXCLUSIVE on menu_items for" in r.message, r.message
    # the verify step's checks ran on the rehearsed copy
    v = r.data["verify"]
    assert (v["outcome"], v["reason"]) == ("Succeeded", "Verified") and v["data"]["currentRevision"] == "0003", v


def test_verify_on_the_rehearsed_copy_fails_the_rehearsal(fresh_db: str, pg_server: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    demo.seed_foodtruck(fresh_db)
    dbs = _databases(pg_server)
    plan = tmp_path / "plan.json"  # a plan naming an index the revisions never build: verify must miss it
    plan.write_text(json.dumps({"indexes": [{"name": "idx_never_built", "table": "menu_items"}]}))
    code = cli.main(["rehearse", "-c", str(FOODTRUCK), "--backup-dir", str(tmp_path), "--database-url", fresh_db,
                     "--json", "--plan", str(plan), "--check", "menu_has_rows=select count(*) from menu_items"])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["reason"] == "RehearsalFailed", out
    v = out["data"]["verify"]
    assert v["reason"] == "VerificationFailed", v
    failures = v["data"]["failures"]
    assert any("idx_never_built does not exist" in f for f in failures), failures
    assert any("menu_has_rows" in f for f in failures), failures
    assert "verifying the copy failed" in out["message"]
    assert out["data"]["scratchDropped"] is True and _databases(pg_server) == dbs
    assert version(fresh_db) == "0001"


def test_rows_changed_by_a_data_migration(fresh_db: str, tmp_path: Path) -> None:
    from schemagate.runner.inject.apply import upgrade

    project = Path(__file__).resolve().parent / "projects" / "graph" / "datamigration.ini"
    upgrade(Target(project, "0001", fresh_db))
    r = rh.rehearse(Target(project, "head", fresh_db), backup_dir=tmp_path)
    assert r.ok, r.message
    st = r.data["statements"]
    gold = _by_statement(st, "UPDATE accounts SET tier = 'gold'")
    basic = _by_statement(st, "UPDATE accounts SET tier = 'basic'")
    assert (gold["rows"], basic["rows"]) == (3, 2)
    assert gold["lock"] is None or gold["lock"]["mode"] == "ROW EXCLUSIVE"  # ADD COLUMN took ACCESS EXCLUSIVE first
    assert _by_statement(st, "ALTER TABLE accounts ADD COLUMN")["lock"]["mode"] == "ACCESS EXCLUSIVE"
    assert r.data["revisions"] == [{**r.data["revisions"][0], "revision": "0002", "rowsChanged": 5}]
    assert "5 rows changed" in r.message and version(fresh_db) == "0001"


def test_job_phases_prepare_upgrade_finish_and_guard(fresh_db: str, pg_server: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The rehearse Job's containers, run one after the other as the pod runs them (core.jobs renders them)."""
    import subprocess
    import sys
    import threading

    from schemagate.runner.inject.__main__ import main as inject_main

    demo.seed_foodtruck(fresh_db)
    dbs = _databases(pg_server)
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    work, scratch = tmp_path / "work", "sg_rh_phases"
    common = ["--json", "--database-url-env", "DATABASE_URL", "--scratch-database", scratch]
    assert cli.main(["rehearse", "--phase", "prepare", *common, "--workdir", str(work),
                     "--backup-dir", str(tmp_path / "b"), "--max-size", "1Gi"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    copy = with_database(fresh_db, scratch)
    assert version(copy) == "0001" and scratch in _databases(pg_server)
    assert inject_main(["rehearse-upgrade", "-c", str(FOODTRUCK), "--target", "head", "--scratch-database", scratch,
                        "--workdir", str(work), "--lock-timeout", "2s"]) == 0
    up = json.loads(capsys.readouterr().out)
    assert up["reason"] == "RehearsalUpgraded" and "0002: ACCESS EXCLUSIVE on menu_items" in up["message"], up
    # spec.rehearsal.job: the user's command sees the copy's URL, never the real one
    seen = subprocess.run([sys.executable, "-m", "schemagate.runner.inject", "with-rehearsal-url",
                           "--scratch-database", scratch, "--", sys.executable, "-c",
                           "import os; print(os.environ['DATABASE_URL'].rsplit('/', 1)[1], os.environ['PGDATABASE'])"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert seen.stdout.split() == [scratch, scratch]
    plan = json.dumps({"indexes": [{"name": "idx_menu_items_version", "table": "menu_items"}],
                       "targetRevision": "0003"})
    monkeypatch.setenv("SG_PLAN", plan)
    assert cli.main(["rehearse", "--phase", "finish", *common, "--workdir", str(work), "--plan-env", "SG_PLAN"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] == "Rehearsed" and out["data"]["scratchDropped"] is True, out
    assert out["data"]["verify"]["reason"] == "Verified" and out["data"]["revisions"][0]["revision"] == "0002"
    assert _databases(pg_server) == dbs and version(fresh_db) == "0001"
    # the guard sidecar drops the copy when stopped (SIGTERM in the pod), whatever state the copy is in
    _admin_exec(pg_server, f'CREATE DATABASE "{scratch}"')
    from schemagate.runner import rehearse as rehearse_mod

    stop = threading.Event()
    stop.set()
    g = rehearse_mod.guard(fresh_db, None, scratch, stop=stop)
    assert g.ok and _databases(pg_server) == dbs, g.message
    # maxSize: a database above it is refused before anything is touched
    assert cli.main(["rehearse", "--phase", "prepare", *common, "--workdir", str(work),
                     "--backup-dir", str(tmp_path / "b2"), "--max-size", "1k"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] == "RehearsalTooLarge" and _databases(pg_server) == dbs, out
    assert not (tmp_path / "b2").exists()
