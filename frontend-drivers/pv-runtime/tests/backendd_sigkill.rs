//! Each Dom0 service is killed with SIGKILL while a guest writes its disk,
//! and nothing in the test starts it again: its supervisor
//! (`xen-supervise`, which `xl` starts each service under) does, within a
//! second or two (a new pid in `<rundir>/<service>.pid`, the supervisor's
//! log saying why). For backendd, blkfront sees the new backend come back
//! through InitWait, puts its in-flight requests back in line and
//! reconnects; xenstored comes back from its journal, the shim from its
//! state file (the guest runtime reattaches). The guest's script
//! finishes, every record it saw acknowledged (written and `fsync`ed, then
//! `syncfs`) is on the image and the ext4 filesystem is clean (project
//! issues 5 and 18).
//!
//! The guest's init makes ext4 on `/dev/xvda`, mounts it and writes
//! numbered records, one file each (`dd conv=fsync` + `sync -f`), printing
//! `ack N` after each; the test kills the service (pid from its pid file)
//! once each `ack KILL_AT[i]` shows in the guest's log, waits for the
//! supervisor's new one, and waits for the guest to finish. Then `xl
//! destroy`, and Dom0 checks the image: `fsck -n` and every acknowledged
//! record's content through a read-only loop mount.
//!
//! backendd: private `xen-shimd` and `xenstored` (threads of this process,
//! on temporary sockets), `xl` starts backendd. xenstored and xen-shimd:
//! both binaries under `xen-supervise` ([`Dom0::start_supervised`]). The
//! real `xl`, `xen-supervise`, `backendd` and `xen-pvguest` binaries.
//! Needs root, `/dev/fuse`, loop devices and e2fsprogs (`apt-get install
//! e2fsprogs mount coreutils`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xen_testhost::{pv_cmdline, run, Dom0};

/// The private Dom0 of this test: for `backendd`
/// [`Dom0::start_for_pv_guests`], for the others
/// [`Dom0::start_supervised`].
fn dom0(prefix: &str, service: &str) -> Result<Dom0> {
    let exe = Path::new(env!("CARGO_BIN_EXE_xen-pvguest"));
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"));
    if service == "backendd" {
        return Dom0::start_for_pv_guests(prefix, exe, ws);
    }
    let libexec = Dom0::prepare_pv_guests(exe, ws)?;
    xen_testhost::build_binaries(&libexec, ws, &xen_testhost::SUPERVISED_BINARIES)?;
    Dom0::start_supervised(prefix, &libexec)
}

const GUEST_RUN: Duration = Duration::from_secs(240);
/// Records the guest writes.
const RECORDS: u32 = 120;
/// The service is killed once the guest logged each of these records' ack.
const KILL_AT: [u32; 2] = [30, 75];

/// One SIGKILL of a plan: `service`, once the guest acknowledged record
/// `at`; then the test waits `pause` before the next one.
#[derive(Clone, Copy)]
struct Kill {
    at: u32,
    service: &'static str,
    pause: Duration,
}

/// The same service killed at each of [`KILL_AT`].
fn twice(service: &'static str) -> [Kill; 2] {
    KILL_AT.map(|at| Kill {
        at,
        service,
        pause: Duration::ZERO,
    })
}
/// How long the supervisor gets to have a new service running (its first
/// restart comes 0.1 s after the death, the second 0.2 s).
const BACK_WITHIN: Duration = Duration::from_secs(2);

fn service_log(host: &Dom0, service: &str) -> String {
    std::fs::read_to_string(host.rundir().join(format!("{service}.log"))).unwrap_or_default()
}

