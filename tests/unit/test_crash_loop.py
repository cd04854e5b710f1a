"""A step pod whose container the kubelet restarts in a loop (``k8s.crash_loop``, part of ``k8s.stuck_reason``).

The pod statuses are shaped as the kubelet v1.35 writes them (pkg/kubelet/kubelet_pods.go
``convertToAPIContainerStatuses``; pkg/kubelet/kuberuntime/kuberuntime_manager.go ``doBackOff``): after a failed
run of a container with ``restartPolicy: Always`` (a native sidecar), ``restartCount`` is the number of runs
before the newest one, ``lastState.terminated`` is the newest run's exit (``reason`` ``OOMKilled`` or ``Error``,
``exitCode``, ``message`` from the termination-message file or, with ``FallbackToLogsOnError``, the log tail) and
``state`` is ``waiting: CrashLoopBackOff`` with the back-off message while the kubelet waits, ``running`` while
the next run lives. Step pods have ``restartPolicy: Never``; only the sidecars are ever restarted.
"""

from __future__ import annotations

import json

import pytest

from schemagate import k8s
from schemagate.core import jobs as J
from tests.unit.fakeapi import FakeKube
from tests.unit.helpers import OK_RESULTS, body
from tests.unit.test_reconciler import LEASE, LEASE_NS, NS, URL, reconcile, status

POD = "shop-1-precheck-1-x7k2q"
UID = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
T0 = "2026-11-29T21:40:00Z"


def _terminated(reason: str, code: int, message: str = "") -> dict:
    t = {"exitCode": code, "reason": reason, "startedAt": "2026-11-29T21:40:31Z", "finishedAt": "2026-11-29T21:40:33Z",
         "containerID": "containerd://5e0c7d1f3a2b"}
    if message:
        t["message"] = message
    return t


def _looping(name: str = J.SHADOW_SERVER, restarts: int = 3, last: dict | None = None, running: bool = False) -> dict:
    """A sidecar's status in its crash loop: waiting in CrashLoopBackOff (or running again) after ``last``."""
    state = {"running": {"startedAt": "2026-11-29T21:41:03Z"}} if running else {"waiting": {
        "reason": "CrashLoopBackOff",
        "message": f"back-off 40s restarting failed container={name} pod={POD}_{NS}({UID})"}}
    return {"name": name, "image": "registry.example/schemagate:0.1.0",
            "imageID": "registry.example/schemagate@sha256:3b1f", "containerID": "containerd://5e0c7d1f3a2b",
            "ready": running, "started": running, "restartCount": restarts, "state": state,
            "lastState": {"terminated": last or _terminated("OOMKilled", 137)}}


def _precheck_pod(sidecar: dict, phase: str = "Pending") -> dict:
    """The precheck Job's pod (core/jobs.py): install-runner done, the sidecar, prepare waiting for its server."""
    return {
        "metadata": {"name": POD, "namespace": NS, "uid": UID, "creationTimestamp": T0,
                     "labels": {"job-name": "shop-1-precheck-1"}},
        "spec": {"restartPolicy": "Never",
                 "initContainers": [{"name": "install-runner"}, {"name": J.SHADOW_SERVER, "restartPolicy": "Always"},
                                    {"name": "prepare"}, {"name": "shadow-upgrade"}],
                 "containers": [{"name": "count"}]},
        "status": {
            "phase": phase,
            "initContainerStatuses": [
                {"name": "install-runner", "restartCount": 0, "ready": True, "started": False,
                 "state": {"terminated": _terminated("Completed", 0)}, "lastState": {}},
                sidecar,
                {"name": "prepare", "restartCount": 0, "ready": False, "started": True,
                 "state": {"running": {"startedAt": "2026-11-29T21:40:32Z"}}, "lastState": {}},
                {"name": "shadow-upgrade", "restartCount": 0, "ready": False, "started": False,
                 "state": {"waiting": {"reason": "PodInitializing"}}, "lastState": {}},
            ],
            "containerStatuses": [{"name": "count", "restartCount": 0, "ready": False, "started": False,
                                   "state": {"waiting": {"reason": "PodInitializing"}}, "lastState": {}}],
        },
    }


def test_an_oom_killed_shadow_server_in_a_loop_is_stuck_and_the_message_points_at_the_memory_limit():
    got = k8s.stuck_reason([_precheck_pod(_looping())], [])
    assert got is not None
    reason, message = got
    assert reason == "CrashLoopBackOff"
    assert "container shadow-server" in message and "restarted 3 times" in message
    assert "OOMKilled, exit code 137" in message
    assert "spec.jobTemplate.resources.limits.memory" in message and "memory-backed emptyDir" in message


