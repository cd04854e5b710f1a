# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""The precheck Job (``core.jobs.build_job``) on the test bed when the pending revisions change data: it counts
each check in a data-carrying shadow right before the statement that validates it, exactly as ``schemagate
precheck`` does on the same database (route ``data-shadow``, ``dataShadow`` summary, ``DataShadowTooLarge`` above
``spec.precheck.dataShadow.maxSize``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemagate.contract.target import Target
from schemagate.runner import precheck
from schemagate.runner.inject.apply import upgrade
from tests.e2e.operator_process import RUNNER_IMAGE
from tests.e2e.test_operator import Operator, crd, dbm, operator, wait_phase  # noqa: F401
from tests.e2e.test_precheck_job import leftovers, run_precheck_job, secret, spec_for
from tests.precheck.helpers import PROJECTS, databases, execute, query, sql_project

pytestmark = pytest.mark.e2e

BACKFILL = [
    "ALTER TABLE acct ADD COLUMN status text",
    "UPDATE acct SET status = 'on' WHERE status IS NULL",
    "ALTER TABLE acct ALTER COLUMN status SET NOT NULL",
    "CREATE FUNCTION score_ok(s int) RETURNS boolean IMMUTABLE LANGUAGE sql AS 'SELECT s BETWEEN 0 AND 100'",
    "ALTER TABLE acct ADD CONSTRAINT ck_score CHECK (score_ok(score))",
]


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: (c["count"], c["evaluatedBy"]) for c in result["data"]["checks"]}


