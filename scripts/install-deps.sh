#!/usr/bin/env bash
# Installs the Debian 12 packages interimap needs (run as root, or through
# sudo).
#
#   scripts/install-deps.sh           to build, install and run it
#   scripts/install-deps.sh --tests   the same, plus what the tests, the
#                                     demo and the benchmark need
set -euo pipefail

# Building and running: the compiler and build tools, and the five
# libraries (their -dev packages pull in the shared libraries the program
# runs with).
build_deps=(
    meson ninja-build pkg-config gcc
    libuv1-dev libssl-dev libsqlite3-dev zlib1g-dev libpcre2-dev
)

# Tests (scripts/test-all.sh), scripts/demo.sh and bench/: real Dovecot
# servers and certificates made at test time, the Perl interimap and mbsync
# (isync) to compare with, a SOCKS5 proxy, clang for the fuzz targets,
# clang-format and clang-tidy for scripts/lint.sh, man and systemd-analyze
# for the installation check, /usr/bin/time for memory measurements. Cyrus
# comes after these (see below).
test_deps=(
    dovecot-imapd openssl ca-certificates python3 sqlite3
    interimap isync microsocks clang libclang-rt-14-dev clang-format clang-tidy
    man-db groff-base systemd time
)

packages=("${build_deps[@]}")
tests=
case "${1:-}" in
--tests)
    packages+=("${test_deps[@]}")
    tests=1
    ;;
"") ;;
*)
    echo "usage: $0 [--tests]" >&2
    exit 2
    ;;
esac

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${packages[@]}"
[ "$tests" ] || exit 0

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

# Tests only: Courier-IMAP, a real server with neither CONDSTORE nor
# QRESYNC. Debian's courier-imap conflicts with dovecot-imapd (both provide
# imap-server), so its packages are unpacked, not installed, where the test
# fixture (tests/fixtures/imapfixture/courier.py) looks for them; the
# fixture runs its imapd pre-authenticated, so no authdaemon is needed.
COURIER_DEPS="libcourier-unicode4 libgamin0 libltdl7"
if $SUDO apt-get install -s --no-install-recommends $COURIER_DEPS | grep -q '^Remv'; then
    echo "install-deps: installing $COURIER_DEPS would remove packages; not done" >&2
    exit 1
fi
$SUDO apt-get install -y --no-install-recommends $COURIER_DEPS
COURIER_ROOT=/usr/local/lib/interimap-test/courier-imap
COURIER_VERSION=$(apt-cache policy courier-imap | awk '/Candidate:/ {print $2}')
if [ "$(cat "$COURIER_ROOT/VERSION" 2>/dev/null)" != "$COURIER_VERSION" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "courier-imap=$COURIER_VERSION" courier-base \
        courier-authlib)
    $SUDO rm -rf "$COURIER_ROOT"
    $SUDO mkdir -p "$COURIER_ROOT"
    for deb in "$tmp"/*.deb; do
        $SUDO dpkg-deb -x "$deb" "$COURIER_ROOT"
    done
    echo "$COURIER_VERSION" | $SUDO tee "$COURIER_ROOT/VERSION" >/dev/null
    rm -rf "$tmp"
fi
