#!/usr/bin/env bash
# The main job, for now: a SUDP link test between two local endpoints.
# Starts `ferry perf server` on loopback, runs `ferry perf client` against it,
# and prints what the transport achieved. No configuration needed.
set -euo pipefail
cd "$(dirname "$0")/.."
BYTES="${BYTES:-1GiB}"
FERRY=./bin/ferry
[ -x "$FERRY" ] || go build -o "$FERRY" ./cmd/ferry

out=$(mktemp)
"$FERRY" perf server --listen 127.0.0.1:0 --json >"$out" 2>/dev/null &
srv=$!
trap 'kill $srv 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
read -r line <"$out"
addr=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")
key=$(sed -E 's/.*"key":"([^"]+)".*/\1/' <<<"$line")
echo "ferry perf server on $addr (key $key)"
echo "sending $BYTES over SUDP (Noise IKpsk2 handshake, AES-256-GCM, BBR-style rate control)..."
"$FERRY" perf client --server-key "$key" "$addr" --bytes "$BYTES"
