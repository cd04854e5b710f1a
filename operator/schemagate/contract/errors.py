"""The one exception tree of schemagate, the translation of foreign exceptions, and the step boundary.

Every error carries a stable ``reason`` (the ``StepResult.reason``, the status condition's reason; the
troubleshooting table of the README lists them), an ``outcome`` (permanent or transient: a transient step is
retried with backoff), an ``actor`` (who must act to fix it) and, where one exists, the ``field`` (option, spec
field, file or check) it is about. Messages are redacted when the error is made::

    SchemagateError(reason, outcome)            InternalError         schemagate  a defect: report it
    ├── InvalidInput                            InvalidInput          user        an option/field/file is wrong; nothing changed
    │   ├── UnknownRevision                     UnknownRevision       user        target or database revision not in the scripts
    │   ├── MultipleHeads                       MultipleHeads         user        several heads where one is needed
    │   ├── DowngradeNotAllowed                 DowngradeNotAllowed   user        target below the database, downgrade not allowed
    │   └── WrongDatabase                       WrongDatabase         user        env.py connected elsewhere than told; nothing applied
    ├── AuthenticationFailed                    AuthenticationFailed  user        credentials rejected (SQLSTATE 28P01/28000)
    ├── MigrationFailed(revision, statement)    MigrationFailed       user        a revision failed; the database stays at the previous one
    ├── BackupFailed                            BackupFailed          database    pg_dump failed
    │   └── BackupCorrupt                       BackupCorrupt         schemagate  the dump cannot be read back
    ├── ShadowUnavailable                       ShadowUnavailable     database    no shadow database could be made or used
    ├── PrecheckIncomplete                      PrecheckIncomplete    user        checks that cannot be counted (ChecksFailed)
    │   └── stepwise.DataShadowTooLarge         DataShadowTooLarge    user        the data-carrying shadow would exceed its maxSize
    ├── Transient                               TransientError        database    retried with backoff (also 40001)
    │   ├── LockTimeout                         LockTimeout           database    lock_timeout (55P03) or deadlock (40P01)
    │   ├── DatabaseUnreachable                 DatabaseUnreachable   database    refused, unreachable, starting up (08*, 57P0*)
    │   └── LockLost                            LockLost              database    the advisory lock's session ended mid-run
    └── KubernetesApiError(status)              KubernetesApiError    database    an API request failed (5xx, ...); retried
        ├── NotFound                            NotFound              user        404: the object does not exist
        ├── Conflict                            Conflict              schemagate  409: stale resourceVersion or already exists
        ├── Forbidden                           Forbidden             user        401/403: RBAC denies it
        └── Invalid                             Invalid               user        422: rejected by validation or a patch test

The Kubernetes errors are made in one place, ``schemagate.k8s.translate`` (from the client's ``ApiException``).

Foreign exceptions (psycopg, psycopg2, SQLAlchemy, Alembic, OS errors) become one of these in one place,
``translate``; they are recognised by SQLSTATE and message, never by type, because this module is standard library
only (it runs in the application's image, where psycopg may be missing).

``StepBoundary`` is the one place where an exception becomes a finished ``StepResult``::

    with StepBoundary("migrate", default=MigrationFailed) as step:
        step.data["fromRevision"] = ...
        step.succeed("Migrated", "applied 2 revisions")
    return step.result
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from schemagate.contract.redact import redact
from schemagate.contract.stepresult import Outcome, StepResult, now


class Actor(str, enum.Enum):
    """Who must act to resolve an error."""

    USER = "user"  # the person who wrote the spec, the options, the revisions or the checks
    DATABASE = "database"  # the database's operator: availability, locks, disk, permissions
    SCHEMAGATE = "schemagate"  # a defect in schemagate: report it


class SchemagateError(Exception):
    """Root of the tree: ``reason`` (stable CamelCase), ``outcome``, ``actor``, optional ``field`` and ``data``.

    ``data`` is merged into the failed ``StepResult.data``. ``outcome`` defaults to the class's, and may be narrowed
    per instance (an unknown database name is ``DatabaseUnreachable`` but permanent).
    """

    reason: ClassVar[str] = "InternalError"
    default_outcome: ClassVar[Outcome] = Outcome.PERMANENT_ERROR
    actor: ClassVar[Actor] = Actor.SCHEMAGATE

    def __init__(self, message: str, *, field: str | None = None, outcome: Outcome | None = None,
                 **data: Any) -> None:
        super().__init__(redact(message))
        self.field = field
        self.outcome = outcome or self.default_outcome
        self.data = data

    @property
    def message(self) -> str:
        return str(self)


class InternalError(SchemagateError):
    """A defect in schemagate (an exception nothing else explains)."""


class InvalidInput(SchemagateError, ValueError):
    """Bad input: an option, spec field, environment variable, file or check is wrong. Nothing was changed."""

    reason = "InvalidInput"
    actor = Actor.USER


class UnknownRevision(InvalidInput):
    """The target revision, or the database's current revision, is not in the migration scripts."""

    reason = "UnknownRevision"


