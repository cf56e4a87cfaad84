//! Runs the built `ringbench --json --quick` and checks the shape of its output.
//! Not a timed test: nothing here asserts on speed.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

type Key = (String, String, String, u64, u64, String);

/// The hypervisor-shim cases (two processes, no payload, one in flight).
const SHIM_IMPLS: [&str; 5] = [
    "eventfd",
    "shim-evtchn",
    "eventfd-poll",
    "shim-evtchn-poll",
    "grant-map",
];

/// Checks a row of the shim cases.
fn check_shim_row(row: &Value, imp: &str) {
    let mode = if imp == "grant-map" {
        "map-unmap"
    } else {
        "pingpong"
    };
    assert_eq!(str_of(row, "placement"), "processes", "{row}");
    assert_eq!(str_of(row, "mode"), mode, "{row}");
    assert_eq!(str_of(row, "batch"), "single", "{row}");
    assert_eq!(u64_of(row, "msg_bytes"), 0, "{row}");
    assert_eq!(u64_of(row, "capacity"), 1, "{row}");
    assert_eq!(u64_of(row, "capacity_requested"), 1, "{row}");
    let rate = f64_of(row, "msgs_per_s");
    assert!(
        rate > 0.0 && rate.is_finite(),
        "msgs_per_s must be > 0: {row}"
    );
    let p50 = f64_of(row, "p50_ns");
    let p99 = f64_of(row, "p99_ns");
    assert!(p50 > 0.0 && p50 <= p99, "needs 0 < p50 <= p99: {row}");
    let notif = f64_of(row, "notifications_per_msg");
    let expected = if imp == "grant-map" { 0.0 } else { 2.0 };
    assert_eq!(notif, expected, "one event each way per round trip: {row}");
}

