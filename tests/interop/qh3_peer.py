"""tests.interop.aioquic_peer on qh3, aioquic's fork: the same commands and output.

    python -m tests.interop.qh3_peer perf-server --port P --cert C --key K
    python -m tests.interop.qh3_peer perf-client --port P (--send N | --recv N) [--streams S]
    python -m tests.interop.qh3_peer handshake-client --port P --count N

The benchmark suite uses the perf and handshake commands; qh3 is installed with the
``bench`` extra, not for the tests.
"""

from __future__ import annotations

import os
import sys

os.environ["QUIC_PEER_LIBRARY"] = "qh3"

from tests.interop.aioquic_peer import main

if __name__ == "__main__":
    sys.exit(main())
