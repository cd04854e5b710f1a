"""Termination messages fit the kubelet's budget: 12 KiB per pod divided equally among its containers, 4096 bytes at
most each (kubernetes.io, "Customizing the termination message"). A precheck pod has 7 containers, so its result
gets 1755 bytes; a message cut by the kubelet no longer parses and the run loses its counts."""

from __future__ import annotations

import json

import pytest

from schemagate.contract import names
from schemagate.contract.stepresult import Outcome, StepResult, termination_limit, write_termination_log
from schemagate.core import jobs as J
from tests.unit.helpers import mig

SETTINGS = J.JobSettings(runner_image="ghcr.io/schemagate/operator:test")


@pytest.mark.parametrize("step", ["backup", "precheck", "migrate", "verify"])
def test_every_container_that_reports_knows_its_share_of_the_pod(step: str) -> None:
    job = J.build_job(mig(), step, f"shop-1-{step}-1", 1, SETTINGS)
    spec = job["spec"]["template"]["spec"]
    every = [*spec.get("initContainers", []), *spec["containers"]]
    share = min(4096, 12 * 1024 // len(every))
    reporting = [c for c in every if any(e["name"] == names.ENV_TERMINATION_LOG for e in c.get("env") or [])]
    assert reporting, every
    for c in reporting:
        limits = [e["value"] for e in c["env"] if e["name"] == names.ENV_TERMINATION_MESSAGE_LIMIT]
        assert limits == [str(share)], (c["name"], limits)
    if step == "precheck":
        assert len(every) >= 6 and share < 2100  # the pod's containers share 12 KiB


def test_the_message_is_written_within_the_share(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = [{"name": f"ck_{i}", "count": i, "definition": "CHECK ((x > 0))", "note": "n" * 80} for i in range(40)]
    r = StepResult(step="precheck", outcome=Outcome.CHECKS_FAILED, reason="ViolationsFound", message="m",
                   data={"checks": checks, "total": sum(range(40))})
    path = tmp_path / "termination-log"
    monkeypatch.setenv(names.ENV_TERMINATION_MESSAGE_LIMIT, str(termination_limit(7)))
    write_termination_log(r, str(path))
    text = path.read_bytes()
    assert len(text) <= 1755 and json.loads(text)["reason"] == "ViolationsFound"
    assert json.loads(text)["data"]["checks"][0]["count"] == 39  # the largest counts are kept
    monkeypatch.setenv(names.ENV_TERMINATION_MESSAGE_LIMIT, "not-a-number")
    write_termination_log(r, str(path))
    assert len(path.read_bytes()) <= 4096
