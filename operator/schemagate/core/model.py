"""The DatabaseMigration spec as plain data, parsed from the resource body (pure: standard library only)."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

from schemagate.contract import durations, names
from schemagate.contract.checks import UserCheck

GROUP, VERSION, KIND, PLURAL = names.GROUP, names.VERSION, names.KIND, names.PLURAL
RETRY_ANNOTATION = names.ANNOTATION_RETRY

STEPS: tuple[str, ...] = tuple(s.value for s in names.STEPS)

def parse_duration(text: str) -> float:
    """'1m30s' -> 90.0 seconds (``contract.durations``, the CRD's grammar). Raises ``InvalidInput`` (a
    ``ValueError``) on anything else."""
    return durations.to_seconds(text)


def duration_ms(text: str) -> int:
    return durations.parse(text).to_milliseconds()


class SecretKeySelector(TypedDict):
    """core/v1 SecretKeySelector (``name``, ``key``)."""

    name: str
    key: str


class SecretSource(TypedDict, total=False):
    """``{secretKeyRef: {name, key}}`` (``spec.database.urlFrom``, ``spec.database.passwordFrom``)."""

    secretKeyRef: SecretKeySelector


class DatabaseSpec(TypedDict, total=False):
    """``spec.database``: a URL from a Secret, or host/port/name/user with a password from a Secret."""

    urlFrom: SecretSource
    host: str
    port: int
    name: str
    user: str
    passwordFrom: SecretSource
    sslMode: str


class CheckSpec(TypedDict):
    """One user check (``spec.precheck.checks[]``, ``spec.verify.checks[]``)."""

    name: str
    sql: str


class MigrationsSpec(TypedDict, total=False):
    """``spec.migrations``."""

    image: str
    directory: str
    config: str
    targetRevision: str
    databaseUrlEnv: str
    command: list[str]
    imagePullPolicy: str


class BackupSpec(TypedDict, total=False):
    """``spec.backup``."""

    enabled: bool
    volume: dict[str, Any]  # a core/v1 Volume source
    subPath: str
    retention: int
    jobs: int
    compression: str


class PrecheckSpec(TypedDict, total=False):
    """``spec.precheck``."""

    derive: bool
    maxViolations: int
    checks: list[CheckSpec]
    acceptUnevaluated: list[str]
    dataShadow: DataShadowSpec
    shadowDatabase: ShadowDatabaseSpec


class DataShadowSpec(TypedDict, total=False):
    """``spec.precheck.dataShadow``."""

    maxSize: str


class ShadowDatabaseSpec(TypedDict, total=False):
    """``spec.precheck.shadowDatabase``: an explicit, empty shadow database, or the throw-away server's volume."""

    urlFrom: SecretSource
    sizeLimit: str


class RehearsalJobSpec(TypedDict, total=False):
    """``spec.rehearsal.job``: the user's smoke test against the rehearsed copy."""

    image: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]]
    workingDir: str


class RehearsalSpec(TypedDict, total=False):
    """``spec.rehearsal``."""

    enabled: bool
    databaseUrlFrom: SecretSource
    maxSize: str
    job: RehearsalJobSpec


class VerifySpec(TypedDict, total=False):
    """``spec.verify``."""

    checks: list[CheckSpec]


class JobTemplateSpec(TypedDict, total=False):
    """``spec.jobTemplate``."""

    serviceAccountName: str
    resources: dict[str, Any]
    nodeSelector: dict[str, str]
    tolerations: list[dict[str, Any]]
    imagePullSecrets: list[dict[str, Any]]
    activeDeadlineSeconds: int
    runAsUser: int
    backoffLimit: int
    ttlSecondsAfterFinished: int


class MigrationSpec(TypedDict, total=False):
    """The DatabaseMigration ``spec`` (manifests/crd.yaml; docs/reference.md)."""

    database: DatabaseSpec
    migrations: MigrationsSpec
    backup: BackupSpec
    precheck: PrecheckSpec
    rehearsal: RehearsalSpec
    verify: VerifySpec
    lockTimeout: str
    statementTimeout: str
    jobTemplate: JobTemplateSpec
    suspend: bool
    allowDowngrade: bool
    maxDataLoss: int


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str

    @classmethod
    def parse(cls, d: SecretSource | None) -> SecretRef | None:
        ref = (d or {}).get("secretKeyRef")
        if not ref:
            return None
        return cls(name=str(ref["name"]), key=str(ref["key"]))


