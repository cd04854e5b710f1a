"""Benchmark B1: the precheck's counting cost against PostgreSQL's own NOT VALID + VALIDATE of the same
constraints (the anchor), with a bare ``SELECT count(*)`` and the seed runbook's diagnostic queries as context.

The anchor (``measure_anchor``, at the end of a run, serial, jit off): the violating rows are fixed first (VALIDATE
stops at the first bad row, so only on valid data does it scan everything, as the precheck always does); then, in
interleaved repetitions: NOT VALID + VALIDATE in one rolled-back transaction; the precheck's counting; count(*)
of each table; the runbook's one count(*) per constraint; and the whole ``schemagate precheck`` (a subprocess: start-
up, plan, shadow, counting, lint) on an Alembic project whose pending revision is the same SQL. Goals: counting
<= 1.0x VALIDATE warm and cold ("keep it"), whole precheck <= 0.8x VALIDATE. Then, as before:

Setup (the wholesale seed's predicates): ``wholesaler_products`` (ROWS rows; stock >= 0, reserved_stock >= 0,
stock >= reserved_stock), ``credit_transactions`` (ROWS rows; amount > 0 and a foreign key order_id -> orders),
``orders`` (ROWS/10 rows, the parent). The checks are derived the way the precheck derives them: the pending
revision (NOT VALID constraints, then VALIDATE) is applied to a copy of the schema (a shadow database) and the
catalogs are diffed, so the benchmark counts exactly what ``schemagate precheck`` would count.

Default data: 2M rows per child table, *wide* rows shaped like a real orders/products/ledger table (text SKU,
name, description, reference, status, address and created/updated timestamps; ~150-200 bytes a row, the checked
columns of ``wholesaler_products`` after the text columns, as they are in the seed). Why: the earlier narrow
5-column 1M-row tables fit comfortably in every cache and make a bare ``count(*)`` unrealistically cheap per row;
real tables carry text and timestamps, and 2M wide rows (~0.4 GB a child table) make the cold-cache figure a real
read from disk while the whole run stays within a few minutes on 2 cores. ``--narrow --rows 1000000`` reproduces
the earlier setup. ``shared_buffers`` is 2GB and the tables are loaded into it with ``pg_prewarm`` (when the
extension is available) so that "warm" means PostgreSQL's own cache, not the OS page cache behind the
bulk-read ring buffer that a scan of a table larger than shared_buffers/4 uses.

Measured in one run, per session mode (serial: ``max_parallel_workers_per_gather=0``; parallel: the server's
setting), the same parallelism/JIT settings on both sides:
- precheck: ``schemagate.analysis.counting.run_counts`` (one REPEATABLE READ, READ ONLY transaction: one scan per
  table with every CHECK/FK predicate, the FK as a left anti-join on the parent's primary key);
- bare: ``SELECT count(*)`` of each of the same three tables.
- warm: after an untimed pass, REPS interleaved repetitions, medians; also the backend's CPU time
  (``/proc/<pid>/schedstat``, serial mode only) because the 2 cores are shared and wall time is noisy;
- cold: COLD_REPS repetitions where *before each timed side* the embedded server is restarted (empties
  shared_buffers) and, as root, ``sync; echo 3 > /proc/sys/vm/drop_caches`` empties the OS page cache; both sides
  then read every table from disk once. Needs the embedded server (not ``$DATABASE_URL``): a server we did not
  start is not restarted.
Prints the ratios precheck / bare (context, <= 1.3) and ``pg_stat_user_tables.seq_scan`` deltas of one precheck
run (exactly one scan per table). In parallel mode every participant (leader + launched workers) bumps
``seq_scan``, so the raw delta is reported together with the participants PostgreSQL reports for the same SQL
(``EXPLAIN (ANALYZE)``: workers launched + leader, per scan node) and whether the two agree.

Usage: ``python bench/precheck.py [--rows 2000000] [--reps 5] [--cold-reps 3] [--narrow] [--no-cold]``; uses
``$DATABASE_URL`` (an admin URL, warm only) when set, else starts an embedded PostgreSQL 18 in a temporary
directory.
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from bench.common import goal as goal_line  # noqa: E402

from schemagate.analysis import catalog, counting, stepwise  # noqa: E402
from schemagate.contract.dburl import libpq_url, with_database  # noqa: E402
from schemagate.local.postgres import EmbeddedPostgres  # noqa: E402

TABLES = ["wholesaler_products", "credit_transactions", "orders"]

NARROW_SCHEMA = [
    "CREATE TABLE orders (id bigint PRIMARY KEY, retailer_id int NOT NULL, total_amount numeric(12,2))",
    "CREATE TABLE wholesaler_products (id bigint PRIMARY KEY, wholesaler_id int NOT NULL, name text NOT NULL, "
    "price numeric(12,2) NOT NULL, stock int, reserved_stock int)",
    "CREATE TABLE credit_transactions (id bigint PRIMARY KEY, retailer_id int NOT NULL, order_id bigint, "
    "amount numeric(12,2) NOT NULL, type text NOT NULL)",
]

WIDE_SCHEMA = [
    "CREATE TABLE orders (id bigint PRIMARY KEY, retailer_id int NOT NULL, status text NOT NULL, "
    "total_amount numeric(12,2), shipping_address text, created_at timestamptz NOT NULL, updated_at timestamptz)",
    "CREATE TABLE wholesaler_products (id bigint PRIMARY KEY, wholesaler_id int NOT NULL, sku text NOT NULL, "
    "name text NOT NULL, description text, price numeric(12,2) NOT NULL, stock int, reserved_stock int, "
    "created_at timestamptz NOT NULL, updated_at timestamptz)",
    "CREATE TABLE credit_transactions (id bigint PRIMARY KEY, retailer_id int NOT NULL, order_id bigint, "
    "amount numeric(12,2) NOT NULL, type text NOT NULL, reference text, description text, "
    "created_at timestamptz NOT NULL)",
]

SCHEMA = WIDE_SCHEMA

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


def load(url: str, rows: int, narrow: bool = False) -> None:
    # violations: every 1000th product has negative stock, every 1500th more reserved than stock; every 2000th
    # amount is 0, every 3000th order_id an orphan, every 7th NULL
    n, parents = int(rows), int(rows) // 10
    stock = "CASE WHEN g % 1000 = 0 THEN -1 ELSE g % 50 + 10 END, CASE WHEN g % 1500 = 0 THEN 100 ELSE g % 10 END"
    order_id = f"CASE WHEN g % 7 = 0 THEN NULL WHEN g % 3000 = 0 THEN {n} + g ELSE g % {parents} + 1 END"
    amount = "CASE WHEN g % 2000 = 0 THEN 0 ELSE (g % 300) + 1 END"
    ts = "timestamptz '2024-01-01' + g * interval '7 seconds'"
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        for s in SCHEMA:
            c.execute(s)  # type: ignore[arg-type]
        if narrow:
            c.execute(f"INSERT INTO orders SELECT g, g % 1000, (g % 500) + 1 FROM generate_series(1, {parents}) g")
            c.execute(f"INSERT INTO wholesaler_products SELECT g, g % 100, 'product ' || g, (g % 997) + 0.5, {stock} "
                      f"FROM generate_series(1, {n}) g")
            c.execute(f"INSERT INTO credit_transactions SELECT g, g % 1000, {order_id}, {amount}, 'DEBIT' "
                      f"FROM generate_series(1, {n}) g")
        else:
            c.execute(
                f"INSERT INTO orders SELECT g, g % 1000, (ARRAY['pending','confirmed','shipped','delivered'])[g % 4 + 1], "
                f"(g % 500) + 1, g || ' Market Street, Springfield, ' || lpad((g % 99999)::text, 5, '0'), {ts}, "
                f"CASE WHEN g % 3 = 0 THEN NULL ELSE {ts} + interval '1 day' END FROM generate_series(1, {parents}) g")
            c.execute(
                f"INSERT INTO wholesaler_products SELECT g, g % 100, 'SKU-' || lpad(g::text, 9, '0'), "
                f"'Product ' || g || ' ' || (ARRAY['rice','flour','oil','sugar','tea'])[g % 5 + 1] || ' ' || (g % 25 + 1) || 'kg', "
                f"'Wholesale pack, ' || md5(g::text) || ', store dry and cool', (g % 997) + 0.5, {stock}, {ts}, "
                f"CASE WHEN g % 4 = 0 THEN NULL ELSE {ts} + interval '3 hours' END FROM generate_series(1, {n}) g")
            c.execute(
                f"INSERT INTO credit_transactions SELECT g, g % 1000, {order_id}, {amount}, "
                f"(ARRAY['DEBIT','CREDIT','REFUND'])[g % 3 + 1], 'TX-' || md5(g::text), "
                f"'Payment for order ' || (g % {parents} + 1) || ' by retailer ' || (g % 1000), {ts} "
                f"FROM generate_series(1, {n}) g")
        c.execute("VACUUM (ANALYZE)")


def derived_checks(admin: str, real: str) -> list[counting.Check]:
    """Derive the checks exactly as the precheck does: a shadow copy of the schema, the pending revision's
    statements one by one with an identity snapshot after each (``analysis.stepwise``), bound to the real
    database (the fast route: no data changes)."""
    shadow_name = "sgbench_shadow_" + uuid.uuid4().hex[:8]
    with psycopg.connect(libpq_url(admin), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{shadow_name}"')  # type: ignore[arg-type]
    shadow = with_database(admin, shadow_name)
    try:
        with psycopg.connect(libpq_url(shadow), autocommit=True) as c:
            for s in SCHEMA:
                c.execute(s)  # type: ignore[arg-type]
            with c.cursor() as cur:
                rec = stepwise.StepRecorder(catalog.id_snapshot(cur))
            for s in PENDING:
                c.execute(s)  # type: ignore[arg-type]
                with c.cursor() as cur:
                    rec.add(catalog.id_snapshot(cur), s, "bench")
        checks = stepwise.bind_all(rec.steps, rec.start, rec.origins, "real-database")
        return [c for c in checks if not c.skipped and c.count is None and not c.unevaluated]
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


def deltas(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {t: after.get(t, 0) - before.get(t, 0) for t in TABLES}


OPTS = counting.CountOptions()


def session(c: psycopg.Connection) -> None:
    """The same parallelism/JIT settings for both sides."""
    if OPTS.max_parallel_workers_per_gather is not None:
        c.execute("SELECT set_config('max_parallel_workers_per_gather', %s, false)",
                  (str(OPTS.max_parallel_workers_per_gather),))
    if OPTS.jit is not None:
        c.execute("SELECT set_config('jit', %s, false)", ("on" if OPTS.jit else "off",))


def backend_cpu_ms(pid: int) -> float | None:
    """CPU time of a backend on this host (``/proc/<pid>/schedstat``), None when not readable."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def _timed(url: str, body) -> tuple[float, float | None]:  # type: ignore[no-untyped-def]
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        session(c)
        cpu0 = backend_cpu_ms(pid)
        t0 = time.perf_counter()
        body(c)
        elapsed = time.perf_counter() - t0
        cpu1 = backend_cpu_ms(pid)
    return elapsed, (None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / 1000)


