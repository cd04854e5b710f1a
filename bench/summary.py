"""Print the goal lines the benchmarks of one ``make bench`` run recorded (``$SCHEMAGATE_BENCH_SUMMARY``, JSON
lines written by ``bench.common.goal``) as one table; exit 1 when a goal is not met or a benchmark recorded none.

Usage: ``python bench/summary.py FILE [EXPECTED_BENCH ...]``.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/operator.py shadows stdlib

import json  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: bench/summary.py FILE [EXPECTED_BENCH ...]", file=sys.stderr)
        return 2
    path = Path(argv[0])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    print("\n== make bench: every goal, measured side by side in this run")
    print("| benchmark | measure | value | goal | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bench']} | {r['measure']} | {r['value']} | {r['goal']} | {'met' if r['met'] else 'NOT MET'} |")
    missing = [b for b in argv[1:] if not any(r["bench"] == b for r in rows)]
    for b in missing:
        print(f"| {b} | (no result: the benchmark failed before measuring) | | | NOT MET |")
    unmet = sum(1 for r in rows if not r["met"]) + len(missing)
    print(f"{len(rows) - sum(1 for r in rows if not r['met'])} met, {unmet} not met")
    return 1 if unmet else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
