"""What the benchmarks share: a PostgreSQL server, fresh databases, and goal lines for the ``make bench`` summary.

- :func:`server` yields an admin URL (libpq form): ``$DATABASE_URL`` when set, else an embedded PostgreSQL 18 in a
  temporary directory (``extra_conf`` lines are appended to its ``postgresql.conf``), stopped and removed after.
- :func:`fresh_database` creates a uniquely named database and returns its URL.
- :func:`goal` prints ``[goal] measure: value (goal ...): met|NOT MET`` and, when ``$SCHEMAGATE_BENCH_SUMMARY``
  names a file, appends the same as one JSON line, which ``bench/summary.py`` prints as one table at the end of
  ``make bench``.

Import it after putting ``operator/`` on ``sys.path`` (each benchmark does that first).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_ENV = "SCHEMAGATE_BENCH_SUMMARY"


def _embedded_class():  # type: ignore[no-untyped-def]
    from schemagate.local.postgres import EmbeddedPostgres

    return EmbeddedPostgres


@contextlib.contextmanager
def server(extra_conf: str = "") -> Iterator[str]:
    """An admin URL: ``$DATABASE_URL``, or a new embedded PostgreSQL (removed afterwards)."""
    admin = os.environ.get("DATABASE_URL")
    if admin:
        yield admin
        return
    base = tempfile.mkdtemp(prefix="schemagate-bench-")
    os.chmod(base, 0o755)
    embedded = _embedded_class()(base)
    try:
        embedded.init()
        if extra_conf:
            with open(embedded.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
                f.write(extra_conf.rstrip("\n") + "\n")
        yield embedded.start()
    finally:
        with contextlib.suppress(Exception):
            embedded.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(admin: str, prefix: str = "sgbench") -> str:
    """CREATE DATABASE with a unique name; returns its URL (libpq form)."""
    from schemagate.contract.dburl import libpq_url, with_database

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(admin), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return with_database(admin, name)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def goal(bench: str, measure: str, value: str, goal_text: str, met: bool) -> bool:
    """Print one goal line and record it for the summary; returns ``met``. The 1-minute load average goes with
    the value: on a shared machine an absolute time means little without it (ratios are measured side by side)."""
    value = f"{value}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    print(f"[goal] {measure}: {value} (goal {goal_text}): {verdict(met)}", flush=True)
    path = os.environ.get(SUMMARY_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"bench": bench, "measure": measure, "value": value, "goal": goal_text,
                                "met": met}) + "\n")
    return met
