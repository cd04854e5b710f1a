"""The verify step: after migrating, prove that the database is where the plan said it would be.

Named checks, each adding to one ``VerifyReport`` (every failure is one line in ``data.failures``; any failure ->
``ChecksFailed``/``VerificationFailed``):

1. ``check_revisions``: the database's set of current revisions (the version table's rows) equals the set the
   target leaves. With ``config_path`` (the Alembic project) nothing may be pending for the target; without it
   (the operator's image) the rows are compared with the plan's ``expectedRevisions`` (or ``targetRevision``,
   comma-separated for several heads). The version table is the plan's ``versionTable`` (``{"schema", "name"}``
   as the application's env.py configured the migration context) when given, else
   ``version_table_schema``/``version_table``.
2. ``check_constraints``: every constraint the revisions added (the plan's checks of kind
   check/foreignkey/unique/notnull) exists and ``pg_constraint.convalidated``; NOT NULL ones are ``attnotnull``.
3. ``check_indexes``: every index the revisions added has ``indisvalid AND indisready AND indislive``.
4. ``check_leftovers``: no NOT VALID constraint and no invalid index is left on a touched table (every user table
   without a plan, or with a ``partial`` one: the operator had only the summary of the precheck's result), except
   constraints the target leaves NOT VALID on purpose (the plan's ``notValid``).
5. ``check_counts``: the plan's checks, rebuilt from the live catalog, count 0 violating rows with the precheck's
   own counting (``schemagate.analysis.counting``: PostgreSQL semantics, one scan per table), and so do the user
   checks (SQL returning a count).

Identifiers: a plan entry names its table by separate fields (``schema``, ``relname`` (or ``table`` when
``schema`` is given) and ``columns``); an older entry with only the display text ``table`` is matched against
``schema.relname`` as a whole, never split. Tables are resolved to an oid once and queried by oid; SQL
identifiers are quoted by the driver (``psycopg.sql.Identifier``). Messages name tables as PostgreSQL prints
``oid::regclass``.

The plan is the precheck result's ``data`` (``{targetRevision, expectedRevisions, checks, indexes, ...}``) or the
whole precheck StepResult, given as JSON through ``--plan FILE`` or the environment variable of ``--plan-env``
(``SCHEMAGATE_PLAN`` in the verify Job).

Public API: ``verify(target: Target(config or None, revision="head", url=None, url_env="DATABASE_URL"), *, plan=None,
user_checks=(), version_table="alembic_version", version_table_schema=None, statement_timeout="1h") ->
StepResult``; ``load_plan(path=None, env=None) -> dict | None``; ``VerifyReport``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemagate.contract import names
from schemagate.contract.checks import UserCheck
from schemagate.contract.errors import InvalidInput, StepBoundary
from schemagate.contract.stepresult import Outcome, StepResult
from schemagate.contract.target import Target
from schemagate.libpq import Connection, Cursor, connect, shared_connections

STEP = "verify"
PLAN_ENV = names.ENV_PLAN
CONSTRAINT_KINDS = ("check", "foreignkey", "unique", "notnull")


def load_plan(path: str | os.PathLike[str] | None = None, env: str | None = None) -> dict[str, Any] | None:
    """The plan from a file or an environment variable: a precheck StepResult or its ``data``."""
    text: str | None = None
    source = ""
    if path:
        source = f"--plan {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidInput(f"--plan: cannot read {path}: {e.strerror}") from e
    elif env:
        source = f"--plan-env {env}"
        text = os.environ.get(env)
        if text is None:
            return None
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"{source}: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise InvalidInput(f"{source}: expected a JSON object")
    if doc.get("kind") == "StepResult":
        doc = dict(doc.get("data") or {})
    return doc


def _connect(url: str) -> Connection:
    return connect(url, application_name="schemagate-verify")


@dataclass
class VerifyReport:
    """What verify found. ``as_data()`` is the StepResult's ``data``: ``{currentRevision, targetRevision,
    expectedRevisions, constraints: [{name, table, exists, validated}], indexes: [{name, valid}], checks: [...],
    notValid?: [{name, table}], failures: [str]}``. ``touched`` (table oids) and ``recount``
    (``counting.Check``) pass work from the catalog checks to ``check_leftovers`` and ``check_counts``."""

    current_revision: str | None = None
    target_revision: str | None = None
    expected_revisions: list[str] = field(default_factory=list)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    not_valid: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    recount: list[Any] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.failures.append(text)

    def as_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"currentRevision": self.current_revision, "targetRevision": self.target_revision,
                                "constraints": self.constraints, "indexes": self.indexes, "checks": self.checks,
                                "failures": self.failures}
        if self.expected_revisions:
            data["expectedRevisions"] = self.expected_revisions
        if self.not_valid:
            data["notValid"] = self.not_valid
        return data


# --------------------------------------------------------------------------------------------------------------
# Tables and identifiers


@dataclass(frozen=True)
class Table:
    """A table resolved in the live catalog: ``oid``, ``schema``, ``relname`` and ``display`` (``oid::regclass``
    as PostgreSQL prints it: schema only when not on the search_path, quotes only where needed)."""

    oid: int
    schema: str
    relname: str
    display: str


_TABLE_SQL = """
SELECT t.oid, n.nspname, t.relname, t.oid::regclass::text FROM pg_class t
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind IN ('r', 'p', 'f', 'm') AND {where}
ORDER BY pg_table_is_visible(t.oid) DESC, n.nspname LIMIT 2
"""


def table_fields(entry: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(schema, relname, display)`` of a plan entry: separate fields when present, else only the display text."""
    relname = entry.get("relname")
    if relname is None and "schema" in entry:
        relname = entry.get("table")
    display = entry.get("table") if relname is None else None
    return entry.get("schema"), relname, display


