"""The backup step: ``pg_dump`` into a directory (a PVC in Kubernetes), verified, with retention.

- ``pg_dump --format=custom`` (one file), or ``--format=directory --jobs N`` when ``jobs > 1`` (one data file per
  table, dumped by N connections in parallel), ``--compress=METHOD[:LEVEL]`` (``gzip``, ``lz4``, ``zstd``,
  ``none``: what pg_dump 16+ accepts; a method this pg_dump build lacks is refused naming the value),
  ``--lock-wait-timeout``. Default compression ``gzip:1`` (:data:`DEFAULT_COMPRESS`), chosen by measurement
  (``bench/backup.py``: ~1.7x the throughput of pg_dump's default gzip level 6 for ~10% more bytes; the bundled
  PostgreSQL 18 client is built without lz4 and zstd). The password travels in ``PGPASSWORD`` only (never on the
  command line, never in a message).
- Everything is written under temporary names and renamed only when complete: the archive to
  ``<database>-<UTC time>.dump.partial`` (a file or, for the directory format, a directory), its sha256 sidecar
  to ``<dump>.sha256.partial``; the archive is renamed to ``.dump`` first, then the sidecar. A failure (a full
  volume, a killed pg_dump) leaves neither a half-written dump nor an empty sidecar, and its message names the
  path it could not write.
- Verified by a full read of the whole archive (``pg_restore -f /dev/null``: ``--list`` reads only the table of
  contents and accepts a truncated file) and its sha256; a corrupt archive is removed. The custom format (one
  job) is verified *while it is written*: pg_dump writes to a pipe, and each chunk goes to the file, to the
  sha256 and to pg_restore in the same pass, so the verification ends a moment after the dump
  (``bench/backup.py``: it was 21-24% of the time read back afterwards); the file's size is checked against the
  bytes streamed. Written through a pipe, the archive's table of contents has no data offsets (as with
  ``pg_dump -Fc > file``): pg_restore finds each table's data by its block headers, and parallel (``-j``) and
  selective (``-t``, ``-L``) restores work (tested). The directory format (jobs > 1) is read back after the dump
  while the sha256 of its files is computed in parallel. Recorded: path, format, compression, jobs, size, sha256 (of the file; of the sidecar's manifest for
  a directory), dump/verify durations. The sidecar is in ``sha256sum`` format (``sha256sum -c`` works from the
  backup directory): one line for a file, one per data file for a directory.
- Private: a backup holds the whole database, so the archive and its sidecar are created readable by their
  owner only (files ``0600``; pg_dump's directory format runs under umask ``077``: its directory ``0700``, files
  ``0600``), and a backup directory this step creates is ``0700``. An existing backup directory keeps its mode
  (in Kubernetes the volume's, group-owned by the pod's ``fsGroup``; the restore and rehearse Jobs read the
  backups as the same user, 10001).
- Retention: the newest ``keep`` backups of this database (files and directories alike) are kept; the one just
  made is never removed.
- ``verify_backup(path)`` re-checks an existing backup (sha256 sidecar and full read).

Public API: ``backup(url=None, url_env="DATABASE_URL", *, backup_dir, keep=5, lock_wait_timeout="30s",
compress="gzip:1", jobs=1, progress=None) -> StepResult`` and ``verify_backup(path) -> (ok, message)``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemagate.contract import durations
from schemagate.contract.dburl import DEFAULT_URL_ENV, database_name, resolve_url
from schemagate.contract.errors import (
    BackupCorrupt,
    BackupFailed,
    InternalError,
    InvalidInput,
    LockTimeout,
    StepBoundary,
    translate,
)
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import BackupData, StepResult
from schemagate.libpq import ClientEnv, client_env, password_env, pg_bin

STEP = "backup"
SUFFIX = ".dump"
DEFAULT_KEEP = 5
DEFAULT_LOCK_WAIT_TIMEOUT = "30s"
DEFAULT_COMPRESS = "gzip:1"  # measured: bench/backup.py (module docstring)
COMPRESS_METHODS = ("gzip", "lz4", "zstd", "none")
_COMPRESS = re.compile(r"(?P<method>gzip|lz4|zstd|none)(:(level=)?(?P<level>\d{1,2}))?|(?P<digit>\d)")
MAX_JOBS = 64
FILE_MODE = 0o600  # archive and sidecar: the owner only (they hold the whole database)
DIR_MODE = 0o700  # a backup directory this step creates
DUMP_UMASK = 0o077  # pg_dump --format=directory: its directory 0700, its files 0600


def _private(path: str, flags: int) -> int:
    """``open``'s opener creating ``path`` with mode :data:`FILE_MODE` (not readable by group or others)."""
    return os.open(path, flags, FILE_MODE)


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


