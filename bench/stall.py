"""Benchmark: application writers during the wholesale migration, naive revision 0002 vs the lock-safe one.

Scenario (issue "fast and gentle on production"): the wholesale schema at revision 0001 with clean data; writer
threads (``--writers``, default 8) run application transactions at ``--rate`` (default 200 tx/s in total,
paced, a missed slot is skipped rather than bursted; ``--think`` ms, default 5, between a transaction's
statements); a report reader holds ACCESS SHARE on ``orders`` for ``--reader`` seconds (default 12: a
``SELECT`` then ``pg_sleep`` in one transaction); half a second after the reader starts, ``schemagate migrate``
(a subprocess, ``--lock-timeout 5s``, default retries) applies 0001 -> head. The writers stop one second after the
migration ends.

The application's transactions (all valid data, so the new constraints never reject them):
- place an order: INSERT orders; INSERT stock_reservations (FK checks on orders, wholesaler_products);
  UPDATE wholesaler_products.reserved_stock;
- reserve more stock for an existing order: INSERT stock_reservations (FK check on orders); UPDATE
  wholesaler_products.reserved_stock;
- post a ledger entry for an order (FK check on orders); record a credit transaction for an order and
  UPDATE credit_accounts.used_credit; record a retailer payment.

Measured per variant, side by side in one run: the longest application transaction (the writer stall), the
deadlocks (``pg_stat_database.deadlocks`` delta, every session of the database, the migration's too), the
application transactions PostgreSQL aborted (any error), the migration's attempts and time.

Variants: ``naive`` = ``migrations/wholesale`` with revision 0002 replaced by ``bench/projects/
wholesale_naive_0002.py`` (every ALTER TABLE in one transaction, as the example was before); ``safe`` = the
example as shipped.

Goals (safe variant): stall <= lock_timeout + 50 ms, 0 deadlocks, 0 application errors.

Usage: ``python bench/stall.py [--rate 200] [--reader 12] [--lock-timeout 5s] [--variants naive,safe]``; uses
``$DATABASE_URL`` (an admin URL) when set, else an embedded PostgreSQL 18.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/operator.py shadows stdlib
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "operator"))
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import psycopg  # noqa: E402
from bench.common import ROOT, fresh_database, goal, server  # noqa: E402

from schemagate.contract.target import Target  # noqa: E402

WHOLESALE = ROOT / "migrations" / "wholesale"
NAIVE_0002 = ROOT / "bench" / "projects" / "wholesale_naive_0002.py"
SCHEMAGATE = Path(sys.executable).parent / "schemagate"

RETAILERS, WHOLESALERS, PRODUCTS, ORDERS = 200, 20, 2000, 20000
LOAD_SQL = f"""
INSERT INTO retailers (id, name) SELECT 'r' || i, 'retailer ' || i FROM generate_series(1, {RETAILERS}) i;
INSERT INTO wholesalers (id, name) SELECT 'w' || i, 'wholesaler ' || i FROM generate_series(1, {WHOLESALERS}) i;
INSERT INTO credit_accounts (id, retailer_id, credit_limit, used_credit)
  SELECT 'ca' || i, 'r' || i, 1000000000, 0 FROM generate_series(1, {RETAILERS}) i;
INSERT INTO wholesaler_products (id, wholesaler_id, name, price, stock, reserved_stock)
  SELECT 'p' || i, 'w' || (1 + i % {WHOLESALERS}), 'product ' || i, 10, 1000000000, 0
  FROM generate_series(1, {PRODUCTS}) i;
INSERT INTO orders (id, retailer_id, wholesaler_id, status, total_amount)
  SELECT 'o' || i, 'r' || (1 + i % {RETAILERS}), 'w' || (1 + i % {WHOLESALERS}), 'CONFIRMED', 10 + i % 90
  FROM generate_series(1, {ORDERS}) i;
INSERT INTO stock_reservations (id, order_id, product_id, quantity)
  SELECT 'sr' || i, 'o' || i, 'p' || (1 + i % {PRODUCTS}), 1 FROM generate_series(1, {ORDERS}) i;
INSERT INTO ledger_entries (id, retailer_id, order_id, amount, description)
  SELECT 'le' || i, 'r' || (1 + i % {RETAILERS}), 'o' || i, 10, 'order' FROM generate_series(1, {ORDERS}) i;
INSERT INTO credit_transactions (id, retailer_id, order_id, amount, type)
  SELECT 'ct' || i, 'r' || (1 + i % {RETAILERS}), 'o' || i, 10, 'DEBIT' FROM generate_series(1, {ORDERS}) i;
