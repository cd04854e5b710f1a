"""Pure builders of the step Jobs (dicts ready for the API), see the container layouts in docs/architecture.md.

Credentials never appear in a rendered Job: the database URL (or password) reaches the containers only as a
``secretKeyRef`` environment variable. Job names are deterministic: ``<name>-<generation>-<step>-<n>`` (``n`` counts
the Jobs of that step in the run), hashed down to 63 characters when long.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from schemagate.contract import names
from schemagate.contract.checks import UserCheck
from schemagate.contract.stepresult import termination_limit
from schemagate.core.lease import RESTORE_KIND
from schemagate.core.manifest import (
    Container,
    EnvVar,
    Job,
    JobSpec,
    Layout,
    OwnerReference,
    PodSpec,
    SecurityContext,
    Volume,
    VolumeMount,
    user_volume,
)
from schemagate.core.model import GROUP, KIND, VERSION, Migration
from schemagate.core.status import BackupRecord, Plan

TERMINATION_LOG = "/dev/termination-log"
RUNNER_DIR = "/schemagate"
WORK_DIR = "/work"
BACKUP_DIR = "/backups"
# the operator image's group (Dockerfile: USER 10001:10001). The backup pod's fsGroup: the kubelet makes a volume
# that supports ownership management (a PersistentVolume on a block device, local, most CSI drivers) group-owned
# and group-writable by it, so a freshly provisioned volume (root:root 0755) takes the backup of uid 10001
RUNNER_GID = 10001
PLAN_ENV = names.ENV_PLAN

LABEL_MANAGED_BY = names.LABEL_MANAGED_BY
LABEL_NAME = names.LABEL_NAME
LABEL_MIGRATION = names.LABEL_MIGRATION
LABEL_UID = names.LABEL_UID
LABEL_STEP = names.LABEL_STEP
LABEL_GENERATION = names.LABEL_GENERATION
LABEL_COUNTER = names.LABEL_COUNTER
MANAGED_BY = "schemagate"

MAX_NAME = 63
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class JobSettings:
    """Operator-side settings: the operator's own image (env SCHEMAGATE_RUNNER_IMAGE) runs the non-app steps."""

    runner_image: str
    runner_pull_policy: str = "IfNotPresent"


def job_name(name: str, generation: int, step: str, counter: int) -> str:
    base = f"{name}-{generation}-{step}-{counter}"
    if len(base) <= MAX_NAME:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    suffix = f"-{generation}-{step}-{counter}-{digest}"
    head = name[: max(1, MAX_NAME - len(suffix))].rstrip("-.")
    return (head + suffix)[:MAX_NAME]


def label_value(value: str) -> str:
    """A valid label value (<= 63, alphanumeric ends); long or odd values become a hash."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:40]


def selector(m: Migration) -> dict[str, str]:
    return {LABEL_UID: m.uid}


def owner_reference(m: Migration) -> OwnerReference:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": m.name, "uid": m.uid,
            "controller": True, "blockOwnerDeletion": True}


def database_env(m: Migration) -> list[EnvVar]:
    """The environment that carries the database location: secretKeyRef only, never a literal credential."""
    db = m.database
    url_env = m.migrations.database_url_env
    if db.url_from is not None:
        return [{"name": url_env, "valueFrom": {"secretKeyRef": {"name": db.url_from.name, "key": db.url_from.key}}}]
    assert db.password_from is not None
    env: list[EnvVar] = [
        {"name": "PGHOST", "value": db.host or ""},
        {"name": "PGPORT", "value": str(db.port)},
        {"name": "PGDATABASE", "value": db.name or ""},
        {"name": "PGUSER", "value": db.user or ""},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": db.password_from.name,
                                                              "key": db.password_from.key}}},
    ]
    query = ""
    if db.ssl_mode:
        env.append({"name": "PGSSLMODE", "value": db.ssl_mode})
        query = "?sslmode=$(PGSSLMODE)"
    # No password in the URL: libpq takes it from PGPASSWORD.
    env.append({"name": url_env, "value": f"postgresql://$(PGUSER)@$(PGHOST):$(PGPORT)/$(PGDATABASE){query}"})
    return env


def _common_env(m: Migration) -> list[EnvVar]:
    return [{"name": names.ENV_TERMINATION_LOG, "value": TERMINATION_LOG}, *database_env(m)]


def _security(m: Migration, app: bool) -> SecurityContext:
    """A container ``securityContext`` that passes the Pod Security Standards' ``restricted`` profile
    (https://kubernetes.io/docs/concepts/security/pod-security-standards/: non-root, no privilege escalation,
    every capability dropped; seccomp is set on the pod) with a read-only root filesystem. Containers in the
    application's image run as ``spec.jobTemplate.runAsUser``, since such an image may declare no non-root user."""
    sc: SecurityContext = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                          "runAsNonRoot": True, "readOnlyRootFilesystem": True}
    if app:
        sc["runAsUser"] = m.job_template.run_as_user
    return sc


