"""The precheck result with many checks still fits the 4 KiB termination message, keeping the worst checks."""

from __future__ import annotations

import pytest

from schemagate.contract.stepresult import (
    TERMINATION_MESSAGE_LIMIT,
    Outcome,
    StepResult,
    from_termination_message,
    to_termination_message,
)
from schemagate.contract.target import Target
from schemagate.runner import precheck
from tests.precheck.helpers import execute, project, upgrade

pytestmark = pytest.mark.postgres


def test_many_checks_fit_in_the_termination_message(fresh_db: str) -> None:
    upgrade(fresh_db, "naive", "0001")  # pending 0002 adds two CHECKs and an FK
    execute(fresh_db, "INSERT INTO orders SELECT g, g - 100, 'x' FROM generate_series(1, 300) g")
    user_checks = [
        {"name": f"orders below {i:03d} with a rather long descriptive name", "table": "public.orders",
         "sql": f"SELECT count(*) FROM orders WHERE amount < {i} - 200"}
        for i in range(150)
    ]
    r = precheck.precheck(Target(project("naive"), "head", fresh_db, "DATABASE_URL"), user_checks=user_checks)
    assert r.outcome is Outcome.CHECKS_FAILED
    assert len(r.data["checks"]) == 153
    full_total = r.data["total"]
    assert full_total == sum(max(0, i - 101) for i in range(150)) + 100  # + ck_orders_amount (amount <= 0)
    msg = to_termination_message(r)
    assert len(msg.encode()) <= TERMINATION_MESSAGE_LIMIT
    d = from_termination_message(msg)
    assert d is not None
    back = StepResult.from_dict(d)
    assert back.outcome is Outcome.CHECKS_FAILED and back.reason == "ViolationsFound"
    assert d["truncated"] is True and d["data"]["total"] == full_total
    kept = d["data"]["checks"]
    assert kept and all(c["count"] > 0 for c in kept)
    counts = [c["count"] for c in kept]
    assert counts == sorted(counts, reverse=True) and counts[0] == 100  # the worst check survives
    assert kept[0]["name"] == "ck_orders_amount"
    assert d["data"]["omitted"]["zeroChecks"] == 104
