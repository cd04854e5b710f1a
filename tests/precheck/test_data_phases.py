"""The Kubernetes precheck phases (``prepare``, the injected ``shadow-upgrade``, ``data-prepare``, the injected
``data-upgrade``, ``count``; the pod's throw-away server in a thread) give the same checks, counts, routes and
notes as the all-in-one ``schemagate precheck`` when the pending revisions change data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemagate.contract.errors import WrongDatabase
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import precheck
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.datarun import data_upgrade
from schemagate.runner.inject.shadow import shadow_upgrade
from tests.precheck.helpers import databases, execute, query, sql_project
from tests.precheck.shadowproject import make_project

pytestmark = pytest.mark.postgres


def phases(url: str, ini: str, wd: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Any:
    """The precheck Job's containers in order, in this process; returns count's result."""
    monkeypatch.setenv("DATABASE_URL", url)
    assert precheck.prepare(workdir=wd).ok
    target = Target(ini, "head", url, "DATABASE_URL")
    shadow_upgrade(target, wd)
    prepared = precheck.data_prepare(workdir=wd, **{k: v for k, v in kw.items() if k == "data_shadow_max_bytes"})
    assert prepared.ok, prepared.message
    data_upgrade(target, wd)
    return precheck.count(workdir=wd, lint=False, **kw)


def same(job: Any, cli: Any) -> None:
    """The Job's result says what the CLI's says (timings apart)."""
    assert (job.outcome, job.reason) == (cli.outcome, cli.reason), (job.message, cli.message)
    assert job.data["checks"] == cli.data["checks"]
    for key in ("route", "evaluatedBy", "total", "derivationNote", "dataChanges"):
        assert job.data.get(key) == cli.data.get(key), key
    shown = {k: v for k, v in (cli.data.get("dataShadow") or {}).items() if k != "seconds"}
    assert {k: v for k, v in (job.data.get("dataShadow") or {}).items() if k != "seconds"} == shown


def base(url: str, ini: str, *rows: str) -> None:
    upgrade(Target(ini, "0001", url, "DATABASE_URL"))
    execute(url, *rows)


def test_backfill_and_a_function_the_revision_creates(fresh_db: str, pod_shadow: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ini = sql_project(tmp_path / "p", ["CREATE TABLE acct (id int PRIMARY KEY, email text, score int, status text)",
                                       "CREATE TABLE other (id int)"],
                      ["UPDATE acct SET status = 'off' WHERE status IS NULL",
                       "ALTER TABLE acct ALTER COLUMN status SET NOT NULL",
                       "DELETE FROM acct WHERE id = 2",
                       "ALTER TABLE acct ADD CONSTRAINT uq_email UNIQUE (email)",
                       "CREATE FUNCTION score_ok(s int) RETURNS boolean IMMUTABLE LANGUAGE sql AS "
                       "'SELECT s BETWEEN 0 AND 100'",
                       "ALTER TABLE acct ADD CONSTRAINT ck_score CHECK (score_ok(score))"])
    base(fresh_db, ini, "INSERT INTO acct VALUES (1, 'a@x', 5, NULL), (2, 'a@x', -1, NULL), (3, NULL, 200, 'on'), "
                        "(4, 'b@x', 7, NULL)", "INSERT INTO other SELECT generate_series(1, 100)")
    before = databases(fresh_db)
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False)
    job = phases(fresh_db, ini, pod_shadow, monkeypatch)
    same(job, cli)
    assert {c["name"]: c["count"] for c in job.data["checks"]} == {"acct.status NOT NULL": 0, "uq_email": 0,
                                                                   "ck_score": 1}
    assert job.data["route"] == "data-shadow" and job.data["dataShadow"]["tables"] == ["public.acct"]
    assert databases(fresh_db) == before  # both shadows were on the pod's server


def test_a_failing_statement_stops_the_run_and_later_checks_are_counted_there(
        fresh_db: str, pod_shadow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ini = sql_project(tmp_path / "p", ["CREATE TABLE t (id int, a int, b int)"],
                      ["UPDATE t SET a = 0 WHERE a IS NULL", "ALTER TABLE t ADD CONSTRAINT t_a CHECK (a >= 0)",
                       "ALTER TABLE t ALTER COLUMN b SET NOT NULL"],
                      ["UPDATE t SET b = 1", "ALTER TABLE t ADD CONSTRAINT t_b CHECK (b = 1)"])
    base(fresh_db, ini, "INSERT INTO t VALUES (1, NULL, NULL), (2, 5, NULL), (3, -1, 1)")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False)
    job = phases(fresh_db, ini, pod_shadow, monkeypatch)
    same(job, cli)
    assert {c["name"]: c["count"] for c in job.data["checks"]} == {"t_a": 1, "t.b NOT NULL": 2, "t_b": 0}
    assert job.data["dataShadow"]["stoppedAt"] == "revision 0002, statement 2"
    assert "which fails" in {c["name"]: c for c in job.data["checks"]}["t.b NOT NULL"]["note"]


def test_a_data_migration_that_branches_on_the_rows(fresh_db: str, pod_shadow: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On the empty schema the revision adds one constraint, on the data another: the checks not reached are
    not evaluated, on both paths."""
    ini = make_project(tmp_path / "p", [
        "op.execute('CREATE TABLE t (id int)')",
        """
        n = op.get_bind().exec_driver_sql('SELECT count(*) FROM t').scalar()
        if n:
            op.execute('ALTER TABLE t ADD CONSTRAINT t_big CHECK (id > 1)')
        else:
            op.execute('ALTER TABLE t ADD CONSTRAINT t_pos CHECK (id > 0)')
        """])
    base(fresh_db, ini, "INSERT INTO t VALUES (1), (2)")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False, accept_unevaluated=["t_pos"])
    job = phases(fresh_db, ini, pod_shadow, monkeypatch, accept_unevaluated=["t_pos"])
    same(job, cli)
    (check,) = job.data["checks"]
    assert check["name"] == "t_pos" and check["count"] is None and "different statement" in check["note"]


