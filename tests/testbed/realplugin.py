"""Fixtures of the real node (realnode.py), wired from tests/conftest.py.

- ``node_images`` (session): the images built from this repository by ``images.sh`` (``make images``), a dict
  ``{"schemagate": {"image", "archive", "size", ...}, "example-app": {..., "repository", "versions"}, "base": ...}``.
  Built once the selection is final, before any test runs (outside test timeouts); cached by content hash.
- ``real_kube`` (session): a second test-bed cluster whose node is real (containerd, runc, CNI bridge, kubelet,
  kube-scheduler), with the images imported; a :class:`~tests.testbed.plugin.Kube`. It does not touch
  ``os.environ`` (the stand-in ``kube`` may run in the same session): use ``real_kube.env()``/``kubectl``/``helm``.
- ``real_namespace`` (function): a fresh namespace on it, deleted afterwards.
- ``pod_db`` (function): ``(url, pod_url)``: a fresh database on the embedded PostgreSQL, as this machine reaches
  it and as pods reach it (the node's bridge address, same port).

Tests using ``real_kube`` get the ``e2e`` and ``realnode`` markers. If the machine cannot run the node (not root,
no cgroups, packages impossible to install), they fail with the reason; nothing is skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .cluster import Cluster, ClusterError
from .plugin import Kube
from .realnode import NODE_IP, POD_SUBNET

IMAGES_SCRIPT = Path(__file__).resolve().parent / "images.sh"
_images: dict[str, Any] | None = None
_images_error: str | None = None


def build_images(output: Any = None) -> dict[str, Any]:
    """Run images.sh (cached by content hash) and return the JSON it describes the images with."""
    proc = subprocess.run(["bash", str(IMAGES_SCRIPT)], capture_output=True, text=True,
                          check=False, timeout=3600)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"tests/testbed/images.sh failed (exit {proc.returncode}):\n"
                           + "\n".join(proc.stderr.splitlines()[-40:]))
    if output is not None:
        for line in proc.stderr.splitlines():
            if line.startswith("[images"):
                output(line)
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def _uses_real(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return "real_kube" in names or "node_images" in names


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_real(item):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.realnode)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the images once the selection is final, before any test runs (outside test timeouts)."""
    global _images, _images_error
    if session.config.option.collectonly or not any(_uses_real(i) for i in session.items):
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    say = tr.write_line if tr is not None else print
    say("[realnode] building the images (tests/testbed/images.sh; cached by content hash)")
    try:
        _images = build_images(output=say)
    except Exception as e:  # noqa: BLE001 (reported by every test that needs the images)
        _images_error = str(e)


@pytest.fixture(scope="session")
def node_images() -> dict[str, Any]:
    global _images
    if _images_error:
        pytest.fail(_images_error, pytrace=False)
    if _images is None:
        _images = build_images()
    return _images


def node_image_imports(images: dict[str, Any]) -> list[tuple[Path, list[str]]]:
    """(OCI archive, names) to import into the node's containerd: the operator image, and the example application
    under its content tag and one tag per Alembic revision (the chart's ``version`` is the image tag)."""
    op, app = images["schemagate"], images["example-app"]
    return [
        (Path(op["archive"]), [op["image"]]),
        (Path(app["archive"]), [app["image"], *(f"{app['repository']}:{v}" for v in app["versions"])]),
    ]


@pytest.fixture(scope="session")
def real_kube(node_images: dict[str, Any]) -> Iterator[Kube]:
    """A test-bed cluster with the real node (see the module docstring)."""
    # images.sh again (a cache hit in seconds): another work tree's images.sh may have pruned the archives
    # since the selection was built
    fresh = build_images()
    if {k: v["image"] for k, v in fresh.items()} != {k: v["image"] for k, v in node_images.items()}:
        pytest.fail(f"the images changed during the session: {node_images} -> {fresh}", pytrace=False)
    try:
        cluster = Cluster(node="real", images=node_image_imports(fresh), start_timeout=600).start()
    except ClusterError as e:
        pytest.fail(str(e), pytrace=False)
    k = Kube(cluster)
    try:
        yield k
    finally:
        k.close()
        cluster.stop()


@pytest.fixture
def real_namespace(real_kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real node's cluster (named after the test); deleted afterwards without waiting."""
    with real_kube.scratch_namespace(request.node.name) as name:
        yield name


def pod_url(url: str) -> str:
    """The same database URL as a pod on the real node reaches it: the node's bridge address, same port (the
    node DNATs it to 127.0.0.1)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in ("127.0.0.1", "localhost"):
        return url
    netloc = parts.netloc.rsplit("@", 1)
    hostport = netloc[-1].replace(host, NODE_IP, 1)
    return urlunsplit(parts._replace(netloc="@".join([*netloc[:-1], hostport])))


@pytest.fixture(scope="session")
def pod_reachable_pg(pg_embedded: Any) -> Any:
    """The embedded PostgreSQL, also accepting (password) connections from the pod subnet (pg_hba.conf)."""
    if pg_embedded is None:
        pytest.fail("the real-node tests need the embedded PostgreSQL (a server on this machine that pods reach "
                    "through the node's bridge address); unset SCHEMAGATE_TEST_DATABASE_URL/DATABASE_URL",
                    pytrace=False)
    hba = Path(pg_embedded.data_dir) / "pg_hba.conf"
    line = f"host all all {POD_SUBNET} scram-sha-256\n"
    if line not in hba.read_text():
        with open(hba, "a") as f:
            f.write(f"# pods of the test bed's real node\n{line}")
        from tests.pgfixtures import _admin_exec

        _admin_exec(pg_embedded.url(), "SELECT pg_reload_conf()")
    return pg_embedded


@pytest.fixture
def pod_db(pod_reachable_pg: Any, fresh_db: str) -> tuple[str, str]:
    return fresh_db, pod_url(fresh_db)