def test_a_shadow_server_that_cannot_start_carries_its_own_error():
    """The sidecar's StepResult (``--json`` to the termination log) names PostgreSQL's error; passwords in it are
    masked; the fix names the shadow database's settings."""
    result = {"kind": "StepResult", "step": "precheck", "outcome": "TransientError", "reason": "ShadowUnavailable",
              "message": "could not start the throw-away shadow PostgreSQL: pg_ctl failed (exit 1): FATAL: "
                         "could not write lock file \"postmaster.pid\": No space left on device; "
                         "admin postgresql://postgres:hunter22@127.0.0.1:5433/postgres"}
    last = _terminated("Error", 3, json.dumps(result))
    reason, message = k8s.stuck_reason([_precheck_pod(_looping(restarts=4, last=last))], []) or ("", "")
    assert reason == "CrashLoopBackOff"
    assert "Error, exit code 3: could not start the throw-away shadow PostgreSQL" in message
    assert "No space left on device" in message and "hunter22" not in message
    assert "spec.precheck.shadowDatabase.sizeLimit" in message and "spec.precheck.shadowDatabase.urlFrom" in message
    assert "restarted 4 times" in message


def test_a_log_tail_is_the_last_exit_message_when_there_is_no_step_result():
    last = _terminated("Error", 1, "Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space left")
    _, message = k8s.stuck_reason([_precheck_pod(_looping(last=last))], []) or ("", "")
    assert "Error, exit code 1: OSError: [Errno 28] No space left" in message, message


def test_a_loop_is_seen_while_the_next_run_lives_and_in_any_sidecar():
    """Between two failures the container is ``running`` again; the scratch-guard of the rehearse step gets the
    general fix."""
    last = _terminated("Error", 1, "psycopg.OperationalError: connection refused")
    got = k8s.stuck_reason([_precheck_pod(_looping("scratch-guard", restarts=5, last=last, running=True))], [])
    assert got is not None and got[0] == "CrashLoopBackOff"
    assert "container scratch-guard" in got[1] and "connection refused" in got[1]
    assert "spec.jobTemplate.resources" not in got[1] and "fix what the message above names" in got[1]


def test_the_last_exit_is_read_before_the_kubelet_writes_the_back_off():
    """Right after a run fails the status may still be ``terminated`` (the kubelet's next sync writes waiting)."""
    sidecar = _looping()
    sidecar["state"], sidecar["lastState"] = {"terminated": _terminated("OOMKilled", 137)}, {
        "terminated": _terminated("OOMKilled", 137)}
    got = k8s.stuck_reason([_precheck_pod(sidecar)], [])
    assert got is not None and "OOMKilled, exit code 137" in got[1]


@pytest.mark.parametrize(("restarts", "last", "phase"), [
    (1, _terminated("OOMKilled", 137), "Pending"),   # restarted once: a transient fault is tolerated
    (2, _terminated("Error", 1), "Pending"),          # twice
    (7, _terminated("Completed", 0), "Running"),      # a sidecar that ends cleanly and is started again
    (3, _terminated("OOMKilled", 137), "Failed"),     # the pod has finished: the Job's own result says why
    (3, _terminated("OOMKilled", 137), "Succeeded"),
])
def test_not_a_crash_loop(restarts, last, phase):
    assert k8s.stuck_reason([_precheck_pod(_looping(restarts=restarts, last=last), phase)], []) is None


def test_only_the_newest_pod_counts():
    old = _precheck_pod(_looping())
    new = _precheck_pod(_looping(restarts=0))
    new["metadata"] = {**new["metadata"], "name": "shop-1-precheck-1-b9z4w", "creationTimestamp": "2026-11-29T21:45:00Z"}
    new["status"]["initContainerStatuses"][1]["lastState"] = {}
    assert k8s.stuck_reason([old, new], []) is None
    assert k8s.stuck_reason([new, old], []) is None
    assert k8s.stuck_reason([old], []) is not None


def test_a_crash_looping_shadow_server_fails_the_run_and_ends_its_job():
    """Through the reconciler (in-memory API): the precheck's sidecar loops, the run fails at once with the reason
    and message, the Lease is released and the Job's deadline is set to 1 s (the Job controller deletes the pod,
    and the throw-away server's memory-backed volume with it); nothing else is created."""
    kube = FakeKube()
    kube.add_migration(body())
    kube.add_secret(NS, "db", {"url": URL})
    reconcile(kube)
    kube.finish_job(NS, "shop-1-backup-1", json.dumps(OK_RESULTS["backup"]), 0)
    reconcile(kube)
    assert status(kube)["jobs"]["precheck"] == "shop-1-precheck-1"
    kube.store.put("Pod", _precheck_pod(_looping(restarts=1)))
    reconcile(kube)
    assert status(kube)["phase"] == "Prechecking"  # one restart: still waiting for it
    kube.store.put("Pod", _precheck_pod(_looping()))
    reconcile(kube)
    st = status(kube)
    assert st["phase"] == "Failed" and st["lastError"]["reason"] == "CrashLoopBackOff", st
    assert "shadow-server" in st["lastError"]["message"] and "OOMKilled" in st["lastError"]["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "CrashLoopBackOff" and "spec.jobTemplate.resources.limits.memory" in ready["message"]
    assert kube.job(NS, "shop-1-precheck-1")["spec"]["activeDeadlineSeconds"] == 1
    assert kube.lease_holder(LEASE_NS, LEASE) is None
    assert sorted(j["metadata"]["name"] for j in json.loads(kube.store.list("Job", NS).data)["items"]) == [
        "shop-1-backup-1", "shop-1-precheck-1"]
