"""Count the rows that would violate a set of constraints, with PostgreSQL's own semantics.

Semantics (what PostgreSQL checks when it adds or validates the constraint):

- CHECK (expr): a row violates only where ``expr IS FALSE``; NULL passes.
- NOT NULL col: a row violates where ``col IS NULL``.
- UNIQUE (k1, .., kn) [WHERE pred]: the violating rows are the rows in groups of equal keys with more than one
  row. A row with a NULL in any key takes part in no group (NULLs are distinct) unless the index is
  ``NULLS NOT DISTINCT``.
- FOREIGN KEY (c1, .., cn) REFERENCES p (k1, .., kn): MATCH SIMPLE checks a row only when *every* key column
  is non-NULL; MATCH FULL additionally rejects a partly NULL key. This is ``RI_Initial_Check``
  (``src/backend/utils/adt/ri_triggers.c``), the anti-join PostgreSQL itself runs on VALIDATE.

Efficiency (see the notes on efficient counting): the CHECK, NOT NULL and foreign-key predicates of one table are
counted in **one scan** of that table::

    SELECT count(*) FILTER (WHERE NOT (amount > 0)) AS c1,
           count(*) FILTER (WHERE t."note" IS NULL) AS c2,
           count(*) FILTER (WHERE (t."order_id" IS NOT NULL AND f3."k1" IS NULL)) AS c3
    FROM "public"."ledger" AS t
    LEFT JOIN (SELECT "id" AS "k1" FROM "public"."orders") AS f3 ON t."order_id" = f3."k1"
    WHERE NOT (amount > 0) OR t."note" IS NULL OR (t."order_id" IS NOT NULL AND f3."k1" IS NULL)

The ``WHERE`` is the disjunction of the ``FILTER`` predicates: a row that violates nothing is dropped by the scan
(or the join) itself and never reaches the aggregate, so the per-row cost is one evaluation of each predicate
instead of one aggregate transition per check; the few violating rows are counted per check by their ``FILTER``
clauses (each predicate is still evaluated on every row at least once, so an expression that raises still raises).
In a ``WHERE``/``FILTER`` a row counts only when the predicate is TRUE, so ``NOT (expr)`` counts exactly the rows
where ``expr IS FALSE`` (NOT NULL is NULL: a NULL check passes) and lets the planner fold the negation into the
operator (``NOT (amount > 0)`` becomes ``amount <= 0``), which is cheaper than a separate ``IS FALSE`` test.

A foreign key joins the parent (one hash build or index probes) as the left anti-join ``RI_Initial_Check``
uses; it is folded into the table's scan only when the *current* parent has a unique index on the referenced
columns (the join then cannot multiply rows). Otherwise it is counted on its own with ``NOT EXISTS``.
UNIQUE is counted with ``GROUP BY .. HAVING count(*) > 1``.

Costs (PostgreSQL 18, warm cache, 1M child rows, 100k parent rows, one core; ``bench/precheck.py``): a bare
``count(*)`` does not deform tuples (~35 ms per table); deforming the checked columns costs ~10 ms, three int
checks ~15 ms, a numeric check ~15 ms, and the foreign key's hash probe ~120 ms (one probe per non-NULL key into
a hash table that does not fit the CPU caches). The probe is the price of an exact anti-join; ``RI_Initial_Check``
pays it too. With 2M wide rows (text columns before the checked ones) deforming alone doubles the scan (~220 ms vs
~115 ms for ``count(*)``) and the probe costs ~300 ms for 200k parents. JIT brought no measurable gain (simple
expressions; the work is deforming and probing), so the counting session turns it off by default and saves the
compile time on large tables.

Everything runs in one ``REPEATABLE READ, READ ONLY`` transaction (one snapshot for all tables) with the
session's ``statement_timeout`` set; user checks (name + SQL returning one number) run in the same transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemagate.analysis.checkkey import check_key
from schemagate.libpq import Connection, Cursor, one_row

KINDS = ("check", "notnull", "unique", "foreignkey", "exclusion", "type", "partition-bound", "domain-check",
         "domain-notnull", "generated", "user")
# kinds counted as "rows where the predicate is TRUE" in the table's single scan
PREDICATE_KINDS = ("check", "partition-bound", "domain-check")
# How a count was produced (``Check.evaluated_by``):
EVALUATED_BY = {
    "real-database": "counted on the real database (read-only, one snapshot), before any pending revision runs",
    "data-shadow": "counted in the data-carrying shadow right before the statement that validates the rows, "
                   "after the revisions' earlier statements (data changes included) ran there",
    "postgresql": "the statement ran in the data-carrying shadow and PostgreSQL accepted the rows",
    "already-enforced": "the real database already enforces the same rule (same key or definition), so no row "
                        "can violate it",
    "cannot-fail": "the type conversion accepts every value",
    "no-rows": "the table is created by the pending revisions and holds no rows when the statement runs",
    "not-evaluated": "not counted: see the note (blocks unless accepted by name)",
}


def quote_ident(name: str) -> str:
    """Quote an identifier the way PostgreSQL's ``quote_ident`` does, but always (safe and simple)."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("literal contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Check:
    """One thing to count. Build with the ``check_``/``notnull``/``unique``/``foreign_key``/``user`` helpers.

    ``count`` is filled by :func:`run_counts`: an int, or None when the check was skipped (``skipped``) or could
    not be evaluated (``error``).
    """

    name: str
    kind: str
    table: str | None = None  # display form "schema.table"
    schema: str | None = None
    relname: str | None = None
    definition: str = ""
    expr: str | None = None  # CHECK: the boolean expression, as pg_get_expr prints it
    columns: tuple[str, ...] = ()  # NOT NULL: (col,); FK: referencing columns (names)
    keys: tuple[str, ...] = ()  # UNIQUE: key columns/expressions as SQL text (already quoted)
    predicate: str | None = None  # UNIQUE partial index predicate
    nulls_not_distinct: bool = False
    ref_schema: str | None = None
    ref_relname: str | None = None
    ref_columns: tuple[str, ...] = ()
    match_full: bool = False
    ref_is_new: bool = False  # the referenced table does not exist yet: it is empty when the FK is added
    ref_unique: bool = False  # the current parent has a unique index on ref_columns: the FK may join the scan
    only: bool = False  # count FROM ONLY (inheritance parent whose constraint does not cover the children)
    sql: str | None = None  # user check: SQL returning one number
    revision: str | None = None
    note: str | None = None
    skipped: bool = False
    count: int | None = None
    error: str | None = None
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    column: str | None = None  # the column a NOT NULL / type change / domain check is about (display)
    from_sql: str | None = None  # FROM target overriding the table (a projection of its rows, see derive.bind)
    ref_from_sql: str | None = None  # foreign key: the same for the referenced table
    evaluated_by: str | None = None  # EVALUATED_BY: the route that produced ``count``
    unevaluated: str | None = None  # why this check cannot be counted (blocks unless accepted by name)
    statement: str | None = None  # the SQL statement of the pending revision that validates the rows

    def as_dict(self) -> dict[str, Any]:
        """The precheck result's check entry (docs/architecture.md): schema, table and column are separate
        fields (``table`` is the table name alone)."""
        out: dict[str, Any] = {
            "name": self.name,
            "schema": self.schema,
            "table": self.relname if self.kind != "user" else self.table,
            "column": self.column,
            "kind": self.kind,
            "definition": self.definition,
            "count": self.count,
            "revision": self.revision,
            "evaluatedBy": self.evaluated_by,
            "note": self.note,
            "key": self.key,
            "presentAtTarget": self.extra.get("present_at_target", True),
        }
        # keep results small (the Kubernetes termination message is 4 KiB): the default goes
        if out["presentAtTarget"]:
            del out["presentAtTarget"]
        return out

    @property
    def key(self) -> str:
        """The key users and case corpora see (``schemagate.analysis.checkkey.check_key``)."""
        if self.kind == "domain-notnull":
            return check_key(self.kind, self.extra.get("domain_name") or self.name,
                             schema=self.extra.get("domain_schema"))
        return check_key(self.kind, self.name, schema=self.schema, table=self.relname,
                         column=self.column or (self.columns[0] if len(self.columns) == 1 else None),
                         type_text=self.extra.get("type"))

    @property
    def source(self) -> str:
        """``FROM`` target for this check's table (callers add the alias ``t``)."""
        if self.from_sql:
            return self.from_sql
        assert self.relname is not None
        return ("ONLY " if self.only else "") + qualified(self.schema, self.relname)


