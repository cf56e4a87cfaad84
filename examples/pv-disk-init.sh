#!/bin/sh
# The PV guest's init for examples/pv-disk.cfg: runs inside the guest, where
# /dev/xvda is the PV disk (blkfront <-> backendd's blkback over the shim).
set -e
echo "guest: /dev/xvda is $(stat -c %s /dev/xvda) bytes"
mkfs.ext4 -q -F /dev/xvda
echo "guest: mkfs.ext4 /dev/xvda done"
m=$(mktemp -d)
mount -o loop /dev/xvda "$m"
echo "hello from a PV guest, written through blkfront at $(date -u +%FT%TZ)" > "$m/hello.txt"
dd if=/dev/urandom of="$m/payload" bs=1M count=32 status=none
(cd "$m" && sha256sum payload > payload.sha256)
sync
umount "$m"
mount -o loop,ro /dev/xvda "$m"
(cd "$m" && sha256sum -c payload.sha256 >/dev/null) && echo "guest: 32 MiB written, unmounted, remounted, checksum OK"
cat "$m/hello.txt"
umount "$m"
rmdir "$m"
fsck.ext4 -n -f /dev/xvda >/dev/null && echo "guest: fsck.ext4 -n clean"
echo "guest: pv-disk demo done"
