"""The ``schemagate`` command and the injected runner as processes: exit codes, JSON, secrets, bad input."""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from pathlib import Path

from schemagate import demo
from schemagate.contract.stepresult import from_termination_message
from tests.pipeline.helpers import FOODTRUCK, MULTIHEAD, ROOT, WHOLESALE, run_module, schema_snapshot, version

SCHEMAGATE = [str(Path(sys.executable).parent / "schemagate")]


def _sg(args: list[str], env: dict[str, str], timeout: float = 300):
    import subprocess

    return subprocess.run(SCHEMAGATE + args, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))


def _env(url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SCHEMAGATE_TERMINATION_LOG")}
    if url:
        env["DATABASE_URL"] = url
    env.update(extra)
    return env


def test_run_json_wholesale_blocked(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_wholesale(fresh_db)
    before = schema_snapshot(fresh_db)
    log = tmp_path / "termination-log"
    p = _sg(["run", "-c", str(WHOLESALE), "--json", "--backup-dir", str(tmp_path / "b"),
             "--termination-log", str(log)], _env(fresh_db))
    assert p.returncode == 3, p.stdout + p.stderr
    out = json.loads(p.stdout)  # exactly one JSON document on stdout
    assert out["kind"] == "StepResult" and out["step"] == "run" and out["reason"] == "ViolationsFound"
    assert out["data"]["total"] == demo.WHOLESALE_TOTAL
    assert {c["name"]: c["count"] for c in out["data"]["checks"]} == demo.WHOLESALE_VIOLATIONS
    term = from_termination_message(log.read_text())  # plain JSON or compressed, within 4096 bytes
    assert len(log.read_bytes()) <= 4096 and term is not None and term["reason"] == "ViolationsFound"
    assert schema_snapshot(fresh_db) == before
    password = urllib.parse.urlsplit(fresh_db).password
    assert password and password not in p.stdout + p.stderr + log.read_text()


def test_run_human_foodtruck(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    p = _sg(["run", "-c", str(FOODTRUCK), "--backup-dir", str(tmp_path / "b"), "--check",
             "no_free_items=select count(*) from menu_items where price <= 0"], _env(fresh_db, COLUMNS="200"))
    assert p.returncode == 0, p.stdout + p.stderr
    for word in ("backup", "precheck", "migrate", "verify", "check_stock_non_negative", "no_free_items"):
        assert word in p.stdout
    assert version(fresh_db) == "0003"


def test_wrong_password_never_printed(fresh_db: str, tmp_path: Path) -> None:
    u = urllib.parse.urlsplit(fresh_db)
    bad = fresh_db.replace(f":{u.password}@", ":Hunter2-Wrong-Pw@")
    for args in (["migrate", "-c", str(FOODTRUCK)], ["backup", "--backup-dir", str(tmp_path)],
                 ["precheck", "-c", str(FOODTRUCK)], ["run", "-c", str(FOODTRUCK), "--backup-dir", str(tmp_path)]):
        for fmt in ([], ["--json"]):
            p = _sg(args + fmt, _env(bad))
            assert p.returncode == 4, (args, p.stdout, p.stderr)
            assert "AuthenticationFailed" in p.stdout
            assert "Hunter2-Wrong-Pw" not in p.stdout + p.stderr
    # passing the URL on the command line (discouraged) does not leak it either
    p = _sg(["migrate", "-c", str(FOODTRUCK), "--json", "--database-url", bad], _env())
    assert p.returncode == 4 and "Hunter2-Wrong-Pw" not in p.stdout + p.stderr
    assert version(fresh_db) is None and not list(tmp_path.iterdir())


def test_unreachable_database_is_transient(tmp_path: Path) -> None:
    from schemagate.local.postgres import free_port

    url = f"postgresql://app:Sup3rSecret@127.0.0.1:{free_port()}/app"
    p = _sg(["migrate", "-c", str(FOODTRUCK), "--json"], _env(url))
    assert p.returncode == 5, p.stdout + p.stderr
    assert json.loads(p.stdout)["reason"] == "DatabaseUnreachable"
    assert "Sup3rSecret" not in p.stdout + p.stderr


def test_bad_input_is_a_clear_error_and_changes_nothing(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    before = schema_snapshot(fresh_db)
    for args, needle in ((["run", "-c", str(FOODTRUCK), "--keep", "0"], "--keep"),
                         (["migrate", "-c", str(FOODTRUCK), "--lock-timeout", "soon"], "--lock-timeout"),
                         (["run", "-c", str(FOODTRUCK), "--check", "novalue"], "--check"),
                         (["run", "-c", str(FOODTRUCK), "--max-violations", "-3"], "--max-violations"),
                         (["migrate", "-c", str(FOODTRUCK), "--retries", "many"], "--retries")):
        p = _sg(args, _env(fresh_db))
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr
    p = _sg(["migrate", "-c", str(FOODTRUCK), "--target", "abc123", "--json"], _env(fresh_db))
    assert p.returncode == 4 and json.loads(p.stdout)["reason"] == "UnknownRevision" and "abc123" in p.stdout
    p = _sg(["migrate", "-c", str(tmp_path / "missing.ini"), "--json"], _env(fresh_db))
    assert p.returncode == 4 and json.loads(p.stdout)["reason"] == "InvalidInput" and "missing.ini" in p.stdout
    p = _sg(["migrate", "-c", str(FOODTRUCK), "--json", "--database-url-env", "NO_SUCH_VAR"],
            _env(fresh_db, SCHEMAGATE_NO_EMBEDDED="1"))
    assert p.returncode == 4, p.stdout + p.stderr
    assert json.loads(p.stdout)["reason"] == "InvalidInput" and "NO_SUCH_VAR" in p.stdout
    assert schema_snapshot(fresh_db) == before


def test_multiple_heads_named(fresh_db: str) -> None:
    p = _sg(["run", "-c", str(MULTIHEAD), "--json", "--no-backup"], _env(fresh_db))
    assert p.returncode == 4
    out = json.loads(p.stdout)
    assert out["reason"] == "MultipleHeads" and "0002a" in out["message"] and "0002b" in out["message"]
    assert version(fresh_db) is None


def test_install_runner_works_without_operator_dependencies(fresh_db: str, tmp_path: Path) -> None:
    p = _sg(["install-runner", str(tmp_path / "rt")], _env())
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "rt" / "schemagate" / "runner" / "inject" / "__main__.py").exists()
    # block what the application's image does not have: the runner must not need it
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "for m in ('rich', 'yaml', 'kopf', 'kubernetes', 'prometheus_client', 'psycopg_pool', 'squawk'):\n"
        "    sys.modules[m] = None\n")
    env = _env(fresh_db, PYTHONPATH=f"{tmp_path / 'rt'}:{blocker}")
    p = run_module(["-c", "import schemagate.runner.inject.migrate as a; print(a.__file__)"], env)
    assert p.stdout.strip().startswith(str(tmp_path / "rt")), p.stdout + p.stderr
    p = run_module(["-m", "schemagate.runner.inject", "migrate", "-c", str(FOODTRUCK)], env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["data"]["applied"] == ["0001", "0002", "0003"]
    p = run_module(["-m", "schemagate.runner.inject", "plan", "-c", str(FOODTRUCK)], env)
    assert json.loads(p.stdout)["data"]["pending"] == []


def test_verify_cli_with_plan_env(fresh_db: str, tmp_path: Path) -> None:
    demo.seed_foodtruck(fresh_db)
    p = _sg(["precheck", "-c", str(FOODTRUCK), "--json"], _env(fresh_db))
    assert p.returncode == 0, p.stdout + p.stderr
    plan = p.stdout
    assert _sg(["migrate", "-c", str(FOODTRUCK), "--json"], _env(fresh_db)).returncode == 0
    p = _sg(["verify", "--plan-env", "SCHEMAGATE_PLAN", "--json"], _env(fresh_db, SCHEMAGATE_PLAN=plan))
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["reason"] == "Verified" and out["data"]["currentRevision"] == "0003"
    p = _sg(["verify", "--plan-env", "UNSET_PLAN_VAR", "--json"], _env(fresh_db))
    assert p.returncode == 4 and "UNSET_PLAN_VAR" in p.stdout


def test_demo_runs_both_scenarios(tmp_path: Path) -> None:
    import shutil

    from schemagate.local.postgres import EmbeddedPostgres

    demo_dir = tmp_path / "demo"
    try:
        p = _sg(["demo", "--dir", str(demo_dir)], _env(COLUMNS="200"), timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "foodtruck: Verified" in p.stdout
        assert "wholesale: ViolationsFound" in p.stdout and "13 violating row(s)" in p.stdout
        assert "demo complete" in p.stdout
        assert len(list((demo_dir / "backups" / "foodtruck").glob("*.dump"))) == 1
    finally:
        shutil.rmtree(EmbeddedPostgres(demo_dir / "pg").base_dir, ignore_errors=True)
