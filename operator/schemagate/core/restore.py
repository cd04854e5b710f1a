"""The DatabaseRestore: its spec as plain data and the decision ``decide_restore`` (pure, no I/O).

A DatabaseRestore names a DatabaseMigration (same namespace) and one backup listed in its ``status.backups`` (by
``sha256`` or ``path``). The operator restores it **once**: into a new database by default, over the database
only with ``replace: true`` (the Job's ``schemagate restore --replace`` takes a fresh verified backup first).

Why a GitOps sync cannot restore by accident:

- A restore is its own object, never a field of the DatabaseMigration: syncing, re-applying or editing a
  DatabaseMigration never restores anything.
- A DatabaseRestore runs at most once, keyed by its uid: ``status.restoreUid`` and the Job name (from the uid) are
  written before the Job is created; once the Job was seen, a missing Job is ``Failed`` (``JobLost``), never
  created again; a finished restore stays finished whatever happens to the spec later. The spec is immutable
  (the CRD's ``self == oldSelf`` rule), so a re-sync cannot point it elsewhere either. A *new* object (a new uid)
  is a new restore: keep DatabaseRestores out of the synced set (they are commands, not desired state).
- Before the Job touches a database, the backup is verified in it: the sha256 recorded in the DatabaseMigration's
  status, the sidecar and a full read (``schemagate restore --sha256``); a mismatch fails with nothing touched.

A restore over the database (``replace: true``) holds the database Lease, the same ``schemagate-db-<hash>`` Lease a
DatabaseMigration's run holds (holder ``DatabaseRestore/<namespace>/<name>/<uid>``, :mod:`schemagate.core.lease`):
it is taken before the Job is created and given back once the restore has finished, so a restore and a migration
run (of any DatabaseMigration on that database) never overlap. A restore into a new database touches no existing
database and takes no Lease.

Phases: ``Pending`` (waiting for the DatabaseMigration, for its run to end, or for the database Lease before
``replace``), ``Restoring``, ``Succeeded``, ``Failed``; kstatus conditions as the DatabaseMigration's
(:func:`schemagate.core.status.build_conditions`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, TypedDict, cast

from schemagate.contract import names
from schemagate.contract.stepresult import Outcome
from schemagate.core import status as S
from schemagate.core.decide import JobObs, LockIntent, LockObs, RetryPolicy, StepResultDict, synthesize_result
from schemagate.core.lease import RESTORE_KIND, Holder

KIND = RESTORE_KIND
PLURAL = "databaserestores"
RESTORING = "Restoring"
PHASES = (S.PENDING, RESTORING, S.SUCCEEDED, S.FAILED)
TERMINAL = (S.SUCCEEDED, S.FAILED)
STEP = "restore"
MIGRATION_POLL_SECONDS = 15.0


@dataclass(frozen=True)
class Restore:
    """One DatabaseRestore (``spec``: ``migrationRef.name``, ``backup.sha256`` | ``backup.path``, ``into``,
    ``replace``, ``jobs``, ``noOwner``)."""

    name: str
    namespace: str
    uid: str
    generation: int
    migration: str
    sha256: str | None = None
    path: str | None = None
    into: str | None = None
    replace: bool = False
    jobs: int = 1
    no_owner: bool = False

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Restore:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        bk = spec.get("backup") or {}
        return cls(name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")),
                   uid=str(meta.get("uid", "")), generation=int(meta.get("generation") or 1),
                   migration=str((spec.get("migrationRef") or {}).get("name", "")),
                   sha256=(str(bk["sha256"]).lower() if bk.get("sha256") else None),
                   path=(str(bk["path"]) if bk.get("path") else None),
                   into=spec.get("into") or None, replace=bool(spec.get("replace", False)),
                   jobs=int(spec.get("jobs") or 1), no_owner=bool(spec.get("noOwner", False)))

    @property
    def holder(self) -> str:
        """The database Lease ``holderIdentity`` of this restore (``replace: true`` only takes it)."""
        return Holder(KIND, self.namespace, self.name, self.uid).id

    @property
    def job_name(self) -> str:
        """``<name>-restore-<uid hash>`` (63 characters at most): one Job per object, ever."""
        tag = hashlib.sha256(self.uid.encode()).hexdigest()[:8]
        suffix = f"-restore-{tag}"
        return self.name[: 63 - len(suffix)].rstrip("-.") + suffix


class RestoreStatus(TypedDict, total=False):
    """The DatabaseRestore ``status`` (manifests/restore-crd.yaml)."""

    observedGeneration: int
    phase: str
    reason: str
    message: str
    restoreUid: str
    job: str
    jobSeen: bool
    lease: str
    startedAt: str
    finishedAt: str
    backup: S.BackupRecord
    result: dict[str, object]
    conditions: list[S.Condition]


@dataclass(frozen=True)
class RestoreObs:
    """What the restorer saw besides the objects: the restore's Job (None: absent), the database Lease as seen by
    this restore's holder id (``replace: true`` only; ``lock.name`` empty otherwise), a missing Secret of the
    database (message), and the operator's polling intervals (``lock_poll_seconds``, ``secret_poll_seconds``)."""

    job: JobObs | None = None
    lock: LockObs = LockObs()
    secret_error: str | None = None
    policy: RetryPolicy = RetryPolicy()


