"""Branched histories as Alembic models them, on real PostgreSQL: the database's current revisions are a set, the
target is ``head``, ``heads``, a revision id or ``label@head``, migrate applies exactly what ``alembic upgrade
<target>`` applies (checked against the real ``alembic`` command on a second database) and verify compares the
database's set of revisions with the set the target leaves.

Projects (tests/pipeline/projects/graph/*.ini): branches (heads 0002a 'left', 0003b 'right' (over 0002b),
0002c 'extra'), threeway (0002a, 0002b, 0002c merged by 0003), and the handed case 03 (two heads merged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemagate.contract.errors import MultipleHeads
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner import verify as verify_step
from schemagate.runner.inject.migrate import migrate
from schemagate.runner.inject.revisions import plan
from tests.pipeline.helpers import PROJECTS, ROOT, execute, query, run_module, schema_snapshot

BRANCHES = PROJECTS / "graph" / "branches.ini"
THREEWAY = PROJECTS / "graph" / "threeway.ini"
CASE03 = Path("/work/shared/cases/precheck/03-db-at-two-heads-merge")


def versions(url: str) -> str | None:
    """The version table's rows, sorted and comma-separated (the cases' ``final_revision`` form)."""
    rows = query(url, "select version_num from alembic_version order by 1") \
        if query(url, "select to_regclass('alembic_version') is not null")[0][0] else []
    return ",".join(r[0] for r in rows) or None


def alembic(ini: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``alembic`` command (the reference behaviour)."""
    p = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), *args], capture_output=True, text=True,
                       env=dict(os.environ, DATABASE_URL=url), cwd=str(ini.parent), timeout=120)
    return p


def prepare(ini: Path, url: str, base: list[str]) -> None:
    for rev in base:
        p = alembic(ini, url, "upgrade", rev)
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(("base", "target", "expected", "applied"), [
    ([], "heads", "0002a,0002c,0003b", ["0001", "0002a", "0002b", "0002c", "0003b"]),
    (["0002a"], "right@head", "0002a,0003b", ["0002b", "0003b"]),
    (["0002a"], "0002b", "0002a,0002b", ["0002b"]),
    (["0002a"], "extra@head", "0002a,0002c", ["0002c"]),
    (["left@head", "0002b"], "heads", "0002a,0002c,0003b", ["0002c", "0003b"]),
    (["0002a", "0002b"], "right@+1", "0002a,0003b", ["0003b"]),
])
def test_migrate_applies_what_alembic_upgrade_applies(make_db, base, target, expected, applied) -> None:
    ours, reference = make_db(), make_db()
    prepare(BRANCHES, ours, base)
    prepare(BRANCHES, reference, base)
    p = alembic(BRANCHES, reference, "upgrade", target)
    assert p.returncode == 0, p.stderr
    assert versions(reference) == expected  # the reference itself

    pl = plan(Target(BRANCHES, target, ours))
    assert pl["expected"] == expected.split(",")
    assert sorted(pl["pending"]) == applied
    r = migrate(Target(BRANCHES, target, ours), retries=0)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert versions(ours) == expected
    assert r.data["toRevision"] == expected
    assert sorted(r.data["applied"]) == applied
    assert schema_snapshot(ours)[:-1] == schema_snapshot(reference)[:-1]  # the last entry reads one version row

    # verify takes the resolved target (a relative one like right@+1 means something else once applied)
    v = verify_step.verify(Target(BRANCHES, r.data["targetRevision"], ours))
    assert v.outcome is Outcome.SUCCEEDED, v.message
    assert v.data["currentRevision"] == expected


def test_head_with_three_heads_is_refused_before_any_change_naming_them(fresh_db: str) -> None:
    prepare(BRANCHES, fresh_db, ["0001"])
    before = schema_snapshot(fresh_db)
    with pytest.raises(MultipleHeads) as ei:
        plan(Target(BRANCHES, "head", fresh_db))
    text = str(ei.value)
    for needed in ("0002a", "0002c", "0003b", "'heads'", "'right@head'", "'left@head'", "'extra@head'",
                   "at 0001", "nothing was changed"):
        assert needed in text, (needed, text)
    r = migrate(Target(BRANCHES, "head", fresh_db))
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "MultipleHeads")
    assert r.data["heads"] == ["0002a", "0002c", "0003b"]
    assert schema_snapshot(fresh_db) == before
    assert alembic(BRANCHES, fresh_db, "upgrade", "head").returncode != 0  # Alembic refuses it too


def test_database_at_three_heads_merged_by_the_target(fresh_db: str) -> None:
    prepare(THREEWAY, fresh_db, ["0002a", "0002b", "0002c"])
    assert versions(fresh_db) == "0002a,0002b,0002c"
    pl = plan(Target(THREEWAY, "head", fresh_db))
    assert (pl["current"], pl["target"], pl["pending"], pl["expected"]) == ("0002a,0002b,0002c", "0003", ["0003"],
                                                                             ["0003"])
    assert pl["currentHeads"] == ["0002a", "0002b", "0002c"]
    r = migrate(Target(THREEWAY, "head", fresh_db))
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert (r.data["fromRevision"], r.data["toRevision"], r.data["applied"]) == ("0002a,0002b,0002c", "0003",
                                                                                 ["0003"])
    assert versions(fresh_db) == "0003"
    v = verify_step.verify(Target(THREEWAY, "head", fresh_db))
    assert v.outcome is Outcome.SUCCEEDED, v.message


def test_case_03_two_heads_and_their_merge(fresh_db: str) -> None:
    case = json.loads((CASE03 / "case.json").read_text())
    prepare(CASE03 / "alembic.ini", fresh_db, case["base"].split(","))
    execute(fresh_db, (CASE03 / "data.sql").read_text())
    r = migrate(Target(CASE03 / "alembic.ini", case["target"], fresh_db))
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert versions(fresh_db) == case["expect"]["final_revision"] == "0003"
    v = verify_step.verify(Target(CASE03 / "alembic.ini", case["target"], fresh_db))
    assert v.outcome is Outcome.SUCCEEDED, v.message


def test_one_branch_applied_while_the_other_exists_verifies_without_the_project(fresh_db: str) -> None:
    """The operator's verify Job has no Alembic project: it compares the version rows with the plan's set."""
    prepare(BRANCHES, fresh_db, ["0002a"])
    pl = plan(Target(BRANCHES, "0002b", fresh_db))
    r = migrate(Target(BRANCHES, "0002b", fresh_db))
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert versions(fresh_db) == "0002a,0002b"
    doc = {"targetRevision": pl["target"], "expectedRevisions": pl["expected"]}
    v = verify_step.verify(Target(None, None, fresh_db), plan=doc)
    assert v.outcome is Outcome.SUCCEEDED, v.message
    assert v.data["currentRevision"] == "0002a,0002b"
    # a set that differs is a failure naming both sets
    bad = verify_step.verify(Target(None, None, fresh_db), plan={"targetRevision": "0002b",
                                                         "expectedRevisions": ["0002a", "0003b"]})
    assert bad.outcome is Outcome.CHECKS_FAILED
    assert "0002a,0002b" in bad.message and "0002a,0003b" in bad.message


def test_runner_cli_target_heads(fresh_db: str, tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=fresh_db)
    p = run_module(["-m", "schemagate.runner.inject", "migrate", "-c", str(BRANCHES), "--target", "heads",
                    "--termination-log", str(tmp_path / "tl")], env)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert res["data"]["toRevision"] == "0002a,0002c,0003b"
    assert versions(fresh_db) == "0002a,0002c,0003b"
