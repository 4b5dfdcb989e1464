"""A packet number space's receive side against a plain set of what arrived."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quic.pnspace import MAX_ACK_RANGES, PnSpace


def runs(numbers: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for pn in sorted(numbers):
        if out and out[-1][1] == pn - 1:
            out[-1][1] = pn
        else:
            out.append([pn, pn])
    return out


@given(
    st.lists(
        st.one_of(
            st.integers(0, 400),  # anywhere: reordering, duplicates
            st.just(None),  # the next in order, the usual case
        ),
        max_size=300,
    )
)
def test_received_ranges_follow_what_arrived(arrivals: list[int | None]) -> None:
    space = PnSpace()
    seen: set[int] = set()
    for step, arrival in enumerate(arrivals):
        pn = space.largest_received + 1 if arrival is None else arrival
        assert space.is_duplicate(pn) == (pn in seen or pn < space.floor)
        if space.is_duplicate(pn):
            continue
        largest_before = space.largest_received
        space.ack_immediately = False
        space.on_received(pn, False, float(step))  # only reordering calls for an ACK
        seen.add(pn)
        assert space.largest_received == max(seen)
        # RFC 9000 §13.2.1: out of order (a gap, or below the largest) is ACKed at once.
        assert space.ack_immediately == (largest_before >= 0 and pn != largest_before + 1)
        assert space.ranges == runs({n for n in seen if n >= space.floor})
        assert len(space.ranges) <= MAX_ACK_RANGES
        if pn == space.largest_received:
            assert space.largest_received_time == float(step)


def test_in_order_packets_keep_one_range() -> None:
    space = PnSpace()
    for pn in range(1000):
        space.on_received(pn, pn % 2 == 0, 0.0)
    assert space.ranges == [[0, 999]]
    assert space.ack_eliciting_unacked == 500 and space.ack_immediately  # §13.2.2


@given(st.integers(1, 50), st.sampled_from([0, 1, 2, 3]), st.integers(0, 1))
def test_a_run_counts_as_its_packets_one_by_one(count: int, ecn: int, unacked: int) -> None:
    by_run, one_by_one = PnSpace(), PnSpace()
    for space in (by_run, one_by_one):
        space.on_received(0, bool(unacked), 1.0)
        if not unacked:
            space.on_ack_sent()
    by_run.on_received_run(count, count, 2.0, ecn)
    for pn in range(1, count + 1):
        one_by_one.on_received(pn, True, 2.0, ecn)
    for name in PnSpace.__slots__:
        assert getattr(by_run, name) == getattr(one_by_one, name), name
