"""Leader election (schemagate.leader) over the in-memory API of tests/unit/fakeapi.py, with an injected clock.

The fake API enforces resourceVersion-guarded writes (409 on a stale version) like the API server, which is what
makes two candidates unable to both win. The e2e test tests/e2e/test_leader.py runs two real operator processes.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from schemagate import leader
from tests.e2e.operator_process import free_port
from tests.unit.fakeapi import FakeKube, Store

NS, NAME = "schemagate-system", "schemagate-leader"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(kube: FakeKube, who: str, clock: Clock, duration: float = 15.0) -> leader.LeaderElector:
    return leader.LeaderElector(kube, NS, NAME, who, duration=duration, renew=duration / 3, retry=1.0, clock=clock)


def holder(kube: FakeKube) -> str | None:
    return kube.store.get("Lease", NS, NAME)["spec"].get("holderIdentity")


def test_the_first_candidate_leads_and_the_second_waits_for_the_lease_to_expire():
    store, clock = Store(), Clock()
    a, b = elector(FakeKube(store), "a", clock), elector(FakeKube(store), "b", clock)
    assert a.try_acquire() and holder(a.kube) == "a"
    assert not b.try_acquire()  # b starts measuring from the version it saw
    clock.t += 10
    assert a.try_acquire()  # a renews: a new resourceVersion
    clock.t += 14
    assert not b.try_acquire()  # b sees the renewal now (24 s after it first looked): its measurement restarts
    clock.t += 14.5
    assert not b.try_acquire()  # 14.5 s < 15 s since b saw that version
    clock.t += 1
    assert b.try_acquire() and holder(b.kube) == "b"  # 15.5 s without a change: expired on b's clock
    lease = store.get("Lease", NS, NAME)
    assert lease["spec"]["leaseTransitions"] == 1 and lease["spec"]["leaseDurationSeconds"] == 15
    assert not a.try_acquire()  # a sees another holder whose lease has just been renewed


def test_a_lost_race_is_not_leadership():
    """Both read the expired Lease; only the first write with that resourceVersion wins (409 for the other)."""
    store, clock = Store(), Clock()
    a, b, c = (elector(FakeKube(store), w, clock) for w in "abc")
    assert a.try_acquire()
    assert not b.try_acquire() and not c.try_acquire()
    clock.t += 20
    rv = store.get("Lease", NS, NAME)["metadata"]["resourceVersion"]
    store.hooks[("patch", "Lease")] = lambda body: store.patch(
        "Lease", NS, NAME, {"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": "c"}})
    assert not b.try_acquire()  # c's write landed first: b's guarded write is a conflict
    assert holder(b.kube) == "c"


def test_a_released_lease_is_taken_at_once():
    store, clock = Store(), Clock()
    a, b = elector(FakeKube(store), "a", clock), elector(FakeKube(store), "b", clock)
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert holder(a.kube) is None
    assert b.try_acquire() and holder(b.kube) == "b"


def test_the_leader_gives_up_when_another_holds_the_lease():
    store = Store()
    a = leader.LeaderElector(FakeKube(store), NS, NAME, "a", duration=0.6, renew=0.2, retry=0.1)
    assert a.try_acquire()
    lost: list[str] = []
    done = threading.Event()
    a.renew_loop(lambda why: (lost.append(why), done.set()))
    time.sleep(0.3)
    assert not lost  # renewing itself
    lease = store.get("Lease", NS, NAME)
    store.patch("Lease", NS, NAME, {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                                    "spec": {"holderIdentity": "b"}})  # fmt: skip
    assert done.wait(5)
    assert lost == ["the leader Lease is held by b"]


def test_bad_timing_is_refused():
    with pytest.raises(ValueError, match="renew"):
        leader.LeaderElector(FakeKube(), NS, NAME, "a", duration=5, renew=5)


def test_a_standby_answers_healthz_and_frees_the_port():
    port = free_port()
    with leader.standby_health(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"standby\n"
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))  # free again for Kopf's liveness endpoint
