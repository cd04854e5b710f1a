"""The files install-runner copies are exactly the injected runner's import closure inside schemagate."""

from __future__ import annotations

from pathlib import Path

import grimp

import schemagate
from schemagate.runner.inject import INJECTED_FILES


def _module_file(module: str) -> str:
    """``schemagate.contract.dburl`` -> ``contract/dburl.py``; a package -> its ``__init__.py``."""
    root = Path(schemagate.__file__).resolve().parent
    rel = Path(*module.split(".")[1:])
    return str(rel / "__init__.py") if (root / rel).is_dir() else f"{rel}.py"


def test_injected_files_are_the_import_closure_of_runner_inject() -> None:
    graph = grimp.build_graph("schemagate")
    inject = {m for m in graph.modules if m == "schemagate.runner.inject" or m.startswith("schemagate.runner.inject.")}
    closure = set(inject)
    for m in inject:
        closure |= graph.find_upstream_modules(m)
    # importing a module imports its parent packages too
    for m in list(closure):
        parts = m.split(".")
        closure |= {".".join(parts[:i]) for i in range(1, len(parts))}
    needed = {_module_file(m) for m in closure if not m.startswith("schemagate.runner.inject")}
    entries = set(INJECTED_FILES) - {"runner/inject"}
    dirs = {e for e in entries if not e.endswith(".py")}
    assert "runner/inject" in INJECTED_FILES and dirs == {"contract"}

    def covered(f: str) -> bool:
        return f in entries or any(f.startswith(d + "/") for d in dirs)

    assert all(covered(f) for f in needed), f"install-runner misses {sorted(f for f in needed if not covered(f))}"
    unused = {e for e in entries if e not in needed and not any(f.startswith(e + "/") for f in needed)}
    assert not unused, f"install-runner copies {sorted(unused)}, which the injected runner does not import"
