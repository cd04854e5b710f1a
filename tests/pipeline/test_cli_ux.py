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
