"""The backup step against real PostgreSQL: dump, full-read verification, corruption, retention, secrets."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemagate.contract.stepresult import Outcome
from schemagate.local.postgres import free_port
from schemagate.runner import backup as bk
from tests.pipeline.helpers import execute, scalar


def _seed(url: str, rows: int = 20000) -> None:
    execute(url, f"create table t as select g as id, md5(g::text) as payload from generate_series(1, {rows}) g")


def test_backup_verified_and_recorded(fresh_db: str, tmp_path: Path) -> None:
    _seed(fresh_db)
    r = bk.backup(fresh_db, backup_dir=tmp_path, keep=3)
    assert r.outcome is Outcome.SUCCEEDED, r.message
    assert r.reason == "BackupCompleted"
    d = r.data
    p = Path(d["path"])
    assert p.exists() and p.suffix == ".dump" and d["sizeBytes"] == p.stat().st_size > 1000
    assert d["sha256"] == bk.sha256_file(p) and d["verified"] is True and d["format"] == "custom"
    assert (p.parent / (p.name + ".sha256")).read_text().split()[0] == d["sha256"]
    assert not list(tmp_path.glob("*.partial"))
    assert bk.verify_backup(p) == (True, "sha256 and full read OK")
    u = urllib.parse.urlsplit(fresh_db)
    assert u.password not in r.to_json()


def test_truncated_and_bit_flipped_backups_rejected(fresh_db: str, tmp_path: Path) -> None:
    _seed(fresh_db)
    r = bk.backup(fresh_db, backup_dir=tmp_path)
    assert r.ok, r.message
    p = Path(r.data["path"])
    raw = p.read_bytes()
    # truncated to 60%: pg_restore --list still reads the TOC, the full read fails
    trunc = tmp_path / "trunc.dump"
    trunc.write_bytes(raw[: int(len(raw) * 0.6)])
    ok, why = bk.verify_backup(trunc)
    assert not ok and why
    ok, why = bk.full_read(trunc)
    assert not ok
    # one flipped bit in the middle: caught by the sha256 sidecar (and usually by the compressed stream)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(flipped))
    ok, why = bk.verify_backup(p)
    assert not ok and "sha256 mismatch" in why


def test_retention_keeps_newest_and_never_the_new_one(fresh_db: str, tmp_path: Path) -> None:
    _seed(fresh_db, 100)
    paths = []
    for _ in range(4):
        r = bk.backup(fresh_db, backup_dir=tmp_path, keep=2)
        assert r.ok, r.message
        paths.append(r.data["path"])
        assert r.data["path"] in r.data["kept"]
    remaining = sorted(str(p) for p in tmp_path.glob("*.dump"))
    assert remaining == sorted(paths[-2:])
    assert len(list(tmp_path.glob("*.sha256"))) == 2
    assert r.data["removed"] == [paths[1]]
    # another database's backups in the same directory are left alone
    other = tmp_path / "otherdb-20200101T000000000000Z.dump"
    other.write_bytes(b"x")
    r = bk.backup(fresh_db, backup_dir=tmp_path, keep=1)
    assert r.ok and other.exists() and len(r.data["kept"]) == 1


def test_backup_bad_input_and_wrong_password(fresh_db: str, tmp_path: Path) -> None:
    r = bk.backup(fresh_db, backup_dir=tmp_path, keep=0)
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "InvalidInput") and "--keep" in r.message
    u = urllib.parse.urlsplit(fresh_db)
    bad = fresh_db.replace(f":{u.password}@", ":Secr3tWrongPw@")
    r = bk.backup(bad, backup_dir=tmp_path)
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "AuthenticationFailed"), r.message
    assert "Secr3tWrongPw" not in r.to_json()
    assert not list(tmp_path.glob("*.dump*"))
    r = bk.backup(f"postgresql://u:pw@127.0.0.1:{free_port()}/x",
                  backup_dir=tmp_path)
    assert (r.outcome, r.reason) == (Outcome.TRANSIENT_ERROR, "DatabaseUnreachable"), r.message
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def small_volume(path: Path, size_bytes: int) -> Iterator[Path]:
    """A real tmpfs of ``size_bytes`` (a full volume, for real); needs root (CAP_SYS_ADMIN) to mount."""
    path.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        pytest.fail(f"mounting a {size_bytes}-byte tmpfs at {path} failed (needs root): {p.stderr.strip()}",
                    pytrace=False)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_volume_leaves_nothing_and_names_the_path(fresh_db: str, tmp_path: Path) -> None:
    _seed(fresh_db)
    with small_volume(tmp_path / "full", 64 * 1024) as vol:
        r = bk.backup(fresh_db, backup_dir=vol)
        assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "BackupFailed"), r.message
        assert str(vol) in r.message and ".partial" in r.message, r.message
        assert os.listdir(vol) == []


def test_dump_that_fits_but_its_sidecar_does_not_leaves_no_good_dump_beside_an_empty_sidecar(
        fresh_db: str, tmp_path: Path) -> None:
    """Issue: a full volume left a good dump beside a 0-byte .sha256, which later called the dump corrupt."""
    _seed(fresh_db)
    probe = bk.backup(fresh_db, backup_dir=tmp_path / "probe")
    assert probe.ok, probe.message
    pages = -(-probe.data["sizeBytes"] // 4096)
    with small_volume(tmp_path / "tight", pages * 4096) as vol:
        r = bk.backup(fresh_db, backup_dir=vol)
        assert not r.ok, "the sidecar should not have fitted"
        assert "cannot write" in r.message and ".sha256.partial" in r.message and str(vol) in r.message, r.message
        assert os.listdir(vol) == [], os.listdir(vol)


@pytest.mark.parametrize("jobs", [1, 2])
def test_formats_and_compression_verified_and_sidecar_checks_every_file(fresh_db: str, tmp_path: Path,
                                                                        jobs: int) -> None:
    _seed(fresh_db)
    execute(fresh_db, "create table u as select g as id, md5((g * 3)::text) as v from generate_series(1, 5000) g")
    r = bk.backup(fresh_db, backup_dir=tmp_path, compress="none" if jobs == 1 else "gzip:5", jobs=jobs)
    assert r.ok, r.message
    p = Path(r.data["path"])
    assert r.data["format"] == ("directory" if jobs > 1 else "custom") and p.is_dir() == (jobs > 1)
    assert r.data["compression"] == ("none" if jobs == 1 else "gzip:5") and r.data["jobs"] == jobs
    lines = (tmp_path / (p.name + ".sha256")).read_text().splitlines()
    assert r.data["files"] == len(lines) and (len(lines) > 2) == (jobs > 1)
    # sha256sum -c accepts the sidecar from the backup directory
    check = subprocess.run(["sha256sum", "-c", p.name + ".sha256"], cwd=tmp_path, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert bk.verify_backup(p) == (True, "sha256 and full read OK")
    victim = max(bk.archive_files(p), key=lambda f: f.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    ok, why = bk.verify_backup(p)
    assert not ok and "sha256 mismatch" in why
    # retention removes directory backups too
    r2 = bk.backup(fresh_db, backup_dir=tmp_path, jobs=jobs, keep=1)
    assert r2.ok and r2.data["removed"] == [str(p)] and not p.exists()
    assert not (tmp_path / (p.name + ".sha256")).exists()


def test_compression_bad_or_unsupported_is_refused_naming_the_value(fresh_db: str, tmp_path: Path) -> None:
    r = bk.backup(fresh_db, backup_dir=tmp_path, compress="brotli:3")
    assert (r.outcome, r.reason) == (Outcome.PERMANENT_ERROR, "InvalidInput") and "'brotli:3'" in r.message
    r = bk.backup(fresh_db, backup_dir=tmp_path, compress="gzip:42")
    assert r.reason == "InvalidInput" and "'gzip:42'" in r.message, r.message
    r = bk.backup(fresh_db, backup_dir=tmp_path, jobs=0)
    assert r.reason == "InvalidInput" and "--jobs" in r.message
    assert not tmp_path.exists() or os.listdir(tmp_path) == []


def test_default_backup_is_read_back_while_written_and_restores_in_parallel_and_selectively(
        make_db: Callable[[], str], tmp_path: Path) -> None:
    """The default custom-format backup is verified in the same pass as it is written (its table of contents then
    carries no data offsets, as with ``pg_dump -Fc > file``): pg_restore -j 2 and a one-table restore still work."""
    from schemagate.libpq import client_env, pg_bin

    src = make_db()
    _seed(src)
    execute(src, "create table u as select g as id, md5((g * 3)::text) as v from generate_series(1, 5000) g")
    r = bk.backup(src, backup_dir=tmp_path)
    assert r.ok, r.message
    d = r.data
    assert d["fullReadSeconds"] >= d["dumpSeconds"] > 0 and d["sha256Seconds"] >= 0, d
    assert d["sha256"] == bk.sha256_file(Path(d["path"])) and d["files"] == 1
    for args, expect in ((["--jobs=2"], {"t": 20000, "u": 5000}), (["--table=u"], {"u": 5000})):
        into = make_db()
        env = client_env(into)
        p = subprocess.run([pg_bin("pg_restore"), "--no-owner", "--exit-on-error", *args, "--dbname",
                            env.conninfo, d["path"]], env=env.env, capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
        tables = {n: scalar(into, f"select count(*) from {n}") for n in ("t", "u")
                  if scalar(into, f"select to_regclass('{n}') is not null")}
        assert tables == expect, (args, tables)
