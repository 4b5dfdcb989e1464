"""A ctypes binding to the system GnuTLS (``libgnutls.so.30``), QUIC handshake API only.

TLS 1.3 itself is GnuTLS's: this module only wires its QUIC hooks (handshake messages
out per encryption level, secrets out, messages in, the 0x39 transport-parameter
extension) to Python callables, the way libquic and tlshd do in C. No compiler is
needed: everything is loaded with ctypes at import time.

Lifetimes are explicit: a :class:`Session` and its credentials are freed by ``close()``
(or ``with``), and the ctypes callback objects live as long as the session, because
GnuTLS keeps raw pointers to them. A Python exception raised inside a callback never
crosses into C; it is stored, GnuTLS is told the callback failed, and the exception is
raised again from :meth:`Session.handshake`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_int,
    c_size_t,
    c_uint,
    c_void_p,
)

from quic import uapi

GNUTLS_SERVER = 1
GNUTLS_CLIENT = 1 << 1
GNUTLS_NO_SIGNAL = 1 << 6
GNUTLS_ENABLE_EARLY_DATA = 1 << 20
GNUTLS_NO_AUTO_SEND_TICKET = 1 << 21
GNUTLS_NO_END_OF_EARLY_DATA = 1 << 22

GNUTLS_CRD_CERTIFICATE = 1
GNUTLS_CRD_PSK = 4
GNUTLS_X509_FMT_PEM = 1
GNUTLS_NAME_DNS = 1
GNUTLS_PSK_KEY_RAW = 0
GNUTLS_ALPN_MANDATORY = 1
GNUTLS_CERT_IGNORE, GNUTLS_CERT_REQUEST, GNUTLS_CERT_REQUIRE = 0, 1, 2
GNUTLS_EXT_TLS = 2
GNUTLS_EXT_FLAG_CLIENT_HELLO = 1 << 1
GNUTLS_EXT_FLAG_EE = 1 << 4
GNUTLS_SFLAGS_EARLY_DATA = 1 << 10

GNUTLS_E_AGAIN = -28
GNUTLS_E_INTERRUPTED = -52
GNUTLS_E_FATAL_ALERT_RECEIVED = -12
GNUTLS_E_DB_ENTRY_EXISTS = -428

GNUTLS_ENCRYPTION_LEVEL_INITIAL = 0
GNUTLS_ENCRYPTION_LEVEL_EARLY = 1
GNUTLS_ENCRYPTION_LEVEL_HANDSHAKE = 2
GNUTLS_ENCRYPTION_LEVEL_APPLICATION = 3

# GnuTLS encryption level -> the socket API's crypto level.
QUIC_LEVEL = {
    GNUTLS_ENCRYPTION_LEVEL_INITIAL: uapi.QUIC_CRYPTO_INITIAL,
    GNUTLS_ENCRYPTION_LEVEL_EARLY: uapi.QUIC_CRYPTO_EARLY,
    GNUTLS_ENCRYPTION_LEVEL_HANDSHAKE: uapi.QUIC_CRYPTO_HANDSHAKE,
    GNUTLS_ENCRYPTION_LEVEL_APPLICATION: uapi.QUIC_CRYPTO_APP,
}
GNUTLS_LEVEL = {v: k for k, v in QUIC_LEVEL.items()}
# GnuTLS cipher -> Linux TLS_CIPHER_* (the QUIC_SOCKOPT_CRYPTO_SECRET type).
TLS_CIPHER = {
    10: uapi.TLS_CIPHER_AES_GCM_128,
    11: uapi.TLS_CIPHER_AES_GCM_256,
    19: uapi.TLS_CIPHER_AES_CCM_128,
    23: uapi.TLS_CIPHER_CHACHA20_POLY1305,
}
PRIORITY_CIPHER = {
    uapi.TLS_CIPHER_AES_GCM_128: "AES-128-GCM",
    uapi.TLS_CIPHER_AES_GCM_256: "AES-256-GCM",
    uapi.TLS_CIPHER_AES_CCM_128: "AES-128-CCM",
    uapi.TLS_CIPHER_CHACHA20_POLY1305: "CHACHA20-POLY1305",
}
QUIC_TRANSPORT_PARAMETERS_EXT = 0x39


def priority_string(cipher: int = 0) -> str:
    """libquic's priority: TLS 1.3 only, no middlebox compatibility mode, one pinned
    cipher or all four QUIC can use."""
    if cipher and cipher not in PRIORITY_CIPHER:
        raise ValueError(f"unsupported cipher type {cipher}")
    ciphers = [PRIORITY_CIPHER[cipher]] if cipher else list(PRIORITY_CIPHER.values())
    return (
        "NORMAL:-VERS-ALL:+VERS-TLS1.3:+PSK:+ECDHE-PSK:-CIPHER-ALL:"
        + ":".join("+" + c for c in ciphers)
        + ":-GROUP-ALL:+GROUP-SECP256R1:+GROUP-X25519:+GROUP-SECP384R1:+GROUP-SECP521R1"
        + ":%DISABLE_TLS13_COMPAT_MODE"
    )


class Datum(Structure):
    _fields_ = [("data", POINTER(ctypes.c_ubyte)), ("size", c_uint)]

    @classmethod
    def of(cls, data: bytes) -> Datum:
        buf = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
        datum = cls(ctypes.cast(buf, POINTER(ctypes.c_ubyte)), len(data))
        datum._keep = buf  # the memory must outlive the datum
        return datum

    def bytes(self) -> bytes:
        return ctypes.string_at(self.data, self.size) if self.size else b""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("gnutls") or "libgnutls.so.30"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        lib = ctypes.CDLL("libgnutls.so.30")
    return lib


lib = _load()

SecretFunc = CFUNCTYPE(c_int, c_void_p, c_int, c_void_p, c_void_p, c_size_t)
ReadFunc = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_void_p, c_size_t)
AlertFunc = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_int)
ExtRecvFunc = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
ExtSendFunc = CFUNCTYPE(c_int, c_void_p, c_void_p)
HookFunc = CFUNCTYPE(c_int, c_void_p, c_uint, c_uint, c_uint, c_void_p)
KeylogFunc = CFUNCTYPE(c_int, c_void_p, c_char_p, POINTER(Datum))
PskServerFunc = CFUNCTYPE(c_int, c_void_p, c_char_p, POINTER(Datum))
AntiReplayAddFunc = CFUNCTYPE(c_int, c_void_p, ctypes.c_long, POINTER(Datum), POINTER(Datum))


def _sig(name: str, restype, *argtypes) -> None:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)


for _name, _res, _args in [
    ("gnutls_global_init", c_int, ()),
    ("gnutls_check_version", c_char_p, (c_char_p,)),
    ("gnutls_strerror", c_char_p, (c_int,)),
    ("gnutls_alert_get_name", c_char_p, (c_int,)),
    ("gnutls_error_to_alert", c_int, (c_int, POINTER(c_int))),
    ("gnutls_init", c_int, (POINTER(c_void_p), c_uint)),
    ("gnutls_deinit", None, (c_void_p,)),
    ("gnutls_priority_set_direct", c_int, (c_void_p, c_char_p, POINTER(c_char_p))),
    ("gnutls_credentials_set", c_int, (c_void_p, c_int, c_void_p)),
    ("gnutls_handshake", c_int, (c_void_p,)),
    ("gnutls_handshake_write", c_int, (c_void_p, c_int, c_void_p, c_size_t)),
    ("gnutls_handshake_set_secret_function", None, (c_void_p, SecretFunc)),
    ("gnutls_handshake_set_read_function", None, (c_void_p, ReadFunc)),
    ("gnutls_alert_set_read_function", None, (c_void_p, AlertFunc)),
    ("gnutls_handshake_set_hook_function", None, (c_void_p, c_uint, c_int, HookFunc)),
    ("gnutls_session_set_keylog_function", None, (c_void_p, KeylogFunc)),
    (
        "gnutls_session_ext_register",
        c_int,
        (
            c_void_p,
            c_char_p,
            c_int,
            c_int,
            ExtRecvFunc,
            ExtSendFunc,
            c_void_p,
            c_void_p,
            c_void_p,
            c_uint,
        ),
    ),
    ("gnutls_buffer_append_data", c_int, (c_void_p, c_void_p, c_size_t)),
    ("gnutls_alpn_set_protocols", c_int, (c_void_p, POINTER(Datum), c_uint, c_uint)),
    ("gnutls_alpn_get_selected_protocol", c_int, (c_void_p, POINTER(Datum))),
    ("gnutls_server_name_set", c_int, (c_void_p, c_int, c_void_p, c_size_t)),
    ("gnutls_session_set_verify_cert", None, (c_void_p, c_void_p, c_uint)),
    ("gnutls_certificate_server_set_request", None, (c_void_p, c_int)),
    ("gnutls_certificate_allocate_credentials", c_int, (POINTER(c_void_p),)),
    ("gnutls_certificate_free_credentials", None, (c_void_p,)),
    (
        "gnutls_certificate_set_x509_key_mem",
        c_int,
        (c_void_p, POINTER(Datum), POINTER(Datum), c_int),
    ),
    ("gnutls_certificate_set_x509_trust_mem", c_int, (c_void_p, POINTER(Datum), c_int)),
    ("gnutls_certificate_set_x509_system_trust", c_int, (c_void_p,)),
    ("gnutls_psk_allocate_client_credentials", c_int, (POINTER(c_void_p),)),
    ("gnutls_psk_free_client_credentials", None, (c_void_p,)),
    ("gnutls_psk_set_client_credentials", c_int, (c_void_p, c_char_p, POINTER(Datum), c_int)),
    ("gnutls_psk_allocate_server_credentials", c_int, (POINTER(c_void_p),)),
    ("gnutls_psk_free_server_credentials", None, (c_void_p,)),
    ("gnutls_psk_set_server_credentials_function", None, (c_void_p, PskServerFunc)),
    ("gnutls_psk_server_get_username", c_char_p, (c_void_p,)),
    ("gnutls_cipher_get", c_int, (c_void_p,)),
    ("gnutls_early_cipher_get", c_int, (c_void_p,)),
    ("gnutls_session_is_resumed", c_int, (c_void_p,)),
    ("gnutls_session_get_flags", c_uint, (c_void_p,)),
    ("gnutls_session_ticket_key_generate", c_int, (POINTER(Datum),)),
    ("gnutls_session_ticket_enable_server", c_int, (c_void_p, POINTER(Datum))),
    ("gnutls_session_ticket_send", c_int, (c_void_p, c_uint, c_uint)),
    ("gnutls_session_get_data2", c_int, (c_void_p, POINTER(Datum))),
    ("gnutls_session_set_data", c_int, (c_void_p, c_void_p, c_size_t)),
    ("gnutls_record_set_max_early_data_size", c_int, (c_void_p, c_size_t)),
    ("gnutls_anti_replay_init", c_int, (POINTER(c_void_p),)),
    ("gnutls_anti_replay_deinit", None, (c_void_p,)),
    ("gnutls_anti_replay_enable", None, (c_void_p, c_void_p)),
    ("gnutls_anti_replay_set_add_function", None, (c_void_p, AntiReplayAddFunc)),
    ("gnutls_certificate_get_peers", POINTER(Datum), (c_void_p, POINTER(c_uint))),
]:
    _sig(_name, _res, *_args)

# gnutls_free is a variable holding a function pointer in GnuTLS >= 3.3.
_gnutls_free = ctypes.CFUNCTYPE(None, c_void_p).in_dll(lib, "gnutls_free")
lib.gnutls_global_init()
VERSION = lib.gnutls_check_version(None).decode()


class GnutlsError(Exception):
    """A GnuTLS failure, with GnuTLS's own message."""

    def __init__(self, code: int, where: str = "") -> None:
        self.code = code
        message = lib.gnutls_strerror(code).decode()
        super().__init__(f"{where}: {message}" if where else message)


