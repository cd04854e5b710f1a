"""The operator under its own least-rights RBAC on the real test bed, not the admin kubeconfig.

- Cluster-wide mode: ``manifests/crd.yaml`` and ``manifests/rbac.yaml`` are applied as they are, a token is minted
  for the ServiceAccount ``schemagate-system/schemagate`` (TokenRequest, ``kubectl create token``), and
  ``schemagate operator`` runs as a subprocess with a kubeconfig holding only that token and the arguments of
  ``manifests/workload.yaml``. It drives the food-truck migration against a real PostgreSQL to Succeeded/Ready and
  releases a pod held by the ``schemagate.dev/migration`` scheduling gate. Its log has no 403/Forbidden line.
  ``kubectl auth can-i --as`` checks what the ServiceAccount may not do.
- Namespace-restricted mode: the chart rendered with ``operator.watchNamespaces=[A]`` (``helm template``: a Role and
  RoleBinding in A, a ClusterRole that only reads CRDs, the Lease Role in the operator's namespace), the operator
  started with the rendered Deployment's arguments (``--namespace=A``): a DatabaseMigration in A reaches Succeeded,
  one in B gets no status, no Job and no Event.

Step Jobs run through the node stand-in as local processes (as in tests/e2e/test_operator.py). Objects these tests
create outside their own namespaces are removed afterwards unless they existed before (e.g. from a Helm release of
tests/e2e/test_helm_install.py in the same session).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.operator_process import ROOT, RUNNER_IMAGE, free_port, wait_established
from tests.e2e.operator_process import Operator as SharedOperator

CHART = ROOT / "charts" / "schemagate"
APP_IMAGE = "schemagate.test/rbac-foodtruck:e2e"
OPERATOR_NS = "schemagate-system"  # what manifests/ name
SA_NAME = "schemagate"
SA_USER = f"system:serviceaccount:{OPERATOR_NS}:{SA_NAME}"
GATE = "schemagate.dev/migration"
MANAGED = "app.kubernetes.io/managed-by=schemagate"
# A line of the operator's log that means the API refused something (Kopf says "Not enough permissions",
# the client "403"/"Forbidden", schemagate.k8s "(forbidden)").
DENIED = re.compile(r"\b403\b|forbidden|not enough permissions", re.IGNORECASE)
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")  # the log line's time (its milliseconds may be 403)
# urllib3 at debug level: every request of the kubernetes client (schemagate.k8s, the gate) with its status
REQUEST = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/1\.1" (\d{3})')

pytestmark = pytest.mark.e2e


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _operator_args(deployment: dict) -> list[str]:
    """The args of the rendered operator container, with free local ports for health and metrics."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    assert args[0] == "operator", args
    keep = [a for a in args if not a.startswith(("--health-port", "--metrics-port", "--log-level"))]
    # debug: the best-effort Event posts log their failures (a 403 too) only at debug level
    return [*keep, f"--health-port={free_port()}", f"--metrics-port={free_port()}", "--log-level=debug"]


# ---------------------------------------------------------------------------------------------------------------
# the ServiceAccount's kubeconfig and the operator process


def token_kubeconfig(kube: Any, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig with only a TokenRequest token of ``namespace/sa`` (the CA from the test bed's kubeconfig)."""
    token = kube.kubectl("create", "token", sa, "-n", namespace, "--duration=2h").stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    (cluster,) = admin["clusters"]
    ca = cluster["cluster"].get("certificate-authority-data")
    if not ca:
        ca = base64.b64encode(Path(cluster["cluster"]["certificate-authority"]).read_bytes()).decode()
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": cluster["cluster"]["server"],
                                                     "certificate-authority-data": ca}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "testbed", "user": sa, "namespace": namespace}}],
        "current-context": sa,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    who = kube.kubectl("--kubeconfig", str(path), "auth", "whoami", "-o", "json").stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{sa}"
    return path


