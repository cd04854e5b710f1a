"""Database URLs (standard library only): the one place a ``postgresql://`` URL is read, rewritten or split.

The password of every URL read through ``resolve_url`` is registered for redaction (``contract.redact``). URLs go to
SQLAlchemy with a driver (``sqlalchemy_url``), to libpq without one (``libpq_url``), and to the PostgreSQL client
programs without the password, which then travels in ``PGPASSWORD`` only (``libpq_url_and_password``; see
``schemagate.libpq.client_env``). libpq URI syntax:
https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.parse

from schemagate.contract import names
from schemagate.contract.errors import InvalidInput
from schemagate.contract.redact import register_secret

DEFAULT_URL_ENV = names.ENV_DATABASE_URL
_AUTHORITY_END = re.compile(r"[/?#]")  # RFC 3986 section 3.2: the authority ends at the first '/', '?' or '#'


def resolve_url(url: str | None = None, url_env: str | None = DEFAULT_URL_ENV) -> str:
    """The database URL: ``url`` when given, else the value of the environment variable ``url_env``.

    Raises ``InvalidInput`` naming the variable when neither is set. The password is registered for redaction.
    """
    if url:
        value = url
    else:
        name = url_env or DEFAULT_URL_ENV
        value = os.environ.get(name, "")
        if not value:
            raise InvalidInput(
                f"no database URL: the environment variable {name} is not set (use --database-url-env NAME)"
            )
    value = value.strip()
    where = f"the database URL ({'--database-url' if url else 'environment variable ' + (url_env or DEFAULT_URL_ENV)})"
    for candidate in credential_candidates(value):
        register_secret(candidate)
        register_secret(urllib.parse.unquote(candidate))
    scheme = value.partition("://")[0] if "://" in value else ""
    if not scheme.startswith("postgres"):
        raise InvalidInput(f"unsupported scheme {scheme!r} in {where}: expected postgresql://user:password@host:port/db",
                           field=where)
    problem = credential_problem(value)
    if problem:
        raise InvalidInput(f"{where}: {problem}", field=where)
    return value


def credential_candidates(url: str) -> list[str]:
    """Every string that may be the password of ``url``, whatever its shape: the password as libpq and urllib read
    it (the authority ends at the first ``/``), and as a user meant it when a ``/`` or ``@`` in it was not
    percent-encoded (everything between the first ``:`` after ``user`` and the last ``@``). For redaction only."""
    rest = url.partition("://")[2]
    out: list[str] = []
    netloc = _AUTHORITY_END.split(rest, 1)[0]
    # no '@': no user info, hence no password ("host:5432" is a host and a port)
    for userinfo in (netloc.rpartition("@")[0], netloc.partition("@")[0] if "@" in netloc else "",
                     rest.rpartition("@")[0]):
        user, sep, password = userinfo.partition(":")
        if sep and password and password not in out:
            out.append(password)
    return out


def credential_problem(url: str) -> str | None:
    """Why libpq would misread the user or password of ``url``, or None. libpq's URI parser ends the user info at
    the first ``@`` and the authority at the first ``/`` (libpq-connect, "Connection URIs": reserved characters
    must be percent-encoded), so a password holding an unencoded ``@`` or ``/`` connects as someone else or to
    another host, and the server's error then quotes part of the password. So any second ``@``, or an ``@``
    after the authority (an unencoded ``/``, ``?`` or ``#`` in the password), is refused; an ``@`` meant literally
    elsewhere in the URL must be percent-encoded too. The message never holds the password."""
    rest = url.partition("://")[2]
    netloc = _AUTHORITY_END.split(rest, 1)[0]
    if rest.count("@") > 1 or ("@" in rest and "@" not in netloc):
        return ("the user or password holds an unencoded '@', '/', '?' or '#': percent-encode them (%40, %2F, %3F, "
                "%23), e.g. with urllib.parse.quote(password, safe='')")
    return None


def _scheme(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput("not a database URL (expected postgresql://...)")
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
    """The database name of ``url`` (URL-decoded); ``""`` when it has none."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/")) or ""


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + urllib.parse.quote(name), u.query, u.fragment))
