"""The restore action: put a database back from a backup the backup step wrote (``runner/backup.py``).

An explicit action, never part of ``run``. In order, and nothing is touched before step 1 passes:

1. The backup is verified exactly as the backup step verified it when it was written
   (:func:`schemagate.runner.backup.verify_backup`): its ``sha256`` sidecar must exist and match every file
   (``sha256sum`` format), and the whole archive must read back (``pg_restore -f /dev/null``; ``--list`` alone reads
   only the table of contents and accepts a truncated file). A missing or empty sidecar, a digest mismatch or a
   truncated archive is refused (``BackupCorrupt``/``InvalidInput``) before any connection is made.
2. By default the backup is restored into a NEW database on the same server: ``into`` or, when not given,
   ``<database>_restored_<UTC time>`` (PostgreSQL's 63-byte identifier limit, ``NAMEDATALEN``, respected). An
   existing database is used only when it is empty (no relation, routine, type, extension other than plpgsql, or
   schema other than ``public`` outside the system schemas); a non-empty one is refused (``InvalidInput``) and left
   alone. A database this action created is dropped again when the restore fails.
3. In place only with ``replace=True`` (``--replace``): first a fresh backup of the current state is taken and
   verified (``runner.backup.backup``, no retention run, so the backup being restored is never removed), then the
   archive is restored into a staging database ``<database>_sg_restore`` and only when that succeeded is it swapped
   in: the current database is closed to new connections (``ALTER DATABASE ... ALLOW_CONNECTIONS false``), its
   sessions are ended (``pg_terminate_backend``), it is renamed away, the staging database takes its name and the old
   one is dropped (the fresh backup holds it). A failed restore drops the staging database and leaves the current
   one as it was.

``pg_restore --exit-on-error`` restores both formats the backup step writes (custom file, directory); ``jobs > 1``
restores with that many connections (PostgreSQL docs, pg_restore ``--jobs``). Ownership and privileges are restored
as dumped unless ``no_owner`` (``--no-owner --no-privileges``: every object owned by the restoring role). The
password travels in ``PGPASSWORD`` only (``schemagate.libpq.client_env``).

Public API: ``restore(backup_path, url=None, url_env="DATABASE_URL", *, into=None, replace=False, backup_dir=None,
jobs=1, no_owner=False, maintenance_db="postgres", progress=None) -> StepResult`` (reason ``Restored``).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemagate.contract.dburl import DEFAULT_URL_ENV, database_name, resolve_url, with_database
from schemagate.contract.errors import (
    BackupCorrupt,
    BackupFailed,
    InvalidInput,
    SchemagateError,
    StepBoundary,
    translate,
)
from schemagate.contract.stepresult import StepResult
from schemagate.libpq import client_env, connect, pg_bin
from schemagate.runner import backup as bk

STEP = "restore"
NAMEDATALEN = 63  # bytes of a PostgreSQL identifier (NAMEDATALEN - 1)
STAGING_SUFFIX = "_sg_restore"
REPLACED_SUFFIX = "_sg_replaced"
NO_RETENTION = 1_000_000  # the fresh backup of --replace runs no retention (the backup being restored stays)

# Objects that make a database "not empty": anything a restore would collide with or silently mix into.
_NOT_EMPTY_SQL = """
select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)')
     + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname not in ('pg_catalog', 'information_schema'))
     + (select count(*) from pg_type t join pg_namespace n on n.oid = t.typnamespace
         where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)'
           and t.typrelid = 0 and t.typelem = 0)
     + (select count(*) from pg_extension where extname <> 'plpgsql')
     + (select count(*) from pg_namespace
         where nspname not in ('public', 'information_schema') and nspname !~ '^pg_')
