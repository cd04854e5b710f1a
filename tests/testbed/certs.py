"""Certificates for the test bed, made with the `cryptography` package.

One throw-away CA signs everything: the API server's serving certificate (127.0.0.1, localhost and the in-cluster
service names), the client certificates (an admin in ``system:masters``, the controller manager's
``system:kube-controller-manager`` identity, the API server's client for the node stand-in's kubelet endpoint), the
node stand-in's serving certificate, and a separate service-account signing key pair.

ECDSA P-256 keys keep generation in the milliseconds (RSA 2048 would cost ~0.1-0.5 s per key on a busy machine).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)

SERVING_DNS = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
]
SERVING_IPS = ["127.0.0.1", "::1", "10.0.0.1"]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of every PEM file written by :func:`generate`."""

    dir: Path
    ca: Pair
    apiserver: Pair  # serving certificate of kube-apiserver
    admin: Pair  # CN=schemagate-admin, O=system:masters
    controller_manager: Pair  # CN=system:kube-controller-manager
    kubelet_client: Pair  # kube-apiserver -> node stand-in (kubectl logs)
    node_serving: Pair  # the node stand-in's kubelet endpoint
    sa_key: Path  # service-account signing key (private)
    sa_pub: Path  # service-account verification key (public)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signature for every certificate; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(cn: str = "schemagate-testbed-ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(cn)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    *,
    orgs: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a leaf certificate signed by the CA (server and/or client usage)."""
    key = _key()
    now = _now()
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, orgs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_pair(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def generate(directory: Path) -> Pki:
    """Write a complete PKI for one test-bed run into ``directory`` and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca()
    ca = _write_pair(directory, "ca", ca_cert, ca_key)

    def leaf(stem: str, cn: str, **kw) -> Pair:
        cert, key = issue(ca_cert, ca_key, cn, **kw)
        return _write_pair(directory, stem, cert, key)

    apiserver = leaf("apiserver", "kube-apiserver", server=True, dns=SERVING_DNS, ips=SERVING_IPS)
    admin = leaf("admin", "schemagate-admin", orgs=("system:masters",), client=True)
    kcm = leaf("controller-manager", "system:kube-controller-manager", client=True)
    kubelet_client = leaf(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",), client=True
    )
    node_serving = leaf("node-serving", "system:node:testbed", server=True, dns=["localhost"], ips=["127.0.0.1"])

    sa = _key()
    sa_key = directory / "sa.key"
    _write_key(sa, sa_key)
    sa_pub = directory / "sa.pub"
    sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(directory, ca, apiserver, admin, kcm, kubelet_client, node_serving, sa_key, sa_pub)
