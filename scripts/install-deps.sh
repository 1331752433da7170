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
