//! `blkbench --quick --json` end to end: a private Dom0, fio on the tmpfs
//! image, the blkload guest and fio in the guest; checks the JSON shape of
//! every row, never the speed. Needs root, /dev/fuse and fio
//! (`apt-get install -y fio`, or tests/setup-host.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `xl`, `backendd` and `xen-pvguest` next to `blkbench` (same
/// target dir and profile) and returns that directory.
fn libexec() -> PathBuf {
    xen_testhost::build_pv_binaries_next_to(
        Path::new(env!("CARGO_BIN_EXE_blkbench")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .expect("build the binaries")
}

#[test]
fn test_blkbench_quick_json_rows_have_the_documented_shape() {
    // Arrange
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (shim guests, FUSE): run it as root"
    );
    let fio = Command::new("fio").arg("--version").output();
    assert!(
        fio.is_ok_and(|o| o.status.success()),
        "fio is missing: run `apt-get install -y fio` (or tests/setup-host.sh)"
    );
    let libexec = libexec();

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_blkbench"))
        .args(["--quick", "--json", "--libexec"])
        .arg(&libexec)
        .output()
        .expect("run blkbench");

    // Assert
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "blkbench failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    assert_eq!(
        rows.len(),
        10,
        "3 impls x 3 loads and the PV guests' connect times: {stdout}"
    );
    let connect = rows
        .iter()
        .find(|r| r["metric"] == "xl_create_to_disk_connected_ms")
        .unwrap_or_else(|| panic!("no connect-time line: {stdout}"));
    assert_eq!(connect["impl"], "pv", "{connect}");
    assert!(
        connect["samples"].as_u64().is_some_and(|n| n >= 2),
        "{connect}"
    );
    for k in ["median", "min", "max"] {
        assert!(
            connect[k].as_f64().is_some_and(|x| x > 0.0 && x < 30_000.0),
            "{k} of {connect}"
        );
    }
    for imp in ["fio-native", "blkfront", "fio-guest"] {
        for pat in ["randread", "seqread", "seqwrite"] {
            let r = rows
                .iter()
                .find(|r| r["impl"] == imp && r["pattern"] == pat)
                .unwrap_or_else(|| panic!("no {imp} {pat} row: {stdout}"));
            for k in ["bs", "qd", "reps", "p50_ns", "p99_ns"] {
                assert!(r[k].is_u64(), "{k} of {r}");
            }
            for k in ["iops", "iops_min", "iops_max", "bytes_per_s"] {
                assert!(r[k].as_f64().is_some_and(|x| x > 0.0), "{k} of {r}");
            }
            assert!(r["ratio"].as_f64().is_some_and(|x| x > 0.0), "ratio of {r}");
        }
    }
}