INSERT INTO retailer_payments (id, retailer_id, amount)
  SELECT 'rp' || i, 'r' || (1 + i % {RETAILERS}), 10 FROM generate_series(1, {RETAILERS}) i;
"""


@dataclass
class Run:
    variant: str
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    deadlocks: int = 0
    migrate_seconds: float = 0.0
    migrate_exit: int | None = None
    migrate_message: str = ""
    transactions: int = 0

    @property
    def stall(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def app_errors(self) -> int:
        return sum(self.errors.values())


def project(variant: str, tmp: Path) -> Path:
    """The alembic.ini of the variant's project (a copy of the wholesale example, 0002 swapped for naive)."""
    dest = tmp / variant
    shutil.copytree(WHOLESALE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if variant == "naive":
        shutil.copyfile(NAIVE_0002, dest / "versions" / "0002_production_safety_constraints.py")
    return dest / "alembic.ini"


def upgrade_to_base(config: Path, url: str) -> None:
    from schemagate.runner.inject.apply import upgrade

    upgrade(Target(config, "0001", url))


def app_transaction(c: psycopg.Connection, rng: random.Random, seq: str, think: float) -> None:
    """One application transaction; ``think`` seconds between its statements (the application's own work)."""
    kind = rng.random()
    o = f"o{rng.randint(1, ORDERS)}"
    r = f"r{rng.randint(1, RETAILERS)}"
    with c.transaction():
        if kind < 0.3:  # place an order and reserve stock
            p = f"p{rng.randint(1, PRODUCTS)}"
            c.execute("INSERT INTO orders (id, retailer_id, status, total_amount) VALUES (%s, %s, 'PENDING_BIDS', 20)",
                      (f"o-{seq}", r))
            time.sleep(think)
            c.execute("INSERT INTO stock_reservations (id, order_id, product_id, quantity) VALUES (%s, %s, %s, 1)",
                      (f"sr-{seq}", f"o-{seq}", p))
            time.sleep(think)
            c.execute("UPDATE wholesaler_products SET reserved_stock = reserved_stock + 1 WHERE id = %s", (p,))
        elif kind < 0.5:  # reserve more stock for an existing order
            p = f"p{rng.randint(1, PRODUCTS)}"
            c.execute("INSERT INTO stock_reservations (id, order_id, product_id, quantity) VALUES (%s, %s, %s, 1)",
                      (f"sr-{seq}", o, p))
            time.sleep(think)
            c.execute("UPDATE wholesaler_products SET reserved_stock = reserved_stock + 1 WHERE id = %s", (p,))
        elif kind < 0.7:  # ledger entry for an order
            c.execute("INSERT INTO ledger_entries (id, retailer_id, order_id, amount, description) "
                      "VALUES (%s, %s, %s, 5, 'adjustment')", (f"le-{seq}", r, o))
        elif kind < 0.9:  # credit transaction and the account's used credit
            c.execute("INSERT INTO credit_transactions (id, retailer_id, order_id, amount, type) "
                      "VALUES (%s, %s, %s, 5, 'DEBIT')", (f"ct-{seq}", r, o))
            time.sleep(think)
            c.execute("UPDATE credit_accounts SET used_credit = used_credit + 5 WHERE retailer_id = %s", (r,))
        else:  # retailer payment
            c.execute("INSERT INTO retailer_payments (id, retailer_id, amount) VALUES (%s, %s, 5)", (f"rp-{seq}", r))


def writer(url: str, run: Run, rate: float, think: float, stop: threading.Event, idx: int,
           lock: threading.Lock) -> None:
    rng = random.Random(idx)
    period = 1.0 / rate
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET statement_timeout = '60s'")
        nxt = time.monotonic()
        n = 0
        while not stop.is_set():
            now = time.monotonic()
            if now < nxt:
                time.sleep(nxt - now)
            nxt += period
            if nxt < time.monotonic():  # skip missed slots (no burst after a stall)
                nxt = time.monotonic() + period
            n += 1
            t0 = time.monotonic()
            err = None
            try:
                app_transaction(c, rng, f"{run.variant}-{idx}-{n}", think)
            except psycopg.Error as e:
                err = e.sqlstate or type(e).__name__
            dt = time.monotonic() - t0
            with lock:
                run.transactions += 1
                run.latencies.append(dt)
                if err:
                    run.errors[err] = run.errors.get(err, 0) + 1


def reader(url: str, seconds: float, started: threading.Event) -> None:
    with psycopg.connect(url) as c:
        c.execute("SELECT count(*) FROM orders")  # ACCESS SHARE on orders until the transaction ends
        started.set()
        c.execute("SELECT pg_sleep(%s)", (seconds,))
        c.rollback()


def deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        row = c.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def scenario(admin: str, variant: str, tmp: Path, args: argparse.Namespace) -> Run:
    from schemagate.contract.dburl import libpq_url

    url = libpq_url(fresh_database(admin, f"sgstall_{variant}"))
    config = project(variant, tmp)
    upgrade_to_base(config, url)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(LOAD_SQL)  # type: ignore[arg-type]
        c.execute("VACUUM ANALYZE")
    run = Run(variant)
    before = deadlocks(url)
    stop, lock = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=writer, args=(url, run, args.rate / args.writers, args.think / 1000, stop, i, lock))
               for i in range(args.writers)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = threading.Event()
    rd = threading.Thread(target=reader, args=(url, args.reader, started))
    rd.start()
    started.wait(10)
    time.sleep(0.5)
    env = dict(os.environ, DATABASE_URL=url)
    t0 = time.monotonic()
    p = subprocess.run([str(SCHEMAGATE), "migrate", "-c", str(config), "--target", "head",
                        "--lock-timeout", args.lock_timeout, "--json"], capture_output=True, text=True, env=env,
                       timeout=600, check=False)
    run.migrate_seconds = time.monotonic() - t0
    run.migrate_exit = p.returncode
    try:
        run.migrate_message = str(json.loads(p.stdout)["message"])[:400]
    except (ValueError, KeyError, TypeError):
        run.migrate_message = (p.stdout.strip() or p.stderr.strip())[-400:]
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    rd.join()
    time.sleep(0.6)  # the ended sessions' statistics reach pg_stat_database
    run.deadlocks = deadlocks(url) - before
    return run


