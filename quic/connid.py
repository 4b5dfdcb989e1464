"""Connection IDs (RFC 9000 §5.1, §19.15-16): the ones we issue and the ones the peer gave.

Our IDs route the peer's packets to this connection through the tunnel's demux table,
so issuing and retiring one notifies the tunnel. The peer's IDs are what we put in the
Destination Connection ID field; rotating them on migration keeps paths unlinkable.

A server split over worker processes (``quic.workers``) needs every packet of a
connection to reach the worker that owns it, whatever address it comes from: the
kernel steers by the Destination Connection ID's first byte, so each worker issues
only IDs whose first byte names it (:class:`WorkerCids`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import QuicError, TransportError
from .frame import FrameType

STATELESS_RESET_TOKEN_LENGTH = 16
# RFC 9000 §10.3: 5 unpredictable bytes and the token at least; we answer with at most
# 43 bytes, and always with fewer than the packet that triggered the reset.
MIN_STATELESS_RESET_SIZE = 21
MAX_STATELESS_RESET_SIZE = 43
RESET_KEY_SIZE = 32
RESET_KEY_FILE_ENV = "KQUIC_RESET_KEY_FILE"

log = logging.getLogger(__name__)
_endpoint_key: bytes | None = None
_endpoint_key_lock = threading.Lock()


def stateless_reset_token(key: bytes, cid: bytes) -> bytes:
    """The reset token for ``cid``: keyed so the tunnel can recompute it for a connection it
    has forgotten (RFC 9000 §10.3.2) without storing anything per connection."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:STATELESS_RESET_TOKEN_LENGTH]


def endpoint_reset_key() -> bytes:
    """The key behind every reset token this process hands out, like the kernel's per
    network namespace secret. Random per process, unless ``$KQUIC_RESET_KEY_FILE`` names
    a file (created 0600 if missing): then a restarted server still recognises, and
    resets, the connections its previous run had."""
    global _endpoint_key
    with _endpoint_key_lock:
        if _endpoint_key is None:
            _endpoint_key = _load_reset_key(os.environ.get(RESET_KEY_FILE_ENV))
        return _endpoint_key


def _load_reset_key(path: str | None) -> bytes:
    if not path:
        return os.urandom(RESET_KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("cannot create reset key %s (%s): using a per-process key", path, exc)
        return os.urandom(RESET_KEY_SIZE)
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(RESET_KEY_SIZE))
    try:
        with open(path, "rb") as key_file:
            key = key_file.read(RESET_KEY_SIZE + 1)
    except OSError as exc:
        log.warning("cannot read reset key %s (%s): using a per-process key", path, exc)
        return os.urandom(RESET_KEY_SIZE)
    if len(key) != RESET_KEY_SIZE:
        log.warning("reset key %s is not %d bytes: using a per-process key", path, RESET_KEY_SIZE)
        return os.urandom(RESET_KEY_SIZE)
    return key


def stateless_reset(key: bytes, dcid: bytes, trigger_size: int) -> bytes | None:
    """A Stateless Reset answering a short-header packet of ``trigger_size`` bytes for
    the unknown ``dcid`` (RFC 9000 §10.3): it looks like a short-header packet and is
    smaller than the trigger, so two endpoints cannot reset each other in a loop. None
    when the trigger is too small to answer."""
    size = min(trigger_size - 1, MAX_STATELESS_RESET_SIZE)
    if size < MIN_STATELESS_RESET_SIZE:
        return None
    body = bytearray(os.urandom(size - STATELESS_RESET_TOKEN_LENGTH))
    body[0] = 0x40 | (body[0] & 0x3F)  # short header form, fixed bit set
    return bytes(body) + stateless_reset_token(key, dcid)


def is_stateless_reset(datagram: bytes, tokens) -> bool:
    """Whether a datagram we could not open ends with one of the peer's reset tokens
    (RFC 9000 §10.3.1), compared in constant time."""
    if len(datagram) < MIN_STATELESS_RESET_SIZE:
        return False
    tail = bytes(datagram[-STATELESS_RESET_TOKEN_LENGTH:])
    return any(hmac.compare_digest(tail, token) for token in tokens)


