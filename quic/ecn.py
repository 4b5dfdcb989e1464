"""Explicit Congestion Notification (RFC 9000 §13.4, RFC 9002 §7.1): codepoints and validation.

The sender marks its packets ECT(0) and reads back, in the peer's ACK frames, how many
ECT(0), ECT(1) and CE marks arrived in each packet number space. Before trusting a CE
mark as a congestion signal it checks that the marks survive the path and that the peer
reports them (RFC 9000 §13.4.2): a path that clears them (bleaching), a peer that
sends no counts, or counts that go backwards or fall short of what was sent end the
marking for the connection. Sans-I/O: the I/O layer sets and reads the IP header bits.
"""

from __future__ import annotations

from enum import IntEnum

# The two ECN bits of the IP TOS / Traffic Class byte (RFC 3168 §5).
NOT_ECT = 0b00
ECT_1 = 0b01
ECT_0 = 0b10
CE = 0b11
ECN_MASK = 0b11

# Where each codepoint is counted in an ACK_ECN frame: ECT(0), ECT(1), ECN-CE
# (RFC 9000 §19.3.2); NOT_ECT is not counted.
COUNT_INDEX = (-1, 1, 0, 2)

# Probe timeouts in a row, before any marked packet was acknowledged, after which
# marking stops: a path that drops ECT packets would otherwise never deliver one
# (RFC 9000 §13.4.2: "If all packets marked with non-zero ECN codepoints are
# subsequently lost, it can disable marking").
ECN_TESTING_PTO_LIMIT = 2


class EcnState(IntEnum):
    """RFC 9000 App. A.4, without the optional "unknown" state: marking goes on while
    testing, since the first ACK with counts settles validation either way."""

    DISABLED = 0  # never marked: the I/O layer cannot set the ECN bits
    TESTING = 1  # marking, no ACK has yet shown that the marks arrive
    CAPABLE = 2  # marks arrive and are reported; CE counts are congestion signals
    FAILED = 3  # validation failed: marking stopped for good on this path


class EcnValidation:
    """ECN validation of one path, over the three packet number spaces.

    ``codepoint`` is what the next packets carry: ECT(0) while testing or capable,
    NOT_ECT otherwise. The counts remembered per space are the largest the peer has
    reported, so each ACK is judged by how far its counts moved.
    """

    __slots__ = ("_ce", "_ect0", "_sent", "codepoint", "state")

    def __init__(self, enabled: bool = True) -> None:
        self._sent = [0, 0, 0]  # ECT(0)-marked packets sent per space
        self._ect0 = [0, 0, 0]
        self._ce = [0, 0, 0]
        self._set(EcnState.TESTING if enabled else EcnState.DISABLED)

    def _set(self, state: EcnState) -> None:
        self.state = state
        self.codepoint = ECT_0 if state in (EcnState.TESTING, EcnState.CAPABLE) else NOT_ECT

    def restart(self) -> None:
        """RFC 9000 §13.4.2: validation starts over on a new path. Counts carry on: the
        peer's counts are per packet number space, not per path."""
        if self.state != EcnState.DISABLED:
            self._set(EcnState.TESTING)

    def on_sent(self, space: int, count: int = 1) -> None:
        self._sent[space] += count

    def on_ack(self, space: int, counts: tuple[int, int, int] | None, ect_acked: int) -> int:
        """Judge the counts of an ACK that raised the largest acknowledged packet number
        (older ones may be reordered and would fail spuriously, RFC 9000 §13.4.2.1).

        ``ect_acked`` is how many packets the ACK newly acknowledged that left marked.
        Returns the increase of the CE count, 0 unless the path is ECN-capable or
        testing and the counts are valid.
        """
        if self.state not in (EcnState.TESTING, EcnState.CAPABLE):
            return 0
        if counts is None:
            if ect_acked:
                self._set(EcnState.FAILED)  # marks acknowledged without counts
            return 0
        ect0, ect1, ce = counts
        d_ect0 = ect0 - self._ect0[space]
        d_ce = ce - self._ce[space]
        if (
            d_ect0 < 0  # counts never decrease
            or d_ce < 0
            or d_ect0 + d_ce < ect_acked  # marks cleared on the way (bleaching)
            or ect0 + ce > self._sent[space]  # more marks than were sent
            or ect1  # only ECT(0) is sent: the path remarks
        ):
            self._set(EcnState.FAILED)
            return 0
        self._ect0[space] = ect0
        self._ce[space] = ce
        if ect_acked and self.state == EcnState.TESTING:
            self._set(EcnState.CAPABLE)
        return d_ce

    def on_probe_timeout(self, pto_count: int) -> None:
        """Stop marking if probes keep timing out before any mark was seen to arrive."""
        if self.state == EcnState.TESTING and pto_count >= ECN_TESTING_PTO_LIMIT:
            self._set(EcnState.FAILED)
