//! The containment suite: a PV guest's root user tries to reach what is
//! not its own, and every attempt is refused while the host and a second
//! running guest carry on.
//!
//! The probe guest boots `examples/mkroot.sh`'s busybox root (a copy with
//! `/sbin/probe` as busybox init's `sysinit`, its inputs in
//! `/etc/probe.env`, written with `debugfs`; a second ext4 disk `xvdb`),
//! with a vif on a bridge of a "Dom0" network namespace. A second guest
//! (another copy of the root with a marker file, a heartbeat shell loop as
//! init, a vif on the same bridge) runs meanwhile. Each attempt prints
//! `probe NAME refused|ESCAPED DETAIL`; each thing guest root may do on its
//! own machine prints `probe NAME ok|FAILED DETAIL`. The attempts: read a
//! host canary file (by path, through the process roots it sees, through
//! the host's disk `mknod`ed and mounted), list and signal a host canary
//! `sleep`, open the other domain's memory files and list the shim's
//! directory, find the shim's and xenstored's sockets, write the other
//! domain's xenstore nodes (its `data/`, its `device/` nodes, their
//! permissions) and ask what only Dom0 may (`XS_INTRODUCE`, `XS_RELEASE`)
//! over its own ring through `/dev/xen/xenbus` (Debian's xenstore-utils
//! and raw packets), write to the other guest's console, `mknod` a loop device and
//! mount the loop devices to find the other guest's root, write a host
//! `/proc/sys` knob, load a module, take the bridge down and delete the
//! other guest's vif, a fork bomb (the domain's pids limit), a memory hog
//! (the OOM killer takes the hog, the probe goes on), a CPU hog with
//! `vcpus = 1` (the domain's cgroup CPU time over wall time stays at one
//! CPU). Guest root's own powers: `ip` on its `eth0`, its hostname,
//! mounting proc, sysfs and tmpfs, writing its own disk; its root files are
//! uid 0 and what it writes lands in the image owned by uid 0 (the
//! idmapped root), `mount /dev/xvdb` (made on its behalf).
//!
//! A second test, [`test_guest_root_mounts_its_own_disks_and_nothing_else`],
//! drives the mounts made on the guest's behalf (`src/mountd.rs`): `mkfs`,
//! `mount`, a file written, `umount`, found by Dom0 in the image as uid 0's;
//! and the mounts refused: a planted node of a host loop device, its
//! `mknod`, another guest's image path, `/dev/loop0`, a type not allowed,
//! the host node planted on its own disk (`nodev`) and a remount to clear
//! `nodev`.
//!
//! The table of results is printed whatever happens (run it against an
//! older runtime to see what escapes there). Needs root, busybox-static,
//! e2fsprogs, iproute2, xenstore-utils (tests/setup-host.sh).

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xen_testhost::net::{bridge_ports, make_bridge, start_backendd_in, Netns};
use xen_testhost::{stdout_of, Dom0};
use xenstore_client::XsOps;

mod common;
use common::{image_with, text_file, xenstore_tools};

const STEP: Duration = Duration::from_secs(60);
/// The whole probe (the fork bomb and the hogs included).
const PROBE_TIME: Duration = Duration::from_secs(240);

/// The probe: busybox init's `sysinit` in the probe guest.
const PROBE: &str = r#"#!/bin/sh
# The containment probe; see tests/containment.rs.
. /etc/probe.env
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
say() { echo "probe $*"; }
# NAME DETAIL COMMAND...: refused when the command fails.
refused_if() {
  n=$1; d=$2; shift 2
  if out=$("$@" 2>&1); then
    say "$n ESCAPED $d: $(echo $out | head -c 160)"
  else
    say "$n refused $d: $(echo $out | head -c 160)"
  fi
}
say start uid=$(id -u) gid=$(id -g) uid_map=$(awk '{print $1":"$2":"$3}' /proc/self/uid_map | tr '\n' ' ')

refused_if read-host-file "$CANARY" cat "$CANARY"
esc=
for p in /proc/[0-9]*; do [ -r "$p/root$CANARY" ] && esc="$esc $p"; done
if [ -n "$esc" ]; then say read-host-file-via-proc ESCAPED "$esc"; else say read-host-file-via-proc refused "no process root holds it"; fi
if ps -o pid,args | grep -v grep | grep -q "sleep $SLEEP_ARG"; then say list-host-process ESCAPED "sleep $SLEEP_ARG listed"; else say list-host-process refused "not in ps"; fi
refused_if signal-host-process "pid $SLEEP_PID" kill -0 "$SLEEP_PID"

