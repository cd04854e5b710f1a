"""Statement by statement: which rows each statement of the pending revisions makes PostgreSQL check, and the
two routes that count them.

1. **Recording** (schema-only shadow, :class:`StepRecorder`): while the pending revisions run in the shadow, an
   identity snapshot (``catalog.id_snapshot``) is taken after every statement that is not DML; what one statement
   changed becomes that statement's checks (``derive.step_checks``), tagged with its revision and SQL.
2. **Fast route** (revisions without data changes, :func:`bind_all`): every check is pointed at the real
   database as it is now (``derive.bind``: renamed tables/columns by identity, new columns projected with the
   value existing rows get) and counted there in one read-only snapshot, one scan per table.
3. **Data route** (a revision changes or reads data, :class:`DataCounter`): the same revisions run again in a
   *data-carrying* shadow that holds the rows of the affected tables (:func:`load_rows`, streamed with ``COPY``
   and bounded in size). Right before each statement that validates rows, its checks are counted there, inside
   the migration's own transaction, so they see the data after the revision's earlier statements (an UPDATE
   backfill, a function the revision created). When a count is above 0 the real migration fails at that statement:
   the checks of every later statement are counted on the data as it stands there and the run stops. A check that
   cannot be modelled is decided by PostgreSQL itself: the statement runs and either succeeds (0 rows) or fails
   (not evaluated, the migration would fail there).

The statements of the two runs are matched by position and text; if the data-carrying run executes different
statements (a data migration that branches on the rows), the checks not yet counted are reported not evaluated.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from schemagate.analysis import capture, catalog, counting, derive
from schemagate.analysis.counting import Check
from schemagate.contract.errors import PrecheckIncomplete
from schemagate.contract.sqlkind import Statement, in_transaction, normalized
from schemagate.libpq import Connection, one_row


@dataclass
class Step:
    """One recorded statement of the shadow run that is not DML."""

    index: int  # position among the recorded statements (0-based)
    revision: str | None
    sql: str
    before: catalog.IdSnapshot
    after: catalog.IdSnapshot
    checks: list[Check] = field(default_factory=list)
    ordinal: int = 0  # 1-based position among the revision's statements (DML included)

    @property
    def where(self) -> str:
        return f"revision {self.revision}, statement {self.ordinal or self.index + 1}"


def recorded_kind(sql: str) -> bool:
    """Statements around which the recorder snapshots the catalog: everything but DML and Alembic's bookkeeping
    and plain reads (``capture.classify``)."""
    return capture.classify(sql) == "ddl"


class StepRecorder:
    """Snapshots the catalog after every recorded statement of the schema-only shadow run.

    ``start`` is the snapshot before the revisions (the shadow restored from the real schema); ``steps`` the
    recorded statements with their checks; ``origins`` maps ``(relid, attnum)`` of every column the revisions add
    to its definition right after it was added (its DEFAULT/identity/generation decides the existing rows'
    value)."""

    def __init__(self, start: catalog.IdSnapshot) -> None:
        self.start = start
        self.snap = start
        self.revision: str | None = None
        self.steps: list[Step] = []
        self.origins: dict[tuple[int, int], catalog.IdAttr] = {}

    def on_revision(self, rev: str) -> None:
        self.revision = rev
        self.ordinal = 0

    ordinal = 0

    def after_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                      executemany: bool) -> None:
        if capture.classify(statement) != "other":
            self.ordinal += 1
        if executemany or not recorded_kind(statement):
            return
        dbapi = cursor.connection
        cur = dbapi.cursor()
        try:
            after = catalog.id_snapshot(cur)
        finally:
            cur.close()
        self.add(after, statement)

    def add(self, after: catalog.IdSnapshot, statement: str, revision: str | None = None,
            ordinal: int | None = None) -> Step:
        """Record one statement whose catalog afterwards is ``after`` (live from the hook, or replayed from the
        snapshots the Kubernetes shadow-upgrade container wrote)."""
        if revision is not None:
            self.revision = revision
        for key, a in after.attrs.items():
            if key not in self.snap.attrs:
                self.origins.setdefault(key, a)
        checks = derive.step_checks(self.snap, after, statement)
        for c in checks:
            c.revision = self.revision
        step = Step(len(self.steps), self.revision, statement, self.snap, after, checks,
                    self.ordinal if ordinal is None else ordinal)
        self.steps.append(step)
        self.snap = after
        return step

    @contextlib.contextmanager
    def listening(self) -> Iterator[StepRecorder]:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "after_cursor_execute", self.after_execute)
        try:
            yield self
        finally:
            event.remove(Engine, "after_cursor_execute", self.after_execute)

    @property
    def checks(self) -> list[Check]:
        return [c for s in self.steps for c in s.checks]

    def mark_present(self) -> None:
        """After the run: ``extra["present_at_target"]`` on every check (``derive.present_at`` the last
        snapshot)."""
        for c in self.checks:
            c.extra["present_at_target"] = derive.present_at(c, self.snap)


def replay(recorded: dict[str, Any]) -> StepRecorder:
    """A :class:`StepRecorder` rebuilt from what the injected runner wrote in the application's image
    (``schemagate.runner.inject.shadow``: ``{"version", "start": rows, "steps": [{"revision", "ordinal", "sql",
    "rows"}]}``, the rows of ``catalog.id_queries``)."""
    version = int(recorded["version"])
    rec = StepRecorder(catalog.id_snapshot_from_rows(version, recorded["start"]))
    for st in recorded.get("steps") or []:
        rec.add(catalog.id_snapshot_from_rows(version, st["rows"]), str(st.get("sql") or ""), st.get("revision"),
                int(st.get("ordinal") or 0))
    return rec


_ROUTINE = re.compile(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|AGGREGATE|OPERATOR|CAST)\b", re.I)


def creates_routines(statements: Iterable[Statement]) -> bool:
    """Whether the pending revisions create a function, procedure, aggregate, operator or cast: a constraint may
    call it, and the real database does not have it yet (counted in the data-carrying shadow, which does)."""
    return any(_ROUTINE.match(str(s.get("sql") or "")) for s in statements)


def save_checks(rec: StepRecorder) -> list[list[Check]]:
    """Copies of every step's checks before they are bound and counted (see :func:`restore_checks`)."""
    return [[counting.copy_checks([c])[0] for c in s.checks] for s in rec.steps]