/// xen-ring's threads rows carry paired ratios against every reference of their
/// interleaved group; every other row carries `null`.
fn check_paired(row: &Value, imp: &str, placement: &str, batch: &str) {
    let paired = &row["paired_ratios"];
    if imp != "xen-ring" || placement != "threads" {
        assert!(
            paired.is_null(),
            "only xen-ring threads rows are paired: {row}"
        );
        return;
    }
    let mut refs = vec!["io-ring-h", "rtrb"];
    if batch == "single" {
        refs.push("crossbeam");
    }
    let keys: Vec<&str> = paired
        .as_object()
        .unwrap_or_else(|| panic!("paired_ratios is not an object in {row}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = refs.clone();
    want.sort_unstable();
    assert_eq!(keys, want, "paired_ratios references: {row}");
    let runs = u64_of(row, "runs") as usize;
    for r in refs {
        let p = &paired[r];
        let ratios: Vec<f64> = p["ratios"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}: ratios is not an array in {row}"))
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect();
        assert_eq!(ratios.len(), runs, "one ratio per round: {row}");
        assert!(
            ratios.iter().all(|&v| v > 0.0 && v.is_finite()),
            "{r}: ratios must be finite and > 0: {row}"
        );
        let (med, lo, hi) = (f64_of(p, "median"), f64_of(p, "min"), f64_of(p, "max"));
        assert!(
            lo <= med && med <= hi,
            "{r}: median outside [min, max]: {row}"
        );
    }
}

fn run_quick() -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["--json", "--quick"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("ringbench starts");
    assert!(
        out.status.success(),
        "ringbench --json --quick failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("output is UTF-8");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn str_of<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {row}"))
}

fn u64_of(row: &Value, key: &str) -> u64 {
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {row}"))
}

fn f64_of(row: &Value, key: &str) -> f64 {
    assert!(row[key].is_number(), "{key} is not a number in {row}");
    row[key].as_f64().expect("a JSON number is an f64")
}

/// The grid `ringbench` must cover, keyed by the capacity asked for.
fn expected_cells() -> BTreeSet<(String, String, String, u64, u64, String)> {
    let mut cells = BTreeSet::new();
    for placement in ["threads", "processes"] {
        for bytes in [112u64, 12] {
            for cap in [32u64, 1024] {
                for imp in ["xen-ring", "io-ring-h", "rtrb", "crossbeam"] {
                    if placement == "processes" && imp != "xen-ring" {
                        continue;
                    }
                    for (mode, batch) in [
                        ("stream", "single"),
                        ("stream", "chunk"),
                        ("pingpong", "single"),
                    ] {
                        if imp == "crossbeam" && batch == "chunk" {
                            continue;
                        }
                        cells.insert((
                            imp.to_string(),
                            placement.to_string(),
                            mode.to_string(),
                            bytes,
                            cap,
                            batch.to_string(),
                        ));
                    }
                }
            }
        }
    }
    for imp in SHIM_IMPLS {
        let mode = if imp == "grant-map" {
            "map-unmap"
        } else {
            "pingpong"
        };
        cells.insert((
            imp.to_string(),
            "processes".to_string(),
            mode.to_string(),
            0,
            1,
            "single".to_string(),
        ));
    }
    cells
}

#[test]
fn test_quick_json_has_every_cell_with_sane_values() {
    // Arrange
    let rows = run_quick();
    let mut seen: BTreeSet<Key> = BTreeSet::new();
    let mut seen_with_capacity: BTreeSet<Key> = BTreeSet::new();

    for row in &rows {
        // Act: required keys and types.
        let imp = str_of(row, "impl");
        if SHIM_IMPLS.contains(&imp) {
            check_shim_row(row, imp);
            let key = (
                imp.to_string(),
                str_of(row, "placement").to_string(),
                str_of(row, "mode").to_string(),
                u64_of(row, "msg_bytes"),
                u64_of(row, "capacity_requested"),
                str_of(row, "batch").to_string(),
            );
            assert!(seen.insert(key.clone()), "duplicate row: {row}");
            seen_with_capacity.insert(key);
            continue;
        }
        let placement = str_of(row, "placement");
        let mode = str_of(row, "mode");
        let batch = str_of(row, "batch");
        let bytes = u64_of(row, "msg_bytes");
        let cap = u64_of(row, "capacity");
        let asked = u64_of(row, "capacity_requested");
        let rate = f64_of(row, "msgs_per_s");
        let notif = f64_of(row, "notifications_per_msg");

        // Assert
        assert!(
            ["xen-ring", "io-ring-h", "rtrb", "crossbeam"].contains(&imp),
            "{row}"
        );
        assert!(["threads", "processes"].contains(&placement), "{row}");
        assert!(["stream", "pingpong"].contains(&mode), "{row}");
        assert!(["single", "chunk"].contains(&batch), "{row}");
        assert!(bytes == 112 || bytes == 12, "{row}");
        assert!(
            rate > 0.0 && rate.is_finite(),
            "msgs_per_s must be > 0: {row}"
        );
        assert!(
            f64_of(row, "msgs_per_s_min") <= rate && rate <= f64_of(row, "msgs_per_s_max"),
            "median outside [min, max]: {row}"
        );
        assert!(cap.is_power_of_two() && cap <= asked, "{row}");
        if bytes == 12 || asked == 32 {
            assert_eq!(cap, asked, "only 112 B x 1024 may be capped: {row}");
        } else {
            assert!(
                cap >= 512,
                "112 B x 1024 needs at least 16 pages (512): {row}"
            );
        }
        match mode {
            "stream" => {
                assert!(row["p50_ns"].is_null(), "stream has no p50: {row}");
                assert!(row["p99_ns"].is_null(), "stream has no p99: {row}");
            }
            _ => {
                let p50 = f64_of(row, "p50_ns");
                let p99 = f64_of(row, "p99_ns");
                assert!(
                    p50 > 0.0 && p50 <= p99,
                    "pingpong needs 0 < p50 <= p99: {row}"
                );
            }
        }
        let ring = imp == "xen-ring" || imp == "io-ring-h";
        if ring && mode == "stream" {
            assert!(
                (0.0..=2.5).contains(&notif),
                "{imp} stream notifications_per_msg outside [0, 2.5]: {row}"
            );
            assert!(
                row["ring_entries"].as_u64().is_some_and(|e| e >= cap),
                "{row}"
            );
        }
        if !ring || mode == "pingpong" {
            assert_eq!(notif, 0.0, "busy-polling sides never notify: {row}");
        }
        check_paired(row, imp, placement, batch);
        let key = (
            imp.to_string(),
            placement.to_string(),
            mode.to_string(),
            bytes,
            asked,
            batch.to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicate row: {row}");
        seen_with_capacity.insert((key.0, key.1, key.2, key.3, cap, key.5));
    }

    assert_eq!(
        seen,
        expected_cells(),
        "rows do not cover the expected grid"
    );
    // Every implementation of one cell ran with the same capacity.
    for bytes in [112u64, 12] {
        for asked in [32u64, 1024] {
            let caps: BTreeSet<u64> = rows
                .iter()
                .filter(|r| {
                    u64_of(r, "msg_bytes") == bytes && u64_of(r, "capacity_requested") == asked
                })
                .map(|r| u64_of(r, "capacity"))
                .collect();
            assert_eq!(
                caps.len(),
                1,
                "{bytes} B x {asked}: capacities differ: {caps:?}"
            );
        }
    }
    assert_eq!(seen_with_capacity.len(), seen.len());
}
