//! `xsbench`: our xenstored against Xen 4.17's C xenstored, same machine,
//! same clients, same run.
//!
//! For each placement, repetition and server (interleaved, so drift hits
//! every server alike):
//! - libxenstore client `xs-bench.c` from the peers directory (built once with
//!   `gcc -O2 -lxenstore`, as `c-xenstored.sh bench` builds it): write+read
//!   pairs/s, ops/s, transactions/s, and the server's CPU time per request
//!   (from `/proc/<pid>/task/*/schedstat`, kernel time included);
//! - Xen's `test-xenstore -i N`: the average time of each of its 12 tests;
//! - per-request latency of a `READ` (our sync client) with no other
//!   connection open, and with `--idle` idle connections open;
//! - server throughput ([`load`]): one connection with `--load-depth`
//!   requests in flight, and `--load-conns` synchronous connections.
//!
//! Placements: `--pin CPU` puts this program, every server and every
//! client on one CPU (a request costs the server's work plus two context
//! switches, no cross-CPU wake-up); `--split C,S` puts the clients on CPU
//! `C` and the servers on CPU `S` (a request then also costs two cross-CPU
//! wake-ups, which on a virtual machine whose idle CPUs halt take tens of
//! microseconds and dominate); `--split-busy C,S` is split with
//! idle-priority spinners keeping both CPUs from halting (a host where an
//! idle CPU wakes cheaply). Several may be given and run one after
//! the other; none runs everything unpinned.
//!
//! Besides the C xenstored and ours (and `--no-persist-variant`), a null
//! server ([`null`]) answers xs-bench, the latency and the load with the
//! least work a socket server can do: its ratio to C bounds what any
//! server could reach on this machine with these clients.
//!
//! Reports median, min and max over the repetitions, and the ratio of each
//! median to C's. The C xenstored runs through `c-xenstored.sh start DIR`
//! (an `LD_PRELOAD` shim fakes the hypervisor); ours through its binary on a
//! temporary socket and state directory.

pub mod load;
pub mod null;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use xenstore_client::request::{encode, Request};
use xenstore_client::{Client, XsClientError, XsOps};

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
        source: XsClientError,
    },
}

pub(crate) type Result<T> = std::result::Result<T, XsBenchError>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> XsBenchError {
    let what = what.into();
    move |source| XsBenchError::Io { what, source }
}

fn xs_err(what: impl Into<String>) -> impl FnOnce(XsClientError) -> XsBenchError {
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
    /// Pin this program, every server and every client to this CPU. A
    /// request then costs the server's work and two context switches,
    /// without cross-CPU wake-ups, whose latency varies a lot on virtual
    /// machines.
    #[arg(long, value_name = "CPU")]
    pub pin: Option<usize>,
    /// Also (or only) run with the clients on CPU `C` and the servers on
    /// CPU `S` (`--split 0,1`).
    #[arg(long, value_name = "C,S", value_parser = parse_split)]
    pub split: Option<(usize, usize)>,
    /// Also run split with an idle-priority (`SCHED_IDLE`) spinner on each
    /// of the two CPUs, so that neither halts: on a virtual machine whose
    /// idle vCPUs halt (no guest halt-polling), waking one costs tens of
    /// microseconds per request and swamps the servers' differences; this
    /// models a host where an idle CPU wakes cheaply. The spinners yield to
    /// any other task at once (`SCHED_IDLE` loses every wake-up).
    #[arg(long, value_name = "C,S", value_parser = parse_split)]
    pub split_busy: Option<(usize, usize)>,
    /// Do not run the null server (the floor of any socket server).
    #[arg(long)]
    pub no_null_server: bool,
    /// Requests in flight on the pipelined load's one connection.
    #[arg(long, default_value_t = 32)]
    pub load_depth: usize,
    /// Synchronous connections of the concurrent load.
    #[arg(long, default_value_t = 8)]
    pub load_conns: usize,
    /// Write+read pairs per connection of each load.
    #[arg(long, default_value_t = 10_000)]
    pub load_pairs: usize,
    /// Another xenstored binary to measure alongside (persistent, like
    /// ours), e.g. an older build: `--also before=/tmp/xenstored.old`.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_also)]
    pub also: Vec<(String, PathBuf)>,
    /// Run only these parts (comma-separated: xs-bench, test-xenstore,
    /// latency, load).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "xs-bench,test-xenstore,latency,load",
        value_parser = clap::builder::PossibleValuesParser::new(["xs-bench", "test-xenstore", "latency", "load"])
    )]
    pub only: Vec<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

