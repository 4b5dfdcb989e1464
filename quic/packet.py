"""QUIC packets on the wire: packet numbers (RFC 9000 §17.1, App. A.2-A.3).

Header formats for v1 and v2 are added below.
"""

from __future__ import annotations

PACKET_NUMBER_MAX = (1 << 62) - 1


def packet_number_length(full_pn: int, largest_acked: int | None) -> int:
    """Bytes needed to send ``full_pn`` so the peer can recover it (RFC 9000 App. A.2).

    The encoding must represent more than twice the number of packets in flight,
    i.e. the distance to the largest acknowledged packet number.
    """
    num_unacked = full_pn + 1 if largest_acked is None else full_pn - largest_acked
    min_bits = num_unacked.bit_length() + 1
    return min(max((min_bits + 7) // 8, 1), 4)


def truncate_packet_number(full_pn: int, length: int) -> int:
    """The low ``length`` bytes of ``full_pn``, as sent in a header."""
    return full_pn & ((1 << (8 * length)) - 1)


def decode_packet_number(truncated_pn: int, pn_nbits: int, largest_pn: int) -> int:
    """Recover a full packet number from its truncated form (RFC 9000 App. A.3).

    ``largest_pn`` is the largest packet number successfully processed in this space,
    -1 before any.
    """
    expected_pn = largest_pn + 1
    pn_win = 1 << pn_nbits
    pn_hwin = pn_win // 2
    pn_mask = pn_win - 1
    candidate_pn = (expected_pn & ~pn_mask) | truncated_pn
    if candidate_pn <= expected_pn - pn_hwin and candidate_pn < (1 << 62) - pn_win:
        return candidate_pn + pn_win
    if candidate_pn > expected_pn + pn_hwin and candidate_pn >= pn_win:
        return candidate_pn - pn_win
    return candidate_pn
