# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""A whole migration in a namespace that enforces the Pod Security Standards' ``restricted`` profile.

PodSecurity admission is built into the real kube-apiserver of the test bed: a pod of a Job that lacks
``runAsNonRoot``, drops fewer capabilities or allows privilege escalation is refused when the Job controller
creates it (a ``FailedCreate`` event on the Job), and the migration would never get past that step.
"""

from __future__ import annotations

import json
import time
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


def test_a_pod_the_api_refuses_fails_the_step_at_once(kube: Any, operator: Operator, images: Any, namespace: str,
                                                      fresh_db: str) -> None:  # fmt: skip
    """A step Job whose pod the API refuses (here: a ServiceAccount that does not exist) fails with the Job
    controller's own words within seconds, not at the Job's activeDeadlineSeconds (300 s here); nothing ran."""
    demo.seed_foodtruck(fresh_db)
    image = images("foodtruck")
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("no-sa", image=image, jobTemplate={"activeDeadlineSeconds": 300,
                                                      "serviceAccountName": "no-such-sa"}), namespace)  # fmt: skip
    t0 = time.monotonic()
    o = wait_phase(kube, namespace, "no-sa", ("Failed", "Succeeded", "Blocked"), op=operator, timeout=120)
    elapsed = time.monotonic() - t0
    ready = cond(o, "Ready")
    assert o["status"]["phase"] == "Failed" and ready["reason"] == "FailedCreate", o["status"]
    assert 'serviceaccount "no-such-sa" not found' in ready["message"], ready
    assert elapsed < 120  # bounded by wait_phase's timeout above, far below the Job's 300 s deadline
    (job,) = jobs(kube, namespace)
    assert job["metadata"]["labels"]["schemagate.dev/step"] == "backup"
    assert not job["status"].get("succeeded") and not job["status"].get("failed")
