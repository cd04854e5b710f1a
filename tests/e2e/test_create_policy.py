"""Creating a DatabaseMigration is creating pods: manifests/admission.yaml's create policy on the real API server.

The operator runs a DatabaseMigration's steps as Jobs in the resource's namespace, in the images and under the
ServiceAccount its spec names. The ``schemagate-migration-create`` ValidatingAdmissionPolicy makes the API server
ask, for the user who creates a DatabaseMigration or changes its spec, whether that user could create those Jobs
and pods and use (impersonate) that ServiceAccount. Users here are impersonated by the test bed's admin
(``kubectl --as``), which the API server authorizes as those users; their rights come from real Roles and Kubernetes'
own ``edit`` ClusterRole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.operator_process import ROOT, wait_established

pytestmark = pytest.mark.e2e

POLICY = "schemagate-migration-create"


def _policy_docs() -> list[dict]:
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "admission.yaml").read_text()) if d]
    return [d for d in docs if d["metadata"]["name"] == POLICY]


@pytest.fixture(scope="module")
def create_policy(kube: Any) -> Iterator[None]:
    """The CRD and the create policy (with its binding) from manifests/, removed afterwards if they were new."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests" / "crd.yaml"),
                 "-f", str(ROOT / "manifests" / "restore-crd.yaml"))
    wait_established(kube, "databasemigrations.schemagate.dev")
    docs = _policy_docs()
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    existed = kube.kubectl("get", "validatingadmissionpolicy", POLICY, check=False).returncode == 0
    kube.apply(docs)
    yield
    if not existed:
        for d in docs:
            kube.kubectl("delete", d["kind"], POLICY, "--ignore-not-found", "--wait=false", check=False)


def _role(kube: Any, ns: str, name: str, rules: list[dict], users: list[str]) -> None:
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": name, "namespace": ns}, "rules": rules})  # fmt: skip
    _bind(kube, ns, name, "Role", users)


def _bind(kube: Any, ns: str, role: str, kind: str, users: list[str]) -> None:
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": f"{role}-binding", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u} for u in users]})


def _migration(name: str, service_account: str | None = None) -> dict:
    spec: dict[str, Any] = {
        "database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        "migrations": {"image": "registry.example.com/shop:2", "directory": "/app", "targetRevision": "head"},
    }
    if service_account:
        spec["jobTemplate"] = {"serviceAccountName": service_account}
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def _create(kube: Any, ns: str, user: str, obj: dict) -> Any:
    return kube.kubectl("--as", user, "-n", ns, "create", "-f", "-", input=yaml.safe_dump(obj), check=False)


def _wait_refused(kube: Any, ns: str, probe: dict, short: str, message: str) -> None:
    """Wait until the API server has loaded the policy: ``limited`` creating ``probe`` is refused (a probe created
    before that is removed again)."""
    def refused() -> bool:
        r = _create(kube, ns, "limited", probe)
        if r.returncode == 0:
            kube.kubectl("-n", ns, "delete", short, probe["metadata"]["name"], "--wait=true")
        return r.returncode != 0 and "may not create batch/v1 jobs" in r.stderr

    kube.wait_for(refused, timeout=30, message=message)


def _exists(kube: Any, ns: str, name: str) -> bool:
    return kube.kubectl("-n", ns, "get", "dbm", name, check=False).returncode == 0


