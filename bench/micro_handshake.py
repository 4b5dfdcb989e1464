"""Cost of one full QUIC-TLS handshake through the system GnuTLS: client and server driven
in memory (two threads, queues between them), so the figure is GnuTLS plus the driver,
without packets or loss. Modes: X.509 (ECDSA P-256), PSK, and X.509 resumption.

    python bench/micro_handshake.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handshake import gnutls
from handshake.libquic import HandshakeParams
from tests.certs import make_pki
from tests.unit.test_handshake import run_pair


def median_ms(client: HandshakeParams, server: HandshakeParams, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_pair(client, server).ok()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(tmp)
        x509_client = HandshakeParams(
            is_server=False, ca_file=str(pki.ca), server_name="server.test", alpns="smb"
        )
        x509_server = HandshakeParams(
            is_server=True,
            cert_file=str(pki.server_cert),
            key_file=str(pki.server_key),
            alpns="smb",
            send_ticket=False,
        )
        key = bytes(range(32))
        psk_client = HandshakeParams(is_server=False, psk_identity="id", psk_key=key, alpns="smb")
        psk_server = HandshakeParams(is_server=True, psk_identity="id", psk_key=key, alpns="smb")
        psk_server = replace(psk_server, send_ticket=False)

        ticket_server = replace(
            x509_server, send_ticket=True, ticket_key=gnutls.generate_ticket_key()
        )
        first, _ = run_pair(replace(x509_client, receive_ticket=5), ticket_server).ok()
        resumed_client = replace(x509_client, session_data=first.session_data)
        if not run_pair(resumed_client, ticket_server).ok()[0].resumed:
            raise SystemExit("the ticket did not resume the session")

        print(f"GnuTLS {gnutls.check_version()}, median of {args.runs} handshakes (both sides)")
        for name, c, s in (
            ("x509 (ECDSA P-256)", x509_client, x509_server),
            ("PSK", psk_client, psk_server),
            ("x509 resumed (ticket)", resumed_client, ticket_server),
        ):
            print(f"  {name:<24} {median_ms(c, s, args.runs):8.2f} ms")


if __name__ == "__main__":
    main()
