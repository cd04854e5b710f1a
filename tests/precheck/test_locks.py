"""The lock lint (schemagate.analysis.locks): lock levels per statement, the two deadlock-risk rules, transaction
grouping, and the precheck's report on the wholesale example (lock-safe) and on its naive variant (flagged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemagate import demo
from schemagate.analysis import locks
from schemagate.analysis.locks import (
    ACCESS_EXCLUSIVE,
    ROW_EXCLUSIVE,
    SHARE,
    SHARE_ROW_EXCLUSIVE,
    SHARE_UPDATE_EXCLUSIVE,
    Lock,
)
from schemagate.contract.target import Target
from schemagate.runner import precheck
from tests.precheck.helpers import REPO


def ddl(rev: str, sql: str, **kw: Any) -> dict[str, Any]:
    return {"revision": rev, "kind": "ddl", "sql": sql, **kw}


def rules(result: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    return [(f["rule"], f["revision"], f["tables"]) for f in result["findings"]]


@pytest.mark.parametrize("sql, expected", [
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID", [Lock("t", ACCESS_EXCLUSIVE)]),
    ("ALTER TABLE t ADD COLUMN v int NOT NULL DEFAULT 0", [Lock("t", ACCESS_EXCLUSIVE)]),
    ("ALTER TABLE t VALIDATE CONSTRAINT c", [Lock("t", SHARE_UPDATE_EXCLUSIVE)]),
    ("ALTER TABLE t ALTER COLUMN a SET STATISTICS 500", [Lock("t", SHARE_UPDATE_EXCLUSIVE)]),
    ("ALTER TABLE t SET (fillfactor = 70)", [Lock("t", SHARE_UPDATE_EXCLUSIVE)]),
    ("ALTER TABLE t SET (user_catalog_table = true)", [Lock("t", ACCESS_EXCLUSIVE)]),
    ("ALTER TABLE t DISABLE TRIGGER tr", [Lock("t", SHARE_ROW_EXCLUSIVE)]),
    ("ALTER TABLE s.t ADD CONSTRAINT f FOREIGN KEY (r_id) REFERENCES r (id) NOT VALID",
     [Lock("s.t", SHARE_ROW_EXCLUSIVE), Lock("r", SHARE_ROW_EXCLUSIVE),
      Lock("s.t", SHARE_ROW_EXCLUSIVE, references="r")]),
    # the strongest sub-command wins: VALIDATE (SUE) + a CHECK (AE) in one ALTER TABLE
    ("ALTER TABLE t VALIDATE CONSTRAINT c, ADD CONSTRAINT d CHECK (b > 0)", [Lock("t", ACCESS_EXCLUSIVE)]),
    ("CREATE INDEX i ON t (a)", [Lock("t", SHARE)]),
    ("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)", [Lock("t", SHARE_UPDATE_EXCLUSIVE)]),
    ("DROP TABLE a, s.b", [Lock("a", ACCESS_EXCLUSIVE), Lock("s.b", ACCESS_EXCLUSIVE)]),
    ("LOCK TABLE a IN SHARE MODE", [Lock("a", SHARE)]),
    ("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", [Lock("t", SHARE_ROW_EXCLUSIVE)]),
    ("UPDATE t SET a = 1", [Lock("t", ROW_EXCLUSIVE)]),
    ("CREATE TABLE n (id int PRIMARY KEY, r_id int REFERENCES r (id))",
     [Lock("n", ACCESS_EXCLUSIVE, creates=True), Lock("r", SHARE_ROW_EXCLUSIVE),
      Lock("n", ACCESS_EXCLUSIVE, references="r")]),
    ("SET lock_timeout = '500ms'", []),
])
def test_documented_lock_level_per_statement(sql: str, expected: list[Lock]) -> None:
    assert locks.statement_locks(sql) == expected


def test_dropping_a_known_foreign_key_locks_the_referenced_table_too() -> None:
    """Not visible in the statement: PostgreSQL takes ACCESS EXCLUSIVE on the referenced table (seen in pg_locks)."""
    sql = "ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_order_id_fkey"
    assert locks.statement_locks(sql) == [Lock("ledger_entries", ACCESS_EXCLUSIVE)]
    fks = {("ledger_entries", "ledger_entries_order_id_fkey"): "orders"}
    assert locks.statement_locks(sql, fks) == [Lock("ledger_entries", ACCESS_EXCLUSIVE),
                                               Lock("orders", ACCESS_EXCLUSIVE)]
    # re-adding the key in the same transaction waits for nothing more (both tables are held ACCESS EXCLUSIVE)
    r = locks.lint_locks([ddl("0002", sql, tx=1), ddl("0002", NAIVE[0]["sql"], tx=1)], fks)
    assert r["findings"] == []
    # ... but a CHECK on a third table after it holds two tables while it may wait for the third
    r = locks.lint_locks([ddl("0002", sql, tx=1), ddl("0002", NAIVE[2]["sql"], tx=1)], fks)
    assert rules(r) == [("lock-multiple-tables", "0002", ["ledger_entries", "orders", "stock_reservations"])]


@pytest.mark.parametrize("requested, held, waits", [
    (SHARE_ROW_EXCLUSIVE, None, True),
    (SHARE_ROW_EXCLUSIVE, ACCESS_EXCLUSIVE, False),   # nobody else holds anything
    (SHARE_ROW_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, False),  # others may hold only ACCESS SHARE / ROW SHARE
    (SHARE_ROW_EXCLUSIVE, SHARE, True),               # others may hold SHARE too
    (ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, True),    # others' ACCESS SHARE (readers) conflicts
    (ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, False),
])
def test_may_wait_follows_the_documented_conflict_table(requested: str, held: str | None, waits: bool) -> None:
    assert locks.may_wait(requested, held) is waits


def test_foreign_keys_of_a_catalog_snapshot() -> None:
    from types import SimpleNamespace as C

    cons = [C(schema="public", relname="ledger_entries", name="fk", contype="f", ref_schema="public",
              ref_relname="orders"),
            C(schema="sales", relname="lines", name="fk2", contype="f", ref_schema="sales", ref_relname="heads"),
            C(schema="public", relname="orders", name="ck", contype="c", ref_schema=None, ref_relname=None)]
    assert locks.foreign_keys_of(cons) == {
        ("ledger_entries", "fk"): "orders", ("public.ledger_entries", "fk"): "orders",
        ("lines", "fk2"): "sales.heads", ("sales.lines", "fk2"): "sales.heads"}


def test_unparsable_statement_raises_naming_the_parser_error() -> None:
    with pytest.raises(locks.UnparsableStatement, match="pglast could not parse"):
        locks.statement_locks("ALTER TABLE WHERE")


NAIVE = [
    ddl("0002", "ALTER TABLE ledger_entries ADD CONSTRAINT l FOREIGN KEY (order_id) REFERENCES orders (id) "
                "NOT VALID", tx=1),
    ddl("0002", "ALTER TABLE orders ADD CONSTRAINT c CHECK (total_amount > 0) NOT VALID", tx=1),
    ddl("0002", "ALTER TABLE stock_reservations ADD CONSTRAINT q CHECK (quantity > 0) NOT VALID", tx=1),
]


def test_multiple_tables_in_one_transaction_is_a_deadlock_risk() -> None:
    r = locks.lint_locks(NAIVE)
    assert r["available"] and r["note"] is None
    assert rules(r) == [("lock-multiple-tables", "0002", ["ledger_entries", "orders", "stock_reservations"])]
    assert r["revisions"] == [{"revision": "0002", "tables": [
        {"table": "ledger_entries", "lock": SHARE_ROW_EXCLUSIVE, "created": False},
        {"table": "orders", "lock": ACCESS_EXCLUSIVE, "created": False},
        {"table": "stock_reservations", "lock": ACCESS_EXCLUSIVE, "created": False}]}]


def test_one_table_per_transaction_is_not_flagged_but_still_reported() -> None:
    safe = [dict(s, tx=i) for i, s in enumerate(NAIVE, start=1)]
    r = locks.lint_locks(safe)
    assert r["findings"] == []
    assert [t["table"] for t in r["revisions"][0]["tables"]] == ["ledger_entries", "orders", "stock_reservations"]
    auto = [dict((k, v) for k, v in s.items() if k != "tx") | {"autocommit": True} for s in NAIVE]
    assert locks.lint_locks(auto)["findings"] == []


def test_a_single_foreign_key_statement_in_its_own_transaction_is_not_flagged() -> None:
    r = locks.lint_locks([NAIVE[0]])
    assert r["findings"] == []
    assert {t["table"] for t in r["revisions"][0]["tables"]} == {"ledger_entries", "orders"}


def test_foreign_key_added_while_holding_the_referenced_table() -> None:
    r = locks.lint_locks([
        ddl("0005", "ALTER TABLE orders ADD COLUMN note text", tx=7),
        ddl("0005", "ALTER TABLE credit_transactions ADD CONSTRAINT f FOREIGN KEY (order_id) REFERENCES orders (id) "
                    "NOT VALID", tx=7),
    ])
    assert ("lock-foreign-key-referenced-held", "0005", ["credit_transactions", "orders"]) in rules(r)
    f = next(f for f in r["findings"] if f["rule"] == "lock-foreign-key-referenced-held")
    assert "already holds ACCESS EXCLUSIVE on orders" in f["message"] and f["transaction"] == 1


def test_a_weak_lock_on_the_referenced_table_counts_as_held() -> None:
    """A data change on the parent (ROW EXCLUSIVE) before the foreign key: the FK then upgrades that lock."""
    r = locks.lint_locks([
        ddl("0006", "UPDATE orders SET status = 'x' WHERE false", tx=1, kind="dml"),
        ddl("0006", "ALTER TABLE ledger_entries ADD CONSTRAINT f FOREIGN KEY (order_id) REFERENCES orders (id)",
            tx=1),
    ])
    assert [f["rule"] for f in r["findings"]] == ["lock-foreign-key-referenced-held"]


def test_tables_created_by_the_pending_revisions_do_not_count() -> None:
    r = locks.lint_locks([
        ddl("0001", "CREATE TABLE a (id int PRIMARY KEY)", tx=1),
        ddl("0001", "CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a (id))", tx=1),
        ddl("0001", "CREATE INDEX b_a ON b (a_id)", tx=1),
        ddl("0001", "ALTER TABLE a ADD CONSTRAINT c CHECK (id > 0)", tx=1),
    ])
    assert r["findings"] == []
    assert all(t["created"] for t in r["revisions"][0]["tables"])


def test_without_transaction_numbers_a_revision_is_one_transaction_and_concurrently_its_own() -> None:
    plain = [{k: v for k, v in s.items() if k != "tx"} for s in NAIVE]
    assert [f["rule"] for f in locks.lint_locks(plain)["findings"]] == ["lock-multiple-tables"]
    split = [plain[0], ddl("0002", "CREATE INDEX CONCURRENTLY i ON orders (id)"),
             ddl("0003", "ALTER TABLE orders ADD COLUMN x int")]
    assert locks.lint_locks(split)["findings"] == []


def test_unparsable_statements_are_named_in_the_note_and_nothing_is_invented() -> None:
    r = locks.lint_locks([ddl("0009", "ALTER TABLE WHERE", tx=1)])
    assert r["available"] and r["findings"] == [] and "revision 0009" in (r["note"] or "")
    assert locks.lint_locks(None)["available"] is False


def test_merge_into_adds_grouped_findings_as_blocking() -> None:
    base = {"available": True, "findings": [{"rule": "prefer-robust-stmts", "count": 2, "message": "m"}],
            "total": 2, "blocking": 0}
    merged = locks.merge_into(base, locks.lint_locks(NAIVE))
    assert merged["total"] == 3 and merged["blocking"] == 1
    assert [f["rule"] for f in merged["findings"]] == ["lock-multiple-tables", "prefer-robust-stmts"]
    assert merged["locks"]["findings"][0]["tables"] == ["ledger_entries", "orders", "stock_reservations"]


def naive_wholesale(tmp_path: Path) -> Path:
    dest = tmp_path / "wholesale-naive"
    shutil.copytree(REPO / "migrations" / "wholesale", dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "bench" / "projects" / "wholesale_naive_0002.py",
                    dest / "versions" / "0002_production_safety_constraints.py")
    return dest / "alembic.ini"


def lock_findings(r: Any) -> list[tuple[str, str]]:
    return [(f["rule"], f["revision"]) for f in r.data["lint"]["locks"]["findings"]]


def test_precheck_flags_the_naive_wholesale_revision(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_wholesale(fresh_db)
    r = precheck.precheck(Target(naive_wholesale(tmp_path), "head", fresh_db, "DATABASE_URL"))
    found = lock_findings(r)
    assert ("lock-multiple-tables", "0002") in found
    # the credit_transactions foreign key comes after the ledger_entries one, which locked orders
    assert ("lock-foreign-key-referenced-held", "0002") in found
    multi = next(f for f in r.data["lint"]["locks"]["findings"] if f["rule"] == "lock-multiple-tables")
    assert {"orders", "stock_reservations", "credit_transactions", "ledger_entries"} <= set(multi["tables"])
    assert any(f["rule"] == "lock-multiple-tables" for f in r.data["lint"]["findings"])
    assert r.data["lint"]["blocking"] >= 2


def test_precheck_reports_the_shipped_wholesale_example_as_lock_safe(fresh_db: str) -> None:
    demo.seed_wholesale(fresh_db)
    r = precheck.precheck(Target(REPO / "migrations" / "wholesale" / "alembic.ini", "head", fresh_db, "DATABASE_URL"))
    report = r.data["lint"]["locks"]
    assert report["available"] and report["note"] is None, report
    assert report["findings"] == []
    tables = {rev["revision"]: {t["table"]: t["lock"] for t in rev["tables"]} for rev in report["revisions"]}
    assert tables["0002"]["orders"] == ACCESS_EXCLUSIVE
    assert tables["0002"]["credit_transactions"] == ACCESS_EXCLUSIVE  # the CHECK, after the FK's SRE
    assert "0003" not in tables or all(m != ACCESS_EXCLUSIVE for m in tables["0003"].values())


def test_precheck_reports_the_food_truck_example_as_lock_safe(fresh_db: str) -> None:
    demo.seed_foodtruck(fresh_db)
    r = precheck.precheck(Target(REPO / "migrations" / "foodtruck" / "alembic.ini", "head", fresh_db, "DATABASE_URL"))
    report = r.data["lint"]["locks"]
    assert report["findings"] == [] and report["available"]
    assert {t["table"] for rev in report["revisions"] for t in rev["tables"]} == {"menu_items"}


def test_kubernetes_phases_carry_transactions_from_the_injected_runner_to_the_lock_lint(
        fresh_db: str, tmp_path: Path, pod_shadow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare -> shadow-upgrade (the injected runner, application image) -> count: the statements the injected
    runner captures carry their transaction, and the count phase's lint reports the naive revision's locks."""
    from schemagate.runner.inject.shadow import shadow_upgrade

    demo.seed_wholesale(fresh_db)
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    work = pod_shadow  # the Job's shadow-server sidecar runs the throw-away server for this workdir
    assert precheck.prepare(workdir=work).ok
    shadow_upgrade(Target(naive_wholesale(tmp_path), "head", fresh_db, "DATABASE_URL"), work)  # the shadow of prepare.json
    statements = json.loads((work / "shadow-upgrade.json").read_text())["statements"]
    ddl_0002 = [s for s in statements if s["revision"] == "0002" and s["kind"] == "ddl"]
    assert ddl_0002 and len({s["tx"] for s in ddl_0002}) == 1, ddl_0002  # one transaction: the naive form
    assert any(s.get("autocommit") for s in statements if s["revision"] == "0003")  # CREATE INDEX CONCURRENTLY
    r = precheck.count(workdir=work)
    assert ("lock-multiple-tables", "0002") in lock_findings(r), r.data["lint"]


def test_the_lock_report_gives_way_before_any_count_in_the_termination_message(fresh_db: str) -> None:
    """The precheck Job reports through its share of the pod's termination messages: when even compressed it does
    not fit, the lock report's table lists are details, dropped before a single violation count would be."""
    from schemagate.contract.stepresult import (
        from_termination_message,
        termination_limit,
        to_termination_message,
    )

    demo.seed_wholesale(fresh_db)
    r = precheck.precheck(Target(REPO / "migrations" / "wholesale" / "alembic.ini", "head", fresh_db, "DATABASE_URL"))
    assert r.data["lint"]["locks"]["revisions"]
    msg = to_termination_message(r, limit=termination_limit(7))  # a precheck pod of 7 containers: 1755 bytes
    assert len(msg.encode()) <= termination_limit(7)
    d = from_termination_message(msg)
    assert d is not None and d["data"]["omitted"].get("lintLocks") == 1
    counts = {c["name"]: c["count"] for c in d["data"]["checks"] if c.get("count")}
    assert counts == demo.WHOLESALE_VIOLATIONS, d["data"].get("omitted")
