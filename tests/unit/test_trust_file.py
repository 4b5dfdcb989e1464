"""A trust file must hold certificates: one that holds none is an error naming it,
not a handshake that fails later with "The certificate issuer is unknown"."""

from __future__ import annotations

import pytest

from handshake import gnutls
from handshake.libquic import HandshakeParams, _load_x509_credentials
from tests.certs import make_pki


def test_a_trust_file_without_certificates_is_an_error(tmp_path) -> None:
    not_pem = tmp_path / "passwd"
    not_pem.write_text("root:x:0:0:root:/root:/bin/bash\n")
    creds = gnutls.CertificateCredentials()
    try:
        with pytest.raises(gnutls.GnutlsError, match=f"no certificate in {not_pem}"):
            creds.set_trust_file(str(not_pem))
    finally:
        creds.close()


def test_a_handshake_reports_the_empty_trust_file(tmp_path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(gnutls.GnutlsError, match="no certificate in"):
        _load_x509_credentials(HandshakeParams(ca_file=str(empty)), verify=True)


def test_a_real_trust_file_loads(tmp_path) -> None:
    pki = make_pki(tmp_path)
    creds = gnutls.CertificateCredentials()
    try:
        assert creds.set_trust_file(str(pki.ca)) == 1
    finally:
        creds.close()
