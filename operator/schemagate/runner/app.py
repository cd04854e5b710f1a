"""The injected runner: what runs *inside the application's image* (``python -m schemagate.runner.app ...``).

It imports only the standard library, SQLAlchemy, Alembic and ``schemagate.runner.result`` /
``schemagate.runner.db`` (both standard library only); an import-linter contract in ``pyproject.toml`` enforces
it. The application's own ``env.py`` runs unchanged: it reads the URL from the environment variable ``url_env``
(set here for the duration of a call) or from ``sqlalchemy.url`` (also set), and ``lock_timeout`` /
``statement_timeout`` reach every session the migration opens through ``PGOPTIONS`` (read by libpq, so psycopg and
psycopg2; not asyncpg).

Stable API (other steps call these; keep the signatures):

``plan(config_path, target="head", url=None, url_env="DATABASE_URL") -> dict``
    ``{"current": str|None, "target": resolved id, "pending": [ids in apply order], "heads": [ids]}``.
    Raises ``MultipleHeadsError`` (names the heads) when ``target`` is head(s) and the scripts have several
    heads, ``UnknownRevisionError`` for an unknown target (or a database revision the scripts do not know),
    ``InvalidInputError`` for a downgrade target or a missing config. The URL is only used through env.py.

``upgrade(config_path, target="head", url=None, url_env="DATABASE_URL", lock_timeout="5s",
statement_timeout=None, *, render_sql=False) -> dict``
    Runs ``alembic upgrade`` programmatically. Returns ``{"fromRevision", "toRevision", "applied": [ids],
    "pending": [ids], "lockTimeout", "statementTimeout", "sql": str|None}`` (``sql``: the offline rendering of the
    pending range, when ``render_sql``). On failure raises ``MigrationFailedError`` (``.revision``,
    ``.statement``, ``.current_revision``: the message names the revision and the failing statement; with
    ``transaction_per_migration`` the database stays at the previous revision), or ``LockTimeoutError``
    (transient) when a statement hit ``lock_timeout``. No advisory lock and no retries here: see ``migrate``.

``migrate(config_path, target, url, url_env, lock_timeout, statement_timeout, retries=5, ...) -> StepResult``
    ``upgrade`` serialised by a session advisory lock (polled with ``pg_try_advisory_lock`` on a dedicated
    autocommit connection: a blocking wait deadlocks against CREATE INDEX CONCURRENTLY) and retried on lock
    timeouts with capped exponential backoff.

``shadow_upgrade(config_path, target, url, url_env, workdir=None) -> dict``
    ``upgrade(render_sql=True)`` on a shadow database; writes ``workdir/pending.sql`` and
    ``workdir/shadow-upgrade.json`` when ``workdir`` is given.

CLI (prints exactly one StepResult JSON on stdout, writes ``--termination-log`` / ``$SCHEMAGATE_TERMINATION_LOG``)::

    python -m schemagate.runner.app migrate        -c alembic.ini --target head --database-url-env DATABASE_URL
    python -m schemagate.runner.app shadow-upgrade -c alembic.ini --target head --database-url-env SHADOW_URL \
        --workdir /work
    python -m schemagate.runner.app plan           -c alembic.ini --target head
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import random
import re
import sys
import sysconfig
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import util as alembic_util
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from schemagate.runner.db import (
    DEFAULT_URL_ENV,
    InvalidInputError,  # noqa: F401 - re-exported: resolve_url raises it
    classify_error,
    error_text,
    redact,
    resolve_url,
    sqlalchemy_url,
)
from schemagate.runner.result import Outcome, StepResult, now, write_termination_log

DEFAULT_LOCK_TIMEOUT = "5s"
DEFAULT_RETRIES = 5
ADVISORY_LOCK_KEY = zlib.crc32(b"schemagate.dev/migrate")  # one lock space per database (pg_locks.database)
APPLICATION_NAME = "schemagate-runner"


class RunnerError(Exception):
    """An error with a stable reason (docs/architecture.md) and an outcome; the text is already redacted."""

    reason = "InternalError"
    outcome = Outcome.PERMANENT_ERROR

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(redact(message))
        self.data = data


class MultipleHeadsError(RunnerError):
    reason = "MultipleHeads"


class UnknownRevisionError(RunnerError):
    reason = "UnknownRevision"


class InputError(RunnerError):
    reason = "InvalidInput"


class LockTimeoutError(RunnerError):
    reason = "LockTimeout"
    outcome = Outcome.TRANSIENT_ERROR


class MigrationFailedError(RunnerError):
    reason = "MigrationFailed"

    def __init__(
        self, message: str, revision: str | None = None, statement: str | None = None,
        current_revision: str | None = None, **data: Any,
    ) -> None:
        super().__init__(message, **data)
        self.revision = revision
        self.statement = statement
        self.current_revision = current_revision


class ClassifiedError(RunnerError):
    """A database error classified by ``classify_error`` (DatabaseUnreachable, AuthenticationFailed, ...)."""

    def __init__(self, outcome: Outcome, reason: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.reason = reason


# --------------------------------------------------------------------------------------------------------------
# Configuration and environment

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min|h)?\s*$")


def normalize_duration(value: str | int | float | None, option: str = "timeout") -> str | None:
    """``"5s"``, ``"500ms"``, ``"2min"``, ``"0"`` or a number of milliseconds -> PostgreSQL text; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise InputError(f"{option}: {value!r} is negative")
        return f"{int(value)}ms"
    m = _DURATION.match(str(value))
    if not m:
        raise InputError(f"{option}: {value!r} is not a duration (examples: 500ms, 5s, 2min, 0)")
    return f"{m.group(1)}{m.group(2) or 'ms'}"