@dataclass
class RestoreAction:
    """The decision: the complete desired status, whether to create the Job, the Jobs to stop (after the status is
    written), the Lease intent (acquire before the status is written, release after), Events, when to look
    again."""

    status: RestoreStatus
    create: bool = False
    backup: S.BackupRecord | None = None  # the chosen status.backups entry (its path is restored)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
    lock: LockIntent | None = None
    stop: list[str] = field(default_factory=list)  # active Jobs to end (a pod that can never start, JobObs.stuck)


def pick_backup(r: Restore, migration_status: S.MigrationStatus) -> S.BackupRecord | None:
    """The entry of the DatabaseMigration's ``status.backups`` the restore names: by ``sha256`` (a unique prefix
    of at least 12 hex digits is enough) or by ``path``; None when it names none of them."""
    listed = [b for b in migration_status.get("backups") or [] if isinstance(b, dict)]
    if r.sha256:
        hits = [b for b in listed if str(b.get("sha256", "")).lower().startswith(r.sha256)]
        return hits[0] if len(hits) == 1 and len(r.sha256) >= 12 else None
    return next((b for b in listed if b.get("path") == r.path), None)


def backup_file(chosen: S.BackupRecord) -> str:
    """The archive's name in the backup volume: the backup step writes every archive at the top of its
    ``--backup-dir`` (``/backups``), so the listed path's last component names it wherever the volume is mounted.
    Empty for a path that names no file."""
    name = PurePosixPath(str(chosen.get("path") or "")).name
    return "" if name in ("", ".", "..") else name


def _set(st: RestoreStatus, phase: str, reason: str, message: str) -> None:
    st["phase"], st["reason"], st["message"] = phase, reason, message


def _fail(st: RestoreStatus, reason: str, message: str, now: _dt.datetime) -> None:
    _set(st, S.FAILED, reason, message)
    st["finishedAt"] = S.rfc3339(now)


def _wait(st: RestoreStatus, reason: str, message: str, act: RestoreAction, seconds: float) -> None:
    _set(st, S.PENDING, reason, message)
    act.requeue_after = seconds


def _take_lease(r: Restore, st: RestoreStatus, obs: RestoreObs, act: RestoreAction) -> bool:
    """``replace``: the database Lease before the Job (the Secret must name the database). False while waiting."""
    if not r.replace:
        return True
    if obs.secret_error:
        _wait(st, S.SECRET_NOT_FOUND, f"replace: {obs.secret_error}", act, obs.policy.secret_poll_seconds)
        return False
    if not obs.lock.mine and obs.lock.holder:
        _wait(st, S.WAITING_FOR_LOCK, f"replace: database in use by {obs.lock.holder}; waiting for its Lease "
                                      f"{obs.lock.name}", act, obs.policy.lock_poll_seconds)
        return False
    act.lock = None if obs.lock.mine else "acquire"
    st["lease"] = obs.lock.name
    return True


def _start(r: Restore, st: RestoreStatus, migration: dict[str, Any] | None, now: _dt.datetime,
           act: RestoreAction, obs: RestoreObs) -> None:
    """Not started yet: wait, fail with nothing touched, or write the intent and create the Job."""
    if migration is None:
        _wait(st, "MigrationNotFound", f"DatabaseMigration {r.migration!r} not found in namespace {r.namespace}",
              act, MIGRATION_POLL_SECONDS)
        return
    mspec = migration.get("spec") or {}
    mstatus = cast(S.MigrationStatus, migration.get("status") or {})
    if not (mspec.get("backup") or {}).get("volume"):
        _fail(st, "InvalidSpec", f"DatabaseMigration {r.migration} has no spec.backup.volume: there is no backup "
                                 "to restore", now)
        return
    chosen = pick_backup(r, mstatus)
    if chosen is None:
        listed = ", ".join(f"{str(b.get('sha256', ''))[:12]} ({b.get('path')})" for b in mstatus.get("backups") or [])
        _fail(st, "BackupNotFound", f"spec.backup names no backup in DatabaseMigration {r.migration}'s "
                                    f"status.backups (a sha256 of at least 12 hex digits, or a path); listed: "
                                    f"{listed or 'none'}; nothing was touched", now)
        return
    if not backup_file(chosen):
        _fail(st, "InvalidSpec", f"backup path {chosen.get('path')!r} names no file in the backup volume; nothing "
                                 "was touched", now)
        return
    if r.replace and mstatus.get("phase") in S.RUNNING_PHASES:
        _wait(st, "WaitingForMigration", f"replace: waiting for DatabaseMigration {r.migration} "
                                         f"({mstatus.get('phase')}) to end", act, MIGRATION_POLL_SECONDS)
        return
    if not _take_lease(r, st, obs, act):
        return
    _set(st, RESTORING, S.PROGRESSING, f"restoring {chosen.get('path')} "
         + ("over the database (a fresh backup first)" if r.replace else "into a new database"))
    st["restoreUid"], st["job"], st["startedAt"] = r.uid, r.job_name, S.rfc3339(now)
    st["backup"] = cast(S.BackupRecord, {k: v for k, v in chosen.items()
                                         if k in ("path", "sha256", "sizeBytes", "revision", "time")})
    act.create, act.backup = True, copy.copy(chosen)
    act.events.append(("Normal", "RestoreStarted", f"job {r.job_name}: {st['message']}"))


