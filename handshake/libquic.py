"""The QUIC handshake over a socket, as lxin/quic's libquic does it: GnuTLS makes and
reads the TLS 1.3 messages, the socket carries them per crypto level and takes the
secrets and transport parameters.

The driver needs only the four operations of ``HandshakeSocket`` and the constants of
``quic.uapi``, so the same code runs over a real QUIC socket, the agent's proxied
socket, or an in-memory pair in tests.

Errors are raised, not returned: ``HandshakeError`` for a TLS failure (its ``code`` is
the QUIC CRYPTO_ERROR 0x100 + alert), ``TimeoutError`` when the deadline passes, and
``OSError`` from the socket. The GnuTLS session is freed on every path.

A failed handshake leaves its error on the socket with ``QUIC_SOCKOPT_CONNECTION_CLOSE``
(code 0x100 + alert, phrase = the alert's name) so that closing the socket tells the
peer why; a peer that reads such a close reports it as a ``HandshakeError`` too.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from quic import uapi

from . import gnutls

log = logging.getLogger(__name__)

QUIC_CRYPTO_LEVEL = {
    gnutls.GNUTLS_ENCRYPTION_LEVEL_INITIAL: uapi.QUIC_CRYPTO_INITIAL,
    gnutls.GNUTLS_ENCRYPTION_LEVEL_EARLY: uapi.QUIC_CRYPTO_EARLY,
    gnutls.GNUTLS_ENCRYPTION_LEVEL_HANDSHAKE: uapi.QUIC_CRYPTO_HANDSHAKE,
    gnutls.GNUTLS_ENCRYPTION_LEVEL_APPLICATION: uapi.QUIC_CRYPTO_APP,
}
GNUTLS_LEVEL = {q: g for g, q in QUIC_CRYPTO_LEVEL.items()}
LEVEL_NAME = {
    uapi.QUIC_CRYPTO_INITIAL: "INITIAL",
    uapi.QUIC_CRYPTO_EARLY: "EARLY",
    uapi.QUIC_CRYPTO_HANDSHAKE: "HANDSHAKE",
    uapi.QUIC_CRYPTO_APP: "APP",
}

TLS_ALERT_MISSING_EXTENSION = 109
DEFAULT_TIMEOUT = 30.0


class HandshakeSocket(Protocol):
    """The socket operations the handshake uses. ``level`` is always ``SOL_QUIC``; it is
    kept so that a QUIC socket's own ``setsockopt``/``getsockopt`` fit unchanged."""

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]:
        """(crypto level, CRYPTO bytes); TimeoutError if none in time, OSError if dead."""
        ...

    def send_handshake(self, level: int, data: bytes, more: bool) -> None: ...

    def setsockopt(self, level: int, optname: int, value: bytes) -> None: ...

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


class HandshakeError(Exception):
    """A TLS failure. ``code`` is the QUIC error (0x100 + TLS alert)."""

    def __init__(self, alert: int, reason: str, gnutls_code: int = 0) -> None:
        self.alert = alert
        self.code = uapi.QUIC_TRANSPORT_ERROR_CRYPTO + alert
        self.alert_name = gnutls.alert_name(alert)
        self.reason = reason
        self.gnutls_code = gnutls_code
        super().__init__(self.code, reason)

    def __str__(self) -> str:
        return f"{self.reason} (TLS alert {self.alert_name}, QUIC error 0x{self.code:x})"


