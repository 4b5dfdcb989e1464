"""A throwaway PKI for tests: a CA, a server certificate for ``server.test``, 127.0.0.1 and
::1, an expired server certificate, a certificate from an unknown CA, and a client
certificate for mutual TLS. ECDSA P-256 keeps generation in the milliseconds.

Every certificate and key is a PEM file in the given directory, so both the in-memory
tests and tools that take ``--cert``/``--key`` paths can use them.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "server.test"
CLIENT_NAME = "client.test"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files. ``ca`` signs everything except ``rogue_*``."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    expired_cert: Path
    expired_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class Issuer:
    """A CA that can sign more certificates, e.g. ``load_issuer(pki.ca, pki.ca_key)``."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def load_issuer(cert_path: Path, key_path: Path) -> Issuer:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issuer(cert.subject, key)


def write_pair(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """Write ``stem.pem`` and ``stem.key``; returns their paths."""
    _write_cert(directory / f"{stem}.pem", cert)
    _write_key(directory / f"{stem}.key", key)
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(cn: str) -> tuple[x509.Certificate, Issuer]:
    key = _key()
    name = _name(cn)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, Issuer(name, key)


def issue(
    issuer: Issuer,
    cn: str,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    client: bool = False,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by ``issuer``: server auth with the given SANs, or
    client auth."""
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=825)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


def make_pki(directory: Path | str) -> Pki:
    """Write a fresh PKI into ``directory`` (created if missing) and return its paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    server_sans = {"dns": (SERVER_NAME,), "ips": ("127.0.0.1", "::1")}

    ca_cert, ca = _ca("kquic test CA")
    rogue_ca_cert, rogue = _ca("unknown test CA")
    leaves = {
        "server": issue(ca, SERVER_NAME, **server_sans),
        "expired": issue(ca, SERVER_NAME, expired=True, **server_sans),
        "rogue": issue(rogue, SERVER_NAME, **server_sans),
        "client": issue(ca, CLIENT_NAME, client=True),
    }
    _write_cert(d / "ca.pem", ca_cert)
    _write_key(d / "ca.key", ca.key)
    _write_cert(d / "rogue-ca.pem", rogue_ca_cert)
    for stem, (cert, key) in leaves.items():
        write_pair(d, stem, cert, key)
    return Pki(
        directory=d,
        ca=d / "ca.pem",
        ca_key=d / "ca.key",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        expired_cert=d / "expired.pem",
        expired_key=d / "expired.key",
        rogue_ca=d / "rogue-ca.pem",
        rogue_cert=d / "rogue.pem",
        rogue_key=d / "rogue.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )
