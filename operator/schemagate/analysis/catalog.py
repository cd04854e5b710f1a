"""A snapshot of the constraint-relevant parts of a database's catalog (``pg_constraint``, ``pg_attribute``,
``pg_index``), comparable across databases (everything is keyed by schema and names, never by OID)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from schemagate.libpq import Connection, one_row

SYSTEM_SCHEMA_FILTER = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
    "AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)

TableKey = tuple[str, str]  # (schema, relname)


@dataclass
class Table:
    schema: str
    relname: str
    relkind: str  # r | p
    has_children: bool
    is_partition: bool
    columns: dict[str, bool] = field(default_factory=dict)  # name -> NOT NULL (validated)


@dataclass
class Constraint:
    schema: str
    relname: str
    name: str
    contype: str  # c | f | x
    validated: bool
    no_inherit: bool
    definition: str  # pg_get_constraintdef, without a trailing NOT VALID
    expr: str | None
    columns: tuple[str, ...]
    ref_schema: str | None
    ref_relname: str | None
    ref_columns: tuple[str, ...]
    match_type: str  # s | f | p

    @property
    def table(self) -> TableKey:
        return (self.schema, self.relname)


@dataclass
class Index:
    schema: str
    relname: str
    name: str
    unique: bool
    primary: bool
    valid: bool
    nulls_not_distinct: bool
    definition: str  # pg_get_indexdef
    keys: tuple[str, ...]
    predicate: str | None
    columns: tuple[str, ...]  # plain key/include columns (expressions excluded)
    has_expressions: bool
    constraint: str | None  # the owning UNIQUE/PRIMARY KEY constraint, if any

    @property
    def table(self) -> TableKey:
        return (self.schema, self.relname)

    @property
    def shape(self) -> str:
        """The definition without the index name (two indexes with equal shapes index the same thing)."""
        m = re.match(r'^CREATE (UNIQUE )?INDEX (?:"(?:[^"]|"")*"|\S+) ON (?:ONLY )?(.*)$', self.definition, re.S)
        return (("UNIQUE " if self.unique else "") + m.group(2)) if m else self.definition


@dataclass
class Catalog:
    server_version_num: int
    tables: dict[TableKey, Table]
    constraints: list[Constraint]
    indexes: list[Index]


_TABLES = f"""
SELECT n.nspname, c.relname, c.relkind, c.relhassubclass, c.relispartition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text

