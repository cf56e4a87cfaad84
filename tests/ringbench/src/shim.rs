//! The hypervisor-shim cases, all between two processes:
//!
//! - `shim-evtchn` / `shim-evtchn-poll`: event-channel send → wake round
//!   trips through `xen-shim`. This process is Dom0 (`xen_shim_dom0::Evtchn`: bind,
//!   `notify`, `pending`, `unmask`, like `/dev/xen/evtchn`); the child is a
//!   guest domain (`guest::Hypervisor`: `SCHEDOP_poll`, which sets Xen's
//!   2-level pending bits in its `shared_info`, then `EVTCHNOP_send`).
//!   `-poll` busy-polls for `--spin-us` before sleeping in `epoll_wait`; the
//!   shim then spins on the channel's shared doorbell word and the sender
//!   skips the eventfd write while the receiver polls (see
//!   `xen_shim_proto::evtchn::ports`), so that mode involves no system call at all.
//! - `eventfd` / `eventfd-poll`: the reference, a bare eventfd ping-pong
//!   between the same two kinds of processes (blocking `read(2)`; or
//!   non-blocking reads for `--spin-us`, then a sleeping `poll(2)`).
//! - `grant-map`: Dom0 maps one grant of the guest read-write with
//!   `dom0::Gntdev::map_grant_ref` and unmaps it; `p50_ns`/`p99_ns` are the
//!   cost of one map + unmap (no daemon round trip once the domain's memory
//!   is mapped, which the untimed warm-up does).
//!
//! The daemon (`xen-shimd`) runs in a thread of this process on private
//! paths under the temp directory and `/dev/shm`, removed at the end. Each
//! case creates a domain, starts this binary again as its runtime
//! (`__shim-guest`), and destroys the domain afterwards (the daemon kills the
//! runtime).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::errno::Errno;
use xen_abi::event_channel::{evtchn_alloc_unbound, evtchn_port_t, evtchn_send};
use xen_abi::grant_table::grant_ref_t;
use xen_abi::xen::DOMID_SELF;
use xen_shim_dom0::{Control, Evtchn, Gntdev};
use xen_shim_guest::Hypervisor;
use xen_shim_proto::protocol::DomainConfig;
use xen_shimd::DaemonConfig;

use crate::stats::{latency_summary, Sample};
use crate::{sys, Case, Impl, Settings};

/// RAM of the benchmark's guest domains.
const GUEST_MEMORY_MIB: u64 = 4;
/// The grant reference the guest runtime offers for `grant-map` (the first
/// one after the reserved entries).
const BENCH_GREF: grant_ref_t = 8;
/// How long to wait for the daemon and the guest runtime to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of the hidden `__shim-guest` subcommand (the guest runtime of
/// the shim cases; the attach token comes in `XEN_SHIM_TOKEN`).
#[derive(Debug, Clone, clap::Args)]
pub struct ShimGuestArgs {
    /// The daemon's control socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The domain to attach as.
    #[arg(long)]
    pub domid: u16,
    /// Busy-poll budget before sleeping, in microseconds (0: sleep at once).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// CPU to pin to.
    #[arg(long)]
    pub core: Option<usize>,
}

/// Arguments of the hidden `__eventfd-peer` subcommand (the other process of
/// the eventfd reference).
#[derive(Debug, Clone, clap::Args)]
pub struct EventfdPeerArgs {
    /// Inherited eventfd the parent writes.
    #[arg(long)]
    pub ping_fd: i32,
    /// Inherited eventfd this process writes.
    #[arg(long)]
    pub pong_fd: i32,
    /// Busy-poll budget before sleeping, in microseconds (0: blocking reads).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// CPU to pin to.
    #[arg(long)]
    pub core: Option<usize>,
}

/// The in-process daemon shared by all shim cases of one run.
#[derive(Debug)]
struct Daemon {
    dir: PathBuf,
    mem_dir: PathBuf,
    socket: PathBuf,
}

static DAEMON: OnceLock<Mutex<Option<Daemon>>> = OnceLock::new();

