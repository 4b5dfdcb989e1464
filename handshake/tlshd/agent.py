"""kquic-tlshd: the handshake agent, kquic's ``tlshd``.

Consumers connect to its Unix socket and send a netlink-formatted ``accept`` of the
``handshake`` family with one end of a socketpair attached; the agent runs the TLS 1.3
handshake with GnuTLS through that pair (:mod:`handshake.sockops`) and answers ``done``.
Certificates, private keys and PSKs are read here and nowhere else.

Threads: one accepts and admits requests (peer credentials, message checks, a bound on
pending work); a fixed pool runs handshakes. SIGTERM stops accepting and lets running
handshakes finish for a few seconds; SIGHUP reloads the configuration, keeping the old
one if the new one is broken.
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import errno
import grp
import logging
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from handshake import libquic, sockops
from quic import uapi

from . import netlink as nl
from .config import AgentConfig, ConfigError, load_config

log = logging.getLogger("kquic-tlshd")

DEFAULT_CONFIG = "/etc/kquic/tlshd.conf"
_UCRED = struct.Struct("3i")
# How long running handshakes may go on after SIGTERM.
STOP_GRACE = 5.0
CIPHER_NAMES = {
    uapi.TLS_CIPHER_AES_GCM_128: "TLS_AES_128_GCM_SHA256",
    uapi.TLS_CIPHER_AES_GCM_256: "TLS_AES_256_GCM_SHA384",
    uapi.TLS_CIPHER_AES_CCM_128: "TLS_AES_128_CCM_SHA256",
    uapi.TLS_CIPHER_CHACHA20_POLY1305: "TLS_CHACHA20_POLY1305_SHA256",
}


class Refused(Exception):
    """A request the agent will not serve; ``status`` goes back in ``done``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Peer:
    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid}"


