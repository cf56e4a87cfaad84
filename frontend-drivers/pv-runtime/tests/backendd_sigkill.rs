//! backendd is killed with SIGKILL while the guest writes, then started
//! again: blkfront sees the new backend come back through InitWait, puts
//! its in-flight requests back in line and reconnects; the guest's script
//! finishes, every record it saw acknowledged (written and `fsync`ed, then
//! `syncfs`) is on the image and the ext4 filesystem is clean (project
//! issue 5).
//!
//! The guest's init makes ext4 on `/dev/xvda`, mounts it and writes
//! numbered records, one file each (`dd conv=fsync` + `sync -f`), printing
//! `ack N` after each; the test kills backendd (pid from
//! `<rundir>/backendd.pid`) once each `ack KILL_AT[i]` shows in the guest's log,
//! starts a new backendd with the arguments `xl` uses (twice), and waits for the
//! guest to finish. Then `xl destroy`, and Dom0 checks the image: `fsck -n`
//! and every acknowledged record's content through a read-only loop mount.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process, on
//! temporary sockets), the real `xl`, `backendd` and `xen-pvguest`
//! binaries. Needs root, `/dev/fuse`, loop devices and e2fsprogs
//! (`apt-get install e2fsprogs mount coreutils`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xen_testhost::net::Daemon;
use xen_testhost::{pv_cmdline, run, Dom0};

