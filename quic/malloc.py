"""The C allocator under the I/O path: glibc's trim threshold, raised once per process.

A bulk transfer allocates and frees buffers of up to 64 KiB at a high rate (stream
chunks, sealed datagrams, decrypted payloads), in the tunnel's I/O thread and in the
application's threads. Those threads allocate from glibc's per-thread arenas, which give
free memory at the top of their heap back to the kernel as soon as it exceeds
M_TRIM_THRESHOLD, 128 KiB by default: an madvise(MADV_DONTNEED) on a free, and a page
fault for each 4 KiB page when the next buffer touches it. With 64 KiB datagrams that
churn cost a sender about a third of its CPU. Keeping up to TRIM_THRESHOLD free in an
arena costs at most that much resident memory per arena after a burst.

An administrator who set the threshold (MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES) keeps
theirs; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # <malloc.h>
TRIM_THRESHOLD = 32 << 20

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (mallopt's parameters are glibc's)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's trim threshold to TRIM_THRESHOLD, once; whether it is raised."""
    global _applied
    if _applied is None:
        _applied = False
        chosen = "MALLOC_TRIM_THRESHOLD_" in os.environ or "malloc.trim_threshold" in (
            os.environ.get("GLIBC_TUNABLES", "")
        )
        libc = None if chosen else _glibc()
        if libc is not None:
            _applied = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied
