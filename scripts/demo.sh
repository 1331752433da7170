#!/usr/bin/env bash
# The main job on an embedded default: installs dependencies, builds, starts
# two private Dovecot servers (local and remote) on loopback ports, fills the
# local one with sample mail, synchronizes them with interimap and shows
# both sides. Servers and data live in a temporary folder, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_DEPS:-}" ] || ./scripts/install-deps.sh --tests
[ -d build ] || meson setup build
ninja -C build
dir=$(mktemp -d /tmp/interimap-demo.XXXXXX)
trap 'python3 tests/fixtures/servers.py stop "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
python3 tests/fixtures/servers.py start "$dir" --populate 1
echo "== first run: copies the sample mail from local to remote"
build/src/interimap --config "$dir/config"
echo "== second run: nothing to do"
build/src/interimap --config "$dir/config"
python3 tests/fixtures/servers.py show "$dir"
