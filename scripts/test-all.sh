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
# A short fuzzing run of every fuzz target, when clang's libFuzzer is
# installed: new inputs go to a scratch copy of each corpus, never into the
# repository.
if command -v clang >/dev/null &&
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
    clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
    rm -rf build-fuzz # a scratch build: set up afresh, whatever options it had
    CC=clang meson setup build-fuzz -Dfuzzing=true >/dev/null
    ninja -C build-fuzz
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    for target in fuzz_parser fuzz_utf7 fuzz_response fuzz_uidset fuzz_config; do
        cp -r "tests/fuzz/corpus/$target" "$scratch/$target"
        dict=()
        [ -f "tests/fuzz/$target.dict" ] && dict=("-dict=tests/fuzz/$target.dict")
        "build-fuzz/tests/fuzz/$target" -max_total_time=20 -print_final_stats=1 "${dict[@]}" \
            "$scratch/$target"
    done
else
    echo "clang's libFuzzer is not installed: no fuzzing run"
fi
