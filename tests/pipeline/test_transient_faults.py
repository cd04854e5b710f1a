"""Faults that pass: a backend terminated mid-revision, the advisory lock's session killed, the server restarted.

Real PostgreSQL, real faults (``pg_terminate_backend``, a restart of the embedded server): the migrate step retries
with backoff, re-takes its advisory lock and continues from the revision the database really is at; every revision is
applied exactly once (tests/pipeline/projects/graph/slow.ini logs each revision in its own transaction).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemagate.contract.target import Target
from schemagate.runner.inject.lock import ADVISORY_LOCK_KEY
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import (
    execute,
    private_server,
    processes_naming,
    query,
    scalar,
    shadow_servers,
    wait_for_backend,
)

pytestmark = pytest.mark.postgres
SLOW = Path(__file__).resolve().parent / "projects" / "graph" / "slow.ini"


def _run(url: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def go() -> None:
        out["result"] = migrate(Target(SLOW, "head", url, None), lock_timeout="5s", retries=4, backoff=0.2, max_backoff=1.0)

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _wait_for_pid(url: str, sql: str, timeout: float = 300, running: threading.Thread | None = None,
                  out: dict[str, Any] | None = None) -> int:
    """The pid of the backend ``sql`` finds; fails at once (with the step's result) when ``running`` ended."""

    def ended() -> str | None:
        if running is None or running.is_alive():
            return None
        r = next(iter((out or {}).values()), None)
        return f"the run ended ({getattr(r, 'reason', None)}: {getattr(r, 'message', None)})"

    return wait_for_backend(url, sql, timeout, ended)


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
    t = threading.Thread(target=lambda: out.update(r=migrate(Target(SLOW, "head", fresh_db, None), retries=0)))
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



# ---------------------------------------------------------------------------------------------------------------
# the precheck and verify steps of ``schemagate run``: they only read the real database, so a transient fault while
# they count is run again (with backoff) and the run converges without a manual retry. The counting the faults hit
# runs on the real database: the slow project's revisions add no constraint on existing rows, so the precheck's
# derived checks need no data-carrying shadow, and the user check below is counted on the real database by both
# steps (a session named schemagate-precheck, resp. schemagate-verify, sleeping 2 s in pg_sleep).

SLEEPER = {"name": "sleeper", "sql": "SELECT 0 * count(*) FROM pg_sleep(2)"}
COUNTING = ("SELECT pid FROM pg_stat_activity WHERE application_name = '{app}' AND datname = current_database() "
            "AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()")


@pytest.fixture
def shadow_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private parent directory for the precheck's throw-away servers (others' runs use /dev/shm too); under the
    system temporary directory and open to traverse, as the server may run as another user (pytest's own
    temporary directories are closed to other users)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sgtest-shadows-"))
    d.chmod(0o755)
    monkeypatch.setenv("SCHEMAGATE_SHADOW_DIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[Any]:
    """A private server that a test may stop and start (the shared one must stay up); its URL is ``.db_url``."""
    with private_server("restarted") as pg:
        yield pg


def _run_pipeline(url: str) -> tuple[threading.Thread, dict[str, Any]]:
    from schemagate.runner.pipeline import run

    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=run(Target(SLOW, "head", url, None), backup=False, lint=False,
                                                         user_checks=[SLEEPER], retries=6)))
    t.start()
    return t, out


def _nothing_left(url: str, shadow_parent: Path, databases_before: set[str]) -> None:
    """No database was added to the real server (no ``<db>_sgshadow_*``, no scratch copy), no throw-away server
    directory or process is left."""
    from schemagate.contract.dburl import with_database

    assert {d for (d,) in query(with_database(url, "postgres"), "SELECT datname FROM pg_database")} \
        == databases_before
    assert sorted(p.name for p in shadow_parent.iterdir()) == []
    deadline = time.monotonic() + 60  # a stopped watchdog exits within its poll interval
    while processes_naming(shadow_parent) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_naming(shadow_parent) == []


def _databases(url: str) -> set[str]:
    from schemagate.contract.dburl import with_database

    return {d for (d,) in query(with_database(url, "postgres"), "SELECT datname FROM pg_database")}


