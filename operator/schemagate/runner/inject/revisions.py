"""Revisions and plan: the database's current revisions read through the application's env.py (its version
table, wherever env.py puts it), and what ``alembic upgrade <target>`` does from there (``plan``, built on
``schemagate.runner.inject.graph``).

``plan_from_catalog`` makes the same plan without running env.py: Alembic's version table has a column
``version_num`` (``alembic.runtime.migration.MigrationContext._version``), so when exactly one table of the
database has such a column and its rows are revisions of the scripts, those rows are what env.py would read.
Such a plan is marked ``source: "catalog"``: the first env.py run that follows (the precheck's shadow upgrade, or
the migration's upgrade, both with ``expect_current``) confirms it, and the caller plans through env.py when it
does not hold. With nothing pending no env.py run follows, so ``plan_without_env`` plans through env.py then."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from schemagate.contract.errors import translate
from schemagate.contract.stepresult import Plan, VersionTable
from schemagate.contract.target import Target
from schemagate.runner.inject.config import (
    isolated_imports,
    load_script,
    make_config,
    session_environment,
)
from schemagate.runner.inject.graph import join_revisions, plan_upgrade, reached


def current_heads(cfg: Config, script: ScriptDirectory, version_table: dict[str, Any] | None = None
                  ) -> tuple[str, ...]:
    """The database's current revision(s), read through the application's own env.py (its version table). When
    ``version_table`` is given, the migration context's version table is recorded in it (``versionTable``,
    ``versionTableSchema``: what env.py passed to ``context.configure``, an unqualified name resolved on env.py's
    own connection, see ``context_version_table``)."""
    captured: dict[str, tuple[str, ...]] = {}

    def fn(rev: Any, context: Any) -> list[Any]:
        captured["heads"] = tuple(context.get_current_heads())
        if version_table is not None:
            vt = context_version_table(context)
            version_table.update(versionTable=vt["name"], versionTableSchema=vt["schema"])
        return []

    with EnvironmentContext(cfg, script, fn=fn, dont_mutate=True):
        script.run_env()
    return captured.get("heads", ())


# The schema an unqualified relation name resolves to on a session (the first schema of its search_path holding
# it: https://www.postgresql.org/docs/current/ddl-schemas.html#DDL-SCHEMAS-PATH), else the schema an unqualified
# CREATE TABLE would use (current_schema(): the first existing schema of the search_path; NULL when there is none).
_RESOLVE_SCHEMA = (
    "SELECT COALESCE((SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident({name}))), "
    "pg_catalog.current_schema())")


def _literal(text: str) -> str:
    """``text`` as a PostgreSQL escape string constant (``E'...'``: backslashes and quotes doubled), the same under
    any ``standard_conforming_strings``."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def context_version_table(context: Any) -> VersionTable:
    """``{"schema", "name"}`` of the version table of Alembic's ``MigrationContext`` (``context.version_table``,
    ``context.version_table_schema``, as env.py configured it). An unqualified name (schema None) resolves on
    env.py's OWN connection (``context.connection``: the ``search_path`` env.py's engine sets, e.g. with
    ``connect_args={"options": "-c search_path=billing"}``, may differ from the role's), so the schema names where
    env.py really reads and writes the table: the schema holding it, else where Alembic would create it
    (``current_schema()``). The query runs on the DB-API cursor, unseen by SQLAlchemy's event listeners (the
    statement capture records the revisions' statements only), and takes no lock. Schema None when env.py runs
    offline, on another dialect, or the session has no schema on its search_path."""
    name, schema = str(context.version_table), context.version_table_schema
    conn = getattr(context, "connection", None)
    if schema is None and conn is not None and conn.dialect.name == "postgresql":
        cur = conn.connection.cursor()  # the DB-API connection (no parameters: any paramstyle works)
        try:
            cur.execute(_RESOLVE_SCHEMA.format(name=_literal(name)))
            row = cur.fetchone()
        finally:
            cur.close()
        schema = row[0] if row else None
    return {"schema": schema, "name": name}


@isolated_imports
def plan(t: Target) -> Plan:
    """What ``alembic upgrade <t.revision>`` does on the database of ``t`` (see ``schemagate.runner.inject.graph``).

    Returns ``{"current": "0002a,0002b"|None (the version rows, sorted, comma-separated), "currentHeads": [ids],
    "target": resolved target (revision ids, comma-separated for several), "pending": [ids in apply order],
    "expected": [version rows after the upgrade, sorted], "heads": [heads of the scripts], "versionTable",
    "versionTableSchema" (from the migration context env.py configures)}``. Env.py runs once. Raises
    ``MultipleHeads``, ``UnknownRevision``, ``InvalidInput`` before any change (see ``plan_upgrade``)."""
    t = t.resolved()
    cfg = make_config(t.project, t.url)
    script = load_script(cfg)
    table: dict[str, Any] = {}
    try:
        with session_environment(t.url, t.url_env):
            cur = current_heads(cfg, script, table)
    except Exception as e:  # the application's env.py may raise anything: translated, re-raised
        raise translate(e) from e
    up = plan_upgrade(script, cur, t.revision)
    return {"current": join_revisions(up.current), "currentHeads": list(up.current), "target": up.resolved_target,
            "pending": list(up.pending), "expected": list(up.expected), "heads": list(up.script_heads),
            "versionTable": str(table.get("versionTable") or "alembic_version"),
            "versionTableSchema": table.get("versionTableSchema"), "source": "env.py"}