def run_precheck(url: str, checks: list[counting.Check]) -> tuple[float, float | None]:
    fresh = counting.copy_checks(checks)
    elapsed = _timed(url, lambda c: counting.run_counts(c, fresh, OPTS))
    errors = [x for x in fresh if x.error]
    if errors:
        raise SystemExit(f"counting failed: {[(x.name, x.error) for x in errors]}")
    checks[:] = fresh
    return elapsed


def run_precheck_sessions(url: str, checks: list[counting.Check], sessions: int) -> float:
    """The counting on ``sessions`` sessions sharing one snapshot (what ``schemagate precheck`` does by default,
    ``--count-sessions``), the same settings on each."""
    import dataclasses

    fresh = counting.copy_checks(checks)
    opts = dataclasses.replace(OPTS, sessions=sessions)
    elapsed = _timed(url, lambda c: counting.run_counts(
        c, fresh, opts, open_session=lambda: psycopg.connect(libpq_url(url), autocommit=True)))[0]
    errors = [x for x in fresh if x.error]
    if errors:
        raise SystemExit(f"counting failed: {[(x.name, x.error) for x in errors]}")
    return elapsed


def run_bare(url: str) -> tuple[float, float | None]:
    def body(c: psycopg.Connection) -> None:
        for t in TABLES:
            c.execute(f"SELECT count(*) FROM {t}").fetchone()  # type: ignore[arg-type]
    return _timed(url, body)


