"""Migrate: ``upgrade`` under the advisory lock, retried on lock timeouts with backoff; always a StepResult.

- one session advisory lock per database, polled with ``pg_try_advisory_lock`` on a dedicated autocommit
  connection (never a blocking ``pg_advisory_lock``: a blocked waiter deadlocks against CREATE INDEX
  CONCURRENTLY); a second migrator waits, then finds nothing pending;
- ``lock_timeout``/``statement_timeout`` for every session of the migration (``PGOPTIONS``);
- on a lock timeout (SQLSTATE 55P03) the whole upgrade is retried (completed revisions stay committed) with
  capped exponential backoff and jitter, ``retries`` times; each attempt reports the lock it waited for and the
  sessions holding it (``data.lockWaits``, observed with ``pg_blocking_pids``: ``runner/inject/lockwait.py``);
- a revision that fails half-way rolls back (``transaction_per_migration``): the result names the revision, the
  failing statement and the revision the database is left at.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemagate.contract import durations
from schemagate.contract.errors import (
    InvalidInput,
    LockTimeout,
    MigrationFailed,
    SchemagateError,
    StepBoundary,
    Transient,
    sqlstate,
)
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import Outcome, Plan, StepResult, UpgradeResult
from schemagate.contract.target import Target
from schemagate.runner.inject import leftovers
from schemagate.runner.inject.apply import ServerIdentity, UnexpectedCurrent, server_identity, upgrade
from schemagate.runner.inject.config import (
    DEFAULT_LOCK_TIMEOUT,
    isolated_imports,
)
from schemagate.runner.inject.graph import join_revisions, split_revisions
from schemagate.runner.inject.lock import HeldLock, advisory_lock, backoff_delays
from schemagate.runner.inject.lockwait import LockWaitWatcher, describe
from schemagate.runner.inject.revisions import applied_revisions, confirm, plan

DEFAULT_RETRIES = 5


def _poll_interval(lock_timeout: str | None) -> float:
    """How often the lock-wait watcher polls: 5 times per lock_timeout, between 20 ms and 200 ms."""
    return max(0.02, min(0.2, durations.to_seconds(lock_timeout) / 5)) if lock_timeout else 0.2


def _watch_after(lock_timeout: str | None) -> float:
    """How long into the run the lock-wait watcher connects: half the lock_timeout, so it still sees a wait that
    started at once before that wait times out, and a migration done sooner opens no extra connection."""
    return durations.to_seconds(lock_timeout) / 2 if lock_timeout else 0.2


class _Cleanup:
    """Leftovers of failed attempts (``schemagate.runner.inject.leftovers``): the INVALID indexes that the index
    builds the attempts ran (recorded while they run) left, dropped before the next attempt and recorded in
    ``data["leftovers"]``. A leftover of an earlier process (a previous Job) shows up when the attempt's build
    fails on its name ("already exists", retried once at once) or, for REINDEX, after the attempt succeeds."""

    def __init__(self, url: str, lock_timeout: str | None, data: dict[str, Any], say: Callable[[str], None]):
        self.url, self.lock_timeout, self.data, self.say = url, lock_timeout, data, say
        self.builds = leftovers.IndexBuilds()
        self.found: list[leftovers.Leftover] = []

    def look(self, conn: Any = None) -> list[leftovers.Leftover]:
        new = [x for x in leftovers.find(self.url, self.builds.builds, conn) if x not in self.found]
        for x in new:
            self.found.append(x)
            self.data.setdefault("leftovers", []).append(x.as_dict(dropped=False))
            self.say(f"found INVALID {x.display()} left by an earlier attempt of revision {x.revision}")
        return new

    def drop_pending(self, attempt: int) -> None:
        """Drop what was found and not yet dropped. Raises ``LockTimeout`` when writers still hold the table."""
        todo = [(i, x) for i, x in enumerate(self.found) if not self.data["leftovers"][i]["dropped"]]
        if not todo:
            return
        try:
            leftovers.drop(self.url, [x for _, x in todo], self.lock_timeout)
        except Exception as e:  # noqa: BLE001
            if sqlstate(e) == "55P03":
                raise LockTimeout(f"DROP INDEX CONCURRENTLY of the leftover {todo[0][1].display()} hit "
                                       f"lock_timeout; the database is unchanged") from e
            raise
        for i, x in todo:
            self.data["leftovers"][i].update(dropped=True, attempt=attempt)
            self.say(f"dropped INVALID {x.display()} (DROP INDEX CONCURRENTLY) before attempt {attempt}")

    def committed_before(self, revision: str | None) -> None:
        """Record what the failed ``revision`` committed on its own before failing (a retry runs it again)."""
        for stmt in self.builds.committed_by(revision):
            if leftovers.parse_index_build(stmt) is not None:
                continue  # index builds: handled as leftovers
            entry = {"revision": revision, "statement": redact(" ".join(stmt.split()))[:200]}
            if entry not in self.data.setdefault("committedBeforeFailure", []):
                self.data["committedBeforeFailure"].append(entry)
                self.say(f"revision {revision} committed `{entry['statement']}` on its own before failing")

    def after_success(self, attempt: int, conn: Any = None) -> None:
        """A build that succeeded may still find the leftover of an earlier process (REINDEX CONCURRENTLY makes
        ``_ccnew1`` next to an old INVALID ``_ccnew``): drop those too, or name them when writers hold the table.
        ``conn``: the advisory-lock connection to look on (no connection of its own)."""
        if self.look(conn):
            try:
                self.drop_pending(attempt)
            except LockTimeout as e:
                self.say(f"leftover not dropped: {e}")

    def sentence(self) -> str:
        """A message clause naming the leftovers and what was done, or ''."""
        items = self.data.get("leftovers") or []
        done = [x for x in items if x["dropped"]]
        left = [x for x in items if not x["dropped"]]
        out = ""
        committed = self.data.get("committedBeforeFailure") or []
        if committed:
            out += ("; committed on their own (outside a transaction) before the failure, so run again by a retry: "
                    + ", ".join(f"revision {x['revision']}: `{x['statement'][:120]}`" for x in committed[:3]))
        if done:
            out += ("; dropped INVALID index(es) " + ", ".join(f"{x['index']} (table {x['table']}, schema "
                    f"{x['schema']})" for x in done) + " left by a failed attempt (DROP INDEX CONCURRENTLY)")
        if left:
            out += ("; INVALID index(es) " + ", ".join(f"{x['index']} (table {x['table']}, schema {x['schema']})"
                    for x in left) + " left behind, dropped by the next attempt before it applies revision "
                    + ", ".join(sorted({str(x["revision"]) for x in left})))
        return out


@dataclass
class _Run:
    """What every attempt of one ``migrate`` call shares."""

    target: Target  # its URL resolved
    lock_timeout: str | None
    statement_timeout: str | None
    data: dict[str, Any]
    cleanup: _Cleanup
    say: Callable[[str], None]
    planned: Plan | None = None  # the plan made under the lock: the first attempt does not plan again
    lock_session: Callable[[], Any] | None = None  # where the advisory lock's connection comes from
    lock: HeldLock | None = None
    server: ServerIdentity | None = None  # the database the lock is held on: env.py must migrate that one
    pending: list[str] | None = None  # what was pending when the lock was first held

    @property
    def url(self) -> str:
        """The database URL (``target`` is resolved)."""
        assert self.target.url is not None
        return self.target.url


def _attempt(run: _Run, attempt: int) -> UpgradeResult:
    """One upgrade attempt: leftovers dropped first, index builds recorded while it runs, looked for on failure."""
    run.cleanup.drop_pending(attempt)

    def on_revision(r: str) -> None:
        if run.lock is not None:
            run.lock.check(before=r)  # LockLost: stop before this revision
        run.cleanup.builds.on_revision(r)
        run.say(f"applying revision {r}")

    try:
        with run.cleanup.builds.watch():
            planned = run.planned if attempt == 1 else None
            try:  # env.py checks that it reads the planned version rows before applying anything
                return upgrade(run.target, run.lock_timeout, run.statement_timeout, on_revision=on_revision,
                               planned=planned, expect_current=planned is not None, expect_server=run.server)
            except UnexpectedCurrent as e:  # the plan's version rows are not the ones env.py reads: plan with it
                run.say(f"env.py reads revision {e.current or 'base'}, not the planned "
                        f"{e.expected or 'base'}: planning again through env.py")
                fresh = plan(run.target)
                if run.planned is not None:
                    run.planned.update(fresh)  # in place: the caller's plan (verify reads its version table)
                else:
                    run.planned = fresh
                run.pending = list(fresh["pending"])
                run.data["fromRevision"] = run.data["toRevision"] = run.planned["current"]
                return upgrade(run.target, run.lock_timeout, run.statement_timeout, on_revision=on_revision,
                               planned=run.planned, expect_server=run.server)
    except (LockTimeout, MigrationFailed):
        run.cleanup.look()
        run.cleanup.committed_before(run.cleanup.builds.revision)  # the revision running when it failed
        raise


def _after_lock_timeout(run: _Run, e: LockTimeout, wait: dict[str, Any] | None, attempt: int,
                        delays: list[float], sleep: Callable[[float], None]) -> None:
    """Record the lock wait, then back off (capped exponential, with jitter) or give up naming the leftovers."""
    run.data["lockWaits"].append({"attempt": attempt, "outcome": "LockTimeout", **(wait or {})})
    why = f"; {describe(wait)}" if wait else ""
    if attempt > len(delays):
        raise LockTimeout(
            f"{e} (gave up after {attempt} attempts{why}; retry later or raise --lock-timeout)"
            f"{run.cleanup.sentence()}",
            revision=e.revision,
        ) from e
    delay = delays[attempt - 1] * (0.8 + 0.4 * random.random())  # noqa: S311
    run.say(f"lock timeout (attempt {attempt}{why}); retrying in {delay:.1f}s")
    sleep(delay)


def _until_applied(run: _Run, watcher: LockWaitWatcher, delays: list[float],
                   sleep: Callable[[float], None]) -> None:
    """Attempts until the upgrade succeeds: lock timeouts back off and retry; a build that fails because the
    leftover of an earlier process holds its name is retried at once, once, after dropping it."""
    attempt = 0
    duplicate_retried = False
    while True:
        attempt += 1
        run.data["attempts"] = attempt
        try:
            out = _attempt(run, attempt)
        except LockTimeout as e:
            _after_lock_timeout(run, e, watcher.take(), attempt, delays, sleep)
            continue
        except MigrationFailed as e:
            if not duplicate_retried and leftovers.is_duplicate_relation(e) and any(
                    not x["dropped"] for x in run.data.get("leftovers") or []):
                duplicate_retried = True
                continue
            raise
        wait = watcher.take()
        if wait:
            run.data["lockWaits"].append({"attempt": attempt, "outcome": "Applied", **wait})
        run.data["toRevision"] = out["toRevision"]
        if run.planned is not None:  # env.py named its version table: a plan from the catalog holds
            confirm(run.planned, out.get("contextVersionTable"))
        run.cleanup.after_success(attempt, run.lock.conn if run.lock is not None else None)
        return


@isolated_imports
def migrate(
    target: Target,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | None = None,
    retries: int = DEFAULT_RETRIES,
    *,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    lock_wait: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
    planned: Plan | None = None,
    lock_session: Callable[[], Any] | None = None,
) -> StepResult:
    """``upgrade`` of ``target`` under the advisory lock, retried on lock timeouts; INVALID indexes the pending
    revisions' own concurrent builds left are dropped before each attempt (``data.leftovers``); always returns a
    StepResult (every error through ``StepBoundary``, ``MigrationFailed`` for foreign exceptions).
    ``lock_session``: a DB-API connection factory for the advisory lock (the caller's shared session of the real
    database, ``libpq.shared_connections``), else the lock opens its own connection."""
    data: dict[str, Any] = {"fromRevision": None, "toRevision": None, "applied": [], "attempts": 0,
                            "lockTimeout": None, "statementTimeout": None, "lockWaits": []}  # MigrateData
    run: _Run | None = None
    with StepBoundary("migrate", default=MigrationFailed, data=data) as step:
        run = _prepare(target, lock_timeout, statement_timeout, retries, data, log or (lambda s: None), planned)
        run.lock_session = lock_session
        delays = backoff_delays(retries, backoff, max_backoff)
        for transient_attempt in range(1, len(delays) + 2):
            try:
                _under_lock(run, lock_wait, sleep, delays, first_attempt=transient_attempt == 1)
                break
            except LockTimeout:
                raise  # already retried with backoff inside
            except Transient as e:  # connection lost, server restarted, serialization failure, lock lost
                _after_transient(run, e, transient_attempt, delays, sleep)
        # revisions committed by earlier attempts (before a lock timeout or a lost connection) count too
        data["applied"] = applied_revisions(run.target.project, run.target.url, run.pending or [],
                                            split_revisions(data["toRevision"]))
        step.set_result(_succeeded(data, step.started, run.cleanup))
    if step.error is not None:
        _explain_failure(step.result, step.error, run)
    return step.result


def _prepare(target: Target, lock_timeout: str | None, statement_timeout: str | None, retries: int,
             data: dict[str, Any], say: Callable[[str], None], planned: Plan | None) -> _Run:
    """Validate everything before taking any lock (options, URL, plan: ``planned`` is the caller's plan of this
    run, not recomputed) and record the timeouts as given and the revisions in ``data``. Raises ``InvalidInput``
    and the plan's errors."""
    if retries < 0:
        raise InvalidInput(f"--retries: {retries} is negative", field="--retries")
    lock_pg = durations.to_postgres(lock_timeout, "--lock-timeout")  # what PostgreSQL receives (ms)
    durations.to_postgres(statement_timeout, "--statement-timeout")
    data["lockTimeout"] = lock_timeout.strip() if lock_timeout else None  # as given
    data["statementTimeout"] = statement_timeout.strip() if statement_timeout else None
    target = target.resolved()
    assert target.url is not None
    first = planned if planned is not None else plan(target)
    data.update({"fromRevision": first["current"], "toRevision": first["current"],
                 "targetRevision": first["target"]})
    cleanup = _Cleanup(target.url, lock_pg, data, say)
    return _Run(target, lock_timeout, statement_timeout, data, cleanup, say,
                planned=first)  # under the lock: kept when the version rows are still the planned ones


