"""The check key (``schemagate.analysis.checkkey``): the corpus' key forms, and the same text PostgreSQL prints."""

from __future__ import annotations

import pytest

from schemagate.analysis.checkkey import (
    NON_UNRESERVED_KEYWORDS,
    check_key,
    display_relation,
    quote_ident_if_needed,
)


@pytest.mark.parametrize(("kwargs", "key"), [
    (dict(kind="notnull", name="x", schema="public", table="gadgets", column="is_enabled"),
     "gadgets.is_enabled NOT NULL"),
    (dict(kind="notnull", name="x", schema="Sales", table="order.archive", column="Note"),
     '"Sales"."order.archive"."Note" NOT NULL'),
    (dict(kind="notnull", name="x", schema="Sales", table="OrderLine", column="Sku"),
     '"Sales"."OrderLine"."Sku" NOT NULL'),
    (dict(kind="domain-notnull", name="percent", schema="public"), "DOMAIN percent NOT NULL"),
    (dict(kind="type", name="x", schema="public", table="delivery", column="state", type_text="delivery_state"),
     "delivery.state TYPE delivery_state"),
    (dict(kind="partition-bound", name="x", schema="public", table="reading_2024"), "reading_2024 PARTITION BOUND"),
    (dict(kind="check", name="ck_OrderLine_Qty", schema="Sales", table="OrderLine"), "ck_OrderLine_Qty"),
    (dict(kind="unique", name="ix_OrderLine_Sku", schema="Sales", table="OrderLine"), "ix_OrderLine_Sku"),
    (dict(kind="user", name="neg_totals"), "neg_totals"),
    (dict(kind="notnull", name="shop_city_not_null", schema="public", table="shop"), "shop_city_not_null"),
])
def test_corpus_key_forms(kwargs: dict[str, str], key: str) -> None:
    assert check_key(**kwargs) == key


def test_quoting_rules() -> None:
    assert quote_ident_if_needed("order") == '"order"'  # reserved
    assert quote_ident_if_needed("name") == "name"  # unreserved keyword
    assert quote_ident_if_needed("1abc") == '"1abc"'
    assert quote_ident_if_needed('we"ird') == '"we""ird"'
    assert display_relation("public", "t") == "t"
    assert display_relation(None, "t") == "t"


@pytest.mark.postgres
def test_same_text_as_postgresql(fresh_db: str) -> None:
    """The keyword list is PostgreSQL's, and a relation prints as ``'<rel>'::regclass::text`` does."""
    import psycopg

    from schemagate.contract.dburl import libpq_url

    with psycopg.connect(libpq_url(fresh_db), autocommit=True) as conn:
        words = {r[0] for r in conn.execute("SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'")}
        assert words == NON_UNRESERVED_KEYWORDS
        conn.execute('CREATE SCHEMA "Sales"; CREATE SCHEMA plain')
        names = [("public", "t1"), ("public", "Mixed"), ("public", "select"), ("Sales", "order.archive"),
                 ("plain", "a$b"), ("Sales", 'q"uote'), ("public", "_x9")]
        for schema, table in names:
            conn.execute(f'CREATE TABLE "{schema}"."{table.replace(chr(34), chr(34) * 2)}" (id int)')
            printed = conn.execute("SELECT %s::regclass::text",
                                   (f'"{schema}"."{table.replace(chr(34), chr(34) * 2)}"',)).fetchone()[0]
            assert display_relation(schema, table) == printed
            assert quote_ident_if_needed(table) == conn.execute("SELECT quote_ident(%s)", (table,)).fetchone()[0]
