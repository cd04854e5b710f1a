"""Kubernetes test-bed fixtures (wired from tests/conftest.py).

- ``kube`` (session): the running test bed, a :class:`Kube`. Started once per session in a few seconds; the
  binaries are built first (``tests/testbed/build.sh``) if they are missing, and the tests **fail** (never skip)
  with a message naming Go/npm when that is impossible. While it runs, ``KUBECONFIG`` points at it and its
  ``bin_dir`` (kubectl, helm) is first on ``PATH`` in ``os.environ``, so subprocesses and in-process clients
  (``kubernetes.config.load_kube_config()``, Kopf) find it without arguments.
- ``namespace`` (function): a fresh namespace named after the test, with its ``default`` ServiceAccount ready;
  deleted (without waiting) afterwards.
- ``map_image`` (function): ``map_image(pattern, paths={...}, env={...}, ...)`` like
  :meth:`Kube.map_image`, undone after the test.

Every test that uses ``kube`` gets the ``e2e`` marker automatically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from . import cluster as cluster_mod
from .cluster import BinariesMissing, Cluster, ClusterError
from .podspec import ImageMapping

T = TypeVar("T")

_build_error: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str = "", path: str = ""):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Kube:
    """What the ``kube`` fixture yields."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._clients: list[Any] = []
        self._client: Any = None
        self._ctx: ssl.SSLContext | None = None

    # -- where things are -----------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def bin_dir(self) -> Path:
        return self.cluster.bin_dir

    @property
    def server(self) -> str:
        return self.cluster.server

    @property
    def run_dir(self) -> Path:
        return self.cluster.run_dir

    @property
    def node(self) -> Any:
        """The :class:`tests.testbed.node.NodeStandIn`."""
        return self.cluster.node

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``os.environ`` (or ``base``) with KUBECONFIG and the test-bed binaries first on PATH."""
        return self.cluster.env(base)

    # -- tools ----------------------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60):
        """``subprocess.CompletedProcess`` (text) of the test bed's kubectl; raises ToolError if ``check``."""
        return self.cluster.kubectl(*args, input=input, check=check, timeout=timeout)

    def helm(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300):
        return self.cluster.helm(*args, input=input, check=check, timeout=timeout)

    def apply(self, manifest: str | dict | list, namespace: str | None = None) -> str:
        """``kubectl apply -f -`` a YAML string, an object or a list of objects; returns kubectl's output."""
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.kubectl(*args, input=manifest).stdout

    # -- Python client ----------------------------------------------------------------------------------------
    def api_client(self, **config: Any) -> Any:
        """A new ``kubernetes.client.ApiClient`` (admin); closed at the end of the session."""
        c = self.cluster.api_client(**config)
        self._clients.append(c)
        return c

    @property
    def client(self) -> Any:
        """A shared ``ApiClient`` for the convenience accessors below."""
        if self._client is None:
            self._client = self.api_client()
        return self._client

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client)

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.client)

    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.client)

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.client)

    def apiextensions(self) -> Any:
        from kubernetes import client

        return client.ApiextensionsV1Api(self.client)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:
        """Any API call as plain JSON (e.g. ``kube.request("GET", "/apis/batch/v1/namespaces/ns/jobs/x")``).
        Raises :class:`ApiError` (with ``.status`` and the server's ``.body``) on HTTP errors."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Accept": "application/json", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as r:  # noqa: S310
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace"), method, path) from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        """GET an API path as plain JSON (raises :class:`ApiError`, e.g. ``.status == 404``)."""
        return self.request("GET", path)

    def _ssl(self) -> ssl.SSLContext:
        if self._ctx is None:
            pki = self.cluster.pki
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
            ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
            self._ctx = ctx
        return self._ctx

    # -- namespaces -------------------------------------------------------------------------------------------
    def create_namespace(self, prefix: str = "t", labels: dict[str, str] | None = None, timeout: float = 30) -> str:
        """Create a uniquely named namespace and wait for its ``default`` ServiceAccount (pods need it)."""
        from kubernetes.client.exceptions import ApiException

        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:48].strip("-") or "t"
        name = f"{base}-{secrets.token_hex(3)}"
        core = self.core()
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": name, "labels": labels or {}}}, _preload_content=False)

        def sa() -> bool:
            try:
                core.read_namespaced_service_account("default", name, _preload_content=False)
                return True
            except ApiException as e:
                if e.status == 404:
                    return False
                raise

        self.wait_for(sa, timeout=timeout, message=f"the default ServiceAccount of namespace {name}")
        return name

    @contextlib.contextmanager
    def scratch_namespace(self, prefix: str = "t") -> Iterator[str]:
        """A fresh namespace (see :meth:`create_namespace`), deleted without waiting when the block ends."""
        name = self.create_namespace(prefix)
        try:
            yield name
        finally:
            try:
                self.delete_namespace(name)
            except Exception:  # noqa: S110 - the session may be shutting down
                pass

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 60) -> None:
        from kubernetes.client.exceptions import ApiException

        core = self.core()
        try:
            core.delete_namespace(name, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
        if wait:
            def gone() -> bool:
                try:
                    core.read_namespace(name, _preload_content=False)
                    return False
                except ApiException as e:
                    return e.status == 404

            self.wait_for(gone, timeout=timeout, message=f"namespace {name} to be deleted")

    # -- pods and images ---------------------------------------------------------------------------------------
    def logs(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """A container's log (stdout+stderr) from the node stand-in's files; works after the pod is gone."""
        return self.node.logs(namespace, pod, container, previous)

    def map_image(self, pattern: str, paths: dict[str, str | Path] | None = None,
                  env: dict[str, str] | None = None, **kw: Any) -> ImageMapping:
        """See :meth:`tests.testbed.node.NodeStandIn.map_image`. Prefer the ``map_image`` fixture in tests."""
        return self.node.map_image(pattern, paths, env, **kw)

    def unmap_image(self, mapping: ImageMapping) -> None:
        self.node.unmap_image(mapping)

    # -- waiting ------------------------------------------------------------------------------------------------
    @staticmethod
    def wait_for(fn: Callable[[], T], timeout: float = 60, interval: float = 0.2, message: str = "condition") -> T:
        """Poll ``fn`` until it returns something truthy (returned); raise AssertionError after ``timeout``.

        While polling, ``AssertionError``, ``KeyError``, ``IndexError`` and HTTP 404 errors (:class:`ApiError`,
        the client's ``ApiException``) count as "not yet" (e.g. ``lambda: kube.get(path)["status"]["phase"]``);
        the last one is reported on timeout. Other exceptions propagate at once."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while True:
            try:
                value = fn()
                if value:
                    return value
            except (AssertionError, KeyError, IndexError) as e:
                last_exc = e
            except Exception as e:
                if getattr(e, "status", None) != 404:
                    raise
                last_exc = e
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                     + (f" (last: {type(last_exc).__name__}: {last_exc})" if last_exc else ""))
            time.sleep(interval)

    def wait_job(self, namespace: str, name: str, timeout: float = 120) -> dict:
        """Wait until a Job has a ``Complete`` or ``Failed`` condition; returns the Job as a dict."""

        def finished() -> dict | None:
            job = self.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
            for c in (job.get("status") or {}).get("conditions") or []:
                if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                    return job
            return None

        return self.wait_for(finished, timeout=timeout, message=f"Job {namespace}/{name} to finish")

    def pods(self, namespace: str, selector: str | None = None) -> list[dict]:
        args = f"?labelSelector={selector}" if selector else ""
        return self.get(f"/api/v1/namespaces/{namespace}/pods{args}")["items"]

    def close(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: S110
                pass
        self._clients.clear()


def _uses_kube(item: pytest.Item) -> bool:
    return "kube" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark test-bed tests ``e2e`` (before ``-m`` deselects)."""
    for item in items:
        if _uses_kube(item):
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries once the selection is final, before any test runs (outside test timeouts)."""
    global _build_error
    config = session.config
    if not any(_uses_kube(i) for i in session.items) or config.option.collectonly:
        return
    if not cluster_mod.missing_binaries():
        return
    tr = config.pluginmanager.get_plugin("terminalreporter")

    def say(msg: str) -> None:
        if tr is not None:
            tr.write_line(msg)
        else:
            print(msg, file=sys.stderr)

    try:
        cluster_mod.ensure_binaries(build=True, output=say)
    except BinariesMissing as e:
        _build_error = str(e)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The running Kubernetes test bed (see the module docstring)."""
    if _build_error:
        pytest.fail(_build_error, pytrace=False)
    try:
        cluster = Cluster(build=True).start()
    except ClusterError as e:
        pytest.fail(str(e), pytrace=False)
    mp = pytest.MonkeyPatch()
    mp.setenv("KUBECONFIG", str(cluster.kubeconfig))
    mp.setenv("PATH", os.pathsep.join([str(cluster.bin_dir), os.environ.get("PATH", "")]))
    # the kubernetes client reads $KUBECONFIG once, at import time; point its default at the test bed too
    from kubernetes.config import kube_config

    mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    previous_term = None
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM
    k = Kube(cluster)
    try:
        yield k
    finally:
        k.close()
        cluster.stop()
        mp.undo()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test (named after it); deleted afterwards without waiting."""
    with kube.scratch_namespace(request.node.name) as name:
        yield name


@pytest.fixture
def map_image(kube: Kube) -> Iterator[Callable[..., ImageMapping]]:
    """``map_image(pattern, paths=None, env=None, *, path_prepend=None, workdir=None, entrypoint=None, cmd=None)``
    maps images matching the glob onto local paths for this test only."""
    made: list[ImageMapping] = []

    def _map(pattern: str, paths: dict[str, str | Path] | None = None, env: dict[str, str] | None = None,
             **kw: Any) -> ImageMapping:
        m = kube.map_image(pattern, paths, env, **kw)
        made.append(m)
        return m

    yield _map
    for m in made:
        kube.unmap_image(m)
