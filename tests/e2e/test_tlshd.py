"""The handshake agent as a separate process, driven through handshake.net by consumers
that use only quic.kernel: X.509 and PSK handshakes, and every way a request can fail."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from handshake import gnutls
from handshake import net as hs
from handshake.tlshd import netlink as nl
from quic import uapi
from quic.kernel import (
    Msghdr,
    kernel_accept,
    kernel_bind,
    kernel_connect,
    kernel_listen,
    kernel_recvmsg,
    kernel_sendmsg,
    kernel_setsockopt,
    sock_create,
    sock_release,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 15_000  # generous: a busy CI machine must not fail a good handshake
PSK_SECRET = bytes(range(32))


def write_config(directory: Path, pki, socket_dir: Path | None = None) -> Path:
    conf = directory / "tlshd.conf"
    conf.write_text(
        f"""[debug]
loglevel=1

[agent]
socket={(socket_dir or directory) / "handshake.sock"}
workers=4
max_pending=8

[authenticate.client]
x509.truststore={pki.ca}

[authenticate.server]
x509.certificate={pki.server_cert}
x509.private_key={pki.server_key}

[key.smb]
type=x509
x509.certificate={pki.server_cert}
x509.private_key={pki.server_key}

[key.nfs-psk]
type=psk
identity=nfs-client-1
secret={PSK_SECRET.hex()}
"""
    )
    return conf


class AgentProcess:
    """``kquic-tlshd`` in its own process; its log is kept for the tests to read.
    With ``socket`` it listens there, as ``--socket`` tells it, not where the config says."""

    def __init__(self, config: Path, socket: str | None = None) -> None:
        self.config = config
        self.options = ["--socket", socket] if socket else []
        self.socket = socket or next(
            line.split("=", 1)[1]
            for line in config.read_text().splitlines()
            if line.startswith("socket=")
        )
        self.log_path = config.parent / "agent.log"
        self.start()

    def start(self) -> None:
        self.log_file = open(self.log_path, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "handshake.tlshd.agent",
                "-c",
                str(self.config),
                "-s",
                *self.options,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
            cwd=ROOT,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), self.log()

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log_file.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self.log_file.close()
        return code


@pytest.fixture
def agent(tmp_path, pki):
    proc = AgentProcess(write_config(tmp_path, pki))
    yield proc
    if proc.proc.poll() is None:
        proc.kill()


def args(sock, agent: AgentProcess, **kw) -> hs.TlsHandshakeArgs:
    kw.setdefault("ta_timeout_ms", TIMEOUT_MS)
    return hs.TlsHandshakeArgs(ta_sock=sock, ta_agent=agent.socket, **kw)


def listen_kernel(alpn: bytes = b"smb"):
    lsock = sock_create(socket.AF_INET, socket.SOCK_DGRAM, uapi.IPPROTO_QUIC)
    kernel_setsockopt(lsock, uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, alpn)
    kernel_bind(lsock, ("127.0.0.1", 0))
    kernel_listen(lsock, 8)
    return lsock


def stream_cmsg(sid: int, flags: int) -> list:
    return [(uapi.SOL_QUIC, uapi.QUIC_STREAM_INFO, uapi.QuicStreamInfo(sid, flags).pack())]


def echo_once(nsock) -> None:
    msg = Msghdr()
    data = kernel_recvmsg(nsock, msg, 1024)
    sid = uapi.QuicStreamInfo.unpack(msg.msg_control[0][2]).stream_id
    kernel_sendmsg(nsock, Msghdr(msg_control=stream_cmsg(sid, uapi.MSG_QUIC_STREAM_FIN)), data)


def ping(csock) -> bytes:
    kernel_sendmsg(
        csock,
        Msghdr(msg_control=stream_cmsg(0, uapi.MSG_QUIC_STREAM_NEW | uapi.MSG_QUIC_STREAM_FIN)),
        b"ping",
    )
    msg, got = Msghdr(), b""
    for _ in range(100):
        got += kernel_recvmsg(csock, msg, 1024)
        if msg.msg_flags & uapi.MSG_QUIC_STREAM_FIN:
            break
    return got


@pytest.fixture
def no_private_keys_here(monkeypatch, pki):
    """Fails the test if this (the consumers') process loads a private key or opens the
    key file: that is the agent's job alone."""
    opened: list[str] = []
    key_path = os.path.realpath(pki.server_key)

    def hook(event: str, hook_args) -> None:
        if event == "open" and hook_args and isinstance(hook_args[0], (str, bytes)):
            path = os.fsdecode(hook_args[0])
            if os.path.realpath(path) == key_path:
                opened.append(path)

    sys.addaudithook(hook)

    def refuse(*_args, **_kw):
        opened.append("gnutls key load")
        raise AssertionError("a consumer loaded a private key")

    monkeypatch.setattr(gnutls.CertificateCredentials, "set_key_file", refuse)
    monkeypatch.setattr(gnutls.CertificateCredentials, "set_key_mem", refuse)
    yield
    assert opened == []
    opened.append("test over")  # the audit hook cannot be removed; stop it counting


def run_pair(serve, client, alpn: bytes = b"smb") -> None:
    """A kernel-API listener whose accepted socket goes to ``serve`` on a thread and a
    client socket connected to it that goes to ``client``; all released after."""
    lsock = listen_kernel(alpn)

    def accept_one() -> None:
        nsock = kernel_accept(lsock)
        try:
            serve(nsock)
        finally:
            sock_release(nsock)

    server = threading.Thread(target=accept_one, daemon=True)
    server.start()
    csock = sock_create(socket.AF_INET, socket.SOCK_DGRAM, uapi.IPPROTO_QUIC)
    try:
        kernel_connect(csock, ("127.0.0.1", lsock.getsockname()[1]))
        client(csock)
        server.join(10)
        assert not server.is_alive()
    finally:
        sock_release(csock)
        sock_release(lsock)


def test_x509_handshake_through_the_agent(agent, no_private_keys_here) -> None:
    result: dict = {}

    def serve(nsock) -> None:
        done = threading.Event()

        def on_done(data, status, peerid) -> None:
            result["server"] = (data, status, peerid)
            done.set()

        assert hs.tls_server_hello_x509(args(nsock, agent, ta_done=on_done, ta_data="cookie")) == 0
        assert done.wait(10)
        echo_once(nsock)

    def client(csock) -> None:
        peerid = hs.tls_client_hello_x509(
            args(csock, agent, ta_peername="server.test", ta_alpn="smb")
        )
        assert peerid == hs.TLS_NO_PEERID
        assert ping(csock) == b"ping"
        alpn = csock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, 64)
        assert alpn.rstrip(b"\0") == b"smb"

    run_pair(serve, client)
    assert result["server"] == ("cookie", 0, hs.TLS_NO_PEERID)
    log = agent.log()
    assert "handshake server auth=x509" in log and "handshake client auth=x509" in log
    assert "alpn=smb" in log and "result=ok" in log


