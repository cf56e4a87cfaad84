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

/// Our PVHVM kernel does not watch `control/shutdown` (it advertises no
/// `control/feature-poweroff`): `xl shutdown` refuses as libxl does for an
/// HVM guest without PV drivers, and `-F` falls back to the hypervisor
/// shutting it down (the VMM cuts the power); on_poweroff then applies.
#[test]
fn test_pvhvm_xl_shutdown_needs_f_without_pv_control_and_f_shuts_it_down() {
    let mut h = Host::start("pvhvm-xlshutdown-");
    let img = h.image("sd.img", 16);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let cfg = h.config_actions(
        "pvh-sd",
        "blkload pattern=randread bs=4096 qd=4 secs=120",
        &[disk],
        1,
        "",
    );
    ok("xl create", &h.create("pvh-sd", &cfg));
    h.wait_log("pvh-sd", "Connected in", T);

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
    h.wait_vmm_log("pvh-sd", "the toolstack shut the domain down", T);
    h.wait_gone("pvh-sd", T);
}
