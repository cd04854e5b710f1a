# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""Faults through the operator's Jobs on the test bed, and the precheck's throw-away shadow per failure point.

Real faults on real PostgreSQL (``pg_terminate_backend``, a private embedded server stopped and started): the
DatabaseMigration converges to Succeeded with each revision applied exactly once (the slow project,
tests/pipeline/projects/graph/slow.ini, logs every revision in its own transaction). Shadow cleanup: the precheck's
throw-away server lives in the ``shadow`` emptyDir of the precheck pod; the node stand-in keeps each pod's
directories after the pod is gone, so a test looks there and at the machine's processes: no server directory, no
process of that pod, no ``_sgshadow_`` database on the real server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_operator import (  # noqa: F401
    ROOT,
    RUNNER_IMAGE,
    Operator,
    cond,
    crd,
    dbm,
    get,
    images,
    jobs,
    operator,
    secret,
    wait_phase,
)
from tests.pipeline.helpers import (
    execute,
    private_server,
    processes_naming,
    query,
    scalar,
    shadow_servers,
    wait_for_backend,
)

pytestmark = pytest.mark.e2e
GRAPH = ROOT / "tests" / "pipeline" / "projects" / "graph"
SLEEPER = {"name": "sleeper", "sql": "SELECT 0 * count(*) FROM pg_sleep(2)"}


@pytest.fixture
def slow_image(map_image: Any, images: Any) -> str:
    """The slow project as an application image (``/app`` is tests/pipeline/projects/graph, config slow.ini)."""
    image = "schemagate.test/slow:e2e"
    map_image(image, paths={"/app": GRAPH})
    return image


def slow_dbm(name: str, image: str, **spec: Any) -> dict:
    return dbm(name, image=image, migrations={"image": image, "directory": "/app", "config": "slow.ini",
                                             "targetRevision": "head"}, **spec)


def applied_once(url: str) -> None:
    assert query(url, "SELECT revision, count(*) FROM applied_log GROUP BY 1 ORDER BY 1") == [
        ("0001", 1), ("0002", 1), ("0003", 1)]
    assert scalar(url, "SELECT version_num FROM alembic_version") == "0003"


def pod_dirs(kube: Any, ns: str, job: str) -> list[Path]:
    """The node stand-in's directories of the pods of ``job`` (kept after the pods are gone)."""
    return sorted((kube.node.pods_dir / ns).glob(f"{job}-*"))


def assert_no_shadow_left(kube: Any, ns: str, url: str, precheck_jobs: list[str]) -> None:
    """No throw-away server directory in any precheck pod's shadow emptyDir, no process of those pods, no
    ``_sgshadow_`` database on the real server (waits for the pods to stop: the kubelet stops them)."""
    dirs = [d for j in precheck_jobs for d in pod_dirs(kube, ns, j)]
    assert dirs, f"no pod directory for {precheck_jobs}"

    def clean() -> bool:
        return not any(processes_naming(d) or list((d / "volumes" / "shadow").glob("schemagate-shadow-*"))
                       for d in dirs)

    kube.wait_for(clean, timeout=120, message="the precheck pods' shadow servers to be gone")
    from schemagate.contract.dburl import with_database

    assert query(with_database(url, "postgres"), "SELECT datname FROM pg_database WHERE datname LIKE "
                                                 "'%\\_sgshadow\\_%'") == []


@pytest.fixture
def private_pg() -> Iterator[Any]:
    """A private server (the shared one must stay up) a test may stop and start; ``.db_url`` is its database."""
    with private_server("faulty") as pg:
        yield pg


# ---------------------------------------------------------------------------------------------------------------
# shadow cleanup per failure point


