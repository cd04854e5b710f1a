"""The rollout gate's I/O (schemagate.gatekeeper over schemagate.k8s.Kube) over a fake Kubernetes client API.

The fake stands in for the client's CoreV1Api/CustomObjectsApi (raising the client's real ApiException), so the
Kube methods and their error translation run as in the operator; the e2e tests drive the real API server.
"""

from __future__ import annotations

import copy
import json

from kubernetes.client.exceptions import ApiException

from schemagate import gatekeeper, k8s
from schemagate.core import gate
from tests.delivery.test_gate_decision import dbm, pod


class Resp:
    def __init__(self, obj):
        self.data = json.dumps(obj).encode()


def ApiError(status):  # noqa: N802 - reads like the exception it builds
    return ApiException(status=status, reason={404: "Not Found", 422: "Unprocessable Entity"}.get(status, ""))


def apply_json_patch(obj, patch):
    for op in patch:
        parts = op["path"].strip("/").split("/")
        target = obj
        try:
            for p in parts[:-1]:
                target = target[int(p)] if isinstance(target, list) else target[p]
        except (IndexError, KeyError):
            raise ApiError(422) from None
        last = parts[-1]
        if op["op"] == "test":
            try:
                cur = target[int(last)] if isinstance(target, list) else target[last]
            except (IndexError, KeyError):
                raise ApiError(422) from None
            if cur != op["value"]:
                raise ApiError(422)
        elif op["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]


class FakeCore:
    def __init__(self, pods):
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        self.events = []
        self.patches = []

    def _list(self, ns=None):
        items = [p for (n, _), p in self.pods.items() if ns is None or n == ns]
        return Resp({"items": [p for p in items if p.get("status", {}).get("phase", "Pending") == "Pending"]})

    def list_namespaced_pod(self, ns, field_selector=None, _preload_content=True):
        assert field_selector == "status.phase=Pending"
        return self._list(ns)

    def list_pod_for_all_namespaces(self, field_selector=None, _preload_content=True):
        return self._list()

    def patch_namespaced_pod(self, name, ns, body, _content_type=None, _preload_content=True):
        assert _content_type == "application/json-patch+json"
        if (ns, name) not in self.pods:
            raise ApiError(404)
        self.patches.append((ns, name, body))
        apply_json_patch(self.pods[(ns, name)], body)
        return Resp(self.pods[(ns, name)])

    def create_namespaced_event(self, ns, body, _preload_content=True):
        self.events.append((ns, body["type"], body["reason"], body["involvedObject"]["name"]))
        return Resp(body)


class FakeCustom:
    def __init__(self, migrations):
        self.migrations = migrations
        self.gets = 0

    def get_namespaced_custom_object(self, group, version, ns, plural, name, _preload_content=True):
        assert (group, plural) == ("schemagate.dev", "databasemigrations")
        self.gets += 1
        if (ns, name) not in self.migrations:
            raise ApiError(404)
        return Resp(self.migrations[(ns, name)])


class FakeKube(k8s.Kube):
    """The real Kube over fake client APIs (no configuration loaded)."""

    def __init__(self, pods, migrations):
        self.core = FakeCore(pods)
        self.custom = FakeCustom(migrations)
        self.instance = "test"
        self.writes = k8s.WriteCounter()

    @property
    def gets(self):
        return self.custom.gets


def mkpod(name, ns="ns", **kw):
    p = pod(**kw)
    p["metadata"].update(name=name, namespace=ns, uid=f"uid-{name}")
    return p


def test_release_on_ready_and_only_our_gate_is_removed():
    p = mkpod("web-1", gates=("other/gate", gate.GATE_NAME))
    kube = FakeKube([p], {("ns", "shop"): dbm()})
    d = gatekeeper.evaluate_pod(kube, copy.deepcopy(p))
    assert d.release
    assert kube.core.pods[("ns", "web-1")]["spec"]["schedulingGates"] == [{"name": "other/gate"}]
    assert kube.core.events == [("ns", "Normal", "MigrationReady", "web-1")]


def test_hold_while_blocked_with_a_warning():
    p = mkpod("web-1")
    kube = FakeKube([p], {("ns", "shop"): dbm(phase="Blocked", ready="False", reason="ViolationsFound")})
    d = gatekeeper.evaluate_pod(kube, copy.deepcopy(p))
    assert not d.release and not kube.core.patches
    assert kube.core.events == [("ns", "Warning", "MigrationBlocked", "web-1")]


def test_hold_quietly_while_in_progress_or_missing():
    p = mkpod("web-1")
    kube = FakeKube([p], {("ns", "shop"): dbm(phase="Migrating", ready="False")})
    assert not gatekeeper.evaluate_pod(kube, copy.deepcopy(p)).release
    kube = FakeKube([p], {})
    assert gatekeeper.evaluate_pod(kube, copy.deepcopy(p)).reason is gate.GateReason.MIGRATION_NOT_FOUND
    assert not kube.core.events and not kube.core.patches


def test_missing_annotation_warns():
    p = mkpod("web-1", migration=None)
    kube = FakeKube([p], {})
    assert gatekeeper.evaluate_pod(kube, copy.deepcopy(p)).reason is gate.GateReason.MISSING_ANNOTATION
    assert kube.core.events[0][2] == "MissingMigrationAnnotation" and kube.gets == 0


def test_ungated_pods_are_ignored():
    p = mkpod("web-1", gates=())
    kube = FakeKube([p], {("ns", "shop"): dbm()})
    assert not gatekeeper.evaluate_pod(kube, p).actionable
    assert kube.gets == 0 and not kube.core.patches


def test_stale_pod_copy_does_not_remove_a_foreign_gate():
    """The JSON patch's test op protects against removing the wrong index when the gates changed meanwhile."""
    p = mkpod("web-1", gates=("a", gate.GATE_NAME))
    kube = FakeKube([p], {("ns", "shop"): dbm()})
    stale = copy.deepcopy(p)
    kube.core.pods[("ns", "web-1")]["spec"]["schedulingGates"] = [
        {"name": gate.GATE_NAME}
    ]  # "a" removed meanwhile
    d = gatekeeper.evaluate_pod(kube, stale)
    assert not d.release and "changed meanwhile" in d.message
    assert kube.core.pods[("ns", "web-1")]["spec"]["schedulingGates"] == [{"name": gate.GATE_NAME}]


def test_pod_deleted_meanwhile():
    p = mkpod("web-1")
    kube = FakeKube([], {("ns", "shop"): dbm()})
    assert not gatekeeper.evaluate_pod(kube, p).release


def test_release_waiting_for_one_migration_including_scale_ups():
    pods = [mkpod("web-1"), mkpod("web-2"), mkpod("other-1", migration="billing"), mkpod("done", gates=()),
            mkpod("elsewhere", ns="ns2")]  # fmt: skip
    kube = FakeKube(pods, {("ns", "shop"): dbm(), ("ns", "billing"): dbm(phase="Migrating", ready="False")})
    assert sorted(gatekeeper.release_waiting(kube, "ns", "shop")) == ["web-1", "web-2"]
    assert kube.gets == 1  # one lookup for all waiting pods
    assert gate.is_gated(kube.core.pods[("ns", "other-1")])
    assert gate.is_gated(kube.core.pods[("ns2", "elsewhere")])
    # a later pod (scale-up) is released by the same call
    kube.core.pods[("ns", "web-3")] = mkpod("web-3")
    assert gatekeeper.release_waiting(kube, "ns", "shop") == ["web-3"]
    assert gatekeeper.release_waiting(kube, "ns", "shop") == []


def test_release_all_at_start_up_is_level_based():
    pods = [mkpod("a-1"), mkpod("a-2"), mkpod("b-1", ns="ns2"), mkpod("c-1", migration="billing")]
    migrations = {("ns", "shop"): dbm(), ("ns2", "shop"): dbm(phase="Failed", ready="False"),
                  ("ns", "billing"): dbm(generation=4, observed=3)}  # fmt: skip
    kube = FakeKube(pods, migrations)
    assert sorted(gatekeeper.release_all(kube)) == ["ns/a-1", "ns/a-2"]
    assert kube.gets == 3
    assert gatekeeper.release_all(kube) == []  # idempotent
    assert sorted(gatekeeper.release_all(FakeKube(pods, migrations), ["ns2"])) == []


def test_revision_annotation_is_honoured():
    pods = [mkpod("old", revision="0002"), mkpod("new", revision="0003")]
    kube = FakeKube(pods, {("ns", "shop"): dbm(current="0002")})
    assert gatekeeper.release_waiting(kube, "ns", "shop") == ["old"]
