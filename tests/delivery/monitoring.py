"""Shared pieces of the monitoring tests: the chart's monitoring objects and the operator's exposition as series."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemagate import metrics
from tests.delivery.helm import CHARTS, template

MONITORING = ("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
              "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true")
# Grafana's built-in variables and the dashboard's own, as Grafana substitutes them before querying
GRAFANA_VARS = {"$__rate_interval": "2m", "$namespace": ".*"}
STEP_SECONDS = 60
# counter-like samples (monotonic), which get an increasing history; the others are gauges
MONOTONIC_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def monitoring_objects(namespace: str = "schemagate-system", *extra: str) -> list[dict]:
    return [d for d in template("schemagate", *MONITORING, *extra, namespace=namespace)
            if d["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap")]


def dashboard() -> dict[str, Any]:
    return json.loads((CHARTS / "schemagate" / "dashboards" / "schemagate.json").read_text())


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target, with Grafana's variables substituted."""
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets") or []:
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def exercise_operator_metrics() -> None:
    """One migration of each kind, through the operator's metrics functions: blocked (with two checks), failed,
    succeeded, and one still migrating, plus jobs, API writes and reconciliations."""
    m = metrics
    m.observe_phase("shop", "blocked", "Prechecking", None)
    m.observe_result("shop", "blocked", "backup", {"outcome": "Succeeded", "durationSeconds": 4.0, "data": {}})
    m.observe_result("shop", "blocked", "precheck", {
        "outcome": "ChecksFailed", "reason": "ViolationsFound", "durationSeconds": 2.5,
        "data": {"checks": [{"name": "ck_qty_positive", "count": 9}, {"name": "nn_customer", "count": 3}],
                 "total": 12}})
    m.observe_phase("shop", "blocked", "Blocked", "Prechecking")
    m.observe_result("shop", "failed", "migrate", {"outcome": "PermanentError", "reason": "MigrationFailed",
                                                  "durationSeconds": 1.0, "data": {}})
    m.observe_phase("shop", "failed", "Failed", "Migrating")
    m.observe_result("shop", "done", "verify", {"outcome": "Succeeded", "durationSeconds": 0.7, "data": {}})
    m.observe_phase("shop", "done", "Succeeded", "Verifying")
    m.observe_phase("shop", "running", "Migrating", "Prechecking")
    for step in ("backup", "precheck", "migrate", "verify"):
        m.JOBS_CREATED.labels(step).inc()
    m.API_WRITES.labels("status").inc()
    m.RECONCILE.observe(0.03)
    m.RECONCILE_ERRORS.labels("api409").inc()


def forget_exercised() -> None:
    for name in ("blocked", "failed", "done", "running"):
        metrics.forget("shop", name)


def exposition() -> str:
    return generate_latest(REGISTRY).decode()


def series_from_exposition(text: str, now_ms: int, extra_labels: dict[str, str] | None = None) -> list[dict]:
    """Every sample of a text exposition as a series with a short scrape history ending at ``now_ms``: counters
    grow from 0 to their value over three scrapes, gauges keep their value (what Prometheus would have stored
    from scraping this operator three times, ``STEP_SECONDS`` apart)."""
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = {"__name__": s.name, **s.labels, **(extra_labels or {})}
            steps = (2, 1, 0)
            if s.name.endswith(MONOTONIC_SUFFIXES):
                values = [0.0, s.value / 2, s.value]
            else:
                values = [s.value] * 3
            out.append({"labels": labels,
                        "points": [[now_ms - k * STEP_SECONDS * 1000, v] for k, v in zip(steps, values, strict=True)]})
    return out


def now_ms() -> int:
    return int(time.time() * 1000)
