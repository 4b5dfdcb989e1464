"""The QUIC handshake over a socket, as lxin/quic's libquic does it: GnuTLS makes and
reads the TLS messages; the socket carries them per crypto level and takes the secrets
and the transport-parameter extension through socket options.

The driver depends only on :class:`HandshakeSocket`, four operations that a real
:class:`quic.socket.QuicSocket` offers and that the handshake agent proxies for a
consumer's socket, so the same code runs in an application and in ``kquic-tlshd``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from quic import uapi

from . import gnutls

QUIC_ALERT_BASE = 0x100
DEFAULT_TIMEOUT = 30.0


class HandshakeSocket(Protocol):
    """What the handshake needs from a QUIC socket."""

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]: ...

    def send_handshake(self, level: int, data: bytes, more: bool) -> None: ...

    def setsockopt(self, level: int, optname: int, value: bytes) -> None: ...

    def getsockopt(self, level: int, optname: int, buflen: int | bytes = 0) -> bytes: ...


class HandshakeError(Exception):
    """The TLS handshake failed; ``code`` is the QUIC error (0x100 + TLS alert)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.alert = code - QUIC_ALERT_BASE if code >= QUIC_ALERT_BASE else None


@dataclass
class HandshakeParams:
    """What libquic and tlshd take for one handshake."""

    is_server: bool | None = None  # None: ask the socket (getsockopt TOKEN fails on a server)
    cert_file: str | None = None
    key_file: str | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    ca_file: str | None = None  # None: the system trust store
    insecure: bool = False  # client: skip certificate verification (tests, interop)
    server_name: str | None = None
    alpns: str = ""  # comma list, as QUIC_SOCKOPT_ALPN
    psk_identity: str | None = None
    psk_key: bytes | None = None
    psk_file: str | None = None  # lines "identity:hexkey"
    session_data: bytes | None = None  # client: resume from this
    cert_request: int = gnutls.GNUTLS_CERT_IGNORE  # server: 0 ignore, 1 request, 2 require
    cipher: int = 0  # TLS_CIPHER_* to pin, 0 for any
    early_data: bool = False
    receive_ticket: float = 0.0  # client: seconds to wait for a NewSessionTicket
    timeout: float = DEFAULT_TIMEOUT
    keylog: Callable[[str], None] | None = None


@dataclass
class HandshakeResult:
    alpn: str
    cipher: int
    resumed: bool
    early_data_accepted: bool
    peer_identity: str
    session_data: bytes | None = None
    secrets_installed: list[tuple[int, int]] = field(default_factory=list)  # (level, send)


def read_psk_file(path: str) -> dict[str, bytes]:
    """libquic's PSK file: one ``identity:hexkey`` per line."""
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            identity, _, hexkey = line.partition(":")
            try:
                keys[identity] = bytes.fromhex(hexkey)
            except ValueError:
                raise ValueError(f"{path}: bad key for identity {identity!r}") from None
    if not keys:
        raise ValueError(f"{path}: no PSK identities")
    return keys


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _is_server(sock: HandshakeSocket) -> bool:
    try:
        sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TOKEN, 256)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return True
        raise
    return False


