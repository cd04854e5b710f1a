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
import urllib.parse

from schemagate.contract import names
from schemagate.contract.errors import InvalidInput
from schemagate.contract.redact import register_secret

DEFAULT_URL_ENV = names.ENV_DATABASE_URL


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
    parsed = urllib.parse.urlsplit(value)
    if not parsed.scheme.startswith("postgres"):
        raise InvalidInput(
            f"unsupported database URL scheme {parsed.scheme!r}: expected postgresql://user:password@host:port/db"
        )
    if parsed.password:
        register_secret(urllib.parse.unquote(parsed.password))
        register_secret(parsed.password)
    return value


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
