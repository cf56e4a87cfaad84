#!/usr/bin/env bash
# Installs what the test suite and the demo need on a fresh Debian machine.
# Idempotent; needs root (or sudo). Called by tests/run.sh and .ci/run.
set -euo pipefail

packages=(
  gcc                # builds the C side of the ABI layout test
  libxen-dev         # Xen's public headers: the reference for every ABI struct
  xenstore-utils     # Xen's xenstore-* clients: compatibility tests of xenstored (xenstore/cli, xenstore/xenstored); copied into PV guests by frontend-drivers/pv-runtime's xenbus_dev and containment tests
  xen-utils-4.17     # Xen's test-xenstore and C xenstored: compatibility tests and xsbench's reference; verify-stream-v2: xen-stream and the xl save tests check our save files with it
  python3            # TCP echo client (hypervisor-shim/vmm), http.server in PV guests (frontend-drivers/pv-runtime, tests/netbench)
  python3-pyxs       # a Python xenstore client: compatibility tests of xenstored (xenstore/client)
  e2fsprogs          # mkfs.ext4/fsck.ext4 on the PV guest's /dev/xvda block file (frontend-drivers/pv-runtime)
  mount              # losetup, mount -o loop: the PV disk tests (frontend-drivers/pv-runtime)
  iproute2           # ip netns/link/addr: the PV NIC tests' namespaces and bridges (frontend-drivers/pv-runtime, backend-drivers/netback, tests/netbench)
  iputils-ping       # ping over the PV NIC (frontend-drivers/pv-runtime) and of the PVHVM guest (hypervisor-shim/vmm)
  iperf3             # TCP throughput over the PV NIC and the veth reference (frontend-drivers/pv-runtime, tests/netbench)
  curl               # a 1 GiB HTTP download over the PV NIC (frontend-drivers/pv-runtime); the PVHVM guest's HTTP responder (hypervisor-shim/vmm, tests/netbench)
  fio                # verified random I/O on the PV disk's block file (frontend-drivers/pv-runtime); blkbench's reference (tests/blkbench)
  qemu-utils         # qemu-img, qemu-io, qemu-nbd: qcow2 images and NBD exports for blkback's engines (backend-drivers/blkback) and the qcow2/NBD e2e tests (frontend-drivers/pv-runtime)
  busybox-static     # the root file system of examples/mkroot.sh (the PV root guest of examples/pv-root.cfg, the demo and frontend-drivers/pv-runtime's pvroot_e2e)
  cpio               # the ramdisk (newc archive) of examples/mkroot.sh; the initramfs reader's tests (frontend-drivers/pv-runtime)
  nbdkit             # a second NBD server (TCP, error filter) for blkback's NBD engine tests (backend-drivers/blkback)
  prometheus         # promtool check metrics and a real Prometheus scraping `xl metrics` (dom0-tools/xl tests/monitor_e2e.rs)
  xen-utils-common   # Xen's /etc/xen/xlexample.* configs that `xl create -n` must read (dom0-tools/xl tests/monitor_e2e.rs)
  ceph-mon           # the one-node Ceph cluster (tests/ceph-one.sh) of the RBD engine's tests: its monitor (backend-drivers/blkback, frontend-drivers/pv-runtime, tests/blkbench)
  ceph-osd           # that cluster's in-memory OSD
  ceph-common        # ceph/rbd CLIs: pool and image set-up, `rbd export` of the RBD e2e tests
  librbd-dev         # librbd.so/librados.so (link names) and headers: blkback's RBD engine links them (backend-drivers/blkback/src/io/rbd.rs)
  fonts-dejavu-core  # DejaVuSans.ttf: the text of tests/perfreport's PNG plots (plotters with ab_glyph, no fontconfig)
  systemd            # systemd-analyze verify of the units in dom0-tools/systemd (dom0-tools/xl's systemd_units test); Debian's init, already there on a Debian host
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "setup-host: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
