"""Counting semantics on a real PostgreSQL: each count is compared with what PostgreSQL itself accepts or rejects."""

from __future__ import annotations

import psycopg
import pytest

from schemagate.analysis import counting
from schemagate.analysis.counting import CountOptions
from schemagate.contract.dburl import libpq_url
from tests.precheck.helpers import execute, query, seq_scans

pytestmark = pytest.mark.postgres


def count(url: str, checks: list[counting.Check], **opts: object) -> list[counting.Check]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        counting.run_counts(conn, checks, CountOptions(**opts))  # type: ignore[arg-type]
    return checks


def rejects(url: str, ddl: str) -> bool:
    """Does PostgreSQL refuse the DDL on the current data? (the ground truth the counts must agree with)"""
    with psycopg.connect(libpq_url(url)) as conn:
        try:
            conn.execute(ddl)  # type: ignore[arg-type]
        except psycopg.errors.IntegrityError:
            return True
        finally:
            conn.rollback()
    return False


def test_check_counts_only_false_rows_null_passes(fresh_db: str) -> None:
    execute(fresh_db, "CREATE TABLE acct (id int, used numeric, lim numeric)",
            "INSERT INTO acct VALUES (1, 5, 10), (2, 11, 10), (3, NULL, 10), (4, 5, NULL), (5, NULL, NULL), "
            "(6, 20, 10)")
    c = counting.check_("ck", "public", "acct", "used <= lim")
    count(fresh_db, [c])
    assert c.count == 2 and c.error is None  # rows 2 and 6; NULL rows pass, as in PostgreSQL
    assert rejects(fresh_db, "ALTER TABLE acct ADD CONSTRAINT ck CHECK (used <= lim)")
    execute(fresh_db, "DELETE FROM acct WHERE id IN (2, 6)")
    count(fresh_db, [c])
    assert c.count == 0
    assert not rejects(fresh_db, "ALTER TABLE acct ADD CONSTRAINT ck CHECK (used <= lim)")


def test_not_null_counts_nulls(fresh_db: str) -> None:
    execute(fresh_db, 'CREATE TABLE t ("Note" text, n int)', "INSERT INTO t VALUES ('a', 1), (NULL, 2), (NULL, NULL)")
    a, b = counting.notnull("nn1", "public", "t", "Note"), counting.notnull("nn2", "public", "t", "n")
    count(fresh_db, [a, b])
    assert (a.count, b.count) == (2, 1)


@pytest.fixture
def composite(fresh_db: str) -> str:
    execute(
        fresh_db,
        'CREATE TABLE parent (x int, y int, PRIMARY KEY (x, y))',
        "INSERT INTO parent VALUES (1, 1), (1, 2)",
        "CREATE TABLE child (id int, a int, b int, q int)",
        # ok | orphan | (NULL, 9): partial NULL | (NULL, NULL) | (2, NULL): partial NULL | ok
        "INSERT INTO child VALUES (1, 1, 1, 1), (2, 9, 9, 1), (3, NULL, 9, 1), (4, NULL, NULL, 1), (5, 2, NULL, 1), "
        "(6, 1, 2, -1)",
    )
    return fresh_db


@pytest.mark.parametrize("joined", [True, False], ids=["one-scan-join", "not-exists"])
@pytest.mark.parametrize("full", [False, True], ids=["simple", "full"])
def test_composite_foreign_key_match_simple_and_full(composite: str, joined: bool, full: bool) -> None:
    fk = counting.foreign_key("fk", "public", "child", ["a", "b"], "public", "parent", ["x", "y"], match_full=full)
    fk.ref_unique = joined
    count(composite, [fk, counting.check_("ck", "public", "child", "q > 0")])
    # SIMPLE: only the complete key (9, 9) is checked; FULL: the two partly NULL keys violate too
    assert fk.count == (3 if full else 1)
    ddl = ("ALTER TABLE child ADD FOREIGN KEY (a, b) REFERENCES parent (x, y)" + (" MATCH FULL" if full else ""))
    assert rejects(composite, ddl)
    execute(composite, "DELETE FROM child WHERE id = 2")
    count(composite, [fk])
    assert fk.count == (2 if full else 0)
    assert rejects(composite, ddl) is full


def test_foreign_key_to_a_table_the_revisions_create(composite: str) -> None:
    fk = counting.foreign_key("fk", "public", "child", ["a", "b"], "public", "missing", ["x", "y"])
    fk.ref_is_new = True
    count(composite, [fk])
    assert fk.count == 3  # every complete key, since the new table is empty