@dataclass
class HandshakeParams:
    """What libquic and tlshd take. Unset fields fall back to the socket (ALPN, role,
    server ticket key) or to the system (trust store, SSLKEYLOGFILE)."""

    is_server: bool | None = None  # None: a server socket refuses getsockopt(TOKEN)
    cert_file: str | None = None
    key_file: str | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    ca_file: str | None = None  # None and no ca_pem: the system trust store
    ca_pem: bytes | None = None
    insecure: bool = False  # client: accept any server certificate
    server_name: str | None = None  # SNI and the name verified (DNS name or IP address)
    alpns: str | None = None  # comma list; None: getsockopt(QUIC_SOCKOPT_ALPN)
    psk_identity: str | None = None
    psk_key: bytes | None = None
    psk_file: str | None = None  # "identity:hexkey" lines; a client uses the first
    psk_table: dict[str, bytes] | None = None  # server: every identity it accepts
    session_data: bytes | None = None  # client: resume this session
    receive_ticket: float = 0.0  # client: seconds to wait for a NewSessionTicket
    ticket_key: bytes | None = None  # server: 64 bytes; None: getsockopt(SESSION_TICKET)
    send_ticket: bool = True  # server: send one NewSessionTicket after the handshake
    cert_request: int = gnutls.GNUTLS_CERT_IGNORE  # server: 0 ignore, 1 request, 2 require
    cipher: int = 0  # one TLS_CIPHER_*, or 0 for any
    early_data: bool = False  # server: accept 0-RTT (a resuming client always offers it)
    timeout: float = DEFAULT_TIMEOUT
    keylog: Callable[[str], None] | str | None = None  # NSS key log lines, or a file


@dataclass
class HandshakeResult:
    is_server: bool
    alpn: str
    cipher: int  # TLS_CIPHER_*
    resumed: bool
    early_data: bool  # 0-RTT was accepted
    peer_certificate: bytes | None = field(default=None, repr=False)
    psk_identity: str | None = None
    session_data: bytes | None = field(default=None, repr=False)  # client, from a ticket

    @functools.cached_property
    def peer_subject(self) -> str | None:
        """The peer certificate's subject (RFC 4514), parsed when first asked for: few
        callers want it, and parsing the certificate in Python costs 0.1-0.2 ms."""
        return _subject(self.peer_certificate) if self.peer_certificate else None


def read_psk_file(path: str) -> dict[str, bytes]:
    """libquic's (and GnuTLS's) PSK file: ``identity:hexkey`` a line, in file order."""
    keys: dict[str, bytes] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            identity, sep, hexkey = line.rpartition(":")
            try:
                if not sep or not identity:
                    raise ValueError("expected identity:hexkey")
                keys[identity] = bytes.fromhex(hexkey)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    if not keys:
        raise ValueError(f"{path}: no PSK in file")
    return keys


_keylog_lock = threading.Lock()


def _keylog_file(path: str) -> Callable[[str], None]:
    def write(line: str) -> None:
        with _keylog_lock, open(path, "a", encoding="ascii") as f:
            f.write(line + "\n")

    return write


def _is_server(sock: HandshakeSocket) -> bool:
    """libquic's test: only a client socket can read a NEW_TOKEN token."""
    try:
        sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TOKEN, uapi.QUIC_TOKEN_MAX_LEN)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return True
        raise
    return False


def _subject(der: bytes) -> str | None:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


