"""``schemagate wait``: block until one DatabaseMigration is Ready (for init containers and CI).

Needs only ``get`` on that one resource (a Role with ``resourceNames: [<name>]``): it polls, it does not
list or watch. It reads the status the same way as the rollout gate (:func:`schemagate.core.gate.migration_state`):
Ready means phase Succeeded and ``Ready=True`` for the *current* generation, and, with ``--revision``,
``status.currentRevision`` equal to it.

Outside a cluster, ``--kubeconfig`` and ``--context`` choose the kubeconfig file and context (and so the default
namespace); either one skips the in-cluster service account.

Exit codes (:class:`WaitExit`):
  0    Ready
  3    Blocked or Failed for the current generation (fails fast; the reason is printed and written to the
       termination-message file)
  4    cannot read the DatabaseMigration: forbidden/unauthorized (RBAC) or no Kubernetes configuration
  124  timed out (the convention of coreutils ``timeout``); a missing DatabaseMigration is waited for
  2    usage error (argparse)
Transient API errors are retried until the timeout.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from schemagate import API_GROUP, API_VERSION
from schemagate.contract import durations
from schemagate.contract.errors import Forbidden, InvalidInput, NotFound
from schemagate.core.gate import GateReason, migration_state

PLURAL = "databasemigrations"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
TERMINATION_LOG_ENV = "SCHEMAGATE_TERMINATION_LOG"


class WaitExit(enum.IntEnum):
    READY = 0
    BLOCKED_OR_FAILED = 3
    ACCESS_ERROR = 4
    TIMEOUT = 124


class AccessError(Exception):
    """The DatabaseMigration cannot be read (401/403 or no configuration): retrying will not help."""


@dataclass
class WaitResult:
    exit_code: WaitExit
    outcome: str  # Ready | Blocked | Failed | Timeout | AccessError
    reason: str
    message: str
    name: str
    namespace: str
    waited_seconds: float
    phase: str | None = None
    current_revision: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "WaitResult",
            "name": self.name,
            "namespace": self.namespace,
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "phase": self.phase,
            "currentRevision": self.current_revision,
            "waitedSeconds": round(self.waited_seconds, 2),
            "exitCode": int(self.exit_code),
        }


Getter = Callable[[], "Mapping[str, Any] | None"]


def wait_for(
    get: Getter,
    *,
    name: str,
    namespace: str,
    revision: str | None = None,
    timeout: float = 0.0,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _msg: None,
) -> WaitResult:
    """Poll ``get`` (returns the object, or None when it does not exist) until a final answer.

    ``timeout`` <= 0 waits forever. ``get`` raises :class:`AccessError` for permanent access problems; any
    other exception is logged and retried.
    """
    start = clock()
    last_line = None

    def result(answer: _Answer, obj: Mapping[str, Any] | None) -> WaitResult:
        status = (obj or {}).get("status") or {}
        return WaitResult(*answer, name, namespace, clock() - start, phase=status.get("phase"),
                          current_revision=status.get("currentRevision"))

    while True:
        obj, line, answer = _look(get, name, namespace, revision)
        if answer is not None:
            return result(answer, obj)
        if line != last_line:
            log(line)
            last_line = line
        elapsed = clock() - start
        if timeout > 0 and elapsed >= timeout:
            detail = last_line.removeprefix("waiting: ") if last_line else ""
            message = f"DatabaseMigration {namespace}/{name} not Ready after {timeout:g}s ({detail})"
            return result((WaitExit.TIMEOUT, "Timeout", "Timeout", message), obj)
        sleep(min(interval, timeout - elapsed) if timeout > 0 else interval)


# (exit code, outcome, reason, message) of a final answer
_Answer = tuple[WaitExit, str, str, str]


def _look(get: Getter, name: str, namespace: str,
          revision: str | None) -> tuple[Mapping[str, Any] | None, str, _Answer | None]:
    """One poll: (the object or None, the line to log while waiting, the final answer or None to go on).

    :class:`AccessError` from ``get`` is final; any other exception is transient (API server restarting,
    network, 5xx) and only logged."""
    try:
        obj = get()
    except AccessError as exc:
        return None, "", (WaitExit.ACCESS_ERROR, "AccessError", "Forbidden", str(exc))
    except Exception as exc:  # noqa: BLE001 - transient: API server restarting, network, 5xx
        return None, f"waiting: cannot read DatabaseMigration {namespace}/{name} yet ({type(exc).__name__}: {exc})", None
    if obj is None:
        return None, f"waiting: DatabaseMigration {namespace}/{name} does not exist yet", None
    ready, reason, message = migration_state(obj, revision)
    if ready:
        return obj, "", (WaitExit.READY, "Ready", reason.value, message)
    if reason in (GateReason.BLOCKED, GateReason.FAILED):
        outcome = "Blocked" if reason is GateReason.BLOCKED else "Failed"
        return obj, "", (WaitExit.BLOCKED_OR_FAILED, outcome, reason.value, message)
    return obj, f"waiting: {message}", None


# --- Kubernetes I/O -------------------------------------------------------------------------------------------


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace to use when ``--namespace`` is not given.

    With ``--kubeconfig`` or ``--context``: that kubeconfig context's namespace, else ``default``. Otherwise
    POD_NAMESPACE, else the service-account namespace, else the current kubeconfig context's, else ``default``
    (kubectl's order for a kubeconfig context)."""
    explicit = kubeconfig is not None or context is not None
    env = os.environ.get("POD_NAMESPACE")
    if env and not explicit:
        return env
    if not explicit:
        try:
            with open(SA_NAMESPACE_FILE, encoding="utf-8") as fh:
                ns = fh.read().strip()
                if ns:
                    return ns
        except OSError:
            pass
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts or [] if c.get("name") == context), None) if context else active
        ns = (chosen or {}).get("context", {}).get("namespace")
        if ns:
            return str(ns)
    except Exception:  # noqa: BLE001, S110 - no kubeconfig: fall through to "default"
        pass
    return "default"


