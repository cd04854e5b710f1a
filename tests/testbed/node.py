"""The node stand-in: the scheduler's and the kubelet's parts that the end-to-end tests need, in Python.

It registers one Ready Node (kept fresh with a Lease and status heartbeats), binds pending pods through
``pods/binding`` (pods with ``spec.schedulingGates`` stay unbound with ``PodScheduled=False/SchedulingGated``
until the gates are removed, as with the real scheduler), and for pods bound to it:

- pods **owned by a Job** (or annotated ``testbed.schemagate.dev/run: "true"``) are *executed*: init containers in
  order (sidecars, i.e. init containers with ``restartPolicy: Always``, run alongside), then the containers, as
  local processes (see ``podspec.py`` for env and path rewriting); their status is written back like the kubelet
  does (phase, startTime, conditions, init/container statuses with exit code, reason and termination message);
  ``restartPolicy: OnFailure`` restarts failed containers in place (short back-off); ``activeDeadlineSeconds``
  and pod deletion kill the processes;
- every other pod (Deployment, StatefulSet, bare pods...) is only *marked* Running and Ready, so rollouts
  progress. The annotation ``testbed.schemagate.dev/run: "false"`` marks a Job's pod Running without running it.

It also serves the kubelet's ``/containerLogs`` endpoint over TLS so ``kubectl logs`` and
``read_namespaced_pod_log`` work through the API server, keeps every container's log in a file under the run
directory (:meth:`NodeStandIn.logs`), and provisions a local directory for each PersistentVolumeClaim (a
pre-bound hostPath PersistentVolume that the real PV binder binds).

Images are not pulled: every container runs in the local Python environment (the virtualenv's ``bin`` first on
``PATH``), optionally adjusted per image glob with :meth:`NodeStandIn.map_image`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from . import podspec
from .podspec import ConfigError, ImageMapping, PathMapper

log = logging.getLogger("schemagate.testbed.node")

RUN_ANNOTATION = "testbed.schemagate.dev/run"
PROVISIONED_LABEL = "testbed.schemagate.dev/provisioned"
MERGE = "application/merge-patch+json"
HOST_IP = "127.0.0.1"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _load(resp: Any) -> Any:
    return json.loads(resp.data or b"null")


def _key(obj: dict) -> str:
    return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


# ---------------------------------------------------------------------------------------------------------------
# list + watch with resync, 410 handling and reconnects


class Informer(threading.Thread):
    """List, then watch from the list's resourceVersion; on 410 Gone relist (reporting vanished objects as
    DELETED); on connection errors re-watch from the last seen resourceVersion with a capped back-off."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_event: Callable[[str, dict], None],
        stop: threading.Event,
        watch_timeout: int = 300,
    ):
        super().__init__(name=f"testbed-informer-{name}", daemon=True)
        self.kind = name
        self.list_fn = list_fn
        self.on_event = on_event
        self.stop_event = stop
        self.watch_timeout = watch_timeout
        self.synced = threading.Event()
        self.cache: dict[str, dict] = {}
        self.lock = threading.Lock()
        self._resp: Any = None
        self.relists = 0

    def get(self, key: str) -> dict | None:
        with self.lock:
            return self.cache.get(key)

    def items(self) -> list[dict]:
        with self.lock:
            return list(self.cache.values())

    def close(self) -> None:
        resp = self._resp
        if resp is not None:
            for meth in ("shutdown", "close"):
                try:
                    getattr(resp, meth)()
                except Exception:  # noqa: S110 - best effort on shutdown
                    pass

    def _relist(self) -> str:
        data = _load(self.list_fn(_preload_content=False, _request_timeout=30))
        fresh = {_key(o): o for o in data.get("items") or []}
        with self.lock:
            gone = [o for k, o in self.cache.items() if k not in fresh]
            self.cache = fresh
        self.relists += 1
        for o in gone:
            self.on_event("DELETED", o)
        for o in fresh.values():
            self.on_event("SYNC", o)
        self.synced.set()
        return data["metadata"]["resourceVersion"]

    def run(self) -> None:
        rv: str | None = None
        backoff = 0.2
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                resp = self.list_fn(
                    watch=True,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout,
                    _preload_content=False,
                    _request_timeout=(10, self.watch_timeout + 30),
                )
                self._resp = resp
                try:
                    for line in _lines(resp):
                        if self.stop_event.is_set():
                            break
                        ev = json.loads(line)
                        typ, obj = ev.get("type"), ev.get("object") or {}
                        if typ == "ERROR":
                            if obj.get("code") == 410:
                                log.info("%s watch expired (410 Gone), relisting", self.kind)
                                rv = None
                                break
                            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                        rv = obj.get("metadata", {}).get("resourceVersion") or rv
                        if typ == "BOOKMARK":
                            continue
                        key = _key(obj)
                        with self.lock:
                            if typ == "DELETED":
                                self.cache.pop(key, None)
                            else:
                                self.cache[key] = obj
                        self.on_event(typ, obj)
                        backoff = 0.2
                finally:
                    self._resp = None
                    resp.release_conn()
            except ApiException as e:
                if self.stop_event.is_set():
                    return
                if e.status == 410:
                    rv = None
                    continue
                log.warning("%s watch failed: %s %s; retrying in %.1fs", self.kind, e.status, e.reason, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5)
            except Exception as e:  # connection reset, timeouts, apiserver restart
                if self.stop_event.is_set():
                    return
                log.info("%s watch interrupted (%s); re-watching in %.1fs", self.kind, type(e).__name__, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5)


def _lines(resp: Any) -> Iterator[str]:
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8", errors="replace")
    if buf.strip():
        yield buf.decode("utf-8", errors="replace")


