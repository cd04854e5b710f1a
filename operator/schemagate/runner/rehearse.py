"""The rehearsal (the runbooks' "test in staging"): the pending revisions run on a restored copy of the database,
never on the database itself.

1. The backup: ``backup`` (an existing one, verified like ``schemagate restore`` verifies it: sha256 sidecar and a
   full read, before anything is touched) or, without it, a fresh one taken by the backup step into
   ``backup_dir`` (verified when written). With ``max_size`` (bytes) a database larger than that
   (``pg_database_size``) is refused before anything is done (``RehearsalTooLarge``, ChecksFailed).
2. A scratch database, ``scratch`` (default ``<database>_sg_rehearsal``; the operator derives one from the
   resource), on the same server or on ``scratch_server`` (a URL of another server, ``spec.rehearsal
   .databaseUrlFrom``). A leftover of that name (a rehearsal that was killed) is dropped first; then it is created
   empty and filled with ``pg_restore`` (``runner.restore.pg_restore``).
3. ``alembic upgrade <target>`` there through the application's env.py, with the same ``lock_timeout`` and
   ``statement_timeout`` as the real migration, with the lock report (``runner.inject.rehearsal.upgrade_copy``).
4. The verify step's checks on the copy (``data.verify``: ``{outcome, reason, message, data}``; with ``plan``, the
   precheck's data, the constraints and indexes the revisions add are checked by name).
5. The scratch database is always dropped (``DROP DATABASE ... WITH (FORCE)``), also when a step above failed.

Result (step ``rehearse``): ``Rehearsed`` (Succeeded) with ``data.revisions`` ``[{revision, seconds, succeeded,
rowsChanged, strongestLock: {table, mode, heldSeconds, statement}}]``, ``data.statements`` (the lock report per
statement, ``runner.inject.lockreport``) and ``data.verify``; or ``RehearsalFailed`` (outcome ChecksFailed: the
real migration must not run) naming the failing revision and statement (``data.failedRevision``,
``data.failedStatement``), or the failed verification of the copy.

In the operator the same steps are the containers of the rehearse Job (``core.jobs``): ``prepare_phase`` (1-2),
``rehearse-upgrade`` in the application's image (3, ``runner.inject.rehearsal``), ``spec.rehearsal.job`` (the
user's smoke test, on the copy), ``finish_phase`` (4-5), and the ``guard`` sidecar that drops the copy when the pod
is stopped for any reason (a failed container, a deleted Job or pod, the deadline).

``schemagate run --rehearse`` runs it between the precheck and the migration, from the run's backup
(``runner.pipeline``).

Public API: ``rehearse(target: Target(config, revision="head", url=None, url_env="DATABASE_URL"), *, backup=None,
backup_dir=None, lock_timeout="5s", statement_timeout=None, jobs=1, maintenance_db="postgres", plan=None,
user_checks=(), scratch=None, scratch_server=None, max_size=None, progress=None) -> StepResult``;
``prepare_phase``, ``finish_phase``, ``guard``, ``scratch_name``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from schemagate.contract.dburl import database_name, resolve_url, with_database
from schemagate.contract.errors import InvalidInput, MigrationFailed, StepBoundary
from schemagate.contract.stepresult import Outcome, StepResult
from schemagate.contract.target import Target
from schemagate.runner import backup as bk
from schemagate.runner import restore as rs
from schemagate.runner.inject.rehearsal import UPGRADE_FILE, failed_message, lock_summary, upgrade_copy

STEP = "rehearse"
SCRATCH_SUFFIX = "_sg_rehearsal"
PREPARE_FILE = "rehearse-prepare.json"


def scratch_name(database: str) -> str:
    """``<database>_sg_rehearsal``, cut to PostgreSQL's 63-byte identifiers on the database part."""
    return rs._fit(database or "database", SCRATCH_SUFFIX)


def _size(server: rs._Server, database: str) -> int:
    rows = server._run("select pg_database_size(%s)", (database,))
    return int(rows[0][0])


