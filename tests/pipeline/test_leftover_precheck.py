"""The precheck after a failed concurrent index build, through the CLI, on real PostgreSQL (case 05 and its kin).

``schemagate migrate`` leaves an INVALID index behind when CREATE [UNIQUE] INDEX CONCURRENTLY fails (a lock timeout
behind a real second session's write transaction, held open until the migration has failed, or duplicate rows), and names it. The next ``schemagate run``
prechecks in a shadow that holds that INVALID index under its name: the build fails there on "already exists", as
it does on the real database, and migrate's handling (drop the leftover, run again) is what the shadow does too.
So the precheck predicts the migration: it passes over clean rows, naming the leftover (``data.leftovers``), and
still blocks a unique build over duplicate rows with the exact count; migrate then drops the leftover and applies.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.helpers import PROJECTS, ROOT, execute, open_transaction, run_module
from tests.pipeline.test_leftovers import CASE05, indexes, versions

pytestmark = pytest.mark.postgres

CONCURRENT = PROJECTS / "graph" / "concurrent.ini"
BACKFILLED = PROJECTS / "graph" / "backfilled.ini"


def cli(url: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python -m schemagate.cli <args> --json`` against ``url``: (the process, its JSON result)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=url, SCHEMAGATE_NO_EMBEDDED="1")
    p = run_module(["-m", "schemagate.cli", *args, "--json"], env, timeout=600)
    try:
        return p, json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"no JSON result (exit {p.returncode}): {p.stdout}{p.stderr}") from None


def step_of(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["data"]["steps"] if s["step"] == name)


def run(url: str, ini: Path, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    return cli(url, "run", "-c", str(ini), "--backup-dir", str(tmp / "backups"), *extra)


def test_case05_lock_timeout_leftover_then_run(fresh_db: str, tmp_path: Path) -> None:
    ini = CASE05 / "alembic.ini"
    p, out = cli(fresh_db, "migrate", "-c", str(ini), "--target", "0001", "--retries", "0")
    assert p.returncode == 0, out["message"]
    execute(fresh_db, (CASE05 / "data.sql").read_text().replace("%", "%%"))
    with open_transaction(fresh_db, "insert into events (kind) values ('late')"):
        p, out = cli(fresh_db, "migrate", "-c", str(ini), "--retries", "0", "--lock-timeout", "1s")
    assert p.returncode != 0 and out["reason"] == "LockTimeout", out["message"]
    assert "ix_events_kind" in out["message"] and "INVALID" in out["message"]
    assert indexes(fresh_db)["ix_events_kind"] is False and versions(fresh_db) == ["0001"]

    p, pre = cli(fresh_db, "precheck", "-c", str(ini))
    assert p.returncode == 0 and pre["outcome"] == "Succeeded", pre["message"]
    assert "already exists" not in pre["message"]
    assert [(x["schema"], x["table"], x["index"], x["revision"], x["migrateDrops"])
            for x in pre["data"]["leftovers"]] == [("public", "events", "ix_events_kind", "0002", True)]
    assert "ix_events_kind" in pre["message"] and "migrate drops it before applying" in pre["message"]
    assert indexes(fresh_db)["ix_events_kind"] is False  # the precheck changed nothing

    p, out = run(fresh_db, ini, tmp_path)
    assert p.returncode == 0 and out["reason"] == "Verified", out["message"]
    assert step_of(out, "precheck")["outcome"] == "Succeeded"
    assert "dropped INVALID index(es) ix_events_kind" in step_of(out, "migrate")["message"]
    assert versions(fresh_db) == ["0002"] and indexes(fresh_db)["ix_events_kind"] is True


def _counts(step: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: c["count"] for c in step["data"]["checks"] if c.get("count") is not None}


def test_unique_leftover_blocks_with_the_count_then_passes_after_the_fix(fresh_db: str, tmp_path: Path) -> None:
    """CREATE UNIQUE INDEX CONCURRENTLY "ix_Ev_Code" over duplicates fails and leaves it INVALID; the next run's
    precheck counts the duplicates (3 rows in two groups) instead of failing on "already exists"; once they are
    fixed the run passes, naming the leftover, and migrate drops it and applies through head."""
    p, out = cli(fresh_db, "migrate", "-c", str(CONCURRENT), "--target", "0001", "--retries", "0")
    assert p.returncode == 0, out["message"]
    execute(fresh_db, """insert into "Sales"."Ev" ("Code") select 'c' || g from generate_series(1, 200) g;
                         insert into "Sales"."Ev" ("Code") values ('c1'), ('c2'), (null), (null)""")
    p, out = cli(fresh_db, "migrate", "-c", str(CONCURRENT), "--target", "0002", "--retries", "0")
    assert p.returncode != 0 and out["reason"] == "MigrationFailed", out["message"]
    assert indexes(fresh_db, "Sales")["ix_Ev_Code"] is False

    p, pre = cli(fresh_db, "precheck", "-c", str(CONCURRENT))
    assert p.returncode != 0 and pre["reason"] == "ViolationsFound", pre["message"]
    assert "already exists" not in pre["message"]
    assert _counts(pre).get("ix_Ev_Code") == 4, pre["data"]["checks"]
    assert [x["index"] for x in pre["data"]["leftovers"]] == ["ix_Ev_Code"]
    p, out = run(fresh_db, CONCURRENT, tmp_path)
    assert p.returncode != 0 and step_of(out, "precheck")["reason"] == "ViolationsFound", out["message"]
    assert [s["step"] for s in out["data"]["steps"]][-1] == "precheck"
    assert versions(fresh_db) == ["0001"] and indexes(fresh_db, "Sales")["ix_Ev_Code"] is False  # nothing changed

    execute(fresh_db, """delete from "Sales"."Ev" a using "Sales"."Ev" b
                         where a."Code" = b."Code" and a."Id" > b."Id\"""")
    p, pre = cli(fresh_db, "precheck", "-c", str(CONCURRENT))
    assert p.returncode == 0 and pre["outcome"] == "Succeeded", pre["message"]
    assert _counts(pre).get("ix_Ev_Code") == 0, pre["data"]["checks"]
    assert [x["index"] for x in pre["data"]["leftovers"]] == ["ix_Ev_Code"]
    p, out = run(fresh_db, CONCURRENT, tmp_path)
    assert p.returncode == 0 and out["reason"] == "Verified", out["message"]
    assert "dropped INVALID index(es) ix_Ev_Code" in step_of(out, "migrate")["message"]
    assert versions(fresh_db) == ["0003"] and indexes(fresh_db, "Sales")["ix_Ev_Code"] is True


