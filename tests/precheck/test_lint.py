"""squawk on the pending revisions' SQL: findings grouped by rule, blocking vs advisory, missing squawk."""

from __future__ import annotations

import pytest

from schemagate.analysis import lint
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import precheck
from tests.precheck.helpers import project, upgrade


def rules(result: dict) -> dict[str, int]:
    return {f["rule"]: f["count"] for f in result["findings"]}


def test_squawk_is_installed() -> None:
    # the dev environment ships squawk-cli; without it every lint test below would only see "unavailable"
    assert lint.find_squawk() is not None


def test_naive_sql_grouped_by_rule() -> None:
    sql = ("BEGIN;\nALTER TABLE orders ADD CONSTRAINT ck CHECK (amount > 0);\n"
           "ALTER TABLE items ADD CONSTRAINT ck2 CHECK (quantity > 0);\n"
           "ALTER TABLE items ADD CONSTRAINT fk FOREIGN KEY (order_id) REFERENCES orders (id);\n"
           "CREATE INDEX ix ON orders (status);\nCOMMIT;\n")
    r = lint.lint_sql(sql, pg_version="18.0")
    got = rules(r)
    assert got["constraint-missing-not-valid"] == 3
    assert got["adding-foreign-key-constraint"] == 1
    assert got["require-concurrent-index-creation"] == 1
    assert "require-lock-timeout" not in got  # excluded: schemagate sets the timeouts itself
    assert r["total"] == sum(got.values()) and r["blocking"] == 5
    assert r["findings"][0]["rule"] in lint.BLOCKING_RULES  # blocking rules come first
    with_timeouts = rules(lint.lint_sql(sql, pg_version="18.0", exclude=()))
    assert with_timeouts.get("require-lock-timeout", 0) >= 1


@pytest.mark.postgres
def test_naive_migration_findings_and_lint_fail_modes(fresh_db: str) -> None:
    upgrade(fresh_db, "naive", "0001")
    r = precheck.precheck(Target(project("naive"), "head", fresh_db, "DATABASE_URL"))
    assert r.outcome is Outcome.SUCCEEDED, r.message  # no rows: no violations; lint alone does not fail
    got = rules(r.data["lint"])
    assert r.data["lint"]["source"] == "captured"
    assert got["constraint-missing-not-valid"] == 3 and got["adding-foreign-key-constraint"] == 1
    assert got["require-concurrent-index-creation"] == 1
    assert "lint:" in r.message
    blocked = precheck.precheck(Target(project("naive"), "head", fresh_db, "DATABASE_URL"), lint_fail="blocking")
    assert blocked.outcome is Outcome.CHECKS_FAILED and "squawk" in blocked.message


@pytest.mark.postgres
def test_safe_migration_has_no_blocking_findings(fresh_db: str) -> None:
    upgrade(fresh_db, "safe", "0001")
    r = precheck.precheck(Target(project("safe"), "head", fresh_db, "DATABASE_URL"), lint_fail="blocking")
    lint_result = r.data["lint"]
    assert lint_result["available"] and lint_result["source"] == "captured"
    assert lint_result["blocking"] == 0, lint_result
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert {c["name"] for c in r.data["checks"]} == {"ck_orders_amount", "ck_items_quantity", "fk_items_order"}


@pytest.mark.postgres
def test_missing_squawk_is_reported_not_a_crash(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMAGATE_SQUAWK", "/nonexistent/squawk")
    assert lint.lint_sql("SELECT 1;")["available"] is False
    upgrade(fresh_db, "naive", "0001")
    r = precheck.precheck(Target(project("naive"), "head", fresh_db, "DATABASE_URL"), lint_fail="any")
    assert r.outcome is Outcome.SUCCEEDED
    assert r.data["lint"]["available"] is False and "squawk" in r.data["lint"]["note"]


def test_captured_ddl_script_keeps_concurrently_outside_transactions() -> None:
    from schemagate.analysis.capture import ddl_script

    script = ddl_script([
        {"revision": "0002", "kind": "ddl", "sql": "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID"},
        {"revision": "0003", "kind": "ddl", "sql": "ALTER TABLE t VALIDATE CONSTRAINT c"},
        {"revision": "0003", "kind": "ddl", "sql": "CREATE INDEX CONCURRENTLY ix ON t (a)"},
        {"revision": "0003", "kind": "dml", "sql": "UPDATE t SET a = 1"},
    ])
    assert script.count("BEGIN;") == 2 and script.count("COMMIT;") == 2
    assert script.rstrip().endswith("CREATE INDEX CONCURRENTLY ix ON t (a);")
    got = rules(lint.lint_sql(script, pg_version="18.0", source="captured"))
    assert "ban-concurrent-index-creation-in-transaction" not in got
    assert "constraint-missing-not-valid" not in got


def test_captured_ddl_script_follows_the_transactions_postgresql_ran() -> None:
    """Captured statements carry their transaction number (``tx``) or ``autocommit``: the script has exactly those
    transactions, so squawk sees a VALIDATE in the same transaction as its ADD ... NOT VALID (the lock held for
    the whole scan) only when it really was, whatever the revision boundaries."""
    from schemagate.analysis.capture import MAX_SQL, cut_ddl, ddl_script

    add = "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID"
    validate = "ALTER TABLE t VALIDATE CONSTRAINT c"
    one_tx = ddl_script([{"revision": "0002", "kind": "ddl", "sql": add, "tx": 1},
                         {"revision": "0003", "kind": "ddl", "sql": validate, "tx": 1}])
    assert one_tx.count("BEGIN;") == 1 and "-- revision 0003" in one_tx
    assert "constraint-missing-not-valid" in rules(lint.lint_sql(one_tx, pg_version="18.0", source="captured"))
    two_tx = ddl_script([{"revision": "0002", "kind": "ddl", "sql": add, "tx": 1},
                         {"revision": "0002", "kind": "ddl", "sql": validate, "tx": 2},
                         {"revision": "0002", "kind": "ddl", "sql": "CREATE INDEX CONCURRENTLY ix ON t (a)",
                          "autocommit": True},
                         {"revision": "0002", "kind": "ddl", "sql": "ALTER TABLE t ADD b " + "x" * MAX_SQL, "tx": 3}])
    assert two_tx.count("BEGIN;") == 2 and two_tx.count("COMMIT;") == 2, two_tx
    assert two_tx.rstrip().endswith("CREATE INDEX CONCURRENTLY ix ON t (a);")  # outside any transaction
    got = rules(lint.lint_sql(two_tx, pg_version="18.0", source="captured"))
    assert "constraint-missing-not-valid" not in got and "ban-concurrent-index-creation-in-transaction" not in got
    assert "x" * 100 not in two_tx  # a statement cut at MAX_SQL characters does not parse: left out, counted
    assert cut_ddl([{"revision": "0002", "kind": "ddl", "sql": "y" * MAX_SQL}]) == 1