# --- constructors -------------------------------------------------------------------------------------------


def _display(schema: str | None, relname: str) -> str:
    return f"{schema}.{relname}" if schema else relname


def check_(name: str, schema: str | None, relname: str, expr: str, **kw: Any) -> Check:
    kw.setdefault("definition", f"CHECK ({expr})")
    return Check(name=name, kind="check", table=_display(schema, relname), schema=schema, relname=relname,
                 expr=expr, **kw)


def notnull(name: str, schema: str | None, relname: str, column: str, **kw: Any) -> Check:
    kw.setdefault("definition", f"{quote_ident(column)} NOT NULL")
    return Check(name=name, kind="notnull", table=_display(schema, relname), schema=schema, relname=relname,
                 columns=(column,), **kw)


def unique(name: str, schema: str | None, relname: str, keys: Sequence[str], *, predicate: str | None = None,
           nulls_not_distinct: bool = False, **kw: Any) -> Check:
    """``keys`` are SQL texts (quoted column names or expressions, as ``pg_get_indexdef(oid, k, true)`` prints)."""
    kw.setdefault("definition", "UNIQUE " + ("NULLS NOT DISTINCT " if nulls_not_distinct else "")
                  + "(" + ", ".join(keys) + ")" + (f" WHERE {predicate}" if predicate else ""))
    return Check(name=name, kind="unique", table=_display(schema, relname), schema=schema, relname=relname,
                 keys=tuple(keys), predicate=predicate, nulls_not_distinct=nulls_not_distinct, **kw)


