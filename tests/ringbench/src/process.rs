//! The `processes` placement: the backend is a second process (this binary re-executed
//! with the hidden `__backend` subcommand) sharing a memfd with the ring and a control
//! page, and two eventfds, all inherited as file descriptors.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xen_ring::{BackRing, FrontRing, SharedRing};

use crate::msg::{Blk, NetTx, Shape};
use crate::stats::Sample;
use crate::sys::{self, Event, Region, PAGE_SIZE};
use crate::xen::{self, Geometry};
use crate::{Batch, Case, Impl, Mode, Placement, Settings};

/// How long the parent waits for the child to attach.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of the hidden `__backend` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Inherited memfd holding the ring, then one control page.
    #[arg(long)]
    pub memfd: i32,
    /// Inherited eventfd the frontend writes.
    #[arg(long)]
    pub kick_fd: i32,
    /// Inherited eventfd the backend writes.
    #[arg(long)]
    pub wake_fd: i32,
    /// Bytes of the ring (the control page follows).
    #[arg(long)]
    pub ring_bytes: usize,
    /// Request size: 112 or 12.
    #[arg(long)]
    pub msg_bytes: usize,
    /// Stream or pingpong.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Single or chunk.
    #[arg(long, value_enum)]
    pub batch: Batch,
    /// Busy-poll budget before blocking, in microseconds.
    #[arg(long)]
    pub spin_us: u64,
    /// Arm the event index before busy-polling.
    #[arg(long)]
    pub arm_before_spin: bool,
    /// CPU to pin the backend to.
    #[arg(long)]
    pub core: Option<usize>,
}

/// The control page after the ring: start handshake, abort flag and the backend's
/// counters. All fields are atomics; the zero fill of a fresh memfd is a valid value.
#[repr(C)]
#[derive(Debug)]
struct Control {
    /// Set by the backend once attached.
    ready: AtomicU32,
    /// Set by whichever side fails, so the other stops waiting.
    abort: AtomicBool,
    /// Requests the backend answered.
    msgs: AtomicU64,
    /// eventfd writes by the backend.
    notifications: AtomicU64,
    /// `push_responses_and_check_notify() == true` in the backend.
    notify_requested: AtomicU64,
    /// Involuntary context switches of the backend while serving.
    preempted: AtomicU64,
}

const _: () = assert!(size_of::<Control>() <= PAGE_SIZE);

/// The control page of `region`, which holds `ring_bytes` of ring before it.
fn control(region: &Region, ring_bytes: usize) -> Result<&Control> {
    ensure!(
        ring_bytes % PAGE_SIZE == 0 && ring_bytes + PAGE_SIZE <= region.len(),
        "no control page after {ring_bytes} bytes of ring in a {}-byte mapping",
        region.len()
    );
    // SAFETY: the page at `ring_bytes` lies inside the mapping (checked above) and is
    // page aligned, so aligned for `Control` (atomics, align <= 8); it lives as long as
    // `region`, which the returned reference borrows. The memory is zero-filled or
    // written only through these atomics by both processes, and every bit pattern
    // of the fields is valid; shared mutation goes through `UnsafeCell`s inside the
    // atomics, so a shared reference is sound.
    Ok(unsafe { &*region.as_ptr().add(ring_bytes).cast::<Control>() })
}

