"""The ecosystem's own Go code as test tools: Argo CD's resource health, kstatus, promlint, PromQL.

``tests/delivery/gotools/build.sh`` builds each tool from the Go module proxy and caches the binary by content
hash (``~/.cache/schemagate/gotools``). As pytest plugin, this module builds the tools the selected tests use
once the selection is final, before any test runs (outside the per-test timeout), and provides them as
session fixtures ``argocd_health``, ``kstatus``, ``promlint`` and ``promql``. A tool that cannot be built makes its tests
**fail** with the build's message (Go >= 1.25 and the module proxy are needed); nothing is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
BUILD = HERE / "gotools" / "build.sh"
FIXTURE_TOOLS = {"argocd_health": "argocd-health", "kstatus": "kstatus", "promlint": "promlint", "promql": "promql"}

_paths: dict[str, Path] = {}
_errors: dict[str, str] = {}


class GoToolError(RuntimeError):
    """A Go tool could not be built or a module could not be downloaded (the message says what is missing)."""


def build(name: str) -> Path:
    """Build (or reuse from the cache) the Go tool ``name``; its binary's path."""
    if name in _paths:
        return _paths[name]
    if name in _errors:
        raise GoToolError(_errors[name])
    proc = subprocess.run(["bash", str(BUILD), name], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        _errors[name] = f"cannot build the Go tool {name} with {BUILD} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        raise GoToolError(_errors[name])
    _paths[name] = Path(proc.stdout.strip().splitlines()[-1])
    return _paths[name]


def module_dir(module_at_version: str, toolchain: str = "local") -> Path:
    """The directory of one module version from the Go module proxy (downloaded into the module cache).

    ``toolchain`` is GOTOOLCHAIN for the download: a module whose go.mod names a newer Go than the machine's
    needs that version (e.g. ``go1.27.3``, itself fetched from the module proxy)."""
    proc = subprocess.run(["bash", str(BUILD), "--module", module_at_version, toolchain], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise GoToolError(f"cannot download {module_at_version} from the Go module proxy (exit {proc.returncode}):"
                          f"\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class GoTool:
    name: str
    path: Path

    def run_json(self, *args: str, stdin: Any = None, text: str | None = None) -> Any:
        """Run the tool with ``stdin`` as JSON (or ``text``) on standard input; its JSON standard output."""
        data = text if text is not None else json.dumps(stdin)
        proc = subprocess.run([str(self.path), *args], input=data, capture_output=True, text=True, timeout=120,
                              check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr}")
        return json.loads(proc.stdout)


def _tools_of(item: pytest.Item) -> set[str]:
    return {tool for fx, tool in FIXTURE_TOOLS.items() if fx in getattr(item, "fixturenames", ())}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the tools the selected tests use, before any test runs."""
    if session.config.option.collectonly:
        return
    needed = sorted(set().union(*(_tools_of(i) for i in session.items))) if session.items else []
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for name in needed:
        if name in _paths:
            continue
        msg = f"gotools: {name} (built from the Go module proxy on first use, then cached)"
        if tr is not None:
            tr.write_line(msg)
        else:
            print(msg, file=sys.stderr)
        try:
            build(name)
        except GoToolError:
            pass  # reported by the fixture, as a failure of every test that needs the tool


def _fixture(name: str) -> GoTool:
    try:
        return GoTool(name, build(name))
    except GoToolError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def argocd_health() -> GoTool:
    """Argo CD v3.2's settings + resource-health code (tests/delivery/gotools/argocd-health)."""
    return _fixture("argocd-health")


@pytest.fixture(scope="session")
def kstatus() -> GoTool:
    """sigs.k8s.io/cli-utils kstatus ``status.Compute`` (tests/delivery/gotools/kstatus)."""
    return _fixture("kstatus")


@pytest.fixture(scope="session")
def promlint() -> GoTool:
    """client_golang's ``testutil/promlint`` (tests/delivery/gotools/promlint)."""
    return _fixture("promlint")


@pytest.fixture(scope="session")
def promql() -> GoTool:
    """Prometheus' PromQL engine over a TSDB (tests/delivery/gotools/promql)."""
    return _fixture("promql")
