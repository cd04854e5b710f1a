"""The one size grammar of schemagate: Kubernetes quantities in bytes, stdlib only (so the command line parses them
without importing a step).

Used by ``spec.precheck.dataShadow.maxSize`` (``--data-shadow-max-size``), ``spec.rehearsal.maxSize``
(``--max-size``), ``spec.precheck.shadowDatabase.sizeLimit`` and ``spec.backup.volume.emptyDir.sizeLimit``
(handed to Kubernetes as an ``emptyDir``'s ``sizeLimit``); the CRD's pattern for each is ``PATTERN`` verbatim (a
test compares them, and a test bed test checks that kube-apiserver and ``parse_size`` agree over a table of values).

Grammar: Kubernetes' ``resource.Quantity`` (k8s.io/apimachinery/pkg/api/resource, the serialization format in
https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/), restricted to what a size in
bytes can mean:

- a number: ``512``, ``1.5``, ``1.`` or ``.5`` (decimal points are accepted, as Kubernetes accepts them);
- an optional suffix, case-sensitive as in Kubernetes: binary ``Ki Mi Gi Ti Pi Ei`` (powers of 1024), decimal
  ``k M G T P E`` (powers of 1000; the kilo is a lower-case ``k``), or a decimal exponent ``e``/``E`` followed by
  one or two digits (``1e9``, up to ``e99``).

Refused, each with ``InvalidInput`` naming the field and the value: signs (``+1Gi``, ``-1Gi``: a size is
unsigned), Kubernetes' milli suffix ``m`` and negative exponents (fractions of a byte), suffixes Kubernetes does
not know (``1ki``, ``1K``, ``512MB``, ``1GiB``), spaces, and sizes that are 0. A fractional number of bytes is
rounded up (``0.5`` -> 1, ``1.5Ki`` -> 1536), as ``Quantity.Value()`` rounds up.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from schemagate.contract.errors import InvalidInput

# the CRD's pattern for every size field, verbatim (tests/unit/test_contract.py compares them)
# the number has a non-zero digit (a size of 0 bytes means nothing): RE2 (kube-apiserver) has no look-ahead
PATTERN = r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)([KMGTPE]i|[kMGTPE]|[eE][0-9]{1,2})?$"
EXAMPLES = "512Mi, 1Gi, 1.5Gi, 2G, 500k, 1e9 or a number of bytes"

_FULL = re.compile(PATTERN)
_ZERO = re.compile(r"^(0+(\.0*)?|0*\.0+)([KMGTPE]i|[kMGTPE]|[eE][0-9]{1,2})?$")
_MULTIPLIER = {"": 1, **{s: 1000 ** (i + 1) for i, s in enumerate("kMGTPE")},
               **{s + "i": 1024 ** (i + 1) for i, s in enumerate("KMGTPE")}}
# what people write that Kubernetes spells otherwise: a hint in the error
_HINTS = {"K": "k or Ki", "KB": "k", "kB": "k", "MB": "M", "GB": "G", "TB": "T", "PB": "P", "EB": "E"}


def parse_size(text: str | int, field: str = "size") -> int:
    """Bytes (an int above 0) from a Kubernetes quantity (``512Mi``, ``1Gi``, ``2G``, ``1e9``) or a number of bytes.

    ``field`` names the option or spec field in the error (``--data-shadow-max-size``). Raises ``InvalidInput``
    (a ``ValueError``) naming ``field`` and the value when the text is outside the grammar above or the size is 0.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise InvalidInput(f"{field}: {text!r} is not a size (examples: {EXAMPLES})", field=field)
    if isinstance(text, int):
        value = text
    else:
        m = _FULL.fullmatch(text)
        if not m and _ZERO.fullmatch(text):
            raise InvalidInput(f"{field}: {text!r}: the size must be above 0 bytes", field=field)
        if not m:
            raise InvalidInput(f"{field}: {text!r} is not a size (examples: {EXAMPLES}){_hint(text)}", field=field)
        number, suffix = m.group(1), m.group(3) or ""
        if suffix not in _MULTIPLIER:  # e3, E9: a decimal exponent
            exact = Decimal(number).scaleb(int(suffix[1:]))
        else:
            exact = Decimal(number) * _MULTIPLIER[suffix]
        value = math.ceil(exact)
    if value <= 0:
        raise InvalidInput(f"{field}: {text!r}: the size must be above 0 bytes", field=field)
    return value


def _hint(text: str) -> str:
    """A hint for a near miss (``1ki``, ``512MB``, ``-1Gi``, `` 1Gi``), or ""."""
    if text != text.strip():
        return "; no spaces around it"
    if text[:1] in ("+", "-"):
        return "; a size takes no sign"
    m = re.fullmatch(r"[0-9.]+([A-Za-z]+)", text)
    suffix = m.group(1) if m else ""
    if suffix in _HINTS:
        return f"; Kubernetes writes {suffix!r} as {_HINTS[suffix]!r}"
    if suffix.lower() in {"ki", "mi", "gi", "ti", "pi", "ei", "kib", "mib", "gib", "tib", "pib", "eib"}:
        return f"; the binary suffixes are Ki, Mi, Gi, Ti, Pi and Ei ({suffix[0].upper()}i here)"
    return ""
