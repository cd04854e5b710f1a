"""charts/schemagate, statically: helm lint, helm template against the values schema, the CRD copy, hardening."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.delivery.helm import CHARTS, ROOT, by_kind, helm, template

CHART = CHARTS / "schemagate"


def test_lint_strict():
    for chart in ("schemagate", "example-app"):
        out = helm("lint", "--strict", str(CHARTS / chart)).stdout
        assert "0 chart(s) failed" in out


def test_crd_is_identical_to_manifests():
    crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    copies = {"databasemigrations.schemagate.dev.yaml": "crd.yaml",
              "databaserestores.schemagate.dev.yaml": "restore-crd.yaml"}
    assert crds == sorted(copies)
    for chart_file, manifest in copies.items():
        assert (CHART / "crds" / chart_file).read_bytes() == (ROOT / "manifests" / manifest).read_bytes(), (
            f"charts/schemagate/crds/ must hold verbatim copies: cp manifests/{manifest} "
            f"charts/schemagate/crds/{chart_file}"
        )


def test_crd_is_installed_by_helm_template_include_crds():
    docs = template("schemagate", "--include-crds")
    crd = by_kind(docs, "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crd) == ["databasemigrations.schemagate.dev",
                                                          "databaserestores.schemagate.dev"]


@pytest.mark.parametrize("chart", ["schemagate", "example-app"])
def test_values_match_their_schema(chart):
    schema = json.loads((CHARTS / chart / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    values = yaml.safe_load((CHARTS / chart / "values.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(values)
    # every top-level value is declared (the schema forbids unknown keys)
    assert schema["additionalProperties"] is False
    assert set(values) <= set(schema["properties"])


def _keys_needing_comments(node, schema, path=()):
    """(path, line) of every key the schema declares in a closed object (free-form objects are documented whole)."""
    if not isinstance(node, yaml.MappingNode):
        return
    props = schema.get("properties", {})
    closed = schema.get("additionalProperties") is False
    for key_node, value_node in node.value:
        key = key_node.value
        if closed:
            yield path + (key,), key_node.start_mark.line
        if key in props:
            yield from _keys_needing_comments(value_node, props[key], path + (key,))


@pytest.mark.parametrize("chart", ["schemagate", "example-app"])
def test_every_value_is_commented(chart):
    """Each value the schema declares has a `# --` comment block right above it."""
    text = (CHARTS / chart / "values.yaml").read_text()
    lines = text.splitlines()
    schema = json.loads((CHARTS / chart / "values.schema.json").read_text())
    missing = []
    for path, line in _keys_needing_comments(yaml.compose(text), schema):
        j = line - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        if j < 0 or not lines[j].strip().startswith("# --"):
            missing.append(".".join(path))
    assert not missing, f"uncommented values: {missing}"


BAD_VALUES = [
    ["--set", "image.pullPolicy=Sometimes"],
    ["--set", "unknownKey=1"],
    ["--set", "operator.watchNamespaces[0]=Not_A_Namespace"],
    ["--set", "operator.logLevel=verbose"],
    ["--set", "metrics.port=70000"],
    ["--set", "securityContext.allowPrivilegeEscalation=true"],
    ["--set", "podSecurityContext.runAsNonRoot=false"],
    ["--set", "rbac.create=yes-please"],
    ["--set", "image.repository="],
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=[a[1] for a in BAD_VALUES])
def test_bad_values_are_rejected(args):
    proc = helm("template", "x", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr or "schema" in proc.stderr


def deployment(docs):
    (dep,) = by_kind(docs, "Deployment")
    return dep


def test_operator_deployment_is_hardened():
    dep = deployment(template("schemagate"))
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["port"] in ports
    assert c["readinessProbe"]["httpGet"] == c["livenessProbe"]["httpGet"]
    # service links would inject SCHEMAGATE_METRICS_PORT=tcp://... for the schemagate-metrics Service
    assert dep["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert c["args"][0] == "operator" and "--all-namespaces" in c["args"]
    assert pod["serviceAccountName"] == "schemagate"


def test_metrics_service_targets_the_metrics_port():
    docs = template("schemagate")
    (svc,) = by_kind(docs, "Service")
    dep = deployment(docs)
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    names = [p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]]
    assert "metrics" in names
    assert not by_kind(template("schemagate", "--set", "metrics.enabled=false"), "Service")


def rules_of(role):
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_cluster_wide_rbac():
    docs = template("schemagate")
    (cr,) = by_kind(docs, "ClusterRole")
    rules = rules_of(cr)
    for verb in ("get", "list", "watch", "patch"):
        assert ("", "pods", verb) in rules, verb  # the rollout gate
    assert ("schemagate.dev", "databasemigrations/status", "patch") in rules
    assert ("batch", "jobs", "create") in rules
    assert not any(r == "secrets" and v in ("list", "watch") for _, r, v in rules), "never list Secrets"
    assert not any(r == "*" or v == "*" for _, r, v in rules)
    (crb,) = by_kind(docs, "ClusterRoleBinding")
    assert crb["subjects"] == [
        {"kind": "ServiceAccount", "name": "schemagate", "namespace": "schemagate-system"}
    ]
    (leases,) = by_kind(docs, "Role")
    assert leases["metadata"]["namespace"] == "schemagate-system"
    assert rules_of(leases) == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}


def test_namespaced_rbac():
    docs = template("schemagate", "--set", "operator.watchNamespaces={shop,billing}")
    roles = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leases")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["billing", "shop"]
    bindings = [b for b in by_kind(docs, "RoleBinding") if not b["metadata"]["name"].endswith("-leases")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["billing", "shop"]
    assert ("", "pods", "patch") in rules_of(roles[0])
    (cr,) = by_kind(docs, "ClusterRole")
    assert {r for _, r, _ in rules_of(cr)} == {"customresourcedefinitions"}, (
        "nothing cluster-wide but the CRD"
    )
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=shop" in args and "--namespace=billing" in args and "--all-namespaces" not in args


def test_every_object_is_namespaced_to_the_release_or_cluster_scoped():
    docs = template("schemagate", namespace="ops")
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                         "ValidatingAdmissionPolicyBinding"):
            assert "namespace" not in d["metadata"]
        else:
            assert d["metadata"]["namespace"] == "ops", d["kind"]


def test_notes_render():
    out = helm("install", "schemagate", str(CHART), "--dry-run=client", "-n", "schemagate-system").stdout
    assert "kubectl wait --for=condition=Ready dbm/" in out and "schemagate.dev/migration" in out


def test_image_defaults_to_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    c = deployment(template("schemagate"))["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"ghcr.io/schemagate/schemagate:{chart['appVersion']}"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SCHEMAGATE_RUNNER_IMAGE"] == c["image"]
    c = deployment(template("schemagate", "--set", "image.repository=r.example/sg,image.tag=1.2"))
    assert c["spec"]["template"]["spec"]["containers"][0]["image"] == "r.example/sg:1.2"


def test_paths_exist():
    assert Path(CHART / "templates" / "NOTES.txt").exists()
    assert Path(CHART / "values.schema.json").exists()


def test_pod_patch_policy_names_the_release_service_account_and_can_be_turned_off():
    docs = template("schemagate", "--set", "serviceAccount.name=ops-sa", namespace="ops")
    (vap,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"].endswith("-pod-patch")]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"
                  and d["metadata"]["name"].endswith("-pod-patch")]  # fmt: skip
    assert vap["spec"]["matchConditions"][0]["expression"].endswith('"system:serviceaccount:ops:ops-sa"')
    assert binding["spec"]["policyName"] == vap["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
    off = template("schemagate", "--set", "rbac.podPatchPolicy=false")
    assert [d["metadata"]["name"] for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")] == [
        "schemagate-migration-create", "schemagate-migration-create"]


def test_migration_create_policy_is_on_by_default_and_can_be_turned_off():
    """The chart's copy of manifests/admission.yaml's create policy, bound with Deny; one value turns it off."""
    docs = template("schemagate", namespace="ops")
    (vap,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"
              and d["metadata"]["name"] == "schemagate-migration-create"]  # fmt: skip
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"
                  and d["metadata"]["name"] == "schemagate-migration-create"]  # fmt: skip
    assert vap["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["databasemigrations", "databaserestores"]
    assert vap["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE", "UPDATE"]
    checks = " ".join(v["expression"] for v in vap["spec"]["validations"])
    for needle in ('resource("jobs")', 'resource("pods")', 'check("impersonate")'):
        assert needle in checks, needle
    assert binding["spec"] == {"policyName": "schemagate-migration-create", "validationActions": ["Deny"]}
    off = template("schemagate", "--set", "rbac.migrationCreatePolicy=false")
    assert not [d for d in off if d["metadata"]["name"].endswith("-migration-create")]
