"""Run one case of a migration-safety case corpus (format: ``../shared/cases/README.md``) through the real
``schemagate`` CLI on a real PostgreSQL, and compare every expectation of its ``case.json``.

Per case (:func:`run_case`):

1. copy the case folder to a temporary directory (the corpus is never written to, not even ``__pycache__``);
2. on a fresh database: ``setup.sql`` as superuser; when ``connect_as`` names a role, the runner gives that role a
   password of its own (``ALTER ROLE ... PASSWORD``) and every later step connects as it;
   ``alembic upgrade <base>`` for each comma-separated base in order; ``data.sql`` as superuser;
3. ``schemagate precheck --json``: ``passes``/``blocked`` and every key of ``expect.counts`` (a key listed with 0
   may be missing; a NOT NULL key also matches PostgreSQL 18's stored name ``<table>_<column>_not_null``);
4. ``schemagate run --json``: when the precheck is expected to block, the run must block and change nothing (the
   version rows and the schema fingerprint are unchanged) and then ``schemagate migrate --retries 0`` alone must end
   as plain Alembic does (``expect.migrate``, ``expect.final_revision``); when it is expected to pass, the run must
   end as Alembic does (``succeeds`` -> ``Verified``; ``fails`` -> the migrate step fails; ``refused-before-any-
   change`` -> refused with nothing changed) at ``expect.final_revision`` (the sorted rows of every version table);
5. ``schemagate verify --json --plan <precheck result>`` when ``expect.verify`` is ``passes``.

A ``concurrency`` field ("About N s before the upgrade to the target starts, a second session runs `SQL` ...")
is a second session the runner opens itself: after the precheck it starts that SQL, waits N seconds and runs
``schemagate migrate --retries 0 --lock-timeout 1s`` (the first attempt, compared with ``expect.migrate`` and
``expect.final_revision``); once the session has ended, a precheck must name any INVALID index the attempt left
behind, and a retry (``schemagate run``) must either reach the target and verify, or fail naming that index with
nothing changed.

Every failure is collected and reported together (:class:`Mismatch`), naming the case, the step and the output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CASES_ENV = "SCHEMAGATE_CASES"
DEFAULT_RELATIVE = Path("..") / "shared" / "cases" / "precheck"
CLI_TIMEOUT = 600
PRECHECK_OUTCOMES = ("passes", "blocked")
MIGRATE_OUTCOMES = ("succeeds", "fails", "refused-before-any-change")
VERIFY_OUTCOMES = ("passes", "n/a")


class CorpusError(RuntimeError):
    """The corpus or a case folder is missing or malformed (names the path)."""


# --------------------------------------------------------------------------------------------------------------
# corpus


def default_candidates() -> list[Path]:
    """``../shared/cases/precheck`` relative to this checkout, then relative to the main checkout of the same
    repository (a linked worktree elsewhere still finds the corpus next to the main checkout), then relative to
    the local repository this one was cloned from."""
    out = [(REPO / DEFAULT_RELATIVE).resolve()]
    try:
        common = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--git-common-dir"], capture_output=True,
                                text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        common = ""
    if common:
        main = (REPO / common).resolve().parent
        cand = (main / DEFAULT_RELATIVE).resolve()
        if cand not in out:
            out.append(cand)
    try:  # a clone made elsewhere (e.g. `git clone . /tmp/x`): next to the repository it was cloned from
        origin = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True,
                                text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and "://" not in origin and Path(origin).is_dir():
        cand = (Path(origin) / DEFAULT_RELATIVE).resolve()
        if cand not in out:
            out.append(cand)
    return out


def corpus_dir(option: str | None) -> Path:
    """The corpus directory: ``--cases``, else ``$SCHEMAGATE_CASES``, else the default; raises CorpusError naming
    every directory tried when it is missing or holds no case."""
    explicit = option or os.environ.get(CASES_ENV)
    tried = [Path(explicit).resolve()] if explicit else default_candidates()
    for d in tried:
        if d.is_dir():
            if not case_dirs(d):
                raise CorpusError(f"the case corpus {d} holds no case folder (a folder with case.json)")
            return d
    how = f"--cases/{CASES_ENV}={explicit}" if explicit else "the default ../shared/cases/precheck"
    raise CorpusError(f"case corpus not found ({how}): tried {', '.join(str(t) for t in tried)}; "
                      f"pass --cases DIR or set {CASES_ENV}=DIR")


def case_dirs(corpus: Path) -> list[Path]:
    return sorted(p.parent for p in corpus.glob("*/case.json"))


@dataclass
class Case:
    """One case folder and its ``case.json`` (validated)."""

    path: Path
    base: list[str]
    target: str
    kind: str
    precheck: str
    counts: dict[str, int]
    migrate: str
    final_revision: list[str]
    verify: str
    connect_as: str | None = None
    user_checks: dict[str, str] = field(default_factory=dict)
    concurrency: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


def load_case(path: Path) -> Case:
    f = path / "case.json"
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        exp = doc["expect"]
        case = Case(
            path=path, base=[b.strip() for b in str(doc["base"]).split(",") if b.strip()],
            target=str(doc["target"]), kind=str(doc.get("kind", "")), precheck=str(exp["precheck"]),
            counts={str(k): int(v) for k, v in (exp.get("counts") or {}).items()},
            migrate=str(exp["migrate"]),
            final_revision=sorted(r for r in str(exp["final_revision"]).split(",") if r),
            verify=str(exp.get("verify", "n/a")), connect_as=doc.get("connect_as"),
            user_checks={str(k): str(v) for k, v in (doc.get("user_checks") or {}).items()},
            concurrency=doc.get("concurrency"),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"{f}: cannot read the case ({type(e).__name__}: {e})") from e
    for name, value, allowed in (("expect.precheck", case.precheck, PRECHECK_OUTCOMES),
                                 ("expect.migrate", case.migrate, MIGRATE_OUTCOMES),
                                 ("expect.verify", case.verify, VERIFY_OUTCOMES)):
        if value not in allowed:
            raise CorpusError(f"{f}: {name} is {value!r}, expected one of {', '.join(allowed)}")
    if not case.base:
        raise CorpusError(f"{f}: base is empty")
    return case


# --------------------------------------------------------------------------------------------------------------
# database helpers (psycopg, autocommit; SQL files go through the simple query protocol like psql -f)


def _connect(url: str) -> Any:
    import psycopg

    from schemagate.contract.dburl import libpq_url

    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=15)


def exec_sql(url: str, sql: str) -> None:
    with _connect(url) as conn:
        conn.execute(sql)  # no parameters: several statements in one simple query, as psql -f runs them


def with_role(url: str, role: str, password: str) -> str:
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    host = u.netloc.rpartition("@")[2]
    q = urllib.parse.quote
    return urllib.parse.urlunsplit((u.scheme, f"{q(role, safe='')}:{q(password, safe='')}@{host}", u.path,
                                    u.query, u.fragment))


def version_rows(url: str) -> list[str]:
    """Sorted rows of every Alembic version table (a table whose only column is ``version_num``), wherever env.py
    put it."""
    with _connect(url) as conn:
        tables = conn.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') "
            "AND n.nspname NOT IN ('pg_catalog','information_schema') AND EXISTS (SELECT 1 FROM pg_attribute a "
            "WHERE a.attrelid = c.oid AND a.attname = 'version_num' AND NOT a.attisdropped) "
            "AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped) = 1").fetchall()
        rows: list[str] = []
        for (t,) in tables:
            rows.extend(str(r[0]) for r in conn.execute(f"SELECT version_num FROM {t}").fetchall())
    return sorted(rows)


def fingerprint(url: str) -> list[tuple[Any, ...]]:
    """Relations, columns (type, NOT NULL), constraints (definition, validated) and indexes (valid) of every
    user schema: equal before and after means the schema was not changed."""
    with _connect(url) as conn:
        return [tuple(r) for r in conn.execute("""
            SELECT 'rel', n.nspname, c.relname, c.relkind::text, NULL, NULL FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
            UNION ALL
            SELECT 'col', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull::text
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p')
               AND n.nspname NOT IN ('pg_catalog','information_schema')
            UNION ALL
            SELECT 'con', n.nspname, co.conname, pg_get_constraintdef(co.oid), co.convalidated::text, NULL
              FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
             WHERE n.nspname NOT IN ('pg_catalog','information_schema')
            UNION ALL
            SELECT 'idx', n.nspname, c.relname, i.indisvalid::text, NULL, NULL FROM pg_index i
              JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
            ORDER BY 1, 2, 3, 4""").fetchall()]


def invalid_indexes(url: str) -> list[str]:
    with _connect(url) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid"
        ).fetchall())


# --------------------------------------------------------------------------------------------------------------
# the CLI


def _schemagate() -> list[str]:
    exe = Path(sys.executable).parent / "schemagate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "schemagate.cli"]


@dataclass
class CliRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None

    @property
    def outcome(self) -> str | None:
        return (self.result or {}).get("outcome")

    @property
    def reason(self) -> str | None:
        return (self.result or {}).get("reason")

    def describe(self) -> str:
        r = self.result or {}
        return (f"`{' '.join(self.argv)}` exit {self.returncode}, {r.get('outcome')}/{r.get('reason')}: "
                f"{r.get('message') or self.stderr.strip()[-800:]}")


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SCHEMAGATE_TEST_DATABASE_URL", "PGPASSWORD", "PGOPTIONS", "PGDATABASE", "PGUSER")}
    env.update(DATABASE_URL=url, SCHEMAGATE_NO_EMBEDDED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def schemagate(workdir: Path, url: str, *args: str) -> CliRun:
    """Run ``schemagate ARGS --json`` in ``workdir`` with DATABASE_URL (never on the command line)."""
    argv = [*_schemagate(), *args, "--json"]
    p = subprocess.run(argv, cwd=workdir, env=_env(url), capture_output=True, text=True, timeout=CLI_TIMEOUT,
                       check=False)
    result = None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    return CliRun(argv=["schemagate", *args, "--json"], returncode=p.returncode, stdout=p.stdout,
                  stderr=p.stderr, result=result)


def alembic_upgrade(workdir: Path, url: str, revision: str) -> None:
    p = subprocess.run([sys.executable, "-m", "alembic", "-c", "alembic.ini", "upgrade", revision], cwd=workdir,
                       env=_env(url), capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    if p.returncode != 0:
        from schemagate.contract.redact import redact

        raise CorpusError(f"{workdir.name}: alembic upgrade {revision} (preparing the case) failed: "
                          f"{redact(p.stderr.strip()[-1500:])}")


# --------------------------------------------------------------------------------------------------------------
# comparing


def _data(r: CliRun) -> dict[str, Any]:
    return dict((r.result or {}).get("data") or {})


def _notnull_names(key: str) -> set[str]:
    """PostgreSQL 18's stored name of a NOT NULL key: ``<table>_<column>_not_null`` (identifiers unquoted)."""
    m = re.fullmatch(r"(.+) NOT NULL", key)
    if not m or key.startswith("DOMAIN "):
        return set()
    parts = re.findall(r'"((?:[^"]|"")*)"|([^."]+)', m.group(1))
    idents = [(q.replace('""', '"') if q else p) for q, p in parts]
    if len(idents) < 2:
        return set()
    return {f"{idents[-2]}_{idents[-1]}_not_null"}