/// Parses `--also NAME=PATH`.
fn parse_also(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (n, p) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PATH"))?;
    if n.is_empty() || ["c-xenstored", "ours", "ours-nopersist", "null"].contains(&n) {
        return Err(format!("{n:?} is empty or the name of a built-in server"));
    }
    Ok((n.to_owned(), PathBuf::from(p)))
}

/// Parses `--split C,S`.
fn parse_split(s: &str) -> std::result::Result<(usize, usize), String> {
    let (c, sv) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not CLIENT_CPU,SERVER_CPU"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<usize>()
            .map_err(|e| format!("{x:?} is not a CPU number: {e}"))
    };
    Ok((num(c)?, num(sv)?))
}

/// Where clients and servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them.
    Unpinned,
    /// Everything on one CPU.
    Same(usize),
    /// Clients on the first CPU, servers on the second.
    Split(usize, usize),
    /// As `Split`, with idle-priority spinners keeping both CPUs out of
    /// their halted idle state.
    SplitBusy(usize, usize),
}

impl Placement {
    /// The label used in reports.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Placement::Unpinned => "unpinned".into(),
            Placement::Same(c) => format!("same-cpu{c}"),
            Placement::Split(c, s) => format!("split-c{c}-s{s}"),
            Placement::SplitBusy(c, s) => format!("split-busy-c{c}-s{s}"),
        }
    }
}

/// The placements `args` asks for, in order.
#[must_use]
pub fn placements(args: &Args) -> Vec<Placement> {
    let mut v = Vec::new();
    if let Some(c) = args.pin {
        v.push(Placement::Same(c));
    }
    if let Some((c, s)) = args.split {
        v.push(Placement::Split(c, s));
    }
    if let Some((c, s)) = args.split_busy {
        v.push(Placement::SplitBusy(c, s));
    }
    if v.is_empty() {
        v.push(Placement::Unpinned);
    }
    v
}

/// A CPU set holding `cpu` only.
fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is a plain bit array for which all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the live local `set`; CPU numbers past
    // the set's capacity are ignored by libc's macro.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// The affinity of task `tid` (0: the calling thread).
