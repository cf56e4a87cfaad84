//! Xen's own test program, `test-xenstore` (Debian `xen-utils-4.17`), against
//! OUR xenstored: all 12 tests, 100 iterations each.

mod common;

use common::{require, run, show, Daemon};

const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";
const TESTS: [&str; 12] = [
    "read 1",
    "read 2000",
    "write 1",
    "write 2000",
    "dir",
    "rm node",
    "rm dir",
    "ta empty",
    "ta empty x",
    "ta rmw",
    "ta rmw x",
    "ta err",
];

#[test]
fn test_xen_test_xenstore_all_tests_pass_100_iterations() {
    require(TEST_XENSTORE, "xen-utils-4.17");
    let d = Daemon::start();
    let o = run(d.command(TEST_XENSTORE).args(["-i", "100"]));
    assert!(
        o.status.success(),
        "test-xenstore -i 100 failed\n{}\nxenstored log:\n{}",
        show(&o),
        d.log()
    );
    let out = String::from_utf8_lossy(&o.stdout);
    for t in TESTS {
        assert!(
            out.lines().any(|l| l.starts_with(t) && l.contains("avg:")),
            "no result line for test {t:?}\n{}",
            show(&o)
        );
    }
    // It cleans up after itself: a second run on the same store passes too.
    let o = run(d.command(TEST_XENSTORE).args(["-i", "10"]));
    assert!(o.status.success(), "second run failed\n{}", show(&o));
}