def _converged(r: Any, url: str, step: str) -> None:
    assert r.outcome.value == "Succeeded", (r.reason, r.message)
    retried = [x for x in r.data.get("transientRetries") or [] if x["step"] == step]
    assert retried and retried[0]["reason"] == "DatabaseUnreachable", r.data.get("transientRetries")
    assert [s["outcome"] for s in r.data["steps"]] == ["Succeeded"] * 3, r.data["steps"]
    _applied_once(url)


@pytest.mark.parametrize("step", ["precheck", "verify"])
def test_a_backend_terminated_while_a_read_only_step_counts_is_run_again(fresh_db: str, shadow_parent: Path,
                                                                        step: str) -> None:
    """pg_terminate_backend on the step's counting session (the precheck's, resp. verify's, user check)."""
    before = _databases(fresh_db)
    t, out = _run_pipeline(fresh_db)
    pid = _wait_for_pid(fresh_db, COUNTING.format(app=f"schemagate-{step}"), 300, t, out)
    execute(fresh_db, f"SELECT pg_terminate_backend({pid})")
    t.join(600)
    _converged(out["r"], fresh_db, step)
    _nothing_left(fresh_db, shadow_parent, before)


@pytest.mark.parametrize("step", ["precheck", "verify"])
def test_a_server_restart_while_a_read_only_step_counts_converges(private_pg: Any, shadow_parent: Path,
                                                                  step: str) -> None:
    """Stopped (fast: every backend gets 57P01) while the step counts, started again 2 s later."""
    url = private_pg.db_url
    before = _databases(url)
    t, out = _run_pipeline(url)
    _wait_for_pid(url, COUNTING.format(app=f"schemagate-{step}"), 300, t, out)
    private_pg.stop("fast")
    time.sleep(2)
    private_pg.start()
    t.join(600)
    _converged(out["r"], url, step)
    _nothing_left(url, shadow_parent, before)


# ---------------------------------------------------------------------------------------------------------------
# the precheck's throw-away shadow server (runner/shadowserver.py) lost while the pending revisions run in it: the
# slow revision 0002 sleeps 3 s there first. Its directory (under the private SCHEMAGATE_SHADOW_DIR) holds the port
# (data/postmaster.pid) and the superuser's password (.password), so the test connects to it like the precheck does.


def _shadow_server(parent: Path, timeout: float, running: threading.Thread) -> tuple[str, int]:
    """(superuser URL of the ``postgres`` database, postmaster pid) of the one throw-away server under ``parent``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running.is_alive():
        servers = shadow_servers(parent)
        if servers:
            return servers[0]
        time.sleep(0.1)
    raise AssertionError(f"no running throw-away server appeared under {parent}")


def _shadow_backend(shadow_url: str, running: threading.Thread, out: dict[str, Any]) -> int:
    sql = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not running.is_alive():
            raise AssertionError(f"the run ended before revision 0002 ran in the shadow: {out['r'].message}")
        for db in (scalar(shadow_url, "SELECT array_agg(datname) FROM pg_database WHERE NOT datistemplate") or []):
            try:
                from schemagate.contract.dburl import with_database

                pid = scalar(with_database(shadow_url, db), sql)
            except Exception:  # noqa: BLE001 - the shadow database may be dropped and made again meanwhile
                pid = None
            if pid:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError("revision 0002 never ran in the throw-away shadow")


def _shadow_lost(r: Any, url: str) -> None:
    assert r.outcome.value == "Succeeded", (r.reason, r.message)
    first = (r.data.get("transientRetries") or [{}])[0]
    assert first.get("step") == "precheck" and first.get("reason") == "DatabaseUnreachable", first
    assert "throw-away shadow database was lost" in first["message"], first
    _applied_once(url)


def test_a_shadow_backend_terminated_during_the_precheck_is_run_again(fresh_db: str, shadow_parent: Path) -> None:
    """pg_terminate_backend on the throw-away server while revision 0002 runs there: a transient precheck failure
    that says the shadow was lost (not that the migration would fail); the run converges, nothing is left."""
    before = _databases(fresh_db)
    t, out = _run_pipeline(fresh_db)
    shadow_url, _ = _shadow_server(shadow_parent, 300, t)
    pid = _shadow_backend(shadow_url, t, out)
    execute(shadow_url, f"SELECT pg_terminate_backend({pid})")
    t.join(600)
    _shadow_lost(out["r"], fresh_db)
    _nothing_left(fresh_db, shadow_parent, before)


def test_the_shadow_server_killed_during_the_precheck_is_run_again(fresh_db: str, shadow_parent: Path) -> None:
    """SIGKILL to the throw-away server's postmaster (as the kernel's OOM killer would) while revision 0002 runs
    there: transient, run again on a new server; the dead server's directory and processes are removed."""
    import os
    import signal

    before = _databases(fresh_db)
    t, out = _run_pipeline(fresh_db)
    shadow_url, postmaster = _shadow_server(shadow_parent, 300, t)
    _shadow_backend(shadow_url, t, out)
    # its shared memory lives in its directory: nothing in /dev/shm outlives a killed server
    maps = Path(f"/proc/{postmaster}/maps").read_text()
    assert "/dev/shm/PostgreSQL." not in maps and "pg_dynshmem" in maps, maps[-2000:]
    os.kill(postmaster, signal.SIGKILL)
    t.join(600)
    _shadow_lost(out["r"], fresh_db)
    _nothing_left(fresh_db, shadow_parent, before)


