"""The precheck step: count the rows of the real database that would violate the constraints the pending Alembic
revisions add, lint their SQL with squawk, and fail (``ChecksFailed``/``ViolationsFound``, exit 3) when the
total is above ``max_violations``.

Public API (the CLI's ``schemagate precheck`` calls these; all return a finished :class:`StepResult` whose
``data`` follows docs/architecture.md, and never raise for database or input errors)::

    precheck(config_path, target="head", url=None, url_env="DATABASE_URL", *, max_violations=0,
             user_checks=(), derive=True, lint=True, lint_fail="none", shadow_url=None, shadow_url_env=None,
             statement_timeout="1h", keep_shadow=False) -> StepResult
        All in one process (laptop, ``schemagate run``): plan -> shadow database (schema-only copy incl. the
        Alembic version rows) -> apply the pending revisions to it with ``schemagate.runner.inject.apply.upgrade`` while
        capturing the statements -> catalog diff -> counting -> squawk -> drop the shadow (always).

    prepare(url=None, url_env="DATABASE_URL", *, workdir, shadow_url_env=None) -> StepResult
        Kubernetes, first init container (operator image): create the shadow database and copy the schema into it;
        writes ``workdir/prepare.json``.

    count(url=None, url_env="DATABASE_URL", *, workdir, max_violations=0, user_checks=(), lint=True,
          lint_fail="none", statement_timeout="1h") -> StepResult
        Kubernetes, main container (operator image), after ``python -m schemagate.runner.inject shadow-upgrade
        --workdir`` ran in the application's image: catalog diff, counting, squawk, drop the shadow (always).

Workdir files (shared ``emptyDir`` between the containers):

- ``prepare.json`` (written by ``prepare``): ``{"shadowDatabase": name|null, "shadowUrlEnv": env|null,
  "created": bool, "currentRevision": id|null, "versionTables": [..]}``. The shadow-upgrade container targets
  ``shadowDatabase`` on the server of its ``--database-url-env`` URL (``runner.with_database``), or the URL
  in ``shadowUrlEnv`` when an explicit shadow database was given.
- ``shadow-upgrade.json`` (written by shadow-upgrade): ``{fromRevision, targetRevision, pending, applied,
  sqlError?, statements?}``; ``statements`` (optional) is the captured list described in
  ``schemagate.analysis.capture`` (without it, whether the revisions change data is reported as unknown).
- ``pending.sql`` (written by shadow-upgrade): the offline rendering, linted with squawk.

``user_checks`` items are ``{"name", "sql", "table"?}`` mappings, ``(name, sql)`` pairs or
``schemagate.analysis.counting.Check`` objects; ``sql`` must return one row with one number, the violation count,
and runs in the same read-only transaction as the derived checks.

``lint_fail``: ``"none"`` (default: findings are reported, never fail), ``"blocking"`` (fail on findings of
``analysis.lint.BLOCKING_RULES``), ``"any"``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from schemagate.analysis import capture, catalog, counting, derive, lint, locks, shadow, stepwise
from schemagate.analysis.counting import Check, CountOptions
from schemagate.contract.checks import UserCheck
from schemagate.contract.dburl import DEFAULT_URL_ENV, database_name, libpq_url, resolve_url, with_database
from schemagate.contract.errors import (
    InternalError,
    InvalidInput,
    MigrationFailed,
    error_result,
    error_text,
    translate,
)
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import Outcome, Plan, StepResult, now
from schemagate.libpq import connect, pg_bin
from schemagate.runner.inject.apply import render_sql, upgrade
from schemagate.runner.inject.capture import capture_statements
from schemagate.runner.inject.config import isolated_imports, load_script, make_config, session_environment
from schemagate.runner.inject.revisions import plan

STEP = "precheck"
DEFAULT_STATEMENT_TIMEOUT = "1h"
LINT_FAIL_MODES = ("none", "blocking", "any")
DEFAULT_DATA_SHADOW_MAX_BYTES = 1 << 30  # spec.precheck.dataShadow.maxSize default: 1Gi
PREPARE_FILE = "prepare.json"
SHADOW_UPGRADE_FILE = "shadow-upgrade.json"
PENDING_SQL_FILE = "pending.sql"


# --------------------------------------------------------------------------------------------------------------
# helpers


_SIZE = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
         "Ti": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str | int) -> int:
    """Bytes from a Kubernetes quantity (``512Mi``, ``1Gi``, ``2G``), ``MB``/``GB`` or a plain number of bytes.

    Raises ValueError naming the value when it is not one."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kMGT]i?|[KMGT]B)?\s*", str(text))
        if not m:
            raise ValueError(f"{text!r} is not a size (e.g. 512Mi, 1Gi, 2G or a number of bytes)")
        value = int(float(m.group(1)) * _SIZE[m.group(2) or ""])
    if value <= 0:
        raise ValueError(f"{text!r}: the size must be above 0")
    return value


