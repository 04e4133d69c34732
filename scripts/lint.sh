#!/usr/bin/env bash
# gofmt + go vet + staticcheck over the product module and the bench module.
set -euo pipefail
cd "$(dirname "$0")/.."
STATICCHECK="$(go env GOPATH)/bin/staticcheck"
fail=0
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:" >&2; echo "$unformatted" >&2; fail=1
fi
go vet ./... || fail=1
"$STATICCHECK" ./... || fail=1
if [ -f bench/go.mod ]; then
	(cd bench && go vet ./... && "$STATICCHECK" ./...) || fail=1
fi
exit $fail