class _Handshake:
    """One handshake: the GnuTLS session's handler and the loop that drives it."""

    def __init__(self, sock: HandshakeSocket, params: HandshakeParams) -> None:
        self.sock = sock
        self.p = params
        self.is_server = _is_server(sock) if params.is_server is None else params.is_server
        self.session: gnutls.Session | None = None
        self.session_data: bytes | None = None  # client: the session to resume
        self.outbox: list[tuple[int, bytes]] = []
        self.alert: int | None = None
        self.psk_table: dict[str, bytes] = {}
        self.tp_received = False
        self.rx_levels: set[int] = set()
        self.received_any = False
        self.keylog: Callable[[str], None] | None = None

    # -- SessionHandler ------------------------------------------------

    def on_secret(self, level: int, read: bytes | None, write: bytes | None) -> None:
        session = self._session()
        qlevel = QUIC_CRYPTO_LEVEL[level]
        early = level == gnutls.GNUTLS_ENCRYPTION_LEVEL_EARLY
        cipher = session.early_cipher() if early else session.cipher()
        for send, secret in ((0, read), (1, write)):
            if secret is None:
                continue
            record = uapi.QuicCryptoSecret(
                send, qlevel, 0, cipher, secret.ljust(uapi.QUIC_CRYPTO_SECRET_BUFFER_SIZE, b"\0")
            )
            self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CRYPTO_SECRET, record.pack())
            if not send:
                self.rx_levels.add(qlevel)

    def on_message(self, level: int, data: bytes) -> None:
        self.outbox.append((QUIC_CRYPTO_LEVEL[level], data))

    def on_alert(self, level: int, alert: int) -> None:
        if self.alert is None:
            self.alert = alert

    def get_transport_params(self) -> bytes:
        return self.sock.getsockopt(
            uapi.SOL_QUIC,
            uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT,
            uapi.QUIC_TRANSPORT_PARAM_EXT_MAX_LEN,
        )

    def on_transport_params(self, data: bytes) -> None:
        self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM_EXT, data)
        self.tp_received = True

    def on_client_hello(self) -> None:
        """Server: the ALPN is chosen; the socket learns it before any secret exists."""
        alpn = self._session().selected_alpn()
        if alpn:
            self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)

    def on_keylog(self, label: str, secret: bytes) -> None:
        if self.keylog is not None:
            random = self._session().client_random()
            self.keylog(f"{label} {random.hex()} {secret.hex()}")

    def psk_lookup(self, identity: str) -> bytes | None:
        return self.psk_table.get(identity)

    def _session(self) -> gnutls.Session:
        assert self.session is not None
        return self.session

    # -- setup ---------------------------------------------------------

    def _alpns(self) -> list[bytes]:
        alpns = self.p.alpns
        if alpns is None:
            raw = self.sock.getsockopt(
                uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, uapi.QUIC_ALPN_MAX_LEN
            )
            alpns = raw.rstrip(b"\0").decode()
        return [a.strip().encode() for a in alpns.split(",") if a.strip()]

    def _flags(self) -> int:
        p = self.p
        if self.is_server:
            flags = gnutls.GNUTLS_SERVER | gnutls.GNUTLS_NO_AUTO_SEND_TICKET
            if p.early_data:
                flags |= gnutls.GNUTLS_ENABLE_EARLY_DATA
        else:
            # As tlshd: a resuming client always offers early data; whether any goes
            # in 0-RTT packets is the application's doing (it sent before the handshake).
            flags = gnutls.GNUTLS_CLIENT
            if self.session_data:
                flags |= gnutls.GNUTLS_ENABLE_EARLY_DATA
        return flags | gnutls.GNUTLS_NO_END_OF_EARLY_DATA | gnutls.GNUTLS_NO_SIGNAL

    def _use_psk(self) -> bool:
        p = self.p
        return bool(p.psk_file or p.psk_table or p.psk_key is not None)

    def setup(self) -> gnutls.Session:
        p = self.p
        if not self.is_server:
            self.session_data = p.session_data or self._socket_ticket()
        session = self.session = gnutls.Session(self._flags(), self)
        session.set_priority(gnutls.quic_priority(p.cipher))
        if self._use_psk():
            self._setup_psk(session)
        else:
            self._setup_x509(session)
        alpns = self._alpns()
        if alpns:
            session.set_alpn(alpns)
        if self.is_server:
            if p.send_ticket or p.early_data:
                session.enable_ticket_server(self._ticket_key())
            if p.early_data:
                session.enable_early_data_server()
        elif self.session_data:
            session.set_session_data(self.session_data)
        keylog = p.keylog if p.keylog is not None else os.environ.get("SSLKEYLOGFILE")
        if keylog:
            self.keylog = _keylog_file(keylog) if isinstance(keylog, str) else keylog
            session.enable_keylog()
        return session

    def _socket_ticket(self) -> bytes | None:
        """Client: session data the application left on the socket
        (QUIC_SOCKOPT_SESSION_TICKET), as tlshd reads it."""
        try:
            data = self.sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, 4096)
        except OSError:
            return None
        return bytes(data) or None

    def _setup_psk(self, session: gnutls.Session) -> None:
        p = self.p
        if p.psk_file:
            table = read_psk_file(p.psk_file)
        elif p.psk_table:
            table = p.psk_table
        else:
            assert p.psk_key is not None
            table = {p.psk_identity or "": p.psk_key}
        if self.is_server:
            self.psk_table = table
            session.set_credentials(gnutls.PskServerCredentials())
        else:
            identity, key = next(iter(table.items()))
            session.set_credentials(gnutls.PskClientCredentials(identity, key))

    def _setup_x509(self, session: gnutls.Session) -> None:
        p = self.p
        if not (p.cert_file or p.cert_pem) and self.is_server:
            raise ValueError("a certificate server needs cert_file or cert_pem")
        verify = p.cert_request if self.is_server else not p.insecure
        session.set_credentials(_x509_credentials(p, bool(verify)))
        if self.is_server:
            session.set_cert_request(p.cert_request)
            if p.cert_request == gnutls.GNUTLS_CERT_REQUIRE:
                session.set_verify_cert(None)
            elif p.cert_request:
                session.set_verify_optional()
            return
        name = p.server_name
        if name and not _is_ip(name):
            session.set_server_name(name)
        if verify:
            session.set_verify_cert(name)

    def _ticket_key(self) -> bytes:
        if self.p.ticket_key:
            return self.p.ticket_key
        try:
            key = self.sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, 64)
        except OSError:
            key = b""
        return key if len(key) == 64 else gnutls.generate_ticket_key()

    # -- the loop ------------------------------------------------------

    def flush(self) -> None:
        """Send what GnuTLS produced in one step as one flight: MSG_MORE on all but the
        last message, so the socket packs them together."""
        out, self.outbox = self.outbox, []
        last = len(out) - 1
        for i, (level, data) in enumerate(out):
            self.sock.send_handshake(level, data, i < last)

    def step(self, session: gnutls.Session) -> bool:
        done = session.handshake() == 0
        self.flush()
        return done

    def recv(self, deadline: float, what: Callable[[], str]) -> tuple[int, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(errno.ETIMEDOUT, self._timeout_text(what()))
        try:
            level, data = self.sock.recv_handshake(remaining)
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, self._timeout_text(what())) from None
        if level not in GNUTLS_LEVEL:
            raise HandshakeError(gnutls.GNUTLS_A_INTERNAL_ERROR, f"unknown crypto level {level}")
        self.received_any = True
        return level, data

    def _timeout_text(self, what: str) -> str:
        return f"QUIC handshake timed out after {self.p.timeout:g}s waiting for {what}"

    def _waiting_for(self) -> str:
        if self.is_server:
            if not self.received_any:
                return "the client's ClientHello"
            if uapi.QUIC_CRYPTO_HANDSHAKE not in self.rx_levels:
                return "the rest of the client's ClientHello"
            return "the client's Finished"
        if uapi.QUIC_CRYPTO_HANDSHAKE not in self.rx_levels:
            return "the server's ServerHello"
        return "the server's handshake flight (through Finished)"

    def run(self) -> HandshakeResult:
        deadline = time.monotonic() + self.p.timeout
        session = self.setup()
        done = self.step(session)
        while not (done and uapi.QUIC_CRYPTO_APP in self.rx_levels):
            level, data = self.recv(deadline, self._waiting_for)
            session.handshake_write(GNUTLS_LEVEL[level], data)
            done = self.step(session)
        if not self.tp_received:
            raise HandshakeError(
                TLS_ALERT_MISSING_EXTENSION, "the peer sent no quic_transport_parameters"
            )
        alpn = session.selected_alpn() or b""
        session_data = None
        if self.is_server:
            if self.p.send_ticket:
                session.send_ticket()
                self.flush()
        else:
            if alpn:
                self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)
            if self.p.receive_ticket > 0:
                session_data = self._receive_ticket(session)
                if session_data:  # for the application's next connection, as tlshd does
                    self.sock.setsockopt(
                        uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, session_data
                    )
        return self._result(session, alpn, session_data)

    def _receive_ticket(self, session: gnutls.Session) -> bytes | None:
        """Client: the server sends its NewSessionTicket right after the handshake; wait
        a bounded time for it, as quic_config's receive_session_ticket does."""
        deadline = time.monotonic() + self.p.receive_ticket
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                level, data = self.sock.recv_handshake(remaining)
            except TimeoutError:
                break
            if level != uapi.QUIC_CRYPTO_APP:
                continue
            try:
                session.handshake_write(GNUTLS_LEVEL[level], data)
                ticket = session.session_data()
            except gnutls.GnutlsError as exc:  # the handshake itself has succeeded
                log.warning("unusable session ticket: %s", exc)
                return None
            if ticket:
                return ticket
        log.debug("no session ticket within %gs", self.p.receive_ticket)
        return None

    def _result(
        self, session: gnutls.Session, alpn: bytes, session_data: bytes | None
    ) -> HandshakeResult:
        der = session.peer_certificate()
        if self._use_psk():
            psk = session.psk_username() if self.is_server else self._client_psk_identity()
        else:
            psk = None
        return HandshakeResult(
            is_server=self.is_server,
            alpn=alpn.decode(errors="replace"),
            cipher=session.cipher(),
            resumed=session.is_resumed(),
            early_data=session.early_data_accepted(),
            peer_certificate=der,
            psk_identity=psk,
            session_data=session_data,
        )

    def _client_psk_identity(self) -> str:
        if self.p.psk_file:
            return next(iter(read_psk_file(self.p.psk_file)))
        return self.p.psk_identity or ""

    # -- failures ------------------------------------------------------

    def tls_error(self, exc: gnutls.GnutlsError) -> HandshakeError:
        alert = self.alert
        if alert is None:
            alert = gnutls.error_to_alert(exc.code)
        if alert is None:
            alert = gnutls.GNUTLS_A_INTERNAL_ERROR
        reason = exc.message
        verify_codes = (
            gnutls.GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR,
            gnutls.GNUTLS_E_CERTIFICATE_ERROR,
        )
        if exc.code in verify_codes and self.session:
            status = self.session.verify_status_text()
            if status:
                reason = f"{reason} {status}"
        return HandshakeError(alert, reason, exc.code)

    def peer_error(self) -> HandshakeError | None:
        """The peer's CRYPTO_ERROR close, if the socket died of one."""
        try:
            raw = self.sock.getsockopt(
                uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_CLOSE, uapi.QuicConnectionClose.size()
            )
            info = uapi.QuicConnectionClose.unpack(raw)
        except (OSError, ValueError):
            return None
        alert = info.errcode - uapi.QUIC_TRANSPORT_ERROR_CRYPTO
        if not 0 <= alert <= 0xFF:
            return None
        return HandshakeError(alert, f"the peer aborted the handshake: {info.reason}")

    def report(self, err: HandshakeError) -> None:
        """Leave the error for CONNECTION_CLOSE, as the kernel sends it on close()."""
        record = uapi.QuicConnectionClose(err.code, 0, err.alert_name.encode()[:64])
        try:
            self.sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_CLOSE, record.pack())
        except OSError:
            pass