class MultipleHeads(InvalidInput):
    """Several heads where the target needs one (``data["heads"]`` lists them)."""

    reason = "MultipleHeads"


class DowngradeNotAllowed(InvalidInput):
    """The target revision is below the database's revision and downgrades were not allowed
    (``--allow-downgrade`` / ``spec.allowDowngrade``). Nothing was changed."""

    reason = "DowngradeNotAllowed"


class WrongDatabase(InvalidInput):
    """The application's env.py connected to another database than the one schemagate gave it (``sqlalchemy.url``
    and the ``--database-url-env`` variable): found inside env.py's own run, before any revision ran there, so
    nothing was applied. Its URL must come from one of those two."""

    reason = "WrongDatabase"


class AuthenticationFailed(SchemagateError):
    """The database rejected the credentials (SQLSTATE 28P01/28000, no pg_hba.conf entry, unknown role)."""

    reason = "AuthenticationFailed"
    actor = Actor.USER


class MigrationFailed(SchemagateError):
    """A revision failed: ``revision`` (None = env.py itself), ``statement`` (redacted), ``current_revision`` (where
    the database was left; with ``transaction_per_migration`` the revision before the failing one)."""

    reason = "MigrationFailed"
    actor = Actor.USER

    def __init__(self, message: str, revision: str | None = None, statement: str | None = None,
                 current_revision: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.revision = revision
        self.statement = statement
        self.current_revision = current_revision


class BackupFailed(SchemagateError):
    """pg_dump failed or did not finish; no backup was kept."""

    reason = "BackupFailed"
    actor = Actor.DATABASE


class BackupCorrupt(BackupFailed):
    """The new dump cannot be read back (pg_restore --list); it was removed."""

    reason = "BackupCorrupt"
    actor = Actor.SCHEMAGATE


class ShadowUnavailable(SchemagateError):
    """No shadow database could be created, copied into or used for the precheck."""

    reason = "ShadowUnavailable"
    actor = Actor.DATABASE


class PrecheckIncomplete(SchemagateError):
    """The precheck cannot count some checks in this configuration; the run is blocked (outcome ChecksFailed)."""

    reason = "PrecheckIncomplete"
    default_outcome = Outcome.CHECKS_FAILED
    actor = Actor.USER


class Transient(SchemagateError):
    """A failure that may pass: the step is retried with backoff. ``revision``/``statement`` name where it struck
    and ``current_revision`` where the database was left, when known (a connection lost mid-revision)."""

    reason = "TransientError"
    default_outcome = Outcome.TRANSIENT_ERROR
    actor = Actor.DATABASE

    def __init__(self, message: str, revision: str | None = None, statement: str | None = None,
                 current_revision: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.revision = revision
        self.statement = statement
        self.current_revision = current_revision


class LockTimeout(Transient):
    """A statement waited longer than ``lock_timeout`` (SQLSTATE 55P03), a deadlock (40P01), or another migrator
    held the advisory lock; ``revision``/``statement`` name where, when known."""

    reason = "LockTimeout"



class DatabaseUnreachable(Transient):
    """The server refused or dropped the connection, is starting up or shutting down, or has no free slot."""

    reason = "DatabaseUnreachable"


class LockLost(Transient):
    """The session holding the migration advisory lock ended (its backend was terminated, the server restarted):
    the run stopped before the next revision, since another migrator could now start."""

    reason = "LockLost"


# --------------------------------------------------------------------------------------------------------------
# Foreign exceptions


class KubernetesApiError(SchemagateError):
    """A Kubernetes API request failed; ``status`` is the HTTP status. Made only by ``schemagate.k8s.translate``
    (Kubernetes API conventions, "HTTP Status codes")."""

    reason = "KubernetesApiError"
    default_outcome = Outcome.TRANSIENT_ERROR
    actor = Actor.DATABASE  # the API server's operator: availability

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status)
        self.status = status


class NotFound(KubernetesApiError):
    """404: the object (or its namespace) does not exist."""

    reason = "NotFound"
    default_outcome = Outcome.PERMANENT_ERROR
    actor = Actor.USER


class Conflict(KubernetesApiError):
    """409: a stale ``resourceVersion`` (optimistic concurrency) or the object already exists: look again."""

    reason = "Conflict"
    actor = Actor.SCHEMAGATE


class Forbidden(KubernetesApiError):
    """401/403: this identity may not do it (RBAC, or no credentials)."""

    reason = "Forbidden"
    default_outcome = Outcome.PERMANENT_ERROR
    actor = Actor.USER


class Invalid(KubernetesApiError):
    """422: well formed but rejected (validation, or a JSON-patch ``test`` operation that failed)."""

    reason = "Invalid"
    default_outcome = Outcome.PERMANENT_ERROR
    actor = Actor.USER


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver exception SQLAlchemy wraps (``.orig``), causes and contexts; each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend([getattr(e, "orig", None), e.__cause__, e.__context__])
    return seen


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the first driver exception in the chain (psycopg 3 ``sqlstate``, psycopg2 ``pgcode``)."""
    for e in exception_chain(exc):
        for attr in ("sqlstate", "pgcode"):
            v = getattr(e, attr, None)
            if isinstance(v, str) and v:
                return v
        diag = getattr(e, "diag", None)
        v = getattr(diag, "sqlstate", None) if diag is not None else None
        if isinstance(v, str) and v:
            return v
    return None


def first_line(text: str, limit: int = 300) -> str:
    """The first non-blank line of ``text``, at most ``limit`` characters."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_text(exc: BaseException) -> str:
    """The most useful single line of an exception (the driver's message, without SQLAlchemy's boilerplate)."""
    for e in exception_chain(exc):
        if getattr(e, "orig", None) is None and e is not exc or type(e).__module__.startswith(("psycopg", "pg8000")):
            text = str(e)
            break
    else:
        text = str(exc)
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    return redact(first_line(text, 400))


_UNREACHABLE = (
    "connection refused", "could not connect", "could not translate host name", "name or service not known",
    "temporary failure in name resolution", "no route to host", "network is unreachable", "timeout expired",
    "timed out", "server closed the connection unexpectedly", "connection reset", "connection is bad",
    "the database system is starting up", "the database system is shutting down",
    "the database system is in recovery mode", "too many connections", "remaining connection slots are reserved",
    # a client tool's stderr has the server's message without its SQLSTATE (pg_dump, pg_restore, psql):
    # 57P01 admin_shutdown (pg_terminate_backend, a fast shutdown), 57P02 crash_shutdown, a lost connection
    "terminating connection due to administrator command", "terminating connection because of crash of another "
    "server process", "the database system is not yet accepting connections", "could not receive data from server",
    "connection to server was lost",
)
_AUTH = ("password authentication failed", "authentication failed", "no password supplied", "fe_sendauth",
         "no pg_hba.conf entry")


def _strip_conn_prefix(msg: str) -> str:
    return re.sub(r"^\([\w.]+\)\s*", "", msg)


def translate(exc: BaseException, default: type[SchemagateError] = InternalError) -> SchemagateError:
    """The schemagate error for any exception; a ``SchemagateError`` is returned as it is.

    By SQLSTATE (PostgreSQL Appendix A) and message: 28P01/28000, "password authentication failed", an unknown role
    -> ``AuthenticationFailed``; libpq's own connection-string errors (invalid port number, unknown option) ->
    ``InvalidInput``; 3D000 (unknown database) -> ``DatabaseUnreachable`` (permanent); 55P03
    (lock_not_available) or 40P01 (deadlock) -> ``LockTimeout``; 40001 (serialization_failure) -> ``Transient``; class 08, 57P0x, 53300 or a network message ->
    ``DatabaseUnreachable``; anything else -> ``default`` with the exception's first line. The message never holds a
    password; the original exception stays reachable as ``__cause__`` when the caller raises ``from``.
    """
    if isinstance(exc, SchemagateError):
        return exc
    state = sqlstate(exc)
    full = " ".join(str(e) for e in exception_chain(exc)).lower()
    msg = error_text(exc)
    if state in ("28P01", "28000") or any(k in full for k in _AUTH) or re.search(r'role "[^"]*" does not exist', full):
        return AuthenticationFailed("authentication failed: " + _strip_conn_prefix(msg), field="database URL")
    if re.search(r'invalid port number|invalid integer value "[^"]*" for connection option|invalid sslmode value'
                 r'|invalid connection option|missing "=" after', full):
        return InvalidInput("the database URL is not valid: " + _strip_conn_prefix(msg), field="database URL")
    if state == "3D000" or re.search(r'database "[^"]*" does not exist', full):
        return DatabaseUnreachable(_strip_conn_prefix(msg), outcome=Outcome.PERMANENT_ERROR, field="database URL")
    if state in ("55P03", "40P01") or "lock timeout" in full:
        return LockTimeout(msg)
    if state == "40001":  # serialization_failure: the transaction may succeed when run again
        return Transient(msg)
    if (state and state.startswith(("08", "57P0", "53300"))) or any(k in full for k in _UNREACHABLE):
        return DatabaseUnreachable("database unreachable: " + _strip_conn_prefix(msg))
    return default(msg)


# --------------------------------------------------------------------------------------------------------------
# The step boundary

_FAILURE_KEYS = {"revision": "failedRevision", "statement": "failedStatement", "current_revision": "currentRevision"}


def error_result(step: str, exc: BaseException, *, started: _dt.datetime | None = None,
                 data: dict[str, Any] | None = None,
                 default: type[SchemagateError] = InternalError) -> StepResult:
    """The finished failed ``StepResult`` of ``step`` for ``exc`` (translated): reason, outcome and redacted message
    of the error; ``data`` plus the error's ``data``, ``actor``, ``field`` and, for a failed revision,
    ``failedRevision``/``failedStatement``/``currentRevision``."""
    err = translate(exc, default)
    out = dict(data or {})
    out.update(err.data)
    out["actor"] = err.actor.value
    if err.field:
        out["field"] = err.field
    for attr, key in _FAILURE_KEYS.items():
        v = getattr(err, attr, None)
        if v is not None:
            out[key] = v[:300] if isinstance(v, str) else v
    r = StepResult(step=step, outcome=err.outcome, reason=err.reason, message=redact(err.message), data=out)
    if started is not None:
        r.started_at = started
    return r.finish()


class StepBoundary:
    """The one place where a step's exception becomes its finished ``StepResult`` (a context manager).

    ``data`` collects what the step learned so far (it is kept in the failed result too); ``succeed`` or ``finish``
    sets the result. Any ``Exception`` raised in the block is swallowed and turned into ``result`` by
    ``error_result`` with ``default`` for foreign exceptions; ``KeyboardInterrupt``/``SystemExit`` pass through.
    """

    def __init__(self, step: str, *, default: type[SchemagateError] = InternalError,
                 data: dict[str, Any] | None = None) -> None:
        self.step = step
        self.default = default
        self.data: dict[str, Any] = data if data is not None else {}
        self.started = now()
        self._result: StepResult | None = None
        self.error: SchemagateError | None = None

    def finish(self, outcome: Outcome, reason: str, message: str) -> StepResult:
        """Set the result (for outcomes other than an exception: ``Succeeded``, ``ChecksFailed``)."""
        self._result = StepResult(step=self.step, outcome=outcome, reason=reason, message=redact(message),
                                  data=self.data, started_at=self.started).finish()
        return self._result

    def succeed(self, reason: str, message: str) -> StepResult:
        return self.finish(Outcome.SUCCEEDED, reason, message)

    def set_result(self, result: StepResult) -> StepResult:
        """Use a result made elsewhere (a nested step's)."""
        self._result = result
        return result

    @property
    def result(self) -> StepResult:
        if self._result is None:
            raise InternalError(f"step {self.step} ended without a result")
        return self._result

    def __enter__(self) -> StepBoundary:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        self.error = translate(exc, self.default)
        self._result = error_result(self.step, exc, started=self.started, data=self.data, default=self.default)
        return True


_F = TypeVar("_F", bound=Callable[..., StepResult])


def step_boundary(step: str, default: type[SchemagateError] = InternalError) -> Callable[[_F], _F]:
    """Decorator form of ``StepBoundary`` for a function that returns its ``StepResult``: an exception becomes the
    failed result (without partial data)."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> StepResult:
            with StepBoundary(step, default=default) as b:
                b.set_result(fn(*args, **kwargs))
            return b.result

        return run  # type: ignore[return-value]

    return wrap
