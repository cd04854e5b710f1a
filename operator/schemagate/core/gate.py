"""The rollout gate decision: may this pod's ``schemagate.dev/migration`` scheduling gate be removed?

Pure (standard library only): the operator's k8s layer reads the pod and the DatabaseMigration it names,
asks :func:`decide` and, when the answer is to release, applies :func:`release_patch` to the pod.

An application opts in from its pod template::

    spec:
      schedulingGates: [{name: schemagate.dev/migration}]
    metadata:
      annotations:
        schemagate.dev/migration: <DatabaseMigration name, same namespace>
        schemagate.dev/revision: <Alembic revision id>        # optional

The gate is released only when the named migration is Ready for its *current* generation (status
``observedGeneration`` equals ``metadata.generation``; a missing or negative one, the CRD's default ``-1``, means
never observed, phase ``Succeeded``, condition ``Ready=True`` that is
not older than that generation) and, when the pod names a revision, ``status.currentRevision`` equals it.
Blocked and Failed migrations never release a gate, whatever their conditions say. The decision is
level-based: it depends only on the current pod and migration, so re-evaluating after an operator restart or
a missed event gives the same answer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GATE_NAME = "schemagate.dev/migration"
MIGRATION_ANNOTATION = "schemagate.dev/migration"
REVISION_ANNOTATION = "schemagate.dev/revision"

HOLDING_PHASES = frozenset({"Pending", "BackingUp", "Prechecking", "Rehearsing", "Migrating", "Verifying", "Suspended"})
TERMINAL_FAILURE_PHASES = frozenset({"Blocked", "Failed"})


class GateReason(str, enum.Enum):
    """Why the gate is released or held (used in events and logs)."""

    MIGRATION_READY = "MigrationReady"  # release
    NOT_GATED = "NotGated"  # the pod does not carry the gate: nothing to do
    POD_TERMINATING = "PodTerminating"  # deleted pod: nothing to do
    MISSING_ANNOTATION = "MissingMigrationAnnotation"  # gate without the annotation naming the migration
    MIGRATION_NOT_FOUND = "MigrationNotFound"
    STALE_STATUS = "StatusNotObserved"  # status describes an older generation (or none yet)
    IN_PROGRESS = "MigrationInProgress"
    BLOCKED = "MigrationBlocked"
    FAILED = "MigrationFailed"
    SUSPENDED = "MigrationSuspended"
    NOT_READY = "MigrationNotReady"  # phase Succeeded but Ready is not True (or an unknown phase)
    REVISION_MISMATCH = "RevisionMismatch"


@dataclass(frozen=True)
class GateDecision:
    release: bool
    reason: GateReason
    message: str
    migration: str | None = None

    @property
    def actionable(self) -> bool:
        """True when the pod carries the gate (released or held for a migration reason)."""
        return self.reason not in (GateReason.NOT_GATED, GateReason.POD_TERMINATING)


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def gate_names(pod: Mapping[str, Any]) -> list[str]:
    gates = _get(pod, "spec", "schedulingGates") or []
    return [g.get("name", "") for g in gates if isinstance(g, Mapping)]


def is_gated(pod: Mapping[str, Any]) -> bool:
    """Whether the pod still carries the schemagate scheduling gate."""
    return GATE_NAME in gate_names(pod)


def migration_ref(pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(DatabaseMigration name, required revision) from the pod's annotations; empty strings count as absent."""
    annotations = _get(pod, "metadata", "annotations") or {}
    name = (annotations.get(MIGRATION_ANNOTATION) or "").strip() or None
    revision = (annotations.get(REVISION_ANNOTATION) or "").strip() or None
    return name, revision


def waiting_pods(pods: Iterable[Mapping[str, Any]], migration: str) -> list[Mapping[str, Any]]:
    """The gated pods (of one namespace) that wait for the named migration."""
    return [p for p in pods if is_gated(p) and migration_ref(p)[0] == migration]


