"""Address validation tokens: bound to address, connection IDs and time, used once."""

from __future__ import annotations

import pytest

from quic.token import TokenAuthority, TokenError, TokenType

ADDR = ("192.0.2.1", 4433)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_retry_token_round_trip_binds_address_and_cids() -> None:
    tokens = TokenAuthority()
    token = tokens.retry_token(ADDR, b"odcid123", b"retryscid")
    proof = tokens.validate(token, ADDR, b"retryscid")
    assert (proof.kind, proof.original_dcid, proof.retry_scid) == (
        TokenType.RETRY,
        b"odcid123",
        b"retryscid",
    )


@pytest.mark.parametrize(
    ("addr", "dcid", "words"),
    [
        (("192.0.2.1", 4434), b"retryscid", "another address"),  # the port counts for Retry
        (("192.0.2.2", 4433), b"retryscid", "another address"),
        (ADDR, b"otherscid", "another connection ID"),
    ],
)
def test_retry_token_refused_elsewhere(addr, dcid, words) -> None:
    tokens = TokenAuthority()
    token = tokens.retry_token(ADDR, b"odcid", b"retryscid")
    with pytest.raises(TokenError, match=words):
        tokens.validate(token, addr, dcid)


def test_new_token_survives_a_port_change_but_not_reuse() -> None:
    tokens = TokenAuthority()
    token = tokens.new_token(ADDR)
    assert tokens.validate(token, ("192.0.2.1", 5555), b"any").kind == TokenType.NEW_TOKEN
    with pytest.raises(TokenError, match="used before"):
        tokens.validate(token, ADDR, b"any")


def test_tokens_expire() -> None:
    clock = Clock()
    tokens = TokenAuthority(clock=clock)
    retry = tokens.retry_token(ADDR, b"o", b"r")
    new, later = tokens.new_token(ADDR), tokens.new_token(ADDR)
    clock.now += 4  # Retry tokens live 3 s, NEW_TOKEN's 600 s
    with pytest.raises(TokenError, match="expired"):
        tokens.validate(retry, ADDR, b"r")
    tokens.validate(new, ADDR, b"x")
    clock.now += 700
    with pytest.raises(TokenError, match="expired"):
        tokens.validate(later, ADDR, b"x")


def test_foreign_and_malformed_tokens() -> None:
    ours, theirs = TokenAuthority(), TokenAuthority()
    with pytest.raises(TokenError):
        ours.validate(theirs.new_token(ADDR), ADDR, b"")
    for junk in (b"", b"\x00", b"\x07" + bytes(40), bytes(100)):
        with pytest.raises(TokenError):
            ours.validate(junk, ADDR, b"")
    ipv6 = ("2001:db8::1", 443, 0, 0)
    assert ours.validate(ours.new_token(ipv6), ipv6, b"").kind == TokenType.NEW_TOKEN