class WorkQueue:
    """client-go style: a key is never processed by two workers at once; re-adds while processing are kept."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._shutdown = False

    def add(self, key: str) -> None:
        with self._cv:
            if self._shutdown or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cv.notify()

    def add_after(self, key: str, delay: float) -> None:
        t = threading.Timer(delay, self.add, args=(key,))
        t.daemon = True
        t.start()

    def get(self) -> str | None:
        with self._cv:
            while not self._queue and not self._shutdown:
                self._cv.wait()
            if self._shutdown:
                return None
            key = self._queue.popleft()
            self._processing.add(key)
            self._dirty.discard(key)
            return key

    def done(self, key: str) -> None:
        with self._cv:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cv.notify()

    def shutdown(self) -> None:
        with self._cv:
            self._shutdown = True
            self._cv.notify_all()


# ---------------------------------------------------------------------------------------------------------------
# pod status helpers


def _cond(typ: str, status: bool, reason: str | None = None, message: str | None = None) -> dict:
    c = {"type": typ, "status": "True" if status else "False", "lastProbeTime": None, "lastTransitionTime": now()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _merge_conditions(old: list[dict], new: list[dict]) -> list[dict]:
    """Keep lastTransitionTime when a condition's status did not change."""
    prev = {c["type"]: c for c in old or []}
    out = []
    for c in new:
        p = prev.get(c["type"])
        if p and p.get("status") == c["status"] and p.get("lastTransitionTime"):
            c = {**c, "lastTransitionTime": p["lastTransitionTime"]}
        out.append(c)
    known = {c["type"] for c in new}
    out += [c for c in old or [] if c["type"] not in known]  # e.g. DisruptionTarget, readiness gates
    return out


def _owner_kind(pod: dict) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("kind")
    refs = pod["metadata"].get("ownerReferences") or []
    return refs[0].get("kind") if refs else None


def should_execute(pod: dict) -> bool:
    ann = (pod["metadata"].get("annotations") or {}).get(RUN_ANNOTATION)
    if ann is not None:
        return ann.lower() == "true"
    return _owner_kind(pod) == "Job"


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


# ---------------------------------------------------------------------------------------------------------------
# one executed pod