def foreign_key(name: str, schema: str | None, relname: str, columns: Sequence[str], ref_schema: str | None,
                ref_relname: str, ref_columns: Sequence[str], *, match_full: bool = False, **kw: Any) -> Check:
    if len(columns) != len(ref_columns) or not columns:
        raise ValueError("a foreign key needs as many referencing as referenced columns")
    kw.setdefault("definition", "FOREIGN KEY (" + ", ".join(map(quote_ident, columns)) + ") REFERENCES "
                  + qualified(ref_schema, ref_relname) + "(" + ", ".join(map(quote_ident, ref_columns)) + ")"
                  + (" MATCH FULL" if match_full else ""))
    return Check(name=name, kind="foreignkey", table=_display(schema, relname), schema=schema, relname=relname,
                 columns=tuple(columns), ref_schema=ref_schema, ref_relname=ref_relname,
                 ref_columns=tuple(ref_columns), match_full=match_full, **kw)


def user(name: str, sql: str, *, table: str | None = None, definition: str | None = None) -> Check:
    """A user-defined check: ``sql`` must return one row with one number (the violation count)."""
    if not name or not sql or not sql.strip():
        raise ValueError("a user check needs a name and SQL")
    return Check(name=name, kind="user", table=table, sql=sql.strip().rstrip(";"),
                 definition=definition or sql.strip())


# --- SQL generation (pure) ----------------------------------------------------------------------------------


