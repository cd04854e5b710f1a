"""Shared pieces of the delivery end-to-end tests (tests/e2e/test_gate*.py, tests/e2e/test_helm*.py).

The operator runs as a subprocess (``kopf run -m schemagate.handlers``), like in tests/e2e/test_operator.py; step
Jobs run through the test bed's node stand-in as local processes. The operator image maps to the virtualenv, an
application image maps ``/app`` to an example Alembic project in ``migrations/``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUNNER_IMAGE = "schemagate.test/schemagate:e2e"
LEASE_NS = "schemagate-system"
GATE = "schemagate.dev/migration"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    """The operator as a subprocess that can be killed and started again."""

    def __init__(self, kube: Any, log_dir: Path) -> None:
        self.kube, self.log_dir = kube, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Operator:
        self.starts += 1
        env = self.kube.env(dict(os.environ))
        env.update({
            "SCHEMAGATE_RUNNER_IMAGE": RUNNER_IMAGE,
            "SCHEMAGATE_LEASE_NAMESPACE": LEASE_NS,
            "SCHEMAGATE_METRICS_PORT": str(free_port()),
            "SCHEMAGATE_RETRY_BASE_SECONDS": "1",
            "SCHEMAGATE_RETRY_CAP_SECONDS": "4",
            "SCHEMAGATE_SECRET_POLL_SECONDS": "2",
            "SCHEMAGATE_LOCK_POLL_SECONDS": "1",
        })  # fmt: skip
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "-m", "schemagate.handlers",
             "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))  # fmt: skip
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


def install_crd(kube: Any) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kube.kubectl("wait", "--for=condition=Established", "crd/databasemigrations.schemagate.dev", "--timeout=60s")
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NS}})


def secret(kube: Any, ns: str, name: str, data: dict[str, str]) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})  # fmt: skip


def get_dbm(kube: Any, ns: str, name: str) -> dict:
    return kube.custom().get_namespaced_custom_object("schemagate.dev", "v1alpha1", ns, "databasemigrations", name)


def is_gated(p: dict) -> bool:
    return any(g.get("name") == GATE for g in (p.get("spec") or {}).get("schedulingGates") or [])


def app_pods(kube: Any, ns: str, selector: str) -> list[dict]:
    return [p for p in kube.pods(ns, selector) if not p["metadata"].get("deletionTimestamp")]


def describe(kube: Any, ns: str, name: str, op: Operator | None = None) -> str:
    try:
        status = json.dumps(get_dbm(kube, ns, name).get("status"), indent=1)[:3000]
    except Exception as exc:  # noqa: BLE001
        status = repr(exc)
    return f"status of {ns}/{name}: {status}\n" + (op.logs()[-3000:] if op else "")
