//! `netbench --quick --json` end to end: the veth pair and a PV guest on a
//! private Dom0, one interleaved sample of each load; checks the JSON shape
//! of every row, never the speed. Needs root, iproute2, iperf3 and python3
//! (tests/setup-host.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `xl`, `backendd` and `xen-pvguest` next to `netbench` (same
/// target dir and profile) and returns that directory.
fn libexec() -> PathBuf {
    xen_testhost::build_pv_binaries_next_to(
        Path::new(env!("CARGO_BIN_EXE_netbench")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .expect("build the binaries")
}

#[test]
fn test_netbench_quick_json_rows_have_the_documented_shape() {
    // Arrange
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (namespaces, TAPs, shim guests): run it as root"
    );
    xen_testhost::need("iperf3", "iperf3").expect("iperf3");
    let libexec = libexec();

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_netbench"))
        .args(["--quick", "--json", "--libexec"])
        .arg(&libexec)
        .output()
        .expect("run netbench");

    // Assert
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netbench failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    assert_eq!(rows.len(), 6, "2 impls x 3 loads: {stdout}");
    for imp in ["veth", "pv-netfront"] {
        for load in ["tcp-tx", "tcp-rx", "udp64"] {
            let r = rows
                .iter()
                .find(|r| r["imp"] == imp && r["load"] == load)
                .unwrap_or_else(|| panic!("no {imp} {load} row: {stdout}"));
            for k in [
                "median",
                "min",
                "max",
                "ratio_to_veth",
                "paired_ratio_median",
            ] {
                assert!(r[k].as_f64().is_some_and(|x| x > 0.0), "{k} of {r}");
            }
            let samples = r["samples"].as_array().expect("samples");
            let paired = r["paired_ratios"].as_array().expect("paired_ratios");
            assert_eq!(samples.len(), 1, "one sample with --quick: {r}");
            assert_eq!(paired.len(), 1, "one pair with --quick: {r}");
            assert_eq!(r["loadavg"].as_array().map(Vec::len), Some(2), "{r}");
        }
    }
}
