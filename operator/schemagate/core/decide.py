"""The phase decision: ``decide(spec, status, observed) -> Action`` (pure, no I/O).

The handler lists the resource's Jobs (with their pods' termination messages parsed), checks the Secrets,
looks at the database Lease, and calls ``decide``. The returned Action holds the complete desired status
(the handler writes it *before* creating a Job, so the status is an intent log: after a crash the same
deterministic Job name is computed again, and a 409 on create means "already there"), at most one Job to
create, whether to acquire or release the database Lease, the Events to post and when to look again.

Bookkeeping of the run lives in ``status.run``::

    run: {generation, specHash, retry, step, attempt, counters: {step: n}, retryAt}

``generation`` is the generation the run started at (Job names use it), ``counters`` the number of Jobs
ever created per step in this run (Job name suffix), ``attempt`` the attempts of the current step since the
run (re)started, ``retryAt`` set while waiting to retry a transient failure of the current step's Job.
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from schemagate.core import status as S
from schemagate.core.jobs import job_name
from schemagate.core.model import Migration
from schemagate.runner.result import ExitCode, Outcome

ACTIVE = "Active"
SUCCEEDED = "Succeeded"
FAILED = "Failed"


@dataclass(frozen=True)
class JobObs:
    """One Job owned by the resource, as listed (plus the parsed termination message of its pod)."""

    name: str
    step: str
    generation: int
    counter: int = 1
    state: str = ACTIVE  # Active | Succeeded | Failed
    result: dict[str, Any] | None = None  # StepResult dict from the termination message
    exit_code: int | None = None
    reason: str = ""  # Job condition reason, e.g. DeadlineExceeded, BackoffLimitExceeded
    message: str = ""

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
    base_seconds: float = 10.0
    cap_seconds: float = 300.0
    secret_poll_seconds: float = 30.0
    lock_poll_seconds: float = 5.0
    active_resync_seconds: float = 120.0

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff after the ``attempt``-th failed attempt (1-based)."""
        return float(min(self.cap_seconds, self.base_seconds * (2 ** max(0, attempt - 1))))


@dataclass(frozen=True)
class Observed:
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
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Action:
    status: dict[str, Any]
    create: JobRequest | None = None
    lock: str | None = None  # "acquire" | "release" | None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    consumed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (step, StepResult dict)

    @property
    def phase(self) -> str:
        return str(self.status.get("phase"))


def result_wanted(status: dict[str, Any]) -> str | None:
    """The name of the Job whose StepResult ``decide`` consumes once it has finished: the current step's Job of a
    run that is not terminal and not waiting to retry; None when no result is wanted. The observer reads the
    termination message of this Job only (one pod list per finished step, not per pass)."""
    run = status.get("run") or {}
    step = run.get("step")
    if not step or status.get("phase") in S.TERMINAL_PHASES or run.get("retryAt") \
            or int(run.get("attempt") or 0) <= 0:
        return None
    name = (status.get("jobs") or {}).get(step)
    return str(name) if name else None


def settled(m: Migration, status: dict[str, Any]) -> bool:
    """The run of this spec and retry token has ended (Succeeded, Blocked, Failed): nothing to start, so the
    observer need not read the Secrets again."""
    run = status.get("run") or {}
    return bool(status.get("phase") in S.TERMINAL_PHASES and run.get("specHash") == m.spec_hash
                and run.get("retry") == m.retry_token)


def synthesize_result(job: JobObs) -> dict[str, Any]:
    """The StepResult of a finished Job: its termination message, or one made from the exit code."""
    if job.result is not None:
        return job.result
    if job.state == SUCCEEDED:
        return {"step": job.step, "outcome": Outcome.SUCCEEDED.value, "reason": "Completed",
                "message": f"job {job.name} completed without a result", "data": {}}
    if job.exit_code is None:
        reason = job.reason or "JobFailed"
        msg = job.message or f"job {job.name} failed before its step ran"
        return {"step": job.step, "outcome": Outcome.PERMANENT_ERROR.value, "reason": reason,
                "message": msg, "data": {}}
    outcome = ExitCode.outcome_of(job.exit_code)
    reason = {Outcome.TRANSIENT_ERROR: "TransientError", Outcome.CHECKS_FAILED: "ChecksFailed"}.get(
        outcome, "InternalError")
    msg = f"step {job.step} exited with code {job.exit_code}"
    if job.message:
        msg += f": {job.message}"
    return {"step": job.step, "outcome": outcome.value, "reason": reason, "message": msg[:1024], "data": {}}


