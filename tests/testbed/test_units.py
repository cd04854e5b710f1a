"""Unit tests of the test bed's pure parts (no cluster): certificates, $(VAR) expansion, path rewriting, env
resolution, termination messages, image mappings."""

from __future__ import annotations

import base64
import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.testbed import certs, cluster, podspec
from tests.testbed.podspec import ConfigError, ImageMapping, PathMapper, expand

# -- certificates ---------------------------------------------------------------------------------------------


def _load(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_pki_chain_names_and_usages(tmp_path: Path) -> None:
    pki = certs.generate(tmp_path)
    ca = _load(pki.ca.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for pair in (pki.apiserver, pki.admin, pki.controller_manager, pki.kubelet_client, pki.node_serving):
        cert = _load(pair.cert)
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert (pair.key.stat().st_mode & 0o777) == 0o600

    serving = _load(pki.apiserver.cert)
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.1"}
    eku = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku

    admin = _load(pki.admin.cert)
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    kcm = _load(pki.controller_manager.cert)
    assert kcm.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"

    # the key files load into TLS contexts (what kube-apiserver, the node stand-in and clients do)
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(str(pki.node_serving.cert), str(pki.node_serving.key))
    assert b"PUBLIC KEY" in pki.sa_pub.read_bytes()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert isinstance(load_pem_private_key(pki.sa_key.read_bytes(), None), ec.EllipticCurvePrivateKey)


# -- $(VAR) expansion (cases from Kubernetes' expansion_test.go) ----------------------------------------------

ENV = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    "given,expected",
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)-1", "A-1"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_B)", "$(VAR_B)"),
        ("$$$(VAR_A)", "$A"),
        ("f000-$$VAR_A", "f000-$VAR_A"),
        ("foo\\$(VAR_C)bar", "foo\\Cbar"),
        ("$(VAR_REF)", "$(VAR_A)"),  # no recursion
        ("$(VAR_EMPTY)", ""),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$(VAR_A", "$(VAR_A"),
        ("$VAR_A", "$VAR_A"),
        ("$", "$"),
        ("$()", "$()"),
        ("$(VAR_A)$(VAR_B)", "AB"),
        ("echo $(HOME)", "echo $(HOME)"),
    ],
)
def test_expand(given: str, expected: str) -> None:
    assert expand(given, ENV) == expected


# -- path rewriting -------------------------------------------------------------------------------------------


def test_path_mapper_rewrites_whole_paths_once() -> None:
    m = PathMapper({
        "/work": "/tmp/pod/volumes/work",
        "/work/cache": "/tmp/pod/volumes/cache",
        "/app": "/work/main/examples/app",  # the local path contains a container path: no double rewrite
        "/dev/termination-log": "/tmp/pod/c/termination-log",
    })
    r = m.rewrite
    assert r("/work") == "/tmp/pod/volumes/work"
    assert r("/work/x.json") == "/tmp/pod/volumes/work/x.json"
    assert r("/work/cache/y") == "/tmp/pod/volumes/cache/y"  # longest wins
    assert r("--workdir=/work") == "--workdir=/tmp/pod/volumes/work"
    assert r("cd /app && ./run.sh") == "cd /work/main/examples/app && ./run.sh"
    assert r("/app/alembic.ini") == "/work/main/examples/app/alembic.ini"
    assert r("/workdir /apple /app-data /app.py") == "/workdir /apple /app-data /app.py"
    assert r("postgresql://u:p@db:5432/app") == "postgresql://u:p@db:5432/app"
    assert r("/schemagate/app") == "/schemagate/app"
    assert r("/app:/work") == "/work/main/examples/app:/tmp/pod/volumes/work"  # PATH-like lists
    assert r("'/work/a b'") == "'/tmp/pod/volumes/work/a b'"
    assert r("--termination-log /dev/termination-log") == "--termination-log /tmp/pod/c/termination-log"
    assert m.local("/work/cache/z") == "/tmp/pod/volumes/cache/z"
    assert m.local("/etc/hosts") == "/etc/hosts"
    assert PathMapper({}).rewrite("/anything") == "/anything"


