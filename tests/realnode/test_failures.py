"""Failures that only a real node produces, surfacing as clear reasons in the DatabaseMigration's status:
a step container killed by the kernel at its memory limit (OOMKilled), the precheck's shadow-server sidecar killed
there again and again while the kubelet restarts it (CrashLoopBackOff), and a step pod the kubelet cannot start
(its image is not on the node and may not be pulled): the kubelet's own reason, ErrImageNeverPull."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from tests.delivery.e2e_support import get_dbm
from tests.realnode.support import APP, diagnostics, install_app, jobs_by_step, revision

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]


def finished(kube: Any, ns: str) -> dict:
    def phase() -> dict | None:
        st = get_dbm(kube, ns, APP).get("status") or {}
        return st if st.get("phase") in ("Failed", "Blocked", "Succeeded") else None

    try:
        return kube.wait_for(phase, timeout=240, interval=2, message=f"{APP} to finish")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(kube, ns)}") from None


def step_statuses(kube: Any, ns: str) -> list[dict]:
    return [cs for p in kube.pods(ns, "schemagate.dev/step")
            for cs in (p["status"].get("initContainerStatuses") or []) + (p["status"].get("containerStatuses") or [])]


def revision_or_none(url: str) -> str | None:
    """The database's Alembic revision; None when no revision table exists (nothing ever applied)."""
    try:
        return revision(url)
    except sa.exc.ProgrammingError as e:
        if "alembic_version" not in str(e):
            raise
        return None


def failed_at_memory_limit(kube: Any, ns: str, node_images: dict, in_pod: str, memory: str, **spec: Any) -> dict:
    """Install the example application at revision 0001 with every step container limited to ``memory`` (and
    ``spec`` merged into its DatabaseMigration); wait until its run ends, assert it Failed; its Ready condition."""
    extra = {"jobTemplate": {"resources": {"limits": {"memory": memory}, "requests": {"memory": memory}}}, **spec}
    install_app(kube, ns, node_images, in_pod, "0001", "--set-json", f"migration.extraSpec={json.dumps(extra)}",
                "--wait=false", timeout="60s")
    st = finished(kube, ns)
    assert st["phase"] == "Failed", st
    return next(c for c in st["conditions"] if c["type"] == "Ready")


def test_an_oom_killed_step_fails_the_run_with_reason_oomkilled(real_kube: Any, operator: dict, node_images: dict,
                                                               real_namespace: str,
                                                               pod_db: tuple[str, str]) -> None:  # fmt: skip
    ns, (_, in_pod) = real_namespace, pod_db
    # derive: false makes the precheck one plain container: with the default shadow, which container hits 24Mi
    # first (a step container, or the shadow-server sidecar: CrashLoopBackOff, the test below) is a race
    ready = failed_at_memory_limit(real_kube, ns, node_images, in_pod, "24Mi", precheck={"derive": False})
    assert ready["reason"] == "OOMKilled" and "memory limit" in ready["message"], ready
    killed = [cs for cs in step_statuses(real_kube, ns)
              if ((cs.get("state") or {}).get("terminated") or {}).get("reason") == "OOMKilled"]  # fmt: skip
    assert killed and killed[0]["state"]["terminated"]["exitCode"] == 137


