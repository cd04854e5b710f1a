"""Capture the statements the pending revisions execute on the shadow database (SQLAlchemy only).

Used in the shadow run to learn (a) whether a revision changes data (DML) before adding a constraint, which makes
the current-data counts an over-estimate, and (b) the DDL actually executed, which squawk lints when the offline
(``--sql``) rendering fails. Listens on the ``Engine`` *class*, so it sees the engine the application's
``env.py`` creates itself.

The shadow-upgrade container (application image) writes the same list as ``statements`` in
``shadow-upgrade.json``: ``[{"revision": id|null, "kind": "ddl"|"dml"|"other", "sql": text}]``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.S)
_DML = re.compile(r"^\s*(WITH\b.*?\b(INSERT|UPDATE|DELETE|MERGE)\b|INSERT\b|UPDATE\b|DELETE\b|MERGE\b|COPY\b"
                  r"|TRUNCATE\b)", re.I | re.S)
_READ = re.compile(r"^\s*(SELECT|SHOW|SET|RESET|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START|EXPLAIN|VALUES"
                   r"|LOCK|DISCARD|LISTEN|NOTIFY|FETCH|DECLARE|CLOSE)\b", re.I)
_VERSION_TABLE = re.compile(r"\balembic_version\b", re.I)

MAX_STATEMENTS = 2000
MAX_SQL = 4000


def classify(sql: str) -> str:
    """``dml`` (changes rows), ``ddl`` (anything else that changes the database) or ``other`` (reads, session)."""
    text = _COMMENTS.sub(" ", sql).strip()
    if _VERSION_TABLE.search(text) and (_DML.match(text) or text.upper().startswith("CREATE TABLE")):
        return "other"  # Alembic's own bookkeeping
    if _DML.match(text):
        return "dml"
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

    def add(self, sql: str, executemany: bool = False) -> None:
        kind = classify(sql)
        if kind == "other":
            return
        if len(self.statements) >= MAX_STATEMENTS:
            self.dropped += 1
            return
        entry = {"revision": self.revision, "kind": kind, "sql": sql[:MAX_SQL]}
        if executemany:
            entry["executemany"] = True
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
    """Record every statement any SQLAlchemy engine executes while the block runs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    log = log or StatementLog()

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        log.add(statement, executemany)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield log
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def dml_label(statements: list[dict[str, Any]] | None) -> tuple[bool | None, str | None]:
    """(data changed?, label for the counts) from captured statements; None = unknown."""
    if statements is None:
        return None, ("unknown whether the pending revisions change data: counts are of the current data, "
                      "before any data changes the revisions may make")
    revs = []
    for s in statements:
        if s.get("kind") == "dml":
            r = s.get("revision") or "?"
            if r not in revs:
                revs.append(r)
    if not revs:
        return False, None
    return True, ("counts are before the pending revisions' data changes (DML in revision(s) "
                  + ", ".join(revs) + "): they may over-report")


def ddl_script(statements: list[dict[str, Any]]) -> str:
    """The captured DDL as one SQL script (the lint fallback)."""
    out = []
    for s in statements:
        if s.get("kind") == "ddl":
            sql = str(s["sql"]).strip().rstrip(";")
            out.append(f"-- revision {s.get('revision') or '?'}\n{sql};")
    return "\n\n".join(out) + ("\n" if out else "")
