"""Stream rules of the socket API as lxin/quic states them (reference §1.3, §1.7): which
sends fail and with what errno, how an open at the peer's stream limit waits, which
stream -1 names; the CONFIG and EVENT option rules checked without a connection; and
what a listener makes of Initials that come by the dozen."""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest

from handshake.libquic import quic_client_handshake
from quic import uapi
from quic.connection import Connection, ConnectionConfig
from quic.socket import QuicSocket, quic_recvmsg, quic_sendmsg
from quic.transport_params import default_local_parameters
from tests.e2e.test_socket import accept, connect, listener

NEW, FIN = uapi.MSG_QUIC_STREAM_NEW, uapi.MSG_QUIC_STREAM_FIN


@pytest.fixture
def connected(pki, server_thread):
    """An established (client, server child) pair; the server allows ``bidi`` streams."""
    made = []

    def make(bidi: int = 100) -> tuple[QuicSocket, QuicSocket]:
        srv = listener()
        limits = uapi.QuicTransportParam(max_streams_bidi=bidi).pack()
        srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TRANSPORT_PARAM, limits)
        server = server_thread(lambda: accept(srv, pki))
        cli = connect(srv.getsockname()[1], pki)
        child = server.join()
        made.extend((cli, child, srv))
        return cli, child

    yield make
    for sock in made:
        sock.close()


def send_error(sock: QuicSocket, sid: int, flags: int = 0) -> int:
    with pytest.raises(OSError) as info:
        quic_sendmsg(sock, b"more", sid, flags)
    return info.value.errno


def read_until(sock: QuicSocket, want: set[int]) -> dict[int, bytes]:
    """Read until every stream of ``want`` has sent something; at most 50 reads."""
    got: dict[int, bytes] = {}
    for _ in range(50):
        data, sid, _ = quic_recvmsg(sock, 4096)
        got[sid] = got.get(sid, b"") + data
        if want <= set(got):
            return got
    raise AssertionError(f"streams {want - set(got)} never arrived")


def test_sends_a_stream_cannot_take_fail_at_once(connected) -> None:
    """A blocking writer that would wait forever gets EINVAL instead: after its own FIN or
    reset, on the peer's uni stream, and once the peer's STOP_SENDING has reset it."""
    cli, child = connected()
    quic_sendmsg(cli, b"done", 0, NEW | FIN)
    assert send_error(cli, 0) == errno.EINVAL

    quic_sendmsg(cli, b"data", 4, NEW)
    reset = uapi.QuicErrinfo(4, 9).pack()
    cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_RESET, reset)
    assert send_error(cli, 4) == errno.EINVAL

    quic_sendmsg(child, b"uni", 3, NEW | FIN)  # the server's first uni stream
    read_until(cli, {3})
    assert send_error(cli, 3) == errno.EINVAL

    quic_sendmsg(cli, b"first", 8, NEW)
    read_until(child, {8})
    stop = uapi.QuicErrinfo(8, 7).pack()
    child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_STOP_SENDING, stop)
    for _ in range(100):  # sends succeed until the STOP_SENDING arrives
        try:
            quic_sendmsg(cli, b"x", 8, 0)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the peer's STOP_SENDING never stopped the writer")


def test_an_open_at_the_peer_limit_waits_for_max_streams(connected) -> None:
    """STREAM_OPEN of a named stream beyond the peer's limit: EAGAIN with DONTWAIT, a
    wait otherwise, which MAX_STREAMS ends once the peer has finished a stream."""
    cli, child = connected(bidi=1)
    open_record = uapi.QuicStreamInfo(4, uapi.MSG_QUIC_STREAM_DONTWAIT).pack()
    with pytest.raises(OSError) as info:
        cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, open_record)
    assert info.value.errno == errno.EAGAIN
    assert send_error(cli, 4, NEW | uapi.MSG_QUIC_STREAM_DONTWAIT) == errno.EAGAIN
    cli.settimeout(0.2)
    with pytest.raises(TimeoutError):  # blocking: it waits, for as long as allowed
        cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(4).pack())

    quic_sendmsg(cli, b"one", 0, NEW | FIN)
    assert read_until(child, {0}) == {0: b"one"}
    quic_sendmsg(child, b"", 0, FIN)
    quic_recvmsg(cli, 4096)  # the FIN: stream 0 is over both ways
    cli.settimeout(3.0)
    info_out = cli.getsockopt(
        uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(4).pack()
    )
    assert uapi.QuicStreamInfo.unpack(info_out).stream_id == 4


def test_stream_open_of_a_stream_only_the_peer_opens_is_einval(connected) -> None:
    cli, _ = connected()
    with pytest.raises(OSError) as info:
        cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_OPEN, uapi.QuicStreamInfo(1).pack())
    assert info.value.errno == errno.EINVAL


