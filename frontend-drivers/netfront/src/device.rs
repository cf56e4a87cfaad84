//! [`NetFront`]: one virtual NIC. The xenbus handshake is driven by watch
//! events on the backend's `state` node ([`NetFront::handle_watch`]); the
//! data path ([`NetFront::transmit`], [`NetFront::receive`]) never blocks
//! except in the `wait_*` calls.
//!
//! This file holds the device's types, its constructor and accessors; the
//! rest is split by concern:
//! - [`xenbus`]: the handshake (offer, connect, disconnect, reconnect,
//!   failure, close) over [`xen_xenbus::FrontendDevice`], and the queues
//!   (rings, buffer pages, grants, event channels) it builds and tears down;
//! - [`tx`]: transmitting (copied frames and in-place reservations), tx
//!   responses;
//! - [`rx`]: receiving (chains of rx responses into frames, in place or
//!   copied), re-posting the rx pages.

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::xenbus::XenbusState;
use xen_front_platform::{
    xs_read_string, Platform, PlatformError, SharedPages, PAGE_SIZE, XBT_NIL,
};
use xen_ring::FrontRing;
use xen_xenbus::FrontendDevice;

use crate::error::{FailReason, NetfrontError};
use crate::request::{RxSlot, TxRspSlot, TxSlot};

mod rx;
mod tx;
mod xenbus;

pub use rx::{RxFrag, RxFrame};
pub use tx::{gso, pick_queue, TxReservation};

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

    fn notify(&mut self, port: evtchn_port_t) -> Result<(), NetfrontError> {
        self.stats.notifications = self.stats.notifications.saturating_add(1);
        self.p.evtchn_notify(port).map_err(plat)
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

    /// Sleeps until one of `ports` is pending or `timeout` passes (a
    /// convenience over [`Platform::evtchn_poll`] that needs no `&mut`).
    pub fn poll_ports(
        p: &P,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, NetfrontError> {
        p.evtchn_poll(ports, timeout).map_err(plat)
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
