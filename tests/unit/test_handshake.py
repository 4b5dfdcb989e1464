"""The handshake library end to end in memory: a client and a server driver joined back to
back by ``MemorySocket``, each in its own thread, every wait bounded."""

from __future__ import annotations

import errno
import gc
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from handshake import gnutls, libquic
from handshake.libquic import (
    HandshakeError,
    HandshakeParams,
    HandshakeResult,
    quic_client_handshake,
    quic_handshake,
    quic_server_handshake,
    read_psk_file,
)
from quic import uapi
from tests.certs import Pki, issue, load_issuer, make_pki, write_pair

JOIN = 20.0  # no handshake here takes more than a fraction of this
ALERT_NO_APPLICATION_PROTOCOL = 120

Tamper = Callable[[int, bytes], bytes | None]


class MemorySocket:
    """One end of an in-memory handshake channel implementing HandshakeSocket. It records
    each secret installed, the peer's transport parameters and the ALPN written back."""

    def __init__(self, is_server: bool, alpn: str = "", tp: bytes = b"") -> None:
        self.is_server = is_server
        self.inbox: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self.peer: MemorySocket | None = None
        self.alpn = alpn.encode()
        self.local_tp = tp
        self.peer_tp: bytes | None = None
        self.secrets: dict[tuple[int, int], uapi.QuicCryptoSecret] = {}
        self.sent: list[tuple[int, bytes, bool]] = []
        self.close_record: bytes | None = None
        self.peer_close: bytes | None = None
        self.tamper: Tamper | None = None  # rewrites (or drops, with None) what we send
        self.ticket_key = b""

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]:
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(errno.ETIMEDOUT, "no handshake data") from None
        if item is None:
            raise ConnectionResetError(errno.ECONNRESET, "peer closed")
        return item

    def send_handshake(self, level: int, data: bytes, more: bool) -> None:
        assert self.peer is not None
        self.sent.append((level, data, more))
        if self.tamper is not None:
            data = self.tamper(level, data)
            if data is None:
                return
        self.peer.inbox.put((level, data))

    def setsockopt(self, level: int, optname: int, value: bytes) -> None:
        assert level == uapi.SOL_QUIC
        if optname == uapi.QUIC_SOCKOPT_CRYPTO_SECRET:
            rec = uapi.QuicCryptoSecret.unpack(value)
            key = (rec.send, rec.level)
            if key in self.secrets:
                raise OSError(errno.EINVAL, "secret installed twice")
            self.secrets[key] = rec
        elif optname == uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT:
            self.peer_tp = value
        elif optname == uapi.QUIC_SOCKOPT_ALPN:
            self.alpn = value
        elif optname == uapi.QUIC_SOCKOPT_SESSION_TICKET:
            self.ticket_key = value  # a client's session data, kept for its next connection
        elif optname == uapi.QUIC_SOCKOPT_CONNECTION_CLOSE:
            self.close_record = value
            if self.peer is not None:
                self.peer.peer_close = value
                self.peer.inbox.put(None)
        else:
            raise OSError(errno.ENOPROTOOPT, "unsupported option")

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes:
        assert level == uapi.SOL_QUIC
        if optname == uapi.QUIC_SOCKOPT_TOKEN:
            if self.is_server:
                raise OSError(errno.EINVAL, "a server has no token")
            return b""
        if optname == uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT:
            return self.local_tp
        if optname == uapi.QUIC_SOCKOPT_ALPN:
            return self.alpn
        if optname == uapi.QUIC_SOCKOPT_SESSION_TICKET:
            return self.ticket_key
        if optname == uapi.QUIC_SOCKOPT_CONNECTION_CLOSE:
            if self.peer_close is None:
                raise OSError(errno.ENOTCONN, "not closed")
            return self.peer_close
        raise OSError(errno.ENOPROTOOPT, "unsupported option")

    def secret(self, send: bool, level: int) -> bytes:
        rec = self.secrets[(int(send), level)]
        size = 48 if rec.type == uapi.TLS_CIPHER_AES_GCM_256 else 32
        return rec.secret[:size]


CLIENT_TP = b"\x01\x04\x80\x00\x75\x30client"
SERVER_TP = b"\x01\x04\x80\x00\xea\x60server-parameters"


