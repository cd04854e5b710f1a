"""The version table where env.py's OWN connection finds it: env.py's engine sets the session's search_path
(``connect_args={"options": "-c search_path=billing"}``), so its unqualified ``alembic_version`` is
``billing.alembic_version``, not the role's ``public.alembic_version`` (which another Alembic project may own).
The plan, the shadow's version rows, the catalog plan's confirmation, the migration's re-plan and verify all use
the table env.py really reads. Real PostgreSQL; the corpus case 06 (copied, its env.py changed as a user would)
and the probe project (``PROBE_SEARCH_PATH``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from schemagate.contract.dburl import libpq_url
from tests.conformance.corpus import CorpusError, corpus_dir
from tests.pipeline.helpers import PROJECTS, ROOT, execute, query, run_module

pytestmark = pytest.mark.postgres

PROBE = PROJECTS / "probe" / "alembic.ini"
OTHER_PROJECT = ("CREATE TABLE public.alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY); "
                 "INSERT INTO public.alembic_version VALUES ('0002')")  # another project's, same revision ids


def _case_copy(tmp_path: Path) -> Path:
    """The corpus case 06 copied, its env.py using Alembic's default version table name and setting the
    session's search_path to billing: the alembic.ini of the copy."""
    try:
        case = corpus_dir(None) / "06-custom-version-table"
    except CorpusError as e:
        pytest.fail(str(e), pytrace=False)
    if not (case / "env.py").is_file():
        pytest.fail(f"the migration corpus case is missing: {case}", pytrace=False)
    work = tmp_path / "case06"
    shutil.copytree(case, work)
    env_py = (work / "env.py").read_text(encoding="utf-8")
    edited = env_py.replace("version_table=VERSION_TABLE,", "").replace(
        "poolclass=pool.NullPool,", 'poolclass=pool.NullPool, connect_args={"options": "-c search_path=billing"},')
    assert edited.count("version_table=") == 0 and "search_path=billing" in edited, "the case's env.py changed"
    (work / "env.py").write_text(edited, encoding="utf-8")
    return work / "alembic.ini"


def _env(url: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "operator"), DATABASE_URL=url, SCHEMAGATE_NO_EMBEDDED="1",
                **extra)


def _billing_at_0001(url: str, ini: Path, other_project: bool) -> None:
    execute(url, "CREATE SCHEMA billing")
    p = run_module(["-m", "alembic", "-c", str(ini), "upgrade", "0001"], _env(url))  # the plain tool
    assert p.returncode == 0, p.stdout + p.stderr
    execute(url, "SET search_path TO billing; " + (ini.parent / "data.sql").read_text(encoding="utf-8"))
    if other_project:
        execute(url, OTHER_PROJECT)
    assert query(url, "SELECT version_num FROM billing.alembic_version") == [("0001",)]


def _versions(url: str) -> dict[str, list[str]]:
    out = {}
    for schema in ("billing", "public"):
        if query(url, f"SELECT to_regclass('{schema}.alembic_version') IS NOT NULL") == [(True,)]:
            out[schema] = [r[0] for r in query(url, f"SELECT version_num FROM {schema}.alembic_version")]
    return out


@pytest.mark.parametrize("other_project", [False, True], ids=["one-version-table", "another-projects-table"])
@pytest.mark.parametrize("command", ["precheck", "run"])
def test_env_py_search_path_blocks_on_the_violation(make_db, tmp_path: Path, other_project: bool,
                                                    command: str) -> None:
    """Blocked with the one violating row (ck_invoice_total_nonneg), as ``alembic upgrade head`` fails on a copy;
    never "the shadow is not faithful"; nothing changes in either version table."""
    url = make_db()
    ini = _case_copy(tmp_path)
    _billing_at_0001(url, ini, other_project)
    before = _versions(url)
    args = ["--backup-dir", str(tmp_path / "backups")] if command == "run" else []
    p = run_module(["-m", "schemagate.cli", command, "-c", str(ini), "--json", *args], _env(url))
    result = json.loads(p.stdout)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "not faithful" not in result["message"], result["message"]
    checks = result["data"].get("checks") or []
    bad = {c["name"]: c["count"] for c in checks if c.get("count")}
    assert bad == {"ck_invoice_total_nonneg": 1}, checks
    assert _versions(url) == before == {"billing": ["0001"], **({"public": ["0002"]} if other_project else {})}
    # the plain tool agrees: the upgrade fails on that check, the version stays
    failed = run_module(["-m", "alembic", "-c", str(ini), "upgrade", "head"], _env(url))
    assert failed.returncode != 0 and "ck_invoice_total_nonneg" in failed.stderr, failed.stderr[-2000:]
    assert _versions(url) == before


