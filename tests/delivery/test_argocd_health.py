"""deploy/argocd/health.lua over the status fixtures, twice: through Argo CD's own Go code, and fast with lupa.

- **Argo CD's code** (``argocd_health``, tests/delivery/gotools/argocd-health): Argo CD v3.2's settings manager
  loads ``deploy/argocd/argocd-cm.yaml``, its customizations become ``lua.ResourceHealthOverrides`` and every
  fixture goes through gitops-engine's ``health.GetResourceHealth``, what the application controller calls.
  Scripts from argocd-cm run with only the base, table and package libraries (plus ``os.time``/``os.date``
  through ``require("os")``): no ``string``, unless ``resource.customizations.useOpenLibs.<group>_<kind>`` is
  ``"true"``.
- **lupa** (Lua 5.1, like gopher-lua), sandboxed like Argo CD: only the globals and library members listed in
  ``fixtures/argocd-lua-globals.txt`` (what Argo CD's VM exposes, checked against it below) and no string methods.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from schemagate.core import gate
from tests.delivery.gotools import GoTool, module_dir

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "deploy" / "argocd" / "health.lua"
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
HERE = Path(__file__).parent
FIXTURES = sorted((HERE / "fixtures" / "dbm-status").glob("*.yaml"))
PROBE = HERE / "fixtures" / "argocd-probe.lua"
GLOBALS = HERE / "fixtures" / "argocd-lua-globals.txt"
HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
KEY = "resource.customizations.health.schemagate.dev_DatabaseMigration"
# the Argo CD release built by tests/delivery/gotools/argocd-health (the newest one that requires gitops-engine as
# a separate module) and the current release, whose Lua sandbox must be the same
ARGOCD_MODULE = "github.com/argoproj/argo-cd/v3"
ARGOCD_CURRENT = "v3.6.1"


def argocd_built_version() -> str:
    gomod = (HERE / "gotools" / "argocd-health" / "go.mod").read_text()
    m = re.search(r"^\s*github\.com/argoproj/argo-cd/v3 (v\S+)", gomod, re.M)
    assert m, "tests/delivery/gotools/argocd-health/go.mod requires no Argo CD version"
    return m.group(1)


def sandboxed_lua() -> LuaRuntime:
    """A Lua 5.1 state exposing only what Argo CD's VM exposes to argocd-cm scripts (useOpenLibs false): its
    globals and library members, what require() returns for each standard library, no string methods."""
    allowed = set(GLOBALS.read_text().split())
    lua = LuaRuntime()
    if "<string methods>" not in allowed:
        lua.execute('getmetatable("").__index = nil')
    g = lua.globals()
    loaded = g.package.loaded
    for lib in ("string", "math", "io", "os", "debug", "coroutine", "table"):
        members = {a.split(").", 1)[1] for a in allowed if a.startswith(f"require({lib}).")}
        if not members:
            loaded[lib] = None  # require(lib) then fails, as in Argo CD
        elif loaded[lib] is not None:
            module = lua.table_from({m: loaded[lib][m] for m in members})
            loaded[lib] = module  # e.g. Argo CD's os for require("os"): time and date only
    for name in list(g):
        value = g[name]
        if name not in allowed:
            g[name] = None
        elif name not in ("_G", "package") and lua.eval("type")(value) == "table":
            for member in list(value):
                if f"{name}.{member}" not in allowed:
                    value[member] = None
    return lua


def run_lupa(obj: dict[str, Any] | None, script: str | None = None) -> dict[str, Any]:
    lua = sandboxed_lua()
    lua.globals().obj = lua.table_from(obj or {}, recursive=True)
    # Argo CD runs the script as a chunk with `obj` set as a global and reads the returned table
    result = lua.execute(script if script is not None else LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def configmap(tmp_path: Path, data: dict[str, str]) -> Path:
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "argocd-cm", "namespace": "argocd", "labels": {"app.kubernetes.io/part-of": "argocd"}},
          "data": data}
    path = tmp_path / "argocd-cm.yaml"
    path.write_text(yaml.safe_dump(cm))
    return path


PROBE_OBJECT = {"apiVersion": "probe.schemagate.dev/v1", "kind": "Probe", "metadata": {"name": "p", "generation": 1}}


def argocd_probe(argocd_health: GoTool, tmp_path: Path, open_libs: bool = False) -> set[str]:
    data = {"resource.customizations.health.probe.schemagate.dev_Probe": PROBE.read_text()}
    if open_libs:
        data["resource.customizations.useOpenLibs.probe.schemagate.dev_Probe"] = "true"
    [res] = argocd_health.run_json(str(configmap(tmp_path, data)), stdin=[PROBE_OBJECT])
    assert res["status"] == "Healthy", res
    return set(res["message"].split("\n"))


# --- fixtures -----------------------------------------------------------------------------------------------------


def test_fixtures_present():
    assert len(FIXTURES) >= 10
    sources = {load(p)["source"] for p in FIXTURES}
    assert sources <= {"contract", "captured"}
    phases = {(load(p)["object"].get("status") or {}).get("phase") for p in FIXTURES}
    assert phases >= {"Pending", "BackingUp", "Prechecking", "Migrating", "Verifying", "Succeeded", "Blocked",
                      "Failed", "Suspended", None}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixtures_match_the_crd(path):
    import jsonschema

    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator(schema).validate(load(path)["object"])


# --- Argo CD's own code -------------------------------------------------------------------------------------------


def test_argocd_health_of_every_fixture(argocd_health):
    """Argo CD's settings + health code over every fixture: the expected status and message, no Lua error."""
    objects = [load(p)["object"] for p in FIXTURES]
    results = argocd_health.run_json(str(ARGOCD_CM), stdin=objects)
    wrong = []
    for path, res in zip(FIXTURES, results, strict=True):
        exp = load(path)["expected"]
        if res["error"] or res["status"] != exp["status"] or exp["message"] not in res["message"]:
            wrong.append(f"{path.stem}: expected {exp['status']} ~ {exp['message']!r}, Argo CD says {res}")
    assert not wrong, "\n".join(wrong)


