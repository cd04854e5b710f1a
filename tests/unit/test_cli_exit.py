"""The CLI ends its process at once when a command is done (``cli._exit_now``), also when a thread pool of the
command is idle: its workers are woken as the interpreter's own exit wakes them. A real subprocess; an idle
``concurrent.futures`` worker is what the operator command leaves (Kopf's executors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import concurrent.futures
import threading
from schemagate import cli

pool = concurrent.futures.ThreadPoolExecutor(2)
assert pool.submit(lambda: 21 * 2).result() == 42  # its worker now waits, idle, for more work
done = []
t = threading.Thread(target=lambda: done.append(1))  # a non-daemon thread is still joined
t.start()
cli._exit_now(7)
"""


def test_exit_now_ends_the_process_with_an_idle_thread_pool() -> None:
    p = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, env={"PYTHONPATH": str(ROOT / "operator")},
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 7, (p.returncode, p.stderr)
