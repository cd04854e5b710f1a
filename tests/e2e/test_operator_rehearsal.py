# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""spec.rehearsal on the test bed, with the runner's real steps against a real PostgreSQL: the rehearse Job
restores a copy, runs the pending revisions there (lock report in status), verifies the copy, runs the smoke test,
and drops the copy in every case; a revision that fails on the real rows is caught there (Blocked,
RehearsalFailed) with the real database untouched; an operator killed mid-rehearsal leaves no copy behind."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemagate import demo
from schemagate.contract.dburl import database_name
from schemagate.contract.target import Target
from tests.e2e.test_operator import (  # noqa: F401
    Operator,
    cond,
    crd,
    dbm,
    events,
    get,
    images,
    jobs,
    operator,
    secret,
    wait_phase,
)
from tests.e2e.test_operator_pipeline import revision, scalar
from tests.pipeline.helpers import execute

pytestmark = pytest.mark.e2e

# the smoke test (spec.rehearsal.job): runs against the rehearsed copy, never the real database
SMOKE = ("import os, psycopg; url = os.environ['DATABASE_URL']; "
         "assert '_sg_rehearsal_' in url.rsplit('/', 1)[1], 'not the copy'; "
         "v = psycopg.connect(url).execute('select version_num from alembic_version').fetchone()[0]; "
         "assert v == '0003', v; print('smoke test passed on the copy at', v)")


def scratch_databases(url: str) -> list[str]:
    rows = scalar(url, "select coalesce(string_agg(datname, ','), '') from pg_database "
                       "where position('_sg_rehearsal_' in datname) > 0")
    return [r for r in str(rows).split(",") if r]


def test_foodtruck_rehearsal_succeeds_with_lock_report(kube: Any, operator: Operator, images: Any, namespace: str,
                                                       fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("rehearsed", image=image, rehearsal={"enabled": True, "maxSize": "1Gi",
                                                        "job": {"command": ["python", "-c", SMOKE]}}), namespace)
    o = wait_phase(kube, namespace, "rehearsed", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=400)
    st = o["status"]
    assert st["phase"] == "Succeeded", st
    assert set(st["jobs"]) == {"backup", "precheck", "rehearse", "migrate", "verify"}
    r = st["rehearsal"]
    assert r["reason"] == "Rehearsed" and r["scratchDropped"] is True, r
    revs = {x["revision"]: x for x in r["revisions"]}
    assert revs["0002"]["strongestLock"]["mode"] == "ACCESS EXCLUSIVE"
    assert revs["0002"]["strongestLock"]["table"] == "menu_items" and revs["0002"]["rowsChanged"] == 0
    assert revs["0003"]["strongestLock"]["mode"] == "SHARE UPDATE EXCLUSIVE"
    assert any(s["lock"] and s["lock"]["mode"] == "ACCESS EXCLUSIVE" for s in r["statements"])
    assert r["verify"]["reason"] == "Verified"
    assert "ACCESS EXCLUSIVE on menu_items for" in r["message"]
    assert "Rehearsed" in [e["reason"] for e in events(kube, namespace, "rehearsed")]
    assert revision(fresh_db) == "0003" and scratch_databases(fresh_db) == []


def _trip_wire(url: str) -> None:
    """A revision that fails only on the real rows: an event trigger (pg_dump copies it) raises on any DDL while a
    'Churros' row exists; the precheck's shadow holds the schema only, the rehearsal's restored copy has the rows."""
    from schemagate.runner.inject.apply import upgrade
    from tests.pipeline.helpers import FOODTRUCK

    upgrade(Target(FOODTRUCK, "0001", url))
    execute(url, "create function no_alter() returns event_trigger language plpgsql as $$ begin "
                 "if exists (select 1 from menu_items where name = 'Churros') then raise exception 'churros'; end if;"
                 " end $$; create event trigger no_alter on ddl_command_end execute function no_alter(); "
                 "insert into menu_items (id, name, price, stock) values ('m3', 'Churros', 4.25, 0)")


