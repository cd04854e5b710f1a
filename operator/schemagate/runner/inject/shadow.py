"""Shadow: the pending revisions applied to the shadow database, with their SQL rendered and statements
captured (``shadow_upgrade``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import sqlalchemy as sa

from schemagate.contract.dburl import resolve_url, with_database
from schemagate.contract.errors import Actor, InvalidInput, ShadowUnavailable
from schemagate.contract.sqlkind import StatementLog
from schemagate.contract.stepresult import Plan, ShadowUpgradeDoc, UpgradeResult, VersionTable
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import ServerIdentity, UnexpectedCurrent, server_identity_of, upgrade
from schemagate.runner.inject.capture import capture_statements
from schemagate.runner.inject.config import engine_for, isolated_imports
from schemagate.runner.inject.leftovers import ShadowRetry
from schemagate.runner.inject.revisions import plan
from schemagate.runner.inject.snapshots import record_snapshots


class ShadowMismatch(ShadowUnavailable):
    """The shadow does not hold what the real database holds: the application's env.py reads another current
    revision there. Nothing was applied."""

    reason = "ShadowMismatch"
    actor = Actor.SCHEMAGATE


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
    if info.get("shadowUrl"):  # the throw-away server of the Job's pod (written by --phase prepare)
        return resolve_url(str(info["shadowUrl"]), None)
    if info.get("shadowDatabase"):
        return with_database(url, str(info["shadowDatabase"]))
    if info.get("shadowUrlEnv"):
        return resolve_url(None, str(info["shadowUrlEnv"]))
    raise InvalidInput(f"{f} names no shadow database", field=str(f))


class SyncedVersionTable(TypedDict):
    """What ``sync_version_table`` copied: the real database's version table (None: it has none yet), its rows
    (revision ids) and the current revision env.py reads from both."""

    versionTable: VersionTable | None
    rows: list[str]
    current: str | None
    plan: NotRequired[Plan]  # the real database's plan (``mirror=False``)


def not_faithful(shadow_current: str | None, real_current: str | None, vt: Mapping[str, Any] | None) -> ShadowMismatch:
    """The error when the application's env.py reads another current revision from the shadow
    (``shadow_current``) than from the real database (``real_current``); ``vt``: the version table
    ``{"schema", "name"}`` (None: Alembic's default on the search_path). Nothing was applied."""
    vt = vt or {}
    return ShadowMismatch(
        f"the shadow is not faithful: the application's env.py reads revision {shadow_current or 'base'} from "
        f"the shadow but {real_current or 'base'} from the database (version table "
        f"{vt.get('schema') or '(search_path)'}.{vt.get('name') or 'alembic_version'}); nothing was applied")


def version_table_of(p: Mapping[str, Any]) -> VersionTable:
    """``{"schema", "name"}`` of the version table a ``plan()`` reports (from the migration context env.py
    configured: ``versionTableSchema``/``versionTable``)."""
    return {"schema": p.get("versionTableSchema"), "name": str(p.get("versionTable") or "alembic_version")}


def sync_version_table(target: Target, shadow_url: str, *, mirror: bool = True) -> SyncedVersionTable:
    """Copy the rows of the application's Alembic version table from the real database into the shadow, wherever
    the application's env.py keeps it (``plan()``'s ``versionTable``/``versionTableSchema``: read from the migration context, never from a
    second setting), then assert that env.py reads the same current revision from both. Returns
    ``{"versionTable": {"schema", "name"}|None, "rows": [...], "current": id|None}``; raises
    ``ShadowMismatch`` when the shadow reads another revision. ``target``: the real database (URL resolved).
    ``mirror=False``: env.py is not run on the shadow here (the caller's own env.py run there checks it,
    ``upgrade(expect_current=True)``); ``plan`` in the result is the real database's plan."""
    real_url = target.url
    assert real_url is not None
    real = plan(target)
    vt = version_table_of(real)
    out: SyncedVersionTable = {"versionTable": None, "rows": [], "current": real["current"]}
    eng = engine_for(real_url)
    try:
        with eng.connect() as conn:
            q = "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
            if vt.get("schema"):
                row = conn.execute(sa.text(q + "n.nspname = :s AND c.relname = :n"),
                                   {"s": vt["schema"], "n": vt["name"]}).first()
            else:  # the first match on the search_path, as Alembic's unqualified name resolves
                row = conn.execute(sa.text(q + "c.oid = to_regclass(quote_ident(:n))"), {"n": vt["name"]}).first()
            if row is not None:
                prep = eng.dialect.identifier_preparer
                qualified = f"{prep.quote(row[0])}.{prep.quote(row[1])}"
                out["versionTable"] = {"schema": row[0], "name": row[1]}
                out["rows"] = [r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {qualified}"))]  # noqa: S608
    finally:
        eng.dispose()
    if out["versionTable"] is not None:
        eng = engine_for(shadow_url)
        try:
            with eng.begin() as conn:
                conn.execute(sa.text(f"DELETE FROM {qualified}"))  # noqa: S608 - quoted identifiers
                for v in out["rows"]:
                    conn.execute(sa.text(f"INSERT INTO {qualified} (version_num) VALUES (:v)"), {"v": v})  # noqa: S608
        finally:
            eng.dispose()
    out["plan"] = real
    if not mirror:
        return out
    mirror_plan = plan(target.on(shadow_url))
    if mirror_plan["current"] != real["current"]:
        raise not_faithful(mirror_plan["current"], real["current"], vt)
    return out


def _upgrade_shadow(target: Target, timeouts: tuple[str | None, str | None], synced: SyncedVersionTable | None,
                    log: StatementLog, state: dict[str, Any], shadow_server: ServerIdentity) -> ShadowUpgradeDoc:
    """The upgrade of the shadow ``target`` on the real database's plan (``synced``); a build that fails on its own
    INVALID leftover is dropped and run again, as migrate does (``leftovers.ShadowRetry``; ``leftovers``)."""
    retry = ShadowRetry(str(target.url))

    def on_revision(rev: str) -> None:
        state["revision"] = rev
        log.on_revision(rev)
        retry.builds.on_revision(rev)

    def attempt(first: bool) -> UpgradeResult:
        return upgrade(target, *timeouts, on_revision=on_revision,
                       planned=synced.get("plan") if first and synced is not None else None,
                       expect_current=first and synced is not None, expect_server=shadow_server)

    def again() -> None:
        state["revision"] = None  # the snapshots number the statements of the revision run again from 1

    out: ShadowUpgradeDoc = {**retry.run(attempt, log, again)}
    if retry.dropped:
        out["leftovers"] = retry.found()
    return out


@isolated_imports
def shadow_upgrade(
    target: Target,
    workdir: str | os.PathLike[str] | None = None,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
) -> ShadowUpgradeDoc:
    """Apply the pending revisions to the shadow database (named by ``workdir/prepare.json`` when present, else
    ``target``'s database itself; its version rows are first copied from the real database, see ``sync_version_table``),
    capturing the statements executed (what the lint reads: nothing is rendered offline). env.py runs twice: the
    plan on the real database and the upgrade of the shadow, which checks first that it reads the same current
    revision (``ShadowMismatch``). Writes
    ``workdir/shadow-upgrade.json`` (``{fromRevision, toRevision, targetRevision,
    pending, applied, sqlError?, statements}``) when ``workdir`` is given."""
    target = target.resolved()
    assert target.url is not None
    url = shadow_url_from_workdir(target.url, workdir)
    synced = sync_version_table(target, url, mirror=False) if url != target.url else None
    state: dict[str, Any] = {"revision": None}  # the running revision, for the snapshots
    vt = synced["versionTable"] if synced is not None else None
    version_table = vt["name"] if vt is not None else None

    shadow_server = server_identity_of(url)  # env.py must connect there: never to the real database
    with capture_statements(StatementLog(version_table=version_table)) as log, \
            record_snapshots(url, workdir, state):
        try:
            out = _upgrade_shadow(target.on(url), (lock_timeout, statement_timeout), synced, log, state,
                                  shadow_server)
        except UnexpectedCurrent as e:
            raise not_faithful(e.current, e.expected, synced["versionTable"] if synced else None) from e
    out["statements"] = log.statements
    if log.dropped:
        out["statementsDropped"] = log.dropped
    if synced is not None:
        out["versionTable"] = synced["versionTable"]
        if "plan" in synced:
            out["plan"] = synced["plan"]  # the data-carrying shadow runs the same plan (runner.inject.datarun)
    if workdir is not None:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "shadow-upgrade.json").write_text(
            json.dumps({k: v for k, v in out.items() if k != "sql"}, indent=2), encoding="utf-8"
        )
    return out
