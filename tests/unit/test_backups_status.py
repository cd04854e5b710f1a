"""status.backups: every verified backup with path, size, sha256, revision and time, newest first, bounded like the
backup volume's files (spec.backup.retention, the runner's --keep)."""

from __future__ import annotations

import datetime as dt

from schemagate.core.decide import MAX_BACKUPS_LISTED
from tests.unit.helpers import OK_RESULTS, Sim, mig, result


def _runs(retention: int, n: int) -> Sim:
    """``n`` runs (each a new spec), the k-th writing backup k taken at revision 000k."""
    backup = {"enabled": True, "volume": {"emptyDir": {}}, "retention": retention}
    sim = Sim(mig(backup=backup))
    for k in range(1, n + 1):
        sim.m = mig(generation=k, backup=backup, migrations={"image": "registry.example/shop:1.2",
                                                             "targetRevision": f"{k:04d}x"})
        sim.now += dt.timedelta(minutes=1)
        res = {"backup": result("backup", path=f"/backups/shop-{k}.dump", sizeBytes=100 + k, sha256=f"{k:064x}",
                                format="custom"),
               "precheck": result("precheck", currentRevision=f"{k:04d}", targetRevision=f"{k:04d}x",
                                  pending=[f"{k:04d}x"], total=0, checks=[])}
        a = sim.run(res)
        assert a.status["phase"] == "Succeeded", a.status
    return sim


def test_newest_first_bounded_by_retention_with_revision():
    st = _runs(retention=2, n=3).status
    assert [b["path"] for b in st["backups"]] == ["/backups/shop-3.dump", "/backups/shop-2.dump"]
    newest = st["backups"][0]
    assert newest == {"path": "/backups/shop-3.dump", "sizeBytes": 103, "sha256": f"{3:064x}", "format": "custom",
                      "time": OK_RESULTS["backup"]["finishedAt"], "revision": "0003"}
    assert st["backups"][1]["revision"] == "0002"
    assert st["backup"] == newest  # status.backup stays the last one


def test_retention_zero_lists_up_to_the_bound():
    st = _runs(retention=0, n=4).status
    assert [b["path"] for b in st["backups"]][:2] == ["/backups/shop-4.dump", "/backups/shop-3.dump"]
    assert len(st["backups"]) == 4 <= MAX_BACKUPS_LISTED


def test_a_database_at_base_is_listed_as_base_and_no_backup_no_list():
    sim = Sim(mig())
    st = sim.run({"precheck": result("precheck", currentRevision=None, targetRevision="0002", pending=["0002"],
                                     total=0, checks=[])}).status
    assert st["backups"][0]["revision"] == "base"
    st = Sim(mig(backup={"enabled": False})).run().status
    assert "backups" not in st
