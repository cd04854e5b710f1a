"""Derive the checks to count by diffing the catalog of the real database against the shadow database (the
real schema with the pending revisions applied).

A constraint is *new* when it is in the shadow but the real database has no *validated* constraint of the same
kind and definition on the same table (a NOT VALID one that the revisions validate is new). Only new constraints
on tables and columns that already exist can have violating rows; the others are reported as skipped with a note.

- CHECK: new when no validated CHECK on the table has the same expression (``pg_get_constraintdef``).
- NOT NULL: ``pg_attribute.attnotnull`` (PostgreSQL 18: and a validated NOT NULL constraint) set in the shadow only.
- UNIQUE (constraints, primary keys and unique indexes alike, from ``pg_index``): new when no valid unique
  index of the same shape (definition without its name, so NULLS NOT DISTINCT and partial predicates count)
  exists.
- FOREIGN KEY: new when no validated FK has the same columns, referenced table/columns and MATCH type (the
  ON DELETE/UPDATE actions do not change which rows pass).
- Exclusion constraints are not counted (reported skipped).
- New indexes (any kind) are listed for the verify step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemagate.analysis import counting
from schemagate.analysis.catalog import Catalog, Constraint, Table
from schemagate.analysis.counting import Check


@dataclass
class Derivation:
    checks: list[Check] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # constraints the target revision deliberately leaves NOT VALID (validated by a later revision):
    # verify expects them to exist, not to be validated
    not_valid: list[dict[str, str]] = field(default_factory=list)

    @property
    def counted(self) -> list[Check]:
        return [c for c in self.checks if not c.skipped]


def _fk_shape(c: Constraint) -> tuple[Any, ...]:
    return (c.schema, c.relname, c.columns, c.ref_schema, c.ref_relname, c.ref_columns, c.match_type)


def _skip(check: Check, why: str) -> Check:
    check.skipped = True
    check.note = f"skipped: {why}"
    return check


def _has_unique_index(real: Catalog, schema: str | None, relname: str | None, cols: Iterable[str]) -> bool:
    want = set(cols)
    for ix in real.indexes:
        if (ix.schema, ix.relname) == (schema, relname) and ix.unique and ix.valid and ix.predicate is None \
                and not ix.has_expressions and set(ix.keys) and _unquoted(ix.keys) == want:
            return True
    return False


def _unquoted(keys: Iterable[str]) -> set[str]:
    out = set()
    for k in keys:
        if k.startswith('"') and k.endswith('"'):
            out.add(k[1:-1].replace('""', '"'))
        else:
            out.add(k)
    return out


def _created_by_pending(table: Table | None, columns: Iterable[str]) -> str | None:
    """Why a check cannot have violating rows yet: its table or some of its columns are new; None otherwise."""
    if table is None:
        return "table created by the pending revisions"
    missing = [col for col in columns if col not in table.columns]
    return "column(s) created by the pending revisions: " + ", ".join(missing) if missing else None


def derive(real: Catalog, shadow: Catalog) -> Derivation:
    """The checks (``counting.Check``) and new indexes implied by the shadow's extra constraints."""
    d = Derivation()
    new_tables = sorted(k for k in shadow.tables if k not in real.tables)
    if new_tables:
        shown = ", ".join(f"{s}.{t}" for s, t in new_tables[:10]) + (" ..." if len(new_tables) > 10 else "")
        d.notes.append(f"{len(new_tables)} table(s) created by the pending revisions (no rows to check): {shown}")

    def table_of(schema: str, relname: str) -> Table | None:
        return real.tables.get((schema, relname))

    # --- CHECK and FOREIGN KEY -----------------------------------------------------------------------------
    real_checks = {(c.schema, c.relname, c.definition) for c in real.constraints if c.contype == "c" and c.validated}
    real_fks = {_fk_shape(c) for c in real.constraints if c.contype == "f" and c.validated}
    real_by_name = {(c.schema, c.relname, c.name): c for c in real.constraints}
    for c in shadow.constraints:
        if not c.validated:  # NOT VALID: existing rows are not checked when it is added
            if (c.schema, c.relname, c.name) not in real_by_name:
                d.not_valid.append({"name": c.name, "table": f"{c.schema}.{c.relname}"})
            continue
        t = table_of(c.schema, c.relname)
        previously = real_by_name.get((c.schema, c.relname, c.name))
        if c.contype == "c":
            if (c.schema, c.relname, c.definition) in real_checks:
                continue
            assert c.expr is not None
            chk = counting.check_(c.name, c.schema, c.relname, c.expr, definition=c.definition)
            chk.only = bool(c.no_inherit and t is not None and t.has_children)
        elif c.contype == "f":
            assert c.ref_relname is not None
            chk = counting.foreign_key(c.name, c.schema, c.relname, c.columns, c.ref_schema, c.ref_relname,
                                       c.ref_columns, match_full=c.match_type == "f", definition=c.definition)
            if _fk_shape(c) in real_fks:
                same = [o for o in real.constraints if o.contype == "f" and o.validated and _fk_shape(o) == _fk_shape(c)]
                if not any(o.name == c.name and o.definition == c.definition for o in same):
                    d.checks.append(_skip(chk, f"the database already enforces the same key ({same[0].name}); "
                                               "only the name or the ON DELETE/UPDATE actions change"))
                continue
            chk.only = bool(t is not None and t.relkind != "p" and t.has_children)
            if c.match_type == "p":
                chk.note = "MATCH PARTIAL is not implemented by PostgreSQL; counted as MATCH SIMPLE"
        elif c.contype == "x":
            if any(o.contype == "x" and o.table == c.table and o.definition == c.definition and o.validated
                   for o in real.constraints):
                continue
            chk = Check(name=c.name, kind="unique", table=f"{c.schema}.{c.relname}", schema=c.schema,
                        relname=c.relname, definition=c.definition)
            d.checks.append(_skip(chk, "exclusion constraints are not counted"))
            continue
        else:
            continue
        if previously is not None and previously.contype == c.contype and not previously.validated \
                and previously.definition == c.definition:
            chk.note = "NOT VALID in the database; validated by the pending revisions"
        new_why = _created_by_pending(t, c.columns)
        if t is None or new_why:
            d.checks.append(_skip(chk, new_why or "table created by the pending revisions"))
            continue
        if c.contype == "f":
            parent = table_of(c.ref_schema or "", c.ref_relname or "")
            if parent is None:
                chk.ref_is_new = True
                chk.note = ("referenced table created by the pending revisions: every non-NULL reference "
                            "counts unless a revision fills that table")
            else:
                pmissing = [col for col in c.ref_columns if col not in parent.columns]
                if pmissing:
                    d.checks.append(_skip(chk, "referenced column(s) created by the pending revisions: "
                                          + ", ".join(pmissing)))
                    continue
                chk.ref_unique = _has_unique_index(real, c.ref_schema, c.ref_relname, c.ref_columns)
                chk.extra["ref_only"] = parent.relkind != "p" and parent.has_children
        d.checks.append(chk)

    # --- NOT NULL ------------------------------------------------------------------------------------------
    for key, st in sorted(shadow.tables.items()):
        t = real.tables.get(key)
        if t is None or st.is_partition:
            continue
        for col, nn in st.columns.items():
            if not nn or col not in t.columns or t.columns[col]:
                continue
            chk = counting.notnull(f"{st.relname}.{col} NOT NULL", st.schema, st.relname, col)
            d.checks.append(chk)

    # --- UNIQUE and new indexes ----------------------------------------------------------------------------
    real_shapes = {(ix.schema, ix.relname, ix.shape) for ix in real.indexes if ix.valid}
    real_names = {(ix.schema, ix.relname, ix.name): ix for ix in real.indexes}
    for ix in shadow.indexes:
        if (ix.schema, ix.relname, ix.shape) in real_shapes:
            continue
        t = table_of(ix.schema, ix.relname)
        d.indexes.append({"name": ix.name, "table": f"{ix.schema}.{ix.relname}", "definition": ix.definition})
        if not ix.unique:
            continue
        name = ix.constraint or ix.name
        chk = counting.unique(name, ix.schema, ix.relname, ix.keys, predicate=ix.predicate,
                              nulls_not_distinct=ix.nulls_not_distinct)
        if ix.primary:
            chk.definition = "PRIMARY KEY (" + ", ".join(ix.keys) + ")"
        elif not ix.constraint:
            chk.definition = ix.definition
        old = real_names.get((ix.schema, ix.relname, ix.name))
        if old is not None and not old.valid and old.shape == ix.shape:
            chk.note = "INVALID index in the database; rebuilt by the pending revisions"
        new_why = _created_by_pending(t, ix.columns)
        if t is None or new_why:
            d.checks.append(_skip(chk, new_why or "table created by the pending revisions"))
            continue
        chk.only = t.relkind != "p" and t.has_children
        d.checks.append(chk)
    return d


def attribute_revisions(checks: Iterable[Check], statements: list[dict[str, Any]], pending: list[str]) -> None:
    """Fill ``check.revision`` from the statements captured in the shadow run (``{revision, sql}``).

    The revision whose DDL mentions the constraint's name (NOT NULL: the column and ``NOT NULL``/``nullable``)
    wins; with exactly one pending revision that one is used.
    """
    for c in checks:
        if c.revision or c.kind == "user":
            continue
        if len(pending) == 1:
            c.revision = pending[0]
            continue
        needles: list[str]
        if c.kind == "notnull":
            needles = [c.columns[0].lower()]
        else:
            needles = [c.name.lower()]
        for st in statements:
            sql = str(st.get("sql", "")).lower()
            if st.get("revision") and all(n in sql for n in needles) and \
                    (c.kind != "notnull" or "not null" in sql or "primary key" in sql):
                c.revision = st["revision"]
                break
