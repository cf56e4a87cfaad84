//! Hostile PVHVM guests: a guest that scribbles on its rings and grant
//! table and triple-faults, or takes a page fault, is reported crashed; the
//! VMM's host, backendd and xenstored survive, and the next guest's disk
//! works. Needs root and `/dev/kvm`.

mod common;

use std::time::Duration;

use common::{ok, Host};

const T: Duration = Duration::from_secs(30);

#[test]
fn test_pvhvm_hostile_guest_crashes_only_itself() {
    let mut h = Host::start("pvhvm-hostile-");
    let img = h.image("hostile.img", 64);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let cfg = h.config("pvh-hostile", "hostile", std::slice::from_ref(&disk));
    ok("xl create", &h.create("pvh-hostile", &cfg));
    let log = h.wait_vmm_log("pvh-hostile", "crashed: triple fault", T);
    assert!(log.contains("hostile: blkif ring scribbled"), "log:\n{log}");
    assert!(log.contains("grant table scribbled"), "log:\n{log}");
    assert!(
        log.contains("random doorbells and hypercalls done"),
        "log:\n{log}"
    );
    h.wait_state("pvh-hostile", 'c', T);
    let backendd = h
        .backendd_pid()
        .expect("backendd survives the hostile guest");
    // blkback saw the scribbled ring (req_prod far ahead) and failed only
    // that device.
    let t0 = std::time::Instant::now();
    loop {
        let blog = std::fs::read_to_string(h.rundir().join("backendd.log")).unwrap_or_default();
        if blog.contains("RingOverflow") && blog.contains("device failed") {
            break;
        }
        assert!(
            t0.elapsed() < T,
            "blkback did not fail the hostile ring:\n{blog}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The host is fine: another guest's disk works with the same backendd.
    let img2 = h.image("next.img", 64);
    let cfg2 = h.config(
        "pvh-next",
        "selftest",
        &[format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            img2.display()
        )],
    );
    ok("xl create", &h.create("pvh-next", &cfg2));
    let log2 = h.wait_log("pvh-next", "disk self-test:", T);
    assert!(log2.contains("disk self-test: PASS"), "log:\n{log2}");
    assert_eq!(h.backendd_pid(), Some(backendd), "backendd was restarted");
}

#[test]
fn test_pvhvm_page_fault_is_reported_as_a_crash() {
    let mut h = Host::start("pvhvm-fault-");
    let cfg = h.config("pvh-fault", "fault", &[]);
    ok("xl create", &h.create("pvh-fault", &cfg));
    let log = h.wait_vmm_log("pvh-fault", "crashed: guest fault: vector 14", T);
    assert!(log.contains("cr2 0x7ffffffff000"), "log:\n{log}");
    h.wait_state("pvh-fault", 'c', T);
}

/// The runtime pid `xl create` printed (`Domain N created (runtime pid P, ...`).
fn runtime_pid(out: &std::process::Output) -> i32 {
    let err = String::from_utf8_lossy(&out.stderr);
    err.split("runtime pid ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no runtime pid in xl create's output: {err}"))
}

#[test]
fn test_pvhvm_runaway_guest_is_shut_down_by_its_watchdog() {
    let mut h = Host::start("pvhvm-runaway-");
    let cfg = h.config("pvh-runaway", "runaway timeout=1 pets=3", &[]);
    let out = h.create("pvh-runaway", &cfg);
    ok("xl create", &out);
    let vmm = runtime_pid(&out);
    let log = h.wait_vmm_log("pvh-runaway", "runaway: spinning at CPL3 forever", T);
    assert!(
        log.contains("runaway: watchdog 1 armed (1 s)"),
        "log:\n{log}"
    );
    assert!(log.contains("runaway: pet 3 of 3"), "log:\n{log}");
    assert!(
        !log.contains("fired"),
        "the watchdog fired although it was petted:\n{log}"
    );
    // The guest spins at CPL3 without a single exit; only the watchdog,
    // from another thread, can stop it.
    let row = h.list_row("pvh-runaway").expect("listed");
    assert!(row.contains('r') || row.contains('-'), "row: {row}");
    let log = h.wait_vmm_log("pvh-runaway", "watchdog timer 1 fired for domain", T);
    assert!(!log.contains("crashed"), "log:\n{log}");
    h.wait_state("pvh-runaway", 's', T);
    // Shut down with reason watchdog (4), as xl list -v shows it.
    let v = ok("xl list -v", &h.xl(&["list", "-v", "pvh-runaway"]));
    let row = v
        .lines()
        .find(|l| l.starts_with("pvh-runaway"))
        .unwrap_or_else(|| panic!("not listed: {v}"));
    assert_eq!(
        row.split_whitespace().last(),
        Some("4"),
        "reason code: {row}"
    );
    // The VMM (spinning vCPU and all) has ended by itself.
    let t0 = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{vmm}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{vmm}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(t0.elapsed() < T, "the VMM {vmm} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let backendd = h.backendd_pid().expect("backendd survives");
    // Another guest runs fine.
    let cfg2 = h.config("pvh-after", "xenstore", &[]);
    ok("xl create", &h.create("pvh-after", &cfg2));
    h.wait_log("pvh-after", "xenstore name = pvh-after", T);
    assert_eq!(h.backendd_pid(), Some(backendd), "backendd was restarted");
}
