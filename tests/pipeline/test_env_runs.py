"""One ``schemagate run`` plans once: the application's env.py runs on the real database to read the current
revision only once (the run's plan); under its advisory lock the migration reads the version rows with SQL and
plans again through env.py only when they changed. Real PostgreSQL; the probe project's env.py logs every
execution with its purpose and database."""

from __future__ import annotations

import collections
import json
import os

import psycopg
import pytest

from schemagate.contract.dburl import database_name, libpq_url
from tests.pipeline.helpers import PROJECTS, ROOT, query, run_module, version

pytestmark = pytest.mark.postgres

PROBE = PROJECTS / "probe" / "alembic.ini"


def test_one_run_plans_once(fresh_db: str, tmp_path) -> None:
    log = tmp_path / "env-runs.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=fresh_db, PROBE_ENV_LOG=str(log),
               SCHEMAGATE_NO_EMBEDDED="1")
    p = run_module(["-m", "schemagate.cli", "run", "-c", str(PROBE), "--json", "--backup-dir",
                    str(tmp_path / "backups"), "--no-lint"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["reason"] == "Verified" and version(fresh_db) == "0002", result["message"]
    runs = collections.Counter(tuple(line.split(" ", 1)) for line in log.read_text().splitlines())
    from urllib.parse import urlsplit

    real = f"{database_name(fresh_db)}@{urlsplit(fresh_db).port}"  # not the shadow server's database of that name
    plans_on_real = runs[("plan", real)]
    assert plans_on_real == 1, runs  # the run's plan; the version rows under the lock are the planned ones; was 7
    assert runs[("migrate", real)] == 1, runs  # the upgrade itself
    # env.py never ran against the real database for anything else than planning, migrating, rendering SQL
    assert {purpose for purpose, db in runs if db == real} <= {"plan", "migrate", "offline"}, runs
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
    """pg_dump (the backup; the shadow's schema comes from it), env.py's plan, env.py's upgrade, and one shared
    session for the precheck's and verify's questions and the advisory lock. (The lock-wait watcher would add one
    only after half the lock_timeout: 60s here.) Counted by PostgreSQL itself (pg_stat_database.sessions)."""
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
