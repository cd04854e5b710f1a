"""Every Kubernetes API call the operator makes (synchronous ``kubernetes`` client; the handlers run these in
threads). Responses are read raw (``_preload_content=False``) and parsed as JSON: cheaper than the client's
models, and the core works on plain dicts anyway.

The database Lease (``coordination.k8s.io/v1``) lives in the operator's namespace
(``SCHEMAGATE_LEASE_NAMESPACE`` or ``POD_NAMESPACE``), is named ``schemagate-db-<sha256(identity)[:16]>`` and is
held by ``<namespace>/<name>/<uid>`` of a DatabaseMigration from its first step Job until its run ends and no Job of
it is active. A holder that no longer exists, or that is finished (terminal or suspended, no active Job), is stale
and may be replaced. Secrets are read only to learn that they exist and, for ``urlFrom``, the database's host,
port and name (in memory; the URL never leaves this process and is never logged).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import threading
from collections import Counter
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from schemagate.core import jobs as J
from schemagate.core import status as S
from schemagate.core.decide import ACTIVE, FAILED, SUCCEEDED, JobObs, LockObs
from schemagate.core.model import GROUP, KIND, PLURAL, VERSION, Database, identity_hash
from schemagate.runner.db import redact

log = logging.getLogger("schemagate.k8s")

LEASE_PREFIX = "schemagate-db-"
MERGE = "application/merge-patch+json"


def lease_namespace() -> str:
    ns = os.environ.get("SCHEMAGATE_LEASE_NAMESPACE") or os.environ.get("POD_NAMESPACE")
    if ns:
        return ns
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "default"


def lease_name(identity: str) -> str:
    return LEASE_PREFIX + identity_hash(identity)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _micro(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
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
        self.writes = WriteCounter()

    # ----------------------------------------------------------------------------------------------------------
    # DatabaseMigration

    def get_migration(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            r = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return json.loads(r.data)

    def patch_status(self, ns: str, name: str, patch: dict[str, Any], resource_version: str | None) -> str:
        """Merge-patch ``status``; with ``resource_version`` a concurrent change fails with 409. Returns the new rv."""
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        r = self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, body,
                                                             _content_type=MERGE, _preload_content=False)
        self.writes.add("status")
        return str(json.loads(r.data)["metadata"]["resourceVersion"])

    # ----------------------------------------------------------------------------------------------------------
    # Jobs and their results

    def list_jobs(self, ns: str, uid: str) -> list[dict[str, Any]]:
        r = self.batch.list_namespaced_job(ns, label_selector=f"{J.LABEL_UID}={uid}", _preload_content=False)
        return list(json.loads(r.data).get("items") or [])

    def create_job(self, manifest: dict[str, Any]) -> str:
        """'created', 'exists' (409 and ours: adopted), or 'foreign' (409, owned by someone else)."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            self.batch.create_namespaced_job(ns, manifest, _preload_content=False)
            self.writes.add("job")
            return "created"
        except ApiException as e:
            if e.status != 409:
                raise
        try:
            r = self.batch.read_namespaced_job(name, ns, _preload_content=False)
        except ApiException as e:
            if e.status == 404:  # deleted in between: try again next time
                return "foreign"
            raise
        existing = json.loads(r.data)
        uid = manifest["metadata"]["ownerReferences"][0]["uid"]
        owners = [o.get("uid") for o in existing["metadata"].get("ownerReferences") or []]
        return "exists" if uid in owners else "foreign"

    def job_result(self, ns: str, job_name: str) -> tuple[dict[str, Any] | None, int | None, str]:
        """The StepResult of a finished Job's newest pod: (parsed termination message, exit code, other text)."""
        r = self.core.list_namespaced_pod(ns, label_selector=f"job-name={job_name}", _preload_content=False)
        pods = json.loads(r.data).get("items") or []
        if not pods:
            return None, None, ""
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        st = pods[-1].get("status") or {}
        statuses = list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])
        chosen = None
        for cs in statuses:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term and int(term.get("exitCode") or 0) != 0:
                chosen = term
                break
        if chosen is None and statuses:
            chosen = (statuses[-1].get("state") or {}).get("terminated")
        if not chosen:
            return None, None, ""
        return parse_termination(chosen.get("message") or "", chosen.get("exitCode"))

    # ----------------------------------------------------------------------------------------------------------
    # Secrets

    def check_database_secret(self, ns: str, db: Database) -> tuple[str | None, str | None]:
        """(error message or None, the database identity). Never returns or logs a credential."""
        url: str | None = None
        for ref in db.secret_refs():
            try:
                r = self.core.read_namespaced_secret(ref.name, ns, _preload_content=False)
            except ApiException as e:
                if e.status == 404:
                    return f'Secret "{ref.name}" not found in namespace "{ns}"', db.identity()
                if e.status == 403:
                    log.warning("cannot read Secret %s/%s (forbidden); assuming it exists", ns, ref.name)
                    continue
                raise
            data = json.loads(r.data).get("data") or {}
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

    # ----------------------------------------------------------------------------------------------------------
    # The database Lease

    def _read_lease(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            r = self.coord.read_namespaced_lease(name, ns, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return json.loads(r.data)

    def _holder_stale(self, holder: str) -> bool:
        parts = holder.split("/")
        if len(parts) != 3:
            return True
        ns, name, uid = parts
        other = self.get_migration(ns, name)
        if other is None or (other.get("metadata") or {}).get("uid") != uid:
            return True
        st = other.get("status") or {}
        finished = st.get("phase") in (*S.TERMINAL_PHASES, S.SUSPENDED) and \
            st.get("observedGeneration") == other["metadata"].get("generation")
        if not finished:
            return False
        jobs = self.list_jobs(ns, uid)
        return not any(job_state(j) == ACTIVE for j in jobs)

    def lease_state(self, ns: str, name: str, me: str) -> LockObs:
        lease = self._read_lease(ns, name)
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        if not holder:
            return LockObs(mine=False, holder=None)
        if holder == me:
            return LockObs(mine=True, holder=None)
        if self._holder_stale(holder):
            return LockObs(mine=False, holder=None)
        return LockObs(mine=False, holder="/".join(holder.split("/")[:2]))

    def acquire_lease(self, ns: str, name: str, me: str, identity_note: str = "") -> bool:
        now = _micro(_now())
        spec = {"holderIdentity": me, "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 3600}
        lease = self._read_lease(ns, name)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {J.LABEL_MANAGED_BY: J.MANAGED_BY},
                                 "annotations": {"schemagate.dev/database": identity_note} if identity_note else {}},
                    "spec": spec}
            try:
                self.coord.create_namespaced_lease(ns, body, _preload_content=False)
                self.writes.add("lease")
                return True
            except ApiException as e:
                if e.status == 409:
                    return False
                raise
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if holder == me:
            return True
        if holder and not self._holder_stale(holder):
            return False
        body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            self.coord.patch_namespaced_lease(name, ns, body, _content_type=MERGE, _preload_content=False)
            self.writes.add("lease")
            return True
        except ApiException as e:
            if e.status in (409, 404):
                return False
            raise

    def release_lease(self, ns: str, name: str, me: str) -> None:
        lease = self._read_lease(ns, name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != me:
            return
        body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "acquireTime": None, "renewTime": None}}
        try:
            self.coord.patch_namespaced_lease(name, ns, body, _content_type=MERGE, _preload_content=False)
            self.writes.add("lease")
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # ----------------------------------------------------------------------------------------------------------
    # Events

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        md = obj["metadata"]
        now = _now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": md["name"],
                               "namespace": md["namespace"], "uid": md["uid"]},
            "reason": reason, "message": redact(message)[:1024], "type": type_,
            "source": {"component": "schemagate"}, "reportingComponent": "schemagate.dev/operator",
            "reportingInstance": os.environ.get("HOSTNAME", "schemagate"),
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(md["namespace"], body, _preload_content=False)
            self.writes.add("event")
        except ApiException as e:  # events are best effort
            log.debug("event not posted: %s", e.status)


# --------------------------------------------------------------------------------------------------------------
# Pure helpers over listed objects (kept here: they know the Job API's shape)


def job_state(job: dict[str, Any]) -> str:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return SUCCEEDED
        if c.get("status") == "True" and c.get("type") == "Failed":
            return FAILED
    return ACTIVE


def job_failure(job: dict[str, Any]) -> tuple[str, str]:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Failed":
            return str(c.get("reason") or ""), str(c.get("message") or "")
    return "", ""


def job_observation(job: dict[str, Any], result: dict[str, Any] | None = None, exit_code: int | None = None,
                    text: str = "") -> JobObs:
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
    )


def parse_termination(message: str, exit_code: Any) -> tuple[dict[str, Any] | None, int | None, str]:
    code = int(exit_code) if exit_code is not None else None
    text = (message or "").strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
            if isinstance(d, dict) and d.get("kind") == "StepResult":
                return d, code, ""
        except ValueError:
            pass
    # FallbackToLogsOnError: the log tail of a crash. Keep the last line, redacted.
    last = text.splitlines()[-1] if text else ""
    return None, code, redact(last)[:512]
