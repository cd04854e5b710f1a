"""Benchmark B1: the precheck's counting cost against a bare ``SELECT count(*)`` of the same tables.

Setup (the wholesale seed's predicates): ``wholesaler_products`` (ROWS rows; stock >= 0, reserved_stock >= 0,
stock >= reserved_stock), ``credit_transactions`` (ROWS rows; amount > 0 and a foreign key order_id -> orders),
``orders`` (ROWS/10 rows, the parent). The checks are derived the way the precheck derives them: the pending
revision (NOT VALID constraints, then VALIDATE) is applied to a copy of the schema (a shadow database) and the
catalogs are diffed, so the benchmark counts exactly what ``schemagate precheck`` would count.

Measured in one run, warm cache (one untimed pass first), REPS repetitions, medians:
- precheck: ``schemagate.analysis.counting.run_counts`` (one REPEATABLE READ, READ ONLY transaction: one scan per
  table with every CHECK/FK predicate, the FK as a left anti-join on the parent's primary key);
- bare: ``SELECT count(*)`` of each of the same three tables.
Prints the ratio precheck / bare (goal <= 1.3) and ``pg_stat_user_tables.seq_scan`` deltas of one precheck run
(goal: exactly one scan per table).

Usage: ``python bench/precheck.py [--rows 1000000] [--reps 5]``; uses ``$DATABASE_URL`` (an admin URL) when set,
else starts an embedded PostgreSQL 18 in a temporary directory.
"""

from __future__ import annotations

import os
import sys

# bench/ holds operator.py, which would shadow the standard library's ``operator`` for a script run from here
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

import psycopg  # noqa: E402

from schemagate.analysis import catalog, counting, derive  # noqa: E402
from schemagate.runner.db import EmbeddedPostgres, libpq_url, with_database  # noqa: E402

TABLES = ["wholesaler_products", "credit_transactions", "orders"]

SCHEMA = [
    "CREATE TABLE orders (id bigint PRIMARY KEY, retailer_id int NOT NULL, total_amount numeric(12,2))",
    "CREATE TABLE wholesaler_products (id bigint PRIMARY KEY, wholesaler_id int NOT NULL, name text NOT NULL, "
    "price numeric(12,2) NOT NULL, stock int, reserved_stock int)",
    "CREATE TABLE credit_transactions (id bigint PRIMARY KEY, retailer_id int NOT NULL, order_id bigint, "
    "amount numeric(12,2) NOT NULL, type text NOT NULL)",
]

PENDING = [  # the pending revision, applied to the shadow copy only
    "ALTER TABLE wholesaler_products ADD CONSTRAINT check_stock_non_negative CHECK (stock >= 0) NOT VALID",
    "ALTER TABLE wholesaler_products ADD CONSTRAINT check_reserved_stock_non_negative CHECK (reserved_stock >= 0) "
    "NOT VALID",
    "ALTER TABLE wholesaler_products ADD CONSTRAINT check_stock_availability CHECK (stock >= reserved_stock) "
    "NOT VALID",
    "ALTER TABLE credit_transactions ADD CONSTRAINT check_credit_transaction_amount CHECK (amount > 0) NOT VALID",
    "ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_order_id_fkey FOREIGN KEY (order_id) "
    "REFERENCES orders (id) ON DELETE SET NULL NOT VALID",
    "ALTER TABLE wholesaler_products VALIDATE CONSTRAINT check_stock_non_negative",
    "ALTER TABLE wholesaler_products VALIDATE CONSTRAINT check_reserved_stock_non_negative",
    "ALTER TABLE wholesaler_products VALIDATE CONSTRAINT check_stock_availability",
    "ALTER TABLE credit_transactions VALIDATE CONSTRAINT check_credit_transaction_amount",
    "ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_order_id_fkey",
]


