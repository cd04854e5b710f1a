"""Catalog snapshots around each statement of the shadow run, for the Kubernetes phases.

``schemagate precheck --phase prepare`` (operator image) writes ``workdir/snapshot-queries.json``:
``{"version": server_version_num, "queries": {name: sql}}`` (``schemagate.analysis.catalog.id_queries``, plain
SQL without parameters). While ``shadow-upgrade`` applies the pending revisions in the application's image, this
module runs those queries once before the first revision and again after every statement that is not DML
(``contract.sqlkind.classify`` says ``ddl``), on the migration's own connection (so it sees the statement's
effect inside its transaction), and writes ``workdir/snapshots.json``::

    {"version": n, "start": {name: rows}, "steps": [{"revision", "ordinal", "sql", "rows": {name: rows}}]}

The count phase rebuilds the statement-by-statement checks from it (``schemagate.analysis.stepwise.replay``).
Standard library and SQLAlchemy only (this runs in the application's image).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from schemagate.contract.dburl import sqlalchemy_url
from schemagate.contract.sqlkind import classify

QUERIES_FILE = "snapshot-queries.json"
SNAPSHOTS_FILE = "snapshots.json"


def _rows(cursor: Any, queries: dict[str, str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, sql in queries.items():
        cursor.execute(sql)
        out[name] = [list(r) for r in cursor.fetchall()]
    return out


@contextlib.contextmanager
def record_snapshots(url: str, workdir: str | os.PathLike[str] | None, state: dict[str, Any]) -> Iterator[dict[str, Any] | None]:
    """Record the snapshots while the block applies the revisions (``state["revision"]``: the running
    revision); a no-op (yields None) without ``workdir/snapshot-queries.json``. Writes ``snapshots.json`` when
    the block ends without an error."""
    qfile = Path(workdir) / QUERIES_FILE if workdir is not None else None
    if qfile is None or not qfile.exists():
        yield None
        return
    spec = json.loads(qfile.read_text(encoding="utf-8"))
    queries: dict[str, str] = dict(spec["queries"])
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cur = raw.cursor()
            try:
                start = _rows(cur, queries)
            finally:
                cur.close()
            conn.rollback()
    finally:
        engine.dispose()
    recorded: dict[str, Any] = {"version": spec["version"], "start": start, "steps": []}
    position: dict[str, Any] = {"revision": None, "ordinal": 0}

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        kind = classify(statement)
        if state.get("revision") != position["revision"]:
            position.update(revision=state.get("revision"), ordinal=0)
        if kind == "other":
            return
        position["ordinal"] += 1
        if kind != "ddl" or executemany:
            return
        cur = cursor.connection.cursor()
        try:
            rows = _rows(cur, queries)
        finally:
            cur.close()
        recorded["steps"].append({"revision": state.get("revision"), "ordinal": position["ordinal"],
                                  "sql": statement, "rows": rows})

    sa.event.listen(sa.engine.Engine, "after_cursor_execute", after)
    try:
        yield recorded
    finally:
        sa.event.remove(sa.engine.Engine, "after_cursor_execute", after)
    (Path(workdir) / SNAPSHOTS_FILE).write_text(json.dumps(recorded), encoding="utf-8")  # type: ignore[arg-type]
