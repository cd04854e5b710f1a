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

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from schemagate.analysis import catalog, counting
from schemagate.analysis.catalog import Catalog, Constraint, Table
from schemagate.analysis.checkkey import check_key
from schemagate.analysis.counting import Check
from schemagate.contract.sqlkind import Statement


class NewIndex(TypedDict):
    """An index the pending revisions create (``data.indexes``: verify expects it valid)."""

    name: str
    schema: str
    table: str
    definition: str


@dataclass
class Derivation:
    checks: list[Check] = field(default_factory=list)
    indexes: list[NewIndex] = field(default_factory=list)
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
    """The checks (``counting.Check``) and new indexes implied by the shadow's extra constraints, in this order:
    CHECK / FOREIGN KEY / EXCLUDE constraints, NOT NULL columns, UNIQUE and new indexes (rules in the module
    docstring)."""
    d = Derivation()
    new_tables = sorted(k for k in shadow.tables if k not in real.tables)
    if new_tables:
        shown = ", ".join(f"{s}.{t}" for s, t in new_tables[:10]) + (" ..." if len(new_tables) > 10 else "")
        d.notes.append(f"{len(new_tables)} table(s) created by the pending revisions (no rows to check): {shown}")
    _derive_constraints(real, shadow, d)
    _derive_notnull(real, shadow, d)
    _derive_indexes(real, shadow, d)
    return d


def _derive_constraints(real: Catalog, shadow: Catalog, d: Derivation) -> None:
    """CHECK, FOREIGN KEY and EXCLUDE constraints of the shadow that the real database does not enforce yet, into
    ``d.checks`` (NOT VALID ones the real database lacks into ``d.not_valid``)."""
    real_by_name = {(c.schema, c.relname, c.name): c for c in real.constraints}
    real_checks = {(c.schema, c.relname, c.definition) for c in real.constraints if c.contype == "c" and c.validated}
    real_fks = {_fk_shape(c) for c in real.constraints if c.contype == "f" and c.validated}
    for c in shadow.constraints:
        if not c.validated:  # NOT VALID: existing rows are not checked when it is added
            if (c.schema, c.relname, c.name) not in real_by_name:
                d.not_valid.append({"name": c.name, "table": f"{c.schema}.{c.relname}"})
            continue
        t = real.tables.get((c.schema, c.relname))
        if c.contype == "c":
            chk = None if (c.schema, c.relname, c.definition) in real_checks else _new_check_constraint(c, t)
        elif c.contype == "f":
            chk = _new_foreign_key(real, c, t, d, enforced=_fk_shape(c) in real_fks)
        elif c.contype == "x":
            _new_exclusion(real, c, d)
            continue
        else:
            continue
        if chk is None:
            continue
        previously = real_by_name.get((c.schema, c.relname, c.name))
        if previously is not None and previously.contype == c.contype and not previously.validated \
                and previously.definition == c.definition:
            chk.note = "NOT VALID in the database; validated by the pending revisions"
        new_why = _created_by_pending(t, c.columns)
        if t is None or new_why:
            d.checks.append(_skip(chk, new_why or "table created by the pending revisions"))
            continue
        if c.contype == "f" and not _bind_referenced_table(real, c, chk, d):
            continue
        d.checks.append(chk)


def _new_check_constraint(c: Constraint, t: Table | None) -> Check:
    """The check of a new CHECK constraint (``only`` for NO INHERIT on a table with children)."""
    assert c.expr is not None
    chk = counting.check_(c.name, c.schema, c.relname, c.expr, definition=c.definition)
    chk.only = bool(c.no_inherit and t is not None and t.has_children)
    return chk


def _new_foreign_key(real: Catalog, c: Constraint, t: Table | None, d: Derivation, *, enforced: bool) -> Check | None:
    """The check of a FOREIGN KEY; None when a validated key of the same shape exists (``enforced``; reported
    skipped into ``d`` when only its name or ON DELETE/UPDATE actions change)."""
    assert c.ref_relname is not None
    chk = counting.foreign_key(c.name, c.schema, c.relname, c.columns, c.ref_schema, c.ref_relname,
                               c.ref_columns, match_full=c.match_type == "f", definition=c.definition)
    if enforced:
        same = [o for o in real.constraints if o.contype == "f" and o.validated and _fk_shape(o) == _fk_shape(c)]
        if not any(o.name == c.name and o.definition == c.definition for o in same):
            d.checks.append(_skip(chk, f"the database already enforces the same key ({same[0].name}); "
                                       "only the name or the ON DELETE/UPDATE actions change"))
        return None
    chk.only = bool(t is not None and t.relkind != "p" and t.has_children)
    if c.match_type == "p":
        chk.note = "MATCH PARTIAL is not implemented by PostgreSQL; counted as MATCH SIMPLE"
    return chk