def _connect(url: str) -> Any:
    return connect(url)


def parse_user_checks(items: Iterable[Any]) -> list[Check]:
    """User checks (``UserCheck.parse_all``: ``NAME=SQL``, ``{name, sql, table?}``, ``(name, sql)``; a repeated name
    is ``InvalidInput``) as counting checks."""
    return [counting.user(c.name, c.sql, table=c.table) for c in UserCheck.parse_all(items, "--check")]


def _read_current_revision(conn: Any, tables: Sequence[tuple[str, str]]) -> str | None:
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


def _drop_quietly(admin_url: str, name: str, notes: list[str]) -> None:
    try:
        shadow.drop_shadow(libpq_url(admin_url), name)
    except Exception as e:  # noqa: BLE001 - report, never mask the real result
        notes.append(f"could not drop the shadow database {name}: {error_text(e)}")


# --------------------------------------------------------------------------------------------------------------
# shadow preparation (shared by precheck and prepare)


class Shadow:
    """A prepared shadow database: ``url`` (with password), ``name``, ``created`` (ours to drop)."""

    def __init__(self, url: str, name: str | None, created: bool, admin_url: str, info: dict[str, Any]):
        self.url, self.name, self.created, self.admin_url, self.info = url, name, created, admin_url, info

    def dispose(self, notes: list[str]) -> None:
        if self.created and self.name:
            _drop_quietly(self.admin_url, self.name, notes)
        elif not self.created:
            try:
                shadow.wipe_database(libpq_url(self.url))
            except Exception as e:  # noqa: BLE001
                notes.append(f"could not empty the explicit shadow database: {error_text(e)}")


def make_shadow(url: str, shadow_url: str | None = None, workdir: str | os.PathLike[str] | None = None) -> Shadow:
    """Create (or take the explicit, empty) shadow database and copy the real schema into it."""
    real = libpq_url(url)
    if shadow_url:
        target = libpq_url(shadow_url)
        if database_name(shadow_url) == database_name(url) and \
                with_database(real, "x") == with_database(target, "x"):
            raise InvalidInput("the shadow database URL points at the real database", field="shadow database URL")
        if shadow.user_table_count(target) > 0:
            raise InvalidInput("the explicit shadow database is not empty: schemagate needs an empty database "
                               "it may overwrite", field="shadow database URL")
        sh = Shadow(shadow_url, database_name(shadow_url), False, shadow_url, {})
    else:
        name = shadow.shadow_name(database_name(url) or "db")
        try:
            shadow.drop_stale_shadows(real, database_name(url) or "db")
        except Exception:  # noqa: BLE001 - best effort
            pass
        shadow.create_shadow(real, name)
        sh = Shadow(with_database(url, name), name, True, url, {})
    try:
        with tempfile.TemporaryDirectory(prefix="schemagate-shadow-", dir=workdir) as tmp:
            sh.info = shadow.copy_schema(real, libpq_url(sh.url), pg_dump=pg_bin("pg_dump"),
                                         pg_restore=pg_bin("pg_restore"), workdir=tmp)
    except BaseException:
        sh.dispose([])
        raise
    return sh


# --------------------------------------------------------------------------------------------------------------
# analysis after the shadow run (shared by precheck and count)


