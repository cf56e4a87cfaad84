//! [`BlkFront`]: one virtual block device. The xenbus handshake is a state
//! machine driven by watch events on the backend's `state` node
//! ([`BlkFront::handle_watch`]); the data path (submit, poll, wait) is
//! separate and never blocks except in [`BlkFront::wait`].

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::blkif::{
    blkif_ring_size, blkif_vdev_t, keys, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY,
    XEN_IO_PROTO_ABI_NATIVE,
};
use xen_abi::io::xenbus::XenbusState;
use xen_abi::xen::{domid_t, DOMID_FIRST_RESERVED};
use xen_front_platform::{
    xs_read_string, Platform, PlatformError, SharedPages, XsTransaction, XsWatchEvent, PAGE_SIZE,
    XBT_NIL,
};
use xen_ring::{FrontRing, PollWindow, SharedRing};

use crate::error::{BlkfrontError, FailReason};
use crate::features::{parse_u64, DiskInfo, FlushOp, TransportOffer, MAX_QUEUES};
use crate::idtable::IdTable;
use crate::request::{
    data_segments, decode_response, encode_discard, encode_indirect, encode_no_data, encode_rw,
    indirect_page_bytes, indirect_pages_needed, response_op_matches, ReqSlot, RspSlot,
    MAX_INDIRECT_SEGMENTS, SECTOR_BYTES,
};

/// Largest registered buffer ([`BlkFront::alloc_buffer`]): what one request
/// with the most indirect segments carries.
pub const MAX_BUFFER_BYTES: usize = MAX_INDIRECT_SEGMENTS * PAGE_SIZE;

/// Calls `f(page, offset in page, range of the caller's slice)` for each
/// page piece of `offset..offset + len` of buffer `b`.
fn buffer_chunks(
    b: &IoBuffer,
    offset: usize,
    len: usize,
    mut f: impl FnMut(&DataPage, usize, core::ops::Range<usize>) -> Result<(), BlkfrontError>,
) -> Result<(), BlkfrontError> {
    match offset.checked_add(len) {
        Some(end) if end <= b.len => {}
        _ => return Err(BlkfrontError::BadBuffer),
    }
    let mut done = 0usize;
    while done < len {
        let at = offset + done;
        let dp = b
            .pages
            .get(at / PAGE_SIZE)
            .ok_or(BlkfrontError::BadBuffer)?;
        let in_page = at % PAGE_SIZE;
        let n = (PAGE_SIZE - in_page).min(len - done);
        f(dp, in_page, done..done + n)?;
        done += n;
    }
    Ok(())
}

/// Attempts at a xenstore transaction that keeps conflicting (`EAGAIN`).
const XS_TX_ATTEMPTS: usize = 16;

/// The frontend's choices; [`Default`] is what a PV guest should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkfrontConfig {
    /// Largest `ring-page-order` to use (clamped to 4; the backend's
    /// `max-ring-page-order` may lower it).
    pub max_ring_page_order: u32,
    /// Most queues to use (clamped to 1..=16; the backend's
    /// `multi-queue-max-queues` may lower it).
    pub max_queues: u32,
    /// Most segments per indirect request (clamped to 11..=256; used only
    /// when the backend offers `feature-max-indirect-segments`).
    pub max_indirect_segments: u32,
    /// Offer `feature-persistent` (used when the backend offers it too).
    pub persistent_grants: bool,
    /// Free data pages kept for reuse (with their grants when persistent),
    /// per pool (data, indirect); the pools always keep at least what the
    /// rings can have in flight (slots x segments per request).
    pub max_cached_pages: usize,
    /// The longest [`BlkFront::wait`] polls the rings for responses
    /// (reading `rsp_prod`, no syscall, `rsp_event` not armed, so the
    /// backend sends no notification) before the final check and the sleep
    /// on the event channels. The window adapts between zero and this
    /// ([`xen_ring::PollWindow`]: it shrinks to zero when a poll finds
    /// nothing, as when the backend shares our CPU). Zero: never poll.
    pub poll_budget: Duration,
}

/// Default [`BlkfrontConfig::poll_budget`].
pub const DEFAULT_POLL_BUDGET: Duration = Duration::from_micros(50);

/// Largest [`BlkfrontConfig::poll_budget`] honoured.
const MAX_POLL_BUDGET: Duration = Duration::from_millis(10);

impl Default for BlkfrontConfig {
    fn default() -> Self {
        BlkfrontConfig {
            max_ring_page_order: 2,
            max_queues: 1,
            max_indirect_segments: 32,
            persistent_grants: true,
            max_cached_pages: 1024,
            poll_budget: DEFAULT_POLL_BUDGET,
        }
    }
}

/// Where the frontend is in the xenbus handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontState {
    /// Waiting for the backend to reach InitWait (our node says
    /// Initialising, as the toolstack wrote it).
    WaitBackend,
    /// Rings offered (Initialised), waiting for the backend's Connected.
    Initialised,
    /// Connected: requests flow.
    Connected,
    /// The backend went away (Closing/Closed/removed); we tore the rings
    /// down and wrote Closed. Outstanding requests wait for a new backend.
    Closed,
    /// The backend broke the protocol; see [`BlkFront::failure`].
    Failed,
}

/// A registered I/O buffer of a [`BlkFront`] (see
/// [`BlkFront::alloc_buffer`]): frontend-owned pages the caller reads and
/// writes, and that reads and writes go to directly, without a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufferId(pub u32);

/// A caller-visible handle of a submitted request (unique for the device's
/// life; not the ring id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestTag(pub u64);

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush the disk's cache (or a barrier).
    Flush,
    /// Discard.
    Discard,
}

/// The outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkStatus {
    /// `BLKIF_RSP_OKAY`.
    Okay,
    /// `BLKIF_RSP_ERROR` (or any status that is not a known one), or the
    /// request could not be carried out (the device failed).
    Error,
    /// `BLKIF_RSP_EOPNOTSUPP`.
    NotSupported,
}