def test_above_the_size_limit_nothing_is_copied(fresh_db: str, pod_shadow: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ini = sql_project(tmp_path / "p", ["CREATE TABLE t (id int, a int)"],
                      ["UPDATE t SET a = 0 WHERE a IS NULL", "ALTER TABLE t ALTER COLUMN a SET NOT NULL"])
    base(fresh_db, ini, "INSERT INTO t SELECT g, g FROM generate_series(1, 5000) g")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False, data_shadow_max_bytes=8192)
    job = phases(fresh_db, ini, pod_shadow, monkeypatch, data_shadow_max_bytes=8192)
    assert (job.outcome, job.reason, job.message) == (cli.outcome, cli.reason, cli.message)
    assert job.outcome is Outcome.CHECKS_FAILED and job.reason == "DataShadowTooLarge"
    assert not (pod_shadow / precheck.DATA_QUERIES_FILE).exists()
    assert data_upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), pod_shadow) is None


def test_without_data_changes_the_data_steps_do_nothing(fresh_db: str, pod_shadow: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ini = sql_project(tmp_path / "p", ["CREATE TABLE t (id int, a int)"], ["ALTER TABLE t ADD CHECK (a > 0)"])
    base(fresh_db, ini, "INSERT INTO t VALUES (1, 1), (2, -2)")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False)
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    assert precheck.prepare(workdir=pod_shadow).ok
    shadow_upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), pod_shadow)
    r = precheck.data_prepare(workdir=pod_shadow)
    assert r.ok and r.reason == "DataShadowNotNeeded", r.message
    assert data_upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), pod_shadow) is None
    job = precheck.count(workdir=pod_shadow, lint=False)
    same(job, cli)
    assert job.data["route"] == "real-database" and job.data["total"] == 1
    assert "plan" in json.loads((pod_shadow / "shadow-upgrade.json").read_text())


def test_a_check_the_real_database_cannot_plan_is_counted_in_the_data_shadow(
        fresh_db: str, pod_shadow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data changes, but the CHECK casts to a type the revision creates: the real database cannot count it
    (the type is not there yet), so both paths count every check in the data-carrying shadow."""
    ini = sql_project(tmp_path / "p", ["CREATE TABLE t (id int, m text, n int)"],
                      ["CREATE TYPE mood AS ENUM ('ok', 'bad')",
                       "ALTER TABLE t ADD CONSTRAINT t_m CHECK (m::mood IS NOT NULL)",
                       "ALTER TABLE t ADD CONSTRAINT t_n CHECK (n > 0)"])
    base(fresh_db, ini, "INSERT INTO t VALUES (1, 'ok', 1), (2, 'bad', -1)")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False)
    assert cli.data["route"] == "data-shadow" and "could not be counted on the real database" in \
        cli.data["derivationNote"], cli.data["derivationNote"]
    job = phases(fresh_db, ini, pod_shadow, monkeypatch)
    same(job, cli)
    assert {c["name"]: (c["count"], c["evaluatedBy"]) for c in job.data["checks"]} == {
        "t_m": (0, "data-shadow"), "t_n": (1, "data-shadow")}


def test_data_upgrade_refuses_an_env_py_that_connects_elsewhere(fresh_db: str, pod_shadow: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """env.py reads its own variable first (APP_DB, set only for the data-upgrade container here): it would run the
    data migration on the real database; WrongDatabase before any revision runs, the real rows unchanged."""
    ini = sql_project(tmp_path / "p", ["CREATE TABLE t (id int, a int)"],
                      ["UPDATE t SET a = 0 WHERE a IS NULL", "ALTER TABLE t ALTER COLUMN a SET NOT NULL"])
    env_py = Path(ini).parent / "env.py"
    env_py.write_text(env_py.read_text().replace('os.environ.get("DATABASE_URL")',
                                                 'os.environ.get("APP_DB") or os.environ.get("DATABASE_URL")'))
    base(fresh_db, ini, "INSERT INTO t VALUES (1, NULL)")
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    assert precheck.prepare(workdir=pod_shadow).ok
    shadow_upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), pod_shadow)
    assert precheck.data_prepare(workdir=pod_shadow).reason == "DataShadowPrepared"
    monkeypatch.setenv("APP_DB", fresh_db)
    with pytest.raises(WrongDatabase):
        data_upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), pod_shadow)
    assert query(fresh_db, "SELECT a FROM t") == [(None,)]
    assert query(fresh_db, "SELECT version_num FROM alembic_version") == [("0001",)]
    assert not (pod_shadow / precheck.DATA_COUNTS_FILE).exists()
