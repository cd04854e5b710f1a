"""The explicit shadow database's housekeeping (``spec.precheck.shadowDatabase`` / ``--shadow-database-url-env``):
:func:`user_table_count` (it must be empty before use) and :func:`wipe_database` (emptied again after).

The default shadow is not a database on the real server at all: it is a throw-away PostgreSQL started by the
precheck itself (``schemagate.runner.shadowserver``), into which ``schemagate.runner.shadowrestore`` restores the
real schema.
"""

from __future__ import annotations

from schemagate.analysis.counting import quote_ident
from schemagate.libpq import Connection, connect, one_row


def _connect(conninfo: str) -> Connection:
    return connect(conninfo)


def user_table_count(conninfo: str) -> int:
    with _connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p','v','m','S') AND n.nspname NOT IN ('pg_catalog','information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%'"
        )
        return int(one_row(cur)[0])


def wipe_database(conninfo: str) -> None:
    """Empty an explicit (user-provided) shadow database: drop every non-system schema, recreate ``public``."""
    with _connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema','pg_toast') "
            "AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
        )
        for (nsp,) in cur.fetchall():
            cur.execute(f"DROP SCHEMA {quote_ident(nsp)} CASCADE")
        cur.execute("CREATE SCHEMA IF NOT EXISTS public")
