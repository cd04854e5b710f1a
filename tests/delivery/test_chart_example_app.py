"""charts/example-app, statically: one value drives image tag and revision, the gate, the waiter helper."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from schemagate.core import gate
from tests.delivery.helm import ROOT, by_kind, helm, template


def render(*args):
    return template("example-app", *args, release="shop", namespace="demo")


def crd_schema():
    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def only(docs, kind):
    (d,) = by_kind(docs, kind)
    return d


def test_version_sets_image_tag_and_target_revision():
    docs = render("--set-string", "version=0003")
    dbm = only(docs, "DatabaseMigration")
    dep = only(docs, "Deployment")
    pod = dep["spec"]["template"]
    assert dbm["spec"]["migrations"]["targetRevision"] == "0003"
    assert dbm["spec"]["migrations"]["image"] == "example-app:0003"
    assert pod["spec"]["containers"][0]["image"] == "example-app:0003"
    assert pod["metadata"]["annotations"][gate.REVISION_ANNOTATION] == "0003"
    assert (
        only(render("--set-string", "version=0003,image.tag=abc"), "Deployment")["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
        == "example-app:abc"
    )


def test_pods_are_gated_on_their_migration():
    docs = render()
    dbm = only(docs, "DatabaseMigration")
    pod = only(docs, "Deployment")["spec"]["template"]
    assert gate.is_gated(pod)
    assert gate.migration_ref(pod) == (dbm["metadata"]["name"], "0002")
    # old pods keep serving: no pod goes away before a new one is ready
    strategy = only(docs, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert not gate.is_gated(
        only(render("--set", "gate.schedulingGate=false"), "Deployment")["spec"]["template"]
    )
    pod = only(render("--set", "gate.requireRevision=false"), "Deployment")["spec"]["template"]
    assert gate.migration_ref(pod)[1] is None


def test_migration_validates_against_the_crd():
    docs = render(
        "--set", "migration.checks[0].name=no-orphans",
        "--set", "migration.checks[0].sql=select count(*) from orders",
        "--set", "migration.extraSpec.jobTemplate.backoffLimit=0",
    )  # fmt: skip
    dbm = only(docs, "DatabaseMigration")
    jsonschema.Draft7Validator(crd_schema()).validate(dbm)
    assert dbm["spec"]["precheck"]["checks"][0]["name"] == "no-orphans"
    assert dbm["spec"]["jobTemplate"] == {"backoffLimit": 0}
    assert dbm["spec"]["database"]["urlFrom"]["secretKeyRef"] == {"name": "shop-example-app-db", "key": "url"}


def test_argo_sync_waves_order_secret_migration_app():
    docs = render("--set", "database.url=postgresql://u:p@db/shop")
    wave = {
        d["kind"]: int(d["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))
        for d in docs
    }
    assert wave["Secret"] < wave["DatabaseMigration"] < wave["Deployment"]


def test_secret_only_when_url_given():
    assert not by_kind(render(), "Secret")
    secret = only(render("--set", "database.url=postgresql://u:p@db/shop"), "Secret")
    assert secret["stringData"]["url"] == "postgresql://u:p@db/shop"


def test_wait_init_container_and_least_privilege_role():
    docs = render(
        "--set", "gate.waitInitContainer.enabled=true", "--set", "gate.waitInitContainer.timeout=10m"
    )
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    dbm_name = only(docs, "DatabaseMigration")["metadata"]["name"]
    assert init["args"] == ["wait", dbm_name, "--revision=0002", "--timeout=10m"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == "demo"
    assert role["rules"] == [
        {"apiGroups": ["schemagate.dev"], "resources": ["databasemigrations"], "resourceNames": [dbm_name],
         "verbs": ["get"]}
    ]  # fmt: skip
    binding = only(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "demo"}
    ]
    assert not by_kind(render(), "Role")


def test_wait_init_container_args_parse_with_the_waiter():
    import argparse

    from schemagate import waiter

    docs = render(
        "--set", "gate.waitInitContainer.enabled=true", "--set", "gate.waitInitContainer.timeout=10m"
    )
    (init,) = only(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    args = waiter.add_arguments(argparse.ArgumentParser()).parse_args(init["args"][1:])
    assert args.revision == "0002" and args.timeout == 600


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "version=2"],  # a number, not the string "0002"
        ["--set-string", "version=not-a-rev!"],
        ["--set", "migration.lockTimeout=soon"],
        ["--set", "gate.schedulingGate=maybe"],
        ["--set", "whatever=1"],
        ["--set", "migration.checks[0].name=Bad Name,migration.checks[0].sql=x"],
    ],
)
def test_bad_values_are_rejected(args):
    proc = helm("template", "x", str(ROOT / "charts" / "example-app"), *args, check=False)
    assert proc.returncode != 0 and "schema" in proc.stderr
