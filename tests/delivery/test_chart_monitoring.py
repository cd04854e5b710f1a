"""The chart's monitoring options, statically: ServiceMonitor, PodMonitor, PrometheusRule and the Grafana dashboard
ConfigMap render as prometheus-operator and Grafana expect, and every dashboard query and alert expression runs
on Prometheus' own PromQL engine (tests/delivery/gotools/promql) over the operator's real exposition.

The objects are applied to the test bed with the prometheus-operator CRDs in tests/e2e/test_chart_monitoring_crds.py.
"""

from __future__ import annotations

import json

import pytest

from tests.delivery.helm import template
from tests.delivery.monitoring import (
    dashboard,
    dashboard_queries,
    exercise_operator_metrics,
    exposition,
    forget_exercised,
    monitoring_objects,
    now_ms,
    series_from_exposition,
)


@pytest.fixture
def exercised():
    exercise_operator_metrics()
    yield exposition()
    forget_exercised()


def by_kind(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs}


def test_monitoring_is_off_by_default():
    kinds = {d["kind"] for d in template("schemagate")}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}


def test_monitors_select_the_operator():
    objs = by_kind(monitoring_objects("ops", "--set", "metrics.serviceMonitor.labels.release=kube-prometheus"))
    docs = template("schemagate", namespace="ops")
    svc = next(d for d in docs if d["kind"] == "Service")
    pod_labels = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]
    sm, pm = objs["ServiceMonitor"], objs["PodMonitor"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ops"]} == pm["spec"]["namespaceSelector"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "metrics" in {p["name"] for p in container["ports"]}
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_monitor_without_metrics_is_refused():
    from tests.delivery.helm import CHARTS, helm

    r = helm("template", "x", str(CHARTS / "schemagate"), "--set", "metrics.enabled=false",
             "--set", "metrics.podMonitor.enabled=true", check=False)
    assert r.returncode != 0 and "metrics.podMonitor.enabled needs metrics.enabled" in r.stderr


def test_dashboard_configmap():
    cm = by_kind(monitoring_objects("ops", "--set", "metrics.dashboard.namespace=grafana"))["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "grafana"
    assert json.loads(cm["data"]["schemagate.json"]) == dashboard()
    titles = [p["title"] for p in dashboard()["panels"]]
    for needed in ("Migrations by phase", "Step duration (p50 and p95)", "Violations per check", "Step failures"):
        assert needed in titles


def test_dashboard_queries_on_the_promql_engine(promql, exercised):
    """Every panel query parses and returns data from the operator's own exposition (no misspelt metric or
    label: those return nothing)."""
    t = now_ms()
    queries = dashboard_queries(dashboard())
    results = promql.run_json(stdin={"series": series_from_exposition(exercised, t), "time": t,
                                     "queries": [q for _, q in queries]})
    bad = [f"{title}: {q}: {r['error'] or 'no data'}" for (title, q), r in zip(queries, results, strict=True)
           if r["error"] or not r["result"]]
    assert not bad, "\n".join(bad)
    by_title = dict(zip([t for t, _ in queries], results, strict=False))
    phases = {r["metric"]["phase"]: r["value"] for r in by_title["Migrations by phase"]["result"]}
    assert phases == {"Blocked": 1, "Failed": 1, "Succeeded": 1, "Migrating": 1}
    checks = {r["metric"]["check"]: r["value"] for r in by_title["Violations per check"]["result"]
              if r["metric"]["migration"] == "blocked"}
    assert checks == {"ck_qty_positive": 9, "nn_customer": 3}


def test_alerts_on_the_promql_engine(promql, exercised):
    """Each alert expression fires for exactly what it names, on the operator's exposition."""
    rule = by_kind(monitoring_objects("ops"))["PrometheusRule"]
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(exprs) == {"SchemagateMigrationBlocked", "SchemagateMigrationFailed", "SchemagateMigrationRunningLong",
                          "SchemagateOperatorDown"}
    t = now_ms()
    series = series_from_exposition(exercised, t)
    names = list(exprs)
    results = promql.run_json(stdin={"series": series, "time": t, "queries": [exprs[n] for n in names]})
    fired = {n: sorted(r["metric"].get("migration", "") for r in res["result"])
             for n, res in zip(names, results, strict=True)}
    assert not any(r["error"] for r in results), results
    assert fired == {"SchemagateMigrationBlocked": ["blocked"], "SchemagateMigrationFailed": ["failed"],
                     "SchemagateMigrationRunningLong": ["running"], "SchemagateOperatorDown": [""]}
    # with a successful scrape of the operator pod (what prometheus-operator's relabelling labels it with)
    up = {"labels": {"__name__": "up", "namespace": "ops", "pod": "schemagate-6d4f9c7b8-x2x9q", "job": "schemagate"},
          "points": [[t - 60_000, 1], [t, 1]]}
    [down] = promql.run_json(stdin={"series": [*series, up], "time": t, "queries": [exprs["SchemagateOperatorDown"]]})
    assert down["result"] == [] and not down["error"]
