#!/usr/bin/env python3
"""Regenerate the parts of docs/architecture.md (and the README) that the code defines.

    python docs/gen_architecture.py           # rewrite the generated blocks
    python docs/gen_architecture.py --check   # exit 1 when a generated block is out of date

Blocks (between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``):
- ``modules`` in docs/architecture.md: every module of ``operator/schemagate`` with the first line of its
  docstring and what it imports (schemagate modules and third-party packages), read with ``ast`` (nothing is
  imported, so a module's own imports cannot run).
- ``operator-env`` in docs/architecture.md and README.md: the operator's environment variables, from
  ``schemagate.settings.describe()``.
- ``operator-env`` in charts/schemagate/values.yaml: the same list as comments above ``operator.extraEnv``.

tests/delivery/test_architecture_doc.py runs the check.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "operator" / "schemagate"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"
VALUES = ROOT / "charts" / "schemagate" / "values.yaml"
_STDLIB = set(sys.stdlib_module_names)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(tree: ast.Module, module: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(imported schemagate names, third-party top-level packages) anywhere in the module. ``from M import x``
    yields ``M.x``; :func:`_resolve` maps it to the longest module it names."""
    ours: set[str] = set()
    foreign: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                source = ".".join([*base[: len(base) - node.level + 1], *([source] if source else [])])
            names = [f"{source}.{a.name}" for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if top == "schemagate":
                ours.add(name)
            elif top and top not in _STDLIB and top != "__future__":
                foreign.add(top)
    return ours, foreign


def _resolve(ours: set[str], known: set[str]) -> list[str]:
    """Each imported name as the longest known module it names (``schemagate.core.status.X`` -> core.status)."""
    out = set()
    for name in ours:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            out.add(".".join(parts[1:]) or "schemagate")
    return sorted(out)


def module_rows() -> list[tuple[str, str, str, str]]:
    """(module, first docstring line, schemagate imports, third-party imports) for every module."""
    paths = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    known = {_module_name(p) for p in paths}
    rows = []
    for path in paths:
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        doc = (ast.get_docstring(tree) or "").strip()
        if path.name == "__init__.py" and not doc:
            continue
        first = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
        first = first.split(". ")[0].rstrip(".") if first else "(no docstring)"
        ours, foreign = _imports(tree, name, path.name == "__init__.py")
        deps = [d for d in _resolve(ours, known) if d != name.removeprefix("schemagate.")]
        rows.append((name.removeprefix("schemagate.") or "schemagate", first.replace("|", "\\|"),
                     ", ".join(deps), ", ".join(sorted(foreign))))
    return rows


def modules_block() -> str:
    lines = ["| module | what it is (first line of its docstring) | imports from schemagate | third-party |",
             "|---|---|---|---|"]
    lines += [f"| `{m}` | {doc} | {deps or '–'} | {foreign or '–'} |" for m, doc, deps, foreign in module_rows()]
    return "\n".join(lines) + "\n"


def env_block() -> str:
    sys.path.insert(0, str(PACKAGE.parent))
    from schemagate import settings

    return settings.markdown_table()


def values_block() -> str:
    sys.path.insert(0, str(PACKAGE.parent))
    from schemagate import settings

    lines = ["# The operator reads these environment variables (variable: default; meaning). The chart sets",
             "# POD_NAMESPACE and SCHEMAGATE_RUNNER_IMAGE (and SCHEMAGATE_RUNNER_PULL_POLICY from image.pullPolicy);",
             "# set the others here, e.g. `- {name: SCHEMAGATE_RETRY_CAP_SECONDS, value: \"120\"}`."]
    lines += [f"#   {env}: {default.replace('`', '')}; {meaning.replace('`', '')}" for env, default, meaning in settings.describe()]
    return "\n".join("  " + line for line in lines) + "\n"


def _replace(text: str, name: str, body: str, comment: tuple[str, str], path: Path) -> str:
    begin = f"{comment[0]}BEGIN generated: {name}{comment[1]}"
    end = f"{comment[0]}END generated: {name}{comment[1]}"
    pattern = re.compile(rf"(^[ ]*{re.escape(begin)}\n).*?(^[ ]*{re.escape(end)}$)", re.S | re.M)
    if not pattern.search(text):
        raise SystemExit(f"{path.relative_to(ROOT)}: no block '{begin}' ... '{end}'")
    return pattern.sub(lambda mo: mo.group(1) + body + mo.group(2), text, count=1)


def render() -> dict[Path, str]:
    """The new text of every file with generated blocks."""
    html, yaml_comment = ("<!-- ", " -->"), ("# ", "")
    arch = ARCHITECTURE.read_text(encoding="utf-8")
    arch = _replace(arch, "modules", modules_block(), html, ARCHITECTURE)
    arch = _replace(arch, "operator-env", env_block(), html, ARCHITECTURE)
    readme = _replace(README.read_text(encoding="utf-8"), "operator-env", env_block(), html, README)
    values = _replace(VALUES.read_text(encoding="utf-8"), "operator-env", values_block(), yaml_comment, VALUES)
    return {ARCHITECTURE: arch, README: readme, VALUES: values}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a generated block is out of date")
    args = p.parse_args(argv)
    stale = [path for path, text in render().items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/gen_architecture.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in render().items():
        if path in stale:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