def prewarm(url: str) -> str:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        try:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except psycopg.Error as e:
            return f"pg_prewarm unavailable ({str(e).strip().splitlines()[0]}): warm = after an untimed pass"
        for t in TABLES:
            c.execute("SELECT pg_prewarm(%s::regclass)", (t,))
            c.execute("SELECT pg_prewarm(%s::regclass)", (f"{t}_pkey",))
    return "tables and primary keys loaded into shared_buffers with pg_prewarm"


def participants(url: str, checks: list[counting.Check]) -> tuple[dict[str, int], dict[str, int], int]:
    """Run the precheck's SQL under EXPLAIN (ANALYZE) in the session's mode: the seq_scan deltas of that run, the
    scan participants PostgreSQL reports per table (leader + launched workers for each Seq Scan node under a
    Gather, 1 otherwise) and the number of launched workers."""
    expected = dict.fromkeys(TABLES, 0)
    launched_total = 0

    def walk(node: dict, gather_participants: int) -> None:  # type: ignore[type-arg]
        nonlocal launched_total
        if node.get("Node Type") in ("Gather", "Gather Merge"):
            launched = int(node.get("Workers Launched", 0))
            launched_total += launched
            gather_participants = launched + 1  # parallel_leader_participation is on by default
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in expected:
            expected[node["Relation Name"]] += gather_participants
        for child in node.get("Plans", []):
            walk(child, gather_participants)

    before = settle_stats(url, {})
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        session(c)
        counting.configure_session(c, OPTS)
        with c.transaction():
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for q in counting.plan_queries(counting.copy_checks(checks)):
                plan = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q.sql).fetchone()[0]  # type: ignore
                walk(plan[0]["Plan"], 1)
    return deltas(settle_stats(url, before), before), expected, launched_total


