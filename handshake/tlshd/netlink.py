"""The ``handshake`` generic-netlink family, carried over kquic's agent socket.

In Linux the kernel and ``tlshd`` talk over genetlink: the agent answers a READY
notification with ACCEPT and receives the socket to work on, then reports DONE. kquic's
consumers are processes, so the request travels the other way: a consumer sends one
ACCEPT message, filled as the kernel fills its reply, with the socket attached by
``SCM_RIGHTS``; the agent answers DONE. Command, attribute and enum numbers are the
family's own (``Documentation/netlink/specs/handshake.yaml``), so a capture reads like
the kernel's.

Messages are built and parsed with pyroute2's ``genlmsg``. Its parser is lenient about
lengths, so :func:`decode` walks the framing itself first: every byte of a message from
another process is checked before any of it is used.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from pyroute2.netlink import genlmsg, nla

HANDSHAKE_FAMILY_NAME = "handshake"
HANDSHAKE_FAMILY_VERSION = 1
# The nlmsg_type a message of the family carries. In the kernel the id is assigned at
# registration; on the agent socket there is only this family, so the number is fixed.
HANDSHAKE_FAMILY_ID = 0x1D
# One page, the size tlshd reads with; a request is far smaller.
MAX_MESSAGE_SIZE = 4096
MAX_PEER_IDENTITIES = 5
MAX_PEERNAME = 255

NLM_F_REQUEST = 0x1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")
_GENLMSGHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
_HEADER_SIZE = _NLMSGHDR.size + _GENLMSGHDR.size


class HandlerClass(IntEnum):
    NONE = 0
    TLSHD = 1


class MsgType(IntEnum):
    UNSPEC = 0
    CLIENTHELLO = 1
    SERVERHELLO = 2


class AuthMode(IntEnum):
    UNSPEC = 0
    UNAUTH = 1
    PSK = 2
    X509 = 3


class Cmd(IntEnum):
    READY = 1
    ACCEPT = 2
    DONE = 3


HANDSHAKE_A_X509_CERT = 1
HANDSHAKE_A_X509_PRIVKEY = 2

HANDSHAKE_A_ACCEPT_SOCKFD = 1
HANDSHAKE_A_ACCEPT_HANDLER_CLASS = 2
HANDSHAKE_A_ACCEPT_MESSAGE_TYPE = 3
HANDSHAKE_A_ACCEPT_TIMEOUT = 4
HANDSHAKE_A_ACCEPT_AUTH_MODE = 5
HANDSHAKE_A_ACCEPT_PEER_IDENTITY = 6
HANDSHAKE_A_ACCEPT_CERTIFICATE = 7
HANDSHAKE_A_ACCEPT_PEERNAME = 8
HANDSHAKE_A_ACCEPT_KEYRING = 9

HANDSHAKE_A_DONE_STATUS = 1
HANDSHAKE_A_DONE_SOCKFD = 2
HANDSHAKE_A_DONE_REMOTE_AUTH = 3
HANDSHAKE_A_DONE_TAG = 4


class NetlinkFormatError(ValueError):
    """A message that is not a well-formed message of the handshake family."""


class _AcceptMsg(genlmsg):
    nla_map = (
        ("HANDSHAKE_A_ACCEPT_UNSPEC", "none"),
        ("HANDSHAKE_A_ACCEPT_SOCKFD", "int32"),
        ("HANDSHAKE_A_ACCEPT_HANDLER_CLASS", "uint32"),
        ("HANDSHAKE_A_ACCEPT_MESSAGE_TYPE", "uint32"),
        ("HANDSHAKE_A_ACCEPT_TIMEOUT", "uint32"),
        ("HANDSHAKE_A_ACCEPT_AUTH_MODE", "uint32"),
        ("HANDSHAKE_A_ACCEPT_PEER_IDENTITY", "uint32"),
        ("HANDSHAKE_A_ACCEPT_CERTIFICATE", "x509"),
        ("HANDSHAKE_A_ACCEPT_PEERNAME", "asciiz"),
        ("HANDSHAKE_A_ACCEPT_KEYRING", "uint32"),
    )

    class x509(nla):  # pyroute2 finds a nested class by its nla type name
        nla_map = (
            ("HANDSHAKE_A_X509_UNSPEC", "none"),
            ("HANDSHAKE_A_X509_CERT", "uint32"),
            ("HANDSHAKE_A_X509_PRIVKEY", "uint32"),
        )


class _DoneMsg(genlmsg):
    nla_map = (
        ("HANDSHAKE_A_DONE_UNSPEC", "none"),
        ("HANDSHAKE_A_DONE_STATUS", "uint32"),
        ("HANDSHAKE_A_DONE_SOCKFD", "int32"),
        ("HANDSHAKE_A_DONE_REMOTE_AUTH", "uint32"),
        ("HANDSHAKE_A_DONE_TAG", "asciiz"),
    )


# Per command: attribute type -> (wire kind, may repeat). READY uses the accept set.
_U32, _STR, _NEST = "u32", "str", "nest"
_ACCEPT_ATTRS = {
    HANDSHAKE_A_ACCEPT_SOCKFD: (_U32, False),
    HANDSHAKE_A_ACCEPT_HANDLER_CLASS: (_U32, False),
    HANDSHAKE_A_ACCEPT_MESSAGE_TYPE: (_U32, False),
    HANDSHAKE_A_ACCEPT_TIMEOUT: (_U32, False),
    HANDSHAKE_A_ACCEPT_AUTH_MODE: (_U32, False),
    HANDSHAKE_A_ACCEPT_PEER_IDENTITY: (_U32, True),
    HANDSHAKE_A_ACCEPT_CERTIFICATE: (_NEST, True),
    HANDSHAKE_A_ACCEPT_PEERNAME: (_STR, False),
    HANDSHAKE_A_ACCEPT_KEYRING: (_U32, False),
}
_DONE_ATTRS = {
    HANDSHAKE_A_DONE_STATUS: (_U32, False),
    HANDSHAKE_A_DONE_SOCKFD: (_U32, False),
    HANDSHAKE_A_DONE_REMOTE_AUTH: (_U32, True),
    HANDSHAKE_A_DONE_TAG: (_STR, True),
}
_X509_ATTRS = {HANDSHAKE_A_X509_CERT: (_U32, False), HANDSHAKE_A_X509_PRIVKEY: (_U32, False)}
_SCHEMA = {Cmd.READY: _ACCEPT_ATTRS, Cmd.ACCEPT: _ACCEPT_ATTRS, Cmd.DONE: _DONE_ATTRS}


@dataclass
class AcceptRequest:
    """ACCEPT: what the kernel hands tlshd about one handshake."""

    message_type: int
    auth_mode: int
    sockfd: int = -1
    handler_class: int = HandlerClass.TLSHD
    timeout_ms: int = 0
    peer_identities: list[int] = field(default_factory=list)
    certificates: list[tuple[int, int]] = field(default_factory=list)  # (cert, privkey)
    peername: str | None = None
    keyring: int = 0


@dataclass
class Done:
    """DONE: ``status`` is a positive errno, 0 on success."""

    status: int
    sockfd: int = -1
    remote_auth: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class Ready:
    """READY: an agent of this handler class is available."""

    handler_class: int = HandlerClass.TLSHD


Message = AcceptRequest | Done | Ready


def key_serial(name: str) -> int:
    """The serial a consumer passes for a named key of the agent's table. A keyring
    serial is a positive 31-bit number; a stable hash lets both sides derive it from the
    name alone, without asking the agent."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF or 1