class Operator(SharedOperator):
    """``schemagate operator ARGS`` as a subprocess, authenticated only by a ServiceAccount token kubeconfig."""

    def __init__(self, kube: Any, kubeconfig: Path, args: list[str], pod_namespace: str, log_dir: Path) -> None:
        super().__init__(kube, log_dir, command=args, kubeconfig=kubeconfig, pod_namespace=pod_namespace)

    def denied_lines(self) -> list[str]:
        return [line for line in self.logs().splitlines() if DENIED.search(STAMP.sub("", line))]

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of the operator's own API calls (Kopf's watches are not logged per request)."""
        return [(m[1], m[2], int(m[3])) for m in REQUEST.finditer(self.logs())]


# ---------------------------------------------------------------------------------------------------------------
# helpers over the API (admin)


def secret(kube: Any, ns: str, name: str, data: dict[str, str]) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": "Opaque",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})  # fmt: skip


def migration(name: str, **spec: Any) -> dict:
    s = {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
         "migrations": {"image": APP_IMAGE, "directory": "/app", "targetRevision": "head"},
         "backup": {"enabled": True, "volume": {"emptyDir": {}}},
         "lockTimeout": "2s", "jobTemplate": {"activeDeadlineSeconds": 300}, **spec}  # fmt: skip
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": name},
            "spec": s}


def gated_deployment(name: str, migration_name: str, revision: str) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {GATE: migration_name, "schemagate.dev/revision": revision}},
                "spec": {"schedulingGates": [{"name": GATE}],
                         "containers": [{"name": "app", "image": APP_IMAGE, "command": ["sleep", "3600"]}]},
            },
        },
    }  # fmt: skip


def get_dbm(kube: Any, ns: str, name: str) -> dict:
    return kube.custom().get_namespaced_custom_object("schemagate.dev", "v1alpha1", ns, "databasemigrations", name)


def jobs(kube: Any, ns: str) -> list[dict]:
    return kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]


def events(kube: Any, ns: str) -> list[dict]:
    return kube.get(f"/api/v1/namespaces/{ns}/events")["items"]


def cond(o: dict, t: str) -> dict:
    return next(c for c in o["status"]["conditions"] if c["type"] == t)


def is_gated(p: dict) -> bool:
    return any(g.get("name") == GATE for g in (p.get("spec") or {}).get("schedulingGates") or [])


def live_pods(kube: Any, ns: str, selector: str) -> list[dict]:
    return [p for p in kube.pods(ns, selector) if not p["metadata"].get("deletionTimestamp")]


def wait_terminal(kube: Any, ns: str, name: str, op: Operator, timeout: float = 300) -> dict:
    def check() -> dict | None:
        op.alive()
        o = get_dbm(kube, ns, name)
        st = o.get("status") or {}
        done = st.get("phase") in ("Succeeded", "Blocked", "Failed")
        return o if done and st.get("observedGeneration") == o["metadata"]["generation"] else None

    try:
        return kube.wait_for(check, timeout=timeout, interval=0.5, message=f"{ns}/{name} to finish")
    except AssertionError as e:
        st = (get_dbm(kube, ns, name).get("status") or {})
        raise AssertionError(f"{e}\nstatus: {json.dumps(st, indent=1)[:3000]}\n{op.logs()[-3000:]}") from None


def _resource(path: str) -> str:
    """``pods``, ``databasemigrations/status``... of ``/api(s)/.../namespaces/NS/RESOURCE[/NAME[/SUB]]``."""
    m = re.search(r"/namespaces/[^/?]+/([^/?]+)(?:/[^/?]+(?:/([^/?]+))?)?", path)
    if not m:
        return path.split("?")[0]
    return m[1] + (f"/{m[2]}" if m[2] else "")


def can_i(kube: Any, user: str, verb: str, resource: str, *scope: str) -> bool:
    r = kube.kubectl("auth", "can-i", verb, resource, "--as", user, *scope, check=False)
    answer = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {r.stdout} {r.stderr}"
    return answer == "yes"


def _exists(kube: Any, kind: str, name: str, ns: str | None) -> bool:
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"] + (["-n", ns] if ns else [])
    return bool(kube.kubectl(*args).stdout.strip())


def _delete(kube: Any, kind: str, name: str, ns: str | None) -> None:
    kube.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", *(["-n", ns] if ns else []),
                 check=False)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# fixtures


def _install_crd(kube: Any) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd.yaml"),
                 "-f", str(ROOT / "manifests" / "restore-crd.yaml"))
    wait_established(kube, "databasemigrations.schemagate.dev")


@pytest.fixture(scope="module")
def manifest_rbac(kube: Any) -> Iterator[list[dict]]:
    """manifests/crd.yaml, rbac.yaml and admission.yaml applied as they are; yields rbac.yaml's objects."""
    _install_crd(kube)
    docs = _docs((ROOT / "manifests" / "rbac.yaml").read_text())
    policy = _docs((ROOT / "manifests" / "admission.yaml").read_text())
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} <= {OPERATOR_NS, None}
    created = [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs + policy
               if d["kind"] != "Namespace"
               and not _exists(kube, d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))]  # fmt: skip
    kube.kubectl("apply", "-f", str(ROOT / "manifests" / "rbac.yaml"), "-f", str(ROOT / "manifests" / "admission.yaml"))
    kube.wait_for(lambda: _exists(kube, "serviceaccount", SA_NAME, OPERATOR_NS), timeout=30, message="the SA")
    yield docs
    for kind, name, ns in reversed(created):  # leave what was there before (e.g. a Helm release's objects)
        _delete(kube, kind, name, ns)


