"""The operator's configuration: one frozen :class:`OperatorSettings`, read once from the environment.

Every environment variable the operator (``schemagate operator`` / ``kopf run -m schemagate.handlers``) reads is a
field here, with its default and meaning in the field's metadata; ``docs/architecture.md``, the README and the
chart's ``values.yaml`` list them from :func:`describe` (a test keeps them in step). Nothing else in the control
plane reads ``os.environ``.

A bad value raises :class:`SettingsError` naming the variable and the value (a duration or a port that does not
parse, a negative number, an unknown pull policy, a missing runner image) and the operator does not start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from schemagate.contract import names
from schemagate.contract.errors import InvalidInput
from schemagate.core.decide import RetryPolicy
from schemagate.core.jobs import JobSettings

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")
# Namespace names (RFC 1123 labels), not Kopf's glob patterns: serving them needs no cluster-wide Namespace watch.
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SettingsError(InvalidInput):
    """An environment variable of the operator has a value it cannot use. ``variable`` (also ``field``) names it."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        super().__init__(f"environment variable {variable}={value!r}: {expected}", field=variable)
        self.variable = variable


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(name, raw, "expected a number of seconds, e.g. 10 or 2.5") from None
    if not value >= 0:  # also rejects NaN
        raise SettingsError(name, raw, "expected a number of seconds >= 0")
    return value


def _port(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) > 65535:
        raise SettingsError(name, raw, "expected a TCP port 0-65535 (0 turns the endpoint off)")
    return int(raw)


def _lease_seconds(name: str, raw: str) -> float:
    value = _seconds(name, raw)
    if value < 3:
        raise SettingsError(name, raw, "expected at least 3 seconds (the Lease is renewed every third of it)")
    return value


def _flag(name: str, raw: str) -> bool:
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise SettingsError(name, raw, "expected 1/true/yes or 0/false/no")


def _pull_policy(name: str, raw: str) -> str:
    if raw not in PULL_POLICIES:
        raise SettingsError(name, raw, "expected one of " + ", ".join(PULL_POLICIES))
    return raw


