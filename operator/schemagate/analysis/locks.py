"""Lock lint: which tables each pending revision locks strongly, and which transactions risk a deadlock.

Input: the statements captured in the shadow run (:mod:`schemagate.analysis.capture`, also ``statements`` in
``shadow-upgrade.json``): ``[{"revision", "kind", "sql", "tx"?, "autocommit"?}]``. ``tx`` numbers the database
transaction a statement ran in; ``autocommit`` marks a statement run outside one (Alembic's
``autocommit_block``). Without ``tx`` (an older capture) a revision is taken as one transaction and a
``CONCURRENTLY`` statement as its own (what Alembic does with ``transaction_per_migration``).

Each statement is parsed with PostgreSQL's own parser (pglast, libpg_query) and mapped to table-level locks as
the PostgreSQL documentation gives them:

- "ALTER TABLE" (https://www.postgresql.org/docs/current/sql-altertable.html): ACCESS EXCLUSIVE unless a
  sub-command says otherwise; ``ADD FOREIGN KEY`` SHARE ROW EXCLUSIVE on the table *and* on the referenced table;
  ``VALIDATE CONSTRAINT``, ``SET STATISTICS``, ``SET/RESET (attribute_option)``, ``CLUSTER ON``, ``SET WITHOUT
  CLUSTER``, ``DETACH PARTITION ... CONCURRENTLY``, ``ATTACH PARTITION`` (on the parent) and ``SET`` of fillfactor,
  toast, autovacuum and parallel_workers storage parameters SHARE UPDATE EXCLUSIVE; ``ENABLE/DISABLE TRIGGER``
  SHARE ROW EXCLUSIVE;
- "Explicit Locking", table-level lock modes (https://www.postgresql.org/docs/current/explicit-locking.html):
  CREATE INDEX SHARE, CREATE INDEX CONCURRENTLY / REINDEX CONCURRENTLY SHARE UPDATE EXCLUSIVE, CREATE TRIGGER
  SHARE ROW EXCLUSIVE, DROP TABLE / TRUNCATE / most ALTER INDEX and ALTER TABLE forms / VACUUM FULL / CLUSTER /
  REFRESH MATERIALIZED VIEW ACCESS EXCLUSIVE, INSERT/UPDATE/DELETE ROW EXCLUSIVE; "CREATE TABLE": a
  ``REFERENCES`` clause takes SHARE ROW EXCLUSIVE on the referenced table (as ADD FOREIGN KEY does);
- not visible in a statement: dropping a foreign-key constraint also takes ACCESS EXCLUSIVE on the referenced
  table (PostgreSQL 18, observed in ``pg_locks``): reported when the caller passes the real database's foreign keys
  (``foreign_keys``: ``{(table, constraint): referenced table}``, from the precheck's catalog snapshot);
  ``DROP INDEX`` locks the index's table (reported by index name).

A lock is *strong* when it conflicts with ROW EXCLUSIVE, the lock every application INSERT/UPDATE/DELETE takes:
SHARE, SHARE ROW EXCLUSIVE, EXCLUSIVE, ACCESS EXCLUSIVE. Tables created by the pending revisions are listed but
never count towards a risk (the application cannot be using them yet).

Rules (each finding names the revision, the transaction's tables and what to do):

- ``lock-multiple-tables``: one transaction takes strong locks on more than one existing table, and a statement
  requests one that may wait (:func:`may_wait`, from the documented conflict table) while an earlier statement's
  strong lock on another table is held. Holding one while waiting for the next is a deadlock with any application
  transaction that holds the second and then needs the first (an INSERT's foreign-key check on a parent table is
  enough). A single statement that must lock two tables (a foreign key) in a transaction of its own is not flagged
  (it is reported in the revision's tables); give it a ``lock_timeout`` below ``deadlock_timeout``.
- ``lock-foreign-key-referenced-held``: a foreign key is added while the same transaction already holds a lock on
  the referenced table from an earlier statement and its lock on the referencing table may still wait: the
  application's foreign-key checks on that table now wait for the migration while the migration waits for the
  referencing table.

Result (``data.lint.locks``)::

    {"available": bool, "note": str|null,
     "revisions": [{"revision", "tables": [{"table", "lock", "created": bool}]}],
     "findings": [{"rule", "revision", "transaction": int, "tables": [str], "message"}]}

:func:`merge_into` adds the findings to the squawk result (``findings`` as ``{rule, count, message}``, ``total``,
``blocking``: a deadlock risk is blocking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemagate.contract.sqlkind import Statement
from schemagate.contract.stepresult import LintFinding, LintResult, LockFinding, LockReport

# PostgreSQL's table-level lock modes, weakest first ("Explicit Locking", table 13.2)
MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
         "EXCLUSIVE", "ACCESS EXCLUSIVE")
ACCESS_SHARE, ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, \
    ACCESS_EXCLUSIVE = MODES
STRONG = frozenset({SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE})

# which modes each mode conflicts with ("Explicit Locking", table 13.2 "Conflicting Lock Modes")
CONFLICTS: dict[str, frozenset[str]] = {
    ACCESS_SHARE: frozenset({ACCESS_EXCLUSIVE}),
    ROW_SHARE: frozenset({EXCLUSIVE, ACCESS_EXCLUSIVE}),
    ROW_EXCLUSIVE: frozenset({SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE}),
    SHARE_UPDATE_EXCLUSIVE: frozenset({SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                                       ACCESS_EXCLUSIVE}),
    SHARE: frozenset({ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE}),
    SHARE_ROW_EXCLUSIVE: frozenset({ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                                    ACCESS_EXCLUSIVE}),
    EXCLUSIVE: frozenset({ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                          ACCESS_EXCLUSIVE}),
    ACCESS_EXCLUSIVE: frozenset(MODES),
}

RULE_MULTIPLE = "lock-multiple-tables"
RULE_FK_HELD = "lock-foreign-key-referenced-held"
RULES = (RULE_MULTIPLE, RULE_FK_HELD)

# ALTER TABLE sub-commands documented with a lock weaker than ACCESS EXCLUSIVE
_SUE_SUBCOMMANDS = frozenset({"AT_SetStatistics", "AT_SetOptions", "AT_ResetOptions", "AT_ValidateConstraint",
                              "AT_ClusterOn", "AT_DropCluster", "AT_AttachPartition"})
_SRE_SUBCOMMANDS = frozenset({"AT_EnableTrig", "AT_EnableAlwaysTrig", "AT_EnableReplicaTrig", "AT_DisableTrig",
                              "AT_EnableTrigAll", "AT_DisableTrigAll", "AT_EnableTrigUser", "AT_DisableTrigUser"})
# storage parameters whose SET/RESET takes SHARE UPDATE EXCLUSIVE ("ALTER TABLE", SET ( storage_parameter ))
_SUE_RELOPTIONS = ("fillfactor", "toast_tuple_target", "autovacuum_", "toast.", "parallel_workers",
                   "vacuum_index_cleanup", "vacuum_truncate", "log_autovacuum_min_duration")
# LOCK TABLE's lockmode numbers (src/include/storage/lockdefs.h)
_LOCKDEFS = {i + 1: m for i, m in enumerate(MODES)}


@dataclass(frozen=True)
class Lock:
    """One table-level lock a statement takes: ``table`` (``schema.name`` when qualified), ``mode`` (one of
    :data:`MODES`), ``references`` (the table whose key a foreign key added here references, else None),
    ``creates`` (the statement creates this table)."""

    table: str
    mode: str
    references: str | None = None
    creates: bool = False

    @property
    def strong(self) -> bool:
        return self.mode in STRONG


class UnparsableStatement(ValueError):
    """The statement is not valid PostgreSQL for pglast's parser (the message names the parser's error)."""


def may_wait(requested: str, held: str | None) -> bool:
    """Whether a request for ``requested`` on a table can wait for another session when this transaction already
    holds ``held`` there (None: nothing): a transaction never waits for its own locks, so it waits only if some
    mode other sessions may still hold (one compatible with ``held``) conflicts with ``requested``."""
    others = [m for m in MODES if held is None or m not in CONFLICTS[held]]
    return any(m in CONFLICTS[requested] for m in others)


def _stronger(a: str, b: str) -> str:
    return a if MODES.index(a) >= MODES.index(b) else b


def _name(rv: Any) -> str:
    return f"{rv.schemaname}.{rv.relname}" if getattr(rv, "schemaname", None) else str(rv.relname)


def _enum_name(v: Any) -> str:
    return str(getattr(v, "name", v))


def _foreign_keys(constraints: Iterable[Any] | None) -> list[str]:
    out = []
    for c in constraints or ():
        if _enum_name(getattr(c, "contype", "")) == "CONSTR_FOREIGN" and getattr(c, "pktable", None) is not None:
            out.append(_name(c.pktable))
    return out


def _reloption_mode(cmd: Any) -> str:
    names = []
    for d in getattr(cmd, "def_", None) or ():
        ns = getattr(d, "defnamespace", None)
        names.append((f"{ns}." if ns else "") + str(getattr(d, "defname", "")))
    ok = names and all(any(n.startswith(p) for p in _SUE_RELOPTIONS) for n in names)
    return SHARE_UPDATE_EXCLUSIVE if ok else ACCESS_EXCLUSIVE


ForeignKeys = Mapping[tuple[str, str], str]


def _alter_table(stmt: Any, foreign_keys: ForeignKeys) -> list[Lock]:
    table = _name(stmt.relation)
    if _enum_name(getattr(stmt, "objtype", "")) not in ("OBJECT_TABLE", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
        # ALTER INDEX / SEQUENCE / VIEW: report the object with the statement's lock
        return [Lock(table, ACCESS_EXCLUSIVE)]
    mode = ACCESS_SHARE
    extra: list[Lock] = []
    for cmd in stmt.cmds or ():
        sub = _enum_name(cmd.subtype)
        if sub in _SUE_SUBCOMMANDS:
            m = SHARE_UPDATE_EXCLUSIVE
        elif sub in _SRE_SUBCOMMANDS:
            m = SHARE_ROW_EXCLUSIVE
        elif sub in ("AT_SetRelOptions", "AT_ResetRelOptions"):
            m = _reloption_mode(cmd)
        elif sub == "AT_DetachPartition" and getattr(getattr(cmd, "def_", None), "concurrent", False):
            m = SHARE_UPDATE_EXCLUSIVE
        elif sub == "AT_AddConstraint" and _foreign_keys([cmd.def_]):
            m = SHARE_ROW_EXCLUSIVE
            extra += [Lock(r, SHARE_ROW_EXCLUSIVE) for r in _foreign_keys([cmd.def_])]
            extra.append(Lock(table, SHARE_ROW_EXCLUSIVE, references=_foreign_keys([cmd.def_])[0]))
        else:
            m = ACCESS_EXCLUSIVE
            referenced = foreign_keys.get((table, str(getattr(cmd, "name", "") or "")))
            if sub == "AT_DropConstraint" and referenced and referenced != table:
                extra.append(Lock(referenced, ACCESS_EXCLUSIVE))
            if sub == "AT_AddColumn":
                refs = _foreign_keys(getattr(cmd.def_, "constraints", None))
                extra += [Lock(r, SHARE_ROW_EXCLUSIVE) for r in refs]
                extra += [Lock(table, ACCESS_EXCLUSIVE, references=r) for r in refs]
        mode = _stronger(mode, m)
    return [Lock(table, mode), *extra]


def statement_locks(sql: str, foreign_keys: ForeignKeys | None = None) -> list[Lock]:
    """The table-level locks of every statement in ``sql`` (see the module docstring for the sources);
    ``foreign_keys`` maps ``(table, constraint)`` of the existing foreign keys to their referenced table.

    Raises :class:`UnparsableStatement` when pglast cannot parse ``sql``; a statement that locks no table (SET,
    SELECT of the catalog, CREATE FUNCTION ...) yields no lock."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        parsed = parse_sql(sql)
    except ParseError as e:
        raise UnparsableStatement(f"pglast could not parse the statement: {e}") from e
    out: list[Lock] = []
    for raw in parsed:
        s: Any = raw.stmt
        kind = type(s).__name__
        if kind == "AlterTableStmt":
            out += _alter_table(s, foreign_keys or {})
        elif kind == "CreateStmt":
            table = _name(s.relation)
            refs = _foreign_keys(getattr(s, "constraints", None))
            for elt in getattr(s, "tableElts", None) or ():
                refs += _foreign_keys(getattr(elt, "constraints", None))
            out.append(Lock(table, ACCESS_EXCLUSIVE, creates=True))
            out += [Lock(r, SHARE_ROW_EXCLUSIVE) for r in refs]
            out += [Lock(table, ACCESS_EXCLUSIVE, references=r) for r in refs]
        elif kind == "IndexStmt":
            out.append(Lock(_name(s.relation), SHARE_UPDATE_EXCLUSIVE if s.concurrent else SHARE))
        elif kind == "ReindexStmt" and getattr(s, "relation", None) is not None:
            concurrent = any(getattr(p, "defname", "") == "concurrently" for p in (s.params or ()))
            out.append(Lock(_name(s.relation), SHARE_UPDATE_EXCLUSIVE if concurrent else SHARE))
        elif kind == "DropStmt":
            what = _enum_name(s.removeType)
            if what in ("OBJECT_TABLE", "OBJECT_INDEX", "OBJECT_MATVIEW", "OBJECT_VIEW"):
                mode = SHARE_UPDATE_EXCLUSIVE if s.concurrent else ACCESS_EXCLUSIVE
                for obj in s.objects or ():
                    parts = [str(getattr(p, "sval", p)) for p in (obj if isinstance(obj, tuple) else (obj,))]
                    name = ".".join(parts)
                    out.append(Lock(name if what != "OBJECT_INDEX" else f"{name} (index)", mode))
        elif kind == "RenameStmt" and getattr(s, "relation", None) is not None:
            index = _enum_name(s.renameType) == "OBJECT_INDEX"
            out.append(Lock(_name(s.relation), SHARE_UPDATE_EXCLUSIVE if index else ACCESS_EXCLUSIVE))
        elif kind == "TruncateStmt":
            out += [Lock(_name(r), ACCESS_EXCLUSIVE) for r in s.relations or ()]
        elif kind == "LockStmt":
            out += [Lock(_name(r), _LOCKDEFS.get(int(s.mode), ACCESS_EXCLUSIVE)) for r in s.relations or ()]
        elif kind == "CreateTrigStmt":
            out.append(Lock(_name(s.relation), SHARE_ROW_EXCLUSIVE))
        elif kind == "ClusterStmt" and getattr(s, "relation", None) is not None:
            out.append(Lock(_name(s.relation), ACCESS_EXCLUSIVE))
        elif kind == "RefreshMatViewStmt":
            out.append(Lock(_name(s.relation), EXCLUSIVE if s.concurrent else ACCESS_EXCLUSIVE))
        elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            out.append(Lock(_name(s.relation), ROW_EXCLUSIVE))
    return out