@pytest.fixture
def images(map_image: Any) -> None:
    map_image(RUNNER_IMAGE)
    map_image(APP_IMAGE, paths={"/app": ROOT / "migrations" / "foodtruck"})


# ---------------------------------------------------------------------------------------------------------------
# cluster-wide mode with manifests/rbac.yaml


def test_manifest_rbac_denies_what_the_operator_does_not_need(kube: Any, manifest_rbac: list[dict]) -> None:
    allowed = [
        ("watch", "databasemigrations.schemagate.dev", "-A"),
        ("patch", "databasemigrations.schemagate.dev", "--subresource=status", "-A"),
        ("create", "jobs.batch", "-A"),
        ("watch", "pods", "-A"),
        ("patch", "pods", "-A"),
        ("get", "pods", "--subresource=log", "-A"),
        ("get", "secrets", "-A"),
        ("create", "events", "-A"),
        ("patch", "jobs.batch", "-A"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "leases.coordination.k8s.io", "-n", OPERATOR_NS),
        ("patch", "leases.coordination.k8s.io", "-n", OPERATOR_NS),
    ]
    denied = [
        # Secrets: one named get at a time, never a listing of values, never a write
        ("list", "secrets", "-A"), ("watch", "secrets", "-A"), ("list", "secrets", "-n", OPERATOR_NS),
        ("update", "secrets", "-A"), ("patch", "secrets", "-A"), ("delete", "secrets", "-A"),
        # the resources it reconciles: status only
        ("create", "databasemigrations.schemagate.dev", "-A"), ("update", "databasemigrations.schemagate.dev", "-A"),
        ("patch", "databasemigrations.schemagate.dev", "-A"), ("delete", "databasemigrations.schemagate.dev", "-A"),
        # Jobs are created and only patched (activeDeadlineSeconds: 1 ends a Job whose pod can never start);
        # never replaced or deleted (the garbage collector removes them)
        ("update", "jobs.batch", "-A"), ("delete", "jobs.batch", "-A"),
        # pods: read and un-gate only, no pods of its own, no exec
        ("create", "pods", "-A"), ("delete", "pods", "-A"), ("update", "pods", "-A"), ("create", "pods/exec", "-A"),
        ("create", "pods/eviction", "-A"),
        # no cluster administration, no privilege escalation
        ("delete", "namespaces"), ("create", "namespaces"), ("patch", "nodes"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"), ("create", "rolebindings", "-A"),
        ("impersonate", "serviceaccounts", "-A"), ("create", "serviceaccounts/token", "-A"),
        ("list", "configmaps", "-A"), ("create", "deployments.apps", "-A"), ("patch", "events", "-A"),
        # Leases only in its own namespace
        ("create", "leases.coordination.k8s.io", "-n", "default"), ("delete", "leases.coordination.k8s.io", "-A"),
    ]  # fmt: skip
    wrong = [f"may not {v} {r} {' '.join(s)}" for v, r, *s in allowed if not can_i(kube, SA_USER, v, r, *s)]
    wrong += [f"may {v} {r} {' '.join(s)}" for v, r, *s in denied if can_i(kube, SA_USER, v, r, *s)]
    assert not wrong, "\n".join(wrong)
    # nothing beyond the documented rules: every cluster-wide rule is one of these
    (cr,) = [d for d in manifest_rbac if d["kind"] == "ClusterRole"]
    granted = {(g, r, v) for rule in cr["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}  # fmt: skip
    assert not any(v in ("*", "delete", "deletecollection", "update", "escalate", "bind", "impersonate")
                   or r == "*" for _, r, v in granted), granted  # fmt: skip


def test_pod_patch_policy_lets_the_operator_remove_only_its_gate(kube: Any, manifest_rbac: list[dict],
                                                                 namespace: str, tmp_path: Path) -> None:
    """RBAC grants "patch pods"; manifests/admission.yaml narrows the operator's pod updates to its own gate."""
    kubeconfig = token_kubeconfig(kube, OPERATOR_NS, SA_NAME, tmp_path / "sa.kubeconfig")
    image = "registry.example.com/web:1"
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"schedulingGates": [{"name": GATE}, {"name": "example.com/other"}],
                         "containers": [{"name": "web", "image": image}]}}, namespace)  # fmt: skip

    def patch(ops: list[dict], *, as_operator: bool = True) -> Any:
        who = ["--kubeconfig", str(kubeconfig)] if as_operator else []
        return kube.kubectl(*who, "-n", namespace, "patch", "pod", "web", "--type", "json", "-p", json.dumps(ops),
                            check=False)  # fmt: skip

    evil = [{"op": "replace", "path": "/spec/containers/0/image", "value": "registry.example.com/evil:1"}]
    # the policy takes effect once the API server has loaded it
    kube.wait_for(lambda: "may not change a pod's images" in patch(evil).stderr, timeout=30,
                  message="the pod-patch policy to deny an image change")  # fmt: skip
    for ops, why in [
        ([{"op": "add", "path": "/metadata/labels/owned", "value": "yes"}], "labels, annotations or owners"),
        ([{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}], "labels, annotations or owners"),
        ([{"op": "remove", "path": "/spec/schedulingGates/1"}], "only the schemagate.dev/migration"),
        ([{"op": "add", "path": "/spec/activeDeadlineSeconds", "value": 5}], "placement or deadline"),
    ]:
        r = patch(ops)
        assert r.returncode != 0 and why in r.stderr, (ops, r.stdout, r.stderr)
    r = patch([{"op": "test", "path": "/spec/schedulingGates/0/name", "value": GATE},
               {"op": "remove", "path": "/spec/schedulingGates/0"}])  # fmt: skip
    assert r.returncode == 0, r.stderr
    pod = kube.core().read_namespaced_pod("web", namespace)
    assert [g.name for g in pod.spec.scheduling_gates] == ["example.com/other"]
    assert pod.spec.containers[0].image == image and pod.metadata.labels == {"app": "web"}
    # anyone else (here the admin) is not restricted by this policy
    assert patch([{"op": "add", "path": "/metadata/labels/owned", "value": "yes"}], as_operator=False).returncode == 0


