"""A throwaway PKI for tests: CA, server (server.test, 127.0.0.1, ::1), expired server,
server from an unknown CA, and a client certificate for mutual TLS. ECDSA P-256."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    expired_cert: Path
    expired_key: Path
    rogue_cert: Path
    rogue_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    directory: Path,
    stem: str,
    cn: str,
    issuer_key,
    issuer_name,
    *,
    ca: bool = False,
    client: bool = False,
    expired: bool = False,
):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (
        (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
        if expired
        else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30))
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name or _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(cn),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / f"{stem}.key", key)
    return key, cert


def make_pki(directory: Path | str) -> Pki:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue(directory, "ca", "kquic test CA", None, None, ca=True)
    _issue(directory, "server", "server.test", ca_key, ca_cert.subject)
    _issue(directory, "expired", "server.test", ca_key, ca_cert.subject, expired=True)
    rogue_key, rogue_cert = _issue(directory, "rogue-ca", "rogue CA", None, None, ca=True)
    _issue(directory, "rogue", "server.test", rogue_key, rogue_cert.subject)
    _issue(directory, "client", "client.test", ca_key, ca_cert.subject, client=True)
    d = directory
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "expired.pem",
        d / "expired.key",
        d / "rogue.pem",
        d / "rogue.key",
        d / "client.pem",
        d / "client.key",
    )
