"""decide_restore and the restore Job, without a cluster: a restore runs once per object (uid), never again on a
re-sync, a spec change or a lost Job; it waits for its DatabaseMigration; a backup not listed fails with nothing
touched. The end-to-end restore is tests/e2e/test_operator_restore.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from schemagate.core import jobs as J
from schemagate.core.decide import ACTIVE, FAILED, SUCCEEDED, JobObs, LockObs
from schemagate.core.lease import Holder
from schemagate.core.model import Migration
from schemagate.core.restore import Restore, RestoreObs, decide_restore, pick_backup
from tests.unit.helpers import T0, body, result

SHA = "ab" * 32
OTHER = "cd" * 32
BACKUPS = [{"path": "/backups/shop-2.dump", "sha256": SHA, "sizeBytes": 10, "revision": "0002", "time": "t2"},
           {"path": "/backups/shop-1.dump", "sha256": OTHER, "sizeBytes": 9, "revision": "0001", "time": "t1"}]
SETTINGS = J.JobSettings(runner_image="ghcr.io/schemagate/operator:test")


def migration(phase: str = "Succeeded", backups: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    b = body()
    b["status"] = {"phase": phase, "backups": BACKUPS if backups is None else backups}
    return b


def restore(uid: str = "r-uid-1", generation: int = 1, **spec: Any) -> Restore:
    s = {"migrationRef": {"name": "shop"}, "backup": {"sha256": SHA}, **spec}
    return Restore.from_body({"metadata": {"name": "back", "namespace": "team", "uid": uid,
                                           "generation": generation}, "spec": s})


def job(r: Restore, state: str = ACTIVE, res: dict[str, Any] | None = None) -> JobObs:
    return JobObs(name=r.job_name, step="restore", generation=0, state=state, result=res,
                  exit_code=None if state == ACTIVE else (0 if state == SUCCEEDED else 4))


def ready(st: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == "Ready")


def test_runs_once_through_its_job():
    r = restore()
    a = decide_restore(r, None, migration(), None, T0)
    st = a.status
    assert a.create and a.backup["path"] == "/backups/shop-2.dump"
    assert st["phase"] == "Restoring" and st["restoreUid"] == r.uid and st["job"] == r.job_name
    assert st["backup"]["revision"] == "0002" and not st.get("jobSeen")
    # the same pass again before the Job is visible (operator restarted): the same Job, never another name
    again = decide_restore(r, st, migration(), None, T0)
    assert again.create and again.status["job"] == r.job_name
    a = decide_restore(r, st, migration(), job(r), T0)
    assert not a.create and a.status["jobSeen"] and a.status["phase"] == "Restoring"
    done = result("restore", reason="Restored", message="restored shop-2.dump into the new database x",
                  database="shop_restored_x", created=True, tables=3)
    a = decide_restore(r, a.status, migration(), job(r, SUCCEEDED, done), T0)
    st = a.status
    assert st["phase"] == "Succeeded" and st["result"]["database"] == "shop_restored_x"
    assert ready(st)["status"] == "True" and ready(st)["reason"] == "Restored"
    assert [e[1] for e in a.events] == ["Restored"]
    # re-syncs, the Job gone, the DatabaseMigration gone: nothing ever runs again
    for m, j in ((migration(), None), (None, None), (migration(), job(r, SUCCEEDED, done))):
        later = decide_restore(r, st, m, j, T0 + dt.timedelta(hours=1))
        assert not later.create and later.status["phase"] == "Succeeded" and later.events == []


def test_a_lost_job_fails_and_is_never_recreated():
    r = restore()
    st = decide_restore(r, None, migration(), None, T0).status
    st = decide_restore(r, st, migration(), job(r), T0).status
    a = decide_restore(r, st, migration(), None, T0)
    assert not a.create and a.status["phase"] == "Failed" and a.status["reason"] == "JobLost"
    assert not decide_restore(r, a.status, migration(), None, T0).create


def test_a_failed_restore_reports_the_reason_and_stays_failed():
    r = restore()
    st = decide_restore(r, None, migration(), job(r), T0).status
    corrupt = result("restore", "PermanentError", "BackupCorrupt", "backup /backups/shop-2.dump refused, nothing "
                     "was touched: sha256 mismatch")
    a = decide_restore(r, st, migration(), job(r, FAILED, corrupt), T0)
    assert a.status["phase"] == "Failed" and ready(a.status)["reason"] == "BackupCorrupt"
    assert "nothing was touched" in a.status["message"]
    stalled = next(c for c in a.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"


def test_waits_for_the_migration_and_replace_waits_for_its_run():
    r = restore()
    a = decide_restore(r, None, None, None, T0)
    assert not a.create and a.status["phase"] == "Pending" and a.status["reason"] == "MigrationNotFound"
    assert a.requeue_after
    rr = restore(replace=True)
    a = decide_restore(rr, None, migration(phase="Migrating"), None, T0)
    assert not a.create and a.status["reason"] == "WaitingForMigration"
    assert decide_restore(rr, a.status, migration(), None, T0).create
    assert decide_restore(r, None, migration(phase="Migrating"), None, T0).create  # a new database: no wait


LEASE = "schemagate-db-0123456789abcdef"
FREE, MINE = LockObs(name=LEASE), LockObs(mine=True, name=LEASE)


def test_replace_takes_the_database_lease_before_its_job_and_gives_it_back():
    r = restore(replace=True)
    a = decide_restore(r, None, migration(), None, T0, RestoreObs(lock=FREE))
    assert a.create and a.lock == "acquire" and a.status["lease"] == LEASE and a.status["phase"] == "Restoring"
    st = a.status
    running = decide_restore(r, st, migration(), job(r), T0, RestoreObs(lock=MINE))
    assert not running.create and running.lock is None and running.status["phase"] == "Restoring"
    done = result("restore", reason="Restored", message="restored over shop", replace=True)
    a = decide_restore(r, running.status, migration(), job(r, SUCCEEDED, done), T0, RestoreObs(lock=MINE))
    assert a.status["phase"] == "Succeeded" and a.lock == "release"
    # a failed restore gives it back too; a re-sync after the release asks nothing
    failed = result("restore", "PermanentError", "RestoreFailed", "pg_restore failed")
    assert decide_restore(r, running.status, migration(), job(r, FAILED, failed), T0,
                          RestoreObs(lock=MINE)).lock == "release"
    assert decide_restore(r, a.status, migration(), job(r, SUCCEEDED, done), T0, RestoreObs(lock=FREE)).lock is None


def test_replace_waits_while_any_run_on_the_database_holds_the_lease():
    """Another DatabaseMigration of the same database (not the one the restore names, which is Succeeded) runs:
    the restore waits for the Lease, creates nothing, writes no intent; once free it starts."""
    r = restore(replace=True)
    held = RestoreObs(lock=LockObs(holder="team/billing", name=LEASE))
    a = decide_restore(r, None, migration(), None, T0, held)
    assert not a.create and a.lock is None
    st = a.status
    assert st["phase"] == "Pending" and st["reason"] == "WaitingForDatabaseLock" and "restoreUid" not in st
    assert "database in use by team/billing" in st["message"] and a.requeue_after
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"
    a = decide_restore(r, st, migration(), None, T0, RestoreObs(lock=FREE))
    assert a.create and a.lock == "acquire"


def test_replace_without_the_databases_secret_waits():
    r = restore(replace=True)
    a = decide_restore(r, None, migration(), None, T0,
                       RestoreObs(lock=FREE, secret_error='Secret "db" not found in namespace "team"'))
    assert not a.create and a.lock is None and a.status["reason"] == "SecretNotFound"


def test_a_restore_into_a_new_database_takes_no_lease():
    r = restore()
    a = decide_restore(r, None, migration(), None, T0, RestoreObs(lock=LockObs(holder="team/billing", name=LEASE)))
    assert a.create and a.lock is None and "lease" not in a.status


def test_a_restart_before_the_job_was_created_takes_the_lease_again_if_needed():
    r = restore(replace=True)
    st = decide_restore(r, None, migration(), None, T0, RestoreObs(lock=FREE)).status
    again = decide_restore(r, st, migration(), None, T0, RestoreObs(lock=FREE))
    assert again.create and again.lock == "acquire"
    assert decide_restore(r, st, migration(), None, T0, RestoreObs(lock=MINE)).lock is None


def test_lease_holders_of_both_kinds():
    m = Holder("DatabaseMigration", "team", "shop", "u1")
    rr = restore(replace=True)
    assert m.id == "team/shop/u1" and Holder.parse(m.id) == m and m.describe() == "team/shop"
    h = Holder.parse(rr.holder)
    assert rr.holder == "DatabaseRestore/team/back/r-uid-1" and h is not None
    assert (h.kind, h.namespace, h.name, h.uid) == ("DatabaseRestore", "team", "back", "r-uid-1")
    assert h.describe() == "DatabaseRestore team/back"
    for junk in ("", "a/b", "a//c", "Other/a/b/c", "a/b/c/d/e", None):
        assert Holder.parse(junk) is None


@pytest.mark.parametrize("spec, reason", [
    ({"backup": {"sha256": "ef" * 32}}, "BackupNotFound"),
    ({"backup": {"sha256": "ab"}}, "BackupNotFound"),  # too short a prefix
    ({"backup": {"path": "/backups/none.dump"}}, "BackupNotFound"),
])
def test_a_backup_not_listed_fails_with_nothing_touched(spec, reason):
    a = decide_restore(restore(**spec), None, migration(), None, T0)
    assert not a.create and a.status["phase"] == "Failed" and a.status["reason"] == reason
    assert "shop-2.dump" in a.status["message"] and "nothing was touched" in a.status["message"]


def test_pick_by_prefix_or_path_and_a_path_naming_no_file_is_refused():
    assert pick_backup(restore(backup={"sha256": OTHER[:12]}), migration()["status"])["revision"] == "0001"
    assert pick_backup(restore(backup={"path": "/backups/shop-1.dump"}), migration()["status"])["sha256"] == OTHER
    odd = [{"path": "/backups/..", "sha256": SHA}]
    a = decide_restore(restore(), None, migration(backups=odd), None, T0)
    assert not a.create and a.status["reason"] == "InvalidSpec"


def test_the_job_name_comes_from_the_uid():
    assert restore(uid="a").job_name != restore(uid="b").job_name
    long = Restore.from_body({"metadata": {"name": "x" * 80, "uid": "u"}, "spec": {}})
    assert len(long.job_name) <= 63


def test_restore_job_verifies_the_recorded_sha256_on_the_backup_volume():
    m = Migration.from_body(body(backup={"enabled": True, "volume": {"persistentVolumeClaim": {"claimName": "b"}},
                                         "subPath": "shop"}))
    r = restore(into="shop_copy", jobs=2)
    j = J.build_restore_job(m, r.name, r.uid, r.job_name, "shop-2.dump", SETTINGS, sha256=SHA,
                            into=r.into, jobs=r.jobs)
    pod = j["spec"]["template"]["spec"]
    c = pod["containers"][0]
    cmd = c["command"]
    assert cmd[:2] == ["schemagate", "restore"] and cmd[cmd.index("--backup") + 1] == "/backups/shop-2.dump"
    assert cmd[cmd.index("--sha256") + 1] == SHA and cmd[cmd.index("--into") + 1] == "shop_copy"
    assert "--replace" not in cmd and cmd[cmd.index("--jobs") + 1] == "2"
    assert {"name": "backups", "mountPath": "/backups", "subPath": "shop"} in c["volumeMounts"]
    assert pod["volumes"][0] == {"name": "backups", "persistentVolumeClaim": {"claimName": "b"}}
    assert j["metadata"]["ownerReferences"][0]["kind"] == "DatabaseRestore"
    assert j["metadata"]["ownerReferences"][0]["uid"] == r.uid
    assert j["spec"]["backoffLimit"] == 0 and "ttlSecondsAfterFinished" not in j["spec"]
    assert pod["securityContext"]["fsGroup"] == J.RUNNER_GID  # the backup volume as the backup pod has it
    assert all("value" not in e or "postgres" not in str(e["value"]) for e in c["env"])  # only secretKeyRef
    rep = J.build_restore_job(m, r.name, r.uid, r.job_name, "shop-2.dump", SETTINGS, sha256=SHA,
                              replace=True)
    cmd = rep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--replace") + 1:cmd.index("--replace") + 3] == ["--backup-dir", "/backups"]
    with pytest.raises(ValueError, match="not a file name"):
        J.build_restore_job(m, r.name, r.uid, r.job_name, "../etc/x", SETTINGS, sha256=SHA)


def test_a_restore_job_whose_pod_cannot_start_fails_now_and_is_stopped():
    r = restore(replace=True)
    st = decide_restore(r, None, migration(), None, T0, RestoreObs(lock=FREE)).status
    waiting = decide_restore(r, st, migration(), job(r), T0, RestoreObs(lock=MINE))
    assert waiting.stop == [] and waiting.requeue_after == RestoreObs().policy.start_poll_seconds
    stuck = JobObs(name=r.job_name, step="restore", generation=0, stuck=True, reason="CreateContainerConfigError",
                   message='container "restore": secret "db" not found')
    a = decide_restore(r, waiting.status, migration(), stuck, T0, RestoreObs(lock=MINE))
    assert a.stop == [r.job_name] and not a.create and a.lock == "release"
    assert a.status["phase"] == "Failed" and a.status["reason"] == "CreateContainerConfigError"
    assert 'secret "db" not found' in a.status["message"]
    later = decide_restore(r, a.status, migration(), stuck, T0, RestoreObs(lock=FREE))
    assert later.stop == [] and later.status["phase"] == "Failed" and later.events == []
