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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_operator import (  # noqa: F401
    ROOT,
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
from tests.pipeline.helpers import query, scalar

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


def processes_under(d: Path) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(d) in cmd:
            found.append(cmd)
    return found


def assert_no_shadow_left(kube: Any, ns: str, url: str, precheck_jobs: list[str]) -> None:
    """No throw-away server directory in any precheck pod's shadow emptyDir, no process of those pods, no
    ``_sgshadow_`` database on the real server (waits for the pods to stop: the kubelet stops them)."""
    dirs = [d for j in precheck_jobs for d in pod_dirs(kube, ns, j)]
    assert dirs, f"no pod directory for {precheck_jobs}"

    def clean() -> bool:
        return not any(processes_under(d) or list((d / "volumes" / "shadow").glob("schemagate-shadow-*"))
                       for d in dirs)

    kube.wait_for(clean, timeout=120, message="the precheck pods' shadow servers to be gone")
    from schemagate.contract.dburl import with_database

    assert query(with_database(url, "postgres"), "SELECT datname FROM pg_database WHERE datname LIKE "
                                                 "'%\\_sgshadow\\_%'") == []


@pytest.fixture
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private server (the shared one must stay up) a test may stop and start; ``.db_url`` is its database."""
    import os
    import tempfile

    import psycopg

    from schemagate.contract.dburl import libpq_url
    from schemagate.local.postgres import EmbeddedPostgres

    base = tempfile.mkdtemp(prefix="sgtest-e2e-pg-")
    os.chmod(base, 0o755)
    pg = EmbeddedPostgres(base)
    admin = pg.start()
    try:
        with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
            conn.execute("CREATE DATABASE faulty")
        pg.db_url = pg.url("faulty")  # type: ignore[attr-defined]
        yield pg
    finally:
        pg.stop("immediate")
        import shutil

        shutil.rmtree(base, ignore_errors=True)


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
