"""One duration grammar (contract.durations, the CRD's pattern): every value the CRD accepts reaches PostgreSQL
with the same meaning, in milliseconds, through the injected runner (real PostgreSQL)."""

from __future__ import annotations

import json
import os

import pytest

import schemagate.runner.inject as inject
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner.inject.migrate import migrate
from tests.pipeline.helpers import PROJECTS, query, run_module, version

pytestmark = pytest.mark.postgres

PROBE = PROJECTS / "probe" / "alembic.ini"

# (value as written in spec.lockTimeout / --lock-timeout, milliseconds PostgreSQL must hold)
CASES = [
    ("1m", 60_000),  # the reference doc's own example, rejected by the runner before
    ("1m30s", 90_000),
    ("1.5s", 1_500),
    ("500ms", 500),
    ("2h", 7_200_000),
    ("1h2m3.5s", 3_723_500),
    ("0.5ms", 1),  # below PostgreSQL's resolution: 1 ms, never 0 (which would disable the timeout)
    ("0s", 0),
]


def _seen(url: str) -> dict[str, str]:
    return {name: setting for name, setting, _unit in query(url, "SELECT name, setting, unit FROM seen_settings")}


@pytest.mark.parametrize("text,ms", CASES)
def test_every_crd_duration_reaches_postgres_in_milliseconds(make_db, text: str, ms: int) -> None:
    url = make_db()
    # a statement_timeout below a second would cancel Alembic's own statements: those values go to lock_timeout only
    statement = text if ms == 0 or ms >= 1000 else None
    r = migrate(Target(PROBE, "0001", url), lock_timeout=text, statement_timeout=statement)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.data["lockTimeout"] == text and r.data["statementTimeout"] == statement
    assert _seen(url) == {"lock_timeout": str(ms), "statement_timeout": str(ms) if statement else "0"}
    assert query(url, "SELECT DISTINCT unit FROM seen_settings") == [("ms",)]


def test_the_jobs_command_line_accepts_the_crd_example(make_db, tmp_path) -> None:
    url = make_db()
    env = dict(os.environ, PYTHONPATH=str(inject.__file__).rsplit("/schemagate/", 1)[0], DATABASE_URL=url)
    p = run_module(["-m", "schemagate.runner.inject", "migrate", "-c", str(PROBE), "--target", "0001",
                    "--lock-timeout", "1m", "--statement-timeout", "1m30s"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["data"]["lockTimeout"] == "1m"
    assert _seen(url) == {"lock_timeout": "60000", "statement_timeout": "90000"}


@pytest.mark.parametrize("text", ["2min", "5", "-1s", "5 minutes", "1d"])
def test_values_outside_the_grammar_change_nothing(make_db, text: str) -> None:
    url = make_db()
    r = migrate(Target(PROBE, "head", url), lock_timeout=text)
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "InvalidInput")
    assert "--lock-timeout" in r.message and repr(text) in r.message and r.data["field"] == "--lock-timeout"
    assert r.data["actor"] == "user"
    assert version(url) is None
