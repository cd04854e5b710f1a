"""The charts as a user installs them, on the real node, with the images built from this repository.

- ``helm install`` of charts/schemagate: the operator pod runs the built image as uid 10001 on a read-only root
  filesystem and becomes Ready; the kubelet runs its liveness probe.
- ``helm upgrade --install --wait`` of charts/example-app with a new ``version``: backup, precheck, migrate and
  verify run as Jobs in real containers (migrate in the application image, with the runner injected by an init
  container of the operator image); the gated pods start only once the migration is Ready, after the waiter init
  container (``schemagate wait``) ran for real against the API server.
- a Blocked migration: Helm fails naming it, the old pods keep serving, nothing is applied.
- every operator pod killed (``--grace-period=0``) mid-migration: the new operator pods finish the run, each step
  Job ran once.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
import sqlalchemy as sa

from schemagate.contract.stepresult import from_termination_message
from tests.delivery.e2e_support import app_pods, get_dbm, is_gated
from tests.realnode.support import (
    APP,
    OPERATOR_NS,
    install_app,
    is_ready,
    jobs_by_step,
    operator_pods,
    revision,
)

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]


def test_operator_runs_its_image_as_10001_on_a_read_only_root(real_kube: Any, operator: dict) -> None:
    pods = operator_pods(real_kube)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]  # the chart's replicaCount: a leader, a standby
    for pod in pods:
        assert is_ready(pod), pod["status"]
        cs = pod["status"]["containerStatuses"][0]
        assert cs["ready"] and cs["restartCount"] == 0 and cs["image"] == operator["image"]
    pod = pods[0]
    name = pod["metadata"]["name"]
    spec = pod["spec"]["containers"][0]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    ids = real_kube.kubectl("exec", "-n", OPERATOR_NS, name, "--", "python3", "-c",
                            "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert ids == ["10001", "10001"]
    ro = real_kube.kubectl("exec", "-n", OPERATOR_NS, name, "--", "python3", "-c",
                           "open('/opt/schemagate/x', 'w')", check=False)
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr
    # the kubelet probes the operator's /healthz for real (readiness made it Ready): its probe counters say so
    def probed(kind: str) -> bool:
        metrics = real_kube.kubectl("get", "--raw", "/api/v1/nodes/schemagate-node/proxy/metrics/probes").stdout
        return any(ln.startswith("prober_probe_total") and f'pod="{name}"' in ln and f'probe_type="{kind}"' in ln
                   and 'result="successful"' in ln for ln in metrics.splitlines())  # fmt: skip

    for kind in ("Readiness", "Liveness"):
        real_kube.wait_for(lambda: probed(kind), timeout=60, interval=2,  # noqa: B023 (used at once)
                           message=f"a successful {kind} probe of the operator")


def test_upgrade_runs_every_step_in_real_containers(real_kube: Any, operator: dict, node_images: dict,
                                                   real_namespace: str, pod_db: tuple[str, str]) -> None:  # fmt: skip
    url, in_pod = pod_db
    ns = real_namespace
    install_app(real_kube, ns, node_images, in_pod, "0001")
    assert revision(url) == "0001"
    install_app(real_kube, ns, node_images, in_pod, "0003")
    o = get_dbm(real_kube, ns, APP)
    assert o["status"]["phase"] == "Succeeded" and o["status"]["currentRevision"] == "0003", o["status"]
    assert revision(url) == "0003"

    app_image = f"{node_images['example-app']['repository']}:0003"
    jobs = jobs_by_step(real_kube, ns)
    for step in ("precheck", "migrate", "verify"):
        assert step in jobs, (step, sorted(jobs))
    for step, js in jobs.items():
        for j in js:
            assert j["status"].get("succeeded") == 1, (step, j["status"])
    # each step ran in a real container of the right image, and the kubelet wrote its termination message
    for step, js in jobs.items():
        job = max(js, key=lambda j: j["metadata"]["creationTimestamp"])
        pods = real_kube.pods(ns, f"job-name={job['metadata']['name']}")
        assert pods, step
        p = pods[-1]
        images = {c["name"]: c["image"] for c in p["spec"]["containers"]}
        statuses = p["status"]["containerStatuses"]
        assert all(s["state"]["terminated"]["exitCode"] == 0 for s in statuses), (step, statuses)
        assert any(from_termination_message(s["state"]["terminated"].get("message") or "") is not None
                   for s in statuses), (step, statuses)
        if step == "migrate":
            assert app_image in images.values(), images
            inits = {c["name"]: c["image"] for c in p["spec"].get("initContainers") or []}
            assert operator["image"] in inits.values(), inits  # install-runner from the operator image
        else:
            assert set(images.values()) == {operator["image"]}, (step, images)

    # the new pods: started after Ready, through the waiter init container, serving revision 0003
    pods = [p for p in app_pods(real_kube, ns, "app.kubernetes.io/instance=shop") if not is_gated(p)]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for p in pods:
        assert p["spec"]["containers"][0]["image"] == app_image
        init = p["status"]["initContainerStatuses"][0]
        assert init["name"] == "wait-for-migration" and init["state"]["terminated"]["exitCode"] == 0, init
        assert {c["type"]: c["status"] for c in p["status"]["conditions"]}["Ready"] == "True"
        with urllib.request.urlopen(f"http://{p['status']['podIP']}:8000/", timeout=5) as r:  # noqa: S310 (pod IP on this machine)
            assert json.loads(r.read())["revision"] == "0003"


def test_blocked_upgrade_fails_and_keeps_the_old_pods(real_kube: Any, operator: dict, node_images: dict,
                                                     real_namespace: str, pod_db: tuple[str, str]) -> None:  # fmt: skip
    from tests.e2e.test_gate import seed_negative_stock
    from tests.e2e.test_large_result import user_checks

    url, in_pod = pod_db
    ns = real_namespace
    install_app(real_kube, ns, node_images, in_pod, "0001")
    seed_negative_stock(url, rows=4)
    # 64 user checks that do not compress: the precheck's result is over its container's share of the pod's 12 KiB,
    # so the real kubelet keeps a summary and the operator reads the whole result from the container's log
    checks = user_checks()
    r = install_app(real_kube, ns, node_images, in_pod, "0003", "--set-json", f"migration.checks={json.dumps(checks)}",
                    timeout="150s", check=False)
    assert r.returncode != 0, r.stdout
    o = get_dbm(real_kube, ns, APP)
    violations = o["status"].get("violations") or {}
    assert o["status"]["phase"] == "Blocked" and violations.get("total") == 4 + 8, o["status"]
    counted = {c["name"]: c.get("count") for c in violations["checks"]}
    assert [counted.get(c["name"]) for c in checks] == [1] * 8 + [0] * 56 and "omitted" not in violations
    assert revision(url) == "0001"  # nothing applied
    pods = app_pods(real_kube, ns, "app.kubernetes.io/instance=shop")
    old = [p for p in pods if not is_gated(p)]
    assert old and all(p["spec"]["containers"][0]["image"].endswith(":0001") for p in old)
    assert all({c["type"]: c["status"] for c in p["status"]["conditions"]}["Ready"] == "True" for p in old)
    assert any(is_gated(p) for p in pods)  # the new pod waits, unscheduled
    gen2 = [j["metadata"]["name"] for step, js in jobs_by_step(real_kube, ns).items() for j in js
            if j["metadata"]["labels"].get("schemagate.dev/generation") == "2"]  # fmt: skip
    assert gen2 and not [n for n in gen2 if "-migrate-" in n], gen2  # blocked before the migrate step


def test_operator_killed_mid_migration(real_kube: Any, operator: dict, node_images: dict, real_namespace: str,
                                       pod_db: tuple[str, str]) -> None:  # fmt: skip
    """The migrate Job waits on the migration advisory lock (held here); meanwhile every operator pod is deleted
    with grace period 0. The Deployment's new pods pick the run up; once the lock is released the migration
    finishes, with one migrate Job whose pod ran once."""
    from schemagate.runner.inject.lock import ADVISORY_LOCK_KEY

    url, in_pod = pod_db
    ns = real_namespace
    install_app(real_kube, ns, node_images, in_pod, "0001")
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool)
    holder = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        r = install_app(real_kube, ns, node_images, in_pod, "0003", "--wait=false", timeout="30s", check=False)
        assert r.returncode == 0, r.stderr

        def migrate_running() -> bool:
            js = jobs_by_step(real_kube, ns).get("migrate") or []
            pods = [p for j in js for p in real_kube.pods(ns, f"job-name={j['metadata']['name']}")]
            return any(p["status"].get("phase") == "Running" for p in pods)

        real_kube.wait_for(migrate_running, timeout=240, interval=1, message="the migrate Job's pod to run")
        # every operator pod (the leader and its standby) dies at once, without a grace period
        old = {p["metadata"]["name"] for p in operator_pods(real_kube)}
        real_kube.kubectl("delete", "pod", "-n", OPERATOR_NS, *sorted(old), "--grace-period=0", "--force",
                          "--wait=false")

        def new_operator_ready() -> bool:
            return any(p["metadata"]["name"] not in old and is_ready(p) for p in operator_pods(real_kube))

        real_kube.wait_for(new_operator_ready, timeout=180, interval=1, message="a new operator pod, Ready")
        time.sleep(2)
    finally:
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
        holder.close()
        engine.dispose()

    def done() -> bool:
        return get_dbm(real_kube, ns, APP).get("status", {}).get("phase") == "Succeeded"

    real_kube.wait_for(done, timeout=300, interval=2, message=f"{APP} Succeeded after the operator restart")
    assert revision(url) == "0003"
    o = get_dbm(real_kube, ns, APP)
    assert o["status"]["currentRevision"] == "0003"
    migrate = jobs_by_step(real_kube, ns)["migrate"]
    gen2 = [j for j in migrate if j["metadata"]["labels"].get("schemagate.dev/generation") == "2"]
    assert len(gen2) == 1, [j["metadata"]["name"] for j in migrate]
    assert gen2[0]["status"].get("succeeded") == 1 and not gen2[0]["status"].get("failed"), gen2[0]["status"]
    pods = real_kube.pods(ns, f"job-name={gen2[0]['metadata']['name']}")
    assert len(pods) == 1 and all(s["restartCount"] == 0 for s in pods[0]["status"]["containerStatuses"])
