"""Faults that pass: a backend terminated mid-revision, the advisory lock's session killed, the server restarted.

Real PostgreSQL, real faults (``pg_terminate_backend``, a restart of the embedded server): the migrate step retries
with backoff, re-takes its advisory lock and continues from the revision the database really is at; every revision is
applied exactly once (tests/pipeline/projects/graph/slow.ini logs each revision in its own transaction).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from schemagate.runner.inject.lock import ADVISORY_LOCK_KEY
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import execute, query, scalar

pytestmark = pytest.mark.postgres
SLOW = Path(__file__).resolve().parent / "projects" / "graph" / "slow.ini"


def _run(url: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def go() -> None:
        out["result"] = migrate(SLOW, "head", url, None, lock_timeout="5s", retries=4, backoff=0.2, max_backoff=1.0)

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _wait_for_pid(url: str, sql: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = scalar(url, sql)
        if pid:
            return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no backend matched: {sql}")


def _applied_once(url: str) -> None:
    assert query(url, "SELECT revision, count(*) FROM applied_log GROUP BY 1 ORDER BY 1") == [
        ("0001", 1), ("0002", 1), ("0003", 1)]
    assert scalar(url, "SELECT version_num FROM alembic_version") == "0003"


def test_a_backend_terminated_mid_revision_is_retried(fresh_db: str) -> None:
    t, out = _run(fresh_db)
    pid = _wait_for_pid(fresh_db, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' "
                                  "AND pid <> pg_backend_pid()")  # fmt: skip
    execute(fresh_db, f"SELECT pg_terminate_backend({pid})")
    t.join(120)
    r = out["result"]
    assert r.outcome.value == "Succeeded", r.message
    retries = r.data["transientRetries"]
    assert retries[0]["reason"] == "DatabaseUnreachable" and retries[0]["revision"] == "0002", retries
    assert retries[0]["currentRevision"] == "0001"  # the real revision, read after the fault
    assert r.data["fromRevision"] is None and r.data["toRevision"] == "0003"
    assert r.data["applied"] == ["0001", "0002", "0003"]
    _applied_once(fresh_db)


def test_a_lost_advisory_lock_stops_before_the_next_revision(fresh_db: str) -> None:
    t, out = _run(fresh_db)
    _wait_for_pid(fresh_db, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' "
                            "AND pid <> pg_backend_pid()")  # fmt: skip
    holder = _wait_for_pid(fresh_db, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                     f"AND objid = CAST({ADVISORY_LOCK_KEY} AS bigint)::oid")  # fmt: skip
    execute(fresh_db, f"SELECT pg_terminate_backend({holder})")
    t.join(120)
    r = out["result"]
    assert r.outcome.value == "Succeeded", r.message
    (lost,) = [x for x in r.data["transientRetries"] if x["reason"] == "LockLost"]
    assert "before revision 0003" in lost["message"]  # 0002 was running; 0003 never ran unlocked
    _applied_once(fresh_db)


def test_retries_spent_report_transient_with_the_real_revision(fresh_db: str) -> None:
    """With no retries left the step ends TransientError (the operator retries it with a new Job), naming the
    revision that was interrupted and the revision the database is at."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=migrate(SLOW, "head", fresh_db, None, retries=0)))
    t.start()
    pid = _wait_for_pid(fresh_db, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' "
                                  "AND pid <> pg_backend_pid()")  # fmt: skip
    execute(fresh_db, f"SELECT pg_terminate_backend({pid})")
    t.join(120)
    r = out["r"]
    assert r.outcome.value == "TransientError" and r.reason == "DatabaseUnreachable", (r.reason, r.message)
    assert "revision 0002 failed" in r.message and "the database is at revision 0001" in r.message, r.message
    assert r.data["toRevision"] == "0001" and r.data["currentRevision"] == "0001"
    assert query(fresh_db, "SELECT revision FROM applied_log") == [("0001",)]


def test_a_server_restart_mid_revision_converges(tmp_path: Path) -> None:
    """A private server (the shared one must stay up) is stopped (fast: every backend gets 57P01) while 0002
    runs and started again 2 s later: the run converges with each revision applied once."""
    from schemagate.local.postgres import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path / "pg")
    port_url = pg.start()
    try:
        import psycopg

        from schemagate.contract.dburl import libpq_url

        with psycopg.connect(libpq_url(port_url), autocommit=True) as conn:
            conn.execute("CREATE DATABASE restarted")
        url = pg.url("restarted")
        t, out = _run(url)
        _wait_for_pid(url, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' "
                           "AND pid <> pg_backend_pid()")  # fmt: skip
        pg.stop("fast")
        time.sleep(2)
        pg.start()
        t.join(180)
        r = out["result"]
        assert r.outcome.value == "Succeeded", r.message
        assert r.data["transientRetries"][0]["reason"] == "DatabaseUnreachable"
        _applied_once(url)
    finally:
        pg.stop("immediate")


# ---------------------------------------------------------------------------------------------------------------
# the other steps: a backend terminated mid-step is a transient failure that leaves nothing behind


def test_a_backend_terminated_during_backup_leaves_no_file_and_a_retry_succeeds(fresh_db: str, tmp_path: Path) -> None:
    from schemagate.runner.backup import backup

    execute(fresh_db, "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400000) g")
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=backup(fresh_db, None, backup_dir=tmp_path / "b", keep=3)))
    t.start()
    pid = _wait_for_pid(fresh_db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                                  "AND pid <> pg_backend_pid()", timeout=60)  # fmt: skip
    execute(fresh_db, f"SELECT pg_terminate_backend({pid})")
    t.join(120)
    r = out["r"]
    assert r.outcome.value == "TransientError", (r.reason, r.message)
    assert sorted(p.name for p in (tmp_path / "b").glob("*")) == []  # no partial dump, no .sha256, no temp file
    r2 = backup(fresh_db, None, backup_dir=tmp_path / "b", keep=3)
    assert r2.outcome.value == "Succeeded", r2.message
    assert len(list((tmp_path / "b").glob("*.sha256"))) == 1