fn daemon_socket() -> Result<PathBuf> {
    let cell = DAEMON.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().map_err(|_| anyhow!("daemon lock poisoned"))?;
    if let Some(d) = guard.as_ref() {
        return Ok(d.socket.clone());
    }
    let name = format!("ringbench-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("xen-shim-{name}"));
    let mem_dir = PathBuf::from("/dev/shm").join(format!("xen-shim-{name}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let socket = dir.join("control.sock");
    let cfg = DaemonConfig {
        socket: socket.clone(),
        state_dir: dir.join("state"),
        mem_dir: mem_dir.clone(),
        ..DaemonConfig::default()
    };
    // `daemon::run` serves until SIGTERM (which would end this whole
    // process): the thread lives as long as ringbench does.
    std::thread::Builder::new()
        .name("xen-shimd".into())
        .spawn(move || {
            if let Err(e) = xen_shimd::run(cfg) {
                eprintln!("ringbench: the embedded xen-shimd stopped: {e:#}");
            }
        })
        .context("cannot start the embedded xen-shimd thread")?;
    let t0 = Instant::now();
    while Control::connect(&socket).is_err() {
        ensure!(
            t0.elapsed() < START_TIMEOUT,
            "the embedded xen-shimd did not listen on {} within {START_TIMEOUT:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    *guard = Some(Daemon {
        dir,
        mem_dir,
        socket: socket.clone(),
    });
    Ok(socket)
}

/// Removes the embedded daemon's directories (call once at the end; domains
/// are destroyed by then).
pub fn cleanup() {
    if let Some(cell) = DAEMON.get() {
        if let Ok(mut g) = cell.lock() {
            if let Some(d) = g.take() {
                let _ = std::fs::remove_dir_all(&d.dir);
                let _ = std::fs::remove_dir_all(&d.mem_dir);
            }
        }
    }
}

/// Involuntary context switches of process `pid` (its main thread), from
/// `/proc/<pid>/status`; 0 if unknown.
fn involuntary_switches_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Kills and reaps a child on early return.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Destroys a domain on drop (the daemon then kills its runtime).
struct DomainGuard<'a> {
    control: &'a Control,
    domid: u16,
}

impl Drop for DomainGuard<'_> {
    fn drop(&mut self) {
        let _ = self.control.destroy_domain(self.domid);
    }
}

/// Runs every repetition of a shim case.
pub fn run_case(case: &Case, set: &Settings) -> Result<Vec<Sample>> {
    match case.imp {
        Impl::Eventfd | Impl::EventfdPoll => eventfd_case(case, set),
        Impl::ShimEvtchn | Impl::ShimEvtchnPoll | Impl::GrantMap => shim_case(case, set),
        other => bail!("{} is not a shim case", other.name()),
    }
}

fn spin_of(case: &Case, set: &Settings) -> Duration {
    match case.imp {
        Impl::EventfdPoll | Impl::ShimEvtchnPoll => set.spin,
        _ => Duration::ZERO,
    }
}

/// Measures round trips of `one` until the repetition's time is used up.
fn measure(set: &Settings, mut one: impl FnMut() -> Result<()>) -> Result<(Vec<u64>, f64)> {
    // Warm-up, untimed: page faults, first wake-ups.
    for _ in 0..16 {
        one()?;
    }
    let cap = set.max_rtts.clamp(1024, 1 << 22);
    let mut rtts: Vec<u64> = Vec::with_capacity(cap.min(1 << 16));
    let start = Instant::now();
    let mut sum = Duration::ZERO;
    while start.elapsed() < set.duration && rtts.len() < cap {
        let t0 = Instant::now();
        one()?;
        let dt = t0.elapsed();
        sum += dt;
        rtts.push(u64::try_from(dt.as_nanos()).unwrap_or(u64::MAX));
    }
    Ok((rtts, sum.as_secs_f64()))
}

fn sample_of(mut rtts: Vec<u64>, secs: f64, notifications_per_rtt: u64, preempted: u64) -> Sample {
    let msgs = rtts.len() as u64;
    let latency = latency_summary(&mut rtts);
    Sample {
        msgs,
        secs,
        notifications: msgs * notifications_per_rtt,
        notify_requested: msgs * notifications_per_rtt,
        preempted,
        latency: Some(latency),
    }
}

// ---------------------------------------------------------------------------
// The eventfd reference.

fn new_eventfd(nonblocking: bool) -> Result<OwnedFd> {
    // Inheritable (no EFD_CLOEXEC): the child gets it.
    let flags = if nonblocking { libc::EFD_NONBLOCK } else { 0 };
    // SAFETY: plain syscall without pointer arguments.
    let raw = unsafe { libc::eventfd(0, flags) };
    if raw < 0 {
        return Err(Errno::last()).context("eventfd failed");
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn efd_write(fd: RawFd) -> Result<()> {
    let one = 1u64.to_ne_bytes();
    loop {
        // SAFETY: writes 8 bytes from a live local buffer.
        let r = unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
        if r == 8 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e).context("eventfd write failed"),
        }
    }
}

/// Waits until the eventfd is signalled and resets it. `spin` zero: one
/// blocking `read(2)`. Otherwise non-blocking `read(2)`s for `spin`, then a
/// sleeping `poll(2)` and a read. (Of the bare-eventfd busy-polls tried on
/// the development machine, failing reads were the fastest: about 1.0 us per
/// round trip, against 1.5 us spinning on zero-timeout `poll(2)` and 2.2 us on
/// zero-timeout `epoll_wait`.)
fn efd_wait(fd: RawFd, spin: Duration) -> Result<()> {
    let mut buf = [0u8; 8];
    let mut read = || {
        // SAFETY: reads 8 bytes into a live local buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
        if r == 8 {
            Ok(true)
        } else {
            match Errno::last() {
                Errno::EAGAIN | Errno::EINTR => Ok(false),
                e => Err(e).context("eventfd read failed"),
            }
        }
    };
    if spin.is_zero() {
        // Blocking descriptor: one read sleeps until the peer writes.
        while !read()? {}
        return Ok(());
    }
    let t0 = Instant::now();
    loop {
        if read()? {
            return Ok(());
        }
        if t0.elapsed() >= spin {
            break;
        }
        std::hint::spin_loop();
    }
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 && Errno::last() != Errno::EINTR {
            return Err(Errno::last()).context("poll on an eventfd failed");
        }
        if read()? {
            return Ok(());
        }
    }
}

