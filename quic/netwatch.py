"""Following the machine's addresses (RTM_NEWADDR/RTM_DELADDR over rtnetlink).

A client bound to a specific local address loses its path when that address goes
away (a DHCP renewal, a VPN going down, an interface unplugged). The kernel tells
everyone on the ``RTMGRP_IPV*_IFADDR`` groups; this watcher listens there and moves
each affected client to another address of the same family with
``QUIC_SOCKOPT_CONNECTION_MIGRATION`` (RFC 9000 §9.2), as an application would by
hand. Clients bound to the wildcard address need none of this: the kernel picks a
new source address and the server sees a NAT rebinding.

One thread per process, started by the first client that needs it.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)

# rtnetlink scopes: prefer a global address, then site or link, never host (loopback).
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254


class Watched(Protocol):
    def local_address_gone(self, replacement: str | None) -> None: ...


class AddressWatcher:
    """Maps local addresses to the client sockets bound to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, set[Watched]] = {}
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="quic-netwatch", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise OSError(f"rtnetlink: {self._error}")

    def watch(self, addr: str, sock: Watched) -> None:
        with self._lock:
            self._watched.setdefault(addr, set()).add(sock)

    def unwatch(self, addr: str, sock: Watched) -> None:
        with self._lock:
            socks = self._watched.get(addr)
            if socks is not None:
                socks.discard(sock)
                if not socks:
                    del self._watched[addr]

    def _run(self) -> None:
        """The rtnetlink socket lives in this thread: pyroute2 ties it to the thread
        that opened it."""
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

            self._ipr = IPRoute()
            self._ipr.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        except Exception as exc:  # ImportError off Linux, OSError without permission
            self._error = exc
            return
        finally:
            self._ready.set()
        while True:
            try:
                messages = self._ipr.get()
            except OSError as exc:
                log.warning("address watch stopped: %s", exc)
                return
            for msg in messages:
                if msg.get("event") == "RTM_DELADDR":
                    self._address_gone(msg.get_attr("IFA_ADDRESS"), msg["family"])

    def _address_gone(self, addr: str | None, family: int) -> None:
        with self._lock:
            socks = self._watched.pop(addr, set()) if addr else set()
        if not socks:
            return
        replacement = self.replacement(family, exclude=addr)
        log.info(
            "local address %s went away; moving %d connection(s) to %s",
            addr,
            len(socks),
            replacement,
        )
        for sock in socks:
            sock.local_address_gone(replacement)

    def replacement(self, family: int, exclude: str | None) -> str | None:
        """Another address of ``family`` to move to, the widest scope first."""
        candidates = []
        for msg in self._ipr.get_addr(family=family):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr and addr != exclude and msg["scope"] != RT_SCOPE_HOST:
                candidates.append((msg["scope"], addr))
        return min(candidates)[1] if candidates else None


_watcher: AddressWatcher | None = None
_watcher_lock = threading.Lock()


def watch(addr: str, sock: Watched) -> None:
    """Report to ``sock`` when ``addr`` is removed from the machine. Quietly does
    nothing where rtnetlink is unavailable (not Linux, or no permission)."""
    global _watcher
    with _watcher_lock:
        if _watcher is None:
            try:
                _watcher = AddressWatcher()
            except OSError as exc:
                log.info("cannot follow address changes: %s", exc)
                return
    _watcher.watch(addr, sock)


def unwatch(addr: str, sock: Watched) -> None:
    if _watcher is not None:
        _watcher.unwatch(addr, sock)


def is_wildcard(addr: str) -> bool:
    """Whether a bound address leaves the source address to the kernel."""
    return addr in ("", "0.0.0.0", "::")
