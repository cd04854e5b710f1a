# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""Two operator replicas: one leads, the other stands by and takes over when the leader is killed.

Gated application pods (including scale-ups long after the migration succeeded) wait for the operator to remove
their scheduling gate, so an operator outage stops the application from scaling. Both processes run
``schemagate operator`` (what the Deployment runs) against the real test bed, sharing one leader Lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemagate import demo
from tests.e2e.operator_process import LEASE_NS, Operator, free_port
from tests.e2e.test_operator import cond, crd, dbm, images, secret, wait_phase  # noqa: F401

pytestmark = pytest.mark.e2e
GATE = "schemagate.dev/migration"
LEASE_SECONDS = 12  # the default of SCHEMAGATE_LEADER_LEASE_SECONDS


def _replica(kube: Any, log_dir: Path, lease: str) -> Operator:
    args = ["operator", "--all-namespaces", f"--health-port={free_port()}", f"--metrics-port={free_port()}"]
    return Operator(kube, log_dir, command=args, extra_env={
        "SCHEMAGATE_LEADER_ELECTION_LEASE": lease, "SCHEMAGATE_LEASE_NAMESPACE": LEASE_NS})


@pytest.fixture
def replicas(kube: Any, crd: None, tmp_path: Path) -> Iterator[tuple[Operator, Operator, str]]:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NS}})
    lease = f"schemagate-leader-e2e-{int(time.time() * 1000) % 10**8}"
    a, b = _replica(kube, tmp_path / "a", lease), _replica(kube, tmp_path / "b", lease)
    yield a, b, lease
    for op in (a, b):
        op.stop()
    kube.kubectl("delete", "lease", lease, "-n", LEASE_NS, "--ignore-not-found", check=False)


def _holder(kube: Any, lease: str) -> str:
    return kube.kubectl("get", "lease", lease, "-n", LEASE_NS, "-o", "jsonpath={.spec.holderIdentity}",
                        check=False).stdout.strip()  # fmt: skip


def _gated_pod(name: str, migration: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": {GATE: migration}},
            "spec": {"schedulingGates": [{"name": GATE}],
                     "containers": [{"name": "app", "image": "registry.example.com/shop:2", "command": ["sleep", "1"]}]}}


def _gates(kube: Any, ns: str, name: str) -> list[str]:
    out = kube.kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.spec.schedulingGates[*].name}").stdout
    return out.split()


def test_the_standby_takes_over_and_releases_gated_pods(kube: Any, replicas: tuple[Operator, Operator, str],
                                                        images: Any, namespace: str, fresh_db: str) -> None:  # fmt: skip
    a, b, lease = replicas
    a.start()
    kube.wait_for(lambda: _holder(kube, lease), timeout=60, message="the first replica to take the leader Lease")
    first = _holder(kube, lease)
    b.start()
    kube.wait_for(lambda: "waiting for the leader Lease" in b.logs(), timeout=60, message="the standby to start")
    time.sleep(LEASE_SECONDS / 3 + 1)  # at least one renewal of the leader meanwhile
    assert _holder(kube, lease) == first and "leading as" not in b.logs()  # the second replica stands by

    demo.seed_foodtruck(fresh_db)
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("shop", image=images("foodtruck"), backup={"enabled": False}), namespace)
    o = wait_phase(kube, namespace, "shop", ("Succeeded", "Failed", "Blocked"), op=a, timeout=240)
    assert o["status"]["phase"] == "Succeeded" and cond(o, "Ready")["status"] == "True", o["status"]
    kube.apply(_gated_pod("web-1", "shop"), namespace)
    kube.wait_for(lambda: _gates(kube, namespace, "web-1") == [], timeout=30, message="the leader to release web-1")

    a.kill()  # SIGKILL: no hand-over, the Lease simply stops being renewed
    killed = time.monotonic()
    kube.apply(_gated_pod("web-2", "shop"), namespace)  # a scale-up while no operator acts
    kube.wait_for(lambda: _gates(kube, namespace, "web-2") == [], timeout=40, message="the standby to release web-2")
    took = time.monotonic() - killed
    assert took <= 20, f"gated pod released {took:.1f} s after the leader was killed (goal: 20 s)"
    assert _holder(kube, lease) not in ("", first)
    assert "took the leader Lease" in b.logs(), b.logs()[-3000:]
    print(f"leader killed -> gated pod released in {took:.1f} s (lease {LEASE_SECONDS} s)")


def test_a_clean_shutdown_hands_over_at_once(kube: Any, replicas: tuple[Operator, Operator, str]) -> None:
    a, b, lease = replicas
    a.start()
    kube.wait_for(lambda: _holder(kube, lease), timeout=60, message="the first replica to lead")
    first = _holder(kube, lease)
    b.start()
    kube.wait_for(lambda: "waiting for the leader Lease" in b.logs(), timeout=60, message="the standby to start")
    a.stop(grace=120)  # SIGTERM: Kopf stops, the Lease is released, the process ends
    assert not a.killed, "the operator did not exit after SIGTERM: " + a.logs()[-2000:]
    stopped = time.monotonic()
    kube.wait_for(lambda: _holder(kube, lease) not in ("", first), timeout=30, message="the standby to lead")
    assert time.monotonic() - stopped < LEASE_SECONDS  # no waiting for expiry
