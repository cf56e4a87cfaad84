//! The binary as a service: forking into the background with a pid file,
//! the socket from `XENSTORED_PATH`, root-only socket permissions.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn test_daemon_forks_writes_pid_file_and_stops_on_sigterm() {
    let t = tempfile::Builder::new()
        .prefix("xenstored-daemon-")
        .tempdir()
        .unwrap();
    let sock = t.path().join("run/socket");
    let pid_file = t.path().join("xenstored.pid");
    let st = Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .arg("-F")
        .arg(&pid_file)
        .arg("--state-dir")
        .arg(t.path().join("state"))
        .env("XENSTORED_PATH", &sock)
        .status()
        .unwrap();
    assert!(st.success(), "the parent exits 0 once the socket listens");
    assert!(
        UnixStream::connect(&sock).is_ok(),
        "socket listening at $XENSTORED_PATH"
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root-only socket");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Ok(s) = std::fs::read_to_string(&pid_file) {
            if let Ok(p) = s.trim().parse::<i32>() {
                break p;
            }
        }
        assert!(Instant::now() < deadline, "pid file not written");
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    while sock.exists() || pid_file.exists() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("daemon did not stop cleanly");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn test_daemon_refuses_second_instance_on_same_socket() {
    let t = tempfile::Builder::new()
        .prefix("xenstored-daemon-")
        .tempdir()
        .unwrap();
    let sock = t.path().join("socket");
    let mut first = Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .args(["-N", "--no-persist", "--socket"])
        .arg(&sock)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .args(["-N", "--no-persist", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already"));
    let _ = first.kill();
    let _ = first.wait();
}
