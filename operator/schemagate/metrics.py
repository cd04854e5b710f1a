"""Prometheus metrics of the operator (prometheus_client), served on ``SCHEMAGATE_METRICS_PORT`` (default 8000)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

STEP_DURATION = Histogram(
    "schemagate_step_duration_seconds", "Duration of a step Job as reported by its StepResult",
    ["step", "outcome"], buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200))
VIOLATIONS = Gauge(
    "schemagate_precheck_violations", "Rows violating a new constraint, per check, from the last precheck",
    ["namespace", "migration", "check"])
# a Gauge must not end in _total (promlint; Prometheus naming: _total is for counters)
VIOLATING_ROWS = Gauge(
    "schemagate_precheck_violating_rows", "All violating rows from the last precheck", ["namespace", "migration"])
FAILURES = Counter(
    "schemagate_step_failures_total", "Failed step Jobs by step and reason", ["step", "reason", "outcome"])
LAST_SUCCESS = Gauge(
    "schemagate_last_success_timestamp_seconds", "When the migration last reached Succeeded (Unix time)",
    ["namespace", "migration"])
PHASE = Gauge(
    "schemagate_migration_phase", "1 for the current phase of each DatabaseMigration", ["namespace", "migration", "phase"])
JOBS_CREATED = Counter("schemagate_jobs_created_total", "Step Jobs created", ["step"])
API_WRITES = Counter("schemagate_api_writes_total", "Kubernetes API writes by kind", ["kind"])
RECONCILE = Histogram("schemagate_reconcile_seconds", "Duration of one reconciliation",
                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RECONCILE_ERRORS = Counter("schemagate_reconcile_errors_total", "Reconciliations that raised", ["error"])

PHASES = ("Pending", "BackingUp", "Prechecking", "Rehearsing", "Migrating", "Verifying", "Succeeded", "Blocked", "Failed",
          "Suspended")

_started = False
# the check names exported per (namespace, migration), so a new precheck or a deletion removes exactly those series
_checks: dict[tuple[str, str], set[str]] = {}
_phases: dict[tuple[str, str], str] = {}  # the phase exported per (namespace, migration)


def serve(port: int) -> None:
    """Serve ``/metrics`` on ``port`` (TCP, all interfaces) once per process; ``port`` <= 0 serves nothing."""
    global _started
    if not _started and port > 0:
        start_http_server(port)
        _started = True


def observe_result(ns: str, name: str, step: str, result: dict[str, Any]) -> None:
    """Record one consumed StepResult (docs/architecture.md): its duration (seconds) per step and outcome, a
    failure per step/reason/outcome unless it Succeeded, and for ``precheck`` the violating rows per check and in
    total. A check of an earlier precheck that this one no longer counts loses its series."""
    outcome = str(result.get("outcome") or "Unknown")
    dur = result.get("durationSeconds")
    if isinstance(dur, (int, float)):
        STEP_DURATION.labels(step, outcome).observe(float(dur))
    if outcome != "Succeeded":
        FAILURES.labels(step, str(result.get("reason") or "Unknown"), outcome).inc()
    if step == "precheck":
        data = result.get("data") or {}
        counted = {str(c["name"]): float(c.get("count") or 0)
                   for c in data.get("checks") or [] if isinstance(c, dict) and c.get("name")}
        for gone in _checks.get((ns, name), set()) - set(counted):
            _remove(VIOLATIONS, ns, name, gone)  # a check of an earlier precheck
        for check, count in counted.items():
            VIOLATIONS.labels(ns, name, check).set(count)
        _checks[(ns, name)] = set(counted)
        if data.get("total") is not None:
            VIOLATING_ROWS.labels(ns, name).set(float(data["total"]))


def observe_phase(ns: str, name: str, phase: str, previous: str | None) -> None:
    """Export ``phase`` (1 for it, 0 for the others) after a reconciliation whose status went from ``previous``.

    The series are (re)written whenever they do not show ``phase`` yet, also when ``phase == previous``: after an
    operator restart a Blocked migration is exported again at its first reconciliation, so alerts keep firing.
    ``schemagate_last_success_timestamp_seconds`` is set only on a transition into Succeeded."""
    if _phases.get((ns, name)) != phase:
        for p in PHASES:
            PHASE.labels(ns, name, p).set(1.0 if p == phase else 0.0)
        _phases[(ns, name)] = phase
    if phase == "Succeeded" and previous != "Succeeded":
        LAST_SUCCESS.labels(ns, name).set(time.time())


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def forget(ns: str, name: str) -> None:
    """Remove every series of a deleted DatabaseMigration (phase, violations, violating rows, last success), so
    an alert on it stops firing. Series without namespace/migration labels (step durations, failures) stay."""
    for p in PHASES:
        _remove(PHASE, ns, name, p)
    _phases.pop((ns, name), None)
    for check in _checks.pop((ns, name), set()):
        _remove(VIOLATIONS, ns, name, check)
    _remove(VIOLATING_ROWS, ns, name)
    _remove(LAST_SUCCESS, ns, name)


PER_MIGRATION = (PHASE, VIOLATIONS, VIOLATING_ROWS, LAST_SUCCESS)
"""The metrics with namespace and migration labels: :func:`forget` removes their series of one migration."""
