"""The backup step on the real node, into a PersistentVolumeClaim as users configure it
(``spec.backup.volume.persistentVolumeClaim``).

The test bed has no dynamic provisioning, so the volume is provisioned statically, as an administrator of a
cluster without a CSI driver would: a ``local`` PersistentVolume on a directory under the test run's own
directory, owned by root with mode 0755 (what a freshly formatted filesystem looks like), pinned to the node,
bound to the claim by ``claimRef``. The kubelet bind-mounts it into the backup Job's pod for real; the backup runs
as uid 10001 of the operator image, and what it wrote is read back from the node's directory.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.delivery.e2e_support import get_dbm
from tests.realnode.support import APP, diagnostics, install_app, jobs_by_step, revision

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]

NODE = "schemagate-node"
CLAIM = "backups"


@pytest.fixture
def backup_claim(real_kube: Any, real_namespace: str) -> Iterator[Path]:
    """A bound claim ``backups`` in the test's namespace on a static ``local`` PersistentVolume; yields the node
    directory behind it. The PersistentVolume (cluster-scoped, reclaim policy Retain) is deleted afterwards."""
    ns = real_namespace
    path = real_kube.run_dir / "volumes" / ns
    path.mkdir(parents=True, mode=0o755)
    path.chmod(0o755)  # root:root 0755, as a fresh filesystem: the pod's fsGroup must make it writable
    pv = f"{ns}-{CLAIM}"
    real_kube.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "claimRef": {"namespace": ns, "name": CLAIM},
                 "local": {"path": str(path)},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}},
    })  # fmt: skip
    real_kube.apply({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }, ns)  # fmt: skip

    def bound() -> bool:
        pvc = real_kube.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{CLAIM}")
        return (pvc.get("status") or {}).get("phase") == "Bound"

    real_kube.wait_for(bound, timeout=120, interval=1, message=f"claim {CLAIM} Bound to {pv}")
    try:
        yield path
    finally:
        real_kube.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_backups_land_on_a_persistent_volume_as_uid_10001(real_kube: Any, operator: dict, node_images: dict,
                                                          real_namespace: str, pod_db: tuple[str, str],
                                                          backup_claim: Path) -> None:  # fmt: skip
    url, in_pod = pod_db
    ns = real_namespace
    backup = {"enabled": True, "volume": {"persistentVolumeClaim": {"claimName": CLAIM}}}
    install_app(real_kube, ns, node_images, in_pod, "0001", "--set-json", f"migration.backup={json.dumps(backup)}")
    install_app(real_kube, ns, node_images, in_pod, "0003", "--set-json", f"migration.backup={json.dumps(backup)}")
    st = get_dbm(real_kube, ns, APP)["status"]
    assert st["phase"] == "Succeeded" and st["currentRevision"] == "0003", st
    assert revision(url) == "0003"
    jobs = jobs_by_step(real_kube, ns)
    assert {"backup", "precheck", "migrate", "verify"} <= set(jobs), sorted(jobs)
    assert all(j["status"].get("succeeded") == 1 for j in jobs["backup"]), [j["status"] for j in jobs["backup"]]

    # the backup pods mounted the claim (the kubelet's bind mount of the local volume), nothing else
    for j in jobs["backup"]:
        pods = real_kube.pods(ns, f"job-name={j['metadata']['name']}")
        assert pods, j["metadata"]["name"]
        for pod in pods:
            vols = {v["name"]: v for v in pod["spec"]["volumes"]}
            assert vols["backups"]["persistentVolumeClaim"]["claimName"] == CLAIM, vols
            assert pod["spec"]["securityContext"]["fsGroup"] == 10001, pod["spec"]["securityContext"]

    # every run's backup is on the node's directory: the archive and its sha256 sidecar, written by uid 10001
    dumps = sorted(backup_claim.rglob("*.dump"))
    assert len(dumps) == len(jobs["backup"]) >= 2, (dumps, diagnostics(real_kube, ns))
    assert not list(backup_claim.rglob("*.partial")), list(backup_claim.rglob("*"))
    for dump in dumps:
        assert dump.stat().st_uid == 10001 and dump.stat().st_size > 0, (dump, dump.stat())
        sidecar = dump.with_name(dump.name + ".sha256")
        # the whole database: readable by its owner only, on the fsGroup volume too (restore and rehearse read it
        # as the same user 10001)
        assert stat.S_IMODE(dump.stat().st_mode) == stat.S_IMODE(sidecar.stat().st_mode) == 0o600, \
            (oct(dump.stat().st_mode), oct(sidecar.stat().st_mode))
        digest = hashlib.sha256(dump.read_bytes()).hexdigest()
        assert sidecar.read_text().split()[0] == digest, (sidecar, sidecar.read_text())
    # the status names the newest backup as the pod saw it (/backups/...) with the digest of the file on the node
    newest = max(dumps, key=lambda p: p.stat().st_mtime)
    assert st["backup"]["sha256"] == hashlib.sha256(newest.read_bytes()).hexdigest(), st["backup"]
    assert Path(st["backup"]["path"]).name == newest.name, st["backup"]
    # status.backups lists every run's backup, newest first, each with the digest of its file on the node
    on_node = [(p.name, hashlib.sha256(p.read_bytes()).hexdigest())
               for p in sorted(dumps, key=lambda p: p.stat().st_mtime, reverse=True)]  # fmt: skip
    assert [(Path(b["path"]).name, b["sha256"]) for b in st["backups"]] == on_node, st["backups"]
