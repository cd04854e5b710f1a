"""One ``schemagate run`` executes the application's env.py twice: the shadow upgrade and the migration. The plan
is read with SQL from the catalog and confirmed inside those runs; env.py plans only when the catalog cannot tell
(several version tables) or was wrong, and under its advisory lock the migration reads the version rows with SQL
and plans again through env.py only when they changed. Real PostgreSQL; the probe project's env.py logs every
execution with its purpose and database."""

from __future__ import annotations

import collections
import json
import os

import psycopg
import pytest

from schemagate.contract.dburl import database_name, libpq_url
from tests.pipeline.helpers import PROJECTS, ROOT, execute, query, run_module, version

pytestmark = pytest.mark.postgres

PROBE = PROJECTS / "probe" / "alembic.ini"


def test_one_run_executes_env_py_twice(fresh_db: str, tmp_path) -> None:
    """The whole ``schemagate run`` executes the application's env.py twice: once in the precheck's throw-away
    shadow (the pending revisions, captured for the derivation and the lint; it also confirms the plan, which
    was read from the catalog) and once to migrate the real database. No plan run, no offline rendering."""
    log = tmp_path / "env-runs.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=fresh_db, PROBE_ENV_LOG=str(log),
               SCHEMAGATE_NO_EMBEDDED="1")
    p = run_module(["-m", "schemagate.cli", "run", "-c", str(PROBE), "--json", "--backup-dir",
                    str(tmp_path / "backups")], env)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["reason"] == "Verified" and version(fresh_db) == "0002", result["message"]
    runs = collections.Counter(tuple(line.split(" ", 1)) for line in log.read_text().splitlines())
    from urllib.parse import urlsplit

    real = f"{database_name(fresh_db)}@{urlsplit(fresh_db).port}"  # not the shadow server's database of that name
    assert sum(runs.values()) == 2, runs  # was 12, then 7, then 4
    assert runs[("migrate", real)] == 1, runs  # the upgrade itself
    shadow = [db for purpose, db in runs if db != real]
    assert len(shadow) == 1 and runs[("migrate", shadow[0])] == 1, runs  # the shadow upgrade
    precheck = next(s for s in result["data"]["steps"] if s["step"] == "precheck")
    assert precheck["outcome"] == "Succeeded", precheck
    assert query(fresh_db, "SELECT count(*) FROM probe_items") == [(0,)]


def _run_probe(fresh_db: str, tmp_path, **env_extra: str) -> tuple[dict, collections.Counter]:
    """``schemagate run`` of the probe project: (the result, env.py runs by (purpose, database))."""
    log = tmp_path / "env-runs.log"
    log.write_text("")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=fresh_db, PROBE_ENV_LOG=str(log),
               SCHEMAGATE_NO_EMBEDDED="1", **env_extra)
    p = run_module(["-m", "schemagate.cli", "run", "-c", str(PROBE), "--json", "--backup-dir",
                    str(tmp_path / "backups")], env)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = collections.Counter(tuple(line.split(" ", 1)) for line in log.read_text().splitlines())
    return json.loads(p.stdout), runs


@pytest.mark.parametrize("schema", [None, "ops"])
def test_a_custom_version_table_at_base(fresh_db: str, tmp_path, schema: str | None) -> None:
    """env.py keeps its version table elsewhere and the database has none yet: the catalog says base, env.py's
    shadow run confirms it and names the table, verify reads that table; still two env.py runs."""
    if schema:
        execute(fresh_db, f"CREATE SCHEMA {schema}")
    extra = {"PROBE_VERSION_TABLE": "probe_versions", **({"PROBE_VERSION_TABLE_SCHEMA": schema} if schema else {})}
    result, runs = _run_probe(fresh_db, tmp_path, **extra)
    assert result["reason"] == "Verified", result["message"]
    table = f"{schema}.probe_versions" if schema else "probe_versions"
    assert query(fresh_db, f"SELECT version_num FROM {table}") == [("0002",)]
    assert query(fresh_db, "SELECT to_regclass('public.alembic_version') IS NULL") == [(True,)]
    assert sum(runs.values()) == 2, runs
    # the next run has nothing to do: env.py plans once (a catalog plan with nothing pending is confirmed by no
    # later env.py run, and the one table it found could be another project's), nothing else runs
    result, runs = _run_probe(fresh_db, tmp_path, **extra)
    assert result["reason"] == "Verified" and result["data"]["applied"] == [], result
    assert sum(runs.values()) == 1 and [purpose for purpose, _db in runs] == ["plan"], runs


