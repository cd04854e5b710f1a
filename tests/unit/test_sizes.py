"""schemagate.contract.sizes: one size grammar (Kubernetes' resource.Quantity in bytes) for the parser and every size
field of the CRD (and its chart copy). kube-apiserver's own verdict on the same table: tests/e2e/test_crd_sizes.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemagate.cli import build_parser
from schemagate.contract import sizes
from schemagate.contract.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]
CRDS = (ROOT / "manifests" / "crd.yaml", ROOT / "charts" / "schemagate" / "crds" /
        "databasemigrations.schemagate.dev.yaml")
SIZE_FIELDS = {"spec.precheck.dataShadow.maxSize", "spec.rehearsal.maxSize", "spec.precheck.shadowDatabase.sizeLimit",
               "spec.backup.volume.emptyDir.sizeLimit"}

# (value as written, bytes it means, or None when it is refused): Kubernetes' quantity grammar, restricted to sizes
SIZE_VALUES: list[tuple[str, int | None]] = [
    ("1", 1), ("4096", 4096), ("1k", 1000), ("1Ki", 1024), ("512Mi", 512 * 2**20), ("1Gi", 2**30),
    ("2G", 2 * 10**9), ("1M", 10**6), ("3T", 3 * 10**12), ("1Ti", 2**40), ("1P", 10**15), ("1Pi", 2**50),
    ("1E", 10**18), ("1Ei", 2**60), ("1.5Gi", 3 * 2**29), ("1.5Ki", 1536), ("0.5Ki", 512), (".5Mi", 2**19),
    ("1.Gi", 2**30), ("1.", 1), ("0.5", 1), ("1.0001", 2), ("0.0001k", 1), ("007Mi", 7 * 2**20), ("1e3", 1000),
    ("1E9", 10**9), ("2e0", 2), ("1.5e3", 1500), ("1e99", 10**99),
    # refused: Kubernetes refuses these too
    ("1ki", None), ("1mi", None), ("1gi", None), ("1K", None), ("1KB", None), ("512MB", None), ("1GB", None),
    ("1GiB", None), ("1kb", None), ("1g", None), ("", None), (".", None), ("Gi", None), ("1 Gi", None),
    (" 1Gi", None), ("1Gi ", None), ("1Gi\n", None), ("1.5.2Gi", None), ("1,5Gi", None), ("0x10", None),
    # refused: valid quantities that are no size in bytes (a sign, fractions of a byte, nothing)
    ("+1Gi", None), ("-1Gi", None), ("-5", None), ("1m", None), ("500m", None), ("1e-3", None), ("0", None),
    ("0Gi", None), ("0.0", None), (".0k", None), ("0e5", None), ("00", None),
    # refused: an exponent of three digits (1e100 and up): two digits reach 1e99 bytes already
    ("1e100", None),
]


def _size_patterns(crd: Path) -> dict[str, str]:
    """Every string field of the CRD whose name says it is a size, by its path: its pattern."""
    doc = yaml.safe_load(crd.read_text())
    found: dict[str, str] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in (node.get("properties") or {}).items():
            here = f"{path}.{name}" if path else name
            if ("size" in name.lower()) and sub.get("type") == "string":
                found[here] = sub.get("pattern", "")
            walk(sub, here)

    walk(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")
    return found


@pytest.mark.parametrize("crd", CRDS, ids=lambda p: p.name)
def test_every_size_field_of_the_crd_has_the_parsers_pattern(crd: Path) -> None:
    patterns = _size_patterns(crd)
    assert set(patterns) == SIZE_FIELDS
    assert set(patterns.values()) == {sizes.PATTERN}


@pytest.mark.parametrize(("text", "size"), SIZE_VALUES)
def test_the_pattern_and_the_parser_agree(text: str, size: int | None) -> None:
    assert bool(re.fullmatch(sizes.PATTERN, text)) is (size is not None)  # Python's $ would pass "1Gi\n"
    if size is None:
        with pytest.raises(InvalidInput) as ei:
            sizes.parse_size(text, "spec.precheck.dataShadow.maxSize")
        assert ei.value.field == "spec.precheck.dataShadow.maxSize"
        assert "spec.precheck.dataShadow.maxSize" in str(ei.value) and repr(text) in str(ei.value)
    else:
        assert sizes.parse_size(text) == size


@pytest.mark.parametrize(("text", "hint"), [("1ki", "Ki, Mi, Gi"), ("512MB", "'M'"), ("1K", "'k or Ki'"),
                                            ("-1Gi", "no sign"), ("1Gi ", "no spaces"), ("0", "above 0")])
def test_near_misses_say_what_to_write(text: str, hint: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(hint)):
        sizes.parse_size(text, "--max-size")


@pytest.mark.parametrize("value", [0, -1, True, None, 1.5])
def test_other_python_values_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match="--max-size"):
        sizes.parse_size(value, "--max-size")  # type: ignore[arg-type]
    assert sizes.parse_size(4096) == 4096


@pytest.mark.parametrize("argv", [["precheck", "--data-shadow-max-size", "1ki"],
                                  ["rehearse", "prepare", "--max-size", "1ki"]])
def test_the_command_line_refuses_without_a_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "'1ki' is not a size" in err and argv[-2] in err and "Traceback" not in err


def test_the_command_line_takes_binary_suffixes() -> None:
    assert build_parser().parse_args(["precheck", "--data-shadow-max-size", "1Ki"]).data_shadow_max_size == 1024
