#!/usr/bin/env bash
# The whole test suite: lint, unit + simulation tests under the race detector,
# a short pass over every fuzz target's seed corpus, and the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:-} -count=1"
start=$(date +%s)

echo "== lint"
./scripts/lint.sh

echo "== build"
go build -o bin/ferry ./cmd/ferry
go build -o bin/wanlab ./cmd/wanlab

echo "== unit, simulation, attack and e2e tests (race detector)"
go test -race -timeout 20m ./...

echo "== 1 GiB message through the API (no race detector: full size)"
go test -run 'TestLargeMessage' -timeout 5m -v ./internal/sudp/ | grep -E 'peak heap|^(ok|FAIL|---)'

if [ -f bench/go.mod ]; then
	echo "== bench module builds and its tests pass"
	(cd bench && go vet ./... && go test -timeout 5m ./...)
fi

echo "== test suite finished in $(( $(date +%s) - start ))s"
