"""The data-carrying shadow run of the Kubernetes precheck (``data-upgrade``, in the application's image).

When the pending revisions change or read data, ``schemagate precheck --phase data-prepare`` (operator image)
creates a second database on the pod's throw-away server holding the real schema and the rows of the affected
tables, and writes ``workdir/data-queries.json``::

    {"url": shadow URL, "plan": the real database's plan, "steps": [{"sql", "own": [query], "later": [query]}]}

one entry per recorded statement of the shadow run (``contract.sqlkind.classify`` says ``ddl``), its counting
queries ``{"sql", "kind", "parts"?}`` as ``schemagate.analysis.stepwise.data_queries`` made them. ``data_upgrade``
applies the revisions again there (the same plan, ``expect_current``), runs each statement's ``own`` queries right
before it on the migration's own connection (under ``SAVEPOINT`` inside a transaction), and when one counts a row
or fails, the ``later`` queries too, then stops the run (the statement would fail). It writes
``workdir/data-counts.json``::

    {"events": [{"event": "before", "sql", "own": [record], "later"?: [record]} | {"event": "after"} |
                {"event": "error", "error"}], "error"?: str, "seconds": float}

(records ``{"row" | "error", "seconds", "parts"?}``), which ``schemagate precheck --phase count`` judges
(``stepwise.RecordedDataCounter``). Without ``data-queries.json`` (the route is not needed) it does nothing.
Standard library, SQLAlchemy, Alembic and ``schemagate.contract`` only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from schemagate.contract.errors import (
    DatabaseUnreachable,
    InternalError,
    WrongDatabase,
    error_text,
    exception_chain,
    translate,
)
from schemagate.contract.sqlkind import classify, in_transaction, normalized
from schemagate.contract.stepresult import Outcome
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import UnexpectedCurrent, server_identity_of, upgrade
from schemagate.runner.inject.leftovers import ShadowRetry
from schemagate.runner.inject.shadow import not_faithful

QUERIES_FILE = "data-queries.json"
COUNTS_FILE = "data-counts.json"


class _Stop(Exception):  # noqa: N818 - a control-flow signal: the statement is known to fail, nothing after it runs
    pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _run_query(cur: Any, q: dict[str, Any], savepoints: bool) -> dict[str, Any]:
    """One counting query: ``{"row", "seconds"}`` or ``{"error", "seconds"}`` (and its ``parts`` after an
    error, as ``counting.run_counts_cursor`` retries a failing scan check by check)."""
    t0 = time.monotonic()
    try:
        if savepoints:
            cur.execute("SAVEPOINT schemagate_count")
        cur.execute(q["sql"])
        row = cur.fetchone()
        if savepoints:
            cur.execute("RELEASE SAVEPOINT schemagate_count")
        return {"row": list(row) if row is not None else None, "seconds": round(time.monotonic() - t0, 6)}
    except Exception as e:  # noqa: BLE001 - any driver's error is the query's record, the run goes on
        if savepoints:
            cur.execute("ROLLBACK TO SAVEPOINT schemagate_count")
        out: dict[str, Any] = {"error": _first_line(e), "seconds": round(time.monotonic() - t0, 6)}
        if q.get("parts"):
            out["parts"] = [_run_query(cur, p, savepoints) for p in q["parts"]]
        return out


def _violates(q: dict[str, Any], rec: dict[str, Any]) -> bool:
    """Whether a record stops the run: an error, or a count above 0, read as ``counting.fill_query`` reads the
    row (a row it cannot read is an error)."""
    if "parts" in rec:
        return any(_violates(p, r) for p, r in zip(q.get("parts") or [], rec["parts"], strict=False))
    row = rec.get("row")
    if rec.get("error") is not None or row is None:
        return True
    kind = q.get("kind")
    values = list(row) if kind == "scan" else list(row[:1])
    if kind not in ("scan", "unique"):
        values = [0 if v is None else v for v in values]
    try:
        return any(int(v) != 0 for v in values)
    except (TypeError, ValueError):
        return True


class DataRun:
    """The SQLAlchemy hooks of the data run: match each recorded statement, count before it, record."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = steps
        self.position = 0
        self.current = False
        self.events: list[dict[str, Any]] = []

    def _counted(self, cursor: Any, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        dbapi = cursor.connection
        cur = dbapi.cursor()
        try:
            savepoints = in_transaction(dbapi)
            return [_run_query(cur, q, savepoints) for q in queries]
        finally:
            cur.close()

    def before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if executemany or classify(statement) != "ddl":
            return
        event: dict[str, Any] = {"event": "before", "sql": statement}
        self.events.append(event)
        if self.position >= len(self.steps) or normalized(self.steps[self.position]["sql"]) != normalized(statement):
            raise _Stop("another statement than in the shadow run")  # the count phase names the mismatch
        step = self.steps[self.position]
        self.position += 1
        self.current = True
        event["own"] = self._counted(cursor, step["own"])
        if any(_violates(q, r) for q, r in zip(step["own"], event["own"], strict=True)):
            event["later"] = self._counted(cursor, step["later"])
            raise _Stop("the statement fails on the data")

    def after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:
        if not executemany and classify(statement) == "ddl":
            self.events.append({"event": "after"})
            self.current = False

    def again(self) -> None:
        """The run is made again from the statement that failed (``leftovers.ShadowRetry`` dropped the INVALID
        index it failed on): its events are forgotten, so it is reached, and counted, once more."""
        while self.events and self.events[-1]["event"] == "error":
            self.events.pop()
        if self.current and self.events and self.events[-1]["event"] == "before":
            self.events.pop()
            self.position -= 1
        self.current = False

    def error(self, context: Any) -> None:
        if not isinstance(context.original_exception, _Stop):
            self.events.append({"event": "error", "error": _first_line(context.original_exception)})

    def listening(self) -> _Listening:
        return _Listening(self)


class _Listening:
    def __init__(self, run: DataRun) -> None:
        self.run = run
        self.hooks = (("before_cursor_execute", run.before), ("after_cursor_execute", run.after),
                      ("handle_error", run.error))

    def __enter__(self) -> DataRun:
        for name, fn in self.hooks:
            sa.event.listen(sa.engine.Engine, name, fn)
        return self.run

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.hooks:
            sa.event.remove(sa.engine.Engine, name, fn)


def data_upgrade(target: Target, workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Run the pending revisions in the data-carrying shadow ``workdir/data-queries.json`` names, counting before
    each statement (see the module docstring); writes ``workdir/data-counts.json`` and returns it, or None (nothing
    written) when there is no ``data-queries.json``: the route is not needed. Raises ``WrongDatabase`` (nothing
    run) when env.py connects elsewhere than the data-carrying shadow, ``ShadowMismatch`` when env.py reads another
    current revision there, ``DatabaseUnreachable`` when the shadow's session is lost; a revision
    that fails is a result (``error``), not an error."""
    wd = Path(workdir)
    qfile = wd / QUERIES_FILE
    if not qfile.exists():
        return None
    try:
        spec = json.loads(qfile.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InternalError(f"{qfile} is unreadable ({e})", field=QUERIES_FILE) from e
    t0 = time.monotonic()
    run = DataRun(list(spec["steps"]))
    out: dict[str, Any] = {"events": run.events}
    planned = spec.get("plan")
    url = str(spec["url"])
    data_server = server_identity_of(url)  # env.py must connect there: never to the real database
    try:
        retry = ShadowRetry(url)  # a leftover's build fails here too: dropped, run again (migrate)
        with run.listening():
            retry.run(lambda first: upgrade(
                target.resolved().on(url), lock_timeout=None, statement_timeout=None,
                planned=planned if first else None, expect_current=first and planned is not None,
                expect_server=data_server, on_revision=retry.builds.on_revision), before_again=run.again)
    except WrongDatabase:
        raise
    except UnexpectedCurrent as e:
        raise not_faithful(e.current, e.expected, spec.get("versionTable")) from e
    except Exception as e:  # noqa: BLE001 - a failing revision is a result here, not an error
        if not any(isinstance(x, _Stop) for x in exception_chain(e)):
            lost = translate(e)
            if isinstance(lost, DatabaseUnreachable) and lost.outcome == Outcome.TRANSIENT_ERROR:
                raise DatabaseUnreachable(f"the data-carrying throw-away shadow database was lost while the pending "
                                          f"revisions ran in it (nothing was applied to the database; run again): "
                                          f"{lost.message}") from e
            out["error"] = error_text(e)
    out["seconds"] = round(time.monotonic() - t0, 3)
    (wd / COUNTS_FILE).write_text(json.dumps(out, default=str), encoding="utf-8")
    return out