# Parsed X.509 credentials (our chain and key, the trust list), shared by the
# handshakes that use the same files or PEM, as tlshd keeps its credentials: loading
# and parsing them cost more than the rest of a session's set-up. Each handshake still
# verifies the peer against the trust list. A file's entry holds while its identity
# (device, inode, size, mtime, ctime) does, so a replaced or rewritten certificate, key
# or CA file is loaded again on the next handshake. GnuTLS only reads credentials once
# set up, so sessions on several threads may share them; an entry dropped from the
# cache lives on in the sessions still using it.
_CREDENTIALS_MAX = 32
_credentials: OrderedDict[tuple, gnutls.CertificateCredentials] = OrderedDict()
_credentials_lock = threading.Lock()


def _file_identity(path: str) -> tuple:
    st = os.stat(path)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _pem_identity(pem: bytes) -> tuple:
    return ("pem", hashlib.sha256(pem).digest())


def _x509_credentials(p: HandshakeParams, verify: bool) -> gnutls.CertificateCredentials:
    """The credentials for ``p``'s certificate and trust settings, from the cache when
    nothing they were loaded from has changed. The system trust store is loaded anew
    each time: its files are the system's, not named here."""
    try:
        if p.cert_file:
            key_file = p.key_file or p.cert_file
            mine: tuple = ("file", _file_identity(p.cert_file), _file_identity(key_file))
        elif p.cert_pem:
            mine = ("mem", _pem_identity(p.cert_pem), _pem_identity(p.key_pem or p.cert_pem))
        else:
            mine = ()
        if not verify:
            trust: tuple | None = ()
        elif p.ca_file:
            trust = ("file", _file_identity(p.ca_file))
        elif p.ca_pem:
            trust = ("mem", _pem_identity(p.ca_pem))
        else:
            trust = None  # system trust: not cached
    except OSError:
        trust = None  # a missing file: let GnuTLS report it as it always has
    key = (mine, trust) if trust is not None else None
    if key is not None:
        with _credentials_lock:
            creds = _credentials.get(key)
            if creds is not None:
                _credentials.move_to_end(key)
                return creds
    creds = _load_x509_credentials(p, verify)
    if key is not None:
        with _credentials_lock:
            _credentials[key] = creds
            while len(_credentials) > _CREDENTIALS_MAX:
                _credentials.popitem(last=False)
    return creds