def load(url: str, rows: int) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        for s in SCHEMA:
            c.execute(s)  # type: ignore[arg-type]
        n, parents = int(rows), int(rows) // 10
        c.execute(f"INSERT INTO orders SELECT g, g % 1000, (g % 500) + 1 FROM generate_series(1, {parents}) g")
        # violations: every 1000th product has negative stock, every 1500th more reserved than stock
        c.execute(
            f"INSERT INTO wholesaler_products SELECT g, g % 100, 'product ' || g, (g % 997) + 0.5, "
            "CASE WHEN g % 1000 = 0 THEN -1 ELSE g % 50 + 10 END, CASE WHEN g % 1500 = 0 THEN 100 ELSE g % 10 END "
            f"FROM generate_series(1, {n}) g")
        # violations: every 2000th amount is 0, every 3000th order_id is an orphan, every 7th is NULL
        c.execute(
            f"INSERT INTO credit_transactions SELECT g, g % 1000, "
            f"CASE WHEN g % 7 = 0 THEN NULL WHEN g % 3000 = 0 THEN {n} + g ELSE g % {parents} + 1 END, "
            f"CASE WHEN g % 2000 = 0 THEN 0 ELSE (g % 300) + 1 END, 'DEBIT' FROM generate_series(1, {n}) g")
        c.execute("VACUUM (ANALYZE)")


