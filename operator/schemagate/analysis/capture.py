"""Capture the statements the pending revisions execute on the shadow database (SQLAlchemy only).

Used in the shadow run to learn (a) whether a revision changes data (DML) before adding a constraint, which makes
the current-data counts an over-estimate, and (b) the DDL actually executed, which squawk lints when the offline
(``--sql``) rendering fails. Listens on the ``Engine`` *class*, so it sees the engine the application's
``env.py`` creates itself.

The shadow-upgrade container (application image) writes the same list as ``statements`` in
``shadow-upgrade.json``: ``[{"revision": id|null, "kind": "ddl"|"dml"|"other", "sql": text, "tx": n}]``, where
``tx`` numbers the database transaction (``"autocommit": true`` instead for a statement outside one).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator
from typing import Any

_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.S)
_DML = re.compile(r"^\s*(WITH\b.*?\b(INSERT|UPDATE|DELETE|MERGE)\b|INSERT\b|UPDATE\b|DELETE\b|MERGE\b|COPY\b"
                  r"|TRUNCATE\b)", re.I | re.S)
_READ = re.compile(r"^\s*(SELECT|SHOW|SET|RESET|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START|EXPLAIN|VALUES"
                   r"|LOCK|DISCARD|LISTEN|NOTIFY|FETCH|DECLARE|CLOSE)\b", re.I)
_VERSION_TABLE = re.compile(r"\balembic_version\b", re.I)
_SELECT = re.compile(r"^\s*(SELECT|WITH)\b", re.I)
_FROM = re.compile(r"\b(FROM|JOIN)\s+((\"[^\"]+\"|\w+)(\s*\.\s*(\"[^\"]+\"|\w+))?)", re.I)
_SYSTEM = re.compile(r"^\"?(pg_catalog|information_schema|pg_\w+|alembic_version)\b", re.I)

MAX_STATEMENTS = 2000
MAX_SQL = 4000


def classify(sql: str) -> str:
    """``dml`` (changes rows), ``read`` (reads rows of an application table: a data migration whose writes depend
    on the data, invisible in the empty shadow), ``ddl`` (anything else that changes the database) or ``other``
    (catalog reads, session statements, Alembic's bookkeeping)."""
    text = _COMMENTS.sub(" ", sql).strip()
    if _VERSION_TABLE.search(text) and (_DML.match(text) or _SELECT.match(text)
                                        or text.upper().startswith("CREATE TABLE")):
        return "other"  # Alembic's own bookkeeping
    if _DML.match(text):
        return "dml"
    if _SELECT.match(text):
        tables = [m.group(2) for m in _FROM.finditer(text)]
        if any(not _SYSTEM.match(t.split(".")[0].strip()) for t in tables):
            return "read"
        return "other"
    if not text or _READ.match(text):
        return "other"
    return "ddl"


class StatementLog:
    def __init__(self) -> None:
        self.revision: str | None = None
        self.statements: list[dict[str, Any]] = []
        self.dropped = 0

    def on_revision(self, rev: str) -> None:
        self.revision = rev

    def add(self, sql: str, executemany: bool = False, tx: int | None = None, autocommit: bool = False) -> None:
        kind = classify(sql)
        if kind == "other":
            return
        if len(self.statements) >= MAX_STATEMENTS:
            self.dropped += 1
            return
        entry: dict[str, Any] = {"revision": self.revision, "kind": kind, "sql": sql[:MAX_SQL]}
        if executemany:
            entry["executemany"] = True
        if autocommit:
            entry["autocommit"] = True
        elif tx is not None:
            entry["tx"] = tx
        self.statements.append(entry)

    @property
    def dml_revisions(self) -> list[str]:
        seen: list[str] = []
        for s in self.statements:
            if s["kind"] == "dml":
                r = s.get("revision") or "?"
                if r not in seen:
                    seen.append(r)
        return seen


@contextlib.contextmanager
def capture_statements(log: StatementLog | None = None) -> Iterator[StatementLog]:
    """Record every statement any SQLAlchemy engine executes while the block runs, with the number of the
    database transaction it ran in (``tx``) or ``autocommit`` (Alembic's ``autocommit_block``): the lock lint
    (:mod:`schemagate.analysis.locks`) groups statements by transaction."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    log = log or StatementLog()
    open_tx: dict[int, int] = {}  # id(Connection) -> number of its open transaction
    numbers = itertools.count(1)

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        auto = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if not auto and id(conn) not in open_tx:
            open_tx[id(conn)] = next(numbers)
        log.add(statement, executemany, tx=None if auto else open_tx[id(conn)], autocommit=auto)

    def end(conn: Any) -> None:
        open_tx.pop(id(conn), None)

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "commit", end)
    event.listen(Engine, "rollback", end)
    try:
        yield log
    finally:
        event.remove(Engine, "before_cursor_execute", before)
        event.remove(Engine, "commit", end)
        event.remove(Engine, "rollback", end)


def dml_label(statements: list[dict[str, Any]] | None) -> tuple[bool | None, str | None]:
    """(data changed?, label for the counts) from captured statements; None = unknown."""
    if statements is None:
        return None, ("unknown whether the pending revisions change data: counts are of the current data, "
                      "before any data changes the revisions may make")
    writes: list[str] = []
    reads: list[str] = []
    for s in statements:
        r = s.get("revision") or "?"
        if s.get("kind") == "dml" and r not in writes:
            writes.append(r)
        elif s.get("kind") == "read" and r not in reads:
            reads.append(r)
    reads = [r for r in reads if r not in writes]
    if not writes and not reads:
        return False, None
    why = []
    if writes:
        why.append("revision(s) " + ", ".join(writes) + " execute DML")
    if reads:
        why.append("revision(s) " + ", ".join(reads) + " read table rows (a data migration)")
    return True, ("counts are before the pending revisions' data changes (" + "; ".join(why)
                  + "): they may over-report")


_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.I)


def ddl_script(statements: list[dict[str, Any]]) -> str:
    """The captured DDL as one SQL script (the lint fallback): one transaction per revision, as Alembic runs
    them on PostgreSQL, with CONCURRENTLY statements outside it (as in ``autocommit_block``)."""
    out: list[str] = []
    current: object = object()
    in_tx = False
    for s in statements:
        if s.get("kind") != "ddl":
            continue
        rev = s.get("revision") or "?"
        sql = str(s["sql"]).strip().rstrip(";")
        if rev != current:
            if in_tx:
                out.append("COMMIT;")
            out.append(f"-- revision {rev}")
            current, in_tx = rev, False
        concurrent = bool(_CONCURRENTLY.search(sql))
        if concurrent and in_tx:
            out.append("COMMIT;")
            in_tx = False
        elif not concurrent and not in_tx:
            out.append("BEGIN;")
            in_tx = True
        out.append(sql + ";")
    if in_tx:
        out.append("COMMIT;")
    return "\n".join(out) + ("\n" if out else "")