def test_the_plan_names_env_pys_schema(make_db, tmp_path: Path) -> None:
    """``plan`` (env.py) and ``plan_from_catalog`` (SQL) name billing.alembic_version; the migration context's
    table reported by the shadow-style upgrade is the same, so the catalog plan is confirmed."""
    import psycopg

    from schemagate.contract.target import Target
    from schemagate.runner.inject.apply import upgrade
    from schemagate.runner.inject.revisions import confirm, plan, plan_from_catalog

    url = make_db()
    execute(url, "CREATE SCHEMA billing")
    os.environ["PROBE_SEARCH_PATH"] = "billing"
    try:
        at_base = plan(Target(PROBE, "0001", url))
        assert (at_base["versionTableSchema"], at_base["currentHeads"]) == ("billing", [])  # where Alembic creates it
        up = upgrade(Target(PROBE, "0001", url))
        assert up["contextVersionTable"] == {"schema": "billing", "name": "alembic_version"}
        execute(url, OTHER_PROJECT.replace("'0002'", "'0001'"))
        p = plan(Target(PROBE, "head", url))
        assert (p["versionTableSchema"], p["current"], p["pending"]) == ("billing", "0001", ["0002"])
        execute(url, "DROP TABLE public.alembic_version")
        with psycopg.connect(libpq_url(url)) as conn:
            cat = plan_from_catalog(Target(PROBE, "head", url), conn)
        assert cat is not None and (cat["source"], cat["versionTableSchema"], cat["current"]) == \
            ("catalog", "billing", "0001")
        up = upgrade(Target(PROBE, "head", url), planned=cat, expect_current=True)
        assert confirm(cat, up["contextVersionTable"]) and cat["source"] == "env.py"
    finally:
        del os.environ["PROBE_SEARCH_PATH"]
    assert query(url, "SELECT version_num FROM billing.alembic_version") == [("0002",)]
    assert query(url, "SELECT to_regclass('public.probe_items') IS NULL") == [(True,)]


@pytest.mark.parametrize("other_project", [False, True], ids=["one-version-table", "another-projects-table"])
def test_probe_run_with_search_path_in_env_py(make_db, tmp_path: Path, other_project: bool) -> None:
    """``schemagate run`` of the probe project whose env.py sets search_path=billing, the database at 0001 there:
    Verified, 0002 applied in billing; another project's public.alembic_version is untouched."""
    url = make_db()
    execute(url, "CREATE SCHEMA billing")
    env = _env(url, PROBE_SEARCH_PATH="billing")
    p = run_module(["-m", "alembic", "-c", str(PROBE), "upgrade", "0001"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    if other_project:
        execute(url, OTHER_PROJECT)
    p = run_module(["-m", "schemagate.cli", "run", "-c", str(PROBE), "--json", "--backup-dir",
                    str(tmp_path / "backups")], env)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["reason"] == "Verified" and result["data"]["applied"] == ["0002"], result
    assert _versions(url) == {"billing": ["0002"], **({"public": ["0002"]} if other_project else {})}
    assert query(url, "SELECT to_regclass('billing.probe_items') IS NOT NULL") == [(True,)]


def test_another_projects_table_at_head_is_not_taken_for_env_pys(make_db, tmp_path: Path) -> None:
    """The probe has never run (billing.alembic_version does not exist) and another project's public.alembic_version
    holds 0002, one of the probe's ids: the catalog's one table says "nothing to do", but env.py, which plans when
    nothing is pending, reads base on its search_path. Both revisions are applied in billing; the other project's
    table is untouched (before, the run reported Verified at 0002 and applied nothing)."""
    url = make_db()
    execute(url, "CREATE SCHEMA billing; " + OTHER_PROJECT)
    env = _env(url, PROBE_SEARCH_PATH="billing")
    p = run_module(["-m", "schemagate.cli", "run", "-c", str(PROBE), "--json", "--backup-dir",
                    str(tmp_path / "backups")], env)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["reason"] == "Verified" and result["data"]["applied"] == ["0001", "0002"], result
    assert _versions(url) == {"billing": ["0002"], "public": ["0002"]}
    assert query(url, "SELECT to_regclass('billing.probe_items') IS NOT NULL") == [(True,)]
