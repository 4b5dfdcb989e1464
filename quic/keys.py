"""The secrets behind an endpoint's stateless answers, for endpoints that share them.

A UDP endpoint answers some packets without a connection: it validates Retry and
NEW_TOKEN tokens (``quic.token``), sends Stateless Resets (``quic.connid``), and its
listeners resume sessions from tickets. Each process normally draws these keys for
itself. The worker processes of one server (``quic.workers``) must not: a client
may come back with a token, a ticket or a connection that another worker issued, so
the parent draws the keys once and every worker uses the same.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from .connid import endpoint_reset_key

TOKEN_KEY_SIZE = 16  # AES-128-GCM, as TokenAuthority draws for itself
TICKET_SECRET_SIZE = 32


@dataclass(frozen=True)
class EndpointKeys:
    """The keys several processes serving one address hold in common."""

    reset_key: bytes
    token_key: bytes
    ticket_secret: bytes

    @classmethod
    def generate(cls) -> EndpointKeys:
        """Fresh keys; the reset key is the process's own, so ``$KQUIC_RESET_KEY_FILE``
        still keeps it across restarts."""
        return cls(
            reset_key=endpoint_reset_key(),
            token_key=os.urandom(TOKEN_KEY_SIZE),
            ticket_secret=os.urandom(TICKET_SECRET_SIZE),
        )

    def ticket_key(self, alpn: bytes) -> bytes:
        """The session-ticket key of the listeners serving ``alpn``: the same in every
        worker, so a ticket resumes wherever the client lands, and different per ALPN
        list, as separate listeners have separate keys. 64 bytes (SHA-512), what
        gnutls_session_ticket_enable_server takes."""
        return hmac.new(self.ticket_secret, b"ticket key " + alpn, hashlib.sha512).digest()