def _new_exclusion(real: Catalog, c: Constraint, d: Derivation) -> None:
    """A new EXCLUDE constraint, reported skipped into ``d`` (exclusion constraints are not counted)."""
    if any(o.contype == "x" and o.table == c.table and o.definition == c.definition and o.validated
           for o in real.constraints):
        return
    chk = Check(name=c.name, kind="unique", table=f"{c.schema}.{c.relname}", schema=c.schema,
                relname=c.relname, definition=c.definition)
    d.checks.append(_skip(chk, "exclusion constraints are not counted"))


def _bind_referenced_table(real: Catalog, c: Constraint, chk: Check, d: Derivation) -> bool:
    """Fill what a foreign key check needs about its referenced table (new table: ``ref_is_new``; else
    ``ref_unique`` and ``extra["ref_only"]``); False (and the check reported skipped into ``d``) when the
    referenced columns are created by the pending revisions."""
    parent = real.tables.get((c.ref_schema or "", c.ref_relname or ""))
    if parent is None:
        chk.ref_is_new = True
        chk.note = ("referenced table created by the pending revisions: every non-NULL reference "
                    "counts unless a revision fills that table")
        return True
    pmissing = [col for col in c.ref_columns if col not in parent.columns]
    if pmissing:
        d.checks.append(_skip(chk, "referenced column(s) created by the pending revisions: " + ", ".join(pmissing)))
        return False
    chk.ref_unique = _has_unique_index(real, c.ref_schema, c.ref_relname, c.ref_columns)
    chk.extra["ref_only"] = parent.relkind != "p" and parent.has_children
    return True


def _derive_notnull(real: Catalog, shadow: Catalog, d: Derivation) -> None:
    """Columns of existing tables that are NOT NULL in the shadow only (partitions: counted on the parent)."""
    for key, st in sorted(shadow.tables.items()):
        t = real.tables.get(key)
        if t is None or st.is_partition:
            continue
        for col, nn in st.columns.items():
            if not nn or col not in t.columns or t.columns[col]:
                continue
            d.checks.append(counting.notnull(f"{st.relname}.{col} NOT NULL", st.schema, st.relname, col))


def _derive_indexes(real: Catalog, shadow: Catalog, d: Derivation) -> None:
    """Indexes of the shadow with no valid index of the same shape in the real database: every one into
    ``d.indexes``, the unique ones also as checks."""
    real_shapes = {(ix.schema, ix.relname, ix.shape) for ix in real.indexes if ix.valid}
    real_names = {(ix.schema, ix.relname, ix.name): ix for ix in real.indexes}
    for ix in shadow.indexes:
        if (ix.schema, ix.relname, ix.shape) in real_shapes:
            continue
        t = real.tables.get((ix.schema, ix.relname))
        d.indexes.append({"name": ix.name, "schema": ix.schema, "table": ix.relname, "definition": ix.definition})
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


def attribute_revisions(checks: Iterable[Check], statements: list[Statement], pending: list[str]) -> None:
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


# ==============================================================================================================
# Statement by statement, by identity
#
# The shadow run takes an identity snapshot (``catalog.IdSnapshot``: OIDs and attnums) after every statement of
# the pending revisions. ``step_checks(before, after, ..)`` turns what ONE statement changed into the checks
# PostgreSQL runs on the existing rows while that statement executes:
#
# - NOT NULL: a column of an existing table becomes NOT NULL (``SET NOT NULL``, ``ADD COLUMN .. NOT NULL``,
#   ``ADD PRIMARY KEY``, PostgreSQL 18 ``VALIDATE`` of a NOT NULL constraint);
# - CHECK / FOREIGN KEY / EXCLUDE: a constraint that is validated after the statement and was not (or did not
#   exist) before: ``ADD CONSTRAINT`` without NOT VALID, ``VALIDATE CONSTRAINT``; a constraint cloned onto a
#   partition whose parent constraint already existed (``ATTACH PARTITION``) is counted on that partition;
# - UNIQUE: a valid unique index that is new and has no valid twin of the same shape before (constraints,
#   primary keys and ``CREATE UNIQUE INDEX`` alike; an index attached to an existing partitioned index);
# - domains: ``ALTER DOMAIN .. ADD CONSTRAINT`` / ``VALIDATE CONSTRAINT`` (CHECK with VALUE replaced by the
#   column) and ``SET NOT NULL``, over every column whose type is the domain or a domain over it;
# - partition bounds: an existing table that becomes a partition, or whose partition constraint changes (a new
#   partition next to a DEFAULT partition), counts the rows outside ``pg_get_partition_constraintdef``;
# - type changes: ``ALTER COLUMN .. TYPE``: rows whose value does not convert (modelled cases below, the others
#   are reported not evaluated);
# - a changed generation expression of an existing column: not evaluated.
#
# Tables the statement itself creates have no rows and give no check. ``bind(check, at, origins)`` then points a
# check at the database state ``at`` (the real database before the revisions, or the data-carrying shadow right
# before the statement) by identity: renamed tables and columns are read under their names at that moment, and a
# column that does not exist yet is projected with the value every existing row gets (see ``column_value``).
# ==============================================================================================================