def _tail(stderr: str, limit: int = 400) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    text = " ".join(lines[-3:])
    return redact(text[-limit:])


def full_read(path: Path, timeout: float = 3600) -> tuple[bool, str]:
    """Read the whole archive (a custom-format file or a directory-format directory) with ``pg_restore -f
    /dev/null``: detects truncation and corrupt data blocks. (ok, why)."""
    proc = subprocess.run(
        [pg_bin("pg_restore"), "--file", os.devnull, str(path)],
        capture_output=True, text=True, timeout=timeout, env=password_env(None),
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
        [pg_bin("pg_dump"), f"--compress={spec}", "--format=custom", "--file", os.devnull, "--no-password",
         "--dbname", "host=/nonexistent-schemagate-probe port=1 dbname=probe connect_timeout=1"],
        capture_output=True, text=True, timeout=60, env=password_env(None),
    )
    err = proc.stderr or ""
    if "compression" in err and ("invalid" in err or "not support" in err):
        return _tail(err)
    return None


def check_compress(spec: str | None) -> str:
    """The ``--compress`` value to use; raises ``InvalidInput`` naming the value when it is malformed or this
    pg_dump build lacks the method (e.g. a client built without zstd)."""
    value = str(spec if spec is not None else DEFAULT_COMPRESS).strip()
    if not _COMPRESS.fullmatch(value):
        raise InvalidInput(
            f"--compress: {value!r} is not a pg_dump compression (METHOD[:LEVEL], METHOD one of "
            f"{', '.join(COMPRESS_METHODS)}; e.g. gzip:1, zstd:3, lz4, none)", field="--compress")
    why = compression_error(value)
    if why:
        raise InvalidInput(f"--compress: {value!r} is refused by pg_dump: {why}", field="--compress")
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
    url_env: str | None = DEFAULT_URL_ENV,
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
    ``jobs`` connections. Never raises: every failure is a StepResult naming the path or option at fault
    (``InvalidInput``, ``BackupFailed``, ``BackupCorrupt``, ``LockTimeout``, ``DatabaseUnreachable``,
    ``AuthenticationFailed``); nothing half-written is left behind."""
    data: BackupData = {"format": "directory" if jobs > 1 else "custom", "verified": False}
    say = progress or (lambda s: None)
    with StepBoundary(STEP, default=BackupFailed, data=data) as step:  # type: ignore[arg-type]
        spec, lock_wait = _options(keep, jobs, lock_wait_timeout, compress)
        data.update({"compression": spec, "jobs": jobs})
        url = resolve_url(url, url_env)
        database = database_name(url) or "postgres"
        final = _destination(Path(backup_dir), database)
        partial = final.with_name(final.name + ".partial")
        side_tmp = sidecar(final).with_name(sidecar(final).name + ".partial")
        t0 = time.monotonic()
        try:
            say(f"pg_dump ({data['format']}, {spec}, {jobs} job{'s' if jobs > 1 else ''}) of {database} to "
                f"{final.name}")
            if jobs > 1:
                _pg_dump(client_env(url), partial, data["format"], spec, jobs, lock_wait, timeout, say)
                dump_seconds = time.monotonic() - t0
                t1 = time.monotonic()
                text, read_seconds, sha_seconds = _verify_archive(partial, final.name, say)
            else:  # verified while it is written (_dump_streamed): what is left after the dump is the tail
                streamed = _dump_streamed(client_env(url), partial, spec, lock_wait, timeout, say)
                dump_seconds, t1 = streamed.dump_seconds, t0 + streamed.dump_seconds
                text, read_seconds, sha_seconds = (f"{streamed.sha256}  {final.name}\n", streamed.read_seconds,
                                                   streamed.sha256_seconds)
            digest, size = _publish(partial, side_tmp, final, text)
        except BaseException:
            for leftover in (partial, side_tmp):
                _remove(leftover)
            raise
        kept, removed = apply_retention(final.parent, database, keep, final)
        data.update({"path": str(final), "sizeBytes": size, "sha256": digest, "verified": True,
                     "durationSeconds": round(time.monotonic() - t0, 3), "dumpSeconds": round(dump_seconds, 3),
                     "verifySeconds": round(time.monotonic() - t1, 3), "fullReadSeconds": round(read_seconds, 3),
                     "sha256Seconds": round(sha_seconds, 3), "files": len(text.splitlines()),
                     "database": database, "kept": kept, "removed": removed, "keep": keep})
        step.succeed("BackupCompleted",
                     f"backed up {database} to {final} ({data['format']}, {spec}, {size / 1e6:.2f} MB, sha256 "
                     f"{digest[:12]}), verified by a full read; kept {len(kept)}, removed {len(removed)}")
    return step.result


def _options(keep: int, jobs: int, lock_wait_timeout: str, compress: str | None) -> tuple[str, str]:
    """(compression spec, lock wait for pg_dump in ms) after checking every option (``InvalidInput`` naming it)."""
    if keep < 1:
        raise InvalidInput(f"--keep: {keep} must be at least 1 (the new backup is always kept)", field="--keep")
    if not 1 <= jobs <= MAX_JOBS:
        raise InvalidInput(f"--jobs: {jobs} must be between 1 and {MAX_JOBS}", field="--jobs")
    lock_wait = durations.to_postgres(lock_wait_timeout, "--lock-wait-timeout") or "0"
    return check_compress(compress), lock_wait


def _destination(bdir: Path, database: str) -> Path:
    """``<bdir>/<database>-<UTC time>.dump`` after checking that ``bdir`` exists (created with mode 0700) and is
    writable."""
    try:
        if not bdir.is_dir():  # created here: 0700 (an existing directory keeps its mode)
            bdir.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
            os.chmod(bdir, DIR_MODE)
    except OSError as e:
        raise InvalidInput(f"--backup-dir: cannot create {bdir}: {e.strerror}", field="--backup-dir") from e
    if not os.access(bdir, os.W_OK):
        raise InvalidInput(f"--backup-dir: {bdir} is not writable", field="--backup-dir")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return bdir / f"{_safe_name(database)}-{stamp}{SUFFIX}"


def _pg_dump(conn: ClientEnv, partial: Path, fmt: str, spec: str, jobs: int, lock_wait: str, timeout: float,
             say: Callable[[str], None]) -> None:
    """``pg_dump`` into ``partial`` (password in the environment only), reporting the size written while it runs.
    Raises ``BackupFailed`` (not finished within ``timeout`` seconds, or failed), ``LockTimeout`` (a table lock not
    obtained within ``--lock-wait-timeout``), or what ``translate`` makes of pg_dump's error (unreachable,
    authentication)."""
    args = [pg_bin("pg_dump"), f"--format={fmt}", "--no-password", f"--lock-wait-timeout={lock_wait}",
            "--file", str(partial), f"--compress={spec}"]
    if jobs > 1:
        args.append(f"--jobs={jobs}")
    args += ["--dbname", conn.conninfo]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=conn.env,
                            umask=DUMP_UMASK)
    stderr_box: list[str] = []
    reader = threading.Thread(target=lambda: stderr_box.append(proc.stderr.read() if proc.stderr else ""))
    reader.start()
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout:
            proc.kill()
            reader.join()
            raise BackupFailed(f"pg_dump did not finish within {timeout:g}s (writing {partial})")
        say(f"pg_dump: {_size(partial) / 1e6:.1f} MB written")
        try:
            proc.wait(timeout=0.2)  # returns as soon as pg_dump exits (a small dump need not wait 0.2 s)
        except subprocess.TimeoutExpired:
            pass
    reader.join()
    if proc.returncode != 0:
        _raise_dump_error("".join(stderr_box), partial)


def _raise_dump_error(stderr: str, partial: Path) -> None:
    """Raise what pg_dump's ``stderr`` means: ``LockTimeout``, ``BackupFailed``, or ``translate``'s class (the
    database unreachable, authentication failed), the message naming ``partial``."""
    message = f"pg_dump failed writing {partial}: {_tail(stderr)}"
    if "could not obtain lock" in stderr or "lock timeout" in stderr.lower():
        raise LockTimeout(message, field="--lock-wait-timeout")
    err = translate(RuntimeError(stderr), BackupFailed)
    if isinstance(err, (InternalError, InvalidInput)) or type(err) is BackupFailed:
        raise BackupFailed(message)
    raise type(err)(message, outcome=err.outcome, field=err.field)


@dataclass
class _Streamed:
    """What :func:`_dump_streamed` measured: the archive's sha256, the seconds until pg_dump's last byte was
    written (``dump_seconds``), until pg_restore had read it all (``read_seconds``), spent hashing
    (``sha256_seconds``), and the bytes written."""

    sha256: str
    dump_seconds: float
    read_seconds: float
    sha256_seconds: float
    size: int


def _dump_streamed(conn: ClientEnv, partial: Path, spec: str, lock_wait: str, timeout: float,
                   say: Callable[[str], None], chunk: int = 1 << 20) -> _Streamed:
    """The custom-format dump, verified while it is written: ``pg_dump`` writes to a pipe, and every chunk is
    written to ``partial``, added to the sha256 and fed to ``pg_restore --file /dev/null`` (the same full read
    as :func:`full_read`: every data block decompressed, its checksum checked, truncation detected) in the same
    pass, so the verification ends a moment after the dump instead of re-reading the archive afterwards. The
    file's size is checked against the bytes streamed once it is closed. Written to a pipe, the archive's table
    of contents carries no data offsets (as with ``pg_dump -Fc > file``); pg_restore then finds each table's data
    by reading the block headers, which selective (``-t``/``-L``) and parallel (``-j``) restores do (see
    ``_CloseArchive`` in PostgreSQL's ``pg_backup_custom.c``: rewriting the offsets "is not essential").

    Raises ``BackupFailed`` (``partial`` cannot be written, pg_dump failed or did not finish within ``timeout``),
    ``BackupCorrupt`` (pg_restore cannot read the stream back), ``LockTimeout``, or what ``translate`` makes of
    pg_dump's error."""
    args = [pg_bin("pg_dump"), "--format=custom", "--no-password", f"--lock-wait-timeout={lock_wait}",
            f"--compress={spec}", "--dbname", conn.conninfo]
    t0 = time.monotonic()
    dump = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=conn.env)
    reader = subprocess.Popen([pg_bin("pg_restore"), "--format=custom", "--file", os.devnull],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=password_env(None))
    errors: dict[str, str] = {}
    drains = [threading.Thread(target=lambda k=k, p=p: errors.__setitem__(k, p.stderr.read().decode(errors="replace")
                               if p.stderr else ""), daemon=True)
              for k, p in (("dump", dump), ("read", reader))]
    for d in drains:
        d.start()
    timer = threading.Timer(timeout, dump.kill)
    timer.start()
    try:
        h, hashing, size = _tee(dump, reader, partial, chunk, say)
    except OSError as e:
        dump.kill()
        reader.kill()
        raise BackupFailed(f"cannot write {partial}: {e.strerror or e}") from e
    finally:
        if reader.stdin is not None:
            with contextlib.suppress(OSError):
                reader.stdin.close()
        dump.wait()
        dump_seconds = time.monotonic() - t0
        timer.cancel()
        reader.wait()
        for d in drains:
            d.join()
    read_seconds = time.monotonic() - t0
    if dump.returncode != 0:
        if dump_seconds >= timeout:
            raise BackupFailed(f"pg_dump did not finish within {timeout:g}s (writing {partial})")
        _raise_dump_error(errors.get("dump", ""), partial)
    if reader.returncode != 0:
        why = _tail(errors.get("read", "")) or f"pg_restore exited {reader.returncode}"
        raise BackupCorrupt(f"the new backup cannot be read back ({why}); it was removed")
    on_disk = _size(partial)
    if on_disk != size:
        raise BackupFailed(f"{partial} holds {on_disk} bytes, {size} were written; the backup was removed")
    return _Streamed(h.hexdigest(), dump_seconds, read_seconds, hashing, size)