def kubernetes_getter(name: str, namespace: str, kubeconfig: str | None = None,
                      context: str | None = None) -> Getter:
    """A getter over the official client.

    Without ``kubeconfig``/``context``: the in-cluster configuration first, then ``$KUBECONFIG``/~/.kube/config
    and its current context. With either: that kubeconfig file (default ``$KUBECONFIG``/~/.kube/config) and
    that context (default its current one), never the in-cluster configuration. Raises :class:`AccessError`
    when no configuration is usable (a missing file, an unknown context)."""
    from kubernetes import client, config

    from schemagate import k8s

    if kubeconfig is not None or context is not None:
        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        except Exception as exc:
            where = f"kubeconfig {kubeconfig or '$KUBECONFIG or ~/.kube/config'}"
            raise AccessError(f"{where}" + (f", context {context!r}" if context else "") + f": {exc}") from exc
        api = client.CustomObjectsApi(client.ApiClient(configuration=configuration))
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except Exception as exc:
                raise AccessError(f"no in-cluster service account and no usable kubeconfig: {exc}") from exc
        api = client.CustomObjectsApi()

    def get() -> Mapping[str, Any] | None:
        try:
            obj = k8s.call(api.get_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL, name)
        except NotFound:
            return None
        except Forbidden as exc:
            raise AccessError(
                f"{exc}: this identity may not get databasemigrations.{API_GROUP} "
                f"{namespace}/{name} (grant get on it with a Role using resourceNames)"
            ) from exc
        return obj if isinstance(obj, Mapping) else None

    return get


# --- command line ---------------------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """``300s``, ``5m``, ``1h30m``, ``1.5m`` -> seconds (``contract.durations``: the CRD's grammar); ``0`` means no
    limit. Raises ``argparse.ArgumentTypeError`` naming the value otherwise."""
    try:
        return durations.to_seconds(text, "duration")
    except InvalidInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("name", help="DatabaseMigration name")
    parser.add_argument(
        "-n",
        "--namespace",
        help="its namespace (default: $POD_NAMESPACE, the service account's namespace, the kubeconfig context's)",
    )
    parser.add_argument(
        "--revision", help="also require status.currentRevision to equal this Alembic revision id"
    )
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file to use (default: the in-cluster service account, else $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--context", help="kubeconfig context to use (default: the kubeconfig's current context)"
    )
    parser.add_argument(
        "--timeout",
        type=parse_duration,
        default=0.0,
        help="give up after this long, exit 124 (e.g. 300s, 10m; default 0 = wait forever)",
    )
    parser.add_argument("--interval", type=parse_duration, default=2.0, help="poll interval (default 2s)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (WaitResult) at the end")
    parser.add_argument(
        "--termination-log",
        default=os.environ.get(TERMINATION_LOG_ENV),
        help=f"also write the final message to this file (default ${TERMINATION_LOG_ENV}), "
        "e.g. /dev/termination-log so `kubectl describe pod` shows why the init container failed",
    )
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``wait`` on the ``schemagate`` command's sub-parsers; dispatch with :func:`run`."""
    parser = subparsers.add_parser(
        "wait",
        help="wait until a DatabaseMigration is Ready (exit 0), Blocked/Failed (3), forbidden (4) or timed out (124)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, *, getter: Getter | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = sys.stderr
    kubeconfig, context = getattr(args, "kubeconfig", None), getattr(args, "context", None)
    namespace = args.namespace or default_namespace(kubeconfig, context)

    def log(line: str) -> None:
        print(line, file=err, flush=True)

    if getter is None:
        try:
            getter = kubernetes_getter(args.name, namespace, kubeconfig, context)
        except AccessError as exc:
            res = WaitResult(
                WaitExit.ACCESS_ERROR, "AccessError", "NoConfiguration", str(exc), args.name, namespace, 0.0
            )
            return _finish(res, args, out)
    log(
        f"waiting for DatabaseMigration {namespace}/{args.name} to be Ready"
        + (f" at revision {args.revision}" if args.revision else "")
        + (f" (timeout {args.timeout:g}s)" if args.timeout > 0 else "")
    )
    res = wait_for(
        getter,
        name=args.name,
        namespace=namespace,
        revision=args.revision,
        timeout=args.timeout,
        interval=max(args.interval, 0.05),
        log=log,
    )
    return _finish(res, args, out)


def _finish(res: WaitResult, args: argparse.Namespace, out: TextIO) -> int:
    if args.json:
        print(json.dumps(res.to_json()), file=out, flush=True)
    else:
        print(f"{res.outcome}: {res.message}", file=out, flush=True)
    if args.termination_log:
        try:
            with open(args.termination_log, "w", encoding="utf-8") as fh:
                fh.write(f"{res.outcome} ({res.reason}): {res.message}"[:4000])
        except OSError:
            pass
    return int(res.exit_code)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="schemagate wait", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # python -m schemagate.waiter
    sys.exit(main())
