"""A thin ctypes binding to the system GnuTLS: the TLS 1.3 pieces a QUIC handshake needs.

GnuTLS (3.7+) has a QUIC mode: handshake messages leave through a read function instead
of records, arrive through ``gnutls_handshake_write``, and each traffic secret is handed
out through a secret function. That is the whole seam; nothing here speaks QUIC.

Callbacks: every C-callable thunk is created once at import and lives for the process,
so no session can outlive its thunk. A thunk finds its ``Session`` through a registry
keyed by the ``gnutls_session_t`` pointer and calls the session's Python handler. A
Python exception never crosses into C: it is stored on the session, GnuTLS gets an
error code, and ``Session.handshake()`` re-raises it once GnuTLS has unwound.

Sessions and credentials are freed by ``close()`` (or ``with``), else by ``__del__``;
both paths free at most once. A session keeps its credentials alive, as GnuTLS
requires credentials to outlive the sessions that use them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import threading
import time
import weakref
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    byref,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_ssize_t,
    c_uint,
    c_void_p,
)
from typing import Any, Protocol

from quic import uapi

# gnutls_init flags (gnutls.h, enum gnutls_init_flags_t)
GNUTLS_SERVER = 1
GNUTLS_CLIENT = 1 << 1
GNUTLS_NO_SIGNAL = 1 << 6
GNUTLS_NO_TICKETS = 1 << 10
GNUTLS_ENABLE_EARLY_DATA = 1 << 20
GNUTLS_NO_AUTO_SEND_TICKET = 1 << 21
GNUTLS_NO_END_OF_EARLY_DATA = 1 << 22

# gnutls_record_encryption_level_t
GNUTLS_ENCRYPTION_LEVEL_INITIAL = 0
GNUTLS_ENCRYPTION_LEVEL_EARLY = 1
GNUTLS_ENCRYPTION_LEVEL_HANDSHAKE = 2
GNUTLS_ENCRYPTION_LEVEL_APPLICATION = 3

# gnutls_cipher_algorithm_t values that TLS 1.3 can negotiate
GNUTLS_CIPHER_AES_128_GCM = 10
GNUTLS_CIPHER_AES_256_GCM = 11
GNUTLS_CIPHER_AES_128_CCM = 19
GNUTLS_CIPHER_CHACHA20_POLY1305 = 23

GNUTLS_CRD_CERTIFICATE = 1
GNUTLS_CRD_PSK = 4
GNUTLS_X509_FMT_PEM = 1
GNUTLS_CRT_X509 = 1
GNUTLS_NAME_DNS = 1
GNUTLS_PSK_KEY_RAW = 0
GNUTLS_DT_IP_ADDRESS = 4
GNUTLS_ALPN_MANDATORY = 1

# gnutls_certificate_request_t
GNUTLS_CERT_IGNORE = 0
GNUTLS_CERT_REQUEST = 1
GNUTLS_CERT_REQUIRE = 2

# extension registration
GNUTLS_EXT_TLS = 2
GNUTLS_EXT_FLAG_CLIENT_HELLO = 1 << 1
GNUTLS_EXT_FLAG_EE = 1 << 4
GNUTLS_EXT_FLAG_TLS = 1 << 7

GNUTLS_HANDSHAKE_CLIENT_HELLO = 1
GNUTLS_HOOK_POST = 1

GNUTLS_SFLAGS_SESSION_TICKET = 1 << 7
GNUTLS_SFLAGS_EARLY_DATA = 1 << 10

# error codes the binding itself produces or checks for
GNUTLS_E_SUCCESS = 0
GNUTLS_E_AGAIN = -28
GNUTLS_E_INVALID_REQUEST = -50
GNUTLS_E_INTERRUPTED = -52
GNUTLS_E_CERTIFICATE_ERROR = -43
GNUTLS_E_NO_CERTIFICATE_FOUND = -49
GNUTLS_E_INTERNAL_ERROR = -59
GNUTLS_E_USER_ERROR = -320
GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR = -348
GNUTLS_E_DB_ENTRY_EXISTS = -428

GNUTLS_A_INTERNAL_ERROR = 80

# RFC 9001 §8.2: the quic_transport_parameters extension
QUIC_TRANSPORT_PARAMETERS_EXT = 0x39

TLS_CIPHER_BY_GNUTLS = {
    GNUTLS_CIPHER_AES_128_GCM: uapi.TLS_CIPHER_AES_GCM_128,
    GNUTLS_CIPHER_AES_256_GCM: uapi.TLS_CIPHER_AES_GCM_256,
    GNUTLS_CIPHER_AES_128_CCM: uapi.TLS_CIPHER_AES_CCM_128,
    GNUTLS_CIPHER_CHACHA20_POLY1305: uapi.TLS_CIPHER_CHACHA20_POLY1305,
}
PRIORITY_CIPHER = {
    uapi.TLS_CIPHER_AES_GCM_128: "AES-128-GCM",
    uapi.TLS_CIPHER_AES_GCM_256: "AES-256-GCM",
    uapi.TLS_CIPHER_CHACHA20_POLY1305: "CHACHA20-POLY1305",
    uapi.TLS_CIPHER_AES_CCM_128: "AES-128-CCM",
}


def quic_priority(cipher: int = 0) -> str:
    """libquic's QUIC_PRIORITY: TLS 1.3 only, no middlebox compatibility mode (RFC 9001
    §8.4), optionally pinned to one ``TLS_CIPHER_*`` as tlshd does for kernel consumers."""
    if cipher and cipher not in PRIORITY_CIPHER:
        raise ValueError(f"unknown TLS_CIPHER_* value {cipher}")
    names = [PRIORITY_CIPHER[cipher]] if cipher else list(PRIORITY_CIPHER.values())
    return ":".join(
        [
            "NORMAL:-VERS-ALL:+VERS-TLS1.3:+PSK:+ECDHE-PSK:-CIPHER-ALL",
            *("+" + n for n in names),
            "-GROUP-ALL:+GROUP-SECP256R1:+GROUP-X25519:+GROUP-SECP384R1:+GROUP-SECP521R1",
            "%DISABLE_TLS13_COMPAT_MODE",
        ]
    )


# ----------------------------------------------------------------------------
# library and prototypes


class Datum(ctypes.Structure):
    """``gnutls_datum_t``."""

    _fields_ = [("data", c_void_p), ("size", c_uint)]


class TypedVdata(ctypes.Structure):
    """``gnutls_typed_vdata_st``: how to ask GnuTLS to match an IP address SAN."""

    _fields_ = [("type", c_int), ("data", c_void_p), ("size", c_uint)]


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("gnutls") or "libgnutls.so.30"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return ctypes.CDLL("libgnutls.so.30")


_lib = _load()

_SECRET_FUNC = CFUNCTYPE(c_int, c_void_p, c_int, c_void_p, c_void_p, c_size_t)
_READ_FUNC = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_void_p, c_size_t)
_ALERT_FUNC = CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_int)
_EXT_RECV_FUNC = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_EXT_SEND_FUNC = CFUNCTYPE(c_int, c_void_p, c_void_p)
_HOOK_FUNC = CFUNCTYPE(c_int, c_void_p, c_uint, c_uint, c_uint, c_void_p)
_KEYLOG_FUNC = CFUNCTYPE(c_int, c_void_p, c_char_p, POINTER(Datum))
_PSK_SERVER_FUNC = CFUNCTYPE(c_int, c_void_p, c_char_p, POINTER(Datum))
_PULL_FUNC = CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_size_t)
_PUSH_FUNC = CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_size_t)
_VERIFY_FUNC = CFUNCTYPE(c_int, c_void_p)
_DB_ADD_FUNC = CFUNCTYPE(c_int, c_void_p, c_long, POINTER(Datum), POINTER(Datum))

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "gnutls_global_init": (c_int, []),
    "gnutls_check_version": (c_char_p, [c_char_p]),
    "gnutls_strerror": (c_char_p, [c_int]),
    "gnutls_error_is_fatal": (c_int, [c_int]),
    "gnutls_error_to_alert": (c_int, [c_int, POINTER(c_int)]),
    "gnutls_alert_get_name": (c_char_p, [c_int]),
    "gnutls_init": (c_int, [POINTER(c_void_p), c_uint]),
    "gnutls_deinit": (None, [c_void_p]),
    "gnutls_priority_init": (c_int, [POINTER(c_void_p), c_char_p, POINTER(c_char_p)]),
    "gnutls_priority_set": (c_int, [c_void_p, c_void_p]),
    "gnutls_credentials_set": (c_int, [c_void_p, c_int, c_void_p]),
    "gnutls_handshake": (c_int, [c_void_p]),
    "gnutls_handshake_write": (c_int, [c_void_p, c_int, c_void_p, c_size_t]),
    "gnutls_handshake_set_secret_function": (None, [c_void_p, _SECRET_FUNC]),
    "gnutls_handshake_set_read_function": (None, [c_void_p, _READ_FUNC]),
    "gnutls_alert_set_read_function": (None, [c_void_p, _ALERT_FUNC]),
    "gnutls_handshake_set_hook_function": (None, [c_void_p, c_uint, c_int, _HOOK_FUNC]),
    "gnutls_transport_set_pull_function": (None, [c_void_p, _PULL_FUNC]),
    "gnutls_transport_set_push_function": (None, [c_void_p, _PUSH_FUNC]),
    "gnutls_transport_set_errno": (None, [c_void_p, c_int]),
    "gnutls_transport_set_ptr": (None, [c_void_p, c_void_p]),
    "gnutls_session_ext_register": (
        c_int,
        [
            c_void_p,
            c_char_p,
            c_int,
            c_int,
            _EXT_RECV_FUNC,
            _EXT_SEND_FUNC,
            c_void_p,
            c_void_p,
            c_void_p,
            c_uint,
        ],
    ),
    "gnutls_buffer_append_data": (c_int, [c_void_p, c_void_p, c_size_t]),
    "gnutls_alpn_set_protocols": (c_int, [c_void_p, POINTER(Datum), c_uint, c_uint]),
    "gnutls_alpn_get_selected_protocol": (c_int, [c_void_p, POINTER(Datum)]),
    "gnutls_server_name_set": (c_int, [c_void_p, c_int, c_void_p, c_size_t]),
    "gnutls_session_set_verify_cert": (None, [c_void_p, c_char_p, c_uint]),
    "gnutls_session_set_verify_cert2": (None, [c_void_p, POINTER(TypedVdata), c_uint, c_uint]),
    "gnutls_session_get_verify_cert_status": (c_uint, [c_void_p]),
    "gnutls_session_set_verify_function": (None, [c_void_p, _VERIFY_FUNC]),
    "gnutls_certificate_verify_peers2": (c_int, [c_void_p, POINTER(c_uint)]),
    "gnutls_certificate_verification_status_print": (
        c_int,
        [c_uint, c_int, POINTER(Datum), c_uint],
    ),
    "gnutls_certificate_allocate_credentials": (c_int, [POINTER(c_void_p)]),
    "gnutls_certificate_free_credentials": (None, [c_void_p]),
    "gnutls_certificate_set_x509_key_file": (c_int, [c_void_p, c_char_p, c_char_p, c_int]),
    "gnutls_certificate_set_x509_key_mem": (
        c_int,
        [c_void_p, POINTER(Datum), POINTER(Datum), c_int],
    ),
    "gnutls_certificate_set_x509_trust_file": (c_int, [c_void_p, c_char_p, c_int]),
    "gnutls_certificate_set_x509_trust_mem": (c_int, [c_void_p, POINTER(Datum), c_int]),
    "gnutls_certificate_set_x509_system_trust": (c_int, [c_void_p]),
    "gnutls_certificate_server_set_request": (None, [c_void_p, c_int]),
    "gnutls_certificate_get_peers": (POINTER(Datum), [c_void_p, POINTER(c_uint)]),
    "gnutls_psk_allocate_client_credentials": (c_int, [POINTER(c_void_p)]),
    "gnutls_psk_free_client_credentials": (None, [c_void_p]),
    "gnutls_psk_set_client_credentials": (c_int, [c_void_p, c_char_p, POINTER(Datum), c_int]),
    "gnutls_psk_allocate_server_credentials": (c_int, [POINTER(c_void_p)]),
    "gnutls_psk_free_server_credentials": (None, [c_void_p]),
    "gnutls_psk_set_server_credentials_function": (None, [c_void_p, _PSK_SERVER_FUNC]),
    "gnutls_psk_server_get_username": (c_char_p, [c_void_p]),
    "gnutls_session_ticket_key_generate": (c_int, [POINTER(Datum)]),
    "gnutls_session_ticket_enable_server": (c_int, [c_void_p, POINTER(Datum)]),
    "gnutls_session_ticket_send": (c_int, [c_void_p, c_uint, c_uint]),
    "gnutls_session_get_data2": (c_int, [c_void_p, POINTER(Datum)]),
    "gnutls_session_set_data": (c_int, [c_void_p, c_void_p, c_size_t]),
    "gnutls_session_is_resumed": (c_int, [c_void_p]),
    "gnutls_session_get_flags": (c_uint, [c_void_p]),
    "gnutls_session_get_random": (None, [c_void_p, POINTER(Datum), POINTER(Datum)]),
    "gnutls_session_set_keylog_function": (None, [c_void_p, _KEYLOG_FUNC]),
    "gnutls_anti_replay_init": (c_int, [POINTER(c_void_p)]),
    "gnutls_anti_replay_set_add_function": (None, [c_void_p, _DB_ADD_FUNC]),
    "gnutls_anti_replay_enable": (None, [c_void_p, c_void_p]),
    "gnutls_record_set_max_early_data_size": (c_int, [c_void_p, c_size_t]),
    "gnutls_cipher_get": (c_int, [c_void_p]),
    "gnutls_early_cipher_get": (c_int, [c_void_p]),
}

for _name, (_restype, _argtypes) in _PROTOTYPES.items():
    _fn = getattr(_lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

# gnutls_free and gnutls_malloc are exported function-pointer variables, not functions.
_gnutls_free = CFUNCTYPE(None, c_void_p)(c_void_p.in_dll(_lib, "gnutls_free").value)
_gnutls_malloc = CFUNCTYPE(c_void_p, c_size_t)(c_void_p.in_dll(_lib, "gnutls_malloc").value)


class GnutlsError(Exception):
    """A negative GnuTLS return code, with GnuTLS's own text for it."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message or strerror(code)
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return self.message