_COLUMNS = f"""
SELECT n.nspname, c.relname, a.attname,
       a.attnotnull AND NOT EXISTS (
         SELECT 1 FROM pg_constraint nc
         WHERE nc.conrelid = a.attrelid AND nc.contype = 'n' AND nc.conkey[1] = a.attnum AND NOT nc.convalidated)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text

_CONSTRAINTS = f"""
SELECT n.nspname, cl.relname, co.conname, co.contype, co.convalidated, co.connoinherit,
       pg_get_constraintdef(co.oid),
       CASE WHEN co.contype = 'c' THEN pg_get_expr(co.conbin, co.conrelid) END,
       ARRAY(SELECT a.attname::text FROM unnest(co.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
       rn.nspname, rc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(co.confkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.attnum ORDER BY k.ord),
       co.confmatchtype
FROM pg_constraint co
JOIN pg_class cl ON cl.oid = co.conrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
LEFT JOIN pg_class rc ON rc.oid = co.confrelid LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE co.contype IN ('c', 'f', 'x') AND co.conislocal AND co.conparentid = 0
  AND cl.relkind IN ('r', 'p') AND NOT cl.relispartition AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


def _indexes_sql(version: int) -> str:
    nnd = "x.indnullsnotdistinct" if version >= 150000 else "false"
    return f"""
SELECT n.nspname, t.relname, i.relname, x.indisunique, x.indisprimary, x.indisvalid AND x.indisready, {nnd},
       pg_get_indexdef(x.indexrelid),
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true) FROM generate_series(1, x.indnkeyatts) AS k
             ORDER BY k),
       pg_get_expr(x.indpred, x.indrelid, true),
       ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum WHERE k.attnum > 0),
       x.indexprs IS NOT NULL,
       (SELECT co.conname FROM pg_constraint co WHERE co.conindid = x.indexrelid AND co.conrelid = x.indrelid
          AND co.contype IN ('u', 'p') LIMIT 1)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind IN ('r', 'p') AND NOT t.relispartition AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


_NOT_VALID = re.compile(r"\s+NOT VALID$")


def snapshot(conn: Connection) -> Catalog:
    """Read the catalog through a psycopg connection."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        version = one_row(cur)[0]
        cur.execute(_TABLES)
        tables = {(r[0], r[1]): Table(r[0], r[1], r[2], bool(r[3]), bool(r[4])) for r in cur.fetchall()}
        cur.execute(_COLUMNS)
        for schema, rel, col, nn in cur.fetchall():
            t = tables.get((schema, rel))
            if t is not None:
                t.columns[col] = bool(nn)
        cur.execute(_CONSTRAINTS)
        constraints = [
            Constraint(
                schema=r[0], relname=r[1], name=r[2], contype=r[3], validated=bool(r[4]), no_inherit=bool(r[5]),
                definition=_NOT_VALID.sub("", r[6]), expr=r[7], columns=tuple(r[8] or ()), ref_schema=r[9],
                ref_relname=r[10], ref_columns=tuple(r[11] or ()), match_type=r[12] or "s",
            )
            for r in cur.fetchall()
        ]
        cur.execute(_indexes_sql(version))
        indexes = [
            Index(
                schema=r[0], relname=r[1], name=r[2], unique=bool(r[3]), primary=bool(r[4]), valid=bool(r[5]),
                nulls_not_distinct=bool(r[6]), definition=r[7], keys=tuple(r[8] or ()), predicate=r[9],
                columns=tuple(r[10] or ()), has_expressions=bool(r[11]), constraint=r[12],
            )
            for r in cur.fetchall()
        ]
    return Catalog(version, tables, constraints, indexes)


# --------------------------------------------------------------------------------------------------------------
# Identity snapshots: the same catalog facts keyed by OID and attnum, taken in ONE database (the shadow) before
# and after each statement of the pending revisions, so renamed tables and columns stay the same objects.


_ID_RELS = f"""
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind, c.relispartition, c.oid::regclass::text,
       CASE WHEN c.relispartition THEN pg_get_partition_constraintdef(c.oid) END,
       (SELECT i.inhparent::bigint FROM pg_inherits i WHERE i.inhrelid = c.oid ORDER BY i.inhseqno LIMIT 1),
       c.relhassubclass
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


def _id_attrs_sql(version: int) -> str:
    invalid_nn = ("EXISTS (SELECT 1 FROM pg_constraint nc WHERE nc.conrelid = a.attrelid AND nc.contype = 'n' "
                  "AND nc.conkey[1] = a.attnum AND NOT nc.convalidated)") if version >= 180000 else "false"
    return f"""
SELECT a.attrelid::bigint, a.attnum, a.attname, quote_ident(a.attname), a.attnotnull AND NOT {invalid_nn},
       a.atttypid::bigint, a.atttypmod, format_type(a.atttypid, a.atttypmod), ty.typcategory, a.attgenerated,
       a.attidentity, pg_get_expr(d.adbin, d.adrelid), ty.typtype
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


_ID_CONS = f"""
SELECT co.oid::bigint, co.conname, co.contype, co.convalidated, co.conrelid::bigint, co.contypid::bigint,
       co.conparentid::bigint, co.conislocal, co.connoinherit, pg_get_constraintdef(co.oid),
       CASE WHEN co.contype = 'c' THEN pg_get_expr(co.conbin, co.conrelid) END,
       co.conkey::int[], co.confrelid::bigint, co.confkey::int[], co.confmatchtype, co.conindid::bigint,
       ARRAY(SELECT format('OPERATOR(%I.%s)', opn.nspname, op.oprname)
             FROM unnest(co.conexclop) WITH ORDINALITY AS e(opid, ord)
             JOIN pg_operator op ON op.oid = e.opid JOIN pg_namespace opn ON opn.oid = op.oprnamespace
             ORDER BY e.ord)
FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
WHERE co.contype IN ('c', 'f', 'x', 'n') AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


def _id_indexes_sql(version: int) -> str:
    nnd = "x.indnullsnotdistinct" if version >= 150000 else "false"
    return f"""
SELECT x.indexrelid::bigint, x.indrelid::bigint, i.relname, x.indisunique, x.indisprimary,
       x.indisvalid AND x.indisready, {nnd}, pg_get_indexdef(x.indexrelid),
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true) FROM generate_series(1, x.indnkeyatts) AS k ORDER BY k),
       pg_get_expr(x.indpred, x.indrelid, true), x.indkey::int2[]::int[], x.indisexclusion,
       (SELECT co.conname FROM pg_constraint co WHERE co.conindid = x.indexrelid AND co.conrelid = x.indrelid
          AND co.contype IN ('u', 'p') LIMIT 1),
       (SELECT h.inhparent::bigint FROM pg_inherits h WHERE h.inhrelid = x.indexrelid LIMIT 1)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


