//! A daemon restart does not kill a running domain: the runtime notices the
//! control connection ended, keeps running, and reattaches (same token, its
//! port fds handed back) to the new daemon, which then drives it.
//!
//! The daemon runs in its own process here (this test binary re-executed to
//! run only `helper_run_daemon`), so it can be killed like a real one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_shim_dom0::Control;
use xen_shim_proto::protocol::{DomainState, ShutdownReason};
use xen_shimd::DaemonConfig;
use xen_testhost::shim::{require_root, unique_name, GuestProcess, MEMORY_MIB, STEP};

const DIR_ENV: &str = "XEN_PVGUEST_TEST_DAEMON_DIR";
const MEM_ENV: &str = "XEN_PVGUEST_TEST_DAEMON_MEM";

/// Not a test: the body of the daemon process started by
/// [`DaemonProcess::start`] (does nothing when run by the harness).
#[test]
#[ignore = "helper process of test_runtime_reattaches_after_daemon_restart"]
fn helper_run_daemon() {
    let (Some(dir), Some(mem)) = (std::env::var_os(DIR_ENV), std::env::var_os(MEM_ENV)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let cfg = DaemonConfig {
        socket: dir.join("control.sock"),
        state_dir: dir.join("state"),
        mem_dir: PathBuf::from(mem),
        ..DaemonConfig::default()
    };
    xen_shimd::run(cfg).expect("the daemon runs");
}

/// A daemon process; killed (SIGKILL) on drop.
struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    fn start(dir: &Path, mem: &Path) -> DaemonProcess {
        let child = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args([
                "--exact",
                "helper_run_daemon",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir)
            .env(MEM_ENV, mem)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("the daemon process starts");
        let socket = dir.join("control.sock");
        let deadline = Instant::now() + STEP;
        while Control::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
        DaemonProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the daemon's directories on drop.
struct Dirs(PathBuf, PathBuf);

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn test_runtime_reattaches_after_daemon_restart() {
    // Arrange: a daemon process and an idle guest.
    require_root().expect("root");
    let name = unique_name("restart");
    let dirs = Dirs(
        std::env::temp_dir().join(format!("xen-shim-{name}")),
        PathBuf::from("/dev/shm").join(format!("xen-shim-{name}")),
    );
    std::fs::create_dir_all(&dirs.0).expect("daemon directory");
    let socket = dirs.0.join("control.sock");
    let mut first = DaemonProcess::start(&dirs.0, &dirs.1);
    let control = Arc::new(Control::connect(&socket).expect("connect"));
    let mut g = GuestProcess::spawn(
        Arc::clone(&control),
        &socket,
        &unique_name("pvguest"),
        MEMORY_MIB,
        Path::new(env!("CARGO_BIN_EXE_xen-pvguest")),
        &[],
    )
    .expect("the runtime starts");
    g.expect("idle running", STEP).expect("the guest runs");

    // Act: the daemon dies; a new one starts on the same state.
    first.kill();
    g.expect("pvguest disconnected", STEP)
        .expect("the runtime notices the daemon is gone");
    let _second = DaemonProcess::start(&dirs.0, &dirs.1);
    g.expect("pvguest reattached", STEP)
        .expect("the runtime reattaches to the new daemon");

    // Assert: the domain survived, and the new daemon drives it.
    let control2 = Control::connect(&socket).expect("connect to the new daemon");
    let info = control2
        .domain_info(g.domid())
        .expect("the domain survived");
    assert_eq!(info.state, DomainState::Running);
    assert_eq!(info.pid, Some(g.pid() as i32));
    control2
        .shutdown_domain(g.domid(), ShutdownReason::Poweroff)
        .expect("shutdown through the new daemon");
    let sd = g.expect("pvguest shutdown", STEP).expect("shutdown line");
    assert_eq!(
        sd.fields.get("reason").map(String::as_str),
        Some("poweroff")
    );
    let st = g.wait_exit(STEP).expect("wait").expect("the runtime exits");
    assert!(st.success(), "runtime exit status {st:?}");
    control2.destroy_domain(g.domid()).expect("destroy");
}
