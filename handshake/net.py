"""The kernel handshake API for kquic's consumers (``include/net/handshake.h``).

SMB and NFS servers never run TLS themselves. As ksmbd and nfsd call
``tls_server_hello_x509()`` and let ``tlshd`` shake hands on their socket, kquic's
consumers call the functions here and the agent ``kquic-tlshd`` does the TLS work in
its own process, so private keys never enter the consumer.

A request is one connection to the agent's Unix socket carrying a netlink-formatted
``accept`` message of the ``handshake`` family, with one end of a socketpair attached
(``SCM_RIGHTS``). Over the pair the agent asks for the socket operations of the
handshake (:mod:`handshake.sockops`); a worker thread here runs them on the QUIC socket.
The agent ends with ``done``: status and the remote identity.

Two styles: with ``ta_done`` set, a call returns 0 at once and ``ta_done(ta_data,
status, peerid)`` runs later on a worker thread, ``status`` being 0 or a negative errno
as in the kernel. Without it, the call blocks and returns the peer ID, or raises
:class:`HandshakeFailed` (an ``OSError``). Either way a call that cannot start the
request raises at once and never calls ``ta_done``: ``ENOENT``/``ECONNREFUSED`` when no
agent is running, ``EACCES`` when the agent's socket file shuts this process out.

Status values: 0 done; ``ETIMEDOUT`` the handshake outlived ``ta_timeout_ms``;
``EACCES`` the agent's policy (peer credentials) refused it; ``ENOKEY`` no such
certificate or PSK in the agent's key table; ``EIO`` TLS failed (the message names the
alert); ``ECONNABORTED`` the agent went away mid-handshake; ``ECANCELED`` (blocking
style only) another thread called :func:`tls_handshake_cancel`.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import logging
import os
import select
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quic import uapi

from . import sockops
from .tlshd import netlink as nl
from .tlshd.config import AgentConfig

log = logging.getLogger(__name__)

TLS_NO_KEYRING = 0
TLS_NO_PEERID = 0
TLS_NO_CERT = 0
TLS_NO_PRIVKEY = 0
TLS_DEFAULT_TIMEOUT_MS = 30_000
MAX_PEERIDS = 5

DEFAULT_AGENT_SOCKET = "/run/kquic/handshake.sock"
AGENT_SOCKET_ENV = "KQUIC_HANDSHAKE_SOCKET"
# Beyond ta_timeout_ms, how long to wait for the agent's own timeout report.
_DONE_GRACE = 2.0

DoneFunc = Callable[[Any, int, int], None]


@dataclass
class TlsHandshakeArgs:
    """``struct tls_handshake_args``; key serials come from
    :func:`handshake.tlshd.netlink.key_serial` of a name in the agent's key table."""

    ta_sock: Any
    ta_done: DoneFunc | None = None
    ta_data: Any = None
    ta_peername: str | None = None
    ta_timeout_ms: int = 0  # 0: TLS_DEFAULT_TIMEOUT_MS
    ta_keyring: int = TLS_NO_KEYRING
    ta_my_cert: int = TLS_NO_CERT
    ta_my_privkey: int = TLS_NO_PRIVKEY
    ta_my_peerids: list[int] = field(default_factory=list)
    ta_alpn: str | None = None  # QUIC: set as QUIC_SOCKOPT_ALPN before the request
    ta_agent: str | None = None  # the agent's socket; None: $KQUIC_HANDSHAKE_SOCKET or default


class HandshakeFailed(OSError):
    """A handshake the agent could not complete; ``errno`` is the status."""


def agent_socket_path(args: TlsHandshakeArgs | None = None) -> str:
    """Where a request goes: the args' own path, else an embedded agent started in
    this process, else ``$KQUIC_HANDSHAKE_SOCKET``, else the system agent."""
    if args is not None and args.ta_agent:
        return args.ta_agent
    if _embedded is not None:
        return _embedded.config.socket_path
    return os.environ.get(AGENT_SOCKET_ENV) or DEFAULT_AGENT_SOCKET


_embedded = None


def start_embedded_agent(config: str | os.PathLike | AgentConfig):
    """Run the agent's code on a thread of this process, for one-command demos and
    tests, and send this process's requests to it.

    Only an explicit call starts it; nothing falls back to it. It defeats the point of
    the agent, keeping private keys out of the consumer's process, so it warns, and it
    listens on a private socket in a fresh 0700 directory that no other user can reach.
    Returns the running :class:`~handshake.tlshd.agent.Agent`; stop it with
    :func:`stop_embedded_agent`.
    """
    global _embedded
    from .tlshd.agent import Agent
    from .tlshd.config import load_config

    if _embedded is not None:
        raise RuntimeError("an embedded handshake agent is already running")
    if not isinstance(config, AgentConfig):
        config = load_config(config)
    private_dir = tempfile.mkdtemp(prefix="kquic-agent-")
    config = dataclasses.replace(config, socket_path=os.path.join(private_dir, "handshake.sock"))
    log.warning("embedded handshake agent: private keys are loaded in this process")
    _embedded = Agent(config).start()
    return _embedded