def duration_seconds(value: str | None) -> float:
    if not value:
        return 0.0
    m = _DURATION.match(value)
    assert m
    n = int(m.group(1))
    return n * {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}[m.group(2) or "ms"]


def make_config(config_path: str | os.PathLike[str], url: str | None = None) -> Config:
    path = Path(config_path)
    if not path.is_file():
        raise InputError(f"-c/--config: Alembic configuration {str(path)!r} not found")
    cfg = Config(str(path))
    loc = cfg.get_main_option("script_location")
    if not loc:
        raise InputError(f"-c/--config: {str(path)!r} has no script_location in [alembic]")
    if ":" not in loc and not os.path.isabs(loc) and not Path(loc).exists() and (path.parent / loc).exists():
        # a relative script_location is relative to the working directory; accept one relative to the ini too
        cfg.set_main_option("script_location", str((path.parent / loc).resolve()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["schemagate"] = True
    return cfg


def load_script(cfg: Config) -> ScriptDirectory:
    try:
        return ScriptDirectory.from_config(cfg)
    except alembic_util.CommandError as e:
        raise InputError(f"cannot load the migration scripts: {e}") from e


@contextlib.contextmanager
def session_environment(
    url: str | None, url_env: str | None, lock_timeout: str | None = None, statement_timeout: str | None = None
) -> Iterator[None]:
    """Set ``url_env`` (the URL for env.py) and ``PGOPTIONS`` (timeouts for every libpq session) temporarily."""
    saved = {k: os.environ.get(k) for k in (url_env or DEFAULT_URL_ENV, "PGOPTIONS", "PGAPPNAME")}
    try:
        if url:
            os.environ[url_env or DEFAULT_URL_ENV] = url
        opts = [o for o in [os.environ.get("PGOPTIONS", "")] if o]
        if lock_timeout is not None:
            opts.append(f"-c lock_timeout={lock_timeout}")
        if statement_timeout is not None:
            opts.append(f"-c statement_timeout={statement_timeout}")
        if opts:
            os.environ["PGOPTIONS"] = " ".join(opts)
        os.environ.setdefault("PGAPPNAME", APPLICATION_NAME)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the schemagate package itself
    return tuple(os.path.join(os.path.abspath(d), "") for d in dirs if d)


def _forget_application_modules(before: set[str]) -> None:
    """Drop modules imported since ``before`` that live outside the standard library and installed packages."""
    libs = _library_dirs()
    for name in set(sys.modules) - before:
        f = getattr(sys.modules.get(name), "__file__", None)
        if f and not os.path.abspath(f).startswith(libs):
            sys.modules.pop(name, None)


_F = TypeVar("_F", bound=Callable[..., Any])


def isolated_imports(fn: _F) -> _F:
    """Run ``fn`` so that the application modules its env.py and revisions import (e.g. ``myapp.models``) and
    the ``sys.path`` entries Alembic prepends (``prepend_sys_path``) are gone afterwards: one process can then run
    several Alembic projects whose packages share a name, and repeated runs do not grow ``sys.path``."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        modules_before = set(sys.modules)
        path_before = list(sys.path)
        try:
            return fn(*args, **kwargs)
        finally:
            _forget_application_modules(modules_before)
            sys.path[:] = path_before

    return run  # type: ignore[return-value]


def engine_for(url: str, connect_timeout: int = 10) -> sa.Engine:
    return sa.create_engine(
        sqlalchemy_url(url),
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": connect_timeout, "application_name": APPLICATION_NAME},
    )


def _reraise_classified(exc: BaseException, default_reason: str = "InternalError") -> None:
    if isinstance(exc, RunnerError):
        raise exc
    outcome, reason, message = classify_error(exc, default_reason)
    raise ClassifiedError(outcome, reason, message) from exc


# --------------------------------------------------------------------------------------------------------------
# Plan


def resolve_target(script: ScriptDirectory, target: str | None) -> tuple[str, list[str]]:
    heads = list(script.get_heads())
    target = (target or "head").strip()
    if not heads:
        raise InputError("the migration scripts have no revisions")
    if target in ("head", "heads"):
        if len(heads) > 1:
            raise MultipleHeadsError(
                f"the migration scripts have {len(heads)} heads ({', '.join(sorted(heads))}): merge them "
                f"(alembic merge heads) or set the target to one revision; nothing was changed",
                heads=sorted(heads),
            )
        return heads[0], heads
    if target == "base":
        raise InputError("--target base would downgrade; schemagate only upgrades")
    try:
        rev = script.get_revision(target)
    except alembic_util.CommandError as e:
        raise UnknownRevisionError(
            f"unknown target revision {target!r} ({e}); heads: {', '.join(sorted(heads))}; nothing was changed"
        ) from e
    if rev is None:
        raise UnknownRevisionError(f"unknown target revision {target!r}; nothing was changed")
    return rev.revision, heads


def current_heads(cfg: Config, script: ScriptDirectory) -> tuple[str, ...]:
    """The database's current revision(s), read through the application's own env.py (its version table)."""
    captured: dict[str, tuple[str, ...]] = {}

    def fn(rev: Any, context: Any) -> list[Any]:
        captured["heads"] = tuple(context.get_current_heads())
        return []

    with EnvironmentContext(cfg, script, fn=fn, dont_mutate=True):
        script.run_env()
    return captured.get("heads", ())


def _pending(script: ScriptDirectory, target: str, current: str | None) -> list[str]:
    if current == target:
        return []
    if current is not None:
        try:
            script.get_revision(current)
        except alembic_util.CommandError as e:
            raise UnknownRevisionError(
                f"the database is at revision {current!r}, which the migration scripts do not contain "
                f"(an older image, or a revision deleted from the scripts); nothing was changed"
            ) from e
    if current is not None:
        below = {r.revision for r in script.iterate_revisions(current, "base")}
        if target in below:
            raise InputError(
                f"target revision {target!r} is older than the database's revision {current!r}: schemagate only "
                f"upgrades; nothing was changed"
            )
    try:
        revs = list(script.iterate_revisions(target, current, implicit_base=True))
    except Exception as e:  # RangeNotAncestorError and friends
        raise InputError(
            f"target revision {target!r} is not ahead of the database's revision {current!r}: schemagate only "
            f"upgrades; nothing was changed"
        ) from e
    if current is not None and revs and any(r.revision == current for r in revs):
        revs = [r for r in revs if r.revision != current]
    return [r.revision for r in reversed(revs)]


@isolated_imports
def plan(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
) -> dict[str, Any]:
    """``{current, target (resolved id), pending [ids in apply order], heads}`` (see module docstring)."""
    url = resolve_url(url, url_env)
    cfg = make_config(config_path, url)
    script = load_script(cfg)
    target_id, heads = resolve_target(script, target)
    try:
        with session_environment(url, url_env):
            cur = current_heads(cfg, script)
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001
        _reraise_classified(e)
    if len(cur) > 1:
        raise MultipleHeadsError(
            f"the database is at several revisions ({', '.join(cur)}); merge the heads first", heads=list(cur)
        )
    current = cur[0] if cur else None
    return {"current": current, "target": target_id, "pending": _pending(script, target_id, current), "heads": heads}


# --------------------------------------------------------------------------------------------------------------
# Upgrade


def _statement_of(exc: BaseException) -> str | None:
    e: BaseException | None = exc
    while e is not None:
        stmt = getattr(e, "statement", None)
        if isinstance(stmt, str) and stmt.strip():
            return redact(" ".join(stmt.split()))
        e = e.__cause__ or e.__context__
    return None


def render_sql(cfg: Config, script: ScriptDirectory, current: str | None, target: str) -> str:
    """The offline (``--sql``) rendering of ``current:target`` (what squawk lints)."""
    buf = io.StringIO()
    cfg.output_buffer = buf
    start = current

    def fn(rev: Any, context: Any) -> Any:
        return script._upgrade_revs(target, rev)

    try:
        with EnvironmentContext(cfg, script, fn=fn, as_sql=True, starting_rev=start, destination_rev=target):
            script.run_env()
    finally:
        cfg.output_buffer = None
    return buf.getvalue()


@isolated_imports
def upgrade(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    lock_timeout: str | int | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | int | None = None,
    *,
    render_sql_text: bool = False,
    on_revision: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Apply the pending revisions up to ``target`` (see module docstring)."""
    lt = normalize_duration(lock_timeout, "--lock-timeout")
    st = normalize_duration(statement_timeout, "--statement-timeout")
    url = resolve_url(url, url_env)
    p = plan(config_path, target, url, url_env)
    result: dict[str, Any] = {
        "fromRevision": p["current"],
        "toRevision": p["current"],
        "targetRevision": p["target"],
        "pending": list(p["pending"]),
        "applied": [],
        "lockTimeout": lt,
        "statementTimeout": st,
        "sql": None,
    }
    cfg = make_config(config_path, url)
    script = load_script(cfg)
    if render_sql_text and p["pending"]:
        try:
            with session_environment(url, url_env):
                result["sql"] = render_sql(cfg, script, p["current"], p["target"])
        except Exception as e:  # noqa: BLE001 - revisions that read data cannot render offline
            result["sql"] = None
            result["sqlError"] = error_text(e)
    if not p["pending"]:
        return result

    state: dict[str, Any] = {"running": None, "done": []}

    def wrap(rev_id: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*a: Any, **kw: Any) -> Any:
            state["running"] = rev_id
            if on_revision is not None:
                on_revision(rev_id)
            out = fn(*a, **kw)
            state["done"].append(rev_id)
            state["running"] = None
            return out

        return run

    def upgrade_fn(rev: Any, context: Any) -> Any:
        steps = script._upgrade_revs(p["target"], rev)
        for step in steps:
            rid = getattr(getattr(step, "revision", None), "revision", None)
            if rid and hasattr(step, "migration_fn"):
                step.migration_fn = wrap(rid, step.migration_fn)
        return steps

    try:
        with session_environment(url, url_env, lt, st):
            with EnvironmentContext(cfg, script, fn=upgrade_fn, as_sql=False, starting_rev=None,
                                    destination_rev=p["target"]):
                script.run_env()
    except Exception as e:  # noqa: BLE001
        failing = state["running"]
        outcome, reason, msg = classify_error(e, "MigrationFailed")
        after = _safe_current(config_path, url, url_env)
        result["toRevision"] = after
        stmt = _statement_of(e)
        if reason in ("DatabaseUnreachable", "AuthenticationFailed") and failing is None:
            raise ClassifiedError(outcome, reason, msg) from e
        where = f"revision {failing}" if failing else "the migration environment (env.py)"
        text = f"{where} failed"
        if stmt:
            text += f" at statement `{stmt[:240]}`"
        text += f": {msg}; the database is at revision {after or 'base'}"
        if reason == "LockTimeout":
            raise LockTimeoutError(text, revision=failing, statement=stmt) from e
        raise MigrationFailedError(text, revision=failing, statement=stmt, current_revision=after) from e
    after = _safe_current(config_path, url, url_env)
    result["toRevision"] = after
    pend = p["pending"]
    result["applied"] = pend[: pend.index(after) + 1] if after in pend else []
    return result


def _safe_current(config_path: str | os.PathLike[str], url: str, url_env: str | None) -> str | None:
    try:
        cfg = make_config(config_path, url)
        with session_environment(url, url_env):
            heads = current_heads(cfg, load_script(cfg))
        return heads[0] if len(heads) == 1 else (",".join(heads) or None)
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------------------------------
# Migrate: advisory lock + retries


@contextlib.contextmanager
def advisory_lock(
    url: str, wait_seconds: float = 600.0, poll_seconds: float = 0.5, sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[int | None], None] | None = None,
) -> Iterator[None]:
    """Hold the migration advisory lock (session level, on a dedicated autocommit connection).

    Polls ``pg_try_advisory_lock`` rather than blocking in ``pg_advisory_lock``: a blocked waiter holds a snapshot
    that CREATE INDEX CONCURRENTLY on the holder's side would wait for (deadlock or hang).
    """
    engine = engine_for(url)
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as e:  # noqa: BLE001
        engine.dispose()
        _reraise_classified(e)
        raise
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
                raise LockTimeoutError(
                    f"another migration of this database is running (advisory lock {ADVISORY_LOCK_KEY} held by "
                    f"backend pid {holder}); waited {wait_seconds:g}s, nothing was changed"
                )
            sleep(poll_seconds)
        try:
            yield
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
                            "lockTimeout": None, "statementTimeout": None}
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
                           on_wait=lambda pid: say(f"waiting for another migrator (pid {pid})")):
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
                    if attempt > len(delays):
                        raise LockTimeoutError(
                            f"{e} (gave up after {attempt} attempts; retry later or raise --lock-timeout)",
                            revision=getattr(e, "revision", None),
                        ) from e
                    delay = delays[attempt - 1] * (0.8 + 0.4 * random.random())  # noqa: S311
                    say(f"lock timeout (attempt {attempt}); retrying in {delay:.1f}s")
                    sleep(delay)
                    continue
                for a in out["applied"]:
                    if a not in data["applied"]:
                        data["applied"].append(a)
                data["toRevision"] = out["toRevision"]
                break
        # revisions committed by earlier attempts (before a lock timeout) count too
        pend = base["pending"]
        data["applied"] = pend[: pend.index(data["toRevision"]) + 1] if data["toRevision"] in pend else []
        n = len(data["applied"])
        msg = (f"applied {n} revision{'s' if n != 1 else ''} ({', '.join(data['applied'])}); "
               f"the database is at revision {data['toRevision']}") if n else (
            f"nothing to apply: the database is already at revision {data['toRevision']}")
        if data["attempts"] > 1:
            msg += f" after {data['attempts']} attempts"
        return StepResult(step="migrate", outcome=Outcome.SUCCEEDED, reason="Migrated", message=msg,
                          data=data, started_at=started).finish()
    except Exception as e:  # noqa: BLE001
        if isinstance(e, MigrationFailedError) and e.current_revision is not None:
            data["toRevision"] = e.current_revision
        r = result_from_error("migrate", e, started, data, "MigrationFailed")
        return r