"""


class RestoreFailed(SchemagateError):
    """pg_restore failed; a database this action created was dropped, the current database is unchanged."""

    reason = "RestoreFailed"


def _identifier(name: str, field: str) -> str:
    if not name or "\x00" in name:
        raise InvalidInput(f"{field}: {name!r} is not a database name", field=field)
    if len(name.encode()) > NAMEDATALEN:
        raise InvalidInput(f"{field}: {name!r} is longer than PostgreSQL's {NAMEDATALEN} bytes", field=field)
    return name


def _fit(base: str, suffix: str) -> str:
    """``base + suffix`` cut (on the base) to PostgreSQL's identifier length."""
    room = NAMEDATALEN - len(suffix.encode())
    cut = base.encode()[:room].decode(errors="ignore")
    return cut + suffix


def derived_name(database: str, now: _dt.datetime | None = None) -> str:
    """``<database>_restored_<YYYYmmddTHHMMSSZ>`` (UTC), cut to 63 bytes on the database part."""
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return _fit(re.sub(r"\s+", "_", database or "database"), f"_restored_{stamp}")


def require_verified(path: Path) -> str:
    """Verify a backup before anything is touched: the sha256 sidecar exists, is not empty and matches, and the
    archive reads fully. Returns the verification message; raises ``InvalidInput`` (no such backup, no sidecar) or
    ``BackupCorrupt`` (mismatch, unreadable)."""
    if not path.exists():
        raise InvalidInput(f"--backup: {path} does not exist", field="--backup")
    side = bk.sidecar(path)
    if not side.exists() or not side.read_text().strip():
        raise InvalidInput(f"--backup: {path.name} has no sha256 sidecar ({side.name} is missing or empty): its "
                           "integrity cannot be checked, so it is not restored", field="--backup")
    ok, why = bk.verify_backup(path)
    if not ok:
        raise BackupCorrupt(f"backup {path} refused, nothing was touched: {why}", field="--backup")
    return why


def _require_digest(path: Path, expected: str) -> None:
    """The verified archive's recorded sha256 (``runner.backup.digest_of`` over its sidecar) is ``expected``;
    raises ``BackupCorrupt`` otherwise (another archive, or a sidecar rewritten with it)."""
    digest = bk.digest_of(path, bk.sidecar(path).read_text(encoding="utf-8"))
    if digest.lower() != expected.strip().lower():
        raise BackupCorrupt(f"backup {path} refused, nothing was touched: its sha256 is {digest[:12]}…, not the "
                            f"{expected.strip()[:12]}… recorded for it", field="--sha256")


class _Server:
    """Statements on the server's maintenance database (``CREATE``/``DROP``/``ALTER DATABASE`` cannot run inside
    the database they act on)."""

    def __init__(self, url: str, maintenance_db: str) -> None:
        self.url = url
        self.admin_url = with_database(url, maintenance_db)

    def _run(self, sql: Any, params: tuple[Any, ...] = (), url: str | None = None) -> list[tuple[Any, ...]]:
        with connect(url or self.admin_url, application_name="schemagate-restore") as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def exists(self, name: str) -> bool:
        return bool(self._run("select 1 from pg_database where datname = %s", (name,)))

    def objects(self, name: str) -> int:
        return int(self._run(_NOT_EMPTY_SQL, url=with_database(self.url, name))[0][0])

    def create(self, name: str) -> None:
        from psycopg import sql

        self._run(sql.SQL("create database {} template template0").format(sql.Identifier(name)))

    def drop(self, name: str) -> None:
        from psycopg import sql

        self._run(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))

    def swap(self, current: str, staging: str, replaced: str) -> None:
        """Close ``current`` to new sessions, end its sessions, rename it to ``replaced`` and ``staging`` to
        ``current``. ``ALTER DATABASE ... RENAME`` needs the database to have no sessions."""
        from psycopg import sql

        ident = sql.Identifier
        self._run(sql.SQL("alter database {} allow_connections false").format(ident(current)))
        try:
            for _ in range(50):
                self._run("select pg_terminate_backend(pid) from pg_stat_activity "
                          "where datname = %s and pid <> pg_backend_pid()", (current,))
                try:
                    self._run(sql.SQL("alter database {} rename to {}").format(ident(current), ident(replaced)))
                    break
                except Exception as e:  # noqa: BLE001 - a session reconnected between terminate and rename: retry
                    if "being accessed by other users" not in str(e):
                        raise
                    time.sleep(0.1)
            else:
                raise InvalidInput(f"database {current} still has sessions after 50 attempts to end them")
        except BaseException:
            self._run(sql.SQL("alter database {} allow_connections true").format(ident(current)))
            raise
        self._run(sql.SQL("alter database {} rename to {}").format(ident(staging), ident(current)))
        self._run(sql.SQL("alter database {} allow_connections true").format(ident(replaced)))


