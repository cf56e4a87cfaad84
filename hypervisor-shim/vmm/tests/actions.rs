//! xl.cfg's `on_crash` / `on_watchdog` / `on_poweroff` actions for PVHVM
//! guests, carried out by the monitor `xl create` leaves behind (Xen's xl
//! child): `destroy` (the default) removes the domain and all its xenstore
//! nodes, `preserve` keeps it listed, `restart` creates it again. Needs root
//! and `/dev/kvm`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{ok, Host};

const T: Duration = Duration::from_secs(30);

/// The domid `xl create` printed (`Domain N created ...`).
fn domid(out: &Output) -> u16 {
    let err = String::from_utf8_lossy(&out.stderr);
    err.split("Domain ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no domid in xl create's output: {err}"))
}

/// The children of `/local/domain` (Xen's `xenstore-list` on our xenstored).
fn domain_homes(h: &Host) -> Vec<String> {
    let out = Command::new("xenstore-list")
        .arg("/local/domain")
        .env("XENSTORED_PATH", h.dir.path().join("xenstored.sock"))
        .output()
        .expect("run xenstore-list (xenstore-utils)");
    ok("xenstore-list /local/domain", &out)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn test_pvhvm_crash_default_on_crash_destroys_the_domain() {
    let mut h = Host::start("pvhvm-oncrash-destroy-");
    let cfg = h.config_actions("pvh-crash-d", "fault", &[], 1, "");
    let out = h.create("pvh-crash-d", &cfg);
    ok("xl create", &out);
    let id = domid(&out).to_string();
    h.wait_vmm_log("pvh-crash-d", "crashed: guest fault: vector 14", T);
    h.wait_gone("pvh-crash-d", T);
    let mon = h.monitor_log("pvh-crash-d");
    assert!(
        mon.contains("ended (Shutdown { reason: Crash }): destroy"),
        "{mon}"
    );
    // As `xl destroy`: the domain's home and every node are gone.
    let homes = domain_homes(&h);
    assert!(!homes.contains(&id), "/local/domain/{id} left: {homes:?}");
}

#[test]
fn test_pvhvm_on_crash_preserve_keeps_the_crashed_domain() {
    let mut h = Host::start("pvhvm-oncrash-preserve-");
    let cfg = h.config_actions("pvh-crash-p", "fault", &[], 1, "on_crash = \"preserve\"\n");
    let out = h.create("pvh-crash-p", &cfg);
    ok("xl create", &out);
    let id = domid(&out).to_string();
    h.wait_state("pvh-crash-p", 'c', T);
    // The monitor has seen it and left it alone.
    let t0 = std::time::Instant::now();
    while !h.monitor_log("pvh-crash-p").contains("preserve") {
        assert!(t0.elapsed() < T, "{}", h.monitor_log("pvh-crash-p"));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    h.wait_state("pvh-crash-p", 'c', T);
    assert!(domain_homes(&h).contains(&id));
    // xl destroy still removes it.
    ok("xl destroy", &h.xl(&["destroy", "pvh-crash-p"]));
    h.wait_gone("pvh-crash-p", T);
    assert!(!domain_homes(&h).contains(&id));
}

#[test]
fn test_pvhvm_on_watchdog_restart_recreates_the_domain() {
    let mut h = Host::start("pvhvm-onwd-restart-");
    let cfg = h.config_actions(
        "pvh-wd-r",
        "runaway timeout=1 pets=1",
        &[],
        1,
        "on_watchdog = \"restart\"\n",
    );
    let out = h.create("pvh-wd-r", &cfg);
    ok("xl create", &out);
    let first = domid(&out);
    let t0 = std::time::Instant::now();
    let mon = loop {
        let m = h.monitor_log("pvh-wd-r");
        if m.contains("restarted as domain") {
            break m;
        }
        assert!(t0.elapsed() < T, "no restart: {m}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        mon.contains("ended (Shutdown { reason: Watchdog }): restart"),
        "{mon}"
    );
    // The new domain boots the same kernel and runs away again.
    h.wait_vmm_log("pvh-wd-r", "runaway: spinning at CPL3 forever", T);
    let row = h
        .list_row("pvh-wd-r")
        .expect("the restarted domain is listed");
    let second: u16 = row
        .split_whitespace()
        .nth(1)
        .and_then(|d| d.parse().ok())
        .expect("domid column");
    assert_ne!(first, second, "{row}");
    assert!(!domain_homes(&h).contains(&first.to_string()));
    // xl destroy ends it for good (the monitor sees it gone and exits).
    ok("xl destroy", &h.xl(&["destroy", "pvh-wd-r"]));
    h.wait_gone("pvh-wd-r", T);
    let t0 = std::time::Instant::now();
    while !h.monitor_log("pvh-wd-r").contains("is gone") {
        assert!(t0.elapsed() < T, "{}", h.monitor_log("pvh-wd-r"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PVHVM guest without PV drivers (our kernel's `runaway` workload sets
/// up no xenstore client, so it advertises no `control/feature-poweroff`):
/// `xl shutdown` refuses as libxl does for an HVM guest without PV
/// drivers, and `-F` falls back to the hypervisor shutting it down (the
/// VMM cuts the power); on_poweroff then applies.
#[test]
fn test_pvhvm_xl_shutdown_needs_f_without_pv_control_and_f_shuts_it_down() {
    let mut h = Host::start("pvhvm-xlshutdown-");
    let cfg = h.config_actions("pvh-sd", "runaway timeout=120 pets=0", &[], 1, "");
    ok("xl create", &h.create("pvh-sd", &cfg));
    h.wait_vmm_log("pvh-sd", "runaway: spinning at CPL3 forever", T);

    let refused = h.xl(&["shutdown", "pvh-sd"]);
    assert!(
        !refused.status.success(),
        "xl shutdown without -F succeeded"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("PV control interface not available"), "{err}");
    assert!(
        h.list_row("pvh-sd").is_some(),
        "the refusal touched the domain"
    );

    let forced = ok(
        "xl shutdown -F -w",
        &h.xl(&["shutdown", "-F", "-w", "pvh-sd"]),
    );
    assert!(forced.contains("Waiting for 1 domains"), "{forced}");
    // (The VMM's own line about it may not make it to its log: the monitor
    // destroys the domain as soon as the shim has it shut down.)
    h.wait_gone("pvh-sd", T);
    let mon = h.monitor_log("pvh-sd");
    assert!(
        mon.contains("ended (Shutdown { reason: Poweroff }): destroy"),
        "{mon}"
    );
}

/// Xen's PV control protocol in the PVHVM kernel (as Linux's
/// `drivers/xen/manage.c`): it advertises `control/feature-poweroff` and
/// `feature-reboot`, and `xl shutdown -w` during a disk load ends the load
/// (its in-flight I/Os complete, its line is printed), the request is
/// acknowledged (`control/shutdown` emptied) and the domain shuts down
/// with reason poweroff; on_poweroff = destroy removes it.
#[test]
fn test_pvhvm_xl_shutdown_through_control_shutdown_during_disk_load() {
    let mut h = Host::start("pvhvm-ctlshutdown-");
    let img = h.image("cs.img", 16);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let cfg = h.config_actions(
        "pvh-cs",
        "blkload pattern=randread bs=4096 qd=8 secs=120",
        &[disk],
        1,
        "",
    );
    let out = h.create("pvh-cs", &cfg);
    ok("xl create", &out);
    let id = domid(&out);
    h.wait_log("pvh-cs", "Connected in", T);
    let home = format!("/local/domain/{id}/control");
    let t0 = std::time::Instant::now();
    while h.xs_read(&format!("{home}/feature-poweroff")).as_deref() != Some("1") {
        assert!(t0.elapsed() < T, "no control/feature-poweroff");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        h.xs_read(&format!("{home}/feature-reboot")).as_deref(),
        Some("1")
    );
    // Xen's xl waits with -w and prints its lines.
    let t0 = std::time::Instant::now();
    let waited = ok("xl shutdown -w", &h.xl(&["shutdown", "-w", "pvh-cs"]));
    assert!(waited.contains("Waiting for 1 domains"), "{waited}");
    assert!(
        waited.contains(&format!("Domain {id} has been shut down, reason code 0"))
            || waited.contains(&format!("Domain {id} has been destroyed")),
        "{waited}"
    );
    assert!(t0.elapsed() < T, "{:?}", t0.elapsed());
    let log = h.wait_vmm_log("pvh-cs", "pvhvm-kernel: shutdown (reason 0)", T);
    assert!(
        log.contains("the toolstack asks for poweroff (control/shutdown)"),
        "{log}"
    );
    // The load stopped cleanly: its I/Os completed and it reported.
    assert!(log.contains("\"blkload\":1"), "{log}");
    assert!(!log.contains("blkload: FAIL"), "{log}");
    h.wait_gone("pvh-cs", T);
    let mon = h.monitor_log("pvh-cs");
    assert!(
        mon.contains("ended (Shutdown { reason: Poweroff }): destroy"),
        "{mon}"
    );
}

/// `xl reboot` of a PVHVM guest through `control/shutdown`: the kernel
/// (`selftest stay`: the self-test, then up until the toolstack asks)
/// acknowledges the request and shuts down with reason reboot; xl's
/// default on_reboot = restart creates the domain again, whose self-test
/// passes again on the same disk. A request the kernel does not carry out
/// (`suspend` before it supports it is the case Linux logs) is left
/// unacknowledged and the domain keeps running.
#[test]
fn test_pvhvm_xl_reboot_through_control_shutdown_restarts_the_domain() {
    let mut h = Host::start("pvhvm-ctlreboot-");
    let img = h.image("rb.img", 16);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let cfg = h.config_actions("pvh-rb", "selftest stay", &[disk], 1, "");
    let out = h.create("pvh-rb", &cfg);
    ok("xl create", &out);
    let first = domid(&out);
    h.wait_vmm_log("pvh-rb", "waiting for the toolstack (control/shutdown)", T);
    assert!(h.vmm_log("pvh-rb").contains("disk self-test: PASS"));
    // An unknown request: ignored, left in place, the domain runs on.
    let node = format!("/local/domain/{first}/control/shutdown");
    h.xs_write(&node, "hibernate-please");
    h.wait_vmm_log(
        "pvh-rb",
        "ignoring the shutdown request \"hibernate-please\"",
        T,
    );
    assert_eq!(h.xs_read(&node).as_deref(), Some("hibernate-please"));
    assert!(h.list_row("pvh-rb").is_some());
    h.xs_write(&node, "");

    ok("xl reboot", &h.xl(&["reboot", "pvh-rb"]));
    let t0 = std::time::Instant::now();
    let mon = loop {
        let m = h.monitor_log("pvh-rb");
        if m.contains("restarted as domain") {
            break m;
        }
        assert!(t0.elapsed() < T, "no restart: {m}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        mon.contains("ended (Shutdown { reason: Reboot }): restart"),
        "{mon}"
    );
    let second = loop {
        if let Some(d) = h
            .list_row("pvh-rb")
            .and_then(|r| {
                r.split_whitespace()
                    .nth(1)
                    .and_then(|d| d.parse::<u16>().ok())
            })
            .filter(|&d| d != first)
        {
            break d;
        }
        assert!(
            t0.elapsed() < T,
            "no new domain: {:?}",
            h.list_row("pvh-rb")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The new domain's self-test passes (its lines follow its domid's).
    let t0 = std::time::Instant::now();
    loop {
        let log = h.vmm_log("pvh-rb");
        let tail = log
            .rfind(&format!("domain {second} on xenstore"))
            .map(|i| &log[i..]);
        if tail.is_some_and(|t| t.contains("disk self-test: PASS")) {
            break;
        }
        assert!(
            !tail.is_some_and(|t| t.contains("disk self-test: FAIL")),
            "{log}"
        );
        assert!(t0.elapsed() < T, "the new domain's self-test: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok("xl destroy", &h.xl(&["destroy", "pvh-rb"]));
    h.wait_gone("pvh-rb", T);
}
