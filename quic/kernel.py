"""The kernel-consumer API: how in-kernel users such as ksmbd and nfsd drive QUIC sockets.

Consumers (``consumers/smb``, ``consumers/nfs``) use only these calls and
``handshake.net``, exactly as kernel modules use ``sock_create``/``kernel_*``. They act on
the same :class:`~quic.socket.QuicSocket` objects as the userspace API. Where the kernel
returns a negative errno, these raise :class:`OSError` with that errno; ``msghdr`` is a
small record whose ``msg_control`` holds ``(level, type, bytes)`` cmsgs and whose
``msg_flags`` is filled in on receive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import uapi
from .socket import QuicSocket

O_NONBLOCK = os.O_NONBLOCK


@dataclass
class Msghdr:
    """``struct msghdr`` as kernel_sendmsg/kernel_recvmsg use it."""

    msg_name: tuple | None = None
    msg_control: list[tuple[int, int, bytes]] = field(default_factory=list)
    msg_flags: int = 0


def sock_create(family: int, type: int, protocol: int = uapi.IPPROTO_QUIC) -> QuicSocket:
    """``sock_create_kern()``: a new QUIC socket."""
    return QuicSocket(family, type, protocol)


def kernel_bind(sock: QuicSocket, address: tuple) -> None:
    sock.bind(address)


def kernel_listen(sock: QuicSocket, backlog: int) -> None:
    sock.listen(backlog)


def kernel_accept(sock: QuicSocket, flags: int = 0) -> QuicSocket:
    """A new connection from the listener; ``O_NONBLOCK`` gives EAGAIN instead of waiting."""
    if flags & O_NONBLOCK:
        old = sock.gettimeout()
        sock.setblocking(False)
        try:
            return sock.accept()[0]
        finally:
            sock.settimeout(old)
    return sock.accept()[0]


def kernel_connect(sock: QuicSocket, address: tuple, flags: int = 0) -> None:
    sock.connect(address)


def kernel_sendmsg(sock: QuicSocket, msg: Msghdr, vec: list[bytes] | bytes) -> int:
    """Send ``vec`` with the cmsgs and flags of ``msg``; returns the bytes sent."""
    buffers = [vec] if isinstance(vec, (bytes, bytearray, memoryview)) else vec
    return sock.sendmsg(buffers, msg.msg_control, msg.msg_flags, msg.msg_name)


def kernel_recvmsg(sock: QuicSocket, msg: Msghdr, size: int, flags: int = 0) -> bytes:
    """Receive up to ``size`` bytes; ``msg`` gets the cmsgs, flags and peer address."""
    data, ancdata, msg_flags, address = sock.recvmsg(size, 256, flags)
    msg.msg_control = ancdata
    msg.msg_flags = msg_flags
    msg.msg_name = address
    return data


def kernel_setsockopt(sock: QuicSocket, level: int, optname: int, optval: bytes | int) -> None:
    sock.setsockopt(level, optname, optval)


def kernel_getsockopt(sock: QuicSocket, level: int, optname: int, optval: bytes | int = 0) -> bytes:
    return sock.getsockopt(level, optname, optval)


def sock_release(sock: QuicSocket) -> None:
    """Drop the socket; an open connection closes with the configured close code."""
    sock.close()


def kernel_sock_shutdown(sock: QuicSocket, how: int) -> None:
    sock.shutdown(how)


__all__ = [
    "O_NONBLOCK",
    "Msghdr",
    "kernel_accept",
    "kernel_bind",
    "kernel_connect",
    "kernel_getsockopt",
    "kernel_listen",
    "kernel_recvmsg",
    "kernel_sendmsg",
    "kernel_setsockopt",
    "kernel_sock_shutdown",
    "sock_create",
    "sock_release",
]