/// The private Dom0 of this test ([`Dom0::start_for_pv_guests`]).
fn dom0(prefix: &str) -> Result<Dom0> {
    Dom0::start_for_pv_guests(
        prefix,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

const GUEST_RUN: Duration = Duration::from_secs(240);
/// Records the guest writes.
const RECORDS: u32 = 120;
/// backendd is killed (and restarted) once the guest logged each of these
/// records' ack.
const KILL_AT: [u32; 2] = [30, 75];

/// Starts `backendd` as `xl` does (same arguments, log appended to
/// `<rundir>/backendd.log`); killed when the guard drops.
fn start_backendd(host: &Dom0) -> Result<Daemon> {
    let rundir = host.rundir();
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(rundir.join("backendd.log"))
        .context("open backendd.log")?;
    let log2 = log.try_clone().context("dup the log fd")?;
    let child = Command::new(host.libexec.join("backendd"))
        .arg("--xenstored")
        .arg(host.dir.path().join("xenstored.sock"))
        .arg("--shim-socket")
        .arg(host.dir.path().join("shim.sock"))
        .arg("--pid-file")
        .arg(rundir.join("backendd.pid"))
        .arg("--log-dir")
        .arg(host.console_logdir())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .context("start backendd")?;
    Ok(Daemon::new(child))
}

/// The records the guest logged as acknowledged (`ack N` lines).
fn acked(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("ack "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn wait_log(host: &Dom0, name: &str, what: &str, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + GUEST_RUN;
    loop {
        let log = host.guest_log(name);
        if until(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {GUEST_RUN:?}; the guest's log:\n{log}\nbackendd's log:\n{}",
            std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn test_backendd_sigkill_during_guest_writes_restart_reconnects_without_losing_acked_records(
) -> Result<()> {
    sigkill_during_writes(&["xvda"])
}

/// With two disks both reconnect: each disk's waiter sees the watch events
/// of the other's device too (one xenstore connection per guest), so one
/// disk cannot swallow the other's backend change.
#[test]
fn test_backendd_sigkill_with_two_disks_both_reconnect_without_losing_acked_records() -> Result<()>
{
    sigkill_during_writes(&["xvda", "xvdb"])
}

fn sigkill_during_writes(vdevs: &[&str]) -> Result<()> {
    // Arrange
    let mut host = dom0("bkill-")?;
    let name = format!("bkill{}{}", std::process::id(), vdevs.len());
    let mut imgs = Vec::new();
    let mut disks = Vec::new();
    let (mut mkfs, mut mount, mut write, mut umount) =
        (String::new(), String::new(), String::new(), String::new());
    for v in vdevs {
        let img = host.dir.path().join(format!("{v}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .expect("create the disk image");
        disks.push(format!("'format=raw, vdev={v}, access=rw, target={v}.img'"));
        mkfs.push_str(&format!("mkfs.ext4 -q -F /dev/{v}\n"));
        mount.push_str(&format!(
            "mkdir \"$m/{v}\"\nmount -o loop /dev/{v} \"$m/{v}\"\n"
        ));
        write.push_str(&format!(
            "printf 'record %06d\\n' $i | dd of=\"$m/{v}/rec$i\" conv=fsync status=none\n\
             sync -f \"$m/{v}\"\n"
        ));
        umount.push_str(&format!(
            "umount \"$m/{v}\"\nrmdir \"$m/{v}\"\nfsck.ext4 -n -f /dev/{v}\n"
        ));
        imgs.push(img);
    }
    let script = host.dir.path().join("init.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n\
             echo guest-init-start\n\
             {mkfs}\
             m=$(mktemp -d)\n\
             {mount}\
             i=1\n\
             while [ $i -le {RECORDS} ]; do\n\
             {write}\
             echo \"ack $i\"\n\
             i=$((i + 1))\n\
             done\n\
             {umount}\
             rmdir \"$m\"\n\
             echo guest-init-ok\n"
        ),
    )
    .expect("write the init script");
    run("chmod", &["0755", script.to_str().expect("utf-8 path")])?;
    let cfg = host.dir.path().join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
             extra = '{}'\n\
             disk = [ {} ]\n",
            pv_cmdline(&script),
            disks.join(", ")
        ),
    )
    .expect("write the config");
    host.xl_ok(&["create", cfg.to_str().expect("utf-8 path")])?;
    host.track_guest(&name);

    // Act: kill backendd mid-stream, start a new one (twice), let the
    // guest finish.
    let mut kills = Vec::new();
    let mut backendd: Option<Daemon> = None;
    for at in KILL_AT {
        let before = wait_log(&host, &name, "the guest's records", |l| {
            acked(l).contains(&at) || l.contains("pvguest shutdown")
        });
        assert!(acked(&before).contains(&at), "{before}");
        let pid = host.backendd_pid().context("backendd runs")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL backendd");
        if let Some(d) = backendd.take() {
            let _ = d.take().wait();
        }
        let after = acked(&host.guest_log(&name)).last().copied().unwrap_or(0);
        kills.push((pid, after));
        std::thread::sleep(Duration::from_millis(500));
        backendd = Some(start_backendd(&host)?);
    }
    let log = wait_log(&host, &name, "the guest's script after the restart", |l| {
        l.contains("pvguest shutdown") || l.contains("frontend-failed")
    });
    let destroyed = host.destroy_guest(&name)?;
    eprintln!(
        "killed backendd (pid, last ack): {kills:?}\nguest log:\n{log}\nxl destroy: {}\nbackendd log:\n{}",
        String::from_utf8_lossy(&destroyed.stderr),
        std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
    );

    // Assert: the guest finished and its disk reconnected.
    assert!(
        kills.iter().all(|&(_, after)| after < RECORDS),
        "a kill came after the last write: {kills:?}"
    );
    assert!(log.contains("guest-init-ok"), "{log}");
    assert!(log.contains("reason=poweroff"), "{log}");
    let acks = acked(&log);
    assert_eq!(acks, (1..=RECORDS).collect::<Vec<_>>(), "{log}");
    // Dom0's view of each image: clean, every acknowledged record there.
    for (v, img) in vdevs.iter().zip(&imgs) {
        let i = img.to_str().expect("utf-8 path");
        run("fsck.ext4", &["-n", "-f", i])?;
        let mnt = host.dir.path().join(format!("mnt-{v}"));
        std::fs::create_dir(&mnt).expect("mkdir");
        let m = mnt.to_str().expect("utf-8 path");
        run("mount", &["-o", "loop,ro", i, m])?;
        let missing: Vec<u32> = acks
            .iter()
            .copied()
            .filter(|n| {
                std::fs::read_to_string(mnt.join(format!("rec{n}"))).ok()
                    != Some(format!("record {n:06}\n"))
            })
            .collect();
        let _ = Command::new("umount").arg(m).status();
        assert!(
            missing.is_empty(),
            "acknowledged records missing or wrong on {v}'s image: {missing:?}"
        );
    }
    Ok(())
}
