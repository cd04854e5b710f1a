"""Chart metadata chart-testing looks at: maintainers, the ci/*-values.yaml variants (each linted and rendered, as
`ct lint` does), and a README generated from values.yaml comments and kept in step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.delivery.helm import CHARTS, ROOT, helm

VARIANTS = sorted(CHARTS.glob("*/ci/*-values.yaml"))


def test_readmes_are_generated_from_values():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_chart_readme.py"), "--check"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_readme_lists_every_value():
    text = (CHARTS / "schemagate" / "README.md").read_text()
    for key in ("image.repository", "metrics.serviceMonitor.enabled", "metrics.podMonitor.labels",
                "metrics.prometheusRule.runningLongerThan", "metrics.dashboard.labels", "resources.limits",
                "podSecurityContext"):
        assert f"| `{key}` |" in text, key


@pytest.mark.parametrize("chart", ["schemagate", "example-app"])
def test_chart_has_maintainers(chart):
    meta = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())
    assert meta.get("maintainers") and all(m.get("name") for m in meta["maintainers"])


def test_every_chart_has_ci_variants():
    assert {p.parent.parent.name for p in VARIANTS} == {"schemagate", "example-app"}
    assert len([p for p in VARIANTS if p.parent.parent.name == "schemagate"]) >= 3


@pytest.mark.parametrize("values", VARIANTS, ids=[f"{p.parent.parent.name}/{p.name}" for p in VARIANTS])
def test_ci_variant_lints_and_renders(values):
    chart = values.parent.parent
    out = helm("lint", "--strict", str(chart), "-f", str(values)).stdout
    assert "0 chart(s) failed" in out
    docs = [d for d in yaml.safe_load_all(helm("template", "ci", str(chart), "-f", str(values)).stdout) if d]
    assert docs and all(d.get("kind") and d.get("metadata", {}).get("name") for d in docs)