def test_path_mapper_rejects_root_and_relative() -> None:
    with pytest.raises(ValueError):
        PathMapper({"/": "/tmp/x"})
    with pytest.raises(ValueError):
        PathMapper({"work": "/tmp/x"})


# -- env ----------------------------------------------------------------------------------------------------------

POD = {
    "metadata": {"name": "p-1", "namespace": "ns1", "uid": "u-1", "labels": {"app": "shop"},
                 "annotations": {"a/b": "c"}},
    "spec": {"nodeName": "testbed-node", "serviceAccountName": "runner"},
}


def _lookup(objs: dict[tuple[str, str], dict]):
    return lambda kind, name: objs.get((kind, name))


def test_container_env_sources_and_order() -> None:
    objs = {
        ("Secret", "db"): {"data": {"url": base64.b64encode(b"postgresql://u:pw@db/app").decode()}},
        ("ConfigMap", "cfg"): {"data": {"LEVEL": "debug", "bad=key": "x", "TARGET": "head"}},
    }
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TARGET", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "TARGET"}}},
            {"name": "WHERE", "value": "$(NS)/$(POD) at $(CFG_LEVEL) $(LATER) $$(NS)"},
            {"name": "LATER", "value": "x"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
        ],
        "resources": {"requests": {"memory": "64Mi"}},
    }
    env = podspec.container_env(POD, container, _lookup(objs), service_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1"},
                                node_allocatable={"cpu": "2"})
    d = dict(env)
    assert [k for k, _ in env][:3] == ["KUBERNETES_SERVICE_HOST", "CFG_LEVEL", "CFG_TARGET"]
    assert "CFG_bad=key" not in d
    assert d["DATABASE_URL"] == "postgresql://u:pw@db/app"
    assert d["POD"] == "p-1" and d["NS"] == "ns1" and d["APP"] == "shop" and d["TARGET"] == "head"
    assert d["WHERE"] == "ns1/p-1 at debug $(LATER) $(NS)"  # only earlier variables, $$ escapes
    assert "OPT" not in d
    assert d["CPU"] == "2" and d["MEM"] == "64"


