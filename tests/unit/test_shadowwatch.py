"""The shadow server's watchdog (``runner/shadowwatch.py``): the owner renames the directory to stop the server
while the watchdog looks; whenever the rename falls between the watchdog's two looks, it still removes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemagate.runner import shadowwatch


class _LateRename(type(Path())):  # type: ignore[misc]
    """The stopped name: absent at the watchdog's first look, present after it (the owner renamed in between)."""

    looks = 0

    def exists(self, *args: object, **kwargs: object) -> bool:
        type(self).looks += 1
        return type(self).looks > 1 and super().exists()


def test_a_rename_between_the_two_looks_is_still_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "schemagate-shadow-abc"
    stopped = tmp_path / "schemagate-shadow-stopped-abc"
    stopped.mkdir()  # the owner's rename has happened: base is gone, the stopped directory holds the files
    (stopped / "PG_VERSION").write_text("18\n")
    monkeypatch.setattr(shadowwatch, "stopped_name", lambda b: _LateRename(stopped))
    assert shadowwatch.watch(os.getpid(), base, poll=0.01) == 0
    assert not stopped.exists() and not base.exists()