def strerror(code: int) -> str:
    return (_lib.gnutls_strerror(code) or b"unknown error").decode()


def alert_name(alert: int) -> str:
    name = _lib.gnutls_alert_get_name(alert)
    return name.decode() if name else f"alert {alert}"


def error_to_alert(code: int) -> int | None:
    """The TLS alert GnuTLS would send for an error, or None if it maps to none."""
    level = c_int()
    alert = _lib.gnutls_error_to_alert(code, byref(level))
    return alert if alert >= 0 else None


def is_fatal(code: int) -> bool:
    return bool(_lib.gnutls_error_is_fatal(code))


def check_version() -> str:
    return _lib.gnutls_check_version(None).decode()


def _check(code: int) -> int:
    if code < 0:
        raise GnutlsError(code)
    return code


def _datum(data: bytes) -> tuple[Datum, Any]:
    """A datum pointing at a buffer; the buffer is returned too so the caller keeps it
    alive for as long as GnuTLS reads the datum."""
    buf = ctypes.create_string_buffer(data, len(data))
    return Datum(ctypes.cast(buf, c_void_p), len(data)), buf


def _take_datum(d: Datum) -> bytes:
    """Copy out and release a datum that GnuTLS allocated for the caller."""
    try:
        return ctypes.string_at(d.data, d.size) if d.data else b""
    finally:
        if d.data:
            _gnutls_free(d.data)


