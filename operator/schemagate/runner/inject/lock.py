"""Lock and backoff: the session advisory lock that serialises migrators of one database, and the capped
exponential backoff between retries after a lock timeout."""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from schemagate.contract.errors import LockLost, LockTimeout, translate
from schemagate.runner.inject.config import engine_for

ADVISORY_LOCK_KEY = zlib.crc32(b"schemagate.dev/migrate")  # one lock space per database (pg_locks.database)


class HeldLock:
    """The held migration advisory lock: ``check()`` before each revision proves it is still held."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    @property
    def conn(self) -> sa.Connection:
        """The lock's own autocommit connection (idle between checks: catalog questions may use it)."""
        return self._conn

    def check(self, before: str | None = None) -> None:
        """Raise ``LockLost`` when the lock's session has ended or no longer holds the lock (its backend was
        terminated, the server restarted): another migrator could start, so the run must not go on. ``before``
        names the revision about to run, for the message."""
        try:
            held = self._conn.scalar(sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid = 0 AND objid = CAST(:k AS bigint)::oid)"),
                {"k": ADVISORY_LOCK_KEY})
        except Exception as e:  # noqa: BLE001 - any driver error on that session means the lock is gone
            held, why = False, f" ({translate(e).message})"
        else:
            why = ""
        if not held:
            where = f" before revision {before}" if before else ""
            raise LockLost(f"the migration advisory lock {ADVISORY_LOCK_KEY} was lost{why}: the run stopped{where} "
                           "and is retried once the lock is held again")


@contextlib.contextmanager
def advisory_lock(
    url: str, wait_seconds: float = 600.0, poll_seconds: float = 0.5, sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[int | None], None] | None = None, creator: Callable[[], Any] | None = None,
) -> Iterator[HeldLock]:
    """Hold the migration advisory lock (session level, on a dedicated autocommit connection); yields a
    ``HeldLock`` whose ``check()`` the caller runs before each revision.

    Polls ``pg_try_advisory_lock`` rather than blocking in ``pg_advisory_lock``: a blocked waiter holds a snapshot
    that CREATE INDEX CONCURRENTLY on the holder's side would wait for (deadlock or hang). ``creator``: the
    DB-API connection to hold it on (a session the caller shares between its steps), else a new one.
    """
    engine = engine_for(url, creator=creator)
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as e:  # the driver's connection errors: translated, re-raised
        engine.dispose()
        raise translate(e) from e
    try:
        conn.exec_driver_sql("SET lock_timeout = 0; SET statement_timeout = 0")
        deadline = time.monotonic() + wait_seconds
        while not conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}):
            holder = conn.scalar(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid = 0 AND objid = CAST(:k AS bigint)::oid LIMIT 1"
                ),
                {"k": ADVISORY_LOCK_KEY},
            )
            if on_wait is not None:
                on_wait(holder)
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"another migration of this database is running (advisory lock {ADVISORY_LOCK_KEY} held by "
                    f"backend pid {holder}); waited {wait_seconds:g}s, nothing was changed"
                )
            sleep(poll_seconds)
        try:
            yield HeldLock(conn)
        finally:
            with contextlib.suppress(Exception):
                conn.scalar(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        engine.dispose()


def backoff_delays(retries: int, base: float = 1.0, cap: float = 30.0) -> list[float]:
    """Capped exponential backoff (without jitter): base, 2*base, 4*base, ... <= cap; ``retries`` values."""
    return [min(cap, base * (2**i)) for i in range(max(0, retries))]
