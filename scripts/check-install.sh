#!/usr/bin/env bash
# Checks what `meson install` delivers, without touching the system:
#   1. the default build (prefix /usr/local) installed into a scratch
#      DESTDIR holds exactly the expected files, its man pages render
#      without a warning, its units run /usr/local/bin/interimap, and
#      systemd searches their directory ahead of the Perl package's;
#   2. a build configured with a scratch prefix, installed there for real:
#      `man` finds the pages, the
#      units pass `systemd-analyze verify`, --help names manual pages that
#      exist, and the sample configuration (as shipped, and with every
#      commented setting turned on) is accepted by this program and by the
#      Perl tool.
# Usage: scripts/check-install.sh [BUILD_DIR]   (default: build)
# Exit status is non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
scratch=$(mktemp -d /tmp/interimap-install.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

fail() {
    echo "check-install: $*" >&2
    exit 1
}

# --- 1. default prefix, staged in DESTDIR -------------------------------------
dest=$scratch/dest
DESTDIR=$dest meson install -C "$build" --quiet >/dev/null
expected="/usr/local/bin/interimap
/usr/local/lib/systemd/user/interimap.service
/usr/local/lib/systemd/user/interimap@.service
/usr/local/share/doc/interimap/config.sample
/usr/local/share/doc/interimap/configuration.md
/usr/local/share/doc/interimap/getting-started.md
/usr/local/share/doc/interimap/interimap.md
/usr/local/share/man/man1/interimap.1
/usr/local/share/man/man5/interimap.5"
got=$(cd "$dest" && find . -type f | sed 's/^\.//' | LC_ALL=C sort)
[ "$got" = "$expected" ] || fail "installed files differ from the expected list:
$(diff <(echo "$expected") <(echo "$got") || true)"
[ -x "$dest/usr/local/bin/interimap" ] || fail "the binary is not executable"
for unit in interimap.service interimap@.service; do
    f=$dest/usr/local/lib/systemd/user/$unit
    grep -qx 'ExecStart=/usr/local/bin/interimap .*--watch=60' "$f" ||
        fail "$unit does not run /usr/local/bin/interimap --watch=60"
    grep -qx 'Restart=on-failure' "$f" || fail "$unit lacks Restart=on-failure"
done
grep -q -- '--config=%i' "$dest/usr/local/lib/systemd/user/interimap@.service" ||
    fail "interimap@.service does not pass the instance as --config"
for page in "$dest/usr/local/share/man/man1/interimap.1" \
    "$dest/usr/local/share/man/man5/interimap.5"; do
    # the check Debian's lintian runs on manual pages
    warnings=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 \
        man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
    [ -z "$warnings" ] || fail "$page: $warnings"
done
if command -v systemd-analyze >/dev/null; then
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$scratch/run}
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
    paths=$(systemd-analyze --user unit-paths)
    echo "$paths" | grep -qx /usr/local/lib/systemd/user ||
        fail "systemd does not search /usr/local/lib/systemd/user for user units"
    first=$(echo "$paths" | grep -xm1 -e /usr/local/lib/systemd/user -e /usr/lib/systemd/user)
    [ "$first" = /usr/local/lib/systemd/user ] ||
        fail "systemd searches /usr/lib/systemd/user before /usr/local/lib/systemd/user"
fi

# --- 2. a scratch prefix, installed for real ------------------------------------
prefix=$scratch/prefix
meson setup "$scratch/build" --prefix="$prefix" >/dev/null
ninja -C "$scratch/build" src/interimap >/dev/null
meson install -C "$scratch/build" --no-rebuild --quiet
bin=$prefix/bin/interimap

for section in 1 5; do
    found=$(MANPATH=$prefix/share/man man -w "$section" interimap)
    [ "$found" = "$prefix/share/man/man$section/interimap.$section" ] ||
        fail "man -w $section interimap finds '$found'"
done
MANPATH=$prefix/share/man man 1 interimap 2>/dev/null | grep -q COMPATIBILITY ||
    fail "interimap(1) has no COMPATIBILITY section"

help=$("$bin" --help)
for path in "$prefix/share/man/man1/interimap.1" "$prefix/share/man/man5/interimap.5" \
    "$prefix/share/doc/interimap/getting-started.md"; do
    echo "$help" | grep -qF "$path" || fail "--help does not name $path"
    [ -f "$path" ] || fail "--help names $path, which is not installed"
done

if command -v systemd-analyze >/dev/null; then
    units=$prefix/lib/systemd/user
    # an instance of the template is verified under a concrete name
    cp "$units/interimap@.service" "$scratch/interimap@work.service"
    out=$(MANPATH=$prefix/share/man systemd-analyze verify --user \
        "$units/interimap.service" "$scratch/interimap@work.service" 2>&1) ||
        fail "systemd-analyze verify: $out"
    [ -z "$out" ] || fail "systemd-analyze verify: $out"
    grep -qx "ExecStart=$bin --watch=60" "$units/interimap.service" ||
        fail "interimap.service does not run $bin"
fi

# The sample configuration must be accepted. Reading it is all that is
# checked: with no data directory, both programs stop right after the
# file is parsed, before connecting anywhere, and say so.
home=$scratch/home
mkdir -p "$home/.config/interimap"
sample=$prefix/share/doc/interimap/config.sample
cp "$sample" "$home/.config/interimap/config"
sed -E 's/^#([A-Za-z_-]+ = )/\1/' "$sample" >"$home/.config/interimap/all"
grep -q '^SSL_fingerprint = ' "$home/.config/interimap/all" ||
    fail "no commented setting was turned on in the sample"
for name in config all; do
    rc=0
    out=$(env -i PATH=/usr/bin:/bin HOME="$home" "$bin" --config="$name" 2>&1) || rc=$?
    case "$out" in
    *"database: no such directory"*) ;;
    *) fail "the sample configuration ($name) is refused: $out" ;;
    esac
    [ "$rc" -eq 2 ] || fail "unexpected exit status $rc for the sample ($name)"
    if [ -x /usr/bin/interimap ]; then
        out=$(env -i PATH=/usr/bin:/bin HOME="$home" /usr/bin/interimap --config="$name" 2>&1) || true
        case "$out" in
        "No such directory: $home/.local/share"*) ;;
        *) fail "the Perl interimap refuses the sample ($name): $out" ;;
        esac
    fi
done
echo "check-install: ok ($(echo "$expected" | wc -l) files)"
