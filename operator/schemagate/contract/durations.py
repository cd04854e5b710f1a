"""The one duration grammar of schemagate: the CRD's pattern, everywhere (spec, CLI options, the injected runner).

Grammar (``spec.lockTimeout``/``spec.statementTimeout`` in manifests/crd.yaml, Go's ``time.ParseDuration`` without
signs and without ``us``/``ns``): one or more ``<number><unit>`` with units ``ms``, ``s``, ``m``, ``h`` and decimal
numbers, e.g. ``500ms``, ``5s``, ``1.5s``, ``1m``, ``1m30s``, ``2h``. The bare ``0`` also means zero (PostgreSQL's
"no timeout", the waiter's "wait forever"). Anything else (``5``, ``2min``, ``-1s``, ``5 minutes``) is
``InvalidInput`` naming the field.

PostgreSQL receives durations in whole milliseconds (``to_postgres``: ``1m30s`` -> ``90000ms``), the unit of
``lock_timeout`` and ``statement_timeout`` (https://www.postgresql.org/docs/current/runtime-config-client.html);
its own unit names differ (``min``, not ``m``), so the text is never passed through. A non-zero value below 1 ms
is sent as ``1ms`` (PostgreSQL would round it to 0, which disables the timeout); values above 2147483647 ms (the
setting's maximum, about 24.8 days) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from schemagate.contract.errors import InvalidInput

PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"  # the CRD's pattern, verbatim (a test compares them)
EXAMPLES = "500ms, 5s, 1.5s, 1m, 1m30s, 2h, 0"
POSTGRES_MAX_MS = 2_147_483_647

_FULL = re.compile(PATTERN)
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_MS_PER_UNIT = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}


@dataclass(frozen=True)
class Duration:
    """A parsed duration: ``text`` as given (stripped) and its exact length in milliseconds."""

    text: str
    milliseconds: Decimal

    @classmethod
    def parse(cls, text: str | Duration, field: str = "duration") -> Duration:
        """Parse ``text``; raises ``InvalidInput`` naming ``field`` and the value when it is not a duration."""
        if isinstance(text, Duration):
            return text
        if not isinstance(text, str):
            raise InvalidInput(f"{field}: {text!r} is not a duration (examples: {EXAMPLES})", field=field)
        s = text.strip()
        if s == "0":
            return cls(s, Decimal(0))
        if not _FULL.match(s):
            hint = "; a number needs a unit (ms, s, m, h)" if re.fullmatch(r"[0-9.]+", s) else ""
            raise InvalidInput(f"{field}: {text!r} is not a duration (examples: {EXAMPLES}){hint}", field=field)
        ms = sum((Decimal(n) * _MS_PER_UNIT[u] for n, u in _PART.findall(s)), Decimal(0))
        return cls(s, ms)

    def to_seconds(self) -> float:
        """Seconds as a float (``1m30s`` -> 90.0)."""
        return float(self.milliseconds / 1000)

    def to_milliseconds(self) -> int:
        """Whole milliseconds for PostgreSQL (half up; a non-zero value below 1 ms becomes 1)."""
        if self.milliseconds == 0:
            return 0
        return max(1, int(self.milliseconds.quantize(Decimal(1), rounding=ROUND_HALF_UP)))

    def to_postgres(self, field: str = "duration") -> str:
        """The value for ``SET lock_timeout``/``statement_timeout``/``pg_dump --lock-wait-timeout``: ``"<n>ms"``.

        Raises ``InvalidInput`` naming ``field`` above PostgreSQL's maximum (2147483647 ms)."""
        ms = self.to_milliseconds()
        if ms > POSTGRES_MAX_MS:
            raise InvalidInput(f"{field}: {self.text!r} is longer than PostgreSQL's maximum of {POSTGRES_MAX_MS}ms "
                               f"(about 24.8 days)", field=field)
        return f"{ms}ms"

    def __str__(self) -> str:
        return self.text


def parse(text: str | Duration, field: str = "duration") -> Duration:
    """``Duration.parse``."""
    return Duration.parse(text, field)


def to_seconds(text: str | Duration, field: str = "duration") -> float:
    """Seconds of ``text`` (``InvalidInput`` naming ``field`` when it is not a duration)."""
    return Duration.parse(text, field).to_seconds()


def to_postgres(text: str | Duration | None, field: str = "duration") -> str | None:
    """``"<n>ms"`` for PostgreSQL, or None for None/empty (the setting is left alone)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    return Duration.parse(text, field).to_postgres(field)
