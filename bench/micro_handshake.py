"""Time per full TLS 1.3 handshake through the system GnuTLS, both sides in memory.

python bench/micro_handshake.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handshake import gnutls
from handshake.libquic import HandshakeParams
from tests.certs import make_pki
from tests.unit.test_handshake import run_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    pki = make_pki(tempfile.mkdtemp())
    key = bytes(range(32))
    modes = {
        "certificate (ECDSA P-256)": (
            HandshakeParams(
                is_server=False, ca_file=str(pki.ca), server_name="server.test", alpns="smb"
            ),
            HandshakeParams(
                is_server=True,
                cert_file=str(pki.server_cert),
                key_file=str(pki.server_key),
                alpns="smb",
            ),
        ),
        "PSK": (
            HandshakeParams(is_server=False, psk_identity="id", psk_key=key, alpns="smb"),
            HandshakeParams(is_server=True, psk_identity="id", psk_key=key, alpns="smb"),
        ),
    }
    print(f"GnuTLS {gnutls.VERSION}")
    print(f"{'mode':<28} {'median ms':>10} {'p90 ms':>8}")
    for name, (client, server) in modes.items():
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            *_, cres, sres = run_pair(client, server)
            times.append(time.perf_counter() - start)
            assert not isinstance(cres, Exception) and not isinstance(sres, Exception)
        times.sort()
        median, p90 = statistics.median(times) * 1e3, times[int(len(times) * 0.9)] * 1e3
        print(f"{name:<28} {median:>10.2f} {p90:>8.2f}")


if __name__ == "__main__":
    main()
