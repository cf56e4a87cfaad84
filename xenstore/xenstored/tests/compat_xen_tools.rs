//! Xen's own clients against our daemon on a temporary socket: Debian's
//! xenstore-utils (`xenstore-write`, `-read`, `-ls`, `-rm`, `-list`,
//! `-exists`, `-chmod`, `-watch`, `xenstore-control`) and Xen's
//! `test-xenstore` (all 12 tests, 100 iterations).
//!
//! Needs the Debian packages `xenstore-utils` and `xen-utils-4.17`
//! (installed by `tests/setup-host.sh`); fails with the install command if
//! they are missing.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Daemon;

const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";
const XENSTORE_CONTROL: &str = "/usr/lib/xen-4.17/bin/xenstore-control";

fn need(bin: &str, pkg: &str) -> String {
    let found = if bin.starts_with('/') {
        Path::new(bin).exists().then(|| bin.to_owned())
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.exists())
                .map(|f| f.display().to_string())
        })
    };
    found.unwrap_or_else(|| {
        panic!("{bin} is missing: install it with `apt-get install -y {pkg}` (or run tests/setup-host.sh)")
    })
}

fn xs(d: &Daemon, bin: &str, args: &[&str]) -> Output {
    let exe = need(bin, "xenstore-utils");
    Command::new(exe)
        .args(args)
        .env("XENSTORED_PATH", &d.socket)
        .stdin(Stdio::null())
        .output()
        .expect("run xenstore tool")
}

fn ok(d: &Daemon, bin: &str, args: &[&str]) -> String {
    let o = xs(d, bin, args);
    assert!(
        o.status.success(),
        "{bin} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn test_xenstore_utils_write_read_ls_list_exists_rm() {
    let d = Daemon::start();
    ok(&d, "xenstore-write", &["/vm/a", "one", "/vm/b/c", "two"]);
    assert_eq!(ok(&d, "xenstore-read", &["/vm/a"]), "one\n");
    assert_eq!(ok(&d, "xenstore-read", &["/vm/b/c"]), "two\n");
    assert_eq!(ok(&d, "xenstore-list", &["/vm"]), "a\nb\n");
    let ls = ok(&d, "xenstore-ls", &["/vm"]);
    assert!(ls.contains("a = \"one\""), "{ls}");
    assert!(ls.contains(" c = \"two\""), "{ls}");
    assert!(xs(&d, "xenstore-exists", &["/vm/a"]).status.success());
    assert!(!xs(&d, "xenstore-exists", &["/vm/zz"]).status.success());
    ok(&d, "xenstore-rm", &["/vm/b"]);
    assert!(!xs(&d, "xenstore-exists", &["/vm/b/c"]).status.success());
    assert!(!xs(&d, "xenstore-read", &["/vm/nope"]).status.success());
}

#[test]
fn test_xenstore_utils_chmod_and_ls_perms() {
    let d = Daemon::start();
    ok(&d, "xenstore-write", &["/perm/x", "v"]);
    ok(&d, "xenstore-chmod", &["/perm/x", "b7", "r3"]);
    let ls = ok(&d, "xenstore-ls", &["-p", "/perm"]);
    assert!(ls.contains("(b7,r3)"), "{ls}");
    let mut c = d.client();
    assert_eq!(c.get_perms("/perm/x").unwrap(), "b7 r3");
    // Recursive chmod.
    ok(&d, "xenstore-write", &["/perm/y/z", "v"]);
    ok(&d, "xenstore-chmod", &["-r", "/perm", "n2"]);
    assert_eq!(c.get_perms("/perm/y/z").unwrap(), "n2");
}

#[test]
fn test_xenstore_utils_watch_reports_changes() {
    let d = Daemon::start();
    let exe = need("xenstore-watch", "xenstore-utils");
    let child = Command::new(exe)
        .args(["-n", "3", "/watched"])
        .env("XENSTORED_PATH", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the watcher time to register, then make two changes.
    std::thread::sleep(Duration::from_millis(300));
    let mut c = d.client();
    c.write("/watched/a", "1").unwrap();
    c.write("/watched/b", "2").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "/watched\n/watched/a\n/watched/b\n"
    );
}

#[test]
fn test_xenstore_utils_transactional_write_via_relative_paths() {
    let d = Daemon::start();
    // xenstore-write and -read use relative paths under /local/domain/0.
    ok(&d, "xenstore-write", &["rel/key", "value"]);
    assert_eq!(
        ok(&d, "xenstore-read", &["/local/domain/0/rel/key"]),
        "value\n"
    );
}

#[test]
fn test_xenstore_control_print_log_quota_help() {
    let d = Daemon::start();
    let run = |args: &[&str]| {
        let exe = need(XENSTORE_CONTROL, "xen-utils-4.17");
        Command::new(exe)
            .args(args)
            .env("XENSTORED_PATH", &d.socket)
            .output()
            .unwrap()
    };
    for args in [
        &["print", "hello"][..],
        &["log", "on"],
        &["log", "off"],
        &["quota"],
        &["help"],
    ] {
        let o = run(args);
        assert!(
            o.status.success(),
            "xenstore-control {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let q = run(&["quota"]);
    assert!(String::from_utf8_lossy(&q.stdout).contains("nodes"));
}

#[test]
fn test_xen_test_xenstore_all_tests_100_iterations() {
    let d = Daemon::start();
    let exe = need(TEST_XENSTORE, "xen-utils-4.17");
    let o = Command::new(exe)
        .args(["-i", "100"])
        .env("XENSTORED_PATH", &d.socket)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "test-xenstore failed:\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("avg:")).collect();
    assert_eq!(lines.len(), 12, "all 12 tests ran:\n{out}");
    assert!(!out.contains("failed"), "{out}");
}