class _Slot:
    """One container of an executed pod."""

    def __init__(self, container: dict, kind: str):
        self.c = container
        self.name: str = container["name"]
        self.kind = kind  # init | sidecar | main
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.state: dict = {"waiting": {"reason": "PodInitializing"}}
        self.last_state: dict = {}
        self.started_at: str | None = None
        self.finished = False  # terminated for good
        self.exit_code: int | None = None
        self.next_start = 0.0
        self.log_file: Path | None = None
        self.msg_file: Path | None = None
        self.killed_by_us = False

    def status(self, pod_uid: str, ready: bool) -> dict:
        s: dict[str, Any] = {
            "name": self.name,
            "image": self.c.get("image", ""),
            "imageID": f"testbed-local://{self.c.get('image', '')}" if self.started_at else "",
            "ready": ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.started_at:
            s["containerID"] = f"testbed://{pod_uid[:8]}-{self.name}-{self.restarts}"
        return s


class PodRunner(threading.Thread):
    def __init__(self, node: NodeStandIn, pod: dict):
        meta = pod["metadata"]
        super().__init__(name=f"testbed-pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.spec: dict = pod["spec"]
        self.dir = node.pods_dir / self.ns / f"{self.pod_name}-{self.uid[:8]}"
        self.kill_event = threading.Event()
        self.kill_grace = 30.0
        self.kill_reason: str | None = None  # None (deleted) or DeadlineExceeded
        self.slots: dict[str, _Slot] = {}
        self.init_order: list[_Slot] = []
        self.main: list[_Slot] = []
        self.conditions: list[dict] = list((pod.get("status") or {}).get("conditions") or [])
        self.phase = "Pending"
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        self.started_mono = time.monotonic()
        self.mounts: dict[str, str] = {}
        self.sandbox_ready = False
        self._poll = node.poll_interval
        self.done = threading.Event()
        self.gone = False  # the pod object disappeared
        for c in self.spec.get("initContainers") or []:
            s = _Slot(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            self.slots[s.name] = s
            self.init_order.append(s)
        for c in self.spec.get("containers") or []:
            s = _Slot(c, "main")
            if self.init_order:
                s.state = {"waiting": {"reason": "PodInitializing"}}
            else:
                s.state = {"waiting": {"reason": "ContainerCreating"}}
            self.slots[s.name] = s
            self.main.append(s)

    # -- control from the node -------------------------------------------------------------------------------
    def request_kill(self, grace: float | None, reason: str | None = None) -> None:
        if grace is not None:
            self.kill_grace = max(0.0, min(float(grace), self.node.max_grace_seconds))
        if reason and not self.kill_reason:
            self.kill_reason = reason
        self.kill_event.set()

    def log_path(self, container: str, previous: bool = False) -> Path | None:
        slot = self.slots.get(container)
        if slot is None:
            return None
        n = slot.restarts - 1 if previous else slot.restarts
        if n < 0:
            return None
        p = self.dir / "logs" / container / f"{n}.log"
        if not p.exists() and not previous and slot.restarts > 0 and "running" not in slot.state:
            p = self.dir / "logs" / container / f"{n - 1}.log"  # terminated, restart not started yet
        return p if p.exists() else None

    def container_running(self, container: str) -> bool:
        slot = self.slots.get(container)
        return bool(slot and not self.done.is_set() and not slot.finished)

    # -- status ---------------------------------------------------------------------------------------------
    def _write_status(self, reason: str | None = None, message: str | None = None) -> None:
        self._poll = self.node.poll_interval
        main_running = all("running" in s.state for s in self.main)
        sidecars_ok = all("running" in s.state for s in self.init_order if s.kind == "sidecar")
        ready = self.phase == "Running" and main_running and sidecars_ok and not self.kill_event.is_set()
        inits_done = all(s.finished and s.exit_code == 0 for s in self.init_order if s.kind == "init") and all(
            s.started_at for s in self.init_order if s.kind == "sidecar"
        )
        terminal = self.phase in ("Succeeded", "Failed")
        not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        not_ready_msg = None
        if not ready and not terminal:
            names = [s.name for s in self.main if "running" not in s.state]
            not_ready_msg = f"containers with unready status: [{' '.join(names)}]" if names else None
        conds = [
            _cond("PodReadyToStartContainers", self.sandbox_ready),
            _cond("Initialized", inits_done, None if inits_done else "ContainersNotInitialized"),
            _cond("Ready", ready, None if ready else not_ready_reason, not_ready_msg),
            _cond("ContainersReady", ready, None if ready else not_ready_reason, not_ready_msg),
            _cond("PodScheduled", True),
        ]
        if not inits_done and not terminal:
            pending = [s.name for s in self.init_order if not s.finished and s.kind == "init"]
            conds[1]["message"] = f"containers with incomplete status: [{' '.join(pending)}]"
        latest = self.node.pods.get(f"{self.ns}/{self.pod_name}")
        if latest is not None and latest["metadata"].get("uid") == self.uid:
            # keep conditions others added since (DisruptionTarget, readiness gates)
            self.conditions = _merge_conditions((latest.get("status") or {}).get("conditions") or [],
                                                _merge_conditions(self.conditions, conds))
        else:
            self.conditions = _merge_conditions(self.conditions, conds)
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": self.conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": self.start_time,
            "containerStatuses": [s.status(self.uid, ready and "running" in s.state) for s in self.main],
            "reason": reason,
            "message": message,
        }
        if self.init_order:
            status["initContainerStatuses"] = [
                s.status(self.uid, s.kind == "sidecar" and "running" in s.state) for s in self.init_order
            ]
        for attempt in range(5):
            try:
                self.node.core.patch_namespaced_pod_status(
                    self.pod_name, self.ns, {"status": status}, _content_type=MERGE, _preload_content=False
                )
                return
            except ApiException as e:
                if e.status == 404:
                    self.gone = True
                    self.kill_event.set()
                    return
                if e.status == 422:
                    log.error("pod %s/%s status rejected: %s", self.ns, self.pod_name, e.body)
                    return
                log.warning("pod %s/%s status write failed (%s), retrying", self.ns, self.pod_name, e.status)
            except Exception as e:
                log.warning("pod %s/%s status write failed (%s), retrying", self.ns, self.pod_name, e)
            if self.node.stopping.wait(0.2 * (attempt + 1)):
                return

    # -- volumes --------------------------------------------------------------------------------------------
    def _prepare_volumes(self) -> dict[str, str]:
        """Materialise the pod's volumes; returns volume name -> local directory (or file for hostPath files)."""
        vols: dict[str, str] = {}
        vdir = self.dir / "volumes"
        for v in self.spec.get("volumes") or []:
            name = v["name"]
            target = vdir / name
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                p = self.node.claim_dir(self.ns, claim)
                vols[name] = str(p)
                continue
            if "hostPath" in v:
                hp = v["hostPath"]
                if hp.get("type") in ("DirectoryOrCreate",) or not hp.get("type"):
                    Path(hp["path"]).mkdir(parents=True, exist_ok=True)
                vols[name] = hp["path"]
                continue
            target.mkdir(parents=True, exist_ok=True)
            vols[name] = str(target)
            if "configMap" in v or "secret" in v:
                kind, src = ("ConfigMap", v["configMap"]) if "configMap" in v else ("Secret", v["secret"])
                self._project(target, [{kind[0].lower() + kind[1:]: src}], src.get("defaultMode"))
            elif "projected" in v:
                self._project(target, v["projected"].get("sources") or [], v["projected"].get("defaultMode"))
            elif "downwardAPI" in v:
                self._project(target, [{"downwardAPI": v["downwardAPI"]}], v["downwardAPI"].get("defaultMode"))
            elif "emptyDir" in v or "ephemeral" in v:
                pass
            else:
                log.warning("pod %s/%s volume %s: type %s not emulated, using an empty directory",
                            self.ns, self.pod_name, name, [k for k in v if k != "name"])
        return vols

    def _project(self, target: Path, sources: list[dict], default_mode: int | None) -> None:
        mode = default_mode if default_mode is not None else 0o644
        for src in sources:
            if "configMap" in src or "secret" in src:
                kind, ref = ("ConfigMap", src["configMap"]) if "configMap" in src else ("Secret", src["secret"])
                obj_name = ref.get("name") or ref.get("secretName")
                obj = self.node.lookup(self.ns, kind, obj_name)
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{kind.lower()} "{obj_name}" not found')
                data = podspec.object_data(kind, obj)
                binary = {k: v for k, v in (obj.get("binaryData") or {}).items()} if kind == "ConfigMap" else {}
                items = ref.get("items")
                pairs = [(i["key"], i["path"], i.get("mode")) for i in items] if items else [
                    (k, k, None) for k in list(data) + list(binary)
                ]
                for key, rel, m in pairs:
                    if key in data:
                        content = data[key].encode()
                    elif key in binary:
                        import base64

                        content = base64.b64decode(binary[key])
                    elif ref.get("optional"):
                        continue
                    else:
                        raise ConfigError(f"configmap references non-existent config key: {key}")
                    self._write(target / rel, content, m if m is not None else mode)
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items") or []:
                    if "fieldRef" in item:
                        value = podspec.field_ref(self.pod, item["fieldRef"]["fieldPath"])
                    else:
                        value = podspec.resource_field(
                            self.slots[item["resourceFieldRef"]["containerName"]].c
                            if item["resourceFieldRef"].get("containerName") in self.slots
                            else {},
                            item["resourceFieldRef"],
                            self.node.allocatable,
                        )
                    self._write(target / item["path"], value.encode(), item.get("mode") or mode)
            elif "serviceAccountToken" in src:
                sat = src["serviceAccountToken"]
                token = self.node.service_account_token(
                    self.ns, self.spec.get("serviceAccountName") or "default", self.pod_name, self.uid,
                    sat.get("audience"), sat.get("expirationSeconds") or 3607,
                )
                self._write(target / sat["path"], token.encode(), 0o600 if default_mode is None else mode)
            # clusterTrustBundle and podCertificate sources are not emulated

    @staticmethod
    def _write(path: Path, content: bytes, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode & 0o777)

    # -- processes ------------------------------------------------------------------------------------------
    def _mapper(self, slot: _Slot, image: ImageMapping | None, env_view: dict[str, str]) -> PathMapper:
        mapping: dict[str, str] = {}
        if image:
            mapping.update(image.paths)
        for m in slot.c.get("volumeMounts") or []:
            base = self.mounts.get(m["name"])
            if base is None:
                raise ConfigError(f"volume {m['name']!r} not found in pod")
            sub = m.get("subPath") or ""
            if m.get("subPathExpr"):
                sub = podspec.expand(m["subPathExpr"], env_view)
            local = Path(base) / sub if sub else Path(base)
            if sub and not local.exists():
                local.mkdir(parents=True, exist_ok=True)
            mapping[m["mountPath"]] = str(local)
        cdir = self.dir / "containers" / slot.name
        cdir.mkdir(parents=True, exist_ok=True)
        slot.msg_file = cdir / "termination-log"
        mapping[slot.c.get("terminationMessagePath") or podspec.DEFAULT_TERMINATION_PATH] = str(slot.msg_file)
        return PathMapper(mapping)

    def _start(self, slot: _Slot) -> None:
        """Start one container instance; raises ConfigError (retried) or records a StartError."""
        image = podspec.find_image_mapping(slot.c.get("image", ""), self.node.images)
        if image is not None and image.absent:
            raise podspec.ImageNotPresent(f'Container image "{slot.c.get("image", "")}" is not present with pull '
                                          "policy of Never")
        service_env = {
            "KUBERNETES_SERVICE_HOST": HOST_IP,
            "KUBERNETES_SERVICE_PORT": str(self.node.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.node.apiserver_port),
            "KUBERNETES_PORT": f"tcp://{HOST_IP}:{self.node.apiserver_port}",
        }
        env_pairs = podspec.container_env(
            self.pod, slot.c, lambda kind, name: self.node.lookup(self.ns, kind, name),
            service_env=service_env, node_allocatable=self.node.allocatable,
        )
        env_view = dict(env_pairs)
        mapper = self._mapper(slot, image, env_view)
        argv = [podspec.expand(a, env_view) for a in podspec.effective_argv(slot.c, image)]
        if not argv:
            raise ConfigError(f"container {slot.name!r} has no command and image {slot.c.get('image')!r} has no "
                              "entrypoint mapping (NodeStandIn.map_image(..., entrypoint=[...]))")
        argv = [mapper.rewrite(a) for a in argv]

        home = self.dir / "home"
        tmp = self.dir / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        base_path = os.pathsep.join(
            [str(self.node.venv_bin)]
            + [mapper.rewrite(p) for p in (image.path_prepend if image else [])]
            + [os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]
        )
        env: dict[str, str] = {
            "PATH": base_path,
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "HOSTNAME": self.spec.get("hostname") or self.pod_name,
        }
        for var in ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE"):
            if var in os.environ:
                env[var] = os.environ[var]
        # a PATH from the image mapping or the pod goes first, followed by the virtualenv's bin and the host PATH
        for k, v in list(image.env.items() if image else []) + env_pairs:
            v = mapper.rewrite(v)
            env[k] = v + os.pathsep + base_path if k == "PATH" else v

        wd_view = slot.c.get("workingDir") or (image.workdir if image else None)
        if wd_view:
            wd_view = podspec.expand(wd_view, env_view)
            cwd = mapper.rewrite(wd_view)
            if cwd == wd_view and not Path(cwd).is_dir():
                cwd = str(self.dir / "rootfs" / wd_view.lstrip("/"))  # an image directory we know nothing of
            Path(cwd).mkdir(parents=True, exist_ok=True)
        else:
            cwd = str(self.dir / "rootfs")
            Path(cwd).mkdir(parents=True, exist_ok=True)

        exe = argv[0]
        if "/" in exe and not Path(exe).exists() and not Path(cwd, exe).exists():
            found = shutil.which(Path(exe).name, path=env["PATH"])
            if found:
                exe = found
        elif "/" not in exe:
            exe = shutil.which(exe, path=env["PATH"]) or exe
        argv = [exe] + argv[1:]

        assert slot.msg_file is not None
        slot.msg_file.write_bytes(b"")
        logdir = self.dir / "logs" / slot.name
        logdir.mkdir(parents=True, exist_ok=True)
        slot.log_file = logdir / f"{slot.restarts}.log"
        (self.dir / "argv").mkdir(exist_ok=True)
        argv_file = self.dir / "argv" / f"{slot.name}.{slot.restarts}.json"
        argv_file.write_text(json.dumps({"argv": argv, "cwd": cwd, "env": env}, indent=1))
        argv_file.chmod(0o600)  # env may hold the test's credentials
        started = now()
        with open(slot.log_file, "ab") as out:
            try:
                slot.proc = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                )
            except OSError as e:
                out.write(f"testbed: cannot start {argv[0]!r}: {e}\n".encode())
                slot.proc = None
                slot.started_at = started
                slot.state = {"terminated": {
                    "exitCode": 128, "reason": "StartError", "startedAt": started, "finishedAt": now(),
                    "message": f'failed to start container "{slot.name}": exec: "{argv[0]}": {e.strerror}',
                    "containerID": f"testbed://{self.uid[:8]}-{slot.name}-{slot.restarts}",
                }}
                slot.exit_code = 128
                return
        self.node.register_process(slot.proc.pid)
        slot.started_at = started
        slot.state = {"running": {"startedAt": started}}
        log.info("pod %s/%s container %s started: pid %s %s", self.ns, self.pod_name, slot.name, slot.proc.pid, argv)

    def _reap(self, slot: _Slot) -> bool:
        """True when the container's process has exited (its terminated state is recorded)."""
        if slot.proc is None:
            return "terminated" in slot.state
        rc = slot.proc.poll()
        if rc is None:
            return False
        code = _exit_code(rc)
        slot.exit_code = code
        policy = slot.c.get("terminationMessagePolicy") or "File"
        assert slot.msg_file is not None
        every = sum(len(self.spec.get(k) or []) for k in ("initContainers", "containers", "ephemeralContainers"))
        msg = podspec.termination_message(slot.msg_file, policy, code, slot.log_file, every)
        term: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": slot.started_at,
            "finishedAt": now(),
            "containerID": f"testbed://{self.uid[:8]}-{slot.name}-{slot.restarts}",
        }
        if rc < 0:
            term["signal"] = -rc
        if msg:
            term["message"] = msg
        slot.state = {"terminated": term}
        _signal_group(slot.proc, signal.SIGKILL)  # like the container's cgroup: nothing outlives the main process
        slot.proc = None
        log.info("pod %s/%s container %s exited %s", self.ns, self.pod_name, slot.name, code)
        return True

    def _kill_all(self, grace: float) -> None:
        procs = [s for s in self.slots.values() if s.proc is not None]
        order = [s for s in procs if s.kind == "main" or s.kind == "init"] + [s for s in procs if s.kind == "sidecar"]
        for s in order:
            s.killed_by_us = True
            _signal_group(s.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(s.proc and s.proc.poll() is None for s in order):
            time.sleep(0.05)
        for s in order:
            if s.proc and s.proc.poll() is None:
                _signal_group(s.proc, signal.SIGKILL)
                s.proc.wait()
            _signal_group(s.proc, signal.SIGKILL)  # leftovers in the process group
            self._reap(s)

    def _restart_due(self, slot: _Slot) -> bool:
        """After a container exited: restart it in place (pod restartPolicy), or is it finished for good?"""
        policy = self.spec.get("restartPolicy") or "Always"
        if slot.kind == "sidecar":
            policy = "Always"
        code = slot.exit_code or 0
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if not restart:
            slot.finished = True
            return False
        slot.last_state = slot.state
        delay = min(self.node.restart_backoff * (2 ** min(slot.restarts, 6)), self.node.max_restart_backoff)
        slot.restarts += 1
        slot.state = {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": f"back-off {delay:.0f}s restarting failed container={slot.name} "
                                             f"pod={self.pod_name}_{self.ns}({self.uid})"}}
        slot.next_start = time.monotonic() + delay
        return True

    def _deadline_passed(self) -> bool:
        ads = self.spec.get("activeDeadlineSeconds")
        if ads is None:
            return False
        return time.monotonic() - self.started_mono >= float(ads)

    def _tick(self) -> str | None:
        """Wait a little; returns 'kill' or 'deadline' when the pod must stop."""
        if self.node.stopping.is_set():
            return "stop"
        # poll fast right after a change, then back off (many idle pods must not burn the 2 cores)
        self._poll = min(self._poll * 1.3, self.node.max_poll_interval)
        if self.kill_event.wait(self._poll):
            return "kill"
        if self._deadline_passed():
            return "deadline"
        return None

    def _try_start(self, slot: _Slot) -> str | None:
        """Start a container, waiting (CreateContainerConfigError) until its config resolves."""
        while True:
            try:
                self._start(slot)
                return None
            except ConfigError as e:
                new = {"waiting": {"reason": e.reason, "message": str(e)}}
                if slot.state != new:
                    slot.state = new
                    self._write_status()
            why = self._tick()
            if why:
                return why

    # -- the pod's life -------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: node stand-in failure", self.ns, self.pod_name)
            try:
                self._kill_all(0)
                if self.phase not in ("Succeeded", "Failed"):
                    self.phase = "Failed"
                    self._write_status("TestbedError", "the node stand-in failed; see logs/node.log")
            except Exception:  # noqa: S110
                pass
        finally:
            self.done.set()
            self.node.runner_finished(self)

    def _finish_stopped(self, why: str) -> None:
        """The pod was deleted, hit its deadline, or the node stops: kill and record."""
        if why == "stop":
            self._kill_all(0)
            return
        if why == "deadline":
            self.kill_reason = "DeadlineExceeded"
            grace = self.spec.get("terminationGracePeriodSeconds")
            self._kill_all(min(float(30 if grace is None else grace), self.node.max_grace_seconds))
        else:
            self._kill_all(self.kill_grace)
        if self.gone:
            return
        if self.kill_reason == "DeadlineExceeded":
            self.phase = "Failed"
            self._write_status("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
        else:
            if self.phase not in ("Succeeded", "Failed"):
                all_ok = all(s.exit_code == 0 for s in self.main if s.started_at)
                self.phase = "Succeeded" if all_ok and all(s.started_at for s in self.main) and (
                    self.spec.get("restartPolicy") in ("Never", "OnFailure")) else "Failed"
            self._write_status()
        if self.kill_event.is_set():
            self.node.finalize_deletion(self.ns, self.pod_name, self.uid)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pod.json").write_text(json.dumps(self.pod, indent=1))
        self._write_status()
        # "sandbox": volumes
        while True:
            try:
                self.mounts = self._prepare_volumes()
                self.sandbox_ready = True
                break
            except (ConfigError, ApiException) as e:
                msg = str(e) if isinstance(e, ConfigError) else f"{e.status} {e.reason}"
                for s in self.main:
                    s.state = {"waiting": {"reason": "ContainerCreating", "message": f"MountVolume.SetUp failed: {msg}"}}
                self._write_status()
            why = self._tick()
            if why:
                return self._finish_stopped(why)
        self._write_status()

        # init containers, in order; sidecars keep running
        for slot in self.init_order:
            why = self._try_start(slot)
            if why:
                return self._finish_stopped(why)
            self._write_status()
            if slot.kind == "sidecar":
                continue
            while True:
                if self._reap(slot):
                    if slot.exit_code == 0:
                        slot.finished = True
                        break
                    if not self._restart_due(slot):  # restartPolicy Never: the pod fails
                        self.phase = "Failed"
                        for m in self.main:
                            m.state = {"waiting": {"reason": "PodInitializing"}}
                        self._stop_sidecars()
                        self._write_status()
                        return
                    self._write_status()
                    while time.monotonic() < slot.next_start:
                        why = self._tick()
                        if why:
                            return self._finish_stopped(why)
                    why = self._try_start(slot)
                    if why:
                        return self._finish_stopped(why)
                    self._write_status()
                    continue
                if self._keep_sidecars():  # a sidecar failed or was restarted while this init container runs
                    self._write_status()
                why = self._tick()
                if why:
                    return self._finish_stopped(why)
            self._write_status()

        # main containers, concurrently
        for slot in self.main:
            slot.state = {"waiting": {"reason": "ContainerCreating"}}
            why = self._try_start(slot)
            if why:
                return self._finish_stopped(why)
        self.phase = "Running"
        self._write_status()
        while True:
            changed = False
            for slot in self.main:
                if slot.finished:
                    continue
                if self._reap(slot):
                    self._restart_due(slot)
                    changed = True
                if not slot.finished and slot.proc is None and "waiting" in slot.state and \
                        time.monotonic() >= slot.next_start:
                    why = self._try_start(slot)
                    if why:
                        return self._finish_stopped(why)
                    changed = True
            changed |= self._keep_sidecars()
            if all(s.finished for s in self.main):
                break
            if changed:
                self._write_status()
            why = self._tick()
            if why:
                return self._finish_stopped(why)
        self._stop_sidecars()
        self.phase = "Succeeded" if all(s.exit_code == 0 for s in self.main) else "Failed"
        self._write_status()

    def _keep_sidecars(self) -> bool:
        changed = False
        for s in self.init_order:
            if s.kind != "sidecar" or s.started_at is None or s.finished:
                continue
            if self._reap(s):
                self._restart_due(s)
                changed = True
            if s.proc is None and "waiting" in s.state and time.monotonic() >= s.next_start:
                try:
                    self._start(s)
                except ConfigError:
                    pass
                changed = True
        return changed

    def _stop_sidecars(self) -> None:
        for s in self.init_order:
            if s.kind == "sidecar" and s.proc is not None:
                _signal_group(s.proc, signal.SIGTERM)
                try:
                    s.proc.wait(timeout=min(self.kill_grace, 5))
                except subprocess.TimeoutExpired:
                    _signal_group(s.proc, signal.SIGKILL)
                    s.proc.wait()
                self._reap(s)
                s.finished = True


def _signal_group(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------------
# the kubelet's /containerLogs endpoint


class _KubeletHandler(BaseHTTPRequestHandler):
    node: NodeStandIn  # set on the subclass
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("kubelet endpoint: " + fmt, *args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            return self._send(200, b"ok")
        if len(parts) == 4 and parts[0] == "containerLogs":
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            return self._logs(parts[1], parts[2], parts[3], q)
        self._send(404, b"the schemagate test bed node stand-in serves only /containerLogs (no exec, attach, "
                        b"port-forward, metrics or stats)\n")

    def _logs(self, ns: str, pod: str, container: str, q: dict[str, str]) -> None:
        previous = q.get("previous") == "true"
        runner = self.node.runner_for(ns, pod)
        path = runner.log_path(container, previous) if runner else None
        if runner is None and not previous:
            obj = self.node.pods.get(f"{ns}/{pod}")
            names = [c["name"] for c in (obj or {}).get("spec", {}).get("containers") or []]
            if obj is not None and container in names:
                return self._send(200, b"")  # a pod that is only marked Running: it has printed nothing
        if path is None:
            what = "previous terminated container" if previous else "container"
            return self._send(400 if runner else 404,
                              f'{what} "{container}" in pod "{pod}" has no logs (not started, or not run by the '
                              f"test bed)\n".encode())
        data = path.read_bytes()
        if "tailLines" in q:
            n = int(q["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        if limit is not None:
            data = data[:limit]
        if q.get("follow") != "true" or previous:
            return self._send(200, data)
        # follow: chunked until the container is no longer running
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = len(data)
        pos = path.stat().st_size

        def chunk(b: bytes) -> None:
            if b:
                self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
                self.wfile.flush()

        try:
            chunk(data)
            while True:
                running = runner.container_running(container)
                with open(path, "rb") as f:
                    f.seek(pos)
                    more = f.read()
                pos += len(more)
                if limit is not None:
                    more = more[: max(0, limit - sent)]
                sent += len(more)
                chunk(more)
                if not running or (limit is not None and sent >= limit) or self.node.stopping.is_set():
                    break
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


# ---------------------------------------------------------------------------------------------------------------
# the node


class NodeStandIn:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        watch_client: k8s.ApiClient,
        run_dir: Path,
        *,
        apiserver_port: int,
        name: str = "testbed-node",
        kubelet_version: str = "v1.35.8",
        serving_cert: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
        venv_bin: Path | None = None,
        register_process: Callable[[int], None] | None = None,
        workers: int = 4,
    ):
        self.api = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.coord = k8s.CoordinationV1Api(api_client)
        self.watch_core = k8s.CoreV1Api(watch_client)
        self.name = name
        self.kubelet_version = kubelet_version
        self.run_dir = Path(run_dir)
        self.pods_dir = self.run_dir / "pods"
        self.claims_dir = self.run_dir / "claims"
        self.apiserver_port = apiserver_port
        self.serving_cert = serving_cert
        self.client_ca = client_ca
        self.venv_bin = Path(venv_bin or Path(sys.executable).parent)
        self._register = register_process
        self.n_workers = workers
        self.images: list[ImageMapping] = []
        self.stopping = threading.Event()
        self.queue = WorkQueue()
        self.pvc_queue = WorkQueue()
        self.runners: dict[str, PodRunner] = {}  # pod uid -> runner
        self.by_name: dict[tuple[str, str], PodRunner] = {}  # latest runner per (namespace, name)
        self.lock = threading.RLock()
        self.threads: list[threading.Thread] = []
        self.kubelet_port = 0
        self._server: ThreadingHTTPServer | None = None
        self.poll_interval = 0.02  # first poll after a change; grows to max_poll_interval while nothing happens
        self.max_poll_interval = 0.25
        self.restart_backoff = 1.0  # the kubelet starts at 10s; shortened for tests
        self.max_restart_backoff = 10.0
        self.max_grace_seconds = 10.0  # cap on terminationGracePeriodSeconds when killing
        self.heartbeat_seconds = 10.0
        self._token_cache: dict[tuple, tuple[float, str]] = {}
        cpu = os.cpu_count() or 2
        mem_kib = 8 * 1024 * 1024
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
        except OSError:
            pass
        self.capacity = {"cpu": str(cpu), "memory": f"{mem_kib}Ki", "pods": "110", "ephemeral-storage": "100Gi"}
        self.allocatable = dict(self.capacity)
        self.pods = Informer("pods", self.watch_core.list_pod_for_all_namespaces, self._on_pod, self.stopping)
        self.pvcs = Informer(
            "pvcs", self.watch_core.list_persistent_volume_claim_for_all_namespaces, self._on_pvc, self.stopping
        )

    # -- public API for tests -------------------------------------------------------------------------------
    def map_image(
        self,
        pattern: str,
        paths: dict[str, str | Path] | None = None,
        env: dict[str, str] | None = None,
        *,
        path_prepend: list[str] | None = None,
        workdir: str | None = None,
        entrypoint: list[str] | None = None,
        cmd: list[str] | None = None,
        absent: bool = False,
    ) -> ImageMapping:
        """Map images matching ``pattern`` (a glob on the image reference, e.g. ``"*/shop-app:*"``) onto local
        paths and env. Later mappings win. Returns the mapping (pass it to :meth:`unmap_image`). ``absent``:
        the image is not on the node (containers wait with ``ErrImageNeverPull``)."""
        m = ImageMapping(
            pattern,
            {k: str(v) for k, v in (paths or {}).items()},
            dict(env or {}),
            list(path_prepend or []),
            workdir,
            entrypoint,
            cmd,
            absent,
        )
        PathMapper(m.paths)  # validate early
        with self.lock:
            self.images.append(m)
        return m

    def unmap_image(self, mapping: ImageMapping) -> None:
        with self.lock:
            if mapping in self.images:
                self.images.remove(mapping)

    def runner_for(self, namespace: str, pod: str) -> PodRunner | None:
        with self.lock:
            return self.by_name.get((namespace, pod))

    def logs(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """The log of a container of an executed pod (stdout and stderr interleaved), also after the pod is
        deleted. Raises ``LookupError`` if the pod was never run here."""
        runner = self.runner_for(namespace, pod)
        if runner is None:
            raise LookupError(f"pod {namespace}/{pod} was not run by the node stand-in (only Job pods run)")
        if container is None:
            names = [s.name for s in runner.main]
            if len(names) != 1:
                raise LookupError(f"pod {namespace}/{pod} has containers {names}; pass container=")
            container = names[0]
        path = runner.log_path(container, previous)
        return path.read_text(errors="replace") if path else ""

    def pod_dir(self, namespace: str, pod: str) -> Path | None:
        r = self.runner_for(namespace, pod)
        return r.dir if r else None

    def claim_dir(self, namespace: str, claim: str) -> Path:
        p = self.claims_dir / namespace / claim
        p.mkdir(parents=True, exist_ok=True)
        return p

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        if self.serving_cert:
            self._start_kubelet_endpoint()
        self._register_node()
        self._renew_lease()
        for t in (self.pods, self.pvcs):
            t.start()
            self.threads.append(t)
        for i in range(self.n_workers):
            t = threading.Thread(target=self._worker, args=(self.queue, self._sync_pod), name=f"testbed-node-worker-{i}",
                                 daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._worker, args=(self.pvc_queue, self._sync_pvc), name="testbed-pvc-worker",
                             daemon=True)
        t.start()
        self.threads.append(t)
        t = threading.Thread(target=self._heartbeat, name="testbed-node-heartbeat", daemon=True)
        t.start()
        self.threads.append(t)
        t = threading.Thread(target=self._resync, name="testbed-node-resync", daemon=True)
        t.start()
        self.threads.append(t)
        if not self.pods.synced.wait(timeout):
            raise RuntimeError("node stand-in: the pod watch did not sync")

    def stop(self) -> None:
        """Kill every pod process at once (SIGKILL to each process group) and stop the threads."""
        self.stopping.set()
        self.queue.shutdown()
        self.pvc_queue.shutdown()
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            for s in r.slots.values():
                _signal_group(s.proc, signal.SIGKILL)
        for inf in (self.pods, self.pvcs):
            inf.close()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for r in runners:
            r.join(timeout=2)

    def register_process(self, pid: int) -> None:
        if self._register:
            self._register(pid)

    # -- kubelet endpoint -----------------------------------------------------------------------------------
    def _start_kubelet_endpoint(self) -> None:
        handler = type("Handler", (_KubeletHandler,), {"node": self})
        server = ThreadingHTTPServer((HOST_IP, 0), handler)
        server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        assert self.serving_cert
        ctx.load_cert_chain(str(self.serving_cert[0]), str(self.serving_cert[1]))
        if self.client_ca:
            ctx.load_verify_locations(str(self.client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.kubelet_port = server.server_address[1]
        t = threading.Thread(target=server.serve_forever, name="testbed-kubelet-endpoint", daemon=True)
        t.start()
        self.threads.append(t)

    # -- node registration and heartbeats -------------------------------------------------------------------
    def _node_status(self) -> dict:
        t = now()
        conds = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "node stand-in is posting ready status"),
        ]
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": [
                {"type": c, "status": s, "reason": r, "message": m, "lastHeartbeatTime": t, "lastTransitionTime": t}
                for c, s, r, m in conds
            ],
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, platform.node()).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, platform.node())),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "schemagate test bed node stand-in (local processes)",
                "containerRuntimeVersion": "testbed-local://1",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        }

    def _register_node(self) -> None:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch,
                },
                "annotations": {"schemagate.dev/testbed": "node stand-in: Job pods run as local processes"},
            },
            "spec": {},
        }
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as e:
            if e.status != 409:
                raise
        self._post_status()

    def _post_status(self) -> None:
        self.core.patch_node_status(self.name, {"status": self._node_status()}, _content_type=MERGE,
                                    _preload_content=False)

    def _renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }
        try:
            self.coord.patch_namespaced_lease(self.name, "kube-node-lease", {"spec": body["spec"]},
                                              _content_type=MERGE, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
            node = _load(self.core.read_node(self.name, _preload_content=False))
            body["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node["metadata"]["uid"]}
            ]
            self.coord.create_namespaced_lease("kube-node-lease", body, _preload_content=False)

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(self.heartbeat_seconds):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= 40:
                    self._post_status()
                    last_status = time.monotonic()
            except Exception as e:
                if not self.stopping.is_set():
                    log.warning("node heartbeat failed: %s", e)

    def _resync(self) -> None:
        while not self.stopping.wait(30):
            for pod in self.pods.items():
                self.queue.add(_key(pod))
            for pvc in self.pvcs.items():
                self.pvc_queue.add(_key(pvc))

    # -- workers --------------------------------------------------------------------------------------------
    def _worker(self, queue: WorkQueue, sync: Callable[[str], None]) -> None:
        failures: dict[str, int] = {}
        while True:
            key = queue.get()
            if key is None:
                return
            try:
                sync(key)
                failures.pop(key, None)
            except Exception as e:
                if self.stopping.is_set():
                    queue.done(key)
                    return
                n = failures[key] = failures.get(key, 0) + 1
                delay = min(0.2 * 2**n, 10)
                level = logging.WARNING if n > 2 else logging.INFO
                log.log(level, "sync %s failed (%s: %s); retry in %.1fs", key, type(e).__name__,
                        getattr(e, "body", None) or e, delay)
                queue.add_after(key, delay)
            finally:
                queue.done(key)

    def _on_pod(self, typ: str, pod: dict) -> None:
        key = _key(pod)
        if typ == "DELETED":
            uid = pod["metadata"]["uid"]
            with self.lock:
                runner = self.runners.get(uid)
            if runner:
                runner.gone = True
                runner.request_kill(0)
        self.queue.add(key)

    def _on_pvc(self, typ: str, pvc: dict) -> None:
        if typ == "DELETED":
            name = f"testbed-pvc-{pvc['metadata']['uid']}"
            try:
                self.core.delete_persistent_volume(name, _preload_content=False)
            except ApiException:
                pass
            except Exception:  # noqa: S110
                pass
            return
        self.pvc_queue.add(_key(pvc))

    def runner_finished(self, runner: PodRunner) -> None:
        with self.lock:
            self.runners.pop(runner.uid, None)
        if not self.stopping.is_set():
            self.queue.add(f"{runner.ns}/{runner.pod_name}")

    # -- scheduling and kubelet ---------------------------------------------------------------------------------
    def _sync_pod(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None:
            return
        meta, spec = pod["metadata"], pod["spec"]
        status = pod.get("status") or {}
        node = spec.get("nodeName")
        if meta.get("deletionTimestamp"):
            if node == self.name:
                with self.lock:
                    runner = self.runners.get(meta["uid"])
                if runner is not None:
                    runner.request_kill(meta.get("deletionGracePeriodSeconds", 30))
                else:
                    self.finalize_deletion(meta["namespace"], meta["name"], meta["uid"], pod)
            return
        if not node:
            self._schedule(pod)
            return
        if node != self.name:
            return
        if should_execute(pod):
            if status.get("phase") in ("Succeeded", "Failed"):
                return
            with self.lock:
                if meta["uid"] in self.runners:
                    return
                known = self.by_name.get((meta["namespace"], meta["name"]))
                if known is not None and known.uid == meta["uid"]:
                    return  # already ran to completion here; its final status is on its way
                runner = PodRunner(self, pod)
                self.runners[meta["uid"]] = runner
                self.by_name[(meta["namespace"], meta["name"])] = runner
            runner.start()
        else:
            self._mark_running(pod)

    def _schedule(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return  # another scheduler's pod (none runs here): stays Pending, as in a real cluster
        gates = spec.get("schedulingGates") or []
        if gates:
            conds = (pod.get("status") or {}).get("conditions") or []
            if not any(c["type"] == "PodScheduled" and c.get("reason") == "SchedulingGated" for c in conds):
                cond = _cond("PodScheduled", False, "SchedulingGated",
                             "Scheduling is blocked due to non-empty scheduling gates")
                self.core.patch_namespaced_pod_status(
                    meta["name"], meta["namespace"],
                    {"status": {"conditions": _merge_conditions(conds, [cond])}},
                    _content_type=MERGE, _preload_content=False,
                )
            return
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)
            log.info("bound pod %s/%s to %s", meta["namespace"], meta["name"], self.name)
        except ApiException as e:
            if e.status in (404, 409):  # gone, or already bound (we will see the update)
                return
            raise

    def _mark_running(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        if status.get("phase") == "Running" and all(
            cs.get("ready") for cs in status.get("containerStatuses") or [{}]
        ) and len(status.get("containerStatuses") or []) == len(spec.get("containers") or []):
            return
        t = now()
        start = status.get("startTime") or t

        def cs(c: dict, ready: bool, running: bool) -> dict:
            state = {"running": {"startedAt": start}} if running else {
                "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": start, "finishedAt": start}}
            return {
                "name": c["name"], "image": c.get("image", ""), "imageID": f"testbed-local://{c.get('image', '')}",
                "containerID": f"testbed://{meta['uid'][:8]}-{c['name']}-0", "ready": ready, "started": running,
                "restartCount": 0, "state": state,
            }

        new = {
            "phase": "Running",
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": start,
            "conditions": _merge_conditions(status.get("conditions") or [], [
                _cond("PodReadyToStartContainers", True),
                _cond("Initialized", True),
                _cond("Ready", True),
                _cond("ContainersReady", True),
                _cond("PodScheduled", True),
            ]),
            "containerStatuses": [cs(c, True, True) for c in spec.get("containers") or []],
        }
        if spec.get("initContainers"):
            new["initContainerStatuses"] = [
                cs(c, c.get("restartPolicy") == "Always", c.get("restartPolicy") == "Always")
                for c in spec["initContainers"]
            ]
        self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": new},
                                              _content_type=MERGE, _preload_content=False)
        log.info("marked pod %s/%s Running and Ready (not executed)", meta["namespace"], meta["name"])

    def finalize_deletion(self, namespace: str, name: str, uid: str, pod: dict | None = None) -> None:
        """What the kubelet does once a deleted pod's containers are gone: delete it with grace period 0."""
        if pod is not None and not should_execute(pod):
            status = pod.get("status") or {}
            if status.get("phase") == "Running":
                # mark the containers terminated (143, as after SIGTERM) so controllers see a clean stop
                t = now()
                css = []
                for c in status.get("containerStatuses") or []:
                    started = (c.get("state") or {}).get("running", {}).get("startedAt") or t
                    css.append({**c, "ready": False, "started": False, "state": {"terminated": {
                        "exitCode": 143, "reason": "Error", "startedAt": started, "finishedAt": t}}})
                try:
                    self.core.patch_namespaced_pod_status(
                        name, namespace, {"status": {"containerStatuses": css, "conditions": _merge_conditions(
                            status.get("conditions") or [], [_cond("Ready", False, "PodCompleted"),
                                                             _cond("ContainersReady", False, "PodCompleted")])}},
                        _content_type=MERGE, _preload_content=False)
                except ApiException as e:
                    if e.status != 404:
                        log.info("pod %s/%s: status on deletion failed: %s", namespace, name, e.status)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body, grace_period_seconds=0,
                                            _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # -- lookups for env and volumes ------------------------------------------------------------------------
    def lookup(self, namespace: str, kind: str, name: str) -> dict | None:
        fn = self.core.read_namespaced_secret if kind == "Secret" else self.core.read_namespaced_config_map
        try:
            return _load(fn(name, namespace, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def service_account_token(self, namespace: str, sa: str, pod: str, pod_uid: str, audience: str | None,
                              expiration: int) -> str:
        spec: dict[str, Any] = {
            "expirationSeconds": max(int(expiration), 600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid},
        }
        if audience:
            spec["audiences"] = [audience]
        try:
            resp = self.core.create_namespaced_service_account_token(
                sa, namespace, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
                _preload_content=False,
            )
        except ApiException as e:
            raise ConfigError(f'failed to fetch token: serviceaccounts "{sa}" token request: {e.status} {e.reason}') from e
        return _load(resp)["status"]["token"]

    # -- PersistentVolumeClaims: a local directory each -------------------------------------------------------
    def _sync_pvc(self, key: str) -> None:
        pvc = self.pvcs.get(key)
        if pvc is None or pvc["metadata"].get("deletionTimestamp"):
            return
        spec = pvc.get("spec") or {}
        if spec.get("volumeName") or (pvc.get("status") or {}).get("phase") != "Pending":
            return
        if spec.get("selector") or spec.get("dataSource") or spec.get("dataSourceRef"):
            return
        ns, name, uid = pvc["metadata"]["namespace"], pvc["metadata"]["name"], pvc["metadata"]["uid"]
        path = self.claim_dir(ns, name)
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage") or "1Gi"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"testbed-pvc-{uid}", "labels": {PROVISIONED_LABEL: "true"},
                         "annotations": {"pv.kubernetes.io/provisioned-by": "schemagate-testbed"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": spec.get("storageClassName") or "",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                             "uid": uid},
            },
        }
        try:
            self.core.create_persistent_volume(pv, _preload_content=False)
            log.info("provisioned %s for claim %s/%s at %s", pv["metadata"]["name"], ns, name, path)
        except ApiException as e:
            if e.status != 409:
                raise