def _condition(migration: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in _get(migration, "status", "conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return cond
    return None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def migration_state(
    migration: Mapping[str, Any], revision: str | None = None
) -> tuple[bool, GateReason, str]:
    """(ready, reason, message) for a DatabaseMigration object, optionally requiring a revision.

    Shared by the gate and by ``schemagate wait`` so both read the status contract the same way. The questions,
    in order: observed at this generation? a terminal failure, suspended, or still in progress? Ready=True for
    this generation, at the required revision?
    """
    name = _get(migration, "metadata", "name") or "?"
    generation = _as_int(_get(migration, "metadata", "generation"))
    status = _get(migration, "status") or {}
    ready = _condition(migration, "Ready") or {}
    held = (_unobserved(name, generation, _as_int(status.get("observedGeneration")))
            or _unfinished(name, status, ready)
            or _not_ready(name, generation, status, ready, revision))
    if held is not None:
        return held
    at = status.get("currentRevision")
    return True, GateReason.MIGRATION_READY, f"DatabaseMigration {name} is Ready" + (f" at revision {at}" if at else "")


_Held = tuple[bool, GateReason, str]


def _unobserved(name: str, generation: int | None, observed: int | None) -> _Held | None:
    """Held when the status does not describe the current generation (none yet, the CRD's structural default
    observedGeneration -1, or an older generation)."""
    if observed is None or observed < 0:
        return (False, GateReason.STALE_STATUS,
                f"DatabaseMigration {name} has not been observed by the operator yet (generation {generation})")
    if generation is None or observed != generation:
        return (False, GateReason.STALE_STATUS,
                f"DatabaseMigration {name}: status describes generation {observed}, "
                f"waiting for the operator to observe generation {generation}")
    return None


def _unfinished(name: str, status: Mapping[str, Any], ready: Mapping[str, Any]) -> _Held | None:
    """Held when the phase is Blocked/Failed (with the Ready condition's or ``lastError``'s reason and message),
    Suspended, or anything but Succeeded."""
    phase = status.get("phase") or ""
    ready_msg = (ready.get("message") or "").strip()
    if phase in TERMINAL_FAILURE_PHASES:
        last_error = status.get("lastError") or {}
        reason = GateReason.BLOCKED if phase == "Blocked" else GateReason.FAILED
        detail = ready_msg or (last_error.get("message") if isinstance(last_error, Mapping) else "") or ""
        cause = ready.get("reason") or (last_error.get("reason") if isinstance(last_error, Mapping) else None)
        text = f"DatabaseMigration {name} is {phase}"
        if cause:
            text += f" ({cause})"
        if detail:
            text += f": {detail}"
        return False, reason, text
    if phase == "Suspended" or ready.get("reason") == "Suspended":
        return False, GateReason.SUSPENDED, f"DatabaseMigration {name} is suspended"
    if phase != "Succeeded":
        return (False, GateReason.IN_PROGRESS,
                f"DatabaseMigration {name} is {phase or 'not started'}" + (f": {ready_msg}" if ready_msg else ""))
    return None


def _not_ready(name: str, generation: int | None, status: Mapping[str, Any], ready: Mapping[str, Any],
               revision: str | None) -> _Held | None:
    """Held when phase Succeeded comes without Ready=True for this generation, or at another revision than
    ``revision`` (when given)."""
    cond_gen = _as_int(ready.get("observedGeneration"))
    if ready.get("status") != "True" or (cond_gen is not None and cond_gen != generation):
        return False, GateReason.NOT_READY, f"DatabaseMigration {name} has phase Succeeded but is not Ready"
    current = status.get("currentRevision")
    if revision is not None and current != revision:
        return (False, GateReason.REVISION_MISMATCH,
                f"DatabaseMigration {name} is Ready at revision {current or 'none'}, the pod needs {revision}")
    return None


def decide(pod: Mapping[str, Any], migration: Mapping[str, Any] | None) -> GateDecision:
    """Release or hold the pod's gate, given the DatabaseMigration it names (None when it does not exist).

    ``migration`` must be the object named by the pod's annotation in the pod's namespace; the caller looks it
    up (:func:`migration_ref`).
    """
    if not is_gated(pod):
        return GateDecision(False, GateReason.NOT_GATED, "the pod does not carry the schemagate gate")
    if _get(pod, "metadata", "deletionTimestamp"):
        return GateDecision(False, GateReason.POD_TERMINATING, "the pod is being deleted")
    name, revision = migration_ref(pod)
    if name is None:
        return GateDecision(
            False,
            GateReason.MISSING_ANNOTATION,
            f"the pod carries the {GATE_NAME} scheduling gate but no {MIGRATION_ANNOTATION} annotation "
            "naming a DatabaseMigration; it stays unscheduled",
        )
    if migration is None:
        return GateDecision(
            False, GateReason.MIGRATION_NOT_FOUND, f"DatabaseMigration {name} not found", name
        )
    ok, reason, message = migration_state(migration, revision)
    return GateDecision(ok, reason, message, name)


def release_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch removing only the schemagate gate, guarded by a ``test`` so a concurrent change fails.

    Kubernetes lets scheduling gates be removed (never added) after creation; other gates are kept.
    Returns an empty list when the pod is not gated.
    """
    names = gate_names(pod)
    if GATE_NAME not in names:
        return []
    index = names.index(GATE_NAME)
    path = f"/spec/schedulingGates/{index}"
    return [
        {"op": "test", "path": f"{path}/name", "value": GATE_NAME},
        {"op": "remove", "path": path},
    ]