def resolve_table(cur: Any, entry: Mapping[str, Any]) -> Table | None:
    """The table a plan entry names, or None when it does not exist (or, for a display-only entry, is ambiguous).
    Without a schema the table visible on the search_path wins, as in PostgreSQL's own name lookup."""
    schema, relname, display = table_fields(entry)
    if relname:
        cur.execute(_TABLE_SQL.format(where="t.relname = %s AND (%s::text IS NULL OR n.nspname = %s)"),
                    (relname, schema, schema))
        rows = cur.fetchall()[:1]
    elif display:  # matched whole against schema.relname (never split), else a visible table of that name
        cur.execute(_TABLE_SQL.format(where="n.nspname || '.' || t.relname = %s"), (display,))
        rows = cur.fetchall()
        if len(rows) != 1:
            cur.execute(_TABLE_SQL.format(where="t.relname = %s AND pg_table_is_visible(t.oid)"), (display,))
            rows = cur.fetchall()[:1]
    else:
        return None
    return Table(*rows[0]) if rows else None


def _entry_display(entry: Mapping[str, Any]) -> str:
    schema, relname, display = table_fields(entry)
    if relname:
        return f"{schema}.{relname}" if schema else str(relname)
    return str(display or "?")


def notnull_column(entry: Mapping[str, Any]) -> str | None:
    """The column of a NOT NULL plan entry: ``columns[0]``/``column``, else the quoted name in ``"col" NOT NULL``."""
    cols = entry.get("columns")
    if isinstance(cols, Sequence) and not isinstance(cols, str) and cols:
        return str(cols[0])
    if entry.get("column"):
        return str(entry["column"])
    definition = str(entry.get("definition") or "")
    m = re.match(r'^\s*"((?:[^"]|"")+)"\s+NOT NULL', definition) or re.match(r"^\s*(\w+)\s+NOT NULL", definition)
    return m.group(1).replace('""', '"') if m else None


# --------------------------------------------------------------------------------------------------------------
# 1. revisions


