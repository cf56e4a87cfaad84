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

log=${XEN_CONSOLE_LOGDIR:-/var/log/xen/console}/guest-pv-root-demo.log
# The console log is appended to (as xenconsoled's): read this boot's part.
start=$(stat -c %s "$log" 2>/dev/null || echo 0)
this_boot() { tail -c +$((start + 1)) "$log" 2>/dev/null; }

echo "== xl create examples/pv-root-demo.cfg"
"$xl" create examples/pv-root-demo.cfg
"$xl" list
"$xl" block-list pv-root-demo

for _ in $(seq 120); do
  this_boot | grep -q "pvguest shutdown" && break
  sleep 0.5
done
echo "== the guest's console ($log)"
this_boot

# The guest powered off: xl's monitor destroys it (on_poweroff = "destroy",
# the default), so it may be gone already.
"$xl" destroy pv-root-demo 2>/dev/null || true
"$xl" list

echo "== Dom0 checks the image"
fsck.ext4 -n -f examples/pv-root.img
debugfs -R 'cat /root/demo.txt' examples/pv-root.img
this_boot | grep -q "pvguest shutdown reason=poweroff"
debugfs -R 'cat /root/demo.txt' examples/pv-root.img 2>/dev/null | grep -q "written by pv-root-demo as PID 1"
echo "demo: OK"