def _container(m: Migration, s: JobSettings, name: str, command: list[str], *, app: bool = False,
               extra_env: list[EnvVar] | None = None, mounts: list[VolumeMount] | None = None,
               db: bool = True, working_dir: str | None = None) -> Container:
    env: list[EnvVar] = _common_env(m) if db else [{"name": names.ENV_TERMINATION_LOG, "value": TERMINATION_LOG}]
    # a missing URL is an error inside a Job, never a reason to start an embedded server
    env.append({"name": names.ENV_NO_EMBEDDED, "value": "1"})
    if app:
        # the root filesystem is read-only: temporary files and Python's caches stay out of it
        env += [{"name": "PYTHONPATH", "value": RUNNER_DIR}, {"name": "HOME", "value": "/tmp"},
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    c: Container = {
        "name": name,
        "image": m.migrations.image if app else s.runner_image,
        "command": command,
        "env": env + list(extra_env or []),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _security(m, app),
        "volumeMounts": list(mounts or []),
    }
    pull = m.migrations.image_pull_policy if app else s.runner_pull_policy
    if pull:
        c["imagePullPolicy"] = pull
    if m.job_template.resources:
        c["resources"] = m.job_template.resources
    if working_dir:
        c["workingDir"] = working_dir
    return c


def _tmp_mount() -> VolumeMount:
    return {"name": "tmp", "mountPath": "/tmp"}


def _runner_mount() -> VolumeMount:
    return {"name": "schemagate-runner", "mountPath": RUNNER_DIR}


def _install_runner(m: Migration, s: JobSettings) -> Container:
    return _container(m, s, "install-runner", ["schemagate", "install-runner", RUNNER_DIR], db=False,
                      mounts=[_runner_mount()])


def _alembic_config(m: Migration) -> str:
    """The runner's ``-c``: ``spec.migrations.config`` as given when absolute or a ``package.module:path``
    resource, else relative to ``spec.migrations.directory`` (the Job's working directory)."""
    config = m.migrations.config
    if config.startswith("/") or ":" in config:
        return config
    return m.migrations.directory.rstrip("/") + "/" + config


def _target(m: Migration, plan: Plan | None) -> str:
    resolved = plan.get("targetRevision") if plan is not None else None
    return str(resolved or m.migrations.target_revision)


def _plan_env(m: Migration, plan: Plan | None) -> EnvVar:
    """``SCHEMAGATE_PLAN``: the precheck's plan (``status.plan``) as JSON, its target defaulting to the spec's."""
    doc: dict[str, object] = dict(plan or {})
    doc.setdefault("targetRevision", m.migrations.target_revision)
    return {"name": PLAN_ENV, "value": json.dumps(doc, separators=(",", ":"), sort_keys=True)}


def _check_args(checks: Iterable[UserCheck]) -> list[str]:
    """User checks as the CLI's repeatable ``--check NAME=SQL`` (SQL is configuration, not a secret)."""
    out: list[str] = []
    for c in checks:
        out += ["--check", f"{c.name}={c.sql}"]
    return out


SHADOW_DIR = "/shadow"
SHADOW_SERVER = "shadow-server"  # the precheck pod's sidecar running the throw-away PostgreSQL
SHADOW_URL_ENV = names.ENV_SHADOW_DATABASE_URL


def _precheck_containers(m: Migration, s: JobSettings, base: list[str], tmp: Volume) -> Layout:
    """The precheck's pod (docs/architecture.md):

    - ``derive: false``: one container, ``count --no-derive`` with the user checks; no shadow at all.
    - default: a sidecar ``shadow-server`` (operator image, ``restartPolicy: Always``) runs the throw-away
      PostgreSQL on a memory-backed ``emptyDir`` (``spec.precheck.shadowDatabase.sizeLimit``), so nothing is
      written to the real server and everything goes with the pod; ``prepare`` restores the real schema into it,
      ``shadow-upgrade`` (the application's image) applies the pending revisions there; when they change data,
      ``data-prepare`` makes a data-carrying shadow on the same server and ``data-upgrade`` (the application's
      image) runs them again there, counting each check right before its statement (both quick no-ops
      otherwise); ``count`` diffs and counts.
    - ``shadowDatabase.urlFrom``: the same three steps against that existing, empty database (its URL in
      ``SCHEMAGATE_SHADOW_DATABASE_URL`` from the Secret), no sidecar.
    """
    pc = m.precheck
    work: VolumeMount = {"name": "work", "mountPath": WORK_DIR}
    common = [*base, "--workdir", WORK_DIR]
    scope: list[str] = []
    for name in pc.accept_unevaluated:
        scope += ["--accept-unevaluated", name]
    scope += ["--data-shadow-max-size", pc.data_shadow_max_size]
    count = ["schemagate", "precheck", "--phase", "count", *common, "--target", m.migrations.target_revision,
             "--max-violations", str(pc.max_violations), *scope, *_check_args(pc.checks)]
    if not pc.derive:
        count = ["schemagate", "precheck", "--phase", "count", *base, "--target", m.migrations.target_revision,
                 "--max-violations", str(pc.max_violations), "--no-derive", *scope, *_check_args(pc.checks)]
        return [], [_container(m, s, "count", count, mounts=[_tmp_mount()])], [tmp]
    explicit: list[EnvVar] = []
    prepare = ["schemagate", "precheck", "--phase", "prepare", *common]
    if pc.shadow_url_from is not None:
        explicit = [{"name": SHADOW_URL_ENV, "valueFrom": {"secretKeyRef": {
            "name": pc.shadow_url_from.name, "key": pc.shadow_url_from.key}}}]
        prepare += ["--shadow-database-url-env", SHADOW_URL_ENV]
    shadow = ["python", "-m", "schemagate.runner.inject", "shadow-upgrade", "-c", _alembic_config(m),
              "--target", m.migrations.target_revision, "--database-url-env", m.migrations.database_url_env,
              "--workdir", WORK_DIR, "--termination-log", TERMINATION_LOG]
    if m.allow_downgrade:  # a target below the database is tried as a downgrade on the shadow, its data at risk counted
        shadow.append("--allow-downgrade")
        count += ["--max-data-loss", str(m.max_data_loss)]
    inits = [_install_runner(m, s)]
    vols: list[Volume] = [{"name": "work", "emptyDir": {}}, {"name": "schemagate-runner", "emptyDir": {}}, tmp]
    if pc.shadow_url_from is None:
        server = _container(m, s, SHADOW_SERVER, ["schemagate", "precheck", "--phase", "shadow-server", "--json",
                                                  "--workdir", WORK_DIR], db=False,
                            extra_env=[{"name": names.ENV_SHADOW_DIR, "value": SHADOW_DIR}],
                            mounts=[work, {"name": "shadow", "mountPath": SHADOW_DIR}, _tmp_mount()])
        server["restartPolicy"] = "Always"  # a native sidecar: runs beside the later containers, stopped after
        inits.append(server)
        vols.append({"name": "shadow", "emptyDir": {"medium": "Memory", "sizeLimit": pc.shadow_memory}})
    inits += [
        _container(m, s, "prepare", prepare, mounts=[work, _tmp_mount()], extra_env=explicit),
        _container(m, s, "shadow-upgrade", shadow, app=True, mounts=[work, _runner_mount(), _tmp_mount()],
                   working_dir=m.migrations.directory, extra_env=explicit),
    ]
    if pc.shadow_url_from is None:
        inits += _data_containers(m, s, common, work)
    main = _container(m, s, "count", count, mounts=[work, _tmp_mount()], extra_env=explicit)
    return inits, [main], vols


def _data_containers(m: Migration, s: JobSettings, common: list[str], work: VolumeMount) -> list[Container]:
    """The precheck's data route on the sidecar's server: ``data-prepare`` (operator image) makes the
    data-carrying shadow when the revisions change data, ``data-upgrade`` (the application's image) runs them
    again there counting each check right before its statement; both quick no-ops otherwise."""
    data_prepare = ["schemagate", "precheck", "--phase", "data-prepare", *common, "--data-shadow-max-size",
                    m.precheck.data_shadow_max_size]
    data_upgrade = ["python", "-m", "schemagate.runner.inject", "data-upgrade", "-c", _alembic_config(m),
                    "--target", m.migrations.target_revision, "--database-url-env", m.migrations.database_url_env,
                    "--workdir", WORK_DIR, "--termination-log", TERMINATION_LOG]
    return [_container(m, s, "data-prepare", data_prepare, mounts=[work, _tmp_mount()]),
            _container(m, s, "data-upgrade", data_upgrade, app=True, mounts=[work, _runner_mount(), _tmp_mount()],
                       working_dir=m.migrations.directory)]


REHEARSAL_URL_ENV = names.ENV_REHEARSAL_DATABASE_URL
SCRATCH_SUFFIX = "_sg_rehearsal_"


def scratch_database(m: Migration) -> str:
    """The rehearsal's scratch database of this resource: ``<name>_sg_rehearsal_<hash>`` (the name folded to
    ``[a-z0-9_]`` and cut to 40 characters, an 8-hex hash of namespace/name), at most 63 bytes (PostgreSQL's
    NAMEDATALEN - 1). The same for every run of the resource, so a rehearse Job drops what a killed one left."""
    base = re.sub(r"[^a-z0-9_]", "_", m.name.lower())[:40]
    digest = hashlib.sha256(f"{m.namespace}/{m.name}".encode()).hexdigest()[:8]
    return f"{base}{SCRATCH_SUFFIX}{digest}"


def _rehearsal_backup(m: Migration, backup: BackupRecord | None) -> tuple[list[str], list[VolumeMount],
                                                                       list[Volume]]:
    """(prepare's backup arguments, its mounts, the volumes): the run's backup (``status.backup.path``) on the
    backup volume, read-only; without one (``spec.backup`` off, or an ``emptyDir`` gone with the backup pod) a
    fresh backup into the pod's work directory."""
    path = (backup or {}).get("path")
    if m.backup.enabled and path and "emptyDir" not in m.backup.volume:
        mount: VolumeMount = {"name": "backups", "mountPath": BACKUP_DIR, "readOnly": True}
        if m.backup.sub_path:
            mount["subPath"] = m.backup.sub_path
        return ["--backup", str(path)], [mount], [user_volume("backups", m.backup.volume)]
    return ["--backup-dir", WORK_DIR + "/backup"], [], []


def _rehearsal_job(m: Migration, s: JobSettings, scratch: str, explicit: list[EnvVar],
                   scratch_args: list[str]) -> Container:
    """``spec.rehearsal.job`` as a container: the user's command behind the injected runner's ``with-rehearsal-url``
    (the URL variable and PGDATABASE point at the copy; the real URL is removed before the command runs)."""
    job = m.rehearsal.job or {}
    cmd = ["python", "-m", "schemagate.runner.inject", "with-rehearsal-url", "--database-url-env",
           m.migrations.database_url_env, "--scratch-database", scratch, *scratch_args, "--",
           *[str(a) for a in job.get("command") or ()], *[str(a) for a in job.get("args") or ()]]
    c = _container(m, s, "job", cmd, app=True, mounts=[_runner_mount(), _tmp_mount()],
                   working_dir=str(job.get("workingDir") or m.migrations.directory),
                   extra_env=[*explicit, *[cast(EnvVar, dict(e)) for e in job.get("env") or ()]])  # as given
    if job.get("image"):
        c["image"] = str(job["image"])
    return c


def _rehearse_containers(m: Migration, s: JobSettings, base: list[str], tmp: Volume, plan: Plan | None,
                         backup: BackupRecord | None) -> Layout:
    """The rehearse step's pod (``spec.rehearsal``; ``runner/rehearse.py``):

    - ``scratch-guard`` (a native sidecar, operator image): drops the scratch database when the pod stops, for
      whatever reason (a failed container, the deadline, the Job or pod deleted);
    - ``prepare`` (operator image): verifies the run's backup (or takes one), refuses above ``maxSize``, drops a
      leftover copy, restores the backup into the scratch database;
    - ``rehearse-upgrade`` (the application's image): the pending revisions on the copy with the lock report; a
      failed revision exits 3 with ``RehearsalFailed`` (the pod stops there, the guard drops the copy);
    - ``job`` (``spec.rehearsal.job``, optional): the user's smoke test against the copy;
    - ``finish`` (operator image): the verify step's checks on the copy, the copy dropped, the step's result.
    """
    scratch = scratch_database(m)
    work: VolumeMount = {"name": "work", "mountPath": WORK_DIR}
    explicit: list[EnvVar] = []
    scratch_args: list[str] = []
    if m.rehearsal.database_url_from is not None:
        ref = m.rehearsal.database_url_from
        explicit = [{"name": REHEARSAL_URL_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]
        scratch_args = ["--scratch-url-env", REHEARSAL_URL_ENV]
    common = [*base, "--scratch-database", scratch, *scratch_args]
    backup_args, backup_mounts, backup_vols = _rehearsal_backup(m, backup)
    prepare = ["schemagate", "rehearse", "--phase", "prepare", *common, "--workdir", WORK_DIR, *backup_args]
    if m.rehearsal.max_size:
        prepare += ["--max-size", m.rehearsal.max_size]
    guard = _container(m, s, "scratch-guard", ["schemagate", "rehearse", "--phase", "guard", *common],
                       mounts=[_tmp_mount()], extra_env=explicit)
    guard["restartPolicy"] = "Always"  # a native sidecar: stopped (SIGTERM) when the pod ends, however it ends
    upgrade = ["python", "-m", "schemagate.runner.inject", "rehearse-upgrade", "-c", _alembic_config(m),
               "--target", _target(m, plan), "--database-url-env", m.migrations.database_url_env,
               "--scratch-database", scratch, *scratch_args, "--lock-timeout", m.lock_timeout,
               "--statement-timeout", m.statement_timeout, "--workdir", WORK_DIR, "--termination-log",
               TERMINATION_LOG]
    inits = [
        _install_runner(m, s), guard,
        _container(m, s, "prepare", prepare, mounts=[work, *backup_mounts, _tmp_mount()], extra_env=explicit),
        _container(m, s, "rehearse-upgrade", upgrade, app=True, mounts=[work, _runner_mount(), _tmp_mount()],
                   working_dir=m.migrations.directory, extra_env=explicit),
    ]
    if m.rehearsal.job:
        inits.append(_rehearsal_job(m, s, scratch, explicit, scratch_args))
    env = [*explicit, _plan_env(m, plan)]
    finish = ["schemagate", "rehearse", "--phase", "finish", *common, "--workdir", WORK_DIR,
              "--target", _target(m, plan), "--plan-env", PLAN_ENV, *_check_args(m.verify_checks)]
    main = _container(m, s, "finish", finish, extra_env=env, mounts=[work, _tmp_mount()])
    vols: list[Volume] = [{"name": "work", "emptyDir": {}}, {"name": "schemagate-runner", "emptyDir": {}}, tmp,
                          *backup_vols]
    return inits, [main], vols


def _downgrade_containers(m: Migration, s: JobSettings, url_env: str, plan: Plan, tmp: Volume) -> Layout:
    """The migrate step of a downgrade the precheck planned (``plan.downgrade``, ``spec.allowDowngrade``): the
    injected runner's ``downgrade`` in the application's image (``alembic downgrade``, refused when the database
    is no longer at the planned ``fromRevision``). ``spec.migrations.command`` is for upgrades and is not used."""
    down = plan.get("downgrade") or {}
    cmd = ["python", "-m", "schemagate.runner.inject", "downgrade", "-c", _alembic_config(m),
           "--target", m.migrations.target_revision,
           "--database-url-env", url_env, "--lock-timeout", m.lock_timeout, "--statement-timeout",
           m.statement_timeout, "--termination-log", TERMINATION_LOG]
    if down.get("fromRevision"):
        cmd += ["--expect-from", str(down["fromRevision"])]
    main = _container(m, s, "downgrade", cmd, app=True, mounts=[_runner_mount(), _tmp_mount()],
                      working_dir=m.migrations.directory)
    return [_install_runner(m, s)], [main], [{"name": "schemagate-runner", "emptyDir": {}}, tmp]


UPGRADE_TARGETS = ("head", "heads")  # never below the database: alembic upgrade only moves forward


def backup_plans_first(m: Migration) -> bool:
    """Whether the backup Job plans the run before it dumps: a named ``spec.migrations.targetRevision`` (not
    ``head``/``heads``) without ``spec.allowDowngrade`` may lie below the database, which only the revision graph
    in the application's image tells (``schemagate.core.decide.refuse_downgrade`` refuses what the status already
    tells). The backup pod's ``plan`` init container then refuses such a target (``DowngradeNotAllowed``, exit
    code 4) before ``pg_dump`` starts, and a target the scripts lack (``UnknownRevision``) the same way."""
    return not m.allow_downgrade and m.migrations.target_revision.strip() not in UPGRADE_TARGETS


def _backup_containers(m: Migration, s: JobSettings, base: list[str], tmp: Volume) -> Layout:
    """The backup step's pod: ``schemagate backup`` (operator image) into ``spec.backup.volume``; before it, when
    :func:`backup_plans_first`, ``install-runner`` and ``python -m schemagate.runner.inject plan`` (the
    application's image: env.py reads the version rows, nothing is written), which fails the pod, and so the
    step, with its StepResult when the target is refused."""
    vol = user_volume("backups", m.backup.volume)
    mount: VolumeMount = {"name": "backups", "mountPath": BACKUP_DIR}
    if m.backup.sub_path:
        mount["subPath"] = m.backup.sub_path
    keep = m.backup.retention if m.backup.retention > 0 else 1_000_000  # 0 keeps all
    cmd = ["schemagate", "backup", *base, "--backup-dir", BACKUP_DIR, "--keep", str(keep)]
    if m.backup.jobs > 1:
        cmd += ["--jobs", str(m.backup.jobs)]
    if m.backup.compression:
        cmd += ["--compress", m.backup.compression]
    main = [_container(m, s, "backup", cmd, mounts=[mount, _tmp_mount()])]
    if not backup_plans_first(m):
        return [], main, [vol, tmp]
    plan = ["python", "-m", "schemagate.runner.inject", "plan", "-c", _alembic_config(m),
            "--target", m.migrations.target_revision, "--database-url-env", m.migrations.database_url_env,
            "--termination-log", TERMINATION_LOG]
    inits = [_install_runner(m, s), _container(m, s, "plan", plan, app=True, mounts=[_runner_mount(), _tmp_mount()],
                                               working_dir=m.migrations.directory)]
    return inits, main, [vol, {"name": "schemagate-runner", "emptyDir": {}}, tmp]


def build_containers(m: Migration, step: str, s: JobSettings, plan: Plan | None = None,
                     backup: BackupRecord | None = None) -> Layout:
    """(initContainers, containers, volumes) of a step (``backup``: ``status.backup``, for the rehearsal)."""
    url_env = m.migrations.database_url_env
    base = ["--json", "--database-url-env", url_env, "--termination-log", TERMINATION_LOG]
    tmp: Volume = {"name": "tmp", "emptyDir": {}}
    if step == "backup":
        return _backup_containers(m, s, base, tmp)
    if step == "precheck":
        return _precheck_containers(m, s, base, tmp)
    if step == "rehearse":
        return _rehearse_containers(m, s, base, tmp, plan, backup)
    if step == "migrate" and plan is not None and plan.get("downgrade"):
        return _downgrade_containers(m, s, url_env, plan, tmp)
    if step == "migrate":
        if m.migrations.command:
            cmd = list(m.migrations.command)
        else:
            cmd = ["python", "-m", "schemagate.runner.inject", "migrate", "-c", _alembic_config(m),
                   "--target", _target(m, plan), "--database-url-env", url_env,
                   "--lock-timeout", m.lock_timeout, "--statement-timeout", m.statement_timeout,
                   "--termination-log", TERMINATION_LOG]
        main = _container(m, s, "migrate", cmd, app=True, mounts=[_runner_mount(), _tmp_mount()],
                          working_dir=m.migrations.directory)
        return [_install_runner(m, s)], [main], [{"name": "schemagate-runner", "emptyDir": {}}, tmp]
    if step == "verify":
        cmd = ["schemagate", "verify", *base, "--plan-env", PLAN_ENV, *_check_args(m.verify_checks)]
        return [], [_container(m, s, "verify", cmd, extra_env=[_plan_env(m, plan)], mounts=[_tmp_mount()])], [tmp]
    raise ValueError(f"unknown step {step!r}")


def build_job(m: Migration, step: str, name: str, counter: int, s: JobSettings,
              plan: Plan | None = None, run_generation: int | None = None,
              backup: BackupRecord | None = None) -> Job:
    """The complete batch/v1 Job of one step attempt (``run_generation``: the generation the run started at;
    ``backup``: ``status.backup``, which the rehearse step restores)."""
    layout = build_containers(m, step, s, plan, backup)
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: "schemagate",
        LABEL_MIGRATION: label_value(m.name),
        LABEL_UID: m.uid,
        LABEL_STEP: step,
        LABEL_GENERATION: str(run_generation or m.generation),
        LABEL_COUNTER: str(counter),
    }
    job = _job(m, name, labels, owner_reference(m), {names.ANNOTATION_TARGET_REVISION: m.migrations.target_revision},
               layout)
    if step == "backup":  # core/v1 PodSecurityContext.fsGroup; OnRootMismatch: no recursive chown once it is right
        job["spec"]["template"]["spec"]["securityContext"].update(
            {"fsGroup": RUNNER_GID, "fsGroupChangePolicy": "OnRootMismatch"})
    return job


def _termination_budget(all_containers: list[Container]) -> None:
    """Every container that writes a termination message learns its share of the pod's
    (``stepresult.termination_limit``): the kubelet cuts a longer one, which then does not parse."""
    limit = str(termination_limit(len(all_containers)))
    for c in all_containers:
        env = c.get("env") or []
        if any(e.get("name") == names.ENV_TERMINATION_LOG for e in env):
            env.append({"name": names.ENV_TERMINATION_MESSAGE_LIMIT, "value": limit})


def _job(m: Migration, name: str, labels: dict[str, str], owner: OwnerReference, annotations: dict[str, str],
         layout: Layout, ttl: bool = True) -> Job:
    """A batch/v1 Job around the containers, with the pod settings of ``spec.jobTemplate``."""
    jt = m.job_template
    inits, containers, volumes = layout
    pod_spec: PodSpec = {
        "restartPolicy": "Never",
        "containers": containers,
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "enableServiceLinks": False,
    }
    if inits:
        pod_spec["initContainers"] = inits
    _termination_budget([*inits, *containers])
    if jt.service_account_name:
        pod_spec["serviceAccountName"] = jt.service_account_name
    else:
        pod_spec["automountServiceAccountToken"] = False
    if jt.node_selector:
        pod_spec["nodeSelector"] = dict(jt.node_selector)
    if jt.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in jt.tolerations]
    if jt.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [dict(p) for p in jt.image_pull_secrets]
    job_spec: JobSpec = {
        "backoffLimit": jt.backoff_limit,
        "activeDeadlineSeconds": jt.active_deadline_seconds,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if ttl and jt.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = jt.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": m.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": job_spec,
    }




