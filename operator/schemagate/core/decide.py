"""The phase decision: ``decide(spec, status, observed) -> Action`` (pure, no I/O).

The reconciler gathers the resource's Jobs (with the termination message of the finished current one parsed),
its Secrets and its database Lease (:mod:`schemagate.observe`), and calls ``decide``. The returned Action holds
the complete desired status (written *before* a Job is created, so the status is an intent log: after a crash the
same deterministic Job name is computed again, and a 409 on create means "already there"), at most one Job to
create, whether to acquire or release the database Lease (an intent: the Lease is already recorded in
``status.run.lease``; losing the race to acquire it means the reconciler looks again), the Events to post and
when to look again.

``decide`` is a short pipeline of named pure steps over a :class:`RunState` (see :data:`PIPELINE`):
start or continue the run, honour the retry annotation, record the Lease, consume the finished Job's result,
report a terminal phase, advance the current step (wait, or create its Job), the Lease intent, and the
conditions with the transition Event.

Bookkeeping of the run lives in ``status.run`` (:class:`schemagate.core.status.RunRecord`)::

    run: {generation, specHash, retry, step, attempt, counters: {step: n}, retryAt, lease}

``generation`` is the generation the run started at (Job names use it), ``counters`` the number of Jobs
ever created per step in this run (Job name suffix), ``attempt`` the attempts of the current step since the
run (re)started, ``retryAt`` set while waiting to retry a transient failure of the current step's Job,
``lease`` the name of the database Lease.
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, cast

from schemagate.contract.stepresult import ExitCode, Outcome
from schemagate.core import status as S
from schemagate.core.jobs import job_name
from schemagate.core.model import Migration
from schemagate.core.status import MigrationStatus, RunRecord

JobState = Literal["Active", "Succeeded", "Failed"]
ACTIVE: Final = "Active"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"

LockIntent = Literal["acquire", "release"]
EventType = Literal["Normal", "Warning"]
Need = Literal["new", "recreate"]  # a first Job for the step, or the same Job again (crash before create)
StepResultDict = dict[str, Any]  # a StepResult document (docs/architecture.md, "Step results")

_SUCCEEDED, _CHECKS_FAILED = Outcome.SUCCEEDED.value, Outcome.CHECKS_FAILED.value
_TRANSIENT = Outcome.TRANSIENT_ERROR.value


@dataclass(frozen=True)
class JobObs:
    """One Job owned by the resource, as listed (plus the parsed termination message of its pod)."""

    name: str
    step: str
    generation: int
    counter: int = 1
    state: JobState = ACTIVE
    result: StepResultDict | None = None  # StepResult dict from the termination message
    exit_code: int | None = None
    reason: str = ""  # Job condition reason, e.g. DeadlineExceeded, BackoffLimitExceeded
    message: str = ""
    running: bool = False  # a pod of the Job is Ready (batch/v1 JobStatus.ready > 0): its step has started
    stuck: bool = False  # active, but its pod can never start (k8s.stuck_reason; its words in reason/message):
    # decide fails the step now and asks for the Job to be stopped (Action.stop), so its pod (and a precheck's
    # throw-away shadow server) goes now, not at the Job's activeDeadlineSeconds

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


@dataclass(frozen=True)
class LockObs:
    """The database Lease as seen: held by this resource, by another one (``holder``), or free.

    ``name`` is the Lease's name (``schemagate-db-<hash>``); ``decide`` records it in ``status.run.lease``."""

    mine: bool = False
    holder: str | None = None
    name: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Timing of the decision, in seconds (from :class:`schemagate.settings.OperatorSettings`)."""

    base_seconds: float = 10.0
    cap_seconds: float = 300.0
    secret_poll_seconds: float = 30.0
    lock_poll_seconds: float = 5.0
    active_resync_seconds: float = 120.0
    start_poll_seconds: float = 5.0  # while a step's pod has not started: look for a pod that cannot start

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff after the ``attempt``-th failed attempt (1-based)."""
        return float(min(self.cap_seconds, self.base_seconds * (2 ** max(0, attempt - 1))))


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw: the time, the resource's Jobs, a missing Secret (message), the Lease."""

    now: _dt.datetime
    jobs: tuple[JobObs, ...] = ()
    secret_error: str | None = None  # set when a referenced Secret or key is missing
    lock: LockObs = LockObs()
    policy: RetryPolicy = RetryPolicy()


