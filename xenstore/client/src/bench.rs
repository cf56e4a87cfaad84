//! `xsbench`: our xenstored against Xen 4.17's C xenstored, same machine,
//! same clients, same run.
//!
//! For each repetition and each server (interleaved, so drift hits both):
//! - libxenstore client `xs-bench.c` from the peers directory (built once with
//!   `gcc -O2 -lxenstore`, as `c-xenstored.sh bench` builds it): write+read
//!   pairs/s, ops/s, transactions/s;
//! - Xen's `test-xenstore -i N`: the average time of each of its 12 tests;
//! - per-request latency of a `READ` (our sync client) with no other
//!   connection open, and with `--idle` idle connections open.
//!
//! Reports median, min and max over the repetitions, and the ratio of our
//! median to C's. The C xenstored runs through `c-xenstored.sh start DIR`
//! (an `LD_PRELOAD` shim fakes the hypervisor); ours through its binary on a
//! temporary socket and state directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use crate::client::Client;
use crate::ops::XsOps;
use crate::request::{encode, Request};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum XsBenchError {
    /// A file or program the benchmark needs is missing.
    #[error("{what} not found at {path}")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A helper program failed.
    #[error("{what} failed: {detail}")]
    Step {
        /// The step.
        what: String,
        /// Its output or error.
        detail: String,
    },
    /// A server did not come up.
    #[error("{server} did not listen on {socket} in time")]
    NotListening {
        /// Which server.
        server: String,
        /// Its socket.
        socket: PathBuf,
    },
    /// Spawning or talking to a process or socket failed.
    #[error("I/O failed during {what}")]
    Io {
        /// During what.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The client library failed.
    #[error("xenstore client failed during {what}")]
    Client {
        /// During what.
        what: String,
        /// The error.
        #[source]
        source: crate::error::XsClientError,
    },
}

type Result<T> = std::result::Result<T, XsBenchError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> XsBenchError {
    let what = what.into();
    move |source| XsBenchError::Io { what, source }
}

fn xs_err(what: impl Into<String>) -> impl FnOnce(crate::error::XsClientError) -> XsBenchError {
    let what = what.into();
    move |source| XsBenchError::Client { what, source }
}

/// Command line of `xsbench`.
#[derive(Debug, Parser)]
#[command(
    name = "xsbench",
    about = "Benchmark our xenstored against Xen 4.17's C xenstored"
)]
pub struct Args {
    /// Directory with c-xenstored.sh and xs-bench.c.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Our xenstored binary (default: next to this program).
    #[arg(long)]
    pub xenstored: Option<PathBuf>,
    /// Xen's test-xenstore.
    #[arg(long, default_value = "/usr/lib/xen-4.17/bin/test-xenstore")]
    pub test_xenstore: PathBuf,
    /// Repetitions of every measurement.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Write+read pairs per xs-bench run (transactions: a tenth of it).
    #[arg(long, default_value_t = 20_000)]
    pub pairs: u32,
    /// Iterations of each test-xenstore test.
    #[arg(long, default_value_t = 100)]
    pub iterations: u32,
    /// Idle connections held open for the latency comparison.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Timed READ requests per latency measurement.
    #[arg(long, default_value_t = 5000)]
    pub latency_requests: usize,
    /// Also run our daemon without persistence (`--no-persist`).
    #[arg(long)]
    pub no_persist_variant: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Pin this program, both servers and every client to this CPU (all
    /// inherit the affinity). A request then costs the server's work and two
    /// context switches, without cross-CPU wake-ups, whose latency varies a
    /// lot on virtual machines.
    #[arg(long, value_name = "CPU")]
    pub pin: Option<usize>,
}

/// Pins the calling process (and so its future children) to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: `cpu_set_t` is a plain bit array for which all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the live local `set`; CPU numbers past
    // the set's capacity are ignored by libc's macro.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this process; the pointer and size describe `set`.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(XsBenchError::Io {
            what: format!("pinning to CPU {cpu}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A running server under test.
#[derive(Debug)]
struct Server {
    name: String,
    socket: PathBuf,
    kind: ServerKind,
}

#[derive(Debug)]
enum ServerKind {
    /// Our daemon: the child process and its scratch directory.
    Ours { child: Child, dir: PathBuf },
    /// C xenstored started by `c-xenstored.sh start dir`.
    C { script: PathBuf, dir: PathBuf },
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.kind {
            ServerKind::Ours { child, dir } => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(dir);
            }
            ServerKind::C { script, dir } => {
                let _ = Command::new("bash")
                    .arg(&*script)
                    .arg("stop")
                    .arg(&*dir)
                    .status();
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn scratch_dir(tag: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!("xsbench-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
    Ok(p)
}

fn wait_listening(name: &str, socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(XsBenchError::NotListening {
        server: name.into(),
        socket: socket.into(),
    })
}

fn start_ours(bin: &Path, persist: bool) -> Result<Server> {
    let name = if persist { "ours" } else { "ours-nopersist" };
    let dir = scratch_dir(name)?;
    let socket = dir.join("socket");
    let log =
        std::fs::File::create(dir.join("xenstored.log")).map_err(io_err("creating the log"))?;
    let log2 = log.try_clone().map_err(io_err("duplicating the log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--socket").arg(&socket).arg("--foreground");
    if persist {
        cmd.arg("--state-dir").arg(dir.join("state"));
    } else {
        cmd.arg("--no-persist");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(io_err(format!("starting {}", bin.display())))?;
    let s = Server {
        name: name.into(),
        socket,
        kind: ServerKind::Ours { child, dir },
    };
    wait_listening(&s.name, &s.socket)?;
    Ok(s)
}

fn start_c(peers: &Path) -> Result<Server> {
    let script = peers.join("c-xenstored.sh");
    let dir = scratch_dir("c")?;
    let o = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running c-xenstored.sh start"))?;
    let s = Server {
        name: "c-xenstored".into(),
        socket: dir.join("run").join("socket"),
        kind: ServerKind::C { script, dir },
    };
    if !o.status.success() {
        return Err(XsBenchError::Step {
            what: "c-xenstored.sh start".into(),
            detail: String::from_utf8_lossy(&o.stderr).into_owned(),
        });
    }
    wait_listening(&s.name, &s.socket)?;
    Ok(s)
}

/// Runs `cmd` with a deadline; kills it when the time is up.
fn run_with_deadline(cmd: &mut Command, what: &str, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {what}")))?;
    let deadline = Instant::now() + limit;
    loop {
        if child
            .try_wait()
            .map_err(io_err(format!("waiting for {what}")))?
            .is_some()
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(XsBenchError::Step {
                what: what.into(),
                detail: format!("no result within {limit:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = child
        .wait_with_output()
        .map_err(io_err(format!("collecting {what}")))?;
    if !o.status.success() {
        return Err(XsBenchError::Step {
            what: what.into(),
            detail: format!(
                "{}: {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        });
    }
    Ok(o)
}

/// Numbers from xs-bench's two lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XsBenchResult {
    /// Write+read pairs per second.
    pub pairs_per_s: f64,
    /// Operations per second (two per pair).
    pub ops_per_s: f64,
    /// Transactions (start + write + commit) per second.
    pub tx_per_s: f64,
}

/// The number just before `unit` in `line` (`"= 1234 pairs/s"`).
fn number_before(line: &str, unit: &str) -> Option<f64> {
    let head = &line[..line.find(unit)?];
    head.split_whitespace().last()?.parse().ok()
}

/// Parses xs-bench's output.
#[must_use]
pub fn parse_xs_bench(out: &str) -> Option<XsBenchResult> {
    let pairs_line = out.lines().find(|l| l.contains("pairs/s"))?;
    let tx_line = out.lines().find(|l| l.contains("tx/s"))?;
    Some(XsBenchResult {
        pairs_per_s: number_before(pairs_line, "pairs/s")?,
        ops_per_s: number_before(pairs_line, "ops/s")?,
        tx_per_s: number_before(tx_line, "tx/s")?,
    })
}

/// Parses test-xenstore's result lines (`"read 1    : avg: 17037 ns (...)"`)
/// into (test name, average ns).
#[must_use]
pub fn parse_test_xenstore(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": avg:")?;
            let ns = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_owned(), ns))
        })
        .collect()
}

/// Latency percentiles of one measurement, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest-rank on a sorted sample; the index is within bounds by construction.
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn measure_latency(socket: &Path, n: usize) -> Result<Latency> {
    let xs = Client::connect_path(socket).map_err(xs_err("connecting for latency"))?;
    xs.write("/bench/lat", "x")
        .map_err(xs_err("latency set-up"))?;
    for _ in 0..n.min(500) {
        xs.read("/bench/lat").map_err(xs_err("latency warm-up"))?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        xs.read("/bench/lat").map_err(xs_err("latency"))?;
        samples.push(t.elapsed().as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    Ok(Latency {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        mean,
    })
}

/// Opens `n` connections, each answering one request so the server has
/// really taken it on, and keeps them open.
fn open_idle(socket: &Path, n: usize) -> Result<Vec<UnixStream>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = UnixStream::connect(socket).map_err(io_err("opening idle connections"))?;
        let req =
            encode(&Request::Read { path: "/bench/lat" }, 1, 0).map_err(xs_err("encoding"))?;
        s.write_all(&req)
            .map_err(io_err("idle connection request"))?;
        conns.push(s);
    }
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(io_err("timeout"))?;
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr)
            .map_err(io_err("idle connection reply"))?;
        let len = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
        let mut body = vec![0u8; len.min(4096)];
        s.read_exact(&mut body)
            .map_err(io_err("idle connection reply body"))?;
    }
    Ok(conns)
}

/// Raises the open-file soft limit to the hard limit (children inherit it).
fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the live local `rl`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: setrlimit only reads the `rlimit` it is given, a live local.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
}

/// Samples of one metric of one server.
type Samples = BTreeMap<(String, String), Vec<f64>>;

/// Median (mean of the middle two for an even count), min and max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let (Some(&min), Some(&max)) = (s.first(), s.last()) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, min, max)
}

/// Which way is better for a metric, and the goal for ours/C.
fn goal(metric: &str) -> (&'static str, &'static str) {
    if metric.starts_with("xs-bench.") {
        ("higher", ">= 2")
    } else if metric.starts_with("test-xenstore.") {
        ("lower", "<= 0.5")
    } else if metric.starts_with("latency.idle_over_none") {
        ("lower", "<= 1 (no worse with idle connections)")
    } else {
        ("lower", "")
    }
}

fn build_xs_bench(peers: &Path, out_dir: &Path) -> Result<PathBuf> {
    let src = peers.join("xs-bench.c");
    if !src.exists() {
        return Err(XsBenchError::Missing {
            what: "xs-bench.c",
            path: src,
        });
    }
    let bin = out_dir.join("xs-bench");
    run_with_deadline(
        Command::new("gcc")
            .arg("-O2")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .arg("-lxenstore"),
        "gcc xs-bench.c -lxenstore",
        Duration::from_secs(120),
    )?;
    Ok(bin)
}

fn default_peers() -> PathBuf {
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers");
    if in_tree.join("c-xenstored.sh").exists() {
        return in_tree;
    }
    PathBuf::from("/work/shared/peers")
}

fn default_xenstored() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("xenstored")))
        .unwrap_or_else(|| PathBuf::from("xenstored"))
}

/// One repetition against one server; adds to `samples`.
fn run_one(args: &Args, xs_bench: &Path, s: &Server, samples: &mut Samples) -> Result<()> {
    let mut put = |metric: &str, v: f64| {
        samples
            .entry((s.name.clone(), metric.to_owned()))
            .or_default()
            .push(v);
    };
    let o = run_with_deadline(
        Command::new(xs_bench)
            .arg(args.pairs.to_string())
            .env("XENSTORED_PATH", &s.socket),
        &format!("xs-bench against {}", s.name),
        Duration::from_secs(600),
    )?;
    let text = String::from_utf8_lossy(&o.stdout);
    let r = parse_xs_bench(&text).ok_or_else(|| XsBenchError::Step {
        what: "parsing xs-bench output".into(),
        detail: text.to_string(),
    })?;
    put("xs-bench.pairs_per_s", r.pairs_per_s);
    put("xs-bench.ops_per_s", r.ops_per_s);
    put("xs-bench.tx_per_s", r.tx_per_s);

    let o = run_with_deadline(
        Command::new(&args.test_xenstore)
            .args(["-i", &args.iterations.to_string()])
            .env("XENSTORED_PATH", &s.socket),
        &format!("test-xenstore against {}", s.name),
        Duration::from_secs(600),
    )?;
    let text = String::from_utf8_lossy(&o.stdout);
    let tests = parse_test_xenstore(&text);
    if tests.len() != 12 {
        return Err(XsBenchError::Step {
            what: "parsing test-xenstore output".into(),
            detail: text.to_string(),
        });
    }
    let mut total = 0.0;
    for (name, ns) in tests {
        total += ns;
        put(&format!("test-xenstore.{name}.avg_ns"), ns);
    }
    put("test-xenstore.sum_of_avgs_ns", total);

    let none = measure_latency(&s.socket, args.latency_requests)?;
    let idle = open_idle(&s.socket, args.idle)?;
    let with_idle = measure_latency(&s.socket, args.latency_requests)?;
    drop(idle);
    put("latency.no_idle.p50_ns", none.p50);
    put("latency.no_idle.p99_ns", none.p99);
    put("latency.no_idle.mean_ns", none.mean);
    put("latency.with_idle.p50_ns", with_idle.p50);
    put("latency.with_idle.p99_ns", with_idle.p99);
    put("latency.with_idle.mean_ns", with_idle.mean);
    put("latency.idle_over_none.p50", with_idle.p50 / none.p50);
    put("latency.idle_over_none.mean", with_idle.mean / none.mean);
    Ok(())
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// A missing peer, a server that does not start, or a failing client run.
pub fn run(args: &Args) -> Result<()> {
    raise_nofile();
    if let Some(cpu) = args.pin {
        pin_to(cpu)?;
    }
    let peers = args.peers.clone().unwrap_or_else(default_peers);
    let script = peers.join("c-xenstored.sh");
    if !script.exists() {
        return Err(XsBenchError::Missing {
            what: "c-xenstored.sh",
            path: script,
        });
    }
    let ours_bin = args.xenstored.clone().unwrap_or_else(default_xenstored);
    if !ours_bin.exists() {
        return Err(XsBenchError::Missing {
            what: "our xenstored (build it: cargo build --release -p xenstored)",
            path: ours_bin,
        });
    }
    if !args.test_xenstore.exists() {
        return Err(XsBenchError::Missing {
            what: "test-xenstore (apt-get install xen-utils-4.17)",
            path: args.test_xenstore.clone(),
        });
    }
    let work = scratch_dir("build")?;
    let xs_bench = build_xs_bench(&peers, &work);
    let xs_bench = match xs_bench {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let mut servers = vec![start_c(&peers)?, start_ours(&ours_bin, true)?];
    if args.no_persist_variant {
        servers.push(start_ours(&ours_bin, false)?);
    }
    let mut samples = Samples::new();
    let result = (|| {
        for rep in 0..args.reps {
            for s in &servers {
                if !args.json {
                    eprintln!(
                        "xsbench: repetition {}/{} against {}",
                        rep + 1,
                        args.reps,
                        s.name
                    );
                }
                run_one(args, &xs_bench, s, &mut samples)?;
            }
        }
        Ok(())
    })();
    drop(servers);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    report(args, &samples);
    Ok(())
}

/// The best sample: the highest for a rate, the lowest for a time. On a
/// shared machine it is the run least disturbed by other load.
fn best(better: &str, min: f64, max: f64) -> f64 {
    if better == "higher" {
        max
    } else {
        min
    }
}

fn report(args: &Args, samples: &Samples) {
    let mut seen = std::collections::BTreeSet::new();
    let metrics: Vec<&String> = samples
        .keys()
        .map(|(_, m)| m)
        .filter(|m| seen.insert(*m))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let servers: Vec<&String> = samples
        .keys()
        .map(|(s, _)| s)
        .filter(|s| seen.insert(*s))
        .collect();
    if !args.json {
        let pin = args.pin.map_or_else(
            || "not pinned".to_owned(),
            |c| format!("all pinned to CPU {c}"),
        );
        println!(
            "xsbench: {} repetitions; xs-bench {} pairs; test-xenstore -i {}; latency over {} READs, {} idle connections; {pin}",
            args.reps, args.pairs, args.iterations, args.latency_requests, args.idle
        );
        println!(
            "{:<36} {:>15} {:>13} {:>27} {:>8} {:>8}  goal (ours/C)",
            "metric", "server", "median", "[min .. max]", "med/C", "best/C"
        );
    }
    for metric in metrics {
        let (better, goal) = goal(metric);
        let c = samples
            .get(&("c-xenstored".to_owned(), metric.clone()))
            .map(|v| stats(v));
        for server in &servers {
            let Some(v) = samples.get(&((*server).clone(), metric.clone())) else {
                continue;
            };
            let (med, min, max) = stats(v);
            let (ratio, best_ratio) = match c {
                Some((cmed, cmin, cmax)) if server.as_str() != "c-xenstored" => (
                    Some(med / cmed),
                    Some(best(better, min, max) / best(better, cmin, cmax)),
                ),
                _ => (None, None),
            };
            if args.json {
                let line = json!({
                    "bench": "xsbench",
                    "server": server,
                    "metric": metric,
                    "reps": v.len(),
                    "median": med,
                    "min": min,
                    "max": max,
                    "values": v,
                    "better": better,
                    "ratio_vs_c": ratio,
                    "best_ratio_vs_c": best_ratio,
                    "goal_ratio": goal,
                    "pinned_cpu": args.pin,
                });
                println!("{line}");
            } else {
                let r = ratio.map_or_else(String::new, |r| format!("{r:.3}"));
                let b = best_ratio.map_or_else(String::new, |r| format!("{r:.3}"));
                let g = if ratio.is_some() { goal } else { "" };
                println!(
                    "{metric:<36} {server:>15} {med:>13.1} {:>27} {r:>8} {b:>8}  {g}",
                    format!("[{min:.1} .. {max:.1}]")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_xs_bench_two_lines() {
        let out = "libxenstore: 20000 write+read pairs in 0.800 s = 25000 pairs/s = 50000 ops/s (20.0 us/op)\n\
                   libxenstore: 2000 transactions(start+write+commit) in 0.100 s = 20000 tx/s\n";
        let r = parse_xs_bench(out).expect("parses");
        assert_eq!(
            r,
            XsBenchResult {
                pairs_per_s: 25000.0,
                ops_per_s: 50000.0,
                tx_per_s: 20000.0
            }
        );
    }

    #[test]
    fn test_parse_xs_bench_garbage_is_none() {
        assert_eq!(parse_xs_bench("xs_open: No such file"), None);
    }

    #[test]
    fn test_parse_test_xenstore_twelve_lines() {
        let out = "read 1    : avg: 17037 ns (11704 ns .. 20604 ns)\nta err    : avg: 129879 ns (83076 ns .. 3488581 ns)\n";
        assert_eq!(
            parse_test_xenstore(out),
            vec![
                ("read 1".to_owned(), 17037.0),
                ("ta err".to_owned(), 129_879.0)
            ]
        );
    }

    #[test]
    fn test_stats_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(stats(&[]).0.is_nan());
    }
}
