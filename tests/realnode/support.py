"""Helpers of the real-node chart tests: installing the example application with the built images, reading Jobs,
the database revision, and what to print when something fails."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from tests.delivery.helm import CHARTS

OPERATOR_NS = "schemagate-system"
APP = "shop-example-app"


def diagnostics(kube: Any, *namespaces: str) -> str:
    out = []
    for ns in namespaces:
        out.append(kube.kubectl("get", "pods,jobs,dbm", "-n", ns, "-o", "wide", check=False).stdout)
        for p in kube.pods(ns):
            out.append(f"--- pod {p['metadata']['name']}: {json.dumps(p.get('status', {}))[:1500]}")
        ev = kube.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
        out.append("--- events:\n" + "\n".join(ev.splitlines()[-25:]))
    for p in kube.pods(OPERATOR_NS):
        out.append(f"--- operator log {p['metadata']['name']}:\n" + kube.logs(OPERATOR_NS, p["metadata"]["name"])[-3000:])
    return "\n".join(out)


def operator_pods(kube: Any) -> list[dict]:
    """The operator's pods that are not being deleted (the chart runs replicaCount of them; one leads)."""
    return [p for p in kube.pods(OPERATOR_NS, "app.kubernetes.io/component=operator")
            if not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def install_app(kube: Any, ns: str, node_images: dict, url: str, version: str, *extra: str,
                timeout: str = "300s", check: bool = True) -> Any:  # fmt: skip
    app = node_images["example-app"]
    r = kube.helm("upgrade", "--install", "shop", str(CHARTS / "example-app"), "-n", ns,
                  "--set-string", f"version={version}", "--set-string", f"database.url={url}",
                  "--set-string", f"image.repository={app['repository']}", "--set", "image.pullPolicy=Never",
                  "--set", "gate.waitInitContainer.enabled=true",
                  "--set-string", f"gate.waitInitContainer.image={node_images['schemagate']['image']}",
                  "--set", "replicas=2", "--wait", "--timeout", timeout, *extra, check=False, timeout=600)  # fmt: skip
    if check:
        assert r.returncode == 0, r.stderr + diagnostics(kube, ns)
    return r


def revision(url: str) -> str | None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def jobs_by_step(kube: Any, ns: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for j in kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]:
        out.setdefault(j["metadata"]["labels"].get("schemagate.dev/step", "?"), []).append(j)
    return out