def peer_credentials(conn: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def _group_id(name: str | None) -> int | None:
    """``[agent] group``'s gid, a name or a number. A name the system does not know is a
    ConfigError: ignored, it would leave the group's members refused without a word."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ConfigError(f"[agent] group={name!r}: no such group") from None


class Agent:
    """The daemon's state. :meth:`serve` runs it in the calling thread; :meth:`start`
    in a background thread (the embedded agent of one-command demos and tests)."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: str | None = None,
        socket_path: str | None = None,
    ) -> None:
        self.socket_override = socket_path
        self.config = self._overridden(config)
        self.gid = _group_id(config.group)
        self.config_path = config_path
        self.listener: socket.socket | None = None
        self.bound_path: str | None = None
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="handshake")
        self.slots = threading.BoundedSemaphore(config.workers + config.max_pending)
        self.running: set[socket.socket] = set()
        self.running_lock = threading.Lock()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.thread: threading.Thread | None = None
        self.served = 0

    # -- lifecycle -----------------------------------------------------

    def bind(self) -> None:
        path = self.config.socket_path
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        _remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o117)
        try:
            listener.bind(path)
        finally:
            os.umask(old_umask)
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        listener.listen(64)
        listener.settimeout(0.5)
        self.listener, self.bound_path = listener, path
        log.info("listening on %s", path)

    def start(self) -> Agent:
        self.bind()
        self.thread = threading.Thread(target=self.serve, name="kquic-tlshd", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(STOP_GRACE + 2)

    def _overridden(self, config: AgentConfig) -> AgentConfig:
        """``config`` with the command line's choices, which a reload must keep."""
        if self.socket_override:
            return dataclasses.replace(config, socket_path=self.socket_override)
        return config

    def reload(self) -> None:
        if self.config_path is None:
            return
        try:
            config = self._overridden(load_config(self.config_path))
            gid = _group_id(config.group)
        except ConfigError as exc:
            log.error("reload failed, keeping the old configuration: %s", exc)
            return
        for problem in config.check_files():
            log.warning("%s", problem)
        if config.socket_path != self.config.socket_path or config.workers != self.config.workers:
            log.warning("socket and workers changes take effect on restart")
        self.config, self.gid = config, gid
        _apply_log_levels(config)
        log.info("configuration reloaded from %s", self.config_path)

    def serve(self) -> None:
        if self.listener is None:
            self.bind()
        listener = self.listener
        try:
            while not self.stopping.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self.stopping.is_set():
                        break
                    log.error("accept: %s", exc)
                    time.sleep(0.1)
                    continue
                self._admit(conn)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
            try:
                os.unlink(self.bound_path)  # ours: the config's path may be another agent's
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            with self.running_lock:
                if not self.running:
                    break
            time.sleep(0.05)
        with self.running_lock:
            for sock in self.running:
                sock.close()  # the consumer sees the agent go away
        self.pool.shutdown(wait=True, cancel_futures=True)
        log.info("stopped after %d handshakes", self.served)

    # -- admission -----------------------------------------------------

    def _admit(self, conn: socket.socket) -> None:
        """Check who is asking and what; hand the handshake to the pool. Anything wrong
        is logged and refused here, and the agent goes on serving others."""
        pair = None
        try:
            peer = peer_credentials(conn)
            if not self._allowed(peer):
                _discard_request(conn)
                raise Refused(errno.EACCES, f"{peer} may not request handshakes")
            request, pair = _receive_request(conn)
            if not self.slots.acquire(blocking=False):
                raise Refused(errno.EBUSY, "too many handshakes pending")
        except Refused as exc:
            log.warning("refused request: %s", exc)
            if pair is not None:
                pair.close()
            _reply(conn, nl.Done(status=exc.status))
            conn.close()
            return
        except OSError as exc:
            log.warning("request channel error: %s", exc)
            conn.close()
            return
        with self.running_lock:
            self.running.add(pair)
        self.pool.submit(self._handshake, conn, pair, request, peer)

    def _allowed(self, peer: Peer) -> bool:
        if peer.uid in (0, os.geteuid()):
            return True
        gid = self.gid
        return gid is not None and (peer.gid == gid or gid in _supplementary_groups(peer.pid))

    # -- one handshake -------------------------------------------------

    def _handshake(
        self, conn: socket.socket, pair: socket.socket, request: nl.AcceptRequest, peer: Peer
    ) -> None:
        start = time.monotonic()
        timeout = (request.timeout_ms or 30_000) / 1000
        remote = sockops.RemoteHandshakeSocket(pair, timeout)
        done = nl.Done(status=0, sockfd=request.sockfd)
        summary = {"alpn": "-", "cipher": "-"}
        try:
            params, serials = self._params(request, remote, timeout)
            result = libquic.quic_handshake(remote, params)
            summary["alpn"] = result.alpn or "-"
            summary["cipher"] = CIPHER_NAMES.get(result.cipher, str(result.cipher))
            if result.psk_identity is not None and result.psk_identity in serials:
                done.remote_auth = [serials[result.psk_identity]]
            if result.session_data:
                remote.setsockopt(
                    uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, result.session_data
                )
            outcome = "ok"
            if result.peer_subject:
                outcome += f" peer-cert={result.peer_subject!r}"
            if result.psk_identity:
                outcome += f" psk={result.psk_identity!r}"
        except Refused as exc:
            done.status, outcome = exc.status, f"refused: {exc}"
        except libquic.HandshakeError as exc:
            done.status, outcome = errno.EIO, f"tls error: {exc}"
        except TimeoutError as exc:
            done.status, outcome = errno.ETIMEDOUT, f"timeout: {exc}"
        except sockops.OperationError as exc:
            done.status, outcome = errno.ECONNABORTED, f"consumer gone: {exc}"
        except OSError as exc:
            done.status, outcome = exc.errno or errno.EIO, f"error: {exc}"
        except Exception as exc:  # a bug must cost one handshake, not the agent
            log.exception("handshake crashed")
            done.status, outcome = errno.EIO, f"internal error: {exc}"
        finally:
            with self.running_lock:
                self.running.discard(pair)
            pair.close()
            self.slots.release()
        self.served += 1
        log.info(
            "handshake %s auth=%s peer=%s from=%s alpn=%s cipher=%s result=%s duration=%.1fms",
            "server" if request.message_type == nl.MsgType.SERVERHELLO else "client",
            nl.AuthMode(request.auth_mode).name.lower(),
            request.peername or "-",
            peer,
            summary["alpn"],
            summary["cipher"],
            outcome,
            (time.monotonic() - start) * 1000,
        )
        _reply(conn, done)
        conn.close()

    def _params(
        self, request: nl.AcceptRequest, sock: sockops.RemoteHandshakeSocket, timeout: float
    ) -> tuple[libquic.HandshakeParams, dict[str, int]]:
        """HandshakeParams from the request, the agent's keys and the socket's
        QUIC_SOCKOPT_CONFIG, the way tlshd builds its GnuTLS session."""
        config = self.config
        is_server = request.message_type == nl.MsgType.SERVERHELLO
        qcfg = uapi.QuicConfig.unpack(
            sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_CONFIG, uapi.QuicConfig.size())
        )
        params = libquic.HandshakeParams(
            is_server=is_server,
            timeout=timeout,
            cipher=qcfg.payload_cipher_type,
            cert_request=qcfg.certificate_request if is_server else 0,
            receive_ticket=float(qcfg.receive_session_ticket) if not is_server else 0.0,
            server_name=request.peername,
        )
        serials: dict[str, int] = {}
        if request.auth_mode == nl.AuthMode.PSK:
            if is_server:
                table = {k.psk.identity: k for k in config.keys.values() if k.psk is not None}
                if not table:
                    raise Refused(errno.ENOKEY, "no PSK identities configured")
                params.psk_table = {ident: k.psk.secret for ident, k in table.items()}
                serials = {ident: k.serial for ident, k in table.items()}
            else:
                key = (
                    config.key_by_serial(request.peer_identities[0])
                    if request.peer_identities
                    else None
                )
                if key is None or key.psk is None:
                    raise Refused(errno.ENOKEY, "no such PSK identity in the key table")
                params.psk_identity, params.psk_key = key.psk.identity, key.psk.secret
            return params, serials
        creds = config.server if is_server else config.client
        if creds is not None:
            params.ca_file = creds.truststore
        if request.certificates:
            key = config.key_by_serial(request.certificates[0][0])
            if key is None or key.x509 is None:
                raise Refused(errno.ENOKEY, "no such certificate in the key table")
            params.cert_file, params.key_file = key.x509.certificate, key.x509.private_key
            params.ca_file = key.x509.truststore or params.ca_file
        elif (
            creds is not None
            and creds.certificate
            and (is_server or request.auth_mode == nl.AuthMode.X509)
        ):
            params.cert_file, params.key_file = creds.certificate, creds.private_key
        if is_server and not params.cert_file:
            raise Refused(errno.ENOKEY, "no server certificate configured")
        if not is_server:
            try:
                params.session_data = (
                    sock.getsockopt(uapi.SOL_QUIC, uapi.QUIC_SOCKOPT_SESSION_TICKET, 4096) or None
                )
            except OSError:
                params.session_data = None
        return params, serials