def _transactions(statements: Sequence[Statement]) -> list[list[Statement]]:
    """Statements grouped by database transaction, in order (see the module docstring)."""
    groups: list[list[Statement]] = []
    keys: dict[tuple[str, int | str | None], int] = {}
    for s in statements:
        if s.get("kind") not in ("ddl", "dml"):
            continue
        sql = str(s.get("sql") or "")
        if s.get("autocommit") or ("tx" not in s and "CONCURRENTLY" in sql.upper()):
            groups.append([s])
            continue
        key = ("tx", s["tx"]) if "tx" in s else ("rev", s.get("revision"))
        if key not in keys or (key[0] == "rev" and groups[keys[key]] is not groups[-1]):
            keys[key] = len(groups)
            groups.append([])
        groups[keys[key]].append(s)
    return groups


def lint_locks(statements: Sequence[Statement] | None, foreign_keys: ForeignKeys | None = None) -> LockReport:
    """The lock report of the captured statements (the result shape is in the module docstring); ``foreign_keys``
    as for :func:`statement_locks`. Never raises: a missing pglast or an unparsable statement is reported in
    ``note``."""
    if statements is None:
        return {"available": False, "note": "no statements were captured in the shadow run: locks not analysed",
                "revisions": [], "findings": []}
    try:
        import pglast  # noqa: F401
    except ImportError:
        return {"available": False, "note": "pglast is not installed (pip install pglast): locks not analysed",
                "revisions": [], "findings": []}
    analysed, unparsed = _analyse(statements, foreign_keys)
    locks_of = {id(s): ls for s, ls in analysed}
    created = {lk.table for _, ls in analysed for lk in ls if lk.creates}
    findings: list[LockFinding] = []
    for n, tx in enumerate(_transactions([s for s, _ in analysed]), start=1):
        findings += _transaction_findings(n, [(s, locks_of[id(s)]) for s in tx], created)
    note = None
    if unparsed:
        note = f"{len(unparsed)} statement(s) not analysed: " + "; ".join(unparsed[:3])
    return {
        "available": True, "note": note,
        "revisions": [{"revision": r, "tables": [{"table": t, "lock": m, "created": t in created}
                                                 for t, m in sorted(tables.items())]}
                      for r, tables in _strong_locks_by_revision(analysed).items()],
        "findings": findings,
    }


