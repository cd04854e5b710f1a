"""The rehearsal (the runbooks' "test in staging"): the pending revisions run on a restored copy of the database,
never on the database itself.

1. The backup: ``backup`` (an existing one, verified like ``schemagate restore`` verifies it: sha256 sidecar and a
   full read, before anything is touched) or, without it, a fresh one taken by the backup step into
   ``backup_dir`` (verified when written).
2. A scratch database on the same server, ``<database>_sg_rehearsal`` (a fixed name, so the leftover of a run that
   was killed is dropped by the next one), created empty and filled with ``pg_restore``
   (``runner.restore.pg_restore``).
3. ``alembic upgrade <target>`` there through the application's env.py, with the same ``lock_timeout`` and
   ``statement_timeout`` as the real migration (``runner.inject.apply.upgrade``); each revision's duration is
   recorded (from the start of one revision to the start of the next, the last one to the end of the upgrade).
4. The scratch database is always dropped (``DROP DATABASE ... WITH (FORCE)``), also when a step above failed.

Result (step ``rehearse``): ``Rehearsed`` (Succeeded) with ``data.revisions`` ``[{revision, seconds}]``, or
``RehearsalFailed`` (outcome ChecksFailed: the real migration must not run) naming the failing revision and
statement (``data.failedRevision``, ``data.failedStatement``, ``data.revisions`` up to it). Each revision entry
carries ``rowsChanged`` and ``strongestLock`` (``{table, mode, heldSeconds, statement}``); ``data.statements`` is
the lock report per statement (``runner.inject.lockreport``: the strongest table lock each statement took, read
from ``pg_locks`` in its own transaction, and the rows it changed). After a successful upgrade the verify step's
checks run on the copy (``data.verify``: ``{outcome, reason, message, data}``; with ``plan``, the precheck's
data, the constraints and indexes the revisions add are checked by name); a failed verification is
``RehearsalFailed`` too.

``schemagate run --rehearse`` runs it between the precheck and the migration, from the run's backup
(``runner.pipeline``).

Public API: ``rehearse(config_path, target="head", url=None, url_env="DATABASE_URL", *, backup=None,
backup_dir=None, lock_timeout="5s", statement_timeout=None, jobs=1, maintenance_db="postgres", plan=None,
user_checks=(), progress=None) -> StepResult``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from schemagate.contract.dburl import DEFAULT_URL_ENV, database_name, resolve_url, with_database
from schemagate.contract.errors import InvalidInput, MigrationFailed, StepBoundary, translate
from schemagate.contract.stepresult import Outcome, StepResult
from schemagate.runner import backup as bk
from schemagate.runner import restore as rs
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.lockreport import StatementLocks, describe, strongest

STEP = "rehearse"
SCRATCH_SUFFIX = "_sg_rehearsal"


def scratch_name(database: str) -> str:
    """``<database>_sg_rehearsal``, cut to PostgreSQL's 63-byte identifiers on the database part."""
    return rs._fit(database or "database", SCRATCH_SUFFIX)


def rehearse(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    backup: str | os.PathLike[str] | None = None,
    backup_dir: str | os.PathLike[str] | None = None,
    lock_timeout: str | None = "5s",
    statement_timeout: str | None = None,
    jobs: int = 1,
    maintenance_db: str = "postgres",
    plan: Mapping[str, Any] | None = None,
    user_checks: Iterable[Any] = (),
    progress: Callable[[str], None] | None = None,
) -> StepResult:
    """Rehearse the pending revisions on a restored copy (see the module docstring). Never raises: failures of
    the rehearsal itself are ``RehearsalFailed`` (ChecksFailed); bad input, a corrupt backup or an unreachable
    server are the usual errors (``InvalidInput``, ``BackupCorrupt``, ``RestoreFailed``, ...)."""
    say = progress or (lambda s: None)
    target = target or "head"
    data: dict[str, Any] = {"targetRevision": target}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        if backup is None and backup_dir is None:
            raise InvalidInput("--backup PATH (an existing backup) or --backup-dir DIR (take one) is required",
                               field="--backup")
        url = resolve_url(url, url_env)
        t0 = time.monotonic()
        if backup is not None:
            path = Path(backup)
            say(f"verifying {path.name}")
            data["verification"] = rs.require_verified(path)
        else:
            b = bk.backup(url, None, backup_dir=backup_dir, progress=say)  # type: ignore[arg-type]
            if not b.ok:
                step.set_result(b)
                return step.result
            path = Path(str(b.data["path"]))
        data["backup"] = str(path)
        server = rs._Server(url, maintenance_db)
        scratch = scratch_name(database_name(url))
        data["scratchDatabase"] = scratch
        server.drop(scratch)  # the leftover of a rehearsal that was killed
        server.create(scratch)
        try:
            say(f"pg_restore {path.name} into {scratch}")
            t1 = time.monotonic()
            rs.pg_restore(path, with_database(url, scratch), jobs=jobs)
            data["restoreSeconds"] = round(time.monotonic() - t1, 3)
            _upgrade(config_path, target, with_database(url, scratch), url_env, lock_timeout, statement_timeout,
                     data, say)
            if "error" not in data:
                say(f"verifying the rehearsed copy {scratch}")
                _verify_copy(config_path, target, with_database(url, scratch), url_env, plan, user_checks, data)
        finally:
            server.drop(scratch)
            data["scratchDropped"] = not server.exists(scratch)
        data["durationSeconds"] = round(time.monotonic() - t0, 3)
        if data.get("verify", {}).get("outcome") not in (None, Outcome.SUCCEEDED.value):
            step.finish(Outcome.CHECKS_FAILED, "RehearsalFailed",
                        f"the pending revisions ran on a restored copy, but verifying the copy failed: "
                        f"{data['verify']['message']}; the real database was not touched, the copy {scratch} was "
                        f"dropped")
        elif "failedRevision" in data or "error" in data:
            step.finish(Outcome.CHECKS_FAILED, "RehearsalFailed",
                        f"the rehearsal on a restored copy failed: {data['error']}; the real database was not "
                        f"touched, the copy {scratch} was dropped")
        else:
            revs = ", ".join(f"{r['revision']} {r['seconds']:.2f}s" for r in data["revisions"]) or "none pending"
            locks = f"; locks: {lock_summary(data)}" if data["revisions"] else ""
            step.succeed("Rehearsed", f"the pending revisions ran on a restored copy of {database_name(url)} "
                                      f"({revs}){locks}; the copy verified; the copy {scratch} was dropped")
    return step.result