_check(_lib.gnutls_global_init())


# ----------------------------------------------------------------------------
# credentials


class _Freeable:
    """A GnuTLS object freed exactly once, by ``close()`` or when collected."""

    _free: Callable[[int], None]

    def __init__(self, allocate: Callable[[Any], int]) -> None:
        ptr = c_void_p()
        _check(allocate(byref(ptr)))
        self._ptr: int | None = ptr.value

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise GnutlsError(GNUTLS_E_INVALID_REQUEST, "credentials already freed")
        return self._ptr

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            type(self)._free(ptr)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CertificateCredentials(_Freeable):
    """X.509 credentials: our certificate chain and key, and the trust store."""

    CRED_TYPE = GNUTLS_CRD_CERTIFICATE
    _free = _lib.gnutls_certificate_free_credentials

    def __init__(self) -> None:
        super().__init__(_lib.gnutls_certificate_allocate_credentials)

    def set_key_file(self, cert_file: str, key_file: str) -> None:
        _check(
            _lib.gnutls_certificate_set_x509_key_file(
                self.ptr, cert_file.encode(), key_file.encode(), GNUTLS_X509_FMT_PEM
            )
        )

    def set_key_mem(self, cert_pem: bytes, key_pem: bytes) -> None:
        (cert, cbuf), (key, kbuf) = _datum(cert_pem), _datum(key_pem)
        _check(
            _lib.gnutls_certificate_set_x509_key_mem(
                self.ptr, byref(cert), byref(key), GNUTLS_X509_FMT_PEM
            )
        )
        del cbuf, kbuf

    def set_trust_file(self, ca_file: str) -> int:
        """The number of certificates loaded. A file that yields none (not PEM, or no
        certificate in it) is an error here: GnuTLS accepts it, and every verification
        then fails with "The certificate issuer is unknown", naming no file."""
        n = _check(
            _lib.gnutls_certificate_set_x509_trust_file(
                self.ptr, ca_file.encode(), GNUTLS_X509_FMT_PEM
            )
        )
        if n == 0:
            raise GnutlsError(GNUTLS_E_NO_CERTIFICATE_FOUND, f"no certificate in {ca_file}")
        return n

    def set_trust_mem(self, ca_pem: bytes) -> int:
        ca, buf = _datum(ca_pem)
        n = _check(_lib.gnutls_certificate_set_x509_trust_mem(self.ptr, byref(ca), 1))
        del buf
        return n

    def set_system_trust(self) -> int:
        return _check(_lib.gnutls_certificate_set_x509_system_trust(self.ptr))