_Analysed = list[tuple[Statement, list[Lock]]]


def _analyse(statements: Sequence[Statement], foreign_keys: ForeignKeys | None) -> tuple[_Analysed, list[str]]:
    """(each DDL/DML statement with its locks, a line per statement pglast could not parse: it gets no locks)."""
    unparsed: list[str] = []
    analysed: _Analysed = []
    for s in statements:
        if s.get("kind") not in ("ddl", "dml"):
            continue
        try:
            analysed.append((s, statement_locks(str(s.get("sql") or ""), foreign_keys)))
        except UnparsableStatement as e:
            unparsed.append(f"revision {s.get('revision') or '?'}: {e}")
            analysed.append((s, []))
    return analysed, unparsed


def _strong_locks_by_revision(analysed: _Analysed) -> dict[str, dict[str, str]]:
    """``{revision: {table: strongest strong lock mode}}``, revisions in order of first statement."""
    revisions: dict[str, dict[str, str]] = {}
    for s, ls in analysed:
        tables = revisions.setdefault(str(s.get("revision") or "?"), {})
        for lk in ls:
            if lk.strong:
                tables[lk.table] = _stronger(tables.get(lk.table, lk.mode), lk.mode)
    return revisions


def _transaction_findings(n: int, tx: _Analysed, created: set[str]) -> list[LockFinding]:
    """The findings of transaction number ``n`` (its statements with their locks, in order; ``created``: tables
    the pending revisions create, which never count): ``lock-foreign-key-referenced-held`` per foreign key, then
    at most one ``lock-multiple-tables`` (rules in the module docstring)."""
    rev = str(tx[0][0].get("revision") or "?")
    findings: list[LockFinding] = []
    held: dict[str, str] = {}  # table -> strongest lock held from earlier statements
    strong_held: set[str] = set()  # existing tables locked strongly by earlier statements
    risky = False  # a strong lock that may wait, requested while another table's strong lock is held
    strong_tables: set[str] = set()
    for _s, ls in tx:
        for lk in ls:
            if lk.references and lk.references in held and lk.references != lk.table \
                    and lk.table not in created and may_wait(lk.mode, held.get(lk.table)):
                findings.append({
                    "rule": RULE_FK_HELD, "revision": rev, "transaction": n,
                    "tables": [lk.table, lk.references],
                    "message": (f"revision {rev} adds a foreign key on {lk.table} referencing {lk.references} "
                                f"while its transaction already holds {held[lk.references]} on "
                                f"{lk.references}: application foreign-key checks on {lk.references} wait "
                                f"for the migration while it waits for {lk.table} (deadlock risk); add the "
                                f"foreign key in its own transaction"),
                })
            if lk.strong and lk.table not in created:
                strong_tables.add(lk.table)
                if strong_held - {lk.table} and may_wait(lk.mode, held.get(lk.table)):
                    risky = True
        for lk in ls:
            held[lk.table] = _stronger(held.get(lk.table, lk.mode), lk.mode)
            if lk.strong and lk.table not in created:
                strong_held.add(lk.table)
    if risky:
        names = sorted(strong_tables)
        findings.append({
            "rule": RULE_MULTIPLE, "revision": rev, "transaction": n, "tables": names,
            "message": (f"revision {rev} holds strong locks on {len(names)} tables in one transaction "
                        f"({', '.join(names)}): holding one while waiting for the next deadlocks with "
                        f"application transactions that touch them in another order; take at most one "
                        f"table's strong lock per transaction (e.g. autocommit_block, one ALTER TABLE each)"),
        })
    return findings


