//! Ring-throughput benchmark for `xen-ring`, with Xen's own C `io/ring.h` macros
//! ([`ioring`]), `rtrb` and `crossbeam_queue::ArrayQueue` as references measured in the
//! same run, interleaved repetition by repetition, reported with paired ratios.
//!
//! A frontend (producer of requests) and a backend (consumer answering with responses)
//! run pinned on two CPUs, as two threads or as two processes sharing a memfd with
//! eventfd notifications. See the crate's README.md for what every number means.
//!
//! The [`shim`] cases measure the hypervisor shim between two processes: event-channel
//! send → wake round trips through `xen-shim` against a bare eventfd ping-pong, and the
//! cost of mapping and unmapping one grant.

pub mod ioring;
pub mod msg;
pub mod process;
pub mod refs;
pub mod report;
pub mod shim;
pub mod stats;
pub mod sys;
pub mod xen;

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::msg::{Blk, NetTx, Shape};
use crate::report::Row;
use crate::stats::Sample;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "ringbench",
    about = "Throughput and latency of the xen-ring split-driver ring, against Xen's C io/ring.h, rtrb and crossbeam"
)]
pub struct Args {
    /// Print one JSON object per result line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Very short runs (for tests); numbers are noisy.
    #[arg(long)]
    pub quick: bool,
    /// Only these implementations (comma separated: xen-ring, io-ring-h, rtrb, crossbeam, eventfd,
    /// eventfd-poll, shim-evtchn, shim-evtchn-poll, grant-map).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub filter: Vec<Impl>,
    /// Only these placements (comma separated: threads, processes).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub placement: Vec<Placement>,
    /// Only these modes (comma separated: stream, pingpong, map-unmap).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub mode: Vec<Mode>,
    /// Only these batching modes (comma separated: single, chunk).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub batch: Vec<Batch>,
    /// Only these request sizes (comma separated: 112, 12; the shim cases carry 0).
    #[arg(long, value_delimiter = ',')]
    pub msg_bytes: Vec<usize>,
    /// Seconds per repetition of one case.
    #[arg(long, default_value_t = 0.2)]
    pub duration: f64,
    /// Repetitions per case; the report shows the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Microseconds a waiting side busy-polls before blocking on its eventfd.
    #[arg(long, default_value_t = 50)]
    pub spin_us: u64,
    /// Arm the event index (`final_check_for_*`) before busy-polling instead of after:
    /// the peer then signals for nearly every message while this side spins.
    #[arg(long)]
    pub arm_before_spin: bool,
    /// Do not pin frontend and backend to CPUs 0 and 1.
    #[arg(long)]
    pub no_pin: bool,
    /// Internal: the backend process of the `processes` placement.
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// Hidden subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The backend side of one `processes` repetition (started by ringbench itself).
    #[command(name = "__backend", hide = true)]
    Backend(process::BackendArgs),
    /// The guest domain's runtime of the shim cases (started by ringbench itself).
    #[command(name = "__shim-guest", hide = true)]
    ShimGuest(shim::ShimGuestArgs),
    /// The other process of the eventfd reference (started by ringbench itself).
    #[command(name = "__eventfd-peer", hide = true)]
    EventfdPeer(shim::EventfdPeerArgs),
}

/// Ring implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Impl {
    /// `xen_ring::FrontRing`/`BackRing` on a Xen `sring` layout.
    #[value(name = "xen-ring")]
    XenRing,
    /// Xen's own C `io/ring.h` macros on the same sring (reference).
    #[value(name = "io-ring-h")]
    IoRingH,
    /// `rtrb::RingBuffer` (reference).
    Rtrb,
    /// `crossbeam_queue::ArrayQueue` (reference).
    Crossbeam,
    /// Bare eventfd ping-pong between two processes, blocking reads (reference of
    /// `shim-evtchn`).
    Eventfd,
    /// Bare eventfd ping-pong, busy-polling `--spin-us` before sleeping (reference of
    /// `shim-evtchn-poll`).
    #[value(name = "eventfd-poll")]
    EventfdPoll,
    /// Event-channel ping-pong through the hypervisor shim (Dom0 `Evtchn` against a
    /// guest `Hypervisor`), sleeping at once.
    #[value(name = "shim-evtchn")]
    ShimEvtchn,
    /// Like `shim-evtchn`, busy-polling `--spin-us` before sleeping.
    #[value(name = "shim-evtchn-poll")]
    ShimEvtchnPoll,
    /// Dom0 maps and unmaps one grant of a guest (`Gntdev`).
    #[value(name = "grant-map")]
    GrantMap,
}

