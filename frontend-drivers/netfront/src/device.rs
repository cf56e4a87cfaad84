//! [`NetFront`]: one virtual NIC. The xenbus handshake is driven by watch
//! events on the backend's `state` node ([`NetFront::handle_watch`]); the
//! data path ([`NetFront::transmit`], [`NetFront::receive`]) never blocks
//! except in the `wait_*` calls.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::*;
use xen_abi::io::xenbus::XenbusState;
use xen_front_platform::{
    xs_read_string, Platform, PlatformError, SharedPages, XsWatchEvent, PAGE_SIZE, XBT_NIL,
};
use xen_ring::{FrontRing, SharedRing};
use xen_xenbus::{FrontendDevice, NodeWriter};

use crate::error::{FailReason, NetfrontError};
use crate::request::{
    parse_rx, rx_request, tx_gso_slot, tx_request, tx_response, Gso, PacketMeta, RxParse, RxSlot,
    TxRspSlot, TxSlot, MAX_EXTRAS, MAX_SLOTS,
};

/// Most queues used.
pub const MAX_QUEUES: u32 = 8;
/// Largest frame sent or received (a 64 KiB GSO train with its headers).
pub const MAX_FRAME: usize = 65535;
/// `ETH_HLEN`.
const ETH_HLEN: usize = 14;

/// The frontend's choices; [`Default`] is what a PV guest should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetfrontConfig {
    /// Most queues (clamped to 1..=8; the backend's
    /// `multi-queue-max-queues` may lower it).
    pub max_queues: u32,
    /// Offer scatter-gather, checksum offload and GSO (`feature-sg`,
    /// `feature-gso-tcpv4`/`v6`, `feature-ipv6-csum-offload`); off means
    /// `feature-no-csum-offload` and one-page frames.
    pub offloads: bool,
    /// Use separate tx and rx event channels when the backend offers them.
    pub split_event_channels: bool,
}

impl Default for NetfrontConfig {
    fn default() -> Self {
        Self {
            max_queues: 1,
            offloads: true,
            split_event_channels: true,
        }
    }
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontState {
    /// Waiting for the backend's InitWait.
    WaitBackend,
    /// Rings offered and our state Initialised, waiting for the
    /// backend's Connected.
    Offered,
    /// Packets flow.
    Connected,
    /// The backend went away; rings torn down, our state Closed.
    Closed,
    /// The backend broke the protocol; see [`NetFront::failure`].
    Failed,
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetfrontStats {
    /// Frames queued for transmission.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Tx responses with an error status.
    pub tx_errors: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received chains dropped (error status, bad offset, too big).
    pub rx_errors: u64,
    /// Notifications sent.
    pub notifications: u64,
    /// Pages the backend still mapped at a disconnect: kept, their
    /// revocation retried at each later look at the backend's state, never
    /// reused while mapped (a backend that died mapping them keeps them
    /// forever).
    pub leaked_pages: u64,
    /// Disconnects.
    pub disconnects: u64,
}

/// Counters of one queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames queued for transmission on this queue.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames received on this queue.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
}

/// What the backend offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BackendOffer {
    sg: bool,
    gso_tcpv4: bool,
    gso_tcpv6: bool,
    ipv6_csum: bool,
    split: bool,
    max_queues: u32,
}

struct Queue {
    tx: FrontRing<TxSlot, TxRspSlot>,
    rx: FrontRing<RxSlot, RxSlot>,
    tx_ring: SharedPages,
    rx_ring: SharedPages,
    tx_ring_gref: grant_ref_t,
    rx_ring_gref: grant_ref_t,
    port_tx: evtchn_port_t,
    port_rx: evtchn_port_t,
    /// Tx buffer pages, page `i` for tx id `i` (granted read-only).
    tx_pages: SharedPages,
    tx_grefs: Vec<grant_ref_t>,
    tx_free: Vec<u16>,
    tx_busy: Vec<bool>,
    /// Rx pages, page `i` for ring slot `i` (granted writable).
    rx_pages: SharedPages,
    rx_grefs: Vec<grant_ref_t>,
    /// Responses taken of a chain whose end is not published yet.
    rx_pending: Vec<RxSlot>,
    /// Tx reservations handed out and not yet committed or cancelled.
    tx_reserved: usize,
    /// Slots of frames taken and not re-posted yet ([`NetFront::take_rx`]).
    rx_held: usize,
    stats: QueueStats,
}

/// The tx pages of a torn-down queue that reservations still point into
/// (their writers may be filling them): freed when the last one is
/// committed or cancelled.
struct RetiredTx {
    conn: u64,
    q: usize,
    pages: SharedPages,
    /// Its grants the backend still maps (revoked before the run is freed).
    grefs: Vec<grant_ref_t>,
    outstanding: usize,
}

/// Pages whose grants the backend still maps: freed once every one is
/// revoked (blkfront's deferred runs).
#[derive(Debug)]
struct Deferred {
    grefs: Vec<grant_ref_t>,
    pages: SharedPages,
}

impl core::fmt::Debug for Queue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Queue")
            .field("port_tx", &self.port_tx)
            .field("port_rx", &self.port_rx)
            .field("tx_free", &self.tx_free.len())
            .finish_non_exhaustive()
    }
}

/// One PV NIC (`device/vif/<devid>`) over a [`Platform`].
#[derive(Debug)]
pub struct NetFront<'p, P: Platform + ?Sized> {
    p: &'p P,
    cfg: NetfrontConfig,
    devid: u32,
    /// `device/vif/<devid>`, the backend, the watch token.
    xb: FrontendDevice,
    mac: [u8; 6],
    mtu: u32,
    state: FrontState,
    backend_state: Option<XenbusState>,
    failure: Option<FailReason>,
    offer: BackendOffer,
    queues: Vec<Queue>,
    stats: NetfrontStats,
    /// The connection: counts teardowns of the queues, so a reservation
    /// made on rings since torn down is recognised.
    conn: u64,
    retired: Vec<RetiredTx>,
    deferred: Vec<Deferred>,
}