def restore_checks(rec: StepRecorder, saved: list[list[Check]]) -> None:
    """Put the copies from :func:`save_checks` back, to count the same checks by another route."""
    for step, checks in zip(rec.steps, saved, strict=True):
        step.checks = checks


def bind_all(steps: Sequence[Step], at: catalog.IdSnapshot,
             origins: dict[tuple[int, int], catalog.IdAttr], route: str) -> list[Check]:
    """Every check of ``steps`` pointed at the database state ``at``; ``route`` goes to ``evaluated_by``."""
    out = []
    for s in steps:
        for c in s.checks:
            if route == "real-database":
                derive.already_enforced(c, at)
            derive.bind(c, at, origins)
            if c.evaluated_by is None and not c.unevaluated:
                c.evaluated_by = route
            out.append(c)
    if route == "real-database":
        derive.merge_projections(out, at)
    return out


def mark_unevaluated(checks: Iterable[Check]) -> None:
    for c in checks:
        if c.unevaluated and c.count is None:
            c.evaluated_by = "not-evaluated"


class StopCounting(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised from the data-carrying run once a statement is known to fail: nothing after it needs running."""


def bind_for_count(checks: Iterable[Check], at: catalog.IdSnapshot, origins: dict[tuple[int, int], catalog.IdAttr],
                   note: str | None) -> list[Check]:
    """The checks of ``checks`` still to count in the data-carrying shadow, pointed at the state ``at`` (the
    schema right before the statement, ``derive.bind``), marked ``data-shadow`` with ``note`` added."""
    todo = []
    for c in checks:
        if c.count is not None or c.unevaluated:
            continue
        derive.bind(c, at, origins)
        if c.skipped:
            continue
        c.evaluated_by = "data-shadow"
        if note:
            c.note = f"{c.note}; {note}" if c.note else note
        todo.append(c)
    return todo


def _stop_note(step: Step) -> str:
    return f"counted on the data as it stands before {step.where}, which fails (later statements not run)"


class DataCounter:
    """Counts each recorded statement's checks in the data-carrying shadow right before the statement runs.

    The decisions (:meth:`reach`, :meth:`passed`, :meth:`fail`) are apart from SQLAlchemy's events, so a run the
    injected runner made in the application's image is judged the same way (:class:`RecordedDataCounter`)."""

    def __init__(self, steps: Sequence[Step], origins: dict[tuple[int, int], catalog.IdAttr]) -> None:
        self.steps = list(steps)
        self.origins = origins
        self.position = 0
        self.stopped_at: Step | None = None
        self.failed: tuple[Step, str] | None = None
        self.mismatch: str | None = None
        self.current: Step | None = None

    def _count(self, cursor: Any, checks: list[Check], at: catalog.IdSnapshot, note: str | None,
               which: str) -> None:
        todo = bind_for_count(checks, at, self.origins, note)
        if todo:
            self._run(cursor, todo, which)

    def _run(self, cursor: Any, todo: list[Check], which: str) -> None:
        """Count ``todo`` on the migration's own connection (``which``: ``own`` or ``later``)."""
        dbapi = cursor.connection
        cur = dbapi.cursor()
        try:
            counting.run_counts_cursor(cur, todo, savepoints=in_transaction(dbapi))
        finally:
            cur.close()

    def reach(self, statement: str, cursor: Any) -> None:
        """The data run is about to execute ``statement`` (a recorded kind): match it with the next recorded
        step, count the step's checks; raises :class:`StopCounting` on a mismatch or when a count is above 0 (the
        statement fails: the later checks are counted on the data as it stands, nothing after it runs)."""
        if self.position >= len(self.steps) or normalized(self.steps[self.position].sql) != normalized(statement):
            self.mismatch = (f"the revisions executed a different statement on the data than on the empty schema "
                             f"(statement {self.position + 1}: {normalized(statement)[:200]})")
            raise StopCounting(self.mismatch)
        step = self.steps[self.position]
        self.position += 1
        self.current = step
        if not step.checks:
            return
        self._count(cursor, step.checks, step.before, None, "own")
        if any(c.count or c.error for c in step.checks):
            later = [c for s in self.steps[step.index + 1:] for c in s.checks]
            self._count(cursor, later, step.before, _stop_note(step), "later")
            self.stopped_at = step
            raise StopCounting(step.where)

    def passed(self) -> None:
        """The current statement ran: its checks not modelled were accepted by PostgreSQL (0 rows)."""
        if self.current is None:
            return
        for c in self.current.checks:
            if c.unevaluated and c.count is None:
                c.count, c.evaluated_by = 0, "postgresql"
                c.note = f"{c.note}; {c.unevaluated}" if c.note else c.unevaluated
                c.unevaluated = None
        self.current = None

    def fail(self, error: str) -> None:
        """The current statement failed with ``error`` (the first line of the driver's message)."""
        if self.current is not None and self.failed is None:
            self.failed = (self.current, error)

    def again(self) -> None:
        """The run is made again from the statement that failed (``runner.inject.leftovers.ShadowRetry`` dropped
        the INVALID index it failed on): that statement is reached, and counted, once more."""
        if self.failed is not None:
            self.position = self.failed[0].index
        self.failed = None
        self.current = None

    def before_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                       executemany: bool) -> None:
        if not executemany and recorded_kind(statement):
            self.reach(statement, cursor)

    def after_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                      executemany: bool) -> None:
        if not executemany and recorded_kind(statement):
            self.passed()

    def handle_error(self, context: Any) -> None:
        if not isinstance(context.original_exception, StopCounting):
            self.fail(str(context.original_exception).strip().splitlines()[0][:300])

    @contextlib.contextmanager
    def listening(self) -> Iterator[DataCounter]:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self.before_execute)
        event.listen(Engine, "after_cursor_execute", self.after_execute)
        event.listen(Engine, "handle_error", self.handle_error)
        try:
            yield self
        finally:
            event.remove(Engine, "before_cursor_execute", self.before_execute)
            event.remove(Engine, "after_cursor_execute", self.after_execute)
            event.remove(Engine, "handle_error", self.handle_error)

    def finish(self) -> list[Check]:
        """Every check after the run, with what was not reached marked not evaluated; a statement that failed
        for a reason the checks do not model becomes a check of its own (kind ``statement``, not evaluated)."""
        out: list[Check] = []
        for s in self.steps:
            for c in s.checks:
                if c.count is None and not c.skipped and not c.error and not c.unevaluated:
                    c.unevaluated = self.mismatch or "not reached in the data-carrying shadow"
                out.append(c)
        if self.failed is not None:
            step, error = self.failed
            out.append(Check(name=step.where, kind="statement",
                             definition=normalized(step.sql)[:500], revision=step.revision, statement=step.sql[:500],
                             unevaluated=f"fails on the data in the data-carrying shadow: {error}"))
        mark_unevaluated(out)
        return out