def analyse(
    url: str,
    shadow_url: str,
    *,
    pending: list[str],
    statements: list[dict[str, Any]] | None,
    offline_sql: str | None,
    offline_error: str | None,
    user_checks: Sequence[Check],
    do_lint: bool,
    statement_timeout: str,
    data: dict[str, Any],
    derive_checks: bool = True,
    derived: list[Check] | None = None,
) -> list[Check]:
    """Diff the catalogs, count, lint; fills ``data`` and returns every check (derived and user).

    ``derived``: the checks recorded statement by statement (``analysis.stepwise``), already bound to the real
    database (fast route) or already counted in the data-carrying shadow (data route); the checks without a
    count are counted here on the real database. Without it (the Kubernetes phases) the checks come from the
    name-based catalog diff of the real database against the shadow after the revisions.
    With ``derive_checks=False`` only the user checks are counted; the diff still supplies the new indexes and
    the intentionally NOT VALID constraints that verify needs."""
    with _connect(shadow_url) as sconn:
        shadow_cat = catalog.snapshot(sconn)
    with _connect(url) as conn:
        real_cat = catalog.snapshot(conn)
        d = derive.derive(real_cat, shadow_cat)
        notes = list(d.notes) if derived is None else []
        if derived is None:
            derive.attribute_revisions(d.checks, statements or [], pending)
            changed, label = capture.dml_label(statements)
            if label:
                notes.insert(0, label)
                if changed:
                    for c in d.counted:
                        c.note = f"{c.note}; {label}" if c.note else "before the pending revisions' data changes"
            found = d.checks
            for c in found:
                c.evaluated_by = c.evaluated_by or ("no-rows" if c.skipped else "real-database")
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


def lint_pending(offline_sql: str | None, offline_error: str | None, statements: list[dict[str, Any]] | None,
                 server_version_num: int) -> dict[str, Any]:
    """Lint the offline rendering, or (when it failed) the DDL captured in the shadow run."""
    version = lint.pg_major_version(server_version_num)
    if offline_sql:
        return lint.lint_sql(offline_sql, pg_version=version, source="offline")
    why = f"offline rendering (alembic upgrade --sql) failed: {offline_error}" if offline_error else \
        "no offline rendering available"
    if statements:
        res = lint.lint_sql(capture.ddl_script(statements), pg_version=version, source="captured")
        res["note"] = f"{why}; linted the DDL executed in the shadow run instead" + (
            f"; {res['note']}" if res.get("note") else "")
        return res
    return lint.unavailable(f"{why}; no captured statements to lint")


def _finish(data: dict[str, Any], checks: Sequence[Check], max_violations: int, lint_fail: str,
            started: Any, accepted: Sequence[str] = ()) -> StepResult:
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
    data["maxViolations"] = max_violations
    data["acceptUnevaluated"] = list(accepted)
    routes: dict[str, int] = {}
    for entry in data["checks"]:
        routes[str(entry.get("evaluatedBy"))] = routes.get(str(entry.get("evaluatedBy")), 0) + 1
    data["evaluatedBy"] = routes
    lint_result = data.get("lint")
    failed_lint = _lint_fail(lint_fail, lint_result or {})
    outcome, reason, message = _message(checks, total, max_violations, lint_result, failed_lint, accepted)
    return StepResult(step=STEP, outcome=outcome, reason=reason, message=redact(message), data=data,
                      started_at=started).finish()


# --------------------------------------------------------------------------------------------------------------
# all in one


