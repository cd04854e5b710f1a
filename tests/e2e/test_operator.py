"""The operator on the real test bed (kube-apiserver + kube-controller-manager + etcd + the node stand-in).

The operator runs as a subprocess (``kopf run -m schemagate.handlers``) so tests can kill and restart it. Step Jobs
run through the node stand-in as local processes: the operator image and the application image both map to the
local virtualenv; the application image additionally maps ``/app`` to an example project in ``migrations/``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.operator_process import (  # noqa: F401 (re-exported)
    LEASE_NS,
    ROOT,
    RUNNER_IMAGE,
    Operator,
    wait_established,
)

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def crd(kube: Any) -> None:
    kube.kubectl("apply", "-f", str(ROOT / "manifests/crd.yaml"), "-f", str(ROOT / "manifests/restore-crd.yaml"))
    wait_established(kube, "databasemigrations.schemagate.dev", "databaserestores.schemagate.dev")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NS}})


@pytest.fixture(scope="module")
def operator(kube: Any, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(kube, tmp_path_factory.mktemp("operator")).start()
    yield op
    op.stop()


@pytest.fixture
def images(map_image: Any) -> Any:
    """Map the operator image to the venv and return a helper mapping an app image to a migrations/ project."""
    map_image(RUNNER_IMAGE)

    def app(project: str, image: str | None = None) -> str:
        image = image or f"schemagate.test/{project}:e2e"
        map_image(image, paths={"/app": ROOT / "migrations" / project})
        return image

    return app


def secret(kube: Any, ns: str, name: str, data: dict[str, str]) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def dbm(name: str, image: str = "schemagate.test/foodtruck:e2e", secret_name: str = "db", **spec: Any) -> dict:
    s: dict[str, Any] = {
        "database": {"urlFrom": {"secretKeyRef": {"name": secret_name, "key": "url"}}},
        "migrations": {"image": image, "directory": "/app", "targetRevision": "head"},
        "backup": {"enabled": True, "volume": {"emptyDir": {}}},
        "lockTimeout": "2s",
        "jobTemplate": {"activeDeadlineSeconds": 300},
    }
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(s.get(k), dict):
            s[k] = {**s[k], **v}
        else:
            s[k] = v
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": name},
            "spec": s}


def get(kube: Any, ns: str, name: str) -> dict:
    return kube.custom().get_namespaced_custom_object("schemagate.dev", "v1alpha1", ns, "databasemigrations", name)


def wait_phase(kube: Any, ns: str, name: str, phases: tuple[str, ...] | str, timeout: float = 240,
               op: Operator | None = None) -> dict:
    phases = (phases,) if isinstance(phases, str) else phases

    def check() -> dict | None:
        if op is not None and op.proc is not None and op.proc.poll() is not None:
            raise AssertionError("the operator exited:\n" + op.logs()[-4000:])
        o = get(kube, ns, name)
        st = o.get("status") or {}
        return o if st.get("phase") in phases and st.get("observedGeneration") == o["metadata"]["generation"] \
            else None

    try:
        return kube.wait_for(check, timeout=timeout, interval=0.2, message=f"{name} phase in {phases}")
    except AssertionError:
        o = get(kube, ns, name)
        raise AssertionError(f"{name}: status {json.dumps(o.get('status'), indent=1)[:3000]}\n"
                             + (op.logs()[-3000:] if op else "")) from None


def jobs(kube: Any, ns: str) -> list[dict]:
    r = kube.batch().list_namespaced_job(ns, label_selector="app.kubernetes.io/managed-by=schemagate",
                                         _preload_content=False)
    return json.loads(r.data)["items"]


def cond(o: dict, t: str) -> dict:
    return next(c for c in o["status"]["conditions"] if c["type"] == t)


def events(kube: Any, ns: str, name: str) -> list[dict]:
    r = kube.core().list_namespaced_event(ns, field_selector=f"involvedObject.name={name}", _preload_content=False)
    return json.loads(r.data)["items"]


# ---------------------------------------------------------------------------------------------------------------
# API validation (no operator needed)


BAD_OBJECTS = [
    ("no spec.database", lambda s: s.pop("database"), "spec.database"),
    ("no migrations.image", lambda s: s["migrations"].pop("image"), "spec.migrations.image"),
    ("both url and host", lambda s: s["database"].update(host="pg", name="d", user="u",
                                                          passwordFrom={"secretKeyRef": {"name": "p", "key": "k"}}),
     "spec.database"),
    ("neither url nor host", lambda s: s.update(database={}), "spec.database"),
    ("host without password", lambda s: s.update(database={"host": "pg", "name": "d", "user": "u"}), "spec.database"),
    ("bad revision id", lambda s: s["migrations"].update(targetRevision="head; drop table x"),
     "spec.migrations.targetRevision"),
    ("bad lock timeout", lambda s: s.update(lockTimeout="5 minutes"), "spec.lockTimeout"),
    ("bad statement timeout", lambda s: s.update(statementTimeout="-1s"), "spec.statementTimeout"),
    ("negative maxViolations", lambda s: s.update(precheck={"maxViolations": -1}), "spec.precheck.maxViolations"),
    ("duplicate check names", lambda s: s.update(precheck={"checks": [{"name": "a", "sql": "select 0"},
                                                                     {"name": "a", "sql": "select 1"}]}),
     "spec.precheck.checks"),
    ("bad sslMode", lambda s: s.update(database={"host": "pg", "name": "d", "user": "u", "sslMode": "sometimes",
                                                 "passwordFrom": {"secretKeyRef": {"name": "p", "key": "k"}}}),
     "spec.database.sslMode"),
    ("port out of range", lambda s: s.update(database={"host": "pg", "port": 70000, "name": "d", "user": "u",
                                                       "passwordFrom": {"secretKeyRef": {"name": "p", "key": "k"}}}),
     "spec.database.port"),
    ("backup without volume", lambda s: s.update(backup={"enabled": True}), "spec.backup"),
    ("relative directory", lambda s: s["migrations"].update(directory="app"), "spec.migrations.directory"),
    ("negative deadline", lambda s: s.update(jobTemplate={"activeDeadlineSeconds": 0}),
     "spec.jobTemplate.activeDeadlineSeconds"),
    ("bad url env name", lambda s: s["migrations"].update(databaseUrlEnv="1-URL"), "spec.migrations.databaseUrlEnv"),
    ("urlFrom without key", lambda s: s["database"]["urlFrom"]["secretKeyRef"].pop("key"),
     "spec.database.urlFrom.secretKeyRef.key"),
    ("suspend not a bool", lambda s: s.update(suspend="yes"), "spec.suspend"),
]


def test_bad_objects_are_rejected_naming_the_field(kube: Any, crd: None, namespace: str) -> None:
    failures = []
    for i, (what, mutate, field) in enumerate(BAD_OBJECTS):
        obj = dbm(f"bad-{i}")
        mutate(obj["spec"])
        r = kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)
        if r.returncode == 0 or field not in r.stderr:
            failures.append(f"{what}: rc={r.returncode} stderr={r.stderr.strip()[:300]}")
    assert not failures, "\n".join(failures)
    assert len(BAD_OBJECTS) >= 10
    # and a good one is accepted, defaults applied
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dbm("good")))
    o = get(kube, namespace, "good")
    assert o["spec"]["migrations"]["databaseUrlEnv"] == "DATABASE_URL" and o["spec"]["suspend"] is False
    explain = kube.kubectl("explain", "databasemigrations.spec.precheck.maxViolations").stdout
    assert "Blocked" in explain


# ---------------------------------------------------------------------------------------------------------------
# Operator behaviour that needs no database


def test_missing_secret_then_created(kube: Any, operator: Operator, images: Any, namespace: str) -> None:
    images("foodtruck")
    kube.apply(dbm("nosecret", suspend=False), namespace)
    o = wait_phase(kube, namespace, "nosecret", "Pending", op=operator, timeout=60)
    kube.wait_for(lambda: cond(get(kube, namespace, "nosecret"), "Ready")["reason"] == "SecretNotFound", timeout=30)
    o = get(kube, namespace, "nosecret")
    assert cond(o, "Stalled")["status"] == "True" and 'Secret "db" not found' in cond(o, "Ready")["message"]
    assert o["status"]["lastError"]["reason"] == "SecretNotFound"
    assert jobs(kube, namespace) == []
    assert any(e["reason"] == "SecretNotFound" and e["type"] == "Warning" for e in events(kube, namespace, "nosecret"))
    # no credential and no Kopf annotation on the object
    assert "kopf.zalando.org/last-handled-configuration" not in (o["metadata"].get("annotations") or {})
    assert not o["metadata"].get("finalizers")
    # the Secret appears: the run starts by itself (polling)
    secret(kube, namespace, "db", {"url": "postgresql://u:hunter2@127.0.0.1:1/none"})
    kube.wait_for(lambda: jobs(kube, namespace), timeout=30, message="a backup Job")
    assert "hunter2" not in json.dumps(jobs(kube, namespace)) + json.dumps(get(kube, namespace, "nosecret"))


def test_suspend_creates_nothing_and_delete_collects_jobs(kube: Any, operator: Operator, images: Any,
                                                          namespace: str) -> None:
    images("foodtruck")
    secret(kube, namespace, "db", {"url": "postgresql://u:p@127.0.0.1:1/none"})
    kube.apply(dbm("sleepy", suspend=True), namespace)
    o = wait_phase(kube, namespace, "sleepy", "Suspended", op=operator, timeout=60)
    assert cond(o, "Ready")["status"] == "False" and cond(o, "Ready")["reason"] == "Suspended"
    time.sleep(2)
    assert jobs(kube, namespace) == []
    kube.kubectl("patch", "-n", namespace, "dbm/sleepy", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    kube.wait_for(lambda: jobs(kube, namespace), timeout=30, message="a Job after resume")
    (job,) = jobs(kube, namespace)
    assert job["metadata"]["name"] == "sleepy-1-backup-1"  # same run: generation 1's names
    ref = job["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "DatabaseMigration" and ref["controller"] is True
    kube.kubectl("delete", "-n", namespace, "dbm/sleepy", "--wait=true")
    kube.wait_for(lambda: jobs(kube, namespace) == [], timeout=90, message="Jobs garbage-collected")


def test_printer_columns(kube: Any, operator: Operator, images: Any, namespace: str) -> None:
    images("foodtruck")
    kube.apply(dbm("cols", suspend=True), namespace)
    wait_phase(kube, namespace, "cols", "Suspended", op=operator, timeout=60)
    out = kube.kubectl("get", "-n", namespace, "dbm", "cols").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "TARGET", "CURRENT", "VIOLATIONS", "READY", "AGE"]
    assert "Suspended" in out.splitlines()[1]
