#!/bin/sh
# Checks the units with `systemd-analyze verify` against the binaries of a
# build (default target/debug): each unit copied with /usr/lib/xen-split
# replaced by that directory; any complaint fails.
# Usage: dom0-tools/systemd/verify.sh [BINDIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bindir=$(cd "${1:-$here/../../target/debug}" && pwd)
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in "$here"/*.service; do
    sed "s|/usr/lib/xen-split|$bindir|g" "$u" >"$tmp/$(basename "$u")"
done
out=$(cd "$tmp" && systemd-analyze verify ./*.service 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; exit 1; fi
echo "verify.sh: $(ls "$tmp" | tr '\n' ' ')OK"
