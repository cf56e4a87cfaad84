//! A connected device: one worker thread per queue, each serving its ring.
//!
//! A worker owns its ring mapping, its event-channel handle and its
//! persistent-grant cache. Per round it copies out at most one ring's worth
//! of requests (each slot read once by the ring), parses and serves each one
//! synchronously (zero copy: `preadv`/`pwritev` between the image and the
//! mapped guest pages), pushes the responses, notifies the frontend only if
//! `push_responses_and_check_notify` says so, and sleeps on the event channel
//! only after `final_check_for_requests` found nothing.
//!
//! An asynchronous engine (RBD: [`DiskImage::is_async`]) is served as a
//! continuous pipeline instead ([`Worker::pipeline`]): each request is
//! submitted as soon as it is taken and answered when the engine completes
//! it, so the frontend's whole queue stays at the disk. The worker sleeps
//! on its event channel with `req_event` armed, and a completion arriving
//! while it sleeps kicks it awake ([`Waker`]). Only a fence (flush,
//! discard, barrier), a stop, or a persistent-grant cache that must evict
//! waits for every transfer in flight.
//!
//! A bad request gets an error response. A producer overflow, too many
//! invalid requests in a row, or a broken event channel fail the device: the
//! worker records a [`DeviceFailure`], the other queues stop, and the
//! owner ([`Device::wait_failure`]) moves the device to Closing. Nothing a
//! frontend writes makes a worker panic.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::blkif::*;
use xen_abi::xen::domid_t;
pub use xen_backend_common::DeviceError;
use xen_backend_common::{stop_queues, FailOnce, MappedBackRing, QueueThread};
use xen_diag::{ErrorChain, LogLimiter};
use xen_ring::{PollWindow, RingError};
use xen_shim_dom0::GrantMapping;
use xen_shim_dom0::{Evtchn, Gntdev};
use zerocopy::IntoBytes;

use crate::io::{DiskImage, ImageError, IoPool, IoVec};
use crate::metrics::{Counter, Metrics, MetricsSnapshot};
use crate::persistent::{Cached, PersistentCache};
use crate::request::{
    slot_id_op, validate_segments, Direction, Limits, Request, RequestError, Segment, Segments,
    SECTOR_SIZE,
};

/// A ring slot as copied out of the ring.
pub type Slot = [u8; BLKIF_SRING_ENTRY_SIZE];

/// A response as pushed to the ring.
pub type RspSlot = [u8; core::mem::size_of::<blkif_response>()];

/// Longest sleep on the event channel before the worker looks at its stop
/// flag again (a safety net: stopping also kicks the worker; it was 500 ms:
/// two wake-ups a second from every idle disk).
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Why a device failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The frontend published a request producer index no correct frontend
    /// could have written (`RING_REQUEST_PROD_OVERFLOW`).
    RingOverflow {
        /// The producer index read.
        prod: u32,
        /// The backend's consumer index.
        cons: u32,
    },
    /// Too many invalid requests in a row.
    TooManyInvalidRequests(u32),
    /// The event channel broke (the message says how).
    EventChannel(String),
    /// Another ring error (the message says which).
    Ring(String),
    /// The disk itself broke (a corrupt image, an NBD server that broke
    /// the protocol or went away).
    Disk(String),
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::RingOverflow { prod, cons } => write!(
                f,
                "the frontend's request producer {prod} overflows the ring (consumer at {cons})"
            ),
            FailureReason::TooManyInvalidRequests(n) => {
                write!(f, "the frontend sent {n} invalid requests in a row")
            }
            FailureReason::EventChannel(e) => write!(f, "the event channel failed: {e}"),
            FailureReason::Ring(e) => write!(f, "the ring failed: {e}"),
            FailureReason::Disk(e) => write!(f, "the disk failed: {e}"),
        }
    }
}

/// A failed device: which queue and why.
pub type DeviceFailure = xen_backend_common::DeviceFailure<FailureReason>;

/// What a device is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    /// All queues serve requests.
    Running,
    /// A queue failed; all queues stopped serving.
    Failed(DeviceFailure),
    /// Disconnected.
    Stopped,
}

/// The rings of one queue as the frontend advertised them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueParams {
    /// Ring page references (`ring-ref`, or `ring-ref0..N`).
    pub ring_refs: Vec<grant_ref_t>,
    /// The frontend's unbound port (`event-channel`).
    pub event_channel: evtchn_port_t,
}

/// Per-connection settings the workers use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerConfig {
    pub(crate) limits: Limits,
    /// Persistent grants negotiated (both sides offered them).
    pub(crate) persistent: bool,
    /// Cache size of persistent grants per queue.
    pub(crate) max_persistent_grants: usize,
    /// Invalid requests in a row that fail the device.
    pub(crate) max_consecutive_invalid: u32,
    /// I/O threads of the device (0: transfers run in the queue workers).
    pub(crate) io_threads: usize,
    /// Larger transfers go to the I/O threads; these and smaller ones run
    /// in the queue worker.
    pub(crate) inline_max_bytes: u64,
    /// Busy-poll of an idle worker on its ring before it sleeps.
    pub(crate) poll_budget: Duration,
    /// Adjacent reads or writes of a batch merge into one transfer up to
    /// this many bytes (0: no merging).
    pub(crate) merge_max_bytes: u64,
}

/// Called once, from the failing queue's worker thread, when a device
/// fails (with the frontend's domid): e.g. to wake `backendd`'s event loop.
/// It must not block for long and must not call back into the device.
pub type FailureHook = Arc<dyn Fn(domid_t, &DeviceFailure) + Send + Sync>;

#[derive(Default)]
struct Shared {
    domid: domid_t,
    stop: AtomicBool,
    metrics: Metrics,
    failure: FailOnce<DeviceFailure>,
    hook: Option<FailureHook>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("domid", &self.domid)
            .field("stop", &self.stop)
            .field("failure", &self.failure)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn fail(&self, f: DeviceFailure) {
        let first = self.failure.set(f.clone());
        self.stop.store(true, Ordering::SeqCst);
        if first {
            if let Some(h) = &self.hook {
                h(self.domid, &f);
            }
        }
    }
}

