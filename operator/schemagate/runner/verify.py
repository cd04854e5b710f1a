"""The verify step: after migrating, prove that the database is where the plan said it would be.

Checks (each failure is one line in ``data.failures``; any failure -> ``ChecksFailed``/``VerificationFailed``):

1. the current revision equals the target (read with the Alembic project when ``config_path`` is given, else
   straight from the version table, e.g. in the operator's image where the project is absent);
2. every constraint the revisions added (the plan's checks of kind check/foreignkey/unique) exists and
   ``pg_constraint.convalidated``; NOT NULL ones are ``attnotnull``;
3. every index the revisions added has ``indisvalid AND indisready AND indislive``;
4. no NOT VALID constraint and no invalid index is left on a touched table (every user table without a plan);
5. recount: the plan's checks, rebuilt from the live catalog, count 0 violating rows with the precheck's own
   counting (``schemagate.analysis.counting``: PostgreSQL semantics, one scan per table), and so do the user
   checks (SQL returning a count).

The plan is the precheck result's ``data`` (``{targetRevision, checks, indexes, ...}``) or the whole precheck
StepResult, given as JSON through ``--plan FILE`` or the environment variable of ``--plan-env``
(``SCHEMAGATE_PLAN`` in the verify Job).

Public API: ``verify(config_path=None, target="head", url=None, url_env="DATABASE_URL", *, plan=None,
user_checks=(), version_table="alembic_version", statement_timeout="1h") -> StepResult``;
``load_plan(path=None, env=None) -> dict | None``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from schemagate.runner import db
from schemagate.runner.result import Outcome, StepResult, now

STEP = "verify"
PLAN_ENV = "SCHEMAGATE_PLAN"
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
            raise db.InvalidInputError(f"--plan: cannot read {path}: {e.strerror}") from e
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
        raise db.InvalidInputError(f"{source}: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise db.InvalidInputError(f"{source}: expected a JSON object")
    if doc.get("kind") == "StepResult":
        doc = dict(doc.get("data") or {})
    return doc


def _connect(url: str) -> Any:
    import psycopg

    conninfo, password = db.libpq_url_and_password(url)
    kw: dict[str, Any] = {"autocommit": True, "connect_timeout": 15, "application_name": "schemagate-verify"}
    if password is not None:
        kw["password"] = password
    return psycopg.connect(conninfo, **kw)


def _table_matches(display: str | None, schema: str, relname: str) -> bool:
    if not display:
        return True
    return display in (relname, f"{schema}.{relname}", f'"{schema}"."{relname}"')


_CONSTRAINTS_SQL = """
SELECT c.conname, n.nspname, t.relname, c.contype, c.convalidated, pg_get_constraintdef(c.oid),
       pg_get_expr(c.conbin, c.conrelid),
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[],
       fn.nspname, ft.relname,
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.ord)::text[],
       c.confmatchtype, t.oid
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_class ft ON ft.oid = c.confrelid
LEFT JOIN pg_namespace fn ON fn.oid = ft.relnamespace
WHERE c.conname = %s
"""

_INDEX_SQL = """
SELECT n.nspname, t.relname, i.indisvalid AND i.indisready AND i.indislive, t.oid, ic.relname
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE ic.relname = %s
"""

_USER_TABLES_SQL = """
SELECT t.oid FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%%'
"""


def _notnull_column(definition: str) -> str | None:
    m = re.match(r'^\s*"((?:[^"]|"")+)"\s+NOT NULL', definition or "") or re.match(r"^\s*(\w+)\s+NOT NULL",
                                                                                   definition or "")
    return m.group(1).replace('""', '"') if m else None


def _unique_keys(cur: Any, conname: str, table_oid: int) -> list[str]:
    cur.execute(
        "SELECT pg_get_indexdef(c.conindid, k, true) FROM pg_constraint c, "
        "generate_series(1, (SELECT indnkeyatts FROM pg_index WHERE indexrelid = c.conindid)) k "
        "WHERE c.conname = %s AND c.conrelid = %s ORDER BY k",
        (conname, table_oid),
    )
    return [r[0] for r in cur.fetchall()]


def _current_revision(cur: Any, version_table: str) -> str | None:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (version_table,))
    if not cur.fetchone()[0]:
        return None
    from schemagate.analysis.counting import quote_ident

    parts = version_table.split(".")
    name = ".".join(quote_ident(p) for p in parts)
    cur.execute(f"SELECT version_num FROM {name}")  # noqa: S608 - identifier quoted
    rows = [r[0] for r in cur.fetchall()]
    return ",".join(rows) if rows else None


def verify(
    config_path: str | os.PathLike[str] | None = None,
    target: str | None = "head",
    url: str | None = None,
    url_env: str | None = db.DEFAULT_URL_ENV,
    *,
    plan: Mapping[str, Any] | None = None,
    user_checks: Iterable[Any] = (),
    version_table: str = "alembic_version",
    statement_timeout: str = "1h",
) -> StepResult:
    """Verify revision, constraints, indexes and counts (see the module docstring). Never raises."""
    started = now()
    data: dict[str, Any] = {"currentRevision": None, "targetRevision": None, "constraints": [], "indexes": [],
                            "checks": [], "failures": []}
    failures: list[str] = data["failures"]
    try:
        from schemagate.analysis import counting

        url = db.resolve_url(url, url_env)
        plan = dict(plan or {})
        users = _parse_user_checks(list(user_checks) + [
            {"name": c["name"], "sql": c["definition"], "table": c.get("table")}
            for c in plan.get("checks") or [] if isinstance(c, Mapping) and c.get("kind") == "user"
        ])
        # 1. revision
        wanted = plan.get("targetRevision") or target
        if config_path is not None:
            from schemagate.runner.inject.revisions import plan as alembic_plan

            p = alembic_plan(config_path, wanted, url, url_env)
            data["currentRevision"], data["targetRevision"] = p["current"], p["target"]
            if p["pending"]:
                failures.append(f"revision {p['current'] or 'base'} is not the target {p['target']}: "
                                f"{len(p['pending'])} revision(s) pending ({', '.join(p['pending'])})")
        with _connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, false)", (statement_timeout,))
            if config_path is None:
                cur_rev = _current_revision(cur, version_table)
                data["currentRevision"], data["targetRevision"] = cur_rev, wanted
                if not wanted or wanted in ("head", "heads"):
                    raise db.InvalidInputError("verify needs the target revision id: give -c/--config (the Alembic "
                                               "project) or a plan (--plan/--plan-env) with targetRevision")
                if cur_rev != wanted:
                    failures.append(f"the database is at revision {cur_rev or 'base'}, not the target {wanted}")
            # 2. constraints
            touched: set[int] = set()
            recount: list[Any] = []
            for c in plan.get("checks") or []:
                if not isinstance(c, Mapping) or c.get("kind") not in CONSTRAINT_KINDS:
                    continue
                if c.get("presentAtTarget") is False:  # validated on the way, dropped by a later statement
                    continue
                name, table, kind = str(c["name"]), c.get("table"), c["kind"]
                entry: dict[str, Any] = {"name": name, "schema": c.get("schema"), "table": table, "exists": False,
                                         "validated": False}
                data["constraints"].append(entry)
                if "schema" in c:  # schema and table as separate fields (precheck results since issue 9)
                    schema, rel = str(c.get("schema") or ""), str(table or "")
                else:  # an older plan: "schema.table"
                    schema, _, rel = (table or "").rpartition(".")
                if kind == "notnull":
                    col = c.get("column") or _notnull_column(str(c.get("definition") or ""))
                    cur.execute(
                        "SELECT a.attnotnull, t.oid FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid "
                        "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE t.relname = %s "
                        "AND (%s = '' OR n.nspname = %s) AND a.attname = %s AND NOT a.attisdropped",
                        (rel, schema, schema, col or ""),
                    )
                    row = cur.fetchone()
                    if row:
                        entry.update(exists=True, validated=bool(row[0]))
                        touched.add(row[1])
                        recount.append(counting.notnull(name, schema or None, rel, col or ""))
                    if not row or not row[0]:
                        failures.append(f"{table}.{col} is not NOT NULL")
                    continue
                cur.execute(_CONSTRAINTS_SQL, (name,))
                rows = [r for r in cur.fetchall()
                        if (r[1], r[2]) == (schema, rel) or (not schema and _table_matches(rel, r[1], r[2]))]
                if not rows and kind == "unique":  # a unique index rather than a constraint
                    cur.execute(_INDEX_SQL, (name,))
                    irow = cur.fetchone()
                    if irow:
                        entry.update(exists=True, validated=bool(irow[2]))
                        touched.add(irow[3])
                        if not irow[2]:
                            failures.append(f"unique index {name} on {table} is INVALID")
                        continue
                if not rows:
                    failures.append(f"constraint {name} on {table} does not exist")
                    continue
                (conname, nsp, rel, contype, validated, condef, expr, cols, fnsp, frel, fcols, matchtype,
                 toid) = rows[0]
                touched.add(toid)
                entry.update(exists=True, validated=bool(validated))
                if not validated:
                    failures.append(f"constraint {name} on {table} is NOT VALID")
                if contype == "c" and expr:
                    recount.append(counting.check_(name, nsp, rel, expr))
                elif contype == "f" and cols and fcols:
                    recount.append(counting.foreign_key(name, nsp, rel, list(cols), fnsp, frel, list(fcols),
                                                        match_full=matchtype == "f"))
                elif contype == "u":
                    keys = _unique_keys(cur, conname, toid)
                    if keys:
                        recount.append(counting.unique(name, nsp, rel, keys))
            # 3. indexes
            for ix in plan.get("indexes") or []:
                if not isinstance(ix, Mapping) or not ix.get("name"):
                    continue
                cur.execute(_INDEX_SQL, (str(ix["name"]),))
                rows = [r for r in cur.fetchall() if _table_matches(ix.get("table"), r[0], r[1])]
                valid = bool(rows and rows[0][2])
                data["indexes"].append({"name": ix["name"], "valid": valid})
                if rows:
                    touched.add(rows[0][3])
                if not rows:
                    failures.append(f"index {ix['name']} does not exist")
                elif not valid:
                    failures.append(f"index {ix['name']} is INVALID")
            # 4. leftovers on touched tables (every user table without a plan)
            if not plan.get("checks") and not plan.get("indexes"):
                cur.execute(_USER_TABLES_SQL)
                touched |= {r[0] for r in cur.fetchall()}
            if touched:
                oids = sorted(touched)
                cur.execute("SELECT c.conname, c.conrelid::regclass::text FROM pg_constraint c "
                            "WHERE NOT c.convalidated AND c.conrelid = ANY(%s::oid[]) ORDER BY 2, 1", (oids,))
                listed = {e["name"] for e in data["constraints"]}
                # constraints the target revision leaves NOT VALID on purpose (a later revision validates them)
                intended = {e.get("name") for e in plan.get("notValid") or [] if isinstance(e, dict)}
                for conname, tbl in cur.fetchall():
                    if conname in intended:
                        data.setdefault("notValid", []).append({"name": conname, "table": tbl})
                    elif conname not in listed:
                        failures.append(f"constraint {conname} on {tbl} is NOT VALID")
                cur.execute("SELECT ic.relname, i.indrelid::regclass::text FROM pg_index i "
                            "JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = ANY(%s::oid[]) "
                            "AND NOT (i.indisvalid AND i.indisready AND i.indislive) ORDER BY 2, 1", (oids,))
                listed = {e["name"] for e in data["indexes"]}
                for iname, tbl in cur.fetchall():
                    if iname not in listed:
                        failures.append(f"index {iname} on {tbl} is INVALID")
        # 5. recount with the precheck's counting (PostgreSQL semantics)
        checks = recount + users
        if checks:
            with _connect(url) as conn:
                counting.run_counts(conn, checks, counting.CountOptions(statement_timeout=statement_timeout))
        for c in checks:
            data["checks"].append({"name": c.name, "table": c.table, "kind": c.kind, "definition": c.definition,
                                   "count": c.count, **({"note": f"error: {c.error}"} if c.error else {})})
            if c.error:
                failures.append(f"check {c.name} could not be evaluated: {c.error}")
            elif c.count:
                failures.append(f"check {c.name}" + (f" on {c.table}" if c.table else "")
                                + f" counts {c.count} violating row(s)")
        if failures:
            msg = f"verification failed ({len(failures)} problem(s)): " + "; ".join(failures[:3])
            return StepResult(step=STEP, outcome=Outcome.CHECKS_FAILED, reason="VerificationFailed",
                              message=db.redact(msg[:600]), data=data, started_at=started).finish()
        msg = (f"verified: at revision {data['currentRevision']}, {len(data['constraints'])} constraint(s) valid, "
               f"{len(data['indexes'])} index(es) valid, {len(checks)} check(s) count 0")
        return StepResult(step=STEP, outcome=Outcome.SUCCEEDED, reason="Verified", message=msg, data=data,
                          started_at=started).finish()
    except Exception as e:  # noqa: BLE001 - every failure becomes a StepResult
        outcome, reason, msg = db.classify_error(e)
        return StepResult(step=STEP, outcome=outcome, reason=reason, message=db.redact(msg), data=data,
                          started_at=started).finish()


def _parse_user_checks(items: Iterable[Any]) -> list[Any]:
    """User checks: ``{"name", "sql", "table"?}``, ``(name, sql)`` or ``"NAME=SQL"``."""
    from schemagate.analysis import counting

    out = []
    seen: set[str] = set()
    for it in items:
        if isinstance(it, counting.Check):
            c = it
        elif isinstance(it, str):
            name, sep, sql = it.partition("=")
            if not sep or not name.strip() or not sql.strip():
                raise db.InvalidInputError(f"--check: {it!r} is not NAME=SQL")
            c = counting.user(name.strip(), sql)
        elif isinstance(it, Mapping):
            c = counting.user(str(it.get("name") or ""), str(it.get("sql") or ""), table=it.get("table"))
        else:
            name, sql = it
            c = counting.user(str(name), str(sql))
        if c.name in seen:
            continue
        seen.add(c.name)
        out.append(c)
    return out