def test_revision_failing_on_real_rows_is_caught_in_rehearsal(kube: Any, operator: Operator, images: Any,
                                                               namespace: str, fresh_db: str) -> None:
    _trip_wire(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("caught", image=image, rehearsal={"enabled": True}), namespace)
    o = wait_phase(kube, namespace, "caught", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=400)
    st = o["status"]
    assert st["phase"] == "Blocked", st
    ready = cond(o, "Ready")
    assert ready["reason"] == "RehearsalFailed" and "0002" in ready["message"] and "statement" in ready["message"]
    assert st["rehearsal"]["failedRevision"] == "0002" and st["rehearsal"]["failedStatement"]
    assert "migrate" not in st["jobs"]
    assert revision(fresh_db) == "0001"  # the real database untouched
    # the copy was dropped by the Job's scratch-guard when the failed container stopped the pod
    kube.wait_for(lambda: scratch_databases(fresh_db) == [], timeout=60, message="no scratch database left")


def test_smoke_test_failure_blocks(kube: Any, operator: Operator, images: Any, namespace: str,
                                   fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("smoky", image=image, backup={"enabled": False}, rehearsal={
        "enabled": True, "job": {"command": ["python", "-c", "print('1 failed: test_orders'); raise SystemExit(1)"]}}),
        namespace)
    o = wait_phase(kube, namespace, "smoky", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=400)
    assert o["status"]["phase"] == "Blocked", o["status"]
    assert cond(o, "Ready")["reason"] == "RehearsalFailed"
    assert "spec.rehearsal.job" in o["status"]["lastError"]["message"]
    assert revision(fresh_db) == "0001"
    kube.wait_for(lambda: scratch_databases(fresh_db) == [], timeout=60, message="no scratch database left")


def test_operator_killed_mid_rehearsal_leaves_no_scratch_database(kube: Any, operator: Operator, images: Any,
                                                                  namespace: str, fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("killed", image=image, rehearsal={"enabled": True}), namespace)
    wait_phase(kube, namespace, "killed", ("Rehearsing", "Migrating", "Verifying", "Succeeded"), op=operator,
               timeout=400)
    operator.kill()
    time.sleep(3)
    operator.start()
    o = wait_phase(kube, namespace, "killed", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=400)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    assert o["status"]["rehearsal"]["reason"] == "Rehearsed"
    names = [j["metadata"]["name"] for j in jobs(kube, namespace)]
    assert sorted(names) == sorted(set(names)) and sum("-rehearse-" in n for n in names) == 1, names
    assert revision(fresh_db) == "0003" and scratch_databases(fresh_db) == []
    assert database_name(fresh_db) not in scratch_databases(fresh_db)


def test_resource_deleted_mid_rehearsal_leaves_no_scratch_database(kube: Any, operator: Operator, images: Any,
                                                                   namespace: str, fresh_db: str) -> None:
    """The smoke test holds the rehearsal on the copy; deleting the resource deletes its Job and pod (owner
    references), and the pod's scratch-guard drops the copy when it is stopped."""
    from schemagate.contract.dburl import with_database

    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("deleted", image=image, backup={"enabled": False}, rehearsal={
        "enabled": True, "job": {"command": ["python", "-c", "import time; time.sleep(600)"]}}), namespace)

    def copy_upgraded() -> bool:
        names = scratch_databases(fresh_db)
        try:  # the copy may still be restoring (no version table yet)
            return bool(names) and revision(with_database(fresh_db, names[0])) == "0003"
        except Exception:  # noqa: BLE001 - not yet
            return False

    kube.wait_for(copy_upgraded, timeout=300, message="the rehearsed copy at 0003 while the smoke test runs")
    kube.kubectl("delete", "-n", namespace, "dbm/deleted", "--wait=false")
    kube.wait_for(lambda: scratch_databases(fresh_db) == [], timeout=180, message="the copy dropped by the guard")
    assert revision(fresh_db) == "0001"


def test_rehearse_job_passes_the_restricted_pod_security_profile(kube: Any, operator: Operator, images: Any,
                                                                 namespace: str, fresh_db: str) -> None:
    """Every container of the rehearse Job (the guard sidecar and the smoke test included) is admitted in a
    namespace that enforces the Pod Security Standards' restricted profile."""
    kube.kubectl("label", "namespace", namespace, "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("strict", image=image, backup={"enabled": False},
                   rehearsal={"enabled": True, "job": {"command": ["python", "-c", SMOKE]}}), namespace)
    o = wait_phase(kube, namespace, "strict", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=400)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    assert o["status"]["rehearsal"]["reason"] == "Rehearsed"
    refused = kube.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate",
                           "-o", "name").stdout.strip()
    assert refused == "", refused
    assert scratch_databases(fresh_db) == []
