"""Shadow: the pending revisions applied to the shadow database, with their SQL rendered and statements
captured (``shadow_upgrade``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from schemagate.contract.dburl import DEFAULT_URL_ENV, resolve_url, with_database
from schemagate.contract.errors import InvalidInput
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.capture import capture_statements
from schemagate.runner.inject.config import isolated_imports
from schemagate.runner.inject.snapshots import record_snapshots


def shadow_url_from_workdir(url: str, workdir: str | os.PathLike[str] | None) -> str:
    """The shadow database named by ``workdir/prepare.json`` (written by ``schemagate precheck --phase prepare``):
    ``shadowDatabase`` on the server of ``url``, or the URL in the variable ``shadowUrlEnv``; else ``url``."""
    if workdir is None:
        return url
    f = Path(workdir) / "prepare.json"
    if not f.exists():
        return url
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InvalidInput(f"--workdir: {f} is not JSON ({e})", field=str(f)) from e
    if info.get("shadowDatabase"):
        return with_database(url, str(info["shadowDatabase"]))
    if info.get("shadowUrlEnv"):
        return resolve_url(None, str(info["shadowUrlEnv"]))
    raise InvalidInput(f"{f} names no shadow database", field=str(f))


@isolated_imports
def shadow_upgrade(
    config_path: str | os.PathLike[str],
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = DEFAULT_URL_ENV,
    workdir: str | os.PathLike[str] | None = None,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
) -> dict[str, Any]:
    """Apply the pending revisions to the shadow database (named by ``workdir/prepare.json`` when present, else
    ``url`` itself), rendering their SQL first and capturing the statements executed. Writes
    ``workdir/pending.sql`` and ``workdir/shadow-upgrade.json`` (``{fromRevision, toRevision, targetRevision,
    pending, applied, sqlError?, statements}``) when ``workdir`` is given."""
    url = shadow_url_from_workdir(resolve_url(url, url_env), workdir)
    state: dict[str, Any] = {"revision": None}  # the running revision, for the snapshots

    def on_revision(rev: str) -> None:
        state["revision"] = rev
        log.on_revision(rev)

    with capture_statements() as log, record_snapshots(url, workdir, state):
        out = upgrade(config_path, target, url, url_env, lock_timeout, statement_timeout, render_sql_text=True,
                      on_revision=on_revision)
    out["statements"] = log.statements
    if log.dropped:
        out["statementsDropped"] = log.dropped
    if workdir is not None:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "pending.sql").write_text(out.get("sql") or "", encoding="utf-8")
        (wd / "shadow-upgrade.json").write_text(
            json.dumps({k: v for k, v in out.items() if k != "sql"}, indent=2), encoding="utf-8"
        )
    return out
