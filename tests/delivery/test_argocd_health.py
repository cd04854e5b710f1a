"""deploy/argocd/health.lua, run with Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1) over status fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from schemagate.core import gate

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "deploy" / "argocd" / "health.lua"
FIXTURES = sorted((Path(__file__).parent / "fixtures" / "dbm-status").glob("*.yaml"))
HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def run_health(obj: dict) -> dict:
    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    # Argo CD runs the script as a chunk with `obj` set as a global and reads the returned table
    result = lua.execute(LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_fixtures_present():
    assert len(FIXTURES) >= 10
    sources = {load(p)["source"] for p in FIXTURES}
    assert sources <= {"contract", "captured"}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_health(path):
    fx = load(path)
    hs = run_health(fx["object"])
    assert hs["status"] in HEALTH
    assert hs["status"] == fx["expected"]["status"], hs
    assert fx["expected"]["message"] in (hs["message"] or ""), hs


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_gate_agrees_with_health(path):
    """The rollout gate releases exactly when Argo CD would call the migration Healthy (unless suspended)."""
    obj = load(path)["object"]
    pod = {
        "metadata": {"annotations": {gate.MIGRATION_ANNOTATION: obj["metadata"]["name"]}},
        "spec": {"schedulingGates": [{"name": gate.GATE_NAME}]},
    }
    released = gate.decide(pod, obj).release
    healthy = run_health(obj)["status"] == "Healthy"
    if (obj.get("spec") or {}).get("suspend"):
        assert not healthy
    else:
        assert released == healthy


def test_generation_compared_numerically():
    """JSON numbers arrive in gopher-lua as floats; 3 and 3.0 must compare equal."""
    fx = load(next(p for p in FIXTURES if p.stem == "contract-succeeded"))
    obj = fx["object"]
    obj["metadata"]["generation"] = float(obj["metadata"]["generation"])
    assert run_health(obj)["status"] == "Healthy"


def test_configmap_snippet_embeds_the_same_script():
    cm = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.schemagate.dev_DatabaseMigration"
    assert cm["data"][key].strip() == LUA.read_text().strip()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixtures_match_the_crd(path):
    import jsonschema

    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator(schema).validate(load(path)["object"])
