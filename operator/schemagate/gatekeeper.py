"""The rollout gate's I/O: read gated pods and the DatabaseMigration they name, remove the gate when
:func:`schemagate.core.gate.decide` says so. Synchronous (call it from a thread); no Kopf here.

It works over ``schemagate.k8s.Kube`` (``kube.core`` is a ``CoreV1Api``, ``kube.get_migration(ns, name)``
returns the object or None). Level-based: every call looks at the current pod and migration only, so the operator
can call it for every pod event, every DatabaseMigration event (its own status writes included) and at start-up
(Kopf's initial listing delivers every existing object), and a restart or a missed event changes nothing.

Wiring (``schemagate.handlers``)::

    @kopf.on.event("", "v1", "pods", when=lambda body, **_: gate.is_gated(body))
    async def gated_pod_event(event, body, **_):
        if event.get("type") != "DELETED":
            await asyncio.to_thread(gatekeeper.evaluate_pod, kube, dict(body))

    # in the DatabaseMigration event handler, before skipping the echo of the operator's own status write:
    if gate.migration_state(body)[0]:
        await asyncio.to_thread(gatekeeper.release_waiting, kube, namespace, name)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from schemagate.core import gate

log = logging.getLogger("schemagate.gate")

JSON_PATCH = "application/json-patch+json"
# Gated pods have not been scheduled, so they are Pending: a server-side filter that keeps the list small.
PENDING_PODS = "status.phase=Pending"
# Hold reasons worth a Warning event on the pod (the others are ordinary waiting).
WARN_REASONS = {gate.GateReason.MISSING_ANNOTATION, gate.GateReason.BLOCKED, gate.GateReason.FAILED}


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def pod_event(kube: Any, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event on the pod (best effort)."""
    md = pod.get("metadata") or {}
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{md.get('name', 'pod')}.", "namespace": md.get("namespace")},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": md.get("name"),
                           "namespace": md.get("namespace"), "uid": md.get("uid")},
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": "schemagate"},
        "reportingComponent": "schemagate.dev/operator",
        "reportingInstance": os.environ.get("HOSTNAME", "schemagate"),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }  # fmt: skip
    try:
        kube.core.create_namespaced_event(md.get("namespace"), body, _preload_content=False)
    except Exception as exc:  # noqa: BLE001 - events are best effort
        log.debug("event on pod %s/%s not posted: %s", md.get("namespace"), md.get("name"), exc)


def evaluate_pod(kube: Any, pod: Mapping[str, Any], migration: Mapping[str, Any] | None = None,
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
    patch = gate.release_patch(pod)
    try:
        kube.core.patch_namespaced_pod(pod_name, ns, patch, _content_type=JSON_PATCH, _preload_content=False)
    except Exception as exc:
        # 404: the pod is gone; 422 (the test op failed): the gate list changed meanwhile, the next event retries
        if _status(exc) in (404, 409, 422):
            log.info("pod %s/%s not released (%s); it changed meanwhile", ns, pod_name, _status(exc))
            return gate.GateDecision(False, decision.reason, f"pod changed meanwhile ({_status(exc)})", name)
        raise
    counter = getattr(kube, "writes", None)
    if counter is not None:
        counter.add("pod-gate")
    log.info("released pod %s/%s: %s", ns, pod_name, decision.message)
    pod_event(
        kube, pod, "Normal", "MigrationReady", f"scheduling gate {gate.GATE_NAME} removed: {decision.message}"
    )
    return decision


def list_gated_pods(kube: Any, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every pod (in one namespace, or all) that still carries the schemagate gate."""
    if namespace:
        r = kube.core.list_namespaced_pod(namespace, field_selector=PENDING_PODS, _preload_content=False)
    else:
        r = kube.core.list_pod_for_all_namespaces(field_selector=PENDING_PODS, _preload_content=False)
    items = json.loads(r.data).get("items") or []
    return [p for p in items if gate.is_gated(p)]


def release_waiting(
    kube: Any, namespace: str, name: str, migration: dict[str, Any] | None = None
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


def release_all(kube: Any, namespaces: list[str] | None = None) -> list[str]:
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
