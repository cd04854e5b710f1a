"""Alembic projects shipped inside a Python package, on real PostgreSQL.

A small package ``pkgapp`` is written to a temporary directory and made importable (``sys.path`` in process,
``PYTHONPATH`` for subprocesses, as an installed package is). Its project lives in ``pkgapp/db/migrations``
(env.py, versions/) with an ``alembic.ini`` in ``pkgapp/`` whose ``script_location = db/migrations`` is relative
to the ini's own directory. The working directory of every run holds a decoy ``db/migrations`` project that
creates a different table: a relative path resolved against the working directory first would pick it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.core.jobs import JobSettings, build_job
from schemagate.core.model import Migration
from schemagate.runner.inject.migrate import migrate
from schemagate.runner.inject.revisions import plan
from tests.pipeline.helpers import ROOT, query, schema_snapshot

SETTINGS = JobSettings(runner_image="example/schemagate:1")

ENV_PY = '''
import os
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def url():
    u = config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]
    scheme, _, rest = u.partition("://")
    return "postgresql+psycopg://" + rest if scheme in ("postgres", "postgresql") else u


if context.is_offline_mode():
    context.configure(url=url(), literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
'''

REVISION = '''"""{doc}

Revision ID: {rev}
Revises: {down}
"""
from alembic import op

revision = "{rev}"
down_revision = {down_repr}
branch_labels = None
depends_on = None


def upgrade():
    op.execute({sql!r})


def downgrade():
    raise NotImplementedError
'''


def _project(root: Path, table: str) -> None:
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(ENV_PY)
    (root / "versions" / "0001_first.py").write_text(REVISION.format(
        doc="first", rev="0001", down="None", down_repr="None", sql=f"CREATE TABLE {table} (id int PRIMARY KEY)"))
    (root / "versions" / "0002_second.py").write_text(REVISION.format(
        doc="second", rev="0002", down="0001", down_repr='"0001"',
        sql=f"ALTER TABLE {table} ADD COLUMN note text NOT NULL DEFAULT ''"))


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``site/pkgapp`` (importable) and a working directory with a decoy project; returns ``site``."""
    site = tmp_path / "site"
    app = site / "pkgapp"
    (app / "db").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "db" / "__init__.py").write_text("")
    _project(app / "db" / "migrations", "packaged_items")
    (app / "alembic.ini").write_text("[alembic]\nscript_location = db/migrations\n")
    (app / "db" / "migrations" / "alembic.ini").write_text("[alembic]\nscript_location = pkgapp.db:migrations\n")
    cwd = tmp_path / "work"
    _project(cwd / "db" / "migrations", "decoy_items")
    (cwd / "alembic.ini").write_text("[alembic]\nscript_location = db/migrations\n")
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(site))
    return site


def tables(url: str) -> list[str]:
    return [r[0] for r in query(url, "select tablename from pg_tables where schemaname = 'public' order by 1")]


@pytest.mark.parametrize("config", [
    "pkgapp:alembic.ini",                 # an ini inside the package, relative script_location
    "pkgapp.db:migrations/alembic.ini",   # an ini whose script_location is Alembic's package:path form
    "pkgapp.db:migrations",               # no ini: the script location itself (like mlflow.store:db_migrations)
    "SITE/pkgapp/alembic.ini",            # the installed file by path, run from another directory
])
def test_packaged_project_migrates_from_any_working_directory(pkg: Path, fresh_db: str, config: str) -> None:
    config = config.replace("SITE", str(pkg))
    p = plan(Target(config, "head", fresh_db))
    assert (p["current"], p["pending"]) == (None, ["0001", "0002"])
    r = migrate(Target(config, "head", fresh_db), retries=0)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert tables(fresh_db) == ["alembic_version", "packaged_items"]  # never the decoy in the working directory
    assert query(fresh_db, "select column_name from information_schema.columns where table_name = "
                           "'packaged_items' order by 1") == [("id",), ("note",)]


def test_unknown_package_is_invalid_input_and_changes_nothing(pkg: Path, fresh_db: str) -> None:
    before = schema_snapshot(fresh_db)
    r = migrate(Target("nosuchpkg_xyz.db:migrations", "head", fresh_db), retries=0)
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "InvalidInput"), r.message
    assert "-c/--config" in r.message and "nosuchpkg_xyz" in r.message
    assert schema_snapshot(fresh_db) == before


def _job_body(config: str) -> dict[str, object]:
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": "pkg", "namespace": "default", "uid": "u-1", "generation": 1},
            "spec": {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                     "migrations": {"image": "example/app:1", "directory": "/srv/app", "config": config}}}


def test_rendered_migrate_job_runs_the_packaged_project(pkg: Path, fresh_db: str, tmp_path: Path) -> None:
    """spec.migrations.config reaches the migrate Job's command; that command, run for real (python of this
    environment, the Job's working directory replaced by one holding a decoy project), applies the package's
    revisions."""
    m = Migration.from_body(_job_body("pkgapp:alembic.ini"))
    job = build_job(m, "migrate", "pkg-1-migrate-1", 1, SETTINGS, {"targetRevision": "0002"})
    c = job["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[cmd.index("-c") + 1] == "pkgapp:alembic.ini" and c["workingDir"] == "/srv/app"
    url_env = cmd[cmd.index("--database-url-env") + 1]
    args = [sys.executable if a == "python" else a for a in cmd]
    args[args.index("--termination-log") + 1] = str(tmp_path / "termination-log")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg), str(ROOT / "operator")]), **{url_env: fresh_db})
    p = subprocess.run(args, cwd=os.getcwd(), env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["data"]["toRevision"] == "0002"
    assert tables(fresh_db) == ["alembic_version", "packaged_items"]


def test_relative_config_is_relative_to_directory() -> None:
    for config, expected in (("alembic.ini", "/srv/app/alembic.ini"), ("deploy/alembic.ini",
                                                                          "/srv/app/deploy/alembic.ini"),
                             ("/opt/x/alembic.ini", "/opt/x/alembic.ini"),
                             ("mlflow.store:db_migrations", "mlflow.store:db_migrations")):
        m = Migration.from_body(_job_body(config))
        for step in ("migrate", "precheck"):
            job = build_job(m, step, f"pkg-1-{step}-1", 1, SETTINGS, {"targetRevision": "0002"})
            pod = job["spec"]["template"]["spec"]
            cmds = [c["command"] for c in pod.get("initContainers", []) + pod["containers"]
                    if "schemagate.runner.inject" in c["command"]]
            assert cmds and all(c[c.index("-c") + 1] == expected for c in cmds), (step, cmds)