def test_container_env_missing_objects_are_config_errors() -> None:
    c = {"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}]}
    with pytest.raises(ConfigError, match='secret "db" not found'):
        podspec.container_env(POD, c, _lookup({}))
    with pytest.raises(ConfigError, match="couldn't find key url"):
        podspec.container_env(POD, c, _lookup({("Secret", "db"): {"data": {}}}))
    c2 = {"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}
    with pytest.raises(ConfigError):
        podspec.container_env(POD, c2, _lookup({}))
    c3 = {"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]}
    with pytest.raises(ConfigError, match="unsupported fieldRef"):
        podspec.container_env(POD, c3, _lookup({}))


def test_field_refs() -> None:
    assert podspec.field_ref(POD, "metadata.uid") == "u-1"
    assert podspec.field_ref(POD, "spec.nodeName") == "testbed-node"
    assert podspec.field_ref(POD, "spec.serviceAccountName") == "runner"
    assert podspec.field_ref(POD, "status.podIP") == "127.0.0.1"
    assert podspec.field_ref(POD, "metadata.annotations['a/b']") == "c"
    assert podspec.field_ref(POD, "metadata.labels") == 'app="shop"'


# -- images and argv --------------------------------------------------------------------------------------------


def test_image_mapping_and_argv() -> None:
    maps = [ImageMapping("*"), ImageMapping("registry.example.com/shop:*", entrypoint=["python"], cmd=["app.py"]),
            ImageMapping("python:3.12*", cmd=["python3"])]
    assert podspec.find_image_mapping("registry.example.com/shop:1.2", maps) is maps[1]
    assert podspec.find_image_mapping("docker.io/library/python:3.12-slim", maps) is maps[2]
    assert podspec.find_image_mapping("other", maps) is maps[0]
    assert podspec.find_image_mapping("other", []) is None
    shop = maps[1]
    assert podspec.effective_argv({"command": ["sh", "-c"], "args": ["true"]}, shop) == ["sh", "-c", "true"]
    assert podspec.effective_argv({"args": ["x.py"]}, shop) == ["python", "x.py"]
    assert podspec.effective_argv({}, shop) == ["python", "app.py"]
    assert podspec.effective_argv({"command": ["a"]}, shop) == ["a"]
    assert podspec.effective_argv({}, None) == []


# -- termination messages ----------------------------------------------------------------------------------------


def test_termination_message(tmp_path: Path) -> None:
    msg, logf = tmp_path / "msg", tmp_path / "log"
    msg.write_bytes(b"")
    logf.write_text("".join(f"line {i}\n" for i in range(200)))
    assert podspec.termination_message(msg, "File", 1, logf) == ""
    fallback = podspec.termination_message(msg, "FallbackToLogsOnError", 1, logf)
    assert fallback.splitlines() == [f"line {i}" for i in range(120, 200)]  # last 80 lines
    assert podspec.termination_message(msg, "FallbackToLogsOnError", 0, logf) == ""  # only on failure
    logf.write_text("x" * 5000)
    assert len(podspec.termination_message(msg, "FallbackToLogsOnError", 2, logf)) == 2048
    msg.write_text("a" * 100 + "b" * 4096)
    assert podspec.termination_message(msg, "FallbackToLogsOnError", 1, logf) == "b" * 4096  # the last 4096
    msg.write_text('{"outcome": "Succeeded"}')
    assert podspec.termination_message(msg, "File", 0, None) == '{"outcome": "Succeeded"}'
    assert podspec.termination_message(tmp_path / "missing", "File", 0, None) == ""
    # the pod's 12 KiB are shared: in a pod of 7 containers each keeps the first 1755 bytes of its message
    msg.write_text("c" * 2000 + "d" * 2000)
    assert podspec.termination_message(msg, "File", 0, None, containers=7) == "c" * 1755
    assert podspec.termination_message(msg, "File", 0, None, containers=3) == "c" * 2000 + "d" * 2000


# -- wiring ---------------------------------------------------------------------------------------------------------


def test_version_pin_matches_build_script() -> None:
    text = (Path(cluster.__file__).parent / "build.sh").read_text()
    m = re.search(r'K8S_VERSION="\$\{K8S_VERSION:-(v[0-9.]+)\}"', text)
    assert m and m.group(1) == cluster.DEFAULT_K8S_VERSION


def test_missing_binaries_message_names_the_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMAGATE_TESTBIN", str(tmp_path))
    missing = cluster.missing_binaries()
    assert set(missing) == set(cluster.BINARIES)
    hint = cluster.install_hint(missing)
    assert "Go >= 1.25" in hint and "npm" in hint and "kube-apiserver" in hint and "make testbed" in hint
    monkeypatch.setenv("PATH", str(tmp_path))  # neither go nor npm
    with pytest.raises(cluster.BinariesMissing, match="`go` was not found"):
        cluster.ensure_binaries(build=True)
    with pytest.raises(cluster.BinariesMissing, match="Go >= 1.25"):
        cluster.ensure_binaries(build=False)


# -- process hygiene -------------------------------------------------------------------------------------------------


def test_reap_leftovers_kills_processes_of_a_dead_owner(tmp_path: Path) -> None:
    import json
    import subprocess
    import time

    run = tmp_path / "run-20200101-000000-1"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / "owner.json").write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (run / "pids").write_text(json.dumps({"pid": orphan.pid, "start": cluster._proc_start_time(orphan.pid)}) + "\n")
    live_run = tmp_path / "run-20200101-000000-2"  # owned by this (live) process: left alone
    live_run.mkdir()
    (live_run / "owner.json").write_text(
        json.dumps({"pid": __import__("os").getpid(), "start": cluster._proc_start_time(__import__("os").getpid())}))
    keeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (live_run / "pids").write_text(json.dumps({"pid": keeper.pid, "start": cluster._proc_start_time(keeper.pid)}))
    try:
        assert cluster.reap_leftovers(tmp_path) == [orphan.pid]
        assert orphan.wait(timeout=5) == -9
        assert (run / "stopped").exists()
        time.sleep(0.1)
        assert keeper.poll() is None
    finally:
        keeper.kill()
        orphan.kill()


def test_failed_start_reports_component_log_tails(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    for b in cluster.BINARIES:
        script = bins / b
        script.write_text(f"#!/bin/sh\necho \"{b}: cannot listen: address already in use (simulated)\" >&2\nexit 3\n")
        script.chmod(0o755)
    c = cluster.Cluster(bin_dir=bins, base_dir=tmp_path / "runs", start_timeout=10)
    with pytest.raises(cluster.ClusterError) as err:
        c.start()
    text = str(err.value)
    assert "etcd exited while waiting for etcd /health" in text
    assert "etcd: cannot listen: address already in use (simulated)" in text
    assert str(c.run_dir) in text
    assert (c.run_dir / "stopped").exists()
    # a port clash (another session took the port between free_port() and bind) is retried with new ports
    starts = [line for line in (c.run_dir / "logs" / "etcd.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(starts) == 3 and len({s.split("--listen-client-urls=")[1].split()[0] for s in starts}) == 3


# -- the node stand-in's informer: 410 Gone and reconnects -------------------------------------------------------------


class _Resp:
    def __init__(self, body: bytes = b"", lines: list[dict] | None = None):
        self.data = body
        self._lines = lines or []

    def stream(self, amt=None, decode_content=False):
        import json as _json

        for ev in self._lines:
            yield (_json.dumps(ev) + "\n").encode()

    def release_conn(self) -> None:
        pass


def _obj(name: str, rv: str) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "uid": name}}


def test_informer_relists_on_410_and_rewatches_after_errors() -> None:
    import json as _json
    import threading

    from tests.testbed.node import Informer

    stop = threading.Event()
    calls: list[dict] = []
    lists = iter([
        {"metadata": {"resourceVersion": "10"}, "items": [_obj("a", "5"), _obj("b", "6")]},
        {"metadata": {"resourceVersion": "30"}, "items": [_obj("a", "5"), _obj("c", "21")]},
    ])
    watches = iter([
        [{"type": "ADDED", "object": _obj("c", "11")}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}],
        ConnectionResetError("peer went away"),
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
        "block",
    ])

    def list_fn(**kw):
        calls.append(kw)
        if not kw.get("watch"):
            return _Resp(_json.dumps(next(lists)).encode())
        w = next(watches)
        if isinstance(w, Exception):
            raise w
        if w == "block":
            stop.set()
            return _Resp()
        return _Resp(lines=w)

    events: list[tuple[str, str]] = []
    inf = Informer("test", list_fn, lambda t, o: events.append((t, o["metadata"]["name"])), stop)
    inf.run()  # in this thread; returns once `stop` is set
    assert events == [("SYNC", "a"), ("SYNC", "b"), ("ADDED", "c"),
                      ("DELETED", "b"), ("SYNC", "a"), ("SYNC", "c")]
    watch_rvs = [c["resource_version"] for c in calls if c.get("watch")]
    assert watch_rvs == ["10", "12", "12", "30"]  # resumed after the bookmark; relisted after 410
    assert all(c.get("allow_watch_bookmarks") for c in calls if c.get("watch"))
    assert sorted(o["metadata"]["name"] for o in inf.items()) == ["a", "c"]
    assert inf.relists == 2
