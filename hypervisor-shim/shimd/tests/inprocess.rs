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

/// A daemon configuration in directories named `tag` (under the temporary
/// directory and `/dev/shm`), with their removal.
fn test_config(tag: &str) -> (DaemonConfig, Cleanup) {
    let dir = std::env::temp_dir().join(tag);
    let mem_dir = std::path::PathBuf::from("/dev/shm").join(tag);
    let cfg = DaemonConfig {
        socket: dir.join("control.sock"),
        state_dir: dir.join("state"),
        mem_dir: mem_dir.clone(),
        ..DaemonConfig::default()
    };
    (cfg, Cleanup(dir, mem_dir))
}

#[test]
fn test_inprocess_daemon_guest_and_dom0_in_one_process() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "needs root (root-only daemon socket)");
    let (cfg, _cleanup) = test_config(&format!("xen-shim-inproc-{}", std::process::id()));
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

/// The process's umask from `/proc/self/status` (reading it with `umask(2)`
/// would change it).
fn process_umask() -> u32 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("a Umask line");
    u32::from_str_radix(v.trim(), 8).expect("an octal umask")
}

/// Two daemons in one process (as the tests' private Dom0s are) making
/// their sockets at once: their binds must not touch the process-wide
/// umask. (They used to set 0177 around each bind and restore it: two
/// interleaved, and the process kept 0177 for good, so the guest images a
/// test built afterwards had a busybox without execute bits, and the
/// guests' init failed with EACCES.) Also: each domain's socket is 0600.
#[test]
fn test_daemons_binding_at_once_leave_the_process_umask_alone() {
    let before = process_umask();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.insert(process_umask());
            }
            seen
        })
    };
    let workers: Vec<_> = (0..2)
        .map(|w| {
            std::thread::spawn(move || {
                let (cfg, _cleanup) =
                    test_config(&format!("xen-shim-umask-{}-{w}", std::process::id()));
                let handle = daemon::spawn(cfg).expect("spawn the daemon");
                let ctl = Control::connect(handle.socket()).expect("connect");
                let mut modes = Vec::new();
                for i in 0..60 {
                    let d = ctl
                        .create_domain(&DomainConfig::pv(&format!("um{w}-{i}"), 4))
                        .expect("create");
                    let sock = xen_shim_proto::domain_socket_dir(handle.socket(), d.domid)
                        .join(xen_shim_proto::DOMAIN_SOCKET_NAME);
                    use std::os::unix::fs::PermissionsExt;
                    if let Ok(m) = std::fs::metadata(&sock) {
                        modes.push(m.permissions().mode() & 0o777);
                    }
                    ctl.destroy_domain(d.domid).expect("destroy");
                }
                handle.stop().expect("stop");
                modes
            })
        })
        .collect();
    let modes: Vec<u32> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    assert_eq!(process_umask(), before, "the umask changed for good");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![before],
        "umasks seen while the daemons bound their sockets"
    );
    assert!(!modes.is_empty(), "no domain socket seen");
    assert!(
        modes.iter().all(|&m| m == 0o600),
        "domain socket modes: {modes:?}"
    );
}
