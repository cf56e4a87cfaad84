//! `/dev/xen/xenbus` in a guest machine, used by Debian's xenstore-utils
//! (dynamically linked; libxenstore opens the device as it does on Linux)
//! copied with their libraries into `examples/mkroot.sh`'s busybox root:
//! the guest writes and reads its own `data/` node (Dom0 reads it with its
//! xenstore client), `xenstore-watch` gets the initial event and the one of
//! Dom0's write, a reader blocked in its read ends when killed, a bad
//! packet ends only its own handle. Needs root, busybox-static, e2fsprogs,
//! xenstore-utils (tests/setup-host.sh).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use xen_testhost::Dom0;
use xenstore_client::XsOps;

mod common;
use common::{image_with, text_file, xenstore_tools};

const STEP: Duration = Duration::from_secs(90);

/// The guest's test: busybox init's `sysinit`.
const SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t tmpfs -o mode=1777 tmpfs /tmp
say() { echo "xbt $*"; }
say dev $(ls -ln /dev/xen/xenbus)
if out=$(xenstore-write data/greeting hello-from-guest 2>&1); then say write ok; else say write FAILED "$out"; fi
say read "$(xenstore-read data/greeting 2>&1)"
xenstore-watch -n 2 data/w > /tmp/w.out 2>&1 &
w=$!
sleep 1
say watching
wait $w
say watch status=$? $(tr '\n' ' ' < /tmp/w.out)
# A reader blocked in its read (the watch thread of xenstore-watch) ends
# when killed.
xenstore-watch data/never > /dev/null 2>&1 &
k=$!
sleep 1
t0=$(date +%s)
kill $k
wait $k
say killed-reader seconds=$(( $(date +%s) - t0 ))
# A bad packet (5000 bytes: past a packet's end) ends that handle only.
if dd if=/dev/zero of=/dev/xen/xenbus bs=5000 count=1 conv=notrunc 2>/tmp/bad.err; then say bad-packet ACCEPTED; else say bad-packet refused "$(cat /tmp/bad.err)"; fi
say after-bad "$(xenstore-read data/greeting 2>&1)"
say done
poweroff -f
"#;

#[test]
fn test_guest_programs_use_xenstore_through_dev_xen_xenbus() -> Result<()> {
    let (mut host, dir) = Dom0::start_with_root(
        "xenbusdev-",
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )?;
    let (mkdirs, mut files) = xenstore_tools()?;
    files.extend([
        text_file(&dir, "xbt", SCRIPT, 0o755, "/sbin/xbt")?,
        text_file(
            &dir,
            "inittab",
            "::sysinit:/sbin/xbt\n",
            0o644,
            "/etc/inittab",
        )?,
    ]);
    let img = image_with(
        &dir,
        &dir.join("pv-root.img"),
        "xbt.img",
        &["/etc/inittab"],
        &mkdirs,
        &files,
    )?;
    let name = format!("xbt{}", std::process::id());
    host.create_guest(
        &name,
        &format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 128\nvcpus = 1\nroot = '/dev/xvda'\n\
             extra = 'rw console=hvc0'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
            img.display()
        ),
    )?;
    let id = host.domid(&name)?.context("the guest is listed")?;
    let xs = xenstore_client::Client::connect_path(host.xenstored_socket())
        .context("Dom0's xenstore client")?;

    let log = host.wait_log(&name, "xbt watching", STEP)?;
    // The device: a file of guest root's (uid 0 in the guest), 0600.
    let dev = log
        .lines()
        .find(|l| l.starts_with("xbt dev "))
        .context("the device line")?;
    assert!(
        dev.contains("-rw-------") && dev.contains(" 0 0 "),
        "guest root's 0600 file: {dev}"
    );
    assert!(log.contains("xbt write ok"), "{log}");
    assert!(log.contains("xbt read hello-from-guest"), "{log}");
    // What the guest wrote, as Dom0 reads it.
    let home = format!("/local/domain/{id}");
    assert_eq!(
        xs.read_opt(&format!("{home}/data/greeting"))?.as_deref(),
        Some(&b"hello-from-guest"[..])
    );
    // Dom0's write fires the guest's watch (its second event).
    xs.write(&format!("{home}/data/w"), "from-dom0")?;
    let log = host.wait_log(&name, "xbt done", STEP)?;
    let watch = log
        .lines()
        .find(|l| l.starts_with("xbt watch "))
        .context("the watch line")?;
    assert_eq!(
        watch.trim_end(),
        "xbt watch status=0 data/w data/w",
        "the initial event and Dom0's: {log}"
    );
    let killed = log
        .lines()
        .find_map(|l| l.strip_prefix("xbt killed-reader seconds="))
        .context("the killed reader's line")?;
    let secs: u64 = killed.trim().parse().context("seconds")?;
    assert!(secs <= 3, "a killed reader ends at once: {secs} s");
    let bad = log
        .lines()
        .find(|l| l.starts_with("xbt bad-packet"))
        .context("the bad packet's line")?;
    assert!(
        bad.contains("refused") && bad.contains("Invalid argument"),
        "EINVAL for the bad packet: {bad}"
    );
    assert!(
        log.contains("xbt after-bad hello-from-guest"),
        "other handles work on: {log}"
    );
    let log = host.wait_log(&name, "pvguest shutdown", STEP)?;
    assert!(log.contains("pvguest shutdown reason=poweroff"), "{log}");
    Ok(())
}
