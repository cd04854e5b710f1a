"""The precheck step: count the rows of the real database that would violate the constraints the pending Alembic
revisions add, lint their SQL with squawk, and fail (``ChecksFailed``/``ViolationsFound``, exit 3) when the
total is above ``max_violations``.

Public API (the CLI's ``schemagate precheck`` calls these; all return a finished :class:`StepResult` whose
``data`` follows docs/architecture.md, and never raise for database or input errors)::

    precheck(target: Target, *, max_violations=0,
             user_checks=(), derive=True, lint=True, lint_fail="none", shadow_url=None, shadow_url_env=None,
             statement_timeout="1h", keep_shadow=False) -> StepResult
        All in one process (laptop, ``schemagate run``): plan -> the shadow: a throw-away PostgreSQL started here
        (``runner.shadowserver``; nothing is written to the real server) holding the real schema, settings,
        extensions, INVALID indexes and version rows (``runner.shadowrestore``), or the explicit, empty
        ``shadow_url`` -> assert env.py reads the same current revision there -> apply the pending revisions with
        ``schemagate.runner.inject.apply.upgrade`` while capturing the statements -> catalog diff of the shadow
        before vs after -> counting -> squawk -> stop the shadow (always). ``derive=False``: no shadow at all.

    shadow_server(workdir) -> StepResult
        Kubernetes, a sidecar (operator image): runs the pod's throw-away server until ``count`` is done.

    prepare(url=None, url_env="DATABASE_URL", *, workdir, shadow_url_env=None) -> StepResult
        Kubernetes, init container (operator image): restore the real schema into the pod's throw-away server (or
        the explicit shadow database); writes ``workdir/prepare.json`` and the shadow-before snapshot.

    data_prepare(url=None, url_env="DATABASE_URL", *, workdir, data_shadow_max_bytes=1Gi) -> StepResult
        Kubernetes, init container (operator image) after shadow-upgrade: when the revisions change data, the
        data-carrying shadow on the pod's server and ``data-queries.json`` for the injected ``data-upgrade``
        (``runner.inject.datarun``), which counts each check right before its statement; else a quick no-op.

    count(url=None, url_env="DATABASE_URL", *, workdir, max_violations=0, user_checks=(), lint=True,
          lint_fail="none", statement_timeout="1h", derive=True) -> StepResult
        Kubernetes, main container (operator image), after ``python -m schemagate.runner.inject shadow-upgrade
        --workdir`` ran in the application's image: catalog diff, counting, squawk, stop the shadow (always).
        ``derive=False``: the only container of the Job, user checks only, no workdir needed.

Workdir files (shared ``emptyDir`` between the containers): see docs/architecture.md (``shadow-server.json``,
``prepare.json``, ``shadow-before.pickle``, ``shadow-upgrade.json``, ``data-shadow.json``, ``data-queries.json``,
``data-counts.json``, ``shadow-done``; ``pending.sql``, the
offline rendering an older injected runner wrote, is linted only when no statements were captured).
``shadow-upgrade.json`` (written by shadow-upgrade): ``{fromRevision, targetRevision, pending, applied,
sqlError?, statements?, versionTable?}``; ``statements`` (optional) is the captured list described in
``schemagate.analysis.capture``.

``user_checks`` items are ``{"name", "sql", "table"?}`` mappings, ``(name, sql)`` pairs or
``schemagate.analysis.counting.Check`` objects; ``sql`` must return one row with one number, the violation count,
and runs in the same read-only transaction as the derived checks.

``lint_fail``: ``"none"`` (default: findings are reported, never fail), ``"blocking"`` (fail on findings of
``analysis.lint.BLOCKING_RULES``), ``"any"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle  # noqa: S403 - only our own snapshot, written by --phase prepare in the same pod
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypedDict

from schemagate.analysis import capture, catalog, counting, derive, lint, locks, shadow, stepwise
from schemagate.analysis import lint as lint_module
from schemagate.analysis.counting import Check, CountOptions
from schemagate.contract.checks import UserCheck
from schemagate.contract.dburl import DEFAULT_URL_ENV, database_name, libpq_url, resolve_url, with_database
from schemagate.contract.errors import (
    DatabaseUnreachable,
    InternalError,
    InvalidInput,
    MigrationFailed,
    PrecheckIncomplete,
    ShadowUnavailable,
    StepBoundary,
    WrongDatabase,
    error_text,
    translate,
)
from schemagate.contract.sqlkind import Statement
from schemagate.contract.stepresult import (
    LintResult,
    Outcome,
    Plan,
    ShadowUpgradeDoc,
    StepResult,
    UpgradeResult,
    VersionTable,
    now,
)
from schemagate.contract.target import Target
from schemagate.libpq import Connection, connect, shared_connections
from schemagate.runner import shadowrestore
from schemagate.runner.inject.apply import UnexpectedCurrent, render_sql, server_identity, upgrade
from schemagate.runner.inject.capture import capture_statements
from schemagate.runner.inject.config import (
    isolated_imports,
    load_script,
    make_config,
    session_environment,
)
from schemagate.runner.inject.downgrade import DOWNGRADE_FILE
from schemagate.runner.inject.leftovers import ShadowRetry, shadow_note
from schemagate.runner.inject.revisions import confirm, plan, plan_without_env
from schemagate.runner.inject.shadow import ShadowMismatch, not_faithful, version_table_of
from schemagate.runner.shadowserver import ShadowServer

STEP = "precheck"
DEFAULT_STATEMENT_TIMEOUT = "1h"
LINT_FAIL_MODES = ("none", "blocking", "any")
DEFAULT_DATA_SHADOW_MAX_BYTES = 1 << 30  # spec.precheck.dataShadow.maxSize default: 1Gi
MAX_COUNT_SESSIONS = 8
PREPARE_FILE = "prepare.json"
SHADOW_UPGRADE_FILE = "shadow-upgrade.json"
PENDING_SQL_FILE = "pending.sql"
SHADOW_SERVER_FILE = "shadow-server.json"  # the sidecar's handle: {"adminUrl", "version"}
SHADOW_DONE_FILE = "shadow-done"  # written by count: the sidecar stops the server
BEFORE_FILE = "shadow-before.pickle"  # the shadow's catalog snapshot before the revisions (prepare -> count)


class ShadowSummary(TypedDict):
    """``data.shadow``: where the shadow ran and what was restored into it (``runner.shadowrestore``)."""

    kind: str  # throw-away-server | explicit-database
    shadowServerVersion: str | None
    realServerVersion: str | None
    restoreSeconds: float | None
    versionTable: VersionTable | None
    invalidIndexes: list[str]  # schema.name
    extensions: list[str]
    settings: list[str]  # database and role settings copied (name=value)
    notes: list[str]


class PrepareInfo(TypedDict, total=False):
    """``prepare.json`` (phase 1 -> 3): the shadow of this pod (``shadowUrl``/``adminUrl``: its throw-away server)
    or the variable naming the explicit shadow database (``shadowUrlEnv``)."""

    shadowDatabase: None
    shadowUrlEnv: str | None
    shadowUrl: str | None
    adminUrl: str | None
    created: bool
    server: bool
    shadow: ShadowSummary
    copySeconds: float | None


class ShadowServerHandle(TypedDict):
    """``shadow-server.json``: what the shadow-server sidecar publishes (the pod's private emptyDir)."""

    adminUrl: str  # the throw-away server's superuser URL (listening on the pod's 127.0.0.1)
    version: str | None  # PostgreSQL's server_version


# --------------------------------------------------------------------------------------------------------------
# helpers


def _connect(url: str) -> Connection:
    return connect(url)


def parse_user_checks(items: Iterable[Any]) -> list[Check]:
    """User checks (``UserCheck.parse_all``: ``NAME=SQL``, ``{name, sql, table?}``, ``(name, sql)``; a repeated name
    is ``InvalidInput``) as counting checks."""
    return [counting.user(c.name, c.sql, table=c.table) for c in UserCheck.parse_all(items, "--check")]


def _read_current_revision(conn: Connection, tables: Sequence[tuple[str, str]]) -> str | None:
    revs: list[str] = []
    with conn.cursor() as cur:
        for s, t in tables:
            cur.execute(f"SELECT version_num FROM {counting.qualified(s, t)}")  # noqa: S608 - quoted identifiers
            revs.extend(str(r[0]) for r in cur.fetchall())
    return ",".join(revs) if revs else None


def _lint_fail(mode: str, result: Mapping[str, Any]) -> bool:
    if mode not in LINT_FAIL_MODES:
        raise InvalidInput(f"lint_fail must be one of {', '.join(LINT_FAIL_MODES)}, not {mode!r}")
    if not result.get("available"):
        return False
    if mode == "any":
        return int(result.get("total") or 0) > 0
    if mode == "blocking":
        return int(result.get("blocking") or 0) > 0
    return False


def _where(c: Check) -> str:
    """Display text of a check's place (schema, table and column are separate fields in the result)."""
    if c.kind == "user":
        return c.table or ""
    parts = [p for p in (c.schema, c.relname, c.column) if p]
    return ".".join(parts)


def _label(c: Check) -> str:
    if c.kind in ("notnull", "type", "partition-bound", "domain-notnull"):
        return c.name  # the name says where
    where = _where(c)
    return f"{c.name} on {where}" if where and where not in c.name else c.name


def _message(checks: Sequence[Check], total: int, max_violations: int, lint_result: Mapping[str, Any] | None,
             lint_failed: bool, accepted: Sequence[str] = ()) -> tuple[Outcome, str, str]:
    errors = [c for c in checks if c.error]
    unevaluated = [c for c in checks if c.unevaluated and c.count is None and c.name not in accepted]
    violating = sorted((c for c in checks if c.count), key=lambda c: -(c.count or 0))
    counted = [c for c in checks if c.count is not None]
    lint_txt = ""
    if lint_result and lint_result.get("available"):
        lint_txt = f"; lint: {lint_result.get('total', 0)} finding(s), {lint_result.get('blocking', 0)} blocking"
    counts_txt = f"; {total} violating row(s) counted in {len(violating)} of {len(counted)} check(s)" if counted \
        else ""
    if errors:
        names = ", ".join(f"{_label(c)} ({c.error})" for c in errors[:3])
        return (Outcome.CHECKS_FAILED, "ViolationsFound",
                f"{len(errors)} check(s) could not be evaluated: {names}{counts_txt}"[:600])
    if total > max_violations:
        top = ", ".join(f"{_label(c)}: {c.count}" for c in violating[:5])
        more = f"; {len(unevaluated)} more not evaluated" if unevaluated else ""
        return (Outcome.CHECKS_FAILED, "ViolationsFound",
                f"{total} violating row(s) in {len(violating)} of {len(counted)} check(s) "
                f"(maxViolations {max_violations}): {top}{more}{lint_txt}"[:600])
    if unevaluated:
        what = "; ".join(f"{_label(c)} (revision {c.revision or '?'}: "
                         f"{(c.statement or c.definition or '')[:120]}): {c.unevaluated}" for c in unevaluated[:3])
        return (Outcome.CHECKS_FAILED, "PrecheckIncomplete",
                f"{len(unevaluated)} validating statement(s) not evaluated (accept them by name with "
                f"spec.precheck.acceptUnevaluated / --accept-unevaluated): {what}{counts_txt}"[:800])
    if lint_failed:
        return (Outcome.CHECKS_FAILED, "ViolationsFound",
                f"squawk found {lint_result.get('total') if lint_result else 0} problem(s) in the pending SQL "
                f"(lint is set to fail){counts_txt}")
    acc = [c.name for c in checks if c.unevaluated and c.count is None and c.name in accepted]
    acc_txt = f"; {len(acc)} not evaluated, accepted by name: {', '.join(acc)[:200]}" if acc else ""
    return (Outcome.SUCCEEDED, "PrecheckPassed",
            f"{total} violating row(s) in {len(counted)} check(s) (maxViolations {max_violations}){acc_txt}"
            f"{lint_txt}")


def _base_data(max_violations: int) -> dict[str, Any]:
    return {
        "currentRevision": None, "targetRevision": None, "pending": [], "derivation": "disabled",
        "derivationNote": None, "checks": [], "total": 0, "maxViolations": max_violations, "indexes": [],
        "notValid": [], "lint": lint.unavailable("lint disabled"),
    }


# --------------------------------------------------------------------------------------------------------------
# shadow preparation (shared by precheck and prepare)


class Shadow:
    """A prepared shadow database holding the real schema.

    ``url``: the shadow database as the application's role sees it (what the revisions run against);
    ``name``: its database name; ``server``: the throw-away server it lives on (None for an explicit shadow
    database, which is emptied instead of removed); ``info``: what was restored and the PostgreSQL versions of the
    real and the shadow server (``realServerVersion``, ``shadowServerVersion``); ``before``: the shadow's catalog
    snapshot right after the restore, before any revision ran (the diff compares it with the shadow after the
    revisions: both printed by the same server, so an unchanged constraint is never reported as new)."""

    def __init__(self, url: str, name: str | None, server: ShadowServer | None, info: dict[str, Any],
                 admin_url: str | None = None):
        self.url, self.name, self.server, self.info = url, name, server, info
        self.admin_url = admin_url or url
        self.before: catalog.Catalog | None = None

    @property
    def created(self) -> bool:
        return self.server is not None

    def dispose(self, notes: list[str]) -> None:
        """Stop the throw-away server and remove its directory, or empty an explicit shadow database."""
        if self.server is not None:
            self.server.stop()
        else:
            try:
                shadow.wipe_database(libpq_url(self.url))
            except Exception as e:  # noqa: BLE001
                notes.append(f"could not empty the explicit shadow database: {error_text(e)}")


def make_shadow(url: str, shadow_url: str | None = None, workdir: str | os.PathLike[str] | None = None, *,
                version_table: Mapping[str, Any] | None = None, server: ShadowServer | None = None,
                schema_archive: str | os.PathLike[str] | None = None) -> Shadow:
    """The shadow for a precheck: by default a throw-away PostgreSQL (``runner.shadowserver``) started here and
    holding the real schema (``runner.shadowrestore``); nothing is written to the real server. With
    ``shadow_url`` the given, empty database is used instead (it must not be the real database).

    ``version_table``: ``{"schema", "name"}`` of the application's Alembic version table as its env.py configured
    the migration context (``version_table_of(plan())``), whose rows are copied. Raises ``ShadowUnavailable``
    (start or restore failed), ``InvalidInput`` (a bad explicit shadow URL), or the real database's errors.
    ``server``: a throw-away server already started (or starting: ``ShadowServer.start_in_background``) by the
    caller; it is used, and stopped on failure, instead of starting one here. ``schema_archive``: a ``pg_dump``
    archive of the real database just taken (the run's backup), whose schema part is restored instead of a second
    ``pg_dump --schema-only``."""
    vt = (version_table.get("schema"), str(version_table.get("name") or "alembic_version")) \
        if version_table else (None, "alembic_version")
    if shadow_url:
        if server is not None:
            server.stop()
        return _explicit_shadow(url, shadow_url, workdir, vt)
    try:
        if server is None:
            server = ShadowServer().start()
        else:
            server.started()
        target = server.restore_schema(url, version_table=vt, archive=schema_archive)
        sh = Shadow(target.url, target.name, server, target.info, admin_url=target.admin_url)
        with _connect(sh.admin_url) as conn:
            sh.before = catalog.snapshot(conn)
        return sh
    except BaseException:
        if server is not None:
            server.stop()
        raise


def _explicit_shadow(url: str, shadow_url: str, workdir: str | os.PathLike[str] | None,
                     vt: tuple[str | None, str]) -> Shadow:
    real = libpq_url(url)
    target = libpq_url(shadow_url)
    if database_name(shadow_url) == database_name(url) and \
            with_database(real, "x") == with_database(target, "x"):
        raise InvalidInput("the shadow database URL points at the real database", field="shadow database URL")
    if shadow.user_table_count(target) > 0:
        raise InvalidInput("the explicit shadow database is not empty: schemagate needs an empty database "
                           "it may overwrite", field="shadow database URL")
    sh = Shadow(shadow_url, database_name(shadow_url), None, {})
    try:
        with tempfile.TemporaryDirectory(prefix="schemagate-shadow-", dir=workdir) as tmp:
            sh.info = shadowrestore.restore_existing(url, shadow_url, version_table=vt, dump_dir=tmp)
        with _connect(shadow_url) as conn:
            sh.before = catalog.snapshot(conn)
    except BaseException:
        sh.dispose([])
        raise
    return sh


def _shadow_summary(sh: Shadow, kind: str | None = None) -> ShadowSummary:
    """What the result says about the shadow: where it ran and the PostgreSQL versions on both sides."""
    i = sh.info
    return {"kind": kind or ("throw-away-server" if sh.server is not None else "explicit-database"),
            "shadowServerVersion": i.get("shadowServerVersion"), "realServerVersion": i.get("realServerVersion"),
            "restoreSeconds": i.get("seconds"), "versionTable": i.get("versionTable"),
            "invalidIndexes": i.get("invalidIndexes", []), "extensions": i.get("extensions", []),
            "settings": i.get("settings", []), "notes": i.get("notes", [])}


def shadow_mismatch(e: UnexpectedCurrent, p: Mapping[str, Any]) -> ShadowMismatch:
    """The error when the application's env.py reads another current revision from the shadow than from the real
    database (``p``: the real database's plan): the shadow is not faithful; nothing was applied. Checked inside
    the shadow upgrade's own env.py execution (``upgrade(expect_current=True)``), before its first step."""
    return not_faithful(e.current, p["current"], version_table_of(p))


# --------------------------------------------------------------------------------------------------------------
# analysis after the shadow run (shared by precheck and count)


def analyse(
    url: str,
    shadow_url: str,
    *,
    pending: list[str],
    statements: list[Statement] | None,
    offline_sql: str | None,
    offline_error: str | None,
    user_checks: Sequence[Check],
    do_lint: bool,
    statement_timeout: str,
    data: dict[str, Any],
    derive_checks: bool = True,
    derived: list[Check] | None = None,
    before_cat: catalog.Catalog | None = None,
    after_cat: catalog.Catalog | None = None,
) -> list[Check]:
    """Diff the catalogs, count, lint; fills ``data`` and returns every check (derived and user).

    ``derived``: the checks recorded statement by statement (``analysis.stepwise``), already bound to the real
    database (fast route) or already counted in the data-carrying shadow (data route); the checks without a
    count are counted here on the real database. Without it (the Kubernetes phases) the checks come from the
    name-based catalog diff of the real database against the shadow after the revisions.
    With ``derive_checks=False`` only the user checks are counted; the diff still supplies the new indexes and
    the intentionally NOT VALID constraints that verify needs."""
    if after_cat is not None:  # taken by the caller before the shadow was emptied (an explicit shadow database)
        shadow_cat = after_cat
    else:
        with _connect(shadow_url) as sconn:
            shadow_cat = catalog.snapshot(sconn)
    with _connect(url) as conn:
        real_cat = catalog.snapshot(conn)
        # shadow-before vs shadow-after: one server prints both sides, so an unchanged definition never differs
        d = derive.derive(before_cat if before_cat is not None else real_cat, shadow_cat)
        notes: list[str] = []
        if derived is None:
            changed, found, notes = _checks_from_diff(d, statements, pending)
        else:
            changed, _ = capture.dml_label(statements)
            found = derived
        data["derivation"] = "shadow" if derive_checks else "disabled"
        data["dataChanges"] = changed
        if not derive_checks:
            notes.insert(0, "derivation disabled (spec.precheck.derive=false): only user checks are counted")
        checks = (found if derive_checks else []) + list(user_checks)
        for c in user_checks:
            c.evaluated_by = "real-database"
        todo = [c for c in checks if c.count is None]  # the data route counted its checks already
        counting.run_counts(conn, todo, CountOptions(statement_timeout=statement_timeout))
        data["indexes"] = d.indexes
        data["notValid"] = d.not_valid
        data["derivationNote"] = "; ".join(notes) if notes else None
    if do_lint:
        data["lint"] = locks.merge_into(
            lint_pending(offline_sql, offline_error, statements, real_cat.server_version_num),
            locks.lint_locks(statements, locks.foreign_keys_of(real_cat.constraints)))
    return checks


def _checks_from_diff(d: derive.Derivation, statements: list[Statement] | None,
                      pending: list[str]) -> tuple[bool | None, list[Check], list[str]]:
    """The name-based catalog diff's checks (no statement-by-statement record: the Kubernetes phases with an
    older injected runner), attributed to revisions: ``(the revisions change data, checks, notes)``."""
    notes = list(d.notes)
    derive.attribute_revisions(d.checks, statements or [], pending)
    changed, label = capture.dml_label(statements)
    if label:
        notes.insert(0, label)
        if changed:
            for c in d.counted:
                c.note = f"{c.note}; {label}" if c.note else "before the pending revisions' data changes"
    for c in d.checks:
        c.evaluated_by = c.evaluated_by or ("no-rows" if c.skipped else "real-database")
    return changed, d.checks, notes


def lint_pending(offline_sql: str | None, offline_error: str | None, statements: list[Statement] | None,
                 server_version_num: int) -> LintResult:
    """Lint the DDL the pending revisions executed in the shadow run (``statements``: what PostgreSQL ran, in the
    transactions it ran in, ``capture.ddl_script``; source ``captured``), so no second env.py run renders it.
    Without captured statements (derivation off) the offline rendering ``offline_sql`` (``alembic upgrade
    --sql``; source ``offline``) is linted; ``offline_error``: why that rendering failed."""
    version = lint.pg_major_version(server_version_num)
    if statements is not None:
        res = lint.lint_sql(capture.ddl_script(statements), pg_version=version, source="captured")
        cut = capture.cut_ddl(statements)
        if cut:
            res["note"] = "; ".join(filter(None, [res.get("note"), f"{cut} statement(s) longer than "
                                                  f"{capture.MAX_SQL} characters were not linted"]))
        return res
    if offline_sql:
        return lint.lint_sql(offline_sql, pg_version=version, source="offline")
    why = f"offline rendering (alembic upgrade --sql) failed: {offline_error}" if offline_error else \
        "no offline rendering available"
    return lint.unavailable(f"{why}; no captured statements to lint")


def _finish(step: StepBoundary, checks: Sequence[Check], opts: Options) -> StepResult:
    """The step's result from the counted ``checks``: each check's entry in ``data.checks`` (errors, not evaluated
    and accepted, the statement to look at), the total, the routes, then the verdict (``_message``).

    Raises ``PrecheckIncomplete`` (ChecksFailed, the user acts) when checks stay not evaluated that
    ``accept_unevaluated`` does not name: the precheck could not evaluate what it was asked to."""
    data, accepted = step.data, opts.accept_unevaluated
    stepwise.mark_unevaluated(checks)
    data["checks"] = [c.as_dict() for c in checks]
    for c, entry in zip(checks, data["checks"], strict=True):
        if c.error:
            entry["note"] = f"error: {c.error}" + (f"; {c.note}" if c.note else "")
            entry["evaluatedBy"] = "not-evaluated"
        if c.unevaluated and c.count is None:
            entry["note"] = f"not evaluated: {c.unevaluated}" + (f"; {c.note}" if c.note else "")
            entry["accepted"] = c.name in accepted
        if c.statement and c.count is None and not c.skipped:  # the user has to look at it: say which one
            entry["statement"] = c.statement[:300]
    total = sum(c.count or 0 for c in checks)
    data["total"] = total
    data["maxViolations"] = opts.max_violations
    data["acceptUnevaluated"] = list(accepted)
    routes: dict[str, int] = {}
    for entry in data["checks"]:
        routes[str(entry.get("evaluatedBy"))] = routes.get(str(entry.get("evaluatedBy")), 0) + 1
    data["evaluatedBy"] = routes
    lint_result = data.get("lint")
    failed_lint = _lint_fail(opts.lint_fail, lint_result or {})
    outcome, reason, message = _message(checks, total, opts.max_violations, lint_result, failed_lint, accepted)
    if reason == PrecheckIncomplete.reason:
        raise PrecheckIncomplete(message, field="spec.precheck.acceptUnevaluated")
    return step.finish(outcome, reason, message)


# --------------------------------------------------------------------------------------------------------------
# all in one


@dataclass(frozen=True)
class Options:
    """How a precheck counts and judges (the options of ``precheck``/``count``; the CLI's and
    ``spec.precheck``'s): ``max_violations`` (>= 0), ``lint``/``lint_fail`` (one of ``LINT_FAIL_MODES``),
    ``statement_timeout`` (PostgreSQL form, for every count), ``accept_unevaluated`` (names of checks that may stay
    not evaluated), ``data_shadow_max_bytes`` (None: no limit), ``derive`` (False: user checks only, no shadow),
    ``count_sessions`` (sessions on the real database counting the derived checks in parallel on one snapshot,
    ``counting.run_counts``; 1 in a ``schemagate run``, which keeps to four sessions)."""

    max_violations: int = 0
    lint: bool = True
    lint_fail: str = "none"
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT
    accept_unevaluated: Sequence[str] = ()
    data_shadow_max_bytes: int | None = DEFAULT_DATA_SHADOW_MAX_BYTES
    derive: bool = True
    count_sessions: int = 1

    def validate(self) -> None:
        """Raises ``InvalidInput`` naming the option."""
        if self.max_violations < 0:
            raise InvalidInput("maxViolations must be >= 0", field="maxViolations")
        if self.lint_fail not in LINT_FAIL_MODES:
            raise InvalidInput(f"lint_fail must be one of {', '.join(LINT_FAIL_MODES)}", field="lint_fail")
        if not 1 <= self.count_sessions <= MAX_COUNT_SESSIONS:
            raise InvalidInput(f"count sessions: {self.count_sessions} must be between 1 and {MAX_COUNT_SESSIONS}",
                               field="--count-sessions")

    @property
    def counts(self) -> CountOptions:
        return CountOptions(statement_timeout=self.statement_timeout, sessions=self.count_sessions)


def precheck(
    target: Target,
    *,
    max_violations: int = 0,
    user_checks: Iterable[Any] = (),
    derive: bool = True,
    lint: bool = True,
    lint_fail: str = "none",
    shadow_url: str | None = None,
    shadow_url_env: str | None = None,
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT,
    keep_shadow: bool = False,
    accept_unevaluated: Sequence[str] = (),
    data_shadow_max_bytes: int | None = DEFAULT_DATA_SHADOW_MAX_BYTES,
    planned: Plan | None = None,
    shadow_server: ShadowServer | None = None,
    schema_archive: str | os.PathLike[str] | None = None,
    count_sessions: int = 1,
) -> StepResult:
    """Plan (``planned``: the caller's plan of this database, not recomputed), derive the checks in a shadow
    database, count, lint (see the module docstring) for ``target`` (project, target revision, database).

    ``shadow_server``: a throw-away server started for it in the background, owned by the precheck from here on
    (else one starts here while env.py plans); ``schema_archive``: the run's backup just taken (``make_shadow``).

    ``accept_unevaluated``: names of checks that may stay not evaluated without blocking
    (``spec.precheck.acceptUnevaluated``; any other is ``PrecheckIncomplete``). ``data_shadow_max_bytes``: the
    largest total size of the tables copied into the data-carrying shadow (``spec.precheck.dataShadow.maxSize``;
    None: no limit); above it the step is blocked (``DataShadowTooLarge``) before anything is copied.
    ``count_sessions``: sessions counting the derived checks in parallel on one snapshot (``Options``). Never
    raises: every error becomes the failed result through ``StepBoundary``."""
    opts = Options(max_violations=max_violations, lint=lint, lint_fail=lint_fail, statement_timeout=statement_timeout,
                   accept_unevaluated=tuple(accept_unevaluated), data_shadow_max_bytes=data_shadow_max_bytes,
                   derive=derive, count_sessions=count_sessions)
    notes: list[str] = []
    shadows: list[Shadow] = []
    with StepBoundary(STEP, data=_base_data(max_violations)) as step, contextlib.ExitStack() as scope:
        try:
            opts.validate()
            users = parse_user_checks(user_checks)
            target = target.resolved()
            scope.enter_context(shared_connections(_url(target)))  # one session on the real database
            if shadow_url_env and not shadow_url:
                shadow_url = resolve_url(None, shadow_url_env)
            shadow_server = scope.enter_context(_throwaway(shadow_server, derive and not shadow_url, shadows))
            p = planned if planned is not None else _plan(target)
            step.data.update(currentRevision=p["current"], targetRevision=p["target"], pending=list(p["pending"]),
                             expectedRevisions=list(p["expected"]))
            if not p["pending"]:
                checks = _nothing_pending(target, users, opts, step.data)
            elif derive:
                checks = _derive_confirming(target, p, shadow_url, users, opts, step.data, notes, shadows,
                                            shadow_server, schema_archive)
            else:
                checks = _user_checks_only(target, p, users, opts, step.data)
            step.set_result(_finish(step, checks, opts))
        finally:
            for sh in shadows if not keep_shadow else ():
                sh.dispose(notes)
    return _with_notes(step.result, notes)


@contextlib.contextmanager
def _throwaway(server: ShadowServer | None, wanted: bool, shadows: list[Shadow]) -> Iterator[ShadowServer | None]:
    """The precheck's throw-away server: ``server`` (started by the caller), else (when ``wanted``) one started now
    in the background, while env.py plans; stopped at the end unless a shadow in ``shadows`` lives on it (nothing
    pending, derivation off, or a failure before the shadow)."""
    if server is None and wanted:
        server = ShadowServer().start_in_background()
    try:
        yield server
    finally:
        if server is not None and all(sh.server is not server for sh in shadows):
            server.stop()


def _with_notes(result: StepResult, notes: list[str]) -> StepResult:
    """``result`` with ``notes`` (what happened on the way: shadow clean-up, dropped statements) appended to
    ``data.derivationNote``; the leftovers the shadow run dropped (``data.leftovers``) to the message."""
    if result.data.get("leftovers"):
        result.message = f"{result.message}; {shadow_note(result.data['leftovers'])}"
    if notes:
        result.data["derivationNote"] = "; ".join(filter(None, [result.data.get("derivationNote"), *notes]))
    return result


def _plan(target: Target) -> Plan:
    """The plan of ``target`` (URL resolved): from the catalog when it tells (the shadow upgrade's env.py run
    confirms it), else through env.py (``revisions.plan_without_env``)."""
    with _connect(_url(target)) as conn:
        return plan_without_env(target, conn)


class _CatalogPlanWrong(Exception):  # noqa: N818 - a condition, handled in _derive_confirming
    """The shadow upgrade's env.py does not read the version table the catalog plan was made from."""


def _derive_confirming(target: Target, p: Plan, shadow_url: str | None, users: list[Check], opts: Options,
                       data: dict[str, Any], notes: list[str], shadows: list[Shadow], server: ShadowServer | None,
                       schema_archive: str | os.PathLike[str] | None) -> list[Check]:
    """``_derive_and_count`` on the plan ``p``; a plan from the catalog that env.py does not confirm in the shadow
    run is replaced (in place: the caller migrates and verifies on it) by env.py's plan, and the derivation runs
    again on a new shadow."""
    try:
        return _derive_and_count(target.at(p["target"]), p, shadow_url, users, opts, data, notes, shadows, server,
                                 schema_archive)
    except _CatalogPlanWrong:
        for sh in shadows:
            sh.dispose(notes)
        shadows.clear()
    p.update(plan(target))
    notes.append("the version table found in the catalog is not the one env.py reads: planned through env.py")
    data.update(currentRevision=p["current"], targetRevision=p["target"], pending=list(p["pending"]),
                expectedRevisions=list(p["expected"]))
    if not p["pending"]:
        return _nothing_pending(target, users, opts, data)
    return _derive_and_count(target.at(p["target"]), p, shadow_url, users, opts, data, notes, shadows, None,
                             schema_archive)


def _nothing_pending(target: Target, users: list[Check], opts: Options, data: dict[str, Any]) -> list[Check]:
    """No pending revisions: only the user checks are counted (on the real database), no shadow."""
    data["derivation"] = "shadow" if opts.derive else "disabled"
    data["derivationNote"] = "no pending revisions"
    if opts.lint:
        data["lint"] = {"available": lint_module_available(), "findings": [], "total": 0, "blocking": 0,
                        "source": None, "note": "no pending revisions"}
    if users:
        with _connect(_url(target)) as conn:
            counting.run_counts(conn, users, opts.counts)
    return list(users)


def _user_checks_only(target: Target, p: Plan, users: list[Check], opts: Options,
                      data: dict[str, Any]) -> list[Check]:
    """``derive=False``: the user checks counted on the real database, the pending SQL rendered offline and
    linted; no shadow."""
    data["derivation"] = "disabled"
    data["derivationNote"] = "derivation disabled: only user checks are counted"
    with _connect(_url(target)) as conn:
        counting.run_counts(conn, users, opts.counts)
        version = conn.info.server_version
    if opts.lint:
        sql, err = render_offline(target.at(p["target"]), p["current"])
        data["lint"] = lint_pending(sql, err, None, version)
    return list(users)


def _url(target: Target) -> str:
    """The database URL of a resolved ``target``."""
    assert target.url is not None
    return target.url


def _derive_and_count(target: Target, p: Plan, shadow_url: str | None, users: list[Check], opts: Options,
                      data: dict[str, Any], notes: list[str], shadows: list[Shadow],
                      server: ShadowServer | None = None,
                      schema_archive: str | os.PathLike[str] | None = None) -> list[Check]:
    """The pending revisions run in a shadow (appended to ``shadows``: the caller disposes of it; ``server``: the
    throw-away server started for it; ``schema_archive``: see ``make_shadow``) statement by statement; their
    checks are counted on the real database or in the data-carrying shadow; the catalog diff, the user checks and
    the lint complete the result (``analyse``)."""
    vt = version_table_of(p)
    sh = make_shadow(_url(target), shadow_url, version_table=vt, server=server, schema_archive=schema_archive)
    shadows.append(sh)
    data["shadow"] = _shadow_summary(sh)
    rec, statements, up = _run_in_shadow(target, sh, vt, notes, p, data)
    changed, _ = capture.dml_label(statements)
    after: catalog.Catalog | None = None
    if shadow_url is not None:  # the data route empties an explicit shadow database: its catalog is read first
        with _connect(sh.url) as sconn:
            after = catalog.snapshot(sconn)
    if rec.checks and (changed or stepwise.creates_routines(statements)):
        derived = _count_in_data_shadow(target, shadow_url, rec, statements, opts.data_shadow_max_bytes, data, notes,
                                        p)
    else:
        derived = _count_on_real_database(target, shadow_url, rec, statements, opts, data, notes, p)
    return analyse(_url(target), sh.url, pending=list(p["pending"]), statements=statements,
                   offline_sql=None, offline_error=None, user_checks=users, do_lint=opts.lint,
                   statement_timeout=opts.statement_timeout, data=data, derived=derived, before_cat=sh.before,
                   after_cat=after)


def _run_in_shadow(target: Target, sh: Shadow, vt: Mapping[str, Any], notes: list[str],
                   p: Plan, data: dict[str, Any] | None = None,
                   ) -> tuple[stepwise.StepRecorder, list[Statement], UpgradeResult]:
    """Apply the pending revisions to the shadow on the real database's plan ``p`` (env.py checks there that the
    shadow holds the same current revision: ``ShadowMismatch``; a plan from the catalog is confirmed here,
    ``revisions.confirm``, or ``_CatalogPlanWrong``), capturing every statement and an identity snapshot after
    each (``stepwise.StepRecorder``): ``(recorder, statements, upgrade result)``. A failure is the migration's own
    (``translate``d, re-raised with what it means). The one env.py run of the precheck: the lint reads the
    statements captured here, nothing is rendered offline. A build that fails on an INVALID index of its own
    name (an earlier attempt's leftover) is handled as migrate handles it (``ShadowRetry``: dropped, run again;
    ``data.leftovers``)."""
    log = capture.StatementLog(version_table=vt["name"])
    retry = ShadowRetry(sh.url)
    with _connect(sh.url) as sconn, sconn.cursor() as scur:
        rec = stepwise.StepRecorder(catalog.id_snapshot(scur))
        shadow_server = server_identity(sconn)  # env.py must connect there: never to the real database

    def on_revision(rev: str) -> None:
        log.on_revision(rev)
        rec.on_revision(rev)
        retry.builds.on_revision(rev)

    def attempt(first: bool) -> UpgradeResult:  # no second plan on the shadow, but after a leftover was dropped
        return upgrade(target.on(sh.url), lock_timeout=None, statement_timeout=None, on_revision=on_revision,
                       planned=p if first else None, expect_current=first, expect_server=shadow_server)

    try:
        with capture_statements(log), rec.listening():
            up = retry.run(attempt, log)
    except WrongDatabase:
        raise
    except UnexpectedCurrent as e:
        if p.get("source") == "catalog":
            raise _CatalogPlanWrong from e
        raise shadow_mismatch(e, p) from e
    except Exception as e:  # translated and re-raised with what it means for the migration
        failure = translate(e, MigrationFailed)
        if failure.outcome == Outcome.TRANSIENT_ERROR:  # the shadow server was lost, not the revision
            raise type(failure)(f"the throw-away shadow database was lost while the pending revisions ran "
                                f"in it (nothing was applied to the database; run again): "
                                f"{failure.message}", outcome=failure.outcome, field=failure.field) from e
        raise type(failure)(f"applying the pending revisions to the shadow database failed, so the "
                            f"migration would fail too: {failure.message}", outcome=failure.outcome,
                            field=failure.field) from e
    if not confirm(p, up.get("contextVersionTable")):
        raise _CatalogPlanWrong
    log.use_version_table(p["versionTable"])  # env.py's, now known: its bookkeeping is not the revisions' DML
    if log.dropped:
        notes.append(f"{log.dropped} statement(s) of the shadow run were not recorded")
    rec.mark_present()
    _say_leftovers(retry, data)
    return rec, [s.copy() for s in log.statements], up


def _say_leftovers(retry: ShadowRetry, data: dict[str, Any] | None) -> None:
    """The shadow run's dropped leftovers in ``data.leftovers`` (still on the real database; the message names
    them, ``_with_notes``)."""
    if retry.dropped and data is not None:
        data["leftovers"] = retry.found()


def _count_on_real_database(target: Target, shadow_url: str | None, rec: stepwise.StepRecorder,
                            statements: list[Statement], opts: Options, data: dict[str, Any], notes: list[str],
                            p: Plan) -> list[Check]:
    """The fast route: the recorded checks bound to the real database and counted there; when one cannot be
    counted there (an expression using an object the revisions create) every check is counted in the
    data-carrying shadow instead."""
    pristine = stepwise.save_checks(rec)
    derived = stepwise.bind_all(rec.steps, rec.start, rec.origins, "real-database")
    with _connect(_url(target)) as conn:
        counting.run_counts(conn, [c for c in derived if c.count is None], opts.counts,
                            open_session=lambda: _connect(_url(target)))  # a session apart: conn is in use
    failed = [c for c in derived if c.error]
    data["route"] = "real-database"
    if not failed:
        return derived
    stepwise.restore_checks(rec, pristine)
    notes.append(f"{len(failed)} check(s) could not be counted on the real database ("
                 f"{failed[0].name}: {failed[0].error}); every check was counted in the "
                 "data-carrying shadow instead")
    return _count_in_data_shadow(target, shadow_url, rec, statements, opts.data_shadow_max_bytes, data, notes, p)


def _count_in_data_shadow(target: Target, shadow_url: str | None, rec: stepwise.StepRecorder,
                          statements: list[Statement], max_bytes: int | None, data: dict[str, Any], notes: list[str],
                          p: Plan) -> list[Check]:
    """The data route (``analysis.stepwise``): a second shadow with the real schema and the rows of the affected
    tables, where the pending revisions run again on the plan ``p`` (confirmed by the first shadow run: env.py does
    not plan again) and each statement's checks are counted right before it. Raises ``DataShadowTooLarge`` (a
    ``PrecheckIncomplete``) above ``max_bytes``."""
    import time

    t0 = time.monotonic()
    relids = stepwise.affected_tables(rec.steps, rec.start, statements)
    if shadow_url is not None:  # an explicit shadow database serves both runs: empty it, restore the schema again
        shadow.wipe_database(libpq_url(shadow_url))
    dsh = make_shadow(_url(target), shadow_url, version_table=version_table_of(p))
    try:
        with _connect(_url(target)) as real_conn, _connect(dsh.url) as data_conn:
            loaded = stepwise.load_rows(real_conn, data_conn, rec.start, relids, max_bytes)
            data_server = server_identity(data_conn)
        counter = stepwise.DataCounter(rec.steps, rec.origins)
        retry = ShadowRetry(dsh.url)  # a leftover's build fails here too: dropped and run again, as in migrate
        try:
            with counter.listening():
                retry.run(lambda first: upgrade(
                    target.on(dsh.url), lock_timeout=None, statement_timeout=None, planned=p if first else None,
                    expect_current=first, expect_server=data_server, on_revision=retry.builds.on_revision),
                    before_again=counter.again)
        except UnexpectedCurrent as e:
            raise shadow_mismatch(e, p) from e
        except WrongDatabase:
            raise
        except Exception as e:  # noqa: BLE001 - a failing revision is a result here, not an error
            lost = translate(e)
            if isinstance(lost, DatabaseUnreachable) and lost.outcome == Outcome.TRANSIENT_ERROR:
                # the throw-away server's session was lost (terminated, the server killed): not the data's fault
                raise DatabaseUnreachable(f"the data-carrying throw-away shadow database was lost while the pending "
                                          f"revisions ran in it (nothing was applied to the database; run again): "
                                          f"{lost.message}") from e
            if counter.stopped_at is None and counter.failed is None and counter.mismatch is None:
                counter.failed = (counter.current or rec.steps[-1], error_text(e)) if rec.steps else None
                if counter.failed is None:
                    raise
        checks = counter.finish()
    finally:
        dsh.dispose(notes)
    notes.insert(0, _data_route_summary(loaded, time.monotonic() - t0, counter.stopped_at, data))
    return checks


def lint_module_available() -> bool:
    return lint.find_squawk() is not None


@isolated_imports
def render_offline(target: Target, current: str | None) -> tuple[str | None, str | None]:
    """(offline SQL of ``current``:``target.revision``, error) through the application's env.py in offline mode
    (``target`` resolved)."""
    try:
        cfg = make_config(target.project, target.url)
        script = load_script(cfg)
        with session_environment(target.url, target.url_env):
            return render_sql(cfg, script, current, str(target.revision)), None
    except Exception as e:  # noqa: BLE001
        return None, error_text(e)


# --------------------------------------------------------------------------------------------------------------
# Kubernetes phases


def prepare(
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    workdir: str | os.PathLike[str],
    shadow_url_env: str | None = None,
    server_timeout: float = 120,
) -> StepResult:
    """Phase 1 (operator image): restore the real schema into this pod's throw-away shadow server (started by
    ``--phase shadow-server``; waits up to ``server_timeout`` seconds for it) or into the explicit shadow database;
    writes ``prepare.json`` and the shadow-before catalog snapshot. Never raises (``StepBoundary``)."""
    with StepBoundary(STEP) as step:
        url = resolve_url(url, url_env)
        explicit = resolve_url(None, shadow_url_env) if shadow_url_env else None
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        if explicit:
            sh = make_shadow(url, explicit, wd)
        else:  # the throw-away server of this pod (--phase shadow-server, a sidecar)
            handle = wait_for_shadow_server(wd, timeout=server_timeout)
            target = shadowrestore.restore_schema(handle["adminUrl"], url, version_table=None, dump_dir=wd,
                                                  shadow_version=handle.get("version"))
            sh = Shadow(target.url, target.name, None, target.info, admin_url=target.admin_url)
        try:
            data = _write_prepared(sh, wd, shadow_url_env if explicit else None)
        except BaseException:
            if explicit:
                sh.dispose([])
            raise
        where = "the explicit shadow database" if explicit else "the throw-away shadow server of this pod"
        shown = {k: v for k, v in data.items() if k not in ("shadowUrl", "adminUrl")}
        step.set_result(StepResult(step=STEP, outcome=Outcome.SUCCEEDED, reason="ShadowPrepared",
                                   message=f"{where} holds the real schema", data=shown,
                                   started_at=step.started).finish())
    return step.result


def _write_prepared(sh: Shadow, wd: Path, shadow_url_env: str | None) -> PrepareInfo:
    """Write the shadow-before catalog snapshot, ``prepare.json`` (returned; ``shadow_url_env`` names an explicit
    shadow database, else the pod's throw-away server is the shadow) and the snapshot queries into ``wd``."""
    explicit = shadow_url_env is not None
    with _connect(sh.admin_url) as conn:
        before = catalog.snapshot(conn)
    (wd / BEFORE_FILE).write_bytes(pickle.dumps(before))
    data: PrepareInfo = {"shadowDatabase": None, "shadowUrlEnv": shadow_url_env,
                         "shadowUrl": None if explicit else sh.url, "adminUrl": None if explicit else sh.admin_url,
                         "created": False, "server": not explicit,
                         "shadow": _shadow_summary(sh, "explicit-database" if explicit else "throw-away-server"),
                         "copySeconds": sh.info.get("seconds")}
    (wd / PREPARE_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")
    write_snapshot_queries(sh.url, wd)
    return data


SNAPSHOT_QUERIES_FILE = "snapshot-queries.json"  # runner.inject.snapshots.QUERIES_FILE
SNAPSHOTS_FILE = "snapshots.json"  # runner.inject.snapshots.SNAPSHOTS_FILE


def write_snapshot_queries(shadow_url: str, wd: Path) -> None:
    """``snapshot-queries.json`` for the shadow-upgrade container: the identity snapshot's queries for the shadow
    server's version (``runner.inject.snapshots``)."""
    with _connect(shadow_url) as conn:
        version = int(conn.info.server_version)
    (wd / SNAPSHOT_QUERIES_FILE).write_text(
        json.dumps({"version": version, "queries": catalog.id_queries(version)}), encoding="utf-8")


def _replay(wd: Path) -> stepwise.StepRecorder | None:
    """The statement-by-statement record rebuilt from ``snapshots.json`` (None when the shadow-upgrade container
    wrote none: an older injected runner), every check marked present at the target or not."""
    f = wd / SNAPSHOTS_FILE
    if not f.exists():
        return None
    try:
        rec = stepwise.replay(json.loads(f.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InternalError(f"{SNAPSHOTS_FILE} is unreadable ({e})", field=SNAPSHOTS_FILE) from e
    rec.mark_present()
    return rec


def replayed_checks(wd: Path, statements: list[Statement] | None, data: dict[str, Any] | None = None,
                    notes: list[str] | None = None) -> list[Check] | None:
    """The statement-by-statement checks rebuilt from ``snapshots.json`` (None when the shadow-upgrade container
    wrote none: an older injected runner; the name-based diff is used then).

    When the revisions change or read data, ``data-prepare`` made a data-carrying shadow and ``data-upgrade``
    counted each check there right before its statement: the checks are judged from that run
    (:func:`_data_route_checks`; ``data`` gets ``route: data-shadow`` and ``dataShadow``, ``notes`` the note), or
    ``DataShadowTooLarge`` is raised when the affected tables exceeded ``spec.precheck.dataShadow.maxSize``.
    Otherwise the checks are bound to the real database (fast route); only when no data-carrying shadow could be
    made (an explicit shadow database) are the checks on the tables the data statements name (and their
    foreign-key neighbours) reported not evaluated instead of counted before the data changes."""
    rec = _replay(wd)
    if rec is None:
        return None
    made = _data_shadow_made(wd)
    if made is not None:
        return _data_route_checks(wd, rec, made, data if data is not None else {}, notes if notes is not None else [])
    changed, _ = capture.dml_label(statements)
    if changed:
        touched = set(stepwise.affected_tables([], rec.start, statements or []))
        for c in rec.checks:
            if c.extra.get("relid") in touched or c.extra.get("ref_relid") in touched:
                c.unevaluated = ("the pending revisions change or read this table's rows and no data-carrying "
                                 "shadow could be made (an explicit shadow database holds only one copy of the "
                                 "schema); schemagate precheck counts them in a data-carrying shadow")
    return stepwise.bind_all(rec.steps, rec.start, rec.origins, "real-database")


# --------------------------------------------------------------------------------------------------------------
# the data route of the Kubernetes phases: data-prepare (operator image) -> data-upgrade (application image) ->
# count

DATA_QUERIES_FILE = "data-queries.json"  # runner.inject.datarun.QUERIES_FILE: the shadow's URL, plan, queries
DATA_COUNTS_FILE = "data-counts.json"  # runner.inject.datarun.COUNTS_FILE: what data-upgrade counted
DATA_SHADOW_FILE = "data-shadow.json"  # data-prepare -> count: {"load", "seconds"} or {"blocked": {message, field}}
DATA_SHADOW_SUFFIX = "_sg_data"  # the data-carrying shadow's name on the pod's server: <real name>_sg_data


def data_prepare(
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    workdir: str | os.PathLike[str],
    data_shadow_max_bytes: int | None = DEFAULT_DATA_SHADOW_MAX_BYTES,
) -> StepResult:
    """Phase 2b (operator image, after ``shadow-upgrade``): when the pending revisions change or read data (or
    create a routine a check may call), create the data-carrying shadow on this pod's throw-away server (the real
    schema, restored with ``runner.shadowrestore``, and the rows of the affected tables, ``stepwise.load_rows``,
    bounded by ``data_shadow_max_bytes``: above it nothing is copied and ``count`` reports
    ``DataShadowTooLarge``) and write ``data-queries.json``: per recorded statement the counting queries
    ``data-upgrade`` runs right before it (``stepwise.data_queries``). Otherwise a quick no-op
    (``DataShadowNotNeeded``). Never raises (``StepBoundary``)."""
    with StepBoundary(STEP) as step:
        url = resolve_url(url, url_env)
        wd = Path(workdir)
        wanted = _data_route_wanted(url, wd)
        if isinstance(wanted, str):
            step.succeed("DataShadowNotNeeded", wanted)
        else:
            made = _make_data_shadow(url, wd, *wanted, data_shadow_max_bytes)
            step.data["dataShadow"] = made
            step.succeed("DataShadowPrepared", "the data-carrying shadow holds the rows of the affected tables"
                         if "blocked" not in made else "the affected tables exceed spec.precheck.dataShadow.maxSize")
    return step.result


def _data_route_wanted(url: str, wd: Path) -> tuple[stepwise.StepRecorder, list[Statement], ShadowUpgradeDoc,
                                                    PrepareInfo, list[str]] | str:
    """What the data route needs (the record, the statements, ``shadow-upgrade.json``, ``prepare.json``, notes), or
    why it is not taken. The same rule as the all-in-one precheck's: recorded checks, and the revisions change or
    read data or create a routine, or a check cannot be counted on the real database (:func:`_refused_by_real`)."""
    if (wd / DOWNGRADE_FILE).exists():
        return "a downgrade was tried on the shadow: no data-carrying shadow"
    rec = _replay(wd)
    up = _shadow_upgrade_result(wd)
    statements = up.get("statements")
    if rec is None or not isinstance(statements, list) or not rec.checks:
        return "no statement-by-statement checks recorded: no data-carrying shadow"
    changed, _ = capture.dml_label(statements)
    notes: list[str] = []
    if not (changed or stepwise.creates_routines(statements)):
        failed = _refused_by_real(url, rec)
        if not failed:
            return "the pending revisions change no data the checks depend on: no data-carrying shadow"
        notes.append(f"{len(failed)} check(s) could not be counted on the real database ({failed[0].name}: "
                     f"{failed[0].error}); every check was counted in the data-carrying shadow instead")
    info = _prepare_info(wd)
    if not info.get("adminUrl"):
        return "an explicit shadow database holds no second, data-carrying shadow"
    return rec, statements, up, info, notes


def _refused_by_real(url: str, rec: stepwise.StepRecorder) -> list[Check]:
    """The checks of the fast route (bound to the real database as ``count`` binds them) whose counting query
    PostgreSQL refuses there (``EXPLAIN``, which parses and plans but scans nothing: an object the revisions
    create other than a routine, e.g. a type a CHECK casts to), each with its ``error``; ``rec`` is left as it
    was. The all-in-one precheck counts such checks in the data-carrying shadow (``_count_on_real_database``)."""
    pristine = stepwise.save_checks(rec)
    try:
        failed = []
        with _connect(url) as conn:
            for c in stepwise.bind_all(rec.steps, rec.start, rec.origins, "real-database"):
                for q in counting.plan_queries([c] if c.count is None else []):
                    try:
                        with conn.transaction(), conn.cursor() as cur:
                            cur.execute("SET TRANSACTION READ ONLY")
                            cur.execute("EXPLAIN " + q.sql)
                    except Exception as e:  # noqa: BLE001 - any refusal marks the check
                        c.error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                        failed.append(c)
        return failed
    finally:
        stepwise.restore_checks(rec, pristine)


def _make_data_shadow(url: str, wd: Path, rec: stepwise.StepRecorder, statements: list[Statement],
                      up: ShadowUpgradeDoc, info: PrepareInfo, notes: list[str], max_bytes: int | None
                      ) -> dict[str, Any]:
    """The data-carrying shadow ``<name>_sg_data`` next to the schema shadow on the pod's server (the
    application's role keeps its password there), its rows, ``data-queries.json`` and ``data-shadow.json``
    (returned)."""
    import time
    import urllib.parse

    t0 = time.monotonic()
    relids = stepwise.affected_tables(rec.steps, rec.start, statements)
    schema_url = resolve_url(str(info["shadowUrl"]), None)
    vt, summary = up.get("versionTable"), info.get("shadow")
    target = shadowrestore.restore_schema(
        resolve_url(str(info["adminUrl"]), None), url, version_table=(vt["schema"], vt["name"]) if vt else None,
        dump_dir=wd, shadow_version=summary["shadowServerVersion"] if summary else None,
        database=database_name(schema_url)[:50] + DATA_SHADOW_SUFFIX,
        password=urllib.parse.unquote(urllib.parse.urlsplit(schema_url).password or "") or None)
    made: dict[str, Any]
    try:
        with _connect(url) as real_conn, _connect(target.url) as data_conn:
            loaded = stepwise.load_rows(real_conn, data_conn, rec.start, relids, max_bytes)
    except stepwise.DataShadowTooLarge as e:
        made = {"blocked": {"message": e.message, "field": e.field}}
    else:
        queries = {"url": target.url, "plan": up.get("plan"), "versionTable": vt,
                   "steps": stepwise.data_queries(rec.steps, rec.origins)}
        (wd / DATA_QUERIES_FILE).write_text(json.dumps(queries), encoding="utf-8")
        made = {"load": loaded, "seconds": round(time.monotonic() - t0, 3), "notes": notes}
    (wd / DATA_SHADOW_FILE).write_text(json.dumps(made), encoding="utf-8")
    return made


def _data_shadow_made(wd: Path) -> dict[str, Any] | None:
    """``data-shadow.json`` (None: data-prepare made no data-carrying shadow); raises ``DataShadowTooLarge``
    when it was blocked by ``spec.precheck.dataShadow.maxSize``."""
    f = wd / DATA_SHADOW_FILE
    if not f.exists():
        return None
    try:
        made: dict[str, Any] = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InternalError(f"{DATA_SHADOW_FILE} is unreadable ({e})", field=DATA_SHADOW_FILE) from e
    if "blocked" in made:
        raise stepwise.DataShadowTooLarge(str(made["blocked"]["message"]), field=made["blocked"].get("field"))
    return made


def _data_route_checks(wd: Path, rec: stepwise.StepRecorder, made: dict[str, Any], data: dict[str, Any],
                       notes: list[str]) -> list[Check]:
    """Every recorded check judged from the run ``data-upgrade`` made in the data-carrying shadow
    (``data-counts.json``, ``stepwise.RecordedDataCounter``: the all-in-one precheck's ``DataCounter`` rules);
    fills ``data`` (``route``, ``dataShadow``) and ``notes``."""
    try:
        doc = json.loads((wd / DATA_COUNTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InternalError(f"{DATA_COUNTS_FILE} missing or unreadable: the data-upgrade container did not finish "
                            f"({e})", field=DATA_COUNTS_FILE) from e
    counter = stepwise.RecordedDataCounter(rec.steps, rec.origins)
    try:
        counter.replay(doc.get("events") or [])
    except (ValueError, KeyError, TypeError) as e:
        raise InternalError(f"{DATA_COUNTS_FILE} does not match the recorded statements ({e})",
                            field=DATA_COUNTS_FILE) from e
    error = doc.get("error")
    if error and counter.stopped_at is None and counter.failed is None and counter.mismatch is None:
        if not rec.steps:
            raise MigrationFailed(f"applying the pending revisions to the data-carrying shadow failed: {error}")
        counter.failed = (counter.current or rec.steps[-1], str(error))
    checks = counter.finish()
    notes.insert(0, _data_route_summary(made["load"], float(made.get("seconds") or 0) + float(doc.get("seconds") or 0),
                                        counter.stopped_at, data))
    notes.extend(str(n) for n in made.get("notes") or [])
    return checks


def _data_route_summary(loaded: stepwise.DataShadowLoad, seconds: float, stopped_at: stepwise.Step | None,
                        data: dict[str, Any]) -> str:
    """``data.route``/``data.dataShadow`` of the data route; returns its note (the same text on both paths)."""
    data["route"] = "data-shadow"
    data["dataShadow"] = {**loaded, "seconds": round(seconds, 3), "stoppedAt": stopped_at.where if stopped_at else None}
    return (f"the pending revisions change or read data: each check was counted in a data-carrying shadow "
            f"({len(loaded['tables'])} table(s), {loaded['bytes']} bytes) right before the statement that "
            f"validates it")


class _PodShadow(Shadow):
    """The shadow on this pod's throw-away server: ``dispose`` tells the shadow-server sidecar to stop."""

    def __init__(self, url: str, admin_url: str, workdir: Path):
        super().__init__(url, database_name(url), None, {}, admin_url=admin_url)
        self.workdir = workdir

    def dispose(self, notes: list[str]) -> None:
        try:
            (self.workdir / SHADOW_DONE_FILE).write_text("done\n", encoding="utf-8")
        except OSError as e:
            notes.append(f"could not tell the shadow server to stop: {e.strerror}")


def shadow_server(workdir: str | os.PathLike[str], *, poll: float = 0.2) -> StepResult:
    """The shadow-server phase (operator image, a sidecar of the precheck Job's pod): start the throw-away server
    (``$SCHEMAGATE_SHADOW_DIR``, the pod's memory-backed ``emptyDir``), publish its superuser URL in
    ``workdir/shadow-server.json`` (the pod's private ``emptyDir``; the server listens on the pod's 127.0.0.1 and
    holds a schema only), and stop it (directory removed) when ``count`` writes ``workdir/shadow-done`` or on
    SIGTERM (the kubelet stops sidecars after the main container)."""
    import signal
    import time

    started = now()
    wd = Path(workdir)
    stop = {"now": False}

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop["now"] = True

    import threading

    if threading.current_thread() is threading.main_thread():  # (tests run the phase in a thread)
        signal.signal(signal.SIGTERM, on_term)
    if (wd / SHADOW_DONE_FILE).exists():  # restarted after the count finished: nothing to serve
        return StepResult(step=STEP, outcome=Outcome.SUCCEEDED, reason="ShadowStopped",
                          message="the count already finished", started_at=started).finish()
    _remove_earlier_runs()
    server = ShadowServer()
    with StepBoundary(STEP) as step:
        try:
            server.start()
            handle = wd / SHADOW_SERVER_FILE
            tmp = handle.with_suffix(".tmp")
            tmp.write_text(json.dumps({"adminUrl": server.url(), "version": server.version}), encoding="utf-8")
            os.chmod(tmp, 0o644)  # the application's image may run as another user in the same pod
            tmp.replace(handle)
            while not stop["now"] and not (wd / SHADOW_DONE_FILE).exists():
                time.sleep(poll)
        finally:
            server.stop()
            (wd / SHADOW_SERVER_FILE).unlink(missing_ok=True)
        step.data["shadowServerVersion"] = server.version
        step.succeed("ShadowStopped", f"the throw-away shadow server (PostgreSQL {server.version}) ran and is removed")
    return step.result


def _remove_earlier_runs() -> list[Path]:
    """Remove the server directories earlier runs of this sidecar left in the pod's shadow volume
    (``$SCHEMAGATE_SHADOW_DIR``, set by the Job; nothing is removed without it). The kubelet starts a sidecar
    again only after its run has ended, e.g. killed by the kernel at the memory limit (SIGKILL: no cleanup); what
    that run left stays on the memory-backed ``emptyDir``, counting against the pod's memory with every restart,
    and ``sweep_stale`` keeps it: each run is PID 1 of its own PID namespace, so the recorded owner looks alive.
    Only this sidecar uses that volume, so every server directory there is an earlier run's."""
    from schemagate.runner import shadowserver

    explicit = os.environ.get(shadowserver.SHADOW_DIR_ENV)
    if not explicit:
        return []
    left = sorted(Path(explicit).glob(shadowserver.DIR_PREFIX + "*"))
    for d in left:
        shadowserver._destroy(d)  # stops a postmaster still running there (no PID namespaces: a test bed)
    return left


def wait_for_shadow_server(workdir: Path, timeout: float = 300) -> ShadowServerHandle:
    """The handle the shadow-server sidecar publishes, waiting up to ``timeout`` seconds for it."""
    import time

    deadline = time.monotonic() + timeout
    f = workdir / SHADOW_SERVER_FILE
    while True:
        try:
            handle: ShadowServerHandle = json.loads(f.read_text(encoding="utf-8"))
            return handle
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise ShadowUnavailable(f"the shadow-server container did not publish {f} within {timeout:g}s "
                                        "(see its log)", field=SHADOW_SERVER_FILE) from None
            time.sleep(0.2)


def _shadow_from_prepare(url: str, info: Mapping[str, Any], workdir: Path | None = None) -> Shadow:
    if info.get("shadowUrl"):
        assert workdir is not None
        sh: Shadow = _PodShadow(resolve_url(str(info["shadowUrl"]), None),
                                resolve_url(str(info.get("adminUrl") or info["shadowUrl"]), None), workdir)
        before = workdir / BEFORE_FILE
        if before.exists():
            sh.before = pickle.loads(before.read_bytes())  # noqa: S301 - written by --phase prepare in this pod
        return sh
    env = info.get("shadowUrlEnv")
    if not env:
        raise InvalidInput(f"{PREPARE_FILE} names no shadow database", field=PREPARE_FILE)
    explicit = resolve_url(None, str(env))
    return Shadow(explicit, database_name(explicit), None, {})


def count(
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    workdir: str | os.PathLike[str] | None,
    max_violations: int = 0,
    user_checks: Iterable[Any] = (),
    lint: bool = True,
    lint_fail: str = "none",
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT,
    derive: bool = True,
    accept_unevaluated: Sequence[str] = (),
    data_shadow_max_bytes: int | None = DEFAULT_DATA_SHADOW_MAX_BYTES,
    max_data_loss: int = 0,
) -> StepResult:
    """Phase 3 (operator image): catalog diff, counting and squawk after shadow-upgrade; stops the shadow.

    When the shadow-upgrade container tried a downgrade (``--allow-downgrade``, ``spec.allowDowngrade``) it left
    ``shadow-downgrade.json``: the rows at risk are counted instead (``runner.downgrade.count_phase``, blocked above
    ``max_data_loss``).

    ``derive=False`` (``spec.precheck.derive: false``: the Job has this one container, no shadow at all) counts
    only ``user_checks`` on the real database, read-only; ``workdir`` may then be None.
    ``accept_unevaluated`` as in :func:`precheck`; ``data_shadow_max_bytes`` is accepted for the same command
    line (the limit applies in :func:`data_prepare`, whose verdict ``count`` reports). When ``data-upgrade``
    counted in a data-carrying shadow, the checks are judged from its record (:func:`replayed_checks`)."""
    opts = Options(max_violations=max_violations, lint=lint, lint_fail=lint_fail, statement_timeout=statement_timeout,
                   accept_unevaluated=tuple(accept_unevaluated), data_shadow_max_bytes=data_shadow_max_bytes,
                   derive=derive)
    notes: list[str] = []
    shadows: list[Shadow] = []
    with StepBoundary(STEP, data=_base_data(max_violations)) as step:
        try:
            url = resolve_url(url, url_env)
            if not derive and (workdir is None or not (Path(workdir) / PREPARE_FILE).exists()):
                step.set_result(_finish(step, _count_user_checks(url, user_checks, opts, step.data), opts))
            elif workdir is not None and (Path(workdir) / DOWNGRADE_FILE).exists():
                from schemagate.runner.downgrade import count_phase

                shadows.append(_shadow_from_prepare(url, _prepare_info(Path(workdir)), Path(workdir)))
                step.set_result(count_phase(url, None, Path(workdir), max_data_loss))
            else:
                assert workdir is not None
                checks = _count_after_shadow_upgrade(url, Path(workdir), user_checks, opts, step.data, shadows)
                step.set_result(_finish(step, checks, opts))
        finally:
            for sh in shadows:
                sh.dispose(notes)
    return _with_notes(step.result, notes)


def _count_user_checks(url: str, user_checks: Iterable[Any], opts: Options, data: dict[str, Any]) -> list[Check]:
    """``derive=False`` (the Job's only container): the user checks counted on the real database, read-only; no
    shadow, no lint."""
    users = parse_user_checks(user_checks)
    data["derivationNote"] = "derivation disabled (spec.precheck.derive=false): only user checks are " \
                             "counted, no shadow"
    data["lint"] = lint_module.unavailable("derivation disabled: no pending SQL rendered")
    with _connect(url) as conn:
        counting.run_counts(conn, users, opts.counts)
    return users


def _prepare_info(wd: Path) -> PrepareInfo:
    """``prepare.json`` of phase 1. Raises ``InvalidInput`` naming it when prepare did not run."""
    try:
        info: PrepareInfo = json.loads((wd / PREPARE_FILE).read_text(encoding="utf-8"))
        return info
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{PREPARE_FILE} missing or unreadable in {wd}: run --phase prepare first ({e})",
                           field=PREPARE_FILE) from e


def _shadow_upgrade_result(wd: Path) -> ShadowUpgradeDoc:
    """``shadow-upgrade.json`` of phase 2. Raises ``InternalError`` naming it when the shadow-upgrade container
    did not finish."""
    try:
        doc: ShadowUpgradeDoc = json.loads((wd / SHADOW_UPGRADE_FILE).read_text(encoding="utf-8"))
        return doc
    except (OSError, ValueError) as e:
        raise InternalError(f"{SHADOW_UPGRADE_FILE} missing or unreadable: the shadow-upgrade container did "
                            f"not finish ({e})", field=SHADOW_UPGRADE_FILE) from e


def _count_after_shadow_upgrade(url: str, wd: Path, user_checks: Iterable[Any], opts: Options, data: dict[str, Any],
                                shadows: list[Shadow]) -> list[Check]:
    """Phase 3 proper: the shadow ``prepare`` made (appended to ``shadows``: the caller disposes of it), the
    statements and snapshots shadow-upgrade wrote, then ``analyse`` (catalog diff, counting, lint)."""
    info = _prepare_info(wd)
    sh = _shadow_from_prepare(url, info, wd)
    shadows.append(sh)
    users = parse_user_checks(user_checks)
    up = _shadow_upgrade_result(wd)
    pending = list(up.get("pending") or [])
    data.update(currentRevision=up.get("fromRevision", info.get("currentRevision")),
                targetRevision=up.get("targetRevision") or up.get("toRevision"), pending=pending)
    sql_path = wd / PENDING_SQL_FILE
    offline_sql = sql_path.read_text(encoding="utf-8") if sql_path.exists() else None
    statements = up.get("statements") if isinstance(up.get("statements"), list) else None
    notes: list[str] = []
    derived = replayed_checks(wd, statements, data, notes) if opts.derive else None
    checks = analyse(url, sh.url, pending=pending, statements=statements, offline_sql=offline_sql or None,
                     offline_error=up.get("sqlError"), user_checks=users, do_lint=opts.lint,
                     statement_timeout=opts.statement_timeout, data=data, derive_checks=opts.derive, derived=derived,
                     before_cat=sh.before)
    if derived is not None:
        data.setdefault("route", "real-database")
    if notes:
        data["derivationNote"] = "; ".join(filter(None, [data.get("derivationNote"), *notes]))
    if info.get("shadow"):
        data["shadow"] = info["shadow"]
    if up.get("leftovers"):  # INVALID leftovers the shadow run dropped and built again, as migrate will
        data["leftovers"] = up["leftovers"]
    if not pending:
        data["derivationNote"] = "no pending revisions"
    return checks