def test_named_certificate_and_psk_pair(agent, no_private_keys_here) -> None:
    serial = nl.key_serial("nfs-psk")
    server_peer: list[int] = []

    def serve_psk(nsock) -> None:
        server_peer.append(hs.tls_server_hello_psk(args(nsock, agent)))
        echo_once(nsock)

    def client_psk(csock) -> None:
        hs.tls_client_hello_psk(args(csock, agent, ta_alpn="sunrpc"), serial)
        assert ping(csock) == b"ping"

    run_pair(serve_psk, client_psk, b"sunrpc")
    assert server_peer == [serial]
    assert "psk='nfs-client-1'" in agent.log()

    def serve_named(nsock) -> None:
        """A server naming its certificate in the agent's key table."""
        hs.tls_server_hello_x509(args(nsock, agent, ta_my_cert=nl.key_serial("smb")))
        echo_once(nsock)

    def client_x509(csock) -> None:
        hs.tls_client_hello_x509(args(csock, agent, ta_peername="server.test", ta_alpn="smb"))
        assert ping(csock) == b"ping"

    run_pair(serve_named, client_x509)


@contextlib.contextmanager
def stalled_client():
    """A client socket aimed at a UDP port that swallows Initials: its handshake never
    progresses, so the request stays in flight until something ends it."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    csock = client_to(silent.getsockname()[1])
    try:
        yield csock
    finally:
        sock_release(csock)
        silent.close()


def client_to(port: int):
    csock = sock_create(socket.AF_INET, socket.SOCK_DGRAM, uapi.IPPROTO_QUIC)
    kernel_setsockopt(csock, uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_ALPN, b"smb")
    kernel_connect(csock, ("127.0.0.1", port))
    return csock


def test_agent_not_running(tmp_path) -> None:
    csock = client_to(9)
    with pytest.raises(hs.HandshakeFailed) as exc:
        hs.tls_client_hello_x509(
            hs.TlsHandshakeArgs(ta_sock=csock, ta_agent=str(tmp_path / "none.sock"))
        )
    assert exc.value.errno in (errno.ENOENT, errno.ECONNREFUSED)
    assert "kquic-tlshd" in str(exc.value)
    sock_release(csock)


def test_timeout_reported_within_the_timeout(agent) -> None:
    with stalled_client() as csock, pytest.raises(hs.HandshakeFailed) as exc:
        hs.tls_client_hello_x509(args(csock, agent, ta_peername="server.test", ta_timeout_ms=700))
    assert exc.value.errno == errno.ETIMEDOUT
    # The agent's own 700 ms deadline ended it, not the consumer's fallback wait.
    assert str(exc.value).endswith("the handshake timed out")
    assert "result=timeout" in agent.log()


def test_wrong_certificate_is_a_tls_error(agent) -> None:
    def serve(nsock) -> None:
        try:
            hs.tls_server_hello_x509(args(nsock, agent))
        except hs.HandshakeFailed:
            pass  # the client's alert ends the server's handshake too

    def client(csock) -> None:
        with pytest.raises(hs.HandshakeFailed) as exc:
            hs.tls_client_hello_x509(args(csock, agent, ta_peername="wrong.test", ta_alpn="smb"))
        assert exc.value.errno == errno.EIO
        assert "alert" in str(exc.value)
        sock_release(csock)  # the release sends the alert's CONNECTION_CLOSE to the server

    run_pair(serve, client)


def test_agent_killed_mid_handshake_then_restarted(agent) -> None:
    outcome: list[int] = []
    finished = threading.Event()

    def on_done(_data, status, _peerid) -> None:
        outcome.append(status)
        finished.set()

    with stalled_client() as csock:
        hs.tls_client_hello_x509(args(csock, agent, ta_peername="server.test", ta_done=on_done))
        time.sleep(0.3)
        agent.kill()
        assert finished.wait(5)
    assert outcome == [-errno.ECONNABORTED]
    agent.start()
    test_x509_handshake_succeeds_again(agent)


def test_x509_handshake_succeeds_again(agent) -> None:
    """The plain handshake, as the restart test needs it after the agent comes back."""
    x509_pair(agent.socket)


def x509_pair(agent_socket: str | None) -> None:
    """An X.509 server and client consumer through the agent at ``agent_socket`` (None:
    this process's default), then one stream each way."""

    def request(sock, **kw) -> hs.TlsHandshakeArgs:
        return hs.TlsHandshakeArgs(
            ta_sock=sock, ta_agent=agent_socket, ta_timeout_ms=TIMEOUT_MS, **kw
        )

    def serve(nsock) -> None:
        hs.tls_server_hello_x509(request(nsock))
        echo_once(nsock)

    def client(csock) -> None:
        hs.tls_client_hello_x509(request(csock, ta_peername="server.test", ta_alpn="smb"))
        assert ping(csock) == b"ping"

    run_pair(serve, client)


def test_cancel_stops_the_request_without_a_callback(agent) -> None:
    calls: list[int] = []
    with stalled_client() as csock:
        hs.tls_client_hello_x509(
            args(csock, agent, ta_peername="server.test", ta_done=lambda *a: calls.append(a[1]))
        )
        time.sleep(0.2)
        assert hs.tls_handshake_cancel(csock) is True
        assert hs.tls_handshake_cancel(csock) is False  # nothing left to cancel
        time.sleep(0.5)
    assert calls == []
    test_x509_handshake_succeeds_again(agent)


def raw_request(agent: AgentProcess, data: bytes, fds: list[int] | None = None) -> nl.Done:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(5)
    conn.connect(agent.socket)
    if fds:
        conn.sendmsg(
            [data],
            [
                (
                    socket.SOL_SOCKET,
                    socket.SCM_RIGHTS,
                    bytes(b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)),
                )
            ],
        )
    else:
        conn.send(data)
    reply = conn.recv(nl.MAX_MESSAGE_SIZE)
    conn.close()
    return nl.decode(reply)