def pg_restore(archive: Path, url: str, *, jobs: int = 1, no_owner: bool = False,
               timeout: float = 6 * 3600) -> None:
    """``pg_restore --exit-on-error`` of ``archive`` into the database of ``url`` (password in ``PGPASSWORD``).
    Raises ``SchemagateError`` (reason ``RestoreFailed``) with pg_restore's last lines."""
    conn = client_env(url, application_name="schemagate-restore")
    args = [pg_bin("pg_restore"), "--exit-on-error", "--no-password", f"--dbname={conn.conninfo}"]
    if jobs > 1:
        args.append(f"--jobs={jobs}")
    if no_owner:
        args += ["--no-owner", "--no-privileges"]
    args.append(str(archive))
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=conn.env)
    except subprocess.TimeoutExpired as e:
        raise RestoreFailed(f"pg_restore of {archive.name} did not finish within {timeout:g}s") from e
    if proc.returncode != 0:
        err = translate(RuntimeError(proc.stderr), RestoreFailed)
        raise type(err)(f"pg_restore of {archive.name} failed: {bk._tail(proc.stderr)}", outcome=err.outcome,
                        field=err.field)


def restore(
    backup_path: str | os.PathLike[str],
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    into: str | None = None,
    replace: bool = False,
    backup_dir: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    no_owner: bool = False,
    maintenance_db: str = "postgres",
    progress: Callable[[str], None] | None = None,
    expect_sha256: str | None = None,
) -> StepResult:
    """Verify ``backup_path`` and restore it (see the module docstring). ``url``/``url_env``: the database to
    replace (``replace``) or, by default, the server and the name the new database is derived from. ``into``: the
    new database's name (not with ``replace``). ``backup_dir``: where ``replace`` writes the fresh backup (default:
    the directory of ``backup_path``). ``expect_sha256``: the sha256 the backup step recorded for this backup
    (``status.backups[].sha256``; of the file, or of the sidecar's manifest for a directory); another one is refused
    (``BackupCorrupt``) before any connection. Never raises: failures are a StepResult (``InvalidInput``, ``BackupCorrupt``,
    ``BackupFailed``, ``RestoreFailed``, ``DatabaseUnreachable``, ``AuthenticationFailed``)."""
    say = progress or (lambda s: None)
    data: dict[str, Any] = {"backup": str(backup_path), "replace": replace}
    with StepBoundary(STEP, default=RestoreFailed, data=data) as step:
        if replace and into:
            raise InvalidInput("--into and --replace exclude each other (--replace restores over the database "
                               "of the URL)", field="--into")
        if not 1 <= jobs <= bk.MAX_JOBS:
            raise InvalidInput(f"--jobs: {jobs} must be between 1 and {bk.MAX_JOBS}", field="--jobs")
        path = Path(backup_path)
        t0 = time.monotonic()
        say(f"verifying {path.name}: sha256 sidecar and a full read")
        data["verification"] = require_verified(path)
        if expect_sha256:
            _require_digest(path, expect_sha256)
        data["format"] = "directory" if path.is_dir() else "custom"
        data["verifySeconds"] = round(time.monotonic() - t0, 3)
        url = resolve_url(url, url_env)
        current = database_name(url)
        server = _Server(url, maintenance_db)
        if replace:
            if not current or not server.exists(current):
                raise InvalidInput(f"--replace: the database {current or '(none in the URL)'} does not exist; "
                                   "restore into a new database instead (without --replace)", field="--replace")
            _replace(server, path, url, current, backup_dir or path.parent, jobs, no_owner, data, say)
            message = (f"restored {path.name} in place over {current}; the state before is in "
                       f"{Path(data['freshBackup']['path']).name}")
        else:
            message = _restore_into_new(server, path, url, into or derived_name(current), jobs, no_owner, data, say,
                                        named=bool(into))
        data["tables"] = _count_tables(with_database(url, data["database"]))
        data["durationSeconds"] = round(time.monotonic() - t0, 3)
        step.succeed("Restored", f"{message} ({data['tables']} tables; backup verified: {data['verification']})")
    return step.result