def check(code: int, where: str) -> int:
    if code < 0:
        raise GnutlsError(code, where)
    return code


def alert_name(alert: int) -> str:
    name = lib.gnutls_alert_get_name(alert)
    return name.decode() if name else f"alert {alert}"


def error_to_alert(code: int) -> int:
    level = c_int()
    return lib.gnutls_error_to_alert(code, byref(level))


class Credentials:
    """Certificate or PSK credentials; one object may serve many sessions."""

    _live = 0
    _live_lock = threading.Lock()

    def __init__(self, kind: int, handle: c_void_p, free: Callable) -> None:
        self.kind = kind
        self.handle = handle
        self._free = free
        self._callbacks: list = []
        with Credentials._live_lock:
            Credentials._live += 1

    @classmethod
    def certificate(
        cls,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        ca_pem: bytes | None = None,
        system_trust: bool = False,
    ) -> Credentials:
        handle = c_void_p()
        check(lib.gnutls_certificate_allocate_credentials(byref(handle)), "certificate credentials")
        creds = cls(GNUTLS_CRD_CERTIFICATE, handle, lib.gnutls_certificate_free_credentials)
        try:
            if cert_pem is not None and key_pem is not None:
                check(
                    lib.gnutls_certificate_set_x509_key_mem(
                        handle,
                        byref(Datum.of(cert_pem)),
                        byref(Datum.of(key_pem)),
                        GNUTLS_X509_FMT_PEM,
                    ),
                    "loading certificate and key",
                )
            if ca_pem is not None:
                check(
                    lib.gnutls_certificate_set_x509_trust_mem(
                        handle, byref(Datum.of(ca_pem)), GNUTLS_X509_FMT_PEM
                    ),
                    "loading trust store",
                )
            elif system_trust:
                check(
                    lib.gnutls_certificate_set_x509_system_trust(handle),
                    "loading system trust store",
                )
        except Exception:
            creds.close()
            raise
        return creds

    @classmethod
    def psk_client(cls, identity: str, key: bytes) -> Credentials:
        handle = c_void_p()
        check(lib.gnutls_psk_allocate_client_credentials(byref(handle)), "PSK credentials")
        creds = cls(GNUTLS_CRD_PSK, handle, lib.gnutls_psk_free_client_credentials)
        try:
            check(
                lib.gnutls_psk_set_client_credentials(
                    handle, identity.encode(), byref(Datum.of(key)), GNUTLS_PSK_KEY_RAW
                ),
                "setting PSK",
            )
        except Exception:
            creds.close()
            raise
        return creds

    @classmethod
    def psk_server(cls, keys: dict[str, bytes]) -> Credentials:
        """Server PSK credentials answering from ``keys`` (identity -> key)."""
        handle = c_void_p()
        check(lib.gnutls_psk_allocate_server_credentials(byref(handle)), "PSK credentials")
        creds = cls(GNUTLS_CRD_PSK, handle, lib.gnutls_psk_free_server_credentials)

        def lookup(session, username, key_ptr) -> int:
            key = keys.get(username.decode("utf-8", "replace"))
            if key is None:
                return -1
            buf = ctypes.cast(lib_malloc(len(key)), POINTER(ctypes.c_ubyte))
            ctypes.memmove(buf, key, len(key))
            key_ptr[0].data = buf
            key_ptr[0].size = len(key)
            return 0

        callback = PskServerFunc(lookup)
        creds._callbacks.append(callback)
        lib.gnutls_psk_set_server_credentials_function(handle, callback)
        return creds

    def close(self) -> None:
        if self.handle:
            self._free(self.handle)
            self.handle = None
            with Credentials._live_lock:
                Credentials._live -= 1

    def __del__(self) -> None:
        self.close()