/// Waits for a live `service` other than `old` in its pid file; its pid
/// and how long that took.
fn wait_new_pid(host: &Dom0, service: &str, old: i32) -> Result<(i32, Duration)> {
    let t = Instant::now();
    loop {
        if let Some(pid) = host.service_pid(service).filter(|&p| p != old) {
            return Ok((pid, t.elapsed()));
        }
        if t.elapsed() > BACK_WITHIN {
            anyhow::bail!(
                "no new {service} within {BACK_WITHIN:?} of the SIGKILL of {old}; its log:\n{}",
                service_log(host, service)
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
            "{what}: not within {GUEST_RUN:?}; the guest's log:\n{log}\nthe services' logs:\n{}\n{}\n{}",
            service_log(host, "backendd"),
            service_log(host, "xenstored"),
            service_log(host, "xen-shimd"),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn test_backendd_sigkill_during_guest_writes_restart_reconnects_without_losing_acked_records(
) -> Result<()> {
    sigkill_during_writes(&twice("backendd"), &["xvda"], 0.0)
}

/// With two disks both reconnect: each disk's waiter sees the watch events
/// of the other's device too (one xenstore connection per guest), so one
/// disk cannot swallow the other's backend change.
#[test]
fn test_backendd_sigkill_with_two_disks_both_reconnect_without_losing_acked_records() -> Result<()>
{
    sigkill_during_writes(&twice("backendd"), &["xvda", "xvdb"], 0.0)
}

/// xenstored SIGKILLed with a guest running: its supervisor has it back
/// within [`BACK_WITHIN`] with its journalled state (the guest's nodes),
/// and backendd, which exits when its xenstored connection closes, is
/// started again by its own supervisor. (The guest's disk I/O across it:
/// [`test_xenstored_sigkill_during_guest_writes_restart_keeps_watches_and_acked_records`].)
#[test]
fn test_xenstored_sigkill_is_restarted_with_its_state_and_backendd_follows() -> Result<()> {
    // Arrange
    let mut host = dom0("xskill-", "xenstored")?;
    let name = format!("xskill{}", std::process::id());
    let cfg = host.pv_config(&name, 64, "#!/bin/sh\necho guest-up\nsleep 60\n", "")?;
    host.xl_ok(&["create", &cfg])?;
    host.track_guest(&name);
    wait_log(&host, &name, "the guest's init", |l| l.contains("guest-up"));
    let domid = host.domid(&name)?.context("the guest is listed")?;
    let supervisors = (
        host.supervisor_pid("xenstored")
            .context("xenstored supervised")?,
        host.supervisor_pid("backendd")
            .context("backendd supervised")?,
    );
    let xs_old = host.service_pid("xenstored").context("xenstored runs")?;
    let bd_old = host.service_pid("backendd").context("backendd runs")?;

    // Act
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(xs_old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL xenstored");
    let (xs_new, xs_after) = wait_new_pid(&host, "xenstored", xs_old)?;
    let (bd_new, bd_after) = wait_new_pid(&host, "backendd", bd_old)?;
    let out = Command::new("xenstore-read")
        .arg(format!("/local/domain/{domid}/name"))
        .env("XENSTORED_PATH", host.xenstored_socket())
        .output()
        .context("run xenstore-read (apt-get install xenstore-utils)")?;
    eprintln!(
        "xenstored {xs_old} -> {xs_new} after {xs_after:?}, backendd {bd_old} -> {bd_new} after \
         {bd_after:?}\nxenstored log:\n{}\nbackendd log:\n{}",
        service_log(&host, "xenstored"),
        service_log(&host, "backendd")
    );

    // Assert: the guest's node survived; each supervisor said why.
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
    assert_eq!(
        (
            host.supervisor_pid("xenstored"),
            host.supervisor_pid("backendd")
        ),
        (Some(supervisors.0), Some(supervisors.1))
    );
    let xlog = service_log(&host, "xenstored");
    assert!(
        xlog.contains("xenstored killed by signal 9 (SIGKILL)"),
        "{xlog}"
    );
    assert!(xlog.contains(&format!("started, pid {xs_new}")), "{xlog}");
    let blog = service_log(&host, "backendd");
    assert!(blog.contains("backendd exit status"), "{blog}");
    assert!(blog.contains(&format!("started, pid {bd_new}")), "{blog}");
    Ok(())
}

/// xenstored SIGKILLed twice while the guest writes: the restarted
/// xenstored gives the guest's ring its watches back (each fires once), so
/// blkfront sees the backend that backendd's supervisor restarted go
/// through its states and reconnects; every acknowledged record is there.
#[test]
fn test_xenstored_sigkill_during_guest_writes_restart_keeps_watches_and_acked_records() -> Result<()>
{
    sigkill_during_writes(&twice("xenstored"), &["xvda"], 0.0)
}

#[test]
fn test_shimd_sigkill_during_guest_writes_is_restarted_by_its_supervisor() -> Result<()> {
    sigkill_during_writes(&twice("xen-shimd"), &["xvda"], 0.0)
}

/// The shim SIGKILLed and back, then, past the shim's reattach grace (10 s,
/// after which it closes the ports no Dom0 handle reclaimed), backendd
/// SIGKILLed: the disk reconnects through xenstore, so xenstored must have
/// reattached its guests' event channels to the new shim by itself (no
/// domain was introduced meanwhile, nothing else made it talk to the shim).
/// The guest paces its records (0.2 s each) to still be writing then.
#[test]
fn test_shimd_then_backendd_sigkill_past_the_reattach_grace_the_disk_reconnects() -> Result<()> {
    let plan = [
        Kill {
            at: 20,
            service: "xen-shimd",
            pause: Duration::from_secs(13),
        },
        Kill {
            at: 25,
            service: "backendd",
            pause: Duration::ZERO,
        },
    ];
    sigkill_during_writes(&plan, &["xvda"], 0.2)
}

fn sigkill_during_writes(plan: &[Kill], vdevs: &[&str], pace_s: f64) -> Result<()> {
    // Arrange
    let mut host = dom0("bkill-", plan[0].service)?;
    let name = format!(
        "bkill{}{}{}",
        std::process::id(),
        vdevs.len(),
        plan[1].service.len()
    );
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
    let pace = if pace_s > 0.0 {
        format!("sleep {pace_s}\n")
    } else {
        String::new()
    };
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
             {pace}\
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

    // Act: kill the service mid-stream (twice); only its supervisor
    // starts it again; let the guest finish.
    let mut services: Vec<&str> = plan.iter().map(|k| k.service).collect();
    services.dedup();
    let mut supervisors = Vec::new();
    for s in &services {
        supervisors.push(
            host.supervisor_pid(s)
                .with_context(|| format!("{s} runs under xen-supervise"))?,
        );
    }
    let mut kills = Vec::new();
    let mut back_after = Vec::new();
    for k in plan {
        let before = wait_log(&host, &name, "the guest's records", |l| {
            acked(l).contains(&k.at) || l.contains("pvguest shutdown")
        });
        assert!(
            acked(&before).contains(&k.at),
            "{before}\nthe services' logs:\n{}\n{}\n{}",
            service_log(&host, "backendd"),
            service_log(&host, "xenstored"),
            service_log(&host, "xen-shimd"),
        );
        let pid = host
            .service_pid(k.service)
            .with_context(|| format!("{} runs", k.service))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the service");
        let after = acked(&host.guest_log(&name)).last().copied().unwrap_or(0);
        kills.push((k.service, pid, after));
        back_after.push(wait_new_pid(&host, k.service, pid)?);
        std::thread::sleep(k.pause);
    }
    let log = wait_log(&host, &name, "the guest's script after the restart", |l| {
        l.contains("pvguest shutdown") || l.contains("frontend-failed")
    });
    let destroyed = host.destroy_guest(&name)?;
    eprintln!(
        "killed (service, pid, last ack): {kills:?}\nback (new pid, after): {back_after:?}\n\
         guest log:\n{log}\nxl destroy: {}\nxen-shimd log:\n{}\nxenstored log:\n{}\n\
         backendd log:\n{}",
        String::from_utf8_lossy(&destroyed.stderr),
        service_log(&host, "xen-shimd"),
        service_log(&host, "xenstored"),
        service_log(&host, "backendd"),
    );

    // Assert: the same supervisor restarted each service after each kill,
    // and says why in its log; the guest finished and its disk reconnected.
    for (s, sup) in services.iter().zip(&supervisors) {
        assert_eq!(host.supervisor_pid(s), Some(*sup));
        let blog = service_log(&host, s);
        let mine: Vec<_> = kills
            .iter()
            .zip(&back_after)
            .filter(|((k, _, _), _)| k == s)
            .collect();
        assert_eq!(
            blog.matches(&format!("{s} killed by signal 9 (SIGKILL)"))
                .count(),
            mine.len(),
            "{blog}"
        );
        for (i, (_, (new_pid, _))) in mine.iter().enumerate() {
            assert!(blog.contains(&format!("; restart {} in", i + 1)), "{blog}");
            assert!(blog.contains(&format!("started, pid {new_pid}")), "{blog}");
        }
    }
    // Every Dom0 handle gave its ports back to a restarted shim within its
    // grace (the shim closes the others, and with them channels to guests).
    let slog = service_log(&host, "xen-shimd");
    assert!(!slog.contains("nobody reclaimed"), "{slog}");
    assert!(
        kills.iter().all(|&(_, _, after)| after < RECORDS),
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
        xen_testhost::mount_loop(i, m, "ro")?;
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
