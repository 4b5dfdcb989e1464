"""Frames a well-behaved peer would not send, each sealed as a real 1-RTT packet of the
other end and fed to the core: the connection closes with the code RFC 9000 §20 names,
or ignores the frame, and never lets an exception out or its limits be bypassed."""

from __future__ import annotations

from quic import uapi
from quic.connection import LEVEL_SPACE, Connection, State
from quic.errors import TransportError
from quic.recovery import SentPacket
from quic.stream import CRYPTO_BUFFER_LIMIT, FRAGMENTS_FREE
from quic.varint import encode_varint as v
from tests.unit.test_connection import APP, CLIENT_ADDR, SERVER_ADDR, Pair

ALL_EVENTS = sum(1 << t for t in range(1, uapi.QUIC_EVENT_MAX))


def established(**server_params) -> Pair:
    pair = Pair(**server_params)
    pair.handshake()
    pair.exchange(5)
    return pair


def deliver(pair: Pair, payload: bytes, to: str = "server", addr: tuple | None = None):
    """``payload`` (frames) in a 1-RTT packet sealed by the other end, received by ``to``
    from the other end's address or ``addr``; the receiver, or with ``addr`` the size of
    the datagram."""
    sender, receiver = (pair.client, pair.server) if to == "server" else (pair.server, pair.client)
    space = sender.spaces[LEVEL_SPACE[APP]]
    sent = SentPacket(space.next_pn, LEVEL_SPACE[APP], pair.now, 0, False, False)
    datagram = sender._seal(APP, [payload], sent)
    space.take_pn()
    pair.now += 0.001
    source = addr or (CLIENT_ADDR if to == "server" else SERVER_ADDR)
    receiver.receive_datagram(datagram, source, pair.now)
    return len(datagram) if addr else receiver


def closed_with(conn: Connection) -> int | None:
    return None if conn.close_info is None else conn.close_info.error_code


def test_62_bit_error_codes_fit_the_events_records() -> None:
    """Error codes and frame types are varints up to 2^62-1; the lxin records that carry
    them hold a u32 and a u8. Every event on, each frame is taken without an error."""
    big = (1 << 40) + 7
    for payload, to in (
        (b"\x04" + v(0) + v(big) + v(0), "server"),  # RESET_STREAM
        (b"\x05" + v(1) + v(big), "client"),  # STOP_SENDING of the server's stream
        (b"\x1d" + v(big) + v(0), "server"),  # CONNECTION_CLOSE, application
        (b"\x1c" + v(0x0A) + v(0x1234) + v(0), "server"),  # transport, big frame type
    ):
        pair = established()
        pair.server.config.event_mask = pair.client.config.event_mask = ALL_EVENTS
        if payload[0] == 0x05:
            pair.server.send_stream(1, b"data", False, True)
            pair.exchange(2)
        conn = deliver(pair, payload, to)
        events = [e for e, _ in conn.notifications]
        assert events, payload
    close = uapi.QuicConnectionClose.unpack(conn.notifications[-1][1])
    assert (close.errcode, close.frame) == (0x0A, 0x34)


def test_an_unknown_frame_type_past_a_byte_closes_with_frame_encoding_error() -> None:
    pair = established()
    pair.server.config.event_mask = ALL_EVENTS
    conn = deliver(pair, v(0x1234))
    assert conn.state != State.ESTABLISHED
    assert closed_with(conn) == TransportError.FRAME_ENCODING_ERROR


def test_a_repeated_reset_stream_releases_its_credit_once() -> None:
    """RFC 9000 §4.5: a reset's final size counts against MAX_DATA once. Repeats of the
    same RESET_STREAM must not each give the connection window back."""
    pair = established()
    server = pair.server
    window = 65535 * 16
    reset = b"\x04" + v(0) + v(0) + v(window)
    for _ in range(40):
        deliver(pair, reset)
    assert server.state == State.ESTABLISHED
    assert server.flow_recv.consumed == window


