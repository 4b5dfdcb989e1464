"""The socket-operations channel between the agent and a consumer, without QUIC: a fake
socket records what the agent's operations do on the consumer's side."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from handshake import sockops
from quic import uapi


class FakeQuicSocket:
    def __init__(self) -> None:
        self.inbox = [(uapi.QUIC_CRYPTO_INITIAL, b"client hello")]
        self.sent: list[tuple[int, bytes, bool]] = []
        self.options: dict[int, bytes] = {uapi.QUIC_SOCKOPT_ALPN: b"smb"}

    def recv_handshake(self, timeout: float) -> tuple[int, bytes]:
        if not self.inbox:
            time.sleep(min(timeout, 0.05))  # a real socket waits before it gives up
            raise TimeoutError(errno.ETIMEDOUT, "nothing")
        return self.inbox.pop(0)

    def send_handshake(self, level: int, data: bytes, more: bool) -> None:
        self.sent.append((level, data, more))

    def setsockopt(self, level: int, optname: int, value: bytes) -> None:
        if optname == 999:
            raise OSError(errno.ENOPROTOOPT, "no such option")
        self.options[optname] = value

    def getsockopt(self, level: int, optname: int, buflen) -> bytes:
        if optname not in self.options:
            raise OSError(errno.EINVAL, "not set")
        return self.options[optname]


def consumer(pair, fake: FakeQuicSocket) -> threading.Thread:
    def run() -> None:
        for _ in range(100):
            if not sockops.serve_one(pair, fake):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_every_operation_reaches_the_consumer_socket() -> None:
    mine, theirs = sockops.socketpair()
    fake = FakeQuicSocket()
    thread = consumer(mine, fake)
    remote = sockops.RemoteHandshakeSocket(theirs, timeout=2)
    assert remote.recv_handshake(1.0) == (uapi.QUIC_CRYPTO_INITIAL, b"client hello")
    with pytest.raises(TimeoutError):
        remote.recv_handshake(0.01)
    remote.send_handshake(uapi.QUIC_CRYPTO_HANDSHAKE, b"x" * 5000, True)
    remote.send_handshake(uapi.QUIC_CRYPTO_APP, b"", False)
    assert fake.sent == [
        (uapi.QUIC_CRYPTO_HANDSHAKE, b"x" * 5000, True),
        (uapi.QUIC_CRYPTO_APP, b"", False),
    ]
    remote.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"sunrpc")
    assert remote.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, 128) == b"sunrpc"
    with pytest.raises(OSError) as exc:
        remote.setsockopt(uapi.SOL_QUIC, 999, b"")
    assert exc.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as exc:
        remote.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TOKEN, 16)
    assert exc.value.errno == errno.EINVAL
    theirs.close()
    thread.join(2)
    assert not thread.is_alive()  # the consumer stops when the agent's end closes
    mine.close()


def test_a_vanished_consumer_is_an_operation_error() -> None:
    mine, theirs = sockops.socketpair()
    mine.close()
    remote = sockops.RemoteHandshakeSocket(theirs, timeout=1)
    with pytest.raises(sockops.OperationError):
        remote.send_handshake(0, b"data", False)
    theirs.close()


def test_a_silent_consumer_times_out() -> None:
    mine, theirs = sockops.socketpair()
    remote = sockops.RemoteHandshakeSocket(theirs, timeout=0.05)
    with pytest.raises(TimeoutError):
        remote.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"smb")
    mine.close()
    theirs.close()


def test_malformed_and_oversized_operations() -> None:
    mine, theirs = sockops.socketpair()
    fake = FakeQuicSocket()
    theirs.send(b"\x01")  # shorter than a request header
    assert sockops.serve_one(mine, fake) is False
    remote = sockops.RemoteHandshakeSocket(theirs, timeout=1)
    with pytest.raises(sockops.OperationError) as exc:
        remote.send_handshake(0, bytes(sockops.MAX_OPERATION + 1), False)
    assert exc.value.errno == errno.EMSGSIZE
    theirs.send(sockops._REQUEST.pack(77, 0, 0))  # an unknown operation is answered
    assert sockops.serve_one(mine, fake) is True
    err, _ = sockops._REPLY.unpack_from(theirs.recv(64))
    assert err == errno.EOPNOTSUPP
    mine.close()
    theirs.close()
