"""Benchmark: what a rehearsal costs (``schemagate rehearse``) against the bare work it stands for, a plain restore
of the backup plus ``alembic upgrade`` on the restored copy.

Setup: the wholesale seed's schema (``migrations/wholesale`` at revision 0001) with ``--rows`` rows in
``wholesaler_products`` and ``credit_transactions`` and ``rows / 10`` in ``orders`` (valid data: the pending
revisions 0002, constraints NOT VALID and a foreign key, and 0003, VALIDATE and concurrent index builds on orders,
apply), one verified backup (``schemagate.runner.backup``), on an embedded PostgreSQL 18 (or ``$DATABASE_URL``, an
admin URL).

Measured side by side, ``--reps`` interleaved repetitions, medians:
- anchor: CREATE DATABASE, ``pg_restore`` of the backup, ``alembic upgrade head`` there (``runner.inject.apply``),
  DROP DATABASE;
- ``schemagate.runner.rehearse.rehearse`` from the same backup: the backup verified (sha256, full read), a leftover
  dropped, the copy restored, the upgrade with the lock report (``pg_locks`` after every statement), the verify
  step's checks on the copy, the copy dropped.
Printed: both times, the ratio, and the rehearsal's parts (verification, restore, upgrade per revision, verify),
with its lock report. Goal: report only (issue 15 asks for the figure, it sets no bound).

Usage: ``python bench/rehearsal.py [--rows 1000000] [--reps 1]``.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/operator.py shadows stdlib
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "operator"))
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from bench.common import ROOT, fresh_database, goal, server  # noqa: E402

from schemagate.contract.target import Target  # noqa: E402

WHOLESALE = ROOT / "migrations" / "wholesale" / "alembic.ini"


def load(url: str, rows: int) -> None:
    """The wholesale schema at 0001 with valid rows (every constraint 0002/0003 add holds)."""
    from schemagate.contract.dburl import libpq_url
    from schemagate.runner.inject.apply import upgrade

    upgrade(Target(WHOLESALE, "0001", url))
    orders = max(1, rows // 10)
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        c.execute("INSERT INTO retailers (id, name) SELECT 'r' || g, 'retailer ' || g FROM generate_series(1, 1000) g")
        c.execute("INSERT INTO wholesalers (id, name) SELECT 'w' || g, 'wholesaler ' || g "
                  "FROM generate_series(1, 100) g")
        c.execute("INSERT INTO orders (id, retailer_id, wholesaler_id, status, total_amount) "  # type: ignore[arg-type]
                  f"SELECT 'o' || g, 'r' || (g % 1000 + 1), 'w' || (g % 100 + 1), "
                  f"(ARRAY['PENDING_BIDS','CONFIRMED','DELIVERED'])[g % 3 + 1], (g % 500) + 1.5 "
                  f"FROM generate_series(1, {orders}) g")
        c.execute("INSERT INTO wholesaler_products (id, wholesaler_id, name, price, stock, reserved_stock) "  # type: ignore[arg-type]
                  f"SELECT 'p' || g, 'w' || (g % 100 + 1), 'product ' || g, (g % 997) + 0.5, 10 + g % 50, g % 5 "
                  f"FROM generate_series(1, {rows}) g")
        c.execute("INSERT INTO credit_transactions (id, retailer_id, order_id, amount, type) "  # type: ignore[arg-type]
                  f"SELECT 't' || g, 'r' || (g % 1000 + 1), CASE WHEN g % 4 = 0 THEN NULL "
                  f"ELSE 'o' || (g % {orders} + 1) END, (g % 300) + 0.25, 'PURCHASE' "
                  f"FROM generate_series(1, {rows}) g")
        c.execute("VACUUM ANALYZE")


def plain(admin: str, backup: Path) -> float:
    """CREATE DATABASE, pg_restore, alembic upgrade head, DROP DATABASE: seconds."""
    from schemagate.contract.dburl import libpq_url, with_database
    from schemagate.runner import restore as rs
    from schemagate.runner.inject.apply import upgrade

    name = f"sgbench_plain_{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with psycopg.connect(libpq_url(admin), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = with_database(admin, name)
    rs.pg_restore(backup, url)
    upgrade(Target(WHOLESALE, "head", url))
    with psycopg.connect(libpq_url(admin), autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    return time.monotonic() - t0


def rehearsal(url: str, backup: Path) -> tuple[float, dict[str, Any]]:
    from schemagate.runner import rehearse as rh

    t0 = time.monotonic()
    r = rh.rehearse(Target(WHOLESALE, "head", url), backup=backup)
    seconds = time.monotonic() - t0
    if not r.ok:
        raise SystemExit(f"the rehearsal failed: {r.reason}: {r.message}")
    return seconds, r.data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args(argv)
    from schemagate.runner import backup as bk
    from schemagate.runner.inject.rehearsal import lock_summary

    with server() as admin, tempfile.TemporaryDirectory(prefix="sgbench-rehearsal-") as tmp:
        url = fresh_database(admin)
        t = time.monotonic()
        load(url, args.rows)
        print(f"loaded {args.rows} rows (wholesale at 0001) in {time.monotonic() - t:.1f}s", flush=True)
        b = bk.backup(url, backup_dir=tmp)
        if not b.ok:
            raise SystemExit(f"backup failed: {b.message}")
        path = Path(str(b.data["path"]))
        print(f"backup {path.name}: {path.stat().st_size / 1e6:.1f} MB", flush=True)
        plains, rehearsals, data = [], [], {}
        for _ in range(args.reps):
            plains.append(plain(admin, path))
            s, data = rehearsal(url, path)
            rehearsals.append(s)
        p, r = statistics.median(plains), statistics.median(rehearsals)
        print(f"plain restore + upgrade: {p:.2f}s (runs {', '.join(f'{x:.2f}' for x in plains)})")
        print(f"rehearsal:               {r:.2f}s (runs {', '.join(f'{x:.2f}' for x in rehearsals)})")
        print(f"rehearsal parts (last run): backup verification {data.get('verificationSeconds')}s, restore "
              f"{data.get('restoreSeconds')}s, "
              + ", ".join(f"revision {x['revision']} {x['seconds']:.2f}s" for x in data.get("revisions") or [])
              + f", verify on the copy {(data.get('verify') or {}).get('seconds')}s, total in the step "
                f"{data.get('durationSeconds')}s")
        print(f"lock report: {lock_summary(data)}")
        goal("rehearsal", f"rehearsal vs plain restore + upgrade, wholesale at {args.rows} rows",
             f"{r:.2f}s vs {p:.2f}s = {r / p:.2f}x", "report only", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