def _recv_with_fds(conn: socket.socket) -> tuple[bytes, array.array, int]:
    """One message and the descriptors that came with it (owned by the caller)."""
    fds = array.array("i")
    data, ancdata, flags, _ = conn.recvmsg(
        nl.MAX_MESSAGE_SIZE + 1, socket.CMSG_SPACE(4 * fds.itemsize)
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, fds, flags


def _receive_request(conn: socket.socket) -> tuple[nl.AcceptRequest, socket.socket]:
    """One accept message and the socket it carries; Refused for anything else."""
    conn.settimeout(5.0)
    try:
        data, fds, flags = _recv_with_fds(conn)
    except TimeoutError:
        raise Refused(errno.ETIMEDOUT, "no request within 5 s") from None
    if len(fds) > 1 or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise Refused(errno.EINVAL, "more than one descriptor attached")
    if flags & socket.MSG_TRUNC or len(data) > nl.MAX_MESSAGE_SIZE:
        for fd in fds:
            os.close(fd)
        raise Refused(errno.EMSGSIZE, "request larger than a netlink message may be")
    pair = None
    if fds:
        try:
            pair = _as_pair(fds[0])
        except Refused:
            os.close(fds[0])
            raise
    try:
        try:
            request = nl.decode(data)
        except nl.NetlinkFormatError as exc:
            raise Refused(errno.EINVAL, f"malformed request: {exc}") from None
        if not isinstance(request, nl.AcceptRequest):
            raise Refused(errno.EINVAL, f"unexpected command {type(request).__name__}")
        if request.handler_class != nl.HandlerClass.TLSHD:
            raise Refused(errno.EINVAL, "request for another handler class")
        if request.auth_mode == nl.AuthMode.UNAUTH and (
            request.message_type == nl.MsgType.SERVERHELLO
        ):
            raise Refused(errno.EINVAL, "a server handshake cannot be unauthenticated")
        if pair is None:
            raise Refused(errno.EBADF, "no socket attached to the request")
    except Refused:
        if pair is not None:
            pair.close()
        raise
    conn.settimeout(None)
    return request, pair


def _discard_request(conn: socket.socket) -> None:
    """Read and drop a refused peer's request, closing any descriptor it carried, so
    that our answer is not lost to a reset of a socket closed with unread data."""
    conn.settimeout(1.0)
    try:
        _data, fds, _flags = _recv_with_fds(conn)
    except OSError:
        return
    for fd in fds:
        os.close(fd)


def _as_pair(fd: int) -> socket.socket:
    """The received descriptor, if it is the kind of socket the protocol uses."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise Refused(errno.EBADF, "bad descriptor") from None
    if not stat.S_ISSOCK(mode):
        raise Refused(errno.EBADF, "the attached descriptor is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise Refused(errno.EBADF, "the attached socket is not a SEQPACKET socketpair end")
    return sock


def _reply(conn: socket.socket, done: nl.Done) -> None:
    try:
        conn.send(nl.encode(done))
    except OSError as exc:
        log.debug("could not send done: %s", exc)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a crashed agent is removed; a live agent is not displaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(f"another agent is already listening on {path}")


def _apply_log_levels(config: AgentConfig) -> None:
    level = logging.DEBUG if config.debug_level > 0 else logging.INFO
    log.setLevel(level)
    logging.getLogger("handshake").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kquic-tlshd", description="kquic's TLS handshake agent for QUIC consumers"
    )
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="configuration file")
    parser.add_argument(
        "-s", "--stderr", action="store_true", help="log to stderr (always so under systemd)"
    )
    parser.add_argument("--socket", help="override [agent] socket")
    parser.add_argument("-v", "--version", action="version", version="kquic-tlshd 0.1.0")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s kquic-tlshd: %(message)s",
    )
    try:
        agent = Agent(load_config(args.config), args.config, args.socket)
        config = agent.config
        _apply_log_levels(config)
        for problem in config.check_files():
            log.warning("%s", problem)
        agent.bind()
    except (ConfigError, OSError) as exc:
        print(f"kquic-tlshd: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: agent.reload_requested.set())
    signal.signal(signal.SIGUSR1, lambda *_: agent.reload_requested.set())
    print(f"ready {config.socket_path}", flush=True)
    agent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
