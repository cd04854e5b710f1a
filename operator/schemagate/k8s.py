"""Every Kubernetes API call the operator makes (synchronous ``kubernetes`` client; the reconciler runs these in
threads). Responses are read raw (``_preload_content=False``) and parsed as JSON: cheaper than the client's
models, and the core works on plain dicts anyway.

Errors: the client's ``ApiException`` is translated once, in :func:`translate`, into
:class:`~schemagate.contract.errors.KubernetesApiError` and its subclasses ``NotFound`` (404),
``Conflict`` (409), ``Forbidden`` (401, 403) and ``Invalid`` (422) of the shared error tree; no other module looks at
an HTTP status. (Kubernetes API conventions, "HTTP Status codes".)

The database Lease (``coordination.k8s.io/v1``) lives in the operator's namespace
(``SCHEMAGATE_LEASE_NAMESPACE`` or ``POD_NAMESPACE``, see :mod:`schemagate.settings`), is named
``schemagate-db-<sha256(identity)[:16]>`` and is held by ``<namespace>/<name>/<uid>`` of a DatabaseMigration from
its first step Job until its run ends and no Job of it is active. A holder that no longer exists, or that is
finished (terminal or suspended, no active Job), is stale and may be replaced. Secrets are read only to learn that
they exist and, for ``urlFrom``, the database's host, port and name (in memory; the URL never leaves this process
and is never logged).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from schemagate.contract import names
from schemagate.contract.errors import Conflict, Forbidden, Invalid, KubernetesApiError, NotFound
from schemagate.contract.redact import redact
from schemagate.contract.stepresult import from_log, from_termination_message, is_cut
from schemagate.core import jobs as J
from schemagate.core import status as S
from schemagate.core.decide import ACTIVE, FAILED, SUCCEEDED, JobObs, JobState, LockObs
from schemagate.core.lease import RESTORE_KIND, Holder
from schemagate.core.model import GROUP, KIND, PLURAL, VERSION, Database, identity_hash
from schemagate.core.restore import PLURAL as RESTORE_PLURAL
from schemagate.core.restore import TERMINAL as RESTORE_TERMINAL

log = logging.getLogger("schemagate.k8s")

LEASE_PREFIX = "schemagate-db-"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Gated pods have not been scheduled, so they are Pending: a server-side filter that keeps the list small.
PENDING_PODS = "status.phase=Pending"
# A step prints its whole result as one line on stdout at the end (``--json``); the log is read only when the
# termination message had to be summarised. The bytes bound what one read can cost the operator.
LOG_TAIL_LINES = 50
LOG_LIMIT_BYTES = 8 * 1024 * 1024

Obj = dict[str, Any]
JobCreation = Literal["created", "exists", "foreign"]


# ----------------------------------------------------------------------------------------------------------------
# Errors


_BY_STATUS: dict[int, type[KubernetesApiError]] = {404: NotFound, 409: Conflict, 401: Forbidden, 403: Forbidden,
                                                   422: Invalid}


def translate(exc: ApiException) -> KubernetesApiError:
    """The one place an ``ApiException`` becomes a schemagate error (:mod:`schemagate.contract.errors`), by HTTP
    status; other statuses are a plain :class:`KubernetesApiError` (transient). The message is
    ``"<status> <reason phrase>: <the server's message>"``."""
    status = int(exc.status or 0)
    server = _server_message(exc)
    text = f"{status} {exc.reason or ''}".strip() + (f": {server}" if server else "")
    return _BY_STATUS.get(status, KubernetesApiError)(status, text)


def _server_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or "")[:512]
    except (ValueError, AttributeError):
        return ""


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a client method; raises :class:`KubernetesApiError` (or a subclass) instead of ``ApiException``."""
    try:
        return fn(*args, **kwargs)
    except ApiException as e:
        raise translate(e) from e


