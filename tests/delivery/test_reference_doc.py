"""docs/reference.md is generated from manifests/crd.yaml and kept up to date."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.delivery.helm import ROOT


def test_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, "docs/gen_reference.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_reference_lists_every_spec_field():
    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    text = (ROOT / "docs" / "reference.md").read_text()
    for name in spec:
        assert f"`spec.{name}`" in text, name