def _fk_key_nulls(alias: str, cols: Sequence[str]) -> tuple[str, str]:
    """(all key columns non-NULL, MATCH FULL partial-NULL) predicates on ``alias``."""
    refs = [f"{alias}.{quote_ident(c)}" for c in cols]
    all_set = " AND ".join(f"{r} IS NOT NULL" for r in refs)
    partial = f"num_nulls({', '.join(refs)}) BETWEEN 1 AND {len(refs) - 1}" if len(refs) > 1 else "false"
    return all_set, partial


def scan_predicate(check: Check, fk_alias: str | None = None) -> str:
    """The FILTER predicate of a check counted in its table's scan (table alias ``t``)."""
    if check.kind in PREDICATE_KINDS:
        # counted where TRUE: NOT (expr) is TRUE exactly where expr IS FALSE (NULL stays NULL: passes)
        return f"NOT ({check.expr})"
    if check.kind == "type":  # expr is the violation predicate itself
        return f"({check.expr})"
    if check.kind == "generated":  # never TRUE, but computes the new column's value for every row (errors raise)
        return f"num_nulls(t.{quote_ident(check.columns[0])}) < 0"
    if check.kind in ("notnull", "domain-notnull"):
        return f"t.{quote_ident(check.columns[0])} IS NULL"
    if check.kind == "foreignkey":
        all_set, partial = _fk_key_nulls("t", check.columns)
        if check.ref_is_new:
            missing = f"({all_set})"
        else:
            assert fk_alias is not None
            missing = f"({all_set} AND {fk_alias}.\"k1\" IS NULL)"
        return f"({partial}) OR {missing}" if check.match_full else missing
    raise ValueError(f"{check.kind} checks are not counted in a table scan")


def foldable(check: Check) -> bool:
    """Can this check be counted inside its table's single scan?"""
    if check.kind in (*PREDICATE_KINDS, "type", "generated", "notnull", "domain-notnull"):
        return True
    return check.kind == "foreignkey" and (check.ref_is_new or check.ref_unique)


def fk_join(check: Check, alias: str) -> str:
    """``LEFT JOIN`` of the referenced key, aliased so its columns cannot clash with the table's."""
    cols = ", ".join(f"{quote_ident(c)} AS \"k{i}\"" for i, c in enumerate(check.ref_columns, 1))
    on = " AND ".join(f"t.{quote_ident(c)} = {alias}.\"k{i}\"" for i, c in enumerate(check.columns, 1))
    return f"LEFT JOIN (SELECT {cols} FROM {_ref_source(check)} AS p) AS {alias} ON {on}"  # noqa: S608


def _ref_source(check: Check) -> str:
    if check.ref_from_sql:
        return check.ref_from_sql
    only = "ONLY " if check.extra.get("ref_only") else ""
    return only + qualified(check.ref_schema, check.ref_relname or "")


def table_scan_sql(checks: Sequence[Check]) -> str:
    """One query counting every foldable check of one table (all must share ``source``).

    Returns one column per check (``c1`` ..): ``count(*) FILTER (WHERE pred)``; the ``WHERE`` (the OR of the
    predicates) keeps the rows that violate nothing away from the aggregate.
    """
    if not checks:
        raise ValueError("no checks")
    source = checks[0].source
    if any(c.source != source for c in checks):
        raise ValueError("checks of different tables in one scan")
    cols, preds, joins = [], [], []
    for i, c in enumerate(checks, 1):
        alias = None
        if c.kind == "foreignkey" and not c.ref_is_new:
            alias = f"f{i}"
            joins.append(fk_join(c, alias))
        pred = scan_predicate(c, alias)
        preds.append(f"({pred})")
        cols.append(f"count(*) FILTER (WHERE {pred}) AS c{i}")
    return ("SELECT " + ",\n       ".join(cols) + f"\nFROM {source} AS t" + "".join("\n" + j for j in joins)
            + "\nWHERE " + "\n   OR ".join(preds))