def socket_pair(client_alpn: str = "", server_alpn: str = "") -> tuple[MemorySocket, MemorySocket]:
    c = MemorySocket(False, client_alpn, CLIENT_TP)
    s = MemorySocket(True, server_alpn, SERVER_TP)
    c.peer, s.peer = s, c
    return c, s


@dataclass
class Pair:
    client: HandshakeResult | BaseException
    server: HandshakeResult | BaseException
    csock: MemorySocket
    ssock: MemorySocket
    extra: dict[str, object] = field(default_factory=dict)

    def ok(self) -> tuple[HandshakeResult, HandshakeResult]:
        for r in (self.client, self.server):
            if isinstance(r, BaseException):
                raise r
        assert isinstance(self.client, HandshakeResult)
        assert isinstance(self.server, HandshakeResult)
        return self.client, self.server


def run_pair(
    client: HandshakeParams,
    server: HandshakeParams,
    *,
    client_tamper: Tamper | None = None,
    server_tamper: Tamper | None = None,
) -> Pair:
    """Both handshakes, each in a thread; every outcome (result or exception) kept."""
    csock, ssock = socket_pair()
    csock.tamper, ssock.tamper = client_tamper, server_tamper
    out: dict[str, HandshakeResult | BaseException] = {}

    def run(name: str, sock: MemorySocket, params: HandshakeParams) -> None:
        try:
            out[name] = quic_handshake(sock, params)
        except BaseException as exc:
            out[name] = exc

    threads = [
        threading.Thread(target=run, args=("server", ssock, server), daemon=True),
        threading.Thread(target=run, args=("client", csock, client), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
        assert not t.is_alive(), "handshake thread did not finish"
    return Pair(out["client"], out["server"], csock, ssock)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_leaked_sessions():
    yield
    gc.collect()
    assert gnutls.live_sessions() == 0


def x509_params(pki: Pki, **client: object) -> tuple[HandshakeParams, HandshakeParams]:
    server_kw = {k[4:]: client.pop(k) for k in list(client) if k.startswith("srv_")}
    server_kw.setdefault("cert_file", str(pki.server_cert))
    server_kw.setdefault("key_file", str(pki.server_key))
    c = HandshakeParams(
        is_server=False,
        ca_file=str(pki.ca),
        server_name="server.test",
        alpns="sunrpc,smb",
        timeout=5,
    )
    s = HandshakeParams(is_server=True, alpns="smb", timeout=5)
    return replace(c, **client), replace(s, **server_kw)  # type: ignore[arg-type]


def expect_failure(pair: Pair, side: str, exc_type: type[BaseException]) -> BaseException:
    exc = getattr(pair, side)
    assert isinstance(exc, exc_type), f"{side}: {exc!r}"
    return exc


# ---------------------------------------------------------------------------
# a full handshake


def test_secrets_match_at_every_level(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki))
    cres, sres = pair.ok()
    c, s = pair.csock, pair.ssock
    for level in (uapi.QUIC_CRYPTO_HANDSHAKE, uapi.QUIC_CRYPTO_APP):
        assert c.secret(True, level) == s.secret(False, level)
        assert s.secret(True, level) == c.secret(False, level)
        assert c.secret(True, level) != c.secret(False, level)
    assert set(c.secrets) == set(s.secrets) == {(0, 2), (1, 2), (0, 0), (1, 0)}
    types = {rec.type for rec in [*c.secrets.values(), *s.secrets.values()]}
    assert types == {cres.cipher} == {sres.cipher}
    assert all(len(rec.pack()) == 56 for rec in c.secrets.values())
    assert not cres.resumed and not sres.resumed


def test_transport_parameters_cross(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki))
    pair.ok()
    assert pair.ssock.peer_tp == CLIENT_TP
    assert pair.csock.peer_tp == SERVER_TP


