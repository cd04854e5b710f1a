"""An in-memory stand-in for the Kubernetes client APIs the operator calls (CustomObjectsApi, BatchV1Api,
CoreV1Api, CoordinationV1Api), for unit tests of the reconciler, the Lease logic and the Kube wrapper without a
cluster. It keeps resourceVersions (a stale one gets 409, like the API server), answers raw
(``_preload_content=False``) responses and raises the client's real ``ApiException``. The e2e tests in tests/e2e
run the same code against the real kube-apiserver.

``FakeKube`` is the real :class:`schemagate.k8s.Kube` over these fakes (no kubeconfig is loaded).
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from schemagate import k8s

Obj = dict[str, Any]
_REASONS = {404: "Not Found", 409: "Conflict", 403: "Forbidden", 422: "Unprocessable Entity"}


class Resp:
    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj).encode()


def fail(status: int) -> ApiException:
    return ApiException(status=status, reason=_REASONS.get(status, "Error"))


def merge(target: Obj, patch: Obj) -> None:
    """RFC 7386 merge patch, in place."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def _matches(obj: Obj, label_selector: str | None) -> bool:
    if not label_selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in (part.split("=", 1) for part in label_selector.split(",")))


class Store:
    """Objects by (kind, namespace, name), with resourceVersions and uids."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.rv = itertools.count(100)
        self.writes: list[tuple[str, str, str, str]] = []  # (verb, kind, namespace, name)
        self.hooks: dict[tuple[str, str], Callable[[Obj], None]] = {}  # (verb, kind) -> called before the write

    def get(self, kind: str, ns: str, name: str) -> Obj:
        try:
            return self.objects[(kind, ns, name)]
        except KeyError:
            raise fail(404) from None

    def put(self, kind: str, obj: Obj) -> Obj:
        md = obj.setdefault("metadata", {})
        md.setdefault("uid", f"uid-{kind.lower()}-{md['name']}")
        md["resourceVersion"] = str(next(self.rv))
        self.objects[(kind, md.get("namespace", ""), md["name"])] = obj
        return obj

    def create(self, kind: str, ns: str, body: Obj) -> Resp:
        hook = self.hooks.pop(("create", kind), None)
        if hook:
            hook(body)
        obj = copy.deepcopy(body)
        obj["metadata"]["namespace"] = ns
        if (kind, ns, obj["metadata"]["name"]) in self.objects:
            raise fail(409)
        self.writes.append(("create", kind, ns, obj["metadata"]["name"]))
        return Resp(self.put(kind, obj))

    def patch(self, kind: str, ns: str, name: str, body: Obj) -> Resp:
        hook = self.hooks.pop(("patch", kind), None)
        if hook:
            hook(body)
        obj = self.get(kind, ns, name)
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want and want != obj["metadata"]["resourceVersion"]:
            raise fail(409)
        merge(obj, {k: v for k, v in body.items() if k != "metadata"})
        self.writes.append(("patch", kind, ns, name))
        return Resp(self.put(kind, obj))

    def list(self, kind: str, ns: str | None, label_selector: str | None = None) -> Resp:
        items = [o for (k, n, _), o in self.objects.items()
                 if k == kind and (ns is None or n == ns) and _matches(o, label_selector)]
        return Resp({"items": items})


class FakeCustom:
    KINDS = {"databasemigrations": "DatabaseMigration", "databaserestores": "DatabaseRestore"}

    def __init__(self, store: Store) -> None:
        self.s = store

    def get_namespaced_custom_object(self, group, version, ns, plural, name, _preload_content=True):
        return Resp(self.s.get(self.KINDS[plural], ns, name))

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body, _content_type=None,
                                              _preload_content=True):
        assert _content_type == k8s.MERGE
        return self.s.patch(self.KINDS[plural], ns, name, body)


class FakeBatch:
    def __init__(self, store: Store) -> None:
        self.s = store

    def list_namespaced_job(self, ns, label_selector=None, _preload_content=True):
        return self.s.list("Job", ns, label_selector)

    def create_namespaced_job(self, ns, body, _preload_content=True):
        return self.s.create("Job", ns, body)

    def read_namespaced_job(self, name, ns, _preload_content=True):
        return Resp(self.s.get("Job", ns, name))

    def patch_namespaced_job(self, name, ns, body, _content_type=None, _preload_content=True):
        return self.s.patch("Job", ns, name, body)


class FakeCore:
    def __init__(self, store: Store) -> None:
        self.s = store
        self.events: list[Obj] = []

    def list_namespaced_pod(self, ns, label_selector=None, field_selector=None, _preload_content=True):
        return self.s.list("Pod", ns, label_selector)

    def list_pod_for_all_namespaces(self, field_selector=None, _preload_content=True):
        return self.s.list("Pod", None)

    def read_namespaced_secret(self, name, ns, _preload_content=True):
        return Resp(self.s.get("Secret", ns, name))

    def create_namespaced_event(self, ns, body, _preload_content=True):
        self.events.append(body)
        return Resp(body)

    def list_namespaced_event(self, ns, field_selector=None, _preload_content=True):
        """Events stored as kind "Event" (the Job controller's), filtered by the ``involvedObject.kind``,
        ``involvedObject.name`` and ``reason`` terms of ``field_selector`` as the API server does."""
        terms = dict(t.split("=", 1) for t in (field_selector or "").split(",") if t)

        def field(o: Obj, path: str) -> str:
            for part in path.split("."):
                o = o.get(part) or {}
            return str(o) if o else ""

        listed = json.loads(self.s.list("Event", ns).data)["items"]
        items = [o for o in listed if all(field(o, k) == v for k, v in terms.items())]
        return Resp({"items": items})


class FakeCoordination:
    def __init__(self, store: Store) -> None:
        self.s = store

    def read_namespaced_lease(self, name, ns, _preload_content=True):
        return Resp(self.s.get("Lease", ns, name))

    def create_namespaced_lease(self, ns, body, _preload_content=True):
        return self.s.create("Lease", ns, body)

    def patch_namespaced_lease(self, name, ns, body, _content_type=None, _preload_content=True):
        assert _content_type == k8s.MERGE
        return self.s.patch("Lease", ns, name, body)


class FakeKube(k8s.Kube):
    """The real Kube over the in-memory APIs above."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.core = FakeCore(self.store)
        self.batch = FakeBatch(self.store)
        self.custom = FakeCustom(self.store)
        self.coord = FakeCoordination(self.store)
        self.instance = "test"
        self.writes = k8s.WriteCounter()

    # --- what the cluster would do, for the tests -----------------------------------------------------------

    def add_migration(self, body: Obj, status: Obj | None = None) -> Obj:
        obj = copy.deepcopy(body)
        if status is not None:
            obj["status"] = status
        return self.store.put("DatabaseMigration", obj)

    def migration(self, ns: str, name: str) -> Obj:
        return self.store.get("DatabaseMigration", ns, name)

    def add_restore(self, body: Obj) -> Obj:
        return self.store.put("DatabaseRestore", copy.deepcopy(body))

    def restore(self, ns: str, name: str) -> Obj:
        return self.store.get("DatabaseRestore", ns, name)

    def add_secret(self, ns: str, name: str, data: dict[str, str]) -> None:
        import base64

        enc = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.store.put("Secret", {"metadata": {"name": name, "namespace": ns}, "data": enc})

    def add_lease(self, ns: str, name: str, holder: str | None) -> None:
        self.store.put("Lease", {"metadata": {"name": name, "namespace": ns}, "spec": {"holderIdentity": holder}})

    def lease_holder(self, ns: str, name: str) -> str | None:
        return (self.store.get("Lease", ns, name).get("spec") or {}).get("holderIdentity")

    def job(self, ns: str, name: str) -> Obj:
        return self.store.get("Job", ns, name)

    def finish_job(self, ns: str, name: str, message: str, exit_code: int, init: bool = False) -> None:
        """The Job's pod terminated with ``message`` (the termination message) and ``exit_code``; the Job gets
        its Complete or Failed condition (batch/v1)."""
        job = self.job(ns, name)
        ctype = "Complete" if exit_code == 0 else "Failed"
        job["status"] = {"conditions": [{"type": ctype, "status": "True"}]}
        term = {"terminated": {"exitCode": exit_code, "message": message}}
        key = "initContainerStatuses" if init else "containerStatuses"
        self.store.put("Pod", {"metadata": {"name": f"{name}-pod", "namespace": ns, "labels": {"job-name": name},
                                            "creationTimestamp": "2025-01-01T12:00:00Z"},
                               "status": {key: [{"name": "step", "state": term}]}})