def _keylog_writer() -> Callable[[str], None] | None:
    """SSLKEYLOGFILE, in the NSS key log format Wireshark reads."""
    path = os.environ.get("SSLKEYLOGFILE")
    if not path:
        return None

    def write(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    return write


class _Driver:
    """One handshake: GnuTLS session, socket, and the bookkeeping between them."""

    def __init__(self, sock: HandshakeSocket, params: HandshakeParams) -> None:
        self.sock = sock
        self.params = params
        self.is_server = _is_server(sock) if params.is_server is None else params.is_server
        self.outgoing: list[tuple[int, bytes]] = []
        self.installed: list[tuple[int, int]] = []
        self.app_read_installed = False
        self.alert: int | None = None
        self.alert_received = False
        self.creds: list[gnutls.Credentials] = []
        self.ticket: bytes | None = None

    # GnuTLS hooks

    def on_secret(self, level: int, read: bytes | None, write: bytes | None) -> None:
        # Messages produced before a new key must leave first, under the old key.
        self.flush()
        cipher = (
            self.session.early_cipher()
            if level == uapi.QUIC_CRYPTO_EARLY
            else self.session.cipher()
        )
        for send, secret in ((1, write), (0, read)):
            if secret is None:
                continue
            record = uapi.QuicCryptoSecret(send, level, 0, cipher, secret.ljust(48, b"\0"))
            self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CRYPTO_SECRET, record.pack())
            self.installed.append((level, send))
            if level == uapi.QUIC_CRYPTO_APP and not send:
                self.app_read_installed = True

    def on_message(self, level: int, data: bytes) -> None:
        self.outgoing.append((level, data))

    def on_alert(self, alert: int) -> None:
        self.alert = alert

    def get_transport_params(self) -> bytes:
        return self.sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT, 512)

    def on_transport_params(self, data: bytes) -> None:
        self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT, data)

    def on_client_hello(self) -> None:
        # tlshd writes the selected ALPN back before the server's flight leaves, so the
        # socket knows its application protocol as early as the kernel would.
        alpn = self.session.selected_alpn()
        if alpn:
            self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)

    # plumbing

    def flush(self) -> None:
        out, self.outgoing = self.outgoing, []
        for i, (level, data) in enumerate(out):
            self.sock.send_handshake(level, data, i < len(out) - 1)

    def setup(self) -> gnutls.Session:
        p = self.params
        flags = gnutls.GNUTLS_SERVER if self.is_server else gnutls.GNUTLS_CLIENT
        if self.is_server:
            flags |= gnutls.GNUTLS_NO_AUTO_SEND_TICKET
            if p.early_data:
                # QUIC has no EndOfEarlyData message (RFC 9001 §8.3).
                flags |= gnutls.GNUTLS_ENABLE_EARLY_DATA | gnutls.GNUTLS_NO_END_OF_EARLY_DATA
        elif p.early_data or p.session_data:
            flags |= gnutls.GNUTLS_ENABLE_EARLY_DATA | gnutls.GNUTLS_NO_END_OF_EARLY_DATA
        session = gnutls.Session(flags)
        self.session = session
        session.on_secret = self.on_secret
        session.on_message = self.on_message
        session.on_alert = self.on_alert
        session.get_transport_params = self.get_transport_params
        session.on_transport_params = self.on_transport_params
        session.on_client_hello = self.on_client_hello
        session.set_priority(p.cipher)
        self._credentials(session)
        alpns = p.alpns or self.sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, 128).decode()
        session.set_alpn([a.strip().encode() for a in alpns.split(",") if a.strip()])
        keylog = p.keylog or _keylog_writer()
        if keylog is not None:
            session.set_keylog(keylog)
        if self.is_server:
            key = self.sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, 64)
            session.enable_tickets(key[:64].ljust(64, b"\0"))
            if p.early_data:
                session.enable_early_data()
        elif p.session_data:
            session.set_session_data(p.session_data)
        return session

    def _credentials(self, session: gnutls.Session) -> None:
        p = self.params
        psk_keys = read_psk_file(p.psk_file) if p.psk_file else None
        if p.psk_identity and p.psk_key is not None:
            psk_keys = {p.psk_identity: p.psk_key}
        if psk_keys is not None:
            if self.is_server:
                creds = gnutls.Credentials.psk_server(psk_keys)
            else:
                identity, key = next(iter(psk_keys.items()))
                creds = gnutls.Credentials.psk_client(identity, key)
            self.creds.append(creds)
            session.set_credentials(creds)
            if self.is_server:
                return
        cert = p.cert_pem or _read(p.cert_file)
        key = p.key_pem or _read(p.key_file)
        ca = _read(p.ca_file)
        creds = gnutls.Credentials.certificate(
            cert, key, ca, system_trust=ca is None and not p.insecure
        )
        self.creds.append(creds)
        session.set_credentials(creds)
        if self.is_server:
            session.request_client_certificate(p.cert_request)
        else:
            if p.server_name and not _is_ip(p.server_name):
                session.set_server_name(p.server_name)  # SNI never carries an address
            if not p.insecure and psk_keys is None:
                session.verify_peer(p.server_name)

    def fail(self, exc: gnutls.GnutlsError) -> HandshakeError:
        alert = self.alert if self.alert is not None else gnutls.error_to_alert(exc.code)
        return HandshakeError(
            QUIC_ALERT_BASE + alert, f"TLS handshake failed: {exc} ({gnutls.alert_name(alert)})"
        )

    def run(self) -> HandshakeResult:
        p = self.params
        deadline = time.monotonic() + p.timeout
        session = self.setup()
        try:
            done = self._step(session.handshake)
            while not (done and (self.app_read_installed or self.is_server)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        errno.ETIMEDOUT, "TLS handshake timed out waiting for the peer"
                    )
                try:
                    level, data = self.sock.recv_handshake(remaining)
                except TimeoutError:
                    raise TimeoutError(
                        errno.ETIMEDOUT, "TLS handshake timed out waiting for the peer"
                    ) from None
                self._step(lambda lvl=level, d=data: session.feed(lvl, d))
                done = self._step(session.handshake)
            if self.is_server:
                self._step(session.send_ticket)
            elif p.receive_ticket:
                self._wait_ticket(
                    session, min(p.receive_ticket, max(0.0, deadline - time.monotonic()))
                )
            return self._result(session)
        finally:
            session.close()
            for creds in self.creds:
                creds.close()

    def _step(self, action: Callable[[], bool | None]) -> bool:
        try:
            result = action()
        except gnutls.GnutlsError as exc:
            self.flush()  # an alert may have been produced for the peer
            raise self.fail(exc) from None
        self.flush()
        if self.alert is not None:
            raise HandshakeError(
                QUIC_ALERT_BASE + self.alert, f"TLS alert: {gnutls.alert_name(self.alert)}"
            )
        return bool(result)

    def _wait_ticket(self, session: gnutls.Session, timeout: float) -> None:
        """A client's NewSessionTicket arrives after the handshake, at the APP level."""
        try:
            level, data = self.sock.recv_handshake(timeout)
        except TimeoutError:
            return
        if level == uapi.QUIC_CRYPTO_APP:
            self._step(lambda: session.feed(level, data))
            self.ticket = session.session_data()

    def _result(self, session: gnutls.Session) -> HandshakeResult:
        alpn = session.selected_alpn()
        if alpn and not self.is_server:
            self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)
        identity = session.psk_username() if self.is_server else ""
        if not identity:
            certs = session.peer_certificates()
            identity = _subject(certs[0]) if certs else ""
        return HandshakeResult(
            alpn=alpn.decode(),
            cipher=session.cipher(),
            resumed=session.resumed(),
            early_data_accepted=session.early_data_accepted(),
            peer_identity=identity,
            session_data=self.ticket,
            secrets_installed=list(self.installed),
        )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _subject(der: bytes) -> str:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return ""