def request(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a raw client method (``_preload_content=False`` is added) and parse its JSON body.

    Raises :class:`KubernetesApiError` (or a subclass) instead of ``ApiException``."""
    r = call(fn, *args, _preload_content=False, **kwargs)
    return json.loads(r.data) if r.data else {}


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def micro_time(t: _dt.datetime) -> str:
    """A ``metav1.MicroTime`` string (RFC 3339 with microseconds, UTC)."""
    return _micro(t)


def _micro(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name(identity: str) -> str:
    """``schemagate-db-<sha256(identity)[:16]>``: the Lease that serializes runs on one database."""
    return LEASE_PREFIX + identity_hash(identity)


class WriteCounter:
    """Counts the API writes the operator makes (the benchmark reports writes per migration)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1
        try:
            from schemagate import metrics

            metrics.API_WRITES.labels(what).inc()
        except Exception:  # noqa: BLE001 - metrics are best effort
            pass


class Kube:
    """The operator's Kubernetes API: DatabaseMigrations, Jobs and their results, Secrets, the database Lease,
    Events and gated pods. Every method raises :class:`KubernetesApiError` (or a subclass), never ``ApiException``.

    ``instance`` is the ``reportingInstance`` of posted Events (the operator pod's name)."""

    def __init__(self, api_client: client.ApiClient | None = None, instance: str = "schemagate") -> None:
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.api = api_client
        # Typed as Any: the raw (_preload_content=False) calls return urllib3 responses, not models.
        self.core: Any = client.CoreV1Api(api_client)
        self.batch: Any = client.BatchV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.coord: Any = client.CoordinationV1Api(api_client)
        self.instance = instance
        self.writes = WriteCounter()

    # ------------------------------------------------------------------------------------------------------------
    # DatabaseMigration

    def _get(self, plural: str, ns: str, name: str) -> Obj | None:
        try:
            return request(self.custom.get_namespaced_custom_object, GROUP, VERSION, ns, plural, name)
        except NotFound:
            return None

    def _patch_status(self, plural: str, ns: str, name: str, patch: Obj, resource_version: str | None) -> str:
        body: Obj = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        r = request(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns, plural, name, body,
                    _content_type=MERGE)
        self.writes.add("status")
        return str(r["metadata"]["resourceVersion"])

    def get_migration(self, ns: str, name: str) -> Obj | None:
        """The DatabaseMigration, or None when it does not exist."""
        return self._get(PLURAL, ns, name)

    def patch_status(self, ns: str, name: str, patch: Obj, resource_version: str | None) -> str:
        """Merge-patch ``status``; with ``resource_version`` a concurrent change raises :class:`Conflict`.
        Returns the new resourceVersion."""
        return self._patch_status(PLURAL, ns, name, patch, resource_version)

    # ------------------------------------------------------------------------------------------------------------
    # DatabaseRestore

    def get_restore(self, ns: str, name: str) -> Obj | None:
        """The DatabaseRestore, or None when it does not exist."""
        return self._get(RESTORE_PLURAL, ns, name)

    def patch_restore_status(self, ns: str, name: str, patch: Obj, resource_version: str | None) -> str:
        """Merge-patch the DatabaseRestore's ``status`` (:class:`Conflict` on a stale ``resource_version``).
        Returns the new resourceVersion."""
        return self._patch_status(RESTORE_PLURAL, ns, name, patch, resource_version)

    # ------------------------------------------------------------------------------------------------------------
    # Jobs and their results

    def list_jobs(self, ns: str, uid: str) -> list[Obj]:
        """The Jobs of one DatabaseMigration (label ``schemagate.dev/migration-uid``)."""
        r = request(self.batch.list_namespaced_job, ns, label_selector=f"{J.LABEL_UID}={uid}")
        return list(r.get("items") or [])

    def create_job(self, manifest: Mapping[str, Any]) -> JobCreation:
        """'created', 'exists' (409 and owned by the same resource: adopted), or 'foreign' (409, owned by someone
        else, or deleted in between)."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            request(self.batch.create_namespaced_job, ns, manifest)
            self.writes.add("job")
            return "created"
        except Conflict:
            pass
        try:
            existing = request(self.batch.read_namespaced_job, name, ns)
        except NotFound:  # deleted in between: try again next time
            return "foreign"
        uid = manifest["metadata"]["ownerReferences"][0]["uid"]
        owners = [o.get("uid") for o in existing["metadata"].get("ownerReferences") or []]
        return "exists" if uid in owners else "foreign"

    def job_stuck(self, ns: str, job_name: str) -> tuple[str, str] | None:
        """Why an active Job's step cannot run, as ``(reason, message)``, or None while nothing says so.

        Reads the Job's pods (label ``job-name``) and, when it has none, the Job's ``FailedCreate`` Events
        (written by the Job controller when the API refuses the pod: Pod Security admission, a missing
        ServiceAccount, a quota). See :func:`stuck_reason`."""
        pods = request(self.core.list_namespaced_pod, ns, label_selector=f"job-name={job_name}").get("items") or []
        events: list[Obj] = []
        if not pods:
            selector = f"involvedObject.kind=Job,involvedObject.name={job_name},reason=FailedCreate"
            events = request(self.core.list_namespaced_event, ns, field_selector=selector).get("items") or []
        return stuck_reason(pods, events)

    def stop_job(self, ns: str, job_name: str) -> None:
        """End an active Job whose pod can never start (:meth:`job_stuck`): its ``activeDeadlineSeconds`` becomes
        1, so the Job controller fails it (``DeadlineExceeded``) and deletes its pods at once, gracefully: the
        precheck's shadow-server sidecar stops its throw-away server, the pod's emptyDirs go with the pod. The
        Job itself stays, as the record of the failed step. A Job already gone is not an error; without the
        ``patch`` right on Jobs (an older Role) a warning is logged and the Job ends at its own deadline."""
        try:
            request(self.batch.patch_namespaced_job, job_name, ns, {"spec": {"activeDeadlineSeconds": 1}},
                    _content_type=MERGE)
            self.writes.add("job")
        except NotFound:
            pass
        except Forbidden:
            log.warning("cannot end job %s/%s (no patch right on jobs); its pod stays until the Job's "
                        "activeDeadlineSeconds", ns, job_name)

    def job_result(self, ns: str, job_name: str) -> tuple[Obj | None, int | None, str]:
        """The StepResult of a finished Job's newest pod: ``(parsed termination message, exit code, other text)``
        (see :func:`pod_termination` and :func:`parse_termination`)."""
        pods = request(self.core.list_namespaced_pod, ns, label_selector=f"job-name={job_name}").get("items") or []
        source = termination_source(pods)
        if source is None:
            return None, None, pod_waiting(pods)
        term = source.terminated
        result, code, text = parse_termination(term.get("message") or "", term.get("exitCode"))
        if result is not None and result.get("truncated"):
            result = self.whole_result(ns, source, result)
        elif result is None and is_cut(term.get("message") or ""):
            result = self.whole_result(ns, source, None)
        if result is None and term.get("reason") == "OOMKilled":
            text = "OOMKilled: the kernel killed the step at its memory limit (spec.jobTemplate.resources)" + (
                f"; last output: {text}" if text else "")
        return result, code, text

    def whole_result(self, ns: str, source: TerminationSource, summary: Obj | None) -> Obj | None:
        """The whole StepResult of a step whose termination message is a summary (``truncated: true``: over the
        container's share of the pod's 12 KiB) or was cut by the kubelet (``summary`` None), read from the line the
        step printed on stdout in its container's log (``stepresult.from_log``; the last ``LOG_TAIL_LINES`` lines,
        at most ``LOG_LIMIT_BYTES``). ``summary`` when the log cannot be read (no ``get pods/log`` right, the pod
        gone, the node unreachable) or has no such line; a warning says why."""
        what = "summarised to fit" if summary is not None else "cut by the kubelet in"
        try:
            r = call(self.core.read_namespaced_pod_log, source.pod, ns, container=source.container,
                     previous=source.previous, tail_lines=LOG_TAIL_LINES, limit_bytes=LOG_LIMIT_BYTES,
                     _preload_content=False)
            whole = from_log(r.data.decode("utf-8", errors="replace"), summary)
        except KubernetesApiError as e:
            log.warning("the result of %s/%s container %s was %s its termination message and its log cannot be "
                        "read (%s): the %s is used", ns, source.pod, source.container, what, e,
                        "summary" if summary is not None else "exit code")
            return summary
        if whole is None:
            log.warning("the result of %s/%s container %s was %s its termination message and its log has no whole "
                        "result", ns, source.pod, source.container, what)
            return summary
        return whole

    # ------------------------------------------------------------------------------------------------------------
    # Secrets

    def check_database_secret(self, ns: str, db: Database) -> tuple[str | None, str]:
        """(error message or None, the database identity). Never returns or logs a credential."""
        url: str | None = None
        for ref in db.secret_refs():
            try:
                data = request(self.core.read_namespaced_secret, ref.name, ns).get("data") or {}
            except NotFound:
                return f'Secret "{ref.name}" not found in namespace "{ns}"', db.identity()
            except Forbidden:
                log.warning("cannot read Secret %s/%s (forbidden); assuming it exists", ns, ref.name)
                continue
            if ref.key not in data:
                return f'Secret "{ref.name}" in namespace "{ns}" has no key "{ref.key}"', db.identity()
            if ref is db.url_from:
                try:
                    url = base64.b64decode(data[ref.key]).decode()
                except (ValueError, UnicodeDecodeError):
                    url = None
        ident = db.identity(url)
        del url
        return None, ident

    # ------------------------------------------------------------------------------------------------------------
    # The database Lease

    def _read_lease(self, ns: str, name: str) -> Obj | None:
        try:
            return request(self.coord.read_namespaced_lease, name, ns)
        except NotFound:
            return None

    def _holder_stale(self, holder: str) -> bool:
        """Whether the Lease's holder no longer needs it: not a holder of ours, gone (or another object of its
        name), or finished with none of its Jobs active (a DatabaseMigration's run terminal or suspended for its
        generation; a DatabaseRestore Succeeded or Failed)."""
        h = Holder.parse(holder)
        if h is None:
            return True
        restore = h.kind == RESTORE_KIND
        other = self.get_restore(h.namespace, h.name) if restore else self.get_migration(h.namespace, h.name)
        if other is None or (other.get("metadata") or {}).get("uid") != h.uid:
            return True
        st = other.get("status") or {}
        if restore:
            finished = st.get("phase") in RESTORE_TERMINAL
        else:
            finished = st.get("phase") in (*S.TERMINAL_PHASES, S.SUSPENDED) and \
                st.get("observedGeneration") == other["metadata"].get("generation")
        if not finished:
            return False
        return not any(job_state(j) == ACTIVE for j in self.list_jobs(h.namespace, h.uid))

    def lease_state(self, ns: str, name: str, me: str) -> LockObs:
        """The Lease ``ns/name`` as seen by holder id ``me``: mine, held by a live other (``holder``: its
        :meth:`schemagate.core.lease.Holder.describe`, ``namespace/name`` or ``DatabaseRestore namespace/name``),
        or free (absent, released, or held by a stale holder)."""
        lease = self._read_lease(ns, name)
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        if not holder:
            return LockObs(mine=False, holder=None, name=name)
        if holder == me:
            return LockObs(mine=True, holder=None, name=name)
        h = Holder.parse(holder)
        if h is None or self._holder_stale(holder):
            return LockObs(mine=False, holder=None, name=name)
        return LockObs(mine=False, holder=h.describe(), name=name)

    def acquire_lease(self, ns: str, name: str, me: str, identity_note: str = "") -> bool:
        """Take the Lease for ``me`` (create it, or replace a stale holder with the read ``resourceVersion``).
        False when another live holder has it or the race was lost (409/404)."""
        now = _micro(_now())
        spec = {"holderIdentity": me, "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 3600}
        lease = self._read_lease(ns, name)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {J.LABEL_MANAGED_BY: J.MANAGED_BY},
                                 "annotations": {names.ANNOTATION_DATABASE: identity_note} if identity_note else {}},
                    "spec": spec}
            try:
                request(self.coord.create_namespaced_lease, ns, body)
            except Conflict:
                return False
            self.writes.add("lease")
            return True
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if holder == me:
            return True
        if holder and not self._holder_stale(holder):
            return False
        body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            request(self.coord.patch_namespaced_lease, name, ns, body, _content_type=MERGE)
        except (Conflict, NotFound):
            return False
        self.writes.add("lease")
        return True

    def release_lease(self, ns: str, name: str, me: str) -> None:
        """Clear the holder when it is ``me`` (a lost race or a deleted Lease is not an error)."""
        lease = self._read_lease(ns, name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != me:
            return
        body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "acquireTime": None, "renewTime": None}}
        try:
            request(self.coord.patch_namespaced_lease, name, ns, body, _content_type=MERGE)
        except (Conflict, NotFound):
            return
        self.writes.add("lease")

    # ------------------------------------------------------------------------------------------------------------
    # The leader Lease (schemagate.leader)

    def read_lease(self, ns: str, name: str) -> Obj | None:
        """The Lease ``ns/name`` as a dict, or None when it does not exist."""
        return self._read_lease(ns, name)

    def write_lease_spec(self, ns: str, name: str, spec: Obj, resource_version: str | None) -> str | None:
        """Create the Lease with ``spec`` (``resource_version`` None) or merge-patch its spec guarded by
        ``resource_version``. Returns the new resourceVersion, or None when another writer won the race (409 or a
        deleted Lease). Other API errors raise :class:`ApiError`."""
        try:
            if resource_version is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": ns, "labels": {J.LABEL_MANAGED_BY: J.MANAGED_BY}},
                        "spec": spec}
                r = request(self.coord.create_namespaced_lease, ns, body)
            else:
                body = {"metadata": {"resourceVersion": resource_version}, "spec": spec}
                r = request(self.coord.patch_namespaced_lease, name, ns, body, _content_type=MERGE)
        except (Conflict, NotFound):
            return None
        self.writes.add("lease")
        return str(r["metadata"]["resourceVersion"])

    # ------------------------------------------------------------------------------------------------------------
    # Events and gated pods

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                   kind: str = KIND, api_version: str = f"{GROUP}/{VERSION}") -> None:
        """A core/v1 Event about ``obj`` (a DatabaseMigration unless ``kind``/``api_version`` say otherwise).
        Best effort: a failure is logged at debug level. The message is redacted and cut to 1024 characters."""
        md = obj.get("metadata") or {}
        stamp = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{md.get('name', 'object')}.", "namespace": md.get("namespace")},
            "involvedObject": {"apiVersion": api_version, "kind": kind, "name": md.get("name"),
                               "namespace": md.get("namespace"), "uid": md.get("uid")},
            "reason": reason, "message": redact(message)[:1024], "type": type_,
            "source": {"component": "schemagate"}, "reportingComponent": names.COMPONENT,
            "reportingInstance": self.instance, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            request(self.core.create_namespaced_event, md.get("namespace"), body)
        except KubernetesApiError as e:  # events are best effort
            log.debug("event on %s %s/%s not posted: %s", kind, md.get("namespace"), md.get("name"), e)
            return
        self.writes.add("event")

    def list_pending_pods(self, namespace: str | None = None) -> list[Obj]:
        """Pending pods (gated pods are never scheduled) in one namespace, or in all."""
        if namespace:
            r = request(self.core.list_namespaced_pod, namespace, field_selector=PENDING_PODS)
        else:
            r = request(self.core.list_pod_for_all_namespaces, field_selector=PENDING_PODS)
        return list(r.get("items") or [])

    def patch_pod(self, ns: str, name: str, json_patch: list[Obj]) -> None:
        """Apply an RFC 6902 JSON patch to a pod. A failed ``test`` operation raises :class:`Invalid`, a pod
        that is gone :class:`NotFound`."""
        request(self.core.patch_namespaced_pod, name, ns, json_patch, _content_type=JSON_PATCH)
        self.writes.add("pod-gate")


# ----------------------------------------------------------------------------------------------------------------
# Pure helpers over listed objects (kept here: they know the Job and Pod API's shape)


def job_state(job: Mapping[str, Any]) -> JobState:
    """Succeeded (condition Complete=True), Failed (Failed=True) or Active (batch/v1 Job conditions)."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return SUCCEEDED
        if c.get("status") == "True" and c.get("type") == "Failed":
            return FAILED
    return ACTIVE


