# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""The operator with the runner's real steps against a real PostgreSQL and the example projects."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from schemagate import demo
from schemagate.contract.dburl import sqlalchemy_url
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

pytestmark = pytest.mark.e2e


def scalar(url: str, sql: str) -> Any:
    eng = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return c.exec_driver_sql(sql).scalar()
    finally:
        eng.dispose()


def revision(url: str) -> str | None:
    return scalar(url, "select version_num from alembic_version")


def test_foodtruck_succeeds(kube: Any, operator: Operator, images: Any, namespace: str, fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("foodtruck", image=image), namespace)
    o = wait_phase(kube, namespace, "foodtruck", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Succeeded", st
    assert cond(o, "Ready")["status"] == "True"
    assert st["currentRevision"] == st["resolvedTargetRevision"] == revision(fresh_db) == "0003"
    assert st["appliedRevisions"] and st["backup"]["sha256"]
    assert set(st["jobs"]) == {"backup", "precheck", "migrate", "verify"}
    kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "dbm/foodtruck", "--timeout=10s")
    reasons = [e["reason"] for e in events(kube, namespace, "foodtruck")]
    assert "Succeeded" in reasons and "BackupCompleted" in reasons
    assert len(jobs(kube, namespace)) == 4


def test_wholesale_blocked_then_retry(kube: Any, operator: Operator, images: Any, namespace: str,
                                     fresh_db: str) -> None:
    demo.seed_wholesale(fresh_db)
    image = images("wholesale")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("wholesale", image=image), namespace)
    o = wait_phase(kube, namespace, "wholesale", ("Blocked", "Failed", "Succeeded"), op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Blocked", st
    assert cond(o, "Stalled")["status"] == "True" and cond(o, "Ready")["reason"] == "ViolationsFound"
    counts = {c["name"]: c["count"] for c in st["violations"]["checks"] if c.get("count")}
    assert counts == demo.WHOLESALE_VIOLATIONS
    assert st["violations"]["total"] == demo.WHOLESALE_TOTAL
    assert revision(fresh_db) == "0001"  # untouched
    assert "migrate" not in st["jobs"]
    out = kube.kubectl("get", "-n", namespace, "dbm", "wholesale").stdout
    assert str(demo.WHOLESALE_TOTAL) in out and "Blocked" in out
    # clean the data, ask for a retry
    eng = sa.create_engine(sqlalchemy_url(fresh_db), poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        for stmt in demo.WHOLESALE_CLEANUP if hasattr(demo, "WHOLESALE_CLEANUP") else _cleanup_sql():
            c.exec_driver_sql(stmt)
    eng.dispose()
    kube.kubectl("annotate", "-n", namespace, "dbm/wholesale", "schemagate.dev/retry=1", "--overwrite")
    o = wait_phase(kube, namespace, "wholesale", ("Succeeded", "Failed"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    assert revision(fresh_db) == o["status"]["currentRevision"]


def _cleanup_sql() -> list[str]:
    return [
        "UPDATE credit_accounts SET credit_limit = 1000 WHERE credit_limit < 0 OR credit_limit < used_credit",
        "UPDATE credit_transactions SET amount = 1 WHERE amount <= 0",
        "UPDATE credit_transactions SET order_id = NULL WHERE order_id IS NOT NULL AND order_id NOT IN (SELECT id FROM orders)",
        "UPDATE ledger_entries SET amount = 1 WHERE amount = 0",
        "UPDATE retailer_payments SET amount = 1 WHERE amount <= 0",
        "UPDATE wholesaler_products SET stock = 10, reserved_stock = 0 WHERE stock < 0 OR reserved_stock < 0 OR reserved_stock > stock",
        "UPDATE orders SET total_amount = 1 WHERE total_amount <= 0",
        "UPDATE stock_reservations SET quantity = 1 WHERE quantity <= 0",
    ]


def test_unreachable_database_retries_and_unknown_revision_fails(kube: Any, operator: Operator, images: Any,
                                                                 namespace: str, fresh_db: str) -> None:
    image = images("foodtruck")
    secret(kube, namespace, "down", {"url": "postgresql://u:p@127.0.0.1:1/nothing"})
    kube.apply(dbm("down", image=image, secret_name="down", backup={"enabled": False}), namespace)

    def retried() -> bool:
        st = get(kube, namespace, "down").get("status") or {}
        return st.get("attempts", 0) >= 2 and (st.get("lastError") or {}).get("reason") == "DatabaseUnreachable"

    kube.wait_for(retried, timeout=120, message="two attempts with DatabaseUnreachable")
    o = get(kube, namespace, "down")
    assert o["status"]["phase"] == "Prechecking" and cond(o, "Stalled")["status"] == "False"
    assert cond(o, "Reconciling")["status"] == "True"

    demo.seed_foodtruck(fresh_db)
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("unknown", image=image, backup={"enabled": False},
                   migrations={"image": image, "directory": "/app", "targetRevision": "9999"}), namespace)
    o = wait_phase(kube, namespace, "unknown", ("Failed", "Succeeded"), op=operator, timeout=180)
    assert o["status"]["phase"] == "Failed" and cond(o, "Ready")["reason"] == "UnknownRevision", o["status"]
    assert revision(fresh_db) == "0001"


def test_two_resources_on_one_database_never_overlap(kube: Any, operator: Operator, images: Any, namespace: str,
                                                     fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply([{**dbm("one", image=image), "metadata": {"name": "one", "namespace": namespace}},
                {**dbm("two", image=image), "metadata": {"name": "two", "namespace": namespace}}])
    for n in ("one", "two"):
        wait_phase(kube, namespace, n, ("Succeeded", "Failed", "Blocked"), op=operator, timeout=400)
    spans: dict[str, list[tuple[str, str]]] = {"one": [], "two": []}
    for j in jobs(kube, namespace):
        owner = j["metadata"]["ownerReferences"][0]["name"]
        spans[owner].append((j["status"].get("startTime"), j["status"].get("completionTime")
                             or j["status"]["conditions"][-1]["lastTransitionTime"]))
    a = (min(s for s, _ in spans["one"]), max(e for _, e in spans["one"]))
    b = (min(s for s, _ in spans["two"]), max(e for _, e in spans["two"]))
    assert a[1] <= b[0] or b[1] <= a[0], f"runs overlap: {a} {b}"
    assert get(kube, namespace, "one")["status"]["phase"] == "Succeeded"
    assert get(kube, namespace, "two")["status"]["phase"] == "Succeeded"


@pytest.mark.parametrize("kill_in", ["BackingUp", "Prechecking", "Migrating", "Verifying"])
def test_operator_killed_and_restarted(kube: Any, operator: Operator, images: Any, namespace: str,
                                       fresh_db: str, kill_in: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("crashy", image=image), namespace)
    wait_phase(kube, namespace, "crashy", (kill_in, "Succeeded"), op=operator, timeout=300)
    operator.kill()
    time.sleep(3)
    operator.start()
    o = wait_phase(kube, namespace, "crashy", ("Succeeded", "Failed"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    names = [j["metadata"]["name"] for j in jobs(kube, namespace)]
    assert sorted(names) == sorted(set(names)) and len(names) == 4, names
    assert revision(fresh_db) == "0003"


def test_spec_change_during_a_run(kube: Any, operator: Operator, images: Any, namespace: str,
                                  fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("moving", image=image, migrations={"image": image, "directory": "/app",
                                                      "targetRevision": "0002"}), namespace)
    wait_phase(kube, namespace, "moving", ("Prechecking", "Migrating", "Verifying", "Succeeded"), op=operator)
    kube.kubectl("patch", "-n", namespace, "dbm/moving", "--type=merge", "-p",
                 '{"spec":{"migrations":{"targetRevision":"head"}}}')
    o = wait_phase(kube, namespace, "moving", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    assert o["metadata"]["generation"] == 2 and o["status"]["phase"] == "Succeeded", o["status"]
    assert o["status"]["run"]["generation"] == 2 and o["status"]["currentRevision"] == "0003"
    assert revision(fresh_db) == "0003"
    names = {j["metadata"]["name"] for j in jobs(kube, namespace)}
    assert {"moving-2-backup-1", "moving-2-precheck-1", "moving-2-verify-1"} <= names
    assert any(n.startswith("moving-1-") for n in names)
    assert any(e["reason"] == "RunStarted" and "generation 2" in e["message"]
               for e in events(kube, namespace, "moving"))