impl BlkStatus {
    fn from_wire(status: i16) -> BlkStatus {
        match status {
            BLKIF_RSP_OKAY => BlkStatus::Okay,
            BLKIF_RSP_EOPNOTSUPP => BlkStatus::NotSupported,
            _ => BlkStatus::Error,
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The tag [`BlkFront`] returned on submission.
    pub tag: RequestTag,
    /// What it was.
    pub kind: RequestKind,
    /// How it went.
    pub status: BlkStatus,
    /// The data of a successful read; empty otherwise.
    pub data: Vec<u8>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkfrontStats {
    /// Requests accepted by `submit_*`.
    pub submitted: u64,
    /// Requests completed (any status).
    pub completed: u64,
    /// Ring requests pushed (re-issues count again).
    pub pushed: u64,
    /// Requests that were on a ring when the backend went away and were
    /// issued again on the new one.
    pub reissued: u64,
    /// Indirect requests pushed.
    pub indirect: u64,
    /// Event-channel notifications sent.
    pub notifications: u64,
    /// Times the rings were torn down because the backend went away.
    pub disconnects: u64,
    /// Backend `state` values that were not a xenbus state (ignored).
    pub bad_backend_states: u64,
    /// Grants granted (persistent grants are counted once).
    pub grants: u64,
}

/// A page holding request data or indirect descriptors, with its grant.
#[derive(Debug)]
struct DataPage {
    page: SharedPages,
    /// `(gref, readonly)` while granted to the backend.
    grant: Option<(grant_ref_t, bool)>,
}

/// A registered buffer: its pages stay with it (with their grants, when
/// persistent) from request to request.
#[derive(Debug)]
struct IoBuffer {
    /// Empty while a request uses the pages (they travel in its shadow).
    pages: Vec<DataPage>,
    /// Bytes.
    len: usize,
    /// A request is using it.
    busy: bool,
}

/// Pages the backend still maps: revoked and freed later.
#[derive(Debug)]
struct Deferred {
    grefs: Vec<grant_ref_t>,
    pages: SharedPages,
}

#[derive(Debug)]
struct Shadow {
    tag: u64,
    /// Submission order (re-issue keeps it).
    seq: u64,
    kind: RequestKind,
    /// First 512-byte sector.
    sector: u64,
    /// Bytes (read/write) or 512-byte sectors (discard).
    len: u64,
    secure: bool,
    data: Vec<DataPage>,
    indirect: Vec<DataPage>,
    /// The queue whose ring holds the request, if it is on one.
    queue: Option<usize>,
    /// The registered buffer the data pages belong to (they go back to it
    /// when the request ends, and no data is copied).
    buffer: Option<u32>,
    sent_op: u8,
    inner_op: u8,
}

#[derive(Debug)]
struct Queue {
    ring: FrontRing<ReqSlot, RspSlot>,
    pages: SharedPages,
    grefs: Vec<grant_ref_t>,
    port: evtchn_port_t,
}

/// One PV block device (`device/vbd/<devid>`) over a [`Platform`].
///
/// Drive the handshake by passing every watch event to
/// [`BlkFront::handle_watch`] (or calling [`BlkFront::backend_changed`]);
/// submit requests with `submit_*`, collect them with
/// [`BlkFront::poll_completions`], sleep with [`BlkFront::wait`].
#[derive(Debug)]
pub struct BlkFront<'p, P: Platform + ?Sized> {
    p: &'p P,
    cfg: BlkfrontConfig,
    devid: u32,
    /// `device/vbd/<devid>` (relative to our domain's home).
    node: String,
    /// The backend's directory (absolute).
    backend: String,
    backend_id: domid_t,
    token: String,
    state: FrontState,
    backend_state: Option<XenbusState>,
    failure: Option<FailReason>,
    disk: Option<DiskInfo>,
    persistent: bool,
    max_segments: usize,
    queues: Vec<Queue>,
    ring_order: u32,
    ids: IdTable<Shadow>,
    /// Ids waiting for a ring slot (or for a backend), in order.
    pending: VecDeque<u64>,
    free_data: Vec<DataPage>,
    free_indirect: Vec<DataPage>,
    deferred: Vec<Deferred>,
    completions: VecDeque<Completion>,
    /// Read buffers handed back by [`BlkFront::give_back_buffer`], reused
    /// for the next reads' [`Completion::data`].
    spare_bufs: Vec<Vec<u8>>,
    /// Registered buffers, by [`BufferId`] (freed ids are `None`).
    buffers: Vec<Option<IoBuffer>>,
    next_tag: u64,
    next_seq: u64,
    rr: usize,
    /// The adaptive ring poll of [`BlkFront::wait`].
    poll: PollWindow,
    stats: BlkfrontStats,
}

fn plat(e: PlatformError) -> BlkfrontError {
    BlkfrontError::Platform(e)
}

/// Grants `dp` to `be` with the wanted access, reusing a matching grant.
fn ensure_grant<P: Platform + ?Sized>(
    p: &P,
    be: domid_t,
    dp: &mut DataPage,
    readonly: bool,
    stats: &mut BlkfrontStats,
) -> Result<grant_ref_t, PlatformError> {
    if let Some((g, ro)) = dp.grant {
        if ro == readonly {
            return Ok(g);
        }
        p.end_access(g)?;
        dp.grant = None;
    }
    let g = p.grant_access(be, dp.page.first_gfn(), readonly)?;
    dp.grant = Some((g, readonly));
    stats.grants = stats.grants.saturating_add(1);
    Ok(g)
}

impl<'p, P: Platform + ?Sized> BlkFront<'p, P> {
    /// Opens `device/vbd/<devid>`: reads `backend` and `backend-id` and
    /// watches the backend's `state`. The first watch event (fired at once)
    /// starts the handshake when passed to [`BlkFront::handle_watch`].
    pub fn new(p: &'p P, devid: u32, cfg: BlkfrontConfig) -> Result<Self, BlkfrontError> {
        let node = format!("device/vbd/{devid}");
        let no_backend = BlkfrontError::NoBackend { devid };
        let backend = xs_read_string(p, XBT_NIL, &format!("{node}/backend"))
            .map_err(|_| no_backend.clone())?;
        let backend = String::from(backend.trim_end_matches('\0'));
        let backend_ok = backend.starts_with('/')
            && backend.len() > 1
            && !backend.ends_with('/')
            && backend
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-@".contains(&b));
        let backend_id = xs_read_string(p, XBT_NIL, &format!("{node}/backend-id"))
            .ok()
            .and_then(|s| parse_u64(&s))
            .and_then(|v| domid_t::try_from(v).ok())
            .filter(|&d| d < DOMID_FIRST_RESERVED);
        let (true, Some(backend_id)) = (backend_ok, backend_id) else {
            return Err(no_backend);
        };
        let token = format!("blkfront/{devid}");
        p.xs_watch(&format!("{backend}/state"), &token)
            .map_err(plat)?;
        let mut cfg = cfg;
        cfg.max_ring_page_order = cfg.max_ring_page_order.min(4);
        cfg.poll_budget = cfg.poll_budget.min(MAX_POLL_BUDGET);
        cfg.max_queues = cfg.max_queues.clamp(1, MAX_QUEUES);
        cfg.max_indirect_segments = cfg.max_indirect_segments.clamp(
            BLKIF_MAX_SEGMENTS_PER_REQUEST as u32,
            MAX_INDIRECT_SEGMENTS as u32,
        );
        let capacity = blkif_ring_size(1 << cfg.max_ring_page_order) * cfg.max_queues as usize;
        Ok(BlkFront {
            p,
            cfg,
            devid,
            node,
            backend,
            backend_id,
            token,
            state: FrontState::WaitBackend,
            backend_state: None,
            failure: None,
            disk: None,
            persistent: false,
            max_segments: BLKIF_MAX_SEGMENTS_PER_REQUEST,
            queues: Vec::new(),
            ring_order: 0,
            ids: IdTable::new(capacity),
            pending: VecDeque::new(),
            free_data: Vec::new(),
            free_indirect: Vec::new(),
            deferred: Vec::new(),
            spare_bufs: Vec::new(),
            buffers: Vec::new(),
            completions: VecDeque::new(),
            next_tag: 1,
            next_seq: 0,
            rr: 0,
            poll: PollWindow::new(u64::try_from(cfg.poll_budget.as_nanos()).unwrap_or(u64::MAX)),
            stats: BlkfrontStats::default(),
        })
    }

    // ----------------------------------------------------------------------
    // Accessors.

    /// The device id (`<devid>` of `device/vbd/<devid>`).
    pub fn devid(&self) -> u32 {
        self.devid
    }

    /// The backend's directory.
    pub fn backend_path(&self) -> &str {
        &self.backend
    }

    /// The backend's domain.
    pub fn backend_id(&self) -> domid_t {
        self.backend_id
    }

    /// The watch token this device answers to.
    pub fn watch_token(&self) -> &str {
        &self.token
    }

    /// Where the handshake is.
    pub fn state(&self) -> FrontState {
        self.state
    }

    /// The backend's last seen state.
    pub fn backend_state(&self) -> Option<XenbusState> {
        self.backend_state
    }

    /// Why the device failed, if it did.
    pub fn failure(&self) -> Option<&FailReason> {
        self.failure.as_ref()
    }

    /// The disk, once connected (kept across reconnects).
    pub fn disk(&self) -> Option<&DiskInfo> {
        self.disk.as_ref()
    }

    /// Whether persistent grants are in use.
    pub fn persistent(&self) -> bool {
        self.persistent
    }

    /// The number of queues (rings) in use.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The ring page order in use.
    pub fn ring_page_order(&self) -> u32 {
        self.ring_order
    }

    /// The event channel ports of the queues (to poll or bind handlers).
    pub fn ports(&self) -> Vec<evtchn_port_t> {
        self.queues.iter().map(|q| q.port).collect()
    }

    /// The most bytes one read or write may carry.
    pub fn max_request_bytes(&self) -> usize {
        self.max_segments * PAGE_SIZE
    }

    /// Requests submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.ids.len()
    }

    /// Counters.
    pub fn stats(&self) -> BlkfrontStats {
        self.stats
    }

    /// Pages waiting for the backend to unmap them before they are freed.
    pub fn deferred_pages(&self) -> usize {
        self.deferred.iter().map(|d| d.pages.count()).sum()
    }

    // ----------------------------------------------------------------------
    // The xenbus state machine.

    /// Handles a fired watch: `Ok(false)` if the event is not this device's,
    /// else runs [`BlkFront::backend_changed`].
    pub fn handle_watch(&mut self, ev: &XsWatchEvent) -> Result<bool, BlkfrontError> {
        if ev.token != self.token {
            return Ok(false);
        }
        self.backend_changed()?;
        Ok(true)
    }

    /// Reads the backend's state and acts on it (level-triggered, so lost or
    /// coalesced watch events and skipped states are harmless):
    /// - InitWait, while waiting or closed: allocate and grant the rings and
    ///   event channels, write them, switch to Initialised; while connected
    ///   (the backend restarted without closing): tear down, then the same;
    /// - Connected, while Initialised: read the disk, switch to Connected,
    ///   issue the requests that were waiting;
    /// - Closing, Closed or a removed node, after offering rings: harvest
    ///   responses, tear the rings down (outstanding requests wait for the
    ///   next backend), switch to Closed.
    pub fn backend_changed(&mut self) -> Result<(), BlkfrontError> {
        self.retry_deferred();
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        let be = match self.p.xs_read(XBT_NIL, &format!("{}/state", self.backend)) {
            Ok(v) => match XenbusState::parse_bytes(trim_value(&v)) {
                Ok(s) => s,
                Err(_) => {
                    self.stats.bad_backend_states = self.stats.bad_backend_states.saturating_add(1);
                    return Ok(());
                }
            },
            Err(e) if e.is_xs_enoent() => XenbusState::Closed,
            Err(e) => return Err(plat(e)),
        };
        self.backend_state = Some(be);
        let r = match (be, self.state) {
            (XenbusState::InitWait, FrontState::WaitBackend | FrontState::Closed) => self.offer(),
            (XenbusState::InitWait, FrontState::Connected) => {
                self.disconnect()?;
                self.offer()
            }
            (XenbusState::Connected, FrontState::Initialised) => self.connect(),
            (
                XenbusState::Closing | XenbusState::Closed,
                FrontState::Initialised | FrontState::Connected,
            ) => {
                self.disconnect()?;
                self.state = FrontState::Closed;
                self.switch_state(XenbusState::Closed).map_err(plat)
            }
            _ => Ok(()),
        };
        self.retry_deferred();
        r
    }

    /// Writes our `state`, unless the toolstack removed the node (as
    /// Linux's `xenbus_switch_state`, which never recreates a removed
    /// device directory).
    fn switch_state(&self, s: XenbusState) -> Result<(), PlatformError> {
        let path = format!("{}/state", self.node);
        match self.p.xs_read(XBT_NIL, &path) {
            Ok(_) => {}
            Err(e) if e.is_xs_enoent() => return Ok(()),
            Err(e) => return Err(e),
        }
        self.p
            .xs_write(XBT_NIL, &path, s.as_xenstore_str().as_bytes())
    }

    fn read_backend(&self, key: &str) -> Option<String> {
        xs_read_string(self.p, XBT_NIL, &format!("{}/{key}", self.backend)).ok()
    }

    /// Allocates the rings and ports the backend's offer allows, writes
    /// them (one transaction) and switches to Initialised.
    fn offer(&mut self) -> Result<(), BlkfrontError> {
        let offer = match TransportOffer::parse(&mut |k| self.read_backend(k)) {
            Ok(o) => o,
            Err(e) => return Err(self.fail(FailReason::BadBackendInfo(e))),
        };
        let order = self.cfg.max_ring_page_order.min(offer.max_ring_page_order);
        let nq = self.cfg.max_queues.min(offer.max_queues).max(1) as usize;
        if let Err(e) = self.build_queues(order, nq) {
            return Err(self.fail(FailReason::Platform(e)));
        }
        self.ring_order = order;
        if let Err(e) = self.write_transport() {
            return Err(self.fail(FailReason::Platform(e)));
        }
        self.state = FrontState::Initialised;
        self.switch_state(XenbusState::Initialised).map_err(plat)
    }

    fn build_queues(&mut self, order: u32, nq: usize) -> Result<(), PlatformError> {
        let npages = 1usize << order;
        for _ in 0..nq {
            let pages = self.p.alloc_pages(npages)?;
            let mut grefs = Vec::with_capacity(npages);
            for i in 0..npages {
                let gfn = pages.gfn(i).ok_or(PlatformError::UnknownPages {
                    gfn: pages.first_gfn(),
                })?;
                match self.p.grant_access(self.backend_id, gfn, false) {
                    Ok(g) => grefs.push(g),
                    Err(e) => {
                        self.release_run(grefs, pages);
                        return Err(e);
                    }
                }
            }
            // SAFETY: `pages` is valid for reads and writes of its whole
            // length until it goes back to `free_pages`, which happens only
            // after this ring is turned back into its SharedRing and dropped
            // (`teardown_queues`, `Drop`); in this process the memory is
            // touched only through this one FrontRing, the backend's
            // BackRing being the other endpoint.
            let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) };
            let ring = match mem.and_then(FrontRing::init) {
                Ok(r) => r,
                Err(_) => {
                    self.release_run(grefs, pages);
                    return Err(PlatformError::Unsupported {
                        op: "a ring on the platform's pages",
                    });
                }
            };
            let port = match self.p.evtchn_alloc_unbound(self.backend_id) {
                Ok(port) => port,
                Err(e) => {
                    let _mem: SharedRing = ring.into_shared();
                    self.release_run(grefs, pages);
                    return Err(e);
                }
            };
            self.queues.push(Queue {
                ring,
                pages,
                grefs,
                port,
            });
        }
        Ok(())
    }

    /// Writes the transport nodes (Linux's `talk_to_blkback`), retrying a
    /// conflicting transaction.
    fn write_transport(&self) -> Result<(), PlatformError> {
        let mut last = PlatformError::Xenstore {
            errno: xen_front_platform::EAGAIN,
        };
        for _ in 0..XS_TX_ATTEMPTS {
            let tx = self.p.xs_transaction_start()?;
            if let Err(e) = self.write_transport_in(tx) {
                let _ = self.p.xs_transaction_end(tx, false);
                return Err(e);
            }
            match self.p.xs_transaction_end(tx, true) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_xs_eagain() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn write_transport_in(&self, tx: XsTransaction) -> Result<(), PlatformError> {
        let p = self.p;
        let n = &self.node;
        let w = |k: &str, v: &str| p.xs_write(tx, &format!("{n}/{k}"), v.as_bytes());
        // Remove what an earlier connection may have left.
        let mut stale = Vec::new();
        stale.extend([
            String::from(keys::RING_REF),
            String::from(keys::EVENT_CHANNEL),
            String::from(keys::RING_PAGE_ORDER),
            String::from(keys::MULTI_QUEUE_NUM_QUEUES),
        ]);
        for i in 0..16 {
            stale.push(format!("{}{i}", keys::RING_REF));
            stale.push(format!("{}{i}", keys::QUEUE_PREFIX));
        }
        for k in &stale {
            match p.xs_rm(tx, &format!("{n}/{k}")) {
                Ok(()) => {}
                Err(e) if e.is_xs_enoent() => {}
                Err(e) => return Err(e),
            }
        }
        let write_queue = |prefix: &str, q: &Queue| -> Result<(), PlatformError> {
            if q.grefs.len() == 1 {
                w(
                    &format!("{prefix}{}", keys::RING_REF),
                    &format!("{}", q.grefs[0]),
                )?;
            } else {
                for (i, g) in q.grefs.iter().enumerate() {
                    w(&format!("{prefix}{}{i}", keys::RING_REF), &format!("{g}"))?;
                }
            }
            w(
                &format!("{prefix}{}", keys::EVENT_CHANNEL),
                &format!("{}", q.port),
            )
        };
        if self.ring_order > 0 {
            w(keys::RING_PAGE_ORDER, &format!("{}", self.ring_order))?;
        }
        if self.queues.len() == 1 {
            write_queue("", &self.queues[0])?;
        } else {
            w(
                keys::MULTI_QUEUE_NUM_QUEUES,
                &format!("{}", self.queues.len()),
            )?;
            for (i, q) in self.queues.iter().enumerate() {
                write_queue(&format!("{}{i}/", keys::QUEUE_PREFIX), q)?;
            }
        }
        w(keys::PROTOCOL, XEN_IO_PROTO_ABI_NATIVE)?;
        w(
            keys::FEATURE_PERSISTENT,
            if self.cfg.persistent_grants { "1" } else { "0" },
        )
    }

    /// The backend is Connected: read the disk, go Connected, issue what
    /// waits.
    fn connect(&mut self) -> Result<(), BlkfrontError> {
        let disk = match DiskInfo::parse(&mut |k| self.read_backend(k)) {
            Ok(d) => d,
            Err(e) => return Err(self.fail(FailReason::BadBackendInfo(e))),
        };
        self.persistent = self.cfg.persistent_grants && disk.persistent;
        self.max_segments = disk.segments_per_request(self.cfg.max_indirect_segments);
        self.disk = Some(disk);
        self.state = FrontState::Connected;
        self.switch_state(XenbusState::Connected).map_err(plat)?;
        self.kick()
    }

    /// The backend went away: harvest what it answered, put every request
    /// that was on a ring back in line (with a new id), revoke every grant
    /// (deferring those still mapped), tear the rings down.
    fn disconnect(&mut self) -> Result<(), BlkfrontError> {
        if !self.queues.is_empty() && self.state == FrontState::Connected {
            self.process_responses()?;
        }
        let mut on_ring: Vec<(u64, u64)> = Vec::new();
        for id in self.ids.ids() {
            if let Some(s) = self.ids.get_mut(id) {
                if s.queue.take().is_some() {
                    on_ring.push((s.seq, id));
                }
            }
        }
        on_ring.sort_unstable();
        let mut requeued = VecDeque::with_capacity(on_ring.len() + self.pending.len());
        for (_, id) in on_ring {
            if let Ok(new) = self.ids.renew(id) {
                requeued.push_back(new);
                self.stats.reissued = self.stats.reissued.saturating_add(1);
            }
        }
        requeued.extend(self.pending.drain(..));
        self.pending = requeued;
        // Revoke the grants of every outstanding request's pages.
        for id in self.ids.ids() {
            let Some(mut s) = self.ids.get_mut(id).map(|s| {
                (
                    core::mem::take(&mut s.data),
                    core::mem::take(&mut s.indirect),
                )
            }) else {
                continue;
            };
            s.0 = self.revoke_keep(s.0);
            s.1 = self.revoke_keep(s.1);
            if let Some(sh) = self.ids.get_mut(id) {
                sh.data = s.0;
                sh.indirect = s.1;
            }
        }
        let data = core::mem::take(&mut self.free_data);
        let ind = core::mem::take(&mut self.free_indirect);
        self.free_data = self.revoke_keep(data);
        self.free_indirect = self.revoke_keep(ind);
        self.teardown_queues();
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
        Ok(())
    }

    /// Revokes the grants of `pages`; a page the backend still maps is
    /// replaced by a fresh copy and deferred.
    fn revoke_keep(&mut self, pages: Vec<DataPage>) -> Vec<DataPage> {
        let mut out = Vec::with_capacity(pages.len());
        for mut dp in pages {
            let Some((g, _)) = dp.grant else {
                out.push(dp);
                continue;
            };
            match self.p.end_access(g) {
                Ok(()) => {
                    dp.grant = None;
                    out.push(dp);
                }
                Err(PlatformError::GrantInUse { .. }) => {
                    // Copy the contents to a page the backend cannot see.
                    let mut buf = alloc::vec![0u8; PAGE_SIZE];
                    let copy = dp.page.read(0, &mut buf).ok().and_then(|()| {
                        let fresh = self.p.alloc_pages(1).ok()?;
                        fresh.write(0, &buf).ok()?;
                        Some(fresh)
                    });
                    self.deferred.push(Deferred {
                        grefs: alloc::vec![g],
                        pages: dp.page,
                    });
                    if let Some(page) = copy {
                        out.push(DataPage { page, grant: None });
                    }
                    // Without a copy the request loses a page: its length
                    // check at re-issue fails and it completes with an error.
                }
                // Not ours any more (cannot happen with a correct platform):
                // forget the grant, keep the page.
                Err(_) => {
                    dp.grant = None;
                    out.push(dp);
                }
            }
        }
        out
    }

    fn teardown_queues(&mut self) {
        let queues = core::mem::take(&mut self.queues);
        for q in queues {
            // The ring no longer refers to the pages once it is dropped.
            let _mem: SharedRing = q.ring.into_shared();
            let _ = self.p.evtchn_close(q.port);
            self.release_run(q.grefs, q.pages);
        }
    }

    /// Revokes `grefs` and frees `pages`, or defers both while the backend
    /// maps any of them.
    fn release_run(&mut self, grefs: Vec<grant_ref_t>, pages: SharedPages) {
        let mut left = Vec::new();
        for g in grefs {
            if let Err(PlatformError::GrantInUse { .. }) = self.p.end_access(g) {
                left.push(g);
            }
        }
        if left.is_empty() {
            // A platform refusal leaks the pages, which is safe.
            let _ = self.p.free_pages(pages);
        } else {
            self.deferred.push(Deferred { grefs: left, pages });
        }
    }

    /// Retries the deferred revocations; frees what is no longer mapped.
    fn retry_deferred(&mut self) {
        let list = core::mem::take(&mut self.deferred);
        for d in list {
            self.release_run(d.grefs, d.pages);
        }
    }

    /// Marks the device failed: Closing, every outstanding request completed
    /// with an error, grants revoked (or deferred), rings torn down.
    fn fail(&mut self, reason: FailReason) -> BlkfrontError {
        if let Some(f) = &self.failure {
            return BlkfrontError::Failed(f.clone());
        }
        self.failure = Some(reason.clone());
        self.state = FrontState::Failed;
        let _ = self.switch_state(XenbusState::Closing);
        let mut ids = self.ids.ids();
        ids.sort_unstable_by_key(|&id| self.ids.get(id).map_or(0, |s| s.seq));
        for id in ids {
            if let Ok(s) = self.ids.remove(id) {
                self.completions.push_back(Completion {
                    tag: RequestTag(s.tag),
                    kind: s.kind,
                    status: BlkStatus::Error,
                    data: Vec::new(),
                });
                self.stats.completed = self.stats.completed.saturating_add(1);
                for dp in s.data.into_iter().chain(s.indirect) {
                    self.drop_page(dp);
                }
            }
        }
        self.pending.clear();
        let mut pool: Vec<DataPage> = self
            .free_data
            .drain(..)
            .chain(self.free_indirect.drain(..))
            .collect();
        // Registered buffers lose their pages (and grants): `buffer_*`
        // refuse them from now on; `free_buffer` still unregisters them.
        for b in self.buffers.iter_mut().flatten() {
            pool.append(&mut b.pages);
            b.busy = false;
        }
        for dp in pool {
            self.drop_page(dp);
        }
        self.teardown_queues();
        BlkfrontError::Failed(reason)
    }

    /// Revokes (or defers) a page's grant and frees it.
    fn drop_page(&mut self, dp: DataPage) {
        match dp.grant {
            Some((g, _)) => self.release_run(alloc::vec![g], dp.page),
            None => {
                let _ = self.p.free_pages(dp.page);
            }
        }
    }

    // ----------------------------------------------------------------------
    // Submission.

    fn check_usable(&self) -> Result<&DiskInfo, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        self.disk.as_ref().ok_or(BlkfrontError::NotConnected)
    }

    fn check_range(&self, sector: u64, len: usize, write: bool) -> Result<(), BlkfrontError> {
        let disk = self.check_usable()?;
        let ss = disk.sector_size;
        let misaligned = BlkfrontError::Misaligned {
            sector,
            len,
            sector_size: ss,
        };
        if len == 0 || len % ss as usize != 0 || sector % (u64::from(ss) / SECTOR_BYTES as u64) != 0
        {
            return Err(misaligned);
        }
        let max = self.max_request_bytes();
        if len > max {
            return Err(BlkfrontError::TooLarge { len, max });
        }
        let count = (len / SECTOR_BYTES) as u64;
        let size = disk.sectors_512();
        match sector.checked_add(count) {
            Some(end) if end <= size => {}
            _ => {
                return Err(BlkfrontError::OutOfRange {
                    sector,
                    count,
                    size,
                })
            }
        }
        if write && disk.read_only() {
            return Err(BlkfrontError::ReadOnly);
        }
        Ok(())
    }

    fn take_page(&mut self, indirect: bool) -> Result<DataPage, PlatformError> {
        let pool = if indirect {
            &mut self.free_indirect
        } else {
            &mut self.free_data
        };
        match pool.pop() {
            Some(dp) => Ok(dp),
            None => Ok(DataPage {
                page: self.p.alloc_pages(1)?,
                grant: None,
            }),
        }
    }

    fn enqueue(&mut self, shadow: Shadow) -> Result<RequestTag, BlkfrontError> {
        self.enqueue_kept(shadow).map_err(|(e, s)| {
            for dp in s.into_iter().flatten() {
                self.recycle(dp, false);
            }
            e
        })
    }

    /// [`Self::enqueue`] that hands the data pages back when no id is free
    /// (`Some`); `None` when the request was accepted but issuing failed.
    fn enqueue_kept(
        &mut self,
        mut shadow: Shadow,
    ) -> Result<RequestTag, (BlkfrontError, Option<Vec<DataPage>>)> {
        let tag = self.next_tag;
        shadow.tag = tag;
        shadow.seq = self.next_seq;
        match self.ids.insert(shadow) {
            Ok(id) => {
                self.next_tag += 1;
                self.next_seq += 1;
                self.stats.submitted = self.stats.submitted.saturating_add(1);
                self.pending.push_back(id);
                self.kick().map_err(|e| (e, None))?;
                Ok(RequestTag(tag))
            }
            Err(s) => Err((BlkfrontError::Busy, Some(s.data))),
        }
    }

    fn new_shadow(kind: RequestKind, sector: u64, len: u64) -> Shadow {
        Shadow {
            tag: 0,
            seq: 0,
            kind,
            sector,
            len,
            secure: false,
            data: Vec::new(),
            indirect: Vec::new(),
            queue: None,
            buffer: None,
            sent_op: 0,
            inner_op: 0,
        }
    }

    fn data_pages(
        &mut self,
        len: usize,
        src: Option<&[u8]>,
    ) -> Result<Vec<DataPage>, BlkfrontError> {
        let n = len.div_ceil(PAGE_SIZE);
        let mut pages = Vec::with_capacity(n);
        for i in 0..n {
            let dp = match self.take_page(false) {
                Ok(dp) => dp,
                Err(e) => {
                    for dp in pages {
                        self.recycle(dp, false);
                    }
                    return Err(plat(e));
                }
            };
            if let Some(src) = src {
                let chunk = &src[i * PAGE_SIZE..((i + 1) * PAGE_SIZE).min(len)];
                // In bounds: chunk.len() <= PAGE_SIZE.
                let _ = dp.page.write(0, chunk);
            }
            pages.push(dp);
        }
        Ok(pages)
    }

    /// Submits a read of `len` bytes at 512-byte sector `sector` (both
    /// aligned to the disk's sector size, `len <=`
    /// [`BlkFront::max_request_bytes`]). The data comes in the
    /// [`Completion`].
    pub fn submit_read(&mut self, sector: u64, len: usize) -> Result<RequestTag, BlkfrontError> {
        self.check_range(sector, len, false)?;
        let mut s = Self::new_shadow(RequestKind::Read, sector, len as u64);
        s.data = self.data_pages(len, None)?;
        self.enqueue(s)
    }

    /// Submits a write of `data` at 512-byte sector `sector` (the data is
    /// copied; same rules as [`BlkFront::submit_read`]).
    pub fn submit_write(&mut self, sector: u64, data: &[u8]) -> Result<RequestTag, BlkfrontError> {
        self.check_range(sector, data.len(), true)?;
        let mut s = Self::new_shadow(RequestKind::Write, sector, data.len() as u64);
        s.data = self.data_pages(data.len(), Some(data))?;
        self.enqueue(s)
    }

    /// Submits a cache flush (`BLKIF_OP_FLUSH_DISKCACHE`, or a
    /// `BLKIF_OP_WRITE_BARRIER` without data when only `feature-barrier` is
    /// offered). It completes once earlier writes are durable.
    pub fn flush(&mut self) -> Result<RequestTag, BlkfrontError> {
        if self.check_usable()?.flush == FlushOp::None {
            return Err(BlkfrontError::Unsupported { op: "flush" });
        }
        let s = Self::new_shadow(RequestKind::Flush, 0, 0);
        self.enqueue(s)
    }

    /// Submits a discard of `nr_sectors` 512-byte sectors at `sector`
    /// (`secure`: `BLKIF_DISCARD_SECURE`, only if the backend offers it).
    pub fn discard(
        &mut self,
        sector: u64,
        nr_sectors: u64,
        secure: bool,
    ) -> Result<RequestTag, BlkfrontError> {
        let disk = *self.check_usable()?;
        let Some(d) = disk.discard else {
            return Err(BlkfrontError::Unsupported { op: "discard" });
        };
        if secure && !d.secure {
            return Err(BlkfrontError::Unsupported {
                op: "secure discard",
            });
        }
        let size = disk.sectors_512();
        match sector.checked_add(nr_sectors) {
            Some(end) if end <= size && nr_sectors > 0 => {}
            _ => {
                return Err(BlkfrontError::OutOfRange {
                    sector,
                    count: nr_sectors,
                    size,
                })
            }
        }
        if disk.read_only() {
            return Err(BlkfrontError::ReadOnly);
        }
        let mut s = Self::new_shadow(RequestKind::Discard, sector, nr_sectors);
        s.secure = secure;
        self.enqueue(s)
    }

    // ----------------------------------------------------------------------
    // Issuing.

    /// A queue with a free slot, round-robin.
    fn pick_queue(&mut self) -> Option<usize> {
        let n = self.queues.len();
        for k in 0..n {
            let q = (self.rr + k) % n;
            if !self.queues[q].ring.is_full() {
                self.rr = (q + 1) % n;
                return Some(q);
            }
        }
        None
    }

    /// Moves waiting requests onto the rings while there is room, then
    /// publishes and notifies.
    fn kick(&mut self) -> Result<(), BlkfrontError> {
        if self.state != FrontState::Connected {
            return Ok(());
        }
        // Queues pushed to (at most MAX_QUEUES = 16, a bit each).
        let mut touched: u32 = 0;
        let budget = self.pending.len();
        for _ in 0..budget {
            let Some(&id) = self.pending.front() else {
                break;
            };
            let Some(q) = self.pick_queue() else {
                break;
            };
            match self.build(id) {
                Ok(slot) => {
                    if self.queues[q].ring.push_request(&slot).is_err() {
                        // pick_queue saw a free slot; keep the request.
                        break;
                    }
                    self.pending.pop_front();
                    if let Some(s) = self.ids.get_mut(id) {
                        s.queue = Some(q);
                    }
                    touched |= 1 << q;
                    self.stats.pushed = self.stats.pushed.saturating_add(1);
                }
                Err(BuildError::Unfit) => {
                    self.pending.pop_front();
                    self.finish(id, BlkStatus::Error)?;
                }
                Err(BuildError::Platform(e)) => {
                    let idle = self
                        .queues
                        .iter()
                        .all(|q| q.ring.free_requests() == q.ring.size());
                    if idle {
                        // Nothing in flight will free grants or pages.
                        self.pending.pop_front();
                        self.finish(id, BlkStatus::Error)?;
                        let _ = e;
                    } else {
                        break;
                    }
                }
            }
        }
        for q in 0..self.queues.len() {
            if touched & (1 << q) != 0 && self.queues[q].ring.push_requests_and_check_notify() {
                self.p.evtchn_notify(self.queues[q].port).map_err(plat)?;
                self.stats.notifications = self.stats.notifications.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Builds the ring request of outstanding request `id`, granting its
    /// pages (and filling its indirect pages) as needed.
    fn build(&mut self, id: u64) -> Result<ReqSlot, BuildError> {
        let disk = self.disk.ok_or(BuildError::Unfit)?;
        let p = self.p;
        let be = self.backend_id;
        let persistent = self.persistent;
        let max_segments = self.max_segments;
        let handle = self.devid as blkif_vdev_t;
        let (kind, sector, len, secure, mut data, mut indirect) = {
            let s = self.ids.get_mut(id).ok_or(BuildError::Unfit)?;
            (
                s.kind,
                s.sector,
                s.len,
                s.secure,
                core::mem::take(&mut s.data),
                core::mem::take(&mut s.indirect),
            )
        };
        let mut built = || -> Result<(ReqSlot, u8, u8), BuildError> {
            match kind {
                RequestKind::Read | RequestKind::Write => {
                    let op = if kind == RequestKind::Read {
                        BLKIF_OP_READ
                    } else {
                        BLKIF_OP_WRITE
                    };
                    let len = usize::try_from(len).map_err(|_| BuildError::Unfit)?;
                    let mut segs = data_segments(len).map_err(|_| BuildError::Unfit)?;
                    if segs.len() != data.len() || segs.len() > max_segments {
                        return Err(BuildError::Unfit);
                    }
                    // Persistent grants are always writable (Linux); else a
                    // write's pages are read-only to the backend.
                    let readonly = !persistent && op == BLKIF_OP_WRITE;
                    for (seg, dp) in segs.iter_mut().zip(data.iter_mut()) {
                        seg.gref = ensure_grant(p, be, dp, readonly, &mut self.stats)?;
                    }
                    if segs.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
                        let slot = encode_rw(op, handle, id, sector, &segs)
                            .map_err(|_| BuildError::Unfit)?;
                        return Ok((slot, op, op));
                    }
                    let need = indirect_pages_needed(segs.len());
                    while indirect.len() < need {
                        let dp = match self.free_indirect.pop() {
                            Some(dp) => dp,
                            None => DataPage {
                                page: p.alloc_pages(1)?,
                                grant: None,
                            },
                        };
                        indirect.push(dp);
                    }
                    let mut grefs = Vec::with_capacity(need);
                    for (i, dp) in indirect.iter_mut().enumerate() {
                        let bytes = indirect_page_bytes(&segs, i);
                        dp.page.write(0, &bytes).map_err(|_| BuildError::Unfit)?;
                        grefs.push(ensure_grant(p, be, dp, true, &mut self.stats)?);
                    }
                    let slot = encode_indirect(op, handle, id, sector, segs.len(), &grefs)
                        .map_err(|_| BuildError::Unfit)?;
                    self.stats.indirect = self.stats.indirect.saturating_add(1);
                    Ok((slot, xen_abi::io::blkif::BLKIF_OP_INDIRECT, op))
                }
                RequestKind::Flush => {
                    let op = match disk.flush {
                        FlushOp::FlushDiskcache => BLKIF_OP_FLUSH_DISKCACHE,
                        FlushOp::Barrier => BLKIF_OP_WRITE_BARRIER,
                        FlushOp::None => return Err(BuildError::Unfit),
                    };
                    Ok((encode_no_data(op, handle, id), op, op))
                }
                RequestKind::Discard => {
                    if disk.discard.is_none() {
                        return Err(BuildError::Unfit);
                    }
                    let op = xen_abi::io::blkif::BLKIF_OP_DISCARD;
                    Ok((encode_discard(handle, id, sector, len, secure), op, op))
                }
            }
        };
        let r = built();
        if let Some(s) = self.ids.get_mut(id) {
            s.data = data;
            s.indirect = indirect;
            if let Ok((_, sent, inner)) = r {
                s.sent_op = sent;
                s.inner_op = inner;
            }
        }
        r.map(|(slot, _, _)| slot)
    }

    // ----------------------------------------------------------------------
    // Completion.

    /// Hands a [`Completion::data`] buffer back for reuse by later reads
    /// (saves allocating and faulting in a fresh one per completion). Keeps
    /// at most one buffer per ring slot, none larger than a request can be.
    pub fn give_back_buffer(&mut self, buf: Vec<u8>) {
        let slots = self
            .queues
            .iter()
            .map(|q| q.ring.size() as usize)
            .fold(0usize, usize::saturating_add);
        let largest = self.max_segments.saturating_mul(PAGE_SIZE);
        if self.spare_bufs.len() < slots && buf.capacity() > 0 && buf.capacity() <= largest {
            self.spare_bufs.push(buf);
        }
    }

    // ----------------------------------------------------------------------
    // Registered buffers (zero copy).

    /// Registers a buffer of `len` bytes (a multiple of 512, at most
    /// [`MAX_BUFFER_BYTES`]): whole frontend-owned pages, taken from the
    /// page pool, that keep their grants from request to request when
    /// persistent grants are in use. Read into it with
    /// [`BlkFront::submit_read_buffer`] and write from it with
    /// [`BlkFront::submit_write_buffer`]: the backend moves the data
    /// straight between the disk and these pages, with no copy in the
    /// frontend (io_uring's registered buffers, or Linux blkfront granting
    /// the bio's own pages). The caller reaches the bytes with
    /// [`BlkFront::buffer_read`] / [`BlkFront::buffer_write`] while no
    /// request uses the buffer.
    pub fn alloc_buffer(&mut self, len: usize) -> Result<BufferId, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        if len == 0 || len % SECTOR_BYTES != 0 || len > MAX_BUFFER_BYTES {
            return Err(BlkfrontError::BadBuffer);
        }
        let pages = self.data_pages(len, None)?;
        let buf = IoBuffer {
            pages,
            len,
            busy: false,
        };
        let id = match self.buffers.iter().position(Option::is_none) {
            Some(i) => {
                self.buffers[i] = Some(buf);
                i
            }
            None => {
                self.buffers.push(Some(buf));
                self.buffers.len() - 1
            }
        };
        u32::try_from(id)
            .map(BufferId)
            .map_err(|_| BlkfrontError::BadBuffer)
    }

    /// Unregisters a buffer that no request uses; its pages go back to the
    /// pool.
    pub fn free_buffer(&mut self, id: BufferId) -> Result<(), BlkfrontError> {
        let slot = self
            .buffers
            .get_mut(id.0 as usize)
            .ok_or(BlkfrontError::BadBuffer)?;
        match slot {
            Some(b) if b.busy => return Err(BlkfrontError::BufferBusy),
            Some(_) => {}
            None => return Err(BlkfrontError::BadBuffer),
        }
        let Some(b) = slot.take() else {
            return Err(BlkfrontError::BadBuffer);
        };
        for dp in b.pages {
            self.recycle(dp, false);
        }
        Ok(())
    }

    /// An idle, intact buffer.
    fn idle_buffer(&self, id: BufferId) -> Result<&IoBuffer, BlkfrontError> {
        let b = self
            .buffers
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(BlkfrontError::BadBuffer)?;
        if b.busy {
            return Err(BlkfrontError::BufferBusy);
        }
        if b.pages.len() != b.len.div_ceil(PAGE_SIZE) {
            // Lost pages to a failure or a backend that kept a grant.
            return Err(BlkfrontError::BadBuffer);
        }
        Ok(b)
    }

    /// The length of a registered buffer.
    pub fn buffer_len(&self, id: BufferId) -> Result<usize, BlkfrontError> {
        self.buffers
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .map(|b| b.len)
            .ok_or(BlkfrontError::BadBuffer)
    }

    /// Copies `out.len()` bytes at `offset` out of an idle buffer.
    pub fn buffer_read(
        &self,
        id: BufferId,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), BlkfrontError> {
        let b = self.idle_buffer(id)?;
        buffer_chunks(b, offset, out.len(), |dp, at, range| {
            dp.page
                .read(at, &mut out[range])
                .map_err(|_| BlkfrontError::BadBuffer)
        })
    }

    /// Copies `data` into an idle buffer at `offset`.
    pub fn buffer_write(
        &self,
        id: BufferId,
        offset: usize,
        data: &[u8],
    ) -> Result<(), BlkfrontError> {
        let b = self.idle_buffer(id)?;
        buffer_chunks(b, offset, data.len(), |dp, at, range| {
            dp.page
                .write(at, &data[range])
                .map_err(|_| BlkfrontError::BadBuffer)
        })
    }

    /// Submits a read of the whole buffer `id` at 512-byte sector `sector`
    /// (same rules as [`BlkFront::submit_read`]); the data lands in the
    /// buffer's pages. The buffer is busy until the request completes.
    pub fn submit_read_buffer(
        &mut self,
        sector: u64,
        id: BufferId,
    ) -> Result<RequestTag, BlkfrontError> {
        self.submit_buffer(RequestKind::Read, sector, id)
    }

    /// Submits a write of the whole buffer `id` at `sector` (no copy; the
    /// buffer is busy until the request completes).
    pub fn submit_write_buffer(
        &mut self,
        sector: u64,
        id: BufferId,
    ) -> Result<RequestTag, BlkfrontError> {
        self.submit_buffer(RequestKind::Write, sector, id)
    }

    fn submit_buffer(
        &mut self,
        kind: RequestKind,
        sector: u64,
        id: BufferId,
    ) -> Result<RequestTag, BlkfrontError> {
        let len = self.idle_buffer(id)?.len;
        self.check_range(sector, len, kind == RequestKind::Write)?;
        let Some(b) = self.buffers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return Err(BlkfrontError::BadBuffer);
        };
        let mut s = Self::new_shadow(kind, sector, len as u64);
        s.data = core::mem::take(&mut b.pages);
        s.buffer = Some(id.0);
        b.busy = true;
        match self.enqueue_kept(s) {
            Ok(tag) => Ok(tag),
            Err((e, Some(pages))) => {
                if let Some(b) = self.buffers.get_mut(id.0 as usize).and_then(Option::as_mut) {
                    b.pages = pages;
                    b.busy = false;
                }
                Err(e)
            }
            Err((e, None)) => Err(e),
        }
    }

    /// Takes the responses on every ring (validated: an overflowing
    /// producer index or an unknown id fails the device), issues waiting
    /// requests into the freed slots, and returns the finished requests.
    ///
    /// On [`BlkfrontError::Failed`] the requests that were outstanding are
    /// completed with [`BlkStatus::Error`]: collect them with
    /// [`BlkFront::take_completions`].
    pub fn poll_completions(&mut self) -> Result<Vec<Completion>, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        for q in 0..self.queues.len() {
            let _ = self.p.evtchn_clear(self.queues[q].port);
        }
        if self.state == FrontState::Connected {
            self.process_responses()?;
            self.kick()?;
        }
        Ok(self.take_completions())
    }

    /// The finished requests collected so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        self.completions.drain(..).collect()
    }

    fn process_responses(&mut self) -> Result<(), BlkfrontError> {
        for q in 0..self.queues.len() {
            // Each response answers a published request, so at most a ring's
            // worth arrive per pass; the bound only guards the loop.
            let budget = self.queues[q].ring.size() as usize + 1;
            for _ in 0..budget {
                let rsp = match self.queues[q].ring.take_response() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
                };
                self.complete_one(q, &rsp)?;
            }
        }
        Ok(())
    }

    fn complete_one(&mut self, q: usize, slot: &RspSlot) -> Result<(), BlkfrontError> {
        let rsp = decode_response(slot);
        let id = rsp.id;
        let Some(s) = self.ids.get(id).filter(|s| s.queue == Some(q)) else {
            return Err(self.fail(FailReason::UnknownResponseId { id }));
        };
        if !response_op_matches(s.sent_op, s.inner_op, rsp.operation) {
            return Err(self.fail(FailReason::WrongResponseOp {
                id,
                op: rsp.operation,
            }));
        }
        let status = BlkStatus::from_wire(rsp.status);
        if status == BlkStatus::NotSupported && s.kind == RequestKind::Flush {
            // As Linux: stop offering flushes the backend refuses.
            if let Some(d) = self.disk.as_mut() {
                d.flush = FlushOp::None;
            }
        }
        self.finish(id, status)
    }

    /// Ends request `id` with `status`: pages back to the pool (revoking
    /// non-persistent grants), data copied out of a successful read.
    fn finish(&mut self, id: u64, status: BlkStatus) -> Result<(), BlkfrontError> {
        let Ok(s) = self.ids.remove(id) else {
            return Ok(());
        };
        let mut kept = false;
        let mut data = Vec::new();
        if let Some(b) = s.buffer {
            // A registered buffer: the data stays in its pages.
            let mut pages = Vec::with_capacity(s.data.len());
            for dp in s.data {
                match self.revoke_unless_persistent(dp) {
                    Some(dp) => pages.push(dp),
                    None => kept = true,
                }
            }
            for dp in s.indirect {
                kept |= !self.recycle(dp, true);
            }
            match self.buffers.get_mut(b as usize).and_then(Option::as_mut) {
                // A page deferred above leaves the buffer short: it is
                // unusable (`buffer_*` refuse it) and only worth freeing.
                Some(buf) => {
                    buf.pages = pages;
                    buf.busy = false;
                }
                None => {
                    for dp in pages {
                        self.drop_page(dp);
                    }
                }
            }
            self.completions.push_back(Completion {
                tag: RequestTag(s.tag),
                kind: s.kind,
                status,
                data,
            });
            self.stats.completed = self.stats.completed.saturating_add(1);
            if kept {
                return Err(self.fail(FailReason::BackendKeptGrant));
            }
            return Ok(());
        }
        if s.kind == RequestKind::Read && status == BlkStatus::Okay {
            data = self.spare_bufs.pop().unwrap_or_default();
            // Every byte is overwritten below: a reused buffer of the right
            // size is not zeroed again (resize only fills what it adds).
            data.truncate(s.len as usize);
            data.resize(s.len as usize, 0);
        }
        for (i, dp) in s.data.into_iter().enumerate() {
            let start = i.saturating_mul(PAGE_SIZE);
            let end = start.saturating_add(PAGE_SIZE).min(data.len());
            if let Some(chunk) = data.get_mut(start..end) {
                let _ = dp.page.read(0, chunk);
            }
            kept |= !self.recycle(dp, false);
        }
        for dp in s.indirect {
            kept |= !self.recycle(dp, true);
        }
        self.completions.push_back(Completion {
            tag: RequestTag(s.tag),
            kind: s.kind,
            status,
            data,
        });
        self.stats.completed = self.stats.completed.saturating_add(1);
        if kept {
            return Err(self.fail(FailReason::BackendKeptGrant));
        }
        Ok(())
    }

    /// Returns a page to its pool. Without persistent grants its grant is
    /// revoked first; `false` if the backend still maps it (the page is
    /// deferred).
    fn recycle(&mut self, dp: DataPage, indirect: bool) -> bool {
        let Some(dp) = self.revoke_unless_persistent(dp) else {
            return false;
        };
        // Keep at least what the rings can have in flight, so a full queue
        // of the largest requests recycles its pages instead of freeing and
        // allocating (and zeroing) them again.
        let in_flight = self
            .queues
            .iter()
            .map(|q| q.ring.size() as usize)
            .fold(0usize, usize::saturating_add)
            .saturating_mul(self.max_segments);
        let cap = self.cfg.max_cached_pages.max(in_flight);
        let pool = if indirect {
            &mut self.free_indirect
        } else {
            &mut self.free_data
        };
        if pool.len() < cap {
            pool.push(dp);
        } else {
            self.drop_page(dp);
        }
        true
    }

    /// Without persistent grants, revokes the page's grant. `None` if the
    /// backend still maps it: the page went to `deferred`.
    fn revoke_unless_persistent(&mut self, mut dp: DataPage) -> Option<DataPage> {
        if self.persistent {
            return Some(dp);
        }
        let Some((g, _)) = dp.grant else {
            return Some(dp);
        };
        match self.p.end_access(g) {
            Ok(()) => dp.grant = None,
            Err(PlatformError::GrantInUse { .. }) => {
                self.deferred.push(Deferred {
                    grefs: alloc::vec![g],
                    pages: dp.page,
                });
                return None;
            }
            // Not ours any more (cannot happen with a correct platform).
            Err(_) => dp.grant = None,
        }
        Some(dp)
    }

    /// Sleeps until a queue's event channel fires or `timeout` passes
    /// (`None`: forever). Returns at once with `true` when completions are
    /// ready or responses wait on a ring (after the final check that arms
    /// `rsp_event`), `false` on timeout.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        if !self.completions.is_empty() {
            return Ok(true);
        }
        let window = Duration::from_nanos(self.poll.budget_ns());
        let budget = timeout.map_or(window, |t| t.min(window));
        match self.poll_rings(budget) {
            Ok(true) => {
                self.poll.hit();
                return Ok(true);
            }
            // Only a poll of the whole window says polling does not pay.
            Ok(false) if !budget.is_zero() && budget == window => self.poll.miss(),
            Ok(false) => {}
            Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
        }
        for q in 0..self.queues.len() {
            match self.queues[q].ring.final_check_for_responses() {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
            }
        }
        let ports = self.ports();
        if ports.is_empty() {
            return Ok(false);
        }
        let slept = self.p.monotonic_ns();
        let fired = self.p.evtchn_poll(&ports, timeout).map_err(plat)?;
        if fired {
            self.poll.woke(self.p.monotonic_ns().saturating_sub(slept));
        }
        Ok(fired)
    }
}

