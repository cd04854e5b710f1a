"""spec.allowDowngrade and spec.maxDataLoss: in the CRD (no server-side default, so existing resources keep their
spec hash), the chart's copy and the model."""

from __future__ import annotations

from pathlib import Path

import yaml

from schemagate.core.model import Migration
from tests.unit.helpers import body, mig

ROOT = Path(__file__).resolve().parents[2]


def _spec_props(path: Path) -> dict:
    crd = yaml.safe_load(path.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_crd_fields_without_defaults_in_both_copies() -> None:
    for path in (ROOT / "manifests" / "crd.yaml", ROOT / "charts/schemagate/crds/databasemigrations.schemagate.dev.yaml"):
        props = _spec_props(path)
        assert props["allowDowngrade"]["type"] == "boolean" and "default" not in props["allowDowngrade"]
        assert props["maxDataLoss"]["minimum"] == 0 and "default" not in props["maxDataLoss"]
        assert "DowngradeNotAllowed" in props["allowDowngrade"]["description"]


def test_model_parses_the_fields() -> None:
    m = mig()
    assert (m.allow_downgrade, m.max_data_loss) == (False, 0)
    m = Migration.from_body(body(allowDowngrade=True, maxDataLoss=120))
    assert (m.allow_downgrade, m.max_data_loss) == (True, 120)
