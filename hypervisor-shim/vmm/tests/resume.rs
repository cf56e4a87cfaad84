//! A PVHVM guest resumed in a new domain (issue 14): `xl save` of a guest
//! that advertises `control/feature-suspend` asks it to suspend first (Xen's
//! suspend protocol, as libxl), the VMM saves it parked in its
//! `SCHEDOP_shutdown(SHUTDOWN_suspend)` with the hypercall's return set to
//! 0, and after `xl restore` the kernel sets up again what a new domain
//! does not carry over (grant table, events, xenstore and console ports,
//! the control watch) and its frontends reconnect (`BlkFront::resume`
//! re-issues what was on the ring; `NetFront::resume` and a gratuitous
//! ARP). `xl save -c` resumes it in place (the hypercall returns 1). Needs
//! root and `/dev/kvm` (the network test also iproute2 and curl,
//! tests/setup-host.sh; it fails loudly without).

mod common;

use std::time::{Duration, Instant};

use common::net::{
    assert_downloaded, bytes_body, domid, exec, need, netserve_guest, slow_download,
};
use common::{ok, passes, verify_stream, wait_passes, Host};

const T: Duration = Duration::from_secs(60);

/// `xl save` of a guest in the middle of its disk self-test rounds (writes
/// in flight), then `xl restore`: the guest learns it runs in a new domain,
/// sets its connections up again and its vbd reconnects to the new
/// domain's backend (new grants and port: the backend's nodes name the
/// new frontend connection); the round the save cut passes (no request
/// lost, none completed twice: a lost write fails the verify) and more
/// rounds follow. Then a second save and restore of the restored guest.
#[test]
fn test_pvhvm_xl_save_restore_of_suspending_guest_reconnects_its_disk() {
    let mut h = Host::start("pvhvm-resume-");
    let img = h.image("re.img", 64);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let name = "pvh-re";
    let cfg = h.config(name, "selftest rounds=100000", &[disk]);
    ok("xl create", &h.create(name, &cfg));
    wait_passes(&h, name, 1, T);
    let file = h.rundir().join("pvh-re.save");
    let mut id = domid(&h, name);

    for round in 1..=2 {
        let before = passes(&h.vmm_log(name));
        let t0 = Instant::now();
        let out = ok("xl save", &h.xl(&["save", name, file.to_str().unwrap()]));
        let saved_in = t0.elapsed();
        let log = h.vmm_log(name);
        assert!(log.contains("pvhvm-kernel: suspending"), "{out}\n{log}");
        assert!(
            log.contains(&format!("xen-vmm: domain {id} suspended")),
            "{log}"
        );
        assert!(
            !ok("xl list", &h.xl(&["list"])).contains(name),
            "the saved domain is still listed"
        );
        // Xen's own checker accepts the file of a suspended guest.
        verify_stream(&file);
        let t1 = Instant::now();
        ok("xl restore", &h.xl(&["restore", file.to_str().unwrap()]));
        let new_id = domid(&h, name);
        assert_ne!(new_id, id, "the restore made no new domain");
        let log = h.wait_vmm_log(
            name,
            &format!("pvhvm-kernel: resumed in domain {new_id} after"),
            T,
        );
        let log_line = h.wait_vmm_log(
            name,
            &format!("pvhvm-kernel: vbd 51712 reconnected in domain {new_id}"),
            T,
        );
        let reconnected_in = t1.elapsed();
        assert!(!log.contains("not supported"), "{log}");
        // consback serves the new domain's console ring (introduced after
        // the load): the same line in the console log.
        h.wait_log(
            name,
            &format!("pvhvm-kernel: vbd 51712 reconnected in domain {new_id}"),
            Duration::from_secs(5),
        );
        // The round the save cut and a whole one pass in the new domain
        // (the new VMM's log starts at the restore).
        let after = wait_passes(&h, name, 2, T);
        println!(
            "round {round}: {before} passes before; xl save took {saved_in:?}, restore to the vbd reconnected {reconnected_in:?}; {} passes since\n{}",
            passes(&after),
            log_line
                .lines()
                .filter(|l| l.contains("resumed in") || l.contains("reconnected"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The new domain's backend holds the new frontend connection.
        let be = format!("/local/domain/0/backend/vbd/{new_id}/51712");
        assert_eq!(h.xs_read(&format!("{be}/state")).as_deref(), Some("4"));
        let fe = format!("/local/domain/{new_id}/device/vbd/51712");
        assert_eq!(h.xs_read(&format!("{fe}/state")).as_deref(), Some("4"));
        let port = h
            .xs_read(&format!("{fe}/event-channel"))
            .expect("the frontend's event-channel in the new domain");
        let ring = h
            .xs_read(&format!("{fe}/ring-ref"))
            .or_else(|| h.xs_read(&format!("{fe}/ring-ref0")))
            .expect("the frontend's ring-ref in the new domain");
        println!("round {round}: domain {new_id}: event-channel {port}, ring-ref {ring}");
        // The control interface works in the new domain.
        assert_eq!(
            h.xs_read(&format!("/local/domain/{new_id}/control/feature-suspend"))
                .as_deref(),
            Some("1")
        );
        id = new_id;
    }
    ok("xl shutdown", &h.xl(&["shutdown", name]));
    h.wait_vmm_log(name, "pvhvm-kernel: shutdown (reason 0)", T);
    ok("xl destroy", &h.xl(&["destroy", name]));
    h.wait_gone(name, T);
}

/// `xl save -c` of a guest that suspends: the guest is resumed in place
/// (its hypercall returns 1) and its self-test goes on with the same
/// connection. A later `xl save` and `xl restore` of it (the checkpoint
/// file itself is not restored: the disk went on without it, as Xen's)
/// still reconnects in the new domain.
#[test]
fn test_pvhvm_xl_save_checkpoint_of_suspending_guest_goes_on() {
    let mut h = Host::start("pvhvm-resume-c-");
    let img = h.image("rc.img", 64);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    let name = "pvh-rc";
    let cfg = h.config(name, "selftest rounds=100000", &[disk]);
    ok("xl create", &h.create(name, &cfg));
    wait_passes(&h, name, 1, T);
    let id = domid(&h, name);
    let file = h.rundir().join("pvh-rc.save");
    ok(
        "xl save -c",
        &h.xl(&["save", "-c", name, file.to_str().unwrap()]),
    );
    h.wait_vmm_log(
        name,
        "pvhvm-kernel: suspend cancelled: resumed in the same domain",
        T,
    );
    let n = passes(&h.vmm_log(name));
    wait_passes(&h, name, n + 2, T);
    assert_eq!(domid(&h, name), id);
    assert!(!h.list_row(name).expect("listed").contains("--s"));

    ok("xl save", &h.xl(&["save", name, file.to_str().unwrap()]));
    ok("xl restore", &h.xl(&["restore", file.to_str().unwrap()]));
    let new_id = domid(&h, name);
    h.wait_vmm_log(
        name,
        &format!("pvhvm-kernel: vbd 51712 reconnected in domain {new_id}"),
        T,
    );
    wait_passes(&h, name, 2, T);
    ok("xl destroy", &h.xl(&["destroy", name]));
    h.wait_gone(name, T);
}

/// `xl save` and `xl restore` in the middle of an HTTP download from the
/// guest's `netserve`: the restored guest's vif reconnects to the new
/// domain's backend, announces itself with a gratuitous ARP, and the same
/// TCP connection (one `curl` request) delivers every byte in order; a new
/// download succeeds afterwards.
#[test]
fn test_pvhvm_xl_save_restore_during_http_download_keeps_the_connection() {
    need("curl", "curl");
    let mut h = Host::start("pvhvm-resume-net-");
    let g = netserve_guest(&mut h, "r", 79, "pvre", 0x4e);
    let (ns, name) = (&g.ns, g.name.as_str());
    let file = h.rundir().join("pvre.save");
    const N: usize = 40_000_000;

    let (download, moved_in) = std::thread::scope(|s| {
        let dl = s.spawn(|| slow_download(ns, "10.79.0.5", N, 90));
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        ok("xl save", &h.xl(&["save", name, file.to_str().unwrap()]));
        ok("xl restore", &h.xl(&["restore", file.to_str().unwrap()]));
        let new_id = domid(&h, name);
        h.wait_vmm_log(name, "netserve: gratuitous ARP sent", T);
        let took = t0.elapsed();
        let be = format!("/local/domain/0/backend/vif/{new_id}/0/state");
        assert_eq!(h.xs_read(&be).as_deref(), Some("4"), "{be}");
        (dl.join().expect("the curl thread"), took)
    });
    println!("saved, restored and reconnected in {moved_in:?} during the download");
    let log = h.vmm_log(name);
    assert_downloaded(&download, N, &log);
    let again = exec(
        ns,
        "curl",
        &["-sS", "--max-time", "20", "http://10.79.0.5/bytes/100000"],
    );
    assert!(again.status.success(), "no new download after the restore");
    assert!(again.stdout == bytes_body(100_000));
    assert!(!log.contains("FAIL"), "{log}");
    ok(
        "xl destroy",
        &h.dom0.destroy_guest(name).expect("run xl destroy"),
    );
}
