"""Pure unit tests of the statement-by-statement derivation (no database): snapshots built by hand."""

from __future__ import annotations

import pytest

from schemagate.analysis import counting, derive
from schemagate.analysis.catalog import IdAttr, IdCon, IdDomain, IdRel, IdSnapshot
from schemagate.contract.sizes import parse_size


def rel(oid: int, name: str, **kw: object) -> IdRel:
    args: dict[str, object] = dict(relkind="r", is_partition=False, regclass=name, partition_constraint=None,
                                   parent=None, has_children=False)
    args.update(kw)
    return IdRel(oid, "public", name, **args)  # type: ignore[arg-type]


def attr(relid: int, attnum: int, name: str, typ: str = "integer", typid: int = 23, **kw: object) -> IdAttr:
    args: dict[str, object] = dict(notnull=False, typmod=-1, typcategory="N", generated="", identity="",
                                   default=None, typtype="b")
    args.update(kw)
    return IdAttr(relid, attnum, name, name, typid=typid, type=typ, **args)  # type: ignore[arg-type]


def snap(rels: list[IdRel], attrs: list[IdAttr], cons: list[IdCon] = (), domains: list[IdDomain] = (),
         enums: dict[int, tuple[str, ...]] | None = None) -> IdSnapshot:  # type: ignore[assignment]
    return IdSnapshot(180000, {r.oid: r for r in rels}, {(a.relid, a.attnum): a for a in attrs},
                      {c.oid: c for c in cons}, {}, {d.oid: d for d in domains}, enums or {})


def con(oid: int, name: str, relid: int, expr: str, *, typid: int = 0, validated: bool = True) -> IdCon:
    return IdCon(oid, name, "c", validated, relid, typid, 0, True, False, f"CHECK ({expr})", expr, (), 0, (), "s",
                 0, ())


def test_replace_value_leaves_literals_and_quoted_names() -> None:
    expr = "((VALUE >= 0) AND (VALUE::text <> 'VALUE') AND (\"VALUE\" IS NULL))"
    assert derive.replace_value(expr, '"rate"') == \
        "(((\"rate\") >= 0) AND ((\"rate\")::text <> 'VALUE') AND (\"VALUE\" IS NULL))"


def test_column_value_of_a_new_column() -> None:
    assert derive.column_value(attr(1, 3, "a"))[0] == "CAST(NULL AS integer)"
    assert derive.column_value(attr(1, 3, "a", default="0"))[0] == "CAST((0) AS integer)"
    assert derive.column_value(attr(1, 3, "a", generated="s", default="(b * 2)"))[0] == "CAST(((b * 2)) AS integer)"
    v, note = derive.column_value(attr(1, 3, "a", identity="d"))
    assert v.startswith("CAST(row_number() OVER ()") and "identity" in (note or "")
    v, _ = derive.column_value(attr(1, 3, "a", default="nextval('t_a_seq'::regclass)"))
    assert "row_number()" in v
    assert derive.column_value(attr(1, 3, "a", typ="mood", typid=90000))[0] == "NULL"  # a type of the revisions


def test_new_not_null_column_is_projected_with_null_and_renames_are_read_by_old_name() -> None:
    before = snap([rel(1, "old")], [attr(1, 1, "id"), attr(1, 2, "w")])
    renamed = snap([rel(1, "new")], [attr(1, 1, "id"), attr(1, 2, "weight")])
    after = snap([rel(1, "new")], [attr(1, 1, "id"), attr(1, 2, "weight"), attr(1, 3, "flag", notnull=True)])
    checks = derive.step_checks(renamed, after, "ALTER TABLE new ADD COLUMN flag int NOT NULL")
    assert [(c.name, c.kind, c.column) for c in checks] == [("new.flag NOT NULL", "notnull", "flag")]
    derive.bind(checks[0], before, {(1, 3): after.attrs[(1, 3)]})
    assert checks[0].from_sql == ('(SELECT t."id" AS "id", t."w" AS "weight", CAST(NULL AS integer) AS "flag" '
                                  'FROM "public"."old" AS t)')
    sql = counting.table_scan_sql(checks)
    assert 'FROM (SELECT t."id"' in sql and 't."flag" IS NULL' in sql