# --------------------------------------------------------------------------------------------------------------
# the data route of the Kubernetes phases: the counting queries as JSON for the injected runner, and its record


class QueryDoc(TypedDict, total=False):
    """One counting query for the injected runner (``runner.inject.datarun``): ``sql``; ``kind`` (``scan``,
    ``unique``, ``foreignkey``, ``user``: how its first row reads, ``counting.fill_query``); ``parts``: for a scan
    of several checks, one query per check, run when the scan fails (as ``counting.run_counts_cursor`` does)."""

    sql: str
    kind: str
    parts: list[QueryDoc]


class StepQueries(TypedDict):
    """The queries to run right before one recorded statement: ``own`` (its checks), ``later`` (every later
    statement's checks, run only when an own count is above 0 or fails: the statement fails there)."""

    sql: str
    own: list[QueryDoc]
    later: list[QueryDoc]


def _query_docs(checks: Sequence[Check]) -> list[QueryDoc]:
    out: list[QueryDoc] = []
    for q in counting.plan_queries(checks):
        doc: QueryDoc = {"sql": q.sql, "kind": q.kind}
        if q.kind == "scan" and len(q.checks) > 1:
            doc["parts"] = [d for c in q.checks for d in _query_docs([c])]
        out.append(doc)
    return out


def data_queries(steps: Sequence[Step], origins: dict[tuple[int, int], catalog.IdAttr]) -> list[StepQueries]:
    """Per recorded statement, the counting queries :class:`DataCounter` runs right before it (bound as it binds
    them: on copies, ``steps`` stay as they are). JSON for the injected runner (standard library and SQLAlchemy
    only), which runs them in the application's image; :class:`RecordedDataCounter` reads its record back."""
    out: list[StepQueries] = []
    for i, step in enumerate(steps):
        own = bind_for_count(counting.copy_checks(step.checks), step.before, origins, None)
        later: list[Check] = []
        if own:
            rest = counting.copy_checks([c for s in steps[i + 1:] for c in s.checks])
            later = bind_for_count(rest, step.before, origins, _stop_note(step))
        out.append({"sql": step.sql, "own": _query_docs(own), "later": _query_docs(later)})
    return out