def _prepare(url: str, data: dict[str, Any], *, backup: str | os.PathLike[str] | None,
             backup_dir: str | os.PathLike[str] | None, scratch: str, scratch_server: str | None,
             max_size: int | None, jobs: int, maintenance_db: str, say: Callable[[str], None]
             ) -> tuple[rs._Server, StepResult | None]:
    """Steps 1-2 of the module docstring; ``(scratch server, a failed backup's result or None)``. Raises
    ``InvalidInput``, ``BackupCorrupt``, ``RestoreFailed``, ... The copy exists when it returns without a result."""
    if backup is None and backup_dir is None:
        raise InvalidInput("--backup PATH (an existing backup) or --backup-dir DIR (take one) is required",
                           field="--backup")
    real = rs._Server(url, maintenance_db)
    if max_size is not None:
        size = data["databaseBytes"] = _size(real, database_name(url))
        if size > max_size:
            data["maxSizeBytes"] = max_size
            return real, StepResult(step=STEP, outcome=Outcome.CHECKS_FAILED, reason="RehearsalTooLarge",
                                    message=f"the database is {size} bytes, above the rehearsal's maxSize "
                                            f"({max_size} bytes): not rehearsed, nothing was touched",
                                    data=dict(data)).finish()
    if backup is not None:
        path = Path(backup)
        say(f"verifying {path.name}")
        t0 = time.monotonic()
        data["verification"] = rs.require_verified(path)
        data["verificationSeconds"] = round(time.monotonic() - t0, 3)
    else:
        b = bk.backup(url, None, backup_dir=backup_dir, progress=say)  # type: ignore[arg-type]
        if not b.ok:
            return real, b
        path = Path(str(b.data["path"]))
    data["backup"] = str(path)
    server = rs._Server(scratch_server, maintenance_db) if scratch_server else real
    data["scratchDatabase"] = scratch
    server.drop(scratch)  # the leftover of a rehearsal that was killed
    server.create(scratch)
    say(f"pg_restore {path.name} into {scratch}")
    t1 = time.monotonic()
    rs.pg_restore(path, with_database(server.url, scratch), jobs=jobs)
    data["restoreSeconds"] = round(time.monotonic() - t1, 3)
    return server, None


def documented_locks(data: dict[str, Any]) -> None:
    """Statements run outside a transaction whose lock the sampling did not see (shorter than one sampling
    interval) or saw weaker: the strongest lock the PostgreSQL documentation gives for the statement
    (``analysis.locks.statement_locks``, PostgreSQL's own parser), held for the statement's duration, with
    ``source: "documented"``; the revisions' ``strongestLock`` is computed again. A statement the parser cannot
    read keeps no lock."""
    from schemagate.analysis import locks as L
    from schemagate.runner.inject.rehearsal import revision_summary

    records = data.get("statements") or []
    for rec in records:
        if rec.get("transactional") or rec.get("failed"):
            continue
        try:
            found = [x for x in L.statement_locks(rec["statement"]) if not x.creates]
        except Exception:  # noqa: BLE001 - unparsable (or cut at 200 characters): no lock to report
            continue
        if not found:
            continue
        top = max(found, key=lambda x: L.MODES.index(x.mode))
        seen = (rec.get("lock") or {}).get("mode")
        if seen is None or L.MODES.index(seen) < L.MODES.index(top.mode):  # sampled too late or too early
            rec["tables"] = [{"table": x.table, "mode": x.mode} for x in found]
            rec["lock"] = {"table": top.table, "mode": top.mode, "heldSeconds": rec["seconds"]}
            rec["source"] = "documented"
    for rev in data.get("revisions") or []:
        rev.update(revision_summary(records, rev["revision"]))


def _verify_copy(copy: Target, plan: Mapping[str, Any] | None, user_checks: Iterable[Any],
                 data: dict[str, Any]) -> None:
    """The verify step's checks (``runner.verify.verify``) on the rehearsed copy (``copy``: its URL), into
    ``data["verify"]``."""
    from schemagate.runner import verify as verify_step

    t0 = time.monotonic()
    vr = verify_step.verify(copy, plan=plan, user_checks=user_checks)
    data["verify"] = {"outcome": vr.outcome.value, "reason": vr.reason, "message": vr.message, "data": vr.data,
                      "seconds": round(time.monotonic() - t0, 3)}


