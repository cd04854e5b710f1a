"""The precheck Job (run for real on the test bed) after a failed concurrent index build left an INVALID index:
the injected shadow-upgrade (and data-upgrade) handle the build that fails on it as migrate does (drop it in the
shadow, run again), so the Job's result names the leftover (``data.leftovers``) and counts as the all-in-one
precheck does, instead of failing with "already exists". The leftover is made by a real lock timeout behind a
real second session's write transaction, held open until the migration has failed."""

from __future__ import annotations

from typing import Any

import pytest

from schemagate.contract.target import Target
from schemagate.runner.inject.migrate import migrate
from tests.e2e.operator_process import RUNNER_IMAGE
from tests.e2e.test_precheck_job import leftovers, run_precheck_job, secret, spec_for
from tests.pipeline.helpers import PROJECTS, execute, open_transaction
from tests.pipeline.test_leftovers import CASE05, indexes

pytestmark = pytest.mark.e2e

IMAGE = "schemagate.test/leftover:job"


def _leftover(url: str, ini: Any, table: str, index: str) -> None:
    with open_transaction(url, f"insert into {table} default values"):
        r = migrate(Target(ini, "head", url), lock_timeout="1s", retries=0)
    assert r.reason == "LockTimeout", r.message
    assert indexes(url)[index] is False


def _job(kube: Any, ns: str, url: str, name: str, config: str = "alembic.ini") -> dict[str, Any]:
    secret(kube, ns, "db", {"url": url})
    spec = spec_for({"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}})
    spec["migrations"].update(image=IMAGE, config=config)
    out = run_precheck_job(kube, ns, spec, name)
    assert leftovers(kube, ns, out["pod"]) == []
    return out["result"]


def test_case05_leftover_job(kube: Any, namespace: str, map_image: Any, fresh_db: str) -> None:
    map_image(RUNNER_IMAGE)
    map_image(IMAGE, paths={"/app": CASE05})
    ini = CASE05 / "alembic.ini"
    assert migrate(Target(ini, "0001", fresh_db), retries=0).ok
    execute(fresh_db, (CASE05 / "data.sql").read_text().replace("%", "%%"))
    _leftover(fresh_db, ini, "events", "ix_events_kind")
    r = _job(kube, namespace, fresh_db, "pc-leftover")
    assert r.get("outcome") == "Succeeded", r
    assert [(x["index"], x["revision"], x["migrateDrops"]) for x in r["data"]["leftovers"]] == [
        ("ix_events_kind", "0002", True)], r["data"]
    assert "migrate drops it before applying" in r["message"]
    assert indexes(fresh_db)["ix_events_kind"] is False  # the real database is untouched


def test_unique_leftover_data_route_job(kube: Any, namespace: str, map_image: Any, fresh_db: str) -> None:
    """Duplicates after 0002's UPDATE: the data-carrying shadow (which holds the leftover too) counts them."""
    map_image(RUNNER_IMAGE)
    map_image(IMAGE, paths={"/app": PROJECTS / "graph"})
    ini = PROJECTS / "graph" / "backfilled.ini"
    assert migrate(Target(ini, "0001", fresh_db), retries=0).ok
    execute(fresh_db, "insert into tags (code) select 'T' || g from generate_series(1, 50) g")
    _leftover(fresh_db, ini, "tags", "ix_tags_code")
    execute(fresh_db, "insert into tags (code) values ('Q'), ('q'), ('x')")
    r = _job(kube, namespace, fresh_db, "pc-leftover-data", config="backfilled.ini")
    assert r.get("reason") == "ViolationsFound", r
    assert r["data"]["route"] == "data-shadow", r["data"]
    assert {c["name"]: c["count"] for c in r["data"]["checks"]}["ix_tags_code"] == 2, r["data"]["checks"]
    assert [x["index"] for x in r["data"]["leftovers"]] == ["ix_tags_code"]