def _short(s: str, n: int = 1024) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def fresh_run(m: Migration, prev: dict[str, Any], now: _dt.datetime) -> dict[str, Any]:
    """A new run for a changed spec: keeps what is known about the database (currentRevision, last backup)."""
    st: dict[str, Any] = {k: prev[k] for k in ("currentRevision", "backup", "conditions", "kopf") if k in prev}
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


def _precheck_status(st: dict[str, Any], data: dict[str, Any], max_violations: int) -> int:
    checks = [c for c in data.get("checks") or [] if isinstance(c, dict)]
    raw_total = data.get("total")
    total = int(raw_total) if raw_total is not None else sum(int(c.get("count") or 0) for c in checks)
    st["violations"] = {
        "total": total,
        "maxViolations": int(data.get("maxViolations", max_violations)),
        "checks": [{k: c.get(k) for k in ("name", "table", "kind", "definition", "count") if k in c} for c in checks],
    }
    if data.get("truncated") or data.get("omitted"):
        st["violations"]["omitted"] = data.get("omitted")
    lint = data.get("lint")
    if isinstance(lint, dict):
        st["lint"] = {"total": int(lint.get("total") or 0), "findings": list(lint.get("findings") or [])}
    if data.get("currentRevision") is not None:
        st["currentRevision"] = data["currentRevision"]
    if data.get("targetRevision"):
        st["resolvedTargetRevision"] = data["targetRevision"]
    st["plan"] = {
        "targetRevision": data.get("targetRevision"),
        "pending": list(data.get("pending") or []),
        "checks": [{k: c.get(k) for k in ("name", "table", "kind", "definition") if k in c} for c in checks],
        "indexes": list(data.get("indexes") or []),
        "notValid": list(data.get("notValid") or []),
    }
    return total


class _Ctx:
    def __init__(self, m: Migration, st: dict[str, Any], obs: Observed) -> None:
        self.m, self.st, self.obs = m, st, obs
        self.reason = ""
        self.message = ""
        self.stalled = False
        self.events: list[Event] = []
        self.consumed: list[tuple[str, dict[str, Any]]] = []

    def set(self, phase: str, reason: str, message: str, stalled: bool = False) -> None:
        self.st["phase"] = phase
        self.reason, self.message, self.stalled = reason, _short(message), stalled

    def warn(self, reason: str, message: str) -> None:
        self.events.append(Event("Warning", reason, _short(message)))

    def note(self, reason: str, message: str) -> None:
        self.events.append(Event("Normal", reason, _short(message)))


def _next_step(m: Migration, step: str, st: dict[str, Any]) -> str | None:
    steps = m.steps()
    i = steps.index(step) + 1 if step in steps else len(steps)
    nxt = steps[i] if i < len(steps) else None
    if nxt == "migrate" and st.get("plan") is not None and not (st["plan"].get("pending") or []) \
            and st["plan"].get("targetRevision") and st.get("currentRevision") == st["plan"]["targetRevision"]:
        return "verify"  # nothing pending: skip the migrate Job
    return nxt


