"""A new DatabaseMigration under Helm 4's ``--wait`` (kstatus) on the test bed: Helm must wait for the operator.

kstatus calls a custom resource with no ``status.observedGeneration`` and no conditions ``Current``, so without
the CRD's structural default ``status: {observedGeneration: -1}`` `helm install --wait` of a release holding
only a DatabaseMigration returned ``deployed`` at once, before any operator had looked at it. With the default the
API server returns ``observedGeneration: -1`` for a new object (kstatus: InProgress) until the operator writes
its first status.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.e2e_support import RUNNER_IMAGE, Operator, describe, get_dbm, install_crd, secret
from tests.delivery.helm import ROOT

pytestmark = pytest.mark.e2e


def only_migration_chart(tmp_path: Path) -> Path:
    """A chart whose only object is one DatabaseMigration (the database URL comes from Secret ``db``)."""
    chart = tmp_path / "only-migration"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "only-migration",
                                                      "version": "0.1.0"}))
    dbm = {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
           "metadata": {"name": "{{ .Release.Name }}"},
           "spec": {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                    "migrations": {"image": "example-app:0001", "targetRevision": "0001"}}}
    (chart / "templates" / "migration.yaml").write_text(yaml.safe_dump(dbm))
    return chart


def helm_install(kube: Any, ns: str, chart: Path, timeout: str) -> list[str]:
    return [str(kube.bin_dir / "helm"), "install", "mig", str(chart), "-n", ns, "--wait", "--timeout", timeout]


def test_new_migration_status_is_never_observed(kube: Any, namespace: str) -> None:
    """The API server itself fills in the CRD default for a new object (create and read)."""
    install_crd(kube)
    created = kube.custom().create_namespaced_custom_object(
        "schemagate.dev", "v1alpha1", namespace, "databasemigrations",
        {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration", "metadata": {"name": "fresh"},
         "spec": {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                  "migrations": {"image": "example-app:0001"}}})
    assert created["status"] == {"observedGeneration": -1}
    assert get_dbm(kube, namespace, "fresh")["status"] == {"observedGeneration": -1}


def test_helm_wait_times_out_while_no_operator_runs(kube: Any, namespace: str, tmp_path: Path) -> None:
    install_crd(kube)
    chart = only_migration_chart(tmp_path)
    start = time.monotonic()
    r = subprocess.run(helm_install(kube, namespace, chart, "15s"), capture_output=True, text=True,
                       env=kube.env(), timeout=120, check=False)
    took = time.monotonic() - start
    assert r.returncode != 0, f"helm install --wait returned {r.returncode} after {took:.2f}s: {r.stdout}"
    assert took >= 15, f"helm gave up after {took:.2f}s, before its 15s timeout: {r.stderr}"
    o = get_dbm(kube, namespace, "mig")
    assert o["status"] == {"observedGeneration": -1}, o.get("status")
    print(f"helm install --wait without an operator: exit {r.returncode} after {took:.1f}s; {r.stderr.strip()[-300:]}")


def test_helm_wait_succeeds_once_the_operator_starts(kube: Any, namespace: str, tmp_path: Path,
                                                     map_image: Any, fresh_db: str) -> None:  # fmt: skip
    install_crd(kube)
    map_image(RUNNER_IMAGE)
    map_image("example-app:*", paths={"/app": ROOT / "migrations" / "foodtruck"})
    secret(kube, namespace, "db", {"url": fresh_db})
    chart = only_migration_chart(tmp_path)
    start = time.monotonic()
    helm = subprocess.Popen(helm_install(kube, namespace, chart, "240s"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=kube.env())
    op = Operator(kube, tmp_path / "operator")
    try:
        kube.wait_for(lambda: _exists(kube, namespace, "mig"), timeout=60, message="the release's DatabaseMigration")
        time.sleep(5)  # Helm has polled a few times (every 2 s) with no operator running
        assert helm.poll() is None, f"helm returned before any operator ran: {helm.communicate()}"
        started_at = time.monotonic() - start
        op.start()
        out, err = helm.communicate(timeout=300)
        took = time.monotonic() - start
        o = get_dbm(kube, namespace, "mig")
        assert helm.returncode == 0, f"{err}\n{describe(kube, namespace, 'mig', op)}"
        st = o["status"]
        assert st["observedGeneration"] == o["metadata"]["generation"] and st["phase"] == "Succeeded", st
        assert st["currentRevision"] == "0001"
        print(f"operator started after {started_at:.1f}s; helm install --wait succeeded after {took:.1f}s")
    finally:
        if helm.poll() is None:
            helm.kill()
            helm.communicate()
        op.stop()


def _exists(kube: Any, ns: str, name: str) -> bool:
    try:
        get_dbm(kube, ns, name)
    except Exception as exc:  # noqa: BLE001 - 404 until helm has created it
        if getattr(exc, "status", None) == 404:
            return False
        raise
    return True