@dataclass(frozen=True)
class JobRequest:
    step: str
    name: str
    counter: int


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass
class Action:
    """The decision: the complete desired status, at most one Job, the Jobs to stop, the Lease intent, Events,
    next look.

    ``stop``: names of active Jobs whose failure this status records (a pod that can never start,
    :attr:`JobObs.stuck`); the reconciler ends them after writing the status (``k8s.Kube.stop_job``: their
    ``activeDeadlineSeconds`` becomes 1), so nothing waits for their deadline."""

    status: MigrationStatus
    create: JobRequest | None = None
    lock: LockIntent | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    consumed: list[tuple[str, StepResultDict]] = field(default_factory=list)  # (step, StepResult dict)
    stop: list[str] = field(default_factory=list)  # Job names

    @property
    def phase(self) -> str:
        return str(self.status.get("phase"))


def result_wanted(status: MigrationStatus) -> str | None:
    """The name of the Job whose StepResult ``decide`` consumes once it has finished: the current step's Job of a
    run that is not terminal and not waiting to retry; None when no result is wanted. The observer reads the
    termination message of this Job only."""
    run = status.get("run") or {}
    step = run.get("step")
    if not step or status.get("phase") in S.TERMINAL_PHASES or run.get("retryAt") \
            or int(run.get("attempt") or 0) <= 0:
        return None
    name = (status.get("jobs") or {}).get(step)
    return str(name) if name else None


def settled(m: Migration, status: MigrationStatus) -> bool:
    """The run of this spec and retry token has ended (Succeeded, Blocked, Failed): nothing to start, so the
    observer need not read the Secrets again."""
    run = status.get("run") or {}
    return bool(status.get("phase") in S.TERMINAL_PHASES and run.get("specHash") == m.spec_hash
                and run.get("retry") == m.retry_token)


def synthesize_result(job: JobObs) -> StepResultDict:
    """The StepResult of a finished Job (or a stuck one, :attr:`JobObs.stuck`): its termination message, or one
    made from the exit code (a stuck Job: PermanentError with the reason that keeps its pod from starting)."""
    if job.result is not None:
        return job.result
    if job.state == SUCCEEDED:
        return {"step": job.step, "outcome": _SUCCEEDED, "reason": "Completed",
                "message": f"job {job.name} completed without a result", "data": {}}
    if job.exit_code is None:
        reason = job.reason or "JobFailed"
        msg = job.message or f"job {job.name} failed before its step ran"
        return {"step": job.step, "outcome": Outcome.PERMANENT_ERROR.value, "reason": reason,
                "message": msg, "data": {}}
    outcome = ExitCode.outcome_of(job.exit_code)
    reason = {Outcome.TRANSIENT_ERROR: "TransientError", Outcome.CHECKS_FAILED: "ChecksFailed"}.get(
        outcome, "InternalError")
    if job.message.startswith("OOMKilled"):  # the kubelet's reason for a memory-limit kill (k8s.job_result)
        reason = "OOMKilled"
    msg = f"step {job.step} exited with code {job.exit_code}"
    if job.message:
        msg += f": {job.message}"
    return {"step": job.step, "outcome": outcome.value, "reason": reason, "message": msg[:1024], "data": {}}


def _short(s: str, n: int = 1024) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


_KEPT_ACROSS_RUNS = ("currentRevision", "backup", "backups", "conditions", "kopf")
MAX_BACKUPS_LISTED = 100  # status.backups when spec.backup.retention is 0 (every file kept)
# status.violations.checks, status.plan.checks and status.plan.indexes list at most this many entries each: a result
# read whole from the step's log can hold thousands (a first deploy from base), and the object must stay far below
# the 1.5 MiB a write to the API server may carry (etcd's default --max-request-bytes)
MAX_STATUS_CHECKS = 500
MAX_STATUS_STATEMENTS = 200  # status.rehearsal.statements


def _list_backup(m: Migration, st: MigrationStatus, rec: S.BackupRecord) -> None:
    """``status.backups``: ``rec`` first, then the older ones, as many as the backup step keeps on its volume
    (``spec.backup.retention``, the runner's ``--keep``; 0 keeps all, listed up to :data:`MAX_BACKUPS_LISTED`)."""
    keep = m.backup.retention if m.backup.retention > 0 else MAX_BACKUPS_LISTED
    older = [b for b in st.get("backups") or [] if b.get("path") != rec.get("path")]
    st["backups"] = [cast(S.BackupRecord, dict(rec)), *older][: min(keep, MAX_BACKUPS_LISTED)]