def test_bad_requests_are_refused_and_the_agent_serves_on(agent) -> None:
    accept = nl.AcceptRequest(
        message_type=nl.MsgType.CLIENTHELLO, auth_mode=nl.AuthMode.X509, timeout_ms=1000
    )
    r, w = os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        cases = [
            (b"\x00" * 3, None, errno.EINVAL),  # not a netlink message
            (os.urandom(200), None, errno.EINVAL),
            (nl.encode(nl.Done(status=0)), None, errno.EINVAL),  # a command agents send
            (nl.encode(accept), None, errno.EBADF),  # no socket attached
            (nl.encode(accept), [r], errno.EBADF),  # a pipe, not a socket
            (nl.encode(accept), [a.fileno()], errno.EBADF),  # the wrong kind of socket
            (bytes(nl.MAX_MESSAGE_SIZE + 1), None, errno.EMSGSIZE),
        ]
        for data, fds, status in cases:
            assert raw_request(agent, data, fds).status == status
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
    assert agent.proc.poll() is None
    test_x509_handshake_succeeds_again(agent)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_user_without_permission_is_refused(tmp_path, pki) -> None:
    """SO_PEERCRED decides: a user who is neither root nor in the agent's group is
    refused even when the socket file lets everyone connect."""
    open_dir = Path(tempfile.mkdtemp(prefix="kquic-agent-"))
    try:
        open_dir.chmod(0o755)
        agent = AgentProcess(write_config(tmp_path, pki, socket_dir=open_dir))
        os.chmod(agent.socket, 0o666)
        request = nl.encode(nl.AcceptRequest(message_type=1, auth_mode=3))
        # The system interpreter, stdlib only: the project tree need not be readable.
        code = (
            "import os, socket\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            f"s.connect({agent.socket!r})\n"
            f"s.send(bytes.fromhex({request.hex()!r}))\n"
            "print(s.recv(4096).hex())\n"
        )
        python = os.path.join(sys.base_prefix, "bin", "python3")
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert nl.decode(bytes.fromhex(out.stdout.strip())).status == errno.EACCES
        assert "may not request handshakes" in agent.log()
        assert agent.stop() == 0
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


