//! A connected vif: one worker thread per queue, each serving its tx ring
//! (guest to TAP) and rx ring (TAP to guest) on its own TAP queue.
//!
//! Per round a worker:
//! - copies out every published tx request (each slot once), parses whole
//!   packets ([`crate::request::parse_tx`]; a packet whose last slot is
//!   not yet published waits for it), maps each data slot's grant
//!   read-only and `writev`s the virtio-net header plus the guest pages to
//!   the TAP (zero copy), and answers every slot;
//! - while the frontend has posted enough rx requests for the largest
//!   packet (`XEN_NETIF_NR_SLOTS_MIN` + 1 with scatter-gather, else 1),
//!   reads a packet from the TAP and copies it into the posted pages, one
//!   response per slot in the request's slot (GSO as an extra-info slot
//!   after the first);
//! - publishes the responses, notifying only when the event indices ask.
//!
//! With nothing to do it polls the tx ring's producer index (no system
//! call; a blocked thread on another core takes 30-50 us to wake) and,
//! every few rounds, the TAP, for an adaptive window of up to [`SPIN`]
//! (`xen_ring::PollWindow`: zero after a poll that found nothing, as when
//! the frontend shares our CPU; growing again after short sleeps), then
//! sets the event indices
//! (`final_check_for_requests` on tx; rx `req_event` at the number of
//! slots it needs) and sleeps in `poll(2)` on the event channels and, when
//! it can receive, the TAP.
//!
//! Carrier (Linux netback's `xenvif_carrier_on`/`_off` and guest rx stall
//! detection): [`Device::start`] turns the TAP's carrier on, stopping the
//! device turns it off. A queue whose TAP has had a packet waiting while
//! the frontend posted fewer rx requests than that packet may need, and
//! that has delivered nothing for the stall timeout, is stalled: while any
//! queue is stalled the carrier is off (the bridge stops forwarding to a
//! guest that does not receive); it comes back when every stalled queue
//! has enough requests again.
//!
//! Bad packets (short, crossing a page, a bad grant, an unknown GSO type)
//! are dropped with `NETIF_RSP_ERROR`. A producer overflow, a packet of
//! more than `XEN_NETIF_NR_SLOTS_MIN` slots, or a broken event channel
//! fail the vif: the worker records a [`DeviceFailure`] and every queue
//! stops. Nothing a frontend writes makes a worker panic.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::*;
use xen_abi::xen::domid_t;
pub use xen_backend_common::DeviceError;
use xen_backend_common::{stop_queues, FailOnce, MappedBackRing, QueueThread};
use xen_diag::{warn_limited, LogLimiter};
use xen_ring::{PollWindow, RingError};
use xen_shim_dom0::GrantMapping;
use xen_shim_dom0::{Evtchn, Gntdev};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::request::{
    parse_tx, SlotKind, TxFatal, TxPacket, TxParse, TxSlot, MAX_EXTRAS, MAX_SLOTS,
};
use crate::tap::TapQueue;
use crate::{Dom0Handles, FrontendParams};

/// An rx ring slot.
pub type RxSlot = [u8; NETIF_RX_SRING_ENTRY_SIZE];
/// A tx response.
pub type TxRsp = [u8; core::mem::size_of::<netif_tx_response>()];

/// Longest a worker polls its rings and TAP before sleeping (the window
/// adapts between zero and this, [`PollWindow`]).
pub const SPIN: Duration = Duration::from_micros(50);
/// Small packets answered between publications of the responses (a big
/// one is published at once).
const PUSH_EVERY: usize = 16;
/// The tx slots served per round are the ring's size divided by this.
const TX_BUDGET_DIV: u32 = 4;
/// A guest-triggerable message is logged at most once per this.
const LOG_WINDOW: Duration = Duration::from_secs(5);
/// Longest sleep before the worker looks at its stop flag and at a
/// possible rx stall again, while the TAP is not polled (the guest has no
/// rx room).
const IDLE_WAIT_MS: i32 = 500;
/// The same while the TAP is polled with the ports (a packet or an event
/// wakes the worker; stopping kicks it): a safety net. It was
/// [`IDLE_WAIT_MS`]: two wake-ups a second from every idle queue.
const IDLE_WAIT_RX_MS: i32 = 5000;
/// Largest packet read from the TAP (64 KiB GSO train plus headers).
const RX_BUF: usize = 65536 + 128;

/// Why a vif failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// A producer index no correct frontend could have written.
    RingOverflow(&'static str),
    /// A packet the protocol forbids.
    Fatal(TxFatal),
    /// The event channel broke.
    EventChannel(String),
    /// The TAP failed.
    Tap(String),
    /// Another ring error.
    Ring(String),
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::RingOverflow(r) => {
                write!(f, "the frontend's {r} request producer overflows the ring")
            }
            FailureReason::Fatal(e) => write!(f, "{e}"),
            FailureReason::EventChannel(e) => write!(f, "the event channel failed: {e}"),
            FailureReason::Tap(e) => write!(f, "the TAP failed: {e}"),
            FailureReason::Ring(e) => write!(f, "the ring failed: {e}"),
        }
    }
}

/// A failed vif: which queue and why.
pub type DeviceFailure = xen_backend_common::DeviceFailure<FailureReason>;

/// The rings of one queue as the frontend advertised them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueParams {
    /// `tx-ring-ref`.
    pub tx_ring_ref: grant_ref_t,
    /// `rx-ring-ref`.
    pub rx_ring_ref: grant_ref_t,
    /// `event-channel-tx` (or `event-channel`).
    pub evtchn_tx: evtchn_port_t,
    /// `event-channel-rx` (the same port without split channels).
    pub evtchn_rx: evtchn_port_t,
}