def stop_embedded_agent() -> None:
    global _embedded
    agent, _embedded = _embedded, None
    if agent is not None:
        agent.stop()
        os.rmdir(os.path.dirname(agent.config.socket_path))


_active: dict[int, _Request] = {}
_active_lock = threading.Lock()


class _Request:
    """One handshake in flight: the agent connection, the pair, the worker thread."""

    def __init__(self, args: TlsHandshakeArgs, accept: nl.AcceptRequest) -> None:
        self.args = args
        self.accept = accept
        self.timeout = (args.ta_timeout_ms or TLS_DEFAULT_TIMEOUT_MS) / 1000
        self.control: socket.socket | None = None
        self.pair: socket.socket | None = None
        self.cancelled = False
        self.finished = threading.Event()
        self.status = 0
        self.peerid = TLS_NO_PEERID
        self.message = ""
        self._lock = threading.Lock()

    def start(self) -> None:
        path = agent_socket_path(self.args)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            control.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            control.close()
            raise HandshakeFailed(
                exc.errno,
                f"the kquic handshake agent is not running at {path}: start it with "
                "'systemctl start kquic-tlshd' or 'kquic-tlshd --config FILE'",
            ) from None
        except PermissionError:
            control.close()
            raise HandshakeFailed(
                errno.EACCES, f"not allowed to reach the handshake agent at {path}"
            ) from None
        mine, theirs = sockops.socketpair()
        self.accept.sockfd = theirs.fileno()
        message = nl.encode(self.accept)
        try:
            control.sendmsg(
                [message],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))],
            )
        except OSError as exc:
            control.close()
            mine.close()
            raise HandshakeFailed(exc.errno or errno.EIO, f"handshake agent: {exc}") from None
        finally:
            theirs.close()
        self.control, self.pair = control, mine
        threading.Thread(target=self._run, name="tls-handshake", daemon=True).start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout + _DONE_GRACE
        try:
            self._serve(deadline)
        except Exception as exc:  # the consumer learns of any failure through its status
            log.exception("handshake request failed")
            self._set(errno.EIO, 0, f"handshake request failed: {exc}")
        finally:
            self._finish()

    def _serve(self, deadline: float) -> None:
        control, pair = self.control, self.pair
        quic_sock = self.args.ta_sock
        while not self.cancelled:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._set(errno.ETIMEDOUT, 0, "the handshake agent did not finish in time")
                return
            ready = select.select([control, pair], [], [], min(remaining, 0.2))[0]
            if control in ready:
                self._on_done(control.recv(nl.MAX_MESSAGE_SIZE + 1))
                return
            if pair in ready and not sockops.serve_one(pair, quic_sock):
                # The agent closed its end: its done message or its death is next.
                ready = select.select([control], [], [], max(0.0, deadline - time.monotonic()))
                if ready[0]:
                    self._on_done(control.recv(nl.MAX_MESSAGE_SIZE + 1))
                else:
                    self._set(errno.ETIMEDOUT, 0, "the handshake agent did not finish in time")
                return

    def _on_done(self, data: bytes) -> None:
        if not data:
            self._set(errno.ECONNABORTED, 0, "the handshake agent went away mid-handshake")
            return
        try:
            msg = nl.decode(data)
        except nl.NetlinkFormatError as exc:
            self._set(errno.EPROTO, 0, f"malformed answer from the handshake agent: {exc}")
            return
        if not isinstance(msg, nl.Done):
            self._set(errno.EPROTO, 0, "unexpected answer from the handshake agent")
            return
        peerid = msg.remote_auth[0] if msg.remote_auth else TLS_NO_PEERID
        self._set(msg.status, peerid, _status_text(msg.status, self.args.ta_sock))

    def _set(self, status: int, peerid: int, message: str) -> None:
        with self._lock:
            if not self.finished.is_set():
                self.status, self.peerid, self.message = status, peerid, message

    def _finish(self) -> None:
        for sock in (self.control, self.pair):
            if sock is not None:
                sock.close()
        self._forget()
        with self._lock:
            self.finished.set()
            cancelled = self.cancelled
        if self.status:
            log.info("handshake failed: %s", self.message)
        done = self.args.ta_done
        if done is not None and not cancelled:
            done(self.args.ta_data, -self.status, self.peerid)

    def cancel(self) -> bool:
        """Withdraw the request. Shutting the channels down wakes the worker and tells
        the agent, which abandons the handshake as it would for a vanished consumer."""
        with self._lock:
            if self.finished.is_set() or self.cancelled:
                return False
            self.cancelled = True
        self._forget()
        for sock in (self.control, self.pair):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return True

    def _forget(self) -> None:
        with _active_lock:
            if _active.get(id(self.args.ta_sock)) is self:
                del _active[id(self.args.ta_sock)]

    def wait(self) -> int:
        self.finished.wait()
        if self.cancelled:
            raise HandshakeFailed(errno.ECANCELED, "the handshake was cancelled")
        if self.status:
            raise HandshakeFailed(self.status, self.message)
        return self.peerid


