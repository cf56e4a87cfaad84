//! Normal cases: what the writer writes reads back the same, and Xen's own checker
//! (`verify-stream-v2` from xen-utils-4.17) accepts it.

mod common;

use std::process::Command;

#[test]
fn test_save_file_round_trip_same() {
    let bytes = common::file();
    let (h, pages, s) = common::read(&bytes).expect("our own file reads back");
    assert_eq!(h, common::header());
    assert_eq!(pages, common::pages());
    assert_eq!(s, common::state());
}

#[test]
fn test_save_file_verify_stream_v2_accepts() {
    // Needs xen-utils-4.17 (tests/setup-host.sh installs it): fails loudly without it.
    let tool = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    assert!(
        std::path::Path::new(tool).exists(),
        "{tool} is missing: run tests/setup-host.sh (apt-get install xen-utils-4.17)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g1.save");
    std::fs::write(&path, common::file()).expect("write");
    let out = Command::new("python3")
        .arg(tool)
        .args(["-v", "-f", "xl", "-i"])
        .arg(&path)
        .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
        .output()
        .expect("run verify-stream-v2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify-stream-v2 refused our file: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // It walked the whole stream, not just the header.
    for seen in [
        "Libxl Header",
        "x86 HVM",
        "HVM context",
        "HVM params",
        "TSC info",
        "Static data end",
    ] {
        assert!(
            stdout.contains(seen),
            "verify-stream-v2 output lacks {seen:?}:\n{stdout}"
        );
    }
}

#[test]
fn test_save_file_verify_stream_v2_refuses_corruption() {
    // The checker itself can fail: a flipped libxc marker byte is refused.
    let tool = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    let mut bytes = common::file();
    let at = bytes
        .windows(8)
        .position(|w| w == [0xff; 8])
        .expect("image marker");
    bytes[at] = 0xfe;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.save");
    std::fs::write(&path, bytes).expect("write");
    let status = Command::new("python3")
        .arg(tool)
        .args(["-q", "-f", "xl", "-i"])
        .arg(&path)
        .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
        .status()
        .expect("run verify-stream-v2");
    assert!(!status.success());
}