def test_only_users_who_may_run_the_jobs_may_create_a_migration(kube: Any, create_policy: None,
                                                                namespace: str) -> None:  # fmt: skip
    ns = namespace
    dbm_rules = [{"apiGroups": ["schemagate.dev"], "resources": ["databasemigrations"],
                  "verbs": ["create", "get", "list", "patch", "update"]}]  # fmt: skip
    # limited: DatabaseMigrations only; runner: also Jobs and pods, no ServiceAccount use; editor: Kubernetes' edit
    _role(kube, ns, "dbm-only", dbm_rules, ["limited", "runner", "editor"])
    _role(kube, ns, "run-jobs", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
                                 {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}], ["runner"])
    _bind(kube, ns, "edit", "ClusterRole", ["editor"])
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "deployer"}}, ns)

    # the policy takes effect once the API server has loaded it; probes created before that are removed
    _wait_refused(kube, ns, _migration("probe"), "dbm", "the create policy to refuse a user without Job rights")
    r = _create(kube, ns, "limited", _migration("by-limited"))
    assert f"user limited may not create batch/v1 jobs in namespace {ns}" in r.stderr, r.stderr
    assert "ValidatingAdmissionPolicy 'schemagate-migration-create'" in r.stderr, r.stderr
    assert not _exists(kube, ns, "by-limited")

    # Jobs and pods are not enough to run the steps as a named ServiceAccount
    r = _create(kube, ns, "runner", _migration("by-runner-sa", service_account="deployer"))
    assert r.returncode != 0, r.stdout
    assert f"spec.jobTemplate.serviceAccountName: user runner may not use (impersonate) ServiceAccount {ns}/deployer" \
        in r.stderr, r.stderr
    assert not _exists(kube, ns, "by-runner-sa")
    r = _create(kube, ns, "runner", _migration("by-runner"))
    assert r.returncode == 0, r.stderr

    # Kubernetes' edit role grants all three: allowed, with and without a ServiceAccount
    for name, sa in (("by-editor", None), ("by-editor-sa", "deployer")):
        r = _create(kube, ns, "editor", _migration(name, service_account=sa))
        assert r.returncode == 0, r.stderr
        assert _exists(kube, ns, name)


def test_changes_that_leave_the_spec_alone_are_not_checked(kube: Any, create_policy: None, namespace: str) -> None:
    """Labels, annotations and finalizers (what the operator writes) need no Job rights; a spec change does."""
    ns = namespace
    _role(kube, ns, "dbm-only", [{"apiGroups": ["schemagate.dev"], "resources": ["databasemigrations"],
                                  "verbs": ["create", "get", "list", "patch", "update", "delete"]}],
          ["limited"])  # fmt: skip
    kube.apply(_migration("shop"), ns)  # created by the admin
    _wait_refused(kube, ns, _migration("probe"), "dbm", "the create policy to be loaded")

    r = kube.kubectl("--as", "limited", "-n", ns, "label", "dbm", "shop", "team=payments", check=False)
    assert r.returncode == 0, r.stderr
    r = kube.kubectl("--as", "limited", "-n", ns, "patch", "dbm", "shop", "--type", "merge",
                     "-p", '{"spec": {"migrations": {"image": "registry.example.com/evil:1"}}}', check=False)  # fmt: skip
    assert r.returncode != 0 and "may not create batch/v1 jobs" in r.stderr, (r.stdout, r.stderr)
    got = kube.kubectl("-n", ns, "get", "dbm", "shop", "-o", "jsonpath={.spec.migrations.image}").stdout
    assert got == "registry.example.com/shop:2"


def test_only_users_who_may_run_the_jobs_may_create_a_restore(kube: Any, create_policy: None,
                                                              namespace: str) -> None:  # fmt: skip
    """A DatabaseRestore runs a Job with the DatabaseMigration's Secrets and backup volume: the same policy."""
    ns = namespace
    rules = [{"apiGroups": ["schemagate.dev"], "resources": ["databaserestores"], "verbs": ["create", "get"]}]
    _role(kube, ns, "dbr-only", rules, ["limited", "runner"])
    _role(kube, ns, "run-jobs", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
                                 {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}], ["runner"])

    def restore(name: str) -> dict:
        return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseRestore", "metadata": {"name": name},
                "spec": {"migrationRef": {"name": "shop"}, "backup": {"sha256": "ab" * 32}}}

    _wait_refused(kube, ns, restore("probe"), "dbr", "the create policy to refuse a restore by a user without Job rights")
    r = _create(kube, ns, "limited", restore("by-limited"))
    assert f"user limited may not create batch/v1 jobs in namespace {ns}" in r.stderr, r.stderr
    assert kube.kubectl("-n", ns, "get", "dbr", "by-limited", check=False).returncode != 0
    r = _create(kube, ns, "runner", restore("by-runner"))
    assert r.returncode == 0, r.stderr