# Tables that can be an Alembic version table: a text column named version_num (Alembic creates it as
# ``version_num VARCHAR(32) NOT NULL`` and the primary key; the table name and schema are env.py's choice). Catalogs:
# https://www.postgresql.org/docs/current/catalog-pg-class.html, catalog-pg-attribute.html
_VERSION_TABLES = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND NOT c.relispartition
  AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
              AND NOT a.attisdropped AND a.attname = 'version_num'
              AND a.atttypid IN ('pg_catalog.varchar'::regtype, 'pg_catalog.text'::regtype,
                                 'pg_catalog.bpchar'::regtype))
ORDER BY 1, 2"""
_MAX_VERSION_ROWS = 100  # one row per head: a table with more is not a version table


def _quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier (``quote_ident``: double quotes, inner ones doubled)."""
    return '"' + name.replace('"', '""') + '"'


def version_table_candidates(conn: Any) -> list[tuple[str, str, list[str]]]:
    """Every table of the database that can be an Alembic version table, with its rows:
    ``[(schema, table, [version_num, ...])]``, sorted: a text column ``version_num`` without NULLs, at most 100
    rows (one per head). ``conn``: an open DB-API connection to the database (read
    only; no parameters are bound, so any paramstyle works). Raises the driver's error (e.g. no SELECT privilege)."""
    cur = conn.cursor()
    try:
        cur.execute(_VERSION_TABLES)
        tables = [(str(s), str(t)) for s, t in cur.fetchall()]
        out = []
        for schema, table in tables:
            cur.execute(f"SELECT version_num FROM {_quote_ident(schema)}.{_quote_ident(table)} "  # noqa: S608
                        f"LIMIT {_MAX_VERSION_ROWS + 1}")
            rows = [r[0] for r in cur.fetchall()]
            if len(rows) <= _MAX_VERSION_ROWS and all(r is not None for r in rows):
                out.append((schema, table, sorted(str(r).strip() for r in rows)))
        return out
    finally:
        cur.close()


@isolated_imports
def plan_from_catalog(t: Target, conn: Any) -> Plan | None:
    """The plan of ``plan(t)`` made without running env.py, from the version table found in the catalog (see the
    module docstring), or None when the catalog does not tell: several candidate tables, rows that are not
    revisions of the scripts, or the catalog could not be read. ``conn``: an open DB-API connection to the
    database of ``t``. With no candidate table the database is at base, and ``versionTable`` is Alembic's default
    until env.py says otherwise. Raises what ``plan`` raises for the target and the scripts (``MultipleHeads``,
    ``UnknownRevision``, ``InvalidInput``, ``DowngradeNotAllowed``); the result has ``source: "catalog"``."""
    t = t.resolved()
    try:
        found = version_table_candidates(conn)
    except Exception:  # noqa: BLE001 - the catalog does not tell: env.py reads the version table
        return None
    if len(found) > 1:
        return None
    script = load_script(make_config(t.project, t.url))
    schema, table, rows = found[0] if found else (None, "alembic_version", [])
    known = {r.revision for r in script.walk_revisions()}
    if any(r not in known for r in rows):
        return None  # another project's version table, or a revision the scripts lack: env.py tells
    up = plan_upgrade(script, rows, t.revision)
    return {"current": join_revisions(up.current), "currentHeads": list(up.current), "target": up.resolved_target,
            "pending": list(up.pending), "expected": list(up.expected), "heads": list(up.script_heads),
            "versionTable": table, "versionTableSchema": schema, "source": "catalog"}


def plan_without_env(t: Target, conn: Any) -> Plan:
    """``plan_from_catalog(t, conn)`` when the catalog tells and something is pending, else ``plan(t)`` (one
    env.py run). A catalog plan with nothing pending is not used: no later env.py run would confirm it (no shadow
    upgrade, no migration), and the one table the catalog found may be another Alembic project's with the same
    revision ids while env.py's own table (e.g. on the search_path its engine sets) does not exist yet."""
    p = plan_from_catalog(t, conn)
    return p if p is not None and p["pending"] else plan(t)


def confirm(p: Plan, used: VersionTable | None) -> bool:
    """Whether a ``source: "catalog"`` plan ``p`` holds for the version table env.py's migration context ``used``
    (``{"schema", "name"}``: ``context.version_table_schema``/``version_table``, as ``upgrade`` reports them in
    ``contextVersionTable``) in a run that read the plan's current revision (``expect_current``). When it holds,
    ``p`` takes env.py's names and ``source: "env.py"`` (in place). A plan made through env.py always holds;
    ``used`` None (env.py did not run) confirms nothing."""
    if p.get("source") != "catalog":
        return True
    if used is None:
        return False
    same = used["name"] == p["versionTable"] and used["schema"] in (None, p["versionTableSchema"])
    if p["currentHeads"] and not same:
        return False  # the rows came from another table than the one env.py reads
    p["versionTable"], p["versionTableSchema"], p["source"] = used["name"], used["schema"], "env.py"
    return True


@isolated_imports
def applied_revisions(config_path: str | os.PathLike[str], url: str | None, pending: Sequence[str],
                      heads: Sequence[str]) -> list[str]:
    """The revisions of ``pending`` (apply order kept) that the database now holds: each is one of ``heads`` or
    an ancestor of one (Alembic's revision map; no env.py run). Revisions committed by an attempt that failed
    later count too."""
    script = load_script(make_config(config_path, url))
    return reached(script, pending, heads)
