//! Shared fixtures of the cross-process tests: a private daemon, Dom0
//! handles in the test process, and `xen-pvguest` processes as domains.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_pvguest::testkit::{unique_name, GuestProcess, ShimDaemon};
use xen_shim_dom0::{Control, Evtchn, Gntdev};
use xen_shim_proto::protocol::{DomainInfo, DomainState};

/// Timeout of every step.
pub const STEP: Duration = Duration::from_secs(30);

/// Guest RAM of the test domains.
pub const MEMORY_MIB: u64 = 8;

/// The daemon and the Dom0 handles of one test.
pub struct Dom0 {
    pub daemon: ShimDaemon,
    pub control: Arc<Control>,
    pub gntdev: Gntdev,
    pub evtchn: Evtchn,
}

/// Root is needed (the daemon serves only its own uid, the tests run it as
/// root as the CI does; `/dev/shm` must be writable).
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        uid, 0,
        "these tests run the shim daemon and need root: run them as root (sudo -E tests/run.sh)"
    );
}

impl Dom0 {
    /// A fresh daemon on private paths and Dom0 handles to it.
    pub fn start(tag: &str) -> Dom0 {
        require_root();
        // The daemon runs in this process: its logs go to the test's output
        // (shown for failing tests), at RUST_LOG's level (default warn).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let daemon = ShimDaemon::start(tag).expect("the shim daemon starts");
        let control = Arc::new(daemon.control().expect("Dom0 control connects"));
        let gntdev = Gntdev::open(daemon.socket()).expect("gntdev opens");
        let evtchn = Evtchn::open(daemon.socket()).expect("evtchn opens");
        Dom0 {
            daemon,
            control,
            gntdev,
            evtchn,
        }
    }

    /// Starts `xen-pvguest args...` as a new domain.
    pub fn guest(&self, args: &[&str]) -> GuestProcess {
        GuestProcess::spawn(
            Arc::clone(&self.control),
            self.daemon.socket(),
            &unique_name("pvguest"),
            MEMORY_MIB,
            Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
            args,
        )
        .expect("the runtime process starts")
    }

    /// The domain's info, `None` once it is gone.
    pub fn info(&self, domid: u16) -> Option<DomainInfo> {
        self.control.domain_info(domid).ok()
    }

    /// Waits until `pred` holds for the domain's state.
    pub fn wait_state(&self, domid: u16, what: &str, pred: impl Fn(Option<&DomainState>) -> bool) {
        let deadline = Instant::now() + STEP;
        loop {
            let info = self.info(domid);
            if pred(info.as_ref().map(|i| &i.state)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "domain {domid} never reached {what}: {info:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The scheduler state letter of a process (`R`, `S`, `T`...), from
/// `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — comm may contain spaces; the state follows the last ')'.
    let after = &s[s.rfind(')')? + 1..];
    after.trim_start().chars().next()
}