fn get_affinity(tid: libc::pid_t) -> Result<libc::cpu_set_t> {
    // SAFETY: `cpu_set_t` is a plain bit array for which all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into the
    // live local `set`.
    let r =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(XsBenchError::Io {
            what: format!("reading the CPU affinity of task {tid}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(set)
}

/// Sets the affinity of task `tid` (0: the calling thread, whose future
/// threads and children inherit it).
fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: the kernel only reads the `cpu_set_t` it is given, a live
    // reference of the right size.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r != 0 {
        return Err(XsBenchError::Io {
            what: format!("setting the CPU affinity of task {tid}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A `SCHED_IDLE` thread spinning on one CPU until dropped.
#[derive(Debug)]
struct Spinner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start(cpu: usize) -> Result<Spinner> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("idle-spinner".into())
                .spawn(move || {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: pid 0 is this thread; the kernel only reads
                    // `param`, a live local.
                    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                    let set = cpu_set(cpu);
                    let ok = r == 0 && set_affinity(0, &set).is_ok();
                    let _ = tx.send(ok);
                    while ok && !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
                .map_err(io_err("starting the idle spinner"))?
        };
        let spinner = Spinner {
            stop,
            thread: Some(thread),
        };
        if rx.recv().unwrap_or(false) {
            Ok(spinner)
        } else {
            Err(XsBenchError::Step {
                what: "starting the idle spinner".into(),
                detail: format!("cannot make a SCHED_IDLE thread on CPU {cpu}"),
            })
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread ids of process `pid` (itself if it cannot be listed).
fn threads_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let mut v: Vec<libc::pid_t> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if v.is_empty() {
        v.push(pid);
    }
    v
}

/// Nanoseconds task `tid` has run (first field of its `schedstat`).
fn task_cpu_ns(tid: libc::pid_t) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
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
    /// The null server, a thread of this program.
    Null(null::NullServer),
}

impl Server {
    /// The tasks (thread ids) serving.
    fn tasks(&self) -> Vec<libc::pid_t> {
        match &self.kind {
            ServerKind::Ours { child, .. } => {
                threads_of(libc::pid_t::try_from(child.id()).unwrap_or(0))
            }
            ServerKind::C { dir, .. } => std::fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .map(threads_of)
                .unwrap_or_default(),
            ServerKind::Null(n) => vec![n.tid()],
        }
    }

    /// CPU time the server has used so far (ns).
    fn cpu_ns(&self) -> Option<u64> {
        let tasks = self.tasks();
        if tasks.is_empty() {
            return None;
        }
        tasks.into_iter().map(task_cpu_ns).sum()
    }

    /// Moves every task of the server to `set`.
    fn pin(&self, set: &libc::cpu_set_t) -> Result<()> {
        for t in self.tasks() {
            set_affinity(t, set)?;
        }
        Ok(())
    }

    /// Whether it implements the whole protocol (the null server does not
    /// run test-xenstore).
    fn is_full(&self) -> bool {
        !matches!(self.kind, ServerKind::Null(_))
    }
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
            ServerKind::Null(_) => {}
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
    start_named(name, bin, persist)
}

fn start_named(name: &str, bin: &Path, persist: bool) -> Result<Server> {
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

/// Samples of one metric of one server in one placement:
/// (placement, server, metric) to values.
type Samples = BTreeMap<(String, String, String), Vec<f64>>;

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

/// The ratios of `ours` to `c` repetition by repetition (the servers run
/// one after the other within a repetition, so each pair saw the same
/// load): median, min and max; `None` unless both have every repetition.
fn paired(ours: &[f64], c: &[f64]) -> Option<(f64, f64, f64)> {
    if ours.is_empty() || ours.len() != c.len() {
        return None;
    }
    let r: Vec<f64> = ours.iter().zip(c).map(|(o, c)| o / c).collect();
    Some(stats(&r))
}

/// Which way is better for a metric, and the goal for ours/C.
fn goal(metric: &str) -> (&'static str, &'static str) {
    if metric.ends_with("server_cpu_ns_per_req") {
        ("lower", "<= 0.5")
    } else if metric.starts_with("xs-bench.") || metric.starts_with("load.") {
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

/// The C xenstored runner and `xs-bench.c`: the copy in the repository
/// (`tests/xsbench/peers`, from the team's shared peers directory), so a
/// fresh clone has them.
fn default_peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn default_xenstored() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("xenstored")))
        .unwrap_or_else(|| PathBuf::from("xenstored"))
}

/// CPU nanoseconds `s` used while `f` ran, per request of `requests`.
fn cpu_per_req<T>(
    s: &Server,
    requests: u64,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<f64>)> {
    let before = s.cpu_ns();
    let r = f()?;
    let after = s.cpu_ns();
    let per = match (before, after) {
        (Some(b), Some(a)) if requests > 0 => Some(a.saturating_sub(b) as f64 / requests as f64),
        _ => None,
    };
    Ok((r, per))
}

/// One repetition against one server; adds to `samples`.
fn run_one(
    args: &Args,
    placement: &str,
    xs_bench: &Path,
    s: &Server,
    samples: &mut Samples,
) -> Result<()> {
    let mut put = |metric: &str, v: f64| {
        samples
            .entry((placement.to_owned(), s.name.clone(), metric.to_owned()))
            .or_default()
            .push(v);
    };
    // xs-bench: `pairs` writes and reads, then pairs/10 transactions of
    // three requests each.
    if args.runs("xs-bench") {
        run_xs_bench(args, xs_bench, s, &mut put)?;
    }
    if s.is_full() && args.runs("test-xenstore") {
        run_test_xenstore(args, s, &mut put)?;
    }
    if args.runs("latency") {
        run_latency(args, s, &mut put)?;
    }
    if args.runs("load") {
        run_loads(args, s, &mut put)?;
    }
    Ok(())
}

fn run_xs_bench(
    args: &Args,
    xs_bench: &Path,
    s: &Server,
    put: &mut impl FnMut(&str, f64),
) -> Result<()> {
    let xs_requests = u64::from(args.pairs) * 2 + u64::from(args.pairs / 10) * 3;
    let (o, cpu) = cpu_per_req(s, xs_requests, || {
        run_with_deadline(
            Command::new(xs_bench)
                .arg(args.pairs.to_string())
                .env("XENSTORED_PATH", &s.socket),
            &format!("xs-bench against {}", s.name),
            Duration::from_secs(600),
        )
    })?;
    let text = String::from_utf8_lossy(&o.stdout);
    let r = parse_xs_bench(&text).ok_or_else(|| XsBenchError::Step {
        what: "parsing xs-bench output".into(),
        detail: text.to_string(),
    })?;
    put("xs-bench.pairs_per_s", r.pairs_per_s);
    put("xs-bench.ops_per_s", r.ops_per_s);
    put("xs-bench.tx_per_s", r.tx_per_s);
    if let Some(c) = cpu {
        put("xs-bench.server_cpu_ns_per_req", c);
    }
    Ok(())
}

fn run_test_xenstore(args: &Args, s: &Server, put: &mut impl FnMut(&str, f64)) -> Result<()> {
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
    Ok(())
}

fn run_latency(args: &Args, s: &Server, put: &mut impl FnMut(&str, f64)) -> Result<()> {
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

fn run_loads(args: &Args, s: &Server, put: &mut impl FnMut(&str, f64)) -> Result<()> {
    let loads = [
        (
            format!("load.pipelined{}", args.load_depth),
            1,
            args.load_depth,
        ),
        (format!("load.conns{}", args.load_conns), args.load_conns, 1),
    ];
    for (name, conns, depth) in loads {
        let requests = (conns * args.load_pairs * 2) as u64;
        let (r, cpu) = cpu_per_req(s, requests, || {
            load::run_load(&s.socket, conns, depth, args.load_pairs)
        })?;
        put(&format!("{name}.ops_per_s"), r.per_second());
        if let Some(c) = cpu {
            put(&format!("{name}.server_cpu_ns_per_req"), c);
        }
    }
    Ok(())
}

/// Runs the benchmark and prints the report.
///
/// # Errors
/// A missing peer, a server that does not start, or a failing client run.
pub fn run(args: &Args) -> Result<()> {
    raise_nofile();
    let all_cpus = get_affinity(0)?;
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
    let mut samples = Samples::new();
    let result = (|| {
        let mut servers = vec![start_c(&peers)?, start_ours(&ours_bin, true)?];
        if args.no_persist_variant {
            servers.push(start_ours(&ours_bin, false)?);
        }
        for (name, bin) in &args.also {
            servers.push(start_named(name, bin, true)?);
        }
        if !args.no_null_server {
            let n = null::NullServer::start(&work).map_err(io_err("starting the null server"))?;
            servers.push(Server {
                name: "null".into(),
                socket: n.socket().to_owned(),
                kind: ServerKind::Null(n),
            });
        }
        for placement in placements(args) {
            let (client_set, server_set) = match placement {
                Placement::Unpinned => (all_cpus, all_cpus),
                Placement::Same(c) => (cpu_set(c), cpu_set(c)),
                Placement::Split(c, sv) | Placement::SplitBusy(c, sv) => (cpu_set(c), cpu_set(sv)),
            };
            let _spinners = match placement {
                Placement::SplitBusy(c, sv) => vec![Spinner::start(c)?, Spinner::start(sv)?],
                _ => Vec::new(),
            };
            // This thread's children and threads (the clients) inherit it.
            set_affinity(0, &client_set)?;
            for s in &servers {
                s.pin(&server_set)?;
            }
            let label = placement.label();
            for rep in 0..args.reps {
                for s in &servers {
                    if !args.json {
                        eprintln!(
                            "xsbench: {label}: repetition {}/{} against {}",
                            rep + 1,
                            args.reps,
                            s.name
                        );
                    }
                    run_one(args, &label, &xs_bench, s, &mut samples)?;
                }
            }
        }
        Ok(())
    })();
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
    let keys: Vec<(&String, &String)> = samples
        .keys()
        .map(|(p, _, m)| (p, m))
        .filter(|k| seen.insert(*k))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut servers: Vec<&String> = samples
        .keys()
        .map(|(_, s, _)| s)
        .filter(|s| seen.insert(*s))
        .collect();
    // C first, the null server (the floor) last.
    servers.sort_by_key(|s| match s.as_str() {
        "c-xenstored" => 0,
        "null" => 2,
        _ => 1,
    });
    if !args.json {
        let placements: Vec<String> = placements(args).iter().map(Placement::label).collect();
        println!(
            "xsbench: {} repetitions; xs-bench {} pairs; test-xenstore -i {}; latency over {} READs, {} idle connections; load {} pairs per connection; placements: {}",
            args.reps,
            args.pairs,
            args.iterations,
            args.latency_requests,
            args.idle,
            args.load_pairs,
            placements.join(", ")
        );
        println!(
            "ratios: ours/C (paired/C: repetition by repetition); the null server's ratio bounds what any socket server can reach here"
        );
        println!(
            "{:<16} {:<38} {:>15} {:>13} {:>27} {:>8} {:>8} {:>20}  goal (ours/C)",
            "placement",
            "metric",
            "server",
            "median",
            "[min .. max]",
            "med/C",
            "best/C",
            "paired/C [min..max]"
        );
    }
    for (placement, metric) in keys {
        let (better, goal) = goal(metric);
        let c_values = samples.get(&(placement.clone(), "c-xenstored".to_owned(), metric.clone()));
        let c = c_values.map(|v| stats(v));
        for server in &servers {
            let Some(v) = samples.get(&(placement.clone(), (*server).clone(), metric.clone()))
            else {
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
            let pair = match c_values {
                Some(cv) if server.as_str() != "c-xenstored" => paired(v, cv),
                _ => None,
            };
            let goal = match (ratio, server.as_str()) {
                (None, _) => "",
                (Some(_), "null") => "(floor: no socket server beats this)",
                (Some(_), _) => goal,
            };
            if args.json {
                let line = json!({
                    "bench": "xsbench",
                    "placement": placement,
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
                    "paired_ratio_vs_c": pair.map(|(m, lo, hi)| json!({"median": m, "min": lo, "max": hi})),
                    "goal_ratio": goal,
                });
                println!("{line}");
            } else {
                let r = ratio.map_or_else(String::new, |r| format!("{r:.3}"));
                let b = best_ratio.map_or_else(String::new, |r| format!("{r:.3}"));
                let p = pair.map_or_else(String::new, |(m, lo, hi)| {
                    format!("{m:.2} [{lo:.2} .. {hi:.2}]")
                });
                println!(
                    "{placement:<16} {metric:<38} {server:>15} {med:>13.1} {:>27} {r:>8} {b:>8} {p:>20}  {goal}",
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
    fn test_parse_also_name_and_path() {
        assert_eq!(
            parse_also("old=/x/xenstored"),
            Ok(("old".to_owned(), PathBuf::from("/x/xenstored")))
        );
        assert!(parse_also("ours=/x").is_err());
        assert!(parse_also("/x").is_err());
    }

    #[test]
    fn test_parse_split_two_cpus() {
        assert_eq!(parse_split("0,1"), Ok((0, 1)));
        assert!(parse_split("0").is_err());
        assert!(parse_split("a,1").is_err());
    }

    #[test]
    fn test_placements_pin_and_split_both_run() {
        let mut args = Args::parse_from([
            "xsbench",
            "--pin",
            "1",
            "--split",
            "0,1",
            "--split-busy",
            "0,1",
        ]);
        assert_eq!(
            placements(&args),
            vec![
                Placement::Same(1),
                Placement::Split(0, 1),
                Placement::SplitBusy(0, 1)
            ]
        );
        args.pin = None;
        args.split = None;
        args.split_busy = None;
        assert_eq!(placements(&args), vec![Placement::Unpinned]);
    }

    #[test]
    fn test_goal_server_cpu_lower_load_higher() {
        assert_eq!(
            goal("load.conns8.server_cpu_ns_per_req"),
            ("lower", "<= 0.5")
        );
        assert_eq!(goal("load.pipelined32.ops_per_s"), ("higher", ">= 2"));
        assert_eq!(goal("xs-bench.ops_per_s"), ("higher", ">= 2"));
    }

    #[test]
    fn test_paired_ratio_per_repetition() {
        let (m, lo, hi) = paired(&[2.0, 6.0, 3.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((m, lo, hi), (2.0, 1.0, 3.0));
        assert_eq!(paired(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(paired(&[], &[]), None);
    }

    #[test]
    fn test_stats_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(stats(&[]).0.is_nan());
    }
}
