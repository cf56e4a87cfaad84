//! `perfreport`: the performance report of issue 16 (goal 6). One command
//! runs every benchmark against its reference (`ringbench`, `netbench`,
//! `blkbench`, `xsbench`; the PVHVM cases of `netbench` and `blkbench` as
//! invocations of their own, so that a failing PVHVM guest costs only its
//! rows), `--runs` times, each with `--json`; turns their JSON into one row
//! per goal case (paired ratio median/min/max, the goal, met or not); writes
//! `perf/perf.json`, one PNG per goal (`plotters`) and `PERFORMANCE.md` into
//! the output directory (the repository's `docs/` by default).
//!
//! The benchmarks' release binaries must be built (the report does not
//! build them): `cargo build --release --locked -p perfreport -p ringbench
//! -p netbench -p blkbench -p xsbench -p xenstored -p xen-xl -p
//! xen-backendd -p xen-pvguest -p xen-vmm --bins`, and for the PVHVM rows the
//! PVHVM kernel ([`BUILD_KERNEL`]).

pub mod bench;
pub mod goals;
pub mod machine;
pub mod markdown;
pub mod plot;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};

use bench::{BenchRun, BENCHES};
use goals::{GoalRow, GOALS};
use machine::Machine;
use summary::Summary;

/// How to build what the report runs.
pub const BUILD: &str = "cargo build --release --locked -p perfreport -p ringbench -p netbench \
                         -p blkbench -p xsbench -p xenstored -p xen-xl -p xen-backendd \
                         -p xen-pvguest -p xen-vmm --bins";

/// How to build the PVHVM kernel the PVHVM rows boot.
pub const BUILD_KERNEL: &str = "(cd frontend-drivers/pvhvm-kernel && RUSTFLAGS=\"-C \
                                relocation-model=static\" cargo build --release --locked \
                                --target x86_64-unknown-linux-gnu --target-dir \
                                ../../target/pvhvm-kernel)";

/// `perfreport`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "perfreport",
    about = "Runs every benchmark against its reference and regenerates docs/PERFORMANCE.md"
)]
pub struct Args {
    /// Runs of the whole set of benchmarks (the spread over runs).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Every benchmark in its quick mode (seconds; figures mean nothing).
    #[arg(long)]
    pub quick: bool,
    /// Where PERFORMANCE.md and perf/ (JSON, PNGs) go (default: the
    /// repository's docs/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The repository (git commit, notes; default: this crate's).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// The hand-written notes, goalN.md (default: <repo>/docs/perf/notes).
    #[arg(long)]
    pub notes: Option<PathBuf>,
    /// Directory of the benchmarks' binaries (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The PVHVM kernel of the PVHVM rows (default: <target>/pvhvm-kernel/
    /// x86_64-unknown-linux-gnu/release/pvhvm-kernel if built).
    #[arg(long)]
    pub pvhvm_kernel: Option<PathBuf>,
    /// Skip the PVHVM invocations (their rows say so).
    #[arg(long)]
    pub no_pvhvm: bool,
    /// Only these invocations (comma-separated; default all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(BENCHES))]
    pub only: Vec<String>,
    /// Deadline of one benchmark invocation, seconds (default 1800, quick 300).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Measure nothing: redraw the rows, plots and PERFORMANCE.md from the
    /// raw benchmark lines in the output directory's perf/perf.json (e.g.
    /// after editing the notes).
    #[arg(long)]
    pub render_only: bool,
    /// The TrueType font of the plots.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

/// Everything a report measured: `perf/perf.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// When it finished (UTC).
    pub generated: String,
    /// `perfreport`'s own command line.
    pub command: Vec<String>,
    /// How the binaries were built.
    pub build_command: String,
    /// Quick mode.
    pub quick: bool,
    /// Runs of the set.
    pub runs: usize,
    /// The machine.
    pub machine: Machine,
    /// Load average before the first benchmark.
    pub loadavg_start: [f64; 3],
    /// Load average after the last.
    pub loadavg_end: [f64; 3],
    /// Every benchmark invocation with its raw JSON lines.
    pub bench_runs: Vec<BenchRun>,
    /// Every goal row of every run.
    pub rows: Vec<GoalRow>,
    /// The rows over runs.
    pub summary: Vec<Summary>,
}