def _conclude(step: StepBoundary, data: dict[str, Any], url: str, scratch: str) -> None:
    """The step's outcome from what was recorded in ``data`` (the copy has been dropped)."""
    dropped = "was dropped" if data.get("scratchDropped") else "could not be dropped (dropped by the next rehearsal)"
    if "error" in data:
        step.finish(Outcome.CHECKS_FAILED, "RehearsalFailed", failed_message(data, scratch, dropped))
    elif data.get("verify", {}).get("outcome") not in (None, Outcome.SUCCEEDED.value):
        step.finish(Outcome.CHECKS_FAILED, "RehearsalFailed",
                    f"the pending revisions ran on a restored copy, but verifying the copy failed: "
                    f"{data['verify']['message']}; the real database was not touched, the copy {scratch} {dropped}")
    else:
        revs = ", ".join(f"{r['revision']} {r['seconds']:.2f}s" for r in data.get("revisions") or []) or "none pending"
        locks = f"; locks: {lock_summary(data)}" if data.get("revisions") else ""
        step.succeed("Rehearsed", f"the pending revisions ran on a restored copy of {database_name(url)} "
                                  f"({revs}){locks}; the copy verified; the copy {scratch} {dropped}")


def _drop(server: rs._Server, scratch: str, data: dict[str, Any]) -> None:
    try:
        server.drop(scratch)
        data["scratchDropped"] = not server.exists(scratch)
    except Exception as e:  # noqa: BLE001 - recorded; the next rehearsal drops the leftover first
        data["scratchDropped"] = False
        data["dropError"] = str(e)[:300]


def rehearse(
    t: Target,
    *,
    backup: str | os.PathLike[str] | None = None,
    backup_dir: str | os.PathLike[str] | None = None,
    lock_timeout: str | None = "5s",
    statement_timeout: str | None = None,
    jobs: int = 1,
    maintenance_db: str = "postgres",
    plan: Mapping[str, Any] | None = None,
    user_checks: Iterable[Any] = (),
    scratch: str | None = None,
    scratch_server: str | None = None,
    max_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> StepResult:
    """Rehearse the pending revisions of ``t`` on a restored copy of its database, in this process (see the module docstring). Never
    raises: failures of the rehearsal itself are ``RehearsalFailed`` (ChecksFailed); bad input, a corrupt backup or
    an unreachable server are the usual errors (``InvalidInput``, ``BackupCorrupt``, ``RestoreFailed``, ...)."""
    say = progress or (lambda s: None)
    t = t.at(t.revision or "head")
    data: dict[str, Any] = {"targetRevision": t.revision}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        t = t.resolved()
        url = t.database_url
        t0 = time.monotonic()
        name = scratch or scratch_name(database_name(url))
        server: rs._Server | None = None
        try:
            server, failed = _prepare(url, data, backup=backup, backup_dir=backup_dir, scratch=name,
                                      scratch_server=scratch_server, max_size=max_size, jobs=jobs,
                                      maintenance_db=maintenance_db, say=say)
            if failed is not None:
                step.set_result(failed)
                return step.result
            copy = t.on(with_database(server.url, name))
            upgrade_copy(copy, lock_timeout, statement_timeout, data, say)
            documented_locks(data)
            if "error" not in data:
                say(f"verifying the rehearsed copy {name}")
                _verify_copy(copy, plan, user_checks, data)
        finally:
            if server is not None and "scratchDatabase" in data:
                _drop(server, name, data)
        data["durationSeconds"] = round(time.monotonic() - t0, 3)
        _conclude(step, data, url, name)
    return step.result


def prepare_phase(url: str | None, url_env: str | None, scratch: str, workdir: str | os.PathLike[str], *,
                  backup: str | os.PathLike[str] | None = None, backup_dir: str | os.PathLike[str] | None = None,
                  scratch_url_env: str | None = None, max_size: int | None = None, jobs: int = 1,
                  maintenance_db: str = "postgres", progress: Callable[[str], None] | None = None) -> StepResult:
    """The rehearse Job's ``prepare`` container: steps 1-2, ``workdir/rehearse-prepare.json``. A failure drops
    what it created. Never raises."""
    data: dict[str, Any] = {"scratchDatabase": scratch}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        if not scratch:
            raise InvalidInput("--scratch-database is required", field="--scratch-database")
        url = resolve_url(url, url_env)
        other = resolve_url(None, scratch_url_env) if scratch_url_env else None
        t0 = time.monotonic()
        try:
            _, failed = _prepare(url, data, backup=backup, backup_dir=backup_dir, scratch=scratch,
                                      scratch_server=other, max_size=max_size, jobs=jobs,
                                      maintenance_db=maintenance_db, say=progress or (lambda s: None))
        except BaseException:
            if "scratchDatabase" in data and data.get("backup"):
                _drop(rs._Server(other or url, maintenance_db), scratch, data)
            raise
        data["prepareSeconds"] = round(time.monotonic() - t0, 3)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / PREPARE_FILE).write_text(json.dumps(data), encoding="utf-8")
        if failed is not None:
            step.set_result(failed)
        else:
            step.succeed("RehearsalPrepared", f"restored {Path(str(data['backup'])).name} into {scratch}")
    return step.result