def quic_handshake(sock: HandshakeSocket, params: HandshakeParams) -> HandshakeResult:
    """Run a whole handshake on ``sock``; raises HandshakeError, TimeoutError or OSError."""
    return _Driver(sock, params).run()


def quic_client_handshake(
    sock: HandshakeSocket,
    pkey_file: str | None = None,
    hostname: str | None = None,
    alpns: str | None = None,
    **extras,
) -> HandshakeResult:
    """libquic's client call: ``pkey_file`` is a PSK file (``identity:hexkey``); without
    it the server is verified by certificate against ``hostname``."""
    params = HandshakeParams(
        is_server=False, psk_file=pkey_file, server_name=hostname, alpns=alpns or "", **extras
    )
    return quic_handshake(sock, params)


def quic_server_handshake(
    sock: HandshakeSocket,
    pkey_file: str | None = None,
    cert_file: str | None = None,
    alpns: str | None = None,
    **extras,
) -> HandshakeResult:
    """libquic's server call: with ``cert_file``, ``pkey_file`` is its private key;
    without, ``pkey_file`` is a PSK file."""
    if cert_file:
        params = HandshakeParams(
            is_server=True, cert_file=cert_file, key_file=pkey_file, alpns=alpns or "", **extras
        )
    else:
        params = HandshakeParams(is_server=True, psk_file=pkey_file, alpns=alpns or "", **extras)
    return quic_handshake(sock, params)
