"""A real node for the test bed: containerd, runc and a CNI bridge from Debian packages, the upstream kubelet and
kube-scheduler (built by build.sh from the same Kubernetes module as the control plane), on this machine.

Pods run in real containers from images imported into containerd (built by ``images.sh``; nothing is ever
pulled), with real cgroups (memory limits, OOM kills), probes, init containers, projected service-account tokens
and termination messages written by the kubelet.

The network stays on this machine (every packet):

- pods sit on a private bridge (``BRIDGE``, ``POD_SUBNET``) whose address is the node IP; the bridge plugin runs
  with ``isGateway: false`` and ``ipMasq: false``, so it neither turns on IP forwarding nor masquerades;
- a pod has two routes only: its own subnet (on-link) and the Service CIDR via the bridge address. There is no
  default route, so an outside address fails at once with ENETUNREACH (no packet is sent);
- on the host, ``10.0.0.1:443`` (the ``kubernetes`` Service) is DNAT-ed to the API server on 127.0.0.1, every
  other TCP port of the bridge address to the same port on 127.0.0.1 (``route_localnet`` on the bridge), so pods
  reach the API server and the embedded PostgreSQL that listen on loopback; every other Service address is an
  ``unreachable`` route; the FORWARD chain drops whatever would cross the bridge to another interface;
- pods resolve names with a ``resolv.conf`` naming 127.0.0.1 (their own loopback: nothing answers);
- containerd's image pulls go to a proxy at 127.0.0.1:9 (nothing listens), so even a pull by mistake never
  leaves the machine;
- :func:`confinement_problems` checks all of this before the first pod starts; the node refuses to start when
  anything would let pod traffic out.

Only one real node runs on a machine at a time (a lock file; a second test session waits for it): the bridge,
the iptables rules and the Service route are machine-wide. Everything is undone by :meth:`RealNode.stop` and,
after a crash, by the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import certs

log = logging.getLogger("schemagate.testbed.realnode")

NODE_NAME = "schemagate-node"
BRIDGE = "sgnode0"
POD_SUBNET = "10.244.251.0/24"
NODE_IP = "10.244.251.1"  # the bridge's address: the node's InternalIP and the pods' way to this machine
SERVICE_CIDR = "10.0.0.0/24"  # the API server's --service-cluster-ip-range
KUBERNETES_SERVICE_IP = "10.0.0.1"
RULE_COMMENT = "schemagate-testbed-node"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
PAUSE_IMAGE = "schemagate.test/pause"
NO_PROXY_ANYWHERE = "http://127.0.0.1:9"  # containerd's pulls: a local port where nothing listens
LOCK_WAIT = 900.0

# executable -> Debian package that provides it
PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
    "conntrack": "conntrack",
}


class NodeError(RuntimeError):
    """The real node cannot start (a missing part, an unsafe network, a component that failed)."""


# ---------------------------------------------------------------------------------------------------------------
# pure checks (unit-tested without root)


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """The CNI network of the node: a bridge without gateway role or masquerading, host-local addresses, and a
    route to the Service CIDR only (no default route)."""
    return {
        "cniVersion": "1.0.0",
        "name": "schemagate-node",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": False,
            "isDefaultGateway": False,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP,
                             "rangeStart": str(ipaddress.ip_network(POD_SUBNET)[10])}]],
                "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
                "dataDir": str(ipam_dir),
            },
        }],
    }


def confinement_problems(conflist: dict[str, Any], *, service_route: str, bridge_routes: str,
                         forward_rules: str, nat_rules: str) -> list[str]:
    """Everything that would let a pod's packet leave this machine, as sentences (empty: confined).

    ``service_route``: ``ip route show SERVICE_CIDR`` (must be an ``unreachable`` route); ``bridge_routes``:
    ``ip route show dev BRIDGE`` (only the pod subnet); ``forward_rules``: ``iptables -S FORWARD`` (both DROP
    rules of the bridge, before any ACCEPT); ``nat_rules``: ``iptables -t nat -S`` (no MASQUERADE/SNAT of the pod
    subnet). Sources: the CNI bridge plugin's ``isGateway``/``isDefaultGateway``/``ipMasq`` options and the
    host-local IPAM ``routes`` (containernetworking/plugins docs).
    """
    problems: list[str] = []
    pod_net = ipaddress.ip_network(POD_SUBNET)
    svc_net = ipaddress.ip_network(SERVICE_CIDR)
    plugins = conflist.get("plugins", [])
    for p in plugins:
        if p.get("ipMasq"):
            problems.append(f"CNI plugin {p.get('type')} masquerades pod traffic (ipMasq: true)")
        if p.get("isGateway") or p.get("isDefaultGateway"):
            problems.append(f"CNI plugin {p.get('type')} makes the bridge a gateway (turns on IP forwarding and "
                            f"a default route in pods)")
        for r in (p.get("ipam") or {}).get("routes") or []:
            dst = ipaddress.ip_network(r.get("dst", "0.0.0.0/0"), strict=False)
            if not (dst.subnet_of(svc_net) or dst.subnet_of(pod_net)):  # type: ignore[arg-type]
                problems.append(f"pods get a route to {dst}, outside the Service CIDR {SERVICE_CIDR}")
    if not plugins or plugins[0].get("type") != "bridge" or plugins[0].get("bridge") != BRIDGE:
        problems.append(f"the first CNI plugin is not the bridge {BRIDGE}")
    if not re.search(rf"^unreachable {re.escape(SERVICE_CIDR)}\b", service_route, re.M):
        problems.append(f"the Service CIDR {SERVICE_CIDR} is not an unreachable route on this machine "
                        f"(it would follow the default route out): {service_route.strip() or 'no route'}")
    for line in bridge_routes.splitlines():
        dst = line.split()[0] if line.strip() else ""
        if dst and dst != POD_SUBNET:
            problems.append(f"route via the pod bridge to {dst}: {line.strip()}")
    fwd = [ln for ln in forward_rules.splitlines() if ln.startswith("-A FORWARD")]
    needed = {f"-i {BRIDGE} ! -o {BRIDGE}", f"! -i {BRIDGE} -o {BRIDGE}"}
    for want in needed:
        idx = next((i for i, ln in enumerate(fwd) if want in ln and ln.rstrip().endswith("-j DROP")), None)
        if idx is None:
            problems.append(f"no FORWARD rule drops traffic {want} (pod traffic could be routed out)")
        elif any("-j ACCEPT" in ln and (BRIDGE in ln or " -i " not in ln) for ln in fwd[:idx]):
            problems.append(f"a FORWARD ACCEPT rule comes before the DROP of {want}")
    for ln in nat_rules.splitlines():
        if ("MASQUERADE" in ln or "-j SNAT" in ln) and (POD_SUBNET in ln or BRIDGE in ln):
            problems.append(f"pod traffic is source-NATed: {ln.strip()}")
    return problems


def kubelet_config(*, port: int, healthz_port: int, client_ca: Path, serving: certs.Pair, resolv_conf: Path,
                   pod_logs: Path) -> dict[str, Any]:
    """KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of the node on this machine kind: cgroup v1 hosts
    (``failCgroupV1: false``), cgroupfs (containerd 1.6 has no CRI RuntimeConfig), no swap check, no read-only
    port, x509 client authentication against the test-bed CA, image GC off (images are imported, never pulled)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"x509": {"clientCAFile": str(client_ca)}, "webhook": {"enabled": False},
                           "anonymous": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "resolvConf": str(resolv_conf),
        "podLogsDirectory": str(pod_logs),
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 40,
        "syncFrequency": "10s",
        "fileCheckFrequency": "60s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
        "protectKernelDefaults": False,
        "enableDebuggingHandlers": True,
    }


