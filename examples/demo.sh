#!/usr/bin/env bash
# The demo: builds the stack, boots the PV guest of examples/pv-disk.cfg with
# `xl create` (which starts xen-shimd, xenstored and backendd when none run),
# shows what the guest did on its PV disk, destroys it and checks the image
# from Dom0. Needs root, /dev/fuse and loop devices.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup-host.sh
cargo build --release --locked -p xen-xl -p xen-backendd -p xen-pvguest -p xen-shimd -p xenstored --bins
xl=target/release/xl

img=examples/pv-disk.img
rm -f "$img" && truncate -s 256M "$img"
"$xl" destroy pv-disk >/dev/null 2>&1 || true

echo "== xl create examples/pv-disk.cfg"
"$xl" create examples/pv-disk.cfg
"$xl" list
"$xl" block-list pv-disk

log=${XEN_CONSOLE_LOGDIR:-/var/log/xen/console}/guest-pv-disk.log
for _ in $(seq 120); do
  grep -qE "pv-disk demo done|FAIL|rror" "$log" && break
  sleep 0.5
done
echo "== the guest's output ($log)"
cat "$log"

# The guest powers off when its init is done: xl's monitor destroys it then
# (on_poweroff = "destroy", the default), so it may be gone already.
echo "== xl destroy pv-disk"
"$xl" destroy pv-disk 2>/dev/null || true
"$xl" list

echo "== Dom0 checks the image"
fsck.ext4 -n -f "$img"
grep -q "pv-disk demo done" "$log"
echo "demo: OK"
