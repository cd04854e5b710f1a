"""Capture: the DDL/DML statements every SQLAlchemy engine executes while revisions run, classified."""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

_SQL_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.S)
_SQL_DML = re.compile(r"^\s*(WITH\b.*?\b(INSERT|UPDATE|DELETE|MERGE)\b|INSERT\b|UPDATE\b|DELETE\b|MERGE\b|COPY\b"
                      r"|TRUNCATE\b)", re.I | re.S)
_SQL_READ = re.compile(r"^\s*(SELECT|SHOW|SET|RESET|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START|EXPLAIN|VALUES"
                       r"|LOCK|DISCARD|LISTEN|NOTIFY|FETCH|DECLARE|CLOSE)\b", re.I)


def classify_statement(sql: str) -> str:
    """``dml``, ``ddl`` or ``other``; the same rules as ``schemagate.analysis.capture.classify`` (which this module
    may not import: it runs in the application's image)."""
    text = _SQL_COMMENTS.sub(" ", sql).strip()
    if re.search(r"\balembic_version\b", text, re.I) and (_SQL_DML.match(text) or text.upper().startswith("CREATE TABLE")):
        return "other"
    if _SQL_DML.match(text):
        return "dml"
    if not text or _SQL_READ.match(text):
        return "other"
    return "ddl"


@contextlib.contextmanager
def capture_statements(state: dict[str, Any], limit: int = 2000) -> Iterator[list[dict[str, Any]]]:
    """Record the DDL/DML every SQLAlchemy engine executes (the env.py's own engine included) during the block,
    tagged with ``state["revision"]`` and the database transaction (``tx``, or ``autocommit``):
    ``[{"revision", "kind", "sql", "tx"|"autocommit"}]`` (see ``schemagate.analysis.capture``)."""
    from sqlalchemy import event

    log: list[dict[str, Any]] = []
    open_tx: dict[int, int] = {}  # id(Connection) -> number of its open transaction
    numbers = itertools.count(1)

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        kind = classify_statement(statement)
        auto = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if not auto and id(conn) not in open_tx:
            open_tx[id(conn)] = next(numbers)
        if kind != "other" and len(log) < limit:
            entry: dict[str, Any] = {"revision": state.get("revision"), "kind": kind, "sql": statement[:4000]}
            if executemany:
                entry["executemany"] = True
            if auto:
                entry["autocommit"] = True
            else:
                entry["tx"] = open_tx[id(conn)]
            log.append(entry)

    def end(conn: Any) -> None:
        open_tx.pop(id(conn), None)

    event.listen(sa.engine.Engine, "before_cursor_execute", before)
    event.listen(sa.engine.Engine, "commit", end)
    event.listen(sa.engine.Engine, "rollback", end)
    try:
        yield log
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", before)
        event.remove(sa.engine.Engine, "commit", end)
        event.remove(sa.engine.Engine, "rollback", end)