def fk_not_exists_sql(check: Check) -> str:
    """A foreign key counted on its own: the ``NOT EXISTS`` anti-join (``RI_Initial_Check``)."""
    all_set, partial = _fk_key_nulls("t", check.columns)
    if check.ref_is_new:
        missing = f"({all_set})"
    else:
        eq = " AND ".join(f"p.{quote_ident(r)} = t.{quote_ident(c)}" for c, r in zip(check.columns,
                                                                                     check.ref_columns, strict=True))
        parent = _ref_source(check)
        missing = f"({all_set} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {eq}))"  # noqa: S608
    where = f"({partial}) OR {missing}" if check.match_full else missing
    return f"SELECT count(*) FROM {check.source} AS t WHERE {where}"  # noqa: S608 - identifiers quoted


def unique_sql(check: Check) -> str:
    """Rows in duplicate groups, and the number of groups."""
    conds = [] if check.nulls_not_distinct else [f"({k}) IS NOT NULL" for k in check.keys]
    if check.predicate:
        conds.append(f"({check.predicate})")
    where = (" WHERE " + " AND ".join(conds)) if conds else ""
    keys = ", ".join(f"({k})" for k in check.keys)
    inner = f"SELECT count(*) AS n FROM {check.source} AS t{where} GROUP BY {keys} HAVING count(*) > 1"  # noqa: S608
    return f"SELECT coalesce(sum(n), 0)::bigint, count(*) FROM ({inner}) AS dup"  # noqa: S608


def exclusion_sql(check: Check) -> str:
    """Rows that conflict with at least one other row under an exclusion constraint (``EXCLUDE USING .. (k1 WITH
    op1, ..)`` [WHERE pred]): a row conflicts with another when every ``a.ki opi b.ki`` is TRUE (a NULL result is
    no conflict), as ``check_exclusion_or_unique_constraint`` (``src/backend/executor/execIndexing.c``) decides
    while the index is built. ``check.keys`` are the key expressions, ``check.extra["operators"]`` the operators
    (``OPERATOR(schema.op)``). The self-join is a nested loop unless one operator is hashable (cost: see docs)."""
    ops = list(check.extra.get("operators") or ())
    if not ops or len(ops) != len(check.keys):
        raise ValueError("an exclusion check needs one operator per key")
    where = f" WHERE ({check.predicate})" if check.predicate else ""
    cols = ", ".join(f"({k}) AS k{i}" for i, k in enumerate(check.keys, 1))
    conflict = " AND ".join(f"a.k{i} {op} b.k{i}" for i, op in enumerate(ops, 1))
    return (f"WITH r AS (SELECT row_number() OVER () AS sg_row, {cols} FROM {check.source} AS t{where}) "  # noqa: S608
            f"SELECT count(*) FROM r AS a WHERE EXISTS (SELECT 1 FROM r AS b WHERE b.sg_row <> a.sg_row "
            f"AND {conflict})")


@dataclass
class Query:
    sql: str
    checks: list[Check]
    kind: str  # scan | unique | foreignkey | user
    table: str | None = None


def plan_queries(checks: Iterable[Check]) -> list[Query]:
    """Group the checks into queries: one scan per (table, ONLY) for CHECK/NOT NULL/joinable FK."""
    scans: dict[str, list[Check]] = {}
    out: list[Query] = []
    for c in checks:
        if c.skipped or c.unevaluated:
            continue
        if c.kind == "user":
            assert c.sql is not None
            out.append(Query(c.sql, [c], "user", c.table))
        elif foldable(c):
            scans.setdefault(c.source, []).append(c)
        elif c.kind == "foreignkey":
            out.append(Query(fk_not_exists_sql(c), [c], "foreignkey", c.table))
        elif c.kind == "unique":
            out.append(Query(unique_sql(c), [c], "unique", c.table))
        elif c.kind == "exclusion":
            out.append(Query(exclusion_sql(c), [c], "foreignkey", c.table))
        else:
            raise ValueError(f"unknown check kind {c.kind!r}")
    scan_queries = [Query(table_scan_sql(cs), cs, "scan", cs[0].table) for cs in scans.values()]
    return scan_queries + out