def ended_job(kube: Any, ns: str, name: str) -> dict:
    """The step Job ``name`` once it is Failed and its pods are gone (the operator ended it: deadline 1 s)."""
    def ended() -> dict | None:
        j = kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        failed = [c for c in (j["status"].get("conditions") or []) if c["type"] == "Failed" and c["status"] == "True"]
        return j if failed and not kube.pods(ns, f"job-name={name}") else None

    try:
        job = kube.wait_for(ended, timeout=180, interval=2, message=f"job {name} Failed, its pod deleted")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(kube, ns)}") from None
    assert job["spec"]["activeDeadlineSeconds"] == 1, job["spec"]
    assert next(c for c in job["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    return job


def test_a_shadow_server_oom_killed_in_a_loop_fails_the_run_at_once(real_kube: Any, operator: dict,
                                                                    node_images: dict, real_namespace: str,
                                                                    pod_db: tuple[str, str]) -> None:  # fmt: skip
    """The default precheck at a 96Mi memory limit per container: its Python containers fit (install-runner about
    20 MB, prepare waiting for the server about 50 MB), the shadow-server sidecar does not (Python, the throw-away
    server's processes and its data directory on the memory-backed emptyDir, about 40 MB, are charged to its
    cgroup). The kernel kills it at start (OOMKilled), the kubelet restarts it with back-off (10 s, 20 s) while
    prepare waits; each run first removes what the killed one left on that volume (which would otherwise count
    against the pod's memory, 192Mi, until a pod-level kill took prepare). Once it has been restarted 3 times the run fails with reason CrashLoopBackOff and a message
    naming the container, OOMKilled and the field to raise. No other outcome can come first: the Job keeps its
    3600 s deadline and prepare waits 120 s for the server. The Job is ended, its pod (and the sidecar) goes, nothing
    is applied."""
    url, in_pod = pod_db
    ns = real_namespace
    ready = failed_at_memory_limit(real_kube, ns, node_images, in_pod, "96Mi", backup={"enabled": False})
    assert ready["reason"] == "CrashLoopBackOff", f"{ready}\n{step_statuses(real_kube, ns)}\n{diagnostics(real_kube, ns)}"
    assert "container shadow-server" in ready["message"] and "last exit: OOMKilled" in ready["message"], ready
    assert "spec.jobTemplate.resources.limits.memory" in ready["message"], ready
    (step_job,) = [j for js in jobs_by_step(real_kube, ns).values() for j in js]
    assert step_job["metadata"]["labels"]["schemagate.dev/step"] == "precheck"
    ended_job(real_kube, ns, step_job["metadata"]["name"])
    assert revision_or_none(url) is None  # nothing applied
    # the kubelet's own record of the loop: it backed off restarting the sidecar, which the kernel killed
    events = json.loads(real_kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    backoff = [e for e in events if e["reason"] == "BackOff" and "shadow-server" in (e.get("message") or "")]
    assert backoff, [(e["reason"], e.get("message")) for e in events]


def test_a_step_pod_that_cannot_start_fails_with_the_kubelets_reason(real_kube: Any, operator: dict, node_images: dict,
                                                             real_namespace: str,
                                                             pod_db: tuple[str, str]) -> None:  # fmt: skip
    """The application image is not on the node and ``imagePullPolicy: Never`` forbids a pull: the kubelet leaves
    the container waiting with ``ErrImageNeverPull`` and never runs it. The operator looks at a step whose pod has
    not started every ``start_poll_seconds`` (5 s) and fails the run with the kubelet's reason; the Job's own
    deadline (the default 3600 s) plays no part, so no other outcome is possible within the wait. Then the
    operator ends that Job (its deadline set to 1 s): the Job controller deletes the pod, and with it the
    precheck's sidecar and its throw-away server."""
    url, in_pod = pod_db
    ns = real_namespace
    install_app(real_kube, ns, node_images, in_pod, "0001", "--set-string", "image.tag=not-on-this-node",
                "--wait=false", timeout="60s")
    st = finished(real_kube, ns)
    assert st["phase"] == "Failed", st
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ErrImageNeverPull", ready
    missing = f"{node_images['example-app']['repository']}:not-on-this-node"
    assert missing in ready["message"] and "cannot start" in ready["message"], ready
    assert revision_or_none(url) is None  # nothing applied

    # the stuck Job is ended at once rather than at its deadline, and its pod goes
    (step_job,) = [j for js in jobs_by_step(real_kube, ns).values() for j in js]
    ended_job(real_kube, ns, step_job["metadata"]["name"])

    # the kubelet said why on the pod, and no container of the missing image ever started
    events = json.loads(real_kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    never = {e["involvedObject"].get("fieldPath") for e in events
             if e["reason"] == "ErrImageNeverPull" and e["involvedObject"]["kind"] == "Pod"}  # fmt: skip
    assert never, [(e["reason"], e["involvedObject"]) for e in events]
    started = {e["involvedObject"].get("fieldPath") for e in events if e["reason"] == "Started"}
    assert not never & started, (never, started)