def test_stream_data_blocked_names_only_streams_the_peer_may_send_on() -> None:
    """RFC 9000 §19.13 and §4.6: not the server's own uni stream, not a server stream
    it has not opened, not past the client's stream limit."""
    for sid, code in (
        (3, TransportError.STREAM_STATE_ERROR),
        (1, TransportError.STREAM_STATE_ERROR),
        (4 * 400, TransportError.STREAM_LIMIT_ERROR),
        ((1 << 62) - 4, TransportError.STREAM_LIMIT_ERROR),
    ):
        conn = deliver(established(), b"\x15" + v(sid) + v(0))
        assert closed_with(conn) == code, sid
    conn = deliver(established(), b"\x15" + v(0) + v(0))
    assert conn.state == State.ESTABLISHED  # the client's own stream: fine


def test_crypto_data_from_a_client_after_the_handshake_is_unexpected() -> None:
    """A QUIC client has no post-handshake TLS message (RFC 9001 §4.4, §6); kept, they
    would pile up unread on the server."""
    conn = deliver(established(), b"\x06" + v(0) + v(1100) + bytes(1100))
    assert closed_with(conn) == TransportError.CRYPTO_ERROR + 10  # unexpected_message


def test_tickets_nobody_reads_stay_within_the_crypto_buffer() -> None:
    """A server may send NewSessionTickets without end; the client keeps at most
    CRYPTO_BUFFER_LIMIT bytes of them unread, and the last whole one for getsockopt."""
    pair = established()
    client = pair.client
    offset = 0  # the test handshake sends no post-handshake CRYPTO data of its own
    ticket = b"\x04" + (996).to_bytes(3, "big") + bytes(996)
    for _ in range(200):
        deliver(pair, b"\x06" + v(offset) + v(len(ticket)) + ticket, to="client")
        offset += len(ticket)
    unread = sum(len(d) for level, d in client.crypto_inbox if level == APP)
    assert client.state == State.ESTABLISHED
    assert 0 < unread <= CRYPTO_BUFFER_LIMIT
    assert client.session_ticket == ticket


def test_path_challenges_from_an_unvalidated_address_get_at_most_three_times_back() -> None:
    """RFC 9000 §8.2.1, §9.3.1: one datagram full of PATH_CHALLENGEs from a spoofed
    source must not become a flood of padded PATH_RESPONSEs toward it."""
    pair = established()
    victim = ("10.9.9.9", 5555)
    challenges = b"".join(b"\x1a" + bytes([i]) * 8 for i in range(130))
    size = deliver(pair, challenges, addr=victim)
    answers = [d for d, addr, _ in pair.server.probes_out if addr == victim]
    assert answers and len(answers[0]) == 1200  # the first is padded, as §8.2.1 asks
    assert sum(map(len, answers)) <= 3 * size
    assert pair.server.peer_addr == CLIENT_ADDR  # probing frames only: nobody moved


def test_stream_data_in_tiny_pieces_out_of_order_closes_the_connection() -> None:
    """One-byte STREAM frames at every other offset, from the top of the window down,
    cost each insert more as they pile up and over a hundred bytes of memory a byte;
    past FRAGMENTS_FREE pieces of under MIN_FRAGMENT bytes the peer is refused."""
    pair = established()
    top = 65535 * 16 - 2
    offsets = iter(range(top, 0, -2))
    conn = pair.server
    for _ in range(30):  # 3000 pieces at most
        frames = b"".join(b"\x0e" + v(0) + v(next(offsets)) + v(1) + b"x" for _ in range(100))
        conn = deliver(pair, frames)
        if conn.state != State.ESTABLISHED:
            break
    assert closed_with(conn) == TransportError.PROTOCOL_VIOLATION
    assert FRAGMENTS_FREE < len(conn.streams.get(0).recv._buf._seg_starts) <= FRAGMENTS_FREE + 100


def test_out_of_order_whole_packets_are_not_tiny_pieces() -> None:
    """Every other full-size packet lost over a whole stream window: many gaps, but
    pieces as large as packets, which is what heavy loss looks like."""
    pair = established()
    piece = bytes(1100)
    conn = pair.server
    for i in range(1, 900, 2):
        conn = deliver(pair, b"\x0e" + v(0) + v(i * 1100) + v(len(piece)) + piece)
    assert conn.state == State.ESTABLISHED
    assert len(conn.streams.get(0).recv._buf._seg_starts) > FRAGMENTS_FREE // 4
