"""The real node itself: pods run in real containers from the images built from this repository, as the
user and with the root filesystem their spec asks for; memory limits are enforced by the kernel; and no packet
from a pod can leave this machine.

Needs root (containerd, network namespaces, cgroups, iptables); see tests/testbed/README.md, "The real node".
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.testbed import realnode

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]


def run_pod(kube: Any, ns: str, name: str, image: str, script: str, *, timeout: float = 120,
            security: dict | None = None, resources: dict | None = None) -> dict:
    """Run ``python3 -c script`` in a bare pod (restartPolicy Never) and wait until it ends; returns the pod."""
    kube.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": True,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", script],
                "securityContext": security or {},
                "resources": resources or {},
            }],
        },
    }, ns)
    return kube.wait_for(
        lambda: (p := kube.get(f"/api/v1/namespaces/{ns}/pods/{name}"))["status"].get("phase") in
        ("Succeeded", "Failed") and p, timeout=timeout, message=f"pod {ns}/{name} to finish")


def test_node_is_ready_and_untainted(real_kube: Any) -> None:
    node = real_kube.get(f"/api/v1/nodes/{realnode.NODE_NAME}")
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True", conds
    assert not [t for t in node["spec"].get("taints", []) if t["key"].startswith("node.kubernetes.io/")]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == real_kube.cluster.bin_dir.name
    assert {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"] == realnode.NODE_IP


def test_a_pod_runs_as_its_user_on_a_read_only_root(real_kube: Any, real_namespace: str,
                                                     node_images: dict) -> None:  # fmt: skip
    script = """
import json, os
try:
    open('/opt/probe', 'w'); ro = False
except OSError as e:
    ro = e.strerror
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "ro": ro,
                  "token": os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token'),
                  "cgroup": open('/proc/self/cgroup').read()}))
"""
    pod = run_pod(real_kube, real_namespace, "whoami", node_images["schemagate"]["image"], script,
                  security={"runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}})
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    out = json.loads(real_kube.logs(real_namespace, "whoami").strip().splitlines()[-1])
    assert out["uid"] == 10001 and out["gid"] == 10001
    assert out["ro"] == "Read-only file system"
    assert out["token"] is True  # the projected service-account token, mounted by the kubelet
    assert "kubepods" in out["cgroup"]  # a real cgroup of the kubelet's pod hierarchy
    assert pod["status"]["podIP"].startswith(realnode.NODE_IP.rsplit(".", 1)[0] + ".")


def test_memory_limit_is_enforced_by_the_kernel(real_kube: Any, real_namespace: str, node_images: dict) -> None:
    pod = run_pod(real_kube, real_namespace, "hog", node_images["schemagate"]["image"],
                  "b = bytearray(400 * 1024 * 1024); print(len(b))",
                  resources={"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}})
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Failed"
    assert term["reason"] == "OOMKilled" and term["exitCode"] == 137, term


NET_PROBE = """
import errno, json, socket, ssl, time, os
def attempt(host, port):
    t0 = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=10).close()
        return {"ok": True, "s": round(time.monotonic() - t0, 3)}
    except OSError as e:
        return {"ok": False, "err": errno.errorcode.get(e.errno, str(e)), "s": round(time.monotonic() - t0, 3)}
def resolve(name):
    t0 = time.monotonic()
    try:
        socket.getaddrinfo(name, 443)
        return {"ok": True, "s": round(time.monotonic() - t0, 3)}
    except OSError as e:
        return {"ok": False, "err": str(e), "s": round(time.monotonic() - t0, 3)}
api = (os.environ["KUBERNETES_SERVICE_HOST"], int(os.environ["KUBERNETES_SERVICE_PORT"]))
ctx = ssl.create_default_context(cafile="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
with socket.create_connection(api, timeout=10) as s, ctx.wrap_socket(s, server_hostname=api[0]) as t:
    api_tls = t.version()
print(json.dumps({
    "outside": attempt("198.51.100.7", 80),
    "other_service": attempt("10.0.0.77", 443),
    "dns": resolve("example.com"),
    "api": list(api), "api_tls": api_tls,
}))
"""


def test_no_packet_leaves_the_machine(real_kube: Any, real_namespace: str, node_images: dict) -> None:
    """A pod has no route out: an outside address (TEST-NET-2, RFC 5737) fails at once with ENETUNREACH, in the
    pod's own network stack, without sending anything; a Service address nothing serves is unreachable on the
    node; names do not resolve; the API server is reachable through the `kubernetes` Service.
    (The node checked before starting that nothing routes or masquerades pod traffic out: a regression fails
    there, before this pod could send a packet.)"""
    pod = run_pod(real_kube, real_namespace, "net", node_images["schemagate"]["image"], NET_PROBE)
    logs = real_kube.logs(real_namespace, "net")
    assert pod["status"]["phase"] == "Succeeded", logs
    out = json.loads(logs.strip().splitlines()[-1])
    assert out["outside"]["ok"] is False and out["outside"]["err"] == "ENETUNREACH", out
    assert out["outside"]["s"] < 1, out
    assert out["other_service"]["ok"] is False and out["other_service"]["s"] < 2, out
    assert out["other_service"]["err"] in ("EHOSTUNREACH", "ENETUNREACH", "ECONNREFUSED"), out
    assert out["dns"]["ok"] is False and out["dns"]["s"] < 5, out
    assert out["api"] == [realnode.KUBERNETES_SERVICE_IP, 443] and out["api_tls"].startswith("TLS"), out


def test_the_node_refuses_a_network_that_would_leak(real_kube: Any) -> None:
    """The same check that runs before the first pod: passes as set up, fails once a FORWARD drop rule is gone."""
    node = real_kube.cluster.node
    node.check_confinement()
    rule = ["FORWARD", "-i", realnode.BRIDGE, "!", "-o", realnode.BRIDGE, "-m", "comment", "--comment",
            realnode.RULE_COMMENT, "-j", "DROP"]
    subprocess.run(["iptables", "-D", *rule], check=True)
    try:
        with pytest.raises(realnode.NodeError, match="no FORWARD rule drops traffic -i sgnode0 ! -o sgnode0"):
            node.check_confinement()
    finally:
        subprocess.run(["iptables", "-I", *rule[:1], "1", *rule[1:]], check=True)
    node.check_confinement()
