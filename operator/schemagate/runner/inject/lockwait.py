"""Which lock the migration waited for, and who held it: observed while it waits, reported per attempt.

A lock timeout (SQLSTATE 55P03) says only that a lock was not granted in time; once the statement gives up the
wait is gone from ``pg_locks``. So while an upgrade attempt runs, :class:`LockWaitWatcher` polls on its own
autocommit connection (one per ``migrate``, not per attempt) for the migration's sessions (``application_name``
of the runner, any other backend but itself) that wait for a lock (``pg_locks.granted = false``), and the
sessions blocking them (``pg_blocking_pids``, PostgreSQL 9.6+; ``pg_locks.waitstart``, 14+). The last wait seen
in an attempt is its report::

    {"lock": {"locktype", "mode", "relation"?}, "waitedSeconds", "statement",
     "heldBy": [{"pid", "applicationName", "user", "state", "transactionSeconds"}]}

Query text of the holders is never recorded (it may carry application data); the migration's own statement is
(first 200 characters). Observation is best effort: a failing poll is ignored and the attempt reports nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import sqlalchemy as sa

from schemagate.runner.inject.config import APPLICATION_NAME, engine_for

_WAITING = sa.text(
    "SELECT w.pid, l.locktype, l.mode, CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END, "
    "pg_blocking_pids(w.pid), left(w.query, 200), "
    "extract(epoch FROM clock_timestamp() - l.waitstart)::float8 "
    "FROM pg_stat_activity w JOIN pg_locks l ON l.pid = w.pid AND NOT l.granted "
    "WHERE w.application_name = :app AND w.pid <> pg_backend_pid() AND w.datname = current_database() "
    "ORDER BY l.waitstart NULLS LAST LIMIT 1"
)
_HOLDERS = sa.text(
    "SELECT pid, application_name, usename, state, "
    "extract(epoch FROM clock_timestamp() - xact_start)::float8 "
    "FROM pg_stat_activity WHERE pid = ANY(CAST(:pids AS int[])) ORDER BY pid"
)


def describe(wait: dict[str, Any] | None) -> str:
    """One line for a log or a message: ``waited 5.0s for AccessExclusiveLock on orders, held by pid 42
    (application 'report', user app, idle in transaction, transaction open 12.3s)``; ``""`` for None."""
    if not wait:
        return ""
    lock = wait.get("lock") or {}
    what = f"{lock.get('mode')} on {lock.get('relation') or lock.get('locktype')}"
    holders = []
    for h in wait.get("heldBy") or []:
        age = h.get("transactionSeconds")
        holders.append(f"pid {h.get('pid')} (application {h.get('applicationName')!r}, user {h.get('user')}, "
                       f"{h.get('state')}" + (f", transaction open {age:.1f}s" if age is not None else "") + ")")
    held = ", held by " + "; ".join(holders) if holders else ", holder not observed"
    secs = wait.get("waitedSeconds")
    return (f"waited {secs:.1f}s for {what}" if secs is not None else f"waited for {what}") + held


class LockWaitWatcher:
    """Context manager: polls every ``interval`` seconds while open; :meth:`take` returns (and forgets) the last
    lock wait observed since the previous call (the report shape is in the module docstring). Its connection is
    opened only ``connect_after`` seconds after entering, so a migration done sooner costs no extra connection."""

    def __init__(self, url: str, interval: float = 0.2, application_name: str | None = None,
                 connect_after: float = 0.0) -> None:
        self.url = url
        self.interval = interval
        self.connect_after = connect_after
        self.app = application_name or os.environ.get("PGAPPNAME") or APPLICATION_NAME
        self._last: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: sa.Engine | None = None
        self._conn: sa.Connection | None = None

    def __enter__(self) -> LockWaitWatcher:
        self._thread = threading.Thread(target=self._run, name="schemagate-lock-wait-watcher", daemon=True)
        self._thread.start()
        return self

    def _connect(self) -> bool:
        try:
            self._engine = engine_for(self.url)
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn.exec_driver_sql("SET lock_timeout = 0; SET statement_timeout = '2s'")
            return True
        except Exception:  # noqa: BLE001 - observation is best effort: the migration runs without it
            self._close()
            return False

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)  # the thread closes its own connection

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        if self._engine is not None:
            self._engine.dispose()
        self._conn = self._engine = None

    def _run(self) -> None:
        if self._stop.wait(self.connect_after) or not self._connect():
            return
        try:
            while not self._stop.wait(self.interval):
                try:
                    seen = self.sample()
                except Exception:  # noqa: BLE001 - best effort
                    continue
                if seen is not None:
                    with self._lock:
                        self._last = seen
        finally:
            self._close()

    def sample(self) -> dict[str, Any] | None:
        """The migration's longest current lock wait and its holders, or None (one poll)."""
        assert self._conn is not None
        row = self._conn.execute(_WAITING, {"app": self.app}).first()
        if row is None:
            return None
        _pid, locktype, mode, relation, blockers, statement, waited = row
        lock: dict[str, Any] = {"locktype": locktype, "mode": mode}
        if relation:
            lock["relation"] = relation
        held = []
        if blockers:
            for h in self._conn.execute(_HOLDERS, {"pids": list(blockers)}):
                held.append({"pid": h[0], "applicationName": h[1], "user": h[2], "state": h[3],
                             "transactionSeconds": round(h[4], 3) if h[4] is not None else None})
        return {"lock": lock, "waitedSeconds": round(waited, 3) if waited is not None else None,
                "statement": statement, "heldBy": held}

    def take(self) -> dict[str, Any] | None:
        with self._lock:
            last, self._last = self._last, None
        return last
