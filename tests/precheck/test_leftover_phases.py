"""The Kubernetes precheck phases after a failed concurrent index build (case 05 and its kin; the pod's throw-away
server in a thread): the injected ``shadow-upgrade`` and ``data-upgrade`` handle a build that fails on its own
INVALID leftover as migrate does (drop it, run again), and ``count`` says what the all-in-one precheck says,
naming the leftover (``data.leftovers``) and counting the unique index's duplicates exactly. The leftover is made
by a real lock timeout behind a real second session's write transaction, held open until the migration has failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import precheck
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import PROJECTS, execute, open_transaction
from tests.pipeline.test_leftovers import CASE05, indexes
from tests.precheck.test_data_phases import phases, same

pytestmark = pytest.mark.postgres


def _leftover(url: str, ini: Path, table: str, index: str) -> None:
    """Revision 0002's concurrent build of ``index`` stopped by a lock timeout: INVALID, still at 0001."""
    with open_transaction(url, f"insert into {table} default values"):
        r = migrate(Target(ini, "head", url), lock_timeout="1s", retries=0)
    assert r.reason == "LockTimeout", r.message
    assert indexes(url)[index] is False


def test_case05_phases(fresh_db: str, pod_shadow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ini = CASE05 / "alembic.ini"
    assert migrate(Target(ini, "0001", fresh_db), retries=0).ok
    execute(fresh_db, (CASE05 / "data.sql").read_text().replace("%", "%%"))
    _leftover(fresh_db, ini, "events", "ix_events_kind")
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False)
    job = phases(fresh_db, str(ini), pod_shadow, monkeypatch)
    same(job, cli)
    assert job.outcome is Outcome.SUCCEEDED, job.message
    assert job.data["leftovers"] == cli.data["leftovers"] == [
        {"schema": "public", "table": "events", "index": "ix_events_kind", "revision": "0002", "dropped": False,
         "migrateDrops": True}]
    assert "migrate drops it before applying" in job.message
    assert indexes(fresh_db)["ix_events_kind"] is False  # nothing changed on the real database


@pytest.mark.parametrize("dirty", [True, False])
def test_data_route_phases(fresh_db: str, pod_shadow: Path, monkeypatch: pytest.MonkeyPatch, dirty: bool) -> None:
    """0002 folds tags.code to lower case, then builds ix_tags_code (unique) concurrently: counted in the
    data-carrying shadow, which holds the leftover too."""
    ini = PROJECTS / "graph" / "backfilled.ini"
    assert migrate(Target(ini, "0001", fresh_db), retries=0).ok
    execute(fresh_db, "insert into tags (code) select 'T' || g from generate_series(1, 50) g")
    _leftover(fresh_db, ini, "tags", "ix_tags_code")
    execute(fresh_db, "insert into tags (code) values ('Q'), ('x')" + (", ('q')" if dirty else ""))
    cli = precheck.precheck(Target(ini, "head", fresh_db, "DATABASE_URL"), lint=False)
    job = phases(fresh_db, str(ini), pod_shadow, monkeypatch)
    same(job, cli)
    assert job.data["route"] == "data-shadow"
    assert {c["name"]: c["count"] for c in job.data["checks"]}["ix_tags_code"] == (2 if dirty else 0)
    assert job.outcome is (Outcome.CHECKS_FAILED if dirty else Outcome.SUCCEEDED), job.message
    assert [x["index"] for x in job.data["leftovers"]] == ["ix_tags_code"]
