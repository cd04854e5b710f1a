"""Fixtures of the precheck tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemagate.runner import precheck


@pytest.fixture
def pod_shadow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The precheck Job's sidecar: ``precheck.shadow_server(workdir)`` in a thread (the pod's throw-away server,
    stopped when count writes ``shadow-done``); yields the workdir (``tmp_path/work``); afterwards the server's
    directory must be gone."""
    import shutil
    import tempfile
    import threading

    from tests.precheck.test_shadow_server import wait_gone

    home = Path(tempfile.mkdtemp(prefix="sg-pod-shadow-"))
    home.chmod(0o777)
    monkeypatch.setenv("SCHEMAGATE_SHADOW_DIR", str(home))
    work = tmp_path / "work"
    work.mkdir()
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(precheck.shadow_server(work)), daemon=True)
    t.start()
    try:
        yield work
    finally:
        (work / precheck.SHADOW_DONE_FILE).touch()
        t.join(timeout=60)
        assert not t.is_alive(), "the shadow-server phase did not stop"
        assert results and results[0].ok, results
        wait_gone(home)
        shutil.rmtree(home, ignore_errors=True)