def test_minus_one_names_the_bidi_stream_the_peer_opened_last(connected) -> None:
    cli, child = connected()
    quic_sendmsg(cli, b"a", 0, NEW)
    quic_sendmsg(cli, b"b", 4, NEW)
    assert read_until(child, {0, 4}) == {0: b"a", 4: b"b"}
    quic_sendmsg(child, b"reply", -1, FIN)
    assert read_until(cli, {4}) == {4: b"reply"}


def test_config_fields_merge_and_keepalive_has_a_floor() -> None:
    sock = QuicSocket(socket.AF_INET)
    try:
        cubic = uapi.QuicConfig(congestion_control_algo=uapi.QUIC_CONG_ALG_CUBIC)
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, cubic.pack())
        ticket = uapi.QuicConfig(receive_session_ticket=1)
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, ticket.pack())
        got = uapi.QuicConfig.unpack(sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG))
        assert (got.congestion_control_algo, got.receive_session_ticket) == (
            uapi.QUIC_CONG_ALG_CUBIC,
            1,
        )
        too_often = uapi.QuicConfig(keepalive_probe_interval=1_000_000)
        with pytest.raises(OSError) as info:
            sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, too_often.pack())
        assert info.value.errno == errno.EINVAL
    finally:
        sock.close()


def test_event_types_run_from_one_below_quic_event_max() -> None:
    sock = QuicSocket(socket.AF_INET)
    try:
        last = uapi.QuicEventOption(uapi.QUIC_EVENT_NEW_SESSION_TICKET, 1).pack()
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_EVENT, last)
        for bad in (uapi.QUIC_EVENT_NONE, uapi.QUIC_EVENT_MAX):
            with pytest.raises(OSError) as info:
                sock.setsockopt(
                    uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_EVENT, uapi.QuicEventOption(bad, 1).pack()
                )
            assert info.value.errno == errno.EINVAL
    finally:
        sock.close()


def test_a_client_reads_the_new_session_ticket_with_getsockopt(pki, server_thread) -> None:
    """Reference §1.3 #12: once the server's NewSessionTicket has arrived, a client's
    SESSION_TICKET get returns that raw message, as tlshd polls for it; session data
    set afterwards (libquic's way) is what a get returns from then on."""
    srv = listener()
    server = server_thread(lambda: accept(srv, pki))
    cli = connect(srv.getsockname()[1], pki)  # receive_ticket=0: nobody reads the ticket
    child = server.join()
    ticket = b""
    for _ in range(100):  # the ticket follows the handshake by a round trip
        ticket = cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, 4096)
        if ticket:
            break
        time.sleep(0.02)
    assert ticket[:1] == b"\x04"  # TLS NewSessionTicket
    assert len(ticket) == 4 + int.from_bytes(ticket[1:4], "big")
    cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, b"s" * 64)
    assert cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, 4096) == b"s" * 64
    for sock in (cli, child, srv):
        sock.close()


def initial(dcid: bytes, payload: bytes | None = None) -> bytes:
    """A 1200-byte v1 Initial for ``dcid``: a client's real first flight (a core client
    connection's, with a placeholder ClientHello), or with ``payload`` bytes that open
    under no key."""
    if payload is not None:
        header = b"\xc0" + (1).to_bytes(4, "big") + bytes([8]) + dcid + bytes([8]) + dcid
        return header + b"\x00" + (0x4000 | 1180).to_bytes(2, "big") + payload[:1180]
    conn = Connection(
        ConnectionConfig(is_client=True, local_params=default_local_parameters()),
        dcid=dcid,
        scid=os.urandom(8),
        peer_addr=("127.0.0.1", 9),
        now=time.monotonic(),
    )
    conn.handshake_send(uapi.QUIC_CRYPTO_INITIAL, b"\x01\x00\x00\x04hello")
    return conn.datagrams_to_send(time.monotonic())[0]


def test_initials_that_do_not_open_make_no_connection() -> None:
    """Datagrams shaped like Initials whose packets do not authenticate under their
    DCID's Initial keys are no client's: no connection, nothing to accept."""
    srv = listener()
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(20):
            junk.sendto(initial(os.urandom(8), os.urandom(1200)), srv.getsockname())
        junk.sendto(initial(os.urandom(8)), srv.getsockname())  # one real Initial
        srv.settimeout(2.0)
        srv.accept()[0].close()
        srv.settimeout(0.2)
        with pytest.raises(TimeoutError):
            srv.accept()
    finally:
        junk.close()
        srv.close()