def _follow(r: Restore, st: RestoreStatus, obs: RestoreObs, now: _dt.datetime, act: RestoreAction,
            chosen: S.BackupRecord | None) -> None:
    """Started: wait for the Job, take its result once, or fail when the Job is lost. Never a second Job."""
    job = obs.job
    if job is None:
        if st.get("jobSeen"):
            _fail(st, "JobLost", f"job {st.get('job')} disappeared before it reported a result; a restore runs "
                                 "once: create a new DatabaseRestore to try again", now)
            act.events.append(("Warning", "JobLost", st["message"]))
        else:  # written, then the operator stopped before creating it: the same Job (a 409 means it exists)
            act.create, act.backup = True, copy.copy(chosen)
            if r.replace and not obs.lock.mine:
                act.lock = "acquire"
        return
    st["jobSeen"] = True
    if job.active and not job.stuck:  # while its pod has not started, look again soon for one that cannot start
        act.requeue_after = obs.policy.active_resync_seconds if job.running else obs.policy.start_poll_seconds
        return
    if job.stuck:  # its pod can never start: the restore fails now and its Job is stopped (nothing was touched)
        act.stop.append(job.name)
    res: StepResultDict = synthesize_result(job)
    data = res.get("data") or {}
    st["result"] = {k: data[k] for k in ("database", "created", "tables", "format", "verification",
                                          "freshBackup", "durationSeconds", "replace") if k in data}
    if res.get("outcome") == Outcome.SUCCEEDED.value:
        _set(st, S.SUCCEEDED, "Restored", str(res.get("message") or "restored"))
        st["finishedAt"] = S.rfc3339(now)
        act.events.append(("Normal", "Restored", st["message"]))
    else:
        _fail(st, str(res.get("reason") or "RestoreFailed"), str(res.get("message") or "restore failed"), now)
        act.events.append(("Warning", st["reason"], st["message"]))


def decide_restore(r: Restore, status: RestoreStatus | None, migration: dict[str, Any] | None,
                   job: JobObs | None, now: _dt.datetime, obs: RestoreObs | None = None) -> RestoreAction:
    """The next action for DatabaseRestore ``r`` (see the module docstring). ``migration``: the named
    DatabaseMigration's body (None when missing); ``job``: the restore's Job as observed (None when absent);
    ``obs``: the database Lease and Secret as observed (``replace`` needs them; its ``job`` is replaced by
    ``job``). Pure and deterministic."""
    obs = dataclasses.replace(obs or RestoreObs(), job=job)
    old = status or {}
    st = copy.deepcopy(old)
    cast(dict[str, object], st).pop("kopf", None)  # Kopf's own
    act = RestoreAction(status=st)
    if st.get("phase") not in TERMINAL:
        if st.get("restoreUid") == r.uid and st.get("job"):
            chosen = pick_backup(r, cast(S.MigrationStatus, (migration or {}).get("status") or {})) \
                or st.get("backup")
            _follow(r, st, obs, now, act, chosen)
        else:
            _start(r, st, migration, now, act, obs)
    if obs.lock.mine and st.get("phase") in TERMINAL and (job is None or not job.active or job.name in act.stop):
        act.lock = "release"  # the restore is over: the database's migrations may run again
    if st.get("phase") in TERMINAL and st.get("observedGeneration") not in (None, r.generation):
        st["message"] = (str(st.get("message") or "") + " (the spec changed after the restore ran; a restore runs "
                         "once: create a new DatabaseRestore)")[:1024]
    st["observedGeneration"] = r.generation
    st["message"] = str(st.get("message") or "")[:1024]
    reason = str(st.get("reason") or S.PROGRESSING)
    st["conditions"] = S.build_conditions(str(st.get("phase") or S.PENDING), reason, st["message"], r.generation,
                                          old.get("conditions"), now,
                                          stalled=reason in ("MigrationNotFound", S.SECRET_NOT_FOUND))
    return act


def restore_label_selector(r: Restore) -> dict[str, str]:
    """The labels of the restore's Job (the same uid label the DatabaseMigration's Jobs carry)."""
    return {names.LABEL_UID: r.uid}