def pause_oci_archive(pause_binary: Path, out: Path, name: str) -> None:
    """Write a one-layer OCI image archive (``ctr images import`` input) holding ``/pause`` as its entrypoint.

    The layer is built deterministically (fixed mtimes, root owner) so the same binary gives the same digest."""
    layer_raw = io.BytesIO()
    with tarfile.open(fileobj=layer_raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        data = pause_binary.read_bytes()
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        t.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(layer_raw.getvalue()).hexdigest()
    layer = gzip.compress(layer_raw.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()

    def desc(media: str, blob: bytes) -> dict[str, Any]:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }, sort_keys=True).encode()
    mdesc = desc("application/vnd.oci.image.manifest.v1+json", manifest)
    mdesc["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [mdesc]}).encode()
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as t:
        def add(path: str, blob: bytes) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(blob), 0
            t.addfile(info, io.BytesIO(blob))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for blob in (config, layer, manifest):
            add("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
    tmp.replace(out)


# ---------------------------------------------------------------------------------------------------------------
# host helpers


def _run(argv: Sequence[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def missing_packages() -> list[str]:
    """Debian packages whose executables are missing (plus the CNI plugins)."""
    need = {pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None
            and not Path("/usr/sbin", exe).exists()}
    if cni_bin_dir() is None:
        need.add("containernetworking-plugins")
    return sorted(need)


def cni_bin_dir() -> Path | None:
    for d in CNI_BIN_DIRS:
        if all(Path(d, p).is_file() for p in ("bridge", "host-local", "loopback")):
            return Path(d)
    return None


def ensure_packages() -> None:
    """Install containerd, runc, the CNI plugins, iptables, iproute2 and conntrack from Debian when missing
    (as root with apt-get); otherwise raise :class:`NodeError` naming them."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise NodeError(f"the real node needs the Debian packages {' '.join(missing)}: "
                        f"apt-get install {' '.join(missing)} (as root)")
    log.info("installing %s", missing)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if _run(argv, check=False, timeout=600, env=env).returncode != 0:
        _run(["apt-get", "update", "-q"], timeout=600, env=env)
        _run(argv, timeout=600, env=env)
    still = missing_packages()
    if still:
        raise NodeError(f"installed {missing} but still missing: {still}")


def preflight() -> None:
    """What the kernel must offer: root, the memory/cpu/pids cgroup controllers, overlayfs, network namespaces."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (containerd, network namespaces, cgroups, iptables)")
    for ctl in ("memory", "cpu", "pids"):
        if not any(Path(p).exists() for p in (f"/sys/fs/cgroup/{ctl}", "/sys/fs/cgroup/cgroup.controllers")):
            problems.append(f"the cgroup controller {ctl} is not mounted")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("overlayfs is not available (containerd's overlayfs snapshotter)")
    if problems:
        raise NodeError("; ".join(problems))


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in _children(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def _kill_tree(pid: int) -> None:
    for p in [*_descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    """Unmount everything mounted below ``root`` (deepest first; lazily)."""
    prefix = str(root.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix):
            mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def cache_dir() -> Path:
    """containerd's content store and image-import marks (``SCHEMAGATE_NODE_CACHE``, e.g. an empty directory to
    measure a cold start)."""
    return Path(os.environ.get("SCHEMAGATE_NODE_CACHE") or DEFAULT_CACHE)


DEFAULT_CACHE = Path.home() / ".cache" / "schemagate" / "node"
# one real node per machine whatever the cache directory: the bridge, rules and route are machine-wide
MACHINE_LOCK = DEFAULT_CACHE / "node.lock"


# ---------------------------------------------------------------------------------------------------------------
# the node


class RealNode:
    """containerd + kubelet + kube-scheduler for one :class:`~tests.testbed.cluster.Cluster` (see module doc).

    ``images``: ``(OCI archive, [image names])`` to import into containerd's ``k8s.io`` namespace before the kubelet
    starts (the first name is the archive's own; the others are tags added to it).
    """

    def __init__(self, cluster: Any, images: Sequence[tuple[Path, Sequence[str]]] = ()):
        self.cluster = cluster
        self.images = list(images)
        self.dir = cluster.run_dir / "node"
        self.cache = cache_dir()
        self.sock = self.dir / "containerd" / "containerd.sock"
        self.components: list[Any] = []
        self._lock_file: Any = None
        self._host_changes: list[list[str]] = []  # commands that undo what start() changed on the host
        self._netns_before: set[str] = set()
        self.kubelet_port = 0
        self.timings: dict[str, float] = {}

    # -- start ----------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> RealNode:
        t0 = time.monotonic()
        deadline = t0 + timeout
        preflight()
        ensure_packages()
        self._lock()
        try:
            self._cleanup_leftovers()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._netns_before = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()
            self._network()
            self._start_containerd(deadline)
            t1 = time.monotonic()
            self._import_images()
            self.timings["import"] = time.monotonic() - t1
            self._start_kubelet_and_scheduler(deadline)
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        log.info("real node up in %.1fs (%s)", self.timings["start"], self.timings)
        return self

    def _lock(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        MACHINE_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(MACHINE_LOCK, "w")  # noqa: SIM115 (held for the node's lifetime)
        give_up = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise NodeError(f"another test session held {MACHINE_LOCK} for {LOCK_WAIT:.0f}s "
                                    f"(one real node per machine)") from None
                log.warning("another real node runs on this machine; waiting for it to stop")
                time.sleep(2)
        self._lock_file.write(f"{os.getpid()} {self.cluster.run_dir}\n")
        self._lock_file.flush()

    def _host(self, argv: list[str], undo: list[str] | None) -> None:
        _run(argv)
        if undo:
            self._host_changes.append(undo)

    def _cleanup_leftovers(self) -> None:
        """Undo what a crashed earlier run left: shims and their containers, mounts, rules, route, bridge."""
        base = str(self.cluster.base_dir)
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            argv = _proc_cmdline(pid)
            if argv and argv[0].endswith("containerd-shim-runc-v2") and any(base in a for a in argv):
                log.warning("killing a containerd shim left by an earlier run: %s", pid)
                _kill_tree(pid)
        for run in Path(base).glob("run-*/node"):
            _unmount_under(run)
        self._remove_rules()
        subprocess.run(["ip", "route", "del", SERVICE_CIDR], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)

    def _remove_rules(self) -> None:
        for table in ("filter", "nat"):
            out = _run(["iptables", "-t", table, "-S"], check=False).stdout
            for line in out.splitlines():
                if RULE_COMMENT in line and line.startswith("-A "):
                    args = line[3:].split()
                    args = [a.strip('"') for a in args]
                    subprocess.run(["iptables", "-t", table, "-D", *args], capture_output=True, check=False)

    def _network(self) -> None:
        net = ipaddress.ip_network(POD_SUBNET)
        self._host(["ip", "link", "add", BRIDGE, "type", "bridge"], ["ip", "link", "del", BRIDGE])
        self._host(["ip", "addr", "add", f"{NODE_IP}/{net.prefixlen}", "dev", BRIDGE], None)
        self._host(["ip", "link", "set", BRIDGE, "up"], None)
        self._host(["sysctl", "-q", "-w", f"net.ipv4.conf.{BRIDGE}.route_localnet=1"], None)
        self._host(["ip", "route", "replace", "unreachable", SERVICE_CIDR],
                   ["ip", "route", "del", "unreachable", SERVICE_CIDR])
        c = ["-m", "comment", "--comment", RULE_COMMENT]
        for rule in (["-i", BRIDGE, "!", "-o", BRIDGE], ["!", "-i", BRIDGE, "-o", BRIDGE]):
            self._host(["iptables", "-I", "FORWARD", "1", *rule, *c, "-j", "DROP"], None)
        api = f"127.0.0.1:{self.cluster.apiserver_port}"
        self._host(["iptables", "-t", "nat", "-A", "PREROUTING", "-i", BRIDGE, "-d", f"{KUBERNETES_SERVICE_IP}/32",
                    "-p", "tcp", "--dport", "443", *c, "-j", "DNAT", "--to-destination", api], None)
        self._host(["iptables", "-t", "nat", "-A", "PREROUTING", "-i", BRIDGE, "-d", f"{NODE_IP}/32",
                    "-p", "tcp", *c, "-j", "DNAT", "--to-destination", "127.0.0.1"], None)
        self._host_changes.append(["__rules__"])
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        self.conflist = cni_config(cni / "ipam")
        (cni / "net.d" / "10-schemagate-node.conflist").write_text(json.dumps(self.conflist, indent=2))
        self.check_confinement()

    def check_confinement(self) -> None:
        """Raise :class:`NodeError` when pod traffic could leave this machine (see :func:`confinement_problems`)."""
        problems = confinement_problems(
            self.conflist,
            service_route=_run(["ip", "route", "show", "table", "all", SERVICE_CIDR]).stdout,
            bridge_routes=_run(["ip", "route", "show", "dev", BRIDGE]).stdout,
            forward_rules=_run(["iptables", "-S", "FORWARD"]).stdout,
            nat_rules=_run(["iptables", "-t", "nat", "-S"]).stdout,
        )
        if problems:
            raise NodeError("refusing to start the real node: pod traffic could leave this machine:\n- "
                            + "\n- ".join(problems))

    def _component(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
        from .cluster import Component

        c = Component(name, argv, self.cluster.logs_dir / f"{name}.log", env=env)
        c.start()
        assert c.proc is not None
        self.cluster.register_pid(c.proc.pid)
        self.components.append(c)
        return c

    def _wait(self, what: str, probe: Callable[[], Any], deadline: float, interval: float = 0.2) -> Any:
        last: Exception | None = None
        while True:
            for c in self.components:
                if not c.running():
                    raise NodeError(f"{c.name} exited while waiting for {what}; last lines of {c.log_path}:\n"
                                    + "\n".join(c.log_path.read_text(errors="replace").splitlines()[-30:]))
            try:
                got = probe()
                if got:
                    return got
            except Exception as e:  # noqa: BLE001 (kept for the timeout message)
                last = e
            if time.monotonic() > deadline:
                raise NodeError(f"timed out waiting for {what} (last error: {last})")
            time.sleep(interval)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return _run(["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args], check=check,
                    timeout=timeout)

    def _start_containerd(self, deadline: float) -> None:
        d = self.dir / "containerd"
        d.mkdir(parents=True, exist_ok=True)
        root = self.cache / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        bin_dir = cni_bin_dir()
        config = f"""version = 2
root = "{root}"
state = "{d / 'state'}"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_name}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
    max_conf_num = 1
"""
        (d / "config.toml").write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(HTTP_PROXY=NO_PROXY_ANYWHERE, HTTPS_PROXY=NO_PROXY_ANYWHERE, NO_PROXY="")
        self._component("containerd", [shutil.which("containerd") or "containerd", "--config", str(d / "config.toml")],
                        env=env)
        self._wait("containerd", lambda: self.ctr("version", check=False, timeout=10).returncode == 0, deadline)
        # containers of an earlier (crashed) run are still in the metadata of the shared root: remove them
        for cid in self.ctr("containers", "ls", "-q").stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
            self.ctr("tasks", "delete", "--force", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)

    @property
    def pause_name(self) -> str:
        version = (self.cluster.bin_dir / "pause.version").read_text().strip() \
            if (self.cluster.bin_dir / "pause.version").exists() else "local"
        return f"{PAUSE_IMAGE}:{version}"

    def _present(self) -> set[str]:
        return set(self.ctr("images", "ls", "-q").stdout.split())

    def _import_images(self) -> None:
        pause_tar = self.cache / "pause.oci.tar"
        pause_bin = self.cluster.bin_dir / "pause"
        if not pause_bin.exists():
            raise NodeError(f"{pause_bin} is missing: run `make testbed` (tests/testbed/build.sh)")
        pause_oci_archive(pause_bin, pause_tar, self.pause_name)
        present = self._present()
        for archive, names in [(pause_tar, [self.pause_name]), *self.images]:
            if names[0] not in present:
                if not Path(archive).is_file():
                    raise NodeError(f"the OCI archive of {names[0]} is missing: {archive} (run `make images`)")
                log.info("importing %s into containerd", names[0])
                self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=600)
                if names[0] not in self._present():
                    raise NodeError(f"`ctr images import {archive}` did not create {names[0]}")
            for extra in names[1:]:
                self.ctr("images", "tag", "--force", names[0], extra)
        self.ctr("images", "label", self.pause_name, "io.cri-containerd.pinned=pinned", check=False)

    def _start_kubelet_and_scheduler(self, deadline: float) -> None:
        from .cluster import free_port

        pki = self.cluster.pki
        ca_cert = certs.x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
        ca_key = certs.serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
        d = self.dir / "pki"
        d.mkdir(parents=True, exist_ok=True)

        def leaf(stem: str, cn: str, **kw: Any) -> certs.Pair:
            cert, key = certs.issue(ca_cert, ca_key, cn, **kw)
            return certs._write_pair(d, stem, cert, key)

        kubelet_client = leaf("kubelet-client", f"system:node:{NODE_NAME}", orgs=("system:nodes",), client=True)
        serving = leaf("kubelet-serving", f"system:node:{NODE_NAME}", server=True, dns=[NODE_NAME],
                       ips=[NODE_IP])
        scheduler = leaf("scheduler", "system:kube-scheduler", client=True)
        kubelet_kc = self.cluster.write_kubeconfig(self.dir / "kubelet.kubeconfig", f"system:node:{NODE_NAME}",
                                                   kubelet_client)
        scheduler_kc = self.cluster.write_kubeconfig(self.dir / "scheduler.kubeconfig", "system:kube-scheduler",
                                                     scheduler)
        resolv = self.dir / "resolv.conf"
        resolv.write_text("# pods resolve nothing: their own loopback, where nothing answers\n"
                          "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.kubelet_port = free_port()
        cfg = kubelet_config(port=self.kubelet_port, healthz_port=free_port(), client_ca=pki.ca.cert,
                             serving=serving, resolv_conf=resolv, pod_logs=self.dir / "pod-logs")
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        b = self.cluster.bin_dir
        self._component("kubelet", [
            str(b / "kubelet"),
            f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={kubelet_kc}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet-pki'}",
            f"--container-runtime-endpoint=unix://{self.sock}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=2",
        ])
        self._component("kube-scheduler", [
            str(b / "kube-scheduler"),
            f"--kubeconfig={scheduler_kc}",
            f"--authentication-kubeconfig={scheduler_kc}",
            f"--authorization-kubeconfig={scheduler_kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        ])
        api = self.cluster.api_client()
        from kubernetes import client

        core = client.CoreV1Api(api)

        def ready() -> bool:
            node = core.read_node(NODE_NAME)
            conds = {c.type: c.status for c in node.status.conditions or []}
            taints = [t.key for t in node.spec.taints or []]
            return conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

        # the node-lifecycle controller (kube-controller-manager) removes the not-ready taint once Ready
        self._wait(f"node {NODE_NAME} Ready without the not-ready taint", ready, deadline, interval=0.3)
        api.close()

    def logs(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """A container's log, read through the API server from the kubelet (``kubectl logs``)."""
        args = ["logs", "-n", namespace, pod, *(["-c", container] if container else []),
                *(["--previous"] if previous else [])]
        proc = self.cluster.kubectl(*args, check=False)
        return proc.stdout if proc.returncode == 0 else proc.stderr

    # -- stop -----------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the kubelet and scheduler, kill every container, stop containerd, undo the host changes."""
        by_name = {c.name: c for c in self.components}
        for name in ("kube-scheduler", "kubelet"):
            if name in by_name:
                by_name[name].stop(timeout=5.0)
        if "containerd" in by_name and by_name["containerd"].running():
            with contextlib.suppress(Exception):
                for tid in self.ctr("tasks", "ls", "-q", check=False, timeout=20).stdout.split():
                    self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", tid, check=False, timeout=20)
                time.sleep(0.5)
                for cid in self.ctr("containers", "ls", "-q", check=False, timeout=20).stdout.split():
                    self.ctr("tasks", "delete", "--force", cid, check=False, timeout=20)
                    self.ctr("containers", "delete", cid, check=False, timeout=20)
            by_name["containerd"].stop(timeout=10.0)
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            argv = _proc_cmdline(pid)
            if argv and argv[0].endswith("containerd-shim-runc-v2") and any(str(self.sock) in a for a in argv):
                _kill_tree(pid)
        if self.dir.exists():
            _unmount_under(self.dir)
        if os.path.isdir("/var/run/netns"):
            for ns in set(os.listdir("/var/run/netns")) - self._netns_before:
                if ns.startswith("cni-"):
                    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        for undo in reversed(self._host_changes):
            if undo == ["__rules__"]:
                self._remove_rules()
            else:
                subprocess.run(undo, capture_output=True, check=False)
        self._host_changes.clear()
        self.components.clear()
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
            self._lock_file = None
