"""qlog output (draft-ietf-quic-qlog-main-schema, JSON-SEQ per RFC 7464) for qvis.

The sans-I/O connection only calls ``trace(name, data)`` when tracing is on; this module
turns those calls into one ``.sqlog`` file per connection, named by the original
Destination Connection ID as the QUIC interop runner expects.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

RECORD_SEPARATOR = "\x1e"


class QlogWriter:
    """One connection's trace file; ``__call__`` is the connection's ``trace`` hook."""

    def __init__(self, directory: str | os.PathLike, odcid: bytes, is_client: bool) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        role = "client" if is_client else "server"
        self.path = Path(directory) / f"{odcid.hex()}_{role}.sqlog"
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - lives with the connection
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._write(
            {
                "qlog_version": "0.3",
                "qlog_format": "JSON-SEQ",
                "title": "kquic",
                "trace": {
                    "vantage_point": {"type": role},
                    "common_fields": {
                        "ODCID": odcid.hex(),
                        "time_format": "relative",
                        "reference_time": time.time() * 1000,
                    },
                },
            }
        )

    def _write(self, record: dict) -> None:
        self._file.write(RECORD_SEPARATOR + json.dumps(record, separators=(",", ":")) + "\n")

    def __call__(self, name: str, data: dict) -> None:
        with self._lock:
            if self._file.closed:
                return
            self._write(
                {
                    "time": round((time.monotonic() - self._start) * 1000, 3),
                    "name": name,
                    "data": data,
                }
            )

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()
