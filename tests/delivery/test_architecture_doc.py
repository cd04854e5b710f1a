"""docs/architecture.md's module table and the operator's environment-variable list (also in the README and the
chart's values.yaml) are generated from the code by docs/gen_architecture.py and kept up to date."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from schemagate import settings
from tests.delivery.helm import ROOT


def test_generated_blocks_are_up_to_date():
    proc = subprocess.run([sys.executable, "docs/gen_architecture.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_every_module_is_in_the_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "operator" / "schemagate"
    for path in package.rglob("*.py"):
        if path.name == "__init__.py" or "__pycache__" in path.parts:
            continue
        name = ".".join(path.relative_to(package).with_suffix("").parts)
        assert f"| `{name}` |" in text, name


def test_every_variable_the_operator_reads_is_documented():
    """Control-plane modules read the environment only through OperatorSettings, and every variable it reads
    appears in the architecture doc, the README and the chart's values.yaml."""
    for module in ("handlers", "reconciler", "observe", "k8s", "gatekeeper"):
        src = (ROOT / "operator" / "schemagate" / f"{module}.py").read_text()
        assert "os.environ" not in src and "getenv" not in src, module
    variables = [env for env, _, _ in settings.describe()]
    assert len(variables) == len(set(variables)) >= 13
    for doc in ("docs/architecture.md", "README.md", "charts/schemagate/values.yaml"):
        text = (ROOT / doc).read_text()
        missing = [v for v in variables if not re.search(rf"\b{v}\b", text)]
        assert not missing, (doc, missing)


def test_settings_fields_carry_their_documentation():
    tree = ast.parse((ROOT / "operator" / "schemagate" / "settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OperatorSettings")
    fields = [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    assert len(fields) == len(settings.describe())
    assert all(meaning for _, _, meaning in settings.describe())
