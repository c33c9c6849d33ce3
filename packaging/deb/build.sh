#!/usr/bin/env bash
# Builds target/deb/traverse_<version>_<arch>.deb with dpkg-deb, Debian's own packaging tool: the binary (debug
# information stripped), a systemd unit running it unprivileged with CAP_NET_BIND_SERVICE, a default configuration in
# /etc/traverse/ (a conffile: an upgrade keeps local changes), and a `traverse` system user made at install.
#
#   packaging/deb/build.sh                                      # cargo build --profile dist, then the package
#   TRAVERSE_BIN=target/debug/traverse packaging/deb/build.sh   # package a binary already built (CI: no second build)
#
# Prints the package's path on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
arch="$(dpkg --print-architecture)"
bin="${TRAVERSE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --profile dist -p traverse >&2
  bin="${CARGO_TARGET_DIR:-$root/target}/dist/traverse"
fi

out="${CARGO_TARGET_DIR:-$root/target}/deb"
stage="$out/traverse_${version}_${arch}"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/traverse" \
  "$stage/usr/share/doc/traverse"

install -m 0755 "$bin" "$stage/usr/bin/traverse"
# The shipped binary carries no debug information (the release profile keeps some for profiling).
strip --strip-debug "$stage/usr/bin/traverse"
install -m 0644 packaging/systemd/traverse.service "$stage/lib/systemd/system/traverse.service"
install -m 0644 packaging/deb/traverse.toml "$stage/etc/traverse/traverse.toml"
install -m 0644 traverse.example.toml README.md "$stage/usr/share/doc/traverse/"
cat > "$stage/usr/share/doc/traverse/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: traverse
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

size_kib="$(du -sk "$stage" | cut -f1)"
# The newest glibc symbol version the binary links against: the package's libc6 dependency.
glibc="$(objdump -T "$stage/usr/bin/traverse" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: traverse
Version: $version
Architecture: $arch
Maintainer: Traverse developers <traverse@example.org>
Installed-Size: $size_kib
Depends: libc6 (>= $glibc), passwd
Section: net
Priority: optional
Homepage: https://github.com/traverse-rtc/traverse
Description: WebRTC signaling, STUN and TURN in one server
 Traverse gets two WebRTC peers connected: rooms over WebSocket, STUN, and TURN
 over UDP, TCP and TLS, on one port if need be, with short-lived credentials, a
 browser SDK, and a network doctor that says in plain words why a call fails.
CONTROL
echo "/etc/traverse/traverse.toml" > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group traverse >/dev/null || groupadd --system traverse
  getent passwd traverse >/dev/null || useradd --system --gid traverse --no-create-home \
    --home-dir /var/lib/traverse --shell /usr/sbin/nologin --comment "Traverse server" traverse
  # At the first install: a TURN REST secret that survives restarts (a generated one would change every start), and
  # a join-token secret, so that the server started below hands TURN credentials only to holders of a join token
  # (without one, anyone reaching it could). Readable by the service only, as is the configuration.
  if [ ! -e /etc/traverse/traverse.env ]; then
    umask 077
    gen() { head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='; }
    cat > /etc/traverse/traverse.env <<ENV
# Secrets for traverse.service (EnvironmentFile=), read by root and the traverse group only.
# TURN credentials: traverse credentials (reads TRAVERSE_SECRETS from the environment).
TRAVERSE_SECRETS=$(gen)
# Join tokens for rooms (your backend mints them, or: traverse token --room NAME); remove it to open rooms to anyone.
TRAVERSE_SIGNAL_SECRET=$(gen)
ENV
    chown root:traverse /etc/traverse/traverse.env
    chmod 0640 /etc/traverse/traverse.env
    chown root:traverse /etc/traverse/traverse.toml
    chmod 0640 /etc/traverse/traverse.toml
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable traverse.service >/dev/null || true
    systemctl restart traverse.service >/dev/null || true
  fi
fi
exit 0
POSTINST

cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl disable --now traverse.service >/dev/null || true
fi
exit 0
PRERM

cat > "$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -f /etc/traverse/traverse.env
  rmdir /etc/traverse 2>/dev/null || true
  rm -rf /var/lib/traverse
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
exit 0
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

dpkg-deb --root-owner-group --build "$stage" "$out" >&2
echo "$out/traverse_${version}_${arch}.deb"