# --- execution ----------------------------------------------------------------------------------------------


@dataclass
class CountOptions:
    statement_timeout: str = "1h"  # per statement; "0" disables
    lock_timeout: str = "5s"  # ACCESS SHARE waits only behind ACCESS EXCLUSIVE DDL
    work_mem: str | None = "64MB"  # hash joins/aggregates for FK and UNIQUE
    max_parallel_workers_per_gather: int | None = None  # None: the server's setting
    jit: bool | None = False  # off: no gain on these scans, compile time on large tables; None: the server's
    application_name: str = "schemagate-precheck"  # what pg_stat_activity shows (verify: schemagate-verify)
    sessions: int = 1  # sessions counting in parallel on one snapshot (run_counts' open_session opens the others)
    parallel_min_bytes: int = 64 << 20  # below this many bytes to scan, one session (a connection costs more)


def _set(cur: Cursor, name: str, value: str) -> None:
    cur.execute("SELECT set_config(%s, %s, false)", (name, value))


def configure_session(conn: Connection, opts: CountOptions) -> None:
    """Timeouts and resources for the counting session (psycopg connection, autocommit)."""
    with conn.cursor() as cur:
        _set(cur, "statement_timeout", opts.statement_timeout)
        _set(cur, "lock_timeout", opts.lock_timeout)
        _set(cur, "idle_in_transaction_session_timeout", "0")
        _set(cur, "application_name", opts.application_name)
        if opts.work_mem:
            _set(cur, "work_mem", opts.work_mem)
        if opts.max_parallel_workers_per_gather is not None:
            _set(cur, "max_parallel_workers_per_gather", str(opts.max_parallel_workers_per_gather))
        if opts.jit is not None:
            _set(cur, "jit", "on" if opts.jit else "off")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _run_one(cur: Any, q: Query) -> None:
    t0 = time.monotonic()
    if q.kind == "user" and type(cur).__module__.split(".")[0] == "psycopg":
        # psycopg 3 sends a query without parameters in the simple protocol, which runs a list of statements;
        # prepared, it goes through the extended protocol, where PostgreSQL refuses more than one statement
        cur.execute(q.sql, prepare=True)
    else:
        cur.execute(q.sql)
    row = cur.fetchone()
    elapsed = time.monotonic() - t0
    if q.kind not in ("scan", "unique") and cur.fetchone() is not None:
        raise ValueError("a user check must return exactly one row with one column")
    fill_query(q, row, elapsed)


def fill_query(q: Query, row: Sequence[Any] | None, seconds: float) -> None:
    """Set the counts of ``q``'s checks from the first row its SQL returned (``scan``: one count per check;
    ``unique``: the rows in duplicate groups and the number of groups; otherwise one number). Raises
    ``ValueError``/``TypeError`` for a row of another shape. Also used for rows counted elsewhere (the injected
    runner's data-carrying shadow run, ``analysis.stepwise.RecordedDataCounter``)."""
    elapsed = seconds
    if row is None and q.kind in ("scan", "unique"):
        raise TypeError(f"the {q.kind} query returned no row")
    if q.kind == "scan":
        assert row is not None
        for i, c in enumerate(q.checks):
            c.count = int(row[i])
            c.seconds = elapsed
    elif q.kind == "unique":
        assert row is not None
        c = q.checks[0]
        c.count, groups = int(row[0]), int(row[1])
        c.seconds = elapsed
        if groups:
            c.note = _join_note(c.note, f"{groups} duplicate group(s)")
    else:
        c = q.checks[0]
        if row is None or len(row) != 1:
            raise ValueError("a user check must return exactly one row with one column")
        try:
            c.count = int(row[0]) if row[0] is not None else 0
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a user check must return a number, got {row[0]!r}") from exc
        c.seconds = elapsed