class QueryRecord(TypedDict, total=False):
    """What the injected runner got for one :class:`QueryDoc`: ``row`` (the first row) or ``error`` (the first
    line of the driver's message), ``seconds``, and ``parts`` (the records of the doc's parts, after an error)."""

    row: list[Any] | None
    error: str
    seconds: float
    parts: list[QueryRecord]


class RecordedDataCounter(DataCounter):
    """A :class:`DataCounter` judging a run the injected runner made (``runner.inject.datarun``): instead of
    executing the queries it reads their records; everything else (binding, stop, the checks PostgreSQL decides)
    is :class:`DataCounter`'s own."""

    def __init__(self, steps: Sequence[Step], origins: dict[tuple[int, int], catalog.IdAttr]) -> None:
        super().__init__(steps, origins)
        self.records: dict[str, list[QueryRecord]] = {}

    def _run(self, cursor: Any, todo: list[Check], which: str) -> None:
        fill_recorded(todo, self.records.get(which))

    def replay(self, events: Sequence[dict[str, Any]]) -> None:
        """Apply the run's events in order: ``{"event": "before", "sql", "own", "later"?}``, ``{"event":
        "after"}``, ``{"event": "error", "error"}``; stops where the run stopped."""
        for ev in events:
            if ev.get("event") == "before":
                self.records = {"own": ev.get("own") or [], "later": ev.get("later") or []}
                try:
                    self.reach(str(ev.get("sql") or ""), None)
                except StopCounting:
                    return
            elif ev.get("event") == "after":
                self.passed()
            elif ev.get("event") == "error":
                self.fail(str(ev.get("error") or "")[:300])


def fill_recorded(checks: Sequence[Check], records: Sequence[QueryRecord] | None) -> None:
    """Counts (or errors) of ``checks`` from the records of their queries (``counting.plan_queries`` order, as
    :func:`data_queries` wrote them). Raises ``ValueError`` when the records do not match the queries."""
    queries = counting.plan_queries(checks)
    if records is None or len(records) != len(queries):
        raise ValueError(f"{len(queries)} counting queries planned, {len(records or [])} recorded")
    for q, rec in zip(queries, records, strict=True):
        if rec.get("parts") and q.kind == "scan" and len(q.checks) > 1:
            for c, part in zip(q.checks, rec["parts"], strict=True):
                fill_recorded([c], [part])
            continue
        error = rec.get("error")
        if error is None:
            try:
                counting.fill_query(q, rec.get("row"), float(rec.get("seconds") or 0))
            except (TypeError, ValueError, IndexError) as e:
                error = str(e)
        if error is not None:
            for c in q.checks:
                c.error = str(error)[:300]