def encode(msg: Message, seq: int = 0) -> bytes:
    """The wire form of one message."""
    if isinstance(msg, AcceptRequest):
        cmd, cls, attrs = Cmd.ACCEPT, _AcceptMsg, _accept_attrs(msg)
    elif isinstance(msg, Done):
        cmd, cls = Cmd.DONE, _DoneMsg
        attrs = [("HANDSHAKE_A_DONE_STATUS", msg.status), ("HANDSHAKE_A_DONE_SOCKFD", msg.sockfd)]
        attrs += [("HANDSHAKE_A_DONE_REMOTE_AUTH", serial) for serial in msg.remote_auth]
        attrs += [("HANDSHAKE_A_DONE_TAG", tag) for tag in msg.tags]
    elif isinstance(msg, Ready):
        cmd, cls = Cmd.READY, _AcceptMsg
        attrs = [("HANDSHAKE_A_ACCEPT_HANDLER_CLASS", msg.handler_class)]
    else:
        raise TypeError(f"not a handshake message: {msg!r}")
    out = cls()
    out["cmd"] = cmd
    out["version"] = HANDSHAKE_FAMILY_VERSION
    out["header"]["type"] = HANDSHAKE_FAMILY_ID
    out["header"]["flags"] = NLM_F_REQUEST
    out["header"]["sequence_number"] = seq
    out["attrs"] = attrs
    out.encode()
    data = bytes(out.data[: out["header"]["length"]])
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def _accept_attrs(msg: AcceptRequest) -> list[tuple[str, object]]:
    if len(msg.peer_identities) > MAX_PEER_IDENTITIES:
        raise ValueError(f"at most {MAX_PEER_IDENTITIES} peer identities")
    attrs: list[tuple[str, object]] = [
        ("HANDSHAKE_A_ACCEPT_SOCKFD", msg.sockfd),
        ("HANDSHAKE_A_ACCEPT_HANDLER_CLASS", msg.handler_class),
        ("HANDSHAKE_A_ACCEPT_MESSAGE_TYPE", msg.message_type),
        ("HANDSHAKE_A_ACCEPT_TIMEOUT", msg.timeout_ms),
        ("HANDSHAKE_A_ACCEPT_AUTH_MODE", msg.auth_mode),
    ]
    attrs += [("HANDSHAKE_A_ACCEPT_PEER_IDENTITY", serial) for serial in msg.peer_identities]
    for cert, privkey in msg.certificates:
        nested = [("HANDSHAKE_A_X509_CERT", cert), ("HANDSHAKE_A_X509_PRIVKEY", privkey)]
        attrs.append(("HANDSHAKE_A_ACCEPT_CERTIFICATE", {"attrs": nested}))
    if msg.peername is not None:
        attrs.append(("HANDSHAKE_A_ACCEPT_PEERNAME", msg.peername))
    if msg.keyring:
        attrs.append(("HANDSHAKE_A_ACCEPT_KEYRING", msg.keyring))
    return attrs