fn repo_default() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// The repository, the output directory and the notes' directory, from
/// the arguments or their defaults.
fn paths(args: &Args) -> (PathBuf, PathBuf, PathBuf) {
    let repo = args.repo.clone().unwrap_or_else(repo_default);
    let out = args.out.clone().unwrap_or_else(|| repo.join("docs"));
    let notes_dir = args
        .notes
        .clone()
        .unwrap_or_else(|| repo.join("docs/perf/notes"));
    (repo, out, notes_dir)
}

/// Runs the report (see the crate's docs).
pub fn run(args: &Args) -> Result<()> {
    if args.render_only {
        plot::load_font(&args.font)?;
        let (_, out, notes_dir) = paths(args);
        let path = out.join("perf/perf.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut report: Report =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        // The rows again from the raw JSON lines (this build's extraction).
        report.rows = report
            .bench_runs
            .iter()
            .flat_map(|b| goals::extract(&b.bench, b.run, &b.json))
            .collect();
        report.summary = summary::summarise(&report.rows);
        write(&report, &out, &markdown::load_notes(&notes_dir))?;
        eprintln!(
            "perfreport: redrew {}",
            out.join("PERFORMANCE.md").display()
        );
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("perfreport needs root (the benchmarks start guests, namespaces and TAPs)");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    plot::load_font(&args.font)?;
    let (repo, out, notes_dir) = paths(args);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("find this executable")?
            .parent()
            .context("this executable's directory")?
            .to_path_buf(),
    };
    let kernel = args.pvhvm_kernel.clone().or_else(|| {
        let k = bin_dir
            .parent()?
            .join("pvhvm-kernel/x86_64-unknown-linux-gnu/release/pvhvm-kernel");
        k.is_file().then_some(k)
    });
    let benches: Vec<&str> = BENCHES
        .into_iter()
        .filter(|b| args.only.is_empty() || args.only.iter().any(|o| o == b))
        .collect();
    let timeout =
        Duration::from_secs(
            args.timeout_secs
                .unwrap_or(if args.quick { 300 } else { 1800 }),
        );
    bench::stop_on_signals().context("install the SIGINT/SIGTERM handlers")?;
    let machine = Machine::probe(&repo);
    let loadavg_start = machine::loadavg();
    let mut bench_runs = Vec::new();
    let mut rows = Vec::new();
    for run in 1..=args.runs {
        for &b in &benches {
            let cmd = bench::command(b, &bin_dir, args.quick, kernel.as_deref());
            let skip = skip_reason(b, args, &bin_dir, kernel.as_deref());
            let r = match skip {
                Some(why) => BenchRun::skipped(b, run, cmd, why),
                None => {
                    eprintln!("perfreport: run {run}/{}: {}", args.runs, cmd.join(" "));
                    bench::run(b, run, cmd, timeout)
                }
            };
            eprintln!(
                "perfreport: {b} run {run}: {:?} in {:.0} s, {} JSON lines",
                r.outcome,
                r.seconds,
                r.json.len()
            );
            rows.extend(goals::extract(b, run, &r.json));
            bench_runs.push(r);
            if bench::stopped() {
                bail!("interrupted: the benchmark was stopped, no report written");
            }
        }
    }
    let summary = summary::summarise(&rows);
    let report = Report {
        generated: machine::utc_now(),
        command: std::env::args().collect(),
        build_command: BUILD.into(),
        quick: args.quick,
        runs: args.runs,
        machine,
        loadavg_start,
        loadavg_end: machine::loadavg(),
        bench_runs,
        rows,
        summary,
    };
    write(&report, &out, &markdown::load_notes(&notes_dir))?;
    eprintln!("perfreport: wrote {}", out.join("PERFORMANCE.md").display());
    Ok(())
}

/// Why `bench` is not run, if it is not.
fn skip_reason(bench: &str, args: &Args, bin_dir: &Path, kernel: Option<&Path>) -> Option<String> {
    if bench::needs_pvhvm(bench) {
        if args.no_pvhvm {
            return Some("--no-pvhvm".into());
        }
        match kernel {
            None => return Some(format!("no PVHVM kernel: build it with {BUILD_KERNEL}")),
            Some(k) if !k.is_file() => {
                return Some(format!("the PVHVM kernel {} does not exist", k.display()))
            }
            Some(_) => {}
        }
    }
    let missing = bench::missing(bin_dir, &bench::needed_binaries(&[bench]));
    (!missing.is_empty()).then(|| {
        format!(
            "missing {}: build with {BUILD}",
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Writes `out/perf/perf.json`, `out/perf/goalN.png` and
/// `out/PERFORMANCE.md`.
pub fn write(report: &Report, out: &Path, notes: &markdown::Notes) -> Result<()> {
    let perf = out.join("perf");
    std::fs::create_dir_all(&perf).with_context(|| format!("create {}", perf.display()))?;
    let json = serde_json::to_string_pretty(report).context("encode the report")?;
    std::fs::write(perf.join("perf.json"), json + "\n").context("write perf.json")?;
    for g in GOALS {
        plot::goal_png(
            &perf.join(format!("goal{}.png", g.number)),
            g.number,
            &format!("Goal {}: {}", g.number, g.title),
            &report.summary,
        )?;
    }
    let md = out.join("PERFORMANCE.md");
    std::fs::write(&md, markdown::render(report, notes))
        .with_context(|| format!("write {}", md.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bench::Outcome;
    use serde_json::json;

    fn fake_report() -> Report {
        let ring = json!({"impl":"xen-ring","placement":"threads","mode":"stream","batch":"chunk",
            "msg_bytes":112,"capacity":32,"msgs_per_s":2e6,
            "paired_ratios":{"io-ring-h":{"median":1.1,"min":1.0,"max":1.3,"ratios":[1.0,1.1,1.3]},
                             "rtrb":{"median":0.6,"min":0.5,"max":0.7,"ratios":[0.5,0.6,0.7]}}});
        let mut bench_runs = Vec::new();
        let mut rows = Vec::new();
        for run in 1..=2 {
            let mut b = BenchRun::skipped("ringbench", run, vec!["ringbench".into()], "x".into());
            b.outcome = Outcome::Ok;
            b.json = vec![ring.clone()];
            rows.extend(goals::extract("ringbench", run, &b.json));
            bench_runs.push(b);
            bench_runs.push(BenchRun::skipped(
                "blkbench-pvhvm",
                run,
                vec!["blkbench".into()],
                "--no-pvhvm".into(),
            ));
        }
        Report {
            generated: "2026-12-07T00:00:00Z".into(),
            command: vec!["perfreport".into()],
            build_command: BUILD.into(),
            quick: false,
            runs: 2,
            machine: Machine::probe(Path::new("/nonexistent")),
            loadavg_start: [0.1, 0.2, 0.3],
            loadavg_end: [0.4, 0.5, 0.6],
            summary: summary::summarise(&rows),
            bench_runs,
            rows,
        }
    }

    #[test]
    fn test_write_gives_json_pngs_and_markdown_with_notes_kept() {
        // Arrange
        plot::load_font(Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
            .expect("fonts-dejavu-core is installed (tests/setup-host.sh)");
        let dir = tempfile::tempdir().expect("tmp");
        let report = fake_report();
        let notes = markdown::Notes::from([(1, "The copy bounds it.".to_owned())]);

        // Act
        write(&report, dir.path(), &notes).expect("write");

        // Assert
        let back: Report = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("perf/perf.json")).expect("json"),
        )
        .expect("parse");
        assert_eq!(back, report);
        for g in 1..=5 {
            let png = std::fs::read(dir.path().join(format!("perf/goal{g}.png"))).expect("png");
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            assert!(png.len() > 2000, "goal{g}.png: {} bytes", png.len());
        }
        let md = std::fs::read_to_string(dir.path().join("PERFORMANCE.md")).expect("md");
        assert!(md.contains("The copy bounds it."));
        assert!(md.contains("_No notes yet: write `docs/perf/notes/goal2.md`"));
        assert!(md.contains("| stream chunk 112 B cap 32 | rtrb |"), "{md}");
        assert!(md.contains("| 0.60 [0.60-0.60] | 0.60, 0.60 | 0.50-0.70 | >= 0.8 | not met |"));
        assert!(md.contains("skipped: --no-pvhvm"));
    }
}