impl Impl {
    /// Name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Impl::XenRing => "xen-ring",
            Impl::IoRingH => "io-ring-h",
            Impl::Rtrb => "rtrb",
            Impl::Crossbeam => "crossbeam",
            Impl::Eventfd => "eventfd",
            Impl::EventfdPoll => "eventfd-poll",
            Impl::ShimEvtchn => "shim-evtchn",
            Impl::ShimEvtchnPoll => "shim-evtchn-poll",
            Impl::GrantMap => "grant-map",
        }
    }

    /// Whether this is one of the hypervisor-shim cases ([`shim`]).
    pub fn is_shim(self) -> bool {
        matches!(
            self,
            Impl::Eventfd
                | Impl::EventfdPoll
                | Impl::ShimEvtchn
                | Impl::ShimEvtchnPoll
                | Impl::GrantMap
        )
    }
}

/// Where the two sides run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    /// Two threads of one process.
    Threads,
    /// Two processes sharing a memfd, notified by eventfds.
    Processes,
}

impl Placement {
    /// Name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Threads => "threads",
            Placement::Processes => "processes",
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Throughput: the producer keeps the ring as full as it can.
    Stream,
    /// Latency: one message in flight, both sides busy-poll.
    Pingpong,
    /// Cost of one grant map + unmap (`grant-map` only).
    #[value(name = "map-unmap")]
    MapUnmap,
}

impl Mode {
    /// Name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Pingpong => "pingpong",
            Mode::MapUnmap => "map-unmap",
        }
    }
}

/// How messages are pushed and taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Batch {
    /// One push + notify check per message, one take per message.
    Single,
    /// Batches of up to [`CHUNK`] messages, one notify check per batch.
    Chunk,
}

impl Batch {
    /// Name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Batch::Single => "single",
            Batch::Chunk => "chunk",
        }
    }
}

/// Largest batch in `chunk` mode (also bounded by the free space of the ring).
pub const CHUNK: usize = 32;

/// The ring implementations, in report order (xen-ring first).
pub const RING_IMPLS: [Impl; 4] = [Impl::XenRing, Impl::IoRingH, Impl::Rtrb, Impl::Crossbeam];

/// Request sizes measured: blkif (112 B) and netif tx (12 B).
pub const MSG_SIZES: [usize; 2] = [112, 12];
/// Capacities measured, in entries.
pub const CAPACITIES: [usize; 2] = [32, 1024];

/// One benchmark case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Implementation.
    pub imp: Impl,
    /// Threads or processes.
    pub placement: Placement,
    /// Stream or pingpong.
    pub mode: Mode,
    /// Request size in bytes (112 or 12).
    pub msg_bytes: usize,
    /// Capacity asked for, in entries.
    pub capacity_requested: usize,
    /// Single or chunk.
    pub batch: Batch,
}

/// Knobs shared by all cases.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Length of one repetition.
    pub duration: Duration,
    /// Repetitions per case.
    pub runs: usize,
    /// Busy-poll budget before blocking on an eventfd.
    pub spin: Duration,
    /// Arm the event index before busy-polling (see `--arm-before-spin`).
    pub arm_before_spin: bool,
    /// CPUs for (frontend, backend), if pinning.
    pub cores: Option<(usize, usize)>,
    /// Upper bound on recorded round trips per pingpong repetition.
    pub max_rtts: usize,
}

