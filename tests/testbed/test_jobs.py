"""Jobs run for real: the job controller of kube-controller-manager creates pods, the node stand-in binds and runs
them as local processes and writes their status back, the job controller writes the Job's status."""

from __future__ import annotations

import base64
import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.testbed.plugin import Kube

pytestmark = pytest.mark.e2e


def job(name: str, containers: list[dict], *, backoff: int = 0, init: list[dict] | None = None,
        volumes: list[dict] | None = None, restart: str = "Never", **spec: object) -> dict:
    pod_spec: dict = {"restartPolicy": restart, "containers": containers}
    if init:
        pod_spec["initContainers"] = init
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff, "template": {"spec": pod_spec}, **spec},
    }


def py(code: str, name: str = "main", image: str = "ghcr.io/example/schemagate:dev", **extra: object) -> dict:
    return {"name": name, "image": image, "command": ["python", "-c", textwrap.dedent(code)], **extra}


def job_pods(kube: Kube, ns: str, name: str) -> list[dict]:
    return sorted(kube.pods(ns, f"job-name={name}"), key=lambda p: p["metadata"]["creationTimestamp"])


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or [] if c["status"] == "True"}


def test_job_completes_with_termination_message_and_logs(kube: Kube, namespace: str) -> None:
    code = """
        import os, sys
        print("hello from", os.environ["POD_NAME"], "in", os.environ["POD_NAMESPACE"], flush=True)
        print("to stderr", file=sys.stderr)
        with open("/dev/termination-log", "w") as f:
            f.write('{"outcome": "Succeeded"}')
    """
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    kube.apply(job("hello", [py(code, env=env)]), namespace)
    done = kube.wait_job(namespace, "hello", timeout=60)
    conds = conditions(done)
    assert "Complete" in conds and "SuccessCriteriaMet" in conds, done["status"]
    assert done["status"]["succeeded"] == 1
    assert done["status"].get("completionTime") and done["status"].get("startTime")

    (pod,) = job_pods(kube, namespace, "hello")
    name = pod["metadata"]["name"]
    st = pod["status"]
    assert st["phase"] == "Succeeded"
    assert st["startTime"] and pod["spec"]["nodeName"] == "testbed-node"
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert term["message"] == '{"outcome": "Succeeded"}'
    assert {c["type"] for c in st["conditions"]} >= {"PodScheduled", "Initialized", "Ready", "ContainersReady"}

    log = kube.logs(namespace, name)
    assert f"hello from {name} in {namespace}" in log and "to stderr" in log
    # kubectl logs goes API server -> the node stand-in's kubelet endpoint
    assert f"hello from {name}" in kube.kubectl("logs", "-n", namespace, name).stdout
    assert kube.kubectl("logs", "-n", namespace, "job/hello", "--tail=1").stdout.strip() == "to stderr"


def test_job_fails_after_backoff_limit_with_termination_message(kube: Kube, namespace: str) -> None:
    code = """
        import sys
        open("/dev/termination-log", "w").write("ViolationsFound: 3 rows")
        sys.exit(3)
    """
    fallback = """
        import sys
        print("connecting..."); print("boom: database unreachable")
        sys.exit(5)
    """
    kube.apply([
        job("fails", [py(code)], backoff=1),
        job("fallback", [py(fallback, terminationMessagePolicy="FallbackToLogsOnError")]),
    ], namespace)

    fb = kube.wait_job(namespace, "fallback", timeout=60)
    assert conditions(fb)["Failed"]["reason"] == "BackoffLimitExceeded"
    (pod,) = job_pods(kube, namespace, "fallback")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 5 and term["reason"] == "Error"
    assert term["message"] == "connecting...\nboom: database unreachable\n"

    failed = kube.wait_job(namespace, "fails", timeout=90)  # the job controller backs off ~10s between pods
    conds = conditions(failed)
    assert conds["Failed"]["reason"] == "BackoffLimitExceeded" and "FailureTarget" in conds
    assert failed["status"]["failed"] == 2 and not failed["status"].get("succeeded")
    pods = job_pods(kube, namespace, "fails")
    assert len(pods) == 2
    for p in pods:
        assert p["status"]["phase"] == "Failed"
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "ViolationsFound: 3 rows")