def test_lupa_agrees_with_argocd_exactly(argocd_health):
    objects = [load(p)["object"] for p in FIXTURES]
    results = argocd_health.run_json(str(ARGOCD_CM), stdin=objects)
    for path, obj, res in zip(FIXTURES, objects, results, strict=True):
        assert run_lupa(obj) == {"status": res["status"], "message": res["message"]}, path.stem


def test_string_library_use_is_unknown_in_argocd(argocd_health, tmp_path):
    """Why the script avoids ``string.*``: under Argo CD's default sandbox it fails and the health is Unknown."""
    blocked = load(HERE / "fixtures" / "dbm-status" / "contract-blocked-violations.yaml")["object"]
    script = 'local hs = {status = "Degraded"}\nhs.message = string.format("%s", obj.status.phase)\nreturn hs\n'
    cm = configmap(tmp_path, {KEY: script})
    [res] = argocd_health.run_json(str(cm), stdin=[blocked])
    assert res["status"] == "Unknown", res
    assert "attempt to index a non-table object(nil) with key 'format'" in res["error"], res
    with pytest.raises(Exception, match="attempt to index"):
        run_lupa(blocked, script)  # the lupa sandbox fails the same way


def test_lupa_sandbox_is_argocds(argocd_health, tmp_path):
    """fixtures/argocd-lua-globals.txt is exactly what Argo CD's VM exposes to an argocd-cm script, and the lupa
    sandbox exposes nothing more."""
    argo = argocd_probe(argocd_health, tmp_path)
    if os.environ.get("SCHEMAGATE_REGEN_ARGOCD_GLOBALS") == "1":  # after changing the Argo CD version
        GLOBALS.write_text("\n".join(sorted(argo)) + "\n")
    listed = set(GLOBALS.read_text().split())
    assert argo == listed, f"only Argo CD: {sorted(argo - listed)}, only {GLOBALS.name}: {sorted(listed - argo)} " \
                           "(rewrite the file with SCHEMAGATE_REGEN_ARGOCD_GLOBALS=1)"
    assert "string" not in argo and "<string methods>" not in argo and "math" not in argo and "table.insert" in argo
    lupa = set(run_lupa(None, PROBE.read_text())["message"].split("\n"))
    assert lupa <= argo, sorted(lupa - argo)
    # with useOpenLibs the same probe sees the string library: the probe can tell the two apart
    assert "string.find" in argocd_probe(argocd_health, tmp_path, open_libs=True)


def test_lua_sandbox_same_as_current_argocd_release():
    """The built release's Lua sandbox (libraries opened, safe os) is the current release's, line for line."""
    built = module_dir(f"{ARGOCD_MODULE}@{argocd_built_version()}")
    # the current release names Go 1.27 in its go.mod: the go command needs that toolchain even to download it
    current = module_dir(f"{ARGOCD_MODULE}@{ARGOCD_CURRENT}", toolchain="go1.27.3")

    def sandbox(d: Path) -> str:
        src = (d / "util" / "lua" / "lua.go").read_text()
        m = re.search(r"\tl := lua\.NewState\(.*?l\.PreloadModule\(lua\.OsLibName, SafeOsLoader\)\n", src, re.S)
        assert m, f"{d}: the library-opening block of runLua was not found"
        return m.group(0)

    assert sandbox(built) == sandbox(current)
    assert "SkipOpenLibs: !vm.UseOpenLibs" in sandbox(current)
    assert (built / "util/lua/oslib_safe.go").read_text() == (current / "util/lua/oslib_safe.go").read_text()


# --- the fast lupa test ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_health(path):
    fx = load(path)
    hs = run_lupa(fx["object"])
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
    healthy = run_lupa(obj)["status"] == "Healthy"
    if (obj.get("spec") or {}).get("suspend"):
        assert not healthy
    else:
        assert released == healthy


def test_generation_compared_numerically():
    """JSON numbers arrive in gopher-lua as floats; 3 and 3.0 must compare equal."""
    fx = load(next(p for p in FIXTURES if p.stem == "contract-succeeded"))
    obj = fx["object"]
    obj["metadata"]["generation"] = float(obj["metadata"]["generation"])
    assert run_lupa(obj)["status"] == "Healthy"


def test_configmap_snippet_embeds_the_same_script():
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][KEY].strip() == LUA.read_text().strip()
    assert not any(k.startswith("resource.customizations.useOpenLibs") for k in cm["data"]), \
        "the script must work in Argo CD's default sandbox"
    assert set(cm["data"]) == {KEY}, json.dumps(sorted(cm["data"]))