def _job(kube: Any, namespace: str, map_image: Any, project: Path, url: str, name: str,
         **pc: Any) -> dict[str, Any]:
    image = f"schemagate.test/{name}:data"
    map_image(RUNNER_IMAGE)
    map_image(image, paths={"/app": project})
    secret(kube, namespace, "db", {"url": url})
    spec = spec_for({"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}, **pc)
    spec["migrations"]["image"] = image
    return run_precheck_job(kube, namespace, spec, name)


def _backfill_project(tmp_path: Path, url: str, rows: str) -> str:
    ini = sql_project(tmp_path / "app", ["CREATE TABLE acct (id int PRIMARY KEY, score int)"], BACKFILL)
    upgrade(Target(ini, "0001", url, "DATABASE_URL"))
    execute(url, rows)
    return ini


def test_backfill_then_set_not_null_passes_like_the_cli(kube: Any, namespace: str, map_image: Any, fresh_db: str,
                                                        pg_server: str, tmp_path: Path) -> None:
    """ADD COLUMN, UPDATE backfill, SET NOT NULL and a CHECK calling a function the revision creates: safe on
    these rows; the CLI passes it, and so must the operator's Job (same counts, same routes)."""
    ini = _backfill_project(tmp_path, fresh_db, "INSERT INTO acct VALUES (1, 5), (2, 50), (3, NULL)")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"))
    assert cli.reason == "PrecheckPassed" and cli.data["route"] == "data-shadow", cli.message
    before = databases(pg_server)
    out = _job(kube, namespace, map_image, Path(ini).parent, fresh_db, "pc-backfill")
    r = out["result"]
    assert r.get("reason") == "PrecheckPassed", r
    assert _counts(r) == _counts(cli.to_dict()) and set(_counts(r).values()) == {(0, "data-shadow")}
    assert r["data"]["route"] == "data-shadow" and r["data"]["evaluatedBy"] == cli.data["evaluatedBy"]
    assert r["data"]["dataShadow"]["tables"] == cli.data["dataShadow"]["tables"] == ["public.acct"]
    assert r["data"]["dataShadow"]["rows"] == 3 and r["data"]["dataShadow"]["stoppedAt"] is None
    assert databases(pg_server) == before
    assert leftovers(kube, namespace, out["pod"]) == []


def test_failing_statement_stops_and_counts_like_the_cli(kube: Any, namespace: str, map_image: Any, fresh_db: str,
                                                         tmp_path: Path) -> None:
    """A score out of range: the CHECK's statement fails on the data; the Job reports the same count as the CLI."""
    ini = _backfill_project(tmp_path, fresh_db, "INSERT INTO acct VALUES (1, 5), (2, 500), (3, 700)")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"))
    assert cli.reason == "ViolationsFound", cli.message
    r = _job(kube, namespace, map_image, Path(ini).parent, fresh_db, "pc-stops")["result"]
    assert r.get("reason") == "ViolationsFound", r
    assert _counts(r) == _counts(cli.to_dict())
    assert {k: v[0] for k, v in _counts(r).items() if v[0]} == {"ck_score": 2}
    assert r["data"]["dataShadow"]["stoppedAt"] == cli.data["dataShadow"]["stoppedAt"] == "revision 0002, statement 5"
    assert r["data"]["total"] == cli.data["total"] == 2


def test_orm_data_migration_counts_like_the_cli(kube: Any, namespace: str, map_image: Any, fresh_db: str) -> None:
    """The shop project: env.py imports the application's models, revision 0002 fills NULL notes through the ORM
    before SET NOT NULL."""
    shop = str(PROJECTS / "shop" / "alembic.ini")
    upgrade(Target(shop, "0001", fresh_db, "DATABASE_URL"))
    execute(fresh_db,
            "INSERT INTO products VALUES (1, 'a', 5, 0), (2, 'a', -1, 0), (3, NULL, NULL, 0), (4, NULL, -3, 0), "
            "(5, 'b', 0, 0)",
            "INSERT INTO orders VALUES (1, 1, 1, NULL), (2, 99, 1, 'x'), (3, NULL, 1, 'y'), (4, 5, 2, 'z')")
    cli = precheck.precheck(Target(shop, "head", fresh_db, "DATABASE_URL"), lint=False)
    r = _job(kube, namespace, map_image, PROJECTS / "shop", fresh_db, "pc-shop")["result"]
    assert r.get("reason") == cli.reason == "ViolationsFound", r
    # the termination message (4 KiB) keeps the violated checks and the summary of routes
    assert {c["name"]: c["count"] for c in r["data"]["checks"] if c["count"]} == \
        {c["name"]: c["count"] for c in cli.data["checks"] if c["count"]} == \
        {"ck_products_stock": 2, "uq_products_name": 2, "fk_orders_product": 1}
    assert r["data"]["evaluatedBy"] == cli.data["evaluatedBy"] == {"data-shadow": len(cli.data["checks"])}
    assert r["data"]["total"] == cli.data["total"] == 5 and r["data"]["route"] == "data-shadow"
    assert sorted(r["data"]["dataShadow"]["tables"]) == ["public.orders", "public.products"]


def test_data_shadow_too_large_blocks_like_the_cli(kube: Any, namespace: str, map_image: Any, fresh_db: str,
                                                    tmp_path: Path) -> None:
    ini = _backfill_project(tmp_path, fresh_db, "INSERT INTO acct SELECT g, 1 FROM generate_series(1, 5000) g")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), data_shadow_max_bytes=8192)
    assert cli.reason == "DataShadowTooLarge", cli.message
    out = _job(kube, namespace, map_image, Path(ini).parent, fresh_db, "pc-toolarge", dataShadow={"maxSize": "8192"})
    r = out["result"]
    assert r.get("reason") == "DataShadowTooLarge" and r.get("outcome") == cli.outcome.value, r
    assert "spec.precheck.dataShadow.maxSize (8192 bytes)" in r["message"] and "public.acct" in r["message"]
    assert leftovers(kube, namespace, out["pod"]) == []


def test_the_operator_applies_the_backfill_migration(kube: Any, operator: Operator, namespace: str, map_image: Any,
                                                     fresh_db: str, tmp_path: Path) -> None:
    """The whole run (backup, precheck, migrate, verify) of the safe backfill migration the CLI passes: the
    operator's precheck passes it too, and the revisions are applied."""
    ini = _backfill_project(tmp_path, fresh_db, "INSERT INTO acct VALUES (1, 5), (2, 50), (3, NULL)")
    map_image(RUNNER_IMAGE)
    map_image("schemagate.test/backfill:e2e", paths={"/app": Path(ini).parent})
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("backfill", image="schemagate.test/backfill:e2e"), namespace)
    o = wait_phase(kube, namespace, "backfill", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    assert query(fresh_db, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert query(fresh_db, "SELECT count(*) FROM acct WHERE status = 'on'") == [(3,)]
    assert query(fresh_db, "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'acct' "
                           "AND column_name = 'status'") == [("NO",)]