def fmt(d: dict[str, int]) -> str:
    return ", ".join(f"{t}={n}" for t, n in d.items())


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def measure_warm(url: str, checks: list[counting.Check], reps: int, goal: float, serial: bool) -> dict[str, object]:
    # warm-up (untimed), then the scan-count proof on one precheck run and one bare count
    run_bare(url)
    run_precheck(url, checks)
    before = settle_stats(url, {})
    run_precheck(url, checks)
    after = settle_stats(url, before)
    scans = deltas(after, before)
    run_bare(url)
    bare_scans = deltas(settle_stats(url, after), after)

    pre, bare = [], []
    for _ in range(reps):
        bare.append(run_bare(url))
        pre.append(run_precheck(url, checks))
    mp, mb = statistics.median(x[0] for x in pre), statistics.median(x[0] for x in bare)
    ratio = mp / mb
    print("counts: " + ", ".join(f"{c.name}={c.count}" for c in checks))
    print(f"[warm] precheck counting: median {mp * 1000:.1f} ms  (runs: {', '.join(f'{x[0] * 1000:.0f}' for x in pre)})")
    print(f"[warm] bare count(*):     median {mb * 1000:.1f} ms  (runs: {', '.join(f'{x[0] * 1000:.0f}' for x in bare)})")
    print(f"[warm] ratio precheck / bare count: {ratio:.2f}x (context: <= {goal}x {verdict(ratio <= goal)}; the "
          "goal is against VALIDATE, below)")
    cpu_ratio = None
    if serial and all(x[1] is not None for x in pre + bare):
        cp = statistics.median(x[1] for x in pre)  # type: ignore[misc]
        cb = statistics.median(x[1] for x in bare)  # type: ignore[misc]
        cpu_ratio = cp / cb
        print(f"[warm] backend CPU time: precheck {cp * 1000:.1f} ms, bare {cb * 1000:.1f} ms, ratio {cpu_ratio:.2f}x "
              "(less sensitive to the other load on the shared cores)")
    print("seq_scan deltas, one precheck run: " + fmt(scans))
    print("seq_scan deltas, one bare count:   " + fmt(bare_scans))
    if serial:
        one_scan = all(scans[t] == 1 for t in TABLES)
        print("exactly one scan per table (seq_scan +1 each, serial): " + verdict(one_scan))
    else:
        raw, expected, launched = participants(url, checks)
        one_scan = raw == expected
        print(f"parallel: seq_scan deltas of an EXPLAIN (ANALYZE) run of the same SQL: {fmt(raw)}; participants "
              f"PostgreSQL reports (leader + {launched} launched worker(s), per scan node): {fmt(expected)}")
        print("one scan per table per participant (raw seq_scan == launched workers + leader): " + verdict(one_scan))
    return {"warm": ratio, "cpu": cpu_ratio, "scans": scans, "one_scan": one_scan}


