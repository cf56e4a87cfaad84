#!/usr/bin/env bash
# The demo: builds the stack and a busybox root image (examples/mkroot.sh),
# boots it as a PV guest with `xl create examples/pv-root-demo.cfg` (xl
# starts xen-shimd, xenstored and backendd when none run): the guest's
# kernel (the PV runtime) connects its disk and NIC, mounts the disk as the
# guest's / and runs its init (/sbin/demo, PID 1 in the guest's own
# namespaces), which shows what it sees, writes a file and powers off.
# Dom0 then finds the file in the image. Needs root, /dev/fuse and loop
# devices. For the interactive machine: xl create -c examples/pv-root.cfg
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup-host.sh
cargo build --release --locked -p xen-xl -p xen-backendd -p xen-pvguest -p xen-shimd -p xenstored --bins
xl=target/release/xl

examples/mkroot.sh examples
"$xl" destroy pv-root-demo >/dev/null 2>&1 || true

echo "== xl create examples/pv-root-demo.cfg"
"$xl" create examples/pv-root-demo.cfg
"$xl" list
"$xl" block-list pv-root-demo

log=${XEN_CONSOLE_LOGDIR:-/var/log/xen/console}/guest-pv-root-demo.log
for _ in $(seq 120); do
  grep -qE "pvguest shutdown" "$log" && break
  sleep 0.5
done
echo "== the guest's console ($log)"
cat "$log"

# The guest powered off: xl's monitor destroys it (on_poweroff = "destroy",
# the default), so it may be gone already.
"$xl" destroy pv-root-demo 2>/dev/null || true
"$xl" list

echo "== Dom0 checks the image"
fsck.ext4 -n -f examples/pv-root.img
debugfs -R 'cat /root/demo.txt' examples/pv-root.img
grep -q "pvguest shutdown reason=poweroff" "$log"
debugfs -R 'cat /root/demo.txt' examples/pv-root.img 2>/dev/null | grep -q "written by pv-root-demo as PID 1"
echo "demo: OK"