def seconds(text: str) -> float:
    t = text.strip()
    for unit, f in (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("h", 3600.0)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * f
    return float(t) / 1000.0  # PostgreSQL's default unit for lock_timeout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="application transactions per second, in total")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--think", type=float, default=5.0, help="milliseconds between an application transaction's "
                    "statements (its own work between round trips)")
    ap.add_argument("--reader", type=float, default=12.0, help="seconds the reader holds its lock on orders")
    ap.add_argument("--lock-timeout", default="5s")
    ap.add_argument("--variants", default="naive,safe")
    args = ap.parse_args(argv)
    lt = seconds(args.lock_timeout)
    runs: list[Run] = []
    tmp = Path(tempfile.mkdtemp(prefix="schemagate-stall-"))
    try:
        with server() as admin:
            for v in args.variants.split(","):
                print(f"== {v}: writers {args.rate:g} tx/s, reader {args.reader:g}s on orders, "
                      f"lock_timeout {args.lock_timeout}", flush=True)
                r = scenario(admin, v, tmp, args)
                runs.append(r)
                print(f"   {r.transactions} transactions; max stall {r.stall:.3f}s; deadlocks {r.deadlocks}; "
                      f"application errors {r.app_errors} {r.errors or ''}; migrate exit {r.migrate_exit} in "
                      f"{r.migrate_seconds:.1f}s: {r.migrate_message}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| variant | transactions | max stall (s) | deadlocks | application errors | migrate exit | migrate (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r.variant} | {r.transactions} | {r.stall:.3f} | {r.deadlocks} | {r.app_errors} | "
              f"{r.migrate_exit} | {r.migrate_seconds:.1f} |")
    safe = next((r for r in runs if r.variant == "safe"), None)
    naive = next((r for r in runs if r.variant == "naive"), None)
    ok = True
    if safe is not None:
        ratio = f"; naive/safe {naive.stall / safe.stall:.2f}x" if naive and safe.stall else ""
        ok &= goal("stall", "safe migration: max writer stall", f"{safe.stall:.3f}s{ratio}",
                   f"<= lock_timeout + 50ms = {lt + 0.05:.3f}s", safe.stall <= lt + 0.05)
        ok &= goal("stall", "safe migration: deadlocks", f"{safe.deadlocks} (naive {naive.deadlocks if naive else '-'})",
                   "0", safe.deadlocks == 0)
        ok &= goal("stall", "safe migration: application errors",
                   f"{safe.app_errors} (naive {naive.app_errors if naive else '-'})", "0", safe.app_errors == 0)
        ok &= goal("stall", "safe migration: migrate succeeded", f"exit {safe.migrate_exit}", "exit 0",
                   safe.migrate_exit == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