def job_failure(job: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, message) of the Job's Failed=True condition, e.g. ('DeadlineExceeded', '...'); else ('', '')."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Failed":
            return str(c.get("reason") or ""), str(c.get("message") or "")
    return "", ""


def job_observation(job: Mapping[str, Any], result: Obj | None = None, exit_code: int | None = None,
                    text: str = "") -> JobObs:
    """A listed Job as the decision sees it (labels ``schemagate.dev/{step,generation,counter}``)."""
    labels = job["metadata"].get("labels") or {}
    reason, message = job_failure(job)
    return JobObs(
        name=job["metadata"]["name"],
        step=labels.get(J.LABEL_STEP, ""),
        generation=int(labels.get(J.LABEL_GENERATION) or 0),
        counter=int(labels.get(J.LABEL_COUNTER) or 0),
        state=job_state(job),
        result=result,
        exit_code=exit_code,
        reason=reason,
        message=text or message,
        running=int((job.get("status") or {}).get("ready") or 0) > 0,
    )


@dataclass(frozen=True)
class TerminationSource:
    """Where a Job's result was read: the pod and container names, whether it is the container's previous run
    (``lastState``: its log is ``previous=true``) and the core/v1 ContainerStateTerminated."""

    pod: str
    container: str
    previous: bool
    terminated: Obj


