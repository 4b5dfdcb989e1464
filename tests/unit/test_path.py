"""The DPLPMTUD search (quic/path.py) against simulated paths."""

from __future__ import annotations

import pytest

from quic.path import (
    BASE_PLPMTU,
    MAX_PROBES,
    MAX_UDP_PAYLOAD_IPV4,
    MAX_UDP_PAYLOAD_IPV6,
    PMTU_RAISE_TIMER,
    SEARCH_GRANULARITY,
    PlpmtuSearch,
    SearchState,
    max_udp_payload,
)

# A search over the whole UDP range needs about log2(64K / granularity) sizes, each
# costing at most MAX_PROBES probes.
PROBE_BUDGET = 14 * MAX_PROBES


def run(search: PlpmtuSearch, path_limit: int, now: float = 0.0) -> int:
    """Answer probes as a path carrying ``path_limit``-byte payloads would; returns the
    number of probes sent before the search stops asking."""
    probes = 0
    while search.probe_pending:
        assert probes < PROBE_BUDGET
        size = search.probed_size
        search.on_probe_sent(now)
        probes += 1
        now += 0.01
        if size <= path_limit:
            search.on_probe_acked(size)
        else:
            search.on_probe_lost(size)
    return probes


@pytest.mark.parametrize("path_limit", [1472, 1500, 8972, 9000, 65535])
def test_search_converges_to_the_path_mtu(path_limit: int) -> None:
    search = PlpmtuSearch()
    search.start(MAX_UDP_PAYLOAD_IPV6)
    run(search, path_limit)
    assert search.state == SearchState.SEARCH_COMPLETE
    expected = min(path_limit, MAX_UDP_PAYLOAD_IPV6)
    assert expected - SEARCH_GRANULARITY <= search.plpmtu <= expected


def test_the_upper_bound_is_tried_first() -> None:
    search = PlpmtuSearch()
    search.start(65507)
    assert run(search, 65535) == 1
    assert search.plpmtu == 65507
    assert search.deadline is None  # nothing above the bound to look for later


def test_a_bound_at_base_disables_the_search() -> None:
    search = PlpmtuSearch()
    search.start(BASE_PLPMTU)
    assert not search.probe_pending
    assert search.plpmtu == BASE_PLPMTU


def test_one_lost_probe_does_not_condemn_a_size() -> None:
    search = PlpmtuSearch()
    search.start(9000)
    search.on_probe_sent(0.0)
    search.on_probe_lost(9000)
    assert search.probe_pending and search.probed_size == 9000
    search.on_probe_sent(0.1)
    assert search.on_probe_acked(9000)
    assert search.plpmtu == 9000


def test_max_probes_lost_stop_the_search_below_that_size() -> None:
    search = PlpmtuSearch()
    search.start(9000)
    for attempt in range(MAX_PROBES):
        assert search.probed_size == 9000
        search.on_probe_sent(float(attempt))
        search.on_probe_lost(9000)
    assert search.search_high == 9000
    run(search, 9000 - 1, now=10.0)
    assert search.plpmtu < 9000
    assert search.state == SearchState.SEARCH_COMPLETE


def test_probe_timer_counts_an_unanswered_probe_as_lost() -> None:
    search = PlpmtuSearch(probe_timer=5.0)
    search.start(9000)
    search.on_probe_sent(0.0)
    search.on_timer(4.9)
    assert search.in_flight
    search.on_timer(5.0)
    assert not search.in_flight and search.probe_pending and search.probe_count == 1
    search.on_probe_lost(9000)  # loss detection catching up: already counted
    assert search.probe_count == 1


def test_a_late_ack_still_raises() -> None:
    search = PlpmtuSearch(probe_timer=1.0)
    search.start(9000)
    for attempt in range(MAX_PROBES):
        search.on_probe_sent(float(attempt))
        search.on_timer(attempt + 1.0)
    assert search.probed_size < 9000
    search.on_probe_sent(4.0)
    assert search.on_probe_acked(9000)  # one of the earlier probes made it after all
    assert search.plpmtu == 9000
    assert not search.in_flight
    assert search.state == SearchState.SEARCH_COMPLETE


def test_stale_reports_are_ignored() -> None:
    search = PlpmtuSearch()
    search.start(9000)
    search.on_probe_sent(0.0)
    assert search.on_probe_acked(9000)
    assert not search.on_probe_acked(5000)
    search.on_probe_lost(5000)
    assert search.plpmtu == 9000 and search.state == SearchState.SEARCH_COMPLETE


def test_raise_timer_probes_upward_again() -> None:
    search = PlpmtuSearch()
    search.start(9000)
    run(search, 1500, now=100.0)
    assert search.state == SearchState.SEARCH_COMPLETE
    found = search.plpmtu
    deadline = search.deadline
    assert deadline is not None and deadline >= 100.0 + PMTU_RAISE_TIMER - 1
    search.on_timer(deadline - 1)
    assert not search.probe_pending
    search.on_timer(deadline)
    assert search.state == SearchState.SEARCHING and search.probed_size == 9000
    run(search, 9000, now=deadline)  # the path improved meanwhile
    assert search.plpmtu == 9000 > found


def test_black_hole_falls_back_to_base_and_searches_again() -> None:
    search = PlpmtuSearch()
    search.start(9000)
    run(search, 9000)
    assert search.on_black_hole()
    assert search.plpmtu == BASE_PLPMTU
    assert search.state == SearchState.BASE
    assert search.probe_pending and search.probed_size == BASE_PLPMTU
    run(search, 1500)
    assert 1500 - SEARCH_GRANULARITY <= search.plpmtu <= 1500
    assert not PlpmtuSearch().on_black_hole()  # nothing to fall back from


def test_base_lost_enters_error_and_retries_every_probe_timer() -> None:
    search = PlpmtuSearch(probe_timer=5.0)
    search.start(9000)
    run(search, 9000)
    search.on_black_hole()
    for attempt in range(MAX_PROBES):
        search.on_probe_sent(float(attempt))
        search.on_probe_lost(BASE_PLPMTU)
    assert search.state == SearchState.ERROR
    assert not search.probe_pending
    assert search.deadline == 2.0 + 5.0
    search.on_timer(7.0)
    assert search.probe_pending and search.probed_size == BASE_PLPMTU
    search.on_probe_sent(7.0)
    search.on_probe_acked(BASE_PLPMTU)
    assert search.state == SearchState.SEARCHING and search.probed_size == 9000


def test_max_udp_payload() -> None:
    assert max_udp_payload(ipv6=False) == MAX_UDP_PAYLOAD_IPV4 == 65507
    assert max_udp_payload(ipv6=True) == MAX_UDP_PAYLOAD_IPV6 == 65527
    assert max_udp_payload(ipv6=False, link_mtu=65536) == 65507
    assert max_udp_payload(ipv6=True, link_mtu=65536) == 65488
    assert max_udp_payload(ipv6=False, link_mtu=1500) == 1472
    assert max_udp_payload(ipv6=True, link_mtu=1500) == 1452
    assert max_udp_payload(ipv6=False, link_mtu=576) == BASE_PLPMTU
