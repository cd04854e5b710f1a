"""kstatus, the status library of Helm 4's ``--wait`` and Flux (``sigs.k8s.io/cli-utils/pkg/kstatus/status``), over
the status fixtures: the real Go library (tests/delivery/gotools/kstatus), not a re-implementation."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.delivery.capture_status import KSTATUS_OF_HEALTH

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "dbm-status").glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_kstatus_of_every_fixture(kstatus):
    docs = [load(p) for p in FIXTURES]
    results = kstatus.run_json(stdin=[d["object"] for d in docs])
    wrong = [f"{p.stem}: expected {d['expected']['kstatus']}, kstatus says {r}"
             for p, d, r in zip(FIXTURES, docs, results, strict=True)
             if r["error"] or r["status"] != d["expected"]["kstatus"]]
    assert not wrong, "\n".join(wrong)


def test_kstatus_agrees_with_argocd_health_where_the_api_server_can_return_it():
    """Helm/Flux and Argo CD say the same thing (Current = Healthy, Failed = Degraded, else InProgress) for every
    fixture, except the two whose disagreement is documented in the fixture (kstatusNote)."""
    for p in FIXTURES:
        exp = load(p)["expected"]
        if "kstatusNote" in exp:
            continue
        assert exp["kstatus"] == KSTATUS_OF_HEALTH[exp["status"]], p.stem


def test_never_observed_is_in_progress(kstatus):
    """What a real API server returns for a new DatabaseMigration (the CRD's structural default on status) is
    InProgress, so `helm install --wait` waits for the operator."""
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml").read_text())
    status_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status_schema["default"] == {"observedGeneration": -1}
    new = {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
           "metadata": {"name": "x", "namespace": "n", "generation": 1}, "spec": {},
           "status": status_schema["default"]}
    [res] = kstatus.run_json(stdin=[new])
    assert res["status"] == "InProgress", res
    [res] = kstatus.run_json(stdin=[{k: v for k, v in new.items() if k != "status"}])
    assert res["status"] == "Current", "kstatus changed: a status-less custom resource is no longer Current"
