//! backendd is killed with SIGKILL while the guest writes, and nothing in
//! the test starts it again: its supervisor (`xen-supervise`, which `xl`
//! started it under) does, within a second or two (a new pid in
//! `<rundir>/backendd.pid`, the supervisor's log saying why); blkfront sees
//! the new backend come back through InitWait, puts its in-flight requests
//! back in line and reconnects; the guest's script finishes, every record
//! it saw acknowledged (written and `fsync`ed, then `syncfs`) is on the
//! image and the ext4 filesystem is clean (project issues 5 and 18).
//!
//! The guest's init makes ext4 on `/dev/xvda`, mounts it and writes
//! numbered records, one file each (`dd conv=fsync` + `sync -f`), printing
//! `ack N` after each; the test kills backendd (pid from
//! `<rundir>/backendd.pid`) once each `ack KILL_AT[i]` shows in the guest's
//! log, waits for the supervisor's new backendd, and waits for the guest to
//! finish. Then `xl destroy`, and Dom0 checks the image: `fsck -n` and every
//! acknowledged record's content through a read-only loop mount.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process, on
//! temporary sockets), the real `xl`, `xen-supervise`, `backendd` and
//! `xen-pvguest` binaries. Needs root, `/dev/fuse`, loop devices and
//! e2fsprogs (`apt-get install e2fsprogs mount coreutils`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
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
/// backendd is killed once the guest logged each of these records' ack.
const KILL_AT: [u32; 2] = [30, 75];
/// How long the supervisor gets to have a new backendd running (its
/// first restart comes 0.1 s after the death, the second 0.2 s).
const BACK_WITHIN: Duration = Duration::from_secs(2);

/// Waits for a live backendd other than `old` in the pid file; its pid and
/// how long that took.
fn wait_new_backendd(host: &Dom0, old: i32) -> Result<(i32, Duration)> {
    let t = Instant::now();
    loop {
        if let Some(pid) = host.backendd_pid().filter(|&p| p != old) {
            return Ok((pid, t.elapsed()));
        }
        if t.elapsed() > BACK_WITHIN {
            anyhow::bail!(
                "no new backendd within {BACK_WITHIN:?} of the SIGKILL of {old}; its log:\n{}",
                std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

    // Act: kill backendd mid-stream (twice); only its supervisor starts
    // it again; let the guest finish.
    let supervisor = host
        .supervisor_pid("backendd")
        .context("xl started backendd under xen-supervise")?;
    let mut kills = Vec::new();
    let mut back_after = Vec::new();
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
        let after = acked(&host.guest_log(&name)).last().copied().unwrap_or(0);
        kills.push((pid, after));
        back_after.push(wait_new_backendd(&host, pid)?);
    }
    let log = wait_log(&host, &name, "the guest's script after the restart", |l| {
        l.contains("pvguest shutdown") || l.contains("frontend-failed")
    });
    let destroyed = host.destroy_guest(&name)?;
    eprintln!(
        "killed backendd (pid, last ack): {kills:?}\nback (new pid, after): {back_after:?}\nguest log:\n{log}\nxl destroy: {}\nbackendd log:\n{}",
        String::from_utf8_lossy(&destroyed.stderr),
        std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
    );

    // Assert: the same supervisor restarted backendd after each kill, and
    // says why in its log; the guest finished and its disk reconnected.
    assert_eq!(host.supervisor_pid("backendd"), Some(supervisor));
    let blog = std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default();
    assert_eq!(
        blog.matches("backendd killed by signal 9 (SIGKILL)")
            .count(),
        kills.len(),
        "{blog}"
    );
    for (i, (new_pid, _)) in back_after.iter().enumerate() {
        assert!(blog.contains(&format!("; restart {} in", i + 1)), "{blog}");
        assert!(blog.contains(&format!("started, pid {new_pid}")), "{blog}");
    }
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
