"""Status and kstatus condition builders, and the merge patch between two statuses (pure)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

PENDING = "Pending"
BACKING_UP = "BackingUp"
PRECHECKING = "Prechecking"
MIGRATING = "Migrating"
VERIFYING = "Verifying"
SUCCEEDED = "Succeeded"
BLOCKED = "Blocked"
FAILED = "Failed"
SUSPENDED = "Suspended"

PHASES = (PENDING, BACKING_UP, PRECHECKING, MIGRATING, VERIFYING, SUCCEEDED, BLOCKED, FAILED, SUSPENDED)
RUNNING_PHASES = (BACKING_UP, PRECHECKING, MIGRATING, VERIFYING)
TERMINAL_PHASES = (SUCCEEDED, BLOCKED, FAILED)
STALLED_PHASES = (BLOCKED, FAILED)

PHASE_OF_STEP = {"backup": BACKING_UP, "precheck": PRECHECKING, "migrate": MIGRATING, "verify": VERIFYING}

# Condition reasons the operator itself produces (step results bring their own, see docs/architecture.md).
SECRET_NOT_FOUND = "SecretNotFound"
WAITING_FOR_LOCK = "WaitingForDatabaseLock"
WAITING_FOR_PREVIOUS_RUN = "WaitingForPreviousRun"
PROGRESSING = "Progressing"


def rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: Any) -> _dt.datetime | None:
    if not s:
        return None
    try:
        return _dt.datetime.strptime(str(s), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None


def condition_states(phase: str, reason: str, stalled: bool = False) -> dict[str, tuple[str, str]]:
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
    previous: list[dict[str, Any]] | None,
    now: _dt.datetime,
    stalled: bool = False,
) -> list[dict[str, Any]]:
    """Ready, Reconciling, Stalled; lastTransitionTime kept while a condition's status does not change."""
    prev = {c.get("type"): c for c in (previous or []) if isinstance(c, dict)}
    out = []
    for ctype, (cstatus, creason) in condition_states(phase, reason, stalled).items():
        old = prev.get(ctype) or {}
        ltt = old.get("lastTransitionTime") if old.get("status") == cstatus else None
        out.append({
            "type": ctype,
            "status": cstatus,
            "reason": creason or phase,
            "message": message if (cstatus == "True" or ctype == "Ready") else "",
            "observedGeneration": generation,
            "lastTransitionTime": ltt or rfc3339(now),
        })
    return out


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_ready(body: dict[str, Any]) -> bool:
    """The contract's Ready: phase Succeeded and observedGeneration == metadata.generation."""
    st = body.get("status") or {}
    c = condition(st, "Ready") or {}
    return (
        st.get("phase") == SUCCEEDED
        and c.get("status") == "True"
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