impl<P: Platform + ?Sized> BlkFront<'_, P> {
    /// Busy-polls the rings' `rsp_prod` (validated, not armed) for up to
    /// `budget`; `true` as soon as a response is there.
    fn poll_rings(&self, budget: Duration) -> Result<bool, xen_ring::RingError> {
        if budget.is_zero() || self.queues.is_empty() {
            return Ok(false);
        }
        let limit = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        // A round takes well over 4 ns (an atomic load per ring and a
        // spin-loop hint), so this bound ends the loop even on a platform
        // whose clock does not move.
        let max_rounds = (limit / 4).max(64);
        let start = self.p.monotonic_ns();
        let mut round: u64 = 0;
        loop {
            for q in &self.queues {
                if q.ring.has_unconsumed_responses()? > 0 {
                    return Ok(true);
                }
            }
            round += 1;
            if round >= max_rounds
                || (round % 64 == 0 && self.p.monotonic_ns().saturating_sub(start) >= limit)
            {
                return Ok(false);
            }
            core::hint::spin_loop();
        }
    }
}

enum BuildError {
    /// The request cannot be expressed on this connection (the backend
    /// lost a feature it needs): it completes with an error.
    Unfit,
    /// Out of grants or pages: retry when something completes.
    Platform(PlatformError),
}

