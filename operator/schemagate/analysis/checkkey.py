"""The one place that turns a check's separate fields into the key users (and case corpora) see.

A precheck check carries its schema, table and column as separate fields; the *key* is the text a user reads and
a case corpus (``../shared/cases/README.md``) writes::

    kind                      key
    ------------------------  -------------------------------------------------------------
    notnull                   <table>.<column> NOT NULL          gadgets.is_enabled NOT NULL
    domain-notnull            DOMAIN <domain> NOT NULL           DOMAIN percent NOT NULL
    type                      <table>.<column> TYPE <type>       delivery.state TYPE delivery_state
    partition-bound           <table> PARTITION BOUND            reading_2024 PARTITION BOUND
    anything else             the name PostgreSQL stores          ck_shop_area, ix_OrderLine_Sku, a user check's name
    (check, foreignkey, unique, exclusion, domain-check, index, user)

``<table>`` is written as ``'<table>'::regclass::text`` prints it with the default ``search_path``
(``"$user", public``): the schema only when it is not ``public``, each identifier quoted only where
PostgreSQL's ``quote_ident`` quotes it (upper case, characters other than ``[a-z0-9_]``, a leading digit,
or a keyword that is not unreserved). So ``"Sales"."order.archive"."Note" NOT NULL``. ``<domain>`` follows the same rule;
``<type>`` is the new type as ``format_type()`` prints it. The fields are never joined and split again: the key is built from them, and
the key is only ever shown, never parsed.

Standard library only.
"""

from __future__ import annotations

import re

# PostgreSQL 18: SELECT word FROM pg_get_keywords() WHERE catcode <> 'U' (quote_ident quotes these)
NON_UNRESERVED_KEYWORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization between bigint binary bit boolean both case
cast char character check coalesce collate collation column concurrently constraint create cross current_catalog
current_date current_role current_schema current_time current_timestamp current_user dec decimal default
deferrable desc distinct do else end except exists extract false fetch float for foreign freeze from full
grant greatest group grouping having ilike in initially inner inout int integer intersect interval into is isnull
join json json_array json_arrayagg json_exists json_object json_objectagg json_query json_scalar
json_serialize json_table json_value lateral leading least left like limit localtime localtimestamp
merge_action national natural nchar none normalize not notnull null nullif numeric offset on only or order out
outer overlaps overlay placing position precision primary real references returning right row select
session_user setof similar smallint some substring symmetric system_user table tablesample then time timestamp
to trailing treat trim true union unique user using values varchar variadic verbose when where window with
xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize
xmltable
""".split())

_PLAIN = re.compile(r"[a-z_][a-z0-9_]*\Z")
DEFAULT_SCHEMA = "public"


def quote_ident_if_needed(name: str) -> str:
    """``name`` as PostgreSQL's ``quote_ident()`` prints it: bare when it is a plain lower-case identifier that
    is not a (non-unreserved) keyword, else in double quotes with ``"`` doubled."""
    if _PLAIN.match(name) and name not in NON_UNRESERVED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def display_relation(schema: str | None, name: str) -> str:
    """A table (or type, or domain) as ``'<name>'::regclass::text`` prints it with the default search_path:
    ``schema.name`` only when ``schema`` is not ``public``, each part quoted only where needed."""
    rel = quote_ident_if_needed(name)
    if schema and schema != DEFAULT_SCHEMA:
        return f"{quote_ident_if_needed(schema)}.{rel}"
    return rel


def check_key(kind: str, name: str, *, schema: str | None = None, table: str | None = None,
              column: str | None = None, type_text: str | None = None) -> str:
    """The key of one check (see the module docstring for the table of kinds).

    ``kind``: the check's kind (``notnull``, ``domain-notnull``, ``type``, ``partition-bound``, or any other for
    a named constraint, index or user check); ``name``: the stored constraint/index name, the user check's name,
    or for ``domain-notnull`` the domain's name (with ``schema`` its schema). ``schema``/``table``/``column``:
    the separate identifiers, unquoted. ``type_text``: the new type of a ``type`` check as ``format_type()``
    prints it (``delivery_state``, ``"Sales"."State"``, ``numeric(10,2)``).
    Falls back to ``name`` when a field the kind needs is missing.
    """
    if kind == "notnull" and table and column:
        return f"{display_relation(schema, table)}.{quote_ident_if_needed(column)} NOT NULL"
    if kind == "domain-notnull":
        return f"DOMAIN {display_relation(schema, name)} NOT NULL"
    if kind == "type" and table and column and type_text:
        return f"{display_relation(schema, table)}.{quote_ident_if_needed(column)} TYPE {type_text}"
    if kind == "partition-bound" and table:
        return f"{display_relation(schema, table)} PARTITION BOUND"
    return name
