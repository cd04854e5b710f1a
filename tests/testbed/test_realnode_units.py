"""The real node's pure parts, without root or a cluster: the network confinement check refuses every shape that
would let a pod's packet leave this machine, the CNI network has no default route, and the pause image archive is
a valid, reproducible OCI image."""

from __future__ import annotations

import copy
import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from tests.testbed import realnode as rn

SAFE = {
    "service_route": f"unreachable {rn.SERVICE_CIDR} \n",
    "bridge_routes": f"{rn.POD_SUBNET} proto kernel scope link src {rn.NODE_IP} \n",
    "forward_rules": (
        "-P FORWARD ACCEPT\n"
        f'-A FORWARD -i {rn.BRIDGE} ! -o {rn.BRIDGE} -m comment --comment {rn.RULE_COMMENT} -j DROP\n'
        f'-A FORWARD ! -i {rn.BRIDGE} -o {rn.BRIDGE} -m comment --comment {rn.RULE_COMMENT} -j DROP\n'
        "-A FORWARD -i docker0 -j ACCEPT\n"
    ),
    "nat_rules": f"-A PREROUTING -d {rn.NODE_IP}/32 -i {rn.BRIDGE} -p tcp -j DNAT --to-destination 127.0.0.1\n",
}


def conflist(tmp_path: Path) -> dict:
    return rn.cni_config(tmp_path / "ipam")


def test_the_node_network_as_configured_is_confined(tmp_path: Path) -> None:
    assert rn.confinement_problems(conflist(tmp_path), **SAFE) == []


def test_pods_get_no_default_route_and_no_masquerading(tmp_path: Path) -> None:
    bridge = conflist(tmp_path)["plugins"][0]
    assert bridge["ipMasq"] is False and bridge["isGateway"] is False and bridge["isDefaultGateway"] is False
    assert bridge["ipam"]["routes"] == [{"dst": rn.SERVICE_CIDR, "gw": rn.NODE_IP}]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c, s: c["plugins"][0].update(ipMasq=True), "masquerades"),
        (lambda c, s: c["plugins"][0].update(isGateway=True), "gateway"),
        (lambda c, s: c["plugins"][0].update(isDefaultGateway=True), "gateway"),
        (lambda c, s: c["plugins"][0]["ipam"]["routes"].append({"dst": "0.0.0.0/0"}), "route to 0.0.0.0/0"),
        (lambda c, s: c["plugins"][0]["ipam"]["routes"].append({"dst": "192.0.2.0/24"}), "192.0.2.0/24"),
        (lambda c, s: c["plugins"].insert(0, {"type": "ptp"}), "first CNI plugin"),
        (lambda c, s: s.update(service_route=""), "not an unreachable route"),
        (lambda c, s: s.update(service_route=f"blackhole {rn.SERVICE_CIDR}"), "not an unreachable route"),
        (lambda c, s: s.update(bridge_routes=s["bridge_routes"] + f"default via {rn.NODE_IP} dev {rn.BRIDGE}\n"),
         "route via the pod bridge to default"),
        (lambda c, s: s.update(forward_rules="-P FORWARD ACCEPT\n"), "no FORWARD rule drops"),
        (lambda c, s: s.update(forward_rules="-A FORWARD -j ACCEPT\n" + s["forward_rules"]), "ACCEPT rule comes before"),
        (lambda c, s: s.update(nat_rules=s["nat_rules"] + f"-A POSTROUTING -s {rn.POD_SUBNET} -j MASQUERADE\n"),
         "source-NATed"),
    ],
)
def test_every_leaky_shape_is_refused(tmp_path: Path, mutate, expected: str) -> None:
    c, s = copy.deepcopy(conflist(tmp_path)), dict(SAFE)
    mutate(c, s)
    problems = rn.confinement_problems(c, **s)
    assert any(expected in p for p in problems), problems


def test_kubelet_config_fits_this_machine_kind(tmp_path: Path) -> None:
    pair = rn.certs.Pair(tmp_path / "s.crt", tmp_path / "s.key")
    cfg = rn.kubelet_config(port=1, healthz_port=2, client_ca=tmp_path / "ca.crt", serving=pair,
                            resolv_conf=tmp_path / "resolv.conf", pod_logs=tmp_path / "logs")
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs" and cfg["readOnlyPort"] == 0
    assert cfg["address"] == rn.NODE_IP and cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["imageGCHighThresholdPercent"] == 100  # imported images are never collected (nothing can be pulled)


def test_pause_image_archive_is_a_reproducible_oci_image(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    rn.pause_oci_archive(binary, a, "schemagate.test/pause:1")
    rn.pause_oci_archive(binary, b, "schemagate.test/pause:1")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as t:
        names = t.getnames()
        index = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
        blobs = {n: t.extractfile(n).read() for n in names if n.startswith("blobs/")}  # type: ignore[union-attr]
    assert "oci-layout" in names
    for name, blob in blobs.items():  # content-addressed
        assert name == "blobs/sha256/" + hashlib.sha256(blob).hexdigest()
    mdesc = index["manifests"][0]
    assert mdesc["annotations"]["io.containerd.image.name"] == "schemagate.test/pause:1"
    manifest = json.loads(blobs["blobs/" + mdesc["digest"].replace(":", "/")])
    config = json.loads(blobs["blobs/" + manifest["config"]["digest"].replace(":", "/")])
    assert config["config"]["Entrypoint"] == ["/pause"] and config["os"] == "linux"
