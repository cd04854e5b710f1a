"""The real helm v4 binary from the test-bed cache (tests/testbed/build.sh puts it there) and a small wrapper."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.35.8")


def testbin_dir() -> Path:
    root = Path(os.environ.get("SCHEMAGATE_TESTBIN", Path.home() / ".cache" / "schemagate" / "testbin"))
    return root / K8S_VERSION


def helm_path() -> str | None:
    exe = testbin_dir() / "helm"
    if exe.exists():
        return str(exe)
    return shutil.which("helm") if os.environ.get("SCHEMAGATE_HELM_FROM_PATH") else None


def require_helm() -> str:
    exe = helm_path()
    if exe is None:
        pytest.skip(f"helm not found in {testbin_dir()} (run: make testbed)")
    return exe


def helm(
    *args: str, check: bool = True, env: dict | None = None, timeout: int = 120
) -> subprocess.CompletedProcess:
    exe = require_helm()
    full_env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/schemagate-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/schemagate-helm/config",
        "HELM_DATA_HOME": "/tmp/schemagate-helm/data",
        **(env or {}),
    }
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def template(
    chart: str, *args: str, release: str = "schemagate", namespace: str = "schemagate-system"
) -> list[dict]:
    out = helm("template", release, str(CHARTS / chart), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]
