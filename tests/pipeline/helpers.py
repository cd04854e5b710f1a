"""Helpers shared by the pipeline tests (real PostgreSQL through SQLAlchemy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from schemagate.contract.dburl import sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
PROJECTS = Path(__file__).resolve().parent / "projects"
FOODTRUCK = MIGRATIONS / "foodtruck" / "alembic.ini"
WHOLESALE = MIGRATIONS / "wholesale" / "alembic.ini"
ORMAPP = PROJECTS / "ormapp" / "alembic.ini"
MULTIHEAD = PROJECTS / "multihead" / "alembic.ini"
HALFWAY = PROJECTS / "halfway" / "alembic.ini"


def engine(url: str) -> sa.Engine:
    return sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    e = engine(url)
    try:
        with e.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql), params)]
    finally:
        e.dispose()


def scalar(url: str, sql: str, **params: Any) -> Any:
    rows = query(url, sql, **params)
    return rows[0][0] if rows else None


def execute(url: str, sql: str) -> None:
    e = engine(url)
    try:
        with e.begin() as c:
            c.exec_driver_sql(sql)
    finally:
        e.dispose()


def version(url: str) -> str | None:
    if not scalar(url, "select to_regclass('alembic_version') is not null"):
        return None
    return scalar(url, "select version_num from alembic_version")


def schema_snapshot(url: str) -> list[tuple[Any, ...]]:
    """Tables, columns, constraints and indexes of the public schema (to prove that nothing changed)."""
    rows = query(
        url,
        """
        select 'col', table_name, column_name || ':' || data_type || ':' || is_nullable from information_schema.columns
         where table_schema = 'public'
        union all
        select 'con', conrelid::regclass::text, conname || ':' || pg_get_constraintdef(oid) || ':' || convalidated
          from pg_constraint where connamespace = 'public'::regnamespace
        union all
        select 'idx', tablename, indexname from pg_indexes where schemaname = 'public'
        order by 1, 2, 3
        """,
    )
    return rows + [("ver", "alembic_version", version(url) or "")]


def run_module(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))
