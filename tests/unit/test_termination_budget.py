"""Termination messages fit the kubelet's budget: 12 KiB per pod divided equally among its containers, 4096 bytes at
most each (kubernetes.io, "Customizing the termination message"). A precheck pod has 7 containers, so its result
gets 1755 bytes; a message cut by the kubelet no longer parses and the run loses its counts."""

from __future__ import annotations

import json
import secrets

import pytest

from schemagate.contract import names
from schemagate.contract.stepresult import (
    COMPRESSED_PREFIX,
    Outcome,
    StepResult,
    from_log,
    from_termination_message,
    is_cut,
    termination_limit,
    to_termination_message,
    write_termination_log,
)
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


def test_the_message_is_written_within_the_share_and_nothing_is_lost(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result over the share (40 checks, 6 KB of JSON) goes compressed and whole: every check, the zero counts and
    their notes included, reads back."""
    checks = [{"name": f"ck_{i}", "count": i, "definition": "CHECK ((x > 0))", "note": "n" * 80} for i in range(40)]
    r = StepResult(step="precheck", outcome=Outcome.CHECKS_FAILED, reason="ViolationsFound", message="m",
                   data={"checks": checks, "total": sum(range(40))})
    assert len(json.dumps(r.to_dict())) > 4096
    path = tmp_path / "termination-log"
    monkeypatch.setenv(names.ENV_TERMINATION_MESSAGE_LIMIT, str(termination_limit(7)))
    write_termination_log(r, str(path))
    text = path.read_text()
    assert len(text.encode()) <= 1755 and text.startswith(COMPRESSED_PREFIX)
    back = from_termination_message(text)
    assert back is not None and back["data"]["checks"] == checks and not back["truncated"]
    monkeypatch.setenv(names.ENV_TERMINATION_MESSAGE_LIMIT, "not-a-number")
    write_termination_log(r, str(path))
    assert len(path.read_bytes()) <= 4096 and from_termination_message(path.read_text()) is not None


def test_a_small_result_stays_plain_json(tmp_path) -> None:
    """What fits is written as plain JSON, readable in ``kubectl describe pod``."""
    r = StepResult(step="verify", outcome=Outcome.SUCCEEDED, reason="Verified", message="ok")
    path = tmp_path / "termination-log"
    write_termination_log(r, str(path))
    assert json.loads(path.read_text())["reason"] == "Verified"
    assert from_termination_message(path.read_text())["reason"] == "Verified"


def test_what_does_not_fit_even_compressed_keeps_the_largest_counts() -> None:
    """Incompressible details (random notes) over the share: the summary drops them and the zero counts first and
    keeps the largest counts; ``truncated`` and ``data.omitted`` say so."""
    checks = [{"name": f"ck_{i}", "count": i, "definition": "CHECK ((x > 0))", "note": secrets.token_hex(60)}
              for i in range(200)]
    r = StepResult(step="precheck", outcome=Outcome.CHECKS_FAILED, reason="ViolationsFound", message="m",
                   data={"checks": checks, "total": sum(range(200))})
    msg = to_termination_message(r, limit=termination_limit(7))
    assert len(msg.encode()) <= 1755
    back = from_termination_message(msg)
    assert back is not None and back["truncated"] is True and back["data"]["omitted"]["zeroChecks"] == 1
    kept = [c["count"] for c in back["data"]["checks"]]
    assert kept[0] == 199 and kept == sorted(kept, reverse=True) and "note" not in back["data"]["checks"][0]


@pytest.mark.parametrize("message", ["", "Traceback (most recent call last):", COMPRESSED_PREFIX + "!!!",
                                     COMPRESSED_PREFIX + "eJzLSM3JyQcABiwCFQ==", '{"kind": "Other"}', '{"kind": "Ste'])
def test_what_is_not_a_step_result_reads_as_none(message: str) -> None:
    """A crash's log tail, a cut message, broken base64 or zlib, another document: None, never an exception."""
    assert from_termination_message(message) is None


def test_the_whole_result_is_the_matching_line_of_the_log() -> None:
    """``from_log``: the last StepResult line that is the same result as the summary (step, startedAt, outcome,
    reason); stderr lines, a user's print and another run's result are skipped."""
    r = StepResult(step="precheck", outcome=Outcome.CHECKS_FAILED, reason="ViolationsFound", message="m",
                   data={"checks": [{"name": f"ck_{i}", "count": i} for i in range(300)]})
    summary = from_termination_message(to_termination_message(r, limit=600))
    assert summary is not None and summary["truncated"] is True
    other = StepResult(step="precheck", outcome=Outcome.SUCCEEDED, reason="PrecheckPassed", message="earlier")
    log = "\n".join(["INFO  [alembic.runtime.migration] Running upgrade 0001 -> 0002", other.to_json(),
                     '{"kind": "StepResult", "step": "precheck"}', r.to_json(), "schemagate: done", ""])
    whole = from_log(log, summary)
    assert whole is not None and len(whole["data"]["checks"]) == 300 and not whole["truncated"]
    assert from_log(other.to_json() + "\n" + "{broken", summary) is None
    assert from_log("", summary) is None


def test_a_message_the_kubelet_cut_is_known_as_cut_and_its_result_is_the_last_line_of_the_log() -> None:
    """A writer that did not know its share (``is_cut``): a StepResult begun, plain or compressed, that no longer
    parses; the log's last StepResult line is then the result (one run of the container's log)."""
    r = StepResult(step="verify", outcome=Outcome.SUCCEEDED, reason="Verified", message="ok",
                   data={"checks": [{"name": f"ck_{i}", "count": 0, "note": "n" * 100} for i in range(80)]})
    plain = to_termination_message(r, limit=4096 * 4)
    packed = to_termination_message(r, limit=4096)
    assert plain.startswith("{") and packed.startswith(COMPRESSED_PREFIX)
    assert is_cut(plain[:1755]) and is_cut(packed[: len(packed) // 2])
    assert not is_cut(plain) and not is_cut(packed) and not is_cut("Traceback (most recent call last):")
    assert not is_cut('{"kind": "Other"') and not is_cut("")
    whole = from_log("starting\n" + r.to_json() + "\n", None)
    assert whole is not None and len(whole["data"]["checks"]) == 80
    assert from_log("no result here\n", None) is None
