#!/usr/bin/env bash
# Installs dependencies, builds (plain and sanitized), runs every test
# suite, and checks what `meson install` delivers (scripts/check-install.sh).
# Exit status is non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --tests
meson setup build --wipe -Dwerror=true >/dev/null 2>&1 || meson setup build -Dwerror=true
ninja -C build
./scripts/lint.sh build
./scripts/check-install.sh build
meson test -C build --print-errorlogs --num-processes 2
meson setup build-asan --wipe -Dwerror=true -Db_sanitize=address,undefined \
    -Db_lundef=false >/dev/null 2>&1 ||
    meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --print-errorlogs --num-processes 2 --suite unit --suite fuzz \
    --suite transcript --suite integration