def _tee(dump: subprocess.Popen[bytes], reader: subprocess.Popen[bytes], partial: Path, chunk: int,
         say: Callable[[str], None]) -> tuple[Any, float, int]:
    """Copy pg_dump's output to ``partial``, the sha256 and pg_restore's input until pg_dump closes it:
    (the sha256 object, seconds spent hashing, bytes). Raises ``OSError`` when ``partial`` cannot be written; a
    pg_restore that stopped reading is left to its exit status."""
    assert dump.stdout is not None and reader.stdin is not None
    for pipe in (dump.stdout, reader.stdin):  # 1 MiB pipes: fewer, larger reads and writes (Linux; else as is)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, chunk)
    h, hashing, size, reader_gone, last_say = hashlib.sha256(), 0.0, 0, False, 0.0
    with open(partial, "wb", opener=_private) as f:
        fd = dump.stdout.fileno()
        while b := os.read(fd, chunk):
            f.write(b)
            th = time.monotonic()
            h.update(b)
            hashing += time.monotonic() - th
            size += len(b)
            if not reader_gone:
                try:
                    reader.stdin.write(b)
                except OSError:  # BrokenPipeError: pg_restore stopped reading, its stderr says why
                    reader_gone = True
            if th - last_say > 0.2:
                say(f"pg_dump: {size / 1e6:.1f} MB written and read back")
                last_say = th
    return h, hashing, size


def _verify_archive(partial: Path, name: str, say: Callable[[str], None]) -> tuple[str, float, float]:
    """Read the whole archive back while computing the sha256 of its files in parallel: (the sidecar's manifest
    text, full-read seconds, sha256 seconds). Raises ``BackupCorrupt`` when it cannot be read back,
    ``BackupFailed`` when its files cannot be read for the digest."""
    say("verifying: reading the whole archive back and computing its sha256")
    t1 = time.monotonic()
    digests: dict[str, Any] = {}

    def hash_all() -> None:
        try:
            digests["manifest"] = manifest(partial, name)
        except OSError as e:
            digests["error"] = e
        digests["seconds"] = time.monotonic() - t1

    hasher = threading.Thread(target=hash_all, name="schemagate-backup-sha256")
    hasher.start()
    ok, why = full_read(partial)
    read_seconds = time.monotonic() - t1
    hasher.join()
    if not ok:
        raise BackupCorrupt(f"the new backup cannot be read back ({why}); it was removed")
    if "error" in digests:
        raise BackupFailed(f"cannot read {partial} for its sha256: {digests['error']}")
    return str(digests["manifest"]), read_seconds, float(digests["seconds"])


def _publish(partial: Path, side_tmp: Path, final: Path, text: str) -> tuple[str, int]:
    """Write the sidecar under its temporary name, then rename the archive and the sidecar to their final names;
    (sha256, size). Raises ``BackupFailed`` naming the path it could not write or rename."""
    digest = digest_of(partial, text)
    size = _size(partial)
    try:
        with open(side_tmp, "w", encoding="utf-8", opener=_private) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise BackupFailed(f"cannot write {side_tmp}: {e.strerror or e}; the backup was removed") from e
    try:
        os.replace(partial, final)
    except OSError as e:
        raise BackupFailed(f"cannot rename {partial} to {final.name}: {e.strerror or e}") from e
    try:
        os.replace(side_tmp, sidecar(final))
    except OSError as e:
        raise BackupFailed(f"cannot rename {side_tmp} to {sidecar(final).name}: {e.strerror or e}") from e
    return digest, size
