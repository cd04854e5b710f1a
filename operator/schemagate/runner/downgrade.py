"""The downgrade: ``alembic downgrade`` to a revision below the database's, only when allowed, after a "data at risk"
precheck and a backup, followed by a verification of the downgraded schema.

In order; nothing is changed on the database before step 4:

1. **Allowed?** ``is_downgrade`` reads the database's revision(s) through the application's env.py; a target that
   is ``base`` or an ancestor of every current revision is a downgrade. Without ``allow`` it is refused
   (``DowngradeNotAllowed``, the same refusal ``alembic upgrade`` planning makes in ``runner/inject/graph.py``).
2. **What the downgrade removes**: the real schema (and its version rows) is copied into a throw-away shadow
   database (``analysis.shadow``: ``pg_dump --schema-only`` / ``pg_restore``), ``alembic downgrade`` runs there,
   and the catalogs before and after are compared: tables, columns, constraints and indexes that disappear. The
   shadow is always dropped.
3. **Data at risk**, counted on the real database: every row of a dropped table; for a dropped column, the rows
   whose value differs from the column's default (``IS DISTINCT FROM``) when the default is a constant
   expression, else the rows holding a non-NULL value. A total above ``max_data_loss`` blocks the downgrade
   (outcome ChecksFailed, reason ``DataAtRisk``; ``data.dataAtRisk`` lists each table/column and its count).
4. **Backup** (``runner.backup.backup``, verified by a full read), unless ``backup_dir`` is None.
5. ``alembic downgrade <target>`` on the real database with the migration's ``lock_timeout``/``statement_timeout``
   (``PGOPTIONS``, as the upgrade).
6. **Verify**: the database's revision(s) are the target's (none for ``base``), and every table, column,
   constraint and index the downgrade removed in the shadow is gone (``VerificationFailed`` otherwise).

Public API: ``is_downgrade(config, target, url=None, url_env=...) -> tuple[current, target_ids] | None`` and
``downgrade(config, target, url=None, url_env=..., *, allow=False, max_data_loss=0, backup_dir=None, keep=5,
lock_timeout="5s", statement_timeout=None, progress=None) -> StepResult`` (reason ``Downgraded``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

from schemagate.contract import durations
from schemagate.contract.dburl import DEFAULT_URL_ENV, resolve_url
from schemagate.contract.errors import (
    DowngradeNotAllowed,
    InvalidInput,
    MigrationFailed,
    SchemagateError,
    StepBoundary,
    UnknownRevision,
)
from schemagate.contract.stepresult import Outcome, StepResult
from schemagate.libpq import connect
from schemagate.runner import backup as bk
from schemagate.runner.inject.config import isolated_imports, load_script, make_config, session_environment
from schemagate.runner.inject.graph import join_revisions
from schemagate.runner.inject.revisions import current_heads

STEP = "downgrade"
_CONSTANT_DEFAULT = re.compile(r"^\(?('([^']|'')*'|-?[0-9.]+|true|false)\)?(::[\w\s\[\]\".]+)*$", re.IGNORECASE)


class VerificationFailed(SchemagateError):
    """After the downgrade the database is not where the downgrade should have left it."""

    reason = "VerificationFailed"


Catalog = dict[str, dict[tuple[str, ...], str]]

_CATALOG_SQL = {
    "tables": """select n.nspname, c.relname, '' from pg_class c join pg_namespace n on n.oid = c.relnamespace
                 where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')
                   and n.nspname !~ '^pg_(toast|temp)'""",
    "columns": """select n.nspname, c.relname, a.attname, coalesce(pg_get_expr(d.adbin, d.adrelid), '')
                  from pg_attribute a join pg_class c on c.oid = a.attrelid
                  join pg_namespace n on n.oid = c.relnamespace
                  left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
                  where c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped
                    and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)'""",
    "constraints": """select n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid) from pg_constraint k
                      join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
                      where n.nspname not in ('pg_catalog', 'information_schema')""",
    "indexes": """select n.nspname, t.relname, c.relname, pg_get_indexdef(c.oid) from pg_index i
                  join pg_class c on c.oid = i.indexrelid join pg_class t on t.oid = i.indrelid
                  join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)'""",
}


def catalog(url: str) -> Catalog:
    """Tables ``(schema, table)``, columns ``(schema, table, column) -> default``, constraints and indexes
    ``(schema, table, name) -> definition`` of the user schemas (pg_class, pg_attribute, pg_attrdef,
    pg_constraint, pg_index)."""
    out: Catalog = {}
    with connect(url, application_name="schemagate-downgrade") as conn:
        for kind, sql in _CATALOG_SQL.items():
            rows = conn.execute(sql).fetchall()
            if kind == "tables":
                out[kind] = {(r[0], r[1]): "" for r in rows}
            else:
                out[kind] = {(r[0], r[1], r[2]): r[3] for r in rows}
    return out