def decode(data: bytes) -> Message:
    """One message, checked in full; :class:`NetlinkFormatError` for anything else."""
    cmd = _check_framing(data)
    cls = _DoneMsg if cmd == Cmd.DONE else _AcceptMsg
    try:
        parsed = cls(bytes(data))
        parsed.decode()
    except Exception as exc:  # pyroute2 raises assorted types on bad input
        raise NetlinkFormatError(f"undecodable message: {exc}") from None
    if cmd == Cmd.DONE:
        return Done(
            status=_one(parsed, "HANDSHAKE_A_DONE_STATUS", 0),
            sockfd=_signed(_one(parsed, "HANDSHAKE_A_DONE_SOCKFD", -1)),
            remote_auth=list(parsed.get_attrs("HANDSHAKE_A_DONE_REMOTE_AUTH")),
            tags=list(parsed.get_attrs("HANDSHAKE_A_DONE_TAG")),
        )
    handler_class = _one(parsed, "HANDSHAKE_A_ACCEPT_HANDLER_CLASS", HandlerClass.NONE)
    if cmd == Cmd.READY:
        return Ready(handler_class)
    return _accept_from(parsed, handler_class)


def _accept_from(parsed: _AcceptMsg, handler_class: int) -> AcceptRequest:
    message_type = _one(parsed, "HANDSHAKE_A_ACCEPT_MESSAGE_TYPE", MsgType.UNSPEC)
    auth_mode = _one(parsed, "HANDSHAKE_A_ACCEPT_AUTH_MODE", AuthMode.UNSPEC)
    if message_type not in (MsgType.CLIENTHELLO, MsgType.SERVERHELLO):
        raise NetlinkFormatError(f"unknown message type {message_type}")
    if auth_mode not in (AuthMode.UNAUTH, AuthMode.PSK, AuthMode.X509):
        raise NetlinkFormatError(f"unknown auth mode {auth_mode}")
    peer_identities = list(parsed.get_attrs("HANDSHAKE_A_ACCEPT_PEER_IDENTITY"))
    if len(peer_identities) > MAX_PEER_IDENTITIES:
        raise NetlinkFormatError(f"more than {MAX_PEER_IDENTITIES} peer identities")
    certificates = []
    for nested in parsed.get_attrs("HANDSHAKE_A_ACCEPT_CERTIFICATE"):
        cert = nested.get_attr("HANDSHAKE_A_X509_CERT")
        privkey = nested.get_attr("HANDSHAKE_A_X509_PRIVKEY")
        if cert is None:
            raise NetlinkFormatError("certificate without a key serial")
        certificates.append((cert, privkey if privkey is not None else cert))
    return AcceptRequest(
        message_type=MsgType(message_type),
        auth_mode=AuthMode(auth_mode),
        sockfd=_signed(_one(parsed, "HANDSHAKE_A_ACCEPT_SOCKFD", -1)),
        handler_class=handler_class,
        timeout_ms=_one(parsed, "HANDSHAKE_A_ACCEPT_TIMEOUT", 0),
        peer_identities=peer_identities,
        certificates=certificates,
        peername=parsed.get_attr("HANDSHAKE_A_ACCEPT_PEERNAME"),
        keyring=_one(parsed, "HANDSHAKE_A_ACCEPT_KEYRING", 0),
    )