def drop_os_cache() -> bool:
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def measure_cold(embedded: EmbeddedPostgres, url: str, checks: list[counting.Check], reps: int,
                 goal: float) -> float:
    pre, bare = [], []
    dropped = []

    def cold() -> None:
        embedded.stop(mode="fast")
        dropped.append(drop_os_cache())
        embedded.start()

    for i in range(reps):
        sides = [("bare", bare, lambda: run_bare(url)), ("pre", pre, lambda: run_precheck(url, checks))]
        for _, out, fn in (sides if i % 2 == 0 else sides[::-1]):
            cold()
            out.append(fn()[0])
    mp, mb = statistics.median(pre), statistics.median(bare)
    ratio = mp / mb
    what = ("server restarted and OS page cache dropped before each timed side" if all(dropped)
            else "server restarted before each timed side; the OS page cache could NOT be dropped (not root?)")
    print(f"[cold] ({what})")
    print(f"[cold] precheck counting: median {mp * 1000:.1f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in pre)})")
    print(f"[cold] bare count(*):     median {mb * 1000:.1f} ms  (runs: {', '.join(f'{x * 1000:.0f}' for x in bare)})")
    print(f"[cold] ratio precheck / bare count: {ratio:.2f}x (context: <= {goal}x {verdict(ratio <= goal)}; the "
          "goal is against VALIDATE, below)")
    return ratio


# --------------------------------------------------------------------------------------------------------------
# The anchor: PostgreSQL's own NOT VALID + VALIDATE of the same constraints

NOT_VALID = [s for s in PENDING if "NOT VALID" in s]
VALIDATE = [s for s in PENDING if "VALIDATE CONSTRAINT" in s]
# what the seed runbook runs by hand before migrating: one diagnostic count(*) per constraint
RUNBOOK = [
    "SELECT count(*) FROM wholesaler_products WHERE stock < 0",
    "SELECT count(*) FROM wholesaler_products WHERE reserved_stock < 0",
    "SELECT count(*) FROM wholesaler_products WHERE stock < reserved_stock",
    "SELECT count(*) FROM credit_transactions WHERE amount <= 0",
    "SELECT count(*) FROM credit_transactions ct LEFT JOIN orders o ON o.id = ct.order_id "
    "WHERE ct.order_id IS NOT NULL AND o.id IS NULL",
]
FIX = [  # VALIDATE stops at the first violating row: it scans everything only on valid data
    "UPDATE wholesaler_products SET stock = greatest(stock, 0, reserved_stock), "
    "reserved_stock = greatest(reserved_stock, 0) WHERE stock < 0 OR reserved_stock < 0 OR stock < reserved_stock",
    "UPDATE credit_transactions SET amount = 1 WHERE amount <= 0",
    "UPDATE credit_transactions ct SET order_id = NULL WHERE order_id IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = ct.order_id)",
]


def run_validate(url: str) -> tuple[float, float | None]:
    """NOT VALID + VALIDATE of the pending constraints in one transaction, rolled back (nothing stays)."""
    def body(c: psycopg.Connection) -> None:
        with c.transaction(force_rollback=True):
            for s in NOT_VALID + VALIDATE:
                c.execute(s)  # type: ignore[arg-type]
    return _timed(url, body)


def run_runbook(url: str) -> tuple[float, float | None]:
    def body(c: psycopg.Connection) -> None:
        for q in RUNBOOK:
            c.execute(q).fetchone()  # type: ignore[arg-type]
    return _timed(url, body)


