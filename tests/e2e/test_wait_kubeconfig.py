"""``schemagate wait --kubeconfig/--context`` against the test bed: the named kubeconfig and context are used (and
the context's namespace), not $KUBECONFIG, POD_NAMESPACE or the kubeconfig's current context."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.e2e_support import install_crd

pytestmark = pytest.mark.e2e
SCHEMAGATE = Path(sys.executable).parent / "schemagate"


def kubeconfig_with_two_contexts(kube: Any, namespace: str, path: Path) -> Path:
    """Context ``bed`` (the test bed, namespace ``namespace``) and the current context ``nowhere`` (a closed port)."""
    cfg = yaml.safe_load(Path(kube.kubeconfig).read_text())
    cluster, user = cfg["clusters"][0], cfg["users"][0]
    cfg["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1",
                                                           "insecure-skip-tls-verify": True}})
    cfg["contexts"] = [
        {"name": "bed", "context": {"cluster": cluster["name"], "user": user["name"], "namespace": namespace}},
        {"name": "nowhere", "context": {"cluster": "nowhere", "user": user["name"], "namespace": "elsewhere"}},
    ]
    cfg["current-context"] = "nowhere"
    path.write_text(yaml.safe_dump(cfg))
    return path


def ready_migration(kube: Any, namespace: str, name: str) -> None:
    kube.apply({"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                         "migrations": {"image": "example-app:0001"}}})
    path = f"/apis/schemagate.dev/v1alpha1/namespaces/{namespace}/databasemigrations/{name}"
    gen = kube.get(path)["metadata"]["generation"]
    cond = {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "migrated",
            "observedGeneration": gen, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.request("PATCH", path + "/status", {"status": {"observedGeneration": gen, "phase": "Succeeded",
                                                        "currentRevision": "0001", "conditions": [cond]}},
                 "application/merge-patch+json")


def wait(*args: str, kubeconfig_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    env.update({"KUBECONFIG": kubeconfig_env, "POD_NAMESPACE": "not-this-one"})
    return subprocess.run([str(SCHEMAGATE), "wait", *args, "--json", "--interval", "200ms"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_wait_uses_the_named_kubeconfig_and_context(kube: Any, namespace: str, tmp_path: Path) -> None:
    install_crd(kube)
    ready_migration(kube, namespace, "shop")
    cfg = kubeconfig_with_two_contexts(kube, namespace, tmp_path / "config")
    missing = str(tmp_path / "no-such-kubeconfig")

    r = wait("shop", "--kubeconfig", str(cfg), "--context", "bed", "--timeout", "30s", kubeconfig_env=missing)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["outcome"] == "Ready" and res["namespace"] == namespace and res["currentRevision"] == "0001"

    # --context alone reads $KUBECONFIG
    r = wait("shop", "--context", "bed", "--timeout", "30s", kubeconfig_env=str(cfg))
    assert r.returncode == 0 and json.loads(r.stdout)["namespace"] == namespace, r.stderr

    # --kubeconfig alone takes its current context ("nowhere": nothing listens there): retried until the timeout
    r = wait("shop", "--kubeconfig", str(cfg), "-n", namespace, "--timeout", "2s", kubeconfig_env=missing)
    assert r.returncode == 124, (r.stdout, r.stderr)
    assert "127.0.0.1:1" in r.stderr or "Connection refused" in r.stderr, r.stderr

    # an unknown context is a configuration error, not something to wait for
    r = wait("shop", "--kubeconfig", str(cfg), "--context", "nope", "--timeout", "30s", kubeconfig_env=missing)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert "nope" in json.loads(r.stdout)["message"]
