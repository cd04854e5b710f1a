"""The operator as a subprocess for the end-to-end tests: started, killed (SIGKILL) and started again.

Two ways to run it:
- ``Operator(kube, log_dir)``: ``kopf run --all-namespaces -m schemagate.handlers`` with the test bed's admin
  kubeconfig (tests of behaviour: phases, restarts, gate, Helm);
- ``Operator(kube, log_dir, command=[...], kubeconfig=token_kubeconfig, pod_namespace=NS)``: ``schemagate operator
  ...`` authenticated only as a ServiceAccount (tests of the least-rights RBAC), with no namespace chosen through
  the environment.
Retries and polls are shortened so that the tests run in seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
RUNNER_IMAGE = "schemagate.test/schemagate:e2e"
LEASE_NS = "schemagate-system"
FAST = {
    "SCHEMAGATE_RETRY_BASE_SECONDS": "1",
    "SCHEMAGATE_RETRY_CAP_SECONDS": "4",
    "SCHEMAGATE_SECRET_POLL_SECONDS": "2",
    "SCHEMAGATE_LOCK_POLL_SECONDS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    def __init__(self, kube: Any, log_dir: Path, *, extra_env: dict[str, str] | None = None,
                 command: list[str] | None = None, kubeconfig: Path | None = None,
                 pod_namespace: str | None = None) -> None:
        self.kube, self.log_dir = kube, Path(log_dir)
        self.extra_env = dict(extra_env or {})
        self.command, self.kubeconfig, self.pod_namespace = command, kubeconfig, pod_namespace
        self.metrics_port = free_port()  # stable across restarts, so a test can read the counters
        self.leader_lease = f"schemagate-leader-{os.getpid()}-{id(self):x}"  # unless extra_env names one
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.starts = 0
        self.killed = False  # stop() had to SIGKILL: the process did not end on SIGTERM

    def _env(self) -> dict[str, str]:
        env = self.kube.env(dict(os.environ))
        env.update({"SCHEMAGATE_RUNNER_IMAGE": RUNNER_IMAGE, **FAST})
        if self.kubeconfig is None:
            env.update({"SCHEMAGATE_LEASE_NAMESPACE": LEASE_NS, "SCHEMAGATE_METRICS_PORT": str(self.metrics_port)})
        else:
            for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "SCHEMAGATE_LEASE_NAMESPACE",
                      "SCHEMAGATE_NAMESPACES", "SCHEMAGATE_ALL_NAMESPACES"):
                env.pop(k, None)  # no in-cluster config, no namespace choice but the arguments
            env["KUBECONFIG"] = str(self.kubeconfig)
        if self.pod_namespace:
            env["POD_NAMESPACE"] = self.pod_namespace  # as the Deployment's fieldRef sets it: the Lease namespace
        # `schemagate operator` elects a leader: operators of different tests must not wait for each other's Lease
        env["SCHEMAGATE_LEADER_ELECTION_LEASE"] = self.leader_lease
        env.update(self.extra_env)
        return env

    def start(self) -> Operator:
        self.starts += 1
        if self.command is None:
            cmd = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "-m",
                   "schemagate.handlers", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
        else:
            exe = Path(sys.executable).parent / "schemagate"
            assert exe.exists(), f"{exe}: the schemagate command is not installed in the virtualenv"
            cmd = [str(exe), *self.command]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=self._env(), stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT), start_new_session=True)
        return self

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited ({self.proc.returncode}):\n{self.logs()[-4000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._closed()

    def stop(self, grace: float = 15) -> None:
        """SIGTERM, as the kubelet stops a pod; SIGKILL after ``grace`` seconds (``killed`` records it)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(10)
        self._closed()

    def _closed(self) -> None:
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


def wait_established(kube: Any, *names: str, timeout: float = 120) -> None:
    """Wait until each CustomResourceDefinition has ``Established=True`` (``kubectl wait`` errors out instead of
    waiting while a just re-applied CRD has no ``status.conditions`` yet)."""

    def established() -> bool:
        for name in names:
            p = kube.kubectl("get", f"crd/{name}", "-o",
                             'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False)
            if p.returncode != 0 or p.stdout.strip() != "True":
                return False
        return True

    kube.wait_for(established, timeout=timeout, interval=0.5, message=f"CRDs {', '.join(names)} Established")