def read_version_rows(cur: Cursor, table: str, schema: str | None) -> list[str] | None:
    """The version table's rows (sorted), or None when the table does not exist. Quoted by the driver."""
    from psycopg import sql

    cur.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %s "
                "AND (%s::text IS NULL OR n.nspname = %s) ORDER BY pg_table_is_visible(c.oid) DESC LIMIT 1",
                (table, schema, schema))
    found = cur.fetchone()
    if found is None:
        return None
    name = sql.Identifier(found[0], table)  # the table found, also when it is not on this session's search_path
    cur.execute(sql.SQL("SELECT version_num FROM {} ORDER BY 1").format(name))
    return [r[0] for r in cur.fetchall()]


def plan_version_table(plan: Mapping[str, Any], name: str, schema: str | None) -> tuple[str, str | None]:
    """``(name, schema)`` of the version table: the plan's ``versionTable`` (``{"schema", "name"}``, or a bare name
    with ``versionTableSchema``) when it names one, else ``name``/``schema``."""
    vt = plan.get("versionTable")
    if isinstance(vt, Mapping) and vt.get("name"):
        return str(vt["name"]), vt.get("schema")
    if isinstance(vt, str) and vt:
        return vt, plan.get("versionTableSchema") or schema
    return name, schema


def _revisions_with_project(report: VerifyReport, target: Target, expected: list[str]) -> None:
    from schemagate.runner.inject.revisions import plan as alembic_plan

    p = alembic_plan(target)
    report.current_revision, report.target_revision = p["current"], p["target"]
    report.expected_revisions = expected or p["expected"]
    if p["pending"]:
        report.fail(f"revision {p['current'] or 'base'} is not the target {p['target']}: "
                    f"{len(p['pending'])} revision(s) pending ({', '.join(p['pending'])})")
    elif expected and sorted(p["currentHeads"]) != sorted(expected):
        report.fail(f"the database is at revision(s) {p['current'] or 'base'}, not the expected "
                    f"{','.join(sorted(expected))}")


def check_revisions(report: VerifyReport, cur: Any, plan: Mapping[str, Any], target: Target,
                    version_table: tuple[str, str | None]) -> None:
    """Check 1 (see the module docstring). Raises ``InvalidInput`` when, without the project, the plan names
    no revision ids to compare with."""
    wanted = plan.get("targetRevision") or target.revision
    expected = sorted(str(r) for r in plan.get("expectedRevisions") or [])
    down = plan.get("downgrade")
    if isinstance(down, Mapping):  # a downgrade: the target's revisions, none for base
        expected = sorted(str(r) for r in down.get("targetRevisions") or [])
    if target.config is not None:
        _revisions_with_project(report, dataclasses.replace(target, revision=wanted), expected)
        return
    if not expected and not isinstance(down, Mapping):
        if not wanted or wanted in ("head", "heads") or "@" in str(wanted):
            raise InvalidInput("verify needs the target revision id(s): give -c/--config (the Alembic "
                                       "project) or a plan (--plan/--plan-env) with targetRevision")
        expected = sorted({r.strip() for r in str(wanted).split(",") if r.strip()})
    rows = read_version_rows(cur, version_table[0], version_table[1]) or []
    report.current_revision = ",".join(rows) or None
    report.target_revision, report.expected_revisions = wanted, expected
    if rows != expected:
        report.fail(f"the database is at revision(s) {report.current_revision or 'base'}, not the expected "
                    f"{','.join(expected)}")


# --------------------------------------------------------------------------------------------------------------
# 2. constraints

_CONSTRAINTS_SQL = """
SELECT c.conname, n.nspname, t.relname, c.contype, c.convalidated, pg_get_expr(c.conbin, c.conrelid),
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[],
       fn.nspname, ft.relname,
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[],
       c.confmatchtype, t.oid, t.oid::regclass::text
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_class ft ON ft.oid = c.confrelid
LEFT JOIN pg_namespace fn ON fn.oid = ft.relnamespace
WHERE c.conname = %s AND (%s::oid IS NULL OR c.conrelid = %s::oid)
ORDER BY pg_table_is_visible(t.oid) DESC
"""