def termination_source(pods: list[Obj]) -> TerminationSource | None:
    """The container whose ``terminated`` state holds a Job's result: of the newest pod (creationTimestamp), the
    first container that exited non-zero (init containers first, current or last state; sidecars never count), else
    the last container's. None when no pod or no terminated container. (core/v1 ContainerStatus.state.terminated.)"""
    if not pods:
        return None
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")[-1]
    st = newest.get("status") or {}
    pod = str(newest["metadata"].get("name") or "")
    # a sidecar (an init container with restartPolicy Always, e.g. the precheck's shadow-server) serves the step
    # and is stopped after it: its exit is never the step's result
    sidecars = {c.get("name") for c in (newest.get("spec") or {}).get("initContainers") or []
                if c.get("restartPolicy") == "Always"}
    statuses = [cs for cs in list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])
                if cs.get("name") not in sidecars]
    for cs in statuses:
        current = (cs.get("state") or {}).get("terminated")
        term = current or (cs.get("lastState") or {}).get("terminated")
        if term and int(term.get("exitCode") or 0) != 0:
            return TerminationSource(pod, str(cs.get("name")), current is None, term)
    if statuses and (statuses[-1].get("state") or {}).get("terminated"):
        return TerminationSource(pod, str(statuses[-1].get("name")), False, statuses[-1]["state"]["terminated"])
    return None


