"""Derivation through a shadow database: real Alembic projects, real PostgreSQL, no hand-written check lists."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from schemagate.contract.dburl import with_database
from schemagate.contract.stepresult import ExitCode, Outcome
from schemagate.contract.target import Target
from schemagate.runner import precheck
from schemagate.runner.inject.shadow import shadow_upgrade
from tests.precheck.helpers import databases, execute, project, query, upgrade

pytestmark = pytest.mark.postgres


def by_name(result: Any) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result.data["checks"]}


def all_databases(url: str) -> set[str]:
    return databases(url)


# --------------------------------------------------------------------------------------------------------------
# env.py imports the application's models; a revision runs an ORM data migration


@pytest.fixture
def shop(fresh_db: str) -> str:
    upgrade(fresh_db, "shop", "0001")
    execute(fresh_db,
            "INSERT INTO products VALUES (1, 'a', 5, 0), (2, 'a', -1, 0), (3, NULL, NULL, 0), (4, NULL, -3, 0), "
            "(5, 'b', 0, 0)",
            "INSERT INTO orders VALUES (1, 1, 1, NULL), (2, 99, 1, 'x'), (3, NULL, 1, 'y'), (4, 5, 2, 'z')")
    return fresh_db


def test_shop_env_imports_models_and_orm_data_migration(shop: str) -> None:
    before = databases(shop)
    r = precheck.precheck(Target(project("shop"), "head", shop, "DATABASE_URL"))
    assert databases(shop) == before, "the shadow database must be dropped"
    assert r.outcome is Outcome.CHECKS_FAILED and r.reason == "ViolationsFound" and r.exit_code == 3
    d = r.data
    assert (d["currentRevision"], d["targetRevision"], d["pending"], d["derivation"]) == ("0001", "0002", ["0002"],
                                                                                         "shadow")
    checks = by_name(r)
    assert checks["ck_products_stock"]["count"] == 2 and checks["ck_products_stock"]["kind"] == "check"
    assert checks["uq_products_name"]["count"] == 2 and checks["uq_products_name"]["kind"] == "unique"
    assert checks["fk_orders_product"]["count"] == 1 and checks["fk_orders_product"]["kind"] == "foreignkey"
    # the ORM data migration fills the NULL note before SET NOT NULL: counted after it, in the data-carrying shadow
    assert checks["orders.note NOT NULL"]["count"] == 0 and checks["orders.note NOT NULL"]["kind"] == "notnull"
    assert d["route"] == "data-shadow" and all(c["evaluatedBy"] == "data-shadow" for c in d["checks"])
    assert sorted(d["dataShadow"]["tables"]) == ["public.orders", "public.products"] and d["dataShadow"]["bytes"] > 0
    assert d["total"] == 5
    # the new nullable column holds NULL in every existing row: its CHECK passes them
    assert checks["ck_products_version"]["count"] == 0 and "new column version" in checks["ck_products_version"]["note"]
    # a table the statement creates has no rows: its constraints are not checks
    assert "ck_audit_id" not in checks
    assert all(c["revision"] == "0002" for c in d["checks"])
    assert (checks["orders.note NOT NULL"]["schema"], checks["orders.note NOT NULL"]["table"],
            checks["orders.note NOT NULL"]["column"]) == ("public", "orders", "note")
    # the ORM migration reads rows (in the empty shadow it writes none): the data route counts after it
    assert d["dataChanges"] is True
    assert "data-carrying shadow" in d["derivationNote"] and "over-report" not in d["derivationNote"]
    assert {i["name"] for i in d["indexes"]} >= {"ix_orders_product", "uq_products_name"}
    # the DDL the revisions executed in the shadow is linted (an ORM migration cannot be rendered offline anyway)
    assert d["lint"]["available"] and d["lint"]["source"] == "captured"
    assert "offline rendering" not in (d["lint"]["note"] or "")
    assert {f["rule"] for f in d["lint"]["findings"]} >= {"constraint-missing-not-valid", "disallowed-unique-constraint"}


def test_max_violations_allows_a_budget(shop: str) -> None:
    r = precheck.precheck(Target(project("shop"), "head", shop, "DATABASE_URL"), max_violations=5, lint=False)
    assert r.outcome is Outcome.SUCCEEDED and r.reason == "PrecheckPassed" and r.data["total"] == 5
    assert r.data["lint"]["available"] is False


# --------------------------------------------------------------------------------------------------------------
# raw op.execute SQL, composite FKs, NOT VALID -> validated, NULLS NOT DISTINCT


def test_raw_sql_constraints(fresh_db: str) -> None:
    upgrade(fresh_db, "rawsql", "0001")
    execute(fresh_db,
            # a NOT VALID constraint is enforced on new rows: the old row predates it
            "ALTER TABLE accounts DROP CONSTRAINT ck_limit_positive",
            "INSERT INTO accounts VALUES (1, 'a@x', 5, 10), (2, 'a@x', 11, 10), (3, NULL, 1, -1), (4, NULL, NULL, 1)",
            "ALTER TABLE accounts ADD CONSTRAINT ck_limit_positive CHECK (credit_limit >= 0) NOT VALID",
            'INSERT INTO "Orders" VALUES (1, 1), (1, 2)',
            "INSERT INTO lines VALUES (1, 1, 1, 'c', NULL), (2, 9, 9, 'c', NULL), (3, NULL, 2, 'd', 'v'), "
            "(4, NULL, NULL, 'd', 'v')",
            "INSERT INTO refs VALUES (1, 1, 2), (2, 7, 7), (3, NULL, 7), (4, 7, NULL)")
    r = precheck.precheck(Target(project("rawsql"), "head", fresh_db, "DATABASE_URL"))
    checks = by_name(r)
    assert checks["ck_credit"]["count"] == 2  # accounts 2 and 3; account 4 (NULL) passes
    assert checks["ck_limit_positive"]["count"] == 1
    assert "NOT VALID before; validated by this statement" in checks["ck_limit_positive"]["note"]
    assert checks["fk_lines_order"]["count"] == 2  # (9, 9) orphan + (NULL, 2) partly NULL under MATCH FULL
    assert "MATCH FULL" in checks["fk_lines_order"]["definition"]
    assert checks["fk_refs_order"]["count"] == 1  # MATCH SIMPLE: only (7, 7)
    assert checks["uq_accounts_email"]["count"] == 2
    assert checks["uq_lines_code"]["count"] == 4  # ('c', NULL) x2 and ('d', 'v') x2: NULLS NOT DISTINCT
    assert r.data["total"] == 12 and r.data["dataChanges"] is False
    assert r.data["derivationNote"] is None
    assert r.data["lint"]["source"] == "captured"


# --------------------------------------------------------------------------------------------------------------
# the wholesale example (migrations/wholesale): the seed's ten CHECKs and its foreign keys


WHOLESALE_DATA = [
    "INSERT INTO retailers (id, name) VALUES ('r1', 'R1'), ('r2', 'R2'), ('r3', 'R3'), ('r4', 'R4')",
    "INSERT INTO wholesalers (id, name) VALUES ('w1', 'W1')",
    "INSERT INTO credit_accounts (id, retailer_id, credit_limit, used_credit) VALUES "
    "('a1', 'r1', 100, 50), ('a2', 'r2', 100, 150), ('a3', 'r3', -5, NULL), ('a4', 'r4', NULL, 10)",
    "INSERT INTO orders (id, retailer_id, total_amount) VALUES ('o1', 'r1', 10), ('o2', 'r1', 0), ('o3', 'r1', NULL)",
    "INSERT INTO credit_transactions (id, retailer_id, order_id, amount, type) VALUES "
    "('t1', 'r1', 'o1', 10, 'DEBIT'), ('t2', 'r1', 'nope', 0, 'DEBIT'), ('t3', 'r1', NULL, -3, 'DEBIT')",
    "INSERT INTO ledger_entries (id, retailer_id, order_id, amount) VALUES "
    "('l1', 'r1', 'o1', 5), ('l2', 'r1', NULL, NULL), ('l3', 'r1', 'o2', -1)",
    "INSERT INTO retailer_payments (id, retailer_id, amount) VALUES ('p1', 'r1', 0), ('p2', 'r1', 3)",
    "INSERT INTO wholesaler_products (id, wholesaler_id, name, price, stock, reserved_stock) VALUES "
    "('p1', 'w1', 'a', 1, 5, 2), ('p2', 'w1', 'b', 1, -1, 0), ('p3', 'w1', 'c', 1, 3, 5), "
    "('p4', 'w1', 'd', 1, NULL, -2)",
    "INSERT INTO stock_reservations (id, order_id, product_id, quantity) VALUES "
    "('s1', 'o1', 'p1', 1), ('s2', 'o1', 'p1', 0), ('s3', 'o1', 'p1', NULL)",
]

WHOLESALE_EXPECTED = {
    "check_credit_account_limit": 1,
    "check_credit_account_positive": 1,
    "check_credit_transaction_amount": 2,
    "check_ledger_entry_amount": 1,
    "check_payment_amount": 1,
    "check_stock_non_negative": 1,
    "check_reserved_stock_non_negative": 1,
    "check_stock_availability": 2,
    "check_order_amount_positive": 1,
    "check_reservation_quantity_positive": 1,
    "credit_transactions_order_id_fkey": 1,
}


@pytest.fixture
def wholesale(fresh_db: str) -> str:
    upgrade(fresh_db, "wholesale", "0001")
    execute(fresh_db, *WHOLESALE_DATA)
    return fresh_db


def test_wholesale_ten_checks_and_foreign_keys(wholesale: str) -> None:
    r = precheck.precheck(Target(project("wholesale"), "head", wholesale, "DATABASE_URL"))
    assert r.data["pending"] == ["0002", "0003"]
    checks = by_name(r)
    counted = {n: c["count"] for n, c in checks.items() if c["count"]}
    assert counted == WHOLESALE_EXPECTED
    assert sum(1 for c in checks.values() if c["kind"] == "check") == 10
    # 0002 adds it NOT VALID (no row checked), 0003 validates it: the revision whose statement checks the rows
    assert checks["credit_transactions_order_id_fkey"]["revision"] == "0003"
    assert "statement" not in checks["credit_transactions_order_id_fkey"]  # only not-evaluated checks carry it
    # the ledger FK only changes its ON DELETE action: the same key is already enforced, no row can violate it
    ledger = checks["ledger_entries_order_id_fkey"]
    assert ledger["count"] == 0 and ledger["evaluatedBy"] == "already-enforced" and "already enforces" in ledger["note"]
    assert r.data["total"] == sum(WHOLESALE_EXPECTED.values()) and r.exit_code == ExitCode.CHECKS_FAILED
    assert {i["name"] for i in r.data["indexes"]} == {
        "orders_status_created_at_idx", "orders_status_deleted_at_idx",
        "orders_wholesaler_id_final_wholesaler_id_status_idx"}
    # the safe example (NOT VALID, separate VALIDATE, CONCURRENTLY) draws no blocking lint finding
    lint = r.data["lint"]
    assert lint["available"] and lint["source"] == "captured" and lint["blocking"] == 0, lint
    # the runbook's "all counts should return 0" after fixing the data
    execute(wholesale,
            "UPDATE credit_accounts SET used_credit = credit_limit WHERE used_credit > credit_limit",
            "UPDATE credit_accounts SET credit_limit = 0 WHERE credit_limit < 0",
            "DELETE FROM credit_transactions WHERE amount <= 0",
            "DELETE FROM ledger_entries WHERE amount <= 0",
            "DELETE FROM retailer_payments WHERE amount <= 0",
            "DELETE FROM stock_reservations WHERE quantity <= 0",
            "UPDATE wholesaler_products SET stock = 10, reserved_stock = 0",
            "UPDATE orders SET total_amount = 1 WHERE total_amount <= 0")
    r = precheck.precheck(Target(project("wholesale"), "head", wholesale, "DATABASE_URL"), lint=False)
    assert r.outcome is Outcome.SUCCEEDED and r.data["total"] == 0, r.message


def test_kubernetes_phases_prepare_shadow_upgrade_count(wholesale: str, pod_shadow: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = pod_shadow
    monkeypatch.setenv("DATABASE_URL", wholesale)
    before = all_databases(wholesale)
    p = precheck.prepare(workdir=tmp_path)
    assert p.outcome is Outcome.SUCCEEDED, p.message
    info = json.loads((tmp_path / "prepare.json").read_text())
    assert info["server"] and info["shadowUrl"] and info["shadow"]["kind"] == "throw-away-server"
    assert "shadowUrl" not in p.data and "adminUrl" not in p.data  # the result never carries the shadow's URL
    # second container (application image): the injected runner on the shadow named by prepare.json
    shadow_upgrade(Target(project("wholesale"), "head", wholesale, "DATABASE_URL"), tmp_path)
    upgraded = json.loads((tmp_path / "shadow-upgrade.json").read_text())
    assert any(s["kind"] == "ddl" and s["revision"] == "0002" for s in upgraded["statements"])
    assert upgraded["fromRevision"] == "0001" and upgraded["versionTable"] == {"schema": "public",
                                                                                "name": "alembic_version"}
    r = precheck.count(workdir=tmp_path, user_checks=[{"name": "orders without amount",
                                                       "sql": "SELECT count(*) FROM orders WHERE total_amount "
                                                              "IS NULL"}])
    assert (tmp_path / precheck.SHADOW_DONE_FILE).exists(), "count must stop the shadow"
    assert all_databases(wholesale) == before, "nothing is created on the real server"
    counted = {c["name"]: c["count"] for c in r.data["checks"] if c["count"]}
    assert counted == {**WHOLESALE_EXPECTED, "orders without amount": 1}
    # the shadow-upgrade container recorded a catalog snapshot after each statement: the same statement-by-
    # statement checks as the all-in-one precheck
    assert (tmp_path / "snapshots.json").exists() and r.data["route"] == "real-database"
    # the termination message (what the operator reads first), within the precheck pod's share of the kubelet's
    # 12 KiB, still carries every violated check even as a summary (the whole result is the line in the log)
    from schemagate.contract.stepresult import (
        from_termination_message,
        termination_limit,
        to_termination_message,
    )

    msg = to_termination_message(r, limit=termination_limit(7))
    assert len(msg.encode()) <= termination_limit(7)
    d = from_termination_message(msg)
    assert d is not None
    kept = {c["name"]: c["count"] for c in d["data"]["checks"] if c["count"]}
    assert kept == {**WHOLESALE_EXPECTED, "orders without amount": 1}
    assert by_name(r)["credit_transactions_order_id_fkey"]["revision"] == "0003"
    assert r.data["pending"] == ["0002", "0003"] and r.data["lint"]["source"] == "captured"
    assert r.data["dataChanges"] is False and r.data["derivationNote"] is None
    assert r.data["checks"][0]["revision"] in ("0002", "0003")
    assert r.data["shadow"]["shadowServerVersion"].startswith("18")


def test_kubernetes_count_phase_without_derivation_counts_only_user_checks(wholesale: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """spec.precheck.derive=false: the Job is the count container alone (no shadow, no workdir); the dirty
    wholesale rows are not counted, only the user's query is."""
    monkeypatch.setenv("DATABASE_URL", wholesale)
    before = all_databases(wholesale)
    r = precheck.count(workdir=None, derive=False,
                       user_checks=[{"name": "orders without amount",
                                     "sql": "SELECT count(*) FROM orders WHERE total_amount IS NULL"}])
    assert r.outcome is Outcome.CHECKS_FAILED and r.data["total"] == 1
    assert [c["name"] for c in r.data["checks"]] == ["orders without amount"]
    assert "derivation disabled" in r.data["derivationNote"]
    assert all_databases(wholesale) == before


