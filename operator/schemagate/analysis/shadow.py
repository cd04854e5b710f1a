"""The shadow database: a throw-away schema-only copy of the real database, to which the pending revisions are
applied so that the catalog diff shows what they add.

- :func:`shadow_name` derives ``<db>_sgshadow_<unix time hex><random>`` (at most 63 bytes); the time lets
  :func:`drop_stale_shadows` remove copies left behind by a killed Job.
- :func:`create_shadow` needs ``CREATEDB`` (or superuser) on the real server; without it
  :class:`~schemagate.contract.errors.InvalidInput` says so and points to an explicit shadow URL.
- :func:`copy_schema` runs ``pg_dump --schema-only`` of the real database plus the *data* of the Alembic version
  table(s) (so Alembic knows the current revision) and restores both into the shadow with ``pg_restore``.
- :func:`drop_shadow` drops it (``WITH (FORCE)``); :func:`wipe_database` empties an explicit shadow database.

Connection strings are libpq URLs or key/value strings *with* the password for psycopg; the client programs get
the password through ``PGPASSWORD`` only, never on a command line.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemagate.analysis.counting import qualified, quote_ident, quote_literal
from schemagate.contract.errors import InvalidInput, ShadowUnavailable
from schemagate.libpq import connect, password_env

SHADOW_MARK = "_sgshadow_"
MAX_IDENT = 63


class ShadowError(ShadowUnavailable):
    """The shadow database could not be copied into (pg_dump/pg_restore failed)."""


def shadow_name(dbname: str, now: float | None = None) -> str:
    stamp = f"{int(now if now is not None else time.time()):x}"
    suffix = SHADOW_MARK + stamp + secrets.token_hex(3)
    base = re.sub(r"[^a-z0-9_]", "_", dbname.lower()) or "db"
    room = MAX_IDENT - len(suffix)
    return base[:room] + suffix


def shadow_age_seconds(name: str, now: float | None = None) -> float | None:
    m = re.search(re.escape(SHADOW_MARK) + r"([0-9a-f]{8,})([0-9a-f]{6})$", name)
    if not m:
        return None
    return (now if now is not None else time.time()) - int(m.group(1), 16)


def _connect(conninfo: str) -> Any:
    return connect(conninfo)


def can_create_databases(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
    return bool(row and row[0])


def create_shadow(real_conninfo: str, name: str) -> None:
    """``CREATE DATABASE name`` from template0 with the real database's encoding and locale."""
    with _connect(real_conninfo) as conn:
        if not can_create_databases(conn):
            raise InvalidInput(
                "the precheck needs a throw-away shadow database, but the database role may not create databases: "
                "grant it CREATEDB (ALTER ROLE ... CREATEDB) or give an explicit shadow database URL",
                field="spec.precheck (database role without CREATEDB)",
            )
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version_num')::int")
            version = cur.fetchone()[0]
            locale_cols = ", datlocprovider" if version >= 150000 else ", 'c'"
            locale_cols += ", datlocale" if version >= 170000 else (", daticulocale" if version >= 150000
                                                                     else ", NULL")
            q = "SELECT pg_encoding_to_char(encoding), datcollate, datctype" + locale_cols  # noqa: S608
            cur.execute(q + " FROM pg_database WHERE datname = current_database()")
            enc, collate, ctype, provider, loc = cur.fetchone()
            opts = f" ENCODING {quote_literal(enc)} LC_COLLATE {quote_literal(collate)} LC_CTYPE {quote_literal(ctype)}"
            if provider == "i" and loc:
                opts += f" LOCALE_PROVIDER icu ICU_LOCALE {quote_literal(loc)}"
            elif provider == "b" and loc:
                opts += f" LOCALE_PROVIDER builtin BUILTIN_LOCALE {quote_literal(loc)}"
            try:
                cur.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0{opts}")
            except Exception:  # noqa: BLE001 - a locale this server lacks: the server's defaults instead
                cur.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0")


def drop_shadow(admin_conninfo: str, name: str) -> None:
    """Drop the shadow database even when something is still connected to it."""
    if SHADOW_MARK not in name:
        raise ValueError(f"refusing to drop {name!r}: not a schemagate shadow database")
    with _connect(admin_conninfo) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        if cur.fetchone()[0] >= 130000:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        else:  # pragma: no cover - PostgreSQL < 13
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")