# --------------------------------------------------------------------------------------------------------------
# which tables the data-carrying shadow needs, and loading them


def affected_tables(steps: Sequence[Step], start: catalog.IdSnapshot, statements: Sequence[Statement]
                    ) -> list[int]:
    """OIDs (in ``start``) of the tables whose rows the data route needs: the tables of every check and the
    tables its foreign keys reference, the partitions and inheritance children of those, and every table whose
    name appears in a statement that changes or reads data."""
    wanted: set[int] = set()
    for s in steps:
        for c in s.checks:
            for key in ("relid", "ref_relid"):
                r = c.extra.get(key)
                if r in start.rels:
                    wanted.add(r)
    texts = [str(st.get("sql") or "") for st in statements if st.get("kind") in ("dml", "read")]
    if texts:
        blob = "\n".join(texts)
        touched = {oid for oid, rel in start.rels.items()
                   if re.search(r'(?<![\w$])"?' + re.escape(rel.relname) + r'"?(?![\w$])', blob, re.I)}
        # their foreign-key neighbours too: the data changes fire the same RI triggers as on the real database
        for con in start.cons.values():
            if con.contype == "f" and (con.relid in touched or con.ref_relid in touched):
                touched.update((con.relid, con.ref_relid))
        wanted |= {t for t in touched if t in start.rels}
    grew = True
    while grew:  # partitions and children, and the parents of every foreign key of what is loaded
        grew = False
        for oid, rel in start.rels.items():
            if rel.parent in wanted and oid not in wanted:
                wanted.add(oid)
                grew = True
        for con in start.cons.values():
            if con.contype == "f" and con.relid in wanted and con.ref_relid in start.rels \
                    and con.ref_relid not in wanted:
                wanted.add(con.ref_relid)
                grew = True
    return sorted(wanted)


def _parents_first(start: catalog.IdSnapshot, relids: Sequence[int]) -> list[int]:
    """``relids`` with every foreign key's referenced table before the referencing one (cycles keep their
    order)."""
    parents = {r: {c.ref_relid for c in start.cons.values() if c.contype == "f" and c.relid == r
                   and c.ref_relid != r and c.ref_relid in relids} for r in relids}
    out: list[int] = []
    seen: set[int] = set()

    def visit(r: int, path: set[int]) -> None:
        if r in seen or r in path:
            return
        for p in sorted(parents.get(r, ())):
            visit(p, path | {r})
        seen.add(r)
        out.append(r)

    for r in relids:
        visit(r, set())
    return out


class DataShadowLoad(TypedDict):
    """What ``load_rows`` copied into the data-carrying shadow (``data.dataShadow``)."""

    tables: list[str]  # schema.table, parents first
    bytes: int  # pg_total_relation_size of those tables on the real database
    rows: int
    triggersOff: bool  # session_replication_role = replica was allowed


class DataShadowTooLarge(PrecheckIncomplete):
    """The affected tables exceed ``spec.precheck.dataShadow.maxSize``: the revisions change data, so their checks
    can only be counted in a shadow holding those rows, and none is made (the precheck is blocked, ChecksFailed)."""

    reason = "DataShadowTooLarge"


def table_bytes(real_conn: Connection, tables: Sequence[tuple[str, str]]) -> int:
    total = 0
    with real_conn.cursor() as cur:
        for schema, rel in tables:
            cur.execute("SELECT pg_total_relation_size(%s::regclass)", (counting.qualified(schema, rel),))
            total += int(one_row(cur)[0] or 0)
    return total


def _replica_role(data_conn: Connection) -> bool:
    """``SET session_replication_role = replica`` on the shadow (triggers and foreign-key checks off); False when
    the role may not (it needs superuser, the throw-away shadow server's): then parents are loaded first and
    triggers fire."""
    try:
        with data_conn.cursor() as dcur:
            dcur.execute("SET session_replication_role = replica")
    except Exception:  # noqa: BLE001 - any driver's permission error
        return False
    return True