refused_if list-shim-memory-dir "$SHM_DIR" ls "$SHM_DIR"
for f in $OTHER_FILES; do refused_if open-other-domain-file "$f" head -c 16 "$f"; done
for s in "$SHIM_SOCK" "$XS_SOCK"; do refused_if find-dom0-socket "$s" test -e "$s"; done
# Its xenstore device (/dev/xen/xenbus, Debian's xenstore-utils copied in):
# its own nodes are its own; another domain's, and what only Dom0 may do,
# xenstored refuses over the guest's ring.
if out=$(xenstore-write data/probe-own mine 2>&1) && [ "$(xenstore-read data/probe-own 2>&1)" = mine ]; then say own-xenstore ok "wrote and read data/probe-own"; else say own-xenstore FAILED "$out"; fi
O=/local/domain/$OTHER_ID
refused_if xs-chmod-other-device "$O/device/vbd/51712" xenstore-chmod "$O/device/vbd/51712" b0
refused_if xs-chmod-other-data "$O/data" xenstore-chmod "$O/data" b0
# A raw packet on a handle of its own: TYPE, PAYLOAD (printf format);
# prints the reply's capitals (an error's name, or OK).
xs_raw() {
  n=$(printf "$2" | wc -c)
  exec 3<>/dev/xen/xenbus || return 1
  printf "$(printf '\\%03o' $1)\000\000\000\001\000\000\000\000\000\000\000$(printf '\\%03o' $n)\000\000\000$2" >&3
  dd bs=4096 count=1 <&3 2>/dev/null | tr -c 'A-Z' ' ' | tr -s ' '
  exec 3<&-
}
# XS_WRITE (11), XS_RM (13), XS_INTRODUCE (8), XS_RELEASE (9).
for t in "xs-write-other-data 11 $O/data/x\000evil" \
  "xs-write-other-device 11 $O/device/vbd/51712/state\0006" \
  "xs-rm-other-device 13 $O/device/vif/0\000" \
  "xs-introduce 8 $OTHER_ID\000123\0001\000" "xs-release 9 $OTHER_ID\000"; do
  set -- $t
  r=$(xs_raw $2 "$3")
  case "$r" in *EACCES*|*EPERM*) say $1 refused "$r" ;; *) say $1 ESCAPED "reply: $r" ;; esac
done
for t in /dev/pts/[0-9]* /dev/console /dev/hvc0; do [ -c "$t" ] && echo "probe-intruder" > "$t" 2>/dev/null; done
say other-console checked "wrote the intruder mark to every tty it has"

mkdir -p /tmp/hd
if mknod /tmp/hostdisk b $HOST_MAJ $HOST_MIN 2>/tmp/mknod.err; then
  refused_if mount-host-disk "b $HOST_MAJ:$HOST_MIN" sh -c "mount -o ro /tmp/hostdisk /tmp/hd && cat /tmp/hd$CANARY"
  umount /tmp/hd 2>/dev/null
else
  say mount-host-disk refused "mknod b $HOST_MAJ:$HOST_MIN: $(cat /tmp/mknod.err)"
fi
refused_if mknod-loop-device "b 7 0" mknod /tmp/loop0 b 7 0
# The other guest's root through the loop devices (its image holds a marker).
esc=
mkdir -p /tmp/lm
for m in 0 1 2 3 4 5 6 7; do
  mknod /tmp/lp$m b 7 $m 2>/dev/null || continue
  if mount -o ro /tmp/lp$m /tmp/lm 2>/dev/null; then
    [ -e /tmp/lm/etc/other-marker ] && esc="$esc loop$m:$(cat /tmp/lm/etc/other-marker)"
    umount /tmp/lm
  fi
done
if [ -n "$esc" ]; then say read-other-guest-root ESCAPED "$esc"; else say read-other-guest-root refused "no loop device reaches it"; fi
v=$(cat /proc/sys/kernel/printk | tr -s ' \t' ' ')
refused_if write-host-sysctl "kernel/printk (its own value)" sh -c "echo '$v' > /proc/sys/kernel/printk"
head -c 4096 /dev/zero > /tmp/x.ko
out=$(insmod /tmp/x.ko 2>&1)
# EPERM: no CAP_SYS_MODULE; ENOSYS ("does not support"): a kernel without
# module loading. Anything else means the kernel read the module.
case "$out" in
  *"not permitted"*|*"does not support"*) say load-module refused "$out" ;;
  *) say load-module ESCAPED "$out" ;;
esac
refused_if bridge-down "$BRIDGE" ip link set "$BRIDGE" down
refused_if delete-other-vif "$OTHER_VIF" ip link del "$OTHER_VIF"

if ip link set eth0 down && ip addr add 10.79.0.2/24 dev eth0 && ip link set eth0 up && ip -4 -o addr show eth0 | grep -q 10.79.0.2; then say own-eth0 ok; else say own-eth0 FAILED; fi
if hostname probe-renamed && [ "$(hostname)" = probe-renamed ]; then say own-hostname ok; else say own-hostname FAILED; fi
mkdir -p /tmp/p /tmp/s /tmp/t
if out=$(mount -t proc proc /tmp/p 2>&1) && [ -e /tmp/p/self/status ]; then say own-proc ok; else say own-proc FAILED "$out"; fi
if out=$(mount -t sysfs sysfs /tmp/s 2>&1) && [ -d /tmp/s/class/net/eth0 ]; then
  say own-sysfs ok "net: $(ls /tmp/s/class/net | tr '\n' ' ')"