impl Settings {
    fn from_args(args: &Args) -> Result<Self> {
        let mut secs = args.duration;
        let mut runs = args.runs;
        if args.quick {
            secs = secs.min(0.01);
            runs = runs.min(3);
        }
        if !(secs.is_finite() && secs > 0.0 && secs <= 600.0) {
            bail!("--duration must be between 0 and 600 seconds");
        }
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let cores = if args.no_pin { None } else { sys::pick_cores() };
        if !args.no_pin && cores.is_none() {
            eprintln!("ringbench: fewer than two CPUs available; running unpinned");
        }
        // Round trips are at least ~100 ns: this never truncates a repetition in practice,
        // and the frontend also stops once the buffer is full.
        let max_rtts = ((secs * 1e7) as usize).clamp(1024, 50_000_000);
        Ok(Self {
            duration: Duration::from_secs_f64(secs),
            runs,
            spin: Duration::from_micros(args.spin_us),
            arm_before_spin: args.arm_before_spin,
            cores,
            max_rtts,
        })
    }

    /// CPU for the frontend, if pinning.
    pub fn front_core(&self) -> Option<usize> {
        self.cores.map(|c| c.0)
    }

    /// CPU for the backend, if pinning.
    pub fn back_core(&self) -> Option<usize> {
        self.cores.map(|c| c.1)
    }
}

/// All cases of a full run, in report order, restricted by the command-line filters.
pub fn cases(args: &Args) -> Vec<Case> {
    let keep_impl = |i: Impl| args.filter.is_empty() || args.filter.contains(&i);
    let keep_place = |p: Placement| args.placement.is_empty() || args.placement.contains(&p);
    let keep_mode = |m: Mode| args.mode.is_empty() || args.mode.contains(&m);
    let keep_batch = |b: Batch| args.batch.is_empty() || args.batch.contains(&b);
    let keep_bytes = |n: usize| args.msg_bytes.is_empty() || args.msg_bytes.contains(&n);
    let mut out = Vec::new();
    for placement in [Placement::Threads, Placement::Processes] {
        for msg_bytes in MSG_SIZES {
            for capacity_requested in CAPACITIES {
                // The implementations innermost: one group of cases runs interleaved.
                for (mode, batch) in [
                    (Mode::Stream, Batch::Single),
                    (Mode::Stream, Batch::Chunk),
                    (Mode::Pingpong, Batch::Single),
                ] {
                    for imp in RING_IMPLS {
                        // The references run as two threads only.
                        if placement == Placement::Processes && imp != Impl::XenRing {
                            continue;
                        }
                        // ArrayQueue has no chunk API.
                        if imp == Impl::Crossbeam && batch == Batch::Chunk {
                            continue;
                        }
                        let case = Case {
                            imp,
                            placement,
                            mode,
                            msg_bytes,
                            capacity_requested,
                            batch,
                        };
                        if keep_impl(imp)
                            && keep_place(placement)
                            && keep_mode(mode)
                            && keep_batch(batch)
                            && keep_bytes(msg_bytes)
                        {
                            out.push(case);
                        }
                    }
                }
            }
        }
    }
    // The shim cases: two processes, one event (or one map) in flight, no payload.
    for (imp, mode) in [
        (Impl::Eventfd, Mode::Pingpong),
        (Impl::ShimEvtchn, Mode::Pingpong),
        (Impl::EventfdPoll, Mode::Pingpong),
        (Impl::ShimEvtchnPoll, Mode::Pingpong),
        (Impl::GrantMap, Mode::MapUnmap),
    ] {
        let case = Case {
            imp,
            placement: Placement::Processes,
            mode,
            msg_bytes: 0,
            capacity_requested: 1,
            batch: Batch::Single,
        };
        if keep_impl(imp)
            && keep_place(case.placement)
            && keep_mode(mode)
            && keep_batch(case.batch)
            && keep_bytes(case.msg_bytes)
        {
            out.push(case);
        }
    }
    out
}