_USING = re.compile(r"\bUSING\s+(.+?)\s*(?:,\s*ALTER\b.*)?;?\s*$", re.I | re.S)
# casts that cannot fail (source type, target type) by name: integer widening, float widening, to numeric
_SAFE_CASTS = {("smallint", "integer"), ("smallint", "bigint"), ("integer", "bigint"), ("real", "double precision"),
               ("smallint", "numeric"), ("integer", "numeric"), ("bigint", "numeric")}


def _rel_display(after: catalog.IdSnapshot, relid: int) -> tuple[str, str, str]:
    r = after.rels[relid]
    return r.schema, r.relname, r.regclass


def _colnames(snap: catalog.IdSnapshot, relid: int, attnums: Iterable[int]) -> tuple[str, ...]:
    return tuple(snap.attrs[(relid, n)].name for n in attnums if (relid, n) in snap.attrs)


def _domain_columns(after: catalog.IdSnapshot, domain: int) -> list[catalog.IdAttr]:
    """Columns whose type is ``domain`` or a domain based on it (recursively)."""
    family = {domain}
    grew = True
    while grew:
        grew = False
        for d in after.domains.values():
            if d.basetype in family and d.oid not in family:
                family.add(d.oid)
                grew = True
    return [a for a in after.attrs.values() if a.typid in family]


_VALUE = re.compile(r"('(?:[^']|'')*')|(\"(?:[^\"]|\"\")*\")|\bVALUE\b")


def replace_value(expr: str, column_sql: str) -> str:
    """A domain CHECK expression with its ``VALUE`` keyword replaced by ``column_sql`` (string literals and quoted
    identifiers are left alone)."""
    return _VALUE.sub(lambda m: m.group(1) or m.group(2) or f"({column_sql})", expr)


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += 1 if ch == "(" else -1 if ch == ")" else 0
        if depth < 0:
            return False
    return depth == 0


def _type_change(before: catalog.IdAttr, after: catalog.IdAttr, after_snap: catalog.IdSnapshot, sql: str,
                 rel: catalog.IdRel) -> Check:
    name = check_key("type", "", schema=rel.schema, table=rel.relname, column=after.name, type_text=after.type)
    chk = Check(name=name, kind="type", definition=f"ALTER COLUMN {after.quoted} TYPE {after.type}"
                + (f" (was {before.type})" if before.type != after.type else ""), column=after.name)
    chk.extra["type"] = after.type
    col = f"t.{counting.quote_ident(after.name)}"
    m = _USING.search(sql or "")
    using = m.group(1).strip() if m else None
    while using and using.startswith("(") and using.endswith(")") and _balanced(using[1:-1]):
        using = using[1:-1].strip()  # USING (state::mood) is USING state::mood
    simple_using = using is None or bool(re.fullmatch(
        r'(?:"?' + re.escape(after.name) + r'"?\s*::\s*[^()]+(?:\(\s*\d+\s*(?:,\s*\d+\s*)?\))?|CAST\s*\(\s*"?'
        + re.escape(after.name) + r'"?\s+AS\s+.+\))', using, re.I | re.S))
    if using is not None:
        chk.definition += f" USING {using}"
    if not simple_using:
        chk.unevaluated = f"the USING expression ({(using or '')[:200]}) is not modelled"
        return chk
    if (before.type, after.type) in _SAFE_CASTS or (after.typcategory == "S" and after.typmod < 0
                                                    and after.typtype == "b"):
        chk.count = 0
        chk.evaluated_by = "cannot-fail"
        chk.note = f"{before.type} to {after.type} converts every value"
        return chk
    if after.typtype == "e" and before.typcategory == "S":  # enum: the text must equal a label exactly
        labels = after_snap.enums.get(after.typid, ())
        arr = "ARRAY[" + ", ".join(counting.quote_literal(x) for x in labels) + "]::text[]" if labels else \
            "ARRAY[]::text[]"
        chk.expr = f"{col} IS NOT NULL AND NOT ({col}::text = ANY ({arr}))"
        chk.note = "enum labels: " + ", ".join(labels)[:300]
        return chk
    if before.typcategory == "S" or before.typid == after.typid:
        if after_snap.server_version_num < 160000:
            chk.unevaluated = "needs pg_input_is_valid (PostgreSQL 16 or later)"
            return chk
        chk.expr = f"{col} IS NOT NULL AND NOT pg_input_is_valid({col}::text, {counting.quote_literal(after.type)})"
        return chk
    chk.unevaluated = f"the conversion from {before.type} to {after.type} is not modelled"
    return chk


