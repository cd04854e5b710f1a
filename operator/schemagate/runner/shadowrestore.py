"""Restore the real database's schema into the throw-away shadow server, faithfully (``restore_schema``).

What is read from the real server (read-only: catalog queries and ``pg_dump --schema-only``, which takes
``ACCESS SHARE`` locks only) and reproduced in the shadow:

1. the database: same name, encoding and locale (``CREATE DATABASE ... TEMPLATE template0``);
2. the roles by name (``pg_roles``, NOLOGIN; the application's own role LOGIN and superuser *on the shadow*, so
   the revisions run there as the same ``current_user``: ``"$user"`` in ``search_path`` resolves the same), and
   the settings of ``pg_db_role_setting`` that apply to this database or to the application's role
   (``ALTER DATABASE .. SET``, ``ALTER ROLE .. [IN DATABASE ..] SET``), e.g. ``search_path``;
3. every schema object: ``pg_dump --schema-only --no-owner --no-privileges`` restored with ``pg_restore
   --exit-on-error`` (extensions included: an extension the shadow server lacks fails naming it);
4. INVALID indexes (``pg_dump`` leaves them out): created under the same name and marked invalid (and not ready,
   ``indisready``, when the real one is not: then it is not maintained and a unique one enforces nothing), so a
   revision that creates the same name fails in the shadow exactly as it will on the real database;
5. the rows of the application's Alembic version table, wherever its env.py keeps it (``version_table``: the
   ``(schema, name)`` the migration context reported; schema None means the first match on the role's
   ``search_path``, resolved on the real server).

Every ``pg_*`` program gets its environment from ``schemagate.libpq.client_env`` (the real side inherits the
process's libpq variables, e.g. ``PGPASSWORD`` of the ``host``/``user``/``passwordFrom`` form; the throw-away
shadow side inherits none of them).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemagate.contract.dburl import database_name, with_database
from schemagate.contract.errors import (
    AuthenticationFailed,
    SchemagateError,
    Transient,
    error_text,
    translate,
)
from schemagate.contract.redact import redact
from schemagate.libpq import client_env, connect, pg_bin

if TYPE_CHECKING:
    from schemagate.runner.shadowserver import ShadowDatabase

# libpq's connection environment variables (https://www.postgresql.org/docs/current/libpq-envars.html): none of
# them may reach a client program that connects to the throw-away server
LIBPQ_ENV_VARS = frozenset({
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGREQUIREPEER",
    "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGAPPNAME", "PGSSLMODE", "PGREQUIRESSL", "PGSSLNEGOTIATION",
    "PGSSLCOMPRESSION", "PGSSLCERT", "PGSSLKEY", "PGSSLCERTMODE", "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR",
    "PGSSLSNI", "PGREQUIREAUTH", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION", "PGGSSENCMODE",
    "PGKRBSRVNAME", "PGGSSLIB", "PGGSSDELEGATION", "PGCHANNELBINDING", "PGCONNECT_TIMEOUT", "PGCLIENTENCODING",
    "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS", "PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION",
})

# GUCs whose value is a list PostgreSQL stores already quoted (GUC_LIST_QUOTE): written back verbatim
LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                           "local_preload_libraries", "shared_preload_libraries", "unix_socket_directories"})


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _connect(url: str) -> Any:
    return connect(url)


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _tail(stderr: str, limit: int = 500) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return redact(" | ".join(lines[-3:])[-limit:])


def setting_sql(target: str, config: str) -> str:
    """``ALTER <target> SET name TO value`` for one ``pg_db_role_setting.setconfig`` entry (``name=value``)."""
    name, _, value = config.partition("=")
    rhs = value if name.lower() in LIST_SETTINGS else _lit(value)
    return f"ALTER {target} SET {_q(name)} TO {rhs}"


def read_real(real_url: str, version_table: tuple[str | None, str] | None) -> dict[str, Any]:
    """Everything ``restore_schema`` needs from the real database besides the dump (catalog reads only)."""
    with _connect(real_url) as conn:
        r = conn.execute(
            "SELECT current_database(), current_user, current_setting('server_version_num')::int, "
            "current_setting('server_version'), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype "
            "FROM pg_database d WHERE d.datname = current_database()").fetchone()
        assert r is not None
        info: dict[str, Any] = {"database": r[0], "role": r[1], "versionNum": int(r[2]), "version": r[3],
                                "encoding": r[4], "collate": r[5], "ctype": r[6]}
        info["roles"] = [x[0] for x in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname").fetchall()]
        info["settings"] = [(bool(dbs), bool(role), list(cfg or [])) for dbs, role, cfg in conn.execute(
            "SELECT s.setdatabase <> 0, s.setrole <> 0, s.setconfig FROM pg_db_role_setting s "
            "WHERE (s.setdatabase = 0 OR s.setdatabase = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())) AND (s.setrole = 0 OR s.setrole = "
            "(SELECT oid FROM pg_roles WHERE rolname = current_user)) ORDER BY 1, 2").fetchall()]
        info["invalidIndexes"] = [
            {"schema": s, "name": n, "definition": d, "ready": r} for s, n, d, r in conn.execute(
                "SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid), i.indisready FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog','information_schema') "
                "ORDER BY 1, 2").fetchall()]
        info["versionTable"] = None
        info["versionRows"] = []
        if version_table is not None:
            schema, name = version_table
            if schema:
                row = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                                   "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                                   (schema, name)).fetchone()
            else:  # the first match on the role's search_path, as Alembic's unqualified name resolves
                row = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                                   "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(quote_ident(%s))",
                                   (name,)).fetchone()
            if row is not None:
                info["versionTable"] = {"schema": row[0], "name": row[1]}
                info["versionRows"] = [x[0] for x in conn.execute(
                    f"SELECT version_num FROM {_q(row[0])}.{_q(row[1])}").fetchall()]  # noqa: S608
    return info


def restore_schema(admin_url: str, real_url: str, *, version_table: tuple[str | None, str] | None,
                   dump_dir: str | Path, shadow_version: str | None = None, timeout: float = 1800,
                   archive: str | os.PathLike[str] | None = None,
                   database: str | None = None, password: str | None = None) -> ShadowDatabase:
    """Restore the real database's schema into a new database on the shadow server whose superuser URL is
    ``admin_url`` (see the module docstring). ``dump_dir``: where the schema dump is written (and removed).
    ``archive``: a fresh ``pg_dump`` archive of the real database (the run's backup): its schema is restored
    (``pg_restore --schema-only``), no second ``pg_dump``. ``database``, ``password``: a second shadow's name and
    the application role's password (default: the real name, a new password; a second shadow keeps the first's).
    Raises ``ShadowServerError`` (reason ``ShadowUnavailable``), ``AuthenticationFailed``/``DatabaseUnreachable``
    when the real database cannot be read naming the step that failed (dump, restore with the missing extension,
    a setting, an invalid index)."""
    from schemagate.runner.shadowserver import ShadowDatabase, ShadowServerError, new_password

    t0 = time.monotonic()
    real = read_real(real_url, version_table)
    name, role, password = database or real["database"], real["role"], password or new_password()
    admin = with_database(admin_url, "postgres")
    notes: list[str] = []
    with _connect(admin) as conn:
        bootstrap = _create_roles(conn, real["roles"], role, password)
        opts = f" ENCODING {_lit(real['encoding'])} LC_COLLATE {_lit(real['collate'])} LC_CTYPE {_lit(real['ctype'])}"
        if name != "postgres":
            try:
                conn.execute(f"CREATE DATABASE {_q(name)} OWNER {_q(role)} TEMPLATE template0{opts}")
            except Exception as e:  # noqa: BLE001 - a locale this server lacks: the default locale, noted
                notes.append(f"database created with the shadow's default locale ({error_text(e)})")
                conn.execute(f"CREATE DATABASE {_q(name)} OWNER {_q(role)} TEMPLATE template0")
        for in_db, for_role, configs in real["settings"]:
            target = (f"ROLE {_q(role)} IN DATABASE {_q(name)}" if in_db and for_role else
                      f"ROLE {_q(role)}" if for_role else f"DATABASE {_q(name)}" if in_db else None)
            if target is None:
                continue
            for cfg in configs:
                try:
                    conn.execute(setting_sql(target, cfg))
                except Exception as e:
                    raise ShadowServerError(f"the shadow cannot reproduce the setting {cfg!r} of {target}: "
                                            f"{error_text(e)}") from e
    admin_db = with_database(admin_url, name)
    url = _role_url(admin_db, role, password) if role != bootstrap else admin_db
    if not shadow_version:  # the server's own start reported it (ShadowServer.version): no connection for it
        with _connect(admin_db) as conn:
            shadow_version = str(conn.info.parameter_status("server_version"))
    _dump_restore(real_url, url, Path(dump_dir), shadow_version, timeout, archive=archive)
    ext = _finish_copy(admin_db, real, notes)
    vt = real["versionTable"]
    info = {
        "seconds": round(time.monotonic() - t0, 3), "database": name, "role": role,
        "realServerVersion": real["version"], "realServerVersionNum": real["versionNum"],
        "shadowServerVersion": shadow_version, "settings": [c for _, _, cs in real["settings"] for c in cs],
        "extensions": ext, "invalidIndexes": [f"{i['schema']}.{i['name']}" for i in real["invalidIndexes"]],
        "versionTable": vt, "versionRows": real["versionRows"], "notes": notes}
    return ShadowDatabase(url=url, admin_url=admin_db, name=name, role=role, info=info)


def _create_roles(conn: Any, roles: list[str], role: str, password: str) -> str:
    """On the shadow (``conn``: its superuser): every role of the real server by name (NOLOGIN), the
    application's ``role`` LOGIN SUPERUSER with ``password``; returns the shadow's bootstrap superuser (when it is
    ``role`` already, its own password stays)."""
    present = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    for r in roles:
        if r != role and r not in present:
            conn.execute(f"CREATE ROLE {_q(r)} NOLOGIN")
    bootstrap = str(conn.execute("SELECT current_user").fetchone()[0])
    # one PBKDF2 iteration for the role's password (PostgreSQL 16+; default 4096): the iterations slow down
    # guessing a weak password, and this one is 18 random bytes on a server that lives for one precheck; each of
    # the shadow's connections as the role then saves ~2 ms of hashing on both sides
    conn.execute("SELECT set_config('scram_iterations', '1', false) "
                 "WHERE current_setting('server_version_num')::int >= 160000")
    if role != bootstrap:
        verb = "ALTER" if role in present else "CREATE"
        conn.execute(f"{verb} ROLE {_q(role)} LOGIN SUPERUSER PASSWORD {_lit(password)}")
    return bootstrap


def _finish_copy(admin_db: str, real: dict[str, Any], notes: list[str]) -> list[str]:
    """INVALID indexes under their names and the version table's rows; returns the shadow's extensions."""
    from schemagate.runner.shadowserver import ShadowServerError

    with _connect(admin_db) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        for ix in real["invalidIndexes"]:
            try:
                conn.execute(ix["definition"])
                if superuser:
                    # not ready (a build stopped before its scan): not maintained, a unique one enforces nothing
                    conn.execute("UPDATE pg_index SET indisvalid = false, indisready = %s "
                                 "WHERE indexrelid = %s::regclass",
                                 (ix.get("ready", True), f"{_q(ix['schema'])}.{_q(ix['name'])}"))
                else:
                    notes.append(f"INVALID index {ix['schema']}.{ix['name']} copied as valid (marking it invalid "
                                 f"needs a superuser on the shadow); its name is taken as on the real database")
            except Exception as e:
                raise ShadowServerError(f"the shadow cannot reproduce the INVALID index {ix['schema']}."
                                        f"{ix['name']}: {error_text(e)}") from e
        vt = real["versionTable"]
        if vt is not None:
            qualified = f"{_q(vt['schema'])}.{_q(vt['name'])}"
            conn.execute(f"DELETE FROM {qualified}")  # noqa: S608 - quoted identifiers
            for v in real["versionRows"]:
                conn.execute(f"INSERT INTO {qualified} (version_num) VALUES (%s)", (v,))  # noqa: S608
        return [r[0] for r in conn.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' "
                                           "ORDER BY 1").fetchall()]


def restore_existing(real_url: str, shadow_url: str, *, version_table: tuple[str | None, str] | None,
                     dump_dir: str | Path, timeout: float = 1800) -> dict[str, Any]:
    """The schema, INVALID indexes and version rows into an existing, empty database (an explicit shadow
    database: no roles, database or settings are created). Returns the same ``info`` as ``restore_schema``."""
    t0 = time.monotonic()
    real = read_real(real_url, version_table)
    notes: list[str] = []
    with _connect(shadow_url) as conn:
        shadow_version = str(conn.info.parameter_status("server_version"))
    _dump_restore(real_url, shadow_url, Path(dump_dir), shadow_version, timeout, shadow_inherit=True)
    ext = _finish_copy(shadow_url, real, notes)
    return {"seconds": round(time.monotonic() - t0, 3), "database": database_name(shadow_url),
            "realServerVersion": real["version"], "realServerVersionNum": real["versionNum"],
            "shadowServerVersion": shadow_version, "settings": [], "extensions": ext,
            "invalidIndexes": [f"{i['schema']}.{i['name']}" for i in real["invalidIndexes"]],
            "versionTable": real["versionTable"], "versionRows": real["versionRows"], "notes": notes}


def _role_url(admin_db: str, role: str, password: str) -> str:
    import urllib.parse

    u = urllib.parse.urlsplit(admin_db)
    q = urllib.parse.quote
    host = u.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((u.scheme, f"{q(role, safe='')}:{q(password, safe='')}@{host}", u.path, u.query,
                                    u.fragment))


COMMON_DUMP_OPTIONS = ("--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions")


def schema_dump_command(real_url: str, dump: Path) -> tuple[list[str], dict[str, str]]:
    """``pg_dump --schema-only`` of the real database into ``dump`` (custom format, the exclusions the shadow
    restores with) and its environment: ``(argv, env)``; the password is in ``env`` only. Used as is, and by
    ``ShadowServer`` to take the dump while the server starts (``prefetch_schema``)."""
    real = client_env(real_url)  # inherits this process's libpq settings: PGPASSWORD of the host/user form
    return ([pg_bin("pg_dump"), "--schema-only", "--format=custom", "--no-password", *COMMON_DUMP_OPTIONS,
             f"--file={dump}", f"--dbname={real.conninfo}"], real.env)


def _dump_restore(real_url: str, shadow_url: str, dump_dir: Path, shadow_version: str, timeout: float,
                  shadow_inherit: bool = False, archive: str | os.PathLike[str] | None = None) -> None:
    from schemagate.runner.shadowserver import ShadowServerError

    common = list(COMMON_DUMP_OPTIONS)
    if archive is None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        dump = dump_dir / f"schema-{time.monotonic_ns()}.dump"
        args, real_env = schema_dump_command(real_url, dump)
        p = _run(args, real_env, timeout)
        if p.returncode != 0:
            raise _dump_error(p.stderr, f"pg_dump --schema-only of the real database failed: {_tail(p.stderr)}")
    base = None if shadow_inherit else {k: v for k, v in os.environ.items() if k not in LIBPQ_ENV_VARS}
    target = client_env(shadow_url, base=base)  # our own server: none of the real database's settings
    shadow_dsn, shadow_env = target.conninfo, target.env
    # from a full archive, the same objects as pg_dump --schema-only with the same exclusions
    source = ["--schema-only", *common, str(archive)] if archive is not None else [str(dump)]
    p = _run([pg_bin("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
              f"--dbname={shadow_dsn}", *source], shadow_env, timeout)
    if archive is None:
        dump.unlink(missing_ok=True)
    if p.returncode != 0:
        m = re.search(r'extension "([^"]+)" is not available|could not open extension control file "[^"]*/'
                      r'([^"/]+)\.control"', p.stderr)
        if m:
            ext = m.group(1) or m.group(2)
            raise ShadowServerError(
                f"the database uses the extension {ext}, which the shadow PostgreSQL ({shadow_version}) does not "
                f"have: install it next to the shadow server's binaries, or give an explicit shadow database "
                f"(--shadow-database-url-env / spec.precheck.shadowDatabase)", field="extension")
        raise ShadowServerError(f"restoring the schema into the shadow failed: {_tail(p.stderr)}")


def _dump_error(stderr: str, message: str) -> SchemagateError:
    """The error for a failed ``pg_dump`` of the real database, classified as ``translate`` classifies a driver's
    error (who must act): authentication -> ``AuthenticationFailed``; refused, unreachable, starting up, shutting
    down, the backend terminated (57P01 "terminating connection due to administrator command") ->
    ``DatabaseUnreachable`` (transient: the precheck is run again); a lock timeout -> ``LockTimeout``; anything
    else -> ``ShadowUnavailable``."""
    from schemagate.runner.shadowserver import ShadowServerError

    low = stderr.lower()
    if "password" in low or "authentication" in low:
        return AuthenticationFailed(message, field="database URL")
    kind = translate(RuntimeError(stderr), ShadowServerError)
    if isinstance(kind, Transient):  # DatabaseUnreachable (transient, or permanent for an unknown database), LockTimeout
        return type(kind)(message, outcome=kind.outcome)
    return ShadowServerError(message)
