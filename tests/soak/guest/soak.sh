#!/bin/sh
# The soak's guest init (tests/soak), written into the base image as
# /sbin/soak and run as PID 1 (init=/sbin/soak). Its settings come from
# the kernel command line (init's environment): soak_slots, soak_pause.
#
# Disk: numbered 4 KiB records on /dev/xvdb (raw, no file system), record
# N in slot N mod soak_slots, its line "soakrec HOSTNAME N" repeated; each
# written with fsync, then `ack N` on the console; after each write an
# older record is read back (O_DIRECT) and compared (`verify-error J` if
# it differs, `io-error ...` if a read or write fails).
# Network: port 7001 answers the sha256 of what it receives (until the
# sender's half-close), port 7002 sends /tmp/blob (its sha256 printed as
# `soak-blob SHA`), a connection to port 7003 stops the writer
# (`soak-stopped LAST`); the guest then idles, still serving 7001/7002.
/etc/init.d/rcS >/dev/null 2>&1
n=$(hostname)
slots=${soak_slots:-1024}
pause=${soak_pause:-1}
head -c 131072 /dev/urandom >/tmp/blob
printf '#!/bin/sh\nsha256sum | cut -d" " -f1\n' >/tmp/rx
printf '#!/bin/sh\ncat /tmp/blob\n' >/tmp/tx
printf '#!/bin/sh\ntouch /tmp/stop\necho stopping\n' >/tmp/stopper
chmod 755 /tmp/rx /tmp/tx /tmp/stopper
nc -ll -p 7001 -e /tmp/rx </dev/null >/dev/null 2>&1 &
nc -ll -p 7002 -e /tmp/tx </dev/null >/dev/null 2>&1 &
nc -ll -p 7003 -e /tmp/stopper </dev/null >/dev/null 2>&1 &
echo "soak-blob $(sha256sum /tmp/blob | cut -d' ' -f1)"
# Record N: its line "soakrec HOSTNAME N" repeated, cut at 4 KiB (built
# by doubling: `yes | head` never ends here, SIGPIPE being ignored).
rec() {
  r="soakrec $n $1
"
  while [ ${#r} -lt 4096 ]; do r="$r$r"; done
  printf '%s' "$r" | head -c 4096
}
echo soak-ready
i=1
while [ ! -e /tmp/stop ]; do
  if ! rec $i | dd of=/dev/xvdb bs=4096 seek=$((i % slots)) count=1 conv=notrunc,fsync 2>/tmp/err; then
    echo "io-error write $i $(head -c 200 /tmp/err)"
    sleep 1
    continue
  fi
  echo "ack $i"
  # An older record still in its slot: one of the last min(i, slots).
  w=$i
  [ $w -gt $slots ] && w=$slots
  j=$((i - RANDOM % w))
  if dd if=/dev/xvdb of=/tmp/rb bs=4096 skip=$((j % slots)) count=1 iflag=direct 2>/tmp/err; then
    a=$(md5sum </tmp/rb)
    b=$(rec $j | md5sum)
    [ "$a" = "$b" ] || echo "verify-error $j"
  else
    echo "io-error read $j $(head -c 200 /tmp/err)"
  fi
  i=$((i + 1))
  sleep "$pause"
done
echo "soak-stopped $((i - 1))"
while :; do sleep 3600; done