def test_image_pull_failure_of_the_precheck_leaves_no_shadow(kube: Any, operator: Operator, images: Any,
                                                             map_image: Any, namespace: str, fresh_db: str) -> None:
    """The application image is not on the node (``ErrImageNeverPull``, emulated by the node stand-in, which
    pulls nothing): the precheck pod's shadow-server sidecar has started its throw-away server and ``prepare``
    restored the schema when ``shadow-upgrade`` cannot start. The step fails at once with the kubelet's reason,
    and the stuck Job is stopped, so its pod and throw-away server go now (not at the Job's deadline)."""
    images("foodtruck")
    from schemagate import demo

    demo.seed_foodtruck(fresh_db)
    image = "schemagate.test/never-built:e2e"
    map_image(image, absent=True)
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("nopull", image=image, backup={"enabled": False}), namespace)
    o = wait_phase(kube, namespace, "nopull", ("Failed", "Succeeded", "Blocked"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Failed" and cond(o, "Ready")["reason"] == "ErrImageNeverPull", o["status"]
    job = o["status"]["jobs"]["precheck"]
    assert_no_shadow_left(kube, namespace, fresh_db, [job])
    assert scalar(fresh_db, "SELECT version_num FROM alembic_version") == "0001"  # untouched


def bad_shadow_template(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``initdb`` template in ``directory`` (``SCHEMAGATE_SHADOW_TEMPLATE_DIR``) made by the real code path, with
    ``max_connections = 0`` appended to its postgresql.conf: every throw-away server copied from it exits at
    start (``FATAL: configuration file ... contains errors``)."""
    from schemagate.runner import shadowserver

    monkeypatch.setenv(shadowserver.TEMPLATE_DIR_ENV, str(directory))
    shadowserver.ShadowServer().start().stop()  # initdb, saved as the template, started once, removed
    monkeypatch.delenv(shadowserver.TEMPLATE_DIR_ENV)
    (template,) = directory.glob(shadowserver.TEMPLATE_PREFIX + "*")
    with open(template / "data" / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write("\nmax_connections = 0\n")


def test_a_crash_looping_shadow_server_fails_the_precheck_at_once(kube: Any, operator: Operator, images: Any,
                                                                  map_image: Any, namespace: str, fresh_db: str,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The precheck pod's shadow-server sidecar really fails at start, every time: its PostgreSQL refuses the
    setting ``max_connections = 0`` (planted in the operator image's ``initdb`` template, the one the sidecar
    copies). The node stand-in restarts the sidecar (``restartPolicy: Always``) with back-off, as the kubelet does,
    while ``prepare`` waits for a server that never comes. After its third restart the run fails with reason
    ``CrashLoopBackOff`` and a message naming the container, its last exit and PostgreSQL's own error; the Job is
    ended (deadline 1 s; its own is 3600 s), no throw-away server is left and nothing is applied."""
    images("foodtruck")
    from schemagate import demo

    demo.seed_foodtruck(fresh_db)
    bad_shadow_template(tmp_path / "templates", monkeypatch)
    # the template as a file of the operator image (an env value under /tmp would be rewritten to the pod's /tmp)
    map_image(RUNNER_IMAGE, paths={"/templates": tmp_path / "templates"},
              env={"SCHEMAGATE_SHADOW_TEMPLATE_DIR": "/templates"})
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("loop", backup={"enabled": False}, jobTemplate={"activeDeadlineSeconds": 3600}), namespace)
    o = wait_phase(kube, namespace, "loop", ("Failed", "Succeeded", "Blocked"), op=operator, timeout=300)
    ready = cond(o, "Ready")
    assert o["status"]["phase"] == "Failed" and ready["reason"] == "CrashLoopBackOff", o["status"]
    assert "container shadow-server" in ready["message"] and "last exit: Error, exit code" in ready["message"]
    assert '"max_connections"' in ready["message"], ready  # PostgreSQL's words, from the sidecar's StepResult
    job = o["status"]["jobs"]["precheck"]

    def ended() -> dict | None:
        j = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}")
        failed = [c for c in (j["status"].get("conditions") or []) if c["type"] == "Failed" and c["status"] == "True"]
        return j if failed else None

    j = kube.wait_for(ended, timeout=120, message=f"job {job} Failed")
    assert j["spec"]["activeDeadlineSeconds"] == 1, j["spec"]
    assert next(c for c in j["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    # the sidecar really ran and failed several times: one log per run in the stand-in's pod directory
    runs = [log for d in pod_dirs(kube, namespace, job) for log in (d / "logs" / "shadow-server").glob("*.log")]
    assert len(runs) >= 3, runs
    assert_no_shadow_left(kube, namespace, fresh_db, [job])
    assert scalar(fresh_db, "SELECT version_num FROM alembic_version") == "0001"  # untouched


# ---------------------------------------------------------------------------------------------------------------
# faults through the operator's Jobs: one per step kind, on a private server (it may be stopped and started)

BACKENDS = {
    # the backup's pg_dump copying the large table
    "backup": "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY public.big %' AND pid <> pg_backend_pid()",
    # the precheck's counting session (count container) running the sleeping user check
    "precheck": "SELECT pid FROM pg_stat_activity WHERE application_name = 'schemagate-precheck' "
                "AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()",
    # revision 0002 sleeping in its transaction (migrate container)
    "migrate": "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' AND pid <> pg_backend_pid()",
    # verify's counting session running the user check again
    "verify": "SELECT pid FROM pg_stat_activity WHERE application_name = 'schemagate-verify' "
              "AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()",
}


def wait_backend(kube: Any, ns: str, name: str, url: str, step: str, timeout: float = 300) -> int:
    """The pid of the step's backend (see BACKENDS); fails at once when the resource has finished first."""

    def finished() -> str | None:
        phase = (get(kube, ns, name).get("status") or {}).get("phase")
        return f"{name} finished ({phase})" if phase in ("Succeeded", "Failed", "Blocked") else None

    return wait_for_backend(url, BACKENDS[step], timeout, finished)


def restart(pg: Any) -> None:
    """Stop the server (fast: every backend gets 57P01, new connections are refused) and start it 2 s later."""
    pg.stop("fast")
    time.sleep(2)
    pg.start()


@pytest.mark.parametrize(("step", "fault"), [
    ("backup", "terminate"), ("precheck", "restart"), ("migrate", "terminate"), ("migrate", "restart"),
    ("verify", "terminate"),
])
def test_a_transient_fault_in_a_step_job_converges(kube: Any, operator: Operator, slow_image: str,
                                                    namespace: str, private_pg: Any, step: str, fault: str) -> None:
    """The fault hits the step's Job while it works on the real database; the DatabaseMigration still reaches
    Succeeded without a manual retry (migrate retries inside its Job; the read-only steps and the backup end
    TransientError and the operator runs a new Job), each revision is applied once and no shadow is left."""
    url = private_pg.db_url
    if step == "backup":  # something for pg_dump to copy for a while
        execute(url, "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400000) g")
    secret(kube, namespace, "db", {"url": url})
    name = f"{step}-{fault}"
    kube.apply(slow_dbm(name, slow_image, precheck={"checks": [SLEEPER]}), namespace)
    pid = wait_backend(kube, namespace, name, url, step)
    if fault == "terminate":
        execute(url, f"SELECT pg_terminate_backend({pid})")
    else:
        restart(private_pg)
    o = wait_phase(kube, namespace, name, ("Succeeded", "Failed", "Blocked"), op=operator, timeout=600)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    applied_once(url)
    step_jobs = sorted(j["metadata"]["name"] for j in jobs(kube, namespace) if f"-{step}-" in j["metadata"]["name"])
    if step == "migrate":  # retried inside its one Job
        assert step_jobs == [f"{name}-1-migrate-1"], step_jobs
    else:  # a new Job after the transient failure
        assert len(step_jobs) >= 2, step_jobs
    precheck_jobs = [j["metadata"]["name"] for j in jobs(kube, namespace) if "-precheck-" in j["metadata"]["name"]]
    assert_no_shadow_left(kube, namespace, url, precheck_jobs)


def test_precheck_job_deleted_mid_run_leaves_no_shadow(kube: Any, operator: Operator, slow_image: str,
                                                       namespace: str, private_pg: Any) -> None:
    """The precheck Job is deleted (background propagation, as ``kubectl delete job``) while its pod counts:
    the pod is deleted, its shadow-server sidecar stops the throw-away server; the operator creates the Job
    again and the run converges."""
    url = private_pg.db_url
    secret(kube, namespace, "db", {"url": url})
    kube.apply(slow_dbm("deleted", slow_image, precheck={"checks": [SLEEPER]}), namespace)
    wait_backend(kube, namespace, "deleted", url, "precheck")
    job = get(kube, namespace, "deleted")["status"]["jobs"]["precheck"]
    first_pods = pod_dirs(kube, namespace, job)
    kube.kubectl("delete", "job", "-n", namespace, job, "--wait=false")
    o = wait_phase(kube, namespace, "deleted", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=600)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    applied_once(url)
    assert first_pods and len(pod_dirs(kube, namespace, job)) > len(first_pods)  # the Job ran again
    assert_no_shadow_left(kube, namespace, url, [job])


def test_the_precheck_pods_shadow_server_killed_converges(kube: Any, operator: Operator, slow_image: str,
                                                          namespace: str, private_pg: Any) -> None:
    """SIGKILL to the throw-away PostgreSQL of the precheck pod's shadow-server sidecar (as the kernel's OOM killer
    would at the emptyDir's memory limit) while revision 0002 sleeps in it: the step fails as transient, the
    operator runs a new precheck Job, the run converges and the dead server's directory is gone."""
    import os
    import signal

    from schemagate.contract.dburl import with_database

    url = private_pg.db_url
    secret(kube, namespace, "db", {"url": url})
    kube.apply(slow_dbm("oom", slow_image), namespace)

    def sleeping_shadow() -> int | None:
        st = get(kube, namespace, "oom").get("status") or {}
        assert st.get("phase") not in ("Succeeded", "Failed", "Blocked"), st
        job = (st.get("jobs") or {}).get("precheck")
        for d in pod_dirs(kube, namespace, job) if job else []:
            for server, postmaster in shadow_servers(d / "volumes" / "shadow"):
                try:
                    if scalar(with_database(server, "faulty"),
                              "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%'"):
                        return postmaster
                except Exception:  # noqa: BLE001, S112 - not restored yet, or already stopping
                    continue
        return None

    postmaster = kube.wait_for(sleeping_shadow, timeout=300, interval=0.05, message="0002 running in the shadow")
    os.kill(postmaster, signal.SIGKILL)
    o = wait_phase(kube, namespace, "oom", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=600)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    applied_once(url)
    precheck_jobs = [j["metadata"]["name"] for j in jobs(kube, namespace) if "-precheck-" in j["metadata"]["name"]]
    assert len(precheck_jobs) >= 2, precheck_jobs
    assert_no_shadow_left(kube, namespace, url, precheck_jobs)