def _backup_revision(st: MigrationStatus, revision: object) -> None:
    """The revision the precheck read goes to this run's backup (taken just before, under the same Lease)."""
    if "backup" not in (st.get("jobs") or {}) or not st.get("backups"):
        return
    rev = str(revision) if revision else "base"
    st["backups"][0]["revision"] = rev
    if st.get("backup", {}).get("path") == st["backups"][0].get("path"):
        st["backup"]["revision"] = rev


def fresh_run(m: Migration, prev: MigrationStatus, now: _dt.datetime) -> MigrationStatus:
    """A new run for a changed spec: keeps what is known about the database (currentRevision, last backup)."""
    old = cast(dict[str, object], prev)
    st = cast(MigrationStatus, {k: old[k] for k in _KEPT_ACROSS_RUNS if k in old})
    st.update({
        "observedGeneration": m.generation,
        "phase": S.PENDING,
        "targetRevision": m.migrations.target_revision,
        "jobs": {},
        "attempts": 0,
        "startedAt": S.rfc3339(now),
        "run": {
            "generation": m.generation,
            "specHash": m.spec_hash,
            "retry": m.retry_token,
            "step": m.steps()[0],
            "attempt": 0,
            "counters": {},
        },
    })
    return st


def _drop(st: MigrationStatus, *keys: str) -> None:
    d = cast(dict[str, object], st)
    for k in keys:
        d.pop(k, None)


# ----------------------------------------------------------------------------------------------------------------
# The state the pipeline works on


@dataclass
class RunState:
    """The decision in progress: the spec, what was observed, the previous status, the status being built (a
    deep copy) and what the pass decided so far (Ready reason/message, Events, the Job, the Lease intent)."""

    m: Migration
    obs: Observed
    old: MigrationStatus
    st: MigrationStatus
    reason: str = ""
    message: str = ""
    stalled: bool = False
    events: list[Event] = field(default_factory=list)
    consumed: list[tuple[str, StepResultDict]] = field(default_factory=list)
    create: JobRequest | None = None
    stop: list[str] = field(default_factory=list)
    lock: LockIntent | None = None
    requeue: float | None = None

    @property
    def run(self) -> RunRecord:
        return self.st["run"]

    @property
    def phase(self) -> str | None:
        return self.st.get("phase")

    @property
    def own_jobs(self) -> dict[str, JobObs]:
        gen = int(self.run["generation"])
        return {j.name: j for j in self.obs.jobs if j.generation == gen}

    def current_job(self, step: str) -> JobObs | None:
        """The Job the status names for ``step`` (only once an attempt was made), if it is listed."""
        name = (self.st.get("jobs") or {}).get(step) if int(self.run.get("attempt") or 0) > 0 else None
        return self.own_jobs.get(name) if name else None

    def last_error(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.st.get("lastError") or {})

    def set(self, phase: str, reason: str, message: str, stalled: bool = False) -> None:
        self.st["phase"] = phase
        self.reason, self.message, self.stalled = reason, _short(message), stalled

    def warn(self, reason: str, message: str) -> None:
        self.events.append(Event("Warning", reason, _short(message)))

    def note(self, reason: str, message: str) -> None:
        self.events.append(Event("Normal", reason, _short(message)))

    def action(self) -> Action:
        return Action(status=self.st, create=self.create, lock=self.lock, events=self.events,
                      requeue_after=self.requeue, consumed=self.consumed, stop=self.stop)


# ----------------------------------------------------------------------------------------------------------------
# Consuming a step's result


T = TypeVar("T")


def _keep_first(items: list[T], limit: int, weight: Callable[[T], Any]) -> list[T]:
    """At most ``limit`` of ``items``, in their order: the lowest ``weight`` first (the sort is stable)."""
    if len(items) <= limit:
        return items
    keep = sorted(sorted(range(len(items)), key=lambda i: weight(items[i]))[:limit])
    return [items[i] for i in keep]


