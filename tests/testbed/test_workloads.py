"""Deployments roll out, scheduling gates hold pods, owners garbage-collect their Jobs."""

from __future__ import annotations

import json
import time

import pytest

from tests.testbed.plugin import ApiError, Kube

pytestmark = pytest.mark.e2e


def deployment(name: str, replicas: int = 2, gates: list[str] | None = None, version: str = "1") -> dict:
    spec: dict = {"containers": [{"name": "web", "image": f"registry.example.com/web:{version}",
                                  "env": [{"name": "VERSION", "value": version}]}]}
    if gates:
        spec["schedulingGates"] = [{"name": g} for g in gates]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def test_deployment_rolls_out_a_new_template(kube: Kube, namespace: str) -> None:
    kube.apply(deployment("web", version="1"), namespace)
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/web", "--timeout=60s")
    kube.apply(deployment("web", version="2"), namespace)
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/web", "--timeout=60s")

    dep = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")
    st = dep["status"]
    assert st["observedGeneration"] == dep["metadata"]["generation"] == 2
    assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"]) == (2, 2, 2, 2)
    avail = {c["type"]: c for c in st["conditions"]}
    assert avail["Available"]["status"] == "True"
    assert avail["Progressing"]["reason"] == "NewReplicaSetAvailable"

    def only_new_pods() -> list[dict] | None:
        pods = [p for p in kube.pods(namespace, "app=web") if not p["metadata"].get("deletionTimestamp")]
        images = {p["spec"]["containers"][0]["image"] for p in pods}
        return pods if len(pods) == 2 and images == {"registry.example.com/web:2"} else None

    pods = kube.wait_for(only_new_pods, timeout=30, message="the old pods to be gone")
    for p in pods:
        assert p["status"]["phase"] == "Running"
        conds = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert conds == {"PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
                         "ContainersReady": "True", "PodScheduled": "True"}
        assert p["status"]["containerStatuses"][0]["ready"] is True
    rs = kube.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
    assert sorted(r["spec"]["replicas"] for r in rs) == [0, 2]
    # marked pods print nothing, but `kubectl logs` works on them
    assert kube.kubectl("logs", "-n", namespace, pods[0]["metadata"]["name"]).stdout == ""


def test_scheduling_gate_holds_a_pod_until_removed(kube: Kube, namespace: str) -> None:
    gate = "schemagate.dev/migration"
    kube.apply(deployment("gated", replicas=1, gates=[gate]), namespace)
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "gated-job"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "schedulingGates": [{"name": gate}],
            "containers": [{"name": "main", "image": "ghcr.io/example/schemagate:dev",
                            "command": ["python", "-c", "print('ran after the gate')"]}]}}},
    }
    kube.apply(job, namespace)

    def gated_pods() -> list[dict] | None:
        pods = kube.pods(namespace)
        pods = [p for p in pods if p["metadata"]["name"] != "other-scheduler"]
        ok = len(pods) == 2 and all(
            any(c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "SchedulingGated"
                for c in p["status"].get("conditions") or []) for p in pods)
        return pods if ok else None

    other = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other-scheduler"},
             "spec": {"schedulerName": "other", "containers": [{"name": "c", "image": "x"}]}}
    kube.apply(other, namespace)
    kube.wait_for(gated_pods, timeout=30, message="both pods to be SchedulingGated")
    time.sleep(2)  # nothing binds them in the meantime
    assert not kube.get(f"/api/v1/namespaces/{namespace}/pods/other-scheduler")["spec"].get("nodeName")
    kube.kubectl("delete", "pod", "-n", namespace, "other-scheduler", "--wait=true")
    pods = kube.pods(namespace)
    assert all(not p["spec"].get("nodeName") and p["status"]["phase"] == "Pending" for p in pods)
    # `kubectl get` shows SchedulingGated as the status
    assert "SchedulingGated" in kube.kubectl("get", "pods", "-n", namespace).stdout

    for p in pods:  # what the operator does
        kube.kubectl("patch", "pod", "-n", namespace, p["metadata"]["name"], "--type=json",
                     "-p", json.dumps([{"op": "remove", "path": "/spec/schedulingGates"}]))
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/gated", "--timeout=60s")
    done = kube.wait_job(namespace, "gated-job", timeout=60)
    assert done["status"].get("succeeded") == 1
    (jp,) = kube.pods(namespace, "job-name=gated-job")
    assert kube.logs(namespace, jp["metadata"]["name"]).strip() == "ran after the gate"


def test_deleting_an_owner_collects_its_jobs(kube: Kube, namespace: str) -> None:
    core = kube.core()
    owners = {}
    for name in ("owner-bg", "owner-fg"):
        cm = core.create_namespaced_config_map(namespace, {"metadata": {"name": name}}, _preload_content=False)
        owners[name] = json.loads(cm.data)["metadata"]["uid"]

    def owned_job(name: str, owner: str) -> dict:
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": owners[owner],
                "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "ghcr.io/example/schemagate:dev",
                "command": ["python", "-c", "print('done')"]}]}}},
        }

    kube.apply([owned_job("job-bg", "owner-bg"), owned_job("job-fg", "owner-fg")], namespace)
    for j in ("job-bg", "job-fg"):
        kube.wait_job(namespace, j, timeout=60)
    assert len(kube.pods(namespace)) == 2

    core.delete_namespaced_config_map("owner-bg", namespace, propagation_policy="Background",
                                      _preload_content=False)
    core.delete_namespaced_config_map("owner-fg", namespace, propagation_policy="Foreground",
                                      _preload_content=False)

    def gone(path: str) -> bool:
        try:
            kube.get(path)
            return False
        except ApiError as e:
            return e.status == 404

    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    kube.wait_for(lambda: gone(f"{jobs}/job-bg"), timeout=30, message="job-bg to be collected")
    kube.wait_for(lambda: gone(f"{jobs}/job-fg"), timeout=30, message="job-fg to be collected")
    # foreground deletion: the owner waits for its dependents, then goes too (the GC removes the finalizer)
    kube.wait_for(lambda: gone(f"/api/v1/namespaces/{namespace}/configmaps/owner-fg"), timeout=30,
                  message="the foreground owner to be deleted")
    kube.wait_for(lambda: not kube.pods(namespace), timeout=30, message="the Jobs' pods to be collected")


def test_namespace_deletion_finishes(kube: Kube) -> None:
    ns = kube.create_namespace("doomed")
    kube.apply(deployment("web", replicas=1), ns)
    kube.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=60s")
    kube.delete_namespace(ns, wait=True, timeout=60)  # the namespace controller empties it; pods are finalized


def test_helm_install_waits_for_claim_deployment_and_job(kube: Kube, namespace: str, tmp_path) -> None:
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "templates" / "all.yaml").write_text("""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
      volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: init-db}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: m, image: example/tool, command: [python, -c, "print('ok')"]}]
""")
    kube.helm("install", "demo", str(chart), "-n", namespace, "--wait", "--wait-for-jobs", "--timeout=90s")
    status = kube.helm("status", "demo", "-n", namespace, "-o", "json").stdout
    assert json.loads(status)["info"]["status"] == "deployed"
    assert kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/data")["status"]["phase"] == "Bound"
    kube.helm("uninstall", "demo", "-n", namespace, "--wait", "--timeout=60s")
