"""``schemagate run``: backup -> precheck -> migrate -> verify, in one process.

Stops at the first step that does not succeed. In particular a failed precheck (violations found) stops before
anything is applied: the database is untouched (the backup, taken first, only reads). Input is validated (plan:
configuration, target, heads, connection) before the backup, so bad input changes nothing and writes no file.

Public API: ``run(config_path, target="head", url=None, url_env="DATABASE_URL", *, backup_dir, keep=5,
backup=True, max_violations=0, user_checks=(), lint=True, lock_timeout="5s", statement_timeout=None,
retries=5, on_step=None, progress=None) -> StepResult`` (step ``run``; ``data.steps`` summarises each step,
``data.results`` is not serialised: the full step results are passed to ``on_step`` as they finish).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from schemagate.runner import backup as backup_step
from schemagate.runner import db
from schemagate.runner import verify as verify_step
from schemagate.runner.inject.config import DEFAULT_LOCK_TIMEOUT, normalize_duration
from schemagate.runner.inject.migrate import DEFAULT_RETRIES, migrate
from schemagate.runner.inject.revisions import plan
from schemagate.runner.result import Outcome, StepResult, now

STEP = "run"


def _summary(r: StepResult) -> dict[str, Any]:
    d = r.to_dict()
    return {"step": r.step, "outcome": d["outcome"], "reason": r.reason, "message": r.message[:300],
            "durationSeconds": d["durationSeconds"]}


def run(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = db.DEFAULT_URL_ENV,
    *,
    backup_dir: str | os.PathLike[str] | None = None,
    keep: int = backup_step.DEFAULT_KEEP,
    backup: bool = True,
    max_violations: int = 0,
    user_checks: Iterable[Any] = (),
    accept_unevaluated: Iterable[str] = (),
    data_shadow_max_bytes: int | None = None,
    lint: bool = True,
    lock_timeout: str | int | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | int | None = None,
    retries: int = DEFAULT_RETRIES,
    on_step: Callable[[StepResult], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> StepResult:
    started = now()
    user_checks = list(user_checks)
    steps: list[StepResult] = []
    data: dict[str, Any] = {"steps": [], "currentRevision": None, "targetRevision": None, "applied": []}

    def record(r: StepResult) -> StepResult:
        steps.append(r)
        data["steps"].append(_summary(r))
        if on_step is not None:
            on_step(r)
        return r

    def finish(outcome: Outcome, reason: str, message: str) -> StepResult:
        return StepResult(step=STEP, outcome=outcome, reason=reason, message=db.redact(message), data=data,
                          started_at=started).finish()

    try:
        if max_violations < 0:
            raise db.InvalidInputError(f"--max-violations: {max_violations} must be >= 0")
        normalize_duration(lock_timeout, "--lock-timeout")
        normalize_duration(statement_timeout, "--statement-timeout")
        # NAME=SQL strings, (name, sql) pairs or mappings -> {"name", "sql", "table"}; bad ones fail here
        user_checks = [{"name": c.name, "sql": c.sql, "table": c.table}
                       for c in verify_step._parse_user_checks(user_checks)]
        url = db.resolve_url(url, url_env)
        p = plan(config_path, target, url, url_env)
    except Exception as e:  # noqa: BLE001
        outcome, reason, msg = db.classify_error(e)
        return finish(outcome, reason, msg)
    data.update(currentRevision=p["current"], targetRevision=p["target"], pending=p["pending"])

    # 1. backup (only when something is to be applied)
    if backup and p["pending"]:
        if backup_dir is None:
            return finish(Outcome.PERMANENT_ERROR, "InvalidInput", "--backup-dir is required (or --no-backup)")
        r = record(backup_step.backup(url, url_env, backup_dir=backup_dir, keep=keep, progress=progress))
        if not r.ok:
            return finish(r.outcome, r.reason, f"backup failed, nothing was applied: {r.message}")
        data["backup"] = {k: r.data.get(k) for k in ("path", "sizeBytes", "sha256")}

    # 2. precheck
    try:
        from schemagate.runner import precheck as precheck_step
    except ImportError as e:  # pragma: no cover - the precheck module ships with schemagate
        return finish(Outcome.PERMANENT_ERROR, "InternalError", f"precheck unavailable: {e}")
    if progress:
        progress("precheck: deriving the checks in a shadow database and counting")
    pr = record(precheck_step.precheck(config_path, p["target"], url, url_env, max_violations=max_violations,
                                       user_checks=user_checks, lint=lint,
                                       accept_unevaluated=list(accept_unevaluated),
                                       data_shadow_max_bytes=data_shadow_max_bytes
                                       or precheck_step.DEFAULT_DATA_SHADOW_MAX_BYTES))
    if not pr.ok:
        data["checks"] = [c for c in pr.data.get("checks") or []
                          if c.get("count") or (c.get("evaluatedBy") == "not-evaluated" and not c.get("accepted"))]
        data["total"] = pr.data.get("total")
        data["maxViolations"] = max_violations
        return finish(pr.outcome, pr.reason, f"blocked by the precheck, nothing was applied: {pr.message}")

    # 3. migrate
    if progress:
        progress(f"migrate: applying {len(p['pending'])} revision(s)")
    mr = record(migrate(config_path, p["target"], url, url_env, lock_timeout, statement_timeout, retries,
                            log=progress))
    data["applied"] = mr.data.get("applied", [])
    data["currentRevision"] = mr.data.get("toRevision", data["currentRevision"])
    if not mr.ok:
        return finish(mr.outcome, mr.reason, f"migration failed: {mr.message}")

    # 4. verify
    if progress:
        progress("verify: revision, constraints, indexes, counts")
    vr = record(verify_step.verify(config_path, p["target"], url, url_env, plan=pr.data, user_checks=user_checks))
    if not vr.ok:
        data["failures"] = vr.data.get("failures", [])
        return finish(vr.outcome, vr.reason, f"applied, but verification failed: {vr.message}")
    return finish(Outcome.SUCCEEDED, "Verified", run_summary(data, pr.data))


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