def alembic_project(tmp: Path) -> Path:
    """An Alembic project whose 0002 is the pending revision above (0001 = the schema already loaded)."""
    proj = tmp / "benchproject"
    (proj / "versions").mkdir(parents=True)
    shutil.copyfile(ROOT / "migrations" / "wholesale" / "alembic.ini", proj / "alembic.ini")
    shutil.copyfile(ROOT / "migrations" / "wholesale" / "env.py", proj / "env.py")
    (proj / "versions" / "0001_base.py").write_text(
        'revision = "0001"\ndown_revision = None\n\n\ndef upgrade() -> None:\n    pass\n')
    body = "".join(f"    op.execute({s!r})\n" for s in PENDING)
    (proj / "versions" / "0002_pending.py").write_text(
        'from alembic import op\n\nrevision = "0002"\ndown_revision = "0001"\n\n\n'
        f"def upgrade() -> None:\n{body}")
    return proj / "alembic.ini"


def run_whole_precheck(url: str, config: Path, pgoptions: str, sessions: int = 2) -> tuple[float, dict[str, float]]:
    """``schemagate precheck`` as a user runs it (``--count-sessions``: ``sessions``): (wall seconds, its parts
    from the result: ``step`` (the step's own duration: the wall minus process start, imports and exit) and
    ``restore`` (the shadow's schema restore))."""
    env = dict(os.environ, DATABASE_URL=url, PGOPTIONS=pgoptions)
    t0 = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).parent / "schemagate"), "precheck", "-c", str(config), "--json",
                        "--count-sessions", str(sessions)], env=env, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"schemagate precheck failed (exit {p.returncode}): {p.stdout[-600:]} {p.stderr[-600:]}")
    import json

    result = json.loads(p.stdout)
    return dt, {"step": float(result["durationSeconds"]),
                "restore": float(result["data"]["shadow"].get("restoreSeconds") or 0)}


