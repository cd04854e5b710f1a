"""The rehearsal's part that runs in the application's image: the pending revisions applied to the restored copy
(the scratch database) with the lock report, and the user's smoke test run against that copy.

- ``upgrade_copy``: ``alembic upgrade <target>`` on the copy through the application's env.py, with the same
  ``lock_timeout``/``statement_timeout`` as the real migration (``apply.upgrade``), per revision its duration (from
  its start to the next one's), ``rowsChanged`` and ``strongestLock``, and per statement the lock report
  (``lockreport.StatementLocks``). A failure is recorded (``failedRevision``, ``failedStatement``, ``error``),
  never raised.
- ``rehearse_upgrade``: the operator's ``rehearse-upgrade`` container: ``upgrade_copy`` on
  ``with_database(URL, scratch)`` (``URL``: the database's, or ``scratch_url_env``'s for a separate server),
  written to ``workdir/rehearse-upgrade.json``; a failed revision is ``RehearsalFailed`` (ChecksFailed, exit 3), so
  the pod stops there and the Job's result names the revision and statement.
- ``exec_with_scratch_url``: the ``with-rehearsal-url`` wrapper of ``spec.rehearsal.job``: replaces the database
  URL in the environment by the copy's and ``exec``s the user's command (its exit code is the container's).

Public API: ``upgrade_copy``, ``rehearse_upgrade``, ``lock_summary(data) -> str``, ``scratch_url(url, name)``,
``exec_with_scratch_url(argv, url_env, scratch, scratch_url_env=None)``, ``UPGRADE_FILE``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from schemagate.contract.dburl import DEFAULT_URL_ENV, resolve_url, with_database
from schemagate.contract.errors import InvalidInput, MigrationFailed, StepBoundary, translate
from schemagate.contract.stepresult import Outcome, StepResult
from schemagate.contract.target import Target
from schemagate.runner.inject.apply import upgrade
from schemagate.runner.inject.lockreport import StatementLocks, describe, strongest

STEP = "rehearse"
UPGRADE_FILE = "rehearse-upgrade.json"


def scratch_url(url: str, name: str) -> str:
    """The URL of the scratch database ``name`` on ``url``'s server (same credentials and options)."""
    return with_database(url, name)


def revision_summary(records: list[dict[str, Any]], revision: str) -> dict[str, Any]:
    """``rowsChanged`` (sum of the revision's data-changing statements' row counts) and ``strongestLock``
    (``{table, mode, heldSeconds, statement}`` of the revision's strongest, then longest, lock, or None)."""
    mine = [r for r in records if r["revision"] == revision]
    top = strongest(mine)
    lock = {**top["lock"], "statement": top["statement"]} if top else None
    return {"rowsChanged": sum(int(r.get("rows") or 0) for r in mine), "strongestLock": lock}


def lock_summary(data: dict[str, Any]) -> str:
    """Per revision: "0002: ACCESS EXCLUSIVE on menu_items for 4.7 ms, 0 rows changed" (joined by "; ")."""
    return "; ".join(f"{r['revision']}: {describe(r.get('strongestLock'))}, {r.get('rowsChanged', 0)} rows changed"
                     for r in data.get("revisions") or [])