def _apply_result(c: _Ctx, step: str, job: JobObs) -> None:
    m, st, obs = c.m, c.st, c.obs
    res = synthesize_result(job)
    c.consumed.append((step, res))
    outcome = res.get("outcome")
    reason = str(res.get("reason") or outcome or "Unknown")
    message = str(res.get("message") or "")
    data = res.get("data") or {}
    run = st["run"]
    phase = S.PHASE_OF_STEP[step]

    if step == "precheck" and outcome in (Outcome.SUCCEEDED.value, Outcome.CHECKS_FAILED.value) and data:
        total = _precheck_status(st, data, m.precheck.max_violations)
        if outcome == Outcome.SUCCEEDED.value and total > m.precheck.max_violations:
            outcome, reason = Outcome.CHECKS_FAILED.value, "ViolationsFound"
            message = f"{total} rows violate the new constraints (maxViolations {m.precheck.max_violations})"

    if outcome == Outcome.SUCCEEDED.value:
        st.pop("lastError", None)
        run.pop("retryAt", None)
        if step == "backup":
            st["backup"] = {k: data.get(k) for k in ("path", "sizeBytes", "sha256") if data.get(k) is not None}
            st["backup"]["time"] = res.get("finishedAt") or S.rfc3339(obs.now)
            c.note("BackupCompleted", message or f"backup written to {data.get('path')}")
        elif step == "precheck":
            v = st.get("violations") or {}
            c.note("PrecheckPassed", message or f"{v.get('total', 0)} violating rows")
        elif step == "migrate":
            if data.get("toRevision") is not None:
                st["currentRevision"] = data["toRevision"]
            st["appliedRevisions"] = list(data.get("applied") or [])
            c.note("Migrated", message or f"database at {st.get('currentRevision')}")
        elif step == "verify":
            if data.get("currentRevision") is not None:
                st["currentRevision"] = data["currentRevision"]
        nxt = _next_step(m, step, st)
        if nxt is None:
            run["step"] = None
            st["finishedAt"] = S.rfc3339(obs.now)
            c.set(S.SUCCEEDED, "Succeeded",
                  f"migrated to {st.get('currentRevision') or st.get('resolvedTargetRevision')} and verified")
            c.note("Succeeded", c.message)
        else:
            run["step"], run["attempt"] = nxt, 0
            st["attempts"] = 0
        return

    st["lastError"] = {"phase": phase, "reason": reason, "message": _short(message)}
    if outcome == Outcome.TRANSIENT_ERROR.value:
        delay = obs.policy.backoff(int(run.get("attempt") or 1))
        retry_at = obs.now + _dt.timedelta(seconds=delay)
        run["retryAt"] = S.rfc3339(retry_at)
        c.warn(reason, f"{step} attempt {run.get('attempt')} failed: {message}; retrying in {int(delay)}s")
        return
    run["retryAt"] = None
    st["finishedAt"] = S.rfc3339(obs.now)
    if outcome == Outcome.CHECKS_FAILED.value and step == "precheck":
        c.set(S.BLOCKED, reason if reason not in ("ChecksFailed", "") else "ViolationsFound", message)
    elif outcome == Outcome.CHECKS_FAILED.value and step == "verify":
        c.set(S.FAILED, reason if reason not in ("ChecksFailed", "") else "VerificationFailed", message)
    else:
        c.set(S.FAILED, reason, message)
    st["lastError"]["reason"] = c.reason
    c.warn(c.reason, f"{step} failed: {message}")


