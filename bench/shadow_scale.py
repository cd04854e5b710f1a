"""Benchmark: shadow-database preparation time against schema size (10 to 1000 tables).

Setup: for each size N, a database with N tables shaped like an application's (``id`` primary key, text, numeric,
timestamptz with a default, a CHECK, a foreign key to the previous table, one secondary index) and an
``alembic_version`` row, on an embedded PostgreSQL 18 (fsync on, data on the ordinary disk: a production-like
server).

Measured side by side in one run (``--reps`` interleaved repetitions, medians), per N, with whatever main's
``schemagate.runner.precheck.make_shadow`` does when the benchmark runs (then ``dispose``):
- ``default``: ``make_shadow(url)``, the precheck's own path (a throw-away server started from the cached
  ``initdb`` template, ``pg_dump --schema-only`` of the real database, ``pg_restore``), everything included; once
  per size also without the template (``SCHEMAGATE_SHADOW_TEMPLATE_DIR=off``: what a machine's first server
  costs), as context;
- ``existing tmpfs server``: ``make_shadow(url, shadow_url=...)``, the restore alone into an empty database of an
  already running server tuned for it (data directory on ``/dev/shm``, ``fsync=off``, ``synchronous_commit=off``,
  ``full_page_writes=off``, ``max_locks_per_transaction=1024``);
- floor: the same schema's DDL executed directly (one query string) on a fresh database of the throw-away server:
  no restore can be faster than the server executing the DDL it restores.
Goal: 1000 tables prepared within 2.5 s by the default path.

Usage: ``python bench/shadow_scale.py [--sizes 10,100,1000] [--reps 3]``.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/operator.py shadows stdlib
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "operator"))
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from bench.common import fresh_database, goal, server  # noqa: E402

GOAL_SECONDS = 2.5
# room for emptying a 1000-table schema in one transaction
THROWAWAY_CONF = "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_locks_per_transaction = 1024\n"


def schema_sql(n: int) -> str:
    parts = ["CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);",
             "INSERT INTO alembic_version VALUES ('0001');"]
    for i in range(n):
        fk = f", parent_id bigint REFERENCES t{i - 1} (id)" if i else ""
        parts.append(
            f"CREATE TABLE t{i} (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2) "
            f"CHECK (amount >= 0), created_at timestamptz NOT NULL DEFAULT now(){fk});"
            f"CREATE INDEX t{i}_name_idx ON t{i} (name);")
    return "\n".join(parts)


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """An embedded server with its data directory on /dev/shm and durability off (when /dev/shm exists)."""
    from schemagate.local.postgres import EmbeddedPostgres

    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    base = tempfile.mkdtemp(prefix="schemagate-bench-shadow-", dir=parent)
    os.chmod(base, 0o755)
    embedded = EmbeddedPostgres(base)
    try:
        embedded.init()
        with open(embedded.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(THROWAWAY_CONF)
        yield embedded.start()
    finally:
        with contextlib.suppress(Exception):
            embedded.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def prepare_once(url: str, shadow_url: str | None) -> float:
    from schemagate.runner import precheck

    t0 = time.monotonic()
    sh = precheck.make_shadow(url, shadow_url=shadow_url)
    dt = time.monotonic() - t0
    notes: list[str] = []
    sh.dispose(notes)  # drops the shadow, or empties the explicit one
    if notes:
        raise SystemExit(f"disposing of the shadow failed: {notes}")
    return dt


def main(argv: list[str] | None = None) -> int:
    from schemagate.contract.dburl import libpq_url

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    rows: dict[int, dict[str, float]] = {}
    with server() as admin, throwaway_server() as spare:
        for n in sizes:
            url = libpq_url(fresh_database(admin, f"sgshadow{n}"))
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(schema_sql(n))  # type: ignore[arg-type]
            target = libpq_url(fresh_database(spare, f"sgshadowtarget{n}"))
            same: list[float] = []
            thrown: list[float] = []
            prepare_once(url, None)  # warm-up (caches, first pg_dump start)
            for _ in range(args.reps):
                same.append(prepare_once(url, None))
                thrown.append(prepare_once(url, target))
            floor: list[float] = []
            for _ in range(args.reps):
                ddl = libpq_url(fresh_database(spare, f"sgshadowfloor{n}"))
                t0 = time.monotonic()
                with psycopg.connect(ddl, autocommit=True) as c:
                    c.execute(schema_sql(n))  # type: ignore[arg-type]
                floor.append(time.monotonic() - t0)
            os.environ["SCHEMAGATE_SHADOW_TEMPLATE_DIR"] = "off"  # context: a machine's first server runs initdb
            try:
                no_template = prepare_once(url, None)
            finally:
                del os.environ["SCHEMAGATE_SHADOW_TEMPLATE_DIR"]
            rows[n] = {"same": statistics.median(same), "throwaway": statistics.median(thrown),
                       "floor": statistics.median(floor), "initdb": no_template}
            print(f"{n} tables: default {rows[n]['same']:.2f}s (without the cached initdb template "
                  f"{no_template:.2f}s), existing tmpfs server {rows[n]['throwaway']:.2f}s, "
                  f"the DDL itself {rows[n]['floor']:.2f}s", flush=True)
    print("\n| tables | default make_shadow (s) | into an existing tmpfs, fsync-off server (s) | ratio | floor: the "
          "schema's DDL run directly on that server (s) |")
    print("|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['same']:.2f} | {r['throwaway']:.2f} | {r['same'] / r['throwaway']:.2f}x | "
              f"{r['floor']:.2f} |")
    big = max(rows)
    r: dict[str, Any] = rows[big]
    ok = goal("shadow_scale", f"shadow preparation at {big} tables (main's make_shadow)",
              f"{r['same']:.2f}s (into an existing tmpfs server {r['throwaway']:.2f}s; floor, the DDL alone "
              f"{r['floor']:.2f}s: {r['same'] / r['floor']:.2f}x the floor; without the initdb template "
              f"{r['initdb']:.2f}s)", f"<= {GOAL_SECONDS}s",
              r["same"] <= GOAL_SECONDS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
