"""Path validation and connection migration (RFC 9000 §8.2, §9).

A connection has one path in use, the peer's address with our local address. A second
path appears in two ways:

- the peer moves (NAT rebinding or its own migration): its non-probing packets arrive
  from a new address; we follow at once but treat the address as unproven until a
  PATH_CHALLENGE we send there is answered (§9.3), sending at most three times what
  we received from it meanwhile (§8.1), and go back to the old address if the
  challenge is never answered (§9.3.2);
- we move (``QUIC_SOCKOPT_CONNECTION_MIGRATION`` on a client): we probe from the new
  local address with a PATH_CHALLENGE and switch once it is answered (§9.2).

Either way a new path gets a fresh connection ID (§9.5) and, unless only the port
changed, fresh congestion state (§9.4). This module keeps the bookkeeping; the
connection sends and receives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PATH_CHALLENGE_SIZE = 8
# RFC 9000 §8.2.4: give up after max(3 PTO, 6 times the initial RTT).
K_INITIAL_RTT_FACTOR = 6
PTO_FACTOR = 3
# Challenges sent before giving up on a path (one more each PTO).
MAX_CHALLENGES = 3


def same_host(a: tuple, b: tuple) -> bool:
    """Whether two socket addresses differ only in port: a NAT rebinding that keeps the
    address keeps the path's congestion state (RFC 9000 §9.4)."""
    return a[0] == b[0]


@dataclass
class PathCheck:
    """One path under validation."""

    peer_addr: tuple
    deadline: float  # no answer by then: the path failed
    local: int = 0  # 0: our current local address; 1: the one we are moving to
    fallback: tuple | None = None  # the validated address to return to on failure
    data: bytes = field(default_factory=lambda: os.urandom(PATH_CHALLENGE_SIZE))
    sent: int = 0
    resend_at: float = 0.0

    def answers(self, data: bytes) -> bool:
        return data == self.data


def validation_timeout(pto: float, initial_rtt: float) -> float:
    return max(PTO_FACTOR * pto, K_INITIAL_RTT_FACTOR * initial_rtt)
