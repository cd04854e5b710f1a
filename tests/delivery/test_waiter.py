"""`schemagate wait` logic (schemagate.waiter) over a fake client and clock."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from schemagate import waiter
from schemagate.waiter import AccessError, WaitExit
from tests.delivery.test_gate_decision import dbm


class Clock:
    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


def seq_getter(*items):
    items = list(items)

    def get():
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, BaseException):
            raise item
        return item

    return get


def run(getter, **kw):
    clock = Clock()
    logs = []
    res = waiter.wait_for(
        getter, name="shop", namespace="demo", clock=clock, sleep=clock.sleep, log=logs.append, **kw
    )
    return res, logs, clock


def test_ready_after_progress():
    res, logs, clock = run(
        seq_getter(None, dbm(phase="Migrating", ready="False"), dbm(observed=2), dbm()), interval=2
    )
    assert res.exit_code is WaitExit.READY and res.outcome == "Ready" and res.current_revision == "0002"
    assert clock.t == 6
    assert any("does not exist" in line for line in logs)
    assert any("Migrating" in line for line in logs)
    assert any("generation" in line for line in logs)


def test_logs_only_changes():
    res, logs, _ = run(seq_getter(*([dbm(phase="Migrating", ready="False")] * 5), dbm()))
    assert res.exit_code is WaitExit.READY
    assert len(logs) == 1


@pytest.mark.parametrize("phase,outcome", [("Blocked", "Blocked"), ("Failed", "Failed")])
def test_fails_fast_with_reason(phase, outcome):
    m = dbm(phase=phase, ready="False", reason="ViolationsFound", message="12 rows violate 2 checks")
    res, _, clock = run(seq_getter(m), timeout=600)
    assert res.exit_code is WaitExit.BLOCKED_OR_FAILED and res.outcome == outcome
    assert "ViolationsFound" in res.message and "12 rows" in res.message
    assert clock.t == 0


def test_stale_blocked_is_waited_for():
    stale = dbm(phase="Blocked", ready="False", generation=4, observed=3)
    res, _, _ = run(seq_getter(stale, stale, dbm(generation=4, observed=4, cond_generation=4)))
    assert res.exit_code is WaitExit.READY


def test_timeout():
    res, logs, clock = run(seq_getter(dbm(phase="Prechecking", ready="False")), timeout=5, interval=2)
    assert res.exit_code is WaitExit.TIMEOUT and res.outcome == "Timeout"
    assert clock.t == 5 and clock.sleeps == [2, 2, 1]
    assert "Prechecking" in res.message


def test_timeout_when_missing():
    res, _, _ = run(seq_getter(None), timeout=3)
    assert res.exit_code is WaitExit.TIMEOUT and "does not exist" in res.message


def test_revision_required():
    res, _, _ = run(seq_getter(dbm(current="0001"), dbm(current="0002")), revision="0002")
    assert res.exit_code is WaitExit.READY
    res, _, _ = run(seq_getter(dbm(current="0001")), revision="0002", timeout=4)
    assert res.exit_code is WaitExit.TIMEOUT and "0002" in res.message


def test_transient_errors_are_retried_and_access_errors_are_not():
    res, logs, _ = run(seq_getter(ConnectionError("refused"), dbm()))
    assert res.exit_code is WaitExit.READY and "ConnectionError" in logs[0]
    res, _, _ = run(seq_getter(AccessError("403 Forbidden")), timeout=100)
    assert res.exit_code is WaitExit.ACCESS_ERROR


def test_exit_codes_distinct():
    codes = [int(c) for c in WaitExit]
    assert len(set(codes)) == len(codes) and 2 not in codes and 1 not in codes


@pytest.mark.parametrize(
    "text,seconds", [("300s", 300), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("0", 0), ("1.5m", 90), ("50ms", 0.05)]
)
def test_parse_duration(text, seconds):
    assert waiter.parse_duration(text) == seconds


# one grammar with the CRD (contract.durations): a number other than 0 needs a unit
@pytest.mark.parametrize("text", ["", "abc", "5d", "-3", "300", "2min", "5 minutes"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        waiter.parse_duration(text)


def parse(argv):
    return waiter.add_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_run_json_and_termination_log(tmp_path):
    term = tmp_path / "termination-log"
    out = io.StringIO()
    m = dbm(phase="Blocked", ready="False", reason="ViolationsFound", message="12 rows violate 2 checks")
    code = waiter.run(
        parse(["shop", "-n", "demo", "--json", "--termination-log", str(term)]), getter=seq_getter(m), out=out
    )
    assert code == 3
    doc = json.loads(out.getvalue())
    assert doc["kind"] == "WaitResult" and doc["outcome"] == "Blocked" and doc["exitCode"] == 3
    assert doc["namespace"] == "demo"
    assert "ViolationsFound" in term.read_text()


def test_run_human(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "from-env")
    out = io.StringIO()
    code = waiter.run(
        parse(["shop", "--timeout", "0", "--interval", "50ms"]), getter=seq_getter(dbm()), out=out
    )
    assert code == 0 and out.getvalue().startswith("Ready: DatabaseMigration shop is Ready")


def test_subparser_registration():
    p = argparse.ArgumentParser(prog="schemagate")
    sub = p.add_subparsers(dest="command")
    waiter.add_parser(sub)
    args = p.parse_args(["wait", "shop", "--revision", "0002", "--timeout", "5m"])
    assert args.func is waiter.run and args.revision == "0002" and args.timeout == 300


def test_kubernetes_getter_maps_api_errors(monkeypatch):
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from schemagate.contract.errors import KubernetesApiError

    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    calls = []

    class FakeApi:
        status = 200

        def get_namespaced_custom_object(self, group, version, namespace, plural, name):
            calls.append((group, version, namespace, plural, name))
            if FakeApi.status != 200:
                raise ApiException(status=FakeApi.status, reason="x")
            return dbm()

    monkeypatch.setattr(client, "CustomObjectsApi", FakeApi)
    get = waiter.kubernetes_getter("shop", "demo")
    assert get()["metadata"]["name"] == "shop"
    assert calls == [("schemagate.dev", "v1alpha1", "demo", "databasemigrations", "shop")]
    FakeApi.status = 404
    assert get() is None
    FakeApi.status = 403
    with pytest.raises(AccessError, match="resourceNames"):
        get()
    FakeApi.status = 500
    with pytest.raises(KubernetesApiError) as e:  # translated once, in schemagate.k8s; the wait loop retries it
        get()
    assert e.value.status == 500
