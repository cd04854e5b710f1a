"""Status and kstatus condition builders, the shapes of the DatabaseMigration status (``TypedDict``s, the
``status`` schema of manifests/crd.yaml), and the merge patch between two statuses (pure)."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final, Literal, TypedDict, cast

from schemagate.contract import names

Phase = Literal["Pending", "BackingUp", "Prechecking", "Rehearsing", "Migrating", "Verifying", "Succeeded", "Blocked", "Failed",
                "Suspended"]
Step = Literal["backup", "precheck", "rehearse", "migrate", "verify"]
ConditionType = Literal["Ready", "Reconciling", "Stalled"]
ConditionStatus = Literal["True", "False"]

# The phases of schemagate.contract.names.Phase as plain strings (they go into JSON and f-strings); the Literal
# types above spell the same values for mypy (tests/unit/test_settings.py checks they agree).
PENDING: Final = names.Phase.PENDING.value
BACKING_UP: Final = names.Phase.BACKING_UP.value
PRECHECKING: Final = names.Phase.PRECHECKING.value
REHEARSING: Final = names.Phase.REHEARSING.value
MIGRATING: Final = names.Phase.MIGRATING.value
VERIFYING: Final = names.Phase.VERIFYING.value
SUCCEEDED: Final = names.Phase.SUCCEEDED.value
BLOCKED: Final = names.Phase.BLOCKED.value
FAILED: Final = names.Phase.FAILED.value
SUSPENDED: Final = names.Phase.SUSPENDED.value


class Condition(TypedDict):
    """A kstatus condition (``status.conditions[]``)."""

    type: str
    status: str
    reason: str
    message: str
    observedGeneration: int
    lastTransitionTime: str


class LastError(TypedDict):
    """``status.lastError``: the phase, reason and message of the last failed attempt."""

    phase: str
    reason: str
    message: str


class RunRecord(TypedDict, total=False):
    """``status.run``: the operator's bookkeeping of the current run (see docs/architecture.md)."""

    generation: int
    specHash: str
    retry: str
    step: str | None
    attempt: int
    counters: dict[str, int]
    retryAt: str | None
    lease: str


class CheckCount(TypedDict, total=False):
    """One check of ``status.violations.checks[]`` (``count`` absent in ``status.plan.checks[]``)."""

    name: str
    schema: str | None
    table: str
    column: str | None
    kind: str
    definition: str
    count: int | None
    presentAtTarget: bool


class Violations(TypedDict, total=False):
    """``status.violations``: rows violating what the pending revisions add."""

    total: int
    maxViolations: int
    checks: list[CheckCount]
    omitted: dict[str, int | bool] | None  # what the termination message left out (``{"all": true}``: everything)


class LintSummary(TypedDict):
    """``status.lint``: squawk findings of the pending SQL."""

    total: int
    findings: list[dict[str, Any]]


class _PlanOptional(TypedDict, total=False):
    versionTable: dict[str, Any]  # {"schema", "name"}: where the application's env.py keeps the version rows
    # a downgrade (spec.allowDowngrade): {fromRevision, targetRevisions, removes: {kind: [names]}, dataAtRisk,
    # rowsAtRisk, maxDataLoss} from the precheck; the migrate Job downgrades, verify checks the removed objects gone
    downgrade: dict[str, Any]
    # True when the precheck's result reached the operator only as its termination message's summary (its log could
    # not be read): checks and indexes may be missing, so verify looks for leftovers on every user table
    partial: bool


class Plan(_PlanOptional):
    """``status.plan``: what the verify step needs from the precheck (passed in ``SCHEMAGATE_PLAN``)."""

    targetRevision: str | None
    expectedRevisions: list[str]
    pending: list[str]
    checks: list[CheckCount]
    indexes: list[dict[str, Any]]
    notValid: list[dict[str, Any]]


class BackupRecord(TypedDict, total=False):
    """``status.backup``: the last verified backup."""

    path: str
    sizeBytes: int
    sha256: str
    time: str
    revision: str  # the database's revision when it was taken ("base": none)
    format: str  # pg_dump's format: custom or directory


class MigrationStatus(TypedDict, total=False):
    """The DatabaseMigration ``status`` the operator writes (``kopf`` is Kopf's own, never patched by us)."""

    observedGeneration: int
    phase: str
    conditions: list[Condition]
    currentRevision: str | None
    targetRevision: str
    resolvedTargetRevision: str
    appliedRevisions: list[str]
    violations: Violations
    lint: LintSummary
    backup: BackupRecord
    backups: list[BackupRecord]  # every verified backup kept, newest first (bounded by spec.backup.retention)
    jobs: dict[str, str]
    attempts: int
    lastError: LastError
    startedAt: str
    finishedAt: str
    run: RunRecord
    plan: Plan
    rehearsal: dict[str, Any]  # the rehearse step's result (spec.rehearsal; manifests/crd.yaml status.rehearsal)
    kopf: dict[str, Any]