def _status_checks(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most ``MAX_STATUS_CHECKS`` of ``checks``, in their order: those that count rows or were not evaluated
    first (the largest counts), then the rest."""
    return _keep_first(checks, MAX_STATUS_CHECKS, lambda c: (
        0 if c.get("count") or c.get("evaluatedBy") == "not-evaluated" else 1, -int(c.get("count") or 0)))


def _precheck_status(st: MigrationStatus, data: dict[str, Any], max_violations: int) -> int:
    every = [c for c in data.get("checks") or [] if isinstance(c, dict)]
    checks = _status_checks(every)
    raw_total = data.get("total")
    total = int(raw_total) if raw_total is not None else sum(int(c.get("count") or 0) for c in every)
    st["violations"] = {
        "total": total,
        "maxViolations": int(data.get("maxViolations", max_violations)),
        "checks": [{k: c.get(k) for k in ("name", "schema", "table", "column", "kind", "definition", "count",
                                          "revision", "evaluatedBy") if k in c}  # type: ignore[misc]
                   for c in checks],
    }
    omitted = {str(k): int(v) for k, v in (data.get("omitted") or {}).items() if isinstance(v, (int, bool))}
    if len(checks) < len(every):  # the status keeps what blocks; verify widens its leftover check (plan.partial)
        omitted["statusChecks"] = len(every) - len(checks)
    indexes = list(data.get("indexes") or [])
    if len(indexes) > MAX_STATUS_CHECKS:
        omitted["statusIndexes"] = len(indexes) - MAX_STATUS_CHECKS
        indexes = indexes[:MAX_STATUS_CHECKS]
    if omitted:  # counts per list (the CRD: integers; "all": true is 1)
        st["violations"]["omitted"] = omitted
    lint = data.get("lint")
    if isinstance(lint, dict):
        st["lint"] = {"total": int(lint.get("total") or 0), "findings": list(lint.get("findings") or [])}
    if data.get("currentRevision") is not None:
        st["currentRevision"] = data["currentRevision"]
    if data.get("targetRevision"):
        st["resolvedTargetRevision"] = data["targetRevision"]
    st["plan"] = {
        "targetRevision": data.get("targetRevision"),
        "expectedRevisions": list(data.get("expectedRevisions") or []),
        "pending": list(data.get("pending") or []),
        "checks": [{k: c.get(k) for k in ("name", "schema", "table", "column", "kind", "definition", "presentAtTarget")
                    if k in c}  # type: ignore[misc]
                   for c in checks],
        "indexes": indexes,
        "notValid": list(data.get("notValid") or []),
    }
    if isinstance(data.get("versionTable"), dict):  # where env.py keeps the version rows (verify reads them there)
        st["plan"]["versionTable"] = dict(data["versionTable"])
    if isinstance(data.get("downgrade"), dict):  # a downgrade (spec.allowDowngrade): migrate downgrades, verify checks
        st["plan"]["downgrade"] = dict(data["downgrade"])
    if omitted:  # only the summary came back (k8s.Kube.whole_result), or the status keeps a part: lists are short
        st["plan"]["partial"] = True
    return total


def _next_step(m: Migration, step: str, st: MigrationStatus) -> str | None:
    steps = m.steps()
    i = steps.index(step) + 1 if step in steps else len(steps)
    nxt = steps[i] if i < len(steps) else None
    plan = st.get("plan")
    if nxt == "rehearse" and plan is not None and (plan.get("downgrade") or not (plan.get("pending") or [])):
        return _next_step(m, "rehearse", st)  # nothing to rehearse (the rehearsal is of upgrades)
    if nxt == "migrate" and plan is not None and not (plan.get("pending") or []) and not plan.get("downgrade") \
            and plan.get("targetRevision") and st.get("currentRevision") == plan["targetRevision"]:
        return "verify"  # nothing pending: skip the migrate Job
    return nxt


def _verdict(rs: RunState, step: str, res: StepResultDict) -> tuple[str, str, str]:
    """(outcome, reason, message) of a result; a precheck over ``maxViolations`` is ChecksFailed. Records the
    precheck's violations, lint and plan in the status."""
    outcome = res.get("outcome")
    reason = str(res.get("reason") or outcome or "Unknown")
    message = str(res.get("message") or "")
    data = res.get("data") or {}
    if step == "precheck" and outcome in (_SUCCEEDED, _CHECKS_FAILED) and "currentRevision" in data:
        _backup_revision(rs.st, data.get("currentRevision"))
    if step == "precheck" and outcome in (_SUCCEEDED, _CHECKS_FAILED) and data:
        limit = rs.m.precheck.max_violations
        total = _precheck_status(rs.st, data, limit)
        if data.get("omitted"):
            rs.warn("PrecheckResultSummarized", "only the summary of the precheck's result could be read (its "
                    "termination message; the operator reads the whole result from the step's log and needs "
                    "get on pods/log): the status lists the largest counts, and verify looks for NOT VALID "
                    "constraints and invalid indexes on every table")
        if outcome == _SUCCEEDED and total > limit:
            outcome, reason = _CHECKS_FAILED, "ViolationsFound"
            message = f"{total} rows violate the new constraints (maxViolations {limit})"
    return str(outcome), reason, message


def _record_success(rs: RunState, step: str, res: StepResultDict, message: str) -> None:
    """What a successful step adds to the status, and its Event."""
    st, data = rs.st, res.get("data") or {}
    if step == "backup":
        st["backup"] = cast(S.BackupRecord, {k: data.get(k) for k in ("path", "sizeBytes", "sha256", "format")
                                              if data.get(k) is not None})
        st["backup"]["time"] = res.get("finishedAt") or S.rfc3339(rs.obs.now)
        if st.get("currentRevision"):  # as last known; the precheck reads it (_backup_revision)
            st["backup"]["revision"] = str(st["currentRevision"])
        _list_backup(rs.m, st, st["backup"])
        rs.note("BackupCompleted", message or f"backup written to {data.get('path')}")
    elif step == "precheck":
        v = st.get("violations") or {}
        rs.note("PrecheckPassed", message or f"{v.get('total', 0)} violating rows")
    elif step == "rehearse":
        rs.note("Rehearsed", message or "the pending revisions ran on a restored copy")
    elif step == "migrate" and data.get("direction") == "downgrade":
        st["currentRevision"] = data.get("toRevision") or "base"
        rs.note("Downgraded", message or f"database at {st.get('currentRevision')}")
    elif step == "migrate":
        if data.get("toRevision") is not None:
            st["currentRevision"] = data["toRevision"]
        st["appliedRevisions"] = list(data.get("applied") or [])
        rs.note("Migrated", message or f"database at {st.get('currentRevision')}")
    elif step == "verify" and data.get("currentRevision") is not None:
        st["currentRevision"] = data["currentRevision"]


def _on_success(rs: RunState, step: str, res: StepResultDict, message: str) -> None:
    st, run = rs.st, rs.run
    st.pop("lastError", None)
    run.pop("retryAt", None)
    _record_success(rs, step, res, message)
    nxt = _next_step(rs.m, step, st)
    if nxt is None:
        run["step"] = None
        st["finishedAt"] = S.rfc3339(rs.obs.now)
        verb = "downgraded" if "downgrade" in (st.get("plan") or {}) else "migrated"
        rs.set(S.SUCCEEDED, "Succeeded",
               f"{verb} to {st.get('currentRevision') or st.get('resolvedTargetRevision')} and verified")
        rs.note("Succeeded", rs.message)
    else:
        run["step"], run["attempt"] = nxt, 0
        st["attempts"] = 0


def _on_failure(rs: RunState, step: str, outcome: str, reason: str, message: str) -> None:
    st, run = rs.st, rs.run
    st["lastError"] = {"phase": S.PHASE_OF_STEP[step], "reason": reason, "message": _short(message)}
    if outcome == _TRANSIENT:
        delay = rs.obs.policy.backoff(int(run.get("attempt") or 1))
        run["retryAt"] = S.rfc3339(rs.obs.now + _dt.timedelta(seconds=delay))
        rs.warn(reason, f"{step} attempt {run.get('attempt')} failed: {message}; retrying in {int(delay)}s")
        return
    run["retryAt"] = None
    st["finishedAt"] = S.rfc3339(rs.obs.now)
    if outcome == _CHECKS_FAILED and step == "precheck":
        rs.set(S.BLOCKED, reason if reason not in ("ChecksFailed", "") else "ViolationsFound", message)
    elif outcome == _CHECKS_FAILED and step == "rehearse":  # the real database was not touched
        rs.set(S.BLOCKED, reason if reason not in ("ChecksFailed", "") else "RehearsalFailed", message)
    elif outcome == _CHECKS_FAILED and step == "verify":
        rs.set(S.FAILED, reason if reason not in ("ChecksFailed", "") else "VerificationFailed", message)
    else:
        rs.set(S.FAILED, reason, message)
    st["lastError"]["reason"] = rs.reason
    rs.warn(rs.reason, f"{step} failed: {message}")


def _leftover_events(rs: RunState, data: dict[str, Any]) -> None:
    """One Warning per INVALID index a failed migrate attempt left (``data.leftovers``, see
    ``schemagate.runner.inject.leftovers``): dropped before the retry, or still there for the next attempt."""
    for x in data.get("leftovers") or []:
        if not isinstance(x, dict):
            continue
        where = f"index {x.get('index')} (table {x.get('table')}, schema {x.get('schema')})"
        if x.get("dropped"):
            rs.warn("LeftoverIndexDropped", f"dropped INVALID {where} left by a failed attempt of revision "
                                            f"{x.get('revision')} (DROP INDEX CONCURRENTLY), then applied it again")
        else:
            rs.warn("LeftoverIndexFound", f"INVALID {where} left by a failed attempt of revision "
                                          f"{x.get('revision')}; the next migrate attempt drops it first")


REHEARSAL_STATUS_KEYS = ("scratchDatabase", "failedRevision", "failedStatement", "revisions", "statements",
                         "restoreSeconds", "durationSeconds", "databaseBytes", "maxSizeBytes", "scratchDropped")


def rehearsal_result(job: JobObs, res: StepResultDict) -> StepResultDict:
    """The rehearse step's result as the status records it. A Job that ended without a StepResult of ours (a
    non-zero exit of ``spec.rehearsal.job``, the user's smoke test, whose output is its own) is a failed
    rehearsal: ChecksFailed, ``RehearsalFailed``, naming the container's output."""
    if job.result is not None or job.state == SUCCEEDED or job.exit_code is None:
        return res
    return {**res, "outcome": _CHECKS_FAILED, "reason": "RehearsalFailed",
            "message": _short(f"a container of the rehearse Job (spec.rehearsal.job, the smoke test on the "
                              f"rehearsed copy) exited with code {job.exit_code}: {job.message}; the real database "
                              f"was not touched")}


def _rehearsal_status(st: MigrationStatus, res: StepResultDict) -> None:
    """``status.rehearsal`` from the rehearse step's result (manifests/crd.yaml)."""
    data = res.get("data") or {}
    rec: dict[str, Any] = {"outcome": res.get("outcome"), "reason": res.get("reason"),
                           "message": _short(str(res.get("message") or ""))}
    rec.update({k: data[k] for k in REHEARSAL_STATUS_KEYS if data.get(k) is not None})
    statements = rec.get("statements")
    if isinstance(statements, list) and len(statements) > MAX_STATUS_STATEMENTS:  # those that took a lock, changed
        # rows or failed first, in their order
        rec["statements"] = _keep_first(statements, MAX_STATUS_STATEMENTS, lambda x: 0 if isinstance(x, dict) and (
            x.get("lock") or x.get("rows") or x.get("failed")) else 1)
        rec["omitted"] = {"statements": len(statements) - MAX_STATUS_STATEMENTS}
    if isinstance(data.get("verify"), dict):
        rec["verify"] = {k: v for k, v in data["verify"].items() if k != "data"}
    st["rehearsal"] = rec


def _apply_result(rs: RunState, step: str, job: JobObs) -> None:
    res = synthesize_result(job)
    if job.stuck:  # its failure is recorded now: the Job goes too, not at its deadline
        rs.stop.append(job.name)
    if step == "rehearse":
        res = rehearsal_result(job, res)
        _rehearsal_status(rs.st, res)
    rs.consumed.append((step, res))
    outcome, reason, message = _verdict(rs, step, res)
    if step == "migrate":
        _leftover_events(rs, res.get("data") or {})
    if outcome == _SUCCEEDED:
        _on_success(rs, step, res, message)
    else:
        _on_failure(rs, step, outcome, reason, message)


# ----------------------------------------------------------------------------------------------------------------
# Advancing the current step


def _progress_message(rs: RunState, step: str, job: str, attempt: int) -> None:
    err = rs.last_error()
    rs.set(S.PHASE_OF_STEP[step], err.get("reason") or S.PROGRESSING,
           f"{step}: job {job}, attempt {attempt}" + (f"; last attempt: {err.get('message')}" if err else ""))


def _need(rs: RunState, step: str, attempt: int) -> Need | None:
    """Whether the step needs a Job: None while its Job runs or a transient retry is not yet due."""
    current = rs.current_job(step)
    retry_at = S.parse_time(rs.run.get("retryAt"))
    if current is not None and current.active:
        _progress_message(rs, step, current.name, attempt)
        policy = rs.obs.policy
        rs.requeue = policy.active_resync_seconds if current.running else policy.start_poll_seconds
        return None
    if retry_at is not None and rs.obs.now < retry_at:
        err = rs.last_error()
        rs.set(S.PHASE_OF_STEP[step], err.get("reason") or "TransientError",
               f"{step} attempt {attempt} failed ({err.get('message', '')}); retry at {rs.run['retryAt']}")
        rs.requeue = max(0.05, (retry_at - rs.obs.now).total_seconds())
        return None
    if attempt == 0 or retry_at is not None:
        return "new"
    return "recreate"  # status says the Job exists but it is not there (crash before create)


def _blocked_start(rs: RunState, step: str) -> bool:
    """Hold back the step's Job: suspended, an older run's Jobs active, a Secret missing, the Lease taken."""
    obs, policy = rs.obs, rs.obs.policy
    gen = int(rs.run["generation"])
    others_active = [j for j in obs.jobs if j.active and j.generation != gen]
    if rs.m.suspend:
        rs.set(S.SUSPENDED, S.SUSPENDED, f"suspended before {step}; unset spec.suspend to continue")
    elif others_active:
        rs.set(S.PENDING, S.WAITING_FOR_PREVIOUS_RUN,
               "waiting for Jobs of the previous run to finish: " + ", ".join(j.name for j in others_active))
        rs.requeue = policy.active_resync_seconds
    elif obs.secret_error:
        rs.set(S.PENDING, S.SECRET_NOT_FOUND, obs.secret_error, stalled=True)
        rs.st["lastError"] = {"phase": S.PENDING, "reason": S.SECRET_NOT_FOUND, "message": obs.secret_error}
        rs.requeue = policy.secret_poll_seconds
    elif not obs.lock.mine and obs.lock.holder:
        rs.set(S.PENDING, S.WAITING_FOR_LOCK, f"database in use by {obs.lock.holder}")
        rs.requeue = policy.lock_poll_seconds
    else:
        return False
    return True


def _create_job(rs: RunState, step: str, need: Need, attempt: int) -> None:
    st, run = rs.st, rs.run
    if rs.last_error().get("reason") == S.SECRET_NOT_FOUND:
        st.pop("lastError", None)
    counters = run["counters"]
    name = (st.get("jobs") or {}).get(step)
    if need == "new":
        counters[step] = int(counters.get(step) or 0) + 1
        attempt += 1
        run["attempt"] = attempt
        run["retryAt"] = None
        name = job_name(rs.m.name, int(run["generation"]), step, counters[step])
        st.setdefault("jobs", {})[step] = name
    assert name is not None
    st["attempts"] = attempt
    rs.create = JobRequest(step=step, name=name, counter=int(counters.get(step) or 1))
    rs.requeue = rs.obs.policy.start_poll_seconds  # an active Job's events do not wake us: look for a stuck pod
    _progress_message(rs, step, name, attempt)
    if need == "new":
        rs.note("JobCreated", f"{S.PHASE_OF_STEP[step]}: job {name} (attempt {attempt})")


# ----------------------------------------------------------------------------------------------------------------
# The pipeline


def start_run(rs: RunState) -> None:
    """A new spec starts a new run; a suspend-only change keeps the run."""
    m = rs.m
    run = rs.st.get("run")
    if not run or run.get("specHash") != m.spec_hash:
        rs.st = fresh_run(m, rs.old, rs.obs.now)
        rs.note("RunStarted", f"generation {m.generation}: migrating to {m.migrations.target_revision}")
    rs.st["observedGeneration"] = m.generation
    rs.st["targetRevision"] = m.migrations.target_revision
    rs.run.setdefault("counters", {})


def honour_retry(rs: RunState) -> None:
    """The retry annotation restarts a stalled run from its first step."""
    m, st, run = rs.m, rs.st, rs.run
    if m.retry_token == run.get("retry"):
        return
    run["retry"] = m.retry_token
    if st.get("phase") in S.STALLED_PHASES:
        run.update({"step": m.steps()[0], "attempt": 0, "retryAt": None})
        _drop(st, "lastError", "finishedAt", "violations", "lint", "plan", "appliedRevisions")
        st["jobs"], st["attempts"], st["startedAt"] = {}, 0, S.rfc3339(rs.obs.now)
        st["phase"] = S.PENDING
        rs.note("RetryRequested", f"annotation schemagate.dev/retry={m.retry_token!r}: starting the run again")


def refuse_downgrade(rs: RunState) -> None:
    """``base`` without ``spec.allowDowngrade: true`` fails the run at once (``DowngradeNotAllowed``), before any
    Job: it is a downgrade of any database that has a revision. Whether another named target is below the
    database is a question for the revision graph and the database as they are now (the status may be stale: a
    DatabaseRestore, or an ``alembic downgrade`` by hand, moves the database back without this resource), so the
    first step's Job answers it before any change: the backup Job's ``plan`` init container
    (:func:`schemagate.core.jobs.backup_plans_first`), without a backup the precheck."""
    m, st, run = rs.m, rs.st, rs.run
    if m.allow_downgrade or m.migrations.target_revision.strip() != "base" or rs.phase in S.TERMINAL_PHASES \
            or run.get("counters"):
        return
    msg = ("spec.migrations.targetRevision 'base' is a downgrade, which runs only with spec.allowDowngrade: "
           "true (then: backup, data-at-risk precheck, alembic downgrade, verify); nothing was run")
    run["step"] = None
    st["finishedAt"] = S.rfc3339(rs.obs.now)
    st["lastError"] = {"phase": S.PENDING, "reason": "DowngradeNotAllowed", "message": msg}
    rs.set(S.FAILED, "DowngradeNotAllowed", msg)
    rs.warn("DowngradeNotAllowed", msg)


def record_lease(rs: RunState) -> None:
    """The database Lease is data: its name goes into ``status.run.lease`` with the rest of the decision."""
    if rs.obs.lock.name:
        rs.run["lease"] = rs.obs.lock.name


def consume_result(rs: RunState) -> None:
    """The current step's finished Job moves the run on (or fails it, or schedules a retry). A stuck Job (its pod
    can never start) is a failure of the step now, and the Job is to be stopped (``Action.stop``)."""
    step = rs.run.get("step")
    if not step or rs.phase in S.TERMINAL_PHASES:
        return
    current = rs.current_job(step)
    if current is not None and (not current.active or current.stuck) and not rs.run.get("retryAt"):
        _apply_result(rs, step, current)


def report_terminal(rs: RunState) -> None:
    """A terminal phase keeps its reason (the last error, or Succeeded)."""
    phase = rs.phase
    if phase not in S.TERMINAL_PHASES or rs.reason:
        return
    if phase in S.STALLED_PHASES:
        err = rs.last_error()
        rs.set(phase, err.get("reason") or phase, err.get("message") or "")
    elif phase == S.SUCCEEDED:
        rs.set(phase, "Succeeded", f"migrated to {rs.st.get('currentRevision')} and verified")


def advance(rs: RunState) -> None:
    """The current step waits for its Job, waits to retry, is held back, or gets its Job."""
    step = rs.run.get("step")
    if not step or rs.phase in S.TERMINAL_PHASES:
        return
    attempt = int(rs.run.get("attempt") or 0)
    need = _need(rs, step, attempt)
    if need and not _blocked_start(rs, step):
        _create_job(rs, step, need, attempt)


def lock_intent(rs: RunState) -> None:
    """Take the Lease before creating a Job; give it back when nothing of ours runs any more."""
    mine = rs.obs.lock.mine
    if rs.create is not None and not mine:
        rs.lock = "acquire"
    elif mine and rs.create is None and not any(j.active and j.name not in rs.stop for j in rs.obs.jobs):
        if rs.phase in (*S.TERMINAL_PHASES, S.SUSPENDED) or rs.reason == S.SECRET_NOT_FOUND:
            rs.lock = "release"


def conditions(rs: RunState) -> None:
    """kstatus conditions, and an Event when a waiting phase or its reason changed."""
    st, old = rs.st, rs.old
    if not rs.reason:
        rs.set(st.get("phase") or S.PENDING, S.PROGRESSING, "")
    if rs.run.get("retryAt") is None:
        rs.run.pop("retryAt", None)
    prev_ready = S.condition(old, "Ready")
    st["conditions"] = S.build_conditions(st["phase"], rs.reason, rs.message, rs.m.generation,
                                          old.get("conditions"), rs.obs.now, stalled=rs.stalled)
    changed = st["phase"] != old.get("phase") or rs.reason != (prev_ready.get("reason") if prev_ready else None)
    if changed and st["phase"] in (S.SUSPENDED, S.PENDING) and rs.reason != S.PROGRESSING:
        (rs.warn if rs.stalled else rs.note)(rs.reason, rs.message)


PIPELINE: tuple[Callable[[RunState], None], ...] = (
    start_run, honour_retry, refuse_downgrade, record_lease, consume_result, report_terminal, advance, lock_intent, conditions,
)


def decide(m: Migration, status: MigrationStatus | None, obs: Observed) -> Action:
    """The next Action for DatabaseMigration ``m`` with its current ``status`` and what was ``obs``erved.

    Pure and deterministic (time comes from ``obs.now``). Runs :data:`PIPELINE` over a :class:`RunState`."""
    old = status or {}
    rs = RunState(m=m, obs=obs, old=old, st=copy.deepcopy(old))
    for step in PIPELINE:
        step(rs)
    return rs.action()