@dataclass(frozen=True)
class WorkerCids:
    """How the connection IDs an endpoint issues are made: random, except that with
    several workers the first byte is ``worker`` modulo ``workers``. That byte is what
    the kernel's reuseport program (``quic.reuseport``) reads to pick the worker, so
    the peer's packets find their connection after a NAT rebinding or a migration as
    well. The remaining bits of the first byte and every other byte stay random."""

    worker: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.worker < self.workers <= 256:
            raise ValueError(f"worker {self.worker} of {self.workers}")

    def mint(self, length: int) -> bytes:
        """A fresh ID of ``length`` bytes (at least 1) that steers to this worker."""
        cid = bytearray(os.urandom(length))
        if self.workers > 1:
            # The first bytes b in 0..255 with b % workers == worker, uniformly.
            choices = (255 - self.worker) // self.workers + 1
            cid[0] = self.worker + self.workers * secrets.randbelow(choices)
        return bytes(cid)

    def worker_of(self, cid: bytes) -> int:
        """The worker an ID steers to: what the reuseport program computes."""
        return cid[0] % self.workers


@dataclass(slots=True)
class ConnectionId:
    sequence: int
    cid: bytes
    reset_token: bytes | None = None


class SourceConnectionIds:
    """The IDs we issued to the peer. ``mint`` makes a new one (the tunnel's policy);
    ``on_add``/``on_remove`` keep the tunnel's demux table in step."""

    def __init__(
        self,
        reset_key: bytes,
        first_cid: bytes,
        mint: Callable[[], bytes],
        on_add: Callable[[bytes], None] | None = None,
        on_remove: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reset_key = reset_key
        self.mint = mint
        self.on_add = on_add
        self.on_remove = on_remove
        self.ids: dict[int, ConnectionId] = {}
        self.next_sequence = 0
        self.retire_prior_to = 0
        self._add(first_cid)

    def _add(self, cid: bytes) -> ConnectionId:
        entry = ConnectionId(self.next_sequence, cid, stateless_reset_token(self.reset_key, cid))
        self.ids[entry.sequence] = entry
        self.next_sequence += 1
        if self.on_add:
            self.on_add(cid)
        return entry

    def issue(self) -> ConnectionId:
        """A fresh ID to announce in NEW_CONNECTION_ID."""
        return self._add(self.mint())

    def wanted(self, peer_limit: int) -> int:
        """How many more IDs the peer's active_connection_id_limit lets us issue."""
        return max(0, peer_limit - len(self.ids))

    def on_retire(self, sequence: int, packet_dcid: bytes) -> None:
        """RETIRE_CONNECTION_ID from the peer (RFC 9000 §19.16)."""
        if sequence >= self.next_sequence:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION,
                FrameType.RETIRE_CONNECTION_ID,
                "retired a connection ID never issued",
            )
        entry = self.ids.get(sequence)
        if entry is None:
            return  # already retired: a retransmission
        if entry.cid == packet_dcid:
            raise QuicError(
                TransportError.PROTOCOL_VIOLATION,
                FrameType.RETIRE_CONNECTION_ID,
                "retired the connection ID the frame arrived on",
            )
        del self.ids[sequence]
        if self.on_remove:
            self.on_remove(entry.cid)

    def release_all(self) -> None:
        """Forget every ID (connection gone); the tunnel stops routing them."""
        for entry in self.ids.values():
            if self.on_remove:
                self.on_remove(entry.cid)
        self.ids.clear()