class PskClientCredentials(_Freeable):
    CRED_TYPE = GNUTLS_CRD_PSK
    _free = _lib.gnutls_psk_free_client_credentials

    def __init__(self, identity: str, key: bytes) -> None:
        super().__init__(_lib.gnutls_psk_allocate_client_credentials)
        datum, buf = _datum(key)
        _check(
            _lib.gnutls_psk_set_client_credentials(
                self.ptr, identity.encode(), byref(datum), GNUTLS_PSK_KEY_RAW
            )
        )
        del buf


class PskServerCredentials(_Freeable):
    """Server PSKs looked up by identity through the session's ``psk_lookup`` handler, so
    one credential object can serve a key table, a file or a keyring."""

    CRED_TYPE = GNUTLS_CRD_PSK
    _free = _lib.gnutls_psk_free_server_credentials

    def __init__(self) -> None:
        super().__init__(_lib.gnutls_psk_allocate_server_credentials)
        _lib.gnutls_psk_set_server_credentials_function(self.ptr, _psk_server_thunk)


Credentials = CertificateCredentials | PskClientCredentials | PskServerCredentials


def generate_ticket_key() -> bytes:
    """A fresh 64-byte session ticket master key."""
    d = Datum()
    _check(_lib.gnutls_session_ticket_key_generate(byref(d)))
    return _take_datum(d)


