"""Leader election over a ``coordination.k8s.io/v1`` Lease, so that two operator replicas never act at once and a
standby takes over when the leader dies (the gated application pods then keep being released).

The protocol is client-go's ``leaderelection`` (k8s.io/client-go/tools/leaderelection) on a Lease named
``SCHEMAGATE_LEADER_ELECTION_LEASE`` in the operator's namespace:

- the leader writes ``spec.holderIdentity`` (its pod name), ``leaseDurationSeconds`` and, every ``renew`` seconds,
  ``spec.renewTime``; each write is guarded by the ``resourceVersion`` it read, so two candidates never both win;
- a candidate takes the Lease when it is absent, has no holder, or has not changed for ``leaseDurationSeconds`` *as
  measured on the candidate's own clock* since it first saw that version (no comparison with another node's clock);
- a leader that cannot renew within ``leaseDurationSeconds`` of its last successful renewal, or finds another holder,
  stops at once (``on_lost``: the process exits and Kubernetes restarts it as a candidate); on a clean shutdown it
  clears ``holderIdentity`` so a standby takes over without waiting.

Kopf's own "peering" only pauses operators that see each other; it is not leader election. No Kopf import here;
Kubernetes only through :class:`schemagate.k8s.Kube`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from schemagate import k8s
from schemagate.contract.errors import KubernetesApiError

log = logging.getLogger("schemagate.leader")


@dataclass
class LeaderElector:
    """One candidate for the Lease ``namespace/name``; ``identity`` is its holder id (the pod name).

    ``duration``, ``renew`` and ``retry`` are seconds (client-go's LeaseDuration, RenewDeadline's period and
    RetryPeriod); ``renew`` must be below ``duration``. ``clock`` is a monotonic clock (injected by tests)."""

    kube: k8s.Kube
    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    renew: float = 5.0
    retry: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _seen: tuple[str, float] | None = field(default=None, init=False)  # (resourceVersion, when first seen)
    _rv: str | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.renew < self.duration or self.retry <= 0:
            raise ValueError(f"leader election: need 0 < renew ({self.renew}) < duration ({self.duration}) "
                             f"and retry ({self.retry}) > 0")

    def _spec(self, acquire: bool, transitions: int) -> dict[str, object]:
        now = k8s.micro_time(_dt.datetime.now(_dt.timezone.utc))
        spec: dict[str, object] = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
                                   "renewTime": now}
        if acquire:
            spec.update({"acquireTime": now, "leaseTransitions": transitions})
        return spec

    def try_acquire(self) -> bool:
        """One attempt: True when this candidate holds the Lease afterwards (taken or renewed)."""
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            self._rv = self.kube.write_lease_spec(self.namespace, self.name, self._spec(True, 0), None)
            return self._rv is not None
        spec = lease.get("spec") or {}
        rv = str(lease["metadata"]["resourceVersion"])
        holder = spec.get("holderIdentity")
        if holder == self.identity:
            self._rv = self.kube.write_lease_spec(self.namespace, self.name, self._spec(False, 0), rv)
            return self._rv is not None
        now = self.clock()
        if self._seen is None or self._seen[0] != rv:
            self._seen = (rv, now)  # a change by the holder: its lease runs from now, on our clock
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        if holder and now - self._seen[1] < duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        self._rv = self.kube.write_lease_spec(self.namespace, self.name, self._spec(True, transitions), rv)
        if self._rv is not None:
            log.info("took the leader Lease %s/%s from %s", self.namespace, self.name, holder or "nobody")
        return self._rv is not None

    def acquire(self) -> None:
        """Block until this candidate is the leader (API errors are logged and retried)."""
        log.info("waiting for the leader Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not self._stop.is_set():
            try:
                if self.try_acquire():
                    log.info("leading as %s", self.identity)
                    return
            except KubernetesApiError as e:
                log.warning("leader election: %s", e)
            self._stop.wait(self.retry)
        raise InterruptedError("stopped before leading")

    def renew_loop(self, on_lost: Callable[[str], None]) -> threading.Thread:
        """Renew every ``renew`` seconds in a daemon thread; ``on_lost(reason)`` when the Lease is lost."""

        def loop() -> None:
            last_ok = self.clock()
            while not self._stop.wait(self.renew):
                try:
                    lease = self.kube.read_lease(self.namespace, self.name)
                    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
                    if lease is not None and holder not in (self.identity, None, ""):
                        on_lost(f"the leader Lease is held by {holder}")
                        return
                    if self.try_acquire():
                        last_ok = self.clock()
                        continue
                except KubernetesApiError as e:
                    log.warning("leader election: renewing failed: %s", e)
                if self.clock() - last_ok >= self.duration:
                    on_lost(f"could not renew the leader Lease for {self.duration:g} s")
                    return

        t = threading.Thread(target=loop, name="leader-renew", daemon=True)
        t.start()
        return t

    def release(self) -> None:
        """Stop renewing and clear ``holderIdentity`` if it is still ours (a clean shutdown hands over at once)."""
        self._stop.set()
        try:
            lease = self.kube.read_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                self.kube.write_lease_spec(self.namespace, self.name, {"holderIdentity": None, "renewTime": None},
                                           str(lease["metadata"]["resourceVersion"]))
                log.info("released the leader Lease %s/%s", self.namespace, self.name)
        except KubernetesApiError as e:
            log.warning("leader election: releasing failed: %s", e)


@contextlib.contextmanager
def standby_health(port: int) -> Iterator[None]:
    """Answer ``GET /healthz`` with 200 on ``port`` (0: nothing) while the block runs: a replica waiting for the
    leader Lease is alive and ready; the port is free again afterwards for Kopf's own liveness endpoint."""
    if port <= 0:
        yield
        return

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            ok = self.path.split("?")[0] == "/healthz"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"standby\n" if ok else b"")

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Health)  # noqa: S104 (the pod's probe port)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