class DestinationConnectionIds:
    """The IDs the peer gave us; ``active`` is the one our packets carry.
    ``on_token``/``on_token_gone`` tell the tunnel which reset tokens mean this
    connection: a Stateless Reset's Destination Connection ID is random, so the tunnel
    can only route it by its token."""

    def __init__(
        self,
        first_cid: bytes,
        local_limit: int,
        on_token: Callable[[bytes], None] | None = None,
        on_token_gone: Callable[[bytes], None] | None = None,
    ) -> None:
        self.local_limit = local_limit
        self.on_token = on_token
        self.on_token_gone = on_token_gone
        self.ids: dict[int, ConnectionId] = {0: ConnectionId(0, first_cid)}
        self.active = self.ids[0]
        self.retire_prior_to = 0
        self.to_retire: list[int] = []

    def replace_initial(self, cid: bytes) -> None:
        """The server's SCID (or a Retry's) replaces the client's random initial DCID."""
        self.active.cid = cid

    def set_reset_token(self, token: bytes) -> None:
        """The token from the server's stateless_reset_token transport parameter (seq 0)."""
        self.ids[0].reset_token = token
        if self.on_token:
            self.on_token(token)

    def _forget(self, sequence: int) -> None:
        entry = self.ids.pop(sequence)
        self.to_retire.append(sequence)
        if entry.reset_token is not None and self.on_token_gone:
            self.on_token_gone(entry.reset_token)

    def on_new_connection_id(
        self, sequence: int, retire_prior_to: int, cid: bytes, reset_token: bytes
    ) -> None:
        """NEW_CONNECTION_ID from the peer (RFC 9000 §19.15, §5.1.2)."""
        known = self.ids.get(sequence)
        if known is not None:
            if known.cid != cid or (known.reset_token not in (None, reset_token)):
                raise QuicError(
                    TransportError.PROTOCOL_VIOLATION,
                    FrameType.NEW_CONNECTION_ID,
                    "sequence number reused for a different connection ID",
                )
            return
        if sequence < self.retire_prior_to:
            self.to_retire.append(sequence)  # already retired by an earlier frame
            return
        self.ids[sequence] = ConnectionId(sequence, cid, reset_token)
        if self.on_token:
            self.on_token(reset_token)
        if retire_prior_to > self.retire_prior_to:
            self.retire_prior_to = retire_prior_to
            for seq in [s for s in self.ids if s < retire_prior_to]:
                self._forget(seq)
            if self.active.sequence < retire_prior_to:
                self.active = self.ids[min(self.ids)]
        if len(self.ids) > self.local_limit:
            raise QuicError(
                TransportError.CONNECTION_ID_LIMIT_ERROR,
                FrameType.NEW_CONNECTION_ID,
                f"peer exceeded active_connection_id_limit {self.local_limit}",
            )

    def spare(self) -> ConnectionId | None:
        """The unused ID :meth:`rotate` would switch to, or None."""
        unused = [s for s in self.ids if s > self.active.sequence]
        return self.ids[min(unused)] if unused else None

    def rotate(self) -> bool:
        """Switch to an unused ID (migration) and retire the old one; False if none spare."""
        spare = self.spare()
        if spare is None:
            return False
        old = self.active.sequence
        self.active = spare
        self._forget(old)
        return True

    def use(self, sequence: int) -> None:
        """Switch to the peer's ID ``sequence``, a later one than the active, and retire
        those before it (QUIC_SOCKOPT_CONNECTION_ID's ``active``)."""
        if sequence <= self.active.sequence or sequence not in self.ids:
            raise ValueError(f"no later connection ID numbered {sequence}")
        self.active = self.ids[sequence]
        self.retire_below(sequence)

    def retire_below(self, sequence: int) -> None:
        """Retire the peer's IDs numbered below ``sequence`` (QUIC_SOCKOPT_CONNECTION_ID's
        ``prior_to``); one at least must remain, and the active moves up if retired."""
        if not any(s >= sequence for s in self.ids):
            raise ValueError("that would retire every connection ID")
        for seq in sorted(s for s in self.ids if s < sequence):
            self._forget(seq)
        if self.active.sequence < sequence:
            self.active = self.ids[min(self.ids)]

    def reset_tokens(self) -> set[bytes]:
        """Tokens that identify a stateless reset from this peer (RFC 9000 §10.3.1)."""
        return {e.reset_token for e in self.ids.values() if e.reset_token is not None}
