"""Stopping and removing a throw-away shadow server (``runner.shadowserver``), and its watchdog process.

Standard library only: the watchdog runs as ``python -I -S shadowwatch.py watch OWNER_PID DIR`` (no site
packages, no schemagate import: ~10 ms of start-up instead of ~50 ms, on the core the precheck's own start-up
needs). The same functions serve ``shadowserver`` in process.

- :func:`alive`: whether a pid is a live process (a zombie is not);
- :func:`postmaster_pid`: the postmaster's pid from ``DIR/data/postmaster.pid`` (PostgreSQL's lock file);
- :func:`destroy`: SIGQUIT to the postmaster (what ``pg_ctl stop -m immediate`` sends: it ends its backends, then
  itself), watched every 10 ms instead of pg_ctl's 100 ms, SIGKILL when it is still there after 10 s (a throw-away
  server: nothing in it is worth a checkpoint; its backends notice the postmaster's death and exit), then the
  directory is removed;
- :func:`watch`: remove the directory once its owner stopped the server (renamed it to :func:`stopped_name`, so
  the owner need not wait for the postmaster to exit), or once the owner process has died (even by SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def postmaster_pid(base: Path) -> int | None:
    """The pid in ``base/data/postmaster.pid`` (first line), or None."""
    try:
        return int((base / "data" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not alive(pid)


def destroy(base: Path) -> None:
    """Stop the server in ``base`` (see the module docstring) and remove the directory; never raises."""
    pid = postmaster_pid(base)
    if pid is not None and alive(pid):
        _signal(pid, signal.SIGQUIT)
        if not _wait_gone(pid, 10):
            _signal(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
    shutil.rmtree(base, ignore_errors=True)


def stopped_name(base: Path) -> Path:
    """Where a server stopped by its owner is renamed to for the watchdog to remove (same parent and prefix)."""
    return base.with_name(base.name.replace("schemagate-shadow-", "schemagate-shadow-stopped-", 1))


def watch(owner: int, base: Path, poll: float = 0.05) -> int:
    """Until the directory is gone: when the owner renamed it to :func:`stopped_name` (its stop), destroy that;
    when the owner process has died, destroy the directory."""
    original_parent = os.getppid()
    stopped = stopped_name(base)
    while True:
        if stopped.exists():
            destroy(stopped)
            return 0
        if not base.exists():  # renamed between the two looks (the rename is atomic), or removed
            if stopped.exists():
                destroy(stopped)
            return 0
        if not alive(owner) or os.getppid() != original_parent:
            destroy(base)
            destroy(stopped)  # renamed in the meantime
            return 0
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "watch":
        print("usage: python -I -S shadowwatch.py watch OWNER_PID DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal's group is the owner's business
    return watch(int(args[1]), Path(args[2]))


if __name__ == "__main__":
    sys.exit(main())
