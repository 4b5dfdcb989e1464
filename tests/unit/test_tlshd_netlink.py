"""The handshake family's messages: numbers as in handshake.yaml, round trips, and
every malformed input refused with NetlinkFormatError and nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handshake.tlshd import netlink as nl


def test_wire_numbers_are_the_familys() -> None:
    data = nl.encode(
        nl.AcceptRequest(
            message_type=nl.MsgType.SERVERHELLO,
            auth_mode=nl.AuthMode.X509,
            sockfd=7,
            timeout_ms=5000,
        ),
        seq=9,
    )
    length, msg_type, flags, seq, _pid = struct.unpack_from("=IHHII", data)
    assert (length, msg_type, flags, seq) == (len(data), nl.HANDSHAKE_FAMILY_ID, 1, 9)
    assert data[16:18] == bytes([nl.Cmd.ACCEPT, nl.HANDSHAKE_FAMILY_VERSION])
    attrs = {}
    offset = 20
    while offset < len(data):
        nla_len, nla_type = struct.unpack_from("=HH", data, offset)
        attrs[nla_type] = data[offset + 4 : offset + nla_len]
        offset += (nla_len + 3) & ~3
    assert attrs[nl.HANDSHAKE_A_ACCEPT_SOCKFD] == struct.pack("=i", 7)
    assert attrs[nl.HANDSHAKE_A_ACCEPT_HANDLER_CLASS] == struct.pack("=I", 1)
    assert attrs[nl.HANDSHAKE_A_ACCEPT_MESSAGE_TYPE] == struct.pack("=I", 2)
    assert attrs[nl.HANDSHAKE_A_ACCEPT_TIMEOUT] == struct.pack("=I", 5000)
    assert attrs[nl.HANDSHAKE_A_ACCEPT_AUTH_MODE] == struct.pack("=I", 3)


def test_accept_round_trip() -> None:
    msg = nl.AcceptRequest(
        message_type=nl.MsgType.CLIENTHELLO,
        auth_mode=nl.AuthMode.PSK,
        sockfd=3,
        timeout_ms=30_000,
        peer_identities=[nl.key_serial("a"), nl.key_serial("b")],
        certificates=[(11, 12), (13, 13)],
        peername="server.test",
        keyring=42,
    )
    assert nl.decode(nl.encode(msg)) == msg


def test_done_and_ready_round_trip() -> None:
    done = nl.Done(status=5, sockfd=4, remote_auth=[99], tags=["smb", "x"])
    assert nl.decode(nl.encode(done)) == done
    assert nl.decode(nl.encode(nl.Done(status=0))) == nl.Done(status=0)
    assert nl.decode(nl.encode(nl.Ready())) == nl.Ready(nl.HandlerClass.TLSHD)


def test_key_serial_is_stable_positive_and_nonzero() -> None:
    assert nl.key_serial("smb") == nl.key_serial("smb")
    assert nl.key_serial("smb") != nl.key_serial("nfs")
    assert all(0 < nl.key_serial(n) < 1 << 31 for n in ("", "smb", "nfs-psk", "x" * 300))


def test_encode_refuses_what_the_family_cannot_carry() -> None:
    too_many = nl.AcceptRequest(1, 2, peer_identities=list(range(1, 7)))
    with pytest.raises(ValueError):
        nl.encode(too_many)
    with pytest.raises(ValueError):
        nl.encode(nl.Done(status=0, tags=["t" * 200] * 30))


def _accept_bytes() -> bytes:
    return nl.encode(
        nl.AcceptRequest(
            message_type=1,
            auth_mode=3,
            certificates=[(1, 2)],
            peername="host",
        )
    )


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def _message(cmd: int, attrs: bytes, version: int = 1) -> bytes:
    body = struct.pack("=BBH", cmd, version, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), nl.HANDSHAKE_FAMILY_ID, 1, 0, 0) + body


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


GOOD_ATTRS = _u32(nl.HANDSHAKE_A_ACCEPT_MESSAGE_TYPE, 1) + _u32(nl.HANDSHAKE_A_ACCEPT_AUTH_MODE, 3)

MALFORMED = {
    "empty": b"",
    "short header": _accept_bytes()[:10],
    "length too long": _patch(_accept_bytes(), 0, "=I", len(_accept_bytes()) + 4),
    "length too short": _patch(_accept_bytes(), 0, "=I", 20),
    "truncated": _accept_bytes()[:-4],
    "other family": _patch(_accept_bytes(), 4, "=H", 0x10),
    "unknown command": _message(7, GOOD_ATTRS),
    "unknown version": _message(nl.Cmd.ACCEPT, GOOD_ATTRS, version=2),
    "unknown attribute": _message(nl.Cmd.ACCEPT, GOOD_ATTRS + _u32(40, 1)),
    "u32 of 2 bytes": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_TIMEOUT, b"\1\2")
    ),
    "attribute length below header": _message(nl.Cmd.ACCEPT, GOOD_ATTRS + b"\2\0\4\0"),
    "attribute past the end": _message(nl.Cmd.ACCEPT, GOOD_ATTRS + b"\x40\0\4\0\0\0\0\0"),
    "repeated single attribute": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _u32(nl.HANDSHAKE_A_ACCEPT_AUTH_MODE, 3)
    ),
    "peername without NUL": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_PEERNAME, b"host")
    ),
    "peername with inner NUL": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_PEERNAME, b"ho\0st\0")
    ),
    "peername not ASCII": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_PEERNAME, b"h\xc3\xa9\0")
    ),
    "peername too long": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_PEERNAME, b"h" * 300 + b"\0")
    ),
    "bad nested certificate": _message(
        nl.Cmd.ACCEPT, GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_CERTIFICATE, _u32(9, 1))
    ),
    "certificate without cert": _message(
        nl.Cmd.ACCEPT,
        GOOD_ATTRS + _attr(nl.HANDSHAKE_A_ACCEPT_CERTIFICATE, _u32(nl.HANDSHAKE_A_X509_PRIVKEY, 1)),
    ),
    "unknown message type": _message(
        nl.Cmd.ACCEPT,
        _u32(nl.HANDSHAKE_A_ACCEPT_MESSAGE_TYPE, 9) + _u32(nl.HANDSHAKE_A_ACCEPT_AUTH_MODE, 3),
    ),
    "unknown auth mode": _message(
        nl.Cmd.ACCEPT,
        _u32(nl.HANDSHAKE_A_ACCEPT_MESSAGE_TYPE, 1) + _u32(nl.HANDSHAKE_A_ACCEPT_AUTH_MODE, 0),
    ),
    "six peer identities": _message(
        nl.Cmd.ACCEPT,
        GOOD_ATTRS + b"".join(_u32(nl.HANDSHAKE_A_ACCEPT_PEER_IDENTITY, i) for i in range(6)),
    ),
    "oversized": _message(nl.Cmd.DONE, _u32(nl.HANDSHAKE_A_DONE_STATUS, 0) + bytes(4096)),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_refused(name: str) -> None:
    with pytest.raises(nl.NetlinkFormatError):
        nl.decode(MALFORMED[name])


def test_hand_built_message_decodes() -> None:
    """The checker accepts what another netlink encoder writes, e.g. with the nested flag."""
    nested = _u32(nl.HANDSHAKE_A_X509_CERT, 5)
    cert = struct.pack("=HH", 4 + len(nested), nl.HANDSHAKE_A_ACCEPT_CERTIFICATE | 0x8000)
    msg = nl.decode(_message(nl.Cmd.ACCEPT, GOOD_ATTRS + cert + nested))
    assert isinstance(msg, nl.AcceptRequest)
    assert msg.certificates == [(5, 5)]
    assert msg.sockfd == -1


@given(st.binary(max_size=300))
def test_random_bytes_only_ever_give_format_errors(data: bytes) -> None:
    try:
        nl.decode(data)
    except nl.NetlinkFormatError:
        pass


@given(st.integers(0, 200), st.integers(0, 255))
def test_single_byte_corruption_never_escapes(position: int, value: int) -> None:
    data = bytearray(_accept_bytes())
    data[position % len(data)] = value
    try:
        msg = nl.decode(bytes(data))
    except nl.NetlinkFormatError:
        return
    assert isinstance(msg, nl.AcceptRequest | nl.Done | nl.Ready)