def test_two_version_tables_plan_through_env_py(fresh_db: str, tmp_path) -> None:
    """Two Alembic projects share the database (two version tables): the catalog does not tell which is the
    probe's, so env.py plans (three runs); the other project's table is untouched."""
    execute(fresh_db, "CREATE TABLE other_version (version_num varchar(32) PRIMARY KEY)")
    execute(fresh_db, "INSERT INTO other_version VALUES ('f00dcafe0001')")
    execute(fresh_db, "CREATE TABLE probe_versions (version_num varchar(32) PRIMARY KEY)")
    result, runs = _run_probe(fresh_db, tmp_path, PROBE_VERSION_TABLE="probe_versions")
    assert result["reason"] == "Verified", result["message"]
    assert query(fresh_db, "SELECT version_num FROM probe_versions") == [("0002",)]
    assert query(fresh_db, "SELECT version_num FROM other_version") == [("f00dcafe0001",)]
    real = database_name(fresh_db)
    assert sum(n for (purpose, db), n in runs.items() if purpose == "plan" and db.startswith(real + "@")) == 1, runs
    assert sum(runs.values()) == 3, runs


def test_a_wrong_guess_from_the_catalog_is_caught_by_env_py(fresh_db: str, tmp_path) -> None:
    """The one candidate table holds revisions of the probe's scripts, but env.py keeps its version in another
    table, not created yet (base): the shadow run's env.py reads base, not the guessed 0001, so the run plans
    through env.py and applies both revisions to env.py's table; the other table is untouched."""
    execute(fresh_db, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    execute(fresh_db, "INSERT INTO alembic_version VALUES ('0001')")
    result, runs = _run_probe(fresh_db, tmp_path, PROBE_VERSION_TABLE="probe_versions")
    assert result["reason"] == "Verified", result["message"]
    assert result["data"]["applied"] == ["0001", "0002"], result["data"]
    assert query(fresh_db, "SELECT version_num FROM probe_versions") == [("0002",)]
    assert query(fresh_db, "SELECT version_num FROM alembic_version") == [("0001",)]
    assert query(fresh_db, "SELECT count(*) FROM probe_items") == [(0,)]


def test_the_migration_plans_again_when_the_version_rows_changed_meanwhile(fresh_db: str, tmp_path) -> None:
    """Another migrator applied everything between the plan and the advisory lock: the version rows read under the
    lock differ from the plan's, so env.py plans again there and nothing is applied twice."""
    from schemagate.contract.target import Target
    from schemagate.runner.inject.apply import upgrade
    from schemagate.runner.inject.migrate import migrate
    from schemagate.runner.inject.revisions import plan

    log = tmp_path / "env-runs.log"
    os.environ["PROBE_ENV_LOG"] = str(log)
    try:
        stale = plan(Target(PROBE, "head", fresh_db, None))
        assert stale["pending"] == ["0001", "0002"]
        upgrade(Target(PROBE, "head", fresh_db, None))  # the other migrator
        log.write_text("")
        r = migrate(Target(PROBE, "head", fresh_db, None), planned=stale)
    finally:
        del os.environ["PROBE_ENV_LOG"]
    assert r.ok and r.data["applied"] == [] and "nothing to apply" in r.message, r.message
    purposes = [line.split(" ", 1)[0] for line in log.read_text().splitlines()]
    assert purposes.count("plan") == 1, purposes  # the re-plan under the lock, through env.py
    assert version(fresh_db) == "0002"


def test_one_run_opens_at_most_four_sessions_on_the_real_database(fresh_db: str, pg_server: str, tmp_path) -> None:
    """pg_dump (the backup; the shadow's schema comes from it), env.py's upgrade, and one shared session for the
    plan's catalog read, the precheck's and verify's questions and the advisory lock: 3 today, the goal is 4 at
    most. (The lock-wait watcher would add one only after half the lock_timeout: 60s here.) Counted by
    PostgreSQL itself (pg_stat_database.sessions)."""
    import time

    name = database_name(fresh_db)

    def sessions() -> int:
        deadline = time.monotonic() + 60
        while query(pg_server, "SELECT count(*) FROM pg_stat_activity WHERE datname = :d", d=name) != [(0,)]:
            assert time.monotonic() < deadline, "sessions on the database did not end"
            time.sleep(0.1)
        with psycopg.connect(libpq_url(pg_server), autocommit=True) as c:
            c.execute("SELECT pg_stat_clear_snapshot()")
            row = c.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
        return int(row[0]) if row else 0

    before = sessions()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=fresh_db, SCHEMAGATE_NO_EMBEDDED="1")
    p = run_module(["-m", "schemagate.cli", "run", "-c", str(PROBE), "--json", "--backup-dir",
                    str(tmp_path / "backups"), "--lock-timeout", "60s"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["reason"] == "Verified"
    opened = sessions() - before
    assert 1 <= opened <= 4, opened


def test_other_tables_named_like_a_version_column_do_not_confuse_the_plan(fresh_db: str, tmp_path) -> None:
    """A user table with an integer ``version_num`` and one with a text ``version_num`` in more rows than a version
    table has heads are not version tables: the plan still comes from the catalog (two env.py runs), and the catalog
    still finds a version table that has an extra column (a second run has nothing to do: one env.py plan run)."""
    execute(fresh_db, "CREATE TABLE documents (id int PRIMARY KEY, version_num integer)")
    execute(fresh_db, "CREATE TABLE releases (version_num text)")
    execute(fresh_db, "INSERT INTO releases SELECT 'r' || g FROM generate_series(1, 150) g")
    result, runs = _run_probe(fresh_db, tmp_path)
    assert result["reason"] == "Verified" and result["data"]["applied"] == ["0001", "0002"], result
    assert sum(runs.values()) == 2, runs
    execute(fresh_db, "ALTER TABLE alembic_version ADD COLUMN note text")
    from schemagate.contract.target import Target
    from schemagate.runner.inject.revisions import plan_from_catalog

    with psycopg.connect(libpq_url(fresh_db)) as conn:
        found = plan_from_catalog(Target(PROBE, "head", fresh_db), conn)
    assert found is not None and (found["versionTable"], found["current"]) == ("alembic_version", "0002"), found
    result, runs = _run_probe(fresh_db, tmp_path)  # nothing to do: env.py plans once (plan_without_env)
    assert result["reason"] == "Verified" and result["data"]["applied"] == [], result
    assert sum(runs.values()) == 1 and [purpose for purpose, _db in runs] == ["plan"], runs


@pytest.mark.parametrize("command", ["precheck", "run"])
@pytest.mark.parametrize("elsewhere", ["same", "other"])
def test_an_env_py_that_ignores_the_url_it_is_given_changes_nothing(make_db, tmp_path, command: str,
                                                                     elsewhere: str) -> None:
    """env.py reads its own variable first (here PROBE_APP_DB), so in the precheck's shadow run it connects to the
    real database (``same``) or to another one (``other``) instead of the shadow: WrongDatabase, found inside that
    env.py run before any revision ran, and no database changes."""
    real = make_db()
    other = make_db() if elsewhere == "other" else real
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=real, PROBE_APP_DB=other,
               SCHEMAGATE_NO_EMBEDDED="1")
    args = ["-m", "schemagate.cli", command, "-c", str(PROBE), "--json"]
    if command == "run":
        args += ["--backup-dir", str(tmp_path / "backups")]
    p = run_module(args, env)
    result = json.loads(p.stdout)
    assert p.returncode != 0 and result["reason"] == "WrongDatabase", result
    assert "env.py connected to" in result["message"] and "sqlalchemy.url" in result["message"], result["message"]
    assert version(real) is None and version(other) is None  # nothing applied anywhere
    assert query(real, "SELECT to_regclass('probe_items') IS NULL") == [(True,)]


def test_migrate_refuses_an_env_py_that_migrates_another_database(make_db) -> None:
    """``schemagate migrate`` (no shadow run before it): env.py connects to another database than the one the
    advisory lock is held on: WrongDatabase before any revision runs."""
    real, other = make_db(), make_db()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=real, PROBE_APP_DB=other,
               SCHEMAGATE_NO_EMBEDDED="1")
    p = run_module(["-m", "schemagate.cli", "migrate", "-c", str(PROBE), "--json"], env)
    result = json.loads(p.stdout)
    assert p.returncode != 0 and result["reason"] == "WrongDatabase", result
    assert version(real) is None and version(other) is None
