"""``libpq.shared_connections``: the steps of one run ask the real database on one session (real PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest

from schemagate.libpq import connect, shared_connections
from tests.pipeline.helpers import query

pytestmark = pytest.mark.postgres


def backend(conn: object) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[attr-defined]


def test_one_session_lent_and_handed_back_clean(fresh_db: str) -> None:
    with shared_connections(fresh_db):
        with connect(fresh_db) as a:
            pid = backend(a)
            a.execute("SET statement_timeout = '1234ms'")
            assert a.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
        with connect(fresh_db, application_name="schemagate-verify") as b:
            assert backend(b) == pid  # the same session, lent again
            assert b.execute("SHOW statement_timeout").fetchone()[0] == "0"  # RESET ALL on give-back
            assert b.execute("SHOW application_name").fetchone()[0] == "schemagate-verify"
        with connect(fresh_db, autocommit=False) as c:
            assert backend(c) == pid
            c.execute("CREATE TABLE made_in_a_transaction (id int)")
        # committed on a clean exit, as psycopg's own ``with`` does
        assert query(fresh_db, "SELECT to_regclass('made_in_a_transaction') IS NOT NULL") == [(True,)]
        with pytest.raises(RuntimeError), connect(fresh_db, autocommit=False) as d:
            d.execute("CREATE TABLE rolled_back (id int)")
            raise RuntimeError("the caller failed")
        assert query(fresh_db, "SELECT to_regclass('rolled_back') IS NULL") == [(True,)]
        with connect(fresh_db) as outer, connect(fresh_db) as inner:  # lent already: a session apart
            assert backend(outer) == pid and backend(inner) != pid
        with connect(fresh_db) as e:
            assert backend(e) == pid
            assert e.execute("SELECT current_setting('application_name')").fetchone()[0] != "schemagate-verify"
    gone = query(fresh_db, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")
    assert gone == [(0,)], "the shared session is closed at the end of the block"


def test_a_broken_session_is_not_lent_again_and_other_urls_connect_apart(fresh_db: str, pg_server: str) -> None:
    with shared_connections(fresh_db):
        with connect(fresh_db) as a:
            pid = backend(a)
        query(fresh_db, f"SELECT pg_terminate_backend({pid})")
        with connect(fresh_db) as b:
            with pytest.raises(psycopg.OperationalError):
                b.execute("SELECT 1")
        with connect(fresh_db) as c:
            assert backend(c) != pid
        with connect(pg_server) as x, connect(pg_server) as y:  # not a shared URL
            assert backend(x) != backend(y)
    with connect(fresh_db) as plain:  # outside the block: a connection of its own, closed by ``with``
        assert backend(plain) != pid
    assert plain.closed
