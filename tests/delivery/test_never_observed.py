"""One new DatabaseMigration as a real API server returns it (the CRD's default ``status: {observedGeneration: -1}``)
read by every consumer: kstatus (Helm 4 --wait, Flux), Argo CD's health script, the rollout gate,
``schemagate wait`` and the operator's ``decide()``. All say "not observed yet"; only the operator moves it on."""

from __future__ import annotations

import copy

import yaml

from schemagate.core.decide import Observed, decide
from schemagate.core.gate import GateReason, migration_state
from schemagate.core.model import Migration
from schemagate.waiter import WaitExit, wait_for
from tests.delivery.test_argocd_health import ROOT, run_lupa
from tests.unit.helpers import T0, body


def new_object(generation: int = 1) -> dict:
    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    default = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["default"]
    obj = body(generation=generation)
    obj["status"] = copy.deepcopy(default)
    return obj


def test_every_consumer_waits_for_the_operator(kstatus):
    obj = new_object()
    assert obj["status"] == {"observedGeneration": -1}

    [ks] = kstatus.run_json(stdin=[obj])
    assert ks["status"] == "InProgress", ks

    hs = run_lupa(obj)
    assert hs["status"] == "Progressing" and "not observed yet" in hs["message"], hs

    ready, reason, message = migration_state(obj)
    assert not ready and reason is GateReason.STALE_STATUS and "not been observed" in message

    clock = iter(range(100))
    res = wait_for(lambda: obj, name="shop", namespace="team", timeout=3, interval=1,
                   clock=lambda: float(next(clock)), sleep=lambda _s: None)
    assert res.exit_code is WaitExit.TIMEOUT and "not been observed" in res.message


def test_the_operator_starts_a_run_for_the_current_generation():
    obj = new_object(generation=3)
    action = decide(Migration.from_body(obj), obj["status"], Observed(now=T0))
    st = action.status
    assert st["observedGeneration"] == 3 and st["run"]["generation"] == 3
    assert st["phase"] == "Pending" or action.create is not None
    assert [e.reason for e in action.events][:1] == ["RunStarted"]