def lib_malloc(size: int) -> int:
    """GnuTLS frees the PSK key it is handed with gnutls_free, so allocate it with the
    matching allocator."""
    return ctypes.cast(_gnutls_malloc(size), c_void_p).value


_gnutls_malloc = ctypes.CFUNCTYPE(c_void_p, c_size_t).in_dll(lib, "gnutls_malloc")


class AntiReplay:
    """The 0-RTT anti-replay record of this process (RFC 8446 §8).

    GnuTLS refuses early data on tickets issued before its anti-replay context was
    created, so one context must outlive the sessions: it is made with the first server
    session and kept. ClientHellos seen within their validity are remembered here and a
    repeat is refused.
    """

    _shared: AntiReplay | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        handle = c_void_p()
        check(lib.gnutls_anti_replay_init(byref(handle)), "anti-replay")
        self.handle = handle
        self.seen: dict[bytes, int] = {}
        self._add = AntiReplayAddFunc(self._remember)
        lib.gnutls_anti_replay_set_add_function(handle, self._add)

    @classmethod
    def shared(cls) -> AntiReplay:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _remember(self, ptr, expires, key, data) -> int:
        now = int(time.time())
        with self._lock:
            if len(self.seen) > 4096:
                self.seen = {k: e for k, e in self.seen.items() if e > now}
            entry = key[0].bytes()
            if self.seen.get(entry, 0) > now:
                return GNUTLS_E_DB_ENTRY_EXISTS
            self.seen[entry] = expires
        return 0


