"""The precheck Job as the operator renders it (``core.jobs.build_job``), run for real on the test bed: every
documented ``spec.precheck`` field and both forms of ``spec.database``. The real server gets no database and no
object from the precheck; the throw-away shadow server runs in a sidecar of the Job's pod and is gone after."""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import pytest

from schemagate.contract.dburl import database_name
from schemagate.contract.stepresult import from_log, from_termination_message
from schemagate.contract.target import Target
from schemagate.core import jobs as J
from schemagate.core.model import Migration
from tests.e2e.operator_process import ROOT, RUNNER_IMAGE
from tests.precheck.helpers import databases, execute, query

pytestmark = pytest.mark.e2e

APP_IMAGE = "schemagate.test/wholesale:precheck-job"
SETTINGS = J.JobSettings(runner_image=RUNNER_IMAGE)


def secret(kube: Any, ns: str, name: str, data: dict[str, str]) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def seeded(url: str) -> None:
    from schemagate import demo

    demo.seed_wholesale(url)


def run_precheck_job(kube: Any, ns: str, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Render the precheck Job for ``spec``, apply it (without the owner reference: there is no resource), wait,
    and return the count container's StepResult (its termination message, or the line it printed when that is a
    summary) plus the pod."""
    body = {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": name, "namespace": ns, "uid": "00000000-0000-0000-0000-000000000001",
                         "generation": 1}, "spec": spec}
    m = Migration.from_body(body)
    job = J.build_job(m, "precheck", f"{name}-precheck", 1, SETTINGS)
    job["metadata"].pop("ownerReferences")
    kube.apply(job, ns)
    done = kube.wait_job(ns, job["metadata"]["name"], timeout=300)
    pods = kube.pods(ns, f"job-name={job['metadata']['name']}")
    assert pods, "the Job made no pod"
    pod = pods[-1]
    statuses = {s["name"]: s for s in (pod["status"].get("containerStatuses") or [])
                + (pod["status"].get("initContainerStatuses") or [])}
    term = (statuses.get("count") or {}).get("state", {}).get("terminated") or {}
    msg = term.get("message") or ""
    result = from_termination_message(msg) or {"raw": msg}
    if result.get("truncated"):  # over the pod's share: the whole result is the line the step printed, as the
        # operator reads it (k8s.Kube.whole_result)
        log = kube.core().read_namespaced_pod_log(pod["metadata"]["name"], ns, container="count")
        result = from_log(log, result) or result
    return {"job": done, "pod": pod, "result": result, "statuses": statuses}


def leftovers(kube: Any, ns: str, pod: dict[str, Any], timeout: float = 30) -> list[str]:
    """What the pod left behind after its Job finished: live processes started under the pod's directory (the
    shadow server's postmaster runs with ``-D <pod dir>/.../data``) and shadow server directories in it."""
    import time

    from tests.precheck.test_shadow_server import processes_under

    pod_dir = kube.node.pod_dir(ns, pod["metadata"]["name"])
    assert pod_dir is not None, "the node stand-in does not know the pod"
    deadline = time.monotonic() + timeout
    while True:
        found = processes_under(pod_dir) + [str(p) for p in pod_dir.rglob("schemagate-shadow-*")]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def spec_for(db_spec: dict[str, Any], **precheck: Any) -> dict[str, Any]:
    return {"database": db_spec,
            "migrations": {"image": APP_IMAGE, "directory": "/app", "targetRevision": "head"},
            "precheck": precheck, "jobTemplate": {"activeDeadlineSeconds": 300}}


@pytest.fixture
def app_images(map_image: Any) -> None:
    map_image(RUNNER_IMAGE)
    map_image(APP_IMAGE, paths={"/app": ROOT / "migrations" / "wholesale"})


