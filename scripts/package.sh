#!/usr/bin/env bash
# Builds the release binary and a Debian package from the repository
# alone (dpkg-deb, no other tool): dist/ferry_VERSION_ARCH.deb and
# dist/ferry-VERSION-linux-ARCH (the bare binary). The version is
# $VERSION, or `git describe` (a tag, or 0.0.0+g<commit> without one).
# Usage: [VERSION=1.2.3] [OUT=dist] scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-dist}
arch=$(go env GOARCH)
if [ -z "${VERSION:-}" ]; then
	if d=$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null); then
		VERSION=${d#v}
	else
		VERSION="0.0.0+g$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
		git diff --quiet HEAD 2>/dev/null || VERSION+=".dirty"
	fi
fi
# Debian versions: digits first, no '-' (that would start a revision).
deb_version=$(printf '%s' "$VERSION" | tr '-' '~')
case "$deb_version" in [0-9]*) ;; *) echo "package: version $VERSION must start with a digit" >&2; exit 1 ;; esac

mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
bin="$out/ferry-$VERSION-linux-$arch"
# The commit and its time go in explicitly (`ferry version`): the
# toolchain's own VCS stamp is absent in a git worktree or under
# GOFLAGS=-buildvcs=false.
commit=$(git rev-parse HEAD 2>/dev/null || true)
built=$(git log -1 --format=%cI 2>/dev/null || true)
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION -X main.commit=$commit -X main.built=$built" -o "$bin" ./cmd/ferry

root="$stage/root"
install -D -m 0755 "$bin" "$root/usr/bin/ferry"
install -D -m 0644 packaging/systemd/ferry-mmc.service "$root/usr/lib/systemd/system/ferry-mmc.service"
install -D -m 0644 packaging/systemd/ferry-agent.service "$root/usr/lib/systemd/system/ferry-agent.service"
install -D -m 0644 packaging/debian/sysusers.conf "$root/usr/lib/sysusers.d/ferry.conf"
install -D -m 0640 packaging/etc/mmc.yaml "$root/etc/ferry/mmc.yaml"
install -D -m 0640 packaging/etc/agent.yaml "$root/etc/ferry/agent.yaml"
doc="$root/usr/share/doc/ferry"
install -D -m 0644 README.md "$doc/README.md"
for f in docs/*.md; do install -D -m 0644 "$f" "$doc/$(basename "$f")"; done
install -D -m 0644 LICENSE "$doc/copyright"
for f in monitoring/*; do install -D -m 0644 "$f" "$root/usr/share/ferry/monitoring/$(basename "$f")"; done

install -d "$root/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm "$root/DEBIAN/"
printf '/etc/ferry/mmc.yaml\n/etc/ferry/agent.yaml\n' >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: ferry
Version: $deb_version
Architecture: $arch
Maintainer: Ferry developers <ferry@localhost>
Installed-Size: $size
Section: admin
Priority: optional
Recommends: qemu-system-x86, libvirt-daemon-system
Description: secure live migration of virtual machines between data centres
 Ferry moves running VMs between hosts and sites: replicated Migration
 Management Centers (ferry-mmc.service), a monitor and migration agent on
 every hypervisor host (ferry-agent.service), a policy engine that migrates
 when SLAs are violated, and SUDP, an encrypted reliable UDP transport that
 carries every message and migration stream.
CONTROL
deb="$out/ferry_${deb_version}_$arch.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
