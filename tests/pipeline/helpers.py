"""Helpers shared by the pipeline tests (real PostgreSQL through SQLAlchemy)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def open_transaction(url: str, sql: str) -> Iterator[None]:
    """A second session that runs ``sql`` in a transaction and keeps it open until the block ends (then commits):
    whatever the block runs meanwhile waits for it, however slowly it starts."""
    e = engine(url)
    try:
        with e.connect() as c:
            c.exec_driver_sql(sql)
            yield
            c.commit()
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


def processes_naming(path: Path) -> list[str]:
    """Command lines of this machine's live processes that name ``path`` or a path below it (e.g. a throw-away
    shadow server's postmaster and its watchdog, or the processes of one test-bed pod)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found


@contextlib.contextmanager
def private_server(database: str) -> Iterator[Any]:
    """A private embedded PostgreSQL that a test may stop and start (the session's server must stay up), with
    one database; yields the ``EmbeddedPostgres`` (``.db_url``: that database's URL; ``.start()`` keeps the port).
    Its directory is under the system temporary directory, open to traverse (the server may run as another user),
    and removed at the end."""
    import shutil
    import tempfile

    import psycopg

    from schemagate.contract.dburl import libpq_url
    from schemagate.local.postgres import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="sgtest-pg-"))
    base.chmod(0o755)
    pg = EmbeddedPostgres(base)
    try:
        admin = pg.start()
        with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        pg.db_url = pg.url(database)  # type: ignore[attr-defined]
        yield pg
    finally:
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def shadow_servers(parent: Path) -> list[tuple[str, int]]:
    """``(superuser URL of the postgres database, postmaster pid)`` of each ready throw-away shadow server
    (``schemagate.runner.shadowserver``) whose directory is in ``parent``: the port and state come from
    ``data/postmaster.pid`` (PostgreSQL's lock file: pid, data directory, start time, port, socket directory,
    listen address, shared memory key, status), the password from ``.password``."""
    found = []
    for d in sorted(parent.glob("schemagate-shadow-*")):
        try:
            lines = (d / "data" / "postmaster.pid").read_text().splitlines()
            password = (d / ".password").read_text().strip()
            if len(lines) > 7 and lines[7].strip() == "ready":
                found.append((f"postgresql://superuser:{password}@127.0.0.1:{int(lines[3])}/postgres",
                              int(lines[0])))
        except (OSError, ValueError, IndexError):
            pass
    return found


def wait_for_backend(url: str, sql: str, timeout: float = 300,
                     given_up: Callable[[], str | None] | None = None) -> int:
    """The first non-NULL value (a backend pid) that ``sql`` returns on ``url``, polled every 20 ms on one
    connection (a fault must land inside a window of a few seconds even when the machine is loaded); raises
    AssertionError after ``timeout`` seconds, or at once with its text when ``given_up()`` (asked about once a
    second, e.g. "the run ended") returns one."""
    from schemagate.libpq import connect

    deadline = time.monotonic() + timeout
    asked = 0.0
    with connect(url) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql).fetchone()
            if row and row[0]:
                return int(row[0])
            if given_up is not None and time.monotonic() - asked >= 1:
                asked = time.monotonic()
                why = given_up()
                if why:
                    raise AssertionError(f"{why} before a backend matched {sql}")
            time.sleep(0.02)
    raise AssertionError(f"no backend matched within {timeout:g}s: {sql}")
