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


def ddl_script(statements: list[Statement]) -> str:
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