_priorities: dict[str, int] = {}
_priorities_lock = threading.Lock()


def _priority_cache(priority: str) -> int:
    """The ``gnutls_priority_t`` of ``priority``, parsed on first use and kept for the
    process (a handful of strings: one per pinned cipher)."""
    cache = _priorities.get(priority)
    if cache is not None:
        return cache
    with _priorities_lock:
        cache = _priorities.get(priority)
        if cache is None:
            ptr, err = c_void_p(), c_char_p()
            code = _lib.gnutls_priority_init(byref(ptr), priority.encode(), byref(err))
            if code < 0:
                where = err.value.decode(errors="replace") if err.value else ""
                raise GnutlsError(code, f"{strerror(code)} (at {where!r})" if where else None)
            cache = _priorities[priority] = ptr.value
    return cache


# ----------------------------------------------------------------------------
# anti-replay: one process-wide context, as all servers of a process share tickets


class _AntiReplay:
    """Remembers ClientHellos that carried early data until their ticket window ends,
    so a replayed 0-RTT ClientHello within this process is refused."""

    def __init__(self) -> None:
        ptr = c_void_p()
        _check(_lib.gnutls_anti_replay_init(byref(ptr)))
        self.ptr = ptr.value
        self.seen: dict[bytes, float] = {}
        self.lock = threading.Lock()
        _lib.gnutls_anti_replay_set_add_function(self.ptr, _anti_replay_add_thunk)

    def add(self, exp_time: int, key: bytes) -> int:
        now = time.time()
        with self.lock:
            if len(self.seen) > 4096:
                self.seen = {k: t for k, t in self.seen.items() if t > now}
            if self.seen.get(key, 0) > now:
                return GNUTLS_E_DB_ENTRY_EXISTS
            self.seen[key] = float(exp_time)
        return 0


_anti_replay: _AntiReplay | None = None
_anti_replay_lock = threading.Lock()


def _get_anti_replay() -> _AntiReplay:
    global _anti_replay
    with _anti_replay_lock:
        if _anti_replay is None:
            _anti_replay = _AntiReplay()
        return _anti_replay


# ----------------------------------------------------------------------------
# sessions


class SessionHandler(Protocol):
    """What a session reports to its owner. Levels are GnuTLS encryption levels."""

    def on_secret(self, level: int, read: bytes | None, write: bytes | None) -> None: ...

    def on_message(self, level: int, data: bytes) -> None: ...

    def on_alert(self, level: int, alert: int) -> None: ...

    def get_transport_params(self) -> bytes: ...

    def on_transport_params(self, data: bytes) -> None: ...

    def on_client_hello(self) -> None: ...

    def on_keylog(self, label: str, secret: bytes) -> None: ...

    def psk_lookup(self, identity: str) -> bytes | None: ...


