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

import os
import random
import time
from collections.abc import Callable
from typing import Any

from schemagate.runner.db import (
    DEFAULT_URL_ENV,
    classify_error,
    redact,
    resolve_url,
)
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.config import (
    DEFAULT_LOCK_TIMEOUT,
    InputError,
    LockTimeoutError,
    MigrationFailedError,
    duration_seconds,
    isolated_imports,
    normalize_duration,
)
from schemagate.runner.inject.graph import split_revisions
from schemagate.runner.inject.lock import advisory_lock, backoff_delays
from schemagate.runner.inject.lockwait import LockWaitWatcher, describe
from schemagate.runner.inject.revisions import applied_revisions, plan
from schemagate.runner.result import Outcome, StepResult, now

DEFAULT_RETRIES = 5


def result_from_error(step: str, exc: BaseException, started: Any = None, data: dict[str, Any] | None = None,
                      default_reason: str = "InternalError") -> StepResult:
    outcome, reason, message = classify_error(exc, default_reason)
    r = StepResult(step=step, outcome=outcome, reason=reason, message=redact(message), data=dict(data or {}))
    if started is not None:
        r.started_at = started
    extra = getattr(exc, "data", None)
    if isinstance(extra, dict):
        r.data.update(extra)
    for attr in ("revision", "statement", "current_revision"):
        v = getattr(exc, attr, None)
        if v is not None:
            r.data["failedRevision" if attr == "revision" else
                   "failedStatement" if attr == "statement" else "currentRevision"] = (
                v[:300] if isinstance(v, str) else v)
    return r.finish()


def _poll_interval(lock_timeout: str | None) -> float:
    """How often the lock-wait watcher polls: 5 times per lock_timeout, between 20 ms and 200 ms."""
    return max(0.02, min(0.2, duration_seconds(lock_timeout) / 5)) if lock_timeout else 0.2


@isolated_imports
def migrate(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    lock_timeout: str | int | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | int | None = None,
    retries: int = DEFAULT_RETRIES,
    *,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    lock_wait: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] | None = None,
) -> StepResult:
    """``upgrade`` under the advisory lock, retried on lock timeouts; always returns a StepResult."""
    started = now()
    data: dict[str, Any] = {"fromRevision": None, "toRevision": None, "applied": [], "attempts": 0,
                            "lockTimeout": None, "statementTimeout": None, "lockWaits": []}
    say = log or (lambda s: None)
    try:
        if retries < 0:
            raise InputError(f"--retries: {retries} is negative")
        data["lockTimeout"] = normalize_duration(lock_timeout, "--lock-timeout")
        data["statementTimeout"] = normalize_duration(statement_timeout, "--statement-timeout")
        url = resolve_url(url, url_env)
        first = plan(config_path, target, url, url_env)  # validates everything before taking any lock
        data.update(fromRevision=first["current"], toRevision=first["current"], targetRevision=first["target"])
        delays = backoff_delays(retries, backoff, max_backoff)
        with advisory_lock(url, lock_wait, sleep=sleep,
                           on_wait=lambda pid: say(f"waiting for another migrator (pid {pid})")), \
                LockWaitWatcher(url, interval=_poll_interval(data["lockTimeout"])) as watcher:
            # re-plan under the lock: another migrator may have applied everything while we waited
            base = plan(config_path, target, url, url_env)
            data["fromRevision"] = data["toRevision"] = base["current"]
            attempt = 0
            while True:
                attempt += 1
                data["attempts"] = attempt
                try:
                    out = upgrade(config_path, target, url, url_env, lock_timeout, statement_timeout,
                                  on_revision=lambda r: say(f"applying revision {r}"))
                except LockTimeoutError as e:
                    wait = watcher.take()
                    data["lockWaits"].append({"attempt": attempt, "outcome": "LockTimeout", **(wait or {})})
                    why = f"; {describe(wait)}" if wait else ""
                    if attempt > len(delays):
                        raise LockTimeoutError(
                            f"{e} (gave up after {attempt} attempts{why}; retry later or raise --lock-timeout)",
                            revision=getattr(e, "revision", None),
                        ) from e
                    delay = delays[attempt - 1] * (0.8 + 0.4 * random.random())  # noqa: S311
                    say(f"lock timeout (attempt {attempt}{why}); retrying in {delay:.1f}s")
                    sleep(delay)
                    continue
                wait = watcher.take()
                if wait:
                    data["lockWaits"].append({"attempt": attempt, "outcome": "Applied", **wait})
                for a in out["applied"]:
                    if a not in data["applied"]:
                        data["applied"].append(a)
                data["toRevision"] = out["toRevision"]
                break
        # revisions committed by earlier attempts (before a lock timeout) count too
        data["applied"] = applied_revisions(config_path, url, base["pending"], split_revisions(data["toRevision"]))
        n = len(data["applied"])
        msg = (f"applied {n} revision{'s' if n != 1 else ''} ({', '.join(data['applied'])}); "
               f"the database is at revision {data['toRevision']}") if n else (
            f"nothing to apply: the database is already at revision {data['toRevision']}")
        if data["attempts"] > 1:
            msg += f" after {data['attempts']} attempts"
            last = next((w for w in reversed(data["lockWaits"]) if w["outcome"] == "LockTimeout"), None)
            if last and last.get("lock"):
                msg += f" (last lock timeout: {describe(last)})"
        return StepResult(step="migrate", outcome=Outcome.SUCCEEDED, reason="Migrated", message=msg,
                          data=data, started_at=started).finish()
    except Exception as e:  # noqa: BLE001
        if isinstance(e, MigrationFailedError) and e.current_revision is not None:
            data["toRevision"] = e.current_revision
        r = result_from_error("migrate", e, started, data, "MigrationFailed")
        return r