def precheck(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
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
) -> StepResult:
    """Plan (``planned``: the caller's plan of this database, not recomputed), derive the checks in a shadow database, count, lint (see the module docstring).

    ``accept_unevaluated``: names of checks that may stay not evaluated without blocking
    (``spec.precheck.acceptUnevaluated``). ``data_shadow_max_bytes``: the largest total size of the tables
    copied into the data-carrying shadow (``spec.precheck.dataShadow.maxSize``; None: no limit); above it the
    step is blocked (``DataShadowTooLarge``) before anything is copied."""
    started = now()
    data = _base_data(max_violations)
    notes: list[str] = []
    sh: Shadow | None = None
    try:
        if max_violations < 0:
            raise InvalidInput("maxViolations must be >= 0", field="maxViolations")
        if lint_fail not in LINT_FAIL_MODES:
            raise InvalidInput(f"lint_fail must be one of {', '.join(LINT_FAIL_MODES)}", field="lint_fail")
        users = parse_user_checks(user_checks)
        url = resolve_url(url, url_env)
        if shadow_url_env and not shadow_url:
            shadow_url = resolve_url(None, shadow_url_env)
        p = planned if planned is not None else plan(config_path, target, url, url_env)
        data.update(currentRevision=p["current"], targetRevision=p["target"], pending=list(p["pending"]),
                    expectedRevisions=list(p["expected"]))
        checks: list[Check] = list(users)
        if not p["pending"]:
            data["derivation"] = "shadow" if derive else "disabled"
            data["derivationNote"] = "no pending revisions"
            if lint:
                data["lint"] = {"available": lint_module_available(), "findings": [], "total": 0, "blocking": 0,
                                "source": None, "note": "no pending revisions"}
            if users:
                with _connect(url) as conn:
                    counting.run_counts(conn, users, CountOptions(statement_timeout=statement_timeout))
            return _finish(data, checks, max_violations, lint_fail, started, accept_unevaluated)
        if derive:
            sh = make_shadow(url, shadow_url)
            log = capture.StatementLog()
            with _connect(sh.url) as sconn, sconn.cursor() as scur:
                rec = stepwise.StepRecorder(catalog.id_snapshot(scur))

            def on_revision(rev: str) -> None:
                log.on_revision(rev)
                rec.on_revision(rev)

            try:
                with capture_statements(log), rec.listening():
                    up = upgrade(config_path, p["target"], sh.url, url_env, lock_timeout=None,
                                 statement_timeout=None, render_sql_text=lint, on_revision=on_revision)
            except Exception as e:  # translated and re-raised with what it means for the migration
                failure = translate(e, MigrationFailed)
                raise type(failure)(f"applying the pending revisions to the shadow database failed, so the "
                                    f"migration would fail too: {failure.message}", outcome=failure.outcome,
                                    field=failure.field) from e
            if log.dropped:
                notes.append(f"{log.dropped} statement(s) of the shadow run were not recorded")
            rec.mark_present()
            statements: list[dict[str, Any]] = [dict(s) for s in log.statements]
            changed, _ = capture.dml_label(statements)
            if rec.checks and (changed or stepwise.creates_routines(statements)):
                derived = _count_in_data_shadow(config_path, p["target"], url, url_env, shadow_url, rec,
                                                statements, data_shadow_max_bytes, data, notes)
            else:
                pristine = stepwise.save_checks(rec)
                derived = stepwise.bind_all(rec.steps, rec.start, rec.origins, "real-database")
                with _connect(url) as conn:
                    counting.run_counts(conn, [c for c in derived if c.count is None],
                                        CountOptions(statement_timeout=statement_timeout))
                failed = [c for c in derived if c.error]
                data["route"] = "real-database"
                if failed:  # e.g. an expression that uses an object the revisions create: count after them
                    stepwise.restore_checks(rec, pristine)
                    notes.append(f"{len(failed)} check(s) could not be counted on the real database ("
                                 f"{failed[0].name}: {failed[0].error}); every check was counted in the "
                                 "data-carrying shadow instead")
                    derived = _count_in_data_shadow(config_path, p["target"], url, url_env, shadow_url, rec,
                                                    statements, data_shadow_max_bytes, data, notes)
            checks = analyse(url, sh.url, pending=list(p["pending"]), statements=statements,
                             offline_sql=up.get("sql"), offline_error=up.get("sqlError"), user_checks=users,
                             do_lint=lint, statement_timeout=statement_timeout, data=data, derived=derived)
        else:
            data["derivation"] = "disabled"
            data["derivationNote"] = "derivation disabled: only user checks are counted"
            with _connect(url) as conn:
                counting.run_counts(conn, users, CountOptions(statement_timeout=statement_timeout))
                version = conn.info.server_version
            if lint:
                sql, err = render_offline(config_path, p["current"], p["target"], url, url_env)
                data["lint"] = lint_pending(sql, err, None, version)
        result = _finish(data, checks, max_violations, lint_fail, started, accept_unevaluated)
    except stepwise.DataShadowTooLarge as e:
        result = StepResult(step=STEP, outcome=Outcome.CHECKS_FAILED, reason="DataShadowTooLarge",
                            message=f"blocked: {e}; the revisions change data, so their checks can only be counted "
                                    "in a shadow that holds those rows", data=data, started_at=started).finish()
    except Exception as e:  # noqa: BLE001 - every failure becomes a StepResult
        result = error_result(STEP, e, started=started, data=data)
    finally:
        if sh is not None and not keep_shadow:
            sh.dispose(notes)
    if notes:
        result.data["derivationNote"] = "; ".join(filter(None, [result.data.get("derivationNote"), *notes]))
    return result


