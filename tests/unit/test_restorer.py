"""The DatabaseRestore controller (observe → decide_restore → apply) and the database Lease it shares with the
DatabaseMigration runs, over the in-memory Kubernetes API (tests/unit/fakeapi.py), without a cluster. The same
code against the real kube-apiserver: tests/e2e/test_operator_restore.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from schemagate.restorer import LEASE_RACE_REQUEUE, Restorer
from tests.unit.fakeapi import FakeKube
from tests.unit.helpers import body, result
from tests.unit.test_reconciler import (  # noqa: F401  (_forget_metric_series: the autouse fixture, billing's series)
    LEASE,
    LEASE_NS,
    NS,
    URL,
    _forget_metric_series,
    reconcile,
    settings,
)

SHA = "ab" * 32
BACKUPS = [{"path": "/backups/shop-1.dump", "sha256": SHA, "sizeBytes": 10, "revision": "0001", "time": "t1"}]
RESTORE_HOLDER = f"DatabaseRestore/{NS}/back/uid-back"


@pytest.fixture
def kube() -> FakeKube:
    """``shop`` (Succeeded, one backup listed) and ``billing`` (another DatabaseMigration of the same database,
    running and holding the database Lease); a DatabaseRestore ``back`` of shop's backup over the database."""
    k = FakeKube()
    k.add_secret(NS, "db", {"url": URL})
    shop = body()
    k.add_migration(shop, {"phase": "Succeeded", "observedGeneration": 1, "backups": BACKUPS})
    billing = body(name="billing")
    billing["metadata"]["uid"] = "uid-billing"
    k.add_migration(billing, {"phase": "Migrating", "observedGeneration": 1})
    k.add_lease(LEASE_NS, LEASE, f"{NS}/billing/uid-billing")
    k.add_restore({"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseRestore",
                   "metadata": {"name": "back", "namespace": NS, "uid": "uid-back", "generation": 1},
                   "spec": {"migrationRef": {"name": "shop"}, "backup": {"sha256": SHA}, "replace": True}})
    return k


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def restore_pass(kube: FakeKube) -> float | None:
    return asyncio.run(Restorer(kube, settings(), _call).reconcile((NS, "back")))


def migration_pass(kube: FakeKube, name: str) -> float | None:
    return reconcile(kube, (NS, name))


def restore_status(kube: FakeKube) -> dict[str, Any]:
    return kube.restore(NS, "back")["status"]


def restore_jobs(kube: FakeKube) -> list[str]:
    return [o["metadata"]["name"] for (kind, _, _), o in kube.store.objects.items()
            if kind == "Job" and o["metadata"]["labels"].get("schemagate.dev/step") == "restore"]