def upgrade_copy(copy: Target, lock_timeout: str | None, statement_timeout: str | None, data: dict[str, Any],
                 say: Callable[[str], None]) -> None:
    """``alembic upgrade`` on the copy (``copy``: the project and target revision on the copy's URL), recording durations and the lock report in ``data`` (``revisions``,
    ``statements``, ``fromRevision``, ``toRevision``); a failure is recorded (``failedRevision``,
    ``failedStatement``, ``error``, ``errorReason``), not raised."""
    starts: list[tuple[str, float]] = []
    report = StatementLocks(copy.database_url)

    def started(rev: str) -> None:
        say(f"rehearsing revision {rev}")
        report.revision = rev
        starts.append((rev, time.monotonic()))

    def durations(end: float, failed: str | None) -> list[dict[str, Any]]:
        out = []
        for i, (rev, t) in enumerate(starts):
            stop = starts[i + 1][1] if i + 1 < len(starts) else end
            out.append({"revision": rev, "seconds": round(stop - t, 3), "succeeded": rev != failed,
                        **revision_summary(report.records, rev)})
        return out

    try:
        with report.watch():
            r = upgrade(copy, lock_timeout, statement_timeout, on_revision=started)
    except Exception as e:  # noqa: BLE001 - the application's revisions may raise anything: the rehearsal's finding
        err = translate(e, MigrationFailed)
        failed = getattr(err, "revision", None)
        data["statements"] = report.records
        data["revisions"] = durations(time.monotonic(), failed)
        data.update(failedRevision=failed, failedStatement=getattr(err, "statement", None), error=err.message,
                    errorReason=err.reason)
        return
    data["statements"] = report.records
    data["revisions"] = durations(time.monotonic(), None)
    data["fromRevision"], data["toRevision"] = r.get("fromRevision"), r.get("toRevision")


def failed_message(data: dict[str, Any], scratch: str, dropped: str) -> str:
    """The ``RehearsalFailed`` message of a failed upgrade on the copy (names the revision and statement)."""
    return (f"the rehearsal on a restored copy failed: {data['error']}; the real database was not touched, the "
            f"copy {scratch} {dropped}")


def rehearse_upgrade(t: Target, scratch: str, *, scratch_url_env: str | None = None,
                     lock_timeout: str | None = "5s", statement_timeout: str | None = None,
                     workdir: str | os.PathLike[str] | None = None,
                     say: Callable[[str], None] | None = None) -> StepResult:
    """The ``rehearse-upgrade`` container (see the module docstring) for ``t`` (the real database: its server
    holds the scratch copy unless ``scratch_url_env`` names another). Never raises."""
    data: dict[str, Any] = {"targetRevision": t.revision or "head", "scratchDatabase": scratch}
    with StepBoundary(STEP, default=MigrationFailed, data=data) as step:
        if not scratch:
            raise InvalidInput("--scratch-database is required", field="--scratch-database")
        server = resolve_url(None, scratch_url_env) if scratch_url_env else resolve_url(t.url, t.url_env)
        copy = Target(t.config, t.revision or "head", scratch_url(server, scratch), t.url_env or DEFAULT_URL_ENV)
        upgrade_copy(copy, lock_timeout, statement_timeout, data, say or (lambda s: None))
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            (Path(workdir) / UPGRADE_FILE).write_text(json.dumps(data), encoding="utf-8")
        if "error" in data:
            step.finish(Outcome.CHECKS_FAILED, "RehearsalFailed",
                        failed_message(data, scratch, "is dropped by the rehearse Job's scratch-guard"))
        else:
            step.succeed("RehearsalUpgraded", f"the pending revisions ran on the copy {scratch}: {lock_summary(data)}")
    return step.result


def exec_with_scratch_url(argv: Sequence[str], url_env: str, scratch: str,
                          scratch_url_env: str | None = None) -> None:
    """Replace this process by ``argv`` with ``url_env`` (and ``PGDATABASE``) pointing at the copy ``scratch``
    (on ``scratch_url_env``'s server when given); the real URL is removed from its environment. Raises
    ``InvalidInput`` without a command or a URL."""
    if not argv:
        raise InvalidInput("spec.rehearsal.job.command is empty", field="spec.rehearsal.job.command")
    server = resolve_url(None, scratch_url_env) if scratch_url_env else resolve_url(None, url_env)
    env = dict(os.environ)
    env[url_env] = scratch_url(server, scratch)
    env["PGDATABASE"] = scratch
    if scratch_url_env:
        env.pop(scratch_url_env, None)
    os.execvpe(argv[0], list(argv), env)  # noqa: S606 - the user's own command, as the spec gives it