fn eventfd_case(case: &Case, set: &Settings) -> Result<Vec<Sample>> {
    let spin = spin_of(case, set);
    let nonblocking = !spin.is_zero();
    let ping = new_eventfd(nonblocking)?;
    let pong = new_eventfd(nonblocking)?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__eventfd-peer")
        .arg(format!("--ping-fd={}", ping.as_raw_fd()))
        .arg(format!("--pong-fd={}", pong.as_raw_fd()))
        .arg(format!("--spin-us={}", spin.as_micros()))
        .stdin(Stdio::null());
    if let Some(core) = set.back_core() {
        cmd.arg(format!("--core={core}"));
    }
    let child = cmd
        .spawn()
        .context("cannot start the eventfd peer (/proc/self/exe __eventfd-peer)")?;
    let pid = child.id();
    let _guard = ChildGuard(Some(child));
    let mut samples = Vec::with_capacity(set.runs);
    for _ in 0..set.runs {
        let (sw0, csw0) = (sys::involuntary_switches(), involuntary_switches_of(pid));
        let (rtts, secs) = measure(set, || {
            efd_write(ping.as_raw_fd())?;
            efd_wait(pong.as_raw_fd(), spin)
        })?;
        let pre = sys::involuntary_switches().saturating_sub(sw0)
            + involuntary_switches_of(pid).saturating_sub(csw0);
        samples.push(sample_of(rtts, secs, 2, pre));
    }
    Ok(samples)
}

/// Body of `__eventfd-peer`: answers every ping with a pong until killed.
pub fn eventfd_peer_main(args: &EventfdPeerArgs) -> Result<()> {
    if let Some(core) = args.core {
        sys::pin_to(core).context("cannot pin the eventfd peer")?;
    }
    // SAFETY: descriptors the parent left inheritable for this child; nothing
    // else here owns them.
    let ping = unsafe { OwnedFd::from_raw_fd(args.ping_fd) };
    // SAFETY: as above.
    let pong = unsafe { OwnedFd::from_raw_fd(args.pong_fd) };
    let spin = Duration::from_micros(args.spin_us);
    loop {
        efd_wait(ping.as_raw_fd(), spin)?;
        efd_write(pong.as_raw_fd())?;
    }
}

// ---------------------------------------------------------------------------
// The shim cases.

