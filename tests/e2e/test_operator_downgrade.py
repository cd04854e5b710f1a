# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""Downgrades through the operator (spec.allowDowngrade, spec.maxDataLoss) on the test bed, against a real
PostgreSQL and the food truck project: refused without allowDowngrade (no Job for ``base``, the backup Job's plan
before any dump for a named revision), allowed with it
(backup, data-at-risk precheck on the shadow, alembic downgrade, verify), blocked while data is at risk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemagate import demo
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import upgrade
from tests.e2e.test_operator import (  # noqa: F401
    Operator,
    cond,
    crd,
    dbm,
    events,
    images,
    jobs,
    operator,
    secret,
    wait_phase,
)
from tests.e2e.test_operator_pipeline import revision, scalar
from tests.pipeline.helpers import FOODTRUCK, WHOLESALE, execute

pytestmark = pytest.mark.e2e

DONE = ("Succeeded", "Failed", "Blocked")


def _patch(kube: Any, ns: str, name: str, spec: dict[str, Any]) -> None:
    kube.kubectl("patch", "-n", ns, f"dbm/{name}", "--type=merge", "-p", json.dumps({"spec": spec}))


def _user_tables(url: str) -> int:
    return int(scalar(url, "select count(*) from pg_tables where schemaname = 'public' "
                           "and tablename <> 'alembic_version'"))


def test_foodtruck_to_base_refused_then_allowed(kube: Any, operator: Operator, images: Any, namespace: str,
                                                fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("truck", image=image), namespace)
    o = wait_phase(kube, namespace, "truck", DONE, op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded" and revision(fresh_db) == "0003", o["status"]
    before_jobs = {j["metadata"]["name"] for j in jobs(kube, namespace)}

    def refused_at_once(target: str, says: str) -> None:
        """Without allowDowngrade: Failed/DowngradeNotAllowed with ``says`` in the message; no Job, nothing changed."""
        _patch(kube, namespace, "truck", {"migrations": {"targetRevision": target}})
        o = wait_phase(kube, namespace, "truck", DONE, op=operator)
        st = o["status"]
        assert st["phase"] == "Failed" and cond(o, "Ready")["reason"] == "DowngradeNotAllowed", st
        assert says in st["lastError"]["message"], st
        assert {j["metadata"]["name"] for j in jobs(kube, namespace)} == before_jobs
        assert revision(fresh_db) == "0003"

    refused_at_once("base", "spec.allowDowngrade: true")
    assert any(e["reason"] == "DowngradeNotAllowed" for e in events(kube, namespace, "truck"))

    # allowed (every seeded row goes with its table: maxDataLoss allows them): backup, precheck, downgrade, verify
    rows = int(scalar(fresh_db, "select (select count(*) from menu_items) + (select count(*) from orders)"))
    assert rows > 0
    _patch(kube, namespace, "truck", {"allowDowngrade": True, "maxDataLoss": rows + 1000})
    o = wait_phase(kube, namespace, "truck", DONE, op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Succeeded", st
    assert cond(o, "Ready")["message"].startswith("downgraded to base and verified")
    assert st["currentRevision"] == "base" and revision(fresh_db) is None
    assert _user_tables(fresh_db) == 0
    down = st["plan"]["downgrade"]
    assert "public.menu_items" in down["removes"]["tables"] and down["rowsAtRisk"] >= rows
    gen = o["metadata"]["generation"]
    names = {j["metadata"]["name"] for j in jobs(kube, namespace)}
    assert {f"truck-{gen}-{s}-1" for s in ("backup", "precheck", "migrate", "verify")} <= names
    # both runs' backups are listed, newest first, with the revision each was taken at
    listed = st["backups"]
    assert [b["revision"] for b in listed] == ["0003", "0001"] and listed[0] == st["backup"]
    assert all(b["sha256"] and b["sizeBytes"] > 0 and b["path"] and b["time"] for b in listed)


def test_data_at_risk_blocks_the_downgrade_until_allowed(kube: Any, operator: Operator, images: Any,
                                                         namespace: str, fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    upgrade(Target(FOODTRUCK, "head", fresh_db))
    execute(fresh_db, "update menu_items set version = version + 1 where id in ('m1', 'm2')")
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    # a named revision below the database, without allowDowngrade: the backup Job plans first (init container in the application's image) and refuses it before pg_dump runs
    kube.apply(dbm("risky", image=image, migrations={"image": image, "directory": "/app",
                                                     "targetRevision": "0001"}), namespace)
    o = wait_phase(kube, namespace, "risky", DONE, op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Failed" and cond(o, "Ready")["reason"] == "DowngradeNotAllowed", st
    assert st["lastError"]["phase"] == "BackingUp" and "backup" not in st and "backups" not in st, st
    assert list(st["jobs"]) == ["backup"] and revision(fresh_db) == "0003"
    (pod,) = kube.pods(namespace, f"job-name={st['jobs']['backup']}")
    inits = {c["name"]: c for c in pod["status"]["initContainerStatuses"]}
    assert inits["plan"]["state"]["terminated"]["exitCode"] == 4, inits
    (main,) = pod["status"]["containerStatuses"]
    assert main["name"] == "backup" and "terminated" not in main["state"] and not main.get("lastState"), main
    # allowed, but 2 rows hold non-default versions and maxDataLoss is 0: blocked, nothing changed
    _patch(kube, namespace, "risky", {"allowDowngrade": True})
    o = wait_phase(kube, namespace, "risky", DONE, op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Blocked" and cond(o, "Ready")["reason"] == "DataAtRisk", st
    assert "downgrade drops menu_items.version: 2 rows hold non-default values" in st["lastError"]["message"]
    assert revision(fresh_db) == "0003"
    gen = o["metadata"]["generation"]
    assert not any(j["metadata"]["name"].startswith(f"risky-{gen}-migrate") for j in jobs(kube, namespace))
    # maxDataLoss 2 allows it: downgraded to 0001 and verified
    _patch(kube, namespace, "risky", {"maxDataLoss": 2})
    o = wait_phase(kube, namespace, "risky", DONE, op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    assert o["status"]["currentRevision"] == "0001" == revision(fresh_db)


def test_wholesale_to_base_with_its_constraints_and_indexes(kube: Any, operator: Operator, images: Any,
                                                            namespace: str, fresh_db: str) -> None:
    upgrade(Target(WHOLESALE, "head", fresh_db))
    execute(fresh_db, "insert into retailers (id, name) values ('r1', 'Corner Shop'); insert into wholesalers "
                      "(id, name) values ('w1', 'FreshCo'), ('w2', 'BulkMart')")
    image = images("wholesale")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("bulk", image=image, allowDowngrade=True, maxDataLoss=3,
                   migrations={"image": image, "directory": "/app", "targetRevision": "base"}), namespace)
    o = wait_phase(kube, namespace, "bulk", DONE, op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Succeeded", st
    down = st["plan"]["downgrade"]
    assert down["rowsAtRisk"] == 3 and down["fromRevision"] == "0003"
    counts = down["removedCounts"]
    assert counts["constraints"] >= 10 and counts["indexes"] >= 3 and counts["tables"] >= 5, counts
    # the constraints and indexes go with their tables: the tables are listed (and verified gone) by name
    assert len(down["removes"]["tables"]) == counts["tables"] and "truncated" not in down["removes"]
    assert revision(fresh_db) is None and _user_tables(fresh_db) == 0
