"""Structure rules of the package that no linter checks: no function in ``operator/schemagate`` is longer than
60 lines (a longer one is split into named, documented steps)."""

from __future__ import annotations

import ast
from pathlib import Path

import schemagate

PACKAGE = Path(schemagate.__file__).parent
LIMIT = 60


def function_lengths() -> dict[str, int]:
    """``{"<module path>:<function name>": lines}`` of every function and method in the package (the longest
    when a name repeats in a module), counted from ``def`` (decorators excluded) to the last line of its body."""
    out: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                key = f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"
                out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_no_function_is_longer_than_60_lines() -> None:
    lengths = function_lengths()
    assert len(lengths) > 500, f"only {len(lengths)} functions found under {PACKAGE}"
    too_long = {k: n for k, n in lengths.items() if n > LIMIT}
    assert not too_long, f"functions over {LIMIT} lines (split them into named steps): {too_long}"
