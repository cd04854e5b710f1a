"""The lock report of a rehearsal: for each statement the pending revisions execute, the strongest table lock it
took, on which table, for how long, and the rows a data-changing statement changed.

How it is observed (``StatementLocks.watch()``, SQLAlchemy ``before_cursor_execute`` / ``after_cursor_execute`` /
``commit`` / ``rollback`` / ``handle_error`` listeners on every engine, so the application's env.py needs no change):

- a statement run in a transaction (every statement of a revision with PostgreSQL's transactional DDL): right after
  it returns, one query of ``pg_locks`` for the session's own backend (``pg_backend_pid()``, on the same
  connection, so inside the same transaction) lists the table locks held; those not held before the statement are
  the ones it took. This is exact: PostgreSQL keeps a lock taken in a transaction until the transaction ends
  ("Explicit Locking", https://www.postgresql.org/docs/current/explicit-locking.html), so the lock is held from
  the statement's start until the ``COMMIT``/``ROLLBACK`` (``heldSeconds``). A statement that needs a lock the
  transaction already holds takes nothing new (``lock`` null; the earlier statement's entry shows it);
- a statement run outside a transaction (Alembic's ``autocommit_block``: ``CREATE INDEX CONCURRENTLY`` and the like)
  releases its locks when it ends, so a second session samples ``pg_locks`` for that backend every
  ``SAMPLE_SECONDS`` while it runs (``source: "sampled"``); a statement shorter than one interval may show no lock
  (``runner.rehearse.documented_locks`` then fills in the lock the documentation gives, ``source: "documented"``).

Only tables are reported (``pg_class.relkind`` r, p, m, f; catalogs, ``information_schema`` and TOAST tables
left out; a table the transaction dropped keeps the name it had when first seen). ``rows``: the cursor's
``rowcount`` of a data-changing statement (``contract.sqlkind.classify`` = ``dml``; Alembic's version-table
bookkeeping is not counted). Statement text is redacted and cut to 200 characters.

Record (``StatementLocks.records``, in execution order)::

    {"revision", "statement", "seconds", "transactional": bool, "source": "pg_locks"|"sampled",
     "lock": {"table", "mode", "heldSeconds"} | null, "tables": [{"table", "mode"}], "rows"?: int,
     "failed"?: true}

``mode`` is PostgreSQL's name in the documentation's spelling ("ACCESS EXCLUSIVE", "SHARE UPDATE EXCLUSIVE").
``describe(lock)`` renders "ACCESS EXCLUSIVE on orders for 2.1 s".
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from schemagate.contract.redact import redact
from schemagate.contract.sqlkind import classify
from schemagate.runner.inject.config import engine_for

SAMPLE_SECONDS = 0.005
MAX_RECORDS = 2000

# weakest to strongest: the table-level modes of "Explicit Locking" (pg_locks.mode spells them CamelCase + Lock)
MODES = ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
         "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
_RANK = {m: i for i, m in enumerate(MODES)}

_LOCKS_SQL = (
    "SELECT l.relation::bigint, l.mode, n.nspname, c.relname, c.relkind::text FROM pg_locks l "
    "LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE l.pid = {pid} AND l.locktype = 'relation' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_TABLE_KINDS = {"r", "p", "m", "f"}
_SYSTEM_SCHEMA = re.compile(r"^(pg_catalog|information_schema|pg_toast.*|pg_temp.*)$")


_BOOKKEEPING = re.compile(r"^\s*(INSERT|UPDATE|DELETE|CREATE\s+TABLE)\b", re.I)


def _wanted(kind: str, statement: str, taken: dict[str, str]) -> bool:
    """Schema and data changes always; Alembic's version-table bookkeeping (kind ``other`` yet a write) never;
    any other statement (``LOCK TABLE``, ``SELECT ... FOR UPDATE``) when it took more than ACCESS SHARE."""
    if kind in ("ddl", "dml"):
        return True
    if kind == "other" and _BOOKKEEPING.match(statement):
        return False
    return any(_RANK.get(m, -1) > _RANK["AccessShareLock"] for m in taken.values())


def mode_name(mode: str) -> str:
    """``AccessExclusiveLock`` -> ``ACCESS EXCLUSIVE`` (the documentation's spelling)."""
    words = re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))
    return " ".join(w.upper() for w in words)


