"""quic/malloc.py: glibc's trim threshold is raised once, unless the administrator
chose one or the C library is not glibc."""

from __future__ import annotations

import platform

import pytest

from quic import malloc


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.setattr(malloc, "_glibc", lambda: fake)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    return fake


def test_the_threshold_is_raised_once(libc) -> None:
    assert malloc.keep_freed_memory()
    assert malloc.keep_freed_memory()
    assert libc.calls == [(malloc.M_TRIM_THRESHOLD, malloc.TRIM_THRESHOLD)]


@pytest.mark.parametrize(
    "name, value",
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"),
    ],
)
def test_an_administrators_threshold_is_kept(libc, monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    assert not malloc.keep_freed_memory()
    assert libc.calls == []


def test_another_c_library_is_left_alone(libc, monkeypatch) -> None:
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert not malloc.keep_freed_memory()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="not a glibc system")
def test_glibc_is_found_where_it_runs() -> None:
    """Else the tuning above would silently never apply."""
    libc = malloc._glibc()
    assert libc is not None and hasattr(libc, "mallopt")
