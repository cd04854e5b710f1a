"""The backup step: ``pg_dump -Fc`` into a directory (a PVC in Kubernetes), verified, with retention.

- ``pg_dump --format=custom --lock-wait-timeout=...`` writes ``<dir>/<database>-<UTC time>.dump.partial``; the
  password travels in ``PGPASSWORD`` only (never on the command line, never in a message).
- Recorded: path, size, sha256 (also written to ``<dump>.sha256``, ``sha256sum`` format), duration.
- Verified by reading the whole archive back (``pg_restore -f /dev/null``: ``--list`` reads only the table of
  contents and accepts a truncated file); only then renamed to ``.dump``. A corrupt file is removed.
- Retention: the newest ``keep`` backups of this database are kept; the one just made is never removed.
- ``verify_backup(path)`` re-checks an existing backup (sha256 sidecar and full read).

Public API: ``backup(url=None, url_env="DATABASE_URL", *, backup_dir, keep=5, lock_wait_timeout="30s",
progress=None) -> StepResult`` and ``verify_backup(path) -> (ok, message)``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
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
    """Read the whole archive with ``pg_restore -f /dev/null`` (detects truncation and corrupt data blocks)."""
    proc = subprocess.run(
        [db.pg_bin("pg_restore"), "--file", os.devnull, str(path)],
        capture_output=True, text=True, timeout=timeout, env=_env(None),
    )
    if proc.returncode != 0:
        return False, _tail(proc.stderr) or f"pg_restore exited {proc.returncode}"
    return True, ""


def verify_backup(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """(ok, why) for an existing backup: the sha256 sidecar (when present) matches and the archive reads fully."""
    p = Path(path)
    if not p.is_file():
        return False, f"{p} does not exist"
    side = p.with_name(p.name + ".sha256")
    if side.exists():
        expected = side.read_text().split()[0] if side.read_text().strip() else ""
        actual = sha256_file(p)
        if expected != actual:
            return False, f"sha256 mismatch for {p.name}: recorded {expected[:12]}…, now {actual[:12]}…"
    ok, why = full_read(p)
    if not ok:
        return False, f"{p.name} cannot be read back: {why}"
    return True, "sha256 and full read OK"


def list_backups(backup_dir: Path, database: str) -> list[Path]:
    """This database's finished backups, newest first (by the UTC time in the name, then mtime)."""
    prefix = _safe_name(database) + "-"
    files = [p for p in backup_dir.glob(f"{prefix}*{SUFFIX}") if p.is_file()]
    return sorted(files, key=lambda p: (p.name, p.stat().st_mtime), reverse=True)


def apply_retention(backup_dir: Path, database: str, keep: int, protect: Path) -> tuple[list[str], list[str]]:
    """Keep the newest ``keep`` backups (``protect`` always); return (kept, removed) paths."""
    files = list_backups(backup_dir, database)
    kept = [protect] + [p for p in files if p != protect][: max(0, keep - 1)]
    removed = []
    for p in files:
        if p in kept:
            continue
        for f in (p, p.with_name(p.name + ".sha256")):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        removed.append(str(p))
    return [str(p) for p in kept], removed


def backup(
    url: str | None = None,
    url_env: str | None = db.DEFAULT_URL_ENV,
    *,
    backup_dir: str | os.PathLike[str],
    keep: int = DEFAULT_KEEP,
    lock_wait_timeout: str = DEFAULT_LOCK_WAIT_TIMEOUT,
    compress: str | None = None,
    progress: Callable[[str], None] | None = None,
    timeout: float = 6 * 3600,
) -> StepResult:
    """Dump, verify, keep the newest ``keep`` (see the module docstring). Never raises."""
    started = now()
    data: dict[str, Any] = {"format": "custom", "verified": False}
    partial: Path | None = None
    say = progress or (lambda s: None)
    try:
        if keep < 1:
            raise db.InvalidInputError(f"--keep: {keep} must be at least 1 (the new backup is always kept)")
        if not re.fullmatch(r"\d+\s*(ms|s|min|h)?", str(lock_wait_timeout).strip()):
            raise db.InvalidInputError(
                f"--lock-wait-timeout: {lock_wait_timeout!r} is not a duration (examples: 500ms, 30s, 2min)")
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
        args = [db.pg_bin("pg_dump"), "--format=custom", "--no-password",
                f"--lock-wait-timeout={str(lock_wait_timeout).replace(' ', '')}", "--file", str(partial)]
        if compress:
            args.append(f"--compress={compress}")
        args += ["--dbname", conn_url]
        t0 = time.monotonic()
        say(f"pg_dump of {database} to {final.name}")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=_env(password))
        stderr_box: list[str] = []
        reader = threading.Thread(target=lambda: stderr_box.append(proc.stderr.read() if proc.stderr else ""))
        reader.start()
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                raise BackupError(f"pg_dump did not finish within {timeout:g}s")
            if partial.exists():
                say(f"pg_dump: {partial.stat().st_size / 1e6:.1f} MB written")
            time.sleep(0.2)
        reader.join()
        stderr = "".join(stderr_box)
        if proc.returncode != 0:
            outcome, reason, msg = db.classify_error(RuntimeError(stderr), "BackupFailed")
            if "could not obtain lock" in stderr or "lock timeout" in stderr.lower():
                outcome, reason = Outcome.TRANSIENT_ERROR, "LockTimeout"
            if reason in ("InternalError", "InvalidInput"):
                reason = "BackupFailed"
            raise BackupError(f"pg_dump failed: {_tail(stderr)}", reason, outcome)
        dump_seconds = time.monotonic() - t0
        say("verifying: reading the whole archive back")
        ok, why = full_read(partial)
        if not ok:
            raise BackupError(f"the new backup cannot be read back ({why}); it was removed", "BackupCorrupt")
        digest = sha256_file(partial)
        size = partial.stat().st_size
        os.replace(partial, final)
        partial = None
        final.with_name(final.name + ".sha256").write_text(f"{digest}  {final.name}\n")
        kept, removed = apply_retention(bdir, database, keep, final)
        duration = round(time.monotonic() - t0, 3)
        data.update(path=str(final), sizeBytes=size, sha256=digest, verified=True, durationSeconds=duration,
                    dumpSeconds=round(dump_seconds, 3), database=database, kept=kept, removed=removed,
                    keep=keep)
        msg = (f"backed up {database} to {final} ({size / 1e6:.2f} MB, sha256 {digest[:12]}), verified by a "
               f"full read; kept {len(kept)}, removed {len(removed)}")
        return StepResult(step=STEP, outcome=Outcome.SUCCEEDED, reason="BackupCompleted", message=msg, data=data,
                          started_at=started).finish()
    except Exception as e:  # noqa: BLE001 - every failure becomes a StepResult
        if partial is not None:
            try:
                partial.unlink()
            except FileNotFoundError:
                pass
        outcome, reason, msg = db.classify_error(e, "BackupFailed")
        if reason == "InternalError":
            reason = "BackupFailed"
        return StepResult(step=STEP, outcome=outcome, reason=reason, message=db.redact(msg), data=data,
                          started_at=started).finish()
