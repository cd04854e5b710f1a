"""Sizes as users write them (``spec.precheck.dataShadow.maxSize``, ``--data-shadow-max-size``): stdlib only, so
the command line parses them without importing a step."""

from __future__ import annotations

import re

_SIZE = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
         "Ti": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str | int) -> int:
    """Bytes from a Kubernetes quantity (``512Mi``, ``1Gi``, ``2G``), ``MB``/``GB`` or a plain number of bytes.

    Raises ValueError naming the value when it is not one."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kMGT]i?|[KMGT]B)?\s*", str(text))
        if not m:
            raise ValueError(f"{text!r} is not a size (e.g. 512Mi, 1Gi, 2G or a number of bytes)")
        value = int(float(m.group(1)) * _SIZE[m.group(2) or ""])
    if value <= 0:
        raise ValueError(f"{text!r}: the size must be above 0")
    return value