def _copy_rows(real_conn: Connection, data_conn: Connection, start: catalog.IdSnapshot, rel: catalog.IdRel) -> int:
    """Stream one table's rows (``FROM ONLY``, generated columns left out) from the real database into the
    shadow with ``COPY .. (FORMAT binary)``, ``FREEZE`` on the shadow side; the number of rows copied."""
    cols = [a for a in start.columns_of(rel.oid) if not a.generated]
    collist = ", ".join(counting.quote_ident(a.name) for a in cols)
    src = counting.qualified(rel.schema, rel.relname)
    copy_out = f"COPY (SELECT {collist} FROM ONLY {src}) TO STDOUT (FORMAT binary)"  # noqa: S608
    copy_in = f"COPY {src} ({collist}) FROM STDIN (FORMAT binary, FREEZE)"
    with real_conn.cursor() as rcur, data_conn.cursor() as dcur:
        with rcur.copy(copy_out) as out, dcur.copy(copy_in) as inp:
            for chunk in out:
                inp.write(chunk)
        return dcur.rowcount if dcur.rowcount and dcur.rowcount > 0 else 0


def _owned_sequences(real_conn: Connection, names: Sequence[tuple[str, str]]) -> list[tuple[str, str, int | None]]:
    """``(schema, sequence, pg_sequence_last_value)`` of the sequences owned by the tables ``names`` (serial and
    identity columns: ``pg_depend`` deptype ``a``/``i``). Best effort: a role without rights on the sequences
    gets none (they keep their start values in the shadow)."""
    try:
        with real_conn.transaction(), real_conn.cursor() as rcur:
            rcur.execute(
                "SELECT n.nspname, s.relname, pg_sequence_last_value(s.oid) FROM pg_class s "
                "JOIN pg_namespace n ON n.oid = s.relnamespace JOIN pg_depend d ON d.objid = s.oid "
                "AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
                "WHERE s.relkind = 'S' AND d.refobjid = ANY(%s::regclass[]) AND d.deptype IN ('a', 'i')",
                ([counting.qualified(s, t) for s, t in names],))
            return list(rcur.fetchall())
    except Exception:  # noqa: BLE001 - any driver error: the sequences keep their start values
        return []


def load_rows(real_conn: Connection, data_conn: Connection, start: catalog.IdSnapshot, relids: Sequence[int],
              max_bytes: int | None) -> DataShadowLoad:
    """Stream the rows of ``relids`` (leaf tables only; partitioned parents hold none) from the real database
    into the data-carrying shadow with ``COPY .. (FORMAT binary)``, in one REPEATABLE READ, READ ONLY snapshot,
    parents before children, triggers and foreign-key checks off (``session_replication_role = replica``) when the
    shadow's role may (a superuser: the throw-away server's), else on (``triggersOff: false``). Sequences owned by those tables get the real values. Raises :class:`DataShadowTooLarge` before
    copying anything when the tables' total size (``pg_total_relation_size``) exceeds ``max_bytes``.

    Returns ``{"tables": [..], "bytes": n, "rows": n}``."""
    leaves = [start.rels[r] for r in _parents_first(start, relids) if start.rels[r].relkind == "r"]
    names = [(r.schema, r.relname) for r in leaves]
    size = table_bytes(real_conn, names)
    if max_bytes is not None and size > max_bytes:
        raise DataShadowTooLarge(
            f"blocked: the tables the data-carrying shadow needs ({', '.join(f'{s}.{t}' for s, t in names[:10])}) "
            f"hold {size} bytes, more than spec.precheck.dataShadow.maxSize ({max_bytes} bytes); the revisions "
            "change data, so their checks can only be counted in a shadow that holds those rows",
            field="spec.precheck.dataShadow.maxSize")
    rows = 0
    replica = _replica_role(data_conn)
    with real_conn.transaction(), data_conn.transaction():
        with real_conn.cursor() as rcur:
            rcur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if leaves:  # truncated in this transaction, so COPY .. FREEZE writes the rows frozen (no hint-bit or clog
            # work when the revisions then read them); CASCADE: every table of the shadow is empty anyway
            with data_conn.cursor() as dcur:
                dcur.execute("TRUNCATE " + ", ".join(counting.qualified(r.schema, r.relname) for r in leaves)
                             + " CASCADE")
        for rel in leaves:
            rows += _copy_rows(real_conn, data_conn, start, rel)
        seqs = _owned_sequences(real_conn, names)
    with data_conn.cursor() as dcur:
        for schema, seq, value in seqs:
            if value is not None:
                dcur.execute("SELECT setval(%s::regclass, %s)", (counting.qualified(schema, seq), value))
        if replica:
            dcur.execute("SET session_replication_role = DEFAULT")
    return {"tables": [f"{s}.{t}" for s, t in names], "bytes": size, "rows": rows, "triggersOff": replica}