def test_unique_counts_rows_in_duplicate_groups_nulls_distinct(fresh_db: str) -> None:
    execute(fresh_db, "CREATE TABLE u (a int, b text)",
            "INSERT INTO u VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, 'y'), (2, 'z'), (3, NULL), (3, NULL), "
            "(NULL, NULL), (NULL, NULL)")
    distinct = counting.unique("uq", "public", "u", ["a", "b"])
    nnd = counting.unique("uq_nnd", "public", "u", ["a", "b"], nulls_not_distinct=True)
    partial = counting.unique("uq_part", "public", "u", ["a"], predicate="b IS NOT NULL")
    count(fresh_db, [distinct, nnd, partial])
    assert distinct.count == 3 and "1 duplicate group" in (distinct.note or "")
    assert nnd.count == 3 + 2 + 2  # (3, NULL) x2 and (NULL, NULL) x2 collide too
    assert partial.count == 3 + 2  # a=1 (x3), a=2 (y, z)
    assert rejects(fresh_db, "CREATE UNIQUE INDEX ON u (a, b)")
    execute(fresh_db, "DELETE FROM u WHERE a = 1 AND ctid NOT IN (SELECT min(ctid) FROM u WHERE a = 1)")
    count(fresh_db, [distinct, nnd])
    assert distinct.count == 0 and nnd.count == 4
    assert not rejects(fresh_db, "CREATE UNIQUE INDEX ON u (a, b)")
    assert rejects(fresh_db, "CREATE UNIQUE INDEX ON u (a, b) NULLS NOT DISTINCT")


def test_quoting_schema_and_mixed_case(fresh_db: str) -> None:
    execute(fresh_db, 'CREATE SCHEMA "Sales"', 'CREATE TABLE "Sales"."Order Lines" ("Qty" int, "select" int)',
            'INSERT INTO "Sales"."Order Lines" VALUES (1, 1), (-1, NULL), (NULL, 2)')
    ck = counting.check_("ck", "Sales", "Order Lines", '"Qty" > 0')
    nn = counting.notnull("nn", "Sales", "Order Lines", "select")
    count(fresh_db, [ck, nn])
    assert (ck.count, nn.count) == (1, 1)


def test_one_scan_per_table_for_all_check_notnull_and_fk_predicates(fresh_db: str) -> None:
    execute(
        fresh_db,
        "CREATE TABLE orders (id int PRIMARY KEY)",
        "INSERT INTO orders SELECT g FROM generate_series(1, 100) g",
        "CREATE TABLE wp (id int, stock int, reserved_stock int, amount numeric, order_id int)",
        "INSERT INTO wp SELECT g, g % 7 - 1, g % 5, g % 3, CASE WHEN g % 11 = 0 THEN 1000 + g ELSE g % 100 + 1 END "
        "FROM generate_series(1, 5000) g",
        "ANALYZE",
    )
    checks = [
        counting.check_("c1", "public", "wp", "stock >= 0"),
        counting.check_("c2", "public", "wp", "reserved_stock >= 0"),
        counting.check_("c3", "public", "wp", "stock >= reserved_stock"),
        counting.check_("c4", "public", "wp", "amount > 0"),
        counting.notnull("n1", "public", "wp", "order_id"),
        counting.foreign_key("fk", "public", "wp", ["order_id"], "public", "orders", ["id"], ref_unique=True),
    ]
    before = seq_scans(fresh_db, ["wp", "orders"])
    queries = counting.plan_queries(checks)
    assert [q.kind for q in queries] == ["scan"]
    count(fresh_db, checks)
    after = seq_scans(fresh_db, ["wp", "orders"], before)
    assert after["wp"] - before["wp"] == 1, (before, after)
    assert after["orders"] - before["orders"] <= 1  # the FK's hash build (or index probes: 0)
    expected = query(fresh_db, "SELECT count(*) FILTER (WHERE stock < 0), 0, count(*) FILTER (WHERE stock < "
                               "reserved_stock), count(*) FILTER (WHERE amount <= 0), 0, "
                               "count(*) FILTER (WHERE order_id > 1000) FROM wp")[0]
    assert tuple(c.count for c in checks) == expected


def test_user_checks_and_error_isolation(fresh_db: str) -> None:
    execute(fresh_db, "CREATE TABLE t (a int)", "INSERT INTO t VALUES (1), (-1), (-2)")
    good = counting.user("negatives", "SELECT count(*) FROM t WHERE a < 0")
    bad_sql = counting.user("broken", "SELECT count(*) FROM no_such_table")
    two_cols = counting.user("two", "SELECT 1, 2")
    ck_ok = counting.check_("ck_ok", "public", "t", "a > 0")
    ck_bad = counting.check_("ck_bad", "public", "t", "no_such_function(a)")
    count(fresh_db, [good, bad_sql, two_cols, ck_ok, ck_bad])
    assert good.count == 2 and good.error is None
    assert bad_sql.count is None and "no_such_table" in (bad_sql.error or "")
    assert two_cols.count is None and "one column" in (two_cols.error or "")
    assert ck_ok.count == 2 and ck_bad.count is None and "no_such_function" in (ck_bad.error or "")


