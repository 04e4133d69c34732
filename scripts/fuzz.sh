#!/usr/bin/env bash
# Runs each fuzz target for FUZZTIME (default 30s). Seed corpora live in testdata/fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME="${FUZZTIME:-30s}"
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $f"
		go test -run '^$' -fuzz "^${f}\$" -fuzztime "$FUZZTIME" "$pkg"
	done
done
