"""Apply: ``alembic upgrade`` driven programmatically (``upgrade``), the offline SQL rendering of the pending
range (``render_sql``), and the failing revision/statement named on failure."""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from schemagate.contract import durations
from schemagate.contract.errors import (
    AuthenticationFailed,
    DatabaseUnreachable,
    MigrationFailed,
    Transient,
    WrongDatabase,
    translate,
)
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import Plan, UpgradeResult
from schemagate.contract.target import Target
from schemagate.runner.inject.config import (
    DEFAULT_LOCK_TIMEOUT,
    engine_for,
    isolated_imports,
    load_script,
    make_config,
    session_environment,
)
from schemagate.runner.inject.graph import alembic_target, join_revisions, reached, split_revisions
from schemagate.runner.inject.revisions import context_version_table, current_heads, plan


def _statement_of(exc: BaseException) -> str | None:
    e: BaseException | None = exc
    while e is not None:
        stmt = getattr(e, "statement", None)
        if isinstance(stmt, str) and stmt.strip():
            return redact(" ".join(stmt.split()))
        e = e.__cause__ or e.__context__
    return None


def render_sql(cfg: Config, script: ScriptDirectory, current: str | Sequence[str] | None, target: str) -> str:
    """The offline (``--sql``) rendering of ``current:target`` (what squawk lints). ``current``: the version rows
    (a tuple, or comma-separated text for several); ``target``: as ``plan`` resolves it."""
    buf = io.StringIO()
    cfg.output_buffer = buf
    start = split_revisions(current) or None
    dest = alembic_target(target)

    def fn(rev: Any, context: Any) -> Any:
        # Alembic takes a tuple of revision ids as the destination too (ScriptDirectory.get_revisions)
        return script._upgrade_revs(dest, rev)  # type: ignore[arg-type]

    try:
        with EnvironmentContext(cfg, script, fn=fn, as_sql=True, starting_rev=start,
                                destination_rev=target):
            script.run_env()
    finally:
        cfg.output_buffer = None
    return buf.getvalue()


# Which server and database a session is on, whatever route it took (host name, socket, a connection pooler):
# the database, the server's port and its postmaster's start time (as epoch text: independent of the session's
# TimeZone and DateStyle). https://www.postgresql.org/docs/current/functions-info.html
SERVER_IDENTITY_SQL = ("SELECT current_database(), current_setting('port'), "
                       "extract(epoch FROM pg_postmaster_start_time())::text")

ServerIdentity = tuple[str, str, str]


def server_identity(conn: Any) -> ServerIdentity:
    """``(database, port, postmaster start epoch)`` of the session ``conn``: a SQLAlchemy ``Connection`` or a
    DB-API connection. Two sessions on the same database of the same server give equal identities."""
    if hasattr(conn, "exec_driver_sql"):
        row = conn.exec_driver_sql(SERVER_IDENTITY_SQL).first()
    else:
        cur = conn.cursor()
        try:
            cur.execute(SERVER_IDENTITY_SQL)
            row = cur.fetchone()
        finally:
            cur.close()
    return (str(row[0]), str(row[1]), str(row[2]))


def server_identity_of(url: str) -> ServerIdentity:
    """``server_identity`` of a session opened for ``url`` (and closed again)."""
    eng = engine_for(url)
    try:
        with eng.connect() as conn:
            return server_identity(conn)
    finally:
        eng.dispose()


def _check_server(context: Any, expected: ServerIdentity) -> None:
    """Raise ``WrongDatabase`` when env.py's migration context is connected elsewhere than ``expected``."""
    got = server_identity(context.connection)
    if got != expected:
        same_server = got[1:] == expected[1:]
        where = f"database {got[0]!r} of the same server" if same_server else \
            f"database {got[0]!r} of another server (port {got[1]})"
        raise WrongDatabase(
            f"the application's env.py connected to {where}, not to database {expected[0]!r} it was given in "
            f"sqlalchemy.url and the --database-url-env variable (spec.migrations.databaseUrlEnv; default "
            f"DATABASE_URL); nothing was applied. env.py must take its URL from "
            f"config.get_main_option('sqlalchemy.url') or from that variable", field="env.py")


def _given(duration: str | None) -> str | None:
    """A duration as the user gave it (for results), None when not given."""
    return duration.strip() if duration and duration.strip() else None


class UnexpectedCurrent(Exception):  # noqa: N818 - a condition, not a failure of the upgrade
    """The database's current revision, read by env.py at the start of the upgrade, is not the expected one
    (``upgrade(expect_current=...)``); nothing was applied. ``current``: what env.py read (None: base)."""

    def __init__(self, current: str | None, expected: str | None) -> None:
        super().__init__(f"env.py reads revision {current or 'base'}, expected {expected or 'base'}")
        self.current, self.expected = current, expected


_NOT_CHECKED = object()


def _tracking(script: ScriptDirectory, target: str, state: dict[str, Any],
              on_revision: Callable[[str], None] | None, expect_current: Any = _NOT_CHECKED,
              expect_server: ServerIdentity | None = None) -> Callable[[Any, Any], Any]:
    """The ``fn`` of the EnvironmentContext: Alembic's own upgrade steps (``_upgrade_revs``, as ``alembic.command
    .upgrade``), each migration function wrapped to record the revision running (``state["running"]``).
    ``expect_current``: the version rows expected (``join_revisions`` form); others raise ``UnexpectedCurrent``
    before any step runs (the heads Alembic passes are the ones it read through env.py's connection).
    ``expect_server``: the session env.py opened must be on that database (``server_identity``), else
    ``WrongDatabase`` before any step runs."""

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
        state["versionTable"] = context_version_table(context)  # resolved on env.py's connection
        if expect_server is not None and context.connection is not None:
            _check_server(context, expect_server)
        if expect_current is not _NOT_CHECKED:
            current = join_revisions(split_revisions(rev))
            if current != expect_current:
                raise UnexpectedCurrent(current, expect_current)
        steps = script._upgrade_revs(alembic_target(target), rev)  # type: ignore[arg-type]
        for step in steps:
            rid = getattr(getattr(step, "revision", None), "revision", None)
            if rid and hasattr(step, "migration_fn"):
                step.migration_fn = wrap(rid, step.migration_fn)
        return steps

    return upgrade_fn


