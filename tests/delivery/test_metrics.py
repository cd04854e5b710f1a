"""The operator's Prometheus metrics (schemagate.metrics): names promlint accepts (client_golang's
``testutil/promlint``, the linter of ``promtool check metrics``) and no series left behind by a deleted
DatabaseMigration."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemagate import metrics


def exercise(ns: str, name: str, checks: dict[str, int]) -> None:
    """Every metric the operator exports, with one sample each (as a run that was blocked, then succeeded)."""
    metrics.observe_phase(ns, name, "Prechecking", None)
    metrics.observe_result(ns, name, "precheck", {
        "outcome": "ChecksFailed", "reason": "ViolationsFound", "durationSeconds": 1.5,
        "data": {"checks": [{"name": k, "count": v} for k, v in checks.items()], "total": sum(checks.values())}})
    metrics.observe_phase(ns, name, "Blocked", "Prechecking")
    metrics.observe_result(ns, name, "migrate", {"outcome": "Succeeded", "durationSeconds": 3.0, "data": {}})
    metrics.observe_phase(ns, name, "Succeeded", "Blocked")
    metrics.JOBS_CREATED.labels("precheck").inc()
    metrics.API_WRITES.labels("status").inc()
    metrics.RECONCILE.observe(0.02)
    metrics.RECONCILE_ERRORS.labels("api409").inc()


def series_of(name: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in fam.samples:
            if s.labels.get("migration") == name:
                out.append((s.name, s.labels))
    return out


def test_promlint_accepts_the_exposition(promlint):
    exercise("lint-ns", "lint-dbm", {"ck_qty_positive": 3})
    text = generate_latest(REGISTRY).decode()
    assert "schemagate_precheck_violating_rows" in text and "schemagate_step_failures_total" in text
    problems = promlint.run_json(text=text)
    assert problems == [], problems
    metrics.forget("lint-ns", "lint-dbm")


def test_promlint_catches_the_old_gauge_name(promlint):
    """The check is live: the Gauge the operator used to export fails it."""
    text = "# HELP schemagate_precheck_violations_total x\n# TYPE schemagate_precheck_violations_total gauge\n" \
           'schemagate_precheck_violations_total{namespace="a",migration="b"} 3\n'
    problems = promlint.run_json(text=text)
    assert problems == [{"metric": "schemagate_precheck_violations_total",
                         "text": 'non-counter metrics should not have "_total" suffix'}]


def test_a_deleted_migration_leaves_no_series():
    exercise("del-ns", "del-dbm", {"ck_a": 2, "ck_b": 1})
    exercise("del-ns", "kept-dbm", {"ck_a": 5})
    names = {n for n, _ in series_of("del-dbm")}
    assert {"schemagate_migration_phase", "schemagate_precheck_violations", "schemagate_precheck_violating_rows",
            "schemagate_last_success_timestamp_seconds"} <= names
    assert {m._name for m in metrics.PER_MIGRATION} == names
    metrics.forget("del-ns", "del-dbm")
    assert series_of("del-dbm") == []
    assert series_of("kept-dbm"), "forget removed another migration's series"
    metrics.forget("del-ns", "kept-dbm")
    assert series_of("kept-dbm") == []


def test_a_new_precheck_replaces_the_check_series():
    exercise("re-ns", "re-dbm", {"ck_old": 4, "ck_both": 1})
    metrics.observe_result("re-ns", "re-dbm", "precheck", {
        "outcome": "Succeeded", "data": {"checks": [{"name": "ck_both", "count": 0}], "total": 0}})
    checks = {labels["check"]: labels for n, labels in series_of("re-dbm") if n == "schemagate_precheck_violations"}
    assert set(checks) == {"ck_both"}
    metrics.forget("re-ns", "re-dbm")


def test_phase_exported_again_after_an_operator_restart():
    """A restarted operator reconciles a Blocked migration whose status already says Blocked: still exported."""
    metrics.observe_phase("rs-ns", "rs-dbm", "Blocked", "Blocked")
    phases = {labels["phase"]: labels for n, labels in series_of("rs-dbm") if n == "schemagate_migration_phase"}
    assert set(phases) == set(metrics.PHASES)
    value = [s.value for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode())
             for s in fam.samples if s.labels.get("migration") == "rs-dbm" and s.labels.get("phase") == "Blocked"]
    assert value == [1.0]
    assert not [n for n, _ in series_of("rs-dbm") if n == "schemagate_last_success_timestamp_seconds"]
    metrics.forget("rs-ns", "rs-dbm")
