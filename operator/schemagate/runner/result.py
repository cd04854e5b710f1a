"""The one JSON result every step emits, its exit codes, and the 4 KiB termination-message form.

Standard library only: the injected runner (``schemagate.runner.inject``) runs this inside the application's image.
"""

from __future__ import annotations

import copy
import datetime as _dt
import enum
import json
import os
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "schemagate.dev/v1alpha1"
KIND = "StepResult"
SCHEMA_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096
TERMINATION_LOG_ENV = "SCHEMAGATE_TERMINATION_LOG"


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


def _parse_time(s: Any) -> _dt.datetime | None:
    if not s:
        return None
    return _dt.datetime.strptime(str(s), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)


# Lists inside ``data`` that may be shortened, in the order they are given up.
_SHRINKABLE = ("kept", "removed", "applied", "pending", "notValid", "indexes", "constraints", "failures", "checks")


def to_termination_message(result: StepResult | dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Serialise compactly and, when larger than ``limit`` bytes, summarise until it fits.

    Order: drop zero-count checks, drop lint details, then cut lists (checks keep the largest counts),
    then shorten the message. ``truncated`` becomes true and ``data.omitted`` says how many items went.
    """
    d = copy.deepcopy(result.to_dict() if isinstance(result, StepResult) else result)

    def dump() -> str:
        return json.dumps(d, separators=(",", ":"), default=str)

    text = dump()
    if len(text.encode()) <= limit:
        return text
    d["truncated"] = True
    data = d.setdefault("data", {})
    omitted: dict[str, int] = data.setdefault("omitted", {})
    checks = data.get("checks")
    if isinstance(checks, list):
        nonzero = [c for c in checks if not isinstance(c, dict) or c.get("count")]
        if len(nonzero) != len(checks):
            omitted["zeroChecks"] = len(checks) - len(nonzero)
            data["checks"] = nonzero
        for c in data["checks"]:
            if isinstance(c, dict):
                for k in ("note", "revision"):
                    c.pop(k, None)
                if isinstance(c.get("definition"), str) and len(c["definition"]) > 120:
                    c["definition"] = c["definition"][:117] + "..."
        data["checks"].sort(key=lambda c: -(c.get("count") or 0) if isinstance(c, dict) else 0)
    text = dump()
    lint = data.get("lint")
    if len(text.encode()) > limit and isinstance(lint, dict) and isinstance(lint.get("findings"), list):
        omitted["lintFindings"] = len(lint["findings"])
        lint["findings"] = []
        text = dump()
    for key in _SHRINKABLE:
        while len(text.encode()) > limit and isinstance(data.get(key), list) and data[key]:
            data[key].pop()
            omitted[key] = omitted.get(key, 0) + 1
            text = dump()
    if len(text.encode()) > limit:
        d["message"] = str(d.get("message", ""))[:200]
        text = dump()
    if len(text.encode()) > limit:  # last resort: keep the envelope only
        d["data"] = {"omitted": {"all": True}}
        text = dump()
    return text


def write_termination_log(result: StepResult, path: str | None = None) -> None:
    path = path or os.environ.get(TERMINATION_LOG_ENV)
    if not path:
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_termination_message(result))
