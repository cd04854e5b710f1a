"""What the captured statements mean for the precheck: whether the pending revisions change data, and the
captured DDL as a script for the linter.

The statements are captured on the shadow database by ``schemagate.runner.inject.capture.capture_statements`` (on a
laptop in the precheck's process, in Kubernetes in the application's image, written as ``statements`` into
``shadow-upgrade.json``) and classified by the one classifier, ``schemagate.contract.sqlkind``:
``[{"revision": id|null, "kind": "ddl"|"dml"|"read", "sql": text, "tx": n}]``, where ``tx`` numbers the database
transaction (``"autocommit": true`` instead for a statement outside one).
"""

from __future__ import annotations

import re

from schemagate.contract.sqlkind import MAX_SQL, MAX_STATEMENTS, Statement, StatementLog, classify

__all__ = ["MAX_SQL", "MAX_STATEMENTS", "Statement", "StatementLog", "classify", "ddl_script", "dml_label"]


def dml_label(statements: list[Statement] | None) -> tuple[bool | None, str | None]:
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


def cut_ddl(statements: list[Statement]) -> int:
    """How many captured DDL statements were cut at ``MAX_SQL`` characters (``ddl_script`` leaves them out: a cut
    statement does not parse)."""
    return sum(1 for s in statements if s.get("kind") == "ddl" and len(str(s.get("sql") or "")) >= MAX_SQL)


def ddl_script(statements: list[Statement]) -> str:
    """The captured DDL as one SQL script for the linter, in the transactions PostgreSQL ran it in: statements
    with the same ``tx`` number inside one ``BEGIN;``/``COMMIT;``, an ``autocommit`` statement (Alembic's
    ``autocommit_block``) outside any. Statements captured without either (an older injected runner) get one
    transaction per revision, with CONCURRENTLY statements outside it. Statements cut at ``MAX_SQL`` characters
    are left out (``cut_ddl`` counts them); each revision starts with a ``-- revision <id>`` comment."""
    out: list[str] = []
    revision: object = object()
    open_tx: object = None  # the transaction the script is inside, None: outside
    for s in statements:
        sql = str(s.get("sql") or "").strip().rstrip(";")
        if s.get("kind") != "ddl" or not sql or len(str(s.get("sql"))) >= MAX_SQL:
            continue
        rev = s.get("revision") or "?"
        if s.get("autocommit") or (not s.get("tx") and _CONCURRENTLY.search(sql)):
            tx: object = None
        else:
            tx = s["tx"] if s.get("tx") else ("revision", rev)
        if tx != open_tx and open_tx is not None:
            out.append("COMMIT;")
        if rev != revision:
            out.append(f"-- revision {rev}")
            revision = rev
        if tx != open_tx:
            if tx is not None:
                out.append("BEGIN;")
            open_tx = tx
        out.append(sql + ";")
    if open_tx is not None:
        out.append("COMMIT;")
    return "\n".join(out) + ("\n" if out else "")
