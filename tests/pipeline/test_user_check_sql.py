"""User checks cannot change the database: one read-only SELECT, refused before anything runs otherwise.

The SQL of ``spec.precheck.checks``/``spec.verify.checks`` and ``--check`` is configuration, but it runs as the
migration's database user during a step that must not change anything. ``UserCheck.parse`` refuses anything but a
single SELECT (lexed like PostgreSQL: strings, dollar quotes, quoted identifiers and comments do not split), the
counting session runs it prepared (PostgreSQL's extended query protocol refuses several statements in one message)
inside a READ ONLY transaction with a statement timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from schemagate import demo
from schemagate.analysis import counting
from schemagate.contract.checks import UserCheck
from schemagate.contract.dburl import libpq_url
from schemagate.contract.errors import InvalidInput
from schemagate.contract.sqlkind import lex, single_select_problem
from tests.pipeline.helpers import FOODTRUCK, ROOT, scalar, schema_snapshot

SCHEMAGATE = str(Path(sys.executable).parent / "schemagate")
ESCAPES = [
    "SELECT 0; COMMIT; DROP TABLE menu_items CASCADE; SELECT 0",
    "select count(*) from menu_items; drop table menu_items",
    "drop table menu_items",
    "with gone as (delete from menu_items returning 1) select count(*) from gone",
    "select * into stolen from menu_items",
    "commit",
    "select count(*) from menu_items for update",
    "select 1 /* unterminated",
]


@pytest.mark.parametrize("sql", [
    "select count(*) from t where x < 0",
    "SELECT count(*) FROM t WHERE note = 'a;b' -- trailing; comment\n",
    "select count(*) from t where body = $fn$ ; drop table t; $fn$",
    'select count(*) from "we;ird" where a = E\'\\\';\'',
    "with bad as (select * from t where x < 0) select count(*) from bad;",
    "(select count(*) from t)",
    "values (0)",
    "select 1 /* nested /* ; */ still ; */",
])
def test_one_read_only_query_is_accepted(sql: str) -> None:
    assert single_select_problem(sql) is None
    assert UserCheck.parse({"name": "c", "sql": sql}).sql


@pytest.mark.parametrize("sql", ESCAPES)
def test_anything_else_is_refused_naming_the_check(sql: str) -> None:
    with pytest.raises(InvalidInput) as e:
        UserCheck.parse({"name": "sneaky", "sql": sql}, "spec.precheck.checks")
    assert "spec.precheck.checks: user check 'sneaky' is not a single read-only SELECT" in str(e.value)


def test_lex_splits_like_postgresql() -> None:
    statements, skeleton = lex("select 'a;b'; select $x$;$x$ ; -- c;\n select \"q;\" ;")
    assert statements == ["select 'a;b'", "select $x$;$x$", '-- c;\n select "q;"']
    assert skeleton.count(";") == 3


@pytest.mark.postgres
def test_the_cli_refuses_an_escaping_check_before_anything_runs(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    before = schema_snapshot(fresh_db)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"DATABASE_URL": fresh_db}
    for step in (["precheck", "-c", str(FOODTRUCK)], ["verify", "-c", str(FOODTRUCK)]):
        p = subprocess.run([SCHEMAGATE, *step, "--json", "--check", f"sneaky={ESCAPES[0]}"], env=env,
                           capture_output=True, text=True, timeout=300, cwd=str(ROOT))  # fmt: skip
        assert p.returncode == 2, (step, p.stdout, p.stderr)
        assert "--check: user check 'sneaky' is not a single read-only SELECT" in p.stderr, p.stderr
    assert schema_snapshot(fresh_db) == before


@pytest.mark.postgres
def test_the_counting_session_cannot_be_escaped_even_without_the_parser(fresh_db: str) -> None:
    """Defence in depth: checks built around the parser still run one prepared statement, read-only."""
    demo.seed_foodtruck(fresh_db)
    rows = scalar(fresh_db, "select count(*) from menu_items")
    checks = [counting.user("multi", ESCAPES[0]),
              counting.user("cte", "with gone as (delete from menu_items returning 1) select count(*) from gone"),
              counting.user("into", "select * into stolen from menu_items"),
              counting.user("ok", "select count(*) from menu_items")]
    with psycopg.connect(libpq_url(fresh_db), autocommit=True) as conn:
        counting.run_counts(conn, checks, counting.CountOptions(statement_timeout="5s"))
    errors = {c.name: c.error for c in checks}
    assert "multiple commands" in errors["multi"], errors
    assert "read-only transaction" in errors["cte"] and "read-only transaction" in errors["into"], errors
    assert errors["ok"] is None and checks[-1].count == rows
    assert scalar(fresh_db, "select count(*) from menu_items") == rows
    assert scalar(fresh_db, "select to_regclass('stolen') is null") is True


def test_json_shape_is_unchanged_for_good_checks() -> None:
    c = UserCheck.parse("neg=select count(*) from t where x < 0")
    assert json.loads(json.dumps(c.to_dict())) == {"name": "neg", "sql": "select count(*) from t where x < 0"}
