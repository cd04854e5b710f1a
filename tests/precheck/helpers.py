"""Helpers for the precheck tests: SQL on a real PostgreSQL (fixtures from tests/pgfixtures.py), test projects."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from schemagate.contract.dburl import libpq_url
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import upgrade as alembic_upgrade

PROJECTS = Path(__file__).parent / "projects"
REPO = Path(__file__).resolve().parents[2]


def project(name: str) -> str:
    """alembic.ini of a test project (tests/precheck/projects/NAME) or an example (migrations/NAME)."""
    for base in (PROJECTS, REPO / "migrations"):
        ini = base / name / "alembic.ini"
        if ini.exists():
            return str(ini)
    raise AssertionError(f"no Alembic project {name!r}")


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for s in statements:
            conn.execute(s)  # type: ignore[arg-type]


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def upgrade(url: str, name: str, target: str) -> None:
    alembic_upgrade(Target(project(name), target, url, "DATABASE_URL"))


def databases(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT datname FROM pg_database")}


def seq_scans(url: str, tables: list[str], previous: dict[str, int] | None = None,
              timeout: float = 10.0) -> dict[str, int]:
    """``pg_stat_user_tables.seq_scan`` per table; with ``previous``, waits until the statistics moved."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            rows = conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                                (tables,)).fetchall()
        got = {r[0]: int(r[1] or 0) for r in rows}
        if previous is None or got != previous or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def sql_project(root: Path, base: list[str], *revisions: list[str]) -> str:
    """A throw-away Alembic project under ``root``: revision 0001 runs ``base``, then one revision per list of
    statements (0002, 0003, ..), each statement through ``op.execute``; env.py is the rawsql project's
    (``transaction_per_migration=True``). Returns its alembic.ini."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECTS / "rawsql" / "env.py", root / "env.py")
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n"
                                      "sqlalchemy.url = postgresql://localhost/unused\n", encoding="utf-8")
    versions = root / "versions"
    versions.mkdir(exist_ok=True)
    previous = None
    for i, statements in enumerate([base, *revisions], 1):
        rev = f"{i:04d}"
        body = "\n".join(f"    op.execute({s!r})" for s in statements) or "    pass"
        (versions / f"{rev}_r.py").write_text(
            f"from alembic import op\n\nrevision = {rev!r}\ndown_revision = {previous!r}\n"
            f"branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n{body}\n\n\ndef downgrade():\n    pass\n",
            encoding="utf-8")
        previous = rev
    return str(root / "alembic.ini")


def migration_fails(url: str, ini: str, target: str = "head") -> bool:
    """Whether plain ``alembic upgrade`` to ``target`` fails on ``url`` (PostgreSQL's own verdict)."""
    try:
        alembic_upgrade(Target(ini, target, url, "DATABASE_URL"))
    except Exception:  # noqa: BLE001 - any failure of the upgrade is the answer
        return True
    return False
