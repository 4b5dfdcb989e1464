"""Address validation tokens (RFC 9000 §8.1): the Retry token and NEW_TOKEN's.

A token is opaque to the client and must be checkable by the server without state,
so it carries what the server needs, sealed with AES-128-GCM under a key the tunnel
draws at random (tokens do not outlive the process, which only costs a client one
Retry after a restart):

- a Retry token binds the client's address and port, the Original Destination
  Connection ID and the Retry's Source Connection ID, and lives 3 s;
- a NEW_TOKEN token binds only the client's IP address (its port may change between
  connections) and lives 600 s.

Both carry their issue time. Each token is accepted once: a listener only ever sees a
token in a connection's first Initial, so a second sighting is a replay.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# lxin/quic's lifetimes (crypto.h), in seconds.
RETRY_TOKEN_LIFETIME = 3.0
NEW_TOKEN_LIFETIME = 600.0
NONCE_SIZE = 12
MAX_CID_LENGTH = 20
# Tokens remembered against replay: bounded; the oldest go first.
MAX_SEEN_TOKENS = 4096

_ISSUED = struct.Struct("!Q")  # issue time, milliseconds since the epoch


class TokenType(IntEnum):
    RETRY = 0
    NEW_TOKEN = 1


@dataclass(frozen=True)
class ValidatedToken:
    """What a valid token proves: the address, and for Retry the connection IDs."""

    kind: TokenType
    original_dcid: bytes = b""
    retry_scid: bytes = b""


class TokenError(Exception):
    """A token that does not validate; the message says why, for the log."""


class TokenAuthority:
    """Issues and checks the tokens of one UDP endpoint."""

    def __init__(self, key: bytes | None = None, clock=time.time) -> None:
        self._aead = AESGCM(key or os.urandom(16))
        self._clock = clock
        self._seen: dict[bytes, float] = {}

    def retry_token(self, addr: tuple, original_dcid: bytes, retry_scid: bytes) -> bytes:
        body = _cid(original_dcid) + _cid(retry_scid)
        return self._seal(TokenType.RETRY, _address(addr, with_port=True), body)

    def new_token(self, addr: tuple) -> bytes:
        return self._seal(TokenType.NEW_TOKEN, _address(addr, with_port=False), b"")

    def validate(self, token: bytes, addr: tuple, dcid: bytes) -> ValidatedToken:
        """The token's claims, if it is ours, fresh, unused and for ``addr``; ``dcid``
        is the Initial's Destination Connection ID, which a Retry token fixes."""
        if len(token) < 1 + NONCE_SIZE + 16 or token[0] not in (0, 1):
            raise TokenError("not one of our tokens")
        kind = TokenType(token[0])
        nonce = token[1 : 1 + NONCE_SIZE]
        bound = _address(addr, with_port=kind == TokenType.RETRY)
        try:
            plain = self._aead.decrypt(nonce, token[1 + NONCE_SIZE :], token[:1] + bound)
        except InvalidTag:
            raise TokenError("token not issued here or for another address") from None
        (issued_ms,) = _ISSUED.unpack_from(plain)
        lifetime = RETRY_TOKEN_LIFETIME if kind == TokenType.RETRY else NEW_TOKEN_LIFETIME
        now = self._clock()
        if not -1.0 <= now - issued_ms / 1000 <= lifetime:
            raise TokenError(f"{kind.name.lower()} token expired")
        if nonce in self._seen:
            raise TokenError(f"{kind.name.lower()} token used before")
        result = ValidatedToken(kind)
        if kind == TokenType.RETRY:
            original_dcid, rest = _take_cid(plain[_ISSUED.size :])
            retry_scid, _ = _take_cid(rest)
            if retry_scid != dcid:
                raise TokenError("retry token for another connection ID")
            result = ValidatedToken(kind, original_dcid, retry_scid)
        self._remember(nonce, now + lifetime)
        return result

    def _seal(self, kind: TokenType, bound: bytes, body: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        kind_byte = bytes((kind,))
        plain = _ISSUED.pack(int(self._clock() * 1000)) + body
        return kind_byte + nonce + self._aead.encrypt(nonce, plain, kind_byte + bound)

    def _remember(self, nonce: bytes, until: float) -> None:
        now = self._clock()
        for old in [n for n, t in self._seen.items() if t < now]:
            del self._seen[old]
        while len(self._seen) >= MAX_SEEN_TOKENS:
            del self._seen[next(iter(self._seen))]
        self._seen[nonce] = until


def _address(addr: tuple, with_port: bool) -> bytes:
    packed = ipaddress.ip_address(addr[0].split("%")[0]).packed
    return packed + (addr[1].to_bytes(2, "big") if with_port else b"")


def _cid(cid: bytes) -> bytes:
    return bytes((len(cid),)) + cid


def _take_cid(data: bytes) -> tuple[bytes, bytes]:
    length = data[0] if data else MAX_CID_LENGTH + 1
    if length > MAX_CID_LENGTH or len(data) < 1 + length:
        raise TokenError("malformed token")
    return data[1 : 1 + length], data[1 + length :]
