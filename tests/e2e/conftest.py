"""Fixtures for end-to-end tests over loopback: a test PKI and a bounded server thread."""

from __future__ import annotations

import threading

import pytest

from tests.certs import make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


class ServerThread:
    """Runs ``target`` in a thread and re-raises its exception in the test on join."""

    def __init__(self, target) -> None:
        self.error: BaseException | None = None
        self.result = None

        def run() -> None:
            try:
                self.result = target()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 30.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server thread did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def server_thread():
    return ServerThread