def _status_text(status: int, quic_sock) -> str:
    if status == 0:
        return ""
    if status == errno.EIO:
        try:
            raw = quic_sock.getsockopt(
                uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_CLOSE, uapi.QuicConnectionClose.size()
            )
            close = uapi.QuicConnectionClose.unpack(raw)
        except (OSError, ValueError):
            close = None
        if close is not None and close.errcode >= uapi.QUIC_TRANSPORT_ERROR_CRYPTO:
            return (
                f"TLS handshake failed: alert {close.reason or '?'} "
                f"(QUIC error 0x{close.errcode:x})"
            )
        return "TLS handshake failed"
    texts = {
        errno.ETIMEDOUT: "the handshake timed out",
        errno.EACCES: "the handshake agent's policy refused the handshake",
        errno.ENOKEY: "the handshake agent has no such key",
        errno.EINVAL: "the handshake agent found the request invalid",
    }
    return texts.get(status, f"handshake failed: {os.strerror(status)}")


def _submit(args: TlsHandshakeArgs, message_type: int, auth_mode: int) -> int:
    if args.ta_alpn:
        args.ta_sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, args.ta_alpn.encode())
    certificates = []
    if args.ta_my_cert:
        certificates.append((args.ta_my_cert, args.ta_my_privkey or args.ta_my_cert))
    accept = nl.AcceptRequest(
        handler_class=nl.HandlerClass.TLSHD,
        message_type=message_type,
        timeout_ms=args.ta_timeout_ms or TLS_DEFAULT_TIMEOUT_MS,
        auth_mode=auth_mode,
        peer_identities=list(args.ta_my_peerids),
        certificates=certificates,
        peername=args.ta_peername,
        keyring=args.ta_keyring,
    )
    request = _Request(args, accept)
    with _active_lock:
        if id(args.ta_sock) in _active:
            raise HandshakeFailed(errno.EBUSY, "a handshake is already running on this socket")
        _active[id(args.ta_sock)] = request
    try:
        request.start()
    except BaseException:
        with _active_lock:
            _active.pop(id(args.ta_sock), None)
        raise
    if args.ta_done is not None:
        return 0
    return request.wait()


def tls_client_hello_anon(args: TlsHandshakeArgs) -> int:
    """Client handshake without a client certificate; the server is still verified."""
    return _submit(args, nl.MsgType.CLIENTHELLO, nl.AuthMode.UNAUTH)


def tls_client_hello_x509(args: TlsHandshakeArgs) -> int:
    """Client handshake presenting ``ta_my_cert`` (or the agent's configured client
    certificate) and verifying the server as ``ta_peername``."""
    return _submit(args, nl.MsgType.CLIENTHELLO, nl.AuthMode.X509)


def tls_client_hello_psk(args: TlsHandshakeArgs, peerid: int | None = None) -> int:
    """Client PSK handshake with the agent's key ``peerid`` (else ``ta_my_peerids``)."""
    if peerid is not None:
        args.ta_my_peerids = [peerid]
    if not 1 <= len(args.ta_my_peerids) <= MAX_PEERIDS:
        raise HandshakeFailed(errno.EINVAL, "a PSK handshake needs 1 to 5 peer IDs")
    return _submit(args, nl.MsgType.CLIENTHELLO, nl.AuthMode.PSK)


def tls_server_hello_x509(args: TlsHandshakeArgs) -> int:
    """Server handshake with ``ta_my_cert`` (or the agent's configured server cert)."""
    return _submit(args, nl.MsgType.SERVERHELLO, nl.AuthMode.X509)


def tls_server_hello_psk(args: TlsHandshakeArgs) -> int:
    """Server PSK handshake: the agent accepts identities from its key table and
    reports the one used as the peer ID."""
    args.ta_my_peerids = args.ta_my_peerids[:1]
    return _submit(args, nl.MsgType.SERVERHELLO, nl.AuthMode.PSK)


def tls_handshake_cancel(sock) -> bool:
    """Stop the handshake running on ``sock``. True if it was cancelled before it
    completed; then ``ta_done`` is not called."""
    with _active_lock:
        request = _active.get(id(sock))
    return request.cancel() if request is not None else False
