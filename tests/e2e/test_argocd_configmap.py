"""The README's Argo CD step on the test bed: `kubectl -n argocd patch configmap argocd-cm --patch-file
deploy/argocd/argocd-cm.yaml` merges the health check into an existing argocd-cm (keeping its other keys), and
Argo CD's own settings and health code, given the ConfigMap as the API server returns it, reports the expected
health for every status fixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.test_argocd_health import ARGOCD_CM, FIXTURES, KEY, LUA, load

pytestmark = pytest.mark.e2e
OTHER = {"url": "https://argocd.example.com",
         "resource.customizations.health.example.com_Widget": 'return {status = "Healthy"}\n'}


def test_readme_patch_then_argocd_health(kube: Any, argocd_health: Any, tmp_path: Path) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argocd"}})
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "argocd-cm", "namespace": "argocd", "labels": {"app.kubernetes.io/part-of": "argocd"}},
          "data": OTHER}
    kube.kubectl("delete", "configmap", "argocd-cm", "-n", "argocd", "--ignore-not-found")
    kube.apply(cm)
    try:
        kube.kubectl("-n", "argocd", "patch", "configmap", "argocd-cm", "--patch-file", str(ARGOCD_CM))
        live = json.loads(kube.kubectl("get", "configmap", "argocd-cm", "-n", "argocd", "-o", "json").stdout)
        assert live["data"][KEY].strip() == LUA.read_text().strip()
        for k, v in OTHER.items():
            assert live["data"][k] == v, f"the patch dropped {k}"
        path = tmp_path / "argocd-cm-live.yaml"
        path.write_text(yaml.safe_dump(live))
        docs = [load(p) for p in FIXTURES]
        results = argocd_health.run_json(str(path), stdin=[d["object"] for d in docs])
        wrong = [f"{p.stem}: {r}" for p, d, r in zip(FIXTURES, docs, results, strict=True)
                 if r["error"] or r["status"] != d["expected"]["status"]]
        assert not wrong, "\n".join(wrong)
    finally:
        kube.kubectl("delete", "configmap", "argocd-cm", "-n", "argocd", "--ignore-not-found")