def _count_in_data_shadow(config_path: str | os.PathLike[str], target: str, url: str, url_env: str | None,
                          shadow_url: str | None, rec: stepwise.StepRecorder, statements: list[dict[str, Any]],
                          max_bytes: int | None, data: dict[str, Any], notes: list[str]) -> list[Check]:
    """The data route (``analysis.stepwise``): a second shadow with the real schema and the rows of the affected
    tables, where the pending revisions run again and each statement's checks are counted right before it."""
    import time

    t0 = time.monotonic()
    relids = stepwise.affected_tables(rec.steps, rec.start, statements)
    if shadow_url is not None:  # an explicit shadow database serves both runs: empty it, restore the schema again
        shadow.wipe_database(libpq_url(shadow_url))
    dsh = make_shadow(url, shadow_url)
    try:
        with _connect(url) as real_conn, _connect(dsh.url) as data_conn:
            loaded = stepwise.load_rows(real_conn, data_conn, rec.start, relids, max_bytes)
        counter = stepwise.DataCounter(rec.steps, rec.origins)
        try:
            with counter.listening():
                upgrade(config_path, target, dsh.url, url_env, lock_timeout=None, statement_timeout=None,
                        render_sql_text=False)
        except Exception as e:  # noqa: BLE001 - a failing revision is a result here, not an error
            if counter.stopped_at is None and counter.failed is None and counter.mismatch is None:
                counter.failed = (counter.current or rec.steps[-1], error_text(e)) if rec.steps else None
                if counter.failed is None:
                    raise
        checks = counter.finish()
    finally:
        dsh.dispose(notes)
    data["route"] = "data-shadow"
    notes.insert(0, f"the pending revisions change or read data: each check was counted in a data-carrying shadow "
                    f"({len(loaded['tables'])} table(s), {loaded['bytes']} bytes) right before the statement that "
                    f"validates it")
    data["dataShadow"] = {**loaded, "seconds": round(time.monotonic() - t0, 3),
                          "stoppedAt": counter.stopped_at.where if counter.stopped_at else None}
    return checks


def lint_module_available() -> bool:
    return lint.find_squawk() is not None