else
  say own-sysfs FAILED "$out"
fi
if out=$(mount -t tmpfs tmpfs /tmp/t 2>&1); then say own-tmpfs ok; else say own-tmpfs FAILED "$out"; fi
if [ -e "/tmp/s/class/net/$BRIDGE" ]; then say see-dom0-bridge ESCAPED; else say see-dom0-bridge refused "not in its sysfs"; fi
umount /tmp/p /tmp/s /tmp/t 2>/dev/null
# Its own second disk: guest root writes and reads it back, and mounts it
# (the runtime mounts it on its behalf, src/mountd.rs).
if out=$(printf own-disk-mark | dd of=/dev/xvdb conv=notrunc 2>&1) && [ "$(head -c 13 /dev/xvdb)" = own-disk-mark ]; then say own-disk ok "wrote and read /dev/xvdb"; else say own-disk FAILED "$out"; fi
mkdir -p /tmp/m
if out=$(mount /dev/xvdb /tmp/m 2>&1) && umount /tmp/m; then say own-mount ok; else say own-mount FAILED "$out"; fi
o=$(stat -c %u:%g /bin/busybox)
if [ "$o" = 0:0 ]; then say own-root-files ok "$o"; else say own-root-files FAILED "$o"; fi
if echo "owned" > /root/probe-owned && sync; then say own-write ok; else say own-write FAILED; fi

