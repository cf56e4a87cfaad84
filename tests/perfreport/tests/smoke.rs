//! `perfreport --quick --runs 1 --no-pvhvm` end to end into a temporary
//! directory (never the repository's docs): every benchmark in its quick
//! mode, then checks the JSON, the PNGs and the markdown, never the speed.
//! Needs root, fio, iperf3, Xen's C xenstored peer and libxenstore
//! (tests/setup-host.sh) and the DejaVu font (fonts-dejavu-core); builds the
//! benchmarks' binaries (this profile) next to perfreport first.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BINS: [(&str, &str); 11] = [
    ("ringbench", "ringbench"),
    ("netbench", "netbench"),
    ("blkbench", "blkbench"),
    ("blkbench", "blkload"),
    ("xsbench", "xsbench"),
    ("xenstored", "xenstored"),
    ("xen-xl", "xl"),
    ("xen-xl", "xen-supervise"),
    ("xen-backendd", "backendd"),
    ("xen-pvguest", "xen-pvguest"),
    ("perfreport", "perfreport"),
];

#[test]
fn test_quick_report_writes_json_pngs_and_every_goal_section() {
    // Arrange
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (the benchmarks start guests): run it as root"
    );
    let font = Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
    assert!(
        font.is_file(),
        "{} is missing: apt-get install -y fonts-dejavu-core (or tests/setup-host.sh)",
        font.display()
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_perfreport"));
    let bin_dir = xen_testhost::build_binaries(
        exe.parent().expect("<target>/<profile>"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &BINS,
    )
    .expect("build the benchmarks");
    let out = tempfile::tempdir().expect("temp dir");
    let repo_doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PERFORMANCE.md");
    let repo_doc_before = std::fs::read(&repo_doc).ok();

    // Act
    let t0 = Instant::now();
    let run = Command::new(exe)
        .args(["--quick", "--runs", "1", "--no-pvhvm", "--out"])
        .arg(out.path())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .expect("run perfreport");
    let took = t0.elapsed();

    // Assert
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "perfreport failed: {stderr}");
    eprintln!("perfreport --quick took {took:?}");
    assert!(
        took.as_secs() < 180,
        "the quick mode took {took:?}: a benchmark ran in its full mode? {stderr}"
    );
    let json = std::fs::read_to_string(out.path().join("perf/perf.json")).expect("perf.json");
    let report: perfreport::Report = serde_json::from_str(&json).expect("perf.json parses");
    assert!(report.quick);
    for b in &report.bench_runs {
        let pvhvm = perfreport::bench::needs_pvhvm(&b.bench);
        assert_eq!(
            b.outcome == perfreport::bench::Outcome::Ok,
            !pvhvm,
            "{} ended {:?}; stderr: {}",
            b.bench,
            b.outcome,
            b.stderr_tail
        );
        assert!(!b.command.is_empty() && b.loadavg_before[0] >= 0.0);
    }
    for goal in [1u8, 2, 4, 5] {
        let rows: Vec<_> = report.summary.iter().filter(|s| s.goal == goal).collect();
        assert!(!rows.is_empty(), "no rows for goal {goal}: {json}");
        for r in rows {
            assert!(r.median.is_finite() && r.median > 0.0, "{r:?}");
            assert!(r.min <= r.median && r.median <= r.max, "{r:?}");
        }
    }
    assert!(
        report
            .summary
            .iter()
            .any(|s| s.goal == 1 && s.reference == "io-ring-h" && s.threshold == Some(1.0)),
        "no xen-ring vs io-ring-h row"
    );
    for goal in 1..=5 {
        let png = std::fs::read(out.path().join(format!("perf/goal{goal}.png"))).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "goal{goal}.png is no PNG");
        assert!(png.len() > 5000, "goal{goal}.png is {} bytes", png.len());
    }
    let md = std::fs::read_to_string(out.path().join("PERFORMANCE.md")).expect("markdown");
    for goal in 1..=6 {
        assert!(
            md.contains(&format!("## Goal {goal}: ")),
            "no goal {goal}:\n{md}"
        );
    }
    for goal in 1..=5 {
        assert!(
            md.contains(&format!("(perf/goal{goal}.png)")),
            "no plot {goal}"
        );
    }
    assert!(md.contains("**Quick mode**") && md.contains("ringbench --json"));
    assert_eq!(
        std::fs::read(&repo_doc).ok(),
        repo_doc_before,
        "the smoke test touched the repository's docs"
    );
}