def pod_termination(pods: list[Obj]) -> Obj | None:
    """The ``terminated`` state that holds a Job's result (:func:`termination_source`), or None."""
    source = termination_source(pods)
    return source.terminated if source is not None else None


# core/v1 ContainerStateWaiting reasons after which a container never starts without a change by the user: the
# kubelet gave up pulling (ImagePullBackOff after its retries, ErrImageNeverPull with imagePullPolicy Never), the
# image name is invalid, or the container's configuration cannot be built (a missing Secret/ConfigMap key,
# runAsNonRoot with an image that runs as root). ErrImagePull alone is the first, possibly transient, failure.
STUCK_WAITING = ("ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError")

# A container the kubelet has restarted this many times after it failed is in a crash loop. Step pods have
# restartPolicy Never, so only their native sidecars (init containers with restartPolicy Always: the precheck's
# shadow-server, the rehearsal's scratch-guard) are ever restarted; one that keeps failing leaves the step waiting
# for it (the shadow server never comes) until the Job's activeDeadlineSeconds. The kubelet restarts a failed
# container at once the first time, then after 10 s, 20 s, ... (CrashLoopBackOff, at most 5 min; kubelet.go
# initialCrashLoopBackOff), so the third restart comes about 30 s after the first failure; one or two restarts
# (a transient fault) are tolerated.
CRASH_LOOP_RESTARTS = 3
CRASH_LOOP = "CrashLoopBackOff"  # the kubelet's waiting reason for a container in that loop (kuberuntime doBackOff)