_SQL_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.S)
_SQL_DML = re.compile(r"^\s*(WITH\b.*?\b(INSERT|UPDATE|DELETE|MERGE)\b|INSERT\b|UPDATE\b|DELETE\b|MERGE\b|COPY\b"
                      r"|TRUNCATE\b)", re.I | re.S)
_SQL_READ = re.compile(r"^\s*(SELECT|SHOW|SET|RESET|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START|EXPLAIN|VALUES"
                       r"|LOCK|DISCARD|LISTEN|NOTIFY|FETCH|DECLARE|CLOSE)\b", re.I)


def classify_statement(sql: str) -> str:
    """``dml``, ``ddl`` or ``other``; the same rules as ``schemagate.analysis.capture.classify`` (which this module
    may not import: it runs in the application's image)."""
    text = _SQL_COMMENTS.sub(" ", sql).strip()
    if re.search(r"\balembic_version\b", text, re.I) and (_SQL_DML.match(text) or text.upper().startswith("CREATE TABLE")):
        return "other"
    if _SQL_DML.match(text):
        return "dml"
    if not text or _SQL_READ.match(text):
        return "other"
    return "ddl"


@contextlib.contextmanager
def capture_statements(state: dict[str, Any], limit: int = 2000) -> Iterator[list[dict[str, Any]]]:
    """Record the DDL/DML every SQLAlchemy engine executes (the env.py's own engine included) during the block,
    tagged with ``state["revision"]``: ``[{"revision", "kind", "sql"}]`` (see ``schemagate.analysis.capture``)."""
    from sqlalchemy import event

    log: list[dict[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        kind = classify_statement(statement)
        if kind != "other" and len(log) < limit:
            entry: dict[str, Any] = {"revision": state.get("revision"), "kind": kind, "sql": statement[:4000]}
            if executemany:
                entry["executemany"] = True
            log.append(entry)

    event.listen(sa.engine.Engine, "before_cursor_execute", before)
    try:
        yield log
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", before)


def shadow_url_from_workdir(url: str, workdir: str | os.PathLike[str] | None) -> str:
    """The shadow database named by ``workdir/prepare.json`` (written by ``schemagate precheck --phase prepare``):
    ``shadowDatabase`` on the server of ``url``, or the URL in the variable ``shadowUrlEnv``; else ``url``."""
    if workdir is None:
        return url
    f = Path(workdir) / "prepare.json"
    if not f.exists():
        return url
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"--workdir: {f} is not JSON ({e})") from e
    if info.get("shadowDatabase"):
        from schemagate.runner.db import with_database

        return with_database(url, str(info["shadowDatabase"]))
    if info.get("shadowUrlEnv"):
        return resolve_url(None, str(info["shadowUrlEnv"]))
    raise InputError(f"{f} names no shadow database")


@isolated_imports
def shadow_upgrade(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    workdir: str | os.PathLike[str] | None = None,
    lock_timeout: str | int | None = None,
    statement_timeout: str | int | None = None,
) -> dict[str, Any]:
    """Apply the pending revisions to the shadow database (named by ``workdir/prepare.json`` when present, else
    ``url`` itself), rendering their SQL first and capturing the statements executed. Writes
    ``workdir/pending.sql`` and ``workdir/shadow-upgrade.json`` (``{fromRevision, toRevision, targetRevision,
    pending, applied, sqlError?, statements}``) when ``workdir`` is given."""
    url = shadow_url_from_workdir(resolve_url(url, url_env), workdir)
    state: dict[str, Any] = {"revision": None}
    with capture_statements(state) as statements:
        out = upgrade(config_path, target, url, url_env, lock_timeout, statement_timeout, render_sql_text=True,
                      on_revision=lambda r: state.__setitem__("revision", r))
    out["statements"] = statements
    if workdir is not None:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "pending.sql").write_text(out.get("sql") or "", encoding="utf-8")
        (wd / "shadow-upgrade.json").write_text(
            json.dumps({k: v for k, v in out.items() if k != "sql"}, indent=2), encoding="utf-8"
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m schemagate.runner.app",
                                 description="schemagate's injected runner (runs in the application's image)")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("migrate", "apply the pending revisions (advisory lock, lock timeout, retries)"),
                        ("shadow-upgrade", "apply the pending revisions to a shadow database and render their SQL"),
                        ("plan", "print current revision, resolved target and pending revisions")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", default=os.environ.get("SCHEMAGATE_ALEMBIC_CONFIG", "alembic.ini"))
        p.add_argument("--target", default=os.environ.get("SCHEMAGATE_TARGET", "head"))
        p.add_argument("--database-url-env", default=DEFAULT_URL_ENV)
        p.add_argument("--database-url", default=None, help="discouraged: visible in the process list")
        p.add_argument("--termination-log", default=None)
        p.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
        if name in ("migrate", "shadow-upgrade"):
            p.add_argument("--lock-timeout", default=DEFAULT_LOCK_TIMEOUT if name == "migrate" else None)
            p.add_argument("--statement-timeout", default=None)
        if name == "migrate":
            p.add_argument("--retries", type=int, default=DEFAULT_RETRIES)
            p.add_argument("--lock-wait", type=float, default=600.0,
                           help="seconds to wait for another migrator's advisory lock")
        if name == "shadow-upgrade":
            p.add_argument("--workdir", default=None)
    return ap


