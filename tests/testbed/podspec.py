"""Pure pieces of the node stand-in: how a container spec becomes a local process.

Nothing here talks to the API server; the node stand-in (`node.py`) passes lookups in. Unit tests live in
`test_podspec.py`.

- :func:`expand` is Kubernetes' ``$(VAR)`` expansion (``third_party/forked/golang/expansion``): ``$$`` escapes,
  unknown references stay as written.
- :class:`PathMapper` rewrites container paths (volume mount points, the termination-message path, an image's
  directories) to local directories inside strings: the command, args, env values and workingDir.
- :func:`container_env` resolves ``env``/``envFrom`` in kubelet order (``envFrom`` first, then ``env``; each
  ``value`` expanded against what came before), with ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef`` and
  ``resourceFieldRef``.
- :func:`termination_message` reads the message like the kubelet (last 4096 bytes of the file; with
  ``FallbackToLogsOnError`` and a non-zero exit, the last 80 lines / 2048 bytes of the log).
"""

from __future__ import annotations

import base64
import fnmatch
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

MAX_TERMINATION_MESSAGE = 4096  # kubelet: kubecontainer.MaxContainerTerminationMessageLength
MAX_POD_TERMINATION_MESSAGES = 12 * 1024  # kubelet: kubecontainer.MaxPodTerminationMessageLogLength
FALLBACK_LOG_LINES = 80  # kubelet: MaxContainerTerminationMessageLogLines
FALLBACK_LOG_BYTES = 2048  # kubelet: MaxContainerTerminationMessageLogLength
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


class ConfigError(Exception):
    """A container cannot start because its configuration refers to something missing
    (the kubelet reports ``CreateContainerConfigError`` and retries)."""

    reason = "CreateContainerConfigError"


class ImageNotPresent(ConfigError):
    """The image is not on the node and its ``imagePullPolicy`` is ``Never`` (the kubelet's waiting reason
    ``ErrImageNeverPull`` with its message; it keeps the container waiting and looks again)."""

    reason = "ErrImageNeverPull"