/// Entry point of the binary.
pub fn run(args: Args) -> Result<()> {
    match &args.cmd {
        Some(Cmd::Backend(b)) => return process::backend_main(b),
        Some(Cmd::ShimGuest(g)) => return shim::shim_guest_main(g),
        Some(Cmd::EventfdPeer(e)) => return shim::eventfd_peer_main(e),
        None => {}
    }
    // Removes the embedded xen-shimd's directories however this function returns.
    struct ShimCleanup;
    impl Drop for ShimCleanup {
        fn drop(&mut self) {
            shim::cleanup();
        }
    }
    let _shim_cleanup = ShimCleanup;
    let set = Settings::from_args(&args)?;
    if let Some(core) = set.front_core() {
        sys::pin_to(core).context("cannot pin the frontend")?;
    }
    if let Some(busy) = sys::cpu_busy(Duration::from_millis(200)).filter(|&b| b > 0.2) {
        eprintln!(
            "ringbench: warning: the CPUs were {:.0}% busy before starting; other processes \
             compete for them and the numbers will be noisy",
            busy * 100.0
        );
    }
    let limits = xen::Limits::probe()?;
    let stdout = std::io::stdout();
    let mut rows = Vec::new();
    if !args.json {
        report::print_header(&mut stdout.lock(), &set)?;
    }
    for group in groups(&cases(&args)) {
        let group_rows =
            run_group(&group, &set, &limits).with_context(|| format!("cases {group:?} failed"))?;
        let mut out = stdout.lock();
        for row in group_rows {
            if args.json {
                serde_json::to_writer(&mut out, &row).context("cannot encode a result as JSON")?;
                writeln!(out)?;
            } else {
                report::print_row(&mut out, &row)?;
            }
            rows.push(row);
        }
        out.flush()?;
    }
    if !args.json {
        report::print_ratios(&mut stdout.lock(), &rows, &limits)?;
        report::print_shim_ratios(&mut stdout.lock(), &rows, &set)?;
    }
    Ok(())
}

/// Splits `cases` into groups measured together: the ring implementations of one
/// threads case (same mode, size, capacity and batching) form one group, run
/// interleaved by [`run_group`]; every other case is a group of its own.
pub fn groups(cases: &[Case]) -> Vec<Vec<Case>> {
    let key = |c: &Case| {
        (
            c.placement,
            c.mode,
            c.msg_bytes,
            c.capacity_requested,
            c.batch,
        )
    };
    let mut out: Vec<Vec<Case>> = Vec::new();
    for &c in cases {
        let joins = c.placement == Placement::Threads && !c.imp.is_shim();
        match out.last_mut() {
            Some(g)
                if joins
                    && g.first()
                        .is_some_and(|f| !f.imp.is_shim() && key(f) == key(&c)) =>
            {
                g.push(c)
            }
            _ => out.push(vec![c]),
        }
    }
    out
}

/// Runs the repetitions of a group of ring cases interleaved, one repetition of each
/// implementation in turn (A B C A B C ...), so that the machine's load drifts hit
/// them alike; the xen-ring row gets its repetition-by-repetition (paired) ratios
/// against every other implementation of the group.
pub fn run_group(group: &[Case], set: &Settings, limits: &xen::Limits) -> Result<Vec<Row>> {
    if let [case] = group {
        if case.imp.is_shim() {
            return Ok(vec![run_case(case, set, limits)?]);
        }
    }
    let mut geos = Vec::with_capacity(group.len());
    for case in group {
        geos.push(match case.msg_bytes {
            112 => limits.geometry::<Blk>(case.capacity_requested),
            12 => limits.geometry::<NetTx>(case.capacity_requested),
            n => bail!("no message shape of {n} bytes"),
        });
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::with_capacity(set.runs); group.len()];
    for _ in 0..set.runs {
        for ((case, geo), out) in group.iter().zip(&geos).zip(samples.iter_mut()) {
            let s = match case.msg_bytes {
                112 => run_once::<Blk>(case, geo, set),
                _ => run_once::<NetTx>(case, geo, set),
            }
            .with_context(|| format!("{} failed", case.imp.name()))?;
            out.push(s);
        }
    }
    let mut rows: Vec<Row> = group
        .iter()
        .zip(&geos)
        .zip(&samples)
        .map(|((case, geo), s)| Row::new(case, geo, s))
        .collect();
    report::add_paired_ratios(&mut rows, &samples);
    Ok(rows)
}

