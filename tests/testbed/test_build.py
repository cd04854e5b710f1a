"""The build script reuses what it built: a second run is instant and says so."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.testbed import cluster

pytestmark = pytest.mark.e2e


def test_second_build_reuses_the_binaries() -> None:
    missing = cluster.missing_binaries()
    if missing:
        pytest.fail(cluster.install_hint(missing), pytrace=False)
    before = {b: (cluster.bin_dir() / b).stat().st_mtime_ns for b in cluster.BINARIES}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(cluster.BUILD_SCRIPT)], capture_output=True, text=True, timeout=120,
                          check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(cluster.bin_dir())
    assert elapsed < 10, f"a no-op build took {elapsed:.1f}s"
    assert {b: (cluster.bin_dir() / b).stat().st_mtime_ns for b in cluster.BINARIES} == before