/// Counters of a vif (all queues).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Packets from the guest written to the TAP.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest packets dropped (invalid, bad grant, TAP refused).
    pub tx_dropped: u64,
    /// Packets from the TAP delivered to the guest.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// TAP packets dropped (too big for the frontend, bad grant).
    pub rx_dropped: u64,
    /// Notifications sent to the frontend.
    pub notifications: u64,
    /// Wake-ups from `poll(2)`.
    pub wakeups: u64,
}

#[derive(Debug, Default)]
struct Metrics {
    c: [AtomicU64; 8],
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    TxPackets,
    TxBytes,
    TxDropped,
    RxPackets,
    RxBytes,
    RxDropped,
    Notifications,
    Wakeups,
}

impl Metrics {
    fn add(&self, c: Counter, n: u64) {
        self.c[c as usize].fetch_add(n, Ordering::Relaxed);
    }
    fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: Counter| self.c[c as usize].load(Ordering::Relaxed);
        MetricsSnapshot {
            tx_packets: g(Counter::TxPackets),
            tx_bytes: g(Counter::TxBytes),
            tx_dropped: g(Counter::TxDropped),
            rx_packets: g(Counter::RxPackets),
            rx_bytes: g(Counter::RxBytes),
            rx_dropped: g(Counter::RxDropped),
            notifications: g(Counter::Notifications),
            wakeups: g(Counter::Wakeups),
        }
    }
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    metrics: Metrics,
    failure: FailOnce<DeviceFailure>,
    /// The carrier: a TAP queue file (the ioctl is device-wide) and the
    /// number of stalled queues, changed together under the lock.
    carrier: Mutex<Carrier>,
}

#[derive(Debug)]
struct Carrier {
    tap: Arc<TapQueue>,
    /// Whether the device is started (carrier allowed on).
    running: bool,
    stalled: u32,
    log: LogLimiter,
}

impl Carrier {
    fn apply(&mut self) {
        let on = self.running && self.stalled == 0;
        if let Err(e) = self.tap.set_carrier(on) {
            warn_limited!(self.log, error = %e, on, "cannot set the vif's carrier");
        }
    }
}

impl Shared {
    fn carrier(&self) -> std::sync::MutexGuard<'_, Carrier> {
        self.carrier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A queue stalled (`true`) or became ready again (`false`).
    fn queue_stalled(&self, domid: domid_t, queue: u32, stalled: bool) {
        let mut c = self.carrier();
        if stalled {
            c.stalled += 1;
            if c.stalled == 1 {
                tracing::info!(domid, queue, "guest rx stalled: carrier off");
                c.apply();
            }
        } else {
            c.stalled = c.stalled.saturating_sub(1);
            if c.stalled == 0 {
                tracing::info!(domid, queue, "guest rx ready: carrier on");
                c.apply();
            }
        }
    }

    fn fail(&self, f: DeviceFailure) {
        if self.failure.set(f.clone()) {
            tracing::warn!(failure = %f, "vif failed");
        }
        self.stop.store(true, Ordering::SeqCst);
        // A failed vif carries nothing (Linux: xenvif_carrier_off when the
        // frontend is found rogue).
        let mut c = self.carrier();
        c.running = false;
        c.apply();
    }
}

/// A connected vif.
#[derive(Debug)]
pub struct Device {
    domid: domid_t,
    queues: Vec<QueueThread>,
    shared: Arc<Shared>,
    stopped: bool,
}

/// What the frontend accepts on rx.
#[derive(Debug, Clone, Copy)]
struct RxFeatures {
    sg: bool,
    gso_tcpv4: bool,
    gso_tcpv6: bool,
    csum_ipv4: bool,
    csum_ipv6: bool,
}