_ID_DOMAINS = f"""
SELECT t.oid::bigint, n.nspname, t.typname, format_type(t.oid, NULL), t.typnotnull, t.typbasetype::bigint,
       format_type(t.typbasetype, t.typtypmod)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype = 'd' AND {SYSTEM_SCHEMA_FILTER}
"""  # noqa: S608 - constant text


@dataclass
class IdRel:
    oid: int
    schema: str
    relname: str
    relkind: str
    is_partition: bool
    regclass: str  # as 'oid'::regclass::text prints it (schema only when not on the search_path)
    partition_constraint: str | None
    parent: int | None  # pg_inherits parent (partitioned table or inheritance parent)
    has_children: bool


@dataclass
class IdAttr:
    relid: int
    attnum: int
    name: str
    quoted: str  # quote_ident(name): quotes only where needed
    notnull: bool  # attnotnull and (PostgreSQL 18) its NOT NULL constraint validated
    typid: int
    typmod: int
    type: str  # format_type(atttypid, atttypmod)
    typcategory: str
    generated: str  # '' | 's' | 'v'
    identity: str  # '' | 'a' | 'd'
    default: str | None  # pg_get_expr(adbin): the DEFAULT or the generation expression
    typtype: str  # b | d | e | c | r | m | p


@dataclass
class IdCon:
    oid: int
    name: str
    contype: str  # c | f | x | n
    validated: bool
    relid: int  # 0 for a domain constraint
    typid: int  # the domain, 0 for a table constraint
    parent: int  # conparentid
    is_local: bool
    no_inherit: bool
    definition: str
    expr: str | None
    attnums: tuple[int, ...]
    ref_relid: int
    ref_attnums: tuple[int, ...]
    match_type: str
    index: int  # conindid
    operators: tuple[str, ...]  # exclusion operators, OPERATOR(schema.op)


@dataclass
class IdIndex:
    oid: int
    relid: int
    name: str
    unique: bool
    primary: bool
    valid: bool
    nulls_not_distinct: bool
    definition: str
    keys: tuple[str, ...]
    predicate: str | None
    attnums: tuple[int, ...]  # 0 for an expression
    exclusion: bool
    constraint: str | None
    parent: int | None  # the partitioned index this one is attached to

    @property
    def shape(self) -> str:
        m = re.match(r'^CREATE (UNIQUE )?INDEX (?:"(?:[^"]|"")*"|\S+) ON (?:ONLY )?(.*)$', self.definition, re.S)
        return (("UNIQUE " if self.unique else "") + m.group(2)) if m else self.definition


@dataclass
class IdDomain:
    oid: int
    schema: str
    name: str
    display: str  # format_type: the name as PostgreSQL prints it
    notnull: bool
    basetype: int
    basetype_name: str


