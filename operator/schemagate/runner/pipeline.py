"""``schemagate run``: backup -> precheck -> migrate -> verify, in one process.

Stops at the first step that does not succeed. In particular a failed precheck (violations found) stops before
anything is applied: the database is untouched (the backup, taken first, only reads). Input is validated (plan:
configuration, target, heads, connection) before the backup, so bad input changes nothing and writes no file.

Public API: ``run(target: Target(config, revision="head", url=None, url_env="DATABASE_URL"), *, backup_dir, keep=5,
backup=True, max_violations=0, user_checks=(), lint=True, lock_timeout="5s", statement_timeout=None,
retries=5, on_step=None, progress=None) -> StepResult`` (step ``run``; ``data.steps`` summarises each step,
``data.results`` is not serialised: the full step results are passed to ``on_step`` as they finish).

Transient faults (a connection lost, the server restarting, a serialization failure: outcome ``TransientError``)
never need a manual retry: migrate retries them itself (``runner.inject.migrate``), and the precheck and verify,
which only read the real database, are run again up to ``retries`` times with the same capped exponential backoff
(``data.transientRetries``: ``[{step, attempt, reason, message}]``). A backup is not retried (a partial dump is
never left: ``runner.backup``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from schemagate.contract import durations
from schemagate.contract.checks import UserCheck
from schemagate.contract.errors import InvalidInput, StepBoundary
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import Outcome, Plan, StepResult
from schemagate.contract.target import Target
from schemagate.libpq import connect, shared_connections
from schemagate.runner import backup as backup_step
from schemagate.runner import verify as verify_step
from schemagate.runner.inject.config import APPLICATION_NAME, DEFAULT_LOCK_TIMEOUT
from schemagate.runner.inject.lock import backoff_delays
from schemagate.runner.inject.migrate import DEFAULT_RETRIES, migrate
from schemagate.runner.inject.revisions import plan_without_env
from schemagate.runner.shadowserver import ShadowServer

STEP = "run"


def _summary(r: StepResult) -> dict[str, Any]:
    d = r.to_dict()
    return {"step": r.step, "outcome": d["outcome"], "reason": r.reason, "message": r.message[:300],
            "durationSeconds": d["durationSeconds"]}


class _Run:
    """The run's result under construction: ``data`` (``steps`` summaries, revisions, ...) and ``on_step``."""

    def __init__(self, boundary: StepBoundary, on_step: Callable[[StepResult], None] | None,
                 progress: Callable[[str], None] | None) -> None:
        self.boundary = boundary
        self.data = boundary.data
        self.on_step = on_step
        self.say = progress or (lambda s: None)

    def record(self, r: StepResult) -> StepResult:
        self.data["steps"].append(_summary(r))
        if self.on_step is not None:
            self.on_step(r)
        return r

    def read_only_step(self, step: Callable[[], StepResult], retries: int, *, backoff: float = 1.0,
                       max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> StepResult:
        """Run a step that only reads the real database (precheck, verify); run it again after a
        ``TransientError`` outcome, at most ``retries`` times, after ``backoff`` seconds doubling up to
        ``max_backoff`` (with +-20 % jitter). Each transient attempt is one entry of ``data.transientRetries``;
        the last attempt's result is recorded and returned."""
        delays = backoff_delays(retries, backoff, max_backoff)
        for attempt in range(1, len(delays) + 2):
            res = step()
            if res.outcome != Outcome.TRANSIENT_ERROR or attempt > len(delays):
                return self.record(res)
            delay = delays[attempt - 1] * (0.8 + 0.4 * random.random())  # noqa: S311 - jitter, not security
            self.data.setdefault("transientRetries", []).append(
                {"step": res.step, "attempt": attempt, "reason": res.reason, "message": redact(res.message)[:300]})
            self.say(f"{res.step}: {res.reason} ({redact(res.message)[:200]}); retrying in {delay:.1f}s")
            sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns on its last attempt

    def stop(self, r: StepResult, why: str) -> StepResult:
        """End the run with step ``r``'s outcome and reason, ``why`` before its message."""
        return self.boundary.finish(r.outcome, r.reason, f"{why}: {r.message}")


def run(
    target: Target,
    *,
    backup_dir: str | os.PathLike[str] | None = None,
    keep: int = backup_step.DEFAULT_KEEP,
    backup: bool = True,
    max_violations: int = 0,
    user_checks: Iterable[Any] = (),
    accept_unevaluated: Iterable[str] = (),
    data_shadow_max_bytes: int | None = None,
    lint: bool = True,
    derive: bool = True,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | None = None,
    retries: int = DEFAULT_RETRIES,
    rehearse: bool = False,
    on_step: Callable[[StepResult], None] | None = None,
    progress: Callable[[str], None] | None = None,
    shadow_url_env: str | None = None,
) -> StepResult:
    """For ``target`` (the application's project, target revision and database): backup, precheck, (``rehearse``: the pending revisions on a copy restored from that backup,
    ``runner.rehearse``), migrate, verify; the first step that does not succeed ends the run with its outcome.

    Everything is validated before the backup (``InvalidInput`` naming the option, plan errors), so bad input
    changes nothing and writes no file. ``derive=False`` (``--no-derive``): the precheck counts only the user
    checks and creates no shadow. ``shadow_url_env`` (``--shadow-database-url-env``): the environment variable
    holding the URL of an existing, empty shadow database for the precheck, instead of its throw-away server."""
    data: dict[str, Any] = {"steps": [], "currentRevision": None, "targetRevision": None, "applied": []}
    with StepBoundary(STEP, data=data) as boundary:
        r = _Run(boundary, on_step, progress)
        checks = _validate(max_violations, lock_timeout, statement_timeout, user_checks)
        t = target.resolved()
        if rehearse and not backup:
            raise InvalidInput("--rehearse restores the run's backup: it cannot be combined with --no-backup",
                               field="--rehearse")
        if shadow_url_env and derive and not os.environ.get(shadow_url_env):
            raise InvalidInput(f"--shadow-database-url-env: the environment variable {shadow_url_env} is not set",
                               field="--shadow-database-url-env")
        # the precheck's throw-away server starts now, in the background, while env.py plans and pg_dump runs
        shadow = ShadowServer().start_in_background() if derive and not shadow_url_env else None
        try:
            with shared_connections(str(t.url)):  # precheck and verify ask on one session of the real database
                _plan_and_steps(r, t, checks, shadow, backup=backup, backup_dir=backup_dir, keep=keep,
                                max_violations=max_violations, lint=lint, derive=derive,
                                accept_unevaluated=list(accept_unevaluated),
                                data_shadow_max_bytes=data_shadow_max_bytes, lock_timeout=lock_timeout,
                                statement_timeout=statement_timeout, retries=retries, rehearse=rehearse,
                                progress=progress, shadow_url_env=shadow_url_env)
        finally:
            if shadow is not None:
                shadow.stop()  # idempotent: the precheck stops it when done with it
    return boundary.result


def _plan_and_steps(r: _Run, t: Target, checks: list[dict[str, str]], shadow: ShadowServer | None, *,
                    backup: bool, backup_dir: str | os.PathLike[str] | None, keep: int, max_violations: int,
                    lint: bool, derive: bool, accept_unevaluated: list[str], data_shadow_max_bytes: int | None,
                    lock_timeout: str | None, statement_timeout: str | None, retries: int, rehearse: bool,
                    progress: Callable[[str], None] | None, shadow_url_env: str | None = None) -> None:
    """Plan, backup, then steps 2 to 4 (``shadow``: the precheck's throw-away server, starting meanwhile)."""
    data = r.data
    # the plan of this run, from the catalog when it tells and something is pending (no env.py run: the shadow
    # upgrade's env.py run, or the migration's, confirms it), passed down; computed again only under the lock
    with connect(str(t.url)) as conn:
        p = plan_without_env(t, conn)
    t = t.at(p["target"])
    data.update(currentRevision=p["current"], targetRevision=p["target"], pending=p["pending"])
    if backup and p["pending"]:
        if backup_dir is None:
            raise InvalidInput("--backup-dir is required (or --no-backup)", field="--backup-dir")
        b = r.record(backup_step.backup(t.url, t.url_env, backup_dir=backup_dir, keep=keep, progress=progress))
        if not b.ok:
            r.stop(b, "backup failed, nothing was applied")
            return
        data["backup"] = {k: b.data.get(k) for k in ("path", "sizeBytes", "sha256")}
    _precheck_migrate_verify(r, t, p, checks, max_violations=max_violations, lint=lint, derive=derive,
                             accept_unevaluated=accept_unevaluated,
                             data_shadow_max_bytes=data_shadow_max_bytes,
                             lock_timeout=lock_timeout, statement_timeout=statement_timeout, retries=retries,
                             rehearse_from=(data.get("backup") or {}).get("path") if rehearse else None,
                             shadow=shadow, shadow_url_env=shadow_url_env)


def _validate(max_violations: int, lock_timeout: str | None, statement_timeout: str | None,
              user_checks: Iterable[Any]) -> list[dict[str, str]]:
    """The options checked before anything runs; the user checks as ``{"name", "sql", "table"?}``."""
    if max_violations < 0:
        raise InvalidInput(f"--max-violations: {max_violations} must be >= 0", field="--max-violations")
    durations.to_postgres(lock_timeout, "--lock-timeout")
    durations.to_postgres(statement_timeout, "--statement-timeout")
    return [c.to_dict() for c in UserCheck.parse_all(user_checks, "--check")]


def _precheck_migrate_verify(r: _Run, t: Target, p: Plan, checks: list[dict[str, str]], *, max_violations: int,
                             lint: bool, derive: bool,
                             accept_unevaluated: list[str], data_shadow_max_bytes: int | None,
                             lock_timeout: str | None, statement_timeout: str | None, retries: int,
                             rehearse_from: str | None = None, shadow: ShadowServer | None = None,
                             shadow_url_env: str | None = None) -> None:
    """Steps 2 to 4 on the plan ``p`` of the run; sets the run's result through ``r``. The application's env.py runs
    on the real database only where it must: the migration's re-plan under its advisory lock and the upgrade."""
    from schemagate.runner import precheck as precheck_step  # imports the analysis layer: only when running

    r.say("precheck: deriving the checks in a shadow database and counting")
    first_shadow = [shadow] if shadow is not None else []  # a transient retry starts a server of its own
    pr = r.read_only_step(lambda: precheck_step.precheck(
        t, max_violations=max_violations, user_checks=checks, lint=lint, derive=derive,
        accept_unevaluated=accept_unevaluated, planned=p,
        data_shadow_max_bytes=data_shadow_max_bytes or precheck_step.DEFAULT_DATA_SHADOW_MAX_BYTES,
        shadow_server=first_shadow.pop() if first_shadow else None, shadow_url_env=shadow_url_env,
        schema_archive=(r.data.get("backup") or {}).get("path")), retries)
    if not pr.ok:
        r.data["checks"] = [c for c in pr.data.get("checks") or []
                            if c.get("count") or (c.get("evaluatedBy") == "not-evaluated" and not c.get("accepted"))]
        r.data["total"] = pr.data.get("total")
        r.data["maxViolations"] = max_violations
        r.stop(pr, "the precheck did not finish, nothing was applied" if pr.outcome == Outcome.TRANSIENT_ERROR
               else "blocked by the precheck, nothing was applied")
        return
    if rehearse_from:
        from schemagate.runner import rehearse as rehearse_step

        r.say("rehearse: the pending revisions on a copy restored from the backup")
        rr = r.record(rehearse_step.rehearse(t, backup=rehearse_from,
                                             lock_timeout=lock_timeout, statement_timeout=statement_timeout,
                                             progress=r.say, plan={**pr.data, **_expected(p)}, user_checks=checks))
        if not rr.ok:
            r.stop(rr, "blocked by the rehearsal, nothing was applied")
            return
    r.say(f"migrate: applying {len(p['pending'])} revision(s)")
    mr = r.record(migrate(t, lock_timeout, statement_timeout, retries, log=r.say, planned=p,
                          lock_session=lambda: connect(str(t.url), application_name=APPLICATION_NAME)))
    r.data["applied"] = mr.data.get("applied", [])
    r.data["currentRevision"] = mr.data.get("toRevision", r.data["currentRevision"])
    if not mr.ok:
        r.stop(mr, "migration failed")
        return
    r.say("verify: revision, constraints, indexes, counts")
    # verify reads the version rows with SQL from the version table env.py configured (known from the plan)
    vr = r.read_only_step(lambda: verify_step.verify(Target(None, p["target"], t.url, t.url_env),
                                                     plan={**pr.data, **_expected(p)}, user_checks=checks), retries)
    if not vr.ok:
        r.data["failures"] = vr.data.get("failures", [])
        r.stop(vr, "applied, but verification failed")
        return
    r.boundary.succeed("Verified", run_summary(r.data, pr.data))


def _expected(p: Plan) -> dict[str, Any]:
    """Where the plan leaves the database, for the verify step (it reads the version rows with SQL from the version
    table env.py configured, known from the plan)."""
    return {"targetRevision": p["target"], "expectedRevisions": p["expected"],
            "versionTable": p["versionTable"], "versionTableSchema": p["versionTableSchema"]}


def run_summary(data: dict[str, Any], precheck_data: dict[str, Any]) -> str:
    """The successful run's one-line summary, from what was done: "backed up" only when a backup was taken, the
    violation total the precheck counted (it may pass with violations under maxViolations), the checks accepted as
    not evaluated."""
    parts = ["backed up" if data.get("backup") else "no backup taken"]
    total = int(precheck_data.get("total") or 0)
    counted = sum(1 for c in precheck_data.get("checks") or [] if c.get("count") is not None)
    pc = f"prechecked ({total} violating row(s) in {counted} check(s)"
    if total:
        pc += f", within maxViolations {precheck_data.get('maxViolations')}"
    accepted = [c["name"] for c in precheck_data.get("checks") or [] if c.get("accepted")]
    if accepted:
        pc += f"; not evaluated, accepted: {', '.join(accepted)}"
    parts.append(pc + ")")
    parts.append(f"applied {len(data.get('applied') or [])} revision(s) and verified: the database is at revision "
                 f"{data.get('currentRevision')}")
    return ", ".join(parts)
