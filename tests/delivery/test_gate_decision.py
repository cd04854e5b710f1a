"""The pure rollout-gate decision (schemagate.core.gate), exhaustively over the status contract."""

from __future__ import annotations

import copy
import itertools

import pytest

from schemagate.core import gate
from schemagate.core.gate import GATE_NAME, GateReason

PHASES = [
    "",
    "Pending",
    "BackingUp",
    "Prechecking",
    "Migrating",
    "Verifying",
    "Succeeded",
    "Blocked",
    "Failed",
    "Suspended",
    "SomethingNew",
]


def pod(migration="shop", revision=None, gates=(GATE_NAME,), deleting=False):
    annotations = {}
    if migration is not None:
        annotations[gate.MIGRATION_ANNOTATION] = migration
    if revision is not None:
        annotations[gate.REVISION_ANNOTATION] = revision
    p = {
        "metadata": {"name": "web-1", "namespace": "ns", "annotations": annotations},
        "spec": {"containers": [{"name": "app"}], "schedulingGates": [{"name": g} for g in gates]},
    }
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return p


def dbm(
    phase="Succeeded",
    ready="True",
    generation=3,
    observed=3,
    cond_generation=3,
    current="0002",
    reason=None,
    message="",
    last_error=None,
):
    status = {"observedGeneration": observed, "phase": phase, "currentRevision": current}
    if ready is not None:
        cond = {
            "type": "Ready",
            "status": ready,
            "reason": reason or ("Succeeded" if ready == "True" else phase),
            "message": message,
        }
        if cond_generation is not None:
            cond["observedGeneration"] = cond_generation
        status["conditions"] = [cond]
    if last_error:
        status["lastError"] = last_error
    return {
        "apiVersion": "schemagate.dev/v1alpha1",
        "kind": "DatabaseMigration",
        "metadata": {"name": "shop", "namespace": "ns", "generation": generation},
        "status": status,
    }


def test_ready_releases():
    d = gate.decide(pod(), dbm())
    assert d.release and d.reason is GateReason.MIGRATION_READY and d.migration == "shop"
    assert "0002" in d.message


@pytest.mark.parametrize(
    "phase,ready,generation,observed,cond_generation,pod_revision,current",
    list(
        itertools.product(
            PHASES,
            ["True", "False", "Unknown", None],
            [1, 3],
            [None, 1, 3, "3"],
            [None, 1, 3],
            [None, "0002", "0003"],
            ["0002", None],
        )
    ),
)
def test_exhaustive(phase, ready, generation, observed, cond_generation, pod_revision, current):
    m = dbm(
        phase=phase,
        ready=ready,
        generation=generation,
        observed=observed,
        cond_generation=cond_generation,
        current=current,
    )
    d = gate.decide(pod(revision=pod_revision), m)
    observed_int = int(observed) if observed is not None else None
    expected = (
        observed_int == generation
        and phase == "Succeeded"
        and ready == "True"
        and cond_generation in (None, generation)
        and (pod_revision is None or pod_revision == current)
    )
    assert d.release is expected, d
    # never released while Blocked/Failed, whatever the conditions claim
    if phase in ("Blocked", "Failed"):
        assert not d.release
        if observed_int == generation:
            assert d.reason in (GateReason.BLOCKED, GateReason.FAILED)
    if observed_int != generation:
        assert d.reason is GateReason.STALE_STATUS
    if d.release:
        assert d.reason is GateReason.MIGRATION_READY


def test_blocked_message_carries_reason_and_detail():
    m = dbm(
        phase="Blocked",
        ready="False",
        reason="ViolationsFound",
        message="12 rows violate 2 checks (maxViolations 0)",
    )
    d = gate.decide(pod(), m)
    assert not d.release and d.reason is GateReason.BLOCKED
    assert "ViolationsFound" in d.message and "12 rows" in d.message


def test_failed_message_falls_back_to_last_error():
    m = dbm(
        phase="Failed",
        ready=None,
        last_error={"phase": "Migrating", "reason": "LockTimeout", "message": "lock_timeout hit on orders"},
    )
    d = gate.decide(pod(), m)
    assert d.reason is GateReason.FAILED and "LockTimeout" in d.message and "orders" in d.message


def test_blocked_even_if_ready_true():
    d = gate.decide(pod(), dbm(phase="Blocked", ready="True"))
    assert not d.release and d.reason is GateReason.BLOCKED


def test_suspended_and_in_progress():
    assert gate.decide(pod(), dbm(phase="Suspended", ready="False")).reason is GateReason.SUSPENDED
    assert gate.decide(pod(), dbm(phase="Migrating", ready="False")).reason is GateReason.IN_PROGRESS
    assert gate.decide(pod(), dbm(phase="Succeeded", ready="False")).reason is GateReason.NOT_READY


def test_revision_mismatch():
    d = gate.decide(pod(revision="0003"), dbm(current="0002"))
    assert not d.release and d.reason is GateReason.REVISION_MISMATCH
    assert "0003" in d.message and "0002" in d.message


def test_no_status_at_all_is_stale():
    m = dbm()
    del m["status"]
    d = gate.decide(pod(), m)
    assert not d.release and d.reason is GateReason.STALE_STATUS


def test_not_gated_terminating_missing_annotation_not_found():
    assert gate.decide(pod(gates=()), dbm()).reason is GateReason.NOT_GATED
    assert gate.decide(pod(gates=("other/gate",)), dbm()).reason is GateReason.NOT_GATED
    assert not gate.decide(pod(gates=()), dbm()).actionable
    assert gate.decide(pod(deleting=True), dbm()).reason is GateReason.POD_TERMINATING
    d = gate.decide(pod(migration=None), dbm())
    assert d.reason is GateReason.MISSING_ANNOTATION and not d.release and d.actionable
    assert gate.decide(pod(migration="  "), dbm()).reason is GateReason.MISSING_ANNOTATION
    d = gate.decide(pod(), None)
    assert d.reason is GateReason.MIGRATION_NOT_FOUND and d.migration == "shop"


def test_empty_revision_annotation_counts_as_absent():
    assert gate.migration_ref(pod(revision="")) == ("shop", None)
    assert gate.decide(pod(revision=""), dbm(current="0009")).release


def test_release_patch_removes_only_our_gate():
    p = pod(gates=("other/first", GATE_NAME, "other/last"))
    patch = gate.release_patch(p)
    assert patch == [
        {"op": "test", "path": "/spec/schedulingGates/1/name", "value": GATE_NAME},
        {"op": "remove", "path": "/spec/schedulingGates/1"},
    ]
    assert gate.release_patch(pod(gates=())) == []


def test_decision_is_pure_and_level_based():
    p, m = pod(), dbm()
    before = (copy.deepcopy(p), copy.deepcopy(m))
    first = gate.decide(p, m)
    assert gate.decide(p, m) == first  # same inputs, same answer (operator restarts re-evaluate)
    assert (p, m) == before


def test_waiting_pods_filters_by_gate_and_name():
    pods = [pod(), pod(migration="other"), pod(gates=()), pod(gates=("x", GATE_NAME))]
    assert gate.waiting_pods(pods, "shop") == [pods[0], pods[3]]


def test_malformed_objects_hold():
    weird = {"metadata": {"name": "shop", "generation": "x"}, "status": {"observedGeneration": True}}
    assert not gate.decide(pod(), weird).release
    assert not gate.decide(pod(), {"status": None, "metadata": None}).release
    assert not gate.decide(pod(), dbm(observed=True, generation=1)).release