PHASES = (PENDING, BACKING_UP, PRECHECKING, REHEARSING, MIGRATING, VERIFYING, SUCCEEDED, BLOCKED, FAILED, SUSPENDED)
RUNNING_PHASES = (BACKING_UP, PRECHECKING, REHEARSING, MIGRATING, VERIFYING)
TERMINAL_PHASES = (SUCCEEDED, BLOCKED, FAILED)
STALLED_PHASES = (BLOCKED, FAILED)

PHASE_OF_STEP: dict[str, str] = {"backup": BACKING_UP, "precheck": PRECHECKING, "rehearse": REHEARSING,
                                  "migrate": MIGRATING, "verify": VERIFYING}

# Condition reasons the operator itself produces (step results bring their own, see docs/architecture.md).
SECRET_NOT_FOUND = "SecretNotFound"
WAITING_FOR_LOCK = "WaitingForDatabaseLock"
WAITING_FOR_PREVIOUS_RUN = "WaitingForPreviousRun"
PROGRESSING = "Progressing"


def rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: object) -> _dt.datetime | None:
    if not s:
        return None
    try:
        return _dt.datetime.strptime(str(s), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None


def condition_states(phase: str, reason: str, stalled: bool = False) -> dict[ConditionType, tuple[str, str]]:
    """(status, reason) of Ready, Reconciling and Stalled for a phase.

    ``stalled`` marks a non-terminal phase that needs a human (e.g. Pending on a missing Secret)."""
    if phase == SUCCEEDED:
        return {"Ready": ("True", reason or SUCCEEDED), "Reconciling": ("False", SUCCEEDED),
                "Stalled": ("False", SUCCEEDED)}
    if phase in STALLED_PHASES or stalled:
        return {"Ready": ("False", reason), "Reconciling": ("False", reason), "Stalled": ("True", reason)}
    if phase == SUSPENDED:
        return {"Ready": ("False", SUSPENDED), "Reconciling": ("False", SUSPENDED),
                "Stalled": ("False", SUSPENDED)}
    # Pending (waiting) and the running phases
    return {"Ready": ("False", reason or PROGRESSING), "Reconciling": ("True", reason or phase),
            "Stalled": ("False", reason or phase)}


def build_conditions(
    phase: str,
    reason: str,
    message: str,
    generation: int,
    previous: list[Condition] | None,
    now: _dt.datetime,
    stalled: bool = False,
) -> list[Condition]:
    """Ready, Reconciling, Stalled; lastTransitionTime kept while a condition's status does not change."""
    prev = {c.get("type"): c for c in (previous or []) if isinstance(c, dict)}
    out: list[Condition] = []
    for ctype, (cstatus, creason) in condition_states(phase, reason, stalled).items():
        old = prev.get(ctype)
        ltt = old.get("lastTransitionTime") if old and old.get("status") == cstatus else None
        out.append({
            "type": ctype,
            "status": cstatus,
            "reason": creason or phase,
            "message": message if (cstatus == "True" or ctype == "Ready") else "",
            "observedGeneration": generation,
            "lastTransitionTime": ltt or rfc3339(now),
        })
    return out


def condition(status: MigrationStatus, ctype: ConditionType) -> Condition | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_ready(body: dict[str, Any]) -> bool:
    """The contract's Ready: phase Succeeded and observedGeneration == metadata.generation."""
    st = cast(MigrationStatus, body.get("status") or {})
    c = condition(st, "Ready")
    return (
        st.get("phase") == SUCCEEDED
        and c is not None and c.get("status") == "True"
        and st.get("observedGeneration") == (body.get("metadata") or {}).get("generation")
    )


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning ``old`` into ``new`` (None when equal). Lists are replaced whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for k, v in new.items():
            if v is None:
                if old.get(k) is not None:
                    patch[k] = None
                continue
            if k not in old:
                if v is not None:
                    patch[k] = v
                continue
            sub = merge_patch(old[k], v)
            if sub is not None:
                patch[k] = sub
        for k in old:
            if k not in new and old[k] is not None:
                patch[k] = None
        return patch or None
    if old == new:
        return None
    return new


def prune_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: prune_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [prune_none(v) for v in d]
    return d