def test_flights_use_more_on_all_but_last(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki))
    pair.ok()
    server_flight = [(lvl, more) for lvl, _, more in pair.ssock.sent if lvl != uapi.QUIC_CRYPTO_APP]
    assert server_flight[0] == (uapi.QUIC_CRYPTO_INITIAL, True)  # ServerHello
    assert server_flight[-1] == (uapi.QUIC_CRYPTO_HANDSHAKE, False)  # Finished
    assert all(more for _, more in server_flight[:-1])
    assert pair.csock.sent[0][0] == uapi.QUIC_CRYPTO_INITIAL


def test_alpn_negotiated_and_written_back(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki))
    cres, sres = pair.ok()
    assert cres.alpn == sres.alpn == "smb"
    assert pair.csock.alpn == pair.ssock.alpn == b"smb"


def test_alpn_from_socket_when_not_given(pki: Pki) -> None:
    c, s = x509_params(pki, alpns=None, srv_alpns=None)
    csock, ssock = socket_pair("smb,h3", "h3")
    out: dict[str, object] = {}
    t = threading.Thread(target=lambda: out.update(s=quic_handshake(ssock, s)), daemon=True)
    t.start()
    cres = quic_handshake(csock, c)
    t.join(JOIN)
    assert cres.alpn == "h3" and out["s"].alpn == "h3"  # type: ignore[attr-defined]


def test_alpn_mismatch_fails_with_no_application_protocol(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki, alpns="nfs"))
    err = expect_failure(pair, "server", HandshakeError)
    assert err.code == 0x100 + ALERT_NO_APPLICATION_PROTOCOL
    assert "No supported application protocol" in str(err)
    cerr = expect_failure(pair, "client", HandshakeError)  # learnt from the close
    assert cerr.code == 0x100 + ALERT_NO_APPLICATION_PROTOCOL
    assert "No supported application protocol" in cerr.reason


# ---------------------------------------------------------------------------
# certificates


@pytest.mark.parametrize("name", ["server.test", "127.0.0.1", "::1"])
def test_certificate_accepts_right_name(pki: Pki, name: str) -> None:
    cres, _ = run_pair(*x509_params(pki, server_name=name)).ok()
    assert cres.peer_subject == "CN=server.test"


def test_certificate_rejects_wrong_name(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki, server_name="other.test"))
    err = expect_failure(pair, "client", HandshakeError)
    assert "does not match the expected" in str(err)
    assert err.alert_name == "Certificate is bad"


def test_certificate_rejects_wrong_ip(pki: Pki) -> None:
    pair = run_pair(*x509_params(pki, server_name="127.0.0.2"))
    assert "does not match the expected" in str(expect_failure(pair, "client", HandshakeError))


def test_certificate_rejects_expired(pki: Pki) -> None:
    pair = run_pair(
        *x509_params(pki, srv_cert_file=str(pki.expired_cert), srv_key_file=str(pki.expired_key))
    )
    assert "expired" in str(expect_failure(pair, "client", HandshakeError))


def test_certificate_rejects_unknown_ca(pki: Pki) -> None:
    pair = run_pair(
        *x509_params(pki, srv_cert_file=str(pki.rogue_cert), srv_key_file=str(pki.rogue_key))
    )
    err = expect_failure(pair, "client", HandshakeError)
    assert "issuer is unknown" in str(err)


def test_insecure_client_accepts_unknown_ca(pki: Pki) -> None:
    c, s = x509_params(
        pki,
        insecure=True,
        srv_cert_file=str(pki.rogue_cert),
        srv_key_file=str(pki.rogue_key),
    )
    run_pair(c, s).ok()


def test_credentials_are_loaded_once_and_still_verify(pki: Pki, monkeypatch) -> None:
    """Handshakes on the same files share one parse of them; every handshake still
    verifies the peer (a server with an unknown issuer fails with a cached CA)."""
    libquic.clear_credentials_cache()
    loads: list[str] = []
    real_key, real_trust = (
        gnutls.CertificateCredentials.set_key_file,
        gnutls.CertificateCredentials.set_trust_file,
    )
    monkeypatch.setattr(
        gnutls.CertificateCredentials,
        "set_key_file",
        lambda self, *a: (loads.append("key"), real_key(self, *a))[1],
    )
    monkeypatch.setattr(
        gnutls.CertificateCredentials,
        "set_trust_file",
        lambda self, *a: (loads.append("trust"), real_trust(self, *a))[1],
    )
    for _ in range(3):
        run_pair(*x509_params(pki)).ok()
    assert sorted(loads) == ["key", "trust"]
    pair = run_pair(
        *x509_params(pki, srv_cert_file=str(pki.rogue_cert), srv_key_file=str(pki.rogue_key))
    )
    assert "issuer is unknown" in str(expect_failure(pair, "client", HandshakeError))
    pair = run_pair(*x509_params(pki, server_name="other.test"))
    expect_failure(pair, "client", HandshakeError)
    libquic.clear_credentials_cache()


def test_credentials_reloaded_when_a_file_changes(pki: Pki, tmp_path: Path) -> None:
    """A replaced CA file or certificate is read again on the next handshake."""
    libquic.clear_credentials_cache()
    ca = tmp_path / "ca.pem"
    cert, key = tmp_path / "cert.pem", tmp_path / "cert.key"
    ca.write_bytes(pki.ca.read_bytes())
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    c, s = x509_params(pki, ca_file=str(ca), srv_cert_file=str(cert), srv_key_file=str(key))
    run_pair(c, s).ok()
    # The server now presents a certificate of another CA: refused, then trusted once
    # the client's CA file names that CA.
    cert.write_bytes(pki.rogue_cert.read_bytes())
    key.write_bytes(pki.rogue_key.read_bytes())
    assert "issuer is unknown" in str(expect_failure(run_pair(c, s), "client", HandshakeError))
    ca.write_bytes(pki.rogue_ca.read_bytes())
    run_pair(c, s).ok()
    libquic.clear_credentials_cache()


def test_server_certificate_from_memory(pki: Pki) -> None:
    c, s = x509_params(
        pki,
        ca_file=None,
        ca_pem=pki.ca.read_bytes(),
        srv_cert_file=None,
        srv_key_file=None,
        srv_cert_pem=pki.server_cert.read_bytes(),
        srv_key_pem=pki.server_key.read_bytes(),
    )
    run_pair(c, s).ok()


def test_mutual_tls(pki: Pki) -> None:
    c, s = x509_params(
        pki,
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
        srv_cert_request=gnutls.GNUTLS_CERT_REQUIRE,
        srv_ca_file=str(pki.ca),
    )
    cres, sres = run_pair(c, s).ok()
    assert sres.peer_subject == "CN=client.test"
    assert cres.peer_subject == "CN=server.test"


def test_mutual_tls_required_without_client_certificate(pki: Pki) -> None:
    c, s = x509_params(pki, srv_cert_request=gnutls.GNUTLS_CERT_REQUIRE, srv_ca_file=str(pki.ca))
    pair = run_pair(c, s)
    err = expect_failure(pair, "server", HandshakeError)
    assert "certificate" in str(err).lower()


def test_mutual_tls_requested_is_optional(pki: Pki) -> None:
    c, s = x509_params(pki, srv_cert_request=gnutls.GNUTLS_CERT_REQUEST, srv_ca_file=str(pki.ca))
    _, sres = run_pair(c, s).ok()
    assert sres.peer_subject is None


@pytest.mark.parametrize("mode", [gnutls.GNUTLS_CERT_REQUEST, gnutls.GNUTLS_CERT_REQUIRE])
def test_mutual_tls_rejects_expired_client(pki: Pki, mode: int) -> None:
    cert, key = issue(load_issuer(pki.ca, pki.ca_key), "old.test", client=True, expired=True)
    cert_path, key_path = write_pair(pki.directory, f"old-client-{mode}", cert, key)
    c, s = x509_params(
        pki,
        cert_file=str(cert_path),
        key_file=str(key_path),
        srv_cert_request=mode,
        srv_ca_file=str(pki.ca),
    )
    err = expect_failure(run_pair(c, s), "server", HandshakeError)
    assert "expired" in str(err)


def test_mutual_tls_client_from_unknown_ca_is_not_sent(pki: Pki) -> None:
    """The server lists its CAs; GnuTLS sends no certificate that none of them signed."""
    c, s = x509_params(
        pki,
        cert_file=str(pki.rogue_cert),
        key_file=str(pki.rogue_key),
        srv_cert_request=gnutls.GNUTLS_CERT_REQUIRE,
        srv_ca_file=str(pki.ca),
    )
    err = expect_failure(run_pair(c, s), "server", HandshakeError)
    assert err.alert_name == "Certificate is required"


