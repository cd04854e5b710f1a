# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""A step result larger than its termination message's share of the pod still reaches the status whole.

The kubelet keeps 12 KiB of termination messages per pod, divided among its containers (the test bed's node
stand-in cuts them the same way). The wholesale precheck with 64 user checks of random-looking names is over the
precheck pod's share even compressed, so the count container writes a summary (``truncated: true``) and the operator
reads the whole result from the line the step printed in its container's log (``pods/log``). Without that right
(a ServiceAccount token that may read pods but not their logs) the summary is what the operator gets, and it says so.
"""

from __future__ import annotations

import logging
import secrets as token
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

from schemagate import demo
from schemagate.contract.stepresult import from_termination_message
from schemagate.k8s import Kube
from tests.e2e.test_operator import (  # noqa: F401
    Operator,
    crd,
    dbm,
    images,
    operator,
    secret,
    wait_phase,
)
from tests.e2e.test_rbac import token_kubeconfig

pytestmark = pytest.mark.e2e


def user_checks() -> list[dict[str, str]]:
    """64 checks (the CRD's maxItems), names of 63 characters (its maxLength) that do not compress; 8 find rows."""
    return [{"name": f"rule-{i:02d}-{token.token_hex(27)}",
             "sql": f"SELECT {1 if i < 8 else 0} AS violating_rows"}
            for i in range(64)]


def test_a_result_over_the_pods_share_comes_whole_from_the_log(kube: Any, operator: Operator, images: Any,
                                                               namespace: str, fresh_db: str, tmp_path: Path) -> None:
    demo.seed_wholesale(fresh_db)
    secret(kube, namespace, "db", {"url": fresh_db})
    checks = user_checks()
    kube.apply(dbm("large", image=images("wholesale"), precheck={"checks": checks}), namespace)
    o = wait_phase(kube, namespace, "large", ("Blocked", "Failed", "Succeeded"), op=operator, timeout=300)
    st = o["status"]
    assert st["phase"] == "Blocked", st
    # the precheck pod's termination message is a summary: it had to be
    job = st["jobs"]["precheck"]
    pods = kube.pods(namespace, f"job-name={job}")
    statuses = {s["name"]: s for s in pods[-1]["status"]["containerStatuses"]}
    summary = from_termination_message(statuses["count"]["state"]["terminated"]["message"])
    assert summary is not None and summary["truncated"] is True, summary
    # ... and the status has every check, with its count, and nothing omitted
    got = {c["name"]: c.get("count") for c in st["violations"]["checks"]}
    assert {c["name"] for c in checks} <= set(got), sorted(set(c["name"] for c in checks) - set(got))
    assert [got[c["name"]] for c in checks] == [1] * 8 + [0] * 56
    assert {n: v for n, v in got.items() if v and not n.startswith("rule-")} == demo.WHOLESALE_VIOLATIONS
    assert "omitted" not in st["violations"], st["violations"]["omitted"]

    # without the right to read pod logs: the summary, and a warning that says why
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-logs"}}, namespace)
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pods-only"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}, namespace)
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "no-logs"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods-only"},
                "subjects": [{"kind": "ServiceAccount", "name": "no-logs", "namespace": namespace}]}, namespace)
    path = token_kubeconfig(kube, namespace, "no-logs", tmp_path / "no-logs.kubeconfig")
    restricted = Kube(config.new_client_from_config(config_file=str(path)))
    warnings: list[str] = []
    catch = logging.Handler(logging.WARNING)
    catch.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("schemagate.k8s")
    logger.addHandler(catch)
    try:
        result, code, _ = restricted.job_result(namespace, job)
    finally:
        logger.removeHandler(catch)
    assert result is not None and result["truncated"] is True and code == 3
    assert any("its log cannot be read" in w and "Forbidden" in w for w in warnings), warnings
    admin = Kube(config.new_client_from_config(config_file=str(kube.kubeconfig)))
    whole, _, _ = admin.job_result(namespace, job)
    assert whole is not None and not whole["truncated"] and len(whole["data"]["checks"]) == len(got)
