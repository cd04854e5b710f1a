"""Helm 4 (the test bed's real helm binary) against the test bed: install the operator chart, then
`helm upgrade --install --wait` of the example application returns only once its migration is Ready, and fails
naming the reason when the precheck blocks.

The chart's operator Deployment is only marked Running by the node stand-in (it runs Job pods only), so the
operator itself runs as a subprocess with the same code, like in tests/e2e/test_operator.py. The same flows with
the chart's own operator pod, the built images and real containers run in tests/realnode/test_charts.py; these
stay on the stand-in because they map local projects onto images without building any and start in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.delivery.e2e_support import RUNNER_IMAGE, Operator, app_pods, describe, get_dbm, is_gated
from tests.delivery.helm import CHARTS, ROOT

pytestmark = pytest.mark.e2e
OPERATOR_NS = "schemagate-system"


@pytest.fixture(scope="module")
def operator_release(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    r = kube.helm("upgrade", "--install", "schemagate", str(CHARTS / "schemagate"), "-n", OPERATOR_NS,
                  "--create-namespace", "--wait", "--timeout", "120s", timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    op = Operator(kube, tmp_path_factory.mktemp("helm-operator")).start()
    yield op
    op.stop()


@pytest.fixture
def images(map_image: Any) -> None:
    map_image(RUNNER_IMAGE)
    map_image("example-app:*", paths={"/app": ROOT / "migrations" / "foodtruck"})


def app(kube: Any, ns: str, url: str, version: str, *extra: str, timeout: str = "240s", check: bool = True):
    return kube.helm("upgrade", "--install", "shop", str(CHARTS / "example-app"), "-n", ns,
                     "--set-string", f"version={version}", "--set-string", f"database.url={url}",
                     "--set", "replicas=2", "--wait", "--timeout", timeout, *extra,
                     check=check, timeout=400)  # fmt: skip


def test_operator_chart_installed(kube: Any, operator_release: Operator) -> None:
    crd = kube.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/databasemigrations.schemagate.dev")
    assert crd["spec"]["names"]["shortNames"] == ["dbm"]
    dep = kube.get(f"/apis/apps/v1/namespaces/{OPERATOR_NS}/deployments/schemagate")
    assert dep["spec"]["replicas"] == 2 and dep["status"].get("availableReplicas") == 2  # a leader and a standby
    pdb = kube.get(f"/apis/policy/v1/namespaces/{OPERATOR_NS}/poddisruptionbudgets/schemagate")
    assert pdb["spec"]["minAvailable"] == 1
    kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/services/schemagate-metrics")
    kube.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/schemagate-operator")
    # the operator's ServiceAccount may do what the gate needs, and no more on Secrets
    sa = f"system:serviceaccount:{OPERATOR_NS}:schemagate"
    for verb, res in (("patch", "pods"), ("watch", "pods"), ("create", "jobs.batch"), ("get", "secrets")):
        assert kube.kubectl("auth", "can-i", verb, res, "--as", sa, "-A").stdout.strip() == "yes", (verb, res)
    assert kube.kubectl("auth", "can-i", "list", "secrets", "--as", sa, "-A", check=False).stdout.strip() == "no"


def test_upgrade_wait_returns_when_migrated(kube: Any, operator_release: Operator, images: None, namespace: str,
                                            fresh_db: str) -> None:  # fmt: skip
    r = app(kube, namespace, fresh_db, "0001")
    assert r.returncode == 0, r.stderr
    # --wait returned: the migration is Ready for its generation at 0001, and the gated pods run
    o = get_dbm(kube, namespace, "shop-example-app")
    st = o["status"]
    assert st["observedGeneration"] == o["metadata"]["generation"] and st["phase"] == "Succeeded", describe(
        kube, namespace, "shop-example-app", operator_release)
    assert st["currentRevision"] == "0001"
    pods = app_pods(kube, namespace, "app.kubernetes.io/instance=shop")
    assert len(pods) == 2 and not any(is_gated(p) for p in pods)

    # the next release: one value moves both the image tag and the revision
    r = app(kube, namespace, fresh_db, "0003")
    assert r.returncode == 0, r.stderr
    o = get_dbm(kube, namespace, "shop-example-app")
    assert o["status"]["currentRevision"] == "0003" and o["status"]["observedGeneration"] == 2
    images_now = {c["image"] for p in app_pods(kube, namespace, "app.kubernetes.io/instance=shop")
                  if not is_gated(p) for c in p["spec"]["containers"]}  # fmt: skip
    assert "example-app:0003" in images_now


def test_upgrade_wait_fails_with_the_reason_when_blocked(kube: Any, operator_release: Operator, images: None,
                                                         namespace: str, fresh_db: str) -> None:  # fmt: skip
    from tests.e2e.test_gate import seed_negative_stock

    assert app(kube, namespace, fresh_db, "0001").returncode == 0
    seed_negative_stock(fresh_db, rows=4)
    r = app(kube, namespace, fresh_db, "0003", timeout="120s", check=False)
    assert r.returncode != 0, r.stdout
    o = get_dbm(kube, namespace, "shop-example-app")
    assert o["status"]["phase"] == "Blocked" and o["status"]["violations"]["total"] == 4
    ready = next(c for c in o["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ViolationsFound"
    assert "shop-example-app" in r.stderr, r.stderr
    # the old pods keep serving, the new ones wait
    pods = app_pods(kube, namespace, "app.kubernetes.io/instance=shop")
    assert any(is_gated(p) for p in pods) and any(not is_gated(p) for p in pods)
    # why the upgrade failed is one command away
    out = kube.kubectl("describe", "dbm", "shop-example-app", "-n", namespace).stdout
    assert "ViolationsFound" in out
    print(json.dumps({"helm_stderr": r.stderr[-1500:]}))