def test_user_checks_run_read_only(fresh_db: str) -> None:
    execute(fresh_db, "CREATE TABLE t (a int)", "INSERT INTO t VALUES (1)")
    sneaky = counting.user("sneaky", "WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d")
    count(fresh_db, [sneaky])
    assert sneaky.count is None and "read-only" in (sneaky.error or "")
    assert query(fresh_db, "SELECT count(*) FROM t")[0][0] == 1


def test_statement_timeout_applies(fresh_db: str) -> None:
    slow = counting.user("slow", "SELECT count(*) FROM pg_sleep(2)")
    with pytest.raises(psycopg.errors.QueryCanceled):
        count(fresh_db, [slow], statement_timeout="200ms")


def test_not_expr_counts_exactly_the_false_rows_of_compound_checks(fresh_db: str) -> None:
    """The scan counts ``NOT (expr)``: the same rows as ``(expr) IS FALSE`` for every TRUE/FALSE/NULL mix, also
    when the planner pushes the NOT through AND/OR/negatable operators; PostgreSQL agrees."""
    execute(fresh_db, "CREATE TABLE m (a int, b int, s text, x float8)",
            "INSERT INTO m SELECT a, b, s, x FROM (VALUES (1), (-1), (NULL)) va(a), (VALUES (2), (0), (NULL)) vb(b), "
            "(VALUES ('x'), ('y'), (NULL)) vs(s), (VALUES (1.5::float8), ('NaN'), (NULL)) vx(x)")
    exprs = ["a > 0 AND b > 0", "a > 0 OR s <> 'x'", "NOT (a >= b)", "(a > 0) = (b > 0)", "x < 2",
             "CASE WHEN s = 'x' THEN a > 0 END", "a IS DISTINCT FROM b", "s IN ('x', 'z')"]
    checks = [counting.check_(f"ck{i}", "public", "m", e) for i, e in enumerate(exprs)]
    count(fresh_db, checks)
    for c, e in zip(checks, exprs, strict=True):
        expected = query(fresh_db, f"SELECT count(*) FILTER (WHERE ({e}) IS FALSE) FROM m")[0][0]
        assert c.count == expected and c.error is None, (e, c.count, expected)
        assert rejects(fresh_db, f"ALTER TABLE m ADD CHECK ({e})") is (expected > 0), e


def test_scan_feeds_only_violating_rows_to_the_aggregate(fresh_db: str) -> None:
    """One scan of the child, its WHERE the OR of the checks and the FK: only violating rows reach the aggregate."""
    execute(
        fresh_db,
        "CREATE TABLE p (id int PRIMARY KEY)",
        "INSERT INTO p SELECT g FROM generate_series(1, 50) g",
        "CREATE TABLE ch (id int, q int, p_id int)",
        # q < 0 every 10th row, orphan every 25th (some rows both), NULL key every 7th
        "INSERT INTO ch SELECT g, CASE WHEN g % 10 = 0 THEN -1 ELSE 1 END, "
        "CASE WHEN g % 7 = 0 THEN NULL WHEN g % 25 = 0 THEN 1000 ELSE g % 50 + 1 END FROM generate_series(1, 1000) g",
        "ANALYZE",
    )
    ck = counting.check_("ck", "public", "ch", "q > 0")
    fk = counting.foreign_key("fk", "public", "ch", ["p_id"], "public", "p", ["id"], ref_unique=True)
    [q] = counting.plan_queries([ck, fk])
    assert "\nWHERE " in q.sql and q.sql.count("LEFT JOIN") == 1
    before = seq_scans(fresh_db, ["ch", "p"])
    count(fresh_db, [ck, fk])
    after = seq_scans(fresh_db, ["ch", "p"], before)
    assert after["ch"] - before["ch"] == 1
    violating = query(fresh_db, "SELECT count(*) FILTER (WHERE q <= 0), count(*) FILTER (WHERE p_id IS NOT NULL "
                                "AND p_id NOT IN (SELECT id FROM p)), count(*) FILTER (WHERE q <= 0 OR (p_id IS NOT "
                                "NULL AND p_id NOT IN (SELECT id FROM p))) FROM ch")[0]
    assert (ck.count, fk.count) == violating[:2] and violating[2] < violating[0] + violating[1]  # overlap counted
    with psycopg.connect(libpq_url(fresh_db), autocommit=True) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q.sql).fetchone()[0][0]["Plan"]  # type: ignore
    assert plan["Node Type"] == "Aggregate"
    assert plan["Plans"][0]["Actual Rows"] == violating[2]  # the rows that violate something, nothing else