@dataclass(frozen=True)
class Database:
    url_from: SecretRef | None = None
    host: str | None = None
    port: int = 5432
    name: str | None = None
    user: str | None = None
    password_from: SecretRef | None = None
    ssl_mode: str | None = None

    @classmethod
    def parse(cls, d: DatabaseSpec) -> Database:
        return cls(
            url_from=SecretRef.parse(d.get("urlFrom")),
            host=d.get("host"),
            port=int(d.get("port") or 5432),
            name=d.get("name"),
            user=d.get("user"),
            password_from=SecretRef.parse(d.get("passwordFrom")),
            ssl_mode=d.get("sslMode"),
        )

    def secret_refs(self) -> list[SecretRef]:
        return [r for r in (self.url_from, self.password_from) if r is not None]

    def identity(self, url: str | None = None) -> str:
        """A stable identity of the database server + database name, never containing a credential.

        Host form: from the spec. URL form: from the URL's host, port and path when the caller read it from the
        Secret (in memory only); otherwise the Secret reference stands in for it."""
        if self.host:
            return db_identity(self.host, self.port, self.name or "")
        if url:
            ident = url_identity(url)
            if ident:
                return ident
        ref = self.url_from
        return f"secret:{ref.name}/{ref.key}" if ref else "unknown"


def db_identity(host: str, port: int | str, name: str) -> str:
    return f"{host.strip().lower()}:{int(port)}/{name}"


def url_identity(url: str) -> str | None:
    try:
        u = urllib.parse.urlsplit(url.strip())
        host = u.hostname or ""
        port = u.port or 5432
    except ValueError:
        return None
    name = u.path.lstrip("/")
    if not host:
        q = urllib.parse.parse_qs(u.query)
        host = (q.get("host") or [""])[0]
    if not host or not name:
        return None
    return db_identity(host, port, name)