def test_pod_features_env_volumes_init_order_image_mapping(kube: Kube, namespace: str, map_image, tmp_path: Path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "check.py").write_text(textwrap.dedent("""
        # paths inside files are not rewritten: the script gets them from env and args, as real steps do
        import json, os, sys
        P = os.environ
        result = {
            "cwd": os.getcwd(),
            "order": open(P["WORK"] + "/order").read().split(),
            "env": {k: P.get(k) for k in ("DATABASE_URL", "LEVEL", "TARGET", "GREETING", "APP_MODE",
                                          "CFG_COLOUR", "HOSTNAME")},
            "settings": open(P["SETTINGS"]).read(),
            "ns_file": open(P["SA_DIR"] + "/namespace").read(),
            "has_token": os.path.getsize(P["SA_DIR"] + "/token") > 100,
            "argv": sys.argv[1:3],
        }
        open(P["DATA"] + "/result.json", "w").write(json.dumps(result))
        open(sys.argv[4], "w").write(json.dumps(result))
    """))
    map_image("registry.example.com/shop:*", {"/app": app}, {"APP_MODE": "test"}, workdir="/app",
              entrypoint=["python", "check.py"])
    kube.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
         "data": {"url": base64.b64encode(b"postgresql://app:s3cret@db:5432/shop").decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"LEVEL": "debug", "COLOUR": "blue", "settings.ini": "[app]\nx=1\n"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    ], namespace)
    init = [
        py("open('/work/order', 'a').write('first\\n')", name="first"),
        {"name": "second", "image": "busybox", "command": ["sh", "-c", "echo second >> $(WORK)/order"],
         "env": [{"name": "WORK", "value": "/work"}], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
    ]
    init[0]["volumeMounts"] = [{"name": "work", "mountPath": "/work"}]
    main = {
        "name": "main",
        "image": "registry.example.com/shop:1.0",
        "args": ["--target", "$(TARGET)", "--termination-log", "/dev/termination-log"],
        "env": [
            {"name": "WORK", "value": "/work"},
            {"name": "DATA", "value": "/data"},
            {"name": "SETTINGS", "value": "/etc/app/settings.ini"},
            {"name": "SA_DIR", "value": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "TARGET", "value": "head"},
            {"name": "GREETING", "value": "hi $(LEVEL) from /work"},
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "volumeMounts": [
            {"name": "work", "mountPath": "/work"},
            {"name": "data", "mountPath": "/data"},
            {"name": "settings", "mountPath": "/etc/app"},
        ],
    }
    volumes = [{"name": "work", "emptyDir": {}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
               {"name": "settings", "configMap": {"name": "cfg", "items": [{"key": "settings.ini",
                                                                             "path": "settings.ini"}]}}]
    kube.apply(job("features", [main], init=init, volumes=volumes), namespace)
    done = kube.wait_job(namespace, "features", timeout=60)
    (pod,) = job_pods(kube, namespace, "features")
    assert "Complete" in conditions(done), (done["status"], pod["status"])
    result = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert result["cwd"] == str(app)  # the image's WORKDIR, mapped
    assert result["order"] == ["first", "second"]  # init containers in order, emptyDir shared
    work_dir = kube.node.pod_dir(namespace, pod["metadata"]["name"]) / "volumes" / "work"
    assert result["env"] == {
        "DATABASE_URL": "postgresql://app:s3cret@db:5432/shop",
        "LEVEL": "debug",
        "TARGET": "head",
        "GREETING": f"hi debug from {work_dir}",  # $(VAR) expanded, container path rewritten
        "APP_MODE": "test",
        "CFG_COLOUR": "blue",
        "HOSTNAME": pod["metadata"]["name"],
    }
    assert result["settings"] == "[app]\nx=1\n"
    assert result["ns_file"] == namespace and result["has_token"]  # projected service-account volume
    assert result["argv"] == ["--target", "head"]
    init_st = pod["status"]["initContainerStatuses"]
    assert [(s["name"], s["state"]["terminated"]["exitCode"]) for s in init_st] == [("first", 0), ("second", 0)]

    # the claim is a directory shared by every pod that mounts it, and it was bound to a volume
    reader = py("print(open('/data/result.json').read())", name="reader",
                volumeMounts=[{"name": "data", "mountPath": "/data"}])
    kube.apply(job("reader", [reader], volumes=[volumes[1]]), namespace)
    assert "Complete" in conditions(kube.wait_job(namespace, "reader", timeout=60))
    (rpod,) = job_pods(kube, namespace, "reader")
    assert json.loads(kube.logs(namespace, rpod["metadata"]["name"])) == result
    pvc = kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/data")
    assert pvc["status"]["phase"] == "Bound", pvc["status"]


def test_restart_on_failure_deadline_and_deletion(kube: Kube, namespace: str, tmp_path: Path) -> None:
    flaky = """
        import os, sys
        if not os.path.exists("/scratch/tried"):
            open("/scratch/tried", "w").close()
            print("first attempt fails"); sys.exit(1)
        print("second attempt works")
    """
    pidfile = tmp_path / "sleeper.pid"
    sleeper = f"""
        import os, time
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(300)
    """
    kube.apply([
        job("flaky", [py(flaky, volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])], backoff=3,
            volumes=[{"name": "scratch", "emptyDir": {}}], restart="OnFailure"),
        job("deadline", [py("import time; time.sleep(300)")], activeDeadlineSeconds=3),
        job("sleeper", [py(sleeper)]),
    ], namespace)

    assert "Complete" in conditions(kube.wait_job(namespace, "flaky", timeout=60))
    (pod,) = job_pods(kube, namespace, "flaky")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1 and cs["lastState"]["terminated"]["exitCode"] == 1
    assert kube.logs(namespace, pod["metadata"]["name"], previous=True).strip() == "first attempt fails"
    assert kube.logs(namespace, pod["metadata"]["name"]).strip() == "second attempt works"

    dl = kube.wait_job(namespace, "deadline", timeout=60)
    assert conditions(dl)["Failed"]["reason"] == "DeadlineExceeded"

    # deleting the Job (background propagation): the garbage collector deletes the pod, the node kills it
    pid = int(kube.wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=30, message="the sleeper"))
    assert _alive(pid)
    kube.batch().delete_namespaced_job("sleeper", namespace, propagation_policy="Background",
                                       _preload_content=False)
    kube.wait_for(lambda: not _alive(pid), timeout=30, message="the sleeper process to be killed")
    kube.wait_for(lambda: not job_pods(kube, namespace, "sleeper"), timeout=30, message="the pod to be deleted")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_pod_level_active_deadline(kube: Kube, namespace: str) -> None:
    j = job("pod-deadline", [py("import time; time.sleep(300)")])
    j["spec"]["template"]["spec"]["activeDeadlineSeconds"] = 2
    kube.apply(j, namespace)
    kube.wait_job(namespace, "pod-deadline", timeout=60)
    (pod,) = job_pods(kube, namespace, "pod-deadline")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143  # SIGTERM


def test_a_failing_sidecar_is_restarted_and_its_loop_shows_while_an_init_container_runs(kube: Kube,
                                                                                        namespace: str) -> None:
    """A native sidecar (init container with ``restartPolicy: Always``) that fails at start, every time, while the
    next init container waits for it: restarted with back-off, and each failure is written to the pod's status at
    once, as the kubelet does (``restartCount``, ``lastState.terminated`` with exit code and message,
    ``waiting: CrashLoopBackOff``), not only once the main containers run."""
    crash = py("""
        import sys
        open("/dev/termination-log", "w").write("could not start")
        sys.exit(3)
    """, name="server", restartPolicy="Always", terminationMessagePolicy="FallbackToLogsOnError")
    wait = py("import time; time.sleep(600)", name="wait")
    kube.apply(job("loop", [py("pass")], init=[crash, wait], activeDeadlineSeconds=300), namespace)

    def looping() -> dict | None:
        for p in job_pods(kube, namespace, "loop"):
            for cs in (p.get("status") or {}).get("initContainerStatuses") or []:
                if cs["name"] == "server" and cs["restartCount"] >= 3:
                    return cs
        return None

    cs = kube.wait_for(looping, timeout=120, message="the sidecar restarted 3 times")
    last = cs["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error" and last["message"] == "could not start", cs
    kube.kubectl("delete", "job", "-n", namespace, "loop", "--wait=false")
