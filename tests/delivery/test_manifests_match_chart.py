"""`kubectl apply -f manifests/` installs what `helm install schemagate charts/schemagate` installs by default.

Compared semantically (parsed objects, not text): Helm's own labels are ignored, RBAC rules are compared as sets of
(apiGroup, resource, verb). The one known, intended difference: manifests/ creates the Namespace (with the restricted
Pod Security label); Helm uses --create-namespace. Everything else, the metrics Service included, must match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.delivery.helm import ROOT, template

MANIFESTS = ROOT / "manifests"
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version", "app.kubernetes.io/part-of"}  # fmt: skip
ONLY_IN_MANIFESTS = {("Namespace", "schemagate-system")}
ONLY_IN_CHART: set[tuple[str, str]] = set()


def manifest_docs() -> list[dict]:
    files = sorted(MANIFESTS.glob("*.yaml"))
    missing = [n for n in ("crd.yaml", "rbac.yaml", "workload.yaml", "service.yaml") if not (MANIFESTS / n).exists()]
    assert not missing, f"manifests/ lacks {missing}"
    return [d for f in files for d in yaml.safe_load_all(Path(f).read_text()) if d]


def key(d: dict) -> tuple[str, str, str]:
    return d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "")


def normalize(d: dict) -> dict:
    d = yaml.safe_load(yaml.safe_dump(d))
    md = d["metadata"]
    for field in ("labels", "annotations"):
        kept = {k: v for k, v in (md.get(field) or {}).items() if k not in HELM_LABELS}
        md.pop(field, None)
        if kept:
            md[field] = kept
    if d["kind"] in ("ClusterRole", "Role"):
        d["rules"] = sorted(
            {(g, r, v) for rule in d.get("rules") or [] for g in rule.get("apiGroups", [])
             for r in rule.get("resources", []) for v in rule.get("verbs", [])}
        )  # fmt: skip
    if d["kind"] == "Deployment":
        tpl = d["spec"]["template"]["metadata"]
        tpl["labels"] = {k: v for k, v in tpl.get("labels", {}).items() if k not in HELM_LABELS}
    return d


@pytest.fixture(scope="module")
def both():
    m = {key(d): d for d in manifest_docs()}
    c = {key(d): d for d in template("schemagate", "--include-crds")}
    return m, c


def test_same_objects(both):
    m, c = both
    only_m = {(k, n) for k, n, _ in set(m) - set(c)}
    only_c = {(k, n) for k, n, _ in set(c) - set(m)}
    assert only_m == ONLY_IN_MANIFESTS, f"only in manifests/: {only_m - ONLY_IN_MANIFESTS}"
    assert only_c == ONLY_IN_CHART, f"only in the chart: {only_c - ONLY_IN_CHART}"


def test_same_content(both):
    m, c = both
    diffs = []
    for k in sorted(set(m) & set(c)):
        a, b = normalize(m[k]), normalize(c[k])
        if a != b:
            diffs.append(f"{k}:\n  manifests: {a}\n  chart:     {b}")
    assert not diffs, "\n".join(diffs)


def test_metrics_service_selects_the_manifest_pods(both):
    m, c = both
    dep = m[("Deployment", "schemagate", "schemagate-system")]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for svc in (m[("Service", "schemagate-metrics", "schemagate-system")],
                c[("Service", "schemagate-metrics", "schemagate-system")]):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] == "metrics" and ports["metrics"] == port["port"] == 8000


def test_kubectl_apply_order_creates_each_namespace_before_its_objects() -> None:
    """``kubectl apply -f manifests/`` applies the files in name order: a namespaced object must come after the
    Namespace it lives in (or live in one that exists in every cluster)."""
    created = {"default", "kube-system"}
    for f in sorted(MANIFESTS.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if not d:
                continue
            if d["kind"] == "Namespace":
                created.add(d["metadata"]["name"])
            ns = d["metadata"].get("namespace")
            assert ns is None or ns in created, f"{f.name}: {d['kind']}/{d['metadata']['name']} comes before " \
                                                f"its Namespace {ns!r} in apply order"
