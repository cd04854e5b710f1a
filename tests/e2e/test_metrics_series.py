# ruff: noqa: F811  (pytest fixtures imported from test_operator are redefined as parameters)
"""The operator's /metrics on the test bed: a Blocked migration is exported (phase, violations per check,
violating rows), the exposition passes promlint, and deleting the DatabaseMigration removes every one of its
series, so an alert on it stops firing."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemagate import demo
from tests.e2e.test_operator import (  # noqa: F401
    Operator,
    crd,
    dbm,
    images,
    operator,
    secret,
    wait_phase,
)

pytestmark = pytest.mark.e2e


def scrape(op: Operator) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=10) as r:  # noqa: S310
        return r.read().decode()


def series_of(text: str, namespace: str, name: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("namespace") == namespace and s.labels.get("migration") == name:
                out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_blocked_migration_series_then_deleted(kube: Any, operator: Operator, images: Any, namespace: str,
                                               fresh_db: str, promlint: Any) -> None:  # fmt: skip
    demo.seed_wholesale(fresh_db)
    secret(kube, namespace, "db", {"url": fresh_db})
    kube.apply(dbm("wholesale", image=images("wholesale")), namespace)
    o = wait_phase(kube, namespace, "wholesale", ("Blocked", "Failed", "Succeeded"), op=operator, timeout=300)
    assert o["status"]["phase"] == "Blocked", o["status"]

    def blocked_exported() -> str | None:  # the series follow the status write, a moment after it is visible
        text = scrape(operator)
        phase = {labels["phase"]: v for labels, v in series_of(text, namespace, "wholesale").get(
            "schemagate_migration_phase", [])}
        return text if phase.get("Blocked") == 1 and sum(phase.values()) == 1 else None

    text = kube.wait_for(blocked_exported, timeout=10, message="schemagate_migration_phase{phase=Blocked} == 1")
    assert promlint.run_json(text=text) == []
    mine = series_of(text, namespace, "wholesale")
    assert mine["schemagate_precheck_violating_rows"] == [({"namespace": namespace, "migration": "wholesale"},
                                                           float(o["status"]["violations"]["total"]))]
    per_check = {labels["check"]: v for labels, v in mine["schemagate_precheck_violations"]}
    assert per_check == {c["name"]: float(c.get("count") or 0) for c in o["status"]["violations"]["checks"]}

    kube.kubectl("delete", "dbm", "wholesale", "-n", namespace, "--wait=true", "--timeout=60s")
    kube.wait_for(lambda: not series_of(scrape(operator), namespace, "wholesale"), timeout=60,
                  message="the deleted migration's series to disappear from /metrics")