SLOWDATA = Path(__file__).resolve().parent / "projects" / "graph" / "slowdata.ini"


def test_the_data_carrying_shadow_lost_during_the_precheck_is_run_again(fresh_db: str, shadow_parent: Path) -> None:
    """The slowdata project's 0002 backfills items.qty, sleeps 3 s, then sets NOT NULL: the precheck counts it in
    a second, data-carrying throw-away server (the real rows, 10 NULLs, would block). Its session is terminated
    while 0002 sleeps there: a transient failure that says the shadow was lost (it was reported as the revision
    failing "on the data", PrecheckIncomplete, a block needing a person); the run converges, nothing is left."""
    from schemagate.contract.dburl import database_name, with_database
    from schemagate.runner.pipeline import run

    assert migrate(Target(SLOWDATA, "0001", fresh_db, None)).outcome.value == "Succeeded"
    before = _databases(fresh_db)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=run(Target(SLOWDATA, "head", fresh_db, None), backup=False,
                                                         lint=False, retries=6)))
    t.start()
    db = database_name(fresh_db)
    sql = ("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%' AND pid <> pg_backend_pid() "
           "AND (SELECT count(*) FROM items) > 0")  # only the data-carrying shadow holds the rows

    def data_shadow_backend() -> tuple[str, int] | None:
        for server, _ in shadow_servers(shadow_parent):
            try:
                pid = scalar(with_database(server, db), sql)
            except Exception:  # noqa: BLE001 - a server starting, stopping, or without that database yet
                continue
            if pid:
                return with_database(server, db), int(pid)
        return None

    deadline = time.monotonic() + 300
    found = None
    while found is None:
        assert t.is_alive(), f"the run ended first: {out['r'].reason}: {out['r'].message}"
        assert time.monotonic() < deadline, "revision 0002 never ran in a data-carrying shadow"
        found = data_shadow_backend()
        time.sleep(0.05)
    execute(found[0], f"SELECT pg_terminate_backend({found[1]})")
    t.join(600)
    r = out["r"]
    assert r.outcome.value == "Succeeded", (r.reason, r.message)
    first = (r.data.get("transientRetries") or [{}])[0]
    assert first.get("step") == "precheck" and first.get("reason") == "DatabaseUnreachable", first
    assert "data-carrying throw-away shadow database was lost" in first["message"], first
    assert query(fresh_db, "SELECT revision, count(*) FROM applied_log GROUP BY 1 ORDER BY 1") == [
        ("0001", 1), ("0002", 1)]
    assert scalar(fresh_db, "SELECT count(*) FROM items WHERE qty IS NULL") == 0
    _nothing_left(fresh_db, shadow_parent, before)
