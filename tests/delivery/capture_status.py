"""Capture DatabaseMigration objects from a live cluster as status fixtures (tests/delivery/fixtures/dbm-status/).

    python -m tests.delivery.capture_status NAMESPACE NAME LABEL    # uses $KUBECONFIG
    SCHEMAGATE_CAPTURE_FIXTURES=1 pytest tests/e2e/test_gate.py      # the e2e tests call capture() as they go

The expected Argo CD health is derived from the status contract (phase + generation), not from health.lua, so a
captured fixture checks the Lua against what the operator really writes.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).parent / "fixtures" / "dbm-status"
ENABLED = os.environ.get("SCHEMAGATE_CAPTURE_FIXTURES") == "1"
VOLATILE = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "selfLink")


KSTATUS_OF_HEALTH = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress", "Suspended": "InProgress"}


def expected_health(obj: dict[str, Any]) -> dict[str, str]:
    """Argo CD health (status, message substring) and the kstatus result the status contract implies."""
    health = _health(obj)
    return {**health, "kstatus": KSTATUS_OF_HEALTH[health["status"]]}


def _health(obj: dict[str, Any]) -> dict[str, str]:
    st = obj.get("status") or {}
    if (obj.get("spec") or {}).get("suspend"):
        return {"status": "Suspended", "message": "Suspended"}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return {"status": "Progressing", "message": "generation"}
    phase = st.get("phase") or ""
    if phase in ("Blocked", "Failed"):
        reason = next((c.get("reason") for c in st.get("conditions") or [] if c.get("type") == "Ready"), "")
        return {"status": "Degraded", "message": f"{phase} ({reason})" if reason else phase}
    if phase == "Suspended":
        return {"status": "Suspended", "message": "Suspended"}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    if phase == "Succeeded" and ready:
        return {"status": "Healthy", "message": str(st.get("currentRevision") or "Ready")}
    return {"status": "Progressing", "message": phase}


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    md = obj["metadata"]
    for k in VOLATILE:
        md.pop(k, None)
    md["namespace"] = "demo"
    (md.get("annotations") or {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not md.get("annotations"):
        md.pop("annotations", None)
    return obj


def capture(obj: dict[str, Any], label: str, force: bool = False) -> Path | None:
    """Write fixtures/dbm-status/captured-<label>.yaml (only with SCHEMAGATE_CAPTURE_FIXTURES=1 unless forced)."""
    if not (ENABLED or force):
        return None
    obj = clean(obj)
    path = FIXTURES / f"captured-{label}.yaml"
    doc = {"source": "captured", "expected": expected_health(obj), "object": obj}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: list[str]) -> int:
    from kubernetes import client, config

    ns, name, label = argv
    config.load_kube_config()
    obj = client.CustomObjectsApi().get_namespaced_custom_object("schemagate.dev", "v1alpha1", ns,
                                                                 "databasemigrations", name)  # fmt: skip
    print(capture(obj, label, force=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