def stuck_reason(pods: list[Obj], events: list[Obj]) -> tuple[str, str] | None:
    """``(reason, message)`` when an active Job's step cannot run until someone changes something, else None.

    ``pods``: the Job's pods; a container waiting with a reason in :data:`STUCK_WAITING` gives that reason, a
    container of the newest pod in a crash loop (:func:`crash_loop`) gives ``CrashLoopBackOff``.
    ``events``: the Job's ``FailedCreate`` Events, used when it has no pod: the API server refused the pod
    (reason ``FailedCreate``, the Event's message, e.g. ``violates PodSecurity "restricted:latest"`` or
    ``serviceaccount "x" not found``). Messages are redacted and cut to 512 characters."""
    if pods:
        waiting = pod_waiting(pods)
        reason = waiting.split(":", 1)[0]
        if reason in STUCK_WAITING:
            return reason, f"the step's container cannot start ({waiting}); fix the image or pod settings in the " \
                           "spec, then retry"
        looping = crash_loop(pods)
        return (CRASH_LOOP, looping) if looping else None
    refused = [e for e in events if e.get("reason") == "FailedCreate"]
    if not refused:
        return None
    newest = sorted(refused, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))[-1]
    text = redact(str(newest.get("message") or ""))[:512]
    return "FailedCreate", f"the Job controller could not create the step's pod: {text}"