def test_leftover_in_the_data_carrying_shadow(fresh_db: str, tmp_path: Path) -> None:
    """0002 folds codes to lower case, then builds ix_tags_code (unique) concurrently: the checks are counted in
    the data-carrying shadow, which holds the leftover too. Duplicates after the UPDATE block with their count
    (the build is reached there before the leftover is dropped, and again after); clean rows pass."""
    p, out = cli(fresh_db, "migrate", "-c", str(BACKFILLED), "--target", "0001", "--retries", "0")
    assert p.returncode == 0, out["message"]
    execute(fresh_db, "insert into tags (code) select 'T' || g from generate_series(1, 50) g")
    with open_transaction(fresh_db, "insert into tags (code) values ('late')"):
        p, out = cli(fresh_db, "migrate", "-c", str(BACKFILLED), "--retries", "0", "--lock-timeout", "1s")
    assert p.returncode != 0 and out["reason"] == "LockTimeout", out["message"]
    assert indexes(fresh_db)["ix_tags_code"] is False and versions(fresh_db) == ["0001"]
    execute(fresh_db, "insert into tags (code) values ('Q'), ('q'), ('x')")

    p, pre = cli(fresh_db, "precheck", "-c", str(BACKFILLED))
    assert p.returncode != 0 and pre["reason"] == "ViolationsFound", pre["message"]
    assert pre["data"]["route"] == "data-shadow", pre["data"]
    assert _counts(pre).get("ix_tags_code") == 2, pre["data"]["checks"]
    assert [(x["index"], x["revision"]) for x in pre["data"]["leftovers"]] == [("ix_tags_code", "0002")]

    execute(fresh_db, "delete from tags where code = 'Q'")
    p, pre = cli(fresh_db, "precheck", "-c", str(BACKFILLED))
    assert p.returncode == 0 and pre["outcome"] == "Succeeded", pre["message"]
    assert pre["data"]["route"] == "data-shadow" and _counts(pre).get("ix_tags_code") == 0, pre["data"]
    assert "ix_tags_code" in pre["message"] and "migrate drops it before applying" in pre["message"]
    p, out = run(fresh_db, BACKFILLED, tmp_path)
    assert p.returncode == 0 and out["reason"] == "Verified", out["message"]
    assert versions(fresh_db) == ["0002"] and indexes(fresh_db)["ix_tags_code"] is True