def test_a_replace_waits_for_another_run_of_the_database_then_holds_the_lease(kube):
    # billing (not the DatabaseMigration the restore names) runs on the same database: the restore waits
    assert restore_pass(kube)
    st = restore_status(kube)
    assert st["phase"] == "Pending" and st["reason"] == "WaitingForDatabaseLock", st
    assert f"database in use by {NS}/billing" in st["message"] and restore_jobs(kube) == []
    assert kube.lease_holder(LEASE_NS, LEASE) == f"{NS}/billing/uid-billing"

    # billing's run ends: its holder is stale, the restore takes the Lease, then writes its intent, then the Job
    kube.migration(NS, "billing")["status"]["phase"] = "Succeeded"
    kube.store.writes.clear()
    restore_pass(kube)
    st = restore_status(kube)
    assert st["phase"] == "Restoring" and st["lease"] == LEASE and restore_jobs(kube) == [st["job"]]
    assert kube.lease_holder(LEASE_NS, LEASE) == RESTORE_HOLDER
    order = [(verb, kind) for verb, kind, _, _ in kube.store.writes if kind != "Event"]
    assert order == [("patch", "Lease"), ("patch", "DatabaseRestore"), ("create", "Job")]

    # a new run of billing now waits for the restore, naming it
    billing = kube.migration(NS, "billing")
    billing["metadata"]["generation"] = 2
    billing["spec"]["migrations"]["targetRevision"] = "0002"
    migration_pass(kube, "billing")
    st = kube.migration(NS, "billing")["status"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert st["phase"] == "Pending" and ready["reason"] == "WaitingForDatabaseLock", st
    assert "database in use by DatabaseRestore team/back" in ready["message"]
    assert not st.get("jobs")

    # the restore ends: the Lease is given back, and billing's run starts
    done = result("restore", reason="Restored", message="restored over shop", replace=True)
    kube.finish_job(NS, restore_status(kube)["job"], json.dumps(done), 0)
    restore_pass(kube)
    assert restore_status(kube)["phase"] == "Succeeded"
    assert kube.lease_holder(LEASE_NS, LEASE) is None
    migration_pass(kube, "billing")
    assert kube.migration(NS, "billing")["status"]["phase"] == "BackingUp"
    assert kube.lease_holder(LEASE_NS, LEASE) == f"{NS}/billing/uid-billing"


def test_a_restore_job_still_running_keeps_the_lease_from_a_migration(kube):
    kube.migration(NS, "billing")["status"]["phase"] = "Succeeded"
    restore_pass(kube)
    assert kube.lease_holder(LEASE_NS, LEASE) == RESTORE_HOLDER
    # a live restore holder (Restoring) is never taken over
    assert not kube.acquire_lease(LEASE_NS, LEASE, f"{NS}/billing/uid-billing")
    # a finished restore with no active Job is a stale holder: a migration takes the Lease over
    kube.restore(NS, "back")["status"]["phase"] = "Failed"
    kube.job(NS, restore_status(kube)["job"])["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    assert kube.acquire_lease(LEASE_NS, LEASE, f"{NS}/billing/uid-billing")


def test_a_lost_lease_race_writes_nothing(kube):
    kube.migration(NS, "billing")["status"]["phase"] = "Succeeded"
    # billing takes the Lease between the restore's look and its acquire (a new resourceVersion: 409)
    kube.store.hooks[("patch", "Lease")] = lambda _: kube.add_lease(LEASE_NS, LEASE, f"{NS}/billing/uid-billing")
    assert restore_pass(kube) == LEASE_RACE_REQUEUE
    assert "status" not in kube.restore(NS, "back") and restore_jobs(kube) == []


def test_a_deleted_restore_gives_the_lease_back(kube):
    kube.migration(NS, "billing")["status"]["phase"] = "Succeeded"

    async def scenario() -> None:
        r = Restorer(kube, settings(), _call)
        await r.reconcile((NS, "back"))
        assert kube.lease_holder(LEASE_NS, LEASE) == RESTORE_HOLDER
        await r.deleted((NS, "back"))
        assert r.leases == {} and r.locks == {}
    asyncio.run(scenario())
    assert kube.lease_holder(LEASE_NS, LEASE) is None


def test_a_restore_into_a_new_database_touches_no_lease(kube):
    kube.restore(NS, "back")["spec"]["replace"] = False
    restore_pass(kube)
    assert restore_status(kube)["phase"] == "Restoring" and "lease" not in restore_status(kube)
    assert kube.lease_holder(LEASE_NS, LEASE) == f"{NS}/billing/uid-billing"


def test_a_restore_pod_the_api_refuses_fails_the_restore_stops_its_job_and_frees_the_lease(kube):
    kube.migration(NS, "billing")["status"]["phase"] = "Succeeded"
    restore_pass(kube)
    name = restore_status(kube)["job"]
    kube.store.put("Event", {"metadata": {"name": "e1", "namespace": NS}, "reason": "FailedCreate",
                             "involvedObject": {"kind": "Job", "name": name},
                             "message": 'Error creating: pods "p" is forbidden: violates PodSecurity "restricted"'})
    restore_pass(kube)
    st = restore_status(kube)
    assert st["phase"] == "Failed" and st["reason"] == "FailedCreate" and "PodSecurity" in st["message"], st
    assert kube.job(NS, name)["spec"]["activeDeadlineSeconds"] == 1  # stopped after the status was written
    writes = [w[:2] for w in kube.store.writes]
    assert writes.index(("patch", "Job")) > max(i for i, w in enumerate(writes) if w == ("patch", "DatabaseRestore"))
    assert kube.lease_holder(LEASE_NS, LEASE) is None
