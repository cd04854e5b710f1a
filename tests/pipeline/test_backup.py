"""The backup step against real PostgreSQL: dump, full-read verification, corruption, retention, secrets."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from schemagate.runner import backup as bk
from schemagate.runner.result import Outcome
from tests.pipeline.helpers import execute


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
    r = bk.backup(f"postgresql://u:pw@127.0.0.1:{__import__('schemagate.runner.db').runner.db.free_port()}/x",
                  backup_dir=tmp_path)
    assert (r.outcome, r.reason) == (Outcome.TRANSIENT_ERROR, "DatabaseUnreachable"), r.message
    assert os.listdir(tmp_path) == []
