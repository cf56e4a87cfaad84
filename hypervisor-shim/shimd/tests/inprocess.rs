//! The daemon served by a thread of the test process (`daemon::spawn`), with
//! a guest attached from the same process: destroying that guest must not
//! signal the process hosting the daemon, and dropping the handle stops the
//! daemon cleanly.

use std::time::Duration;

use xen_abi::event_channel::*;
use xen_shim_dom0::{Control, Evtchn, Gntdev};
use xen_shim_guest::Hypervisor;
use xen_shim_proto::protocol::DomainConfig;
use xen_shimd::{self as daemon, DaemonConfig};

/// Removes a test daemon's directory and memory directory, also when the
/// test fails.
struct Cleanup(std::path::PathBuf, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn test_inprocess_daemon_guest_and_dom0_in_one_process() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "needs root (root-only daemon socket)");
    let tag = format!("xen-shim-inproc-{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    let mem_dir = std::path::PathBuf::from("/dev/shm").join(&tag);
    let cfg = DaemonConfig {
        socket: dir.join("control.sock"),
        state_dir: dir.join("state"),
        mem_dir: mem_dir.clone(),
        ..DaemonConfig::default()
    };
    let _cleanup = Cleanup(dir.clone(), mem_dir);
    let handle = daemon::spawn(cfg).expect("spawn the daemon");
    let ctl = Control::connect(handle.socket()).expect("connect");
    let d = ctl
        .create_domain(&DomainConfig::pv("inproc", 4))
        .expect("create");

    let hv = Hypervisor::attach(handle.socket(), d.domid, &d.token).expect("attach in-process");
    let mut op = evtchn_alloc_unbound {
        dom: xen_abi::xen::DOMID_SELF,
        remote_dom: 0,
        port: 0,
    };
    hv.evtchnop_alloc_unbound(&mut op).expect("alloc");
    let ev = Evtchn::open(handle.socket()).expect("evtchn");
    let l = ev.bind_interdomain(d.domid, op.port).expect("bind");
    ev.notify(l).expect("notify");
    assert!(hv
        .schedop_poll(&[op.port], Some(Duration::from_secs(5)))
        .expect("poll"));
    hv.grant_foreign_access(9, 0, 3, false).expect("grant");
    let g = Gntdev::open(handle.socket()).expect("gntdev");
    g.map_grant_ref(d.domid, 9, true)
        .expect("map")
        .unmap()
        .expect("unmap");

    ctl.destroy_domain(d.domid)
        .expect("destroy: must not kill this process");
    drop(hv);
    let sock = handle.socket().to_path_buf();
    handle.stop().expect("stop");
    assert!(
        !sock.exists(),
        "the socket is removed when the daemon stops"
    );
}

#[test]
fn test_first_domid_option_sets_where_domids_start() {
    for bad in ["0", "32752", "x"] {
        assert!(
            DaemonConfig::from_args(["--first-domid".to_string(), bad.to_string()]).is_err(),
            "--first-domid {bad} refused"
        );
    }
    let tag = format!("xen-shim-firstdom-{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    let mem_dir = std::path::PathBuf::from("/dev/shm").join(&tag);
    let mut cfg = DaemonConfig::from_args(
        ["--first-domid", "4242", "--socket"]
            .into_iter()
            .map(String::from)
            .chain([dir.join("control.sock").display().to_string()]),
    )
    .expect("parse");
    cfg.state_dir = dir.join("state");
    cfg.mem_dir = mem_dir.clone();
    let _cleanup = Cleanup(dir.clone(), mem_dir);
    let handle = daemon::spawn(cfg).expect("spawn the daemon");
    let ctl = Control::connect(handle.socket()).expect("connect");
    let a = ctl
        .create_domain(&DomainConfig::pv("first-a", 4))
        .expect("create");
    let b = ctl
        .create_domain(&DomainConfig::pv("first-b", 4))
        .expect("create");
    assert_eq!((a.domid, b.domid), (4242, 4243));
    ctl.destroy_domain(a.domid).expect("destroy");
    ctl.destroy_domain(b.domid).expect("destroy");
}