/// Kills and reaps the child if the parent returns early.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One repetition of a xen-ring case with the backend in a child process.
pub fn run_processes<S: Shape>(case: &Case, geo: &Geometry, set: &Settings) -> Result<Sample> {
    let total = geo.bytes + PAGE_SIZE;
    let fd = sys::memfd(total)?;
    let region = Region::shared(fd.as_fd(), total)?;
    let ctl = control(&region, geo.bytes)?;
    let mut kick = Event::new(true)?;
    let wake = Event::new(true)?;
    // SAFETY: `region` maps `total >= geo.bytes` bytes read/write and outlives the
    // ring (dropped after it at the end of this function); in this process only this
    // FrontRing touches the ring bytes, the child holds the one BackRing.
    let mem = unsafe { SharedRing::new(region.as_ptr(), geo.bytes) }?;
    let mut front = FrontRing::<S::Req, S::Rsp>::init(mem)?;

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__backend")
        .arg(format!("--memfd={}", std::os::fd::AsRawFd::as_raw_fd(&fd)))
        .arg(format!("--kick-fd={}", kick.raw()))
        .arg(format!("--wake-fd={}", wake.raw()))
        .arg(format!("--ring-bytes={}", geo.bytes))
        .arg(format!("--msg-bytes={}", case.msg_bytes))
        .arg(format!("--mode={}", case.mode.name()))
        .arg(format!("--batch={}", case.batch.name()))
        .arg(format!("--spin-us={}", set.spin.as_micros()))
        .stdin(Stdio::null());
    if let Some(core) = set.back_core() {
        cmd.arg(format!("--core={core}"));
    }
    if set.arm_before_spin {
        cmd.arg("--arm-before-spin");
    }
    let child = cmd
        .spawn()
        .context("cannot start the backend process (/proc/self/exe __backend)")?;
    let mut guard = ChildGuard(Some(child));

    let t0 = Instant::now();
    while ctl.ready.load(Ordering::Acquire) == 0 {
        if let Some(child) = guard.0.as_mut() {
            if let Some(status) = child
                .try_wait()
                .context("cannot poll the backend process")?
            {
                bail!("the backend process exited before attaching: {status}");
            }
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!("the backend process did not attach within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_micros(100));
    }

    let sw0 = sys::involuntary_switches();
    let mut sample = xen::front_side::<S>(
        &mut front,
        &mut kick,
        &wake,
        case,
        geo.capacity,
        set,
        &ctl.abort,
    )?;
    let front_sw = sys::involuntary_switches().saturating_sub(sw0);
    let mut child = guard.0.take().context("backend process handle vanished")?;
    let status = child
        .wait()
        .context("cannot wait for the backend process")?;
    ensure!(status.success(), "the backend process failed: {status}");
    let back_msgs = ctl.msgs.load(Ordering::Acquire);
    ensure!(
        back_msgs == sample.msgs,
        "backend answered {back_msgs} requests, frontend sent {}",
        sample.msgs
    );
    sample.notifications += ctl.notifications.load(Ordering::Acquire);
    sample.notify_requested += ctl.notify_requested.load(Ordering::Acquire);
    sample.preempted = front_sw + ctl.preempted.load(Ordering::Acquire);
    Ok(sample)
}

/// Body of the `__backend` subcommand.
pub fn backend_main(args: &BackendArgs) -> Result<()> {
    if let Some(core) = args.core {
        sys::pin_to(core).context("cannot pin the backend process")?;
    }
    // SAFETY: the parent passed these descriptor numbers of fds it left inheritable
    // (no CLOEXEC) for this child; nothing else in this process owns or closes them.
    let memfd = unsafe { OwnedFd::from_raw_fd(args.memfd) };
    // SAFETY: as above, an inherited eventfd owned by nothing else here.
    let kick = unsafe { Event::from_inherited(args.kick_fd) };
    // SAFETY: as above.
    let mut wake = unsafe { Event::from_inherited(args.wake_fd) };
    let total = args
        .ring_bytes
        .checked_add(PAGE_SIZE)
        .context("ring size overflows")?;
    let region = Region::shared(memfd.as_fd(), total)?;
    let ctl = control(&region, args.ring_bytes)?;
    let case = Case {
        imp: Impl::XenRing,
        placement: Placement::Processes,
        mode: args.mode,
        msg_bytes: args.msg_bytes,
        capacity_requested: 0,
        batch: args.batch,
    };
    let set = Settings {
        duration: Duration::ZERO,
        runs: 1,
        spin: Duration::from_micros(args.spin_us),
        arm_before_spin: args.arm_before_spin,
        cores: None,
        max_rtts: 0,
    };
    let r = match args.msg_bytes {
        112 => serve::<Blk>(&region, args.ring_bytes, ctl, &kick, &mut wake, &case, &set),
        12 => serve::<NetTx>(&region, args.ring_bytes, ctl, &kick, &mut wake, &case, &set),
        n => Err(anyhow::anyhow!("no message shape of {n} bytes")),
    };
    if r.is_err() {
        ctl.abort.store(true, Ordering::Release);
        let _ = wake.notify();
    }
    r
}

fn serve<S: Shape>(
    region: &Region,
    ring_bytes: usize,
    ctl: &Control,
    kick: &Event,
    wake: &mut Event,
    case: &Case,
    set: &Settings,
) -> Result<()> {
    // SAFETY: `region` maps `ring_bytes` + a page read/write and outlives the ring
    // (borrowed for this whole function); in this process only this BackRing touches
    // the ring bytes, the parent holds the one FrontRing.
    let mem = unsafe { SharedRing::new(region.as_ptr(), ring_bytes) }?;
    let mut back = BackRing::<S::Req, S::Rsp>::attach(mem)?;
    ctl.ready.store(1, Ordering::Release);
    let sw0 = sys::involuntary_switches();
    let c = xen::back_side::<S>(&mut back, kick, wake, case, set, &ctl.abort)?;
    ctl.preempted.store(
        sys::involuntary_switches().saturating_sub(sw0),
        Ordering::Release,
    );
    ctl.msgs.store(c.msgs, Ordering::Release);
    ctl.notifications.store(c.notifications, Ordering::Release);
    ctl.notify_requested
        .store(c.notify_requested, Ordering::Release);
    Ok(())
}
