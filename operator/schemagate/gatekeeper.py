"""The rollout gate's I/O: read gated pods and the DatabaseMigration they name, remove the gate when
:func:`schemagate.core.gate.decide` says so. Synchronous (call it from a thread); no Kopf here.

It works over ``schemagate.k8s.Kube`` (``get_migration``, ``list_pending_pods``, ``patch_pod``, ``post_event``).
Level-based: every call looks at the current pod and migration only, so the operator can call it for every pod
event, every DatabaseMigration event (its own status writes included) and at start-up (Kopf's initial listing
delivers every existing object), and a restart or a missed event changes nothing.

Wiring: ``schemagate.handlers`` has :func:`evaluate_pod` called for every gated pod event, and
``schemagate.reconciler.Reconciler.release_gated`` calls :func:`release_waiting` for every DatabaseMigration event
that is Ready for its generation (before skipping the echo of the operator's own status write).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from schemagate.contract.errors import Conflict, Invalid, NotFound
from schemagate.core import gate
from schemagate.k8s import Kube

log = logging.getLogger("schemagate.gate")

# Hold reasons worth a Warning event on the pod (the others are ordinary waiting).
WARN_REASONS = {gate.GateReason.MISSING_ANNOTATION, gate.GateReason.BLOCKED, gate.GateReason.FAILED}


def pod_event(kube: Kube, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event on the pod (best effort)."""
    kube.post_event(pod, type_, reason, message, kind="Pod", api_version="v1")


def evaluate_pod(kube: Kube, pod: Mapping[str, Any], migration: Mapping[str, Any] | None = None,
                 *, lookup: bool = True, warn: bool = True) -> gate.GateDecision:  # fmt: skip
    """Decide for one pod and remove its gate when the migration allows it. Returns the decision.

    ``migration`` may be passed when the caller already has it (then ``lookup=False``).
    """
    ns = (pod.get("metadata") or {}).get("namespace", "")
    pod_name = (pod.get("metadata") or {}).get("name", "")
    name, _ = gate.migration_ref(pod)
    if lookup and name and gate.is_gated(pod):
        migration = kube.get_migration(ns, name)
    decision = gate.decide(pod, migration)
    if not decision.actionable:
        return decision
    if not decision.release:
        log.info("pod %s/%s stays gated: %s (%s)", ns, pod_name, decision.message, decision.reason.value)
        if warn and decision.reason in WARN_REASONS:
            pod_event(kube, pod, "Warning", decision.reason.value, decision.message)
        return decision
    try:
        kube.patch_pod(ns, pod_name, gate.release_patch(pod))
    except (NotFound, Invalid, Conflict) as exc:
        # gone; or the test op failed (Invalid): the gate list changed meanwhile, the next event retries
        log.info("pod %s/%s not released (%s); it changed meanwhile", ns, pod_name, exc.status)
        return gate.GateDecision(False, decision.reason, f"pod changed meanwhile ({exc.status})", name)
    log.info("released pod %s/%s: %s", ns, pod_name, decision.message)
    pod_event(
        kube, pod, "Normal", "MigrationReady", f"scheduling gate {gate.GATE_NAME} removed: {decision.message}"
    )
    return decision


def list_gated_pods(kube: Kube, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every pod (in one namespace, or all) that still carries the schemagate gate."""
    return [p for p in kube.list_pending_pods(namespace) if gate.is_gated(p)]


def release_waiting(
    kube: Kube, namespace: str, name: str, migration: dict[str, Any] | None = None
) -> list[str]:
    """Re-evaluate the gated pods waiting for one DatabaseMigration; returns the names of the released pods."""
    pods = gate.waiting_pods(list_gated_pods(kube, namespace), name)
    if not pods:
        return []
    if migration is None:
        migration = kube.get_migration(namespace, name)
    released = []
    for pod in pods:
        if evaluate_pod(kube, pod, migration, lookup=False, warn=False).release:
            released.append(pod["metadata"]["name"])
    return released


def release_all(kube: Kube, namespaces: list[str] | None = None) -> list[str]:
    """Re-evaluate every gated pod (at start-up); returns ``namespace/name`` of the released pods."""
    released: list[str] = []
    cache: dict[tuple[str, str], dict[str, Any] | None] = {}
    pods = (
        [p for ns in namespaces for p in list_gated_pods(kube, ns)] if namespaces else list_gated_pods(kube)
    )
    for pod in pods:
        ns = pod["metadata"]["namespace"]
        name, _ = gate.migration_ref(pod)
        if name is not None and (ns, name) not in cache:
            cache[(ns, name)] = kube.get_migration(ns, name)
        migration = cache.get((ns, name)) if name else None
        if evaluate_pod(kube, pod, migration, lookup=False, warn=False).release:
            released.append(f"{ns}/{pod['metadata']['name']}")
    return released