def test_the_backlog_bounds_handshakes_in_progress_too() -> None:
    """Accepting at once does not lift the backlog: connections whose handshake has not
    ended count against it, so a flood of real Initials makes at most that many."""
    srv = listener()
    srv.listen(2)
    srv.settimeout(0.5)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    accepted: list[QuicSocket] = []
    try:
        for _ in range(5):  # each accepted as soon as it arrives, none finishing
            junk.sendto(initial(os.urandom(8)), srv.getsockname())
            try:
                accepted.append(srv.accept()[0])
            except TimeoutError:
                pass
        assert len(accepted) == 2
    finally:
        for sock in (*accepted, srv):
            sock.close()
        junk.close()


def test_empty_sends_are_emsgsize(connected) -> None:
    """Reference §7: an empty send without FIN, and a datagram of no bytes, are
    EMSGSIZE (a datagram's length runs from 1)."""
    cli, _ = connected()
    for send in (
        lambda: quic_sendmsg(cli, b"", -1, NEW),
        lambda: cli.sendmsg([b""], [], uapi.MSG_QUIC_DATAGRAM),
    ):
        with pytest.raises(OSError) as info:
            send()
        assert info.value.errno == errno.EMSGSIZE


def test_session_ticket_set_rules() -> None:
    """Reference §1.3 #12: 64 to 4096 bytes; EPIPE on a listening socket."""
    sock = QuicSocket(socket.AF_INET)
    srv = listener()
    try:
        with pytest.raises(OSError) as info:
            sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, b"t" * 63)
        assert info.value.errno == errno.EINVAL
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, b"t" * 64)
        with pytest.raises(OSError) as info:
            srv.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, b"t" * 64)
        assert info.value.errno == errno.EPIPE
    finally:
        sock.close()
        srv.close()


def test_listen_zero_leaves_listening_and_listen_again_returns(pki, server_thread) -> None:
    """Reference §1.8: listen(fd, 0) on a listening socket stops it listening: a client
    then reaches nobody, and accept() is EINVAL. A later listen() serves again."""
    srv = listener()
    srv.listen(0)
    with pytest.raises(OSError) as info:
        srv.accept()
    assert info.value.errno == errno.EINVAL
    early = QuicSocket(socket.AF_INET)
    early.connect(srv.getsockname())
    with pytest.raises(TimeoutError):
        quic_client_handshake(early, None, "server.test", "smb", ca_file=str(pki.ca), timeout=0.3)
    early.close()
    srv.listen()
    server = server_thread(lambda: accept(srv, pki))
    cli = connect(srv.getsockname()[1], pki)
    for sock in (server.join(), cli, srv):
        sock.close()


def test_a_handshake_message_longer_than_the_buffer_is_truncated(pki) -> None:
    """As for a datagram: the part that fits, and MSG_TRUNC (libquic's EMSGSIZE)."""
    srv = listener()
    cli = QuicSocket(socket.AF_INET)
    try:
        cli.connect(srv.getsockname())
        hello = b"\x01\x00\x01\x00" + bytes(256)
        cli.send_handshake(uapi.QUIC_CRYPTO_INITIAL, hello, False)
        srv.settimeout(2.0)
        child = srv.accept()[0]
        child.settimeout(2.0)
        data, _, msg_flags, _ = child.recvmsg(10, 64)
        assert data == hello[:10] and msg_flags & uapi.MSG_TRUNC
        child.close()
    finally:
        cli.close()
        srv.close()


def test_a_second_reset_is_einval_and_a_second_stop_sending_eagain(connected) -> None:
    """Reference §1.3 #2, #3: STREAM_RESET from Data Recvd on (a reset stream is past
    it) is EINVAL; STOP_SENDING while one is in flight is EAGAIN."""
    cli, child = connected()
    quic_sendmsg(cli, b"data", 0, NEW)
    reset = uapi.QuicErrinfo(0, 1).pack()
    cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_RESET, reset)
    with pytest.raises(OSError) as info:
        cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_RESET, reset)
    assert info.value.errno == errno.EINVAL
    quic_sendmsg(cli, b"more", 4, NEW)
    read_until(child, {4})
    stop = uapi.QuicErrinfo(4, 2).pack()
    child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_STOP_SENDING, stop)
    with pytest.raises(OSError) as info:
        child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_STOP_SENDING, stop)
    assert info.value.errno == errno.EAGAIN


def test_a_server_sends_another_new_token_on_request(connected) -> None:
    """Reference §1.3 #10: a server's TOKEN set with optlen 0, once established, sends
    a NEW_TOKEN; with a value, or on a client's connection, it is EINVAL."""
    cli, child = connected()

    def client_token() -> bytes:
        return cli.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TOKEN, 256)

    first = b""
    for _ in range(100):  # the handshake's own NEW_TOKEN comes a round trip later
        first = client_token()
        if first:
            break
        time.sleep(0.02)
    assert first
    child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TOKEN, b"")
    for _ in range(100):
        if client_token() != first:
            break
        time.sleep(0.02)
    assert client_token() not in (b"", first)
    with pytest.raises(OSError) as info:
        child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_TOKEN, b"x")
    assert info.value.errno == errno.EINVAL


