"""The handshake's socket operations, carried over a socketpair.

In the kernel, tlshd receives the consumer's QUIC socket itself and calls recvmsg,
sendmsg, setsockopt and getsockopt on it. Here the QUIC socket lives in the consumer's
process, so the consumer passes one end of an ``AF_UNIX``/``SOCK_SEQPACKET`` pair to the
agent instead and runs each operation the agent asks for on its QUIC socket
(:func:`serve_one`). The agent wraps its end in :class:`RemoteHandshakeSocket`,
which has the shape of :class:`handshake.libquic.HandshakeSocket`, so the same
handshake code runs in-process and in the agent. Private keys never cross the pair:
only handshake messages, secrets and transport parameters do, as in the kernel design.

One request, one reply, in order. A request is ``op (u8), optname (u32), arg (u32)``
followed by bytes; a reply is ``errno (u32), value (u32)`` followed by bytes.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import time

from quic import uapi

log = logging.getLogger(__name__)

OP_RECV, OP_SEND, OP_SETSOCKOPT, OP_GETSOCKOPT = range(1, 5)
_REQUEST = struct.Struct("<BII")
_REPLY = struct.Struct("<II")
# A handshake flight with a certificate chain fits easily; larger is refused.
MAX_OPERATION = 65536
MORE = 1  # OP_SEND arg bit: more messages of the same flight follow (MSG_MORE)
# Longest a consumer blocks in one OP_RECV.
RECV_SLICE = 0.25


class OperationError(OSError):
    """The other end broke the protocol or went away."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(consumer end, agent end). SEQPACKET keeps message boundaries and reports a
    vanished peer as end of file."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _recv_message(sock: socket.socket, wait: float) -> bytes:
    if wait <= 0 or not select.select([sock], [], [], wait)[0]:
        raise TimeoutError(errno.ETIMEDOUT, "no answer on the handshake channel")
    data = sock.recv(MAX_OPERATION + 64)
    if not data:
        raise OperationError(errno.ECONNABORTED, "the other end of the handshake channel closed")
    return data


class RemoteHandshakeSocket:
    """The agent's view of the consumer's QUIC socket."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        # Operations other than recv answer at once; a slow answer means a stuck consumer.
        self.op_timeout = timeout

    def _call(self, op: int, optname: int, arg: int, data: bytes, wait: float) -> tuple[int, bytes]:
        if len(data) > MAX_OPERATION:
            raise OperationError(errno.EMSGSIZE, "handshake operation too large")
        try:
            self.sock.send(_REQUEST.pack(op, optname, arg) + data)
        except OSError as exc:
            raise OperationError(errno.ECONNABORTED, f"handshake channel: {exc}") from None
        reply = _recv_message(self.sock, wait)
        if len(reply) < _REPLY.size:
            raise OperationError(errno.EPROTO, "short reply on the handshake channel")
        err, value = _REPLY.unpack_from(reply)
        if err:
            if err == errno.ETIMEDOUT:
                raise TimeoutError(err, "no handshake message in time")
            raise OSError(err, f"consumer socket: {errno.errorcode.get(err, err)}")
        return value, reply[_REPLY.size :]

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]:
        """Wait in slices: between them the consumer looks at its agent connection, so
        it notices a dead agent or a cancel within a slice, not after the whole wait."""
        deadline = time.monotonic() + timeout
        while True:
            wait = min(RECV_SLICE, deadline - time.monotonic())
            ms = max(1, int(wait * 1000))
            try:
                return self._call(OP_RECV, 0, ms, b"", wait + self.op_timeout)
            except TimeoutError:
                if deadline - time.monotonic() < 0.001:
                    raise

    def send_handshake(self, level: int, data: bytes, more: bool) -> None:
        arg = (level << 1) | (MORE if more else 0)
        self._call(OP_SEND, 0, arg, data, self.op_timeout)

    def setsockopt(self, level: int, optname: int, value: bytes) -> None:
        self._call(OP_SETSOCKOPT, optname, 0, bytes(value), self.op_timeout)

    def getsockopt(self, level: int, optname: int, buflen: int | bytes) -> bytes:
        request = buflen if isinstance(buflen, bytes) else b""
        size = len(buflen) if isinstance(buflen, bytes) else buflen
        _, value = self._call(OP_GETSOCKOPT, optname, size, request, self.op_timeout)
        return value


def _execute(quic_sock, op: int, optname: int, arg: int, data: bytes) -> tuple[int, bytes]:
    if op == OP_RECV:
        return quic_sock.recv_handshake(arg / 1000)
    if op == OP_SEND:
        quic_sock.send_handshake(arg >> 1, data, bool(arg & MORE))
        return 0, b""
    if op == OP_SETSOCKOPT:
        quic_sock.setsockopt(uapi.SOL_QUIC, optname, data)
        return 0, b""
    if op == OP_GETSOCKOPT:
        return 0, quic_sock.getsockopt(uapi.SOL_QUIC, optname, data or arg)
    raise OSError(errno.EOPNOTSUPP, f"unknown handshake operation {op}")


def serve_one(pair: socket.socket, quic_sock) -> bool:
    """Consumer side: run the one operation waiting on ``pair`` on ``quic_sock`` and answer
    it. False when the agent has closed its end or broke the protocol."""
    try:
        request = pair.recv(MAX_OPERATION + 64)
    except OSError:
        return False
    if len(request) < _REQUEST.size:
        if request:
            log.warning("malformed handshake operation (%d bytes)", len(request))
        return False
    op, optname, arg = _REQUEST.unpack_from(request)
    try:
        value, out = _execute(quic_sock, op, optname, arg, request[_REQUEST.size :])
        err = 0
    except TimeoutError:
        err, value, out = errno.ETIMEDOUT, 0, b""
    except OSError as exc:
        err, value, out = exc.errno or errno.EIO, 0, b""
    except (ValueError, TypeError) as exc:
        log.debug("handshake operation %d refused: %s", op, exc)
        err, value, out = errno.EINVAL, 0, b""
    try:
        pair.send(_REPLY.pack(err, value) + bytes(out))
    except OSError:
        return False
    return True