_INDEX_SQL = """
SELECT n.nspname, t.relname, i.indisvalid AND i.indisready AND i.indislive, t.oid, t.oid::regclass::text
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE ic.relname = %s AND (%s::oid IS NULL OR i.indrelid = %s::oid)
ORDER BY pg_table_is_visible(t.oid) DESC
"""


def _unique_keys(cur: Cursor, conname: str, table_oid: int) -> list[str]:
    cur.execute(
        "SELECT pg_get_indexdef(c.conindid, k, true) FROM pg_constraint c, "
        "generate_series(1, (SELECT indnkeyatts FROM pg_index WHERE indexrelid = c.conindid)) k "
        "WHERE c.conname = %s AND c.conrelid = %s ORDER BY k",
        (conname, table_oid),
    )
    return [r[0] for r in cur.fetchall()]


def _check_notnull(report: VerifyReport, cur: Any, c: Mapping[str, Any], entry: dict[str, Any],
                   table: Table | None) -> None:
    from schemagate.analysis import counting

    col = notnull_column(c)
    row = None
    if table is not None and col:
        cur.execute("SELECT a.attnotnull FROM pg_attribute a WHERE a.attrelid = %s AND a.attname = %s "
                    "AND NOT a.attisdropped", (table.oid, col))
        row = cur.fetchone()
    if table is not None and row:
        entry.update(exists=True, validated=bool(row[0]))
        report.touched.add(table.oid)
        report.recount.append(counting.notnull(str(c["name"]), table.schema, table.relname, col or ""))
    if not row or not row[0]:
        where = table.display if table is not None else _entry_display(c)
        report.fail(f"{where}.{col} is not NOT NULL")


def _recount_constraint(report: VerifyReport, cur: Cursor, name: str, row: Sequence[Any]) -> None:
    from schemagate.analysis import counting

    (conname, nsp, rel, contype, _validated, expr, cols, fnsp, frel, fcols, matchtype, toid, _display) = row
    if contype == "c" and expr:
        report.recount.append(counting.check_(name, nsp, rel, expr))
    elif contype == "f" and cols and fcols:
        report.recount.append(counting.foreign_key(name, nsp, rel, list(cols), fnsp, frel, list(fcols),
                                                   match_full=matchtype == "f"))
    elif contype == "u":
        keys = _unique_keys(cur, conname, toid)
        if keys:
            report.recount.append(counting.unique(name, nsp, rel, keys))


def _check_named_constraint(report: VerifyReport, cur: Any, c: Mapping[str, Any], entry: dict[str, Any],
                            table: Table | None) -> None:
    name, kind = str(c["name"]), c["kind"]
    oid = table.oid if table is not None else None
    where = table.display if table is not None else _entry_display(c)
    cur.execute(_CONSTRAINTS_SQL, (name, oid, oid))
    rows = cur.fetchall()
    if not rows and kind == "unique":  # a unique index rather than a constraint
        cur.execute(_INDEX_SQL, (name, oid, oid))
        irow = cur.fetchone()
        if irow:
            entry.update(exists=True, validated=bool(irow[2]))
            report.touched.add(irow[3])
            if not irow[2]:
                report.fail(f"unique index {name} on {irow[4]} is INVALID")
            return
    if not rows:
        report.fail(f"constraint {name} on {where} does not exist")
        return
    row = rows[0]
    report.touched.add(row[11])
    entry.update(exists=True, validated=bool(row[4]))
    if not row[4]:
        report.fail(f"constraint {name} on {row[12]} is NOT VALID")
    _recount_constraint(report, cur, name, row)