impl From<PlatformError> for BuildError {
    fn from(e: PlatformError) -> Self {
        BuildError::Platform(e)
    }
}

/// A xenstore value without trailing NULs or whitespace.
fn trim_value(v: &[u8]) -> &[u8] {
    let mut end = v.len();
    while end > 0 && (v[end - 1] == 0 || v[end - 1].is_ascii_whitespace()) {
        end -= 1;
    }
    &v[..end]
}

impl<P: Platform + ?Sized> Drop for BlkFront<'_, P> {
    /// Best effort: unwatch, revoke and free what the backend no longer
    /// maps, close the ports. Pages still mapped are leaked (never freed
    /// while a peer may see them).
    fn drop(&mut self) {
        let _ = self
            .p
            .xs_unwatch(&format!("{}/state", self.backend), &self.token);
        for id in self.ids.ids() {
            if let Ok(s) = self.ids.remove(id) {
                for dp in s.data.into_iter().chain(s.indirect) {
                    self.drop_page(dp);
                }
            }
        }
        let mut pool: Vec<DataPage> = self
            .free_data
            .drain(..)
            .chain(self.free_indirect.drain(..))
            .collect();
        for b in self.buffers.iter_mut().flatten() {
            pool.append(&mut b.pages);
        }
        for dp in pool {
            self.drop_page(dp);
        }
        self.teardown_queues();
        self.retry_deferred();
    }
}