/// A connected device.
#[derive(Debug)]
pub struct Device {
    domid: domid_t,
    queues: Vec<QueueThread>,
    shared: Arc<Shared>,
    stopped: bool,
}

impl Device {
    /// Maps every queue's ring, binds its event channel and starts its
    /// worker; on any failure, what was set up is torn down.
    pub(crate) fn start(
        gntdev: &Arc<Gntdev>,
        socket: &std::path::Path,
        domid: domid_t,
        queues: &[QueueParams],
        image: &Arc<dyn DiskImage>,
        cfg: WorkerConfig,
        hook: Option<FailureHook>,
    ) -> Result<Device, DeviceError> {
        let shared = Arc::new(Shared {
            domid,
            hook,
            ..Shared::default()
        });
        let pool = match cfg.io_threads {
            0 => None,
            n => Some(Arc::new(
                IoPool::new(&format!("blkback-{domid}-io"), n)
                    .map_err(|e| DeviceError::IoThreads(Box::new(e)))?,
            )),
        };
        let mut dev = Device {
            domid,
            queues: Vec::with_capacity(queues.len()),
            shared: Arc::clone(&shared),
            stopped: false,
        };
        for (i, q) in queues.iter().enumerate() {
            // On error `dev` drops here and stops the queues already started.
            let h = start_queue(
                gntdev,
                socket,
                domid,
                i as u32,
                q,
                image,
                cfg,
                &shared,
                pool.clone(),
            )?;
            dev.queues.push(h);
        }
        Ok(dev)
    }

    /// The frontend domain.
    pub fn domid(&self) -> domid_t {
        self.domid
    }

    /// Number of queues.
    pub fn nr_queues(&self) -> usize {
        self.queues.len()
    }

    /// What the device is doing.
    pub fn status(&self) -> DeviceStatus {
        if let Some(f) = self.failure() {
            return DeviceStatus::Failed(f);
        }
        if self.stopped {
            DeviceStatus::Stopped
        } else {
            DeviceStatus::Running
        }
    }

    /// The failure, if a queue failed.
    pub fn failure(&self) -> Option<DeviceFailure> {
        self.shared.failure.get()
    }

    /// Waits up to `timeout` for a failure.
    pub fn wait_failure(&self, timeout: Duration) -> Option<DeviceFailure> {
        self.shared.failure.wait(timeout)
    }

    /// Has `f` called at the first failure (at once if there is one), for
    /// an owner that sleeps on its own events.
    pub fn set_failure_notifier(&self, f: xen_backend_common::FailureNotifier) {
        self.shared.failure.set_notifier(f);
    }