impl core::fmt::Debug for RetiredTx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RetiredTx")
            .field("conn", &self.conn)
            .field("q", &self.q)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

fn plat(e: PlatformError) -> NetfrontError {
    NetfrontError::Platform(e)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim_end_matches('\0').trim().split(':');
    for o in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_flag(v: Option<String>) -> bool {
    v.is_some_and(|v| v.trim_end_matches('\0').trim() == "1")
}

impl<'p, P: Platform + ?Sized> NetFront<'p, P> {
    /// Opens `device/vif/<devid>`: reads `backend`, `backend-id` and `mac`
    /// and watches the backend's `state`; the first watch event starts the
    /// handshake when passed to [`NetFront::handle_watch`].
    pub fn new(p: &'p P, devid: u32, cfg: NetfrontConfig) -> Result<Self, NetfrontError> {
        let node = format!("device/vif/{devid}");
        let no_backend = NetfrontError::NoBackend { devid };
        let xb = FrontendDevice::open(p, node.clone(), format!("netfront/{devid}"))
            .map_err(|_| no_backend.clone())?;
        let mac = xs_read_string(p, XBT_NIL, &format!("{node}/mac"))
            .ok()
            .and_then(|m| parse_mac(&m))
            .filter(|m| m[0] & 1 == 0)
            .ok_or(no_backend)?;
        xb.watch(p).map_err(plat)?;
        let mut cfg = cfg;
        cfg.max_queues = cfg.max_queues.clamp(1, MAX_QUEUES);
        Ok(NetFront {
            p,
            cfg,
            devid,
            xb,
            mac,
            mtu: 1500,
            state: FrontState::WaitBackend,
            backend_state: None,
            failure: None,
            offer: BackendOffer::default(),
            queues: Vec::new(),
            stats: NetfrontStats::default(),
            conn: 0,
            retired: Vec::new(),
            deferred: Vec::new(),
        })
    }

    // ----------------------------------------------------------------------
    // Accessors.

    /// The platform.
    pub fn platform(&self) -> &'p P {
        self.p
    }

    /// The device id.
    pub fn devid(&self) -> u32 {
        self.devid
    }

    /// The MAC address (`device/vif/<devid>/mac`).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MTU (the backend's `mtu`, default 1500).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The watch token this device answers to.
    pub fn watch_token(&self) -> &str {
        self.xb.token()
    }

    /// The backend's directory.
    pub fn backend_path(&self) -> &str {
        self.xb.backend()
    }

    /// Where the handshake is.
    pub fn state(&self) -> FrontState {
        self.state
    }

    /// Whether packets flow.
    pub fn is_connected(&self) -> bool {
        self.state == FrontState::Connected
    }

    /// Why the device failed, if it did.
    pub fn failure(&self) -> Option<&FailReason> {
        self.failure.as_ref()
    }

    /// The number of queues in use.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Whether frames may carry partial checksums and GSO (scatter-gather
    /// negotiated): the offloads a guest interface may turn on.
    pub fn offloads(&self) -> (bool, bool, bool) {
        let sg = self.cfg.offloads && self.offer.sg;
        (sg, sg && self.offer.gso_tcpv4, sg && self.offer.gso_tcpv6)
    }

    /// The (tx, rx) event channels of queue `q`.
    pub fn ports(&self, q: usize) -> Option<(evtchn_port_t, evtchn_port_t)> {
        self.queues.get(q).map(|q| (q.port_tx, q.port_rx))
    }

    /// Counters.
    pub fn stats(&self) -> NetfrontStats {
        self.stats
    }

    /// The connection number: changes whenever the rings are torn down
    /// (the backend went away, restarted, or the device failed). Ports,
    /// offloads and MTU read before a change may be stale.
    pub fn connection(&self) -> u64 {
        self.conn
    }

    /// Counters of queue `q` since it was set up (`None`: no such queue).
    pub fn queue_stats(&self, q: usize) -> Option<QueueStats> {
        self.queues.get(q).map(|qu| qu.stats)
    }

    /// The largest frame [`NetFront::transmit`] takes.
    pub fn max_frame(&self) -> usize {
        if self.offloads().0 {
            MAX_FRAME
        } else {
            (self.mtu as usize + ETH_HLEN + 4).min(PAGE_SIZE)
        }
    }

    // ----------------------------------------------------------------------
    // The xenbus state machine.

    /// Handles a fired watch: `Ok(false)` if it is not this device's.
    pub fn handle_watch(&mut self, ev: &XsWatchEvent) -> Result<bool, NetfrontError> {
        if ev.token != self.xb.token() {
            return Ok(false);
        }
        self.backend_changed()?;
        Ok(true)
    }

    /// Reads the backend's state and acts on it (level-triggered):
    /// InitWait while waiting or closed: offer rings and go Connected;
    /// Connected while offered: start the data path; Closing, Closed or
    /// removed: tear down and go Closed.
    pub fn backend_changed(&mut self) -> Result<(), NetfrontError> {
        self.retry_deferred();
        if let Some(f) = &self.failure {
            return Err(NetfrontError::Failed(f.clone()));
        }
        let Some(be) = self.xb.backend_state(self.p).map_err(plat)? else {
            return Ok(());
        };
        self.backend_state = Some(be);
        match (be, self.state) {
            (XenbusState::InitWait, FrontState::WaitBackend | FrontState::Closed) => self.offer(),
            (XenbusState::InitWait, FrontState::Connected) => {
                // The backend restarted without closing.
                self.disconnect();
                self.offer()
            }
            (XenbusState::Connected, FrontState::Offered) => {
                self.state = FrontState::Connected;
                self.switch_state(XenbusState::Connected).map_err(plat)?;
                // Wake the backend for the rx buffers already posted.
                for i in 0..self.queues.len() {
                    let port = self.queues[i].port_rx;
                    self.notify(port)?;
                }
                Ok(())
            }
            (
                XenbusState::Closing | XenbusState::Closed,
                FrontState::Offered | FrontState::Connected,
            ) => {
                self.disconnect();
                self.state = FrontState::Closed;
                self.switch_state(XenbusState::Closed).map_err(plat)
            }
            _ => Ok(()),
        }
    }

    /// Writes our `state` (in a transaction), unless the toolstack removed
    /// the node.
    fn switch_state(&self, s: XenbusState) -> Result<(), PlatformError> {
        self.xb.switch_state(self.p, s)
    }

    fn read_backend(&self, key: &str) -> Option<String> {
        self.xb.read_backend(self.p, key)
    }

    fn offer(&mut self) -> Result<(), NetfrontError> {
        let max_queues = match self.read_backend(keys::MULTI_QUEUE_MAX_QUEUES) {
            None => 1,
            Some(v) => match v.trim_end_matches('\0').trim().parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(self.fail(FailReason::BadBackendInfo("multi-queue-max-queues"))),
            },
        };
        self.offer = BackendOffer {
            sg: parse_flag(self.read_backend(keys::FEATURE_SG)),
            gso_tcpv4: parse_flag(self.read_backend(keys::FEATURE_GSO_TCPV4)),
            gso_tcpv6: parse_flag(self.read_backend(keys::FEATURE_GSO_TCPV6)),
            ipv6_csum: parse_flag(self.read_backend(keys::FEATURE_IPV6_CSUM_OFFLOAD)),
            split: parse_flag(self.read_backend(keys::FEATURE_SPLIT_EVENT_CHANNELS)),
            max_queues,
        };
        if let Some(m) = self.read_backend(keys::MTU) {
            match m.trim_end_matches('\0').trim().parse::<u32>() {
                Ok(v) if (68..=65535).contains(&v) => self.mtu = v,
                _ => return Err(self.fail(FailReason::BadBackendInfo("mtu"))),
            }
        }
        let nq = self.cfg.max_queues.min(max_queues).max(1) as usize;
        let split = self.cfg.split_event_channels && self.offer.split;
        for _ in 0..nq {
            match self.build_queue(split) {
                Ok(q) => self.queues.push(q),
                Err(e) => {
                    self.teardown_queues();
                    return Err(self.fail(FailReason::Platform(e)));
                }
            }
        }
        if let Err(e) = self.write_transport() {
            self.teardown_queues();
            return Err(self.fail(FailReason::Platform(e)));
        }
        self.state = FrontState::Offered;
        // Initialised, then Connected once the backend is: Linux netback
        // connects on either, and a restarted backend that finds a
        // frontend already Connected waits for a fresh offer.
        self.switch_state(XenbusState::Initialised).map_err(plat)
    }

    fn grant_run(
        &self,
        pages: &SharedPages,
        readonly: bool,
        out: &mut Vec<grant_ref_t>,
    ) -> Result<(), PlatformError> {
        for i in 0..pages.count() {
            let gfn = pages.gfn(i).ok_or(PlatformError::UnknownPages {
                gfn: pages.first_gfn(),
            })?;
            out.push(self.p.grant_access(self.xb.backend_id(), gfn, readonly)?);
        }
        Ok(())
    }

    fn build_queue(&mut self, split: bool) -> Result<Queue, PlatformError> {
        let p = self.p;
        let n = NETIF_TX_RING_SIZE;
        let mut runs: Vec<SharedPages> = Vec::with_capacity(4);
        for count in [1, 1, n, NETIF_RX_RING_SIZE] {
            match p.alloc_pages(count) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    for r in runs {
                        let _ = p.free_pages(r);
                    }
                    return Err(e);
                }
            }
        }
        let mut grefs: Vec<Vec<grant_ref_t>> = Vec::with_capacity(4);
        let mut ports: Vec<evtchn_port_t> = Vec::new();
        let r = (|| {
            for (i, run) in runs.iter().enumerate() {
                let mut g = Vec::with_capacity(run.count());
                let r = self.grant_run(run, i == 2, &mut g);
                grefs.push(g);
                r?;
            }
            let port_tx = p.evtchn_alloc_unbound(self.xb.backend_id())?;
            ports.push(port_tx);
            if split {
                ports.push(p.evtchn_alloc_unbound(self.xb.backend_id())?);
            }
            Ok(())
        })();
        if let Err(e) = r {
            for g in grefs.iter().flatten() {
                let _ = p.end_access(*g);
            }
            for port in ports {
                let _ = p.evtchn_close(port);
            }
            for r in runs {
                let _ = p.free_pages(r);
            }
            return Err(e);
        }
        let port_tx = ports[0];
        let port_rx = *ports.last().unwrap_or(&port_tx);
        let mut runs = runs.into_iter();
        let mut grefs = grefs.into_iter();
        let (Some(tx_ring), Some(rx_ring), Some(tx_pages), Some(rx_pages)) =
            (runs.next(), runs.next(), runs.next(), runs.next())
        else {
            return Err(PlatformError::Unsupported { op: "page runs" });
        };
        let (Some(g0), Some(g1), Some(tx_grefs), Some(rx_grefs)) =
            (grefs.next(), grefs.next(), grefs.next(), grefs.next())
        else {
            return Err(PlatformError::Unsupported { op: "grants" });
        };
        let mut q = Queue {
            tx: Self::ring(&tx_ring)?,
            rx: Self::ring(&rx_ring)?,
            tx_ring,
            rx_ring,
            tx_ring_gref: g0[0],
            rx_ring_gref: g1[0],
            port_tx,
            port_rx,
            tx_pages,
            tx_grefs,
            tx_free: (0..n as u16).rev().collect(),
            tx_busy: vec![false; n],
            rx_pages,
            rx_grefs,
            rx_pending: Vec::with_capacity(MAX_SLOTS + MAX_EXTRAS),
            tx_reserved: 0,
            rx_held: 0,
            stats: QueueStats::default(),
        };
        // Post every rx page: page i for ring slot i, so a response's slot
        // names its page (the backend answers in the request's slot).
        for i in 0..q.rx_grefs.len() {
            let _ = q.rx.push_request(&rx_request(i as u16, q.rx_grefs[i]));
        }
        q.rx.publish_requests();
        Ok(q)
    }

    fn ring<Req: xen_ring::RingEntry, Rsp: xen_ring::RingEntry>(
        pages: &SharedPages,
    ) -> Result<FrontRing<Req, Rsp>, PlatformError> {
        let bad = || PlatformError::Unsupported {
            op: "a ring on the platform's pages",
        };
        // SAFETY: the page stays valid until it goes back to `free_pages`,
        // which happens only after this FrontRing is turned back into its
        // SharedRing and dropped (`teardown_queues`); this process touches
        // the page only through this one FrontRing.
        let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) }.map_err(|_| bad())?;
        FrontRing::init(mem).map_err(|_| bad())
    }

    /// Writes the transport nodes (Linux's `talk_to_netback`) in one
    /// transaction, retried while it conflicts (bounded).
    fn write_transport(&self) -> Result<(), PlatformError> {
        self.xb.write_nodes(self.p, |w| self.write_transport_in(w))
    }

    fn write_transport_in(&self, w: &NodeWriter<'_, P>) -> Result<(), PlatformError> {
        // Remove what an earlier connection may have left.
        for k in [
            keys::TX_RING_REF,
            keys::RX_RING_REF,
            keys::EVENT_CHANNEL,
            keys::EVENT_CHANNEL_TX,
            keys::EVENT_CHANNEL_RX,
            keys::MULTI_QUEUE_NUM_QUEUES,
        ] {
            w.remove(k)?;
        }
        for i in 0..MAX_QUEUES {
            w.remove(&format!("{}{i}", keys::QUEUE_PREFIX))?;
        }
        let write_queue = |prefix: &str, q: &Queue| -> Result<(), PlatformError> {
            w.write(&format!("{prefix}{}", keys::TX_RING_REF), q.tx_ring_gref)?;
            w.write(&format!("{prefix}{}", keys::RX_RING_REF), q.rx_ring_gref)?;
            if q.port_tx == q.port_rx {
                w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL), q.port_tx)
            } else {
                w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL_TX), q.port_tx)?;
                w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL_RX), q.port_rx)
            }
        };
        if self.queues.len() == 1 {
            write_queue("", &self.queues[0])?;
        } else {
            w.write(keys::MULTI_QUEUE_NUM_QUEUES, self.queues.len())?;
            for (i, q) in self.queues.iter().enumerate() {
                write_queue(&format!("{}{i}/", keys::QUEUE_PREFIX), q)?;
            }
        }
        let on = if self.cfg.offloads { "1" } else { "0" };
        w.write(keys::REQUEST_RX_COPY, "1")?;
        w.write(keys::FEATURE_RX_NOTIFY, "1")?;
        w.write(keys::FEATURE_SG, on)?;
        w.write(keys::FEATURE_GSO_TCPV4, on)?;
        w.write(keys::FEATURE_GSO_TCPV6, on)?;
        w.write(keys::FEATURE_IPV6_CSUM_OFFLOAD, on)?;
        w.write(
            keys::FEATURE_NO_CSUM_OFFLOAD,
            if self.cfg.offloads { "0" } else { "1" },
        )
    }

    fn notify(&mut self, port: evtchn_port_t) -> Result<(), NetfrontError> {
        self.stats.notifications = self.stats.notifications.saturating_add(1);
        self.p.evtchn_notify(port).map_err(plat)
    }

    /// Revokes every grant, frees the pages (keeping those the backend
    /// still maps, and tx pages outstanding reservations point into until
    /// they end), closes the ports.
    fn teardown_queues(&mut self) {
        let p = self.p;
        if self.queues.is_empty() {
            return;
        }
        let conn = self.conn;
        self.conn = self.conn.wrapping_add(1);
        for (qi, q) in core::mem::take(&mut self.queues).into_iter().enumerate() {
            let Queue {
                tx,
                rx,
                tx_ring,
                rx_ring,
                tx_ring_gref,
                rx_ring_gref,
                port_tx,
                port_rx,
                tx_pages,
                tx_grefs,
                rx_pages,
                rx_grefs,
                tx_reserved,
                ..
            } = q;
            let _tx_mem: SharedRing = tx.into_shared();
            let _rx_mem: SharedRing = rx.into_shared();
            self.release_run(&[tx_ring_gref], tx_ring);
            self.release_run(&[rx_ring_gref], rx_ring);
            if tx_reserved > 0 {
                // Writers are filling some of these pages: revoke now, free
                // when the last reservation ends.
                let grefs = self.revoke(&tx_grefs, tx_pages.count());
                self.retired.push(RetiredTx {
                    conn,
                    q: qi,
                    pages: tx_pages,
                    grefs,
                    outstanding: tx_reserved,
                });
            } else {
                self.release_run(&tx_grefs, tx_pages);
            }
            self.release_run(&rx_grefs, rx_pages);
            let _ = p.evtchn_close(port_tx);
            if port_rx != port_tx {
                let _ = p.evtchn_close(port_rx);
            }
        }
    }

    /// Revokes `grefs`; those the backend still maps (counted in
    /// `leaked_pages` as `pages` pages once per run).
    fn revoke(&mut self, grefs: &[grant_ref_t], pages: usize) -> Vec<grant_ref_t> {
        let left: Vec<grant_ref_t> = grefs
            .iter()
            .copied()
            .filter(|&g| matches!(self.p.end_access(g), Err(PlatformError::GrantInUse { .. })))
            .collect();
        if !left.is_empty() {
            self.stats.leaked_pages = self.stats.leaked_pages.saturating_add(pages as u64);
        }
        left
    }

    /// Revokes `grefs` and frees `pages`, or defers both while the
    /// backend maps any of them.
    fn release_run(&mut self, grefs: &[grant_ref_t], pages: SharedPages) {
        let left = self.revoke(grefs, pages.count());
        self.free_or_defer(left, pages);
    }

    fn free_or_defer(&mut self, left: Vec<grant_ref_t>, pages: SharedPages) {
        if left.is_empty() {
            // A platform refusal leaks the pages, which is safe.
            let _ = self.p.free_pages(pages);
        } else {
            self.deferred.push(Deferred { grefs: left, pages });
        }
    }

    /// Retries the deferred revocations; frees the runs no longer mapped.
    fn retry_deferred(&mut self) {
        for d in core::mem::take(&mut self.deferred) {
            let left: Vec<grant_ref_t> = d
                .grefs
                .into_iter()
                .filter(|&g| matches!(self.p.end_access(g), Err(PlatformError::GrantInUse { .. })))
                .collect();
            self.free_or_defer(left, d.pages);
        }
    }

    /// Retries the revocations of the pages kept because the backend still
    /// mapped some of their grants (a backend that died with them mapped
    /// releases them later, when its Dom0 unmaps them for it); the pages
    /// still kept.
    pub fn retry_deferred_pages(&mut self) -> usize {
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
        self.deferred_pages()
    }

    /// Pages kept because the backend still maps some of their grants.
    pub fn deferred_pages(&self) -> usize {
        self.deferred.iter().map(|d| d.pages.count()).sum()
    }

    fn disconnect(&mut self) {
        self.teardown_queues();
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
    }

    fn fail(&mut self, reason: FailReason) -> NetfrontError {
        if self.failure.is_none() {
            self.failure = Some(reason.clone());
            self.state = FrontState::Failed;
            self.teardown_queues();
            let _ = self.switch_state(XenbusState::Closing);
        }
        NetfrontError::Failed(reason)
    }

    fn usable(&self, q: usize) -> Result<(), NetfrontError> {
        if let Some(f) = &self.failure {
            return Err(NetfrontError::Failed(f.clone()));
        }
        if self.state != FrontState::Connected {
            return Err(NetfrontError::NotConnected);
        }
        if q >= self.queues.len() {
            return Err(NetfrontError::NoQueue(q));
        }
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Transmit.

    /// Queues `frame` on queue `q` (copied into granted pages; published by
    /// [`NetFront::push_tx`]). `Ok(false)` when the ring or the buffers
    /// are full: reap with [`NetFront::reap_tx`] (or wait) and retry.
    pub fn transmit(
        &mut self,
        q: usize,
        frame: &[u8],
        meta: PacketMeta,
    ) -> Result<bool, NetfrontError> {
        self.usable(q)?;
        self.check_frame(frame.len(), &meta)?;
        let nslots = frame.len().div_ceil(PAGE_SIZE);
        let need = nslots + usize::from(meta.gso.is_some());
        if !self.room(q, need, nslots) {
            self.reap_tx(q)?;
            if !self.room(q, need, nslots) {
                return Ok(false);
            }
        }
        let qu = &mut self.queues[q];
        let mut ids = [0u16; MAX_SLOTS];
        for (i, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            let Some(id) = qu.tx_free.pop() else {
                return Ok(false);
            };
            ids[i] = id;
            if qu
                .tx_pages
                .write(usize::from(id) * PAGE_SIZE, chunk)
                .is_err()
            {
                return Err(NetfrontError::Platform(PlatformError::Unsupported {
                    op: "tx page write",
                }));
            }
        }
        self.push_frame(q, &ids[..nslots], frame.len(), meta);
        Ok(true)
    }

    fn check_frame(&self, len: usize, meta: &PacketMeta) -> Result<(), NetfrontError> {
        let max = self.max_frame();
        let (_, gso4, gso6) = self.offloads();
        let gso_ok = meta.gso.is_none_or(|g| if g.ipv6 { gso6 } else { gso4 });
        if len < ETH_HLEN || len > max || !gso_ok {
            return Err(NetfrontError::BadFrame { len, max });
        }
        Ok(())
    }

    fn room(&self, q: usize, slots: usize, pages: usize) -> bool {
        let qu = &self.queues[q];
        qu.tx.free_requests() as usize >= slots && qu.tx_free.len() >= pages
    }

    /// Pushes the requests of a frame of `len` bytes whose data is in the
    /// tx pages `ids` (one per 4 KiB); the caller checked the room.
    fn push_frame(&mut self, q: usize, ids: &[u16], len: usize, meta: PacketMeta) {
        let qu = &mut self.queues[q];
        let n = ids.len();
        for (i, &id) in ids.iter().enumerate() {
            qu.tx_busy[usize::from(id)] = true;
            let mut flags = 0u16;
            let size = if i == 0 {
                if meta.csum_blank {
                    flags |= NETTXF_csum_blank | NETTXF_data_validated;
                } else if meta.data_validated {
                    flags |= NETTXF_data_validated;
                }
                if meta.gso.is_some() {
                    flags |= NETTXF_extra_info;
                }
                len as u16
            } else if i + 1 == n {
                (len - i * PAGE_SIZE) as u16
            } else {
                PAGE_SIZE as u16
            };
            if i + 1 < n {
                flags |= NETTXF_more_data;
            }
            let gref = qu.tx_grefs[usize::from(id)];
            let _ = qu.tx.push_request(&tx_request(gref, 0, flags, id, size));
            if i == 0 {
                if let Some(g) = meta.gso {
                    let _ = qu.tx.push_request(&tx_gso_slot(g));
                }
            }
        }
        qu.stats.tx_packets = qu.stats.tx_packets.saturating_add(1);
        qu.stats.tx_bytes = qu.stats.tx_bytes.saturating_add(len as u64);
        self.stats.tx_packets = self.stats.tx_packets.saturating_add(1);
        self.stats.tx_bytes = self.stats.tx_bytes.saturating_add(len as u64);
    }

    /// Reserves tx pages for the largest frame on queue `q`, for a frame
    /// written in place (zero copy: e.g. `readv(2)` straight into them,
    /// [`NetFront::tx_page_ptrs`]); `Ok(None)` when there is no room
    /// (reap and retry). Finish with [`NetFront::commit_tx`] or
    /// [`NetFront::cancel_tx`].
    pub fn reserve_tx(&mut self, q: usize) -> Result<Option<TxReservation>, NetfrontError> {
        self.usable(q)?;
        let pages = self.max_frame().div_ceil(PAGE_SIZE);
        if !self.room(q, pages + 1, pages) {
            self.reap_tx(q)?;
            if !self.room(q, pages + 1, pages) {
                return Ok(None);
            }
        }
        let qu = &mut self.queues[q];
        let at = qu.tx_free.len() - pages;
        let ids = qu.tx_free.split_off(at);
        qu.tx_reserved += 1;
        Ok(Some(TxReservation {
            q,
            ids,
            conn: self.conn,
        }))
    }

    /// The pages of a reservation, in frame order, each [`PAGE_SIZE`]
    /// bytes, valid for writes until the reservation is committed or
    /// cancelled (the backend cannot map them before).
    pub fn tx_page_ptrs(&self, r: &TxReservation) -> Vec<*mut u8> {
        let run = if r.conn == self.conn {
            self.queues.get(r.q).map(|qu| &qu.tx_pages)
        } else {
            // Rings torn down since: the run is kept until the reservation ends.
            self.retired
                .iter()
                .find(|t| t.conn == r.conn && t.q == r.q)
                .map(|t| &t.pages)
        };
        let Some(run) = run else {
            return Vec::new();
        };
        r.ids
            .iter()
            .map(|&id| {
                // SAFETY: `id < NETIF_TX_RING_SIZE`, so the offset is inside
                // the tx page run.
                unsafe { run.as_ptr().add(usize::from(id) * PAGE_SIZE) }
            })
            .collect()
    }

    /// Ends a reservation made on rings torn down since: the frame is
    /// dropped, and its page run freed with the last such reservation.
    fn end_stale(&mut self, r: &TxReservation) {
        if let Some(i) = self
            .retired
            .iter()
            .position(|t| t.conn == r.conn && t.q == r.q)
        {
            let t = &mut self.retired[i];
            t.outstanding = t.outstanding.saturating_sub(1);
            if t.outstanding == 0 {
                let t = self.retired.swap_remove(i);
                let RetiredTx { grefs, pages, .. } = t;
                let left: Vec<grant_ref_t> = grefs
                    .into_iter()
                    .filter(|&g| {
                        matches!(self.p.end_access(g), Err(PlatformError::GrantInUse { .. }))
                    })
                    .collect();
                self.free_or_defer(left, pages);
            }
        }
    }

    /// Sends the first `len` bytes written into a reservation's pages.
    /// A bad length or offload gives the pages back and fails with
    /// [`NetfrontError::BadFrame`]; a reservation made before the rings
    /// were torn down (a backend reconnect) drops the frame and fails with
    /// [`NetfrontError::NotConnected`] (even when connected again: the
    /// caller's ports may be stale).
    pub fn commit_tx(
        &mut self,
        r: TxReservation,
        len: usize,
        meta: PacketMeta,
    ) -> Result<(), NetfrontError> {
        let q = r.q;
        if r.conn != self.conn {
            self.end_stale(&r);
            return Err(NetfrontError::NotConnected);
        }
        if let Err(e) = self.usable(q).and_then(|()| self.check_frame(len, &meta)) {
            self.cancel_tx(r);
            return Err(e);
        }
        let n = len.div_ceil(PAGE_SIZE).min(r.ids.len());
        let (used, rest) = r.ids.split_at(n);
        let qu = &mut self.queues[q];
        qu.tx_free.extend_from_slice(rest);
        qu.tx_reserved = qu.tx_reserved.saturating_sub(1);
        self.push_frame(q, used, len, meta);
        Ok(())
    }

    /// Gives a reservation's pages back unused.
    pub fn cancel_tx(&mut self, r: TxReservation) {
        if r.conn != self.conn {
            self.end_stale(&r);
            return;
        }
        if let Some(qu) = self.queues.get_mut(r.q) {
            qu.tx_free.extend_from_slice(&r.ids);
            qu.tx_reserved = qu.tx_reserved.saturating_sub(1);
        }
    }

    /// Publishes queued frames of queue `q`, notifying the backend if its
    /// event index asks.
    pub fn push_tx(&mut self, q: usize) -> Result<(), NetfrontError> {
        self.usable(q)?;
        if self.queues[q].tx.push_requests_and_check_notify() {
            let port = self.queues[q].port_tx;
            self.notify(port)?;
        }
        Ok(())
    }

    /// Takes the tx responses of queue `q`, freeing their buffers; returns
    /// how many buffers were freed.
    pub fn reap_tx(&mut self, q: usize) -> Result<usize, NetfrontError> {
        self.usable(q)?;
        let mut freed = 0;
        loop {
            let r = self.queues[q].tx.take_response();
            let rsp = match r {
                Ok(Some(r)) => tx_response(&r),
                Ok(None) => break,
                Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
            };
            if rsp.status == NETIF_RSP_NULL {
                continue;
            }
            let qu = &mut self.queues[q];
            match qu.tx_busy.get_mut(usize::from(rsp.id)) {
                Some(b) if *b => {
                    *b = false;
                    qu.tx_free.push(rsp.id);
                    freed += 1;
                }
                _ => return Err(self.fail(FailReason::UnknownTxId { id: rsp.id })),
            }
            if rsp.status != NETIF_RSP_OKAY {
                self.stats.tx_errors = self.stats.tx_errors.saturating_add(1);
            }
        }
        Ok(freed)
    }

    /// Whether queue `q` has room for a frame of `len` bytes right now.
    pub fn tx_room(&self, q: usize, len: usize) -> bool {
        self.queues.get(q).is_some_and(|qu| {
            let nslots = len.div_ceil(PAGE_SIZE).max(1);
            qu.tx.free_requests() as usize > nslots && qu.tx_free.len() >= nslots
        })
    }

    /// Arms the tx event index of queue `q` (after clearing the port's
    /// pending bit); `Ok(true)` if responses are already there.
    pub fn arm_tx(&mut self, q: usize) -> Result<bool, NetfrontError> {
        self.usable(q)?;
        let port = self.queues[q].port_tx;
        let _ = self.p.evtchn_clear(port);
        match self.queues[q].tx.final_check_for_responses() {
            Ok(b) => Ok(b),
            Err(e) => Err(self.fail(FailReason::RingCorrupt(e))),
        }
    }

    // ----------------------------------------------------------------------
    // Receive.

    /// Takes the next received frame of queue `q` into `buf` (at least
    /// [`MAX_FRAME`] bytes to take any frame) and re-posts its pages.
    /// `Ok(None)` when no whole frame is there. Chains with an error
    /// status, a bad offset, or more bytes than `buf` are dropped (counted
    /// in `rx_errors`).
    pub fn receive(
        &mut self,
        q: usize,
        buf: &mut [u8],
    ) -> Result<Option<(usize, PacketMeta)>, NetfrontError> {
        let mut out = None;
        while out.is_none() {
            let r = self.receive_with(q, |frags, _head, meta| {
                let mut len = 0usize;
                for f in frags {
                    if len + f.len > buf.len() {
                        return None;
                    }
                    // SAFETY: `f` lies inside this queue's rx page run
                    // (validated offsets), alive while the callback runs;
                    // the backend may still write it: the copy is volatile.
                    unsafe { volatile_copy_from(buf[len..].as_mut_ptr(), f.ptr, f.len) };
                    len += f.len;
                }
                Some((len, meta))
            })?;
            match r {
                None => return Ok(None),
                Some(None) => {
                    self.stats.rx_errors = self.stats.rx_errors.saturating_add(1);
                }
                Some(Some(x)) => out = Some(x),
            }
        }
        Ok(out)
    }

    /// Takes the next received frame of queue `q` and hands it to `f` in
    /// place (zero copy): its fragments in the rx pages, a copy of its
    /// first bytes (up to 128, for header parsing) and its offloads; then
    /// re-posts the pages. `Ok(None)` when no whole frame is there; bad
    /// chains are dropped (counted in `rx_errors`) without calling `f`.
    pub fn receive_with<R>(
        &mut self,
        q: usize,
        f: impl FnOnce(&[RxFrag], &[u8], PacketMeta) -> R,
    ) -> Result<Option<R>, NetfrontError> {
        self.release_rx(q)?;
        match self.take_rx_frame(q)? {
            None => Ok(None),
            Some(fr) => {
                let r = f(fr.frags(), fr.head(), fr.meta);
                self.release_rx(q)?;
                Ok(Some(r))
            }
        }
    }

    /// Takes the next received frame of queue `q` without re-posting its
    /// pages: the fragments stay valid and the backend cannot write them
    /// until [`NetFront::release_rx`] (so the caller may hand them on, say
    /// a `writev(2)`, without holding this device). Frames taken so are
    /// released together, in order; take several, then release. `Ok(None)`
    /// when no whole frame is there; bad chains are dropped (counted in
    /// `rx_errors`) and their pages re-posted at the next release.
    pub fn take_rx(&mut self, q: usize) -> Result<Option<RxFrame>, NetfrontError> {
        self.usable(q)?;
        self.take_rx_frame(q)
    }

    /// Re-posts the pages of every frame of queue `q` taken with
    /// [`NetFront::take_rx`] (published by [`NetFront::push_rx`]). The
    /// frames' fragments must not be used after.
    pub fn release_rx(&mut self, q: usize) -> Result<(), NetfrontError> {
        self.usable(q)?;
        let qu = &mut self.queues[q];
        let mask = qu.rx.nr_ents() - 1;
        for _ in 0..core::mem::take(&mut qu.rx_held) {
            let slot = (qu.rx.req_prod_pvt() & mask) as usize;
            let _ = qu
                .rx
                .push_request(&rx_request(slot as u16, qu.rx_grefs[slot]));
        }
        Ok(())
    }

    fn take_rx_frame(&mut self, q: usize) -> Result<Option<RxFrame>, NetfrontError> {
        self.usable(q)?;
        loop {
            let pkt = loop {
                let qu = &mut self.queues[q];
                match parse_rx(&qu.rx_pending) {
                    RxParse::Packet(p) => break p,
                    RxParse::TooLong => return Err(self.fail(FailReason::BadRxResponse)),
                    RxParse::Incomplete => {}
                }
                if qu.rx_pending.len() >= MAX_SLOTS + MAX_EXTRAS {
                    return Err(self.fail(FailReason::BadRxResponse));
                }
                match qu.rx.take_response() {
                    Ok(Some(s)) => qu.rx_pending.push(s),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(self.fail(FailReason::RingCorrupt(e))),
                }
            };
            let qu = &mut self.queues[q];
            let mask = qu.rx.nr_ents() - 1;
            // The ring index of rx_pending[0].
            let base = qu.rx.rsp_cons().wrapping_sub(qu.rx_pending.len() as u32);
            let mut fr = RxFrame {
                frags: [RxFrag {
                    ptr: core::ptr::null(),
                    len: 0,
                }; MAX_SLOTS],
                n: 0,
                head: [0u8; 128],
                hl: 0,
                meta: pkt.meta,
            };
            let mut len = 0usize;
            for s in &pkt.segs {
                let page = (base.wrapping_add(s.slot as u32) & mask) as usize;
                // SAFETY: `page < NETIF_RX_RING_SIZE` and `offset + len <=
                // 4096` (checked by `parse_rx`): inside the rx page run.
                let ptr = unsafe {
                    qu.rx_pages
                        .as_ptr()
                        .add(page * PAGE_SIZE + usize::from(s.offset))
                };
                if fr.n < MAX_SLOTS {
                    fr.frags[fr.n] = RxFrag {
                        ptr,
                        len: usize::from(s.len),
                    };
                    fr.n += 1;
                }
                len += usize::from(s.len);
            }
            let ok = !pkt.bad && (ETH_HLEN..=MAX_FRAME + ETH_HLEN).contains(&len);
            if ok {
                for f in &fr.frags[..fr.n] {
                    let take = f.len.min(fr.head.len() - fr.hl);
                    // SAFETY: as above, inside the rx pages; volatile.
                    unsafe { volatile_copy_from(fr.head[fr.hl..].as_mut_ptr(), f.ptr, take) };
                    fr.hl += take;
                    if fr.hl == fr.head.len() {
                        break;
                    }
                }
            }
            // The chain's pages are re-posted, each in its own slot again,
            // at the next release.
            qu.rx_pending.drain(..pkt.slots);
            qu.rx_held += pkt.slots;
            if ok {
                qu.stats.rx_packets = qu.stats.rx_packets.saturating_add(1);
                qu.stats.rx_bytes = qu.stats.rx_bytes.saturating_add(len as u64);
                self.stats.rx_packets = self.stats.rx_packets.saturating_add(1);
                self.stats.rx_bytes = self.stats.rx_bytes.saturating_add(len as u64);
                return Ok(Some(fr));
            }
            self.stats.rx_errors = self.stats.rx_errors.saturating_add(1);
        }
    }

    /// Publishes re-posted rx buffers of queue `q` (notifying the backend
    /// if it waits for them: `feature-rx-notify`).
    pub fn push_rx(&mut self, q: usize) -> Result<(), NetfrontError> {
        self.usable(q)?;
        if self.queues[q].rx.push_requests_and_check_notify() {
            let port = self.queues[q].port_rx;
            self.notify(port)?;
        }
        Ok(())
    }

    /// Whether rx responses are waiting on queue `q` (one read of the
    /// producer index, for spinning).
    pub fn rx_ready(&self, q: usize) -> bool {
        self.queues.get(q).is_some_and(|qu| {
            !qu.rx_pending.is_empty() || qu.rx.has_unconsumed_responses().is_ok_and(|n| n > 0)
        })
    }

    /// Arms the rx event index of queue `q` (after clearing the port's
    /// pending bit); `Ok(true)` if responses are already there.
    pub fn arm_rx(&mut self, q: usize) -> Result<bool, NetfrontError> {
        self.usable(q)?;
        let port = self.queues[q].port_rx;
        let _ = self.p.evtchn_clear(port);
        match self.queues[q].rx.final_check_for_responses() {
            Ok(b) => Ok(b),
            Err(e) => Err(self.fail(FailReason::RingCorrupt(e))),
        }
    }

    /// Sleeps until one of `ports` is pending or `timeout` passes (a
    /// convenience over [`Platform::evtchn_poll`] that needs no `&mut`).
    pub fn poll_ports(
        p: &P,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, NetfrontError> {
        p.evtchn_poll(ports, timeout).map_err(plat)
    }

    /// Closes the device: our state Closing then Closed, rings torn down.
    pub fn close(&mut self) {
        let _ = self.switch_state(XenbusState::Closing);
        self.teardown_queues();
        self.state = FrontState::Closed;
        let _ = self.switch_state(XenbusState::Closed);
    }
}

impl<P: Platform + ?Sized> Drop for NetFront<'_, P> {
    fn drop(&mut self) {
        let _ = self.xb.unwatch(self.p);
        self.teardown_queues();
        // Tx runs that reservations still point into are kept (leaked):
        // their writers may outlive this value; so are runs still mapped.
        for t in core::mem::take(&mut self.retired) {
            let _kept = t.pages;
        }
        self.retry_deferred();
        for d in core::mem::take(&mut self.deferred) {
            let _kept = d.pages;
        }
    }
}