# (Counted and cleaned up without forking: the limit is reached.)
sh -c 'i=0; while [ $i -lt 1500 ]; do sleep 600 & i=$((i+1)); done; echo loop-finished' >/tmp/fork.out 2>&1
set -- /proc/[0-9]*
n=$#
for p in /proc/[0-9]*; do
  c=; read c < $p/comm 2>/dev/null; [ "$c" = sleep ] && kill -9 ${p#/proc/}
done
sleep 2
last=
while read l; do last=$l; done < /tmp/fork.out
if [ "$last" = loop-finished ] && [ "$n" -gt 1400 ]; then
  say fork-bomb ESCAPED "processes=$n"
else
  say fork-bomb refused "processes=$n: $last"
fi

dd if=/dev/zero of=/dev/null bs=600M count=1 2>/tmp/dd.err
st=$?
if [ $st -eq 0 ]; then say memory-hog ESCAPED "dd of 600M went through"; else say memory-hog refused "status=$st"; fi
say init-alive "pid1=$(cat /proc/1/comm)"

yes >/dev/null & a=$!
yes >/dev/null & b=$!
say cpu-hog started
sleep 8
kill $a $b
say cpu-hog stopped
say done
poweroff -f
"#;

/// One line of the probe's table.
#[derive(Debug)]
struct Outcome {
    name: String,
    verdict: String,
    detail: String,
}

fn outcomes(log: &str) -> Vec<Outcome> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("probe "))
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some(Outcome {
                name: w.next()?.to_owned(),
                verdict: w.next()?.to_owned(),
                detail: w.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// Kills and reaps a host process on drop.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a host file on drop.
struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `debugfs -R 'stat PATH'` of `img`: the inode's `User:`/`Group:` line.
fn image_owner(img: &Path, path: &str) -> Result<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(img)
        .output()
        .context("run debugfs")?;
    let text = stdout_of("debugfs stat", &out)?;
    Ok(text
        .lines()
        .find(|l| l.contains("User:"))
        .unwrap_or("")
        .to_owned())
}

#[test]
fn test_guest_root_is_contained_and_the_host_and_a_second_guest_carry_on() -> Result<()> {
    xen_testhost::need("ip", "iproute2")?;
    let (mut host, dir) = Dom0::start_with_root(
        "containment-",
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )?;
    let ns = Netns::unique("xsc", "c")?;
    let br = xen_testhost::net::bridge_name("xc", "c")?;
    make_bridge(&ns, &br, "10.79.0.1/24")?;
    let _backendd = start_backendd_in(&host, &ns, &[])?;

    // The host's canaries: a file on the host's root file system, a process.
    let tag = std::process::id();
    let canary = PathBuf::from(format!("/var/tmp/xsr-canary-{tag}"));
    std::fs::write(&canary, format!("canary-{tag}\n"))?;
    let _canary_file = RemoveFile(canary.clone());
    let sleep_arg = format!("{}", 3_000 + tag % 1_000);
    let mut sleeper = Reap(Command::new("sleep").arg(&sleep_arg).spawn()?);
    let host_dev = std::fs::metadata("/var/tmp")?.dev();

    // The second guest: its root a copy of the image with a marker, a
    // heartbeat on its console, a vif on the bridge.
    let other = format!("other{tag}");
    let other_img = image_with(
        &dir,
        &dir.join("pv-root.img"),
        "other.img",
        &[],
        &[],
        &[text_file(
            &dir,
            "marker",
            &format!("{other}\n"),
            0o644,
            "/etc/other-marker",
        )?],
    )?;
    host.create_guest(
        &other,
        &format!(
            "name = \"{other}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\nroot = '/dev/xvda'\n\
             extra = 'ro init=/bin/sh -- -c \"i=0; while :; do i=$((i+1)); echo beat-$i; sleep 1; done\"'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n\
             vif = [ 'bridge={br}' ]\n",
            other_img.display()
        ),
    )?;
    host.wait_log(&other, "beat-2", STEP)?;
    let other_id = host.domid(&other)?.context("the other guest is listed")?;
    let other_vif = bridge_ports(&ns, &br)?
        .into_iter()
        .next()
        .context("the other guest's vif on the bridge")?;
    let other_files: Vec<String> = std::fs::read_dir(&host.mem_dir)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("dom{other_id}-"))
        })
        .map(|e| e.path().display().to_string())
        .collect();
    let other_group = host
        .guest_cgroup(other_id)?
        .context("the other guest's cgroup")?;

    // The other guest's xenstore nodes the probe goes for, as Dom0 sees
    // them before.
    let xs = xenstore_client::Client::connect_path(host.xenstored_socket())
        .context("Dom0's xenstore client")?;
    let other_home = format!("/local/domain/{other_id}");
    let other_nodes = |xs: &xenstore_client::Client| -> Result<Vec<String>> {
        let mut seen = Vec::new();
        for n in ["device/vbd/51712/state", "device/vif/0/state", "data/x"] {
            let p = format!("{other_home}/{n}");
            seen.push(format!("{p}={:?}", xs.read_opt(&p)?));
        }
        for n in ["device/vbd/51712", "device/vif/0", "data"] {
            let p = format!("{other_home}/{n}");
            seen.push(format!("{p} perms {:?}", xs.get_perms(&p)?));
        }
        Ok(seen)
    };
    let other_before = other_nodes(&xs)?;
    assert!(
        !other_before[0].ends_with("=None") && !other_before[1].ends_with("=None"),
        "the other guest's device nodes exist: {other_before:?}"
    );

    // The probe guest.
    let env = format!(
        "CANARY='{}'\nSLEEP_ARG='{sleep_arg}'\nSLEEP_PID='{}'\nSHM_DIR='{}'\nOTHER_FILES='{}'\n\
         SHIM_SOCK='{}'\nXS_SOCK='{}'\nHOST_MAJ={}\nHOST_MIN={}\nBRIDGE='{br}'\nOTHER_VIF='{other_vif}'\n\
         OTHER_ID={other_id}\n",
        canary.display(),
        sleeper.0.id(),
        host.mem_dir.display(),
        other_files.join(" "),
        host.shim_socket().display(),
        host.xenstored_socket().display(),
        nix::sys::stat::major(host_dev),
        nix::sys::stat::minor(host_dev),
    );
    let (mkdirs, mut files) = xenstore_tools()?;
    files.extend([
        text_file(&dir, "probe", PROBE, 0o755, "/sbin/probe")?,
        text_file(&dir, "probe.env", &env, 0o644, "/etc/probe.env")?,
        text_file(
            &dir,
            "inittab",
            "::sysinit:/sbin/probe\n",
            0o644,
            "/etc/inittab",
        )?,
    ]);
    let img = image_with(
        &dir,
        &dir.join("pv-root.img"),
        "probe.img",
        &["/etc/inittab"],
        &mkdirs,
        &files,
    )?;
    let second = dir.join("second.img");
    std::fs::File::create(&second)?.set_len(8 << 20)?;
    stdout_of(
        "mkfs.ext4",
        &Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&second)
            .output()?,
    )?;
    let name = format!("probe{tag}");
    host.create_guest(
        &name,
        &format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 256\nvcpus = 1\nroot = '/dev/xvda'\n\
             extra = 'rw console=hvc0 pvguest.timeout=60'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}', \
             'format=raw, vdev=xvdb, access=rw, target={}' ]\n\
             vif = [ 'bridge={br}' ]\non_poweroff = 'preserve'\n",
            img.display(),
            second.display()
        ),
    )?;
    let id = host.domid(&name)?.context("the probe guest is listed")?;
    let group = host.guest_cgroup(id)?.context("the probe's cgroup")?;

    // The xenstore attempts are over: the other domain's nodes as Dom0
    // sees them now, the probe's own node (read while the probe runs).
    host.wait_log(&name, "probe xs-release", PROBE_TIME)?;
    let other_after = other_nodes(&xs)?;
    let own_node = xs.read_opt(&format!("/local/domain/{id}/data/probe-own"))?;

    // The CPU hog: the domain's CPU time over wall time while it runs.
    host.wait_log(&name, "probe cpu-hog started", PROBE_TIME)?;
    let (c0, t0) = (group.cpu_time()?, Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (c1, t1) = (group.cpu_time()?, Instant::now());
    let cpus = (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64();
    let log = host.wait_log(&name, "pvguest shutdown", PROBE_TIME)?;
    let oom_kills = group.oom_kills().unwrap_or(0);

    // The table, whatever the verdicts.
    let table = outcomes(&log);
    let mut report = String::new();
    for o in &table {
        let _ = writeln!(report, "{:<28} {:<8} {}", o.name, o.verdict, o.detail);
    }
    let _ = writeln!(report, "{:<28} {cpus:.2} CPUs (vcpus = 1)", "cpu-hog");
    let _ = writeln!(report, "{:<28} {oom_kills}", "oom-kills in the domain");
    eprintln!("containment probe in {name} (domain {id}):\n{report}");

    // Assert: every attempt was refused, every power of its own worked.
    let escaped: Vec<&Outcome> = table.iter().filter(|o| o.verdict == "ESCAPED").collect();
    assert!(
        escaped.is_empty(),
        "attempts that escaped: {escaped:#?}\n{log}"
    );
    let failed: Vec<&Outcome> = table.iter().filter(|o| o.verdict == "FAILED").collect();
    assert!(
        failed.is_empty(),
        "guest root's own powers that failed: {failed:#?}\n{log}"
    );
    for n in [
        "read-host-file",
        "read-host-file-via-proc",
        "list-host-process",
        "signal-host-process",
        "list-shim-memory-dir",
        "find-dom0-socket",
        "own-xenstore",
        "xs-write-other-data",
        "xs-write-other-device",
        "xs-rm-other-device",
        "xs-chmod-other-device",
        "xs-chmod-other-data",
        "xs-introduce",
        "xs-release",
        "mount-host-disk",
        "mknod-loop-device",
        "read-other-guest-root",
        "write-host-sysctl",
        "load-module",
        "bridge-down",
        "delete-other-vif",
        "see-dom0-bridge",
        "fork-bomb",
        "memory-hog",
        "own-eth0",
        "own-hostname",
        "own-proc",
        "own-sysfs",
        "own-tmpfs",
        "own-disk",
        "own-mount",
        "own-root-files",
        "own-write",
    ] {
        assert!(
            table.iter().any(|o| o.name == n),
            "the probe did not report {n}:\n{log}"
        );
    }
    assert!(
        table
            .iter()
            .filter(|o| o.name == "open-other-domain-file")
            .count()
            == other_files.len()
            && !other_files.is_empty(),
        "the other domain's files {other_files:?} were each tried:\n{log}"
    );
    // xenstored refused each xenstore attempt for want of permission (not
    // for a bad argument), and the other domain's nodes are as they were;
    // the probe's own node is there.
    for o in table.iter().filter(|o| o.name.starts_with("xs-")) {
        assert!(
            ["Permission denied", "not permitted", "EACCES", "EPERM"]
                .iter()
                .any(|e| o.detail.contains(e)),
            "{} refused for want of permission: {}",
            o.name,
            o.detail
        );
    }
    assert_eq!(other_after, other_before);
    assert_eq!(own_node.as_deref(), Some(&b"mine"[..]));
    // Guest root is its own range's uid 0, not the host's.
    let start = table
        .iter()
        .find(|o| o.name == "start")
        .context("the probe's start line")?;
    let first = 0x8_0000 + u32::from(id) * 0x1_0000;
    assert!(
        start.verdict == "uid=0" && start.detail.contains(&format!("uid_map=0:{first}:65536")),
        "guest root is host uid {first}: {} {}",
        start.verdict,
        start.detail
    );
    // The fork bomb hit the pids limit, the hog the OOM killer (not init:
    // the probe went on), the CPU hog one CPU.
    assert!(group.pids_limit_hits().unwrap_or(0) >= 1 || group.pids_limit()?.is_some());
    let hog = table
        .iter()
        .find(|o| o.name == "memory-hog")
        .context("memory-hog")?;
    assert!(
        hog.detail.contains("status=137"),
        "the hog was SIGKILLed: {hog:?}"
    );
    assert!(oom_kills >= 1, "the domain's OOM killer acted");
    assert!(
        log.contains("probe done"),
        "the probe (under init) went on after the hogs:\n{log}"
    );
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    assert!(
        cpus <= 1.15,
        "vcpus = 1 holds the CPU hog to one CPU: {cpus:.2}"
    );

    // The host is unaffected: its canaries, its bridge, the other vif.
    assert_eq!(std::fs::read_to_string(&canary)?, format!("canary-{tag}\n"));
    assert!(
        sleeper.0.try_wait()?.is_none(),
        "the host's canary process lives"
    );
    let link = ns.ip(&["-o", "link", "show", &br])?;
    assert!(
        link.contains(",UP") || link.contains("<UP"),
        "the bridge is up: {link}"
    );
    ns.ip(&["link", "show", &other_vif])
        .context("the other guest's vif is still there")?;
    // The second guest runs on: listed, its group there, its heartbeat
    // going, its console free of the probe's writes.
    let beats = |log: &str| log.lines().filter(|l| l.starts_with("beat-")).count();
    let before = beats(&host.guest_log(&other));
    std::thread::sleep(Duration::from_secs(3));
    let other_log = host.guest_log(&other);
    assert!(
        beats(&other_log) > before,
        "the other guest's heartbeat goes on:\n{other_log}"
    );
    assert!(!other_log.contains("probe-intruder"), "{other_log}");
    assert_eq!(host.domid(&other)?, Some(other_id));
    assert!(other_group.exists());

    // What guest root wrote is the image's uid 0's, not its host range's.
    let owner = image_owner(&img, "/root/probe-owned")?;
    assert!(
        owner.contains("User:     0") && owner.contains("Group:     0"),
        "written as the image's root: {owner}"
    );
    Ok(())
}

/// The mount probe: busybox init's `sysinit` in the guest of
/// [`test_guest_root_mounts_its_own_disks_and_nothing_else`].
const MOUNT_PROBE: &str = r#"#!/bin/sh
. /etc/probe.env
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
say() { echo "probe $*"; }
ok_if() {
  n=$1; shift
  if out=$("$@" 2>&1); then say "$n ok $(echo $out | head -c 160)"; else say "$n FAILED $(echo $out | head -c 160)"; fi
}
refused_if() {
  n=$1; d=$2; shift 2
  if out=$("$@" 2>&1); then say "$n ESCAPED $d: $(echo $out | head -c 160)"; else say "$n refused $d: $(echo $out | head -c 160)"; fi
}
mkdir -p /mnt /tmp/x /tmp/c /tmp/t
ok_if block-node sh -c 'test -b /dev/xvdb && ls -ln /dev/xvdb'
ok_if mkfs mkfs.ext2 -q -F /dev/xvdb
ok_if mount mount /dev/xvdb /mnt
echo "written-by-guest" > /mnt/hello
ok_if owner sh -c 'test "$(stat -c %u:%g /mnt/hello)" = 0:0 && stat -c %u:%g /mnt/hello'
ok_if nodev grep " /mnt " /proc/mounts
grep " /mnt " /proc/mounts | grep -q nodev || say nodev FAILED "not nodev"
ok_if umount umount /mnt
ok_if mount-ext4 sh -c 'mount -t ext4 /dev/xvdb /mnt && cat /mnt/hello && umount /mnt'
ok_if own-tmpfs mount -t tmpfs tmpfs /tmp/t

refused_if planted-host-node "b $HOST_MAJ:$HOST_MIN on the root" mount -t ext2 /root/hostloop /tmp/x
refused_if mknod-host-node "b $HOST_MAJ:$HOST_MIN" mknod /tmp/hl b $HOST_MAJ $HOST_MIN
refused_if other-disk-node "b $OTHER_ROOT, the other guest's root" mount -t ext4 /root/otherroot /tmp/x
refused_if other-image "$OTHER_IMG" mount -t ext4 "$OTHER_IMG" /tmp/x
refused_if loop0 "/dev/loop0" mount -t ext4 /dev/loop0 /tmp/x
refused_if type-not-allowed "xfs" mount -t xfs /dev/xvdb /tmp/x
echo "mu:x:1000:1000::/tmp:/bin/sh" >> /etc/passwd
refused_if non-root-user "uid 1000" su mu -s /bin/sh -c "id -u; mount -t ext2 /dev/xvdb /tmp/x"
ok_if mount-xvdc mount /dev/xvdc /tmp/c
refused_if host-node-on-own-disk "/tmp/c/hostloop" sh -c 'head -c 32 /tmp/c/hostloop | grep host-canary'
refused_if remount-dev "/tmp/c" mount -o remount,bind,dev /tmp/c
refused_if host-node-after-remount "/tmp/c/hostloop" sh -c 'head -c 32 /tmp/c/hostloop | grep host-canary'
umount /tmp/c
say done ok
poweroff -f
"#;

/// The device number (major, minor) of the file system at `/` in the
/// mount namespace of one of `pids` (a guest's processes) that is mounted
/// from a loop device: the guest's root disk.
fn other_root_device(pids: &[i32]) -> Result<(u32, u32)> {
    for pid in pids {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        for l in info.lines() {
            // `id parent maj:min root mountpoint ... - fstype source ...`
            let f: Vec<&str> = l.split_whitespace().collect();
            let source = l
                .split(" - ")
                .nth(1)
                .and_then(|r| r.split_whitespace().nth(1));
            if f.get(4) == Some(&"/") && source.is_some_and(|s| s.starts_with("/dev/loop")) {
                let (maj, min) = f[2].split_once(':').context("maj:min")?;
                return Ok((maj.parse()?, min.parse()?));
            }
        }
    }
    anyhow::bail!("no process of {pids:?} has a loop device as its root")
}

/// Runs the `debugfs -w` commands `cmds` on the file system image `img`
/// (the mount test's images: binaries, a planted device node).
fn debugfs_w(img: &Path, cmds: &[String]) -> Result<()> {
    let cmdfile = img.with_extension("debugfs");
    std::fs::write(&cmdfile, cmds.join("\n") + "\n")?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmdfile)
        .arg(img)
        .output()
        .context("run debugfs")?;
    let text = stdout_of("debugfs -w", &out)? + &String::from_utf8_lossy(&out.stderr);
    if text.contains("rror") {
        anyhow::bail!("debugfs: {text}");
    }
    Ok(())
}

