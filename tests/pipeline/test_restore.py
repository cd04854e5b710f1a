"""``schemagate restore`` against real PostgreSQL: round trip (custom and directory formats), corrupt backups refused
before anything is touched, a non-empty target refused, ``--replace`` with a fresh backup of the state it replaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemagate import cli, demo
from schemagate.contract.dburl import database_name, with_database
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.libpq import client_env, pg_bin
from schemagate.runner import backup as bk
from schemagate.runner import restore as rs
from schemagate.runner.inject.apply import upgrade
from tests.pgfixtures import _admin_exec
from tests.pipeline.helpers import FOODTRUCK, execute, query, scalar


def schema_dump(url: str) -> str:
    """``pg_dump --schema-only`` without the per-run ``\\restrict`` key lines of pg_dump 18."""
    conn = client_env(url)
    out = subprocess.run([pg_bin("pg_dump"), "--schema-only", "--no-password", "--dbname", conn.conninfo],
                         capture_output=True, text=True, env=conn.env, check=True, timeout=120).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def row_counts(url: str) -> dict[str, int]:
    tables = [r[0] for r in query(url, "select format('%I.%I', schemaname, tablename) from pg_tables "
                                       "where schemaname not in ('pg_catalog', 'information_schema') order by 1")]
    return {t: int(scalar(url, f"select count(*) from {t}")) for t in tables}


def databases(admin: str) -> list[str]:
    return [r[0] for r in query(admin, "select datname from pg_database order by 1")]


@pytest.fixture
def dropped(pg_server: str) -> Iterator[Callable[[str], str]]:
    """Register database names to drop after the test (the databases the restores create)."""
    names: list[str] = []

    def add(name: str) -> str:
        names.append(name)
        return name

    yield add
    for n in names:
        _admin_exec(pg_server, f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def _seed(url: str) -> None:
    demo.seed_wholesale(url)
    execute(url, "create schema audit; create table audit.log as select g as id, md5(g::text) as note "
                 "from generate_series(1, 5000) g; create index on audit.log (note); "
                 "create view audit.recent as select * from audit.log where id > 4900")


@pytest.mark.parametrize("jobs", [1, 2], ids=["custom", "directory"])
def test_round_trip_into_a_new_database(fresh_db: str, pg_server: str, tmp_path: Path, jobs: int,
                                        dropped: Callable[[str], str]) -> None:
    _seed(fresh_db)
    b = bk.backup(fresh_db, backup_dir=tmp_path, jobs=jobs)
    assert b.ok, b.message
    source = database_name(fresh_db)
    r = rs.restore(b.data["path"], fresh_db, jobs=jobs)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    target = dropped(r.data["database"])
    assert target.startswith(source + "_restored_") and r.data["created"] is True
    assert r.data["format"] == ("directory" if jobs > 1 else "custom")
    restored = with_database(fresh_db, target)
    assert schema_dump(restored) == schema_dump(fresh_db)
    counts = row_counts(fresh_db)
    assert counts["audit.log"] == 5000 and counts["public.orders"] == 4
    assert row_counts(restored) == counts
    assert r.data["tables"] == len(counts)


def test_cli_restore_into_a_named_empty_database(fresh_db: str, make_db: Callable[[], str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _seed(fresh_db)
    b = bk.backup(fresh_db, backup_dir=tmp_path)
    assert b.ok, b.message
    empty = make_db()  # an existing, empty database is accepted
    code = cli.main(["restore", "--backup", b.data["path"], "--into", database_name(empty), "--database-url",
                     fresh_db, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["reason"] == "Restored" and out["data"]["created"] is False
    assert row_counts(empty) == row_counts(fresh_db)
    # the same database again: it is no longer empty, and it is left alone
    before = schema_dump(empty)
    code = cli.main(["restore", "--backup", b.data["path"], "--into", database_name(empty), "--database-url",
                     fresh_db, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 4 and out["reason"] == "InvalidInput" and "is not empty" in out["message"]
    assert out["data"]["field"] == "--into"
    assert schema_dump(empty) == before


def test_corrupt_backups_refused_before_anything_is_touched(fresh_db: str, pg_server: str, tmp_path: Path) -> None:
    _seed(fresh_db)
    b = bk.backup(fresh_db, backup_dir=tmp_path / "b")
    assert b.ok, b.message
    good = Path(b.data["path"])
    raw = good.read_bytes()
    before_dbs, before_schema = databases(pg_server), schema_dump(fresh_db)

    # 1. truncated, sidecar as recorded: the sha256 does not match
    trunc = tmp_path / "c1" / good.name
    trunc.parent.mkdir()
    trunc.write_bytes(raw[: len(raw) * 6 // 10])
    shutil.copy(bk.sidecar(good), bk.sidecar(trunc))
    # 2. truncated with a sidecar that matches the truncated file: the full read fails
    trunc2 = tmp_path / "c2" / good.name
    trunc2.parent.mkdir()
    trunc2.write_bytes(raw[: len(raw) * 6 // 10])
    bk.sidecar(trunc2).write_text(bk.manifest(trunc2, trunc2.name))
    # 3. no sidecar at all
    bare = tmp_path / "c3" / good.name
    bare.parent.mkdir()
    bare.write_bytes(raw)
    for path, reason, words in ((trunc, "BackupCorrupt", "sha256 mismatch"), (trunc2, "BackupCorrupt", "cannot be read"),
                                (bare, "InvalidInput", "no sha256 sidecar")):
        for replace in (False, True):
            r = rs.restore(path, fresh_db, replace=replace, backup_dir=tmp_path / "fresh")
            assert r.outcome is Outcome.PERMANENT_ERROR and r.reason == reason, (path, r.message)
            assert words in r.message and "database" not in r.data
    assert databases(pg_server) == before_dbs
    assert schema_dump(fresh_db) == before_schema
    assert not (tmp_path / "fresh").exists()  # --replace took no backup either: it never got that far


def test_replace_keeps_a_fresh_backup_of_what_it_replaces(fresh_db: str, pg_server: str, tmp_path: Path,
                                                          dropped: Callable[[str], str]) -> None:
    demo.seed_foodtruck(fresh_db)
    b = bk.backup(fresh_db, backup_dir=tmp_path)
    assert b.ok, b.message
    original_schema, original_counts = schema_dump(fresh_db), row_counts(fresh_db)
    # the database moves on: the food truck's revisions are applied and rows are added
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    execute(fresh_db, "insert into orders (id, customer_name, status, total) values ('o9', 'Cy', 'PAID', 3)")
    changed_schema, changed_counts = schema_dump(fresh_db), row_counts(fresh_db)
    assert changed_schema != original_schema
    # a session left open on the database is ended by the swap
    stop = threading.Event()
    holder = threading.Thread(target=lambda: _hold_session(fresh_db, stop))
    holder.start()
    try:
        before_dbs = databases(pg_server)
        r = rs.restore(b.data["path"], fresh_db, replace=True, backup_dir=tmp_path / "fresh")
    finally:
        stop.set()
        holder.join(timeout=30)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.data["database"] == database_name(fresh_db)
    assert schema_dump(fresh_db) == original_schema and row_counts(fresh_db) == original_counts
    assert databases(pg_server) == before_dbs  # no staging or renamed database left behind
    fresh = Path(r.data["freshBackup"]["path"])
    assert fresh.parent == tmp_path / "fresh" and bk.verify_backup(fresh) == (True, "sha256 and full read OK")
    assert Path(b.data["path"]).exists()  # the restored backup is not removed by the fresh backup's retention
    # the fresh backup holds the replaced state
    back = rs.restore(fresh, fresh_db)
    assert back.ok, back.message
    replaced = with_database(fresh_db, dropped(back.data["database"]))
    assert schema_dump(replaced) == changed_schema and row_counts(replaced) == changed_counts


def _hold_session(url: str, stop: threading.Event) -> None:
    from schemagate.libpq import connect

    try:
        with connect(url) as conn:
            while not stop.wait(0.05):
                conn.execute("select 1")
    except Exception:  # noqa: BLE001 - the swap ends this session: that is the point
        return


def test_bad_options_change_nothing(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    b = bk.backup(fresh_db, backup_dir=tmp_path)
    assert b.ok, b.message
    r = rs.restore(b.data["path"], fresh_db, into="x", replace=True)
    assert r.reason == "InvalidInput" and r.data["field"] == "--into"
    r = rs.restore(b.data["path"], fresh_db, into="x" * 64)
    assert r.reason == "InvalidInput" and "63 bytes" in r.message
    r = rs.restore(tmp_path / "nope.dump", fresh_db)
    assert r.reason == "InvalidInput" and "does not exist" in r.message
    r = rs.restore(b.data["path"], with_database(fresh_db, "sg_no_such_db"), replace=True)
    assert r.reason == "InvalidInput" and "does not exist" in r.message
    assert len(rs.derived_name("d" * 80).encode()) == rs.NAMEDATALEN