/// Tx pages reserved for one frame ([`NetFront::reserve_tx`]).
#[derive(Debug)]
pub struct TxReservation {
    q: usize,
    ids: Vec<u16>,
    /// [`NetFront::connection`] when it was made.
    conn: u64,
}

impl TxReservation {
    /// Bytes the reserved pages hold.
    pub fn capacity(&self) -> usize {
        self.ids.len() * PAGE_SIZE
    }
}

/// A received frame taken with [`NetFront::take_rx`]: its fragments in
/// place in the rx pages (valid until [`NetFront::release_rx`]), a copy of
/// its first bytes and its offloads.
#[derive(Debug, Clone, Copy)]
pub struct RxFrame {
    frags: [RxFrag; MAX_SLOTS],
    n: usize,
    head: [u8; 128],
    hl: usize,
    /// Its offloads.
    pub meta: PacketMeta,
}

impl RxFrame {
    /// The fragments, in order.
    pub fn frags(&self) -> &[RxFrag] {
        &self.frags[..self.n]
    }

    /// A copy of the first bytes (up to 128), for header parsing.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.hl]
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.frags().iter().map(|f| f.len).sum()
    }

    /// Whether the frame is empty (never, for a frame taken).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One fragment of a received frame, in place in an rx page.
#[derive(Debug, Clone, Copy)]
pub struct RxFrag {
    /// Start of the data (shared memory: read only with volatile or
    /// system-call copies).
    pub ptr: *const u8,
    /// Its length.
    pub len: usize,
}

/// Copies `len` bytes of shared memory at `src` to `dst` with volatile
/// word reads.
///
/// # Safety
/// `src..src+len` must be readable and `dst..dst+len` writable, not
/// overlapping.
unsafe fn volatile_copy_from(dst: *mut u8, src: *const u8, len: usize) {
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: in bounds by the caller's contract; unaligned reads.
        let w = unsafe { core::ptr::read_volatile(src.add(i).cast::<[u8; 8]>()) };
        // SAFETY: as above for the destination.
        unsafe { core::ptr::write(dst.add(i).cast::<[u8; 8]>(), w) };
        i += 8;
    }
    while i < len {
        // SAFETY: as above.
        unsafe { *dst.add(i) = core::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Which queue a frame goes to (a flow hash over the IPv4/IPv6 addresses
/// and ports, so one flow keeps its order).
#[must_use]
pub fn pick_queue(frame: &[u8], queues: usize) -> usize {
    if queues <= 1 || frame.len() < 34 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    let end = frame.len().min(58);
    for &b in &frame[26..end] {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h as usize) % queues
}

/// The GSO metadata for a frame.
#[must_use]
pub fn gso(ipv6: bool, size: u16) -> Option<Gso> {
    (size > 0).then_some(Gso { ipv6, size })
}
