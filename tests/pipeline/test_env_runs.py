"""One ``schemagate run`` plans once: the application's env.py runs on the real database to read the current
revision only once (the run's plan); under its advisory lock the migration reads the version rows with SQL and
plans again through env.py only when they changed. Real PostgreSQL; the probe project's env.py logs every
execution with its purpose and database."""

from __future__ import annotations

import collections
import json
import os

import pytest

from schemagate.contract.dburl import database_name
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