def build_restore_job(m: Migration, restore_name: str, restore_uid: str, job_name: str, backup_file: str,
                      s: JobSettings, *, sha256: str | None, into: str | None = None, replace: bool = False,
                      jobs: int = 1, no_owner: bool = False) -> Job:
    """The Job of a DatabaseRestore (``schemagate.core.restore``): ``schemagate restore`` in the operator's image
    against the DatabaseMigration ``m``'s database (its ``secretKeyRef`` environment) with its backup volume at
    ``/backups`` as the backup step mounts it; ``backup_file`` is the archive's name there. The archive is
    verified first (``--sha256``: the digest recorded in ``status.backups``, the sidecar and a full read). Owned by
    the DatabaseRestore; never retried (``backoffLimit: 0``) and never removed by a TTL, so it runs once.
    Raises ``ValueError`` when ``backup_file`` is not a plain file name."""
    if not backup_file or "/" in backup_file or backup_file in (".", ".."):
        raise ValueError(f"backup file {backup_file!r} is not a file name in {BACKUP_DIR}")
    backup_path = f"{BACKUP_DIR}/{backup_file}"
    url_env = m.migrations.database_url_env
    cmd = ["schemagate", "restore", "--json", "--database-url-env", url_env, "--termination-log", TERMINATION_LOG,
           "--backup", backup_path]
    if sha256:
        cmd += ["--sha256", sha256]
    if replace:
        cmd += ["--replace", "--backup-dir", BACKUP_DIR]
    elif into:
        cmd += ["--into", into]
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    if no_owner:
        cmd.append("--no-owner")
    mount: VolumeMount = {"name": "backups", "mountPath": BACKUP_DIR}
    if m.backup.sub_path:
        mount["subPath"] = m.backup.sub_path
    container = _container(m, s, "restore", cmd, mounts=[mount, _tmp_mount()])
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: "schemagate", LABEL_MIGRATION: label_value(m.name),
              LABEL_UID: restore_uid, LABEL_STEP: "restore"}
    owner: OwnerReference = {"apiVersion": f"{GROUP}/{VERSION}", "kind": RESTORE_KIND, "name": restore_name, "uid": restore_uid,
             "controller": True, "blockOwnerDeletion": True}
    job = _job(m, job_name, labels, owner, {},
               ([], [container], [user_volume("backups", m.backup.volume), {"name": "tmp", "emptyDir": {}}]), ttl=False)
    job["spec"]["backoffLimit"] = 0
    # the backup volume as the backup pod has it (fsGroup, see RUNNER_GID): --replace writes its fresh backup there
    job["spec"]["template"]["spec"]["securityContext"].update(
        {"fsGroup": RUNNER_GID, "fsGroupChangePolicy": "OnRootMismatch"})
    return job