def describe(lock: dict[str, Any] | None) -> str:
    """``"ACCESS EXCLUSIVE on orders for 2.1 s"`` (under 0.1 s in ms: ``"... for 4.7 ms"``), or ``"no table
    lock"``."""
    if not lock:
        return "no table lock"
    held = float(lock["heldSeconds"])
    return f"{lock['mode']} on {lock['table']} for " + (f"{held:.1f} s" if held >= 0.1 else f"{held * 1000:.1f} ms")


def strongest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record whose lock is the strongest (then the longest held) of ``records``, or None without any lock."""
    best: tuple[int, float] | None = None
    out = None
    for r in records:
        lk = r.get("lock")
        if not lk:
            continue
        key = (_RANK.get(_from_name(lk["mode"]), -1), float(lk["heldSeconds"]))
        if best is None or key > best:
            best, out = key, r
    return out


def _from_name(name: str) -> str:
    return "".join(w.capitalize() for w in name.split()) + "Lock"


def _table(schema: str | None, name: str) -> str:
    return name if schema in (None, "public") else f"{schema}.{name}"


class _Sampler:
    """Samples ``pg_locks`` of one backend from its own connection while a statement outside a transaction runs."""

    def __init__(self, report: StatementLocks, pid: int) -> None:
        self.report, self.pid = report, pid
        self.seen: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="schemagate-lock-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn = self.report._sampling_connection()
            while True:
                rows = conn.exec_driver_sql(_LOCKS_SQL.format(pid=int(self.pid))).fetchall()
                for table, mode in self.report._tables(rows):
                    if _RANK.get(mode, -1) > _RANK.get(self.seen.get(table, ""), -1):
                        self.seen[table] = mode
                if self.stop.wait(SAMPLE_SECONDS):
                    return
        except Exception:  # noqa: BLE001 - observation is best effort: the statement reports no lock
            return

    def finish(self) -> dict[str, str]:
        self.stop.set()
        self.thread.join(timeout=5)
        return dict(self.seen)


class StatementLocks:
    """Collects the lock report of every statement executed while ``watch()`` is active (see the module
    docstring). ``url``: the database, for the sampling connection of statements run outside a transaction.
    ``revision``: set by the caller to the running revision (``on_revision``); ``version_table``: Alembic's."""

    def __init__(self, url: str, version_table: str | None = None) -> None:
        self.url, self.version_table = url, version_table
        self.revision: str | None = None
        self.records: list[dict[str, Any]] = []
        self._names: dict[int, str] = {}  # oid -> table, as first seen (a table dropped later keeps it)
        self._held: dict[int, set[tuple[str, str]]] = {}  # per DBAPI connection: (table, mode) held in its tx
        self._open: dict[int, list[tuple[dict[str, Any], float]]] = {}  # records whose lock the tx still holds
        self._running: dict[int, tuple[float, Any]] = {}  # per connection: statement start, sampler
        self._pids: dict[int, int] = {}
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None

    def _sampling_connection(self) -> sa.Connection:
        if self._conn is None:
            self._engine = engine_for(self.url)
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def _tables(self, rows: Any) -> list[tuple[str, str]]:
        out = []
        for oid, mode, schema, name, kind in rows:
            if name is not None:
                if kind not in _TABLE_KINDS or _SYSTEM_SCHEMA.match(schema or ""):
                    continue
                self._names.setdefault(int(oid), _table(schema, name))
            table = self._names.get(int(oid))
            if table is not None:
                out.append((table, mode))
        return out

    def _own_locks(self, dbapi: Any) -> set[tuple[str, str]]:
        cur = dbapi.cursor()
        try:
            cur.execute(_LOCKS_SQL.format(pid="pg_backend_pid()"))
            return set(self._tables(cur.fetchall()))
        finally:
            cur.close()

    def _pid(self, dbapi: Any) -> int:
        key = id(dbapi)
        if key not in self._pids:
            cur = dbapi.cursor()
            try:
                cur.execute("SELECT pg_backend_pid()")
                self._pids[key] = int(cur.fetchone()[0])
            finally:
                cur.close()
        return self._pids[key]

    @staticmethod
    def _autocommit(conn: Any, dbapi: Any) -> bool:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return True
        return bool(getattr(dbapi, "autocommit", False))

    def _record(self, statement: str, start: float, end: float, transactional: bool, source: str,
                taken: dict[str, str]) -> dict[str, Any]:
        tables = [{"table": t, "mode": mode_name(m)} for t, m in sorted(taken.items())]
        rec: dict[str, Any] = {"revision": self.revision, "statement": redact(" ".join(statement.split()))[:200],
                               "seconds": round(end - start, 4), "transactional": transactional,
                               "source": source, "tables": tables, "lock": None}
        if taken:
            table, mode = max(taken.items(), key=lambda kv: _RANK.get(kv[1], -1))
            rec["lock"] = {"table": table, "mode": mode_name(mode), "heldSeconds": round(end - start, 4)}
        if len(self.records) < MAX_RECORDS:
            self.records.append(rec)
        return rec

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        dbapi = cursor.connection
        sampler = None
        if self._autocommit(conn, dbapi) and classify(statement, self.version_table) in ("ddl", "dml"):
            with contextlib.suppress(Exception):
                sampler = _Sampler(self, self._pid(dbapi))
        self._running[id(dbapi)] = (time.monotonic(), sampler)

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        dbapi = cursor.connection
        key = id(dbapi)
        start, sampler = self._running.pop(key, (time.monotonic(), None))
        end = time.monotonic()
        kind = classify(statement, self.version_table)
        rows = cursor.rowcount if kind == "dml" and isinstance(cursor.rowcount, int) and cursor.rowcount >= 0 else None
        if sampler is not None:
            rec = self._record(statement, start, end, False, "sampled", sampler.finish())
        elif self._autocommit(conn, dbapi):
            if kind not in ("ddl", "dml"):
                return
            rec = self._record(statement, start, end, False, "sampled", {})
        else:
            try:
                now_held = self._own_locks(dbapi)
            except Exception:  # noqa: BLE001 - best effort: never fail the revision for the report
                return
            before = self._held.get(key, set())
            self._held[key] = now_held
            taken: dict[str, str] = {}
            for table, mode in now_held - before:
                if _RANK.get(mode, -1) > _RANK.get(taken.get(table, ""), -1):
                    taken[table] = mode
            if not _wanted(kind, statement, taken):
                return
            rec = self._record(statement, start, end, True, "pg_locks", taken)
            self._open.setdefault(key, []).append((rec, start))
        if rows is not None:
            rec["rows"] = rows

    def _end_transaction(self, conn: Any) -> None:
        try:
            dbapi = conn.connection.dbapi_connection
        except Exception:  # noqa: BLE001
            return
        key = id(dbapi)
        end = time.monotonic()
        for rec, start in self._open.pop(key, []):
            if rec["lock"] is not None:
                rec["lock"]["heldSeconds"] = round(end - start, 4)
        self._held.pop(key, None)

    def _error(self, ctx: Any) -> None:
        cursor = getattr(ctx, "cursor", None)
        statement = getattr(ctx, "statement", None)
        if cursor is None or not statement:
            return
        key = id(cursor.connection)
        start, sampler = self._running.pop(key, (time.monotonic(), None))
        taken = sampler.finish() if sampler is not None else {}
        rec = self._record(statement, start, time.monotonic(), sampler is None, "sampled" if sampler else "pg_locks",
                           taken)
        rec["failed"] = True

    @contextlib.contextmanager
    def watch(self) -> Iterator[StatementLocks]:
        """Listen on every SQLAlchemy engine during the block; the sampling connection is closed at the end."""
        from sqlalchemy import event

        hooks: list[tuple[str, Callable[..., Any]]] = [("before_cursor_execute", self._before), ("after_cursor_execute", self._after),
                 ("commit", self._end_transaction), ("rollback", self._end_transaction),
                 ("handle_error", self._error)]
        for name, fn in hooks:
            event.listen(sa.engine.Engine, name, fn)
        try:
            yield self
        finally:
            for name, fn in hooks:
                event.remove(sa.engine.Engine, name, fn)
            end = time.monotonic()
            for opened in self._open.values():  # a transaction whose end was not seen: held until now
                for rec, start in opened:
                    if rec["lock"] is not None:
                        rec["lock"]["heldSeconds"] = round(end - start, 4)
            self._open.clear()
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            if self._engine is not None:
                self._engine.dispose()
            self._conn = self._engine = None