def _failure(e: BaseException, failing: str | None, after: str | None, known: bool = True) -> Exception:
    """The runner error for a failed upgrade: names the revision, the statement and where the database is
    (``known`` False: its version table could not be read). A transient cause (connection lost, server restarted
    or shutting down, serialization failure, a lost advisory lock) stays transient, so the run is retried."""
    err = translate(e, MigrationFailed)
    stmt = _statement_of(e)
    if isinstance(err, (DatabaseUnreachable, AuthenticationFailed)) and failing is None:
        return err
    where = f"revision {failing}" if failing else "the migration environment (env.py)"
    text = f"{where} failed"
    if stmt:
        text += f" at statement `{stmt[:240]}`"
    at = f"revision {after or 'base'}" if known else "a revision that could not be read (the server did not answer)"
    text += f": {err.message}; the database is at {at}"
    if isinstance(err, Transient):
        return type(err)(text, revision=failing, statement=stmt, current_revision=after if known else None,
                         outcome=err.outcome, field=err.field)
    return MigrationFailed(text, revision=failing, statement=stmt, current_revision=after if known else None)


@isolated_imports
def upgrade(
    t: Target,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | None = None,
    *,
    on_revision: Callable[[str], None] | None = None,
    planned: Plan | None = None,
    expect_current: bool = False,
    expect_server: ServerIdentity | None = None,
) -> UpgradeResult:
    """Apply the pending revisions up to ``t.revision`` on the database of ``t`` (see module docstring).
    ``planned``: the plan of this database, computed by the caller just before (``revisions.plan`` or
    ``plan_from_catalog``), so env.py is not run again to plan. ``expect_current``: the same env.py run checks
    first that it reads ``planned``'s current revision (``planned`` is another database's: the precheck's shadow
    runs the real database's plan; or a plan not made through env.py): ``UnexpectedCurrent``, nothing applied.
    ``expect_server``: the database env.py must connect to (``server_identity`` of a session the caller opened
    with ``t``'s URL): another one is ``WrongDatabase``, raised before any revision runs there.
    The result names the version table env.py's migration context used (``contextVersionTable``: ``{"schema",
    "name"}``) when env.py ran."""
    lt = durations.to_postgres(lock_timeout, "--lock-timeout")
    st = durations.to_postgres(statement_timeout, "--statement-timeout")
    t = t.resolved()
    url, url_env = t.url, t.url_env
    assert url is not None
    p = planned if planned is not None else plan(t)
    result: UpgradeResult = {"fromRevision": p["current"], "toRevision": p["current"], "targetRevision": p["target"],
                             "pending": list(p["pending"]), "applied": [], "lockTimeout": _given(lock_timeout),
                             "statementTimeout": _given(statement_timeout), "sql": None}
    cfg = make_config(t.project, url)
    script = load_script(cfg)
    if not p["pending"]:
        return result
    state: dict[str, Any] = {"running": None, "done": []}
    try:
        with session_environment(url, url_env, lt, st):
            fn = _tracking(script, p["target"], state, on_revision, p["current"] if expect_current else _NOT_CHECKED,
                           expect_server)
            with EnvironmentContext(cfg, script, fn=fn, as_sql=False, starting_rev=None, destination_rev=p["target"]):
                script.run_env()
    except (UnexpectedCurrent, WrongDatabase):
        raise
    except Exception as e:  # the application's revisions and env.py may raise anything
        after, known = _current_after_failure(t, patient=_transient(e))
        result["toRevision"] = after
        raise _failure(e, state["running"], after, known) from e
    if "versionTable" in state:
        result["contextVersionTable"] = state["versionTable"]
    # Alembic completed the upgrade: the version rows are the expected ones (no env.py run to read them back)
    after = join_revisions(p["expected"]) if p["expected"] else _safe_current(t)
    result["toRevision"] = after
    result["applied"] = reached(script, p["pending"], split_revisions(after))
    return result


def _transient(e: BaseException) -> bool:
    return isinstance(translate(e, MigrationFailed), Transient)


def _current_after_failure(t: Target, *, patient: bool, tries: int = 15,
                           pause: float = 1.0) -> tuple[str | None, bool]:
    """``(revision, known)``: where a failed upgrade left the database of ``t`` (its URL resolved). After a transient failure (``patient``: the
    server may be restarting, SQLSTATE 57P03) the version table is read up to ``tries`` times, ``pause`` seconds
    apart, so the message states the real revision rather than "base"."""
    for attempt in range(tries if patient else 1):
        if attempt:
            time.sleep(pause)
        try:
            cfg = make_config(t.project, t.url)
            with session_environment(t.url, t.url_env):
                return join_revisions(current_heads(cfg, load_script(cfg))), True
        except Exception:  # noqa: BLE001 - best effort: only to say where the database was left
            continue
    return None, False


def _safe_current(t: Target) -> str | None:
    """The database's current revision (``t``'s URL resolved), None when it cannot be read."""
    try:
        cfg = make_config(t.project, t.url)
        with session_environment(t.url, t.url_env):
            heads = current_heads(cfg, load_script(cfg))
        return join_revisions(heads)
    except Exception:  # noqa: BLE001 - best effort: only to say where the database was left
        return None
