"""Names both planes share: the API, labels, annotations, environment variables, steps and phases.

Kubernetes: labels and annotations follow the ``prefix/name`` syntax of
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/ (prefix = the API group).
"""

from __future__ import annotations

import enum

# --- the DatabaseMigration API (manifests/crd.yaml) ---------------------------------------------------------
GROUP = "schemagate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DatabaseMigration"
PLURAL = "databasemigrations"
SINGULAR = "databasemigration"
SHORT_NAME = "dbm"
STEP_RESULT_KIND = "StepResult"
FINALIZER = f"{GROUP}/finalizer"
COMPONENT = f"{GROUP}/operator"  # Events' reportingComponent

# --- labels (on Jobs and their pods) ---------------------------------------------------------------------------
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MIGRATION = f"{GROUP}/migration"
LABEL_UID = f"{GROUP}/migration-uid"
LABEL_STEP = f"{GROUP}/step"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_COUNTER = f"{GROUP}/counter"

# --- annotations -------------------------------------------------------------------------------------------------
ANNOTATION_RETRY = f"{GROUP}/retry"  # on a DatabaseMigration: a new value starts a stalled run again
ANNOTATION_MIGRATION = f"{GROUP}/migration"  # on a gated pod: the DatabaseMigration it waits for
ANNOTATION_REVISION = f"{GROUP}/revision"  # on a gated pod: the Alembic revision it needs
ANNOTATION_TARGET_REVISION = f"{GROUP}/target-revision"  # on a Job
ANNOTATION_DATABASE = f"{GROUP}/database"  # on the migration Lease: the database identity
SCHEDULING_GATE = f"{GROUP}/migration"  # the pod scheduling gate the operator removes

# --- environment variables ---------------------------------------------------------------------------------------
# steps (Jobs and the CLI)
ENV_DATABASE_URL = "DATABASE_URL"  # default name of the variable holding the database URL
ENV_TERMINATION_LOG = "SCHEMAGATE_TERMINATION_LOG"  # where a step writes its StepResult for the kubelet
ENV_TERMINATION_MESSAGE_LIMIT = "SCHEMAGATE_TERMINATION_MESSAGE_LIMIT"  # its byte budget in the step's pod
ENV_PLAN = "SCHEMAGATE_PLAN"  # the verification plan (precheck data) for the verify Job
ENV_ALEMBIC_CONFIG = "SCHEMAGATE_ALEMBIC_CONFIG"  # default -c/--config of the injected runner
ENV_TARGET = "SCHEMAGATE_TARGET"  # default --target of the injected runner
ENV_PG_BIN = "SCHEMAGATE_PG_BIN"  # directory of the PostgreSQL client programs (pg_dump, pg_restore, psql)
ENV_PG_OS_USER = "SCHEMAGATE_PG_OS_USER"  # as root: the system user the embedded PostgreSQL runs as
ENV_NO_EMBEDDED = "SCHEMAGATE_NO_EMBEDDED"  # set: never start an embedded PostgreSQL
ENV_SQUAWK = "SCHEMAGATE_SQUAWK"  # path of the squawk linter
ENV_SHADOW_DIR = "SCHEMAGATE_SHADOW_DIR"  # parent directory of the precheck's throw-away shadow servers
ENV_SHADOW_DATABASE_URL = "SCHEMAGATE_SHADOW_DATABASE_URL"  # precheck Job: spec.precheck.shadowDatabase.urlFrom
ENV_REHEARSAL_DATABASE_URL = "SCHEMAGATE_REHEARSAL_DATABASE_URL"  # rehearse Job: spec.rehearsal.databaseUrlFrom
# the operator
ENV_NAMESPACES = "SCHEMAGATE_NAMESPACES"
ENV_ALL_NAMESPACES = "SCHEMAGATE_ALL_NAMESPACES"
ENV_RUNNER_IMAGE = "SCHEMAGATE_RUNNER_IMAGE"
ENV_RUNNER_PULL_POLICY = "SCHEMAGATE_RUNNER_PULL_POLICY"
ENV_HEALTH_PORT = "SCHEMAGATE_HEALTH_PORT"
ENV_METRICS_PORT = "SCHEMAGATE_METRICS_PORT"
ENV_RESYNC_SECONDS = "SCHEMAGATE_RESYNC_SECONDS"
ENV_RETRY_BASE_SECONDS = "SCHEMAGATE_RETRY_BASE_SECONDS"
ENV_RETRY_CAP_SECONDS = "SCHEMAGATE_RETRY_CAP_SECONDS"
ENV_LOCK_POLL_SECONDS = "SCHEMAGATE_LOCK_POLL_SECONDS"
ENV_SECRET_POLL_SECONDS = "SCHEMAGATE_SECRET_POLL_SECONDS"
ENV_LEASE_NAMESPACE = "SCHEMAGATE_LEASE_NAMESPACE"
ENV_POD_NAMESPACE = "POD_NAMESPACE"  # the downward API's namespace of the pod
ENV_LEADER_ELECTION = "SCHEMAGATE_LEADER_ELECTION"
ENV_LEADER_ELECTION_LEASE = "SCHEMAGATE_LEADER_ELECTION_LEASE"
ENV_LEADER_LEASE_SECONDS = "SCHEMAGATE_LEADER_LEASE_SECONDS"
ENV_HOSTNAME = "HOSTNAME"  # the pod's name (Kubernetes sets it): the reportingInstance of the operator's Events


class Step(str, enum.Enum):
    """The steps of a run, in order (``StepResult.step``; the ``schemagate.dev/step`` label of a Job)."""

    BACKUP = "backup"
    PRECHECK = "precheck"
    REHEARSE = "rehearse"  # only with spec.rehearsal.enabled
    MIGRATE = "migrate"
    VERIFY = "verify"


class Phase(str, enum.Enum):
    """``status.phase`` of a DatabaseMigration (manifests/crd.yaml)."""

    PENDING = "Pending"
    BACKING_UP = "BackingUp"
    PRECHECKING = "Prechecking"
    REHEARSING = "Rehearsing"
    MIGRATING = "Migrating"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    BLOCKED = "Blocked"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


STEPS: tuple[Step, ...] = tuple(Step)
PHASE_OF_STEP: dict[Step, Phase] = {
    Step.BACKUP: Phase.BACKING_UP,
    Step.PRECHECK: Phase.PRECHECKING,
    Step.REHEARSE: Phase.REHEARSING,
    Step.MIGRATE: Phase.MIGRATING,
    Step.VERIFY: Phase.VERIFYING,
}
RUNNING_PHASES = frozenset(PHASE_OF_STEP.values())
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.BLOCKED, Phase.FAILED})
STALLED_PHASES = frozenset({Phase.BLOCKED, Phase.FAILED})
