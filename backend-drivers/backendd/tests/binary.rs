//! The `backendd` binary: pid file, serving, clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xenstore_client::{Client, XsOps};

mod common;
use common::Xenstored;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the child if the test fails before it exits.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn test_backendd_binary_serves_and_exits_on_sigterm() {
    let xsd = Xenstored::start("backendd-bin-");
    let pidfile = xsd.dir.path().join("backendd.pid");
    let child = Command::new(env!("CARGO_BIN_EXE_backendd"))
        .arg("--xenstored")
        .arg(&xsd.socket)
        .arg("--shim-socket")
        .arg(xsd.dir.path().join("no-shim.sock"))
        .arg("--pid-file")
        .arg(&pidfile)
        .arg("--poll-ms")
        .arg("20")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backendd");
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + TIMEOUT;
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("read pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(pid, child.0.id());

    // A vbd whose image does not exist: the device fails alone (Closing).
    let xs = Client::connect_path(&xsd.socket).expect("xenstore");
    let be = "/local/domain/0/backend/vbd/9/51712";
    let fe = "/local/domain/9/device/vbd/51712";
    xs.transaction(|tx| {
        tx.write(&format!("{fe}/state"), "1")?;
        tx.write(&format!("{be}/frontend"), fe)?;
        tx.write(&format!("{be}/frontend-id"), "9")?;
        tx.write(&format!("{be}/online"), "1")?;
        tx.write(&format!("{be}/params"), "/nonexistent/disk.img")?;
        tx.write(&format!("{be}/mode"), "w")?;
        tx.write(&format!("{be}/state"), "1")?;
        Ok(())
    })
    .expect("toolstack nodes");
    let deadline = Instant::now() + TIMEOUT;
    while xs
        .read_opt(&format!("{be}/state"))
        .expect("read")
        .as_deref()
        != Some(b"5".as_slice())
    {
        assert!(Instant::now() < deadline, "device did not close");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(child.0.try_wait(), Ok(None)), "backendd died");

    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "backendd ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(!pidfile.exists(), "pid file left behind");
}
