"""Identifiers end to end (precheck plan -> migrate -> verify) on real PostgreSQL: schema, table and column are
separate fields and are quoted by the driver, never joined with dots and split again.

Projects: the handed case 14b (schema "Sales", table "order.archive") and
tests/pipeline/projects/graph/quoted.ini: schema "Sales.EU" with table "order.archive" whose mixed-case column "Unit.Price" gets NOT NULL and a CHECK, next to a
decoy table "Sales.EU.order"."archive" (joined with dots both read Sales.EU.order.archive).
"""

from __future__ import annotations

import json
from pathlib import Path

from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import verify as verify_step
from schemagate.runner.inject.migrate import migrate
from schemagate.runner.precheck import precheck
from tests.pipeline.helpers import PROJECTS, execute

QUOTED = PROJECTS / "graph" / "quoted.ini"
CASE14B = Path("/work/shared/cases/precheck/14b-quoted-dotted-identifiers-clean")


def _through(ini: Path, url: str) -> tuple[dict, dict]:
    """precheck -> migrate -> verify with the precheck's plan; returns (plan, verify data)."""
    pre = precheck(Target(ini, "head", url), lint=False)
    assert pre.outcome is Outcome.SUCCEEDED, pre.message
    mig = migrate(Target(ini, pre.data["targetRevision"], url), retries=0)
    assert mig.outcome is Outcome.SUCCEEDED, mig.message
    plan = json.loads(pre.to_json())["data"]  # as the verify Job receives it
    ver = verify_step.verify(Target(None, None, url), plan=plan)
    assert ver.outcome is Outcome.SUCCEEDED, ver.message
    return plan, ver.data


def test_case_14b_verify_passes_on_a_dotted_table_in_a_mixed_case_schema(fresh_db: str) -> None:
    assert migrate(Target(CASE14B / "alembic.ini", "0001", fresh_db), retries=0).ok
    execute(fresh_db, (CASE14B / "data.sql").read_text())
    _plan, data = _through(CASE14B / "alembic.ini", fresh_db)
    by = {(c["schema"], c["table"], c["name"]): c for c in data["constraints"]}
    notes = [c for c in data["constraints"] if c["table"] == "order.archive"]
    assert notes and all(c["schema"] == "Sales" and c["exists"] and c["validated"] for c in notes), notes
    assert by[("Sales", "OrderLine", "ck_OrderLine_Qty")]["validated"]
    assert data["indexes"] == [{"name": "ix_OrderLine_Sku", "valid": True}]


def test_dotted_schema_table_and_column_with_a_decoy(fresh_db: str) -> None:
    assert migrate(Target(QUOTED, "0001", fresh_db), retries=0).ok
    execute(fresh_db, """INSERT INTO "Sales.EU"."order.archive" ("Unit.Price", "Sku") VALUES (1, 'a'), (2, 'b');
                         INSERT INTO "Sales.EU.order"."archive" ("Unit.Price", "Sku") VALUES (NULL, 'a'), (-1, 'a')""")
    plan, data = _through(QUOTED, fresh_db)
    notnull = [c for c in plan["checks"] if c["kind"] == "notnull"]
    assert [(c["schema"], c["table"], c["column"]) for c in notnull] == [("Sales.EU", "order.archive", "Unit.Price")]
    assert {(c["schema"], c["table"], c["name"], c["validated"]) for c in data["constraints"]} >= {
        ("Sales.EU", "order.archive", "ck_Archive_Price", True)}
    assert all(c["exists"] and c["validated"] for c in data["constraints"]), data["constraints"]
    assert [c["count"] for c in data["checks"]] == [0] * len(data["checks"]) and data["checks"]

    # the same plan on a database where the dotted column lost its NOT NULL: verify names it
    execute(fresh_db, 'ALTER TABLE "Sales.EU"."order.archive" ALTER COLUMN "Unit.Price" DROP NOT NULL')
    bad = verify_step.verify(Target(None, None, fresh_db), plan=plan)
    assert bad.outcome is Outcome.CHECKS_FAILED
    assert any("Unit.Price is not NOT NULL" in f for f in bad.data["failures"]), bad.data["failures"]


def test_display_only_plan_is_matched_whole_never_split(fresh_db: str) -> None:
    """An older plan names the table by display text only: "Sales.EU.order.archive" matches two tables when
    split at any dot, so verify reports it missing instead of checking the wrong one; separate fields work."""
    assert migrate(Target(QUOTED, "head", fresh_db), retries=0).ok
    legacy = {"targetRevision": "0002", "checks": [
        {"name": "ck_Archive_Price", "table": "Sales.EU.order.archive", "kind": "check"}]}
    r = verify_step.verify(Target(None, None, fresh_db), plan=legacy)
    assert r.data["constraints"][0]["exists"], r.data  # the constraint name alone still finds it
    separate = {"targetRevision": "0002", "checks": [
        {"name": "Unit.Price NOT NULL", "schema": "Sales.EU.order", "table": "archive", "column": "Unit.Price",
         "kind": "notnull"}]}
    r = verify_step.verify(Target(None, None, fresh_db), plan=separate)
    assert r.outcome is Outcome.CHECKS_FAILED  # the decoy's column is nullable: separate fields find the decoy
    assert r.data["failures"] == ['"Sales.EU.order".archive.Unit.Price is not NOT NULL'], r.data["failures"]


def test_verify_reads_the_version_table_the_plan_names(fresh_db: str) -> None:
    """The operator's verify Job has no project: the plan says where env.py keeps the version rows (a mixed-case
    schema and a dotted name here), and verify reads them there, quoted by the driver."""
    execute(fresh_db, 'CREATE SCHEMA "Ops"; CREATE TABLE "Ops"."Version.Rows" (version_num varchar(32) PRIMARY KEY);'
                      """INSERT INTO "Ops"."Version.Rows" VALUES ('0002a'), ('0002b')""")
    plan = {"targetRevision": "0002a,0002b", "expectedRevisions": ["0002a", "0002b"],
            "versionTable": {"schema": "Ops", "name": "Version.Rows"}}
    r = verify_step.verify(Target(None, None, fresh_db), plan=plan)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.data["currentRevision"] == "0002a,0002b"
    r = verify_step.verify(Target(None, None, fresh_db), plan={k: v for k, v in plan.items() if k != "versionTable"})
    assert r.outcome is Outcome.CHECKS_FAILED  # alembic_version does not exist here
    assert "not the expected 0002a,0002b" in r.message