# ---------------------------------------------------------------------------
# PSK

PSK = bytes(range(32))


def psk_params(
    client_key: bytes = PSK, identity: str = "nfs-client"
) -> tuple[HandshakeParams, HandshakeParams]:
    c = HandshakeParams(
        is_server=False, psk_identity=identity, psk_key=client_key, alpns="smb", timeout=5
    )
    s = HandshakeParams(
        is_server=True, psk_identity="nfs-client", psk_key=PSK, alpns="smb", timeout=5
    )
    return c, s


def test_psk_handshake() -> None:
    pair = run_pair(*psk_params())
    cres, sres = pair.ok()
    assert sres.psk_identity == cres.psk_identity == "nfs-client"
    assert cres.peer_subject is None
    assert pair.csock.secret(True, 0) == pair.ssock.secret(False, 0)


def test_psk_wrong_key_fails() -> None:
    pair = run_pair(*psk_params(client_key=bytes(32)))
    err = expect_failure(pair, "server", HandshakeError)
    assert err.code >= 0x100
    assert isinstance(pair.client, HandshakeError | OSError)


def test_psk_unknown_identity_fails() -> None:
    pair = run_pair(*psk_params(identity="stranger"))
    expect_failure(pair, "server", HandshakeError)


def test_psk_files_with_libquic_calls(tmp_path: Path) -> None:
    path = tmp_path / "psk.txt"
    path.write_text(f"# keys\nnfs-client:{PSK.hex()}\nother:{bytes(16).hex()}\n")
    assert read_psk_file(str(path)) == {"nfs-client": PSK, "other": bytes(16)}
    csock, ssock = socket_pair()
    out: dict[str, object] = {}

    def serve() -> None:
        out["s"] = quic_server_handshake(ssock, str(path), None, "smb", timeout=5)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cres = quic_client_handshake(csock, str(path), None, "smb", timeout=5)
    t.join(JOIN)
    assert cres.psk_identity == "nfs-client"
    assert out["s"].psk_identity == "nfs-client"  # type: ignore[attr-defined]


def test_bad_psk_file(tmp_path: Path) -> None:
    path = tmp_path / "psk.txt"
    path.write_text("nfs-client:zz\n")
    with pytest.raises(ValueError, match=r"psk\.txt:1"):
        read_psk_file(str(path))


# ---------------------------------------------------------------------------
# resumption and 0-RTT


def test_resumption_with_ticket(pki: Pki) -> None:
    key = gnutls.generate_ticket_key()
    c, s = x509_params(pki, receive_ticket=5, srv_ticket_key=key)
    first, _ = run_pair(c, s).ok()
    assert first.session_data and not first.resumed
    cres, sres = run_pair(replace(c, session_data=first.session_data), s).ok()
    assert cres.resumed and sres.resumed
    assert not cres.early_data and not sres.early_data


def test_early_data_on_resumed_session(pki: Pki) -> None:
    key = gnutls.generate_ticket_key()
    c, s = x509_params(pki, receive_ticket=5, early_data=True, srv_ticket_key=key)
    s = replace(s, early_data=True)
    first, _ = run_pair(c, s).ok()
    assert first.session_data
    pair = run_pair(replace(c, session_data=first.session_data), s)
    cres, sres = pair.ok()
    assert cres.resumed and sres.resumed
    assert sres.early_data and cres.early_data
    early = uapi.QUIC_CRYPTO_EARLY
    assert pair.csock.secret(True, early) == pair.ssock.secret(False, early)
    assert (0, early) not in pair.csock.secrets and (1, early) not in pair.ssock.secrets
    assert pair.csock.secrets[(1, early)].type == cres.cipher