def _join_note(a: str | None, b: str) -> str:
    return f"{a}; {b}" if a else b


def run_counts(conn: Connection, checks: Sequence[Check], opts: CountOptions | None = None, *,
               open_session: Callable[[], Connection] | None = None) -> list[Query]:
    """Count every non-skipped check on ``conn`` (a psycopg connection in autocommit mode).

    One REPEATABLE READ, READ ONLY transaction; each query runs under a savepoint so that one failing check
    (e.g. a function its expression calls does not exist yet) marks that check's ``error`` instead of losing the
    others. A failing table scan is retried check by check to find the culprit. Connection-level errors
    (server gone, statement timeout is *not* one of them) propagate.

    ``opts.sessions > 1`` with ``open_session`` (a new connection to the same database) and at least two queries:
    the queries are split over that many sessions by table size (largest first, each to the least loaded
    session), every helper session imports the first one's snapshot (``pg_export_snapshot()`` and ``SET
    TRANSACTION SNAPSHOT``, https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-SNAPSHOT-SYNCHRONIZATION),
    so all counts still see one snapshot, and the sessions scan in parallel (one core each); below
    ``opts.parallel_min_bytes`` of tables to read one session counts everything. When a helper cannot
    be opened or the snapshot cannot be exported (a standby before PostgreSQL 10), the queries it would have run
    are counted on ``conn`` as before.
    """
    opts = opts or CountOptions()
    configure_session(conn, opts)
    queries = plan_queries(checks)
    if opts.sessions > 1 and open_session is not None and len(queries) > 1:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                _count_in_sessions(conn, cur, queries, opts, open_session)
            return queries
        except _NoSnapshot:  # rolled back before anything was counted: one session counts everything
            pass
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            _count_queries(conn, cur, queries)
    return queries


class _NoSnapshot(Exception):
    """``pg_export_snapshot()`` failed (it must run outside a subtransaction; not on a standby before 10)."""


def _count_queries(conn: Connection, cur: Cursor, queries: Sequence[Query]) -> None:
    """Run ``queries`` in ``conn``'s open transaction, each under a savepoint (see :func:`run_counts`)."""
    for q in queries:
        exc = _attempt(conn, cur, q)
        if exc is None:
            continue
        if q.kind == "scan" and len(q.checks) > 1:  # find the culprit: each check of the scan on its own
            for c in q.checks:
                alone = _attempt(conn, cur, Query(table_scan_sql([c]), [c], "scan", c.table))
                if alone is not None:
                    c.error = _short(alone)
        else:
            for c in q.checks:
                c.error = _short(exc)


def _attempt(conn: Connection, cur: Cursor, q: Query) -> Exception | None:
    """Run ``q`` under a savepoint: None, or the error that marks its checks (a lost connection or a statement
    timeout propagates)."""
    import psycopg

    try:
        with conn.transaction():
            _run_one(cur, q)
    except (psycopg.errors.QueryCanceled, psycopg.OperationalError):
        raise
    except (psycopg.Error, ValueError) as exc:
        return exc
    return None


def split_queries(queries: Sequence[Query], sizes: Sequence[int], sessions: int) -> list[list[Query]]:
    """``queries`` in ``sessions`` groups of about equal work: the largest first (``sizes``: bytes each query
    scans), each to the group with the fewest bytes so far (longest-processing-time first). Group 0 is the
    exporting session's; a group stays empty when there are fewer queries than sessions."""
    groups: list[list[Query]] = [[] for _ in range(max(1, sessions))]
    load = [0] * len(groups)
    for q, size in sorted(zip(queries, sizes, strict=True), key=lambda x: -x[1]):
        i = load.index(min(load))
        groups[i].append(q)
        load[i] += size
    return groups


