"""The operator chart installed once per session on the real node, with the image built from this repository."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.delivery.helm import CHARTS
from tests.realnode.support import OPERATOR_NS, diagnostics


@pytest.fixture(scope="session")
def operator(real_kube: Any, node_images: dict) -> Iterator[dict]:
    repo, tag = node_images["schemagate"]["image"].rsplit(":", 1)
    r = real_kube.helm("upgrade", "--install", "schemagate", str(CHARTS / "schemagate"), "-n", OPERATOR_NS,
                       "--create-namespace", "--set-string", f"image.repository={repo}",
                       "--set-string", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
                       "--wait", "--timeout", "240s", check=False, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr + diagnostics(real_kube)
    yield node_images["schemagate"]