    /// The counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Stops the workers, unmaps the rings and every grant, unbinds the
    /// event channels; returns the final counters.
    pub fn disconnect(mut self) -> MetricsSnapshot {
        self.stop();
        self.shared.metrics.snapshot()
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stop.store(true, Ordering::SeqCst);
        stop_queues(&mut self.queues, "blkback", self.domid);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn start_queue(
    gntdev: &Arc<Gntdev>,
    socket: &std::path::Path,
    domid: domid_t,
    index: u32,
    q: &QueueParams,
    image: &Arc<dyn DiskImage>,
    cfg: WorkerConfig,
    shared: &Arc<Shared>,
    pool: Option<Arc<IoPool>>,
) -> Result<QueueThread, DeviceError> {
    let map = gntdev
        .map_grant_refs(domid, &q.ring_refs, true)
        .map_err(|source| DeviceError::MapRing {
            domid,
            grefs: q.ring_refs.clone(),
            source,
        })?;
    let ring = MappedBackRing::attach(map).map_err(DeviceError::Ring)?;
    let ev = DeviceError::evtchn;
    let evtchn = Arc::new(Evtchn::open(socket).map_err(ev("opening a handle"))?);
    let port = evtchn
        .bind_interdomain(domid, q.event_channel)
        .map_err(ev("binding the frontend's port"))?;
    let kick = evtchn.bind_ipi().map_err(ev("binding the stop kick"))?;
    let worker = Worker {
        index,
        domid,
        ring,
        evtchn: Arc::clone(&evtchn),
        port,
        kick,
        gntdev: Arc::clone(gntdev),
        image: Arc::clone(image),
        cfg,
        shared: Arc::clone(shared),
        pool,
        persistent: PersistentCache::new(if cfg.persistent {
            cfg.max_persistent_grants
        } else {
            0
        }),
        waker: Arc::new(Waker {
            sleeping: AtomicBool::new(false),
            evtchn: Arc::clone(&evtchn),
            kick,
        }),
        evict_wanted: false,
        invalid_in_a_row: 0,
        broken: false,
        batching: false,
        unpublished: false,
        poll: PollWindow::new(u64::try_from(cfg.poll_budget.as_nanos()).unwrap_or(u64::MAX)),
        log: LogLimiter::new(10, Duration::from_secs(5)),
    };
    QueueThread::spawn(
        format!("blkback-{domid}-q{index}"),
        evtchn,
        kick,
        move || worker.run(),
    )
    .map_err(DeviceError::Spawn)
}

struct Worker {
    index: u32,
    domid: domid_t,
    ring: MappedBackRing<Slot, RspSlot>,
    evtchn: Arc<Evtchn>,
    port: evtchn_port_t,
    kick: evtchn_port_t,
    gntdev: Arc<Gntdev>,
    image: Arc<dyn DiskImage>,
    cfg: WorkerConfig,
    shared: Arc<Shared>,
    pool: Option<Arc<IoPool>>,
    /// Persistent grants mapped by this queue (empty unless negotiated).
    persistent: PersistentCache<GrantMapping>,
    /// Wakes this worker when an asynchronous engine completes a transfer
    /// while it sleeps on its event channel.
    waker: Arc<Waker>,
    /// The persistent-grant cache was full of mappings in use: the
    /// pipeline waits for every transfer in flight before the next batch,
    /// so that older mappings can be evicted ([`Worker::pipeline`]).
    evict_wanted: bool,
    invalid_in_a_row: u32,
    /// The ring or event channel failed: answer nothing more, stop.
    broken: bool,
    /// Responses are pushed privately and published together by
    /// [`Worker::publish`] (a burst of completions of an asynchronous
    /// engine: one publication and at most one notification for all).
    batching: bool,
    /// Responses pushed while `batching` and not yet published.
    unpublished: bool,
    /// The adaptive ring poll of an idle worker.
    poll: PollWindow,
    log: LogLimiter,
}

/// Wakes a queue worker that sleeps on its event channel while an
/// asynchronous engine's transfers are in flight: the completion that
/// arrives first kicks the worker's own IPI port (one `eventfd` write), so
/// the worker waits for its frontend and its disk at once. Completions
/// arriving while the worker is awake only go to its channel.
struct Waker {
    /// The worker sleeps (or is about to) and wants a kick.
    sleeping: AtomicBool,
    evtchn: Arc<Evtchn>,
    kick: evtchn_port_t,
}

impl Waker {
    /// The worker is about to sleep: a completion sent after this kicks it.
    /// The caller looks at its completion channel once more afterwards
    /// (one sent before is there).
    fn arm(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        // Orders the store before the worker's next look at its channel
        // (pairs with the fence in `wake`).
        fence(Ordering::SeqCst);
    }

    /// The worker is awake again.
    fn disarm(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// A completion was sent to the worker's channel: kick the worker if
    /// it sleeps (once per sleep).
    fn wake(&self) {
        // Orders the channel's send before the load of `sleeping`: either
        // the worker's last look at its channel finds the completion, or
        // this sees it sleeping.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A failure here is the worker's own handle gone: it is
            // stopping, and its `IDLE_WAIT` bounds the sleep anyway.
            let _ = self.evtchn.notify(self.kick);
        }
    }
}

/// Why a request failed while being served (mapped to a response status).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("invalid request")]
    Invalid(#[from] RequestError),
    #[error("grant {gref} cannot be mapped")]
    Grant {
        gref: grant_ref_t,
        #[source]
        source: xen_shim_proto::GrantError,
    },
    #[error("disk I/O failed")]
    Io(#[from] ImageError),
    #[error("{0}")]
    Internal(&'static str),
}

impl ServeError {
    fn status(&self) -> i16 {
        match self {
            ServeError::Invalid(e) => e.status(),
            ServeError::Io(ImageError::DiscardUnsupported) => BLKIF_RSP_EOPNOTSUPP,
            _ => BLKIF_RSP_ERROR,
        }
    }
}

/// A data transfer ready to run: the buffers are mapped. One request, or
/// several adjacent ones of a batch merged ([`Transfer::merge`]).
struct Transfer {
    id: u64,
    operation: u8,
    /// The requests merged after the first, each answered with it.
    more: Vec<(u64, u8)>,
    dir: Direction,
    offset: u64,
    bytes: u64,
    iov: SendIov,
    /// Non-persistent mappings of these requests, unmapped when done.
    own: Vec<GrantMapping>,
}

/// The buffers of a [`Transfer`].
struct SendIov(Vec<IoVec>);

// SAFETY: the pointers lead into grant mappings that stay mapped until the
// transfer is done: its own mappings travel with it (`Transfer::own`), and
// persistent ones stay in the worker's cache, which evicts only mappings
// not used in the current round (a round starts only when no transfer is in
// flight: `Worker::process` drains each batch, `Worker::pipeline` starts one
// when its transfers have drained) and clears them only after every
// transfer it submitted has completed (`Worker::drain` before `teardown`).
// The memory is only reached by `preadv`/`pwritev`, never through Rust
// references, so moving the pointers to another thread is sound.
unsafe impl Send for SendIov {}

/// The outcome of a transfer.
struct Done {
    id: u64,
    operation: u8,
    more: Vec<(u64, u8)>,
    dir: Direction,
    bytes: u64,
    result: Result<(), ImageError>,
}

impl Transfer {
    /// Appends `next` if it continues this transfer on the disk in the
    /// same direction and the sum stays within `max_bytes` (as a block
    /// layer merges adjacent requests: one `preadv`/`pwritev`, one hand-off
    /// to an I/O thread and one hold of the file's lock for all of them);
    /// gives `next` back otherwise.
    fn merge(&mut self, next: Transfer, max_bytes: u64) -> Result<(), Transfer> {
        let contiguous = self.offset.checked_add(self.bytes) == Some(next.offset);
        let fits = self
            .bytes
            .checked_add(next.bytes)
            .is_some_and(|b| b <= max_bytes);
        if self.dir != next.dir || !contiguous || !fits {
            return Err(next);
        }
        self.bytes += next.bytes;
        self.more.push((next.id, next.operation));
        self.more.extend(next.more);
        self.iov.0.extend(next.iov.0);
        self.own.extend(next.own);
        Ok(())
    }

    fn run(self, image: &Arc<dyn DiskImage>) -> Done {
        let result = match self.dir {
            // SAFETY: see `SendIov`: every buffer lies inside a writable
            // grant mapping that stays mapped until this call returns.
            Direction::Read => unsafe { image.readv(&self.iov.0, self.offset) },
            // SAFETY: as above (mappings readable).
            Direction::Write => unsafe { image.writev(&self.iov.0, self.offset) },
        };
        self.finish(result)
    }

    /// Starts the transfer on an engine that completes it on its own
    /// threads ([`DiskImage::submit`]); its [`Done`] goes to `tx`, and
    /// `waker` wakes the worker if it sleeps.
    fn submit(self, image: &Arc<dyn DiskImage>, tx: Sender<Done>, waker: Arc<Waker>) {
        // The iovec array's heap buffer does not move with `self`.
        let iov: *const [IoVec] = &self.iov.0[..];
        let (write, offset) = (self.dir == Direction::Write, self.offset);
        let done = Box::new(move |r| {
            let _ = tx.send(self.finish(r));
            waker.wake();
        });
        // SAFETY: see `SendIov`: the buffers (and `iov`, owned by `self`)
        // stay mapped until `done` runs, which drops them only after the
        // engine completed the transfer; the worker waits for its `Done`
        // before evicting or tearing down persistent mappings.
        unsafe { image.submit(write, &*iov, offset, done) }
    }

    /// The outcome, releasing the transfer's own mappings.
    fn finish(self, result: Result<(), ImageError>) -> Done {
        drop(self.own);
        Done {
            id: self.id,
            operation: self.operation,
            more: self.more,
            dir: self.dir,
            bytes: self.bytes,
            result,
        }
    }
}

/// What to do with one slot of a batch.
enum Step {
    /// Answered already (an invalid request, or one that failed to map).
    Answer(RspSlot),
    /// A flush, discard or barrier: runs after everything before it.
    Fence {
        id: u64,
        operation: u8,
        req: Request,
    },
    /// A read or write, mapped.
    Data(Transfer),
}

impl Worker {
    fn run(mut self) {
        tracing::debug!(
            domid = self.domid,
            queue = self.index,
            "blkback queue started"
        );
        let nr = self.ring.nr_ents() as usize;
        let mut batch: Vec<Slot> = vec![[0u8; BLKIF_SRING_ENTRY_SIZE]; nr];
        let (done_tx, done_rx) = channel::<Done>();
        let pipelined = self.image.is_async();
        // Transfers in flight; across batches only for a pipelined engine,
        // as is the transfer being built (`Worker::pipeline`).
        let mut outstanding = 0usize;
        let mut pending: Option<Transfer> = None;
        while !self.shared.stop.load(Ordering::SeqCst) && !self.broken {
            // At most one ring's worth per round (bounded).
            let n = match self.ring.take_requests(&mut batch) {
                Ok(n) => n,
                Err(e) => {
                    self.ring_failed(e);
                    break;
                }
            };
            if n == nr {
                // A whole ring unanswered: the frontend ran out of slots.
                self.shared.metrics.add(Counter::OutOfRequests, 1);
            }
            if pipelined {
                self.pipeline(
                    &batch[..n],
                    &mut pending,
                    &mut outstanding,
                    &done_tx,
                    &done_rx,
                );
            } else {
                // Answers each request as soon as it is served (published
                // at once, so the frontend can reuse the slot while the
                // rest of the batch is served).
                self.process(&batch[..n], &done_tx, &done_rx);
            }
            if self.broken || self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            if n > 0 {
                continue;
            }
            if outstanding > 0 {
                // Nothing new on the ring, transfers in flight: sleep
                // until one completes or the frontend posts more.
                if let Err(e) = self.wait_in_flight(&mut outstanding, &done_rx) {
                    self.fail(FailureReason::EventChannel(e.to_string()));
                    break;
                }
                continue;
            }
            // Idle: poll the ring for a while without arming `req_event`
            // (the frontend sends no notification meanwhile), then the
            // final check that arms it, then sleep.
            match self.poll_ring() {
                Ok(true) => {
                    self.poll.hit();
                    continue;
                }
                Ok(false) => self.poll.miss(),
                Err(e) => {
                    self.ring_failed(e);
                    break;
                }
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            match self.ring.final_check_for_requests() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    self.ring_failed(e);
                    break;
                }
            }
            let slept = Instant::now();
            match self.wait() {
                Ok(true) => self
                    .poll
                    .woke(u64::try_from(slept.elapsed().as_nanos()).unwrap_or(u64::MAX)),
                Ok(false) => {}
                Err(e) => {
                    self.fail(FailureReason::EventChannel(e.to_string()));
                    break;
                }
            }
        }
        // Every request taken is answered (a later backend of this ring
        // sees it so), and no persistent mapping goes while a transfer
        // using it is in flight.
        if let Some(p) = pending.take() {
            self.start(p, &mut outstanding, &done_tx);
        }
        self.drain(&mut outstanding, &done_rx);
        self.teardown();
    }

    /// Busy-polls the ring's `req_prod` (no syscall, `req_event` not armed)
    /// for the current poll window (adaptive, at most the poll budget);
    /// `true` as soon as requests are there.
    fn poll_ring(&mut self) -> Result<bool, RingError> {
        let budget = Duration::from_nanos(self.poll.budget_ns());
        if budget.is_zero() {
            return Ok(false);
        }
        let start = Instant::now();
        let mut round: u32 = 0;
        loop {
            if self.ring.unconsumed_requests()? > 0 {
                self.shared.metrics.add(Counter::PolledWakeups, 1);
                return Ok(true);
            }
            round = round.wrapping_add(1);
            if round % 64 == 0
                && (start.elapsed() >= budget || self.shared.stop.load(Ordering::Relaxed))
            {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    /// Pushes one response and publishes it (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`),
    /// notifying the frontend if it armed `rsp_event` for it; while
    /// [`Worker::batching`], only pushes it. After a ring
    /// or event-channel failure the worker is `broken` and answers nothing
    /// more.
    fn respond(&mut self, rsp: &RspSlot) {
        if self.broken {
            return;
        }
        if let Err(e) = self.ring.push_response(rsp) {
            self.ring_failed(e);
            self.broken = true;
            return;
        }
        if self.batching {
            self.unpublished = true;
            return;
        }
        self.publish_now();
    }

    /// Publishes the responses pushed while batching (see
    /// [`Worker::batching`]).
    fn publish(&mut self) {
        self.batching = false;
        if std::mem::take(&mut self.unpublished) && !self.broken {
            self.publish_now();
        }
    }

    /// Publishes every pushed response and notifies the frontend if it
    /// armed `rsp_event` for one of them.
    fn publish_now(&mut self) {
        // Publish even when stopping: a response pushed privately has
        // overwritten its request slot, so a later backend attaching to
        // this ring must see it as answered.
        if self.ring.push_responses_and_check_notify() {
            self.shared.metrics.add(Counter::Notifications, 1);
            if let Err(e) = self.evtchn.notify(self.port) {
                self.fail(FailureReason::EventChannel(e.to_string()));
                self.broken = true;
            }
        }
    }

    /// Serves a batch in ring order: small transfers in this thread, larger
    /// ones on the I/O pool (several at once); a fence waits for every
    /// transfer before it. Each request is answered as soon as it is done.
    /// Returns only when every transfer it submitted has completed (the
    /// buffers of pool jobs may be persistent grants, which `teardown`
    /// unmaps).
    fn process(&mut self, slots: &[Slot], done_tx: &Sender<Done>, done_rx: &Receiver<Done>) {
        // Every transfer of the earlier rounds has completed: their
        // persistent mappings may be evicted again.
        self.persistent.next_round();
        let mut outstanding = 0usize;
        let mut pending = None;
        self.serve(slots, &mut pending, &mut outstanding, done_tx, done_rx);
        if let Some(p) = pending {
            self.start(p, &mut outstanding, done_tx);
        }
        self.drain(&mut outstanding, done_rx);
    }

    /// Serves a batch of an asynchronous engine (a network disk, where
    /// latencies vary) without waiting for its transfers, then answers
    /// every transfer already complete (one publication). Transfers stay in
    /// flight across batches (`outstanding` counts them), so the disk keeps
    /// the frontend's whole queue rather than a batch at a time; the ring
    /// bounds them (a request is in flight until answered). A fence waits
    /// for all of them (in [`Self::serve`]), and so does a persistent-grant
    /// cache that found every mapping in use ([`Worker::evict_wanted`]):
    /// a new round, whose mappings may be evicted, starts only when no
    /// transfer is in flight.
    ///
    /// The batch's last transfer stays in `pending` while the frontend
    /// keeps posting: a frontend publishes each request as it builds it, so
    /// the next batch may continue it on the disk (the 128 KiB pieces of a
    /// 1 MiB write merge into one librbd request). It starts as soon as it
    /// is full (`merge_max_bytes`), a request does not continue it, or a
    /// batch is empty (`slots` empty: nothing more on the ring).
    fn pipeline(
        &mut self,
        slots: &[Slot],
        pending: &mut Option<Transfer>,
        outstanding: &mut usize,
        done_tx: &Sender<Done>,
        done_rx: &Receiver<Done>,
    ) {
        if self.evict_wanted {
            // `pending`'s mappings are in use too: in flight before the
            // round ends.
            if let Some(p) = pending.take() {
                self.start(p, outstanding, done_tx);
            }
            self.drain(outstanding, done_rx);
        }
        if *outstanding == 0 && pending.is_none() {
            self.persistent.next_round();
            self.evict_wanted = false;
        }
        self.serve(slots, pending, outstanding, done_tx, done_rx);
        let full = pending
            .as_ref()
            .is_some_and(|p| p.bytes >= self.cfg.merge_max_bytes);
        if slots.is_empty() || full {
            if let Some(p) = pending.take() {
                self.start(p, outstanding, done_tx);
            }
        }
        self.complete_ready(outstanding, done_rx);
    }

    /// Sleeps on the event channel (`req_event` armed) until the frontend
    /// posts requests, a transfer completes (its [`Waker`] kicks), or the
    /// owner kicks; answers the completions found.
    fn wait_in_flight(
        &mut self,
        outstanding: &mut usize,
        rx: &Receiver<Done>,
    ) -> Result<(), xen_shim_proto::EvtchnError> {
        self.waker.arm();
        if let Ok(d) = rx.try_recv() {
            self.waker.disarm();
            *outstanding -= 1;
            self.batching = true;
            self.complete(d);
            self.complete_ready(outstanding, rx);
            return Ok(());
        }
        match self.ring.final_check_for_requests() {
            Ok(false) => {}
            Ok(true) => {
                self.waker.disarm();
                return Ok(());
            }
            Err(e) => {
                self.waker.disarm();
                self.ring_failed(e);
                return Ok(());
            }
        }
        let r = self.wait();
        self.waker.disarm();
        r.map(|_| ())
    }

    /// Serves `slots` in ring order (see [`Self::process`]), leaving the
    /// transfers it started in flight (`outstanding` counts them) and the
    /// last one in `pending`, not started: the next requests may continue
    /// it (the caller starts it).
    fn serve(
        &mut self,
        slots: &[Slot],
        pending: &mut Option<Transfer>,
        outstanding: &mut usize,
        done_tx: &Sender<Done>,
        done_rx: &Receiver<Done>,
    ) {
        for slot in slots {
            match self.prepare(slot) {
                Step::Answer(r) => self.respond(&r),
                Step::Data(t) => {
                    *pending = match pending.take() {
                        None => Some(t),
                        Some(mut p) => match p.merge(t, self.cfg.merge_max_bytes) {
                            Ok(()) => {
                                self.shared.metrics.add(Counter::Merged, 1);
                                Some(p)
                            }
                            Err(t) => {
                                self.start(p, outstanding, done_tx);
                                Some(t)
                            }
                        },
                    };
                }
                Step::Fence { id, operation, req } => {
                    if let Some(p) = pending.take() {
                        self.start(p, outstanding, done_tx);
                    }
                    self.drain(outstanding, done_rx);
                    let r = self.execute_fence(req);
                    let r = self.answer(id, operation, r);
                    self.respond(&r);
                }
            }
            // Answer the pool's finished transfers without waiting.
            while *outstanding > 0 {
                let Ok(d) = done_rx.try_recv() else {
                    break;
                };
                *outstanding -= 1;
                self.complete(d);
            }
        }
    }

    /// Runs a transfer: in this thread if it is small (or there is no
    /// pool), else on the I/O pool (`outstanding` counts it).
    fn start(&mut self, t: Transfer, outstanding: &mut usize, done_tx: &Sender<Done>) {
        if self.image.is_async() {
            // The engine completes it on its own threads, many in flight.
            t.submit(&self.image, done_tx.clone(), Arc::clone(&self.waker));
            *outstanding += 1;
            return;
        }
        match self.pool.clone() {
            Some(pool) if t.bytes > self.cfg.inline_max_bytes => {
                let (id, op) = (t.id, t.operation);
                let more = t.more.clone();
                let tx = done_tx.clone();
                let image = Arc::clone(&self.image);
                let job = Box::new(move || {
                    let _ = tx.send(t.run(&image));
                });
                match pool.submit(job) {
                    Ok(()) => *outstanding += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "blkback I/O pool refused a job");
                        for (id, op) in std::iter::once((id, op)).chain(more) {
                            let r =
                                self.answer(id, op, Err(ServeError::Internal("I/O pool stopped")));
                            self.respond(&r);
                        }
                    }
                }
            }
            _ => {
                let d = t.run(&self.image);
                self.complete(d);
            }
        }
    }

    /// Waits for a transfer to complete and answers it together with every
    /// other one already complete (an asynchronous engine completes them
    /// on its own threads, often several at once): their responses are
    /// published once, with at most one notification. `false` when the
    /// completions' channel is gone.
    fn complete_burst(&mut self, outstanding: &mut usize, rx: &Receiver<Done>) -> bool {
        let Ok(d) = rx.recv() else {
            return false;
        };
        *outstanding -= 1;
        self.batching = true;
        self.complete(d);
        self.complete_ready(outstanding, rx);
        true
    }

    /// Answers every transfer already complete, without waiting, and
    /// publishes their responses (with those pushed while batching) once.
    fn complete_ready(&mut self, outstanding: &mut usize, rx: &Receiver<Done>) {
        self.batching = true;
        while *outstanding > 0 {
            let Ok(d) = rx.try_recv() else {
                break;
            };
            *outstanding -= 1;
            self.complete(d);
        }
        self.publish();
    }

    /// Waits for every submitted transfer, answering each.
    fn drain(&mut self, outstanding: &mut usize, rx: &Receiver<Done>) {
        if self.image.is_async() {
            while *outstanding > 0 && self.complete_burst(outstanding, rx) {}
            if *outstanding == 0 {
                return;
            }
        }
        while *outstanding > 0 {
            let Ok(d) = rx.recv() else {
                // Cannot happen while this worker holds a sender; the jobs
                // are gone, so nothing refers to the buffers any more.
                tracing::error!("blkback I/O pool lost completions");
                *outstanding = 0;
                return;
            };
            *outstanding -= 1;
            self.complete(d);
        }
    }

    /// Answers the requests of a finished transfer (all failed if it did).
    fn complete(&mut self, d: Done) {
        if d.result.is_ok() {
            let (n, b) = match d.dir {
                Direction::Read => (Counter::Reads, Counter::BytesRead),
                Direction::Write => (Counter::Writes, Counter::BytesWritten),
            };
            self.shared.metrics.add(n, 1 + d.more.len() as u64);
            self.shared.metrics.add(b, d.bytes);
        }
        let failed = d.result.is_err();
        let r = self.answer(d.id, d.operation, d.result.map_err(ServeError::Io));
        self.respond(&r);
        for (id, op) in d.more {
            let result = if failed {
                Err(ServeError::Internal(
                    "the transfer this request was merged into failed",
                ))
            } else {
                Ok(())
            };
            let r = self.answer(id, op, result);
            self.respond(&r);
        }
    }

    /// Sleeps until the frontend or the owner kicks (or `IDLE_WAIT`);
    /// `true` if the frontend's port fired.
    fn wait(&mut self) -> Result<bool, xen_shim_proto::EvtchnError> {
        let fired = self.evtchn.pending(Some(IDLE_WAIT))?;
        if !fired.is_empty() {
            self.shared.metrics.add(Counter::Wakeups, 1);
        }
        let ours = fired.contains(&self.port);
        for p in fired {
            self.evtchn.unmask(p)?;
        }
        Ok(ours)
    }

    fn ring_failed(&mut self, e: RingError) {
        let reason = match e {
            RingError::ProducerOverflow { prod, cons, .. } => {
                FailureReason::RingOverflow { prod, cons }
            }
            other => FailureReason::Ring(other.to_string()),
        };
        self.fail(reason);
    }

    fn fail(&mut self, reason: FailureReason) {
        tracing::warn!(
            domid = self.domid,
            queue = self.index,
            ?reason,
            "blkback device failed; its queues stop"
        );
        self.shared.fail(DeviceFailure {
            queue: self.index,
            reason,
        });
    }

    fn teardown(&mut self) {
        let n = self.persistent.clear() as u64;
        self.shared.metrics.sub(Counter::PersistentGrants, n);
        let _ = self.evtchn.unbind(self.port);
        let _ = self.evtchn.unbind(self.kick);
        tracing::debug!(
            domid = self.domid,
            queue = self.index,
            "blkback queue stopped"
        );
    }

    /// Parses one copied slot and, for a read or write, maps its buffers.
    fn prepare(&mut self, slot: &Slot) -> Step {
        self.shared.metrics.add(Counter::Requests, 1);
        let (id, raw_op) = slot_id_op(slot);
        let req = match Request::parse(slot, &self.cfg.limits) {
            Ok(req) => {
                self.invalid_in_a_row = 0;
                req
            }
            Err(e) => {
                self.invalid_in_a_row = self.invalid_in_a_row.saturating_add(1);
                if self.invalid_in_a_row >= self.cfg.max_consecutive_invalid {
                    self.fail(FailureReason::TooManyInvalidRequests(self.invalid_in_a_row));
                }
                return Step::Answer(self.answer(id, raw_op, Err(ServeError::Invalid(e))));
            }
        };
        match req {
            Request::Data {
                operation,
                dir,
                barrier: false,
                sector,
                segments,
                ..
            } => {
                // Indirect responses carry the inner operation, as Linux
                // blkback answers them (and blkfront checks).
                let operation = match (operation, dir) {
                    (BLKIF_OP_INDIRECT, Direction::Read) => BLKIF_OP_READ,
                    (BLKIF_OP_INDIRECT, Direction::Write) => BLKIF_OP_WRITE,
                    (op, _) => op,
                };
                match self.map_request(id, operation, dir, sector, segments) {
                    Ok(t) => Step::Data(t),
                    Err(e) => Step::Answer(self.answer(id, operation, Err(e))),
                }
            }
            req => Step::Fence {
                id,
                operation: raw_op,
                req,
            },
        }
    }

    /// Builds a response and accounts for it; errors are logged, rate-limited.
    fn answer(&mut self, id: u64, operation: u8, result: Result<(), ServeError>) -> RspSlot {
        let status = match result {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(e) => {
                if let ServeError::Io(io) = &e {
                    // Once: after the first, the device is stopping.
                    if io.is_fatal() && !self.shared.stop.load(Ordering::SeqCst) {
                        self.fail(FailureReason::Disk(ErrorChain(io).to_string()));
                    }
                }
                let s = e.status();
                if s == BLKIF_RSP_EOPNOTSUPP {
                    self.shared.metrics.add(Counter::Unsupported, 1);
                } else {
                    self.shared.metrics.add(Counter::Errors, 1);
                }
                if let Some(suppressed) = self.log.check() {
                    tracing::warn!(
                        domid = self.domid,
                        queue = self.index,
                        id,
                        operation,
                        suppressed,
                        error = %e,
                        cause = ?std::error::Error::source(&e).map(|c| c.to_string()),
                        "blkback request refused"
                    );
                }
                s
            }
        };
        let rsp = blkif_response {
            id,
            operation,
            status,
            ..Default::default()
        };
        let mut out = [0u8; core::mem::size_of::<blkif_response>()];
        out.copy_from_slice(rsp.as_bytes());
        out
    }

    /// Runs a flush, discard or barrier write (every earlier request of the
    /// batch has completed).
    fn execute_fence(&mut self, req: Request) -> Result<(), ServeError> {
        match req {
            Request::Flush { .. } => {
                self.image.flush()?;
                self.shared.metrics.add(Counter::Flushes, 1);
                Ok(())
            }
            Request::Discard {
                sector, nr_sectors, ..
            } => {
                // In range (checked by the parser), so these cannot overflow.
                let off = sector.saturating_mul(SECTOR_SIZE);
                let len = nr_sectors.saturating_mul(SECTOR_SIZE);
                self.image.discard(off, len)?;
                self.shared.metrics.add(Counter::Discards, 1);
                Ok(())
            }
            Request::Data {
                id,
                operation,
                dir,
                sector,
                segments,
                ..
            } => {
                let t = self.map_request(id, operation, dir, sector, segments)?;
                let d = t.run(&self.image);
                d.result?;
                self.shared.metrics.add(Counter::Writes, 1);
                self.shared.metrics.add(Counter::BytesWritten, d.bytes);
                self.image.flush()?;
                Ok(())
            }
        }
    }

    /// Resolves the segments (reading indirect pages) and maps the buffers.
    fn map_request(
        &mut self,
        id: u64,
        operation: u8,
        dir: Direction,
        sector: u64,
        segments: Segments,
    ) -> Result<Transfer, ServeError> {
        let segs = match segments {
            Segments::Direct(s) => s,
            Segments::Indirect { pages, count } => {
                let raw = self.read_indirect(&pages, count)?;
                validate_segments(&raw, sector, self.cfg.limits.disk_sectors)?.0
            }
        };
        let (iov, own, bytes) = self.map_segments(dir, &segs)?;
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(ServeError::Invalid(
            RequestError::OutOfRange {
                start: sector,
                count: bytes / SECTOR_SIZE,
                disk: self.cfg.limits.disk_sectors,
            },
        ))?;
        Ok(Transfer {
            id,
            operation,
            more: Vec::new(),
            dir,
            offset,
            bytes,
            iov: SendIov(iov),
            own,
        })
    }

    /// Copies `count` segments out of the indirect pages (each page read
    /// once, through a read-only map, into a local copy).
    fn read_indirect(
        &mut self,
        pages: &[grant_ref_t],
        count: u16,
    ) -> Result<Vec<blkif_request_segment>, ServeError> {
        let mut out = Vec::with_capacity(usize::from(count));
        let mut left = usize::from(count);
        let mut buf = vec![0u8; xen_abi::io::ring::XEN_PAGE_SIZE];
        for &gref in pages {
            let n = left.min(BLKIF_SEGS_PER_INDIRECT_FRAME);
            let bytes = n * core::mem::size_of::<blkif_request_segment>();
            let dst = buf.get_mut(..bytes).ok_or(ServeError::Invalid(
                RequestError::BadIndirectSegmentCount {
                    count,
                    max: self.cfg.limits.max_indirect_segments,
                },
            ))?;
            if let Some(m) = self.persistent.get(gref) {
                m.read(0, dst)
                    .map_err(|_| ServeError::Internal("indirect page read out of bounds"))?;
            } else {
                let m = self.map_page(gref, false)?;
                m.read(0, dst)
                    .map_err(|_| ServeError::Internal("indirect page read out of bounds"))?;
            }
            for c in dst.chunks_exact(core::mem::size_of::<blkif_request_segment>()) {
                let s = <blkif_request_segment as zerocopy::FromBytes>::read_from_bytes(c)
                    .map_err(|_| ServeError::Internal("indirect segment of the wrong size"))?;
                out.push(s);
            }
            left -= n;
        }
        Ok(out)
    }

    fn map_page(&self, gref: grant_ref_t, writable: bool) -> Result<GrantMapping, ServeError> {
        map_page(&self.gntdev, self.domid, &self.shared, gref, writable)
    }

    /// Maps the segments' pages (persistent ones from the cache, inserted
    /// there on first use, evicting mappings unused in this round when it
    /// is full) and returns the buffers, the request's own mappings and the
    /// byte count. One cache lookup per segment.
    fn map_segments(
        &mut self,
        dir: Direction,
        segs: &[Segment],
    ) -> Result<(Vec<IoVec>, Vec<GrantMapping>, u64), ServeError> {
        let before = self.persistent.len();
        let r = self.map_segments_counted(dir, segs);
        let after = self.persistent.len();
        if after >= before {
            self.shared
                .metrics
                .add(Counter::PersistentGrants, (after - before) as u64);
        } else {
            self.shared
                .metrics
                .sub(Counter::PersistentGrants, (before - after) as u64);
        }
        r
    }

    /// [`Worker::map_segments`] but for the persistent-grant gauge.
    fn map_segments_counted(
        &mut self,
        dir: Direction,
        segs: &[Segment],
    ) -> Result<(Vec<IoVec>, Vec<GrantMapping>, u64), ServeError> {
        let writable = dir == Direction::Read;
        let mut own: Vec<GrantMapping> = Vec::new();
        let mut iov = Vec::with_capacity(segs.len());
        let mut total: u64 = 0;
        for s in segs {
            let mut cached = None;
            if self.cfg.persistent {
                let (gntdev, domid, shared) = (&self.gntdev, self.domid, &self.shared);
                // Persistent grants are granted read-write by the frontend
                // whatever the direction (blkif.h).
                match self
                    .persistent
                    .get_or_map(s.gref, || map_page(gntdev, domid, shared, s.gref, true))?
                {
                    Cached::Hit(m) | Cached::Inserted(m) => cached = Some(m),
                    Cached::Full => self.evict_wanted = true,
                }
            }
            let m = match cached {
                Some(m) => m,
                None => {
                    own.push(map_page(
                        &self.gntdev,
                        self.domid,
                        &self.shared,
                        s.gref,
                        writable,
                    )?);
                    own.last()
                        .ok_or(ServeError::Internal("segment mapping missing"))?
                }
            };
            let base = if writable {
                m.as_mut_ptr().ok_or(ServeError::Grant {
                    gref: s.gref,
                    source: xen_shim_proto::GrantError::Invalid("page mapped read-only"),
                })?
            } else {
                m.as_ptr().cast_mut()
            };
            // `offset + len <= 4096 == m.len()` by validation; checked again.
            let end = (s.offset as usize).checked_add(s.len as usize);
            if end.is_none_or(|e| e > m.len()) {
                return Err(ServeError::Invalid(RequestError::BadSegment {
                    index: iov.len(),
                    first: 0,
                    last: 0,
                }));
            }
            // SAFETY: `offset < m.len()` (checked above), so the pointer stays
            // inside the mapping.
            let ptr = unsafe { base.add(s.offset as usize) };
            iov.push(IoVec {
                ptr,
                len: s.len as usize,
            });
            total += u64::from(s.len);
        }
        Ok((iov, own, total))
    }
}

/// Maps one grant of the frontend (counted).
fn map_page(
    gntdev: &Gntdev,
    domid: domid_t,
    shared: &Shared,
    gref: grant_ref_t,
    writable: bool,
) -> Result<GrantMapping, ServeError> {
    let m = gntdev
        .map_grant_ref(domid, gref, writable)
        .map_err(|source| ServeError::Grant { gref, source })?;
    shared.metrics.add(Counter::GrantMaps, 1);
    Ok(m)
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("domid", &self.domid)
            .field("queue", &self.index)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer of `pages` 4 KiB buffers at byte `offset` (the pointers
    /// are never dereferenced: only `merge` runs).
    fn transfer(id: u64, dir: Direction, offset: u64, pages: usize) -> Transfer {
        Transfer {
            id,
            operation: if dir == Direction::Read {
                BLKIF_OP_READ
            } else {
                BLKIF_OP_WRITE
            },
            more: Vec::new(),
            dir,
            offset,
            bytes: pages as u64 * 4096,
            iov: SendIov(vec![
                IoVec {
                    ptr: std::ptr::null_mut(),
                    len: 4096
                };
                pages
            ]),
            own: Vec::new(),
        }
    }

    #[test]
    fn test_merge_adjacent_writes_become_one_transfer_answering_each() {
        // Arrange
        let mut t = transfer(1, Direction::Write, 0, 32);
        // Act
        let a = t.merge(transfer(2, Direction::Write, 32 * 4096, 32), 1 << 20);
        let b = t.merge(transfer(3, Direction::Write, 64 * 4096, 1), 1 << 20);
        // Assert
        assert!(a.is_ok() && b.is_ok());
        assert_eq!((t.offset, t.bytes, t.iov.0.len()), (0, 65 * 4096, 65));
        assert_eq!(t.more, [(2, BLKIF_OP_WRITE), (3, BLKIF_OP_WRITE)]);
    }

    #[test]
    fn test_merge_refuses_gaps_overlaps_other_direction_and_oversize() {
        let mut t = transfer(1, Direction::Read, 8192, 2);
        for (next, why) in [
            (transfer(2, Direction::Read, 8192 + 3 * 4096, 1), "gap"),
            (transfer(3, Direction::Read, 8192, 1), "overlap"),
            (transfer(4, Direction::Read, 0, 1), "before"),
            (
                transfer(5, Direction::Write, 8192 + 2 * 4096, 1),
                "direction",
            ),
            (
                transfer(6, Direction::Read, 8192 + 2 * 4096, 255),
                "too big",
            ),
        ] {
            let back = t.merge(next, 1 << 20).expect_err(why);
            assert_ne!(back.id, 1, "{why}: the refused transfer comes back");
        }
        assert_eq!((t.bytes, t.iov.0.len(), t.more.len()), (8192, 2, 0));
        // Exactly the limit merges; nothing merges with a limit of 0.
        assert!(t
            .merge(transfer(7, Direction::Read, 8192 + 2 * 4096, 254), 1 << 20)
            .is_ok());
        let mut u = transfer(8, Direction::Read, 0, 1);
        assert!(u.merge(transfer(9, Direction::Read, 4096, 1), 0).is_err());
    }

    #[test]
    fn test_merge_offset_overflow_is_refused() {
        let mut t = transfer(1, Direction::Write, u64::MAX - 4095, 1);
        assert!(t
            .merge(transfer(2, Direction::Write, 0, 1), 1 << 20)
            .is_err());
    }
}