@dataclass
class _Statement:
    """One statement of the shadow run: the identity snapshots ``before`` and ``after`` it, its SQL, the tables
    that existed before it (``existing``: only their rows can violate anything) and the columns whose type it
    changed (``retyped``: ``(relid, attnum)``)."""

    before: catalog.IdSnapshot
    after: catalog.IdSnapshot
    sql: str
    existing: set[int] = field(init=False)
    retyped: set[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.existing = {r for r in self.after.rels if r in self.before.rels}
        self.retyped = {(r, n) for (r, n), a in self.after.attrs.items() if r in self.existing
                        and (r, n) in self.before.attrs
                        and (a.typid, a.typmod) != (self.before.attrs[(r, n)].typid, self.before.attrs[(r, n)].typmod)}

    def place(self, chk: Check, relid: int) -> Check:
        """``chk`` pointed at the relation ``relid`` of ``after`` (schema, name, ``extra["relid"]``/``["after"]``)
        with the statement that runs it."""
        schema, rel, _ = _rel_display(self.after, relid)
        chk.schema, chk.relname, chk.table = schema, rel, f"{schema}.{rel}"
        chk.extra.update(relid=relid, after=self.after)
        chk.statement = self.sql[:500] if self.sql else None
        return chk


def step_checks(before: catalog.IdSnapshot, after: catalog.IdSnapshot, sql: str = "") -> list[Check]:
    """The checks PostgreSQL runs on existing rows while ONE statement changes ``before`` into ``after``.

    Each check carries ``extra["relid"]`` (and for a foreign key ``extra["ref_relid"]``), the OIDs of the shadow
    in which the snapshots were taken, and ``extra["after"]``, the snapshot whose names its SQL uses; pass it to
    :func:`bind` before counting. The kinds, in this order: NOT NULL, STORED generated columns, CHECK / FOREIGN
    KEY / EXCLUDE, domains, UNIQUE, type and generation-expression changes, partition bounds."""
    st = _Statement(before, after, sql)
    out = [*_notnull_checks(st), *_generated_column_checks(st), *_constraint_checks(st), *_domain_checks(st),
           *_unique_checks(st), *_column_change_checks(st), *_partition_bound_checks(st)]
    _read_converted_columns(st, out)
    return out


def _notnull_checks(st: _Statement) -> list[Check]:
    """NOT NULL set on columns of existing tables (a partition's column is counted on its parent, whose scan
    includes it)."""
    before, after = st.before, st.after
    out: list[Check] = []
    new_nn = {(r, n) for (r, n), a in after.attrs.items() if r in st.existing and a.notnull
              and not ((r, n) in before.attrs and before.attrs[(r, n)].notnull)}
    for (r, n) in sorted(new_nn):
        a = after.attrs[(r, n)]
        parent = after.rels[r].parent
        if parent is not None and any(pa.name == a.name and (parent, pa.attnum) in new_nn
                                      for pa in after.columns_of(parent)):
            continue  # counted on the parent, whose scan includes this child
        rel = after.rels[r]
        chk = counting.notnull(check_key("notnull", "", schema=rel.schema, table=rel.relname, column=a.name),
                               None, rel.relname, a.name)
        chk.column = a.name
        chk.extra["identity"] = ("attr", r, n)
        out.append(st.place(chk, r))
    return out


def _generated_column_checks(st: _Statement) -> list[Check]:
    """STORED generated columns added to existing tables: the expression runs on every row (it may raise)."""
    out: list[Check] = []
    for (r, n), a in sorted(st.after.attrs.items()):
        if r in st.existing and (r, n) not in st.before.attrs and a.generated == "s" \
                and not st.after.rels[r].is_partition:
            rel = st.after.rels[r]
            where = check_key("notnull", "", schema=rel.schema, table=rel.relname, column=a.name)
            chk = Check(name=where.removesuffix(" NOT NULL") + " GENERATED", kind="generated", column=a.name,
                        columns=(a.name,), definition=f"GENERATED ALWAYS AS ({a.default}) STORED")
            chk.note = "the expression is computed for every existing row: an error there fails the statement"
            out.append(st.place(chk, r))
    return out


def _constraint_checks(st: _Statement) -> list[Check]:
    """CHECK, FOREIGN KEY and EXCLUDE constraints validated by the statement on existing tables: added without
    NOT VALID, validated, or cloned onto a partition whose parent constraint already existed (``only``)."""
    before, after = st.before, st.after
    out: list[Check] = []
    for c in after.cons.values():
        if c.contype not in ("c", "f", "x") or not c.validated or c.relid == 0 or c.relid not in st.existing:
            continue
        old = before.cons.get(c.oid)
        if old is not None and old.validated:
            continue
        only = False
        if c.parent:
            parent_con = before.cons.get(c.parent)
            if parent_con is None or not parent_con.validated:
                continue  # cloned from a constraint the statement adds to the parent: counted there
            only = True
        elif not c.is_local:
            continue  # inherited copy of a parent's new constraint: the parent's scan covers this table
        chk = _constraint_check(st, c, only)
        if chk is None:
            continue
        if old is not None and not old.validated:
            chk.note = "NOT VALID before; validated by this statement"
        cols = _colnames(after, c.relid, c.attnums)
        chk.column = cols[0] if len(cols) == 1 else None
        chk.extra["identity"] = ("con", c.oid)
        out.append(st.place(chk, c.relid))
    return out


def _constraint_check(st: _Statement, c: catalog.IdCon, only: bool) -> Check | None:
    """The check of one CHECK (``c``), FOREIGN KEY (``f``) or EXCLUDE (``x``) constraint; None when what it
    refers to (referenced table, index) is not in the snapshot."""
    after = st.after
    cols = _colnames(after, c.relid, c.attnums)
    t = after.rels[c.relid]
    if c.contype == "c":
        assert c.expr is not None
        chk = counting.check_(c.name, None, t.relname, c.expr, definition=c.definition)
        chk.extra["constraint_definition"] = c.definition
        chk.only = only or bool(c.no_inherit and t.has_children)
        return chk
    if c.contype == "f":
        ref = after.rels.get(c.ref_relid)
        if ref is None:
            return None
        chk = counting.foreign_key(c.name, None, t.relname, cols, ref.schema, ref.relname,
                                   _colnames(after, c.ref_relid, c.ref_attnums), match_full=c.match_type == "f",
                                   definition=c.definition)
        chk.only = only or (t.relkind != "p" and t.has_children)
        chk.extra.update(ref_relid=c.ref_relid, ref_attnums=c.ref_attnums, attnums=c.attnums,
                         match_type=c.match_type)
        if c.match_type == "p":
            chk.note = "MATCH PARTIAL is not implemented by PostgreSQL; counted as MATCH SIMPLE"
        return chk
    ix = after.indexes.get(c.index)
    if ix is None:
        return None
    chk = Check(name=c.name, kind="exclusion", definition=c.definition, keys=ix.keys, predicate=ix.predicate)
    chk.extra["operators"] = c.operators
    chk.only = only
    return chk


def _domain_checks(st: _Statement) -> list[Check]:
    """``ALTER DOMAIN .. ADD CONSTRAINT`` / ``VALIDATE CONSTRAINT`` (CHECK with VALUE replaced by the column)
    and ``SET NOT NULL``, over every column of an existing table whose type is the domain or a domain over it."""
    before, after = st.before, st.after
    out: list[Check] = []
    for c in after.cons.values():
        if c.contype != "c" or not c.validated or c.typid == 0 or c.typid not in before.domains:
            continue
        old = before.cons.get(c.oid)
        if old is not None and old.validated:
            continue
        d = after.domains[c.typid]
        for a in _domain_columns(after, c.typid):
            if a.relid not in st.existing or after.rels[a.relid].is_partition:
                continue
            expr = replace_value(c.expr or c.definition.removeprefix("CHECK "), counting.quote_ident(a.name))
            if c.expr is None:
                continue
            chk = Check(name=c.name, kind="domain-check", expr=expr, column=a.name,
                        definition=f"DOMAIN {d.display} {c.definition}")
            out.append(st.place(chk, a.relid))
    for d in after.domains.values():
        if not d.notnull or d.oid not in before.domains or before.domains[d.oid].notnull:
            continue
        for a in _domain_columns(after, d.oid):
            if a.relid not in st.existing or after.rels[a.relid].is_partition:
                continue
            chk = Check(name=check_key("domain-notnull", d.name, schema=d.schema), kind="domain-notnull",
                        columns=(a.name,), column=a.name, definition=f"DOMAIN {d.display} NOT NULL")
            chk.extra.update(domain_name=d.name, domain_schema=d.schema)
            out.append(st.place(chk, a.relid))
    return out


def _unique_checks(st: _Statement) -> list[Check]:
    """Valid unique indexes (constraints, primary keys, ``CREATE UNIQUE INDEX``) that are new and have no valid
    twin of the same shape before, or are rebuilt on a converted column; an index attached to an existing
    partitioned index is counted on that partition only."""
    before, after = st.before, st.after
    out: list[Check] = []
    before_shapes = {(ix.relid, ix.shape) for ix in before.indexes.values() if ix.valid}
    for ix in after.indexes.values():
        if not ix.unique or not ix.valid or ix.exclusion or ix.relid not in st.existing:
            continue
        old_ix = before.indexes.get(ix.oid)
        converted = any((ix.relid, n) in st.retyped for n in ix.attnums)  # rebuilt on converted values
        if (old_ix is not None and old_ix.valid) or ((ix.relid, ix.shape) in before_shapes and not converted):
            continue
        only = False
        if ix.parent is not None:
            if ix.parent not in before.indexes:
                continue  # part of a new partitioned index: counted on the parent
            only = True
        t = after.rels[ix.relid]
        chk = counting.unique(ix.constraint or ix.name, None, t.relname, ix.keys, predicate=ix.predicate,
                              nulls_not_distinct=ix.nulls_not_distinct)
        if ix.primary:
            chk.definition = "PRIMARY KEY (" + ", ".join(ix.keys) + ")"
        elif not ix.constraint:
            chk.definition = ix.definition
        chk.only = only or (t.relkind != "p" and t.has_children)
        cols = _colnames(after, ix.relid, [n for n in ix.attnums if n])
        chk.extra["identity"] = ("index", ix.oid)
        chk.column = cols[0] if len(ix.keys) == 1 and len(cols) == 1 else None
        out.append(st.place(chk, ix.relid))
    return out


def _column_change_checks(st: _Statement) -> list[Check]:
    """``ALTER COLUMN .. TYPE`` on existing columns (see ``_type_change``) and changed generation expressions of
    STORED columns (reported not evaluated)."""
    before, after = st.before, st.after
    out: list[Check] = []
    for (r, n), a in sorted(after.attrs.items()):
        b = before.attrs.get((r, n))
        if r not in st.existing or b is None or after.rels[r].is_partition:
            continue
        rel = after.rels[r]
        if (a.typid, a.typmod) != (b.typid, b.typmod):
            out.append(st.place(_type_change(b, a, after, st.sql, rel), r))
        elif a.generated == "s" and b.generated == "s" and a.default != b.default:
            where = check_key("notnull", "", schema=rel.schema, table=rel.relname, column=a.name)
            chk = Check(name=where.removesuffix(" NOT NULL") + " GENERATED", kind="check", column=a.name,
                        definition=f"GENERATED ALWAYS AS ({a.default}) STORED",
                        unevaluated="a changed generation expression recomputes every row; not modelled")
            out.append(st.place(chk, r))
    return out


def _partition_bound_checks(st: _Statement) -> list[Check]:
    """An existing table that becomes a partition, or whose partition constraint changes (a new partition next
    to a DEFAULT partition): the rows outside ``pg_get_partition_constraintdef``."""
    out: list[Check] = []
    for r in sorted(st.existing):
        a_rel, b_rel = st.after.rels[r], st.before.rels[r]
        if not a_rel.is_partition or not a_rel.partition_constraint:
            continue
        if b_rel.is_partition and b_rel.partition_constraint == a_rel.partition_constraint:
            continue
        chk = Check(name=check_key("partition-bound", "", schema=a_rel.schema, table=a_rel.relname),
                    kind="partition-bound",
                    expr=a_rel.partition_constraint, definition=f"PARTITION CONSTRAINT {a_rel.partition_constraint}")
        out.append(st.place(chk, r))
    return out


def _read_converted_columns(st: _Statement, checks: list[Check]) -> None:
    """A type change re-checks the table's constraints and rebuilds its indexes on the converted values: the
    other checks of this statement read a converted column as CAST(old AS new) (``extra["casts"]``: attnum ->
    type; built-in target types only, a value that does not convert is the type check's business)."""
    for chk in checks:
        relid = chk.extra.get("relid")
        casts = {n: st.after.attrs[(r, n)].type for (r, n) in st.retyped
                 if r == relid and st.after.attrs[(r, n)].typid < 16384}
        if chk.kind != "type" and casts:
            chk.extra["casts"] = casts


def present_at(chk: Check, final: catalog.IdSnapshot) -> bool:
    """Whether the object a check validates still exists (NOT NULL: still set) in ``final``, the catalog at the
    target revision; a helper constraint a later statement drops was counted when it was added, but verify must
    not expect it."""
    ident = chk.extra.get("identity")
    if not ident:
        return True
    if ident[0] == "attr":
        a = final.attrs.get((ident[1], ident[2]))
        return bool(a and a.notnull)
    if ident[0] == "con":
        return ident[1] in final.cons
    return ident[1] in final.indexes


def column_value(a: catalog.IdAttr) -> tuple[str, str | None]:
    """(SQL value, note) that every existing row gets in a column added by ``ALTER TABLE .. ADD COLUMN``.

    PostgreSQL (``ATExecAddColumn``, ``src/backend/commands/tablecmds.c``): a STORED generated column holds its
    expression, an identity or serial column the next sequence values (modelled as 1, 2, ..: exact for NOT NULL
    and UNIQUE, the numbers themselves may differ), any other column its DEFAULT evaluated per row (volatile
    defaults too) or NULL."""
    typ = a.type
    if a.generated == "s" and a.default:
        return f"CAST(({a.default}) AS {typ})", None
    if a.identity or (a.default and "nextval(" in a.default):
        return f"CAST(row_number() OVER () AS {typ})", "identity/serial values modelled as 1, 2, .."
    if a.default:
        return f"CAST(({a.default}) AS {typ})", None
    return (f"CAST(NULL AS {typ})" if a.typid < 16384 else "NULL"), None


def _projection(relid: int, after: catalog.IdSnapshot, at: catalog.IdSnapshot,
                origins: dict[tuple[int, int], catalog.IdAttr], only: bool,
                casts: dict[int, str] | None = None) -> tuple[str | None, list[str]]:
    """(FROM text reading table ``relid`` at ``at`` under the column names of ``after``, notes); None when the
    table reads as it is (same names, no new column). ``casts``: attnum -> type the column is converted to."""
    rel = at.rels[relid]
    items, notes, plain = [], [], True
    for a in after.columns_of(relid):
        now = at.attrs.get((relid, a.attnum))
        if now is not None and casts and a.attnum in casts:
            plain = False
            items.append(f"CAST(t.{counting.quote_ident(now.name)} AS {casts[a.attnum]}) AS "
                         f"{counting.quote_ident(a.name)}")
            notes.append(f"column {a.name} read as converted to {casts[a.attnum]}")
            continue
        if now is not None:
            items.append(f"t.{counting.quote_ident(now.name)} AS {counting.quote_ident(a.name)}")
            if now.name != a.name:
                plain = False
                notes.append(f"column {a.name} is {now.name} when counted")
            continue
        plain = False
        origin = origins.get((relid, a.attnum), a)
        value, note = column_value(origin)
        items.append(f"{value} AS {counting.quote_ident(a.name)}")
        notes.append(f"new column {a.name}: existing rows hold "
                     + (origin.default if origin.default and not note else "NULL" if not note else note)
                     + (" (generated)" if origin.generated == "s" else ""))
    src = ("ONLY " if only else "") + counting.qualified(rel.schema, rel.relname)
    if after.rels[relid].relname != rel.relname or after.rels[relid].schema != rel.schema:
        notes.append(f"table {after.rels[relid].relname} is {rel.schema}.{rel.relname} when counted")
    if plain:
        return (None if after.rels[relid].relname == rel.relname and after.rels[relid].schema == rel.schema
                else src), notes
    return projection_sql(items, src), notes


def projection_sql(items: Iterable[str], base: str) -> str:
    """``(SELECT <items> FROM <base> AS t)``: the table's rows under other column names or with new columns."""
    return f"(SELECT {', '.join(items)} FROM {base} AS t)"  # noqa: S608 - identifiers quoted


_ITEM = re.compile(r'^(.*) AS ("(?:[^"]|"")*")$', re.S)


def merge_projections(checks: Iterable[Check], at: catalog.IdSnapshot) -> None:
    """One scan per table on the fast route: the foldable checks of one table whose FROM texts differ only
    because they read it through different projections (checks of different statements: a column added by one,
    renamed by another) get one projection that carries every alias they use, plus the table's columns under
    their current names. Left alone when two checks need the same alias for different values."""
    groups: dict[tuple[int, bool], list[Check]] = {}
    for c in checks:
        relid = c.extra.get("relid")
        if relid is None or relid not in at.rels or c.skipped or c.unevaluated or c.count is not None \
                or not counting.foldable(c):
            continue
        groups.setdefault((relid, c.only), []).append(c)
    for (relid, only), group in groups.items():
        if len({c.source for c in group}) < 2:
            continue
        rel = at.rels[relid]
        base = ("ONLY " if only else "") + counting.qualified(rel.schema, rel.relname)
        alias_expr: dict[str, str] = {counting.quote_ident(a.name): f"t.{counting.quote_ident(a.name)}"
                                      for a in at.columns_of(relid)}
        ok = True
        for c in group:
            src = c.from_sql
            if not src or not src.startswith("(SELECT "):
                continue
            inner = src[len("(SELECT "):src.rindex(f" FROM {base} AS t)")] if f" FROM {base} AS t)" in src else None
            if inner is None:
                ok = False
                break
            for item in _split_items(inner):
                m = _ITEM.match(item.strip())
                if not m:
                    ok = False
                    break
                expr, alias = m.group(1), m.group(2)
                if alias_expr.setdefault(alias, expr) != expr:
                    ok = False
                    break
        if not ok:
            continue
        merged = projection_sql((f"{e} AS {a}" for a, e in alias_expr.items()), base)
        for c in group:
            c.from_sql = merged


def _split_items(text: str) -> list[str]:
    """Split a SELECT list at top-level commas (not inside parentheses or quotes)."""
    out: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def already_enforced(chk: Check, at: catalog.IdSnapshot) -> bool:
    """Mark ``chk`` counted 0 when ``at`` (the real database before the revisions, no data changes in between)
    already holds a validated constraint of the same kind on the same columns: a FOREIGN KEY with the same key,
    referenced table/columns and MATCH type (a revision that only changes ON DELETE drops and re-adds it), or a
    CHECK with the same definition as ``pg_get_constraintdef`` prints it in the same database."""
    relid = chk.extra.get("relid")
    if chk.unevaluated or chk.count is not None or chk.extra.get("casts"):
        return False
    for c in at.cons.values():
        if c.relid != relid or not c.validated:
            continue
        same = (chk.kind == "foreignkey" and c.contype == "f" and c.attnums == chk.extra.get("attnums")
                and c.ref_relid == chk.extra.get("ref_relid") and c.ref_attnums == chk.extra.get("ref_attnums")
                and c.match_type == chk.extra.get("match_type")) or \
               (chk.kind == "check" and c.contype == "c" and c.definition == chk.extra.get("constraint_definition")
                and not chk.only)
        if same:
            chk.count, chk.evaluated_by = 0, "already-enforced"
            chk.note = f"the database already enforces the same rule ({c.name}): no row can violate it"
            return True
    return False


def bind(chk: Check, at: catalog.IdSnapshot, origins: dict[tuple[int, int], catalog.IdAttr]) -> Check:
    """Point ``chk`` (from :func:`step_checks`) at a database whose catalog is ``at`` (same OIDs as the
    snapshots it came from). A table that does not exist at ``at`` was created by the pending revisions and
    holds no rows: the check is marked skipped (``evaluated_by="no-rows"``)."""
    relid = chk.extra.get("relid")
    after: catalog.IdSnapshot | None = chk.extra.get("after")
    if relid is None or after is None or chk.count is not None or chk.unevaluated:
        return chk
    if relid not in at.rels:
        chk.skipped, chk.evaluated_by = True, "no-rows"
        chk.note = "table created by the pending revisions: no rows when the statement runs"
        return chk
    src, notes = _projection(relid, after, at, origins, chk.only, chk.extra.get("casts"))
    chk.from_sql = src
    if chk.kind == "foreignkey":
        ref = chk.extra.get("ref_relid")
        if ref not in at.rels:
            chk.ref_is_new = True
            notes.append("referenced table created by the pending revisions: every non-NULL key counts")
        else:
            ref_src, ref_notes = _projection(ref, after, at, origins, False)
            chk.ref_from_sql = ref_src
            notes.extend(ref_notes)
            want = set(chk.extra.get("ref_attnums") or ())
            chk.ref_unique = ref_src is None and any(
                ix.relid == ref and ix.unique and ix.valid and ix.predicate is None and set(ix.attnums) == want
                and 0 not in ix.attnums for ix in at.indexes.values())
            chk.extra["ref_only"] = at.rels[ref].relkind != "p" and at.rels[ref].has_children
    if notes:
        chk.note = "; ".join(filter(None, [chk.note, *notes]))
    return chk
