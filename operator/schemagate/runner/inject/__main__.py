"""CLI of the injected runner: prints exactly one StepResult JSON on stdout and writes ``--termination-log`` /
``$SCHEMAGATE_TERMINATION_LOG``::

    python -m schemagate.runner.inject migrate        -c alembic.ini --target head --database-url-env DATABASE_URL
    python -m schemagate.runner.inject shadow-upgrade -c alembic.ini --target head --database-url-env SHADOW_URL \
        --workdir /work
    python -m schemagate.runner.inject data-upgrade   -c alembic.ini --target head --database-url-env DATABASE_URL \
        --workdir /work
    python -m schemagate.runner.inject plan           -c alembic.ini --target head
    python -m schemagate.runner.inject rehearse-upgrade -c alembic.ini --target head --scratch-database NAME \
        [--scratch-url-env NAME] --workdir /work
    python -m schemagate.runner.inject with-rehearsal-url --database-url-env DATABASE_URL --scratch-database NAME \
        -- COMMAND [ARG ...]     (replaces itself by COMMAND with the URL of the copy; prints nothing)
    python -m schemagate.runner.inject downgrade      -c alembic.ini --target base --expect-from 0002 \
        --database-url-env DATABASE_URL

``shadow-upgrade --allow-downgrade`` (``spec.allowDowngrade``): a target below the database is tried as
``alembic downgrade`` on the shadow instead (``runner.inject.downgrade.shadow_downgrade``).
"""

from __future__ import annotations

import argparse
import os
import sys

from schemagate.contract import names
from schemagate.contract.dburl import DEFAULT_URL_ENV
from schemagate.contract.errors import StepBoundary
from schemagate.contract.stepresult import StepResult, write_termination_log
from schemagate.contract.target import Target
from schemagate.runner.inject.config import DEFAULT_LOCK_TIMEOUT
from schemagate.runner.inject.datarun import data_upgrade
from schemagate.runner.inject.downgrade import (
    below,
    catalog_from_json,
    dotted,
    downgrade_step,
    shadow_downgrade,
)
from schemagate.runner.inject.migrate import DEFAULT_RETRIES, migrate
from schemagate.runner.inject.rehearsal import exec_with_scratch_url, rehearse_upgrade
from schemagate.runner.inject.revisions import plan
from schemagate.runner.inject.shadow import shadow_upgrade


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m schemagate.runner.inject",
                                 description="schemagate's injected runner (runs in the application's image)")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("migrate", "apply the pending revisions (advisory lock, lock timeout, retries)"),
                        ("shadow-upgrade", "apply the pending revisions to a shadow database and render their SQL"),
                        ("plan", "print current revision, resolved target and pending revisions"),
                        ("downgrade", "alembic downgrade to a target below the database (the operator's migrate "
                                      "step of a downgrade)"),
                        ("rehearse-upgrade", "apply the pending revisions to the rehearsal's restored copy, with "
                                             "the lock report"),
                        ("data-upgrade", "apply the pending revisions again in the precheck's data-carrying shadow, "
                                         "counting each check right before its statement (a no-op when the "
                                         "revisions change no data)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", default=os.environ.get(names.ENV_ALEMBIC_CONFIG, "alembic.ini"))
        p.add_argument("--target", default=os.environ.get(names.ENV_TARGET, "head"))
        p.add_argument("--database-url-env", default=DEFAULT_URL_ENV)
        p.add_argument("--database-url", default=None, help="discouraged: visible in the process list")
        p.add_argument("--termination-log", default=None)
        p.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
        if name in ("migrate", "shadow-upgrade", "downgrade", "rehearse-upgrade"):
            p.add_argument("--lock-timeout", default=None if name == "shadow-upgrade" else DEFAULT_LOCK_TIMEOUT)
            p.add_argument("--statement-timeout", default=None)
        if name == "rehearse-upgrade":
            p.add_argument("--scratch-database", default="")
            p.add_argument("--scratch-url-env", default=None)
        if name == "migrate":
            p.add_argument("--retries", type=int, default=DEFAULT_RETRIES)
            p.add_argument("--lock-wait", type=float, default=600.0,
                           help="seconds to wait for another migrator's advisory lock")
        if name in ("shadow-upgrade", "rehearse-upgrade"):
            p.add_argument("--workdir", default=None)
        if name == "data-upgrade":
            p.add_argument("--workdir", required=True)
        if name == "shadow-upgrade":
            p.add_argument("--allow-downgrade", action="store_true",
                           help="a target below the database: try alembic downgrade on the shadow (spec.allowDowngrade)")
        if name == "downgrade":
            p.add_argument("--expect-from", default=None,
                           help="the revision(s) the precheck planned from; another one refuses (nothing changed)")
    w = sub.add_parser("with-rehearsal-url", help="run a command with the database URL of the rehearsal's copy")
    w.add_argument("--database-url-env", default=DEFAULT_URL_ENV)
    w.add_argument("--scratch-database", required=True)
    w.add_argument("--scratch-url-env", default=None)
    w.add_argument("argv", nargs=argparse.REMAINDER)
    return ap