fn shim_case(case: &Case, set: &Settings) -> Result<Vec<Sample>> {
    let socket = daemon_socket()?;
    let control = Control::connect(&socket).context("cannot connect to the embedded daemon")?;
    let name = format!("ringbench-{}-{}", std::process::id(), case.imp.name());
    let created = control
        .create_domain(&DomainConfig::pv(&name, GUEST_MEMORY_MIB))
        .context("cannot create the benchmark's guest domain")?;
    let _domain = DomainGuard {
        control: &control,
        domid: created.domid,
    };
    let spin = spin_of(case, set);
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__shim-guest")
        .arg("--socket")
        .arg(&socket)
        .arg(format!("--domid={}", created.domid))
        .arg(format!("--spin-us={}", spin.as_micros()))
        .env(xen_shim_proto::ENV_TOKEN, &created.token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(core) = set.back_core() {
        cmd.arg(format!("--core={core}"));
    }
    let mut child = cmd
        .spawn()
        .context("cannot start the guest runtime (/proc/self/exe __shim-guest)")?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let _guard = ChildGuard(Some(child));
    let mut line = String::new();
    if let Some(out) = stdout {
        BufReader::new(out)
            .read_line(&mut line)
            .context("cannot read the guest runtime's offer")?;
    }
    let port: evtchn_port_t = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("the guest runtime did not offer a port (got {line:?})"))?;

    let mut samples = Vec::with_capacity(set.runs);
    if case.imp == Impl::GrantMap {
        let gntdev = Gntdev::open(&socket).context("cannot open the shim's gntdev")?;
        let domid = created.domid;
        for _ in 0..set.runs {
            let (sw0, csw0) = (sys::involuntary_switches(), involuntary_switches_of(pid));
            let (rtts, secs) = measure(set, || {
                let m = gntdev
                    .map_grant_ref(domid, BENCH_GREF, true)
                    .context("map_grant_ref failed")?;
                m.unmap().context("unmap failed")?;
                Ok(())
            })?;
            let pre = sys::involuntary_switches().saturating_sub(sw0)
                + involuntary_switches_of(pid).saturating_sub(csw0);
            samples.push(sample_of(rtts, secs, 0, pre));
        }
        return Ok(samples);
    }

    let evtchn = Evtchn::open(&socket).context("cannot open the shim's evtchn")?;
    evtchn.set_poll_budget(spin);
    let local = evtchn
        .bind_interdomain(created.domid, port)
        .context("cannot bind the guest's port")?;
    // A fresh binding is left pending (as Xen does): consume that.
    for p in evtchn
        .pending(Some(Duration::from_millis(50)))
        .context("evtchn pending failed")?
    {
        evtchn.unmask(p).context("unmask failed")?;
    }
    for _ in 0..set.runs {
        let (sw0, csw0) = (sys::involuntary_switches(), involuntary_switches_of(pid));
        let (rtts, secs) = measure(set, || {
            evtchn.notify(local).context("notify failed")?;
            loop {
                let fired = evtchn.pending(None).context("evtchn pending failed")?;
                let mut mine = false;
                for p in fired {
                    evtchn.unmask(p).context("unmask failed")?;
                    mine |= p == local;
                }
                if mine {
                    return Ok(());
                }
            }
        })?;
        let pre = sys::involuntary_switches().saturating_sub(sw0)
            + involuntary_switches_of(pid).saturating_sub(csw0);
        samples.push(sample_of(rtts, secs, 2, pre));
    }
    Ok(samples)
}

/// Body of `__shim-guest`: attaches as the domain, offers a port (unbound
/// for Dom0) and grant [`BENCH_GREF`] of page 0 (read-write, to Dom0) on one
/// stdout line, then answers every event on the port until the domain is
/// destroyed.
pub fn shim_guest_main(args: &ShimGuestArgs) -> Result<()> {
    if let Some(core) = args.core {
        sys::pin_to(core).context("cannot pin the guest runtime")?;
    }
    let token = std::env::var(xen_shim_proto::ENV_TOKEN)
        .with_context(|| format!("{} is not set", xen_shim_proto::ENV_TOKEN))?;
    let hv = Hypervisor::attach(&args.socket, args.domid, &token)
        .context("cannot attach to the shim as the benchmark's domain")?;
    hv.set_poll_budget(Duration::from_micros(args.spin_us));
    hv.grant_foreign_access(BENCH_GREF, 0, 0, false)
        .context("cannot grant page 0 to Dom0")?;
    let mut op = evtchn_alloc_unbound {
        dom: DOMID_SELF,
        remote_dom: 0,
        port: 0,
    };
    hv.evtchnop_alloc_unbound(&mut op)
        .context("cannot allocate a port for Dom0")?;
    let port = op.port;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "port={port} gref={BENCH_GREF}")?;
        out.flush()?;
    }
    loop {
        hv.schedop_poll(&[port], None)
            .context("SCHEDOP_poll failed")?;
        hv.clear_pending(port);
        hv.evtchnop_send(&evtchn_send { port })
            .context("EVTCHNOP_send failed")?;
    }
}