_sessions: weakref.WeakValueDictionary[int, Session] = weakref.WeakValueDictionary()
_sessions_lock = threading.Lock()


def live_sessions() -> int:
    """How many GnuTLS sessions are allocated and not yet freed (a leak check)."""
    with _sessions_lock:
        return len(_sessions)


class Session:
    """One ``gnutls_session_t`` in QUIC mode, reporting to a ``SessionHandler``."""

    def __init__(self, flags: int, handler: SessionHandler) -> None:
        ptr = c_void_p()
        _check(_lib.gnutls_init(byref(ptr), flags))
        self._ptr: int | None = ptr.value
        self.is_server = bool(flags & GNUTLS_SERVER)
        self.handler: SessionHandler | None = handler
        self.error: BaseException | None = None
        self.verify_status = 0  # set by optional peer verification
        self._creds: list[Credentials] = []
        self._keep: list[Any] = []  # buffers GnuTLS holds pointers into
        with _sessions_lock:
            _sessions[ptr.value] = self
        p = ptr.value
        _lib.gnutls_handshake_set_secret_function(p, _secret_thunk)
        _lib.gnutls_handshake_set_read_function(p, _read_thunk)
        _lib.gnutls_alert_set_read_function(p, _alert_thunk)
        _lib.gnutls_transport_set_ptr(p, p)  # the transport thunks need the session
        _lib.gnutls_transport_set_pull_function(p, _pull_thunk)
        _lib.gnutls_transport_set_push_function(p, _push_thunk)
        _check(
            _lib.gnutls_session_ext_register(
                p,
                b"quic_transport_parameters",
                QUIC_TRANSPORT_PARAMETERS_EXT,
                GNUTLS_EXT_TLS,
                _ext_recv_thunk,
                _ext_send_thunk,
                None,
                None,
                None,
                GNUTLS_EXT_FLAG_TLS | GNUTLS_EXT_FLAG_CLIENT_HELLO | GNUTLS_EXT_FLAG_EE,
            )
        )
        if self.is_server:
            _lib.gnutls_handshake_set_hook_function(
                p, GNUTLS_HANDSHAKE_CLIENT_HELLO, GNUTLS_HOOK_POST, _client_hello_thunk
            )

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise GnutlsError(GNUTLS_E_INVALID_REQUEST, "session already freed")
        return self._ptr

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is None:
            return
        with _sessions_lock:
            _sessions.pop(ptr, None)
        _lib.gnutls_deinit(ptr)
        self.handler = None
        self._creds.clear()
        self._keep.clear()

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration -------------------------------------------------

    def set_priority(self, priority: str) -> None:
        """Each priority string is parsed once per process (about 25 µs a parse, against
        2 µs to set a parsed one); sessions share the parsed cache, which GnuTLS only
        reads."""
        _check(_lib.gnutls_priority_set(self.ptr, _priority_cache(priority)))

    def set_credentials(self, creds: Credentials) -> None:
        _check(_lib.gnutls_credentials_set(self.ptr, creds.CRED_TYPE, creds.ptr))
        self._creds.append(creds)

    def set_alpn(self, protocols: list[bytes]) -> None:
        bufs = [ctypes.create_string_buffer(p, len(p)) for p in protocols]
        arr = (Datum * len(protocols))(
            *(Datum(ctypes.addressof(b), len(p)) for b, p in zip(bufs, protocols, strict=True))
        )
        _check(_lib.gnutls_alpn_set_protocols(self.ptr, arr, len(protocols), GNUTLS_ALPN_MANDATORY))

    def selected_alpn(self) -> bytes | None:
        d = Datum()
        if _lib.gnutls_alpn_get_selected_protocol(self.ptr, byref(d)) < 0 or not d.data:
            return None
        return ctypes.string_at(d.data, d.size)

    def set_server_name(self, name: str) -> None:
        raw = name.encode()
        _check(_lib.gnutls_server_name_set(self.ptr, GNUTLS_NAME_DNS, raw, len(raw)))

    def set_verify_cert(self, name: str | None) -> None:
        """Verify the peer's chain, and that it names ``name`` (a DNS name or an IP
        address, matched against the IP SAN), when one is given."""
        if name:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                ip = None
            if ip is not None:
                buf = ctypes.create_string_buffer(ip.packed, len(ip.packed))
                self._keep.append(buf)
                vdata = TypedVdata(GNUTLS_DT_IP_ADDRESS, ctypes.cast(buf, c_void_p), len(buf))
                self._keep.append(vdata)
                _lib.gnutls_session_set_verify_cert2(self.ptr, byref(vdata), 1, 0)
                return
        # GnuTLS keeps the pointer, not a copy, for the session's life.
        host = ctypes.create_string_buffer(name.encode()) if name else None
        self._keep.append(host)
        _lib.gnutls_session_set_verify_cert(self.ptr, host, 0)

    def set_verify_optional(self) -> None:
        """Server with a *requested* client certificate: verify it when one is sent, but
        let a client without one through (automatic verification would refuse it)."""
        _lib.gnutls_session_set_verify_function(self.ptr, _verify_optional_thunk)

    def _verify_optional(self) -> int:
        n = c_uint()
        if not _lib.gnutls_certificate_get_peers(self.ptr, byref(n)) or not n.value:
            return 0
        status = c_uint()
        code = _lib.gnutls_certificate_verify_peers2(self.ptr, byref(status))
        if code < 0:
            return code
        self.verify_status = status.value
        return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR if status.value else 0

    def verify_status_text(self) -> str:
        status = self.verify_status or _lib.gnutls_session_get_verify_cert_status(self.ptr)
        if not status:
            return ""
        out = Datum()
        if (
            _lib.gnutls_certificate_verification_status_print(
                status, GNUTLS_CRT_X509, byref(out), 0
            )
            < 0
        ):
            return f"verification status 0x{status:x}"
        return _take_datum(out).decode(errors="replace").strip()

    def set_cert_request(self, mode: int) -> None:
        _lib.gnutls_certificate_server_set_request(self.ptr, mode)

    def enable_ticket_server(self, key: bytes) -> None:
        datum, buf = _datum(key)
        self._keep.append(buf)
        _check(_lib.gnutls_session_ticket_enable_server(self.ptr, byref(datum)))

    def enable_early_data_server(self) -> None:
        """Accept 0-RTT; RFC 9001 §4.6.1 wants max_early_data_size 0xffffffff in tickets."""
        _lib.gnutls_anti_replay_enable(self.ptr, _get_anti_replay().ptr)
        _check(_lib.gnutls_record_set_max_early_data_size(self.ptr, 0xFFFFFFFF))

    def set_session_data(self, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        _check(_lib.gnutls_session_set_data(self.ptr, buf, len(data)))

    def enable_keylog(self) -> None:
        _lib.gnutls_session_set_keylog_function(self.ptr, _keylog_thunk)

    # -- driving -------------------------------------------------------

    def handshake(self) -> int:
        """One ``gnutls_handshake`` step: 0 when done, GNUTLS_E_AGAIN when it needs the
        peer's next messages. A Python error from a callback is re-raised here; any
        other fatal code raises GnutlsError."""
        code = _lib.gnutls_handshake(self.ptr)
        self._raise_pending()
        if code < 0 and is_fatal(code):
            raise GnutlsError(code)
        return code

    def handshake_write(self, level: int, data: bytes) -> None:
        code = _lib.gnutls_handshake_write(self.ptr, level, data, len(data))
        self._raise_pending()
        _check(code)

    def send_ticket(self) -> None:
        _check(_lib.gnutls_session_ticket_send(self.ptr, 1, 0))
        self._raise_pending()

    def _raise_pending(self) -> None:
        exc, self.error = self.error, None
        if exc is not None:
            raise exc

    # -- results -------------------------------------------------------

    def session_data(self) -> bytes | None:
        """Resumption data once a NewSessionTicket arrived (client), else None."""
        if not _lib.gnutls_session_get_flags(self.ptr) & GNUTLS_SFLAGS_SESSION_TICKET:
            return None
        d = Datum()
        _check(_lib.gnutls_session_get_data2(self.ptr, byref(d)))
        return _take_datum(d) or None

    def is_resumed(self) -> bool:
        return bool(_lib.gnutls_session_is_resumed(self.ptr))

    def early_data_accepted(self) -> bool:
        return bool(_lib.gnutls_session_get_flags(self.ptr) & GNUTLS_SFLAGS_EARLY_DATA)

    def cipher(self) -> int:
        """The negotiated AEAD as a Linux ``TLS_CIPHER_*`` number (0 if none yet)."""
        return TLS_CIPHER_BY_GNUTLS.get(_lib.gnutls_cipher_get(self.ptr), 0)

    def early_cipher(self) -> int:
        return TLS_CIPHER_BY_GNUTLS.get(_lib.gnutls_early_cipher_get(self.ptr), 0)

    def peer_certificate(self) -> bytes | None:
        """The peer's leaf certificate (DER), if it sent one."""
        n = c_uint()
        certs = _lib.gnutls_certificate_get_peers(self.ptr, byref(n))
        if not certs or not n.value:
            return None
        return ctypes.string_at(certs[0].data, certs[0].size)

    def psk_username(self) -> str | None:
        name = _lib.gnutls_psk_server_get_username(self.ptr)
        return name.decode(errors="replace") if name else None

    def client_random(self) -> bytes:
        client, server = Datum(), Datum()
        _lib.gnutls_session_get_random(self.ptr, byref(client), byref(server))
        return ctypes.string_at(client.data, client.size) if client.data else b""


# ----------------------------------------------------------------------------
# C thunks: created once, dispatch to the session's handler, never let Python
# exceptions through


def _dispatch(ptr: int | None, call: Callable[[Session, SessionHandler], int | None]) -> int:
    with _sessions_lock:
        session = _sessions.get(ptr or 0)
    if session is None or session.handler is None:
        return GNUTLS_E_INTERNAL_ERROR
    try:
        return call(session, session.handler) or 0
    except BaseException as exc:  # must not unwind through C
        if session.error is None:
            session.error = exc
        return GNUTLS_E_USER_ERROR


def _bytes(ptr: int | None, size: int) -> bytes | None:
    return ctypes.string_at(ptr, size) if ptr else None


@_SECRET_FUNC
def _secret_thunk(ptr, level, read, write, size):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: h.on_secret(level, _bytes(read, size), _bytes(write, size)))