def test_sigterm_exits_cleanly(agent) -> None:
    assert agent.stop() == 0
    assert not os.path.exists(agent.socket)
    assert "stopped after" in agent.log()


def test_concurrent_handshakes_share_the_pool(agent) -> None:
    """More handshakes at once than the agent has workers (4): the rest wait their turn.
    Both ends of each pair use this agent, and a client's handshake holds its worker
    until its server's runs, so at most workers - 1 pairs are guaranteed progress."""
    failures: list[BaseException] = []

    def one() -> None:
        try:
            x509_pair(agent.socket)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert not any(thread.is_alive() for thread in threads)
    assert agent.log().count("result=ok") == 6


def wait_for_log(agent: AgentProcess, words: str) -> bool:
    for _ in range(100):
        if words in agent.log():
            return True
        time.sleep(0.05)
    return False


def psk_client(agent: AgentProcess, key: str) -> None:
    """A client PSK request for ``key``: the agent refuses unknown keys before any
    packet is sent, and times out on a known one."""
    with stalled_client() as csock:
        hs.tls_client_hello_psk(args(csock, agent, ta_timeout_ms=700), nl.key_serial(key))


def test_sighup_reloads_and_a_broken_config_keeps_the_old(agent) -> None:
    with pytest.raises(hs.HandshakeFailed) as exc:
        psk_client(agent, "late")
    assert exc.value.errno == errno.ENOKEY
    original = agent.config.read_text()
    agent.config.write_text(
        original + "\n[key.late]\ntype=psk\nidentity=late\nsecret=" + "ab" * 16 + "\n"
    )
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for_log(agent, "configuration reloaded")
    with pytest.raises(hs.HandshakeFailed) as exc:
        psk_client(agent, "late")  # known now: it gets as far as the silent server
    assert exc.value.errno == errno.ETIMEDOUT

    agent.config.write_text("[agent]\nworkers=many\n")
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for_log(agent, "keeping the old configuration")
    test_x509_handshake_succeeds_again(agent)