def _explain_failure(result: StepResult, error: SchemagateError, run: _Run | None) -> None:
    """A failed migration's result states where the database really is (``toRevision``) and what was done about
    leftovers of failed attempts (not for a lock timeout: its message names them already)."""
    if isinstance(error, (MigrationFailed, Transient)) and error.current_revision is not None:
        result.data["toRevision"] = error.current_revision
    if run is not None and not isinstance(error, LockTimeout) and run.cleanup.sentence():
        result.message = redact(result.message + run.cleanup.sentence())


def _under_lock(run: _Run, lock_wait: float, sleep: Callable[[float], None], delays: list[float], *,
                first_attempt: bool) -> None:
    """Take the advisory lock, re-plan under it (another migrator may have applied everything meanwhile, or an
    earlier attempt committed some revisions) and apply until done; the lock is checked before each revision."""
    with advisory_lock(run.url, lock_wait, sleep=sleep, creator=run.lock_session,
                       on_wait=lambda pid: run.say(f"waiting for another migrator (pid {pid})")) as held, \
            LockWaitWatcher(run.url, interval=_poll_interval(run.data["lockTimeout"]),
                            connect_after=_watch_after(run.data["lockTimeout"])) as watcher:
        run.lock = held
        run.server = server_identity(held.conn)
        try:
            earlier = run.planned
            if earlier is not None and _version_rows(held.conn, earlier) == earlier["current"]:
                base = earlier  # the version rows are the planned ones: the same plan (no env.py run)
            else:
                base = run.planned = plan(run.target)
            if first_attempt:
                run.data["fromRevision"] = base["current"]
                run.pending = list(base["pending"])
            run.data["toRevision"] = base["current"]
            _until_applied(run, watcher, delays, sleep)
        finally:
            run.lock = None