def _namespaces(name: str, raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _text(name: str, raw: str) -> str:
    return raw


def _setting(env: str, default: Any, meaning: str, parse: Callable[[str, str], Any], shown: str = "") -> Any:
    """A field read from ``env``; ``shown`` is the default as the docs print it (else ``default`` itself)."""
    text = shown or (",".join(default) if isinstance(default, tuple) else str(default).lower()
                     if isinstance(default, bool) else str(default))
    return field(default=default, metadata={"env": env, "default": text, "meaning": meaning, "parse": parse})


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator reads from its environment, parsed and checked once at start-up.

    Durations are seconds (float), ports TCP ports (0 = off). ``lease_namespace`` is resolved from
    ``SCHEMAGATE_LEASE_NAMESPACE``, else ``POD_NAMESPACE``, else the service account's namespace file, else
    ``default`` (see :meth:`from_env`)."""

    runner_image: str = _setting(
        names.ENV_RUNNER_IMAGE, "", "the operator's own image; the backup, precheck and verify Jobs run it and it provides "
        "the injected runner", _text, shown="(required)")
    runner_pull_policy: str = _setting(
        names.ENV_RUNNER_PULL_POLICY, "IfNotPresent", "imagePullPolicy of the step Jobs' operator-image containers",
        _pull_policy)
    lease_namespace: str = _setting(
        names.ENV_LEASE_NAMESPACE, "", "namespace of the per-database Leases (one run per database at a time)", _text,
        shown=f"`${names.ENV_POD_NAMESPACE}`")
    pod_namespace: str = _setting(
        names.ENV_POD_NAMESPACE, "", "the operator's namespace (downward API); holds the Leases unless "
        f"`{names.ENV_LEASE_NAMESPACE}` is set", _text, shown="the service account's namespace, else `default`")
    metrics_port: int = _setting(names.ENV_METRICS_PORT, 8000, "port of the Prometheus `/metrics` endpoint (0: off)", _port)
    health_port: int = _setting(names.ENV_HEALTH_PORT, 8080, "port of the liveness endpoint `/healthz` (0: off)", _port)
    retry_base_seconds: float = _setting(
        names.ENV_RETRY_BASE_SECONDS, 10.0, "seconds before the first new Job after a TransientError (doubles per attempt)",
        _seconds)
    retry_cap_seconds: float = _setting(names.ENV_RETRY_CAP_SECONDS, 300.0, "longest delay between transient retries, seconds",
                                        _seconds)
    secret_poll_seconds: float = _setting(
        names.ENV_SECRET_POLL_SECONDS, 30.0, "seconds between looks while a run waits for a missing Secret", _seconds)
    lock_poll_seconds: float = _setting(
        names.ENV_LOCK_POLL_SECONDS, 5.0, "seconds between looks while a run waits for the database Lease", _seconds)
    resync_seconds: float = _setting(
        names.ENV_RESYNC_SECONDS, 300.0, "every known DatabaseMigration is reconciled again at this interval, seconds", _seconds)
    namespaces: tuple[str, ...] = _setting(
        names.ENV_NAMESPACES, (), "comma-separated namespaces to watch when `--namespace` is not given", _namespaces,
        shown="(empty: all)")
    all_namespaces: bool = _setting(
        names.ENV_ALL_NAMESPACES, False, "`1`/`true`: watch every namespace (also the default when none is named)", _flag)
    instance: str = _setting(names.ENV_HOSTNAME, "schemagate", "`reportingInstance` of the operator's Events (the pod name)",
                             _text)
    leader_election: bool = _setting(
        names.ENV_LEADER_ELECTION, True, "`schemagate operator` acts only while it holds the leader Lease, so replicas "
        "stand by and take over when the leader dies (`0`/`false`: off)", _flag)
    leader_election_lease: str = _setting(
        names.ENV_LEADER_ELECTION_LEASE, "schemagate-leader", "name of the leader Lease (in the Lease namespace)", _text)
    leader_lease_seconds: float = _setting(
        names.ENV_LEADER_LEASE_SECONDS, 12.0, "seconds a leader Lease lasts without renewal; a standby takes over this "
        "long after the leader stopped renewing (renewed every third of it)", _lease_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, require_image: bool = True,
                 sa_namespace_file: str = SA_NAMESPACE_FILE) -> OperatorSettings:
        """Parse ``environ`` (default ``os.environ``). Raises :class:`SettingsError` naming the first bad variable;
        with ``require_image`` also when ``SCHEMAGATE_RUNNER_IMAGE`` is unset or empty."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            md = f.metadata
            raw = env.get(md["env"])
            if raw is None or raw == "":
                continue  # the dataclass default
            values[f.name] = md["parse"](md["env"], raw)
        if require_image and not values.get("runner_image"):
            raise SettingsError(names.ENV_RUNNER_IMAGE, env.get(names.ENV_RUNNER_IMAGE, ""),
                                "required: the operator's own image, used by step Jobs")
        settings = cls(**values)
        if not settings.pod_namespace:
            settings = replace(settings, pod_namespace=_read_namespace_file(sa_namespace_file))
        if not settings.lease_namespace:
            settings = replace(settings, lease_namespace=settings.pod_namespace)
        return settings

    @property
    def retry_policy(self) -> RetryPolicy:
        """The decision's timing (:class:`schemagate.core.decide.RetryPolicy`)."""
        return RetryPolicy(base_seconds=self.retry_base_seconds, cap_seconds=self.retry_cap_seconds,
                           secret_poll_seconds=self.secret_poll_seconds, lock_poll_seconds=self.lock_poll_seconds)

    @property
    def job_settings(self) -> JobSettings:
        """What Job rendering needs from the operator (:class:`schemagate.core.jobs.JobSettings`)."""
        return JobSettings(runner_image=self.runner_image, runner_pull_policy=self.runner_pull_policy)

    @property
    def exact_namespaces(self) -> bool:
        """Watching only exact namespace names (no globs): Kopf's cluster-wide Namespace scanning can be off."""
        return not self.all_namespaces and bool(self.namespaces) and \
            all(NAMESPACE_NAME.match(n) for n in self.namespaces)


def _read_namespace_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def describe() -> list[tuple[str, str, str]]:
    """``(variable, default, meaning)`` for every environment variable the operator reads, in field order."""
    return [(f.metadata["env"], f.metadata["default"], f.metadata["meaning"]) for f in fields(OperatorSettings)]


def markdown_table() -> str:
    """The environment-variable table of ``docs/architecture.md`` and the README."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{env}` | {default} | {meaning} |" for env, default, meaning in describe()]
    return "\n".join(rows) + "\n"
