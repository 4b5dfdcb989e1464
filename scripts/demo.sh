#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and shows kquic working: an hq-interop file server and
# client on loopback, TLS 1.3 from the system GnuTLS, a 20 MiB file checked by hash.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/www" "$work/out"
$py -c "from tests.certs import make_pki; make_pki('$work/pki')"
head -c $((20 << 20)) /dev/urandom > "$work/www/file.bin"
echo "demo: starting kquic-interop server on 127.0.0.1 (an ephemeral UDP port)"
$py -m kquic_tools.interop server --listen 127.0.0.1:0 --root "$work/www" \
    --cert "$work/pki/server.pem" --key "$work/pki/server.key" > "$work/server.out" &
server=$!
for _ in $(seq 50); do grep -q '^ready' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
port=$(awk '/^ready/ {print $2}' "$work/server.out")
[ -n "$port" ] || { echo "demo: the server did not start" >&2; exit 1; }
echo "demo: fetching https://127.0.0.1:$port/file.bin with kquic-interop client"
start=$(date +%s.%N)
$py -m kquic_tools.interop client "https://127.0.0.1:$port/file.bin" --output "$work/out" \
    --ca "$work/pki/ca.pem" --server-name server.test
end=$(date +%s.%N)
if cmp -s "$work/www/file.bin" "$work/out/file.bin"; then
    awk -v s="$start" -v e="$end" 'BEGIN { printf "demo: 20 MiB arrived intact in %.2f s (%.1f MB/s)\n", e - s, 20.97 / (e - s) }'
else
    echo "demo: the file did not arrive intact" >&2
    exit 1
fi