def check_constraints(report: VerifyReport, cur: Any, plan: Mapping[str, Any]) -> None:
    """Check 2 (see the module docstring)."""
    for c in plan.get("checks") or []:
        if not isinstance(c, Mapping) or c.get("kind") not in CONSTRAINT_KINDS:
            continue
        if c.get("presentAtTarget") is False:  # validated on the way, dropped by a later statement
            continue
        table = resolve_table(cur, c)
        schema, relname, display = table_fields(c)
        entry: dict[str, Any] = {"name": str(c["name"]), "schema": schema, "table": relname or display,
                                 "exists": False, "validated": False}
        report.constraints.append(entry)
        if c["kind"] == "notnull":
            _check_notnull(report, cur, c, entry, table)
        else:
            _check_named_constraint(report, cur, c, entry, table)


# --------------------------------------------------------------------------------------------------------------
# 3. indexes and 4. leftovers


def check_indexes(report: VerifyReport, cur: Any, plan: Mapping[str, Any]) -> None:
    """Check 3 (see the module docstring)."""
    for ix in plan.get("indexes") or []:
        if not isinstance(ix, Mapping) or not ix.get("name"):
            continue
        table = resolve_table(cur, ix)
        if table is None and (ix.get("table") or ix.get("relname")):
            rows: list[Any] = []
        else:
            oid = table.oid if table is not None else None
            cur.execute(_INDEX_SQL, (str(ix["name"]), oid, oid))
            rows = cur.fetchall()
        valid = bool(rows and rows[0][2])
        report.indexes.append({"name": ix["name"], "valid": valid})
        if not rows:
            report.fail(f"index {ix['name']} does not exist")
            continue
        report.touched.add(rows[0][3])
        if not valid:
            report.fail(f"index {ix['name']} is INVALID")


_USER_TABLES_SQL = """
SELECT t.oid FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%%'
"""


def check_leftovers(report: VerifyReport, cur: Any, plan: Mapping[str, Any]) -> None:
    """Check 4 (see the module docstring)."""
    if plan.get("partial") or (not plan.get("checks") and not plan.get("indexes")):
        cur.execute(_USER_TABLES_SQL)
        report.touched |= {r[0] for r in cur.fetchall()}
    if not report.touched:
        return
    oids = sorted(report.touched)
    cur.execute("SELECT c.conname, c.conrelid::regclass::text FROM pg_constraint c "
                "WHERE NOT c.convalidated AND c.conrelid = ANY(%s::oid[]) ORDER BY 2, 1", (oids,))
    listed = {e["name"] for e in report.constraints}
    # constraints the target revision leaves NOT VALID on purpose (a later revision validates them)
    intended = {e.get("name") for e in plan.get("notValid") or [] if isinstance(e, Mapping)}
    for conname, tbl in cur.fetchall():
        if conname in intended:
            report.not_valid.append({"name": conname, "table": tbl})
        elif conname not in listed:
            report.fail(f"constraint {conname} on {tbl} is NOT VALID")
    cur.execute("SELECT ic.relname, i.indrelid::regclass::text FROM pg_index i "
                "JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = ANY(%s::oid[]) "
                "AND NOT (i.indisvalid AND i.indisready AND i.indislive) ORDER BY 2, 1", (oids,))
    listed = {e["name"] for e in report.indexes}
    for iname, tbl in cur.fetchall():
        if iname not in listed:
            report.fail(f"index {iname} on {tbl} is INVALID")


def check_downgrade(report: VerifyReport, url: str, plan: Mapping[str, Any]) -> None:
    """After a downgrade (the plan's ``downgrade.removes``: ``{kind: ["schema.table[.name]"]}``, what
    ``alembic downgrade`` removed in the precheck's shadow): every such table, column, constraint and index is gone
    from the database (``runner.inject.downgrade.CATALOG_SQL``)."""
    down = plan.get("downgrade")
    if not isinstance(down, Mapping):
        return
    from schemagate.runner.downgrade import catalog
    from schemagate.runner.inject.downgrade import dotted

    now = dotted(catalog(url))
    for kind, names_ in (down.get("removes") or {}).items():
        if kind not in now:  # ("truncated": what was not listed)
            continue
        for name in names_ or []:
            if name in set(now.get(kind) or []):
                report.fail(f"{kind[:-1]} {name} is still there after the downgrade")


