"""The migrate step, as the operator's image and ``schemagate migrate`` run it.

The logic lives in the injected runner (``schemagate.runner.app``), because in Kubernetes the migrate Job runs in
the *application's* image (``python -m schemagate.runner.app migrate``): this module is the same code with the
operator-side defaults, so both paths behave identically:

- one session advisory lock per database, polled with ``pg_try_advisory_lock`` on a dedicated autocommit
  connection (never a blocking ``pg_advisory_lock``: a blocked waiter deadlocks against CREATE INDEX
  CONCURRENTLY); a second migrator waits, then finds nothing pending;
- ``lock_timeout``/``statement_timeout`` for every session of the migration (``PGOPTIONS``);
- on a lock timeout (SQLSTATE 55P03) the whole upgrade is retried (completed revisions stay committed) with
  capped exponential backoff and jitter, ``retries`` times;
- a revision that fails half-way rolls back (``transaction_per_migration``): the result names the revision, the
  failing statement and the revision the database is left at.

Public API: ``migrate(config_path, target="head", url=None, url_env="DATABASE_URL", lock_timeout="5s",
statement_timeout=None, retries=5, *, backoff=1.0, max_backoff=30.0, lock_wait=600.0, log=None) -> StepResult``.
"""

from __future__ import annotations

from schemagate.runner.app import (
    ADVISORY_LOCK_KEY,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_RETRIES,
    LockTimeoutError,
    MigrationFailedError,
    advisory_lock,
    backoff_delays,
    migrate,
    normalize_duration,
    plan,
    upgrade,
)

__all__ = [
    "ADVISORY_LOCK_KEY",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_RETRIES",
    "LockTimeoutError",
    "MigrationFailedError",
    "advisory_lock",
    "backoff_delays",
    "migrate",
    "normalize_duration",
    "plan",
    "upgrade",
]