def identity_hash(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


Check = UserCheck  # spec.precheck.checks / spec.verify.checks items


def _checks(items: list[CheckSpec] | None, field: str) -> tuple[Check, ...]:
    return UserCheck.parse_all(items, field)


@dataclass(frozen=True)
class Migrations:
    image: str
    directory: str = "/app"
    config: str = "alembic.ini"  # alembic.ini (relative to directory), package:path/alembic.ini, or a script location
    target_revision: str = "head"
    database_url_env: str = "DATABASE_URL"
    command: tuple[str, ...] = ()
    image_pull_policy: str | None = None


@dataclass(frozen=True)
class Backup:
    enabled: bool = False
    volume: dict[str, Any] = field(default_factory=dict)
    sub_path: str | None = None
    retention: int = 5
    jobs: int = 1  # > 1: pg_dump's directory format with that many parallel jobs
    compression: str | None = None  # pg_dump --compress METHOD[:LEVEL]; None: the runner's default


@dataclass(frozen=True)
class Precheck:
    """``spec.precheck``. ``shadow_url_from``: ``shadowDatabase.urlFrom`` (an existing, empty shadow database);
    None: the throw-away shadow server in the precheck Job's pod. ``shadow_memory``: ``shadowDatabase.sizeLimit``
    of the memory-backed volume the throw-away server lives on."""

    derive: bool = True
    max_violations: int = 0
    checks: tuple[Check, ...] = ()
    accept_unevaluated: tuple[str, ...] = ()  # spec.precheck.acceptUnevaluated
    data_shadow_max_size: str = "1Gi"  # spec.precheck.dataShadow.maxSize (a quantity)
    shadow_url_from: SecretRef | None = None
    shadow_memory: str = "1Gi"


@dataclass(frozen=True)
class Rehearsal:
    """``spec.rehearsal`` (off by default): ``database_url_from`` another server for the scratch database (None:
    the database's own server); ``max_size`` a Kubernetes quantity or None; ``job`` the user's smoke test
    (``RehearsalJobSpec`` as given) or None."""

    enabled: bool = False
    database_url_from: SecretRef | None = None
    max_size: str | None = None
    job: dict[str, Any] | None = None

    @classmethod
    def parse(cls, d: RehearsalSpec | None) -> Rehearsal:
        d = d or {}
        job = d.get("job")
        return cls(enabled=bool(d.get("enabled", False)), database_url_from=SecretRef.parse(d.get("databaseUrlFrom")),
                   max_size=str(d["maxSize"]) if d.get("maxSize") else None,
                   job=dict(job) if job else None)


@dataclass(frozen=True)
class JobTemplate:
    service_account_name: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    image_pull_secrets: tuple[dict[str, Any], ...] = ()
    active_deadline_seconds: int = 3600
    run_as_user: int = 10001
    backoff_limit: int = 0
    ttl_seconds_after_finished: int | None = None


@dataclass(frozen=True)
class Migration:
    """One DatabaseMigration: identity, generation, annotations that matter, and the parsed spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    database: Database
    migrations: Migrations
    backup: Backup = Backup()
    precheck: Precheck = Precheck()
    rehearsal: Rehearsal = Rehearsal()
    verify_checks: tuple[Check, ...] = ()
    lock_timeout: str = "5s"
    statement_timeout: str = "0s"
    job_template: JobTemplate = JobTemplate()
    suspend: bool = False
    allow_downgrade: bool = False  # spec.allowDowngrade: a target below the database runs a downgrade
    max_data_loss: int = 0  # spec.maxDataLoss: rows a downgrade may lose
    retry_token: str = ""
    spec_hash: str = ""

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Migration:
        meta = body.get("metadata") or {}
        spec = cast(MigrationSpec, body.get("spec") or {})
        mig: MigrationsSpec = spec.get("migrations") or {}
        bk: BackupSpec = spec.get("backup") or {}
        pc: PrecheckSpec = spec.get("precheck") or {}
        jt: JobTemplateSpec = spec.get("jobTemplate") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 1),
            database=Database.parse(spec.get("database") or {}),
            migrations=Migrations(
                image=str(mig.get("image", "")),
                directory=str(mig.get("directory") or "/app"),
                config=str(mig.get("config") or "alembic.ini"),
                target_revision=str(mig.get("targetRevision") or "head"),
                database_url_env=str(mig.get("databaseUrlEnv") or "DATABASE_URL"),
                command=tuple(str(a) for a in (mig.get("command") or ())),
                image_pull_policy=mig.get("imagePullPolicy"),
            ),
            backup=Backup(
                enabled=bool(bk.get("enabled", bool(bk.get("volume")))),  # a volume alone turns the backup on
                volume=dict(bk.get("volume") or {}),
                sub_path=bk.get("subPath"),
                retention=int(bk.get("retention", 5)),
                jobs=int(bk.get("jobs") or 1),
                compression=bk.get("compression"),
            ),
            precheck=Precheck(
                derive=bool(pc.get("derive", True)),
                max_violations=int(pc.get("maxViolations") or 0),
                checks=_checks(pc.get("checks"), "spec.precheck.checks"),
                accept_unevaluated=tuple(str(n) for n in (pc.get("acceptUnevaluated") or ())),
                data_shadow_max_size=str(pc.get("dataShadow", {}).get("maxSize") or "1Gi"),
                shadow_url_from=SecretRef.parse(pc.get("shadowDatabase", {}).get("urlFrom")),
                shadow_memory=str(pc.get("shadowDatabase", {}).get("sizeLimit") or "1Gi"),
            ),
            rehearsal=Rehearsal.parse(spec.get("rehearsal")),
            verify_checks=_checks((spec.get("verify") or {}).get("checks"), "spec.verify.checks"),
            lock_timeout=str(spec.get("lockTimeout") or "5s"),
            statement_timeout=str(spec.get("statementTimeout") or "0s"),
            job_template=JobTemplate(
                service_account_name=jt.get("serviceAccountName"),
                resources=dict(jt.get("resources") or {}),
                node_selector=dict(jt.get("nodeSelector") or {}),
                tolerations=tuple(jt.get("tolerations") or ()),
                image_pull_secrets=tuple(jt.get("imagePullSecrets") or ()),
                active_deadline_seconds=int(jt.get("activeDeadlineSeconds") or 3600),
                run_as_user=int(jt.get("runAsUser") or 10001),
                backoff_limit=int(jt.get("backoffLimit") or 0),
                ttl_seconds_after_finished=jt.get("ttlSecondsAfterFinished"),
            ),
            suspend=bool(spec.get("suspend", False)),
            allow_downgrade=bool(spec.get("allowDowngrade", False)),
            max_data_loss=int(spec.get("maxDataLoss") or 0),
            retry_token=str((meta.get("annotations") or {}).get(RETRY_ANNOTATION, "")),
            spec_hash=spec_hash(cast(dict[str, Any], spec)),
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def steps(self) -> tuple[str, ...]:
        return tuple(s for s in STEPS if (s != "backup" or self.backup.enabled)
                     and (s != "rehearse" or self.rehearsal.enabled))


def spec_hash(spec: dict[str, Any]) -> str:
    """Hash of everything in the spec that defines a run. ``suspend`` is excluded: suspending and resuming
    continues the same run instead of starting a new one."""
    relevant = {k: v for k, v in spec.items() if k != "suspend"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