def decide(m: Migration, status: dict[str, Any] | None, obs: Observed) -> Action:
    old = status or {}
    st = copy.deepcopy(old)
    now = obs.now
    prev_phase = old.get("phase")
    run = st.get("run") or {}
    c = _Ctx(m, st, obs)
    requeue: float | None = None
    create: JobRequest | None = None

    # 1. a new spec starts a new run; a suspend-only change keeps the run
    if not run or run.get("specHash") != m.spec_hash:
        st = fresh_run(m, old, now)
        c.st = st
        run = st["run"]
        c.note("RunStarted", f"generation {m.generation}: migrating to {m.migrations.target_revision}")
    st["observedGeneration"] = m.generation
    st["targetRevision"] = m.migrations.target_revision
    run.setdefault("counters", {})

    # 2. the retry annotation restarts a stalled run from its first step
    if m.retry_token != run.get("retry"):
        run["retry"] = m.retry_token
        if st.get("phase") in S.STALLED_PHASES:
            run.update({"step": m.steps()[0], "attempt": 0, "retryAt": None})
            for k in ("lastError", "finishedAt", "violations", "lint", "plan", "appliedRevisions"):
                st.pop(k, None)
            st["jobs"], st["attempts"], st["startedAt"] = {}, 0, S.rfc3339(now)
            st["phase"] = S.PENDING
            c.note("RetryRequested", f"annotation schemagate.dev/retry={m.retry_token!r}: starting the run again")

    if obs.lock.name:
        run["lease"] = obs.lock.name
    gen = int(run["generation"])
    own = [j for j in obs.jobs if j.generation == gen]
    others_active = [j for j in obs.jobs if j.active and j.generation != gen]
    any_active = [j for j in obs.jobs if j.active]
    jobs_by_name = {j.name: j for j in own}

    # 3. consume the current step's finished Job
    step = run.get("step")
    current: JobObs | None = None
    if step and st.get("phase") not in S.TERMINAL_PHASES:
        name = (st.get("jobs") or {}).get(step) if int(run.get("attempt") or 0) > 0 else None
        current = jobs_by_name.get(name) if name else None
        if current is not None and not current.active and not run.get("retryAt"):
            _apply_result(c, step, current)
            step = run.get("step")

    phase = st.get("phase")
    if phase in S.TERMINAL_PHASES:
        if phase in S.STALLED_PHASES and not c.reason:
            err = st.get("lastError") or {}
            c.set(phase, err.get("reason") or phase, err.get("message") or "")
        elif phase == S.SUCCEEDED and not c.reason:
            c.set(phase, "Succeeded", f"migrated to {st.get('currentRevision')} and verified")
    elif step:
        attempt = int(run.get("attempt") or 0)
        name = (st.get("jobs") or {}).get(step)
        current = jobs_by_name.get(name) if (name and attempt > 0) else None
        retry_at = S.parse_time(run.get("retryAt"))
        need: str | None = None  # "new" | "recreate"
        if current is not None and current.active:
            err = st.get("lastError") or {}
            c.set(S.PHASE_OF_STEP[step], err.get("reason") or S.PROGRESSING,
                  f"{step}: job {current.name}, attempt {attempt}"
                  + (f"; last attempt: {err.get('message')}" if err else ""))
            requeue = obs.policy.active_resync_seconds
        elif retry_at is not None and now < retry_at:
            err = st.get("lastError") or {}
            c.set(S.PHASE_OF_STEP[step], err.get("reason") or "TransientError",
                  f"{step} attempt {attempt} failed ({err.get('message', '')}); retry at {run['retryAt']}")
            requeue = max(0.05, (retry_at - now).total_seconds())
        elif attempt == 0 or retry_at is not None:
            need = "new"
        else:
            need = "recreate"  # status says the Job exists but it is not there (crash before create)

        if need:
            if m.suspend:
                c.set(S.SUSPENDED, S.SUSPENDED, f"suspended before {step}; unset spec.suspend to continue")
            elif others_active:
                c.set(S.PENDING, S.WAITING_FOR_PREVIOUS_RUN,
                      "waiting for Jobs of the previous run to finish: " + ", ".join(j.name for j in others_active))
                requeue = obs.policy.active_resync_seconds
            elif obs.secret_error:
                c.set(S.PENDING, S.SECRET_NOT_FOUND, obs.secret_error, stalled=True)
                st["lastError"] = {"phase": S.PENDING, "reason": S.SECRET_NOT_FOUND, "message": obs.secret_error}
                requeue = obs.policy.secret_poll_seconds
            elif not obs.lock.mine and obs.lock.holder:
                c.set(S.PENDING, S.WAITING_FOR_LOCK, f"database in use by {obs.lock.holder}")
                requeue = obs.policy.lock_poll_seconds
            else:
                if (st.get("lastError") or {}).get("reason") == S.SECRET_NOT_FOUND:
                    st.pop("lastError", None)
                counters = run["counters"]
                if need == "new":
                    counters[step] = int(counters.get(step) or 0) + 1
                    attempt += 1
                    run["attempt"] = attempt
                    run["retryAt"] = None
                    name = job_name(m.name, gen, step, counters[step])
                    st.setdefault("jobs", {})[step] = name
                assert name is not None
                st["attempts"] = attempt
                create = JobRequest(step=step, name=name, counter=int(counters.get(step) or 1))
                err = st.get("lastError") or {}
                c.set(S.PHASE_OF_STEP[step], err.get("reason") or S.PROGRESSING,
                      f"{step}: job {name}, attempt {attempt}"
                      + (f"; last attempt: {err.get('message')}" if err else ""))
                if need == "new":
                    c.note("JobCreated", f"{S.PHASE_OF_STEP[step]}: job {name} (attempt {attempt})")

    # 4. lock: take it before creating, give it back when nothing of ours runs any more
    lock: str | None = None
    if create is not None and not obs.lock.mine:
        lock = "acquire"
    elif obs.lock.mine and create is None and not any_active:
        if st.get("phase") in (*S.TERMINAL_PHASES, S.SUSPENDED) or c.reason == S.SECRET_NOT_FOUND:
            lock = "release"

    # 5. conditions and the transition Event
    if not c.reason:
        c.set(st.get("phase") or S.PENDING, S.PROGRESSING, "")
    if run.get("retryAt") is None:
        run.pop("retryAt", None)
    prev_ready = S.condition(old, "Ready") or {}
    st["conditions"] = S.build_conditions(st["phase"], c.reason, c.message, m.generation,
                                          old.get("conditions"), now, stalled=c.stalled)
    changed = st["phase"] != prev_phase or c.reason != prev_ready.get("reason")
    if changed and st["phase"] in (S.SUSPENDED, S.PENDING) and c.reason != S.PROGRESSING:
        (c.warn if c.stalled else c.note)(c.reason, c.message)
    return Action(status=st, create=create, lock=lock, events=c.events, requeue_after=requeue,
                  consumed=c.consumed)