def crash_loop(pods: list[Obj]) -> str | None:
    """Why a container of the newest pod is in a crash loop, as a message naming the container, its restart
    count, its last termination and the fix; None when none is (or the pod has finished).

    A container is in a crash loop when the kubelet has restarted it at least :data:`CRASH_LOOP_RESTARTS` times
    (core/v1 ContainerStatus ``restartCount``) and its last run failed: ``lastState.terminated`` (or
    ``state.terminated`` before the kubelet has written its ``waiting: CrashLoopBackOff``) with a non-zero
    ``exitCode`` (``reason`` ``OOMKilled`` at the memory limit, ``Error`` otherwise). A sidecar that exits 0 and is
    restarted (the shadow server after the count) is not failing. Init container statuses are read first. The
    message carries the last termination's message (a StepResult's ``message``, else the log tail the kubelet
    kept with ``FallbackToLogsOnError``), redacted, and the whole is cut to 1024 characters."""
    if not pods:
        return None
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")[-1]
    st = newest.get("status") or {}
    if st.get("phase") in ("Succeeded", "Failed"):
        return None
    for cs in list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or []):
        restarts = int(cs.get("restartCount") or 0)
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        if restarts < CRASH_LOOP_RESTARTS or int(term.get("exitCode") or 0) == 0:
            continue
        name = str(cs.get("name") or "?")
        result, code, text = parse_termination(str(term.get("message") or ""), term.get("exitCode"))
        said = redact(str(result.get("message") or ""))[:400] if result else text[:400]
        last = f"{term.get('reason') or 'Error'}, exit code {code}" + (f": {said}" if said else "")
        msg = (f"container {name} of the step's pod keeps failing and the kubelet restarts it in a loop "
               f"(restarted {restarts} times; last exit: {last}); {_crash_loop_fix(name, term)}, then retry")
        return msg[:1024]
    return None


def _crash_loop_fix(container: str, term: Obj) -> str:
    """What to change for a container in a crash loop (:func:`crash_loop`), by its last termination reason and
    whether it is the precheck's throw-away server (:data:`schemagate.core.jobs.SHADOW_SERVER`)."""
    shadow = container == J.SHADOW_SERVER
    if term.get("reason") == "OOMKilled":
        fix = "raise the memory limit, spec.jobTemplate.resources.limits.memory (it applies to every container"
        if shadow:
            fix += "; the throw-away server's data directory is on a memory-backed emptyDir and counts against it"
        return fix + ")"
    if shadow:
        return ("the throw-away shadow PostgreSQL does not start (the message above is its error); check "
                "spec.precheck.shadowDatabase.sizeLimit and spec.jobTemplate.resources, or use an existing empty "
                "database (spec.precheck.shadowDatabase.urlFrom)")
    return "fix what the message above names"


def pod_waiting(pods: list[Obj]) -> str:
    """Why the newest pod's containers never ran, as ``"REASON: message"`` (e.g. ``ErrImageNeverPull``,
    ``CreateContainerConfigError``; core/v1 ContainerStateWaiting written by the kubelet), or "" when none says."""
    if not pods:
        return ""
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")[-1]
    st = newest.get("status") or {}
    for cs in list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ("PodInitializing", "ContainerCreating"):
            return redact(f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))[:512]
    return ""


def parse_termination(message: str, exit_code: int | str | None) -> tuple[Obj | None, int | None, str]:
    """``(StepResult dict, exit code, text)``: the termination message parsed when it is a StepResult document
    (plain or compressed: ``contract.stepresult.from_termination_message``), else the last line of it
    (``FallbackToLogsOnError``: the log tail of a crash), redacted and cut to 512."""
    code = int(exit_code) if exit_code is not None else None
    d = from_termination_message(message)
    if d is not None:
        return d, code, ""
    text = (message or "").strip()
    last = text.splitlines()[-1] if text else ""
    return None, code, redact(last)[:512]