def _scan_bytes(cur: Cursor, q: Query) -> int:
    """What ``q`` reads, for splitting: the size of its table plus the referenced tables it joins (0 when a
    name does not resolve: a user check)."""
    names = set()
    for c in q.checks:
        if c.schema and c.relname:
            names.add(f'"{c.schema}"."{c.relname}"')
        if c.kind == "foreignkey" and c.ref_schema and c.ref_relname and not c.ref_is_new:
            names.add(f'"{c.ref_schema}"."{c.ref_relname}"')
    if not names:
        return 0
    cur.execute("SELECT coalesce(sum(pg_relation_size(to_regclass(n))), 0) FROM unnest(%s::text[]) AS n",
                (sorted(names),))
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _count_in_sessions(conn: Connection, cur: Cursor, queries: Sequence[Query], opts: CountOptions,
                       open_session: Callable[[], Connection]) -> None:
    """Count ``queries`` on ``conn`` and helper sessions on its snapshot (each in a thread). A helper that
    cannot start leaves its share to ``conn``; the helpers' errors that end a count (connection lost, statement
    timeout) are re-raised here after every helper finished."""
    import threading

    import psycopg

    try:
        cur.execute("SELECT pg_export_snapshot()")  # the transaction's first statement: its snapshot
        snapshot = str(one_row(cur)[0])
        sizes = [_scan_bytes(cur, q) for q in queries]
    except psycopg.Error as e:
        raise _NoSnapshot(str(e)) from e
    if sum(sizes) < opts.parallel_min_bytes:
        _count_queries(conn, cur, queries)
        return
    groups = split_queries(queries, sizes, opts.sessions)
    mine, threads, failures, helpers = list(groups[0]), [], [], []
    for share in groups[1:]:
        if not share:
            continue
        try:
            helper = open_session()
            helpers.append(helper)
            configure_session(helper, opts)
            helper.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            helper.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        except psycopg.Error:
            mine += share  # counted on the first session instead
            continue

        def work(h: Connection = helper, qs: list[Query] = share) -> None:
            try:
                with h.cursor() as hc:
                    _count_queries(h, hc, qs)
                h.execute("COMMIT")
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                failures.append(e)

        t = threading.Thread(target=work, name="schemagate-count", daemon=True)
        t.start()
        threads.append(t)
    try:
        _count_queries(conn, cur, mine)
    finally:
        for t in threads:
            t.join()
        for h in helpers:
            with contextlib.suppress(Exception):
                h.close()
    if failures:
        raise failures[0]


def summarize(checks: Sequence[Check]) -> dict[str, Any]:
    counted = [c for c in checks if c.count is not None]
    return {
        "total": sum(c.count or 0 for c in counted),
        "errors": [c.name for c in checks if c.error],
        "skipped": [c.name for c in checks if c.skipped],
    }


def copy_checks(checks: Iterable[Check]) -> list[Check]:
    return [dataclasses.replace(c, extra=dict(c.extra)) for c in checks]


def run_counts_cursor(cur: Any, checks: Sequence[Check], *, savepoints: bool) -> None:
    """Count ``checks`` through a DB-API cursor inside the caller's transaction (the data-carrying shadow counts
    in the migration's own transaction, which sees its earlier statements). With ``savepoints`` each query runs
    under ``SAVEPOINT`` so a failing one marks its checks' ``error`` and leaves the transaction usable; without
    (autocommit, e.g. inside Alembic's ``autocommit_block``) each query is its own transaction."""
    for q in plan_queries(checks):
        try:
            if savepoints:
                cur.execute("SAVEPOINT schemagate_count")
            _run_one(cur, q)
            if savepoints:
                cur.execute("RELEASE SAVEPOINT schemagate_count")
        except Exception as exc:  # noqa: BLE001 - any driver's error marks the checks, the run goes on
            if savepoints:
                cur.execute("ROLLBACK TO SAVEPOINT schemagate_count")
            if q.kind == "scan" and len(q.checks) > 1:
                for c in q.checks:
                    run_counts_cursor(cur, [c], savepoints=savepoints)
            else:
                for c in q.checks:
                    c.error = _short(exc)
