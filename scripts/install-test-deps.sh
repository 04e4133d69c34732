#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (run as root).
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# libvirt: the libvirt driver's tests run the system libvirtd (and a second one
# in a mount namespace); util-linux has unshare and nsenter; systemd has
# systemd-analyze and systemd-sysusers, which the package test uses (it is
# only installed, never started); git stamps the package's version; chromium
# runs the web console's browser tests (headless, driven by chromedp).
for pkg in iproute2 nftables iperf3 iputils-ping qemu-system-x86 qemu-utils binutils \
	libvirt-daemon-system libvirt-clients util-linux systemd git chromium; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-test-deps: need root to apt-get install ${need_apt[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
	echo "install-test-deps: Go is not on PATH (expected /usr/local/go/bin)" >&2
	exit 1
fi
# staticcheck is pinned; installed into GOBIN (default ~/go/bin).
STATICCHECK="$(go env GOPATH)/bin/staticcheck"
if ! "$STATICCHECK" -version 2>/dev/null | grep -q "0.8.2"; then
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
go mod download
