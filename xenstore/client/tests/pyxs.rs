//! Debian's `python3-pyxs` client against OUR xenstored (the script is
//! `tests/pyxs_compat.py`): transactions including a conflicting one,
//! watches, permissions.

mod common;

use std::time::{Duration, Instant};

use common::{require, show, Daemon};

#[test]
fn test_pyxs_client_passes_against_our_daemon() {
    require("/usr/bin/python3", "python3");
    require(
        "/usr/lib/python3/dist-packages/pyxs/client.py",
        "python3-pyxs",
    );
    let d = Daemon::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyxs_compat.py");
    // Debian's python3, whatever python3 comes first on PATH.
    let mut child = d
        .command("/usr/bin/python3")
        .arg(script)
        .arg(&d.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("output");
    assert!(
        o.status.success(),
        "pyxs_compat.py failed\n{}\nxenstored log:\n{}",
        show(&o),
        d.log()
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("checks passed"),
        "{}",
        show(&o)
    );
}
