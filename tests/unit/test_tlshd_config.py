"""kquic-tlshd's tlshd.conf-style configuration: the example in deploy/ parses, keys
get their serials, and mistakes are errors that name the section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from handshake.tlshd.config import ConfigError, load_config, parse_config
from handshake.tlshd.netlink import key_serial

ROOT = Path(__file__).resolve().parents[2]

FULL = """
[debug]
loglevel=1
tls=3

[authenticate]
keyrings=quic;smb

[agent]
socket=run/handshake.sock
group=kquic
workers=4
max_pending=10

[authenticate.client]
x509.truststore=ca.pem

[authenticate.server]
x509.certificate=/etc/kquic/server.pem
x509.private_key=/etc/kquic/server.key

[key.smb]
type=x509
x509.certificate=smb.pem
x509.private_key=smb.key

[key.nfs-psk]
type=psk
identity=nfs-client-1
secret=00112233445566778899aabbccddeeff
"""


def test_full_config(tmp_path) -> None:
    config = parse_config(FULL, tmp_path)
    assert (config.debug_level, config.tls_level) == (1, 3)
    assert config.keyrings == ("quic", "smb")
    assert config.socket_path == str(tmp_path / "run/handshake.sock")
    assert (config.group, config.workers, config.max_pending) == ("kquic", 4, 10)
    assert config.client.truststore == str(tmp_path / "ca.pem")
    assert config.server.certificate == "/etc/kquic/server.pem"
    smb = config.key_by_serial(key_serial("smb"))
    assert smb.name == "smb" and smb.psk is None
    assert smb.x509.private_key == str(tmp_path / "smb.key")
    psk = config.key_by_serial(key_serial("nfs-psk"))
    assert psk.psk.identity == "nfs-client-1"
    assert psk.psk.secret == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert "0011" not in repr(psk)  # secrets stay out of logs
    assert config.key_by_serial(12345) is None


def test_defaults() -> None:
    config = parse_config("")
    assert config.socket_path == "/run/kquic/handshake.sock"
    assert (config.workers, config.max_pending, config.keys) == (8, 64, {})
    assert config.client is None and config.server is None


def test_the_example_config_parses() -> None:
    config = load_config(ROOT / "deploy" / "tlshd.conf")
    assert config.server.certificate == "/etc/kquic/server.pem"
    assert config.socket_path == "/run/kquic/handshake.sock"


def test_check_files_names_unreadable_files(tmp_path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    config = parse_config(FULL, tmp_path)
    problems = config.check_files()
    assert not any("ca.pem" in p for p in problems)
    assert any("authenticate.server x509.certificate" in p for p in problems)
    assert any("key.smb x509.private_key" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[debug]\nloglevel=lots\n", "[debug] loglevel='lots' is not a number"),
        ("[agent]\nworkers=0\n", "[agent] workers=0 is outside"),
        ("[agent]\nsockett=/x\n", "[agent] unknown key 'sockett'"),
        ("[bogus]\n", "unknown section [bogus]"),
        ("key=value\n", "line 1: 'key=value' comes before any [section]"),
        ("[debug]\nloglevel=1\ngarbage\n", "line 3: 'garbage' is neither key=value nor"),
        ("[debug]\n[debug]\n", "line 2: section [debug] already exists"),
        ("[debug]\ntls=1\ntls=2\n", "line 3: [debug] tls is set twice"),
        ("[authenticate.server]\nx509.certificate=a.pem\n", "go together"),
        ("[key.a]\ntype=rsa\n", "type must be x509 or psk"),
        ("[key.a]\ntype=x509\n", "needs x509.certificate"),
        ("[key.a]\ntype=psk\n", "needs secret"),
        ("[key.a]\ntype=psk\nsecret=zz\n", "secret is not hex"),
        ("[key.a]\ntype=psk\nsecret=0011\n", "shorter than 16 bytes"),
        ("[key.]\ntype=psk\n", "needs a name"),
    ],
)
def test_mistakes_are_named(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert words in str(exc.value)


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.conf")
    bad = tmp_path / "bad.conf"
    bad.write_text("[agent]\nworkers=-1\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)


def test_syntax_errors_name_the_file_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[agent]\nworkers=4\nsocket /run/x.sock\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert str(exc.value) == (
        f"{bad}: line 3: 'socket /run/x.sock' is neither key=value nor a [section]"
    )