def _load_x509_credentials(p: HandshakeParams, verify: bool) -> gnutls.CertificateCredentials:
    creds = gnutls.CertificateCredentials()
    try:
        if p.cert_file:
            creds.set_key_file(p.cert_file, p.key_file or p.cert_file)
        elif p.cert_pem:
            creds.set_key_mem(p.cert_pem, p.key_pem or p.cert_pem)
        if verify:
            if p.ca_file:
                creds.set_trust_file(p.ca_file)
            elif p.ca_pem:
                creds.set_trust_mem(p.ca_pem)
            else:
                creds.set_system_trust()
    except BaseException:
        creds.close()
        raise
    return creds


def clear_credentials_cache() -> None:
    """Forget every cached credential (sessions using one keep it until they end)."""
    with _credentials_lock:
        _credentials.clear()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def quic_handshake(sock: HandshakeSocket, params: HandshakeParams) -> HandshakeResult:
    """Run one TLS 1.3 handshake over ``sock``; the role comes from the socket unless
    ``params.is_server`` says. Raises HandshakeError, TimeoutError or OSError."""
    hs = _Handshake(sock, params)
    try:
        try:
            return hs.run()
        except gnutls.GnutlsError as exc:
            err = hs.tls_error(exc)
            hs.report(err)
            raise err from None
        except HandshakeError as err:
            hs.report(err)
            raise
        except TimeoutError:
            raise
        except OSError as exc:
            peer = hs.peer_error()
            if peer is not None:
                raise peer from exc
            raise
    finally:
        if hs.session is not None:
            hs.session.close()
            hs.session = None