def run_startup() -> float:
    """The process start a precheck cannot avoid: Python with the precheck's code (Alembic, SQLAlchemy, psycopg)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import schemagate.runner.precheck"], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")))
    return time.perf_counter() - t0


def measure_anchor(embedded: EmbeddedPostgres | None, url: str, checks: list[counting.Check], reps: int,
                   cold_reps: int) -> bool:
    """Counting, whole ``schemagate precheck``, count(*) and runbook queries against NOT VALID + VALIDATE, serial,
    after the violating rows are fixed (committed) so that VALIDATE scans every row as the precheck does."""
    OPTS.max_parallel_workers_per_gather, OPTS.jit = 0, False
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        for s in FIX:
            c.execute(s)  # type: ignore[arg-type]
        c.execute("VACUUM (ANALYZE)")
        c.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        c.execute("INSERT INTO alembic_version VALUES ('0001')")
    print("\n== anchor: PostgreSQL's own NOT VALID + VALIDATE of the same constraints (serial, jit off; violating "
          "rows fixed first, so VALIDATE scans every row)")
    tmp = Path(tempfile.mkdtemp(prefix="schemagate-bench-precheck-"))
    try:
        config = alembic_project(tmp)
        pgoptions = "-c max_parallel_workers_per_gather=0 -c jit=off"
        run_whole_precheck(url, config, pgoptions)  # warm-up
        sides: dict[str, list[float]] = {"validate": [], "counting": [], "counting, 2 sessions": [], "count(*)": [],
                                         "runbook": [], "whole precheck": [], "whole precheck, 1 counting session": [],
                                         "start-up": []}
        parts: dict[str, list[float]] = {}
        for _ in range(reps):
            sides["validate"].append(run_validate(url)[0])
            sides["counting"].append(run_precheck(url, checks)[0])
            sides["counting, 2 sessions"].append(run_precheck_sessions(url, checks, 2))
            sides["count(*)"].append(run_bare(url)[0])
            sides["runbook"].append(run_runbook(url)[0])
            wall, got = run_whole_precheck(url, config, pgoptions)
            sides["whole precheck"].append(wall)
            for k, v in {**got, "outside": wall - got["step"]}.items():
                parts.setdefault(k, []).append(v)
            sides["whole precheck, 1 counting session"].append(run_whole_precheck(url, config, pgoptions, 1)[0])
            sides["start-up"].append(run_startup())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in sides.items()}
    print("| warm, serial | median (ms) | / VALIDATE |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v * 1000:.0f} | {v / med['validate']:.2f}x |")
    ok = goal_line("precheck", "precheck counting vs NOT VALID + VALIDATE (warm, serial)",
              f"{med['counting'] / med['validate']:.2f}x (count(*) {med['count(*)'] / med['validate']:.2f}x, "
              f"runbook queries {med['runbook'] / med['validate']:.2f}x)", "<= 1.0x (keep it)",
              med["counting"] <= med["validate"])
    part = {k: statistics.median(v) for k, v in parts.items()}
    rest = part["step"] - part["restore"] - med["counting, 2 sessions"]
    print("\n| where the whole precheck's time goes (median s) | s | / VALIDATE |")
    print("|---|---|---|")
    for label, v in (("process start, imports, exit (wall minus the step's duration)", part["outside"]),
                     ("the shadow's schema restore", part["restore"]),
                     ("the counting on 2 sessions (measured alone, above)", med["counting, 2 sessions"]),
                     ("the rest of the step: the plan (read from the catalog), waiting for the shadow server, the "
                      "shadow upgrade (env.py's one run, on the shadow), catalog snapshots, the lint, the stop", rest)):
        print(f"| {label} | {v:.2f} | {v / med['validate']:.2f}x |")
    floor = med["counting, 2 sessions"] + med["start-up"]
    ok &= goal_line("precheck", "whole schemagate precheck vs NOT VALID + VALIDATE (warm, serial)",
               f"{med['whole precheck'] / med['validate']:.2f}x ({med['whole precheck']:.2f}s vs "
               f"{med['validate']:.2f}s; counting on 2 sessions, one snapshot; with 1 session "
               f"{med['whole precheck, 1 counting session'] / med['validate']:.2f}x; fixed cost "
               f"{med['whole precheck'] - med['counting, 2 sessions']:.2f}s; floor "
               f"{floor / med['validate']:.2f}x = the counting on 2 sessions {med['counting, 2 sessions']:.2f}s + "
               f"the process start with Alembic {med['start-up']:.2f}s)", "<= 0.8x",
               med["whole precheck"] <= 0.8 * med["validate"])
    print("  why the floor: the precheck counts every row (the counting, "
          f"{med['counting'] / med['validate']:.2f}x VALIDATE on one session, "
          f"{med['counting, 2 sessions'] / med['validate']:.2f}x on two sessions scanning different tables on one "
          "snapshot) and runs the application's env.py (a Python process with Alembic, SQLAlchemy and psycopg "
          "imported) before it knows what to count: env.py applies the pending revisions to the shadow, whose "
          "statements are the checks (the plan is read from the catalog, no env.py run). The shadow server starts "
          "and its schema is restored while Python imports; the lint's parser loads while the shadow upgrade and "
          "counting wait on PostgreSQL. Serial, the sum cannot go below the floor printed (start-up + counting), "
          "and the rest of the step (table above) is env.py's run on the shadow, the snapshots and the lint.")
    if embedded is not None and cold_reps > 0:
        cold_sides: dict[str, list[float]] = {"validate": [], "counting": []}

        def cold() -> None:
            embedded.stop(mode="fast")
            drop_os_cache()
            embedded.start()

        for i in range(cold_reps):
            order = [("validate", lambda: run_validate(url)), ("counting", lambda: run_precheck(url, checks))]
            for k, fn in (order if i % 2 == 0 else order[::-1]):
                cold()
                cold_sides[k].append(fn()[0])
        cv, cc = statistics.median(cold_sides["validate"]), statistics.median(cold_sides["counting"])
        ok &= goal_line("precheck", "precheck counting vs NOT VALID + VALIDATE (cold, serial)",
                   f"{cc / cv:.2f}x ({cc * 1000:.0f} vs {cv * 1000:.0f} ms)", "<= 1.0x (keep it)", cc <= cv)
    return ok


def main(argv: list[str] | None = None) -> int:
    global SCHEMA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--narrow", action="store_true", help="the earlier narrow 5-column tables")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold-reps", type=int, default=3)
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--goal", type=float, default=1.3)
    ap.add_argument("--workers", type=int, default=None,
                    help="max_parallel_workers_per_gather for both sides (default: serial, then the server's)")
    ap.add_argument("--jit", choices=["on", "off"], default="off", help="jit for both sides (default off)")
    args = ap.parse_args(argv)
    SCHEMA = NARROW_SCHEMA if args.narrow else WIDE_SCHEMA

    embedded = None
    base = None
    admin = os.environ.get("DATABASE_URL")
    if not admin:
        base = tempfile.mkdtemp(prefix="schemagate-bench-")
        os.chmod(base, 0o755)
        embedded = EmbeddedPostgres(base)
        embedded.init()
        with open(embedded.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            # room for the tables: "warm" means PostgreSQL's own cache
            f.write("shared_buffers = 2GB\nmax_wal_size = 4GB\n")
        admin = embedded.start()
    name = "sgbench_" + uuid.uuid4().hex[:8]
    summary: list[str] = []
    try:
        with psycopg.connect(libpq_url(admin), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
            info = c.execute("SELECT version(), current_setting('max_parallel_workers_per_gather'), "
                             "current_setting('jit'), current_setting('shared_buffers')").fetchone()
        url = with_database(admin, name)
        t0 = time.perf_counter()
        load(url, args.rows, args.narrow)
        print(f"PostgreSQL: {info[0].split(',')[0]}; max_parallel_workers_per_gather={info[1]}, jit={info[2]}, "
              f"shared_buffers={info[3]}; CPUs: {os.cpu_count()}")
        with psycopg.connect(libpq_url(url), autocommit=True) as c:
            sizes = c.execute("SELECT relname, n_live_tup, pg_size_pretty(pg_table_size(relid)) FROM "
                              "pg_stat_user_tables WHERE relname = ANY(%s) ORDER BY relname", (TABLES,)).fetchall()
        print(f"loaded ({'narrow' if args.narrow else 'wide'} rows) in {time.perf_counter() - t0:.1f}s: "
              + ", ".join(f"{r[0]} {r[1]} rows ({r[2]})" for r in sizes))
        checks = derived_checks(admin, url)
        print(f"derived {len(checks)} checks: " + ", ".join(f"{c.name} ({c.kind})" for c in checks))
        queries = counting.plan_queries(checks)
        print(f"{len(queries)} counting queries:")
        for q in queries:
            print("  " + q.sql.replace("\n", "\n  "))

        modes = [args.workers] if args.workers is not None else [0, None]
        for workers in modes:
            OPTS.max_parallel_workers_per_gather = workers
            OPTS.jit = args.jit == "on"
            label = f"max_parallel_workers_per_gather={workers if workers is not None else info[1]}"
            serial = workers == 0 or (workers is None and info[1] == "0")
            print(f"\n== session: {label}, jit={args.jit} (both sides)")
            print(prewarm(url))
            r = measure_warm(url, checks, args.reps, args.goal, serial)
            line = (f"{label}: warm {r['warm']:.2f}x ({verdict(r['warm'] <= args.goal)})"  # type: ignore[operator]
                    + (f", warm CPU {r['cpu']:.2f}x" if r["cpu"] is not None else ""))
            if embedded is not None and not args.no_cold:
                cold = measure_cold(embedded, url, checks, args.cold_reps, args.goal)
                line += f", cold {cold:.2f}x ({verdict(cold <= args.goal)})"
            elif not args.no_cold:
                print("[cold] skipped: $DATABASE_URL points at a server this benchmark did not start")
            line += (f"; seq_scan {fmt(r['scans'])} ({'one scan per table' if serial else 'per participant'}: "  # type: ignore[arg-type]
                     f"{verdict(bool(r['one_scan']))})")
            summary.append(line)
        print(f"\n== context: precheck / bare count(*) (<= {args.goal}x) and one scan per table")
        for line in summary:
            print("  " + line)
        anchored = measure_anchor(embedded, url, checks, args.reps, 0 if args.no_cold else args.cold_reps)
        return 0 if anchored else 1
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