def removed(before: Catalog, after: Catalog) -> Catalog:
    """What is in ``before`` and not in ``after``; columns of dropped tables are listed with their table only."""
    gone = {k: {key: v for key, v in before[k].items() if key not in after[k]} for k in before}
    gone["columns"] = {key: v for key, v in gone["columns"].items() if key[:2] not in gone["tables"]}
    return gone


def _quote(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def data_at_risk(url: str, gone: Catalog) -> list[dict[str, Any]]:
    """Rows the downgrade would lose, per dropped table and column (see the module docstring)."""
    out: list[dict[str, Any]] = []
    with connect(url, application_name="schemagate-downgrade") as conn:
        for (schema, table) in sorted(gone["tables"]):
            n = conn.execute(f"select count(*) from {_quote(schema, table)}").fetchone()[0]  # noqa: S608
            out.append({"schema": schema, "table": table, "column": None, "rows": int(n),
                        "what": f"downgrade drops table {schema}.{table}: {n} rows"})
        for (schema, table, column), default in sorted(gone["columns"].items()):
            col = _quote(column)
            if default and _CONSTANT_DEFAULT.match(default.strip()):
                cond, how = f"{col} is distinct from ({default})", f"non-default values (default {default})"
            else:
                cond, how = f"{col} is not null", "values"
            n = conn.execute(f"select count(*) from {_quote(schema, table)} where {cond}").fetchone()[0]  # noqa: S608
            out.append({"schema": schema, "table": table, "column": column, "rows": int(n),
                        "what": f"downgrade drops {table}.{column}: {n} rows hold {how}"})
    return out


@isolated_imports
def is_downgrade(config_path: str | os.PathLike[str], target: str, url: str | None = None,
                 url_env: str | None = DEFAULT_URL_ENV) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(current revisions, target revisions)`` when ``target`` is below the database's revision(s) (``base``,
    or an ancestor of every current revision), else None. Raises ``UnknownRevision`` for a target the scripts
    lack."""
    from alembic.script import revision as alembic_revision

    url = resolve_url(url, url_env)
    cfg = make_config(config_path, url)
    script = load_script(cfg)
    with session_environment(url, url_env):
        current = tuple(sorted(current_heads(cfg, script)))
    if not current:
        return None
    text = (target or "head").strip()
    if text == "base":
        return current, ()
    try:
        targets = tuple(sorted(r.revision for r in script.revision_map.get_revisions(text)
                               if r is not None and not isinstance(r, str)))
    except alembic_revision.RevisionError as e:
        raise UnknownRevision(f"unknown target revision {text!r} ({e}); nothing was changed",
                              field="targetRevision") from e
    rmap = script.revision_map
    below = {r.revision for r in rmap._get_ancestor_nodes(rmap.get_revisions(current)) if not isinstance(r, str)}
    if targets and set(targets) <= below and not set(targets) <= set(current):
        return current, targets
    return None


@isolated_imports
def alembic_downgrade(config_path: str | os.PathLike[str], target: str, url: str, url_env: str | None,
                      lock_timeout: str | None = None, statement_timeout: str | None = None) -> None:
    """``alembic downgrade <target>`` through the application's env.py, with the timeouts in ``PGOPTIONS``.
    Raises ``MigrationFailed`` naming the statement when a downgrade function fails."""
    from alembic import command

    cfg = make_config(config_path, url)
    try:
        with session_environment(url, url_env, lock_timeout, statement_timeout):
            command.downgrade(cfg, target)
    except Exception as e:  # the application's downgrade functions may raise anything
        from schemagate.runner.inject.apply import _failure

        raise _failure(e, None, None, known=False) from e


def downgrade(
    config_path: str | os.PathLike[str],
    target: str,
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    *,
    allow: bool = False,
    max_data_loss: int = 0,
    backup_dir: str | os.PathLike[str] | None = None,
    keep: int = bk.DEFAULT_KEEP,
    lock_timeout: str | None = "5s",
    statement_timeout: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> StepResult:
    """Downgrade to ``target`` (see the module docstring). ``backup_dir`` None: no backup (the caller's choice).
    Never raises: ``DowngradeNotAllowed``, ``InvalidInput``/``UnknownRevision``, ``DataAtRisk`` (ChecksFailed),
    ``BackupFailed``, ``ShadowUnavailable``, ``MigrationFailed``, ``LockTimeout``, ``VerificationFailed``."""
    say = progress or (lambda s: None)
    data: dict[str, Any] = {"targetRevision": target, "maxDataLoss": max_data_loss}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        if max_data_loss < 0:
            raise InvalidInput(f"--max-data-loss: {max_data_loss} must be at least 0", field="--max-data-loss")
        lt = durations.to_postgres(lock_timeout, "--lock-timeout")
        st = durations.to_postgres(statement_timeout, "--statement-timeout")
        url = resolve_url(url, url_env)
        found = is_downgrade(config_path, target, url, url_env)
        if found is None:
            raise InvalidInput(f"target revision {target!r} is not below the database's revision: not a downgrade "
                               "(use run or migrate); nothing was changed", field="targetRevision")
        current, targets = found
        data.update(fromRevision=join_revisions(current), targetRevisions=list(targets))
        if not allow:
            raise DowngradeNotAllowed(
                f"target revision {target!r} is older than the database's revision(s) {join_revisions(current)}: a "
                "downgrade, which runs only when allowed (--allow-downgrade, spec.allowDowngrade: true); nothing "
                "was changed", field="targetRevision")
        t0 = time.monotonic()
        say(f"shadow: what alembic downgrade {target} removes")
        gone = _removed_in_shadow(config_path, target, url, url_env)
        data["removes"] = {k: sorted(".".join(key) for key in v) for k, v in gone.items()}
        data["shadowSeconds"] = round(time.monotonic() - t0, 3)
        risk = data_at_risk(url, gone)
        data["dataAtRisk"] = risk
        total = sum(r["rows"] for r in risk)
        data["rowsAtRisk"] = total
        if total > max_data_loss:
            lines = "; ".join(r["what"] for r in risk if r["rows"])
            step.finish(Outcome.CHECKS_FAILED, "DataAtRisk",
                        f"the downgrade to {target} would lose {total} rows (--max-data-loss {max_data_loss}): "
                        f"{lines}; nothing was changed")
            return step.result
        if backup_dir is not None:
            b = bk.backup(url, None, backup_dir=backup_dir, keep=keep, progress=say)
            data["backup"] = {k: b.data.get(k) for k in ("path", "sha256", "sizeBytes", "format")}
            if not b.ok:
                step.set_result(b)
                return step.result
        say(f"alembic downgrade {target}")
        t1 = time.monotonic()
        alembic_downgrade(config_path, target, url, url_env, lt, st)
        data["downgradeSeconds"] = round(time.monotonic() - t1, 3)
        _verify(config_path, url, url_env, targets, gone, data)
        step.succeed("Downgraded",
                     f"downgraded from {join_revisions(current)} to {join_revisions(targets) or 'base'}; verified: "
                     f"revision is the target, {sum(len(v) for v in gone.values())} removed objects are gone; "
                     f"{total} rows at risk (allowed {max_data_loss})"
                     + (f"; backup {os.path.basename(str(data['backup']['path']))}" if "backup" in data else ""))
    return step.result


def _removed_in_shadow(config_path: str | os.PathLike[str], target: str, url: str, url_env: str | None) -> Catalog:
    """What the downgrade removes, tried on the precheck's throw-away shadow server (``runner.shadowserver``):
    nothing is created on the real server, and the server and its directory are gone afterwards."""
    from schemagate.runner.shadowserver import ShadowServer

    with ShadowServer() as server:
        shadow = server.restore_schema(url, version_table=_version_table(config_path, url, url_env))
        before = catalog(shadow.admin_url)
        alembic_downgrade(config_path, target, shadow.url, url_env)
        return removed(before, catalog(shadow.admin_url))


@isolated_imports
def _version_table(config_path: str | os.PathLike[str], url: str, url_env: str | None) -> tuple[str | None, str]:
    """(schema, name) of the version table as the application's env.py configures the migration context."""
    cfg = make_config(config_path, url)
    info: dict[str, Any] = {}
    with session_environment(url, url_env):
        current_heads(cfg, load_script(cfg), info)
    return info.get("versionTableSchema"), str(info.get("versionTable") or "alembic_version")


@isolated_imports
def _heads(config_path: str | os.PathLike[str], url: str, url_env: str | None) -> tuple[str, ...]:
    cfg = make_config(config_path, url)
    with session_environment(url, url_env):
        return tuple(sorted(current_heads(cfg, load_script(cfg))))


def _verify(config_path: str | os.PathLike[str], url: str, url_env: str | None, targets: tuple[str, ...],
            gone: Catalog, data: dict[str, Any]) -> None:
    failures = []
    heads = _heads(config_path, url, url_env)
    if heads != tuple(sorted(targets)):
        failures.append(f"revision is {join_revisions(heads) or 'base'}, expected {join_revisions(targets) or 'base'}")
    now = catalog(url)
    for kind, objs in gone.items():
        for key in sorted(objs):
            if key in now[kind]:
                failures.append(f"{kind[:-1]} {'.'.join(key)} is still there")
    data["toRevision"] = join_revisions(heads)
    data["verified"] = not failures
    if failures:
        data["failures"] = failures
        raise VerificationFailed("after the downgrade: " + "; ".join(failures[:10]))