class Session:
    """One TLS 1.3 session in QUIC mode. Hooks are plain Python callables:

    - ``on_secret(level, read_secret | None, write_secret | None)``
    - ``on_message(level, data)`` for each handshake message to send
    - ``on_alert(alert)`` when TLS sends or receives an alert
    - ``get_transport_params() -> bytes`` and ``on_transport_params(data)``
    - ``on_client_hello()`` on the server once the ClientHello is processed
    """

    live = 0
    _live_lock = threading.Lock()

    def __init__(self, flags: int) -> None:
        handle = c_void_p()
        check(lib.gnutls_init(byref(handle), flags | GNUTLS_NO_SIGNAL), "gnutls_init")
        self.handle = handle
        self.is_server = bool(flags & GNUTLS_SERVER)
        if self.is_server:
            AntiReplay.shared()  # must predate every ticket this process issues
        self._callbacks: list = []
        self._credentials: list[Credentials] = []
        self._pending_error: BaseException | None = None
        self.on_secret: Callable[[int, bytes | None, bytes | None], None] = lambda *a: None
        self.on_message: Callable[[int, bytes], None] = lambda *a: None
        self.on_alert: Callable[[int], None] = lambda a: None
        self.get_transport_params: Callable[[], bytes] = lambda: b""
        self.on_transport_params: Callable[[bytes], None] = lambda d: None
        self.on_client_hello: Callable[[], None] = lambda: None
        with Session._live_lock:
            Session.live += 1
        self._install_hooks()

    # plumbing

    def _guard(self, func: Callable, *args) -> int:
        """Run a Python hook from C; an exception is kept for later and reported as -1."""
        if self._pending_error is not None:
            return -1
        try:
            func(*args)
            return 0
        except BaseException as exc:
            self._pending_error = exc
            return -1

    def _keep(self, callback):
        self._callbacks.append(callback)
        return callback

    def _install_hooks(self) -> None:
        h = self.handle

        def secret(session, level, read_ptr, write_ptr, size) -> int:
            read = ctypes.string_at(read_ptr, size) if read_ptr else None
            write = ctypes.string_at(write_ptr, size) if write_ptr else None
            return self._guard(self.on_secret, QUIC_LEVEL[level], read, write)

        def read(session, level, htype, data, size) -> int:
            return self._guard(self.on_message, QUIC_LEVEL[level], ctypes.string_at(data, size))

        def alert(session, level, alert_level, desc) -> int:
            return self._guard(self.on_alert, desc)

        def ext_recv(session, data, size) -> int:
            return self._guard(self.on_transport_params, ctypes.string_at(data, size))

        def ext_send(session, buf) -> int:
            def append() -> None:
                data = self.get_transport_params()
                check(lib.gnutls_buffer_append_data(buf, data, len(data)), "transport parameters")

            rc = self._guard(append)
            return -1 if rc else 1  # >0: the extension is present

        lib.gnutls_handshake_set_secret_function(h, self._keep(SecretFunc(secret)))
        lib.gnutls_handshake_set_read_function(h, self._keep(ReadFunc(read)))
        lib.gnutls_alert_set_read_function(h, self._keep(AlertFunc(alert)))
        check(
            lib.gnutls_session_ext_register(
                h,
                b"quic_transport_parameters",
                QUIC_TRANSPORT_PARAMETERS_EXT,
                GNUTLS_EXT_TLS,
                self._keep(ExtRecvFunc(ext_recv)),
                self._keep(ExtSendFunc(ext_send)),
                None,
                None,
                None,
                GNUTLS_EXT_FLAG_CLIENT_HELLO | GNUTLS_EXT_FLAG_EE,
            ),
            "registering the QUIC transport parameters extension",
        )
        if self.is_server:

            def hook(session, htype, when, incoming, msg) -> int:
                return self._guard(self.on_client_hello)

            lib.gnutls_handshake_set_hook_function(
                h, 1, 1, self._keep(HookFunc(hook))
            )  # ClientHello, POST

    # configuration

    def set_priority(self, cipher: int = 0) -> None:
        err = c_char_p()
        check(
            lib.gnutls_priority_set_direct(
                self.handle, priority_string(cipher).encode(), byref(err)
            ),
            "priority",
        )

    def set_credentials(self, creds: Credentials) -> None:
        check(lib.gnutls_credentials_set(self.handle, creds.kind, creds.handle), "credentials")
        self._credentials.append(creds)

    def set_alpn(self, protocols: list[bytes]) -> None:
        if not protocols:
            return
        array = (Datum * len(protocols))(*[Datum.of(p) for p in protocols])
        self._keep(array)
        check(
            lib.gnutls_alpn_set_protocols(
                self.handle, array, len(protocols), GNUTLS_ALPN_MANDATORY
            ),
            "ALPN",
        )

    def selected_alpn(self) -> bytes:
        datum = Datum()
        if lib.gnutls_alpn_get_selected_protocol(self.handle, byref(datum)) < 0:
            return b""
        return datum.bytes()

    def set_server_name(self, name: str) -> None:
        raw = name.encode()
        check(
            lib.gnutls_server_name_set(self.handle, GNUTLS_NAME_DNS, raw, len(raw)), "server name"
        )

    def verify_peer(self, hostname: str | None) -> None:
        """Verify the peer's chain against the trust store and, when given, its name."""
        name = self._keep(ctypes.create_string_buffer(hostname.encode())) if hostname else None
        lib.gnutls_session_set_verify_cert(self.handle, name, 0)

    def request_client_certificate(self, mode: int) -> None:
        lib.gnutls_certificate_server_set_request(self.handle, mode)

    def enable_tickets(self, key: bytes) -> None:
        """Server: issue session tickets sealed with ``key`` (64 bytes)."""
        datum = self._keep(Datum.of(key))
        check(lib.gnutls_session_ticket_enable_server(self.handle, byref(datum)), "ticket key")

    def enable_early_data(self) -> None:
        """Server: accept 0-RTT, checked against the process-wide anti-replay record."""
        lib.gnutls_anti_replay_enable(self.handle, AntiReplay.shared().handle)
        check(lib.gnutls_record_set_max_early_data_size(self.handle, 0xFFFFFFFF), "early data size")

    def set_session_data(self, data: bytes) -> None:
        check(lib.gnutls_session_set_data(self.handle, data, len(data)), "resumption data")

    def session_data(self) -> bytes:
        datum = Datum()
        check(lib.gnutls_session_get_data2(self.handle, byref(datum)), "session data")
        try:
            return datum.bytes()
        finally:
            _gnutls_free(ctypes.cast(datum.data, c_void_p))

    def set_keylog(self, write_line: Callable[[str], None]) -> None:
        def keylog(session, label, secret) -> int:
            return self._guard(write_line, f"{label.decode()} {{random}} {secret[0].bytes().hex()}")

        lib.gnutls_session_set_keylog_function(self.handle, self._keep(KeylogFunc(keylog)))

    # running

    def handshake(self) -> bool:
        """One step: True when the handshake is complete, False when it waits for input."""
        rc = lib.gnutls_handshake(self.handle)
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if rc in (GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED):
            return False
        check(rc, "handshake")
        return True

    def feed(self, level: int, data: bytes) -> None:
        """Handshake bytes received at ``level`` (a QUIC_CRYPTO_* level)."""
        rc = lib.gnutls_handshake_write(self.handle, GNUTLS_LEVEL[level], data, len(data))
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        check(rc, "handshake data")

    def send_ticket(self) -> None:
        check(lib.gnutls_session_ticket_send(self.handle, 1, 0), "session ticket")

    # results

    def cipher(self) -> int:
        return TLS_CIPHER.get(lib.gnutls_cipher_get(self.handle), 0)

    def early_cipher(self) -> int:
        return TLS_CIPHER.get(lib.gnutls_early_cipher_get(self.handle), 0)

    def resumed(self) -> bool:
        return bool(lib.gnutls_session_is_resumed(self.handle))

    def early_data_accepted(self) -> bool:
        return bool(lib.gnutls_session_get_flags(self.handle) & GNUTLS_SFLAGS_EARLY_DATA)

    def psk_username(self) -> str:
        name = lib.gnutls_psk_server_get_username(self.handle)
        return name.decode() if name else ""

    def peer_certificates(self) -> list[bytes]:
        count = c_uint()
        array = lib.gnutls_certificate_get_peers(self.handle, byref(count))
        if not array:
            return []
        return [array[i].bytes() for i in range(count.value)]

    def close(self) -> None:
        if self.handle:
            lib.gnutls_deinit(self.handle)
            self.handle = None
            with Session._live_lock:
                Session.live -= 1

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