def quic_client_handshake(
    sock: HandshakeSocket,
    pkey_file: str | None = None,
    hostname: str | None = None,
    alpns: str | None = None,
    **more: object,
) -> HandshakeResult:
    """libquic's client call: ``pkey_file`` is a PSK file (first line used), else X.509
    with ``hostname`` as SNI and verified name. ``more`` sets other HandshakeParams."""
    params = HandshakeParams(
        is_server=False, psk_file=pkey_file, server_name=hostname, alpns=alpns, **more
    )  # type: ignore[arg-type]
    return quic_handshake(sock, params)


def quic_server_handshake(
    sock: HandshakeSocket,
    pkey_file: str | None = None,
    cert_file: str | None = None,
    alpns: str | None = None,
    **more: object,
) -> HandshakeResult:
    """libquic's server call: with ``cert_file``, ``pkey_file`` is its private key;
    without, ``pkey_file`` is a PSK file of ``identity:hexkey`` lines."""
    if cert_file:
        params = HandshakeParams(
            is_server=True, cert_file=cert_file, key_file=pkey_file, alpns=alpns, **more
        )  # type: ignore[arg-type]
    else:
        params = HandshakeParams(is_server=True, psk_file=pkey_file, alpns=alpns, **more)  # type: ignore[arg-type]
    return quic_handshake(sock, params)