def test_checks_on_an_empty_table_count_zero(fresh_db: str) -> None:
    execute(fresh_db, "CREATE TABLE e (a int)")
    c = counting.check_("ck", "public", "e", "a > 0")
    n = counting.notnull("nn", "public", "e", "a")
    count(fresh_db, [c, n])
    assert (c.count, n.count, c.error) == (0, 0, None)


def test_split_queries_largest_first_to_the_least_loaded_session() -> None:
    qs = [counting.Query(f"q{i}", [], "scan") for i in range(5)]
    groups = counting.split_queries(qs, [10, 70, 20, 30, 40], 2)
    assert [[q.sql for q in g] for g in groups] == [["q1", "q2"], ["q4", "q3", "q0"]]
    assert counting.split_queries(qs[:1], [5], 3) == [[qs[0]], [], []]


def test_counting_on_two_sessions_shares_one_snapshot_and_counts_the_same(fresh_db: str) -> None:
    """Two sessions count the tables in parallel on the first one's exported snapshot: a violating row committed
    after the snapshot was taken (here: while the helper session is being opened) is counted by neither, and every
    count equals the one-session count of the same data."""
    execute(fresh_db, "CREATE TABLE parent (id int PRIMARY KEY)", "INSERT INTO parent SELECT generate_series(1, 100)",
            "CREATE TABLE child (id int, parent_id int, qty int)",
            "INSERT INTO child SELECT g, g % 120, g % 7 - 1 FROM generate_series(1, 3000) g",
            "CREATE TABLE other (id int, price numeric)",
            "INSERT INTO other SELECT g, g % 11 - 2 FROM generate_series(1, 2000) g")

    def checks() -> list[counting.Check]:
        return [counting.check_("qty_ok", "public", "child", "qty >= 0"),
                counting.foreign_key("child_fk", "public", "child", ("parent_id",), "public", "parent", ("id",),
                                     ref_unique=True),
                counting.check_("price_ok", "public", "other", "price >= 0")]

    serial = count(fresh_db, checks())
    opened: list[int] = []

    def open_session() -> psycopg.Connection:
        # committed after the first session exported its snapshot: neither session may count it
        execute(fresh_db, "INSERT INTO child VALUES (0, 999, -5)", "INSERT INTO other VALUES (0, -1)")
        conn = psycopg.connect(libpq_url(fresh_db), autocommit=True)
        opened.append(conn.info.backend_pid)
        return conn

    parallel = checks()
    with psycopg.connect(libpq_url(fresh_db), autocommit=True) as conn:
        counting.run_counts(conn, parallel, CountOptions(sessions=2, parallel_min_bytes=0),
                            open_session=open_session)
        first = conn.info.backend_pid
    assert len(opened) == 1 and opened[0] != first
    assert [(c.name, c.count, c.error) for c in parallel] == [(c.name, c.count, c.error) for c in serial]
    assert [c.count for c in serial] == [sum(1 for g in range(1, 3001) if g % 7 - 1 < 0),
                                         sum(1 for g in range(1, 3001) if g % 120 == 0 or g % 120 > 100),
                                         sum(1 for g in range(1, 2001) if g % 11 - 2 < 0)]
    assert [c.count for c in count(fresh_db, checks())] == [c.count + 1 for c in serial]  # now visible


def test_small_tables_are_counted_on_one_session(fresh_db: str) -> None:
    """Below ``parallel_min_bytes`` of tables to read no helper session is opened: a connection costs more."""
    execute(fresh_db, "CREATE TABLE a (x int)", "INSERT INTO a VALUES (1), (-1)", "CREATE TABLE b (y int)",
            "INSERT INTO b VALUES (-2)")
    checks = [counting.check_("a_ok", "public", "a", "x > 0"), counting.check_("b_ok", "public", "b", "y > 0")]

    def open_session() -> psycopg.Connection:
        raise AssertionError("a helper session was opened for two tiny tables")

    with psycopg.connect(libpq_url(fresh_db), autocommit=True) as conn:
        counting.run_counts(conn, checks, CountOptions(sessions=2), open_session=open_session)
    assert [c.count for c in checks] == [1, 1]