/// A host loop device over a canary file, detached on drop.
struct HostLoop(String);

impl Drop for HostLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn test_guest_root_mounts_its_own_disks_and_nothing_else() -> Result<()> {
    let (mut host, dir) = Dom0::start_with_root(
        "gmount-",
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )?;
    let tag = std::process::id();
    // The host's canary block device: a loop device over a file.
    let canary_text = format!("host-canary-{tag}");
    let canary = dir.join("canary.img");
    std::fs::write(&canary, format!("{canary_text}\n"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&canary)?
        .set_len(1 << 20)?;
    let dev = stdout_of(
        "losetup",
        &Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&canary)
            .output()?,
    )?;
    let host_loop = HostLoop(dev.trim().to_owned());
    let rdev = std::fs::metadata(&host_loop.0)?.rdev();
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));

    // The other guest: a heartbeat.
    let other = format!("mother{tag}");
    let other_img = dir.join("mother.img");
    std::fs::copy(dir.join("pv-root.img"), &other_img).context("copy the root image")?;
    host.create_guest(
        &other,
        &format!(
            "name = \"{other}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\nroot = '/dev/xvda'\n\
             extra = 'ro init=/bin/sh -- -c \"i=0; while :; do i=$((i+1)); echo beat-$i; sleep 1; done\"'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
            other_img.display()
        ),
    )?;
    host.wait_log(&other, "beat-2", STEP)?;
    // The other guest's root disk as the kernel knows it (a loop device of
    // its runtime's): the device number of `/` in its mount namespace.
    let other_id = host.domid(&other)?.context("the other guest is listed")?;
    let other_root = other_root_device(
        &host
            .guest_cgroup(other_id)?
            .context("the other guest's cgroup")?
            .procs()?,
    )?;

    // The probe: mke2fs (Debian's busybox has no mkfs.ext2) and its
    // libraries under /e2fs, run through the dynamic loader; a node of the
    // host's loop device planted on its root and on its third disk.
    let mut extra = vec!["rm /etc/inittab".to_owned(), "mkdir /e2fs".to_owned()];
    let mut libs = stdout_of("ldd", &Command::new("ldd").arg("/sbin/mke2fs").output()?)?
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    libs.push("/sbin/mke2fs".to_owned());
    let mut loader = String::new();
    for l in &libs {
        let base = Path::new(l)
            .file_name()
            .context("a library's name")?
            .to_string_lossy()
            .into_owned();
        if base.starts_with("ld-linux") {
            loader = format!("/e2fs/{base}");
        }
        extra.push(format!("write {l} /e2fs/{base}"));
        extra.push(format!("sif /e2fs/{base} mode 0100755"));
    }
    extra.push("cd /root".to_owned());
    extra.push(format!("mknod hostloop b {maj} {min}"));
    extra.push("sif /root/hostloop mode 060666".to_owned());
    extra.push(format!(
        "mknod otherroot b {} {}",
        other_root.0, other_root.1
    ));
    extra.push("sif /root/otherroot mode 060666".to_owned());
    let mkfs =
        format!("#!/bin/sh\nexec {loader} --library-path /e2fs /e2fs/mke2fs -t ext2 \"$@\"\n");
    let env = format!(
        "OTHER_IMG='{}'\nHOST_MAJ={maj}\nHOST_MIN={min}\nOTHER_ROOT={}:{}\n",
        other_img.display(),
        other_root.0,
        other_root.1
    );
    for (local, text, mode, target) in [
        ("mprobe", MOUNT_PROBE, 0o755, "/sbin/probe"),
        ("mprobe.env", &env, 0o644, "/etc/probe.env"),
        ("mkfs.ext2", &mkfs, 0o755, "/sbin/mkfs.ext2"),
        ("minittab", "::sysinit:/sbin/probe\n", 0o644, "/etc/inittab"),
    ] {
        let p = dir.join(local);
        std::fs::write(&p, text)?;
        extra.push(format!("write {} {target}", p.display()));
        extra.push(format!("sif {target} mode 0{:o}", 0o100_000 | mode));
    }
    let img = dir.join("mprobe.img");
    std::fs::copy(dir.join("pv-root.img"), &img).context("copy the root image")?;
    debugfs_w(&img, &extra)?;
    let second = dir.join("msecond.img");
    std::fs::File::create(&second)?.set_len(8 << 20)?;
    let third = dir.join("mthird.img");
    std::fs::File::create(&third)?.set_len(4 << 20)?;
    stdout_of(
        "mkfs.ext2",
        &Command::new("mkfs.ext2")
            .args(["-q", "-F"])
            .arg(&third)
            .output()?,
    )?;
    debugfs_w(
        &third,
        &[
            format!("mknod hostloop b {maj} {min}"),
            "sif /hostloop mode 060666".to_owned(),
        ],
    )?;
    let name = format!("mprobe{tag}");
    host.create_guest(
        &name,
        &format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 128\nvcpus = 1\nroot = '/dev/xvda'\n\
             extra = 'rw console=hvc0 pvguest.timeout=60'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}', \
             'format=raw, vdev=xvdb, access=rw, target={}', \
             'format=raw, vdev=xvdc, access=rw, target={}' ]\n\
             on_poweroff = 'preserve'\n",
            img.display(),
            second.display(),
            third.display()
        ),
    )?;
    let id = host.domid(&name)?.context("the probe guest is listed")?;
    let log = host.wait_log(&name, "pvguest shutdown", PROBE_TIME)?;
    let table = outcomes(&log);
    let mut report = String::new();
    for o in &table {
        let _ = writeln!(report, "{:<28} {:<8} {}", o.name, o.verdict, o.detail);
    }
    eprintln!("mount probe in {name} (domain {id}):\n{report}");
    let bad: Vec<&Outcome> = table
        .iter()
        .filter(|o| o.verdict == "ESCAPED" || o.verdict == "FAILED")
        .collect();
    let runtime_log = std::fs::read_to_string(host.rundir().join(format!("pvguest-{name}.log")))
        .unwrap_or_default();
    assert!(
        bad.is_empty(),
        "escaped or failed: {bad:#?}\n{log}\nthe runtime's log:\n{runtime_log}"
    );
    let verdict = |n: &str| table.iter().find(|o| o.name == n);
    for n in [
        "block-node",
        "mkfs",
        "mount",
        "owner",
        "nodev",
        "umount",
        "mount-ext4",
        "own-tmpfs",
        "planted-host-node",
        "mknod-host-node",
        "other-disk-node",
        "other-image",
        "loop0",
        "type-not-allowed",
        "non-root-user",
        "mount-xvdc",
        "host-node-on-own-disk",
        "remount-dev",
        "host-node-after-remount",
        "done",
    ] {
        assert!(verdict(n).is_some(), "the probe did not report {n}:\n{log}");
    }
    // The handler's own errnos: EPERM for a device not the guest's (busybox
    // says "permission denied (are you root?)" for EPERM alone: the
    // kernel's EACCES at a `nodev` node reads "...failed: Permission
    // denied"), ENODEV for a type not allowed.
    let detail = |n: &str| verdict(n).map(|o| o.detail.clone()).unwrap_or_default();
    assert!(
        detail("planted-host-node").contains("permission denied (are you root?)"),
        "{}",
        detail("planted-host-node")
    );
    assert!(
        detail("other-disk-node").contains("permission denied (are you root?)"),
        "{}",
        detail("other-disk-node")
    );
    assert!(
        detail("type-not-allowed").contains("No such device"),
        "{}",
        detail("type-not-allowed")
    );
    assert!(
        detail("non-root-user").contains("1000")
            && detail("non-root-user").contains("permission denied (are you root?)"),
        "{}",
        detail("non-root-user")
    );
    assert!(
        detail("remount-dev").contains("permission denied (are you root?)"),
        "{}",
        detail("remount-dev")
    );
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    // Every mount above was made by the jailed runtime (its handler starts
    // once the runtime is jailed).
    assert!(
        log.contains(&format!("pvguest jailed uid={}", xen_jail::domain_uid(id))),
        "the runtime was jailed: {log}"
    );

    // Dom0 finds the guest's file in its disk's image, owned by uid 0.
    let out = Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(&second)
        .output()?;
    assert_eq!(stdout_of("debugfs cat", &out)?, "written-by-guest\n");
    let owner = image_owner(&second, "/hello")?;
    assert!(
        owner.contains("User:     0") && owner.contains("Group:     0"),
        "written as the image's root: {owner}"
    );
    // The host's canary device and the other guest are untouched.
    let mut head = vec![0u8; canary_text.len()];
    std::io::Read::read_exact(&mut std::fs::File::open(&host_loop.0)?, &mut head)?;
    assert_eq!(head, canary_text.as_bytes());
    let beats = |log: &str| log.lines().filter(|l| l.starts_with("beat-")).count();
    let before = beats(&host.guest_log(&other));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        beats(&host.guest_log(&other)) > before,
        "the other guest's heartbeat goes on"
    );
    Ok(())
}