# --------------------------------------------------------------------------------------------------------------
# 5. counts


def check_counts(report: VerifyReport, url: str, users: Sequence[Any], statement_timeout: str) -> int:
    """Check 5 (see the module docstring): returns how many checks were counted."""
    from schemagate.analysis import counting

    checks = report.recount + list(users)
    if checks:
        with _connect(url) as conn:
            counting.run_counts(conn, checks, counting.CountOptions(statement_timeout=statement_timeout,
                                                                   application_name="schemagate-verify"))
    for c in checks:
        report.checks.append({"name": c.name, "table": c.table, "kind": c.kind, "definition": c.definition,
                              "count": c.count, **({"note": f"error: {c.error}"} if c.error else {})})
        if c.error:
            report.fail(f"check {c.name} could not be evaluated: {c.error}")
        elif c.count:
            report.fail(f"check {c.name}" + (f" on {c.table}" if c.table else "")
                        + f" counts {c.count} violating row(s)")
    return len(checks)


# --------------------------------------------------------------------------------------------------------------
# The step


def _plan_user_checks(plan: Mapping[str, Any], user_checks: Iterable[Any]) -> list[Any]:
    """The user checks given (``UserCheck.parse_all``: a repeated name is ``InvalidInput``) followed by the plan's
    user checks (the precheck's, usually the same ones) whose names were not given, as counting checks."""
    from schemagate.analysis import counting

    given = UserCheck.parse_all(user_checks, "--check")
    names_given = {c.name for c in given}
    from_plan = [UserCheck.parse({"name": c.get("name"), "sql": c.get("definition"), "table": c.get("table")},
                                 "--plan checks")
                 for c in plan.get("checks") or []
                 if isinstance(c, Mapping) and c.get("kind") == "user" and c.get("name") not in names_given]
    return [counting.user(c.name, c.sql, table=c.table) for c in (*given, *from_plan)]


def _finish(step: StepBoundary, report: VerifyReport, counted: int) -> StepResult:
    if report.failures:
        msg = f"verification failed ({len(report.failures)} problem(s)): " + "; ".join(report.failures[:3])
        return step.finish(Outcome.CHECKS_FAILED, "VerificationFailed", msg[:600])
    return step.succeed("Verified", f"verified: at revision {report.current_revision}, {len(report.constraints)} "
                                    f"constraint(s) valid, {len(report.indexes)} index(es) valid, {counted} check(s) "
                                    f"count 0")


def verify(
    target: Target,
    *,
    plan: Mapping[str, Any] | None = None,
    user_checks: Iterable[Any] = (),
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    statement_timeout: str = "1h",
) -> StepResult:
    """Run the named checks (see the module docstring) and return one StepResult. Never raises."""
    report = VerifyReport()
    with StepBoundary(STEP) as step:
        try:
            target = target.resolved()
            url = target.database_url
            plan = dict(plan or {})
            users = _plan_user_checks(plan, user_checks)
            vt = plan_version_table(plan, version_table, version_table_schema)
            with shared_connections(url):  # the checks and the counts ask on one session
                with _connect(url) as conn, conn.cursor() as cur:
                    cur.execute("SELECT set_config('statement_timeout', %s, false)", (statement_timeout,))
                    check_revisions(report, cur, plan, target, vt)
                    check_constraints(report, cur, plan)
                    check_indexes(report, cur, plan)
                    check_leftovers(report, cur, plan)
                check_downgrade(report, url, plan)
                counted = check_counts(report, url, users, statement_timeout)
        finally:  # what was checked so far is in the result, also when a check failed to run
            step.data.update(report.as_data())
        _finish(step, report, counted)
    return step.result
