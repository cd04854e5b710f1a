"""The one JSON result every step emits, its exit codes, and its termination-message form (within the pod's share).

Standard library only: the injected runner (``schemagate.runner.inject``) runs this inside the application's image,
and the operator's core reads it from the Job's termination message (Kubernetes:
``terminationMessagePath``/``terminationMessagePolicy``, at most 4096 bytes).

The shapes of ``data`` per step and of the operator's run bookkeeping are the ``TypedDict``s below.
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import enum
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from schemagate.contract import names
from schemagate.contract.sqlkind import Statement

API_VERSION = names.API_VERSION
KIND = names.STEP_RESULT_KIND
SCHEMA_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096
# The kubelet keeps at most 12 KiB of termination messages per pod, divided equally among all its containers (init
# containers included), and 4096 bytes per container: a message over its share is cut, and no longer parses
# (kubelet pkg/kubelet/status/status_manager.go normalizeStatus; kubecontainer.MaxPodTerminationMessageLogLength).
# https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/#customizing-the-termination-message
POD_TERMINATION_MESSAGES = 12 * 1024
TERMINATION_LIMIT_ENV = names.ENV_TERMINATION_MESSAGE_LIMIT
TERMINATION_LOG_ENV = names.ENV_TERMINATION_LOG


def termination_limit(containers: int) -> int:
    """The bytes one container's termination message may take in a pod of ``containers`` containers (init
    containers included): ``min(4096, 12288 // containers)`` (the kubelet's rule, see above)."""
    return min(TERMINATION_MESSAGE_LIMIT, POD_TERMINATION_MESSAGES // max(1, containers))


class Plan(TypedDict):
    """The Alembic plan (``runner.inject.revisions.plan``): revision ids as Alembic names them."""

    current: str | None  # the database's version rows, sorted, comma-separated; None = none (base)
    currentHeads: list[str]  # the same as a list
    target: str  # the resolved target (revision ids, comma-separated for several)
    pending: list[str]  # the revisions ``alembic upgrade target`` applies, in apply order
    expected: list[str]  # the version rows after the upgrade, sorted
    heads: list[str]  # the heads of the migration scripts
    versionTable: str  # the version table env.py configures (Alembic's default alembic_version)
    versionTableSchema: str | None
    # "env.py": read through the application's env.py; "catalog": read with SQL from the one table of the database
    # that can be an Alembic version table, not yet confirmed by env.py (``runner.inject.revisions``)
    source: NotRequired[str]


class VersionTable(TypedDict):
    """The Alembic version table env.py configures; an unqualified name is resolved on env.py's own session (its
    search_path: ``runner.inject.revisions.context_version_table``), so ``schema`` names where env.py reads it.
    ``schema`` None: not known (a plan from the catalog with no table yet, env.py run offline)."""

    schema: str | None
    name: str


class UpgradeResult(TypedDict, total=False):
    """What ``runner.inject.apply.upgrade`` returns."""

    fromRevision: str | None
    toRevision: str | None
    targetRevision: str
    pending: list[str]
    applied: list[str]
    lockTimeout: str | None  # as given
    statementTimeout: str | None
    sql: str | None  # always None from upgrade (the offline rendering is render_sql); kept in shadow-upgrade.json of older runners
    sqlError: str  # why the offline rendering failed
    contextVersionTable: VersionTable  # the version table env.py's migration context used (when env.py ran)


class ShadowUpgradeDoc(UpgradeResult, total=False):
    """``shadow-upgrade.json`` (``runner.inject.shadow.shadow_upgrade``; without ``sql``, which is ``pending.sql``)."""

    statements: list[Statement]
    statementsDropped: int
    versionTable: VersionTable | None
    plan: Plan  # the real database's plan the shadow ran (the data-carrying shadow runs it again)
    leftovers: list[dict[str, Any]]  # INVALID leftovers the shadow run dropped and built again (leftovers.ShadowRetry)


class MigrateData(TypedDict, total=False):
    """``data`` of the migrate step."""

    fromRevision: str | None
    toRevision: str | None
    targetRevision: str
    applied: list[str]
    attempts: int
    lockTimeout: str | None  # as given (the duration grammar of ``contract.durations``)
    statementTimeout: str | None
    lockWaits: list[dict[str, Any]]  # per attempt: the lock it waited for and its holders (runner.inject.lockwait)
    failedRevision: str
    failedStatement: str
    currentRevision: str | None


class BackupData(TypedDict, total=False):
    """``data`` of the backup step (pg_dump custom or directory format)."""

    format: str
    compression: str  # pg_dump --compress METHOD[:LEVEL]
    jobs: int
    verifySeconds: float
    fullReadSeconds: float
    sha256Seconds: float
    files: int
    verified: bool
    path: str
    sizeBytes: int
    sha256: str
    durationSeconds: float
    dumpSeconds: float
    database: str
    keep: int
    kept: list[str]
    removed: list[str]


class LockedTable(TypedDict):
    """A table a revision locks strongly (``analysis.locks``): the strongest mode, and whether the revisions
    create it."""

    table: str
    lock: str  # a PostgreSQL table-level lock mode, e.g. "ACCESS EXCLUSIVE"
    created: bool


class RevisionLocks(TypedDict):
    revision: str
    tables: list[LockedTable]


class LockFinding(TypedDict):
    """A deadlock risk in one database transaction of the pending revisions (rules in ``analysis.locks``)."""

    rule: str  # lock-multiple-tables | lock-foreign-key-referenced-held
    revision: str
    transaction: int  # 1, 2, ... in the order the transactions ran
    tables: list[str]
    message: str


class LockReport(TypedDict):
    """``data.lint.locks`` of the precheck: the lock lint of the captured statements."""

    available: bool
    note: str | None
    revisions: list[RevisionLocks]
    findings: list[LockFinding]


class LintFinding(TypedDict):
    """squawk findings (and the lock lint's) grouped by rule."""

    rule: str
    count: int
    message: str


class LintResult(TypedDict, total=False):
    """``data.lint`` of the precheck (``analysis.lint.lint_sql``, the lock report merged in by
    ``analysis.locks.merge_into``)."""

    available: bool
    findings: list[LintFinding]
    total: int
    blocking: int
    source: str | None  # offline | captured
    note: str | None
    locks: LockReport


class PrecheckData(TypedDict, total=False):
    """``data`` of the precheck step (see docs/architecture.md for ``checks`` and ``lint``)."""

    currentRevision: str | None
    targetRevision: str | None
    pending: list[str]
    derivation: str
    derivationNote: str | None
    checks: list[dict[str, Any]]
    total: int
    maxViolations: int
    indexes: list[dict[str, Any]]
    notValid: list[dict[str, Any]]
    lint: LintResult


class VerifyData(TypedDict, total=False):
    """``data`` of the verify step."""

    currentRevision: str | None
    targetRevision: str | None
    failures: list[str]
    checks: list[dict[str, Any]]


class ErrorData(TypedDict, total=False):
    """Keys every failed StepResult's ``data`` may carry (``contract.errors.error_result``)."""

    actor: str  # who must act: user, database, schemagate
    field: str  # the option, spec field, file or check the error is about


class RunStatus(TypedDict, total=False):
    """``status.run`` of a DatabaseMigration: the operator's bookkeeping of the current run."""

    generation: int
    specHash: str
    retry: str | None
    step: str | None
    attempt: int
    counters: dict[str, int]
    retryAt: str | None


class Outcome(str, enum.Enum):
    SUCCEEDED = "Succeeded"
    CHECKS_FAILED = "ChecksFailed"
    PERMANENT_ERROR = "PermanentError"
    TRANSIENT_ERROR = "TransientError"


class ExitCode(enum.IntEnum):
    SUCCEEDED = 0
    CHECKS_FAILED = 3
    PERMANENT_ERROR = 4
    TRANSIENT_ERROR = 5

    @classmethod
    def for_outcome(cls, outcome: Outcome) -> ExitCode:
        return {
            Outcome.SUCCEEDED: cls.SUCCEEDED,
            Outcome.CHECKS_FAILED: cls.CHECKS_FAILED,
            Outcome.PERMANENT_ERROR: cls.PERMANENT_ERROR,
            Outcome.TRANSIENT_ERROR: cls.TRANSIENT_ERROR,
        }[outcome]

    @classmethod
    def outcome_of(cls, code: int) -> Outcome:
        """The outcome an exit code stands for; unknown codes (a crash) count as permanent."""
        return {
            0: Outcome.SUCCEEDED,
            3: Outcome.CHECKS_FAILED,
            5: Outcome.TRANSIENT_ERROR,
        }.get(code, Outcome.PERMANENT_ERROR)


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StepResult:
    step: str
    outcome: Outcome
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    started_at: _dt.datetime = field(default_factory=now)
    finished_at: _dt.datetime | None = None
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCEEDED

    @property
    def exit_code(self) -> int:
        return int(ExitCode.for_outcome(self.outcome))

    def finish(self) -> StepResult:
        if self.finished_at is None:
            self.finished_at = now()
        return self

    def to_dict(self) -> dict[str, Any]:
        finished = self.finished_at or now()
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "schemaVersion": SCHEMA_VERSION,
            "step": self.step,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "message": self.message,
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(finished),
            "durationSeconds": round((finished - self.started_at).total_seconds(), 3),
            "data": self.data,
            "truncated": self.truncated,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepResult:
        if d.get("kind") != KIND or d.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(f"not a schemagate StepResult v{SCHEMA_VERSION}: kind={d.get('kind')!r}")
        started = _parse_time(d.get("startedAt")) or now()
        return cls(
            step=str(d["step"]),
            outcome=Outcome(d["outcome"]),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            data=dict(d.get("data") or {}),
            started_at=started,
            finished_at=_parse_time(d.get("finishedAt")),
            truncated=bool(d.get("truncated", False)),
        )

    @classmethod
    def from_json(cls, text: str) -> StepResult:
        return cls.from_dict(json.loads(text))


def _parse_time(s: object) -> _dt.datetime | None:
    if not s:
        return None
    return _dt.datetime.strptime(str(s), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)


# Lists inside ``data`` that may be shortened, in the order they are given up.
_SHRINKABLE = ("statements", "kept", "removed", "applied", "pending", "notValid", "indexes", "constraints", "failures", "checks")


def _trim_checks(data: dict[str, Any], omitted: dict[str, int]) -> None:
    """The first summary of the termination message: zero-count checks dropped (``omitted.zeroChecks``), each
    check's details the status does not need dropped (note, revision, statement, evaluatedBy, a key equal to the
    name), long definitions cut to 120 characters, the largest counts first."""
    checks = data.get("checks")
    if not isinstance(checks, list):
        return
    nonzero = [c for c in checks if not isinstance(c, dict) or c.get("count")]
    if len(nonzero) != len(checks):
        omitted["zeroChecks"] = len(checks) - len(nonzero)
        data["checks"] = nonzero
    for c in data["checks"]:
        if isinstance(c, dict):
            for k in ("note", "revision", "statement", "evaluatedBy"):  # details the status does not need
                c.pop(k, None)
            if c.get("key") == c.get("name"):  # readers fall back to the name
                c.pop("key", None)
            if isinstance(c.get("definition"), str) and len(c["definition"]) > 120:
                c["definition"] = c["definition"][:117] + "..."
    data["checks"].sort(key=lambda c: -(c.get("count") or 0) if isinstance(c, dict) else 0)


def _trim_rehearsal(data: dict[str, Any], omitted: dict[str, int], dump: Any) -> str:
    """The rehearse step's summary: the verify result's details and the backup's verification go first, then the
    lock report's statements that took no lock and changed no rows (the ``revisions`` keep each one's strongest
    lock and rows changed), then the statements from the last."""
    verify = data.get("verify")
    if isinstance(verify, dict) and "data" in verify:
        failures = (verify.get("data") or {}).get("failures")
        verify.pop("data")
        if failures:
            verify["failures"] = list(failures)[:5]
        omitted["verifyDetails"] = 1
    if data.pop("verification", None) is not None:
        omitted["verification"] = 1
    statements = data.get("statements")
    if isinstance(statements, list):
        kept = [s for s in statements if not isinstance(s, dict) or s.get("lock") or s.get("rows") or s.get("failed")]
        if len(kept) < len(statements):
            omitted["statements"] = len(statements) - len(kept)
            data["statements"] = kept
    return str(dump())


COMPRESSED_PREFIX = "zlib+base64:"


def _packed(text: str, limit: int) -> str | None:
    """``text`` as it goes into a termination message of ``limit`` bytes: itself when it fits, else
    ``zlib+base64:`` + base64(zlib(text)) when that fits (JSON lists of checks shrink 4-8 times), else None."""
    if len(text.encode()) <= limit:
        return text
    packed = COMPRESSED_PREFIX + base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")
    return packed if len(packed) <= limit else None


def is_cut(message: str) -> bool:
    """True when ``message`` began as a StepResult (plain or compressed) but does not parse: the kubelet cut it
    (a writer that did not know its share of the pod)."""
    text = (message or "").strip()
    begun = text.startswith(COMPRESSED_PREFIX) or text.startswith('{"apiVersion":') and f'"kind":"{KIND}"' in text
    return begun and from_termination_message(text) is None


def from_termination_message(message: str) -> dict[str, Any] | None:
    """The StepResult document of a termination message written by :func:`to_termination_message` (plain JSON, or
    the ``zlib+base64:`` form), or None when ``message`` is not one (e.g. the log tail of a crash:
    ``terminationMessagePolicy: FallbackToLogsOnError``, or a message the kubelet cut)."""
    text = (message or "").strip()
    if text.startswith(COMPRESSED_PREFIX):
        try:
            text = zlib.decompress(base64.b64decode(text[len(COMPRESSED_PREFIX):], validate=True)).decode()
        except (ValueError, zlib.error):
            return None
    if not text.startswith("{"):
        return None
    try:
        d = json.loads(text)
    except ValueError:
        return None
    return d if isinstance(d, dict) and d.get("kind") == KIND else None


def from_log(log: str, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The whole StepResult a step printed on stdout (``--json``: one line, the last such line of its log) that
    ``summary`` (its termination message, ``truncated: true``) summarises, or None when the log has none.

    It must be the same result: same step, startedAt, outcome and reason; with ``summary`` None (the message was cut
    and does not parse), the last StepResult line. ``log`` is one run of the container's log (stdout and stderr
    interleaved, as ``kubectl logs`` prints it); lines that are not a StepResult are skipped."""
    same = ("step", "startedAt", "outcome", "reason")
    for line in reversed(log.splitlines()):
        line = line.strip()
        if not line.startswith("{") or '"StepResult"' not in line:
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("kind") == KIND and (summary is None or
                                                              all(d.get(k) == summary.get(k) for k in same)):
            return d
    return None


def to_termination_message(result: StepResult | dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The result as a termination message of at most ``limit`` bytes (read back by :func:`from_termination_message`).

    Compact JSON when it fits; else the same JSON compressed (``zlib+base64:``), so nothing is lost; only when even
    that is too long, summarised until it fits. Order: drop zero-count checks (and each check's note, revision,
    statement, evaluatedBy, and its key where it is the name), drop the shadow's details (settings, extensions...:
    its kind and versions stay), drop lint details (the lock report, then the findings), then cut lists (checks
    keep the largest counts), then shorten the message. ``truncated`` becomes true and ``data.omitted`` says how
    many items went.
    """
    d = copy.deepcopy(result.to_dict() if isinstance(result, StepResult) else result)

    def dump() -> str:
        return json.dumps(d, separators=(",", ":"), default=str)

    def fit(text: str) -> str | None:
        return _packed(text, limit)

    packed = fit(dump())
    if packed is not None:
        return packed
    d["truncated"] = True
    data = d.setdefault("data", {})
    omitted: dict[str, int] = data.setdefault("omitted", {})
    _trim_checks(data, omitted)
    text = dump()
    shadow = data.get("shadow")
    if fit(text) is None and isinstance(shadow, dict):  # keep where the shadow ran and the versions
        omitted["shadowDetails"] = 1
        data["shadow"] = {k: shadow[k] for k in ("kind", "shadowServerVersion", "realServerVersion") if k in shadow}
        text = dump()
    lint = data.get("lint")
    if fit(text) is None and isinstance(lint, dict) and isinstance(lint.get("locks"), dict):
        omitted["lintLocks"] = 1  # the lock report's per-revision tables (its findings are also in findings)
        lint.pop("locks")
        text = dump()
    if fit(text) is None and isinstance(lint, dict) and isinstance(lint.get("findings"), list):
        omitted["lintFindings"] = len(lint["findings"])
        lint["findings"] = []
        text = dump()
    if fit(text) is None:
        text = _trim_rehearsal(data, omitted, dump)
    for key in _SHRINKABLE:
        while fit(text) is None and isinstance(data.get(key), list) and data[key]:
            data[key].pop()
            omitted[key] = omitted.get(key, 0) + 1
            text = dump()
    if fit(text) is None:
        d["message"] = str(d.get("message", ""))[:200]
        text = dump()
    if fit(text) is None:  # last resort: keep the envelope only
        d["data"] = {"omitted": {"all": True}}
        text = dump()
    return fit(text) or text


def write_termination_log(result: StepResult, path: str | None = None) -> None:
    path = path or os.environ.get(TERMINATION_LOG_ENV)
    if not path:
        return
    try:  # the step's share of its pod's termination messages (core.jobs sets it), else the per-container limit
        limit = int(os.environ.get(TERMINATION_LIMIT_ENV) or TERMINATION_MESSAGE_LIMIT)
    except ValueError:
        limit = TERMINATION_MESSAGE_LIMIT
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_termination_message(result, limit=max(256, min(limit, TERMINATION_MESSAGE_LIMIT))))