def foreign_keys_of(constraints: Iterable[Any]) -> dict[tuple[str, str], str]:
    """``{(table, constraint): referenced table}`` of the foreign keys in a catalog snapshot's constraints
    (objects with ``schema, relname, name, contype, ref_schema, ref_relname``), keyed and valued both by bare
    name and, outside ``public``, by ``schema.name`` (the forms a statement may use)."""
    out: dict[tuple[str, str], str] = {}
    for c in constraints:
        if getattr(c, "contype", None) != "f" or not getattr(c, "ref_relname", None):
            continue
        ref = c.ref_relname if c.ref_schema in (None, "public") else f"{c.ref_schema}.{c.ref_relname}"
        out[(c.relname, c.name)] = ref
        out[(f"{c.schema}.{c.relname}", c.name)] = ref
    return out


def merge_into(lint_result: LintResult, locks: LockReport) -> LintResult:
    """Add the lock report to the squawk result (``lint_result["locks"]``) and its findings to ``findings``
    (grouped by rule, ``{rule, count, message}``), ``total`` and ``blocking``; returns ``lint_result``."""
    lint_result["locks"] = locks.copy()
    groups: dict[str, LintFinding] = {}
    for f in locks.get("findings") or ():
        g = groups.setdefault(f["rule"], {"rule": f["rule"], "count": 0, "message": f["message"]})
        g["count"] += 1
    if groups:
        lint_result["findings"] = list(groups.values()) + list(lint_result.get("findings") or [])
        n = sum(g["count"] for g in groups.values())
        lint_result["total"] = int(lint_result.get("total") or 0) + n
        lint_result["blocking"] = int(lint_result.get("blocking") or 0) + n
    return lint_result
