"""The backup step: ``pg_dump`` into a directory (a PVC in Kubernetes), verified, with retention.

- ``pg_dump --format=custom`` (one file), or ``--format=directory --jobs N`` when ``jobs > 1`` (one data file per
  table, dumped by N connections in parallel), ``--compress=METHOD[:LEVEL]`` (``gzip``, ``lz4``, ``zstd``,
  ``none``: what pg_dump 16+ accepts; a method this pg_dump build lacks is refused naming the value),
  ``--lock-wait-timeout``. Default compression ``gzip:1`` (:data:`DEFAULT_COMPRESS`), chosen by measurement
  (``bench/backup.py``: 2.9x the throughput of pg_dump's default gzip level 6 for ~10% more bytes; the bundled
  PostgreSQL 18 client is built without lz4 and zstd). The password travels in ``PGPASSWORD`` only (never on the
  command line, never in a message).
- Everything is written under temporary names and renamed only when complete: the archive to
  ``<database>-<UTC time>.dump.partial`` (a file or, for the directory format, a directory), its sha256 sidecar
  to ``<dump>.sha256.partial``; the archive is renamed to ``.dump`` first, then the sidecar. A failure (a full
  volume, a killed pg_dump) leaves neither a half-written dump nor an empty sidecar, and its message names the
  path it could not write.
- Verified by reading the whole archive back (``pg_restore -f /dev/null``: ``--list`` reads only the table of
  contents and accepts a truncated file) while the sha256 of every file is computed in parallel; a corrupt archive
  is removed. Recorded: path, format, compression, jobs, size, sha256 (of the file; of the sidecar's manifest for
  a directory), dump/verify durations. The sidecar is in ``sha256sum`` format (``sha256sum -c`` works from the
  backup directory): one line for a file, one per data file for a directory.
- Retention: the newest ``keep`` backups of this database (files and directories alike) are kept; the one just
  made is never removed.
- ``verify_backup(path)`` re-checks an existing backup (sha256 sidecar and full read).

Public API: ``backup(url=None, url_env="DATABASE_URL", *, backup_dir, keep=5, lock_wait_timeout="30s",
compress="gzip:1", jobs=1, progress=None) -> StepResult`` and ``verify_backup(path) -> (ok, message)``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemagate.runner import db
from schemagate.runner.result import Outcome, StepResult, now

STEP = "backup"
SUFFIX = ".dump"
DEFAULT_KEEP = 5
DEFAULT_LOCK_WAIT_TIMEOUT = "30s"
DEFAULT_COMPRESS = "gzip:1"  # measured: bench/backup.py (module docstring)
COMPRESS_METHODS = ("gzip", "lz4", "zstd", "none")
_COMPRESS = re.compile(r"(?P<method>gzip|lz4|zstd|none)(:(level=)?(?P<level>\d{1,2}))?|(?P<digit>\d)")
MAX_JOBS = 64


class BackupError(RuntimeError):
    def __init__(self, message: str, reason: str = "BackupFailed", outcome: Outcome = Outcome.PERMANENT_ERROR):
        super().__init__(db.redact(message))
        self.reason = reason
        self.outcome = outcome


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "database"


def _env(password: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PGOPTIONS", None)
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", "15")
    return env


def _tail(stderr: str, limit: int = 400) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = " ".join(lines[-3:])
    return db.redact(text[-limit:])


def full_read(path: Path, timeout: float = 3600) -> tuple[bool, str]:
    """Read the whole archive (a custom-format file or a directory-format directory) with ``pg_restore -f
    /dev/null``: detects truncation and corrupt data blocks. (ok, why)."""
    proc = subprocess.run(
        [db.pg_bin("pg_restore"), "--file", os.devnull, str(path)],
        capture_output=True, text=True, timeout=timeout, env=_env(None),
    )
    if proc.returncode != 0:
        return False, _tail(proc.stderr) or f"pg_restore exited {proc.returncode}"
    return True, ""


def archive_files(path: Path) -> list[Path]:
    """The files of an archive: the file itself, or every file of a directory-format archive (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def manifest(path: Path, name: str) -> str:
    """``sha256sum`` lines for the archive's files, paths relative to the archive's directory with the archive
    itself named ``name`` (its final name, while it is still being written under a temporary one)."""
    lines = []
    for f in archive_files(path):
        rel = name if f == path else f"{name}/{f.relative_to(path).as_posix()}"
        lines.append(f"{sha256_file(f)}  {rel}\n")
    return "".join(lines)


def digest_of(path: Path, manifest_text: str) -> str:
    """The sha256 recorded for an archive: of the file, or (directory) of its manifest."""
    if path.is_dir():
        return hashlib.sha256(manifest_text.encode()).hexdigest()
    return manifest_text.split()[0]


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_backup(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """(ok, why) for an existing backup (file or directory): the sha256 sidecar (when present and not empty)
    matches every file, and the archive reads fully."""
    p = Path(path)
    if not p.exists():
        return False, f"{p} does not exist"
    side = sidecar(p)
    checked = "sha256 and full read OK"
    if side.exists():
        recorded = side.read_text()
        if not recorded.strip():
            checked = f"full read OK; {side} is empty (no digest recorded)"
        else:
            expected = dict((ln.split(None, 1)[1].strip(), ln.split(None, 1)[0])
                            for ln in recorded.splitlines() if len(ln.split(None, 1)) == 2)
            actual = dict((ln.split(None, 1)[1].strip(), ln.split(None, 1)[0])
                          for ln in manifest(p, p.name).splitlines())
            if expected != actual:
                bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
                first = bad[0] if bad else p.name
                return False, (f"sha256 mismatch for {first}: recorded {expected.get(first, 'none')[:12]}…, "
                               f"now {actual.get(first, 'missing')[:12]}…")
    ok, why = full_read(p)
    if not ok:
        return False, f"{p.name} cannot be read back: {why}"
    return True, checked


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in archive_files(path)) if path.exists() else 0
    except OSError:
        return 0


@functools.lru_cache(maxsize=32)
def compression_error(spec: str) -> str | None:
    """Why this pg_dump refuses ``--compress=spec`` (its own message), or None when it accepts it. pg_dump checks
    the specification before connecting, so the probe connects nowhere (a socket directory that does not exist)."""
    proc = subprocess.run(
        [db.pg_bin("pg_dump"), f"--compress={spec}", "--format=custom", "--file", os.devnull, "--no-password",
         "--dbname", "host=/nonexistent-schemagate-probe port=1 dbname=probe connect_timeout=1"],
        capture_output=True, text=True, timeout=60, env=_env(None),
    )
    err = proc.stderr or ""
    if "compression" in err and ("invalid" in err or "not support" in err):
        return _tail(err)
    return None


def check_compress(spec: str | None) -> str:
    """The ``--compress`` value to use; raises ``InvalidInputError`` naming the value when it is malformed or this
    pg_dump build lacks the method (e.g. a client built without zstd)."""
    value = str(spec if spec is not None else DEFAULT_COMPRESS).strip()
    if not _COMPRESS.fullmatch(value):
        raise db.InvalidInputError(
            f"--compress: {value!r} is not a pg_dump compression (METHOD[:LEVEL], METHOD one of "
            f"{', '.join(COMPRESS_METHODS)}; e.g. gzip:1, zstd:3, lz4, none)")
    why = compression_error(value)
    if why:
        raise db.InvalidInputError(f"--compress: {value!r} is refused by pg_dump: {why}")
    return value


def list_backups(backup_dir: Path, database: str) -> list[Path]:
    """This database's finished backups, newest first (by the UTC time in the name, then mtime)."""
    prefix = _safe_name(database) + "-"
    files = [p for p in backup_dir.glob(f"{prefix}*{SUFFIX}") if p.is_file() or p.is_dir()]
    return sorted(files, key=lambda p: (p.name, p.stat().st_mtime), reverse=True)


def apply_retention(backup_dir: Path, database: str, keep: int, protect: Path) -> tuple[list[str], list[str]]:
    """Keep the newest ``keep`` backups (``protect`` always); return (kept, removed) paths."""
    files = list_backups(backup_dir, database)
    kept = [protect] + [p for p in files if p != protect][: max(0, keep - 1)]
    removed = []
    for p in files:
        if p in kept:
            continue
        for f in (p, sidecar(p)):
            _remove(f)
        removed.append(str(p))
    return [str(p) for p in kept], removed


def backup(
    url: str | None = None,
    url_env: str | None = db.DEFAULT_URL_ENV,
    *,
    backup_dir: str | os.PathLike[str],
    keep: int = DEFAULT_KEEP,
    lock_wait_timeout: str = DEFAULT_LOCK_WAIT_TIMEOUT,
    compress: str | None = DEFAULT_COMPRESS,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    timeout: float = 6 * 3600,
) -> StepResult:
    """Dump, verify, keep the newest ``keep`` (see the module docstring). ``compress``: pg_dump's
    ``METHOD[:LEVEL]`` (None = :data:`DEFAULT_COMPRESS`); ``jobs > 1`` selects the directory format dumped by
    ``jobs`` connections. Never raises: every failure is a StepResult naming the path or option at fault."""
    started = now()
    data: dict[str, Any] = {"format": "directory" if jobs > 1 else "custom", "verified": False}
    partial: Path | None = None
    side_tmp: Path | None = None
    say = progress or (lambda s: None)
    try:
        if keep < 1:
            raise db.InvalidInputError(f"--keep: {keep} must be at least 1 (the new backup is always kept)")
        if not 1 <= jobs <= MAX_JOBS:
            raise db.InvalidInputError(f"--jobs: {jobs} must be between 1 and {MAX_JOBS}")
        if not re.fullmatch(r"\d+\s*(ms|s|min|h)?", str(lock_wait_timeout).strip()):
            raise db.InvalidInputError(
                f"--lock-wait-timeout: {lock_wait_timeout!r} is not a duration (examples: 500ms, 30s, 2min)")
        spec = check_compress(compress)
        data.update(compression=spec, jobs=jobs)
        url = db.resolve_url(url, url_env)
        conn_url, password = db.libpq_url_and_password(url)
        database = db.database_name(url) or "postgres"
        bdir = Path(backup_dir)
        try:
            bdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise db.InvalidInputError(f"--backup-dir: cannot create {bdir}: {e.strerror}") from e
        if not os.access(bdir, os.W_OK):
            raise db.InvalidInputError(f"--backup-dir: {bdir} is not writable")
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        final = bdir / f"{_safe_name(database)}-{stamp}{SUFFIX}"
        partial = final.with_name(final.name + ".partial")
        side_tmp = sidecar(final).with_name(sidecar(final).name + ".partial")
        args = [db.pg_bin("pg_dump"), f"--format={data['format']}", "--no-password",
                f"--lock-wait-timeout={str(lock_wait_timeout).replace(' ', '')}", "--file", str(partial),
                f"--compress={spec}"]
        if jobs > 1:
            args.append(f"--jobs={jobs}")
        args += ["--dbname", conn_url]
        t0 = time.monotonic()
        say(f"pg_dump ({data['format']}, {spec}, {jobs} job{'s' if jobs > 1 else ''}) of {database} to "
            f"{final.name}")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=_env(password))
        stderr_box: list[str] = []
        reader = threading.Thread(target=lambda: stderr_box.append(proc.stderr.read() if proc.stderr else ""))
        reader.start()
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                raise BackupError(f"pg_dump did not finish within {timeout:g}s (writing {partial})")
            say(f"pg_dump: {_size(partial) / 1e6:.1f} MB written")
            time.sleep(0.2)
        reader.join()
        stderr = "".join(stderr_box)
        if proc.returncode != 0:
            outcome, reason, msg = db.classify_error(RuntimeError(stderr), "BackupFailed")
            if "could not obtain lock" in stderr or "lock timeout" in stderr.lower():
                outcome, reason = Outcome.TRANSIENT_ERROR, "LockTimeout"
            if reason in ("InternalError", "InvalidInput"):
                reason = "BackupFailed"
            raise BackupError(f"pg_dump failed writing {partial}: {_tail(stderr)}", reason, outcome)
        dump_seconds = time.monotonic() - t0
        say("verifying: reading the whole archive back and computing its sha256")
        t1 = time.monotonic()
        digests: dict[str, Any] = {}

        def hash_all() -> None:
            try:
                digests["manifest"] = manifest(partial, final.name)  # type: ignore[arg-type]
            except OSError as e:
                digests["error"] = e
            digests["seconds"] = time.monotonic() - t1

        hasher = threading.Thread(target=hash_all, name="schemagate-backup-sha256")
        hasher.start()
        ok, why = full_read(partial)
        read_seconds = time.monotonic() - t1
        hasher.join()
        if not ok:
            raise BackupError(f"the new backup cannot be read back ({why}); it was removed", "BackupCorrupt")
        if "error" in digests:
            raise BackupError(f"cannot read {partial} for its sha256: {digests['error']}")
        text = str(digests["manifest"])
        digest = digest_of(partial, text)
        size = _size(partial)
        try:
            with open(side_tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise BackupError(f"cannot write {side_tmp}: {e.strerror or e}; the backup was removed") from e
        try:
            os.replace(partial, final)
        except OSError as e:
            raise BackupError(f"cannot rename {partial} to {final.name}: {e.strerror or e}") from e
        partial = None
        try:
            os.replace(side_tmp, sidecar(final))
        except OSError as e:
            raise BackupError(f"cannot rename {side_tmp} to {sidecar(final).name}: {e.strerror or e}") from e
        side_tmp = None
        kept, removed = apply_retention(bdir, database, keep, final)
        duration = round(time.monotonic() - t0, 3)
        data.update(path=str(final), sizeBytes=size, sha256=digest, verified=True, durationSeconds=duration,
                    dumpSeconds=round(dump_seconds, 3), verifySeconds=round(time.monotonic() - t1, 3),
                    fullReadSeconds=round(read_seconds, 3), sha256Seconds=round(float(digests["seconds"]), 3),
                    files=len(text.splitlines()), database=database, kept=kept, removed=removed, keep=keep)
        msg = (f"backed up {database} to {final} ({data['format']}, {spec}, {size / 1e6:.2f} MB, sha256 "
               f"{digest[:12]}), verified by a full read; kept {len(kept)}, removed {len(removed)}")
        return StepResult(step=STEP, outcome=Outcome.SUCCEEDED, reason="BackupCompleted", message=msg, data=data,
                          started_at=started).finish()
    except Exception as e:  # noqa: BLE001 - every failure becomes a StepResult
        for leftover in (partial, side_tmp):
            if leftover is not None:
                _remove(leftover)
        outcome, reason, msg = db.classify_error(e, "BackupFailed")
        if reason == "InternalError":
            reason = "BackupFailed"
        return StepResult(step=STEP, outcome=outcome, reason=reason, message=db.redact(msg), data=data,
                          started_at=started).finish()
