"""The test bed's API server enforces CRDs like a real cluster: structural schema, CEL rules, status subresource,
printer columns (through kubectl and the Python client)."""

from __future__ import annotations

import json
import secrets

import pytest
from kubernetes.client.exceptions import ApiException

from tests.testbed.plugin import Kube

pytestmark = pytest.mark.e2e


def widget_crd(group: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wdg"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size", "max"],
                            "properties": {"size": {"type": "integer", "minimum": 0},
                                           "max": {"type": "integer"}},
                            "x-kubernetes-validations": [
                                {"rule": "self.size <= self.max", "message": "size must not exceed max"}],
                        },
                        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                    },
                }},
            }],
        },
    }


@pytest.fixture
def crd(kube: Kube):
    group = f"w{secrets.token_hex(3)}.testbed.schemagate.dev"
    body = widget_crd(group)
    kube.apiextensions().create_custom_resource_definition(body, _preload_content=False)

    def established():
        obj = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}")
        conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
        return conds.get("Established") == "True" and conds.get("NamesAccepted") == "True"

    kube.wait_for(established, timeout=30, message="the CRD to be Established")
    yield group
    kube.apiextensions().delete_custom_resource_definition(f"widgets.{group}", _preload_content=False)


def test_crd_schema_cel_status_and_printer_columns(kube: Kube, namespace: str, crd: str) -> None:
    custom = kube.custom()
    ok = {"apiVersion": f"{crd}/v1", "kind": "Widget", "metadata": {"name": "small"}, "spec": {"size": 1, "max": 3}}
    # the discovery cache of a fresh CRD can lag a moment behind Established
    kube.wait_for(lambda: kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(ok), check=False)
                  .returncode == 0, timeout=20, message="kubectl to discover the new CRD")

    # CEL rule, via the Python client: 422 with the rule's message
    bad = {"apiVersion": f"{crd}/v1", "kind": "Widget", "metadata": {"name": "big"}, "spec": {"size": 5, "max": 3}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(crd, "v1", namespace, "widgets", bad, _preload_content=False)
    assert err.value.status == 422
    assert "size must not exceed max" in err.value.body

    # ... and via kubectl
    proc = kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert "size must not exceed max" in proc.stderr

    # the structural schema (minimum, required)
    neg = {**bad, "metadata": {"name": "neg"}, "spec": {"size": -1, "max": 3}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(crd, "v1", namespace, "widgets", neg, _preload_content=False)
    assert err.value.status == 422 and "should be greater than or equal to 0" in err.value.body
    missing = {**bad, "metadata": {"name": "nomax"}, "spec": {"size": 1}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(crd, "v1", namespace, "widgets", missing, _preload_content=False)
    assert "spec.max: Required value" in err.value.body

    # pruning of unknown fields
    extra = {**ok, "metadata": {"name": "extra"}, "spec": {"size": 1, "max": 2, "colour": "red"}}
    created = json.loads(custom.create_namespaced_custom_object(crd, "v1", namespace, "widgets", extra,
                                                                _preload_content=False).data)
    assert "colour" not in created["spec"]

    # status subresource: the main resource ignores status, /status ignores spec; generation follows spec only
    path = f"/apis/{crd}/v1/namespaces/{namespace}/widgets/small"
    before = kube.get(path)
    kube.request("PATCH", path, {"status": {"phase": "Ignored"}}, "application/merge-patch+json")
    assert "status" not in kube.get(path)
    kube.request("PATCH", path + "/status", {"status": {"phase": "Ready"}, "spec": {"size": 2}},
                 "application/merge-patch+json")
    after = kube.get(path)
    assert after["status"]["phase"] == "Ready"
    assert after["spec"]["size"] == 1
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    kube.request("PATCH", path, {"spec": {"size": 2}}, "application/merge-patch+json")
    assert kube.get(path)["metadata"]["generation"] == before["metadata"]["generation"] + 1

    # printer columns, server-side
    out = kube.kubectl("get", f"widgets.{crd}", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "PHASE"]  # custom columns replace AGE
    row = next(line.split() for line in out[1:] if line.startswith("small "))
    assert row[:3] == ["small", "2", "Ready"]
    assert "small" in kube.kubectl("get", "wdg", "-n", namespace, "-o", "name").stdout


def test_cluster_basics(kube: Kube, namespace: str) -> None:
    version = kube.get("/version")
    assert version["gitVersion"].startswith("v1.")
    nodes = kube.get("/api/v1/nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["testbed-node"]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    lease = kube.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/testbed-node")
    assert lease["spec"]["holderIdentity"] == "testbed-node"
    # RBAC is on: a service account without bindings is refused
    proc = kube.kubectl("auth", "can-i", "list", "pods", "-n", namespace,
                        f"--as=system:serviceaccount:{namespace}:default", check=False)
    assert proc.stdout.strip() == "no"
    # the environment of the test session points at the test bed
    import os

    assert os.environ["KUBECONFIG"] == str(kube.kubeconfig)
    assert os.environ["PATH"].split(os.pathsep)[0] == str(kube.bin_dir)
    from kubernetes import client, config

    api = config.new_client_from_config()  # KUBECONFIG from the environment
    assert client.CoreV1Api(api).read_namespace(namespace).metadata.name == namespace
    api.close()