def match_counts(expected: dict[str, int], checks: list[dict[str, Any]]) -> list[str]:
    """Mismatches between ``expect.counts`` and the result's checks (by ``key``, else ``name``)."""
    problems = []
    for key, want in expected.items():
        alt = _notnull_names(key)
        found = [c for c in checks if c.get("key", c.get("name")) == key or c.get("name") == key
                 or c.get("name") in alt]
        if not found:
            if want != 0:
                have = sorted(str(c.get("key", c.get("name"))) for c in checks)
                problems.append(f"count {key!r}: expected {want}, the precheck reported no such check "
                                f"(it reported: {have})")
            continue
        # one key may have several entries: a domain constraint is reported per column of the domain (schema,
        # table and column as separate fields); the corpus counts the rows over all of them
        counts = [c.get("count") for c in found]
        got = None if any(n is None for n in counts) else sum(int(n) for n in counts)
        if got != want:
            problems.append(f"count {key!r}: expected {want}, got {got} "
                            + "; ".join(f"({c.get('kind')}, count {c.get('count')}, note: {c.get('note')})"
                                        for c in found))
    return problems


@dataclass
class Mismatch(AssertionError):
    case: str
    problems: list[str]

    def __str__(self) -> str:
        return f"case {self.case}: {len(self.problems)} mismatch(es):\n  - " + "\n  - ".join(self.problems)


