"""Leftovers of a partly applied, non-transactional step, and their cleanup before a retry.

``CREATE [UNIQUE] INDEX CONCURRENTLY`` and ``REINDEX ... CONCURRENTLY`` cannot run in a transaction (a revision
runs them in an ``autocommit_block``): PostgreSQL commits the new index's catalog entry first, marked invalid, and
only then builds it, waiting for the table's writers. When that wait hits ``lock_timeout`` (or the build fails, e.g.
on a duplicate key) the index stays behind with ``pg_index.indisvalid = false``; REINDEX leaves ``<index>_ccnew``
(or ``_ccold``). Running the revision again then fails with "relation ... already exists" (SQLSTATE 42P07), or
leaves another ``_ccnew``. PostgreSQL's documented recovery is ``DROP INDEX CONCURRENTLY`` and building again
(https://www.postgresql.org/docs/current/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY,
https://www.postgresql.org/docs/current/sql-reindex.html#SQL-REINDEX-CONCURRENTLY).

``IndexBuilds`` knows which index names the pending revisions build that way: from the statements each attempt
executed (a SQLAlchemy ``before_cursor_execute`` listener, tagged with the running revision; a statement is seen
before PostgreSQL runs it, so the one that fails is known too). ``add_sql`` reads an offline rendering the same
way. ``find`` returns only INVALID indexes with exactly those names (for REINDEX: ``<name>_ccnew[N]`` /
``_ccold[N]`` on the same table); ``drop`` removes them with ``DROP INDEX CONCURRENTLY`` under the migration's
``lock_timeout``. No other index is ever touched. Any other statement a failed revision ran outside a transaction
and that completed (``committed_by``) stays committed: it is named in the result, since a retry runs it again. Identifiers are quoted by SQLAlchemy's dialect
(``IdentifierPreparer.quote_identifier``) and compared as PostgreSQL stores them (unquoted names folded to lower
case).

Public API: ``IndexBuild``, ``Leftover``, ``parse_index_build(sql, revision=None) -> IndexBuild | None``,
``IndexBuilds`` (``watch()``, ``on_revision(rev)``, ``add_sql(text)``, ``builds``, ``committed_by(rev)``), ``find(url,
builds) -> [Leftover]``, ``drop(url, leftovers, lock_timeout) -> None``, ``is_duplicate_relation(exc)``,
``ShadowRetry`` (the same handling in a shadow: what migrate will do, predicted by the precheck).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from schemagate.contract.errors import sqlstate
from schemagate.contract.sqlkind import StatementLog, classify
from schemagate.runner.inject.config import engine_for

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_CREATE = re.compile(
    rf"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_IDENT})\s+ON\s+"
    rf"(?:ONLY\s+)?(?P<table>{_QUALIFIED})", re.I | re.S)
_REINDEX = re.compile(
    rf"^\s*REINDEX\s+(?:\([^)]*\)\s*)?(?P<what>INDEX|TABLE)\s+CONCURRENTLY\s+(?P<name>{_QUALIFIED})", re.I | re.S)
_COMMENTS = re.compile(r"(--[^\n]*(\n|$))|(/\*.*?\*/)", re.S)
_REINDEX_LEFTOVER = re.compile(r"(?P<base>.+)_cc(?:new|old)\d*")
_RUNNING = re.compile(r"^-- Running upgrade .*-> (\S+)\s*$", re.M)


def _ident(token: str) -> str:
    """An identifier as PostgreSQL stores it: quoted kept exactly, unquoted folded to lower case."""
    token = token.strip()
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def _qualified(text: str) -> tuple[str | None, str]:
    parts = re.findall(_IDENT, text)
    return (_ident(parts[0]), _ident(parts[1])) if len(parts) == 2 else (None, _ident(parts[0]))


@dataclass(frozen=True)
class IndexBuild:
    """An index built outside a transaction. ``kind``: ``create`` (``index`` on ``schema``.``table``),
    ``reindex-index`` (``index`` in ``schema``) or ``reindex-table`` (every index of ``schema``.``table``);
    ``schema`` is None when the statement does not name it (the search_path decides)."""

    kind: str
    schema: str | None
    table: str | None
    index: str | None
    revision: str | None = None


def parse_index_build(sql: str, revision: str | None = None) -> IndexBuild | None:
    """The ``IndexBuild`` of one SQL statement, or None when it builds no index outside a transaction (or names
    none: ``CREATE INDEX CONCURRENTLY ON t`` lets PostgreSQL choose, and nothing can be attributed)."""
    text = _COMMENTS.sub(" ", sql)
    m = _CREATE.match(text)
    if m and m.group("name").upper() != "ON":
        schema, table = _qualified(m.group("table"))
        return IndexBuild("create", schema, table, _ident(m.group("name")), revision)
    m = _REINDEX.match(text)
    if m:
        schema, name = _qualified(m.group("name"))
        if m.group("what").upper() == "INDEX":
            return IndexBuild("reindex-index", schema, None, name, revision)
        return IndexBuild("reindex-table", schema, name, None, revision)
    return None


def statements_of(script: str) -> list[str]:
    """The statements of an offline rendering (``alembic upgrade --sql``), split at ``;`` line ends."""
    return [s for s in re.split(r";\s*\n", script) if s.strip()]


@dataclass
class IndexBuilds:
    """The index builds of the pending revisions, collected while attempts run and from their offline SQL."""

    builds: list[IndexBuild] = field(default_factory=list)
    revision: str | None = None
    done: list[tuple[str | None, str, bool]] = field(default_factory=list)
    """(revision, statement, outside a transaction) of the current attempt's completed data or schema changes."""

    def on_revision(self, revision: str) -> None:
        self.revision = revision

    def add(self, build: IndexBuild | None) -> None:
        if build is not None and build not in self.builds:
            self.builds.append(build)

    def add_sql(self, script: str) -> None:
        """Add the builds of an offline rendering; each statement is tagged with the revision of the ``-- Running
        upgrade A -> B`` comment Alembic writes before it."""
        revision = None
        for stmt in statements_of(script):
            for m in _RUNNING.finditer(stmt):
                revision = m.group(1)
            self.add(parse_index_build(stmt, revision))

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Record the index builds every SQLAlchemy engine executes during the block (the env.py's own included)."""
        from sqlalchemy import event

        def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            self.add(parse_index_build(statement, self.revision))

        def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            if classify(statement) in ("ddl", "dml"):
                auto = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
                self.done.append((self.revision, statement, auto))

        self.done = []
        event.listen(sa.engine.Engine, "before_cursor_execute", before)
        event.listen(sa.engine.Engine, "after_cursor_execute", after)
        try:
            yield
        finally:
            event.remove(sa.engine.Engine, "before_cursor_execute", before)
            event.remove(sa.engine.Engine, "after_cursor_execute", after)

    def committed_by(self, revision: str | None) -> list[str]:
        """The statements of ``revision`` that the current attempt committed whatever happens to the revision:
        those run outside a transaction (``autocommit_block``) and every one before the last of them (Alembic
        commits the revision's open transaction when the block starts)."""
        mine = [(stmt, auto) for rev, stmt, auto in self.done if rev == revision]
        last = max((i for i, (_, auto) in enumerate(mine) if auto), default=-1)
        return [stmt for stmt, _ in mine[: last + 1]]


@dataclass(frozen=True)
class Leftover:
    """An INVALID index a build of ``revision`` left: ``schema``, ``table``, ``index`` as PostgreSQL stores them."""

    schema: str
    table: str
    index: str
    revision: str | None

    def as_dict(self, dropped: bool) -> dict[str, Any]:
        return {"schema": self.schema, "table": self.table, "index": self.index, "revision": self.revision,
                "dropped": dropped}

    def display(self) -> str:
        return f"index {self.index} (table {self.table}, schema {self.schema})"


_INVALID_SQL = """
SELECT n.nspname, t.relname, ic.relname, i.indrelid FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE NOT i.indisvalid AND {where}
  AND (CAST(:schema AS text) IS NULL AND pg_table_is_visible(t.oid) OR n.nspname = :schema)
ORDER BY 1, 3
"""


Rows = Callable[[str, dict[str, Any]], Sequence[Any]]


def _rows_on(conn: sa.Connection) -> Rows:
    return lambda sql, params: conn.execute(sa.text(sql), params).all()


def _leftovers_of(conn: sa.Connection | Rows, b: IndexBuild) -> list[Leftover]:
    rows_of = _rows_on(conn) if isinstance(conn, sa.Connection) else conn
    if b.kind == "create":
        rows = rows_of(_INVALID_SQL.format(where="ic.relname = :index AND t.relname = :table"),
                       {"index": b.index, "table": b.table, "schema": b.schema})
        return [Leftover(r[0], r[1], r[2], b.revision) for r in rows[:1]]
    if b.kind == "reindex-index":
        rows = rows_of(_INVALID_SQL.format(
            where="i.indrelid IN (SELECT x.indrelid FROM pg_index x JOIN pg_class xc ON xc.oid = x.indexrelid "
                  "JOIN pg_namespace xn ON xn.oid = xc.relnamespace WHERE xc.relname = :index "
                  "AND (CAST(:schema AS text) IS NULL OR xn.nspname = :schema))"),
            {"index": b.index, "schema": b.schema})
    else:
        rows = rows_of(_INVALID_SQL.format(where="t.relname = :table"), {"table": b.table, "schema": b.schema})
    out = []
    for r in rows:
        m = _REINDEX_LEFTOVER.fullmatch(r[2])
        if m and (b.index is None or b.index.startswith(m.group("base"))):
            out.append(Leftover(r[0], r[1], r[2], b.revision))
    return out


def find(url: str, builds: Iterable[IndexBuild], conn: sa.Connection | None = None) -> list[Leftover]:
    """The INVALID indexes that ``builds`` left (see the module docstring); one query per build. ``conn``: an
    open connection to the same database to ask on (the migration's advisory-lock connection), else one is
    opened for the question."""
    builds = list(builds)
    if not builds:
        return []
    if conn is not None:
        found_here: list[Leftover] = []
        for b in builds:
            found_here += [x for x in _leftovers_of(conn, b) if x not in found_here]
        return found_here
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            found: list[Leftover] = []
            for b in builds:
                found += [x for x in _leftovers_of(conn, b) if x not in found]
            return found
    finally:
        engine.dispose()


def drop(url: str, leftovers: Sequence[Leftover], lock_timeout: str | None) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS`` each leftover (autocommit, under ``lock_timeout``). Raises the
    database error of the first drop that fails (a lock timeout when writers still hold the table)."""
    if not leftovers:
        return
    engine = engine_for(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": lock_timeout or "0"})
            q = conn.dialect.identifier_preparer.quote_identifier
            for x in leftovers:
                conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {q(x.schema)}.{q(x.index)}")
    finally:
        engine.dispose()


def is_duplicate_relation(exc: BaseException) -> bool:
    """True when ``exc`` is PostgreSQL's "relation ... already exists" (SQLSTATE 42P07, duplicate_table)."""
    return sqlstate(exc) == "42P07"


T = TypeVar("T")


class ShadowRetry:
    """The handling of ``migrate`` for a build that fails on its own leftover, done in a shadow database (the
    precheck's throw-away copies, which hold the real database's INVALID indexes under their names): when the
    pending revisions' run fails with "already exists" (``is_duplicate_relation``) and ``find`` names INVALID
    indexes of the builds that run executed, they are dropped (``DROP INDEX CONCURRENTLY``) and the run is made
    again, once, from where the shadow stands, as ``migrate`` does on the real database. The queries go through
    the driver connection (``Engine.raw_connection``), so the statement listeners of the shadow run (capture,
    snapshots, counting) see neither the look-up nor the drop.

    ``builds``: the index builds seen (tag them through ``builds.on_revision``); ``dropped``: what was dropped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.builds = IndexBuilds()
        self.dropped: list[Leftover] = []

    def run(self, attempt: Callable[[bool], T], log: StatementLog | None = None,
            before_again: Callable[[], None] | None = None) -> T:
        """``attempt(True)``; on a failure that the builds' leftovers explain, drop them, forget the failed build in
        ``log`` (the statements captured: the build runs again), call ``before_again`` (reset what else the failed
        run recorded) and return ``attempt(False)`` (its errors propagate). Raises the first attempt's error
        otherwise."""
        with self.builds.watch():
            try:
                return attempt(True)
            except Exception as e:
                if not is_duplicate_relation(e) or not self._drop_found():
                    raise
        if log is not None and log.statements and parse_index_build(log.statements[-1]["sql"]) is not None:
            log.statements.pop()
        if before_again is not None:
            before_again()
        return attempt(False)

    def _drop_found(self) -> bool:
        engine = engine_for(self.url)
        try:
            raw = engine.raw_connection()
            try:
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]
                cur = raw.cursor()
                cur.execute("SET lock_timeout = '300s'")  # the shadow has no other session: never wait for ever

                def rows(sql: str, params: dict[str, Any]) -> Sequence[Any]:
                    text = sa.text(sql).bindparams(**params).compile(
                        dialect=engine.dialect, compile_kwargs={"literal_binds": True})
                    cur.execute(str(text))
                    return cur.fetchall()

                found: list[Leftover] = []
                for b in self.builds.builds:
                    found += [x for x in _leftovers_of(rows, b) if x not in found]
                q = engine.dialect.identifier_preparer.quote_identifier
                for x in found:
                    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {q(x.schema)}.{q(x.index)}")
                self.dropped += found
                return bool(found)
            finally:
                raw.close()
        finally:
            engine.dispose()

    def found(self) -> list[dict[str, Any]]:
        """``data.leftovers`` of the precheck: each dropped leftover (``Leftover.as_dict``; ``dropped`` False: it
        is still on the real database) with ``migrateDrops`` True."""
        return [{**x.as_dict(dropped=False), "migrateDrops": True} for x in self.dropped]


def shadow_note(found: Sequence[dict[str, Any]]) -> str:
    """What a precheck's message says about ``found`` (``ShadowRetry.found``); empty when none."""
    if not found:
        return ""
    return ("INVALID index(es) " + ", ".join(f"{x['index']} (table {x['table']}, schema {x['schema']})"
                                            for x in found)
            + " left by an earlier attempt of revision " + ", ".join(sorted({str(x["revision"]) for x in found}))
            + ": migrate drops it before applying (DROP INDEX CONCURRENTLY), as the shadow run did")