def test_a_reload_naming_an_unknown_group_keeps_the_old_config(agent) -> None:
    agent.config.write_text(
        agent.config.read_text().replace("[agent]\n", "[agent]\ngroup=no-such-group\n")
    )
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for_log(agent, "keeping the old configuration")
    assert "no-such-group" in agent.log()
    test_x509_handshake_succeeds_again(agent)


def test_socket_override_outlives_a_reload(tmp_path, pki) -> None:
    """An agent started with --socket keeps it across SIGHUP, and on SIGTERM removes its
    own socket, not the one the config names, where another agent may be listening."""
    config = write_config(tmp_path, pki)
    system_socket = str(tmp_path / "handshake.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    other.bind(system_socket)
    other.listen(1)
    agent = AgentProcess(config, socket=str(tmp_path / "private.sock"))
    try:
        agent.proc.send_signal(signal.SIGHUP)
        assert wait_for_log(agent, "configuration reloaded")
        assert "take effect on restart" not in agent.log()
        test_x509_handshake_succeeds_again(agent)
        assert agent.stop() == 0
        assert os.path.exists(system_socket)
        assert not os.path.exists(agent.socket)
    finally:
        other.close()
        if agent.proc.poll() is None:
            agent.kill()


def test_embedded_agent_serves_this_process(tmp_path, pki) -> None:
    config = write_config(tmp_path, pki)
    running = hs.start_embedded_agent(config)
    try:
        assert hs.agent_socket_path() == running.config.socket_path
        assert os.stat(os.path.dirname(running.config.socket_path)).st_mode & 0o077 == 0
        with pytest.raises(RuntimeError):
            hs.start_embedded_agent(config)
        x509_pair(None)
        assert running.served == 2
    finally:
        hs.stop_embedded_agent()
    assert not os.path.exists(running.config.socket_path)
    assert hs.agent_socket_path() != running.config.socket_path


def test_cli_mistakes_are_one_line_errors(tmp_path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[agent]\nworkers=lots\n")
    no_group = tmp_path / "no-group.conf"
    no_group.write_text(f"[agent]\nsocket={tmp_path / 'h.sock'}\ngroup=no-such-group\n")
    for config in (tmp_path / "missing.conf", bad, no_group):
        out = subprocess.run(
            [sys.executable, "-m", "handshake.tlshd.agent", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert out.returncode == 2
        assert out.stderr.startswith("kquic-tlshd: ") and "Traceback" not in out.stderr
