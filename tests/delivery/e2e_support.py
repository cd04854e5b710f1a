"""Shared pieces of the delivery end-to-end tests (tests/e2e/test_gate*.py, tests/e2e/test_helm*.py).

The operator runs as a subprocess (``tests/e2e/operator_process.py``), like in tests/e2e/test_operator.py; step
Jobs run through the test bed's node stand-in as local processes. The operator image maps to the virtualenv, an
application image maps ``/app`` to an example Alembic project in ``migrations/``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.e2e.operator_process import (  # noqa: F401 (re-exported for the delivery e2e tests)
    LEASE_NS,
    ROOT,
    RUNNER_IMAGE,
    Operator,
    free_port,
    wait_established,
)

GATE = "schemagate.dev/migration"


def install_crd(kube: Any) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd.yaml"),
                 "-f", str(ROOT / "manifests" / "restore-crd.yaml"))
    wait_established(kube, "databasemigrations.schemagate.dev", "databaserestores.schemagate.dev")
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