@_READ_FUNC
def _read_thunk(ptr, level, htype, data, size):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: h.on_message(level, ctypes.string_at(data, size)))


@_ALERT_FUNC
def _alert_thunk(ptr, level, alert_level, alert):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: h.on_alert(level, alert))


@_EXT_RECV_FUNC
def _ext_recv_thunk(ptr, data, size):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: h.on_transport_params(ctypes.string_at(data, size)))


def _ext_send(buffer: int, handler: SessionHandler) -> int:
    data = handler.get_transport_params()
    _check(_lib.gnutls_buffer_append_data(buffer, data, len(data)))
    return len(data)


@_EXT_SEND_FUNC
def _ext_send_thunk(ptr, buffer):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: _ext_send(buffer, h))


@_HOOK_FUNC
def _client_hello_thunk(ptr, htype, when, incoming, msg):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: h.on_client_hello())


@_KEYLOG_FUNC
def _keylog_thunk(ptr, label, secret):  # type: ignore[no-untyped-def]
    return _dispatch(
        ptr,
        lambda s, h: h.on_keylog(
            (label or b"").decode(), ctypes.string_at(secret[0].data, secret[0].size)
        ),
    )


def _psk_lookup(username: bytes | None, out: Any, handler: SessionHandler) -> int:
    key = handler.psk_lookup((username or b"").decode(errors="replace"))
    if key is None:
        return -1
    mem = _gnutls_malloc(max(len(key), 1))
    if not mem:
        return GNUTLS_E_INTERNAL_ERROR
    ctypes.memmove(mem, key, len(key))
    out[0].data = mem
    out[0].size = len(key)
    return 0


@_PSK_SERVER_FUNC
def _psk_server_thunk(ptr, username, key):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: _psk_lookup(username, key, h))


@_PULL_FUNC
def _pull_thunk(ptr, buf, size):  # type: ignore[no-untyped-def]
    """QUIC carries the handshake, never TLS records: any record read would block."""
    _lib.gnutls_transport_set_errno(ptr, errno.EAGAIN)
    return -1


@_PUSH_FUNC
def _push_thunk(ptr, buf, size):  # type: ignore[no-untyped-def]
    _lib.gnutls_transport_set_errno(ptr, errno.EAGAIN)
    return -1


@_VERIFY_FUNC
def _verify_optional_thunk(ptr):  # type: ignore[no-untyped-def]
    return _dispatch(ptr, lambda s, h: s._verify_optional())


@_DB_ADD_FUNC
def _anti_replay_add_thunk(ptr, exp_time, key, data):  # type: ignore[no-untyped-def]
    ar = _anti_replay
    if ar is None:
        return GNUTLS_E_INTERNAL_ERROR
    try:
        return ar.add(exp_time, ctypes.string_at(key[0].data, key[0].size))
    except BaseException:
        return GNUTLS_E_INTERNAL_ERROR
