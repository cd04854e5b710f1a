# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""The DatabaseRestore end to end on the test bed, against a real PostgreSQL: a backup listed in a
DatabaseMigration's status.backups restored into a new database equals the database it was taken from
(``pg_dump --schema-only`` and row counts); a corrupt backup is refused before anything is touched; the spec cannot
be changed and a finished restore never runs again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemagate import demo
from schemagate.contract.dburl import database_name, with_database
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
