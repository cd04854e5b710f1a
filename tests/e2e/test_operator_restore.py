# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""The DatabaseRestore end to end on the test bed, against a real PostgreSQL: a backup listed in a
DatabaseMigration's status.backups restored into a new database equals the database it was taken from
(``pg_dump --schema-only`` and row counts); a corrupt backup is refused before anything is touched; the spec cannot
be changed and a finished restore never runs again; a restore over the database waits for the database Lease."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from schemagate import demo
from schemagate.contract.dburl import database_name, libpq_url, with_database
from tests.e2e.operator_process import LEASE_NS
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
from tests.e2e.test_operator_pipeline import revision
from tests.pipeline.test_restore import databases, dropped, row_counts, schema_dump  # noqa: F401

pytestmark = pytest.mark.e2e


def restore_obj(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseRestore", "metadata": {"name": name},
            "spec": {"migrationRef": {"name": "src"}, **spec}}


def get_restore(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return kube.custom().get_namespaced_custom_object("schemagate.dev", "v1alpha1", ns, "databaserestores", name)


def wait_restore(kube: Any, ns: str, name: str, op: Operator, timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        if op.proc is not None and op.proc.poll() is not None:
            raise AssertionError("the operator exited:\n" + op.logs()[-4000:])
        o = get_restore(kube, ns, name)
        return o if (o.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    try:
        return kube.wait_for(check, timeout=timeout, interval=0.2, message=f"restore {name} finished")
    except AssertionError:
        o = get_restore(kube, ns, name)
        raise AssertionError(f"{name}: {json.dumps(o.get('status'), indent=1)[:3000]}\n{op.logs()[-3000:]}") from None


def test_restore_round_trip_and_a_corrupt_backup_refused(kube: Any, operator: Operator, images: Any,
                                                         namespace: str, fresh_db: str, pg_server: str,
                                                         tmp_path: Path, dropped: Callable[[str], str]) -> None:
    demo.seed_foodtruck(fresh_db)
    at_backup, rows_at_backup = schema_dump(fresh_db), row_counts(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    (tmp_path / "backups").mkdir()
    volume = {"hostPath": {"path": str(tmp_path / "backups")}}
    kube.apply(dbm("src", image=image, backup={"enabled": True, "volume": volume}), namespace)
    o = wait_phase(kube, namespace, "src", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    listed = o["status"]["backups"]
    assert len(listed) == 1 and listed[0]["revision"] == "0001"  # taken before the migration
    sha, path = listed[0]["sha256"], listed[0]["path"]

    # restore into a new database (the default), picked by a sha256 prefix
    kube.apply(restore_obj("back", backup={"sha256": sha[:16]}), namespace)
    r = wait_restore(kube, namespace, "back", operator)
    st = r["status"]
    assert st["phase"] == "Succeeded", st
    assert cond(r, "Ready")["status"] == "True" and cond(r, "Ready")["reason"] == "Restored"
    target = dropped(st["result"]["database"])
    assert st["result"]["created"] is True and st["backup"]["sha256"] == sha and st["restoreUid"] == r["metadata"]["uid"]
    restored = with_database(fresh_db, target)
    assert schema_dump(restored) == at_backup
    assert row_counts(restored) == rows_at_backup
    assert any(e["reason"] == "Restored" for e in events(kube, namespace, "back"))
    restore_jobs = [j for j in jobs(kube, namespace) if j["metadata"]["name"] == st["job"]]
    assert len(restore_jobs) == 1

    # the spec cannot be changed (a re-sync cannot point it elsewhere); the finished restore stays as it is
    out = kube.kubectl("patch", "-n", namespace, "dbr/back", "--type=merge", "-p",
                       json.dumps({"spec": {"backup": {"sha256": sha}}}), check=False)
    assert out.returncode != 0 and "cannot be changed" in out.stderr, out
    kube.kubectl("annotate", "-n", namespace, "dbr/back", "example.com/resync=1")
    kube.wait_for(lambda: get_restore(kube, namespace, "back")["metadata"]["annotations"], timeout=30)
    again = get_restore(kube, namespace, "back")["status"]
    assert again["phase"] == "Succeeded" and again["job"] == st["job"]
    assert [j["metadata"]["name"] for j in jobs(kube, namespace) if "restore" in j["metadata"]["name"]] \
        == [st["job"]]

    # a corrupt backup (one byte changed, the sidecar untouched): refused before any database is touched
    source = database_name(fresh_db)

    def ours() -> list[str]:  # the databases a restore of this one could create (<source>_...)
        return [d for d in databases(pg_server) if d.startswith(source)]

    before = ours()
    archive = tmp_path / "backups" / Path(path).name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    kube.apply(restore_obj("bad", backup={"path": path}), namespace)
    r = wait_restore(kube, namespace, "bad", operator)
    assert r["status"]["phase"] == "Failed" and cond(r, "Ready")["reason"] == "BackupCorrupt", r["status"]
    assert "nothing was touched" in r["status"]["message"]
    assert ours() == before


def test_a_restore_over_the_database_waits_for_the_database_lease(kube: Any, operator: Operator, images: Any,
                                                                  namespace: str, fresh_db: str,
                                                                  tmp_path: Path) -> None:
    """``replace: true`` takes the database Lease a migration run holds: while another DatabaseMigration of the
    same database runs (its migrate step retried while a session holds a lock its revision needs), the restore
    is Pending (``WaitingForDatabaseLock``, naming it) with no Job; once that run has ended the restore runs, and
    its Job starts after the run's last Job finished. Then a restore whose pod can never start fails at once."""
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    (tmp_path / "backups").mkdir()
    volume = {"hostPath": {"path": str(tmp_path / "backups")}}
    at = {"image": image, "directory": "/app"}
    kube.apply(dbm("src", image=image, backup={"enabled": True, "volume": volume},
                   migrations={**at, "targetRevision": "0002"}), namespace)
    o = wait_phase(kube, namespace, "src", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded" and revision(fresh_db) == "0002", o["status"]
    sha = o["status"]["backups"][0]["sha256"]  # taken at 0001

    # 0003 validates a constraint of menu_items (SHARE UPDATE EXCLUSIVE): a session holding that lock keeps the
    # other resource's migrate step failing with LockTimeout and retrying, under the database Lease
    holder = psycopg.connect(libpq_url(fresh_db))
    try:
        holder.execute("LOCK TABLE menu_items IN SHARE UPDATE EXCLUSIVE MODE")
        kube.apply(dbm("other", image=image, backup={"enabled": False}, migrations={**at, "targetRevision": "head"}),
                   namespace)
        wait_phase(kube, namespace, "other", "Migrating", op=operator, timeout=300)
        kube.apply(restore_obj("over", backup={"sha256": sha}, replace=True), namespace)

        def waiting() -> dict[str, Any] | None:
            st = get_restore(kube, namespace, "over").get("status") or {}
            return st if st.get("reason") == "WaitingForDatabaseLock" else None

        st = kube.wait_for(waiting, timeout=120, message="the restore waiting for the database Lease")
        assert st["phase"] == "Pending" and f"database in use by {namespace}/other" in st["message"], st
        assert get(kube, namespace, "other")["status"]["phase"] == "Migrating"
        assert not [j for j in jobs(kube, namespace) if "restore" in j["metadata"]["name"]]
    finally:
        holder.close()

    o = wait_phase(kube, namespace, "other", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    r = wait_restore(kube, namespace, "over", operator)
    assert r["status"]["phase"] == "Succeeded" and r["status"]["lease"], r["status"]
    assert revision(fresh_db) == "0001"  # the backup's revision, over the run's 0003
    listed = jobs(kube, namespace)
    other_done = max(j["status"].get("completionTime") or j["status"]["conditions"][-1]["lastTransitionTime"]
                     for j in listed if j["metadata"]["ownerReferences"][0]["name"] == "other")
    (restore_job,) = [j for j in listed if j["metadata"]["name"] == r["status"]["job"]]
    assert restore_job["metadata"]["creationTimestamp"] >= other_done
    lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{r['status']['lease']}")
    assert not lease["spec"].get("holderIdentity")  # given back

    # a restore Job whose pod can never start (the database's Secret is gone: the kubelet's
    # CreateContainerConfigError): Failed at once with that reason, and its Job stopped, not left to its deadline
    kube.kubectl("delete", "secret", "-n", namespace, "db")
    kube.apply(restore_obj("nosecret", backup={"sha256": sha}), namespace)
    r = wait_restore(kube, namespace, "nosecret", operator)
    assert r["status"]["phase"] == "Failed" and r["status"]["reason"] == "CreateContainerConfigError", r["status"]

    def stopped() -> bool:
        return any(j["metadata"]["name"] == r["status"]["job"] and j["spec"]["activeDeadlineSeconds"] == 1
                   for j in jobs(kube, namespace))

    kube.wait_for(stopped, timeout=60, message="the stuck restore Job stopped")
