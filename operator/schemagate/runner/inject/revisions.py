"""Revisions and plan: the target resolved against the migration scripts, the database's current revision read
through the application's env.py, and the pending revisions in apply order (``plan``)."""

from __future__ import annotations

import os
from typing import Any

from alembic import util as alembic_util
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory

from schemagate.runner.db import (
    DEFAULT_URL_ENV,
    resolve_url,
)
from schemagate.runner.inject.config import (
    InputError,
    MultipleHeadsError,
    RunnerError,
    UnknownRevisionError,
    _reraise_classified,
    isolated_imports,
    load_script,
    make_config,
    session_environment,
)


def resolve_target(script: ScriptDirectory, target: str | None) -> tuple[str, list[str]]:
    heads = list(script.get_heads())
    target = (target or "head").strip()
    if not heads:
        raise InputError("the migration scripts have no revisions")
    if target in ("head", "heads"):
        if len(heads) > 1:
            raise MultipleHeadsError(
                f"the migration scripts have {len(heads)} heads ({', '.join(sorted(heads))}): merge them "
                f"(alembic merge heads) or set the target to one revision; nothing was changed",
                heads=sorted(heads),
            )
        return heads[0], heads
    if target == "base":
        raise InputError("--target base would downgrade; schemagate only upgrades")
    try:
        rev = script.get_revision(target)
    except alembic_util.CommandError as e:
        raise UnknownRevisionError(
            f"unknown target revision {target!r} ({e}); heads: {', '.join(sorted(heads))}; nothing was changed"
        ) from e
    if rev is None:
        raise UnknownRevisionError(f"unknown target revision {target!r}; nothing was changed")
    return rev.revision, heads


def current_heads(cfg: Config, script: ScriptDirectory) -> tuple[str, ...]:
    """The database's current revision(s), read through the application's own env.py (its version table)."""
    captured: dict[str, tuple[str, ...]] = {}

    def fn(rev: Any, context: Any) -> list[Any]:
        captured["heads"] = tuple(context.get_current_heads())
        return []

    with EnvironmentContext(cfg, script, fn=fn, dont_mutate=True):
        script.run_env()
    return captured.get("heads", ())


def _pending(script: ScriptDirectory, target: str, current: str | None) -> list[str]:
    if current == target:
        return []
    if current is not None:
        try:
            script.get_revision(current)
        except alembic_util.CommandError as e:
            raise UnknownRevisionError(
                f"the database is at revision {current!r}, which the migration scripts do not contain "
                f"(an older image, or a revision deleted from the scripts); nothing was changed"
            ) from e
    if current is not None:
        below = {r.revision for r in script.iterate_revisions(current, "base")}
        if target in below:
            raise InputError(
                f"target revision {target!r} is older than the database's revision {current!r}: schemagate only "
                f"upgrades; nothing was changed"
            )
    try:
        revs = list(script.iterate_revisions(target, current, implicit_base=True))
    except Exception as e:  # RangeNotAncestorError and friends
        raise InputError(
            f"target revision {target!r} is not ahead of the database's revision {current!r}: schemagate only "
            f"upgrades; nothing was changed"
        ) from e
    if current is not None and revs and any(r.revision == current for r in revs):
        revs = [r for r in revs if r.revision != current]
    return [r.revision for r in reversed(revs)]


@isolated_imports
def plan(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
) -> dict[str, Any]:
    """``{current, target (resolved id), pending [ids in apply order], heads}`` (see module docstring)."""
    url = resolve_url(url, url_env)
    cfg = make_config(config_path, url)
    script = load_script(cfg)
    target_id, heads = resolve_target(script, target)
    try:
        with session_environment(url, url_env):
            cur = current_heads(cfg, script)
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001
        _reraise_classified(e)
    if len(cur) > 1:
        raise MultipleHeadsError(
            f"the database is at several revisions ({', '.join(cur)}); merge the heads first", heads=list(cur)
        )
    current = cur[0] if cur else None
    return {"current": current, "target": target_id, "pending": _pending(script, target_id, current), "heads": heads}