def run_command(args: argparse.Namespace) -> StepResult:
    started = now()
    if args.command == "migrate":
        return migrate(args.config, args.target, args.database_url, args.database_url_env, args.lock_timeout,
                       args.statement_timeout, args.retries, lock_wait=args.lock_wait,
                       log=lambda s: print(s, file=sys.stderr))
    step = "precheck" if args.command == "shadow-upgrade" else "plan"
    try:
        if args.command == "plan":
            p = plan(args.config, args.target, args.database_url, args.database_url_env)
            data = {"currentRevision": p["current"], "targetRevision": p["target"], "pending": p["pending"],
                    "heads": p["heads"]}
            msg = (f"{len(p['pending'])} pending revision(s) from {p['current'] or 'base'} to {p['target']}")
            return StepResult(step=step, outcome=Outcome.SUCCEEDED, reason="Planned", message=msg, data=data,
                              started_at=started).finish()
        out = shadow_upgrade(args.config, args.target, args.database_url, args.database_url_env, args.workdir,
                             args.lock_timeout, args.statement_timeout)
        data = {k: v for k, v in out.items() if k not in ("sql", "statements")}
        data["statements"] = len(out.get("statements") or [])
        data["sqlBytes"] = len((out.get("sql") or "").encode())
        return StepResult(step=step, outcome=Outcome.SUCCEEDED, reason="ShadowUpgraded",
                          message=f"applied {len(out['applied'])} revision(s) to the shadow database",
                          data=data, started_at=started).finish()
    except Exception as e:  # noqa: BLE001
        return result_from_error(step, e, started)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run_command(args)
    except Exception as e:  # noqa: BLE001 - never crash without a result
        result = result_from_error(args.command, e)
    print(result.to_json())
    write_termination_log(result, args.termination_log)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