/// Runs every repetition of one case and summarises it.
pub fn run_case(case: &Case, set: &Settings, limits: &xen::Limits) -> Result<Row> {
    if case.imp.is_shim() {
        let samples = shim::run_case(case, set)?;
        // No ring: one event (or one mapping) in flight, nothing carried back.
        let geo = xen::Geometry {
            pages: 0,
            bytes: 0,
            ring_entries: 0,
            capacity: 1,
            rsp_bytes: 0,
        };
        return Ok(Row::new(case, &geo, &samples));
    }
    let geo = match case.msg_bytes {
        112 => limits.geometry::<Blk>(case.capacity_requested),
        12 => limits.geometry::<NetTx>(case.capacity_requested),
        n => bail!("no message shape of {n} bytes"),
    };
    let mut samples = Vec::with_capacity(set.runs);
    for _ in 0..set.runs {
        let s = match case.msg_bytes {
            112 => run_once::<Blk>(case, &geo, set)?,
            _ => run_once::<NetTx>(case, &geo, set)?,
        };
        samples.push(s);
    }
    Ok(Row::new(case, &geo, &samples))
}

fn run_once<S: Shape>(case: &Case, geo: &xen::Geometry, set: &Settings) -> Result<Sample> {
    match (case.imp, case.placement) {
        (Impl::XenRing, Placement::Threads) => xen::run_threads::<S>(case, geo, set),
        (Impl::XenRing, Placement::Processes) => process::run_processes::<S>(case, geo, set),
        (Impl::IoRingH, Placement::Threads) => ioring::run_threads::<S>(case, geo, set),
        (Impl::Rtrb, Placement::Threads) => refs::run_rtrb::<S>(case, geo.capacity, set),
        (Impl::Crossbeam, Placement::Threads) => refs::run_crossbeam::<S>(case, geo.capacity, set),
        (imp, placement) => bail!(
            "{} has no {} placement in this benchmark",
            imp.name(),
            placement.name()
        ),
    }
}

/// One-shot start signal between the two sides of a threads repetition, which also
/// carries a failure of the side that was getting ready.
#[derive(Debug, Default)]
pub struct Gate(AtomicU8);

impl Gate {
    const CLOSED: u8 = 0;
    const OPEN: u8 = 1;
    const FAILED: u8 = 2;

    /// The waiting side may start.
    pub fn open(&self) {
        self.0.store(Self::OPEN, Ordering::Release);
    }

    /// The side getting ready failed; the waiting side gives up.
    pub fn fail(&self) {
        let _ = self.0.compare_exchange(
            Self::CLOSED,
            Self::FAILED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Waits (spinning, then yielding) until `open` or `fail`.
    pub fn wait(&self) -> Result<()> {
        let mut spins = 0u32;
        loop {
            match self.0.load(Ordering::Acquire) {
                Self::OPEN => return Ok(()),
                Self::FAILED => bail!("the backend failed while getting ready"),
                _ => {}
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs `back` on a second thread (pinned to the backend CPU) and `front` on this one;
/// also returns the involuntary context switches both threads suffered meanwhile.
///
/// `back` must call `gate.open()` once it is ready; if it returns before that, the gate
/// fails and `front`'s `gate.wait()` returns an error instead of hanging.
pub fn two_threads<FR, BR>(
    set: &Settings,
    back: impl FnOnce(&Gate) -> Result<BR> + Send,
    front: impl FnOnce(&Gate) -> Result<FR>,
) -> Result<(FR, BR, u64)>
where
    BR: Send,
{
    let gate = Gate::default();
    let back_core = set.back_core();
    std::thread::scope(|s| {
        let gate_ref = &gate;
        let handle = std::thread::Builder::new()
            .name("ringbench-back".into())
            .spawn_scoped(s, move || {
                if let Some(c) = back_core {
                    if let Err(e) = sys::pin_to(c) {
                        gate_ref.fail();
                        return (Err(e), 0);
                    }
                }
                let sw0 = sys::involuntary_switches();
                let r = back(gate_ref);
                gate_ref.fail();
                (r, sys::involuntary_switches().saturating_sub(sw0))
            })
            .context("cannot spawn the backend thread")?;
        let sw0 = sys::involuntary_switches();
        let f = front(&gate);
        let front_sw = sys::involuntary_switches().saturating_sub(sw0);
        let (b, back_sw) = match handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the backend thread panicked"),
        };
        match (f, b) {
            (Ok(f), Ok(b)) => Ok((f, b, front_sw + back_sw)),
            (Err(fe), Err(be)) => Err(be.context(format!("backend failed (frontend: {fe:#})"))),
            (Err(e), Ok(_)) => Err(e.context("frontend failed")),
            (Ok(_), Err(e)) => Err(e.context("backend failed")),
        }
    })
}