def test_replayed_client_hello_gets_no_early_data(pki: Pki) -> None:
    """RFC 9001 §9.2: a ClientHello with early data, replayed to the server, must not get
    its 0-RTT accepted again (GnuTLS anti-replay): no early receive key is installed,
    and without the real client the handshake goes no further."""
    key = gnutls.generate_ticket_key()
    c, s = x509_params(pki, receive_ticket=5, early_data=True, srv_ticket_key=key)
    s = replace(s, early_data=True)
    first, _ = run_pair(c, s).ok()
    pair = run_pair(replace(c, session_data=first.session_data), s)
    assert pair.ok()[1].early_data
    hello = next(data for level, data, _ in pair.csock.sent if level == uapi.QUIC_CRYPTO_INITIAL)
    _, victim = socket_pair()  # the victim server; the other end is never read
    victim.inbox.put((uapi.QUIC_CRYPTO_INITIAL, hello))
    with pytest.raises((TimeoutError, HandshakeError)):
        quic_handshake(victim, replace(s, timeout=0.5))
    assert (0, uapi.QUIC_CRYPTO_EARLY) not in victim.secrets


def test_no_ticket_within_wait(pki: Pki) -> None:
    c, s = x509_params(pki, receive_ticket=0.3, srv_send_ticket=False)
    cres, _ = run_pair(c, s).ok()
    assert cres.session_data is None


# ---------------------------------------------------------------------------
# ciphers


@pytest.mark.parametrize(
    "cipher",
    [
        uapi.TLS_CIPHER_AES_GCM_128,
        uapi.TLS_CIPHER_AES_GCM_256,
        uapi.TLS_CIPHER_CHACHA20_POLY1305,
        uapi.TLS_CIPHER_AES_CCM_128,
    ],
)
def test_cipher_pinned(pki: Pki, cipher: int) -> None:
    c, s = x509_params(pki, cipher=cipher, srv_cipher=cipher)
    pair = run_pair(c, s)
    cres, sres = pair.ok()
    assert cres.cipher == sres.cipher == cipher
    assert {r.type for r in pair.csock.secrets.values()} == {cipher}
    size = 48 if cipher == uapi.TLS_CIPHER_AES_GCM_256 else 32
    rec = pair.csock.secrets[(1, uapi.QUIC_CRYPTO_APP)]
    assert rec.secret[size:] == bytes(48 - size) and any(rec.secret[:size])


def test_unknown_cipher_rejected() -> None:
    with pytest.raises(ValueError):
        gnutls.quic_priority(99)


# ---------------------------------------------------------------------------
# bad input and failures


