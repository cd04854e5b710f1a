"""The rollout gate on the real test bed: new pods stay unscheduled until their migration is Ready.

Pods carrying the ``schemagate.dev/migration`` scheduling gate are never bound by the test bed's node stand-in
(like the real scheduler); the operator removes the gate, the pod is bound and marked Running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.delivery.capture_status import capture
from tests.delivery.e2e_support import (
    GATE,
    ROOT,
    RUNNER_IMAGE,
    Operator,
    app_pods,
    describe,
    get_dbm,
    install_crd,
    is_gated,
    secret,
)

pytestmark = pytest.mark.e2e
APP_IMAGE = "schemagate.test/gate-app:e2e"


@pytest.fixture(scope="module")
def operator(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    install_crd(kube)
    op = Operator(kube, tmp_path_factory.mktemp("gate-operator")).start()
    yield op
    op.stop()


@pytest.fixture
def images(map_image: Any) -> None:
    map_image(RUNNER_IMAGE)
    map_image(APP_IMAGE, paths={"/app": ROOT / "migrations" / "foodtruck"})


def deployment(name: str, migration: str, replicas: int = 2, revision: str | None = None) -> dict:
    annotations = {GATE: migration}
    if revision:
        annotations["schemagate.dev/revision"] = revision
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"schedulingGates": [{"name": GATE}],
                         "containers": [{"name": "app", "image": APP_IMAGE, "command": ["sleep", "3600"]}]},
            },
        },
    }  # fmt: skip


def migration(name: str, **spec: Any) -> dict:
    s = {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
         "migrations": {"image": APP_IMAGE, "directory": "/app", "targetRevision": "head"},
         "lockTimeout": "2s", "jobTemplate": {"activeDeadlineSeconds": 300}, **spec}  # fmt: skip
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": name},
            "spec": s}


def wait_status(kube: Any, ns: str, name: str, phases: tuple[str, ...], op: Operator, timeout: float = 300) -> dict:
    def check() -> dict | None:
        if op.proc is not None and op.proc.poll() is not None:
            raise AssertionError("the operator exited:\n" + op.logs()[-3000:])
        o = get_dbm(kube, ns, name)
        st = o.get("status") or {}
        ok = st.get("phase") in phases and st.get("observedGeneration") == o["metadata"]["generation"]
        return o if ok else None

    try:
        return kube.wait_for(check, timeout=timeout, interval=0.5, message=f"{name} in {phases}")
    except AssertionError:
        raise AssertionError(describe(kube, ns, name, op)) from None


def test_pods_wait_for_ready_then_scale_ups_and_restarts(kube: Any, operator: Operator, images: None,
                                                         namespace: str, fresh_db: str) -> None:  # fmt: skip
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(deployment("web", "shop", replicas=2, revision="0003"), namespace)
    kube.wait_for(lambda: len(app_pods(kube, namespace, "app=web")) == 2, timeout=60, message="2 pods")
    time.sleep(3)  # nothing releases them: no migration exists
    pods = app_pods(kube, namespace, "app=web")
    assert all(is_gated(p) and not p["spec"].get("nodeName") for p in pods), pods

    kube.apply(migration("shop"), namespace)
    o = wait_status(kube, namespace, "shop", ("Succeeded", "Blocked", "Failed"), operator)
    assert o["status"]["phase"] == "Succeeded", describe(kube, namespace, "shop", operator)
    assert o["status"]["currentRevision"] == "0003"
    capture(o, "succeeded")

    def released(n: int) -> bool:
        ps = app_pods(kube, namespace, "app=web")
        return len(ps) == n and all(not is_gated(p) and p["spec"].get("nodeName") for p in ps)

    kube.wait_for(lambda: released(2), timeout=60, message="pods released and bound")
    ev = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["reason"] == "MigrationReady" and e["involvedObject"]["kind"] == "Pod" for e in ev)

    # a scale-up later: the new pod is released too
    kube.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=3")
    kube.wait_for(lambda: released(3), timeout=60, message="the scaled-up pod released")

    # the operator is down while a pod is created; it releases it when it comes back (level-based)
    operator.kill()
    kube.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=4")
    kube.wait_for(lambda: len(app_pods(kube, namespace, "app=web")) == 4, timeout=60, message="4 pods")
    time.sleep(2)
    assert sum(is_gated(p) for p in app_pods(kube, namespace, "app=web")) == 1
    operator.start()
    kube.wait_for(lambda: released(4), timeout=90, message="the pod created while the operator was down released")


def seed_negative_stock(url: str, rows: int = 3) -> None:
    """Rows that violate foodtruck's check_stock_non_negative (added by revision 0002)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for i in range(rows):
            conn.execute(sa.text("INSERT INTO menu_items (id, name, price, stock) VALUES (:i, 'x', 1, -1)"),
                         {"i": f"bad-{i}"})  # fmt: skip
    engine.dispose()


def test_blocked_migration_never_releases(kube: Any, operator: Operator, images: None, namespace: str,
                                         fresh_db: str) -> None:  # fmt: skip
    secret(kube, namespace, "db", {"url": fresh_db})
    at_0001 = {"image": APP_IMAGE, "directory": "/app", "targetRevision": "0001"}
    kube.apply(migration("shop", migrations=at_0001), namespace)
    wait_status(kube, namespace, "shop", ("Succeeded",), operator)
    seed_negative_stock(fresh_db)
    # pods of the new release require revision 0003: the migration's current Ready (at 0001) does not release them
    kube.apply(deployment("web", "shop", replicas=1, revision="0003"), namespace)
    kube.apply(migration("shop", migrations={**at_0001, "targetRevision": "head"}), namespace)
    o = wait_status(kube, namespace, "shop", ("Blocked", "Failed", "Succeeded"), operator)
    assert o["status"]["phase"] == "Blocked", describe(kube, namespace, "shop", operator)
    assert o["status"]["violations"]["total"] == 3
    capture(o, "blocked-violations")
    time.sleep(3)
    (pod,) = app_pods(kube, namespace, "app=web")
    assert is_gated(pod) and not pod["spec"].get("nodeName")

    # a pod created while the migration is Blocked gets a Warning event saying why it waits
    kube.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=2")

    def warned() -> bool:
        ev = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return any(e["reason"] == "MigrationBlocked" and e["involvedObject"]["kind"] == "Pod" for e in ev)

    kube.wait_for(warned, timeout=60, message="a MigrationBlocked warning on the new pod")
    assert all(is_gated(p) for p in app_pods(kube, namespace, "app=web"))


def test_revision_mismatch_holds(kube: Any, operator: Operator, images: None, namespace: str,
                                 fresh_db: str) -> None:  # fmt: skip
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(migration("shop", migrations={"image": APP_IMAGE, "directory": "/app", "targetRevision": "0001"}),
               namespace)  # fmt: skip
    o = wait_status(kube, namespace, "shop", ("Succeeded", "Blocked", "Failed"), operator)
    assert o["status"]["phase"] == "Succeeded", describe(kube, namespace, "shop", operator)
    kube.apply(deployment("new", "shop", replicas=1, revision="0003"), namespace)
    kube.apply(deployment("old", "shop", replicas=1, revision="0001"), namespace)
    kube.wait_for(lambda: [p for p in app_pods(kube, namespace, "app=old") if not is_gated(p)], timeout=60,
                  message="the 0001 pod released")  # fmt: skip
    time.sleep(2)
    (new,) = app_pods(kube, namespace, "app=new")
    assert is_gated(new)