@isolated_imports
def render_offline(config_path: str | os.PathLike[str], current: str | None, target: str, url: str,
                   url_env: str | None) -> tuple[str | None, str | None]:
    """(offline SQL of current:target, error) through the application's env.py in offline mode."""
    try:
        cfg = make_config(config_path, url)
        script = load_script(cfg)
        with session_environment(url, url_env):
            return render_sql(cfg, script, current, target), None
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
) -> StepResult:
    """Phase 1 (operator image): create the shadow database with the real schema; write ``prepare.json``."""
    started = now()
    data: dict[str, Any] = {}
    try:
        url = resolve_url(url, url_env)
        explicit = resolve_url(None, shadow_url_env) if shadow_url_env else None
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        sh = make_shadow(url, explicit, wd)
        try:
            with _connect(url) as conn:
                current = _read_current_revision(conn, shadow.version_tables(libpq_url(url)))
            data = {"shadowDatabase": sh.name if sh.created else None,
                    "shadowUrlEnv": shadow_url_env if not sh.created else None,
                    "created": sh.created, "currentRevision": current,
                    "versionTables": sh.info.get("versionTables", []), "copySeconds": sh.info.get("seconds")}
            (wd / PREPARE_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")
            write_snapshot_queries(sh.url, wd)
        except BaseException:
            sh.dispose([])
            raise
        return StepResult(step=STEP, outcome=Outcome.SUCCEEDED, reason="ShadowPrepared",
                          message=f"shadow database {sh.name} holds a schema-only copy", data=data,
                          started_at=started).finish()
    except Exception as e:  # noqa: BLE001
        return error_result(STEP, e, started=started, data=data)


SNAPSHOT_QUERIES_FILE = "snapshot-queries.json"  # runner.inject.snapshots.QUERIES_FILE
SNAPSHOTS_FILE = "snapshots.json"  # runner.inject.snapshots.SNAPSHOTS_FILE


def write_snapshot_queries(shadow_url: str, wd: Path) -> None:
    """``snapshot-queries.json`` for the shadow-upgrade container: the identity snapshot's queries for the shadow
    server's version (``runner.inject.snapshots``)."""
    with _connect(shadow_url) as conn:
        version = int(conn.info.server_version)
    (wd / SNAPSHOT_QUERIES_FILE).write_text(
        json.dumps({"version": version, "queries": catalog.id_queries(version)}), encoding="utf-8")


def replayed_checks(wd: Path, statements: list[dict[str, Any]] | None) -> list[Check] | None:
    """The statement-by-statement checks rebuilt from ``snapshots.json`` (None when the shadow-upgrade container
    wrote none: an older injected runner; the name-based diff is used then). The checks are bound to the real
    database (fast route). The Kubernetes phases have no data-carrying shadow yet: when the revisions change or
    read data, the checks on the tables those statements name (and their foreign-key neighbours) are reported not
    evaluated instead of counted before the data changes."""
    f = wd / SNAPSHOTS_FILE
    if not f.exists():
        return None
    try:
        rec = stepwise.replay(json.loads(f.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InternalError(f"{SNAPSHOTS_FILE} is unreadable ({e})", field=SNAPSHOTS_FILE) from e
    rec.mark_present()
    changed, _ = capture.dml_label(statements)
    if changed:
        touched = set(stepwise.affected_tables([], rec.start, statements or []))
        for c in rec.checks:
            if c.extra.get("relid") in touched or c.extra.get("ref_relid") in touched:
                c.unevaluated = ("the pending revisions change or read this table's rows; the Kubernetes phases "
                                 "cannot count after data changes yet (schemagate precheck counts them in a "
                                 "data-carrying shadow)")
    return stepwise.bind_all(rec.steps, rec.start, rec.origins, "real-database")


def _shadow_from_prepare(url: str, info: Mapping[str, Any]) -> Shadow:
    if info.get("created"):
        name = str(info["shadowDatabase"])
        return Shadow(with_database(url, name), name, True, url, {})
    env = info.get("shadowUrlEnv")
    if not env:
        raise InvalidInput(f"{PREPARE_FILE} names no shadow database", field=PREPARE_FILE)
    explicit = resolve_url(None, str(env))
    return Shadow(explicit, database_name(explicit), False, explicit, {})


def count(
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    workdir: str | os.PathLike[str],
    max_violations: int = 0,
    user_checks: Iterable[Any] = (),
    lint: bool = True,
    lint_fail: str = "none",
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT,
    derive: bool = True,
    accept_unevaluated: Sequence[str] = (),
    data_shadow_max_bytes: int | None = DEFAULT_DATA_SHADOW_MAX_BYTES,
) -> StepResult:
    """Phase 3 (operator image): catalog diff, counting and squawk after shadow-upgrade; drops the shadow.

    ``derive=False`` counts only ``user_checks`` (the constraints the revisions add are not counted).
    ``accept_unevaluated`` as in :func:`precheck`; ``data_shadow_max_bytes`` is accepted for the same command
    line but unused: these phases count by the name-based catalog diff (no statement-by-statement record)."""
    started = now()
    data = _base_data(max_violations)
    notes: list[str] = []
    sh: Shadow | None = None
    try:
        url = resolve_url(url, url_env)
        wd = Path(workdir)
        try:
            info = json.loads((wd / PREPARE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidInput(f"{PREPARE_FILE} missing or unreadable in {wd}: run --phase prepare first ({e})",
                               field=PREPARE_FILE) from e
        sh = _shadow_from_prepare(url, info)
        users = parse_user_checks(user_checks)
        try:
            up = json.loads((wd / SHADOW_UPGRADE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InternalError(f"{SHADOW_UPGRADE_FILE} missing or unreadable: the shadow-upgrade container did "
                                f"not finish ({e})", field=SHADOW_UPGRADE_FILE) from e
        pending = list(up.get("pending") or [])
        data.update(currentRevision=up.get("fromRevision", info.get("currentRevision")),
                    targetRevision=up.get("targetRevision") or up.get("toRevision"), pending=pending)
        sql_path = wd / PENDING_SQL_FILE
        offline_sql = sql_path.read_text(encoding="utf-8") if sql_path.exists() else None
        statements = up.get("statements") if isinstance(up.get("statements"), list) else None
        derived = replayed_checks(wd, statements) if derive else None
        checks = analyse(url, sh.url, pending=pending, statements=statements, offline_sql=offline_sql or None,
                         offline_error=up.get("sqlError"), user_checks=users, do_lint=lint,
                         statement_timeout=statement_timeout, data=data, derive_checks=derive, derived=derived)
        if derived is not None:
            data["route"] = "real-database"
        if not pending:
            data["derivationNote"] = "no pending revisions"
        result = _finish(data, checks, max_violations, lint_fail, started, accept_unevaluated)
    except Exception as e:  # noqa: BLE001
        result = error_result(STEP, e, started=started, data=data)
    finally:
        if sh is not None:
            sh.dispose(notes)
    if notes:
        result.data["derivationNote"] = "; ".join(filter(None, [result.data.get("derivationNote"), *notes]))
    return result
