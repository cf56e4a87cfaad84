//! Builds `tests/nostd-check` (its own workspace: a `#![no_std]`, `#![no_main]`
//! binary linked with `-nostdlib`, panic = abort) and runs it. If any crate it
//! links — the project's protocol, ABI, ring and frontend crates — depended on
//! `std`, the build or the link would fail here.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn test_nostd_crates_link_into_freestanding_binary_and_run() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = here.join("../nostd-check/Cargo.toml");
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nostd-check");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let status = Command::new(&cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cargo must be runnable from the test");
    assert!(status.success(), "building the no_std check binary failed");

    let bin = target_dir.join("release/nostd-check");
    let out = Command::new(&bin)
        .output()
        .expect("the no_std binary must run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nostd-check: ok\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "exit status {:?}", out.status);
}
