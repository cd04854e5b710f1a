"""Operator benchmark on the Kubernetes test bed.

Measures the operator, not the steps: both images map to stub ``schemagate`` / ``python`` commands that write a
successful StepResult to the termination log at once. Reports

1. the median (and p90) time from one step Job finishing (its watch event) to the next Job of the same resource
   being created (goal <= 1 s), over sequential migrations;
2. 100 DatabaseMigrations applied at once: all reach Succeeded, wall time, the operator's peak RSS
   (goal <= 150 MB), and Kubernetes API writes per migration (from the operator's own counter).

Run: ``.venv/bin/python bench/operator.py [--sequential 5] [--parallel 100]``.
"""

from __future__ import annotations

import os as _os
import sys as _sys

# Run as a script, this file's directory is sys.path[0] and the file would shadow the standard "operator" module.
_HERE = _os.path.dirname(_os.path.abspath(__file__))
_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNNER_IMAGE = "schemagate.bench/schemagate:bench"
APP_IMAGE = "schemagate.bench/app:bench"
LEASE_NS = "schemagate-system"

STUB = r'''#!/usr/bin/env python3
import json, os, sys, datetime
args = sys.argv[1:]
if args[:2] == ["-m", "schemagate.runner.inject"]:
    args = args[2:]
if args and args[0] == "install-runner":
    sys.exit(0)
cmd = args[0] if args else ""
phase = args[args.index("--phase") + 1] if "--phase" in args else ""
step = {"backup": "backup", "precheck": "precheck", "shadow-upgrade": "precheck", "migrate": "migrate",
        "verify": "verify"}.get(cmd, cmd)
data = {}
if step == "backup":
    data = {"path": "/backups/bench.dump", "sizeBytes": 1, "sha256": "00"}
elif step == "precheck":
    data = {"currentRevision": "0001", "targetRevision": "0002", "pending": ["0002"], "total": 0, "checks": []}
elif step == "migrate":
    data = {"fromRevision": "0001", "toRevision": "0002", "applied": ["0002"]}
elif step == "verify":
    data = {"currentRevision": "0002", "targetRevision": "0002"}
t = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
doc = {"apiVersion": "schemagate.dev/v1alpha1", "kind": "StepResult", "schemaVersion": 1, "step": step,
       "outcome": "Succeeded", "reason": "Bench", "message": "stub", "startedAt": t, "finishedAt": t,
       "durationSeconds": 0.0, "data": data, "truncated": False}
path = os.environ.get("SCHEMAGATE_TERMINATION_LOG")
if path and phase != "prepare":
    open(path, "w").write(json.dumps(doc))
print(json.dumps(doc))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_writes(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("schemagate_api_writes_total{"):
            kind = line.split('kind="')[1].split('"')[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


class JobWatch(threading.Thread):
    """Records, per Job, when it was first seen and when it was first seen finished."""

    def __init__(self, api: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.ns = api, namespace
        self.added: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.owner: dict[str, str] = {}
        self.stop_flag = False

    def run(self) -> None:
        from kubernetes import client, watch

        batch = client.BatchV1Api(self.api)
        while not self.stop_flag:
            w = watch.Watch()
            try:
                for ev in w.stream(batch.list_namespaced_job, self.ns, timeout_seconds=30):
                    now = time.monotonic()
                    j = ev["object"]
                    name = j.metadata.name
                    self.added.setdefault(name, now)
                    self.owner[name] = (j.metadata.labels or {}).get("schemagate.dev/migration", "")
                    for c in (j.status.conditions or []) if j.status else []:
                        if c.status == "True" and c.type in ("Complete", "Failed"):
                            self.finished.setdefault(name, now)
                    if self.stop_flag:
                        break
            except Exception:  # noqa: BLE001 - reconnect
                time.sleep(0.2)

    def handoffs(self) -> list[float]:
        """Next Job created - previous Job finished, per resource, in step order."""
        order = {"backup": 0, "precheck": 1, "migrate": 2, "verify": 3}
        by_owner: dict[str, list[str]] = {}
        for name, owner in self.owner.items():
            by_owner.setdefault(owner, []).append(name)
        out = []
        for names in by_owner.values():
            names.sort(key=lambda n: order.get(n.split("-")[-2], 9))
            for a, b in zip(names, names[1:], strict=False):
                if a in self.finished and b in self.added:
                    out.append(self.added[b] - self.finished[a])
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequential", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()

    from tests.testbed.cluster import Cluster

    cluster = Cluster(build=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="schemagate-bench-"))
    # Not under /tmp: the step pods mount a volume at /tmp and the node stand-in would rewrite the path.
    stub_dir = Path.home() / ".cache" / "schemagate" / "bench-stubs"
    stub_dir.mkdir(parents=True, exist_ok=True)
    for n in ("schemagate", "python"):
        p = stub_dir / n
        p.write_text(STUB.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
        p.chmod(0o755)
    cluster.node.map_image(RUNNER_IMAGE, None, {"PATH": str(stub_dir)})  # env PATH goes first
    cluster.node.map_image(APP_IMAGE, None, {"PATH": str(stub_dir)})
    env = cluster.env(dict(os.environ))
    kubectl = [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}"]
    op: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {}
    try:
        subprocess.run([*kubectl, "apply", "-f", str(ROOT / "manifests/crd.yaml")], check=True, env=env,
                       capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established",
                        "crd/databasemigrations.schemagate.dev", "--timeout=60s"], check=True, env=env,
                       capture_output=True)
        for ns in (LEASE_NS, "bench-seq", "bench-par"):
            subprocess.run([*kubectl, "create", "namespace", ns], env=env, capture_output=True)
        api = cluster.api_client()
        from kubernetes import client

        core = client.CoreV1Api(api)
        for ns in ("bench-seq", "bench-par"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    core.read_namespaced_service_account("default", ns)
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.2)
        metrics_port = free_port()
        op_env = {**env, "SCHEMAGATE_RUNNER_IMAGE": RUNNER_IMAGE, "SCHEMAGATE_LEASE_NAMESPACE": LEASE_NS,
                  "SCHEMAGATE_METRICS_PORT": str(metrics_port)}
        log = open(tmp / "operator.log", "wb")  # noqa: SIM115
        op = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "-m",
                               "schemagate.handlers", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
                              env=op_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        time.sleep(3)
        custom = client.CustomObjectsApi(api)

        def make(ns: str, i: int, db: str) -> None:
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"db-{i}"},
                      "stringData": {"url": f"postgresql://u:p@db-{db}.example:5432/app"}}
            core.create_namespaced_secret(ns, secret)
            body = {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration",
                    "metadata": {"name": f"m-{i}"},
                    "spec": {"database": {"urlFrom": {"secretKeyRef": {"name": f"db-{i}", "key": "url"}}},
                             "migrations": {"image": APP_IMAGE},
                             "backup": {"enabled": True, "volume": {"emptyDir": {}}}}}
            custom.create_namespaced_custom_object("schemagate.dev", "v1alpha1", ns, "databasemigrations", body)

        def phases(ns: str) -> dict[str, str]:
            items = custom.list_namespaced_custom_object("schemagate.dev", "v1alpha1", ns,
                                                         "databasemigrations")["items"]
            return {o["metadata"]["name"]: (o.get("status") or {}).get("phase", "") for o in items}

        # 1. sequential: hand-off latency
        watch_seq = JobWatch(api, "bench-seq")
        watch_seq.start()
        for i in range(args.sequential):
            make("bench-seq", i, f"seq{i}")
            deadline = time.monotonic() + 120
            while phases("bench-seq").get(f"m-{i}") != "Succeeded":
                if time.monotonic() > deadline or phases("bench-seq").get(f"m-{i}") in ("Failed", "Blocked"):
                    raise SystemExit(f"m-{i} did not succeed: {phases('bench-seq')}")
                time.sleep(0.1)
        time.sleep(0.5)
        hand = watch_seq.handoffs()
        watch_seq.stop_flag = True
        writes_before = api_writes(metrics_port)

        # 2. parallel: 100 at once
        watch_par = JobWatch(api, "bench-par")
        watch_par.start()
        t0 = time.monotonic()
        rss_samples = []
        for i in range(args.parallel):
            make("bench-par", i, f"par{i}")
        done = 0
        while time.monotonic() - t0 < args.timeout:
            ph = phases("bench-par")
            done = sum(1 for p in ph.values() if p == "Succeeded")
            rss_samples.append(rss_mb(op.pid))
            if done == args.parallel:
                break
            time.sleep(1)
        wall = time.monotonic() - t0
        time.sleep(1)
        writes_after = api_writes(metrics_port)
        hand_par = watch_par.handoffs()
        watch_par.stop_flag = True
        peak = peak_rss_mb(op.pid)
        per_kind = {k: (writes_after.get(k, 0) - writes_before.get(k, 0)) / max(1, args.parallel)
                    for k in writes_after}
        results = {
            "handoff_median_s": statistics.median(hand) if hand else None,
            "handoff_p90_s": (sorted(hand)[int(0.9 * (len(hand) - 1))] if hand else None),
            "handoffs_measured": len(hand),
            "parallel": args.parallel,
            "parallel_succeeded": done,
            "parallel_wall_s": round(wall, 1),
            "parallel_handoff_median_s": statistics.median(hand_par) if hand_par else None,
            "operator_peak_rss_mb": round(peak, 1),
            "operator_rss_end_mb": round(rss_mb(op.pid), 1),
            "api_writes_per_migration": round(sum(per_kind.values()), 1),
            "api_writes_per_migration_by_kind": {k: round(v, 2) for k, v in sorted(per_kind.items())},
        }
        goals = {
            "handoff median <= 1 s": results["handoff_median_s"] is not None and results["handoff_median_s"] <= 1.0,
            f"all {args.parallel} succeeded": done == args.parallel,
            "operator RSS <= 150 MB": peak <= 150,
        }
        print(json.dumps(results, indent=2))
        for g, ok in goals.items():
            print(f"{'MET    ' if ok else 'NOT MET'}  {g}")
        return 0 if all(goals.values()) else 1
    finally:
        if op is not None and op.poll() is None:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(10)
            except subprocess.TimeoutExpired:
                op.kill()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