def test_truncated_client_hello_times_out() -> None:
    c, s = psk_params()
    c, s = replace(c, timeout=0.5), replace(s, timeout=0.5)
    pair = run_pair(c, s, client_tamper=lambda level, data: data[: len(data) // 2])
    err = expect_failure(pair, "server", TimeoutError)
    assert "timed out after 0.5s waiting for the rest of the client's ClientHello" in str(err)
    assert "waiting for the server's ServerHello" in str(
        expect_failure(pair, "client", TimeoutError)
    )


def test_corrupted_client_hello(pki: Pki) -> None:
    def corrupt(level: int, data: bytes) -> bytes:
        # legacy_version(2) random(32) session_id(1+0), then cipher_suites' length
        return data[:39] + b"\xff\xff" + data[41:]

    pair = run_pair(*x509_params(pki), client_tamper=corrupt)
    err = expect_failure(pair, "server", HandshakeError)
    assert err.gnutls_code < 0 and err.reason
    expect_failure(pair, "client", HandshakeError)


def test_corrupted_certificate_verify(pki: Pki) -> None:
    def corrupt(level: int, data: bytes) -> bytes:
        if level == uapi.QUIC_CRYPTO_HANDSHAKE and data[0] == 15:  # CertificateVerify
            return data[:-4] + bytes(b ^ 0xFF for b in data[-4:])
        return data

    pair = run_pair(*x509_params(pki), server_tamper=corrupt)
    err = expect_failure(pair, "client", HandshakeError)
    assert "signature" in str(err).lower()


def test_peer_never_answers() -> None:
    c, _ = psk_params()
    csock, _ssock = socket_pair()
    with pytest.raises(TimeoutError, match="waiting for the server's ServerHello"):
        quic_handshake(csock, replace(c, timeout=0.5))


def test_server_waits_for_client_hello_with_deadline() -> None:
    _, s = psk_params()
    _csock, ssock = socket_pair()
    with pytest.raises(TimeoutError, match="waiting for the client's ClientHello"):
        quic_handshake(ssock, replace(s, timeout=0.3))


def test_dead_socket_is_oserror() -> None:
    c, _ = psk_params()
    csock, _ssock = socket_pair()
    csock.inbox.put(None)
    with pytest.raises(ConnectionResetError):
        quic_handshake(csock, c)


def test_server_needs_a_certificate() -> None:
    _csock, ssock = socket_pair()
    with pytest.raises(ValueError, match="cert_file"):
        quic_handshake(ssock, HandshakeParams(is_server=True, alpns="smb", timeout=1))


def test_role_detected_from_socket(pki: Pki) -> None:
    c, s = x509_params(pki, is_server=None, srv_is_server=None)
    cres, sres = run_pair(c, s).ok()
    assert sres.is_server and not cres.is_server


def test_callback_exception_is_reraised(pki: Pki) -> None:
    class Broken(MemorySocket):
        def getsockopt(self, level: int, optname: int, buflen: int) -> bytes:
            if optname == uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT:
                raise OSError(errno.EINVAL, "cannot build transport parameters")
            return super().getsockopt(level, optname, buflen)

    sock = Broken(False, "smb")
    sock.peer = MemorySocket(True)
    c, _ = x509_params(pki)
    with pytest.raises(OSError, match="cannot build transport parameters"):
        quic_handshake(sock, c)


def test_keylog(pki: Pki, tmp_path: Path) -> None:
    lines: list[str] = []
    path = tmp_path / "keys.log"
    c, s = x509_params(pki, keylog=lines.append, srv_keylog=str(path))
    run_pair(c, s).ok()
    labels = {line.split()[0] for line in lines}
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"} <= labels
    assert path.read_text().splitlines() == lines


def test_session_freed_on_close_and_gc() -> None:
    s = gnutls.Session(gnutls.GNUTLS_CLIENT, None)  # type: ignore[arg-type]
    assert gnutls.live_sessions() == 1
    s.close()
    s.close()
    assert gnutls.live_sessions() == 0
    with gnutls.Session(gnutls.GNUTLS_SERVER, None) as s2:  # type: ignore[arg-type]
        assert gnutls.live_sessions() == 1
    assert s2._ptr is None
    s3 = gnutls.Session(gnutls.GNUTLS_CLIENT, None)  # type: ignore[arg-type]
    del s3
    gc.collect()
    assert gnutls.live_sessions() == 0


def test_gnutls_error_text() -> None:
    err = gnutls.GnutlsError(gnutls.GNUTLS_E_AGAIN)
    assert str(err) == gnutls.strerror(gnutls.GNUTLS_E_AGAIN)
    assert "again" in str(err).lower()
    assert gnutls.alert_name(ALERT_NO_APPLICATION_PROTOCOL)
    assert gnutls.check_version().startswith("3.")


def test_handshake_secret_protects_a_packet_the_peer_opens(pki: Pki) -> None:
    """The two layers agree: the server's first Handshake-level secret, fed to the wire
    layer's key derivation, seals a packet that keys from the client's copy open."""
    from quic.crypto import PacketKeys
    from quic.packet import PacketType, encode_long_header

    pair = run_pair(*x509_params(pki))
    cres, _ = pair.ok()
    level = uapi.QUIC_CRYPTO_HANDSHAKE
    sealer = PacketKeys.from_secret(
        cres.cipher, pair.ssock.secret(True, level), uapi.QUIC_VERSION_V1
    )
    opener = PacketKeys.from_secret(
        cres.cipher, pair.csock.secret(False, level), uapi.QUIC_VERSION_V1
    )
    payload = b"\x06\x00\x10" + b"handshake flight"
    header = encode_long_header(
        PacketType.HANDSHAKE,
        uapi.QUIC_VERSION_V1,
        b"c" * 8,
        b"s" * 8,
        b"",
        2 + len(payload) + 16,
        0,
        2,
    )
    packet = sealer.protect(header, payload, 0)
    assert opener.unprotect(packet, len(header) - 2, -1) == (header, 0, payload)