@dataclass
class IdSnapshot:
    """One database's catalog at one moment, keyed by OID (``rels``, ``cons``, ``indexes``, ``domains``) and by
    ``(relid, attnum)`` (``attrs``). Two snapshots of the same database compare by identity, so a renamed table
    or column is the same entry under a new name."""

    server_version_num: int
    rels: dict[int, IdRel]
    attrs: dict[tuple[int, int], IdAttr]
    cons: dict[int, IdCon]
    indexes: dict[int, IdIndex]
    domains: dict[int, IdDomain]
    enums: dict[int, tuple[str, ...]] = field(default_factory=dict)  # enum type OID -> labels

    def columns_of(self, relid: int) -> list[IdAttr]:
        return sorted((a for (r, _), a in self.attrs.items() if r == relid), key=lambda a: a.attnum)


ENUMS_SQL = ("SELECT e.enumtypid::bigint, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e "
             "GROUP BY e.enumtypid")


def id_queries(version: int) -> dict[str, str]:
    """The identity snapshot's queries for a server of ``server_version_num`` ``version``, by name. They are plain
    SQL without parameters, so another process (the injected runner in the application's image, which may not
    import this module) can run them from ``prepare.json`` and hand back the rows (:func:`id_snapshot_from_rows`)."""
    return {"rels": _ID_RELS, "attrs": _id_attrs_sql(version), "cons": _ID_CONS, "indexes": _id_indexes_sql(version),
            "domains": _ID_DOMAINS, "enums": ENUMS_SQL}


def id_snapshot(cur: Any) -> IdSnapshot:
    """Read an identity snapshot through a DB-API cursor (psycopg); runs in the caller's transaction, so it sees
    the statements executed so far in it."""
    cur.execute("SELECT current_setting('server_version_num')::int")
    version = int(cur.fetchone()[0])
    rows: dict[str, list[Any]] = {}
    for name, sql in id_queries(version).items():
        cur.execute(sql)
        rows[name] = cur.fetchall()
    return id_snapshot_from_rows(version, rows)


def id_snapshot_from_rows(version: int, rows: dict[str, list[Any]]) -> IdSnapshot:
    """An :class:`IdSnapshot` from the rows of :func:`id_queries` (tuples, or lists read back from JSON).

    Raises KeyError naming a missing query."""
    rels = {int(r[0]): IdRel(int(r[0]), r[1], r[2], r[3], bool(r[4]), r[5], r[6],
                             int(r[7]) if r[7] is not None else None, bool(r[8])) for r in rows["rels"]}
    attrs = {(int(r[0]), int(r[1])): IdAttr(int(r[0]), int(r[1]), r[2], r[3], bool(r[4]), int(r[5]), int(r[6]),
                                            r[7], r[8], r[9] or "", r[10] or "", r[11], r[12])
             for r in rows["attrs"]}
    cons = {int(r[0]): IdCon(int(r[0]), r[1], r[2], bool(r[3]), int(r[4]), int(r[5]), int(r[6]), bool(r[7]),
                             bool(r[8]), _NOT_VALID.sub("", r[9] or ""), r[10], tuple(r[11] or ()), int(r[12]),
                             tuple(r[13] or ()), r[14] or "s", int(r[15]), tuple(r[16] or ()))
            for r in rows["cons"]}
    indexes = {int(r[0]): IdIndex(int(r[0]), int(r[1]), r[2], bool(r[3]), bool(r[4]), bool(r[5]), bool(r[6]), r[7],
                                  tuple(r[8] or ()), r[9], tuple(r[10] or ()), bool(r[11]), r[12],
                                  int(r[13]) if r[13] is not None else None)
               for r in rows["indexes"]}
    domains = {int(r[0]): IdDomain(int(r[0]), r[1], r[2], r[3], bool(r[4]), int(r[5]), r[6]) for r in rows["domains"]}
    enums = {int(r[0]): tuple(r[1] or ()) for r in rows["enums"]}
    return IdSnapshot(version, rels, attrs, cons, indexes, domains, enums)
