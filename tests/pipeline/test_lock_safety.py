"""The example migrations never deadlock with application traffic (issue: the wholesale revision 0002 held
``orders`` while waiting for ``stock_reservations``, and an application INSERT into ``stock_reservations`` waited
on ``orders`` for its foreign-key check: PostgreSQL's deadlock detector aborted one of them).

The scenario is replayed deterministically on a real PostgreSQL, bounded to a few seconds:

1. an application transaction takes ROW EXCLUSIVE on ``stock_reservations`` (it adjusts a reservation);
2. the migrate step runs revision 0002 until it waits for its lock on ``stock_reservations``;
3. the same application transaction inserts a reservation, whose foreign-key check needs ROW SHARE on ``orders``.

A migration holding a strong lock on ``orders`` at step 2 closes a cycle (a deadlock, SQLSTATE 40P01). A
lock-safe one holds nothing while it waits, so the application commits and then the migration proceeds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from schemagate import demo
from schemagate.contract.target import Target
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import FOODTRUCK, WHOLESALE, scalar, version

WAITING_ON_RESERVATIONS = (
    "select count(*) from pg_locks l join pg_class c on c.oid = l.relation "
    "where not l.granted and c.relname = 'stock_reservations' and l.database = "
    "(select oid from pg_database where datname = current_database())"
)


def _deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("select pg_stat_clear_snapshot()")
        row = c.execute("select deadlocks from pg_stat_database where datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def test_wholesale_0002_does_not_deadlock_with_an_application_insert(fresh_db: str) -> None:
    demo.seed_wholesale(fresh_db)
    deadlocks_before = _deadlocks(fresh_db)
    result: dict[str, Any] = {}
    app = psycopg.connect(fresh_db)
    app.execute("set statement_timeout = '8s'")
    try:
        # 1. the application's transaction: ROW EXCLUSIVE on stock_reservations, nothing on orders yet
        app.execute("update stock_reservations set quantity = quantity where id = 'sr1'")

        def run() -> None:
            result["r"] = migrate(Target(WHOLESALE, "0002", fresh_db), lock_timeout="5s", retries=0)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        # 2. wait until the migration waits for its lock on stock_reservations (bounded)
        deadline = time.monotonic() + 15
        while not scalar(fresh_db, WAITING_ON_RESERVATIONS):
            assert t.is_alive(), f"the migration ended before reaching stock_reservations: {result.get('r')}"
            assert time.monotonic() < deadline, "the migration never waited for stock_reservations"
            time.sleep(0.02)
        # 3. the application inserts a reservation: its foreign-key check needs ROW SHARE on orders
        app_error = None
        try:
            app.execute("insert into stock_reservations (id, order_id, product_id, quantity) "
                        "values ('sr-app', 'o1', 'p1', 1)")
            app.commit()
        except psycopg.Error as e:
            app_error = f"{e.sqlstate}: {e}"
            app.rollback()
        t.join(30)
        assert not t.is_alive(), "the migration did not finish within 30 s"
    finally:
        app.close()
    r = result["r"]
    assert app_error is None, f"PostgreSQL aborted the application's transaction: {app_error}"
    assert "deadlock" not in r.message.lower(), f"the migration deadlocked with the application: {r.message}"
    assert r.outcome.value == "Succeeded", r.message
    assert version(fresh_db) == "0002"
    assert scalar(fresh_db, "select count(*) from stock_reservations where id = 'sr-app'") == 1
    time.sleep(0.6)  # statistics of the ended sessions reach pg_stat_database
    assert _deadlocks(fresh_db) == deadlocks_before, "pg_stat_database counted a deadlock"


def test_each_lock_timeout_attempt_reports_the_lock_and_who_held_it(fresh_db: str) -> None:
    """The migrate step observes its own lock waits (pg_locks, pg_blocking_pids) and names the holder."""
    demo.seed_foodtruck(fresh_db)
    blocker = psycopg.connect(fresh_db, application_name="nightly-report")
    try:
        blocker.execute("select count(*) from menu_items")  # ACCESS SHARE until the transaction ends
        blocker_pid = blocker.info.backend_pid
        log: list[str] = []
        r = migrate(Target(FOODTRUCK, "head", fresh_db), lock_timeout="400ms", retries=1, backoff=0.1, log=log.append)
    finally:
        blocker.close()
    assert r.reason == "LockTimeout" and r.data["attempts"] == 2, r.message
    waits = r.data["lockWaits"]
    assert [w["attempt"] for w in waits] == [1, 2] and all(w["outcome"] == "LockTimeout" for w in waits)
    for w in waits:
        assert w["lock"] == {"locktype": "relation", "mode": "AccessExclusiveLock", "relation": "menu_items"}, w
        assert [h["pid"] for h in w["heldBy"]] == [blocker_pid]
        assert w["heldBy"][0]["applicationName"] == "nightly-report"
        assert w["heldBy"][0]["state"] == "idle in transaction"
        assert "menu_items" in w["statement"]
    assert f"held by pid {blocker_pid} (application 'nightly-report'" in r.message
    assert any(f"held by pid {blocker_pid}" in line for line in log if "attempt 1" in line)


def test_a_migration_without_lock_waits_reports_none(fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    r = migrate(Target(FOODTRUCK, "head", fresh_db), lock_timeout="5s")
    assert r.outcome.value == "Succeeded" and r.data["lockWaits"] == [], r.data