_UNKNOWN = "\x00unknown"  # the version rows could not be read: plan again through env.py


def _version_rows(conn: Any, p: Plan) -> str | None:
    """The version rows (``join_revisions`` form) of the version table the plan's env.py configured, read with SQL
    on the advisory-lock connection, or ``_UNKNOWN``. A plan depends only on these rows (and the scripts and the
    target, which do not change within one run), so equal rows mean an equal plan: the re-plan under the lock then
    needs no env.py run. The unqualified name resolves on the role's ``search_path``, as in ``verify``."""
    import sqlalchemy as sa

    try:
        schema, name = p.get("versionTableSchema"), str(p.get("versionTable") or "alembic_version")
        if schema:
            reg = conn.scalar(sa.text("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON "
                                      "n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = :n"),
                              {"s": schema, "n": name})
        else:
            reg = conn.scalar(sa.text("SELECT to_regclass(quote_ident(:n))::text"), {"n": name})
        if reg is None:
            return None  # no version table: base, as Alembic reads it
        rows = conn.execute(sa.text(f"SELECT version_num FROM {reg}")).scalars().all()  # noqa: S608 - regclass text
        return join_revisions(str(r) for r in rows)
    except Exception:  # noqa: BLE001 - then env.py reads them
        return _UNKNOWN