def _restore_into_new(server: _Server, path: Path, url: str, name: str, jobs: int, no_owner: bool,
                      data: dict[str, Any], say: Callable[[str], None], *, named: bool) -> str:
    """Restore ``path`` into the new (or empty) database ``name`` on the server of ``url`` (``named``: given by
    ``--into``, checked as an identifier); a database it created is dropped again when the restore fails.
    Returns the message."""
    target = _identifier(name, "--into") if named else name
    data["database"] = target
    created = _prepare_new(server, target)
    data["created"] = created
    say(f"pg_restore {path.name} into {target}")
    t1 = time.monotonic()
    try:
        pg_restore(path, with_database(url, target), jobs=jobs, no_owner=no_owner)
    except BaseException:
        if created:
            server.drop(target)
        raise
    data["restoreSeconds"] = round(time.monotonic() - t1, 3)
    return f"restored {path.name} into the {'new' if created else 'empty'} database {target}"


def _prepare_new(server: _Server, target: str) -> bool:
    """Create ``target`` (True) or accept it when it exists and is empty (False); raises ``InvalidInput`` for an
    existing database that holds anything."""
    if server.exists(target):
        n = server.objects(target)
        if n:
            raise InvalidInput(f"--into: the database {target} exists and is not empty ({n} objects); restore "
                               "never writes into a database that holds anything (choose another name, or "
                               "--replace to restore over the URL's database)", field="--into")
        return False
    server.create(target)
    return True


def _replace(server: _Server, path: Path, url: str, current: str, backup_dir: str | os.PathLike[str], jobs: int,
             no_owner: bool, data: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"--replace: a fresh backup of {current} first")
    fresh = bk.backup(url, None, backup_dir=backup_dir, keep=NO_RETENTION, progress=say)
    if not fresh.ok:
        raise BackupFailed(f"--replace: the fresh backup of {current} failed ({fresh.reason}), nothing was "
                           f"restored: {fresh.message}")
    data["freshBackup"] = {k: fresh.data.get(k) for k in ("path", "sha256", "sizeBytes", "format")}
    staging = _fit(current, STAGING_SUFFIX)
    server.drop(staging)  # a leftover of an interrupted earlier restore
    server.create(staging)
    try:
        say(f"pg_restore {path.name} into the staging database {staging}")
        t1 = time.monotonic()
        pg_restore(path, with_database(url, staging), jobs=jobs, no_owner=no_owner)
        data["restoreSeconds"] = round(time.monotonic() - t1, 3)
        replaced = _fit(current, REPLACED_SUFFIX)
        server.drop(replaced)
        say(f"swapping {staging} in for {current}")
        server.swap(current, staging, replaced)
    except BaseException:
        server.drop(staging)
        raise
    server.drop(replaced)
    data["database"] = current


def _count_tables(url: str) -> int:
    with connect(url, application_name="schemagate-restore") as conn:
        row = conn.execute("select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                           "where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')"
                           " and n.nspname !~ '^pg_(toast|temp)'").fetchone()
    return int(row[0]) if row else 0


