"""The chart's ServiceMonitor, PodMonitor, PrometheusRule and dashboard ConfigMap against the real
prometheus-operator CRDs (from the ``github.com/prometheus-operator/prometheus-operator`` Go module) on the test bed:
the API server validates them with the CRDs' schemas, strictly (an unknown or misspelt field is an error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.gotools import module_dir
from tests.delivery.monitoring import monitoring_objects
from tests.e2e.operator_process import wait_established

pytestmark = pytest.mark.e2e
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
CRDS = ("servicemonitors", "podmonitors", "prometheusrules")


def install_prometheus_operator_crds(kube: Any) -> list[str]:
    crd_dir = module_dir(PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd"
    names = []
    for plural in CRDS:
        path = crd_dir / f"monitoring.coreos.com_{plural}.yaml"
        assert path.exists(), f"{path}: the prometheus-operator module no longer ships this CRD there"
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=120)
        names.append(yaml.safe_load(path.read_text())["metadata"]["name"])
    for name in names:
        wait_established(kube, name)
    return names


def test_monitoring_objects_pass_the_prometheus_operator_crds(kube: Any, namespace: str, tmp_path: Path) -> None:
    install_prometheus_operator_crds(kube)
    objs = monitoring_objects(namespace, "--set", "metrics.serviceMonitor.interval=30s",
                              "--set", "metrics.podMonitor.scrapeTimeout=10s",
                              "--set-json", 'metrics.serviceMonitor.relabelings=[{"action":"replace",'
                                            '"targetLabel":"cluster","replacement":"test-bed"}]')
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"]
    manifest = tmp_path / "monitoring.yaml"
    manifest.write_text(yaml.safe_dump_all(objs))
    kube.kubectl("apply", "--server-side", "--validate=strict", "-n", namespace, "-f", str(manifest))
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors"),
                         ("PrometheusRule", "prometheusrules")):
        sent = next(o for o in objs if o["kind"] == kind)
        stored = kube.get(f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/{plural}/{sent['metadata']['name']}")
        assert stored["spec"] == sent["spec"], f"{kind}: the API server pruned or changed fields"
    # a misspelt field is refused, so the check above is live
    bad = next(o for o in objs if o["kind"] == "ServiceMonitor")
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    manifest.write_text(yaml.safe_dump(bad))
    r = kube.kubectl("apply", "--server-side", "--validate=strict", "-n", namespace, "-f", str(manifest),
                     check=False)
    assert r.returncode != 0 and "intervall" in r.stderr, r.stderr
