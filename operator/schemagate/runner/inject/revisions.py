"""Revisions and plan: the database's current revisions read through the application's env.py (its version
table, wherever env.py puts it), and what ``alembic upgrade <target>`` does from there (``plan``, built on
``schemagate.runner.inject.graph``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from schemagate.contract.errors import translate
from schemagate.contract.stepresult import Plan
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
    ``versionTableSchema``: what env.py passed to ``context.configure``)."""
    captured: dict[str, tuple[str, ...]] = {}

    def fn(rev: Any, context: Any) -> list[Any]:
        captured["heads"] = tuple(context.get_current_heads())
        if version_table is not None:
            version_table.update(versionTable=context.version_table, versionTableSchema=context.version_table_schema)
        return []

    with EnvironmentContext(cfg, script, fn=fn, dont_mutate=True):
        script.run_env()
    return captured.get("heads", ())


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
            "versionTableSchema": table.get("versionTableSchema")}


@isolated_imports
def applied_revisions(config_path: str | os.PathLike[str], url: str | None, pending: Sequence[str],
                      heads: Sequence[str]) -> list[str]:
    """The revisions of ``pending`` (apply order kept) that the database now holds: each is one of ``heads`` or
    an ancestor of one (Alembic's revision map; no env.py run). Revisions committed by an attempt that failed
    later count too."""
    script = load_script(make_config(config_path, url))
    return reached(script, pending, heads)