def test_domain_check_covers_domains_over_the_domain() -> None:
    d1 = IdDomain(100, "public", "pct", "pct", False, 1700, "numeric")
    d2 = IdDomain(101, "public", "small", "small", False, 100, "pct")
    cols = [attr(1, 1, "v", typid=100), attr(2, 1, "w", typid=101), attr(2, 2, "z")]
    before = snap([rel(1, "a"), rel(2, "b")], cols, domains=[d1, d2])
    after = snap([rel(1, "a"), rel(2, "b")], cols, [con(7, "pct_range", 0, "VALUE <= 100", typid=100)],
                 domains=[d1, d2])
    checks = derive.step_checks(before, after, "ALTER DOMAIN pct ADD CONSTRAINT pct_range CHECK (VALUE <= 100)")
    assert sorted((c.relname, c.column, c.expr) for c in checks) == [("a", "v", '("v") <= 100'),
                                                                    ("b", "w", '("w") <= 100')]
    assert all(c.kind == "domain-check" and c.key == "pct_range" for c in checks)


def test_not_valid_gives_no_check_and_validate_does() -> None:
    base = snap([rel(1, "t")], [attr(1, 1, "a")])
    nv = snap([rel(1, "t")], [attr(1, 1, "a")], [con(5, "ck", 1, "a > 0", validated=False)])
    valid = snap([rel(1, "t")], [attr(1, 1, "a")], [con(5, "ck", 1, "a > 0")])
    assert derive.step_checks(base, nv) == []
    [c] = derive.step_checks(nv, valid)
    assert c.name == "ck" and "NOT VALID before" in (c.note or "")


def test_type_change_decisions() -> None:
    def change(old: IdAttr, new: IdAttr, sql: str, enums: dict[int, tuple[str, ...]] | None = None) -> counting.Check:
        b = snap([rel(1, "t")], [old])
        a = snap([rel(1, "t")], [new], enums=enums)
        [c] = derive.step_checks(b, a, sql)
        return c

    text = attr(1, 1, "s", "text", 25, typcategory="S")
    c = change(text, attr(1, 1, "s", "mood", 9000, typcategory="E", typtype="e"),
               "ALTER TABLE t ALTER COLUMN s TYPE mood USING s::mood", {9000: ("ok", "sad")})
    assert c.key == "t.s TYPE mood" and "ANY (ARRAY['ok', 'sad']::text[])" in (c.expr or "")
    c = change(text, attr(1, 1, "s", "mood", 9000, typcategory="E", typtype="e"),
               "ALTER TABLE t ALTER COLUMN s TYPE mood USING (CAST(s AS mood))", {9000: ("ok",)})
    assert c.unevaluated is None and "ANY (ARRAY['ok']::text[])" in (c.expr or "")
    c = change(text, attr(1, 1, "s", "integer", 23), "ALTER TABLE t ALTER COLUMN s TYPE integer USING s::integer")
    assert "pg_input_is_valid" in (c.expr or "") and c.unevaluated is None
    c = change(attr(1, 1, "s", "integer", 23), attr(1, 1, "s", "bigint", 20), "ALTER TABLE t ALTER COLUMN s TYPE bigint")
    assert c.count == 0 and c.evaluated_by == "cannot-fail"
    c = change(attr(1, 1, "s", "numeric", 1700), attr(1, 1, "s", "integer", 23),
               "ALTER TABLE t ALTER COLUMN s TYPE integer USING trunc(s)")
    assert c.count is None and "not modelled" in (c.unevaluated or "")


def test_exclusion_sql_uses_each_operator() -> None:
    c = counting.Check(name="x", kind="exclusion", schema="public", relname="slot", keys=("room", "during"),
                       predicate="NOT cancelled")
    c.extra["operators"] = ("OPERATOR(pg_catalog.=)", "OPERATOR(pg_catalog.&&)")
    sql = counting.exclusion_sql(c)
    assert "a.k1 OPERATOR(pg_catalog.=) b.k1 AND a.k2 OPERATOR(pg_catalog.&&) b.k2" in sql
    assert "WHERE (NOT cancelled)" in sql and "b.sg_row <> a.sg_row" in sql
    c.extra["operators"] = ("OPERATOR(pg_catalog.=)",)
    with pytest.raises(ValueError, match="one operator per key"):
        counting.exclusion_sql(c)


@pytest.mark.parametrize(("text", "size"), [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9),
                                            ("100M", 10**8), ("1Ki", 1024), ("4096", 4096), (4096, 4096)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1 gib", "-5", "0", "1.5.2Gi", "100MB", "1ki"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)