def _target(args: argparse.Namespace) -> Target:
    """The project, target revision and database the options name."""
    return Target(args.config, args.target, args.database_url, args.database_url_env)


def run_command(args: argparse.Namespace) -> StepResult:
    """The StepResult of one command; never raises for an error of the step (``StepBoundary``)."""
    if args.command == "migrate":
        return migrate(_target(args), args.lock_timeout,
                       args.statement_timeout, args.retries, lock_wait=args.lock_wait,
                       log=lambda s: print(s, file=sys.stderr))
    if args.command == "rehearse-upgrade":
        return rehearse_upgrade(_target(args), args.scratch_database, scratch_url_env=args.scratch_url_env,
                                lock_timeout=args.lock_timeout, statement_timeout=args.statement_timeout,
                                workdir=args.workdir, say=lambda s: print(s, file=sys.stderr))
    if args.command == "plan":
        with StepBoundary("plan") as step:
            p = plan(_target(args))
            step.data.update(currentRevision=p["current"], targetRevision=p["target"], pending=p["pending"],
                             heads=p["heads"])
            step.succeed("Planned",
                         f"{len(p['pending'])} pending revision(s) from {p['current'] or 'base'} to {p['target']}")
        return step.result
    if args.command == "data-upgrade":
        return _data_upgrade(args)
    if args.command == "downgrade":
        return downgrade_step(_target(args), args.lock_timeout,
                              args.statement_timeout, args.expect_from)
    with StepBoundary("precheck") as step:
        found = below(_target(args)) \
            if args.allow_downgrade and args.workdir else None
        if found is not None:
            doc = shadow_downgrade(_target(args), args.workdir,
                                   found)
            step.data.update(direction="downgrade", fromRevision=doc["fromRevision"],
                             targetRevision=doc["targetRevision"], removes=dotted(catalog_from_json(doc["removes"])))
            step.succeed("ShadowDowngraded", f"alembic downgrade {args.target} tried on the shadow database")
            return step.result
        out = shadow_upgrade(_target(args), args.workdir,
                             args.lock_timeout, args.statement_timeout)
        step.data.update({k: v for k, v in out.items() if k not in ("sql", "statements", "plan")})
        step.data["statements"] = len(out.get("statements") or [])
        step.succeed("ShadowUpgraded", f"applied {len(out['applied'])} revision(s) to the shadow database")
    return step.result


def _data_upgrade(args: argparse.Namespace) -> StepResult:
    """``data-upgrade``: ``datarun.data_upgrade`` as a StepResult (``DataShadowNotNeeded`` when the precheck
    wrote no counting queries)."""
    with StepBoundary("precheck") as step:
        out = data_upgrade(_target(args), args.workdir)
        if out is None:
            step.succeed("DataShadowNotNeeded", "the pending revisions change no data the checks depend on: "
                                                "no data-carrying shadow run")
        else:
            step.data.update(statements=sum(1 for e in out["events"] if e["event"] == "before"),
                             revisionError=out.get("error"))
            step.succeed("DataShadowUpgraded", "the pending revisions ran in the data-carrying shadow database, "
                                               "each check counted right before its statement")
    return step.result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "with-rehearsal-url":  # replaces this process: the user's command's exit is the container's
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        exec_with_scratch_url(command, args.database_url_env, args.scratch_database, args.scratch_url_env)
    with StepBoundary(args.command) as step:  # never end without a result
        step.set_result(run_command(args))
    result = step.result
    print(result.to_json())
    write_termination_log(result, args.termination_log)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