def _host_form(kube: Any, ns: str, url: str) -> dict[str, Any]:
    u = urllib.parse.urlsplit(url)
    secret(kube, ns, "pg", {"password": urllib.parse.unquote(u.password or "")})
    return {"host": u.hostname, "port": u.port, "name": database_name(url), "user": u.username,
            "passwordFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}}


@pytest.mark.parametrize("form", ["urlFrom", "host"])
def test_default_precheck_job_counts_with_a_sidecar_shadow(form: str, kube: Any, namespace: str, app_images: None,
                                                          fresh_db: str, pg_server: str) -> None:
    seeded(fresh_db)
    if form == "urlFrom":
        secret(kube, namespace, "db", {"url": fresh_db})
        db_spec: dict[str, Any] = {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
    else:
        db_spec = _host_form(kube, namespace, fresh_db)
    before = databases(pg_server)
    out = run_precheck_job(kube, namespace, spec_for(db_spec, maxViolations=1, acceptUnevaluated=["not-a-check"],
                                                     dataShadow={"maxSize": "256Mi"},
                                                     shadowDatabase={"sizeLimit": "512Mi"}), f"pc-{form.lower()}")
    r = out["result"]
    assert r.get("reason") == "ViolationsFound", r
    assert r["data"]["maxViolations"] == 1 and r["data"]["acceptUnevaluated"] == ["not-a-check"]
    counts = {c["name"]: c["count"] for c in r["data"]["checks"]}
    assert sum(counts.values()) > 0 and all(v is not None for v in counts.values()), counts
    assert r["data"]["shadow"]["kind"] == "throw-away-server", r["data"]["shadow"]
    assert r["data"]["shadow"]["shadowServerVersion"].startswith("18")
    assert databases(pg_server) == before  # nothing created on the real server
    assert leftovers(kube, namespace, out["pod"]) == []


def test_a_failing_revision_leaves_nothing_in_the_pod(kube: Any, namespace: str, map_image: Any,
                                                      fresh_db: str, pg_server: str, tmp_path: Any) -> None:
    """shadow-upgrade fails (a revision raises): the Job fails, the sidecar's server and directory are gone."""
    from tests.precheck.shadowproject import make_project

    project = tmp_path / "app"
    make_project(project, ["op.execute('CREATE TABLE t (id int)')", "raise RuntimeError('boom in 0002')"])
    map_image(RUNNER_IMAGE)
    map_image("schemagate.test/raising:job", paths={"/app": project})
    from schemagate.runner.inject.apply import upgrade

    upgrade(Target(str(project / "alembic.ini"), "0001", fresh_db, "DATABASE_URL"))
    secret(kube, namespace, "db", {"url": fresh_db})
    before = databases(pg_server)
    spec = spec_for({"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}})
    spec["migrations"]["image"] = "schemagate.test/raising:job"
    out = run_precheck_job(kube, namespace, spec, "pc-raises")
    assert "Failed" in {c["type"] for c in out["job"]["status"].get("conditions") or [] if c["status"] == "True"}
    upgrade_status = out["statuses"]["shadow-upgrade"]["state"]["terminated"]
    assert upgrade_status["exitCode"] != 0 and "boom in 0002" in upgrade_status.get("message", ""), upgrade_status
    assert leftovers(kube, namespace, out["pod"]) == []
    assert databases(pg_server) == before


def test_derive_false_job_needs_only_read_access(kube: Any, namespace: str, app_images: None, fresh_db: str,
                                                 pg_server: str) -> None:
    """derive: false renders no shadow at all; a role without CREATEDB and with only read access passes."""
    seeded(fresh_db)
    execute(fresh_db, "DROP ROLE IF EXISTS sg_job_reader",
            "CREATE ROLE sg_job_reader LOGIN PASSWORD 'reader-job-pw' NOCREATEDB",
            "GRANT pg_read_all_data TO sg_job_reader")
    u = urllib.parse.urlsplit(fresh_db)
    reader = urllib.parse.urlunsplit((u.scheme, f"sg_job_reader:reader-job-pw@{u.hostname}:{u.port}", u.path,
                                      "", ""))
    secret(kube, namespace, "db", {"url": reader})
    before = databases(pg_server)
    try:
        out = run_precheck_job(kube, namespace, spec_for(
            {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}, derive=False,
            checks=[{"name": "zero-total", "sql": "SELECT count(*) FROM orders WHERE total_amount <= 0"}]), "pc-noderive")
        r = out["result"]
        assert r.get("reason") in ("PrecheckPassed", "ViolationsFound"), r
        assert [c["name"] for c in r["data"]["checks"]] == ["zero-total"]
        assert r["data"]["checks"][0]["count"] == query(
            fresh_db, "SELECT count(*) FROM orders WHERE total_amount <= 0")[0][0]
        assert set(out["statuses"]) == {"count"}
        assert databases(pg_server) == before
    finally:
        execute(fresh_db, "DROP OWNED BY sg_job_reader", "DROP ROLE sg_job_reader")


def test_explicit_shadow_database_job(kube: Any, namespace: str, app_images: None, make_db: Any) -> None:
    real, spare = make_db(), make_db()
    seeded(real)
    secret(kube, namespace, "db", {"url": real})
    secret(kube, namespace, "shadow", {"url": spare})
    out = run_precheck_job(kube, namespace, spec_for(
        {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        shadowDatabase={"urlFrom": {"secretKeyRef": {"name": "shadow", "key": "url"}}}), "pc-explicit")
    r = out["result"]
    assert r.get("reason") == "ViolationsFound", r
    assert r["data"]["shadow"]["kind"] == "explicit-database"
    assert "shadow-server" not in out["statuses"]
    assert query(spare, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                        "'information_schema')") == [(0,)]