# ---------------------------------------------------------------------------------------------------------------
# $(VAR) expansion


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` references like the kubelet; ``$$`` yields ``$``; unknown names stay ``$(NAME)``."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------------
# container path -> local path


def _norm(path: str) -> str:
    path = re.sub(r"/+", "/", path)
    return path.rstrip("/") if path != "/" else path


class PathMapper:
    """Rewrites absolute container paths to local paths inside arbitrary strings, in one pass.

    A key matches only as a whole path component sequence: it must not be preceded by a word character, ``.``,
    ``-`` or ``/`` (so ``host/app`` in a URL is left alone) and must be followed by ``/``, the end, or a character
    that cannot continue a file name (so ``/app`` does not match ``/apple``). The longest key wins. The root ``/``
    cannot be mapped. One pass means a replacement is never rewritten again, even when the local path contains a
    container path (``/work`` -> ``/work/main/...``).
    """

    _BEFORE = r"(?<![\w.\-/])"
    _AFTER = r"(?=/|$|[^\w.\-])"

    def __init__(self, mapping: Mapping[str, str | Path]):
        self.mapping: dict[str, str] = {}
        for k, v in mapping.items():
            k = _norm(str(k))
            if not k.startswith("/") or k == "/":
                raise ValueError(f"container path must be absolute and not '/': {k!r}")
            self.mapping[k] = str(v)
        keys = sorted(self.mapping, key=len, reverse=True)
        self._re = (
            re.compile(self._BEFORE + "(" + "|".join(re.escape(k) for k in keys) + ")" + self._AFTER)
            if keys
            else None
        )

    def rewrite(self, text: str) -> str:
        if self._re is None or not text:
            return text
        return self._re.sub(lambda m: self.mapping[m.group(1)], text)

    def local(self, path: str) -> str:
        """The local path of one absolute container path (longest mapped prefix); unmapped paths are kept."""
        p = _norm(path)
        best = ""
        for k in self.mapping:
            if (p == k or p.startswith(k + "/")) and len(k) > len(best):
                best = k
        if not best:
            return path
        return self.mapping[best] + p[len(best) :]


# ---------------------------------------------------------------------------------------------------------------
# images


@dataclass
class ImageMapping:
    """How an image glob maps onto the local machine.

    - ``paths``: container path -> local directory or file (e.g. ``{"/app": "/work/main/examples/app"}``);
      volume mounts take precedence over these, as a mount shadows the image's files.
    - ``env``: extra environment (the image's ``ENV``), before the pod's own env.
    - ``path_prepend``: local directories put first on ``PATH`` (after rewriting).
    - ``workdir``: the image's ``WORKDIR`` (a container path, rewritten) used when the container has none.
    - ``entrypoint`` / ``cmd``: the image's ``ENTRYPOINT``/``CMD`` used when the container has no
      ``command``/``args`` (Kubernetes rules: ``command`` replaces both, ``args`` replaces ``cmd``).
    - ``absent``: the image is not on the node: a container of it never starts and waits with the kubelet's
      reason ``ErrImageNeverPull`` (the stand-in pulls nothing, so every image is as with ``imagePullPolicy:
      Never``; this is that case for an image that was never built).
    """

    pattern: str
    paths: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    path_prepend: list[str] = field(default_factory=list)
    workdir: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    absent: bool = False

    def matches(self, image: str) -> bool:
        return fnmatch.fnmatchcase(image, self.pattern) or fnmatch.fnmatchcase(_short_image(image), self.pattern)


def _short_image(image: str) -> str:
    """``docker.io/library/python:3.12`` -> ``python:3.12`` (so patterns can omit the default registry)."""
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if image.startswith(prefix):
            return image[len(prefix) :]
    return image


def find_image_mapping(image: str, mappings: list[ImageMapping]) -> ImageMapping | None:
    """The most recently added mapping whose glob matches the image."""
    for m in reversed(mappings):
        if m.matches(image):
            return m
    return None


def effective_argv(container: Mapping[str, Any], image: ImageMapping | None) -> list[str]:
    """``command``/``args`` combined with the image's entrypoint/cmd as the container runtime does."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command:
        return command + args
    entry = list(image.entrypoint or []) if image else []
    if args:
        return entry + args
    return entry + (list(image.cmd or []) if image else [])


# ---------------------------------------------------------------------------------------------------------------
# environment


def _quantity(value: str) -> Decimal:
    """Parse a Kubernetes quantity (``500m``, ``1Gi``, ``2``, ``1e3``) into a number."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?", str(value).strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r}")
    num = Decimal(m.group(1))
    mult = {
        None: Decimal(1),
        "n": Decimal("1e-9"),
        "u": Decimal("1e-6"),
        "m": Decimal("1e-3"),
        "k": Decimal(10) ** 3,
        "M": Decimal(10) ** 6,
        "G": Decimal(10) ** 9,
        "T": Decimal(10) ** 12,
        "P": Decimal(10) ** 15,
        "E": Decimal(10) ** 18,
        "Ki": Decimal(2) ** 10,
        "Mi": Decimal(2) ** 20,
        "Gi": Decimal(2) ** 30,
        "Ti": Decimal(2) ** 40,
        "Pi": Decimal(2) ** 50,
        "Ei": Decimal(2) ** 60,
    }[m.group(2)]
    return num * mult


def resource_field(container: Mapping[str, Any], ref: Mapping[str, Any], node_allocatable: Mapping[str, str]) -> str:
    """``resourceFieldRef``: the container's request/limit (limits default to the node's allocatable), divided by
    the divisor and rounded up, as the kubelet does."""
    resource = ref["resource"]  # e.g. limits.cpu, requests.memory
    kind, _, name = resource.partition(".")
    res = (container.get("resources") or {}).get(kind) or {}
    raw = res.get(name)
    if raw is None and kind == "limits":
        raw = node_allocatable.get(name)
    if raw is None and kind == "requests":
        raw = "0"
    divisor = _quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Decimal(1)
    return str(math.ceil(_quantity(raw or "0") / divisor))


def field_ref(pod: Mapping[str, Any], path: str, *, host_ip: str = "127.0.0.1") -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": host_ip,
        "status.podIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


Lookup = Callable[[str, str], "Mapping[str, Any] | None"]  # (kind, name) -> object dict or None


def _secret_data(obj: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in (obj.get("data") or {}).items():
        out[k] = base64.b64decode(v).decode("utf-8", errors="replace")
    for k, v in (obj.get("stringData") or {}).items():
        out[k] = v
    return out


def _configmap_data(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(obj.get("data") or {})


def object_data(kind: str, obj: Mapping[str, Any]) -> dict[str, str]:
    return _secret_data(obj) if kind == "Secret" else _configmap_data(obj)


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookup: Lookup,
    *,
    service_env: Mapping[str, str] | None = None,
    node_allocatable: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The container's environment in kubelet order, in the container's view (paths not yet rewritten).

    ``lookup(kind, name)`` returns the Secret/ConfigMap dict in the pod's namespace or ``None``. A missing
    required object or key raises :class:`ConfigError` with the kubelet's wording.
    """
    env: dict[str, str] = dict(service_env or {})
    order: list[str] = list(env)

    def put(name: str, value: str) -> None:
        if name not in env:
            order.append(name)
        env[name] = value

    def get_obj(kind: str, name: str, optional: bool) -> Mapping[str, Any] | None:
        obj = lookup(kind, name)
        if obj is None and not optional:
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        return obj

    for src in container.get("envFrom") or []:
        prefix = src.get("prefix") or ""
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = src.get(key)
            if not ref:
                continue
            obj = get_obj(kind, ref["name"], bool(ref.get("optional")))
            if obj is None:
                continue
            for k, v in object_data(kind, obj).items():
                if "=" in k or not k:
                    continue
                put(prefix + k, v)

    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var or var.get("value"):
            put(name, expand(var.get("value") or "", env))
            continue
        vf = var["valueFrom"] or {}
        if "fieldRef" in vf:
            put(name, field_ref(pod, vf["fieldRef"]["fieldPath"]))
        elif "resourceFieldRef" in vf:
            put(name, resource_field(container, vf["resourceFieldRef"], node_allocatable or {}))
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind, ref = ("Secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("ConfigMap", vf["configMapKeyRef"])
            optional = bool(ref.get("optional"))
            obj = get_obj(kind, ref["name"], optional)
            if obj is None:
                continue
            data = object_data(kind, obj)
            if ref["key"] not in data:
                if optional:
                    continue
                raise ConfigError(f"couldn't find key {ref['key']} in {kind} {pod['metadata']['namespace']}/{ref['name']}")
            put(name, data[ref["key"]])
        else:
            raise ConfigError(f"unsupported valueFrom for env {name}: {sorted(vf)}")
    return [(k, env[k]) for k in order]


# ---------------------------------------------------------------------------------------------------------------
# termination message


def _tail_bytes(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read()
    except OSError:
        return b""


def termination_message(message_file: Path, policy: str | None, exit_code: int, log_file: Path | None,
                        containers: int = 1) -> str:
    """What the kubelet puts into ``state.terminated.message``: the last 4096 bytes of the file (or of the log,
    ``FallbackToLogsOnError``), then cut to the container's share of the pod's 12 KiB, ``12288 // containers``
    (init, regular and ephemeral containers; kubelet ``status_manager.normalizeStatus``, which keeps the head)."""
    data = _tail_bytes(message_file, MAX_TERMINATION_MESSAGE)
    if not data and policy == "FallbackToLogsOnError" and exit_code != 0 and log_file is not None:
        data = _tail_bytes(log_file, 1 << 20)
        lines = data.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        data = b"".join(lines)[-FALLBACK_LOG_BYTES:]
    return data[:MAX_POD_TERMINATION_MESSAGES // max(1, containers)].decode("utf-8", errors="replace")
