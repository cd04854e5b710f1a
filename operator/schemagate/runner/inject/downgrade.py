"""The downgrade inside the application's image: is a target below the database, what ``alembic downgrade`` removes
(tried on the shadow), and the downgrade itself.

Shared by the CLI (``schemagate.runner.downgrade``, one process) and the operator's Jobs, where the work is split
between the operator's image (shadow server, counting, backup) and the application's (env.py, downgrade functions):

- the precheck Job's ``shadow-upgrade`` container, given ``--allow-downgrade``, runs :func:`shadow_downgrade` when
  the target is below the database: ``alembic downgrade`` on the pod's shadow (the real schema restored by
  ``--phase prepare``), catalogs before and after, and writes ``workdir/shadow-downgrade.json``
  (``{fromRevision, targetRevision, targetRevisions, versionTable, removes}``) for the ``count`` container, which
  counts the rows at risk on the real database (``schemagate.runner.downgrade.count_phase``);
- the migrate Job of a downgrade runs :func:`downgrade_step` (``python -m schemagate.runner.inject downgrade``):
  the database must still be at the revision the precheck planned from, then ``alembic downgrade <target>`` with
  the migration's ``lock_timeout``/``statement_timeout`` (``PGOPTIONS``).

A catalog (:data:`Catalog`) is ``{"tables": {(schema, table): ""}, "columns": {(schema, table, column): default},
"constraints"|"indexes": {(schema, table, name): definition}}`` of the user schemas, read from pg_class,
pg_attribute, pg_attrdef, pg_constraint and pg_index (:data:`CATALOG_SQL`). Imports only the standard library,
SQLAlchemy, Alembic and ``schemagate.contract`` (it is injected).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from schemagate.contract.errors import InvalidInput, MigrationFailed, StepBoundary, UnknownRevision
from schemagate.contract.stepresult import StepResult
from schemagate.contract.target import Target
from schemagate.runner.inject.config import (
    engine_for,
    isolated_imports,
    load_script,
    make_config,
    session_environment,
)
from schemagate.runner.inject.graph import join_revisions
from schemagate.runner.inject.revisions import current_heads

DOWNGRADE_FILE = "shadow-downgrade.json"
KINDS = ("tables", "columns", "constraints", "indexes")

Catalog = dict[str, dict[tuple[str, ...], str]]

CATALOG_SQL: dict[str, str] = {
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


def catalog_of(fetch: Callable[[str], Iterable[tuple[Any, ...]]]) -> Catalog:
    """The catalog (see the module docstring) from ``fetch(sql) -> rows`` of any driver."""
    out: Catalog = {}
    for kind, sql in CATALOG_SQL.items():
        rows = list(fetch(sql))
        if kind == "tables":
            out[kind] = {(r[0], r[1]): "" for r in rows}
        else:
            out[kind] = {(r[0], r[1], r[2]): r[3] for r in rows}
    return out


def catalog_sa(url: str) -> Catalog:
    """The catalog of the database at ``url``, read through SQLAlchemy (the application's driver)."""
    eng = engine_for(url)
    try:
        with eng.connect() as conn:
            return catalog_of(lambda sql: [tuple(r) for r in conn.execute(sa.text(sql))])
    finally:
        eng.dispose()


def removed(before: Catalog, after: Catalog) -> Catalog:
    """What is in ``before`` and not in ``after``; columns of dropped tables are listed with their table only."""
    gone = {k: {key: v for key, v in before[k].items() if key not in after[k]} for k in before}
    gone["columns"] = {key: v for key, v in gone["columns"].items() if key[:2] not in gone["tables"]}
    return gone


def catalog_to_json(cat: Catalog) -> dict[str, list[list[str]]]:
    """``{kind: [[key..., value], ...]}`` (sorted), the form written to ``shadow-downgrade.json``."""
    return {k: [[*key, v] for key, v in sorted(cat.get(k, {}).items())] for k in KINDS}


def catalog_from_json(doc: Mapping[str, Any], field: str = DOWNGRADE_FILE) -> Catalog:
    """The inverse of :func:`catalog_to_json`. Raises ``InvalidInput`` naming ``field`` on a malformed document."""
    try:
        return {k: {tuple(str(x) for x in item[:-1]): str(item[-1]) for item in doc.get(k) or []} for k in KINDS}
    except (TypeError, IndexError, AttributeError) as e:
        raise InvalidInput(f"{field}: malformed removes ({e})", field=field) from e


def dotted(cat: Catalog) -> dict[str, list[str]]:
    """``{kind: ["schema.table[.name]", ...]}`` for messages and status."""
    return {k: sorted(".".join(key) for key in cat.get(k, {})) for k in KINDS}


@isolated_imports
def below(t: Target) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(current revisions, target revisions)`` when ``t.revision`` is below the database's revision(s) (``base``,
    or an ancestor of every current revision; Alembic's revision map), else None. Raises ``UnknownRevision`` for
    a target the scripts lack."""
    from alembic.script import revision as alembic_revision

    t = t.resolved()
    cfg = make_config(t.project, t.url)
    script = load_script(cfg)
    with session_environment(t.url, t.url_env):
        current = tuple(sorted(current_heads(cfg, script)))
    if not current:
        return None
    text = (t.revision or "head").strip()
    if text == "base":
        return current, ()
    try:
        targets = tuple(sorted(r.revision for r in script.revision_map.get_revisions(text)
                               if r is not None and not isinstance(r, str)))
    except alembic_revision.RevisionError as e:
        raise UnknownRevision(f"unknown target revision {text!r} ({e}); nothing was changed",
                              field="targetRevision") from e
    rmap = script.revision_map
    lower = {r.revision for r in rmap._get_ancestor_nodes(rmap.get_revisions(current)) if not isinstance(r, str)}
    if targets and set(targets) <= lower and not set(targets) <= set(current):
        return current, targets
    return None


@isolated_imports
def alembic_downgrade(t: Target, lock_timeout: str | None = None, statement_timeout: str | None = None) -> None:
    """``alembic downgrade <t.revision>`` on ``t``'s database (URL resolved) through the application's env.py, with
    the timeouts in ``PGOPTIONS``.
    Raises ``MigrationFailed`` naming the statement when a downgrade function fails."""
    from alembic import command

    from schemagate.runner.inject.apply import _failure

    cfg = make_config(t.project, t.database_url)
    try:
        with session_environment(t.url, t.url_env, lock_timeout, statement_timeout):
            command.downgrade(cfg, str(t.revision))
    except Exception as e:  # the application's downgrade functions may raise anything
        raise _failure(e, None, None, known=False) from e


@isolated_imports
def heads(t: Target) -> tuple[str, ...]:
    """The current revisions of ``t``'s database (URL resolved) as the application's env.py reads them (sorted)."""
    cfg = make_config(t.project, t.database_url)
    with session_environment(t.url, t.url_env):
        return tuple(sorted(current_heads(cfg, load_script(cfg))))


def shadow_downgrade(t: Target, workdir: str | os.PathLike[str], found: tuple[tuple[str, ...], tuple[str, ...]]
                     ) -> dict[str, Any]:
    """``alembic downgrade <t.revision>`` on the shadow ``workdir/prepare.json`` names (its version rows copied from
    the real database first), catalogs before and after; writes and returns the ``shadow-downgrade.json``
    document. ``found`` is :func:`below`'s answer for the real database."""
    from schemagate.runner.inject.shadow import shadow_url_from_workdir, sync_version_table

    t = t.resolved()
    real_url = t.database_url
    shadow_url = shadow_url_from_workdir(real_url, workdir)
    if shadow_url == real_url:
        raise InvalidInput(f"--workdir {workdir}: no prepare.json naming a shadow; the downgrade is tried on a "
                           "shadow only (run --phase prepare first)", field="--workdir")
    synced = sync_version_table(t.at("heads"), shadow_url)
    before = catalog_sa(shadow_url)
    alembic_downgrade(t.on(shadow_url))
    gone = removed(before, catalog_sa(shadow_url))
    current, targets = found
    doc = {"fromRevision": join_revisions(current), "targetRevision": join_revisions(targets) or "base",
           "targetRevisions": list(targets), "versionTable": synced.get("versionTable"),
           "removes": catalog_to_json(gone)}
    (Path(workdir) / DOWNGRADE_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return doc


def downgrade_step(t: Target, lock_timeout: str | None, statement_timeout: str | None,
                   expect_from: str | None) -> StepResult:
    """The migrate step of a downgrade (operator): the database must still be at ``expect_from`` (the revision the
    precheck planned from; ``InvalidInput`` otherwise, nothing changed), then ``alembic downgrade <t.revision>``.
    Result reason ``Downgraded``, data ``{fromRevision, toRevision, targetRevision}`` (``toRevision`` ``base``
    when no revision is left). Never raises."""
    with StepBoundary("migrate", default=MigrationFailed,
                      data={"targetRevision": t.revision, "direction": "downgrade"}) as step:
        target = t.revision
        t = t.resolved()
        found = below(t)
        if found is None:
            raise InvalidInput(f"target revision {target!r} is not below the database's revision: nothing to "
                               "downgrade; nothing was changed", field="targetRevision")
        current = join_revisions(found[0])
        if expect_from and current != expect_from:
            raise InvalidInput(f"the database is at {current}, not at {expect_from} as the precheck planned: it "
                               "changed since; nothing was changed (retry the run)", field="fromRevision")
        alembic_downgrade(t, lock_timeout, statement_timeout)
        now = join_revisions(heads(t)) or "base"
        step.data.update(fromRevision=current, toRevision=now)
        step.succeed("Downgraded", f"alembic downgrade {target}: from {current} to {now}")
    return step.result