def _read(workdir: str | os.PathLike[str], name: str) -> dict[str, Any]:
    p = Path(workdir) / name
    if not p.exists():
        raise InvalidInput(f"{p} is missing: the container before this one did not finish", field="--workdir")
    return dict(json.loads(p.read_text(encoding="utf-8")))


def finish_phase(url: str | None, url_env: str | None, scratch: str, workdir: str | os.PathLike[str], *,
                 target: str | None = "head", scratch_url_env: str | None = None,
                 plan: Mapping[str, Any] | None = None, user_checks: Iterable[Any] = (),
                 maintenance_db: str = "postgres") -> StepResult:
    """The rehearse Job's ``finish`` container: the verify step's checks on the copy (against ``plan``, the
    run's precheck plan), the copy dropped, the whole rehearsal's result from the earlier containers' files."""
    data: dict[str, Any] = {"targetRevision": target or "head"}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        url = resolve_url(url, url_env)
        server = rs._Server(resolve_url(None, scratch_url_env) if scratch_url_env else url, maintenance_db)
        try:
            data.update(_read(workdir, PREPARE_FILE))
            data.update(_read(workdir, UPGRADE_FILE))
            documented_locks(data)
            if "error" not in data:
                _verify_copy(Target(None, target or "head", with_database(server.url, scratch), url_env), plan,
                             user_checks, data)
        finally:
            _drop(server, scratch, data)
        _conclude(step, data, url, scratch)
    return step.result


def guard(url: str | None, url_env: str | None, scratch: str, *, scratch_url_env: str | None = None,
          maintenance_db: str = "postgres", stop: threading.Event | None = None) -> StepResult:
    """The rehearse Job's ``scratch-guard`` sidecar: waits until the pod stops it (SIGTERM, or ``stop``), then
    drops the copy (``DROP DATABASE IF EXISTS ... WITH (FORCE)``). The connection to the maintenance database is
    opened before the wait, so the drop fits in the pod's termination grace period (a new connection is tried when
    that one was lost). Its exit is never the step's result."""
    from psycopg import sql

    from schemagate.libpq import connect

    data: dict[str, Any] = {"scratchDatabase": scratch}
    with StepBoundary(STEP, data=data) as step:
        server = rs._Server(resolve_url(None, scratch_url_env) if scratch_url_env else resolve_url(url, url_env),
                            maintenance_db)
        stopped = stop or threading.Event()
        if stop is None:
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        held = connect(server.admin_url, application_name="schemagate-rehearsal-guard")
        try:
            stopped.wait()
            try:
                held.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(scratch)))
                data["scratchDropped"] = True
            except Exception:  # noqa: BLE001 - the held connection was lost: a new one
                _drop(server, scratch, data)
        finally:
            held.close()
        step.succeed("ScratchDropped", f"the copy {scratch} was dropped")
    return step.result
