#!/usr/bin/env bash
# Installs the Debian 12 packages needed to build interimap and run its
# tests (run as root, or through sudo).
set -euo pipefail
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    meson ninja-build pkg-config gcc clang libclang-rt-14-dev \
    libuv1-dev libssl-dev libsqlite3-dev zlib1g-dev libpcre2-dev \
    dovecot-imapd openssl microsocks interimap sqlite3 python3 ca-certificates time \
    clang-format clang-tidy

# Tests only: Cyrus IMAP as a second real server. Debian's cyrus-imapd
# conflicts with dovecot-imapd (both provide imap-server), so it is not
# installed: its imapd and idled are unpacked where the test fixture
# (tests/fixtures/imapfixture/cyrus.py) looks for them; the rest of Cyrus
# comes from packages that can be installed next to Dovecot.
CYRUS_PKGS="cyrus-common cyrus-admin sasl2-bin"
if $SUDO apt-get install -s --no-install-recommends $CYRUS_PKGS | grep -q '^Remv'; then
    echo "install-deps: installing $CYRUS_PKGS would remove packages; not done" >&2
    exit 1
fi
$SUDO apt-get install -y --no-install-recommends $CYRUS_PKGS
CYRUS_ROOT=/usr/local/lib/interimap-test/cyrus-imapd
CYRUS_VERSION=$(dpkg-query -W -f='${Version}' cyrus-common)
if [ "$(cat "$CYRUS_ROOT/VERSION" 2>/dev/null)" != "$CYRUS_VERSION" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "cyrus-imapd=$CYRUS_VERSION")
    $SUDO rm -rf "$CYRUS_ROOT"
    $SUDO mkdir -p "$CYRUS_ROOT"
    $SUDO dpkg-deb -x "$tmp"/cyrus-imapd_*.deb "$CYRUS_ROOT"
    echo "$CYRUS_VERSION" | $SUDO tee "$CYRUS_ROOT/VERSION" >/dev/null
    rm -rf "$tmp"
fi
