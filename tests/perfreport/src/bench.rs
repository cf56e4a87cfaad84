//! The benchmark invocations of a report and how one runs: its exact command
//! line, the load average before and after, its JSON lines, and its outcome
//! (a failing or slow benchmark becomes a failed run, never the end of the
//! report).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::machine::{loadavg, utc_now};

/// The benchmark invocations, in the order a run makes them.
pub const BENCHES: [&str; 6] = [
    "ringbench",
    "netbench",
    "netbench-http",
    "blkbench",
    "blkbench-pvhvm",
    "xsbench",
];

/// Whether an invocation needs the PVHVM kernel.
pub fn needs_pvhvm(bench: &str) -> bool {
    bench.ends_with("-pvhvm") || bench == "netbench-http"
}

/// The binary an invocation runs (`netbench-http` is `netbench`, ...).
pub fn binary(bench: &str) -> &'static str {
    match bench {
        "ringbench" => "ringbench",
        "netbench" | "netbench-http" => "netbench",
        "blkbench" | "blkbench-pvhvm" => "blkbench",
        _ => "xsbench",
    }
}

/// The command line of `bench` (binary from `bin_dir`), in its quick mode
/// (seconds, for the smoke test) or its full one.
pub fn command(bench: &str, bin_dir: &Path, quick: bool, pvhvm: Option<&Path>) -> Vec<String> {
    let mut v = vec![bin_dir.join(binary(bench)).display().to_string()];
    let s = |a: &[&str]| a.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let kernel = || pvhvm.map(|k| k.display().to_string()).unwrap_or_default();
    match (bench, quick) {
        // Only the rings (the event-channel and grant cases are no goal).
        ("ringbench", q) => {
            v.extend(s(&[
                "--json",
                "--placement",
                "threads",
                "--filter",
                "xen-ring,io-ring-h,rtrb",
            ]));
            if q {
                v.push("--quick".into());
            }
        }
        ("netbench", true) => v.extend(s(&["--json", "--quick"])),
        ("netbench", false) => v.extend(s(&["--json", "--reps", "3", "--seconds", "3"])),
        ("netbench-http", q) => {
            v.extend(s(&["--json", "--http-only", "--pvhvm-kernel"]));
            v.push(kernel());
            v.extend(if q {
                s(&["--quick", "--http-bytes", "10000000"])
            } else {
                s(&["--reps", "3"])
            });
        }
        ("blkbench", true) => v.extend(s(&["--json", "--quick"])),
        ("blkbench", false) => v.extend(s(&["--json", "--reps", "3", "--seconds", "3"])),
        ("blkbench-pvhvm", q) => {
            // The PV blkfront rows of the same run are the reference.
            v.extend(s(&[
                "--json",
                "--no-native",
                "--guest-fio",
                "false",
                "--pvhvm-kernel",
            ]));
            v.push(kernel());
            v.extend(if q {
                s(&["--quick"])
            } else {
                s(&["--reps", "3", "--seconds", "3"])
            });
        }
        // xsbench has no quick mode: one short repetition of the libxenstore part.
        (_, true) => v.extend(s(&[
            "--json",
            "--only",
            "xs-bench",
            "--no-null-server",
            "--reps",
            "1",
            "--pairs",
            "2000",
        ])),
        (_, false) => v.extend(s(&[
            "--json",
            "--only",
            "xs-bench",
            "--no-null-server",
            "--reps",
            "5",
        ])),
    }
    v
}

/// How a benchmark invocation ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    /// Exited 0.
    Ok,
    /// Did not start, exited non-zero or ran past its deadline.
    Failed(String),
    /// Not run (why).
    Skipped(String),
}

/// Set by SIGINT/SIGTERM once [`stop_on_signals`] is installed.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM stop the running benchmark (its whole process
/// group: a benchmark runs in a group of its own, which a terminal's Ctrl-C
/// does not reach) and end the report; see [`stopped`].
pub fn stop_on_signals() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: `on_signal` only stores to an atomic, which is
        // async-signal-safe; exec resets the handler in the benchmarks.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// One benchmark invocation of one run of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchRun {
    /// The invocation's name ([`BENCHES`]).
    pub bench: String,
    /// The report's run (1-based).
    pub run: usize,
    /// The exact command line.
    pub command: Vec<String>,
    /// When it started (UTC).
    pub started: String,
    /// Wall time, seconds.
    pub seconds: f64,
    /// `/proc/loadavg` (1, 5, 15 min) just before.
    pub loadavg_before: [f64; 3],
    /// `/proc/loadavg` just after.
    pub loadavg_after: [f64; 3],
    /// How it ended.
    pub outcome: Outcome,
    /// Its stdout's JSON lines (other lines are dropped).
    pub json: Vec<serde_json::Value>,
    /// The end of its stderr (at most 4 KiB), for a failure's cause.
    pub stderr_tail: String,
}

impl BenchRun {
    /// A run that was not made, and why.
    pub fn skipped(bench: &str, run: usize, command: Vec<String>, why: String) -> Self {
        let l = loadavg();
        Self {
            bench: bench.into(),
            run,
            command,
            started: utc_now(),
            seconds: 0.0,
            loadavg_before: l,
            loadavg_after: l,
            outcome: Outcome::Skipped(why),
            json: Vec::new(),
            stderr_tail: String::new(),
        }
    }
}

fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// Runs `command` (its own process group, killed with everything it
/// started if it outlives `timeout`) and records it.
pub fn run(bench: &str, run: usize, command: Vec<String>, timeout: Duration) -> BenchRun {
    let loadavg_before = loadavg();
    let started = utc_now();
    let t0 = Instant::now();
    let Some((prog, args)) = command.split_first() else {
        return BenchRun::skipped(bench, run, command, "empty command".into());
    };
    // Files, not pipes: a daemon a benchmark leaves behind cannot hold the
    // report up by keeping a pipe open.
    let scratch =
        std::env::temp_dir().join(format!("perfreport-{}-{bench}-{run}", std::process::id()));
    let files = (|| {
        Ok::<_, std::io::Error>((
            std::fs::File::create(scratch.with_extension("out"))?,
            std::fs::File::create(scratch.with_extension("err"))?,
        ))
    })();
    let (out_file, err_file) = match files {
        Ok(f) => f,
        Err(e) => {
            let mut r = BenchRun::skipped(bench, run, command.clone(), String::new());
            r.outcome = Outcome::Failed(format!("cannot create {}: {e}", scratch.display()));
            return r;
        }
    };
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(scratch.with_extension("out"));
            let _ = std::fs::remove_file(scratch.with_extension("err"));
            let mut r = BenchRun::skipped(bench, run, command.clone(), String::new());
            r.outcome = Outcome::Failed(format!("cannot start {prog}: {e}"));
            return r;
        }
    };
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if t0.elapsed() > timeout || stopped() => {
                timed_out = true;
                kill_group(child.id(), &mut child);
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => break Err(e),
        }
    };
    let slurp = |ext: &str| {
        let p = scratch.with_extension(ext);
        let mut buf = Vec::new();
        let _ = std::fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut buf));
        let _ = std::fs::remove_file(&p);
        String::from_utf8_lossy(&buf).into_owned()
    };
    let stdout = slurp("out");
    let stderr = slurp("err");
    let outcome = match status {
        _ if timed_out && stopped() => Outcome::Failed("interrupted (SIGINT/SIGTERM)".into()),
        _ if timed_out => Outcome::Failed(format!(
            "killed after its deadline of {} s",
            timeout.as_secs()
        )),
        Ok(st) if st.success() => Outcome::Ok,
        Ok(st) => Outcome::Failed(format!(
            "exited with {st}: {}",
            tail(stderr.trim(), 400).replace('\n', " / ")
        )),
        Err(e) => Outcome::Failed(format!("cannot wait for it: {e}")),
    };
    let json = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    BenchRun {
        bench: bench.into(),
        run,
        command,
        started,
        seconds: t0.elapsed().as_secs_f64(),
        loadavg_before,
        loadavg_after: loadavg(),
        outcome,
        json,
        stderr_tail: tail(&stderr, 4096),
    }
}

/// SIGTERM to the benchmark's process group, SIGKILL after 10 s.
fn kill_group(pid: u32, child: &mut std::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    let pgid = Pid::from_raw(raw);
    let _ = killpg(pgid, Signal::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}

/// The binaries a report needs in `bin_dir` (the benchmarks and what they
/// start), for the error that names what is missing.
pub fn needed_binaries(benches: &[&str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for b in benches {
        let extra: &[&'static str] = match binary(b) {
            "netbench" => &["xl", "backendd", "xen-pvguest", "xen-supervise"],
            "blkbench" => &["blkload", "xl", "backendd", "xen-pvguest", "xen-supervise"],
            "xsbench" => &["xenstored"],
            _ => &[],
        };
        for n in std::iter::once(binary(b)).chain(extra.iter().copied()) {
            if !v.contains(&n) {
                v.push(n);
            }
        }
        if needs_pvhvm(b) && !v.contains(&"xen-vmm") {
            v.push("xen-vmm");
        }
    }
    v
}

/// The binaries of `needed` missing from `bin_dir`.
pub fn missing(bin_dir: &Path, needed: &[&str]) -> Vec<PathBuf> {
    needed
        .iter()
        .map(|n| bin_dir.join(n))
        .filter(|p| !p.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_command_quick_and_full_use_json_and_the_binary() {
        let dir = Path::new("/b");
        for b in BENCHES {
            for q in [true, false] {
                let c = command(b, dir, q, Some(Path::new("/k")));
                assert_eq!(c[0], format!("/b/{}", binary(b)));
                assert!(c.iter().any(|a| a == "--json"), "{c:?}");
                assert_eq!(needs_pvhvm(b), c.iter().any(|a| a == "/k"), "{c:?}");
            }
        }
    }

    #[test]
    fn test_run_records_json_lines_and_failure() {
        let ok = run(
            "x",
            1,
            vec![
                "sh".into(),
                "-c".into(),
                "echo '{\"a\":1}'; echo table; echo oops >&2".into(),
            ],
            Duration::from_secs(10),
        );
        assert_eq!(ok.outcome, Outcome::Ok);
        assert_eq!(ok.json, vec![serde_json::json!({"a": 1})]);
        assert_eq!(ok.stderr_tail, "oops\n");
        let bad = run(
            "x",
            1,
            vec!["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()],
            Duration::from_secs(10),
        );
        assert!(
            matches!(&bad.outcome, Outcome::Failed(r) if r.contains("boom")),
            "{bad:?}"
        );
    }

    #[test]
    fn test_run_past_deadline_is_killed_and_failed() {
        let t0 = Instant::now();
        let r = run(
            "x",
            1,
            vec!["sh".into(), "-c".into(), "sleep 30 & sleep 30".into()],
            Duration::from_millis(300),
        );
        assert!(t0.elapsed() < Duration::from_secs(15));
        assert!(
            matches!(&r.outcome, Outcome::Failed(m) if m.contains("deadline")),
            "{r:?}"
        );
    }

    #[test]
    fn test_missing_binary_fails_the_run() {
        let r = run(
            "x",
            1,
            vec!["/nonexistent/bench".into()],
            Duration::from_secs(1),
        );
        assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
    }
}