def derived_checks(admin: str, real: str) -> list[counting.Check]:
    """Derive the checks exactly as the precheck does: shadow copy + pending revision + catalog diff."""
    shadow_name = "sgbench_shadow_" + uuid.uuid4().hex[:8]
    with psycopg.connect(libpq_url(admin), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{shadow_name}"')  # type: ignore[arg-type]
    shadow = with_database(admin, shadow_name)
    try:
        with psycopg.connect(libpq_url(shadow), autocommit=True) as c:
            for s in SCHEMA + PENDING:
                c.execute(s)  # type: ignore[arg-type]
            shadow_cat = catalog.snapshot(c)
        with psycopg.connect(libpq_url(real), autocommit=True) as c:
            real_cat = catalog.snapshot(c)
        return derive.derive(real_cat, shadow_cat).counted
    finally:
        with psycopg.connect(libpq_url(admin), autocommit=True) as c:
            c.execute(f'DROP DATABASE "{shadow_name}" WITH (FORCE)')  # type: ignore[arg-type]


def seq_scans(url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        rows = c.execute("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                         (TABLES,)).fetchall()
    return {r[0]: int(r[1] or 0) for r in rows}


def settle_stats(url: str, before: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    last = seq_scans(url)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = seq_scans(url)
        if now == last and now != before:
            return now
        last = now
    return last


OPTS = counting.CountOptions()


def session(c: psycopg.Connection) -> None:
    """The same parallelism/JIT settings for both sides."""
    if OPTS.max_parallel_workers_per_gather is not None:
        c.execute("SELECT set_config('max_parallel_workers_per_gather', %s, false)",
                  (str(OPTS.max_parallel_workers_per_gather),))
    if OPTS.jit is not None:
        c.execute("SELECT set_config('jit', %s, false)", ("on" if OPTS.jit else "off",))


def run_precheck(url: str, checks: list[counting.Check]) -> float:
    fresh = counting.copy_checks(checks)
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        t0 = time.perf_counter()
        counting.run_counts(c, fresh, OPTS)
        elapsed = time.perf_counter() - t0
    errors = [x for x in fresh if x.error]
    if errors:
        raise SystemExit(f"counting failed: {[(x.name, x.error) for x in errors]}")
    checks[:] = fresh
    return elapsed


def run_bare(url: str) -> float:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        session(c)
        t0 = time.perf_counter()
        for t in TABLES:
            c.execute(f"SELECT count(*) FROM {t}").fetchone()  # type: ignore[arg-type]
        return time.perf_counter() - t0


def measure(url: str, checks: list[counting.Check], reps: int, goal: float) -> None:
    # warm-up (untimed), then the scan-count proof on one precheck run and one bare count
    run_bare(url)
    run_precheck(url, checks)
    before = settle_stats(url, {})
    run_precheck(url, checks)
    after = settle_stats(url, before)
    scans = {t: after.get(t, 0) - before.get(t, 0) for t in TABLES}
    run_bare(url)
    bare_after = settle_stats(url, after)
    bare_scans = {t: bare_after.get(t, 0) - after.get(t, 0) for t in TABLES}

    pre, bare = [], []
    for _ in range(reps):
        bare.append(run_bare(url))
        pre.append(run_precheck(url, checks))
    mp, mb = statistics.median(pre), statistics.median(bare)
    ratio = mp / mb
    print("counts: " + ", ".join(f"{c.name}={c.count}" for c in checks))
    print(f"precheck counting: median {mp * 1000:.1f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in pre)})")
    print(f"bare count(*):     median {mb * 1000:.1f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in bare)})")
    print(f"ratio precheck / bare count: {ratio:.2f}x (goal <= {goal}x): {'MET' if ratio <= goal else 'NOT MET'}")
    print("seq_scan deltas, one precheck run: " + ", ".join(f"{t}={n}" for t, n in scans.items()))
    print("seq_scan deltas, one bare count:   " + ", ".join(f"{t}={n}" for t, n in bare_scans.items()))
    # a parallel scan bumps seq_scan once per participant (leader + workers), hence the comparison with count(*)
    one_scan = all(scans[t] == 1 for t in TABLES)
    print("exactly one scan per table (seq_scan +1 each): " + ("MET" if one_scan else "NOT MET")
          + ("" if one_scan else " (with parallel workers each participant counts; the parent's hash build is "
                                  "replicated per worker)"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--goal", type=float, default=1.3)
    ap.add_argument("--workers", type=int, default=None,
                    help="max_parallel_workers_per_gather for both sides (default: the server's)")
    ap.add_argument("--jit", choices=["on", "off"], default=None, help="jit for both sides (default: the server's)")
    args = ap.parse_args(argv)

    embedded = None
    base = None
    admin = os.environ.get("DATABASE_URL")
    if not admin:
        base = tempfile.mkdtemp(prefix="schemagate-bench-")
        os.chmod(base, 0o755)
        embedded = EmbeddedPostgres(base)
        embedded.init()
        with open(embedded.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("shared_buffers = 512MB\n")  # room for the tables: "warm" means PostgreSQL's own cache
        admin = embedded.start()
    name = "sgbench_" + uuid.uuid4().hex[:8]
    try:
        with psycopg.connect(libpq_url(admin), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
            info = c.execute("SELECT version(), current_setting('max_parallel_workers_per_gather'), "
                             "current_setting('jit'), current_setting('shared_buffers')").fetchone()
        url = with_database(admin, name)
        t0 = time.perf_counter()
        load(url, args.rows)
        print(f"PostgreSQL: {info[0].split(',')[0]}; max_parallel_workers_per_gather={info[1]}, jit={info[2]}, "
              f"shared_buffers={info[3]}; CPUs: {os.cpu_count()}")
        with psycopg.connect(libpq_url(url), autocommit=True) as c:
            sizes = c.execute("SELECT relname, n_live_tup, pg_size_pretty(pg_table_size(relid)) FROM "
                              "pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY relname", (TABLES,)).fetchall()
        print(f"loaded in {time.perf_counter() - t0:.1f}s: " + ", ".join(f"{r[0]} {r[1]} rows ({r[2]})"
                                                                          for r in sizes))
        checks = derived_checks(admin, url)
        print(f"derived {len(checks)} checks: " + ", ".join(f"{c.name} ({c.kind})" for c in checks))
        queries = counting.plan_queries(checks)
        print(f"{len(queries)} counting queries:")
        for q in queries:
            print("  " + q.sql.replace("\n", "\n  "))

        modes = [(args.workers, args.jit)] if (args.workers is not None or args.jit is not None) else [
            (0, "off"), (None, "off")]
        for workers, jit in modes:
            OPTS.max_parallel_workers_per_gather = workers
            OPTS.jit = None if jit is None else jit == "on"
            print(f"\n== session: max_parallel_workers_per_gather={workers if workers is not None else info[1]}, "
                  f"jit={jit or info[2]} (both sides)")
            measure(url, checks, args.reps, args.goal)
        return 0
    finally:
        try:
            with psycopg.connect(libpq_url(admin), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        finally:
            if embedded is not None:
                embedded.stop(mode="immediate")
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