def test_data_change_labels() -> None:
    from schemagate.analysis.capture import classify, dml_label

    assert dml_label(None)[0] is None and "unknown" in (dml_label(None)[1] or "")
    assert dml_label([{"revision": "0002", "kind": "ddl", "sql": "ALTER TABLE t ADD c int"}]) == (False, None)
    changed, label = dml_label([{"revision": "0003", "kind": "dml", "sql": "UPDATE t SET a = 1"}])
    assert changed and "0003" in (label or "") and "DML" in (label or "")
    assert classify("UPDATE alembic_version SET version_num='0002'") == "other"
    assert classify("SELECT orders.id FROM orders WHERE orders.note IS NULL") == "read"
    assert classify("SELECT c.relname FROM pg_catalog.pg_class c") == "other"
    assert classify("WITH x AS (DELETE FROM t RETURNING 1) SELECT 1") == "dml"
    assert classify("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)") == "ddl"


def test_count_without_shadow_upgrade_fails_and_still_stops_the_shadow(wholesale: str, pod_shadow: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = pod_shadow
    monkeypatch.setenv("DATABASE_URL", wholesale)
    assert precheck.prepare(workdir=tmp_path).ok
    r = precheck.count(workdir=tmp_path)
    assert r.outcome is Outcome.PERMANENT_ERROR and "shadow-upgrade" in r.message
    assert (tmp_path / precheck.SHADOW_DONE_FILE).exists()


# --------------------------------------------------------------------------------------------------------------
# privileges, explicit shadow URL, no password leaks


def _role_url(admin_url: str, dbname: str, role: str, password: str) -> str:
    u = urllib.parse.urlsplit(with_database(admin_url, dbname))
    host = u.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((u.scheme, f"{role}:{password}@{host}", u.path, u.query, ""))


def test_without_createdb_the_throw_away_shadow_then_an_explicit_shadow_url(pg_server: str, make_db: Any) -> None:
    """No CREATEDB: the default shadow is a throw-away server (nothing is created on the real one); an explicit
    shadow database URL works too and is left empty."""
    real = make_db()
    spare = make_db()
    role = "sg_nocreatedb_" + uuid.uuid4().hex[:6]
    password = "pw-" + uuid.uuid4().hex
    execute(pg_server, f"CREATE ROLE {role} LOGIN PASSWORD '{password}' NOCREATEDB")
    try:
        for url in (real, spare):
            name = urllib.parse.urlsplit(url).path.lstrip("/")
            execute(pg_server, f'ALTER DATABASE "{name}" OWNER TO {role}')
            execute(url, f"ALTER SCHEMA public OWNER TO {role}")
        real_role = _role_url(pg_server, urllib.parse.urlsplit(real).path.lstrip("/"), role, password)
        spare_role = _role_url(pg_server, urllib.parse.urlsplit(spare).path.lstrip("/"), role, password)
        upgrade(real_role, "naive", "0001")
        execute(real_role, "INSERT INTO orders VALUES (1, -5, 'new'), (2, 5, 'new')")
        before = {r[0] for r in query(pg_server, "SELECT datname FROM pg_database")}
        r = precheck.precheck(Target(project("naive"), "head", real_role, "DATABASE_URL"))
        assert r.outcome is Outcome.CHECKS_FAILED, r.message
        assert by_name(r)["ck_orders_amount"]["count"] == 1
        assert r.data["shadow"]["kind"] == "throw-away-server"
        assert {r[0] for r in query(pg_server, "SELECT datname FROM pg_database")} == before
        assert password not in r.to_json()
        r = precheck.precheck(Target(project("naive"), "head", real_role, "DATABASE_URL"), shadow_url=spare_role)
        assert r.outcome is Outcome.CHECKS_FAILED, r.message
        assert by_name(r)["ck_orders_amount"]["count"] == 1
        assert password not in r.to_json()
        # the explicit shadow database is left empty again
        from schemagate.analysis.shadow import user_table_count
        from schemagate.contract.dburl import libpq_url

        assert user_table_count(libpq_url(spare_role)) == 0
    finally:
        execute(pg_server, f"DROP OWNED BY {role} CASCADE")
        for url in (real, spare):
            name = urllib.parse.urlsplit(url).path.lstrip("/")
            execute(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        execute(pg_server, f"DROP ROLE IF EXISTS {role}")


def test_unreachable_database_is_transient_and_redacted(tmp_path: Path) -> None:
    url = "postgresql://someone:s3cr3t-pw@127.0.0.1:1/db"
    r = precheck.precheck(Target(project("naive"), "head", url, "DATABASE_URL"))
    assert r.outcome is Outcome.TRANSIENT_ERROR and r.reason == "DatabaseUnreachable"
    assert "s3cr3t-pw" not in r.to_json()


def test_constraints_and_indexes_on_new_tables_or_columns_are_listed_but_not_counted(fresh_db: str) -> None:
    """A pending revision's constraint or unique index on a table or column it creates cannot have violating
    rows yet: derive() lists it as skipped with the reason, and counts the rest."""
    import psycopg

    from schemagate.analysis import catalog, derive
    from schemagate.contract.dburl import libpq_url

    execute(fresh_db, "CREATE TABLE items (id int PRIMARY KEY, qty int)", "INSERT INTO items VALUES (1, 5)")

    def snap() -> catalog.Catalog:
        with psycopg.connect(libpq_url(fresh_db), autocommit=True) as conn:
            return catalog.snapshot(conn)

    real = snap()
    execute(fresh_db,  # what the pending revisions would do, as seen in the shadow database
            "CREATE TABLE tags (id int PRIMARY KEY, label text CONSTRAINT tag_label_set CHECK (label <> ''))",
            "ALTER TABLE items ADD COLUMN sku text CONSTRAINT item_sku_short CHECK (length(sku) < 20)",
            "CREATE UNIQUE INDEX item_sku_unique ON items (sku)",
            "ALTER TABLE items ADD CONSTRAINT item_qty_positive CHECK (qty > 0)")
    d = derive.derive(real, snap())
    notes = {c.name: (c.skipped, c.note) for c in d.checks}
    assert notes["tag_label_set"] == (True, "skipped: table created by the pending revisions")
    assert notes["item_sku_short"] == (True, "skipped: column(s) created by the pending revisions: sku")
    assert notes["item_sku_unique"] == (True, "skipped: column(s) created by the pending revisions: sku")
    assert notes["item_qty_positive"][0] is False
    assert [c.name for c in d.counted] == ["item_qty_positive"]
