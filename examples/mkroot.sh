#!/usr/bin/env bash
# Builds a small real root file system for a PV guest from Debian's
# busybox-static (no download beyond Debian packages):
#   OUTDIR/pv-root.img    raw ext4 image (mkfs.ext4 -d), 64 MiB
#   OUTDIR/pv-root.qcow2  the same as qcow2 (qemu-img convert)
#   OUTDIR/pv-root.cpio   the same tree as a newc archive (a ramdisk)
# The root: /bin/busybox and its applet links, /etc/inittab for busybox
# init (rcS mounts what is missing, configures eth0 from the kernel
# command line's ip=CLIENT[::GW:NETMASK] when given, runs a shell on the
# console; poweroff/reboot at the prompt end the domain), /sbin/demo (what
# examples/demo.sh runs as init: it prints what it sees, writes
# /root/demo.txt and powers off).
# Usage: examples/mkroot.sh [OUTDIR]   (default: examples/). Needs root.
set -euo pipefail
# The image's modes are the root file system's, not the caller's umask.
umask 022
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
bb=/bin/busybox
if ! "$bb" --list-full >/dev/null 2>&1 || ! (ldd "$bb" 2>&1 || true) | grep -qE "not a dynamic|statically linked"; then
  echo "mkroot: $bb is not Debian's static busybox: apt-get install busybox-static (tests/setup-host.sh)" >&2
  exit 1
fi
for t in mkfs.ext4 qemu-img cpio; do
  command -v "$t" >/dev/null || { echo "mkroot: $t is missing (tests/setup-host.sh)" >&2; exit 1; }
done

root=$(mktemp -d "${TMPDIR:-/tmp}/pv-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,dev,proc,sys,tmp,run,root,mnt,var/log}
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for app in $("$bb" --list-full); do
  [ "$app" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$app")"
  ln -sf /bin/busybox "$root/$app"
done

cat >"$root/etc/inittab" <<'TAB'
# busybox init (no tty field: the console, hvc0)
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
TAB

cat >"$root/etc/init.d/rcS" <<'RCS'
#!/bin/sh
# The guest's boot script (run by busybox init).
# (Debian's busybox-static has no mountpoint applet.)
mounted() { grep -q "^[^ ]* $1 " /proc/mounts; }
[ -e /proc/mounts ] || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys 2>/dev/null
mounted /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
mounted /run || mount -t tmpfs -o mode=755 tmpfs /run
ip link set lo up 2>/dev/null
# Linux's ip=CLIENT:SERVER:GW:NETMASK:HOST:DEV:AUTOCONF from the kernel
# command line (it reaches init's environment); the runtime already gave
# eth0 the vif's ip= from xenstore.
if [ -n "$ip" ] && ip link show eth0 >/dev/null 2>&1; then
  client=$(echo "$ip" | cut -d: -f1)
  gw=$(echo "$ip" | cut -d: -f3)
  mask=$(echo "$ip" | cut -d: -f4)
  prefix=24
  [ -n "$mask" ] && prefix=$(ipcalc -p "$client" "$mask" | cut -d= -f2)
  ip addr add "$client/$prefix" dev eth0 2>/dev/null
  ip link set eth0 up
  [ -n "$gw" ] && ip route add default via "$gw"
fi
echo "pv-root: up on $(hostname), / is $(awk '$2 == "/" { print $1 " (" $3 ")" }' /proc/mounts | tail -1)"
RCS
chmod 755 "$root/etc/init.d/rcS"

cat >"$root/sbin/demo" <<'DEMO'
#!/bin/sh
# examples/demo.sh's init: what the guest machine looks like from inside.
/etc/init.d/rcS
mount -o remount,rw /
echo "demo: I am PID $$ on $(hostname) ($(uname -r)), running as $(id -un)"
echo "demo: / is $(awk '$2 == "/" { print $1 " " $3 " " $4 }' /proc/mounts | tail -1)"
echo "demo: my processes:"; ps -o pid,comm
echo "demo: /dev holds:"; ls /dev
echo "demo: eth0: $(ip -4 -o addr show eth0 2>/dev/null | awk '{print $4}')"
date >/root/demo.txt
echo "written by $(hostname) as PID $$" >>/root/demo.txt
sync
echo "demo: wrote /root/demo.txt; powering off"
poweroff -f
DEMO
chmod 755 "$root/sbin/demo"

echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'tty:x:5:' >>"$root/etc/group"
cat >"$root/etc/profile" <<'PROF'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='\h:\w\$ '
PROF

rm -f "$out/pv-root.img" "$out/pv-root.qcow2" "$out/pv-root.cpio"
truncate -s 64M "$out/pv-root.img"
mkfs.ext4 -q -F -L pv-root -E root_owner=0:0 -d "$root" "$out/pv-root.img"
qemu-img convert -f raw -O qcow2 "$out/pv-root.img" "$out/pv-root.qcow2"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$out/pv-root.cpio"
echo "mkroot: $out/pv-root.img, $out/pv-root.qcow2, $out/pv-root.cpio"
