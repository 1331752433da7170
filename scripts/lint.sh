#!/usr/bin/env bash
# Fails on any formatting difference from .clang-format and on any
# clang-tidy warning under .clang-tidy. Needs a configured build directory
# (for compile_commands.json): scripts/lint.sh [BUILD_DIR], default build.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mapfile -t sources < <(git ls-files '*.c' '*.h')
echo "lint: clang-format on ${#sources[@]} files"
clang-format --dry-run -Werror "${sources[@]}"
mapfile -t units < <(git ls-files 'src/*.c')
echo "lint: clang-tidy on ${#units[@]} files"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
printf '%s\n' "${units[@]}" |
    xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet 2>/dev/null >"$out" || true
if grep -E '(warning|error):' "$out"; then
    echo "lint: clang-tidy reported the warnings above" >&2
    exit 1
fi
echo "lint: clean"
