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

Public API (``target``: the ``contract.target.Target`` with the revision to go down to):
``is_downgrade(target) -> tuple[current, target_ids] | None`` and ``downgrade(target, *, allow=False, max_data_loss=0, backup_dir=None, keep=5,
lock_timeout="5s", statement_timeout=None, progress=None) -> StepResult`` (reason ``Downgraded``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from schemagate.contract import durations
from schemagate.contract.dburl import resolve_url
from schemagate.contract.errors import (
    DowngradeNotAllowed,
    InvalidInput,
    MigrationFailed,
    SchemagateError,
    StepBoundary,
)
from schemagate.contract.stepresult import Outcome, StepResult
from schemagate.contract.target import Target
from schemagate.libpq import connect, one_row
from schemagate.runner import backup as bk
from schemagate.runner.inject.config import isolated_imports, load_script, make_config, session_environment
from schemagate.runner.inject.downgrade import (
    DOWNGRADE_FILE,
    Catalog,
    alembic_downgrade,
    below,
    catalog_from_json,
    catalog_of,
    dotted,
    heads,
    removed,
)
from schemagate.runner.inject.graph import join_revisions
from schemagate.runner.inject.revisions import current_heads

STEP = "downgrade"
MAX_LISTED = 20  # tables/columns at risk listed in a status
REMOVES_BUDGET = 1800  # bytes of JSON for the removed objects in the precheck's termination message (4096 in all)
_CONSTANT_DEFAULT = re.compile(r"^\(?('([^']|'')*'|-?[0-9.]+|true|false)\)?(::[\w\s\[\]\".]+)*$", re.IGNORECASE)


class VerificationFailed(SchemagateError):
    """After the downgrade the database is not where the downgrade should have left it."""

    reason = "VerificationFailed"


def catalog(url: str) -> Catalog:
    """The catalog of the user schemas at ``url`` (``runner.inject.downgrade.CATALOG_SQL``), read with psycopg."""
    with connect(url, application_name="schemagate-downgrade") as conn:
        return catalog_of(lambda sql: conn.execute(sql).fetchall())


def _quote(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def data_at_risk(url: str, gone: Catalog) -> list[dict[str, Any]]:
    """Rows the downgrade would lose, per dropped table and column (see the module docstring)."""
    out: list[dict[str, Any]] = []
    with connect(url, application_name="schemagate-downgrade") as conn:
        for (schema, table) in sorted(gone["tables"]):
            n = one_row(conn.execute(f"select count(*) from {_quote(schema, table)}"))[0]  # noqa: S608
            out.append({"schema": schema, "table": table, "column": None, "rows": int(n),
                        "what": f"downgrade drops table {schema}.{table}: {n} rows"})
        for (schema, table, column), default in sorted(gone["columns"].items()):
            col = _quote(column)
            if default and _CONSTANT_DEFAULT.match(default.strip()):
                cond, how = f"{col} is distinct from ({default})", f"non-default values (default {default})"
            else:
                cond, how = f"{col} is not null", "values"
            n = one_row(conn.execute(f"select count(*) from {_quote(schema, table)} where {cond}"))[0]  # noqa: S608
            out.append({"schema": schema, "table": table, "column": column, "rows": int(n),
                        "what": f"downgrade drops {table}.{column}: {n} rows hold {how}"})
    return out


is_downgrade = below  # (current revisions, target revisions) when the target is below the database, else None


def downgrade(
    t: Target,
    *,
    allow: bool = False,
    max_data_loss: int = 0,
    backup_dir: str | os.PathLike[str] | None = None,
    keep: int = bk.DEFAULT_KEEP,
    lock_timeout: str | None = "5s",
    statement_timeout: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> StepResult:
    """Downgrade ``t``'s database to ``t.revision`` (see the module docstring). ``backup_dir`` None: no backup (the caller's choice).
    Never raises: ``DowngradeNotAllowed``, ``InvalidInput``/``UnknownRevision``, ``DataAtRisk`` (ChecksFailed),
    ``BackupFailed``, ``ShadowUnavailable``, ``MigrationFailed``, ``LockTimeout``, ``VerificationFailed``."""
    say = progress or (lambda s: None)
    target = str(t.revision)
    data: dict[str, Any] = {"targetRevision": t.revision, "maxDataLoss": max_data_loss}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        if max_data_loss < 0:
            raise InvalidInput(f"--max-data-loss: {max_data_loss} must be at least 0", field="--max-data-loss")
        lt = durations.to_postgres(lock_timeout, "--lock-timeout")
        st = durations.to_postgres(statement_timeout, "--statement-timeout")
        t = t.resolved()
        url = t.database_url
        current, targets = _allowed_downgrade(t, allow, data)
        t0 = time.monotonic()
        say(f"shadow: what alembic downgrade {target} removes")
        gone = _removed_in_shadow(t)
        data["removes"] = dotted(gone)
        data["shadowSeconds"] = round(time.monotonic() - t0, 3)
        total = _risk(step, url, gone, target, max_data_loss, "--max-data-loss")
        if total > max_data_loss:
            return step.result
        if backup_dir is not None:
            b = bk.backup(url, None, backup_dir=backup_dir, keep=keep, progress=say)
            data["backup"] = {k: b.data.get(k) for k in ("path", "sha256", "sizeBytes", "format")}
            if not b.ok:
                step.set_result(b)
                return step.result
        say(f"alembic downgrade {target}")
        t1 = time.monotonic()
        alembic_downgrade(t, lt, st)
        data["downgradeSeconds"] = round(time.monotonic() - t1, 3)
        _verify(t, targets, gone, data)
        step.succeed("Downgraded",
                     f"downgraded from {join_revisions(current)} to {join_revisions(targets) or 'base'}; verified: "
                     f"revision is the target, {sum(len(v) for v in gone.values())} removed objects are gone; "
                     f"{total} rows at risk (allowed {max_data_loss})"
                     + (f"; backup {os.path.basename(str(data['backup']['path']))}" if "backup" in data else ""))
    return step.result


def _allowed_downgrade(t: Target, allow: bool, data: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(current revisions, target revisions)`` of a downgrade that may run (recorded in ``data``). Raises
    ``InvalidInput`` when ``target`` is not below the database's revision, ``DowngradeNotAllowed`` unless
    ``allow``; nothing is changed either way."""
    target = t.revision
    found = is_downgrade(t)
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
    return tuple(current), tuple(targets)


def _removed_in_shadow(t: Target) -> Catalog:
    """What the downgrade removes, tried on the precheck's throw-away shadow server (``runner.shadowserver``):
    nothing is created on the real server, and the server and its directory are gone afterwards."""
    from schemagate.runner.shadowserver import ShadowServer

    with ShadowServer() as server:
        shadow = server.restore_schema(t.database_url, version_table=_version_table(t))
        before = catalog(shadow.admin_url)
        alembic_downgrade(t.on(shadow.url))
        return removed(before, catalog(shadow.admin_url))


@isolated_imports
def _version_table(t: Target) -> tuple[str | None, str]:
    """(schema, name) of the version table as the application's env.py configures the migration context."""
    cfg = make_config(t.project, t.database_url)
    info: dict[str, Any] = {}
    with session_environment(t.url, t.url_env):
        current_heads(cfg, load_script(cfg), info)
    return info.get("versionTableSchema"), str(info.get("versionTable") or "alembic_version")


def _verify(t: Target, targets: tuple[str, ...], gone: Catalog, data: dict[str, Any]) -> None:
    """The downgrade's verify: ``t``'s database is at ``targets`` and nothing of ``gone`` is left (into
    ``data``; ``VerificationFailed`` otherwise)."""
    failures = []
    url = t.database_url
    now_heads = heads(t)
    if now_heads != tuple(sorted(targets)):
        failures.append(f"revision is {join_revisions(now_heads) or 'base'}, expected {join_revisions(targets) or 'base'}")
    now = catalog(url)
    for kind, objs in gone.items():
        for key in sorted(objs):
            if key in now[kind]:
                failures.append(f"{kind[:-1]} {'.'.join(key)} is still there")
    data["toRevision"] = join_revisions(now_heads)
    data["verified"] = not failures
    if failures:
        data["failures"] = failures
        raise VerificationFailed("after the downgrade: " + "; ".join(failures[:10]))


def _risk(step: StepBoundary, url: str, gone: Catalog, target: str, max_data_loss: int, option: str) -> int:
    """Count the rows at risk into ``step.data`` (``dataAtRisk``, ``rowsAtRisk``); above ``max_data_loss`` the
    step finishes ChecksFailed/``DataAtRisk`` with a message naming each table/column and its rows. Returns the
    total."""
    risk = data_at_risk(url, gone)
    step.data["dataAtRisk"] = risk
    total = sum(r["rows"] for r in risk)
    step.data["rowsAtRisk"] = total
    if total > max_data_loss:
        lines = "; ".join(r["what"] for r in risk if r["rows"])
        step.finish(Outcome.CHECKS_FAILED, "DataAtRisk",
                    f"the downgrade to {target} would lose {total} rows ({option} {max_data_loss}): {lines}; "
                    "nothing was changed")
    return total


def compact_removes(gone: Catalog, budget: int = REMOVES_BUDGET) -> dict[str, Any]:
    """What the downgrade removes, small enough for a termination message and a status: the constraints and
    indexes of dropped tables go with their table and are not listed; over ``budget`` bytes the longest lists are
    cut (``truncated: {kind: n}``, what verify then cannot check by name)."""
    dropped = set(gone["tables"])
    kept: Catalog = {"tables": gone["tables"], "columns": gone["columns"],
                     "constraints": {k: v for k, v in gone["constraints"].items() if k[:2] not in dropped},
                     "indexes": {k: v for k, v in gone["indexes"].items() if k[:2] not in dropped}}
    out: dict[str, Any] = dict(dotted(kept))
    cut: dict[str, int] = {}
    while len(json.dumps({**out, "truncated": cut} if cut else out)) > budget:
        kind = max(("tables", "columns", "constraints", "indexes"), key=lambda k: len(out[k]))
        if not out[kind]:
            break
        out[kind].pop()
        cut[kind] = cut.get(kind, 0) + 1
    if cut:
        out["truncated"] = cut
    return out


def count_phase(url: str | None, url_env: str | None, workdir: str | os.PathLike[str],
                max_data_loss: int) -> StepResult:
    """The precheck Job's ``count`` container for a downgrade (operator image): reads ``shadow-downgrade.json``
    (what ``alembic downgrade`` removed in the pod's shadow, written by the application's container), counts the
    rows at risk on the real database, and returns the precheck's result: Succeeded (reason ``DowngradePlanned``)
    or ChecksFailed/``DataAtRisk`` above ``max_data_loss`` (``spec.maxDataLoss``). ``data``: ``{direction:
    "downgrade", currentRevision, targetRevision, expectedRevisions, pending: [], versionTable, downgrade:
    {fromRevision, targetRevisions, removes, dataAtRisk, rowsAtRisk, maxDataLoss}}``. Never raises."""
    from pathlib import Path

    data: dict[str, Any] = {"direction": "downgrade", "pending": [], "checks": [], "total": 0}
    with StepBoundary("precheck", data=data) as step:
        url = resolve_url(url, url_env)
        f = Path(workdir) / DOWNGRADE_FILE
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidInput(f"{f} missing or unreadable: the shadow-upgrade container did not finish the "
                               f"downgrade ({e})", field=DOWNGRADE_FILE) from e
        gone = catalog_from_json(doc.get("removes") or {})
        targets = [str(t) for t in doc.get("targetRevisions") or []]
        target = str(doc.get("targetRevision") or "base")
        data.update(currentRevision=doc.get("fromRevision"), targetRevision=target, expectedRevisions=targets)
        if isinstance(doc.get("versionTable"), dict):
            data["versionTable"] = doc["versionTable"]
        down = {"fromRevision": doc.get("fromRevision"), "targetRevisions": targets, "maxDataLoss": max_data_loss,
                "removedCounts": {k: len(v) for k, v in gone.items()}, "removes": compact_removes(gone)}
        data["downgrade"] = down
        inner = StepBoundary("precheck", data={})
        total = _risk(inner, url, gone, target, max_data_loss, "spec.maxDataLoss")
        at_risk = [r for r in inner.data["dataAtRisk"] if r["rows"]]
        down["dataAtRisk"] = [{"table": f"{r['schema']}.{r['table']}", "column": r["column"], "rows": r["rows"]}
                              for r in at_risk[:MAX_LISTED]]
        down["rowsAtRisk"] = total
        if total > max_data_loss:
            step.finish(Outcome.CHECKS_FAILED, "DataAtRisk", inner.result.message)
            return step.result
        n = sum(len(v) for v in gone.values())
        step.succeed("DowngradePlanned",
                     f"downgrade from {doc.get('fromRevision')} to {target} removes {n} objects; {total} rows at "
                     f"risk (spec.maxDataLoss {max_data_loss})")
    return step.result