def test_least_rights_migrate_and_release_a_gated_pod(kube: Any, manifest_rbac: list[dict], images: None,
                                                      namespace: str, fresh_db: str, tmp_path: Path) -> None:  # fmt: skip
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
    (dep,) = [d for d in _docs((ROOT / "manifests" / "workload.yaml").read_text()) if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == SA_NAME
    assert dep["metadata"]["namespace"] == OPERATOR_NS
    args = _operator_args(dep)
    assert "--all-namespaces" in args
    kubeconfig = token_kubeconfig(kube, OPERATOR_NS, SA_NAME, tmp_path / "operator.kubeconfig")
    # the token kubeconfig is really least-rights: what admin may do, it may not
    r = kube.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-n", namespace, check=False)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r

    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(gated_deployment("web", "shop", "0003"), namespace)
    kube.wait_for(lambda: len(live_pods(kube, namespace, "app=web")) == 1, timeout=60, message="the gated pod")

    op = Operator(kube, kubeconfig, args, OPERATOR_NS, tmp_path / "operator").start()
    try:
        kube.apply(migration("shop"), namespace)
        o = wait_terminal(kube, namespace, "shop", op)
        st = o["status"]
        assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[:3000] + op.logs()[-3000:]
        assert cond(o, "Ready")["status"] == "True" and st["currentRevision"] == "0003"
        assert st["appliedRevisions"] == ["0001", "0002", "0003"]
        assert set(st["jobs"]) == {"backup", "precheck", "migrate", "verify"}
        assert st["backup"]["sizeBytes"] > 0

        def released() -> bool:
            op.alive()
            ps = live_pods(kube, namespace, "app=web")
            return len(ps) == 1 and not is_gated(ps[0]) and bool(ps[0]["spec"].get("nodeName"))

        kube.wait_for(released, timeout=60, message="the gated pod released and bound")
        ev = events(kube, namespace)
        assert any(e["reason"] == "MigrationReady" and e["involvedObject"]["kind"] == "Pod" for e in ev)
        assert any(e["involvedObject"]["kind"] == "DatabaseMigration" for e in ev)  # the operator's own Events
        # the database Lease was taken and released in the operator's namespace
        leases = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases")["items"]
        assert any(ls["metadata"]["name"] == st["run"]["lease"] for ls in leases), st["run"]
        op.alive()
    finally:
        op.stop()
    log = op.logs()
    assert "released pod" in log, log[-3000:]
    calls = op.requests()
    assert {status for _, _, status in calls} <= {200, 201, 404}, [c for c in calls if c[2] not in (200, 201, 404)]
    done = {(method, _resource(path), status) for method, path, status in calls}
    for expected in (("PATCH", "pods", 200), ("POST", "events", 201), ("POST", "jobs", 201),
                     ("POST", "leases", 201), ("PATCH", "databasemigrations/status", 200),
                     ("GET", "secrets", 200)):  # fmt: skip
        assert expected in done, (expected, sorted(done))
    assert not op.denied_lines(), "the API denied the operator something:\n" + "\n".join(op.denied_lines()[:20])


# ---------------------------------------------------------------------------------------------------------------
# namespace-restricted mode with the chart's per-namespace RBAC


def test_namespace_restricted_mode(kube: Any, images: None, namespace: str, make_db: Any, tmp_path: Path) -> None:
    _install_crd(kube)
    ns_a = namespace
    ns_b = kube.create_namespace("rbac-other")
    ns_op = kube.create_namespace("rbac-operator")
    release = "nsmode"
    cluster_objects: list[tuple[str, str]] = []
    op: Operator | None = None
    try:
        rendered = _docs(kube.helm("template", release, str(CHART), "--namespace", ns_op,
                                   "--set", f"operator.watchNamespaces={{{ns_a}}}").stdout)  # fmt: skip
        rbac_kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        rbac = [d for d in rendered if d["kind"] in rbac_kinds]
        (dep,) = [d for d in rendered if d["kind"] == "Deployment"]
        sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
        # nothing cluster-wide but reading the CRD; the namespaced rules only in A; the Leases in the operator's
        (cr,) = [d for d in rbac if d["kind"] == "ClusterRole"]
        assert [r["resources"] for r in cr["rules"]] == [["customresourcedefinitions"]], cr["rules"]
        assert {d["metadata"].get("namespace") for d in rbac if d["kind"] in ("Role", "RoleBinding")} == {ns_a, ns_op}
        cluster_objects = [(d["kind"], d["metadata"]["name"]) for d in rbac if d["kind"].startswith("Cluster")]
        kube.apply(rbac)
        user = f"system:serviceaccount:{ns_op}:{sa}"
        assert can_i(kube, user, "create", "jobs.batch", "-n", ns_a)
        assert can_i(kube, user, "create", "leases.coordination.k8s.io", "-n", ns_op)
        for verb, res, *scope in (("list", "databasemigrations.schemagate.dev", "-n", ns_b),
                                  ("create", "jobs.batch", "-n", ns_b), ("get", "secrets", "-n", ns_b),
                                  ("watch", "pods", "-A"), ("list", "namespaces"),
                                  ("create", "leases.coordination.k8s.io", "-n", ns_a)):  # fmt: skip
            assert not can_i(kube, user, verb, res, *scope), (verb, res, scope)

        args = _operator_args(dep)
        assert f"--namespace={ns_a}" in args and "--all-namespaces" not in args, args
        kubeconfig = token_kubeconfig(kube, ns_op, sa, tmp_path / "operator.kubeconfig")

        for ns in (ns_b, ns_a):  # B first: it has all the time A takes to be (wrongly) picked up
            secret(kube, ns, "db", {"url": make_db()})
        kube.apply(migration("shop"), ns_b)
        op = Operator(kube, kubeconfig, args, ns_op, tmp_path / "operator").start()
        kube.apply(migration("shop"), ns_a)

        o = wait_terminal(kube, ns_a, "shop", op)
        assert o["status"]["phase"] == "Succeeded", json.dumps(o["status"], indent=1)[:3000] + op.logs()[-3000:]
        assert cond(o, "Ready")["status"] == "True" and o["status"]["currentRevision"] == "0003"
        assert {j["metadata"]["labels"]["schemagate.dev/step"] for j in jobs(kube, ns_a)} == {
            "backup", "precheck", "migrate", "verify"}
        leases = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns_op}/leases")["items"]
        assert any(ls["metadata"]["name"] == o["status"]["run"]["lease"] for ls in leases)

        # B is untouched: only the CRD's never-observed status default, no Job, no Event (the operator never saw it)
        b = get_dbm(kube, ns_b, "shop")
        assert b.get("status") == {"observedGeneration": -1}, b.get("status")
        assert jobs(kube, ns_b) == []
        assert [e for e in events(kube, ns_b) if e.get("source", {}).get("component") == "schemagate"] == []
        op.alive()
    finally:
        if op is not None:
            op.stop()
        for kind, name in cluster_objects:
            _delete(kube, kind, name, None)
        kube.delete_namespace(ns_b)
        kube.delete_namespace(ns_op)
    assert op is not None
    assert f"{ns_b}/" not in op.logs(), [line for line in op.logs().splitlines() if f"{ns_b}/" in line][:10]
    # Kopf lists no Namespaces cluster-wide (handlers: scanning off for exact namespace names), nothing is denied
    assert not op.denied_lines(), "the API denied the operator something:\n" + "\n".join(op.denied_lines()[:20])
