"""A snapshot of the constraint-relevant parts of a database's catalog (``pg_constraint``, ``pg_attribute``,
``pg_index``), comparable across databases (everything is keyed by schema and names, never by OID)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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


def snapshot(conn: Any) -> Catalog:
    """Read the catalog through a psycopg connection."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        version = cur.fetchone()[0]
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