def _after_transient(run: _Run, e: Transient, attempt: int, delays: list[float],
                     sleep: Callable[[float], None]) -> None:
    """Record a transient failure (``data.transientRetries``) and back off, or give up (re-raise) when the retries
    are spent. The message states where the database really is."""
    if e.current_revision is not None:
        run.data["toRevision"] = e.current_revision
    if e.outcome != Outcome.TRANSIENT_ERROR:  # e.g. an unknown database name: permanent
        raise e
    run.data.setdefault("transientRetries", []).append(
        {"attempt": attempt, "reason": e.reason, "message": redact(str(e))[:300],
         "revision": e.revision, "currentRevision": e.current_revision})
    if attempt > len(delays):
        raise e
    delay = delays[attempt - 1] * (0.8 + 0.4 * random.random())  # noqa: S311
    run.say(f"{e.reason} ({redact(str(e))[:200]}); retrying in {delay:.1f}s")
    sleep(delay)


def _succeeded(data: dict[str, Any], started: datetime.datetime, cleanup: _Cleanup) -> StepResult:
    n = len(data["applied"])
    msg = (f"applied {n} revision{'s' if n != 1 else ''} ({', '.join(data['applied'])}); "
           f"the database is at revision {data['toRevision']}") if n else (
        f"nothing to apply: the database is already at revision {data['toRevision']}")
    if data["attempts"] > 1:
        msg += f" after {data['attempts']} attempts"
        last = next((w for w in reversed(data["lockWaits"]) if w["outcome"] == "LockTimeout"), None)
        if last and last.get("lock"):
            msg += f" (last lock timeout: {describe(last)})"
    msg += cleanup.sentence()
    return StepResult(step="migrate", outcome=Outcome.SUCCEEDED, reason="Migrated", message=msg,
                      data=data, started_at=started).finish()
