"""Retry after a partly applied, non-transactional step, on real PostgreSQL (case 05 and its kin).

A CREATE INDEX CONCURRENTLY (or CREATE UNIQUE INDEX CONCURRENTLY, or REINDEX CONCURRENTLY) in an
``autocommit_block`` commits its catalog entry, then waits for the writers of the table; ``lock_timeout`` cancels
that wait and leaves an INVALID index behind (``indisvalid = false``). Before each retry, migrate drops the INVALID
indexes the failing revision's own statements created (DROP INDEX CONCURRENTLY), records them in the result, and
never touches any other index. The writer that blocks the build is a real second session.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import verify as verify_step
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import PROJECTS, engine, execute, query

CONCURRENT = PROJECTS / "graph" / "concurrent.ini"
CASE05 = Path("/work/shared/cases/precheck/05-cic-lock-timeout-retry")


@contextmanager
def writer(url: str, sql: str, hold: float) -> Iterator[threading.Thread]:
    """A second session that runs ``sql`` in a transaction and keeps it open for ``hold`` seconds."""
    started = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        e = engine(url)
        try:
            with e.connect() as c:
                c.exec_driver_sql(sql)
                started.set()
                time.sleep(hold)
                c.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            started.set()
        finally:
            e.dispose()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(30), "the writer session did not start"
    assert not errors, errors
    try:
        yield t
    finally:
        t.join(60)
        assert not errors, errors


def indexes(url: str, schema: str = "public") -> dict[str, bool]:
    """Index name -> valid (indisvalid) for every index in ``schema``."""
    return dict(query(url, "select c.relname, i.indisvalid from pg_index i join pg_class c on c.oid = i.indexrelid "
                           "join pg_namespace n on n.oid = c.relnamespace where n.nspname = :s", s=schema))


def versions(url: str) -> list[str]:
    return [r[0] for r in query(url, "select version_num from alembic_version order by 1")]


def prepare_case05(url: str) -> Path:
    ini = CASE05 / "alembic.ini"
    r = migrate(Target(ini, "0001", url), retries=0)
    assert r.ok, r.message
    execute(url, (CASE05 / "data.sql").read_text().replace("%", "%%"))  # no parameters: % is the operator
    return ini


def test_case_05_lock_timeout_leftover_dropped_before_the_retry(fresh_db: str) -> None:
    ini = prepare_case05(fresh_db)
    # an unrelated INVALID index (a failed unique build on duplicates): never touched
    execute(fresh_db, "create table other (v int); insert into other values (1), (1)")
    e = engine(fresh_db)
    with e.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        try:
            c.exec_driver_sql("create unique index concurrently ix_events_kind_other on other (v)")
        except Exception:  # noqa: BLE001 - the duplicate makes it fail and stay INVALID, on purpose
            pass
    e.dispose()
    assert indexes(fresh_db)["ix_events_kind_other"] is False

    with writer(fresh_db, "begin; insert into events (kind) values ('late'); select pg_sleep(0)", hold=3.5):
        r = migrate(Target(ini, "head", fresh_db), lock_timeout="1s", retries=5, backoff=1.0, max_backoff=2.0)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.data["attempts"] >= 2
    assert versions(fresh_db) == ["0002"]
    ix = indexes(fresh_db)
    assert ix["ix_events_kind"] is True
    assert ix["ix_events_kind_other"] is False  # someone else's leftover stays
    left = r.data["leftovers"]
    assert left and all(x["index"] == "ix_events_kind" and x["schema"] == "public" and x["table"] == "events"
                        and x["revision"] == "0002" and x["dropped"] for x in left), left
    assert "ix_events_kind" in r.message and "DROP INDEX CONCURRENTLY" in r.message
    v = verify_step.verify(Target(ini, "head", fresh_db), plan={"targetRevision": "0002",
                                                         "indexes": [{"name": "ix_events_kind", "schema": "public",
                                                                      "table": "events"}]})
    assert v.outcome is Outcome.SUCCEEDED, v.message


def test_leftover_of_an_earlier_run_is_named_then_dropped_by_the_next_run(fresh_db: str) -> None:
    """The retry is a new process (the operator's retry annotation, a new Job): the first attempt then fails with
    'already exists' on the leftover; migrate drops it and applies the revision."""
    ini = prepare_case05(fresh_db)
    with writer(fresh_db, "begin; insert into events (kind) values ('late')", hold=2.5):
        first = migrate(Target(ini, "head", fresh_db), lock_timeout="1s", retries=0)
    assert (first.outcome, first.reason) == (Outcome.TRANSIENT_ERROR, "LockTimeout"), first.message
    assert versions(fresh_db) == ["0001"]
    assert indexes(fresh_db)["ix_events_kind"] is False
    assert "ix_events_kind" in first.message and "INVALID" in first.message
    assert first.data["leftovers"][0]["dropped"] is False

    second = migrate(Target(ini, "head", fresh_db), lock_timeout="1s", retries=0)
    assert second.outcome is Outcome.SUCCEEDED, second.message
    assert versions(fresh_db) == ["0002"] and indexes(fresh_db)["ix_events_kind"] is True
    assert [(x["index"], x["dropped"]) for x in second.data["leftovers"]] == [("ix_events_kind", True)]
    assert json.loads(second.to_json())["data"]["leftovers"]


def test_unique_index_and_reindex_concurrently_in_a_mixed_case_schema(fresh_db: str) -> None:
    r = migrate(Target(CONCURRENT, "0001", fresh_db), retries=0)
    assert r.ok, r.message
    execute(fresh_db, """insert into "Sales"."Ev" ("Code", "Note") select 'c' || g, 'n' || g
                         from generate_series(1, 500) g""")
    # 0002: CREATE UNIQUE INDEX CONCURRENTLY "ix_Ev_Code" ON "Sales"."Ev" blocked by a writer on "Sales"."Ev"
    with writer(fresh_db, """begin; insert into "Sales"."Ev" ("Code") values ('late')""", hold=3.5):
        r = migrate(Target(CONCURRENT, "0002", fresh_db), lock_timeout="1s", retries=5, backoff=1.0, max_backoff=2.0)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert indexes(fresh_db, "Sales")["ix_Ev_Code"] is True
    assert {(x["schema"], x["table"], x["index"]) for x in r.data["leftovers"]} == {("Sales", "Ev", "ix_Ev_Code")}
    # 0003: REINDEX INDEX CONCURRENTLY "Sales"."ix_Ev_Note" blocked: leaves "ix_Ev_Note_ccnew" INVALID
    with writer(fresh_db, """begin; insert into "Sales"."Ev" ("Code") values ('later')""", hold=2.5):
        first = migrate(Target(CONCURRENT, "head", fresh_db), lock_timeout="1s", retries=0)
    assert first.reason == "LockTimeout", first.message
    assert indexes(fresh_db, "Sales").get("ix_Ev_Note_ccnew") is False
    second = migrate(Target(CONCURRENT, "head", fresh_db), lock_timeout="1s", retries=3, backoff=0.5)
    assert second.outcome is Outcome.SUCCEEDED, second.message
    ix = indexes(fresh_db, "Sales")
    assert "ix_Ev_Note_ccnew" not in ix and ix["ix_Ev_Note"] is True, ix
    assert indexes(fresh_db)["ix_events_kind"] is True
    assert ("Sales", "ix_Ev_Note_ccnew") in {(x["schema"], x["index"]) for x in second.data["leftovers"]}
    assert versions(fresh_db) == ["0003"]


def test_failed_unique_build_is_named_then_dropped_by_the_retry_after_the_data_fix(fresh_db: str) -> None:
    """CREATE UNIQUE INDEX CONCURRENTLY on duplicates fails for good (not a lock timeout) and leaves an INVALID
    index that still enforces uniqueness on new rows: the failure names it; the retry after the data fix (a new
    run, as after schemagate.dev/retry) drops it before building again."""
    assert migrate(Target(CONCURRENT, "0001", fresh_db), retries=0).ok
    execute(fresh_db, """insert into "Sales"."Ev" ("Code") values ('same'), ('same'), ('other')""")
    failed = migrate(Target(CONCURRENT, "0002", fresh_db), retries=3, backoff=0.1)
    assert (failed.outcome, failed.reason) == (Outcome.PERMANENT_ERROR, "MigrationFailed"), failed.message
    assert failed.data["attempts"] == 1  # not a lock timeout: no retry within the run
    assert indexes(fresh_db, "Sales")["ix_Ev_Code"] is False
    assert "ix_Ev_Code" in failed.message and "INVALID" in failed.message
    assert [(x["schema"], x["index"], x["dropped"]) for x in failed.data["leftovers"]] == [
        ("Sales", "ix_Ev_Code", False)]
    execute(fresh_db, """delete from "Sales"."Ev" where "Code" = 'same' and "Id" > (
                             select min("Id") from "Sales"."Ev" where "Code" = 'same')""")
    again = migrate(Target(CONCURRENT, "0002", fresh_db), retries=0)
    assert again.outcome is Outcome.SUCCEEDED, again.message
    assert indexes(fresh_db, "Sales")["ix_Ev_Code"] is True
    assert [(x["index"], x["dropped"]) for x in again.data["leftovers"]] == [("ix_Ev_Code", True)]


def test_statements_committed_on_their_own_before_a_lock_timeout_are_named(fresh_db: str) -> None:
    """Revision 0002 creates a type, then, in an autocommit_block (which commits the type first), adds an enum
    label and an audit table, then builds an index concurrently behind a writer. The lock timeout leaves those
    committed: the result names each (a retry runs them again) besides dropping the INVALID index."""
    committed = PROJECTS / "graph" / "committed.ini"
    assert migrate(Target(committed, "0001", fresh_db), retries=0).ok
    with writer(fresh_db, "begin; insert into events (kind) values ('late')", hold=2.5):
        r = migrate(Target(committed, "head", fresh_db), lock_timeout="1s", retries=0)
    assert r.reason == "LockTimeout", r.message
    stmts = [(x["revision"], x["statement"]) for x in r.data["committedBeforeFailure"]]
    assert stmts == [("0002", "CREATE TYPE mood AS ENUM ('calm')"), ("0002", "ALTER TYPE mood ADD VALUE 'tense'"),
                     ("0002", "CREATE TABLE events_audit (id int)")], stmts
    assert "committed on their own" in r.message and "events_audit" in r.message
    assert [(x["index"], x["dropped"]) for x in r.data["leftovers"]] == [("ix_events_kind", False)]
    assert versions(fresh_db) == ["0001"]