def stream_updates(sock: QuicSocket, until) -> list[tuple[int, int]]:
    """(stream, state) of each STREAM_UPDATE read until ``until(updates)``; data read
    meanwhile is dropped; at most 50 reads."""
    updates: list[tuple[int, int]] = []
    for _ in range(50):
        data, _, flags = quic_recvmsg(sock, 4096)
        if flags & uapi.MSG_QUIC_NOTIFICATION and data[0] == uapi.QUIC_EVENT_STREAM_UPDATE:
            update = uapi.QuicStreamUpdate.unpack(data[1:])
            updates.append((update.id, update.state))
        if until(updates):
            return updates
    raise AssertionError(f"stream updates so far: {updates}")


def test_stream_updates_follow_the_states_the_reference_lists(connected) -> None:
    """Reference §1.6: recv Recv (a stream the peer opened, lower ones included) and
    Data Recvd; send Reset Recvd once the peer has the reset."""
    cli, child = connected()
    on = uapi.QuicEventOption(uapi.QUIC_EVENT_STREAM_UPDATE, 1).pack()
    for sock in (cli, child):
        sock.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_EVENT, on)
    quic_sendmsg(cli, b"abc", 4, NEW | FIN)
    received = stream_updates(child, lambda u: (4, uapi.QUIC_STREAM_RECV_STATE_RECVD) in u)
    assert (0, uapi.QUIC_STREAM_RECV_STATE_RECV) in received
    assert (4, uapi.QUIC_STREAM_RECV_STATE_RECV) in received

    quic_sendmsg(cli, b"x", 8, NEW)
    cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_STREAM_RESET, uapi.QuicErrinfo(8, 5).pack())
    stream_updates(cli, lambda u: (8, uapi.QUIC_STREAM_SEND_STATE_RESET_RECVD) in u)


def cid_info(sock: QuicSocket, dest: int) -> tuple[int, int]:
    request = uapi.QuicConnectionIdInfo(dest).pack()
    info = uapi.QuicConnectionIdInfo.unpack(
        sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_ID, request)
    )
    return info.active, info.prior_to


def wait_for(condition, what: str) -> None:
    for _ in range(100):
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(what)


def test_connection_ids_are_read_switched_and_retired(connected) -> None:
    """Reference §1.3 #4 and the CONNECTION_ID event (§1.6): the client moves to the
    server's next ID and so retires the first; the server then asks the client to
    retire its IDs below 3, and both report the retirements as events."""
    cli, child = connected()
    on = uapi.QuicEventOption(uapi.QUIC_EVENT_CONNECTION_ID, 1).pack()
    child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_EVENT, on)
    wait_for(lambda: len(cli.conn.dest_cids.ids) >= 4, "the server's spare connection IDs")
    assert cid_info(cli, 1) == (0, 0)
    switch = uapi.QuicConnectionIdInfo(1, 1, 0).pack()
    cli.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_ID, switch)
    assert cid_info(cli, 1) == (1, 1)
    quic_sendmsg(cli, b"on the new ID", 0, NEW | FIN)
    data, _, flags = quic_recvmsg(child, 4096)
    while flags & uapi.MSG_QUIC_NOTIFICATION:  # the retirement of ID 0, then the data
        assert data[0] == uapi.QUIC_EVENT_CONNECTION_ID
        assert uapi.QuicConnectionIdInfo.unpack(data[1:]).prior_to == 1
        data, _, flags = quic_recvmsg(child, 4096)
    assert data == b"on the new ID"
    assert cid_info(child, 0) == (1, 1)

    retire = uapi.QuicConnectionIdInfo(0, 0, 3).pack()
    child.setsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_ID, retire)
    quic_sendmsg(child, b"x", 1, NEW | FIN)  # carries the NEW_CONNECTION_ID along
    wait_for(lambda: cid_info(cli, 1)[1] == 3, "the client retiring the IDs below 3")
    assert cid_info(cli, 1)[0] >= 3
    with pytest.raises(OSError) as info:  # which of ours the peer uses is its choice
        child.setsockopt(
            uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONNECTION_ID, uapi.QuicConnectionIdInfo(0, 4).pack()
        )
    assert info.value.errno == errno.EINVAL


def test_a_send_on_a_socket_never_connected_is_epipe() -> None:
    """It would wait for ever for a connection that nothing makes; Linux TCP says
    EPIPE there too."""
    sock = QuicSocket(socket.AF_INET)
    try:
        for flags in (NEW | FIN, uapi.MSG_QUIC_DATAGRAM):
            with pytest.raises(OSError) as info:
                sock.sendmsg([b"data"], [], flags)
            assert info.value.errno == errno.EPIPE
    finally:
        sock.close()
