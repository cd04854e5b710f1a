# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""A whole migration in a namespace that enforces the Pod Security Standards' ``restricted`` profile.

PodSecurity admission is built into the real kube-apiserver of the test bed: a pod of a Job that lacks
``runAsNonRoot``, drops fewer capabilities or allows privilege escalation is refused when the Job controller
creates it (a ``FailedCreate`` event on the Job), and the migration would never get past that step.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemagate import demo
from tests.e2e.test_operator import (  # noqa: F401
    Operator,
    cond,
    crd,
    dbm,
    images,
    jobs,
    operator,
    secret,
    wait_phase,
)

pytestmark = pytest.mark.e2e


def test_restricted_namespace_runs_a_whole_migration(kube: Any, operator: Operator, images: Any, namespace: str,
                                                     fresh_db: str) -> None:  # fmt: skip
    kube.kubectl("label", "namespace", namespace, "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")  # fmt: skip
    # enforcement is on: a pod without the restricted settings is refused in this namespace
    loose = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loose"},
             "spec": {"containers": [{"name": "c", "image": "registry.example.com/app:1"}]}}  # fmt: skip
    r = kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(loose), check=False)
    assert r.returncode != 0 and 'violates PodSecurity "restricted:latest"' in r.stderr, (r.stdout, r.stderr)

    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("foodtruck", image=image), namespace)
    o = wait_phase(kube, namespace, "foodtruck", ("Succeeded", "Failed", "Blocked"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Succeeded", o["status"]
    assert cond(o, "Ready")["status"] == "True"
    assert {j["metadata"]["labels"]["schemagate.dev/step"] for j in jobs(kube, namespace)} == {
        "backup", "precheck", "migrate", "verify"}
    refused = kube.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate",
                           "-o", "name").stdout.strip()  # fmt: skip
    assert refused == "", refused
