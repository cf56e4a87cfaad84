//! Xen's suspend protocol with a PVHVM guest: the toolstack writes
//! `suspend` to the guest's `control/shutdown` (the kernel advertised
//! `control/feature-suspend`), the kernel makes
//! `SCHEDOP_shutdown(SHUTDOWN_suspend)` between two disk I/Os with writes
//! in flight, the VMM parks it and the shim has the domain shut down with
//! reason suspend (`xl list`: `s`); the toolstack's resume in place
//! (`Control::resume_domain`, Xen's `XEN_DOMCTL_resumedomain`: a cancelled
//! suspend, as after `xl save -c`) makes the hypercall return 1 and the
//! guest goes on with its connections. Needs root and `/dev/kvm` (the
//! network test also iproute2 and curl, tests/setup-host.sh; it fails
//! loudly without).

mod common;

use std::time::{Duration, Instant};

use common::net::{bytes_body, domid, exec, need, netserve_guest, slow_download};
use common::{ok, passes, Host};

const T: Duration = Duration::from_secs(60);

/// A suspend during the disk self-test (rounds of 64 writes across the
/// disk, flush, read back and verify), cancelled twice: each time the
/// domain shows `s`, holds still (no self-test line while suspended), and
/// after the resume the round that was cut in two passes: no request lost
/// or duplicated (a lost one stalls the round, a lost write fails the
/// verify). `xl shutdown` still works afterwards.
#[test]
fn test_pvhvm_suspend_during_disk_selftest_then_cancelled_resume_goes_on() {
    let mut h = Host::start("pvhvm-suspend-");
    let img = h.image("su.img", 64);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let cfg = h.config_actions(
        "pvh-su",
        "selftest rounds=100000 stay",
        &[disk],
        1,
        "on_poweroff = \"preserve\"\n",
    );
    ok("xl create", &h.create("pvh-su", &cfg));
    let id = domid(&h, "pvh-su");
    h.wait_vmm_log("pvh-su", "disk self-test: PASS", T);
    let home = format!("/local/domain/{id}/control");
    assert_eq!(
        h.xs_read(&format!("{home}/feature-suspend")).as_deref(),
        Some("1")
    );
    let control = xen_shim_dom0::Control::connect(&h.shim_socket()).expect("shim control");

    for round in 1..=2 {
        h.xs_write(&format!("{home}/shutdown"), "suspend");
        let t0 = Instant::now();
        let row = h.wait_state("pvh-su", 's', T);
        let log = h.wait_vmm_log("pvh-su", &format!("xen-vmm: domain {id} suspended"), T);
        assert!(log.contains("pvhvm-kernel: suspending"), "{log}");
        println!("round {round}: suspended in {:?}: {row}", t0.elapsed());
        // The request was acknowledged (emptied), as Linux's manage.c.
        assert_eq!(h.xs_read(&format!("{home}/shutdown")).as_deref(), Some(""));
        // Suspended: nothing runs.
        let n = passes(&h.vmm_log("pvh-su"));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            passes(&h.vmm_log("pvh-su")),
            n,
            "the guest ran while suspended"
        );
        assert!(
            h.list_row("pvh-su").is_some_and(|r| r.contains("--s")),
            "{:?}",
            h.list_row("pvh-su")
        );

        let t1 = Instant::now();
        control.resume_domain(id).expect("resume the domain");
        let resumed = format!("xen-vmm: domain {id} resumed (suspend cancelled: same domain)");
        h.wait_vmm_log("pvh-su", &resumed, T);
        h.wait_vmm_log("pvh-su", "suspend cancelled: resumed in the same domain", T);
        println!(
            "round {round}: resume_domain to the guest's line: {:?}",
            t1.elapsed()
        );
        // Two more rounds pass: the one cut by the suspend and a whole one.
        let t0 = Instant::now();
        while passes(&h.vmm_log("pvh-su")) < n + 2 {
            let log = h.vmm_log("pvh-su");
            assert!(!log.contains("disk self-test: FAIL"), "{log}");
            assert!(
                t0.elapsed() < T,
                "no self-test passed after the resume: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let row = h.list_row("pvh-su").expect("listed");
        assert!(!row.contains("--s"), "{row}");
        // A second resume is refused: the domain is not suspended.
        let e = control.resume_domain(id).expect_err("resumed twice");
        assert!(e.to_string().contains("not suspended"), "{e}");
    }
    let log = h.vmm_log("pvh-su");
    assert!(!log.contains("FAIL"), "{log}");

    // The PV control interface still works: xl shutdown ends the run.
    ok("xl shutdown", &h.xl(&["shutdown", "pvh-su"]));
    h.wait_vmm_log("pvh-su", "pvhvm-kernel: shutdown (reason 0)", T);
    ok("xl destroy", &h.xl(&["destroy", "pvh-su"]));
    h.wait_gone("pvh-su", T);
}

/// A checkpoint (suspend, then the cancelled resume) in the middle of an
/// HTTP download from the guest's `netserve`: the same TCP connection
/// (one `curl` request) delivers every byte, in order, and Dom0 reaches
/// the guest afterwards.
#[test]
fn test_pvhvm_suspend_during_http_download_then_cancelled_resume_keeps_the_connection() {
    need("curl", "curl");
    let mut h = Host::start("pvhvm-suspend-net-");
    let g = netserve_guest(&mut h, "s", 78, "pvsu", 0x4f);
    let (ns, name) = (&g.ns, g.name.as_str());
    let id = domid(&h, name);
    let control = xen_shim_dom0::Control::connect(&h.shim_socket()).expect("shim control");
    const N: usize = 40_000_000;

    let (download, suspended_for) = std::thread::scope(|s| {
        let dl = s.spawn(|| slow_download(ns, "10.78.0.5", N, 60));
        std::thread::sleep(Duration::from_millis(1500));
        h.xs_write(&format!("/local/domain/{id}/control/shutdown"), "suspend");
        h.wait_state(name, 's', T);
        let t0 = Instant::now();
        h.wait_vmm_log(name, &format!("xen-vmm: domain {id} suspended"), T);
        std::thread::sleep(Duration::from_millis(500));
        control.resume_domain(id).expect("resume the domain");
        h.wait_vmm_log(name, "suspend cancelled: resumed in the same domain", T);
        let took = t0.elapsed();
        (dl.join().expect("the curl thread"), took)
    });
    println!("suspended (and resumed) within {suspended_for:?} of the download");
    assert!(
        download.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&download.stderr)
    );
    assert_eq!(download.stdout.len(), N, "bytes received");
    assert!(download.stdout == bytes_body(N), "the body differs");
    let ping = exec(ns, "ping", &["-c", "1", "-W", "2", "10.78.0.5"]);
    assert!(ping.status.success(), "no ping after the resume");
    let log = h.vmm_log(name);
    assert!(!log.contains("FAIL"), "{log}");
    ok(
        "xl destroy",
        &h.dom0.destroy_guest(name).expect("run xl destroy"),
    );
}