def drop_stale_shadows(admin_conninfo: str, dbname: str, older_than_seconds: float = 6 * 3600) -> list[str]:
    """Drop shadows of ``dbname`` older than the given age (left behind when a Job was killed)."""
    prefix = shadow_name(dbname).rsplit(SHADOW_MARK, 1)[0] + SHADOW_MARK
    dropped = []
    with _connect(admin_conninfo) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
        names = [r[0] for r in cur.fetchall()]
    for n in names:
        age = shadow_age_seconds(n)
        if age is not None and age > older_than_seconds:
            drop_shadow(admin_conninfo, n)
            dropped.append(n)
    return dropped


def user_table_count(conninfo: str) -> int:
    with _connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p','v','m','S') AND n.nspname NOT IN ('pg_catalog','information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%'"
        )
        return int(cur.fetchone()[0])


def wipe_database(conninfo: str) -> None:
    """Empty an explicit (user-provided) shadow database: drop every non-system schema, recreate ``public``."""
    with _connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema','pg_toast') "
            "AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
        )
        for (nsp,) in cur.fetchall():
            cur.execute(f"DROP SCHEMA {quote_ident(nsp)} CASCADE")
        cur.execute("CREATE SCHEMA IF NOT EXISTS public")


def split_password(conninfo: str) -> tuple[str, str | None]:
    """(conninfo without the password, the password) for the client programs."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None}), (
        str(password) if password is not None else None)


def version_tables(conninfo: str, names: Sequence[str] = ("alembic_version",)) -> list[tuple[str, str]]:
    """(schema, table) of every Alembic version table in the database."""
    with _connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p') AND c.relname = ANY(%s) "
            "AND n.nspname NOT IN ('pg_catalog','information_schema')",
            (list(names),),
        )
        return [(r[0], r[1]) for r in cur.fetchall()]


def _run(args: list[str], password: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=password_env(password), capture_output=True, text=True, timeout=timeout,
                          check=False)


def copy_schema(
    real_conninfo: str,
    shadow_conninfo: str,
    *,
    pg_dump: str,
    pg_restore: str,
    workdir: str | os.PathLike[str],
    version_table_names: Sequence[str] = ("alembic_version",),
    timeout: float = 1800,
) -> dict[str, Any]:
    """Schema-only copy of the real database (plus the Alembic version table's rows) into the shadow."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    real_dsn, real_pw = split_password(real_conninfo)
    shadow_dsn, shadow_pw = split_password(shadow_conninfo)
    schema_file = work / "schema.dump"
    common = ["--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions"]
    t0 = time.monotonic()
    p = _run([pg_dump, "--schema-only", "--format=custom", *common, f"--file={schema_file}", f"--dbname={real_dsn}"],
             real_pw, timeout)
    if p.returncode != 0:
        raise ShadowError(f"pg_dump --schema-only failed: {_tail(p.stderr)}")
    vts = version_tables(real_conninfo, version_table_names)
    data_file = work / "versions.dump"
    if vts:
        args = [pg_dump, "--data-only", "--format=custom", "--no-owner", "--no-privileges", f"--file={data_file}"]
        args += [f"--table={qualified(s, t)}" for s, t in vts]
        p = _run([*args, f"--dbname={real_dsn}"], real_pw, timeout)
        if p.returncode != 0:
            raise ShadowError(f"pg_dump of the Alembic version table failed: {_tail(p.stderr)}")
    restore = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={shadow_dsn}"]
    p = _run([*restore, str(schema_file)], shadow_pw, timeout)
    if p.returncode != 0:
        raise ShadowError(f"restoring the schema into the shadow database failed: {_tail(p.stderr)}")
    if vts:
        p = _run([*restore, "--data-only", str(data_file)], shadow_pw, timeout)
        if p.returncode != 0:
            raise ShadowError(f"restoring the Alembic version table failed: {_tail(p.stderr)}")
    for f in (schema_file, data_file):
        f.unlink(missing_ok=True)
    return {"seconds": round(time.monotonic() - t0, 3), "versionTables": [f"{s}.{t}" for s, t in vts]}


def _tail(stderr: str, limit: int = 400) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    text = " | ".join(lines[-3:])
    return text[-limit:]