def _concurrent_session(text: str) -> tuple[float, str]:
    """(seconds before the upgrade, SQL) from a ``concurrency`` description."""
    sql = re.search(r"`([^`]+)`", text)
    lead = re.search(r"([0-9.]+)\s*s\s+before", text)
    if not sql or not lead:
        raise CorpusError(f"cannot read the concurrent session from the concurrency field: {text!r} "
                          f"(expected 'About N s before ... `SQL`')")
    return float(lead.group(1)), sql.group(1)


# --------------------------------------------------------------------------------------------------------------
# one case


def prepare(case: Case, workdir: Path, make_db: Any) -> tuple[str, str]:
    """(superuser URL, the URL the tool connects with) of a fresh database prepared as the case says."""
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(case.path, workdir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    su_url = make_db()
    if (workdir / "setup.sql").exists():
        exec_sql(su_url, (workdir / "setup.sql").read_text(encoding="utf-8"))
    url = su_url
    if case.connect_as:
        import secrets

        from schemagate.contract.redact import register_secret

        password = "case-" + secrets.token_hex(8)
        register_secret(password)
        role = case.connect_as.replace('"', '""')
        exec_sql(su_url, f'ALTER ROLE "{role}" LOGIN PASSWORD \'{password}\'')
        url = with_role(su_url, case.connect_as, password)
    for base in case.base:
        alembic_upgrade(workdir, url, base)
    if (workdir / "data.sql").exists():
        exec_sql(su_url, (workdir / "data.sql").read_text(encoding="utf-8"))
    return su_url, url


def _check_args(case: Case) -> list[str]:
    out: list[str] = []
    for name, sql in case.user_checks.items():
        out += ["--check", f"{name}={sql}"]
    if case.user_checks:
        out.append("--no-derive")  # a case with user checks configures a precheck limited to them
    return out


def _precheck(case: Case, workdir: Path, url: str, problems: list[str], label: str = "precheck") -> CliRun:
    r = schemagate(workdir, url, "precheck", "-c", "alembic.ini", "--target", case.target, *_check_args(case))
    got = {0: "passes", 3: "blocked"}.get(r.returncode)
    if r.result is None:
        problems.append(f"{label}: no JSON result: {r.describe()}")
    elif got is None:
        problems.append(f"{label}: expected {case.precheck}, the step failed: {r.describe()}")
    elif got != case.precheck:
        problems.append(f"{label}: expected {case.precheck}, got {got}: {r.describe()}")
    if r.result is not None:
        problems.extend(f"{label}: {p}" for p in match_counts(case.counts, list(_data(r).get("checks") or [])))
    return r


def _migrate_outcome(r: CliRun) -> str:
    return "succeeds" if r.returncode == 0 else "fails"


def _expect_end(case: Case, r: CliRun, su_url: str, before: tuple[list[str], Any], label: str,
                problems: list[str]) -> None:
    rows = version_rows(su_url)
    if case.migrate == "refused-before-any-change":
        if r.returncode == 0:
            problems.append(f"{label}: expected refused before any change, it succeeded: {r.describe()}")
        if (rows, fingerprint(su_url)) != before:
            problems.append(f"{label}: expected refused before any change, the database changed (version rows "
                            f"{before[0]} -> {rows})")
        return
    got = _migrate_outcome(r)
    if got != case.migrate:
        problems.append(f"{label}: expected the migration to {case.migrate.rstrip('s')}, it {got.rstrip('s')}: "
                        f"{r.describe()}")
    if rows != case.final_revision:
        problems.append(f"{label}: expected final revision {','.join(case.final_revision)}, the version table "
                        f"holds {','.join(rows) or '(nothing)'}: {r.describe()}")


def _verify(case: Case, workdir: Path, url: str, plan: CliRun, problems: list[str]) -> None:
    if case.verify != "passes":
        return
    plan_file = workdir / ".precheck-result.json"
    plan_file.write_text(json.dumps(plan.result or {}), encoding="utf-8")
    r = schemagate(workdir, url, "verify", "-c", "alembic.ini", "--target", case.target, "--plan", str(plan_file),
                   *[a for a in _check_args(case) if a != "--no-derive"])
    if r.returncode != 0:
        problems.append(f"verify: expected passes: {r.describe()}")


def run_case(case: Case, workdir: Path, make_db: Any) -> None:
    """Run the case (see the module docstring); raises :class:`Mismatch` listing every difference."""
    su_url, url = prepare(case, workdir, make_db)
    problems: list[str] = []
    before = (version_rows(su_url), fingerprint(su_url))
    pre = _precheck(case, workdir, url, problems)
    run_args = ["-c", "alembic.ini", "--target", case.target, "--backup-dir", str(workdir / ".backups"),
                *_check_args(case)]
    if case.concurrency:
        _run_concurrent(case, workdir, su_url, url, before, run_args, pre, problems)
    else:
        r = schemagate(workdir, url, "run", *run_args)
        if case.precheck == "blocked":
            if r.returncode != 3:
                problems.append(f"run: expected blocked by the precheck (exit 3), got: {r.describe()}")
            after = (version_rows(su_url), fingerprint(su_url))
            if after != before:
                problems.append(f"run: blocked, yet the database changed (version rows {before[0]} -> {after[0]})")
            else:
                m = schemagate(workdir, url, "migrate", "-c", "alembic.ini", "--target", case.target,
                               "--retries", "0")
                _expect_end(case, m, su_url, before, "migrate (without the precheck)", problems)
        else:
            _expect_end(case, r, su_url, before, "run", problems)
            if case.migrate == "succeeds" and r.returncode == 0:
                _verify(case, workdir, url, pre, problems)
    if problems:
        raise Mismatch(case.name, problems)


def _run_concurrent(case: Case, workdir: Path, su_url: str, url: str, before: tuple[list[str], Any],
                    run_args: list[str], pre: CliRun, problems: list[str]) -> None:
    assert case.concurrency is not None
    lead, sql = _concurrent_session(case.concurrency)
    errors: list[BaseException] = []

    def session() -> None:
        try:
            exec_sql(su_url, sql)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=session, name="case-concurrent-session", daemon=True)
    t.start()
    time.sleep(lead)
    first = schemagate(workdir, url, "migrate", "-c", "alembic.ini", "--target", case.target, "--retries", "0",
                       "--lock-timeout", "1s")
    t.join(timeout=120)
    if t.is_alive() or errors:
        problems.append(f"the concurrent session did not finish cleanly: {errors or 'still running'}")
    _expect_end(case, first, su_url, before, "first attempt (migrate during the concurrent session)", problems)
    leftovers = invalid_indexes(su_url)
    if leftovers:
        again = schemagate(workdir, url, "precheck", "-c", "alembic.ini", "--target", case.target)
        text = json.dumps(again.result or {}) + again.stderr
        for name in leftovers:
            if again.returncode == 0 and name not in text:
                problems.append(f"precheck after the failed attempt: passed without naming the INVALID index "
                                f"{name} the attempt left behind: {again.describe()}")
    at_first = (version_rows(su_url), fingerprint(su_url))
    retry = schemagate(workdir, url, "run", *run_args)
    rows = version_rows(su_url)
    if retry.returncode == 0:
        if invalid_indexes(su_url):
            problems.append(f"retry: succeeded but INVALID indexes remain: {invalid_indexes(su_url)}")
        if rows == at_first[0]:
            problems.append(f"retry: succeeded but the version rows did not change ({rows})")
        _verify(Case(**{**case.__dict__, "verify": "passes"}), workdir, url, pre, problems)
    else:
        text = json.dumps(retry.result or {})
        missing = [n for n in leftovers if n not in text]
        if missing or not leftovers:
            problems.append(f"retry: failed without naming the leftover INVALID index(es) {leftovers}: "
                            f"{retry.describe()}")
        if (rows, fingerprint(su_url)) != at_first:
            problems.append("retry: failed, yet the database changed")