def _upgrade(config_path: str | os.PathLike[str], target: str, scratch_url: str, url_env: str | None,
             lock_timeout: str | None, statement_timeout: str | None, data: dict[str, Any],
             say: Callable[[str], None]) -> None:
    """``alembic upgrade`` on the copy, recording per-revision durations; a failure is recorded in ``data``
    (``failedRevision``, ``failedStatement``, ``error``), not raised."""
    starts: list[tuple[str, float]] = []
    report = StatementLocks(scratch_url)

    def started(rev: str) -> None:
        say(f"rehearsing revision {rev}")
        report.revision = rev
        starts.append((rev, time.monotonic()))

    def durations(end: float, failed: str | None) -> list[dict[str, Any]]:
        out = []
        for i, (rev, t) in enumerate(starts):
            stop = starts[i + 1][1] if i + 1 < len(starts) else end
            out.append({"revision": rev, "seconds": round(stop - t, 3), "succeeded": rev != failed,
                        **_revision_summary(report.records, rev)})
        return out

    try:
        with report.watch():
            r = upgrade(config_path, target, scratch_url, url_env, lock_timeout, statement_timeout,
                        on_revision=started)
    except Exception as e:  # noqa: BLE001 - the application's revisions may raise anything: the rehearsal's finding
        err = translate(e, MigrationFailed)
        failed = getattr(err, "revision", None)
        data["statements"] = report.records
        data["revisions"] = durations(time.monotonic(), failed)
        data["failedRevision"] = failed
        data["failedStatement"] = getattr(err, "statement", None)
        data["error"] = err.message
        data["errorReason"] = err.reason
        return
    data["statements"] = report.records
    data["revisions"] = durations(time.monotonic(), None)
    data["fromRevision"], data["toRevision"] = r.get("fromRevision"), r.get("toRevision")


def _verify_copy(config_path: str | os.PathLike[str], target: str, scratch_url: str, url_env: str | None,
                 plan: Mapping[str, Any] | None, user_checks: Iterable[Any], data: dict[str, Any]) -> None:
    """The verify step's checks (``runner.verify.verify``) on the rehearsed copy; its result (outcome, reason,
    message, data) goes into ``data["verify"]``. With ``plan`` (the precheck's data) the constraints and indexes the
    revisions add are checked by name; without it the revision (nothing pending), leftovers on every table and the
    user checks."""
    from schemagate.runner import verify as verify_step

    vr = verify_step.verify(config_path, target, scratch_url, url_env, plan=plan, user_checks=user_checks)
    data["verify"] = {"outcome": vr.outcome.value, "reason": vr.reason, "message": vr.message, "data": vr.data}


def _revision_summary(records: list[dict[str, Any]], revision: str) -> dict[str, Any]:
    """``rowsChanged`` (sum of the revision's data-changing statements' row counts) and ``strongestLock``
    (``{table, mode, heldSeconds, statement}`` of the revision's strongest, then longest, lock, or None)."""
    mine = [r for r in records if r["revision"] == revision]
    top = strongest(mine)
    lock = {**top["lock"], "statement": top["statement"]} if top else None
    return {"rowsChanged": sum(int(r.get("rows") or 0) for r in mine), "strongestLock": lock}


def lock_summary(data: dict[str, Any]) -> str:
    """Per revision: "0002: ACCESS EXCLUSIVE on menu_items for 0.0 s, 0 rows changed" (joined by "; ")."""
    return "; ".join(f"{r['revision']}: {describe(r.get('strongestLock'))}, {r.get('rowsChanged', 0)} rows changed"
                     for r in data.get("revisions") or [])