impl Device {
    pub(crate) fn start(
        handles: &Dom0Handles,
        domid: domid_t,
        params: &FrontendParams,
        taps: Vec<Arc<TapQueue>>,
        mtu: u32,
        rx_stall_timeout: Option<Duration>,
    ) -> Result<Device, DeviceError> {
        let Some(tap0) = taps.first().cloned() else {
            return Err(DeviceError::Spawn(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a vif needs at least one queue",
            )));
        };
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            metrics: Metrics::default(),
            failure: FailOnce::new(),
            carrier: Mutex::new(Carrier {
                tap: tap0,
                running: false,
                stalled: 0,
                log: LogLimiter::new(1, LOG_WINDOW),
            }),
        });
        let mut dev = Device {
            domid,
            queues: Vec::with_capacity(params.queues.len()),
            shared: Arc::clone(&shared),
            stopped: false,
        };
        let feats = RxFeatures {
            sg: params.sg,
            gso_tcpv4: params.gso_tcpv4,
            gso_tcpv6: params.gso_tcpv6,
            csum_ipv4: params.csum_ipv4,
            csum_ipv6: params.csum_ipv6,
        };
        for (i, (q, tap)) in params.queues.iter().zip(taps).enumerate() {
            // On error `dev` drops here and stops the queues already started.
            let h = start_queue(
                handles,
                domid,
                i as u32,
                q,
                tap,
                feats,
                mtu,
                rx_stall_timeout,
                &shared,
            )?;
            dev.queues.push(h);
        }
        if !shared.stop.load(Ordering::SeqCst) {
            let mut c = shared.carrier();
            // (A queue that failed meanwhile set `stop` under this lock's
            // protection order: fail() stores it before taking the lock.)
            c.running = !shared.stop.load(Ordering::SeqCst);
            c.apply();
        }
        Ok(dev)
    }

    /// The frontend domain.
    #[must_use]
    pub fn domid(&self) -> domid_t {
        self.domid
    }

    /// Number of queues.
    #[must_use]
    pub fn nr_queues(&self) -> usize {
        self.queues.len()
    }

    /// The failure, if a queue failed.
    #[must_use]
    pub fn failure(&self) -> Option<DeviceFailure> {
        self.shared.failure.get()
    }

    /// The counters.
    #[must_use]
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Waits up to `timeout` for a failure.
    #[must_use]
    pub fn wait_failure(&self, timeout: Duration) -> Option<DeviceFailure> {
        self.shared.failure.wait(timeout)
    }

    /// Has `f` called at the first failure (at once if there is one), for
    /// an owner that sleeps on its own events.
    pub fn set_failure_notifier(&self, f: xen_backend_common::FailureNotifier) {
        self.shared.failure.set_notifier(f);
    }

    /// Whether the device has the carrier on (started, no queue stalled).
    #[must_use]
    pub fn carrier(&self) -> bool {
        let c = self.shared.carrier();
        c.running && c.stalled == 0
    }

    /// Stops the workers, unmaps the rings, unbinds the event channels,
    /// turns the carrier off; returns the final counters.
    pub fn disconnect(mut self) -> MetricsSnapshot {
        self.stop();
        self.shared.metrics.snapshot()
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        {
            // Off first: a worker leaving its stalled state on the way out
            // must not turn it back on.
            let mut c = self.shared.carrier();
            c.running = false;
            c.apply();
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        stop_queues(&mut self.queues, "netback", self.domid);
        self.shared.carrier().apply();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn start_queue(
    handles: &Dom0Handles,
    domid: domid_t,
    index: u32,
    q: &QueueParams,
    tap: Arc<TapQueue>,
    feats: RxFeatures,
    mtu: u32,
    rx_stall_timeout: Option<Duration>,
    shared: &Arc<Shared>,
) -> Result<QueueThread, DeviceError> {
    let map = |gref| {
        handles
            .gntdev
            .map_grant_ref(domid, gref, true)
            .map_err(|source| DeviceError::MapRing {
                domid,
                grefs: vec![gref],
                source,
            })
    };
    let tx_map = map(q.tx_ring_ref)?;
    let rx_map = map(q.rx_ring_ref)?;
    let tx = MappedBackRing::attach(tx_map).map_err(DeviceError::Ring)?;
    let rx = MappedBackRing::attach(rx_map).map_err(DeviceError::Ring)?;
    let ev = DeviceError::evtchn;
    let evtchn = Arc::new(Evtchn::open(&handles.socket).map_err(ev("opening a handle"))?);
    let port_tx = evtchn
        .bind_interdomain(domid, q.evtchn_tx)
        .map_err(ev("binding the frontend's tx port"))?;
    let port_rx = if q.evtchn_rx == q.evtchn_tx {
        port_tx
    } else {
        evtchn
            .bind_interdomain(domid, q.evtchn_rx)
            .map_err(ev("binding the frontend's rx port"))?
    };
    let kick = evtchn.bind_ipi().map_err(ev("binding the stop kick"))?;
    let rx_need = if feats.sg { MAX_SLOTS as u32 + 1 } else { 1 };
    // Without scatter-gather a packet must fit one page.
    let rx_max = if feats.sg {
        RX_BUF
    } else {
        (mtu as usize + 18).min(4096)
    };
    let worker = Worker {
        index,
        domid,
        tx,
        rx,
        gntdev: Arc::clone(&handles.gntdev),
        evtchn: Arc::clone(&evtchn),
        port_tx,
        port_rx,
        kick,
        tap,
        feats,
        rx_need,
        rx_max,
        shared: Arc::clone(shared),
        pending: Vec::with_capacity(MAX_SLOTS + MAX_EXTRAS),
        rx_held: std::collections::VecDeque::with_capacity(MAX_SLOTS + 2),
        log: LogLimiter::new(1, LOG_WINDOW),
        stall: rx_stall_timeout.map(|t| t.max(Duration::from_millis(1))),
        stalled: false,
        last_rx: Instant::now(),
        rounds: 0,
        poll: PollWindow::new(u64::try_from(SPIN.as_nanos()).unwrap_or(u64::MAX)),
    };
    QueueThread::spawn(
        format!("netback-{domid}-q{index}"),
        evtchn,
        kick,
        move || worker.run(),
    )
    .map_err(DeviceError::Spawn)
}

struct Worker {
    index: u32,
    domid: domid_t,
    tx: MappedBackRing<TxSlot, TxRsp>,
    rx: MappedBackRing<RxSlot, RxSlot>,
    gntdev: Arc<Gntdev>,
    evtchn: Arc<Evtchn>,
    port_tx: evtchn_port_t,
    port_rx: evtchn_port_t,
    kick: evtchn_port_t,
    tap: Arc<TapQueue>,
    feats: RxFeatures,
    /// Rx requests needed before reading a packet from the TAP.
    rx_need: u32,
    /// Largest packet the frontend can take.
    rx_max: usize,
    shared: Arc<Shared>,
    /// Tx slots taken whose packet is not complete yet.
    pending: Vec<TxSlot>,
    /// Rx requests taken (their pages mapped) and not answered yet: the
    /// next packets are read from the TAP straight into these pages.
    rx_held: std::collections::VecDeque<Held>,
    log: LogLimiter,
    /// The rx stall timeout (`None`: no stall detection).
    stall: Option<Duration>,
    /// This queue counts as stalled in `shared`'s carrier.
    stalled: bool,
    /// When a packet was last delivered to the frontend (or the queue
    /// became ready).
    last_rx: Instant,
    /// Busy rounds since the last stall check.
    rounds: u32,
    /// How long to poll before sleeping (adapts between 0 and [`SPIN`]).
    poll: PollWindow,
}

/// An rx request taken from the ring, its page mapped (`None`: the grant
/// did not map; its slot gets `NETIF_RSP_ERROR`).
struct Held {
    id: u16,
    map: Option<GrantMapping>,
}

fn tx_rsp(id: u16, status: i16) -> TxRsp {
    let mut r = [0u8; 4];
    r.copy_from_slice(netif_tx_response { id, status }.as_bytes());
    r
}

fn rx_rsp(r: netif_rx_response) -> RxSlot {
    let mut s = [0u8; NETIF_RX_SRING_ENTRY_SIZE];
    s.copy_from_slice(r.as_bytes());
    s
}

impl Worker {
    fn run(mut self) {
        tracing::debug!(
            domid = self.domid,
            queue = self.index,
            "netback queue started"
        );
        let mut buf = vec![0u8; RX_BUF];
        while !self.shared.stop.load(Ordering::SeqCst) {
            let mut work = match self.serve_tx() {
                Ok(w) => w,
                Err(r) => {
                    self.fail(r);
                    break;
                }
            };
            match self.serve_rx(&mut buf) {
                Ok(w) => {
                    if w {
                        self.last_rx = Instant::now();
                    }
                    work |= w;
                }
                Err(r) => {
                    self.fail(r);
                    break;
                }
            }
            if work {
                // A queue busy with tx still looks at its rx side now and then.
                self.rounds = self.rounds.wrapping_add(1);
                if self.rounds % 1024 == 0 {
                    if let Err(r) = self.check_stall() {
                        self.fail(r);
                        break;
                    }
                }
                continue;
            }
            // Poll the rings (and now and then the TAP) for an adaptive
            // window before sleeping: a frontend that is about to publish,
            // or Dom0's stack about to answer, is served without a wake-up.
            let window = Duration::from_nanos(self.poll.budget_ns());
            if !window.is_zero() {
                let deadline = Instant::now() + window;
                let mut found = false;
                let mut round = 0u32;
                while !found && Instant::now() < deadline {
                    for _ in 0..64 {
                        if self.ring_work() {
                            found = true;
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    round = round.wrapping_add(1);
                    if !found && round % 4 == 0 {
                        found = self.tap_work();
                    }
                }
                if found {
                    self.poll.hit();
                    continue;
                }
                self.poll.miss();
            }
            if let Err(r) = self.check_stall() {
                self.fail(r);
                break;
            }
            match self.arm() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(r) => {
                    self.fail(r);
                    break;
                }
            }
            let slept = Instant::now();
            match self.sleep() {
                Ok(true) => self
                    .poll
                    .woke(u64::try_from(slept.elapsed().as_nanos()).unwrap_or(u64::MAX)),
                Ok(false) => {}
                Err(r) => {
                    self.fail(r);
                    break;
                }
            }
        }
        // Publish what was pushed: a response overwrote its request slot.
        self.tx.publish_responses();
        self.rx.publish_responses();
        if self.stalled {
            self.stalled = false;
            self.shared.queue_stalled(self.domid, self.index, false);
        }
        tracing::debug!(
            domid = self.domid,
            queue = self.index,
            "netback queue stopped"
        );
    }

    fn fail(&self, reason: FailureReason) {
        self.shared.fail(DeviceFailure {
            queue: self.index,
            reason,
        });
    }

    /// Guest rx stall detection (Linux netback's `xenvif_rx_queue_stalled`
    /// and `_ready`): stalled when a packet waits on the TAP, the frontend
    /// has posted fewer rx requests than the largest packet needs, and
    /// nothing was delivered for the stall timeout; ready again once it
    /// has posted enough.
    fn check_stall(&mut self) -> Result<(), FailureReason> {
        let Some(timeout) = self.stall else {
            return Ok(());
        };
        let enough = self.rx_avail()? >= self.rx_need;
        if self.stalled {
            if enough {
                self.stalled = false;
                self.last_rx = Instant::now();
                self.shared.queue_stalled(self.domid, self.index, false);
            }
        } else if !enough && self.last_rx.elapsed() >= timeout && self.tap.readable() {
            self.stalled = true;
            self.shared.queue_stalled(self.domid, self.index, true);
        }
        Ok(())
    }

    fn ring_err(which: &'static str, e: RingError) -> FailureReason {
        match e {
            RingError::ProducerOverflow { .. } => FailureReason::RingOverflow(which),
            e => FailureReason::Ring(e.to_string()),
        }
    }

    fn log_drop(&mut self, what: &str, err: &dyn std::fmt::Display) {
        warn_limited!(self.log, domid = self.domid, queue = self.index, error = %err, "{what}");
    }

    fn notify(&self, port: evtchn_port_t) -> Result<(), FailureReason> {
        self.shared.metrics.add(Counter::Notifications, 1);
        self.evtchn
            .notify(port)
            .map_err(|e| FailureReason::EventChannel(e.to_string()))
    }

    /// Guest to TAP. `Ok(true)` if anything was done.
    fn serve_tx(&mut self) -> Result<bool, FailureReason> {
        let mut work = false;
        let mut unpushed = 0usize;
        // A quarter of the ring per call (bounded): then the rx side gets
        // its turn, so Dom0's ACKs to the guest do not wait for a whole
        // ring of 64 KiB packets to be written (the guest's TCP sends only
        // as far as its send buffer lets it before they arrive).
        let mut budget = (self.tx.nr_ents() / TX_BUDGET_DIV) as usize;
        loop {
            while self.pending.len() < MAX_SLOTS + MAX_EXTRAS && budget > 0 {
                match self.tx.take_request() {
                    Ok(Some(s)) => {
                        self.pending.push(s);
                        budget -= 1;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(Self::ring_err("tx", e)),
                }
            }
            match parse_tx(&self.pending) {
                TxParse::Incomplete => {
                    if self.pending.len() >= MAX_SLOTS + MAX_EXTRAS {
                        return Err(FailureReason::Fatal(TxFatal::TooManySlots));
                    }
                    break;
                }
                TxParse::Fatal(f) => return Err(FailureReason::Fatal(f)),
                TxParse::Packet(p) => {
                    work = true;
                    let (slots, status) = match p {
                        Ok(pkt) => {
                            let st = self.transmit(&pkt);
                            (pkt.slots, st)
                        }
                        Err((e, slots)) => {
                            self.log_drop("dropping an invalid tx packet", &e);
                            (slots, NETIF_RSP_ERROR)
                        }
                    };
                    if status != NETIF_RSP_OKAY {
                        self.shared.metrics.add(Counter::TxDropped, 1);
                    }
                    for k in &slots {
                        let rsp = match k {
                            SlotKind::Data(r) => tx_rsp(r.id, status),
                            SlotKind::Extra => tx_rsp(0, NETIF_RSP_NULL),
                        };
                        self.tx
                            .push_response(&rsp)
                            .map_err(|e| Self::ring_err("tx", e))?;
                    }
                    self.pending.drain(..slots.len());
                    // Publish as we go (the frontend reuses the pages while
                    // we write the next packets: the two copies overlap).
                    unpushed += 1;
                    if slots.len() > 2 || unpushed >= PUSH_EVERY {
                        unpushed = 0;
                        if self.tx.push_responses_and_check_notify() {
                            self.notify(self.port_tx)?;
                        }
                    }
                }
            }
        }
        if self.tx.push_responses_and_check_notify() {
            self.notify(self.port_tx)?;
        }
        Ok(work)
    }

    /// Writes one packet to the TAP; the response status.
    fn transmit(&mut self, pkt: &TxPacket) -> i16 {
        let mut maps: Vec<GrantMapping> = Vec::with_capacity(pkt.frags.len());
        for &(gref, _, _) in &pkt.frags {
            match self.gntdev.map_grant_ref(self.domid, gref, false) {
                Ok(m) => maps.push(m),
                Err(e) => {
                    self.log_drop("dropping a tx packet with a bad grant", &e);
                    return NETIF_RSP_ERROR;
                }
            }
        }
        let mut hdr = VnetHdr::default();
        if pkt.csum_blank || pkt.gso.is_some() {
            // The headers are in the first slot (Linux netfront puts at
            // least the linear part there); read them to find the checksum.
            let (_, off, len) = pkt.frags[0];
            let mut head = [0u8; 128];
            let n = usize::from(len).min(head.len());
            if maps[0].read(usize::from(off), &mut head[..n]).is_err() {
                return NETIF_RSP_ERROR;
            }
            let Some(ci) = offload::checksum_info(&head[..n]) else {
                self.log_drop(
                    "dropping a tx packet",
                    &"checksum offload on a packet without TCP/UDP headers",
                );
                return NETIF_RSP_ERROR;
            };
            hdr.flags = offload::VNET_F_NEEDS_CSUM;
            hdr.csum_start = ci.start;
            hdr.csum_offset = ci.offset;
            if let Some((t, size)) = pkt.gso {
                if !ci.tcp || ci.ipv6 != (t == XEN_NETIF_GSO_TYPE_TCPV6) {
                    self.log_drop(
                        "dropping a tx packet",
                        &"GSO type does not match its headers",
                    );
                    return NETIF_RSP_ERROR;
                }
                hdr.gso_type = if ci.ipv6 {
                    offload::VNET_GSO_TCPV6
                } else {
                    offload::VNET_GSO_TCPV4
                };
                hdr.gso_size = size;
                hdr.hdr_len = ci.headers_end;
            }
        } else if pkt.data_validated {
            hdr.flags = offload::VNET_F_DATA_VALID;
        }
        let h = hdr.encode();
        let mut iov = Vec::with_capacity(pkt.frags.len() + 1);
        iov.push(libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: h.len(),
        });
        for (m, &(_, off, len)) in maps.iter().zip(&pkt.frags) {
            // SAFETY: `off + len <= 4096` was checked by `parse_tx` and the
            // mapping is one page.
            let p = unsafe { m.as_ptr().add(usize::from(off)) };
            iov.push(libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: usize::from(len),
            });
        }
        // SAFETY: the header is a live local array and every other iovec
        // lies inside a grant mapping in `maps`, alive until after the call;
        // the kernel only reads them.
        let r = unsafe { self.tap.write_packet(&iov) };
        drop(maps);
        match r {
            Ok(_) => {
                self.shared.metrics.add(Counter::TxPackets, 1);
                self.shared
                    .metrics
                    .add(Counter::TxBytes, u64::from(pkt.size));
                NETIF_RSP_OKAY
            }
            Err(e) => {
                // The TAP is down or refused the packet (too big): drop it.
                self.log_drop("the TAP refused a tx packet", &e);
                NETIF_RSP_DROPPED
            }
        }
    }

    /// TAP to guest. `Ok(true)` if anything was done.
    fn serve_rx(&mut self, buf: &mut [u8]) -> Result<bool, FailureReason> {
        if self.feats.sg {
            return self.serve_rx_in_place(buf);
        }
        self.serve_rx_copy(buf)
    }

    /// Rx requests available: held plus unconsumed on the ring.
    fn rx_avail(&self) -> Result<u32, FailureReason> {
        let n = self
            .rx
            .unconsumed_requests()
            .map_err(|e| Self::ring_err("rx", e))?;
        Ok(n.saturating_add(self.rx_held.len() as u32))
    }

    /// TAP to guest with scatter-gather: each packet is read from the TAP
    /// straight into the held requests' pages (`readv(2)` of the header,
    /// the first page, and the pages after the slot a GSO extra takes).
    fn serve_rx_in_place(&mut self, scratch: &mut [u8]) -> Result<bool, FailureReason> {
        let need = self.rx_need as usize;
        let mut work = false;
        let mut discard = [0u8; 4096];
        let mut unpushed = 0usize;
        for _ in 0..self.rx.nr_ents() {
            while self.rx_held.len() < need {
                match self
                    .rx
                    .take_request()
                    .map_err(|e| Self::ring_err("rx", e))?
                {
                    Some(s) => {
                        let req = netif_rx_request::read_from_bytes(&s).unwrap_or_default();
                        let map = match self.gntdev.map_grant_ref(self.domid, req.gref, true) {
                            Ok(m) => Some(m),
                            Err(e) => {
                                self.log_drop("an rx grant cannot be mapped", &e);
                                None
                            }
                        };
                        self.rx_held.push_back(Held { id: req.id, map });
                    }
                    None => break,
                }
            }
            if self.rx_held.len() < need {
                break;
            }
            let mut h = [0u8; VNET_HDR_LEN];
            let mut iov = [libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            }; MAX_SLOTS + 2];
            iov[0] = libc::iovec {
                iov_base: h.as_mut_ptr().cast(),
                iov_len: h.len(),
            };
            let mut n_iov = 1;
            for (i, held) in self.rx_held.iter().enumerate().take(need) {
                if i == 1 {
                    continue; // kept for a GSO extra
                }
                let ptr = held
                    .map
                    .as_ref()
                    .and_then(GrantMapping::as_mut_ptr)
                    .unwrap_or(discard.as_mut_ptr());
                iov[n_iov] = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: 4096,
                };
                n_iov += 1;
            }
            // SAFETY: the header and the discard page are live local
            // arrays; every other iovec is a writable one-page grant
            // mapping held in `rx_held` until after the call.
            let n = match unsafe { self.tap.read_packet_raw(&iov[..n_iov]) } {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err(FailureReason::Tap(e.to_string())),
            };
            work = true;
            let len = n.saturating_sub(VNET_HDR_LEN);
            self.deliver_in_place(VnetHdr::decode(&h), len, scratch)?;
            // Publish as we go: the frontend hands this packet on while we
            // read the next one.
            unpushed += 1;
            if len > 4096 || unpushed >= PUSH_EVERY {
                unpushed = 0;
                if self.rx.push_responses_and_check_notify() {
                    self.notify(self.port_rx)?;
                }
            }
        }
        if self.rx.push_responses_and_check_notify() {
            self.notify(self.port_rx)?;
        }
        Ok(work)
    }

    /// Answers the held requests a packet of `len` bytes was read into.
    fn deliver_in_place(
        &mut self,
        hdr: VnetHdr,
        len: usize,
        scratch: &mut [u8],
    ) -> Result<(), FailureReason> {
        if !(offload::ETH_HLEN..=RX_BUF).contains(&len) {
            // Nothing is answered: the pages are reused for the next one.
            self.shared.metrics.add(Counter::RxDropped, 1);
            return Ok(());
        }
        let chunks = len.div_ceil(4096);
        let gso = match hdr.gso_type & !offload::VNET_GSO_ECN {
            offload::VNET_GSO_NONE => None,
            offload::VNET_GSO_TCPV4 if self.feats.gso_tcpv4 => {
                Some((XEN_NETIF_GSO_TYPE_TCPV4, hdr.gso_size))
            }
            offload::VNET_GSO_TCPV6 if self.feats.gso_tcpv6 => {
                Some((XEN_NETIF_GSO_TYPE_TCPV6, hdr.gso_size))
            }
            _ => {
                self.shared.metrics.add(Counter::RxDropped, 1);
                return Ok(());
            }
        };
        // Held index of each data chunk as read: 0, then 2, 3, ...
        let read_at = |k: usize| if k == 0 { 0 } else { k + 1 };
        let mut failed = false;
        if gso.is_none() && chunks > 1 {
            // No extra slot: move chunks 1.. down one slot (jumbo frames
            // only; each destination is below its source).
            let mut page = [0u8; 4096];
            for k in 1..chunks {
                let ok = match (&self.rx_held[read_at(k)].map, &self.rx_held[k].map) {
                    (Some(src), Some(dst)) => {
                        src.read(0, &mut page).is_ok() && dst.write(0, &page).is_ok()
                    }
                    _ => false,
                };
                failed |= !ok;
            }
        }
        let slot_of = |k: usize| if gso.is_some() { read_at(k) } else { k };
        let mut flags = 0u16;
        if hdr.flags & offload::VNET_F_NEEDS_CSUM != 0 {
            let mut head = [0u8; 128];
            if let Some(m) = &self.rx_held[0].map {
                let _ = m.read(0, &mut head[..len.min(128)]);
            }
            let v6 = offload::checksum_info(&head[..len.min(128)]).is_some_and(|c| c.ipv6);
            let partial_ok = if v6 {
                self.feats.csum_ipv6
            } else {
                self.feats.csum_ipv4
            };
            if partial_ok {
                flags |= NETRXF_csum_blank | NETRXF_data_validated;
            } else {
                // Gather, complete the checksum, scatter back.
                let mut ok = len <= scratch.len();
                for k in 0..chunks {
                    let l = (len - k * 4096).min(4096);
                    ok &= ok
                        && self.rx_held[slot_of(k)].map.as_ref().is_some_and(|m| {
                            m.read(0, &mut scratch[k * 4096..k * 4096 + l]).is_ok()
                        });
                }
                ok = ok
                    && offload::complete_checksum(
                        &mut scratch[..len],
                        usize::from(hdr.csum_start),
                        usize::from(hdr.csum_offset),
                    );
                for k in 0..chunks {
                    let l = (len - k * 4096).min(4096);
                    ok &= ok
                        && self.rx_held[slot_of(k)]
                            .map
                            .as_ref()
                            .is_some_and(|m| m.write(0, &scratch[k * 4096..k * 4096 + l]).is_ok());
                }
                failed |= !ok;
                flags |= NETRXF_data_validated;
            }
        } else if hdr.flags & offload::VNET_F_DATA_VALID != 0 {
            flags |= NETRXF_data_validated;
        }
        for k in 0..chunks {
            failed |= self.rx_held[slot_of(k)].map.is_none();
        }
        let used = if gso.is_some() { chunks + 1 } else { chunks };
        for i in 0..used {
            let Some(held) = self.rx_held.pop_front() else {
                return Err(FailureReason::Ring("held rx requests vanished".into()));
            };
            let rsp = if gso.is_some() && i == 1 {
                let (t, size) = gso.unwrap_or_default();
                let e = netif_extra_info {
                    r#type: XEN_NETIF_EXTRA_TYPE_GSO,
                    flags: 0,
                    u: netif_extra_info_u::from_gso(netif_extra_info_gso {
                        size,
                        r#type: t,
                        pad: 0,
                        features: 0,
                    }),
                };
                let mut s = [0u8; NETIF_RX_SRING_ENTRY_SIZE];
                s.copy_from_slice(e.as_bytes());
                s
            } else {
                let k = if gso.is_some() && i > 1 { i - 1 } else { i };
                let l = (len - k * 4096).min(4096);
                let mut f = if i == 0 { flags } else { 0 };
                if k + 1 < chunks {
                    f |= NETRXF_more_data;
                }
                if i == 0 && gso.is_some() {
                    f |= NETRXF_extra_info;
                }
                let status = if held.map.is_none() || failed {
                    NETIF_RSP_ERROR
                } else {
                    l as i16
                };
                rx_rsp(netif_rx_response {
                    id: held.id,
                    offset: 0,
                    flags: f,
                    status,
                })
            };
            self.rx
                .push_response(&rsp)
                .map_err(|e| Self::ring_err("rx", e))?;
        }
        if failed {
            self.shared.metrics.add(Counter::RxDropped, 1);
        } else {
            self.shared.metrics.add(Counter::RxPackets, 1);
            self.shared.metrics.add(Counter::RxBytes, len as u64);
        }
        Ok(())
    }

    /// TAP to guest without scatter-gather: read into a local buffer, copy
    /// into one posted page.
    fn serve_rx_copy(&mut self, buf: &mut [u8]) -> Result<bool, FailureReason> {
        let mut work = false;
        // Bounded: at most a ring's worth of packets per call.
        for _ in 0..self.rx.nr_ents() {
            let avail = self
                .rx
                .check_for_requests()
                .map_err(|e| Self::ring_err("rx", e))?;
            if avail < self.rx_need {
                break;
            }
            let mut h = [0u8; VNET_HDR_LEN];
            let n = match self.tap.read_packet(&mut h, buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err(FailureReason::Tap(e.to_string())),
            };
            work = true;
            let Some(len) = n.checked_sub(VNET_HDR_LEN) else {
                continue;
            };
            self.deliver(VnetHdr::decode(&h), &mut buf[..len])?;
        }
        if self.rx.push_responses_and_check_notify() {
            self.notify(self.port_rx)?;
        }
        Ok(work)
    }

    /// Copies one packet into the frontend's posted pages.
    fn deliver(&mut self, hdr: VnetHdr, pkt: &mut [u8]) -> Result<(), FailureReason> {
        let drop_it = |w: &mut Self| w.shared.metrics.add(Counter::RxDropped, 1);
        if pkt.len() > self.rx_max || pkt.len() < offload::ETH_HLEN {
            drop_it(self);
            return Ok(());
        }
        let mut flags = 0u16;
        let mut gso = None;
        if hdr.flags & offload::VNET_F_NEEDS_CSUM != 0 {
            let v6 = offload::checksum_info(pkt).is_some_and(|c| c.ipv6);
            let partial_ok = if v6 {
                self.feats.csum_ipv6
            } else {
                self.feats.csum_ipv4
            };
            if partial_ok {
                flags |= NETRXF_csum_blank | NETRXF_data_validated;
            } else if offload::complete_checksum(
                pkt,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            ) {
                flags |= NETRXF_data_validated;
            } else {
                drop_it(self);
                return Ok(());
            }
        } else if hdr.flags & offload::VNET_F_DATA_VALID != 0 {
            flags |= NETRXF_data_validated;
        }
        match hdr.gso_type & !offload::VNET_GSO_ECN {
            offload::VNET_GSO_NONE => {}
            offload::VNET_GSO_TCPV4 if self.feats.gso_tcpv4 => {
                gso = Some((XEN_NETIF_GSO_TYPE_TCPV4, hdr.gso_size))
            }
            offload::VNET_GSO_TCPV6 if self.feats.gso_tcpv6 => {
                gso = Some((XEN_NETIF_GSO_TYPE_TCPV6, hdr.gso_size))
            }
            _ => {
                drop_it(self);
                return Ok(());
            }
        }
        let chunks = pkt.len().div_ceil(4096);
        let mut failed = false;
        for (i, chunk) in pkt.chunks(4096).enumerate() {
            let Some(req) = self
                .rx
                .take_request()
                .map_err(|e| Self::ring_err("rx", e))?
            else {
                // `rx_need` slots were checked: cannot happen.
                return Err(FailureReason::Ring("rx requests vanished".into()));
            };
            let req = netif_rx_request::read_from_bytes(&req).unwrap_or_default();
            let status = match self.gntdev.map_grant_ref(self.domid, req.gref, true) {
                Ok(m) => match m.write(0, chunk) {
                    Ok(()) => chunk.len() as i16,
                    Err(_) => NETIF_RSP_ERROR,
                },
                Err(e) => {
                    self.log_drop("an rx grant cannot be mapped", &e);
                    NETIF_RSP_ERROR
                }
            };
            failed |= status < 0;
            let mut f = if i == 0 { flags } else { 0 };
            if i + 1 < chunks {
                f |= NETRXF_more_data;
            }
            if i == 0 && gso.is_some() {
                f |= NETRXF_extra_info;
            }
            let rsp = rx_rsp(netif_rx_response {
                id: req.id,
                offset: 0,
                flags: f,
                status,
            });
            self.rx
                .push_response(&rsp)
                .map_err(|e| Self::ring_err("rx", e))?;
            if i == 0 {
                if let Some((t, size)) = gso {
                    // The extra takes the next request's slot.
                    let Some(_) = self
                        .rx
                        .take_request()
                        .map_err(|e| Self::ring_err("rx", e))?
                    else {
                        return Err(FailureReason::Ring("rx requests vanished".into()));
                    };
                    let e = netif_extra_info {
                        r#type: XEN_NETIF_EXTRA_TYPE_GSO,
                        flags: 0,
                        u: netif_extra_info_u::from_gso(netif_extra_info_gso {
                            size,
                            r#type: t,
                            pad: 0,
                            features: 0,
                        }),
                    };
                    let mut s = [0u8; NETIF_RX_SRING_ENTRY_SIZE];
                    s.copy_from_slice(e.as_bytes());
                    self.rx
                        .push_response(&s)
                        .map_err(|e| Self::ring_err("rx", e))?;
                }
            }
        }
        if failed {
            drop_it(self);
        } else {
            self.shared.metrics.add(Counter::RxPackets, 1);
            self.shared.metrics.add(Counter::RxBytes, pkt.len() as u64);
        }
        Ok(())
    }

    /// Whether the rings have work (tx requests, or enough rx requests
    /// when the TAP may have packets): two reads of shared indices.
    fn ring_work(&self) -> bool {
        self.tx.unconsumed_requests().map_or(true, |n| n > 0)
    }

    /// Sets the event indices before sleeping; `Ok(true)` if work arrived
    /// meanwhile.
    fn arm(&mut self) -> Result<bool, FailureReason> {
        if self
            .tx
            .final_check_for_requests()
            .map_err(|e| Self::ring_err("tx", e))?
        {
            return Ok(true);
        }
        let avail = self.rx_avail()?;
        if avail < self.rx_need {
            let ahead = self.rx_need - self.rx_held.len() as u32;
            self.rx.set_req_event(ahead);
            fence(Ordering::SeqCst);
            if self.rx_avail()? >= self.rx_need {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the TAP has a packet the frontend has room for (one
    /// `poll(2)` that does not wait).
    fn tap_work(&self) -> bool {
        if !self.rx_avail().is_ok_and(|n| n >= self.rx_need) {
            return false;
        }
        let mut fd = libc::pollfd {
            fd: self.tap.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & libc::POLLIN != 0
    }

    /// Sleeps until a port fires or, when it can receive, the TAP has a
    /// packet; whether something woke it (not the timeout).
    fn sleep(&mut self) -> Result<bool, FailureReason> {
        let can_rx = self.rx_avail()? >= self.rx_need;
        let mut fds = [
            libc::pollfd {
                fd: self.evtchn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.tap.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let (n, ms) = if can_rx {
            (2, IDLE_WAIT_RX_MS)
        } else {
            (1, IDLE_WAIT_MS)
        };
        // SAFETY: `fds` is a live array of at least `n` pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
        let woke = r > 0;
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(FailureReason::EventChannel(e.to_string()));
            }
        }
        self.shared.metrics.add(Counter::Wakeups, 1);
        let fired = self
            .evtchn
            .try_pending()
            .map_err(|e| FailureReason::EventChannel(e.to_string()))?;
        for p in fired {
            if p == self.port_tx || p == self.port_rx || p == self.kick {
                self.evtchn
                    .unmask(p)
                    .map_err(|e| FailureReason::EventChannel(e.to_string()))?;
            }
        }
        Ok(woke)
    }
}
