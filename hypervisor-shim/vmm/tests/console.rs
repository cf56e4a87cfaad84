//! `xl create -c` of a PVHVM guest under a pty (as
//! `frontend-drivers/pv-runtime/tests/console_e2e.rs` does for PV guests):
//! the kernel's disk self-test verdict reaches the terminal over the PV
//! console (consback's pty), is logged in `guest-<name>.log`, and `xl
//! create -c` returns by itself when the guest shuts down (the default
//! `on_poweroff = "destroy"` removes the domain; the console sees it gone).
//! Needs root and `/dev/kvm`.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Host;

const T: Duration = Duration::from_secs(30);

/// A pty pair: (master, slave).
fn openpty() -> (File, File) {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two fds into the given ints; the name, termios
    // and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and ours.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(m)),
            File::from(OwnedFd::from_raw_fd(s)),
        )
    }
}

#[test]
fn test_pvhvm_xl_create_c_shows_the_verdict_and_returns_at_shutdown() {
    let mut h = Host::start("pvhvm-create-c-");
    let img = h.image("cc.img", 64);
    let disk = format!("format=raw, vdev=xvda, access=rw, target={}", img.display());
    // xl's default actions: on_poweroff = destroy.
    let cfg = h.config_actions("pvh-cc", "selftest", std::slice::from_ref(&disk), 1, "");
    h.track_guest("pvh-cc");
    let (mut master, slave) = openpty();
    let mut xl = h
        .xl_command(&["create", "-c", cfg.to_str().expect("utf-8 path")])
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("start xl create -c");
    let fd = master.as_raw_fd();
    // SAFETY: fcntl on our own fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let status = loop {
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        if let Some(st) = xl.try_wait().expect("wait for xl") {
            // Drain what is left on the terminal.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            break st;
        }
        if t0.elapsed() > T {
            let _ = xl.kill();
            panic!(
                "xl create -c did not return after the guest's shutdown; terminal:\n{}",
                String::from_utf8_lossy(&seen)
            );
        }
    };
    let term = String::from_utf8_lossy(&seen);
    assert!(
        status.success(),
        "xl create -c: {status}; terminal:\n{term}"
    );
    assert!(term.contains("disk self-test: PASS"), "terminal:\n{term}");
    assert!(
        term.contains("pvhvm-kernel: shutdown (reason 0)"),
        "terminal:\n{term}"
    );
    let log = h.log("pvh-cc");
    assert!(log.contains("disk self-test: PASS"), "console log:\n{log}");
    assert!(
        h.list_row("pvh-cc").is_none(),
        "the domain was not destroyed"
    );
}
