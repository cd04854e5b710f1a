"""`kubectl explain` documents every field of the DatabaseMigration API, status included: the test walks
`kubectl explain databasemigrations --recursive` on the test bed (the API server's published OpenAPI schema, what
users see) and explains every object in it; no field may lack a description."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.delivery.e2e_support import install_crd

pytestmark = pytest.mark.e2e
FIELD = re.compile(r"^(?P<indent> +)(?P<name>[^\s]+)\t<(?P<type>[^>]+)>")


def recursive_tree(text: str) -> dict[str, str]:
    """{dotted path: type} of every field listed by `kubectl explain --recursive` (below FIELDS:)."""
    paths: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    body = text.split("FIELDS:", 1)[1]
    for line in body.splitlines():
        m = FIELD.match(line)
        if not m:
            continue
        depth = len(m["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = ".".join([*(p for _, p in stack), m["name"]])
        paths[path] = m["type"]
        stack.append((depth, m["name"]))
    return paths


def undocumented_children(text: str) -> list[str]:
    """Children listed under FIELDS: of one `kubectl explain` (not recursive) without a description."""
    out = []
    lines = text.split("FIELDS:", 1)[1].splitlines()
    for i, line in enumerate(lines):
        m = FIELD.match(line)
        if not m or len(m["indent"]) != 2:
            continue
        desc = []
        for nxt in lines[i + 1:]:
            if FIELD.match(nxt) and len(FIELD.match(nxt)["indent"]) == 2:
                break
            if nxt.strip():
                desc.append(nxt.strip())
        if not desc or desc == ["<empty>"]:
            out.append(m["name"])
    return out


def test_kubectl_explain_documents_every_field(kube: Any) -> None:
    install_crd(kube)
    res = "databasemigrations.schemagate.dev"
    # the API server publishes a CRD's OpenAPI schema a moment after the CRD is Established (or re-applied)
    explained = kube.wait_for(lambda: (lambda r: r.returncode == 0 and r.stdout)(
        kube.kubectl("explain", res, "--recursive", check=False)), timeout=60, message="kubectl explain to work")
    tree = recursive_tree(explained)
    ours = {p: t for p, t in tree.items() if p.split(".")[0] in ("spec", "status")}
    # the status subtrees that had no schema before are documented down to their leaves
    for path in ("status.violations.total", "status.violations.checks.count", "status.lint.findings.rule",
                 "status.backup.sha256", "status.lastError.reason", "status.run.step", "status.plan.pending",
                 "status.kopf.progress", "status.conditions.lastTransitionTime"):
        assert path in ours, f"kubectl explain --recursive does not list {path}"
    parents = ["spec", "status", *sorted({p.rsplit(".", 1)[0] for p in ours if "." in p})]

    def explain(path: str) -> tuple[str, list[str], str]:
        out = kube.kubectl("explain", f"{res}.{path}").stdout
        own = out.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0].strip()
        return path, undocumented_children(out) if "FIELDS:" in out else [], own

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(explain, parents))
    missing = [f"{path}.{child}" for path, children, _ in results for child in children]
    missing += [path for path, _, own in results if not own or own == "<empty>"]
    assert not missing, f"fields kubectl explain shows without a description: {missing}"
    print(f"kubectl explain: {len(ours)} fields under spec and status, {len(parents)} objects explained")


def test_o_wide_shows_reason_and_message(kube: Any, namespace: str) -> None:
    install_crd(kube)
    kube.apply({"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
                "metadata": {"name": "shop", "namespace": namespace},
                "spec": {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                         "migrations": {"image": "example-app:0001"}}})
    path = f"/apis/schemagate.dev/v1alpha1/namespaces/{namespace}/databasemigrations/shop"
    cond = {"type": "Ready", "status": "False", "reason": "ViolationsFound",
            "message": "12 rows violate 2 checks (maxViolations 0)", "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.request("PATCH", path + "/status", {"status": {"observedGeneration": 1, "phase": "Blocked",
                                                        "conditions": [cond]}}, "application/merge-patch+json")
    plain = kube.kubectl("get", "dbm", "shop", "-n", namespace).stdout
    wide = kube.kubectl("get", "dbm", "shop", "-n", namespace, "-o", "wide").stdout
    assert "REASON" not in plain and "ViolationsFound" not in plain
    header, row = wide.splitlines()[:2]
    assert header.split()[-2:] == ["REASON", "MESSAGE"], header
    assert "ViolationsFound" in row and "12 rows violate 2 checks (maxViolations 0)" in row
    # a condition without the fields metav1.Condition requires is refused
    bad = {k: v for k, v in cond.items() if k != "lastTransitionTime"}
    r = kube.kubectl("patch", "dbm", "shop", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                     '{"status": {"conditions": [' + str(bad).replace("'", '"') + "]}}", check=False)
    assert r.returncode != 0 and "lastTransitionTime" in r.stderr, r.stderr