def _one(parsed: genlmsg, name: str, default: int) -> int:
    value = parsed.get_attr(name)
    return default if value is None else value


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _check_framing(data: bytes) -> Cmd:
    """Header and every attribute within bounds, of a known type and the right size."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise NetlinkFormatError(f"{len(data)} bytes exceed {MAX_MESSAGE_SIZE}")
    if len(data) < _HEADER_SIZE:
        raise NetlinkFormatError(f"{len(data)} bytes are shorter than the headers")
    length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
    if length != len(data):
        raise NetlinkFormatError(f"header says {length} bytes, message has {len(data)}")
    if msg_type != HANDSHAKE_FAMILY_ID:
        raise NetlinkFormatError(f"message type {msg_type:#x} is not the handshake family")
    cmd, version, _reserved = _GENLMSGHDR.unpack_from(data, _NLMSGHDR.size)
    if version != HANDSHAKE_FAMILY_VERSION:
        raise NetlinkFormatError(f"family version {version}")
    try:
        command = Cmd(cmd)
    except ValueError:
        raise NetlinkFormatError(f"unknown command {cmd}") from None
    _check_attrs(memoryview(data)[_HEADER_SIZE:], _SCHEMA[command])
    return command


def _check_attrs(buf: memoryview, schema: dict[int, tuple[str, bool]]) -> None:
    seen: set[int] = set()
    offset = 0
    while offset < len(buf):
        if len(buf) - offset < _NLATTR.size:
            raise NetlinkFormatError("truncated attribute header")
        nla_len, nla_type = _NLATTR.unpack_from(buf, offset)
        kind = nla_type & NLA_TYPE_MASK
        if nla_len < _NLATTR.size or offset + nla_len > len(buf):
            raise NetlinkFormatError(f"attribute {kind} length {nla_len} out of bounds")
        if kind not in schema:
            raise NetlinkFormatError(f"unknown attribute {kind}")
        wire, repeats = schema[kind]
        if kind in seen and not repeats:
            raise NetlinkFormatError(f"attribute {kind} repeated")
        seen.add(kind)
        payload = buf[offset + _NLATTR.size : offset + nla_len]
        _check_payload(kind, wire, payload)
        offset += (nla_len + 3) & ~3
    if offset != len(buf):
        raise NetlinkFormatError("attribute padding runs past the message")


def _check_payload(kind: int, wire: str, payload: memoryview) -> None:
    if wire == _U32 and len(payload) != 4:
        raise NetlinkFormatError(f"attribute {kind}: {len(payload)} bytes for a u32")
    if wire == _STR:
        text = bytes(payload)
        if not text.endswith(b"\0") or b"\0" in text[:-1] or len(text) - 1 > MAX_PEERNAME:
            raise NetlinkFormatError(f"attribute {kind}: not a NUL-terminated short string")
        try:
            text[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise NetlinkFormatError(f"attribute {kind}: not ASCII") from None
    if wire == _NEST:
        _check_attrs(payload, _X509_ATTRS)
