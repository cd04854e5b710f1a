"""Benchmark B3: the cost of the data-carrying shadow for case 11's shape (backfill UPDATE, then SET NOT NULL).

``member (id int PRIMARY KEY, confirmed boolean)`` with ROWS rows (default 1M), every 3rd ``confirmed`` NULL; the
pending revision is case 11's::

    UPDATE member SET confirmed = false WHERE confirmed IS NULL;
    ALTER TABLE member ALTER COLUMN confirmed SET NOT NULL;

Because it changes data, ``schemagate precheck`` takes the data route (``analysis.stepwise``): a schema-only shadow
run to record each statement's checks, then a data-carrying shadow with the real schema and the table's rows
streamed with ``COPY``, where the revision runs again and ``member.confirmed NOT NULL`` is counted right before
the statement that validates it (0: the UPDATE filled the NULLs).

Measured (REPS interleaved runs, medians):
- precheck: ``schemagate.runner.precheck.precheck`` end to end (both shadows, the copy, the counting; lint off);
  its ``dataShadow.seconds`` (copy + second run) is shown apart from the fixed cost (the shadows' schema copies);
- PostgreSQL itself: the same two statements on a copy of the table (same primary key, vacuumed) in one
  transaction, rolled back (what the migration costs the server).
Prints the ratio precheck / PostgreSQL (goal <= GOAL, default 4) and whether the count is the right one (0).

Usage: ``python bench/data_shadow.py [--rows 1000000] [--reps 3] [--goal 4]``; uses ``$DATABASE_URL`` (an admin
URL) when set, else an embedded PostgreSQL 18 in a temporary directory.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "operator"))
sys.path.insert(0, os.path.dirname(_HERE))

import psycopg  # noqa: E402
from bench.common import ROOT, fresh_database, goal, server  # noqa: E402

from schemagate.contract.dburl import libpq_url  # noqa: E402
from schemagate.contract.target import Target  # noqa: E402
from schemagate.runner import precheck  # noqa: E402

REVISION = ["UPDATE member SET confirmed = false WHERE confirmed IS NULL",
            "ALTER TABLE member ALTER COLUMN confirmed SET NOT NULL"]
ENV_PY = ROOT / "tests" / "precheck" / "projects" / "rawsql" / "env.py"  # the usual env.py shape


def project(root: Path) -> str:
    """Case 11 as an Alembic project: 0001 creates member, 0002 is the backfill + SET NOT NULL."""
    (root / "versions").mkdir(parents=True)
    shutil.copy(ENV_PY, root / "env.py")
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n", encoding="utf-8")
    bodies = {"0001": ["CREATE TABLE member (id int PRIMARY KEY, confirmed boolean)"], "0002": REVISION}
    prev = None
    for rev, stmts in bodies.items():
        body = "\n".join(f"    op.execute({s!r})" for s in stmts)
        (root / "versions" / f"{rev}.py").write_text(
            f"from alembic import op\nrevision = {rev!r}\ndown_revision = {prev!r}\nbranch_labels = None\n"
            f"depends_on = None\n\n\ndef upgrade():\n{body}\n\n\ndef downgrade():\n    pass\n", encoding="utf-8")
        prev = rev
    return str(root / "alembic.ini")


def load(url: str, rows: int) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        c.execute(f"INSERT INTO member SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE g % 2 = 0 END "  # type: ignore
                  f"FROM generate_series(1, {int(rows)}) g")
        c.execute("VACUUM (ANALYZE) member")


def postgres_itself(url: str) -> float:
    """The revision's two statements on a copy of the table, in one transaction, rolled back."""
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS member_copy")
        c.execute("CREATE TABLE member_copy (LIKE member INCLUDING ALL)")  # the same primary key
        c.execute("INSERT INTO member_copy SELECT * FROM member")
        c.execute("VACUUM (ANALYZE) member_copy")
        t0 = time.perf_counter()
        with c.transaction(force_rollback=True):
            for s in REVISION:
                c.execute(s.replace("member", "member_copy"))  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
        c.execute("DROP TABLE member_copy")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--goal", type=float, default=4.0)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="schemagate-bench-proj-"))
    try:
        with server() as admin:
            return measure(admin, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(admin: str, work: Path, args: argparse.Namespace) -> int:
    from schemagate.runner.inject.apply import upgrade

    url = fresh_database(admin)
    ini = project(work / "case11")
    upgrade(Target(ini, "0001", url, "DATABASE_URL"))
    load(url, args.rows)
    pre, pg, route = [], [], []
    r = None
    for _ in range(args.reps):
        pg.append(postgres_itself(url))
        t0 = time.perf_counter()
        r = precheck.precheck(Target(ini, "head", url, "DATABASE_URL"), lint=False)
        pre.append(time.perf_counter() - t0)
        route.append(float(r.data.get("dataShadow", {}).get("seconds") or 0))
        nn = {c["key"]: c for c in r.data["checks"]}.get("member.confirmed NOT NULL")
        if not (r.outcome.name == "SUCCEEDED" and nn is not None and nn["count"] == 0
                and nn["evaluatedBy"] == "data-shadow"):
            goal("data_shadow", "case 11 at 1M rows: the right count (0, from the data shadow)",
                 f"{r.reason}: {r.message[:200]}", "passes with 0", False)
            return 1
    assert r is not None
    mp, mg, md = statistics.median(pre), statistics.median(pg), statistics.median(route)
    print(f"rows: {args.rows}; {r.data['dataShadow']['bytes'] / 1e6:.1f} MB copied into the data shadow; "
          f"member.confirmed NOT NULL = 0 (data-shadow)")
    print(f"precheck end to end:       median {mp:.2f} s (runs: {', '.join(f'{x:.2f}' for x in pre)})")
    print(f"  of which the data route: median {md:.2f} s (copy + second run + counting); fixed cost "
          f"{mp - md:.2f} s (schema-only shadow, catalog snapshots, plan)")
    print(f"PostgreSQL itself (UPDATE + SET NOT NULL on a copy): median {mg:.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in pg)})")
    print(f"ratio data route / PostgreSQL: {md / mg:.2f}x")
    ok = goal("data_shadow", f"case 11 shape at {args.rows} rows: precheck (data-carrying shadow) vs PostgreSQL's "
              "own UPDATE + SET NOT NULL on a copy", f"{mp / mg:.2f}x ({mp:.2f} s vs {mg:.2f} s)",
              f"<= {args.goal}x", mp / mg <= args.goal)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
