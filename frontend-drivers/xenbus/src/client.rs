//! [`XenbusClient`]: xenstore requests over the guest's end of its
//! `xenstore_domain_interface` page.
//!
//! One request at a time: the client writes the packet into the `req` ring
//! (waiting for space if it must, reading replies meanwhile so that
//! xenstored's `outstanding` quota never stalls both sides), notifies, then
//! reads the `rsp` ring until the reply carrying its `req_id` arrives. Watch
//! events met on the way are queued (bounded; the oldest are dropped and
//! counted). A reply with another `req_id` is a late answer to a request
//! that timed out and is dropped.
//!
//! The server is not trusted: its producer index is read once and checked
//! (`rsp_prod - rsp_cons <= 1024`, [`XenbusError::Ring`]), replies are
//! copied out of the ring before they are parsed, oversized or mistyped
//! replies are [`XenbusError::BadReply`], every wait has a deadline and every
//! loop a bound.
//!
//! # Connection state (`docs/misc/xenstore-ring.txt`)
//!
//! - At start, responses left in the ring by a previous user of the page are
//!   skipped (Linux's `xb_init_comms`).
//! - `error != XENSTORE_ERROR_NONE` means xenstored ignores the ring (it saw
//!   a bad index or packet): requests fail with [`XenbusError::Server`].
//! - A broken connection (server error, corrupt index, a stream out of sync
//!   after a timeout in the middle of a packet) is repaired by
//!   [`XenbusClient::reconnect`] when xenstored offers
//!   `XENSTORE_SERVER_FEATURE_RECONNECTION`: the guest sets `connection` to
//!   `XENSTORE_RECONNECT` and notifies; xenstored drops the connection's
//!   watches and transactions, zeroes the indices and `error`, and sets
//!   `connection` back to `XENSTORE_CONNECTED`; the client then re-registers
//!   its watches. With [`ClientConfig::auto_reconnect`] (the default) the
//!   next request does this by itself.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use xen_abi::io::xs_wire::{
    XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_RECONNECT,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
};
use xen_ring::bytes::{xs_offsets, XsRing};
use xen_ring::{RingError, SharedRing};
use xenstore_wire::{
    strings, Decoder, DomId, MsgType, PermList, Reply, Request, XsError, XENSTORE_PAYLOAD_MAX,
    XENSTORE_RING_SIZE,
};

use crate::events::XenbusEvents;
use crate::XenbusError;

/// Ring reads per pump (each up to a whole ring of 1024 bytes).
const MAX_READS_PER_PUMP: usize = 16;
/// Packets decoded per pump: more than the reads of one pump can bring
/// (16 KiB of 16-byte headers), so nothing stays behind in the decoder.
const MAX_PACKETS_PER_PUMP: usize = 2048;

/// How the client behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// How long a request may wait for ring space and for its reply, and a
    /// reconnection for xenstored.
    pub timeout: Duration,
    /// Longest single wait on the event channel before the ring is looked at
    /// again: a notification consumed by another waiter on the same port
    /// then costs at most this much latency.
    pub wait_slice: Duration,
    /// Watch events kept before the oldest are dropped.
    pub max_queued_events: usize,
    /// Reconnect by itself before a request when the connection is broken
    /// (and xenstored offers reconnection).
    pub auto_reconnect: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            wait_slice: Duration::from_millis(20),
            max_queued_events: 1024,
            auto_reconnect: true,
        }
    }
}

/// A fired watch (`XS_WATCH_EVENT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (relative if the watch was).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// Counters of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests answered (with data or an error).
    pub requests: u64,
    /// Watch events received.
    pub events: u64,
    /// Watch events dropped because the queue was full.
    pub dropped_events: u64,
    /// Replies dropped because no request waited for them.
    pub stale_replies: u64,
    /// Reconnections done.
    pub reconnections: u64,
}

/// A xenstore client over the guest's end of the ring; see the
/// [module docs](self).
pub struct XenbusClient<E> {
    /// The caller's handle to the page: keeps the memory valid (its
    /// contract) for as long as the client exists.
    mem: SharedRing,
    ring: Option<XsRing>,
    events: E,
    cfg: ClientConfig,
    decoder: Decoder,
    next_req_id: u32,
    /// The `req_id` of the request waiting for its reply.
    waiting: Option<u32>,
    /// Its reply: type and payload.
    reply: Option<(u32, Vec<u8>)>,
    queue: VecDeque<WatchEvent>,
    /// Registered watches (path, token), re-registered after a
    /// reconnection.
    watches: Vec<(String, String)>,
    /// The byte stream lost its framing (a request was cut by a timeout, or
    /// the server sent garbage): only a reconnection repairs it.
    desync: bool,
    out: Vec<u8>,
    stats: ClientStats,
}

impl<E> fmt::Debug for XenbusClient<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenbusClient")
            .field("ring", &self.ring)
            .field("next_req_id", &self.next_req_id)
            .field("queued_events", &self.queue.len())
            .field("watches", &self.watches.len())
            .field("desync", &self.desync)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<E: XenbusEvents> XenbusClient<E> {
    /// A client on the page `mem` (the domain's `store_mfn`, mapped) that
    /// signals and waits through `events` (the `store_evtchn` port).
    ///
    /// Responses left in the ring are skipped; a page in an error state or
    /// with corrupt indices is reconnected first when xenstored offers it.
    /// Nothing is sent otherwise: xenstored need not be up yet (a request
    /// then waits for it, up to the timeout).
    pub fn new(mem: SharedRing, events: E, cfg: ClientConfig) -> Result<Self, XenbusError> {
        let mut c = Self {
            mem,
            ring: None,
            events,
            cfg,
            decoder: Decoder::with_max_payload(XENSTORE_PAYLOAD_MAX),
            next_req_id: 1,
            waiting: None,
            reply: None,
            queue: VecDeque::new(),
            watches: Vec::new(),
            desync: false,
            out: Vec::new(),
            stats: ClientStats::default(),
        };
        if c.server_error() != XENSTORE_ERROR_NONE {
            c.reconnect()?;
            return Ok(c);
        }
        match c.build() {
            Ok(mut ring) => {
                let stale = ring.available().map_err(XenbusError::Ring)?;
                if stale > 0 {
                    ring.advance(stale as usize).map_err(XenbusError::Ring)?;
                }
                c.ring = Some(ring);
            }
            Err(_) if c.offers_reconnection() => c.reconnect()?,
            Err(e) => return Err(XenbusError::Ring(e)),
        }
        Ok(c)
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> ClientConfig {
        self.cfg
    }

    /// Changes the request timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.cfg.timeout = timeout;
    }

    /// The event-channel abstraction.
    pub fn events(&self) -> &E {
        &self.events
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    fn field(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= xs_offsets::SIZE);
        // SAFETY: `self.mem` is valid for reads and writes of at least one
        // page for as long as it exists (the contract of `SharedRing::new`),
        // and it lives as long as `self`; its base is at least 4-byte aligned
        // (checked by `SharedRing::new`) and `off` is a 4-aligned offset
        // inside the 2076-byte interface, so the word is aligned and in
        // bounds. These words are only ever accessed atomically, here, in
        // xen-ring and by the peer.
        unsafe { AtomicU32::from_ptr(self.mem.as_ptr().add(off).cast()) }
    }

    /// The page's `error` field (`XENSTORE_ERROR_*`, set by xenstored).
    #[must_use]
    pub fn server_error(&self) -> u32 {
        self.field(xs_offsets::ERROR).load(Ordering::Acquire)
    }

    /// The page's `server_features`.
    #[must_use]
    pub fn server_features(&self) -> u32 {
        self.field(xs_offsets::SERVER_FEATURES)
            .load(Ordering::Acquire)
    }

    /// The page's `connection` field.
    #[must_use]
    pub fn connection(&self) -> u32 {
        self.field(xs_offsets::CONNECTION).load(Ordering::SeqCst)
    }

    fn offers_reconnection(&self) -> bool {
        self.server_features() & XENSTORE_SERVER_FEATURE_RECONNECTION != 0
    }

    /// Whether the connection needs a reconnection before it can be used.
    #[must_use]
    pub fn is_broken(&self) -> bool {
        self.ring.is_none() || self.desync || self.server_error() != XENSTORE_ERROR_NONE
    }

    /// A fresh guest end on the page. Only called while `self.ring` is
    /// `None`: there is one endpoint per direction at a time.
    fn build(&self) -> Result<XsRing, RingError> {
        debug_assert!(self.ring.is_none());
        // SAFETY: the pointer and length are those of `self.mem`, whose
        // creator promised the memory valid while it exists; `self.mem`
        // outlives the ring (both are fields of `self`, and the ring is
        // dropped or replaced before `self.mem` goes). No other ring of this
        // process uses the page (the old one was dropped: `self.ring` is
        // `None`), and the page is reached only through atomics and volatile
        // copies.
        let mem = unsafe { SharedRing::new(self.mem.as_ptr(), self.mem.len()) }?;
        XsRing::guest(mem)
    }

    fn deadline(&self, timeout: Duration) -> u64 {
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.events.now_ns().saturating_add(ns)
    }

    /// Waits one slice for the event channel, or fails once `deadline`
    /// passed.
    fn wait_until(&self, deadline: u64, err: XenbusError) -> Result<(), XenbusError> {
        let now = self.events.now_ns();
        if now >= deadline {
            return Err(err);
        }
        let left = Duration::from_nanos(deadline - now).min(self.cfg.wait_slice);
        self.events.wait(left);
        Ok(())
    }

    fn check_server(&self) -> Result<(), XenbusError> {
        match self.server_error() {
            XENSTORE_ERROR_NONE => Ok(()),
            e => Err(XenbusError::Server(e)),
        }
    }

    /// Re-establishes the connection (see the [module docs](self)): fails
    /// with [`XenbusError::NoReconnect`] when xenstored does not offer it.
    /// Open transactions are gone afterwards; watches are registered again
    /// (each fires once, as a new watch does).
    pub fn reconnect(&mut self) -> Result<(), XenbusError> {
        if !self.offers_reconnection() {
            return Err(XenbusError::NoReconnect);
        }
        self.ring = None;
        self.decoder = Decoder::with_max_payload(XENSTORE_PAYLOAD_MAX);
        self.waiting = None;
        self.reply = None;
        self.desync = false;
        self.field(xs_offsets::CONNECTION)
            .store(XENSTORE_RECONNECT, Ordering::SeqCst);
        self.events.notify()?;
        let deadline = self.deadline(self.cfg.timeout);
        while self.connection() != XENSTORE_CONNECTED {
            self.wait_until(deadline, XenbusError::ReconnectTimeout)?;
        }
        let ring = self.build().map_err(XenbusError::Ring)?;
        self.ring = Some(ring);
        self.stats.reconnections += 1;
        let watches = core::mem::take(&mut self.watches);
        let mut result = Ok(());
        for (path, token) in &watches {
            let req = Request::Watch {
                path,
                token: token.as_bytes(),
                depth: None,
            };
            if let Err(e) = self.transact(0, &req) {
                result = Err(e);
                break;
            }
        }
        self.watches = watches;
        result
    }

    /// Repairs a broken connection when allowed to.
    fn ensure_connected(&mut self) -> Result<(), XenbusError> {
        if !self.is_broken() {
            return Ok(());
        }
        if !self.cfg.auto_reconnect {
            self.check_server()?;
            return Err(XenbusError::NoReconnect);
        }
        self.reconnect()
    }

    /// Reads what xenstored wrote: replies and watch events (bounded work).
    /// Returns whether anything was read. A corrupt index or a malformed
    /// packet breaks the connection (repaired by a reconnection).
    pub fn pump(&mut self) -> Result<bool, XenbusError> {
        let r = self.pump_inner();
        if matches!(r, Err(XenbusError::Ring(_) | XenbusError::BadReply)) {
            self.desync = true;
        }
        r
    }

    fn pump_inner(&mut self) -> Result<bool, XenbusError> {
        let Self {
            ring,
            decoder,
            events,
            ..
        } = self;
        let ring = ring.as_mut().ok_or(XenbusError::NoReconnect)?;
        let mut any = false;
        for _ in 0..MAX_READS_PER_PUMP {
            let avail = ring.available().map_err(XenbusError::Ring)? as usize;
            if avail == 0 {
                break;
            }
            let buf = decoder.read_buf(avail);
            let n = ring.read(&mut buf[..avail]).map_err(XenbusError::Ring)?;
            decoder.commit(n);
            any = true;
            // Space freed in a full ring: xenstored may wait for it
            // (Linux's xb_read does the same).
            if avail >= XENSTORE_RING_SIZE {
                events.notify()?;
            }
        }
        self.dispatch()?;
        Ok(any)
    }

    /// Sorts decoded packets: the awaited reply, watch events, stale replies.
    fn dispatch(&mut self) -> Result<(), XenbusError> {
        for _ in 0..MAX_PACKETS_PER_PUMP {
            let (hdr, payload) = match self.decoder.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(_) => {
                    self.desync = true;
                    return Err(XenbusError::BadReply);
                }
            };
            if hdr.msg_type() == Some(MsgType::WatchEvent) {
                let ev = match Reply::parse(&hdr, payload) {
                    Ok(Reply::WatchEvent { path, token }) => WatchEvent {
                        path: String::from(path),
                        token: String::from_utf8_lossy(token).into_owned(),
                    },
                    _ => continue,
                };
                self.stats.events += 1;
                if self.queue.len() >= self.cfg.max_queued_events.max(1) {
                    self.queue.pop_front();
                    self.stats.dropped_events += 1;
                }
                self.queue.push_back(ev);
            } else if self.waiting == Some(hdr.req_id) && self.reply.is_none() {
                self.reply = Some((hdr.ty, payload.to_vec()));
            } else {
                self.stats.stale_replies += 1;
            }
        }
        Ok(())
    }

    /// Writes `self.out` into the ring, notifying after each chunk.
    fn send_out(&mut self, deadline: u64) -> Result<(), XenbusError> {
        let mut off = 0usize;
        // Each round writes something or waits one slice until the deadline.
        loop {
            self.check_server()?;
            let Self {
                ring, out, events, ..
            } = self;
            let ring = ring.as_mut().ok_or(XenbusError::NoReconnect)?;
            let n = match ring.try_write(&out[off..]) {
                Ok(n) => n,
                Err(e) => {
                    self.desync = true;
                    return Err(XenbusError::Ring(e));
                }
            };
            if n > 0 {
                off += n;
                events.notify()?;
            }
            if off >= out.len() {
                return Ok(());
            }
            // Read replies meanwhile: xenstored stops reading a guest that
            // has too many unread ones.
            self.pump()?;
            if let Err(e) = self.wait_until(deadline, XenbusError::Timeout) {
                if off > 0 {
                    // Half a packet is in the ring: the stream is broken.
                    self.desync = true;
                }
                return Err(e);
            }
        }
    }

    /// One request/reply without repairing the connection first: the reply's
    /// type and payload.
    fn transact(&mut self, tx_id: u32, req: &Request<'_>) -> Result<Vec<u8>, XenbusError> {
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        self.out.clear();
        req.encode(req_id, tx_id, &mut self.out)
            .map_err(|_| XenbusError::TooBig)?;
        let deadline = self.deadline(self.cfg.timeout);
        self.waiting = Some(req_id);
        self.reply = None;
        let r = self.send_out(deadline).and_then(|()| loop {
            self.pump()?;
            if let Some(r) = self.reply.take() {
                break Ok(r);
            }
            self.check_server()?;
            self.wait_until(deadline, XenbusError::Timeout)?;
        });
        self.waiting = None;
        let (ty, payload) = r?;
        self.stats.requests += 1;
        if ty == MsgType::Error.as_u32() {
            let name = payload.split(|&b| b == 0).next().unwrap_or(&[]);
            let e = core::str::from_utf8(name)
                .ok()
                .and_then(XsError::from_name)
                .ok_or(XenbusError::BadReply)?;
            return Err(XenbusError::Xs(e));
        }
        if ty != req.msg_type().as_u32() {
            return Err(XenbusError::BadReply);
        }
        Ok(payload)
    }

    /// Sends `req` in transaction `tx_id` (0: none) and returns the reply's
    /// payload; an `XS_ERROR` reply is [`XenbusError::Xs`].
    pub fn request(&mut self, tx_id: u32, req: &Request<'_>) -> Result<Vec<u8>, XenbusError> {
        self.ensure_connected()?;
        self.transact(tx_id, req)
    }

    /// `XS_READ`.
    pub fn read(&mut self, tx_id: u32, path: &str) -> Result<Vec<u8>, XenbusError> {
        self.request(tx_id, &Request::Read { path })
    }

    /// `XS_WRITE`.
    pub fn write(&mut self, tx_id: u32, path: &str, value: &[u8]) -> Result<(), XenbusError> {
        self.request(tx_id, &Request::Write { path, value })
            .map(drop)
    }

    /// `XS_MKDIR`.
    pub fn mkdir(&mut self, tx_id: u32, path: &str) -> Result<(), XenbusError> {
        self.request(tx_id, &Request::Mkdir { path }).map(drop)
    }

    /// `XS_RM`.
    pub fn rm(&mut self, tx_id: u32, path: &str) -> Result<(), XenbusError> {
        self.request(tx_id, &Request::Rm { path }).map(drop)
    }

    /// `XS_DIRECTORY`: the children's names.
    pub fn directory(&mut self, tx_id: u32, path: &str) -> Result<Vec<String>, XenbusError> {
        let payload = self.request(tx_id, &Request::Directory { path })?;
        Ok(strings(&payload)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// `XS_GET_PERMS`.
    pub fn get_perms(&mut self, tx_id: u32, path: &str) -> Result<PermList, XenbusError> {
        let payload = self.request(tx_id, &Request::GetPerms { path })?;
        PermList::parse(&payload).map_err(|_| XenbusError::BadReply)
    }

    /// `XS_SET_PERMS`.
    pub fn set_perms(
        &mut self,
        tx_id: u32,
        path: &str,
        perms: &PermList,
    ) -> Result<(), XenbusError> {
        let req = Request::SetPerms {
            path,
            perms: perms.clone(),
        };
        self.request(tx_id, &req).map(drop)
    }

    /// `XS_WATCH`: fires once at once, then on every change at or below
    /// `path`. Kept for re-registration after a reconnection.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XenbusError> {
        let req = Request::Watch {
            path,
            token: token.as_bytes(),
            depth: None,
        };
        self.request(0, &req)?;
        if !self.watches.iter().any(|(p, t)| p == path && t == token) {
            self.watches.push((String::from(path), String::from(token)));
        }
        Ok(())
    }

    /// `XS_UNWATCH`.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XenbusError> {
        self.watches.retain(|(p, t)| !(p == path && t == token));
        let req = Request::Unwatch {
            path,
            token: token.as_bytes(),
        };
        self.request(0, &req).map(drop)
    }

    /// `XS_TRANSACTION_START`: the new transaction's id.
    pub fn transaction_start(&mut self) -> Result<u32, XenbusError> {
        let payload = self.request(0, &Request::TransactionStart)?;
        let s = payload.split(|&b| b == 0).next().unwrap_or(&[]);
        core::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&t| t != 0)
            .ok_or(XenbusError::BadReply)
    }

    /// `XS_TRANSACTION_END`: commit or abort; a conflicting commit fails
    /// with `Xs(Eagain)` (run the transaction again).
    pub fn transaction_end(&mut self, tx_id: u32, commit: bool) -> Result<(), XenbusError> {
        self.request(tx_id, &Request::TransactionEnd { commit })
            .map(drop)
    }

    /// `XS_GET_DOMAIN_PATH`.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XenbusError> {
        let payload = self.request(0, &Request::GetDomainPath { domid })?;
        let s = payload.split(|&b| b == 0).next().unwrap_or(&[]);
        core::str::from_utf8(s)
            .map(String::from)
            .map_err(|_| XenbusError::BadReply)
    }

    /// The next queued watch event, after reading what arrived (never
    /// waits).
    pub fn try_read_watch(&mut self) -> Result<Option<WatchEvent>, XenbusError> {
        if let Some(ev) = self.queue.pop_front() {
            return Ok(Some(ev));
        }
        self.ensure_connected()?;
        self.pump()?;
        Ok(self.queue.pop_front())
    }

    /// The next watch event, waiting up to `timeout` (`None`: forever);
    /// `Ok(None)` on timeout.
    pub fn read_watch(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<WatchEvent>, XenbusError> {
        let deadline = timeout.map(|t| self.deadline(t));
        loop {
            if let Some(ev) = self.try_read_watch()? {
                return Ok(Some(ev));
            }
            match deadline {
                Some(d) => {
                    if self.wait_until(d, XenbusError::Timeout).is_err() {
                        return Ok(None);
                    }
                }
                None => {
                    self.events.wait(self.cfg.wait_slice);
                }
            }
        }
    }

    /// Removes the queued watch events of `token`, after reading what
    /// arrived (never waits); returns how many there were. The others stay
    /// queued in order: a single-threaded guest can look for one watch
    /// (its `control/shutdown`) between the reads of its devices' events.
    pub fn take_watch_events(&mut self, token: &str) -> Result<usize, XenbusError> {
        self.ensure_connected()?;
        self.pump()?;
        let before = self.queue.len();
        self.queue.retain(|ev| ev.token != token);
        Ok(before - self.queue.len())
    }

    /// Watch events queued.
    #[must_use]
    pub fn queued_events(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    //! The client against a fake xenstored (pure logic: a map of nodes) on
    //! the server end of a heap page; `notify` runs the fake server at once,
    //! `wait` advances a fake clock.

    use super::*;
    use std::cell::{Cell, RefCell, UnsafeCell};
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use crate::FnEvents;
    use xen_abi::io::xs_wire::{XENSTORE_ERROR_RINGIDX, XENSTORE_SERVER_FEATURE_ERROR};
    use xenstore_wire::{Header, PacketWriter};

    #[repr(C, align(4096))]
    struct Page(UnsafeCell<[u8; 4096]>);

    fn page() -> *mut u8 {
        // Leaked: the client and the fake server use it for the whole test.
        let p: &'static Page = Box::leak(Box::new(Page(UnsafeCell::new([0; 4096]))));
        p.0.get().cast()
    }

    fn shared(p: *mut u8) -> SharedRing {
        // SAFETY: a leaked, page-aligned 4096-byte heap page used only
        // through rings (one guest end, one server end) and atomics.
        unsafe { SharedRing::new(p, 4096) }.expect("valid page")
    }

    fn word(p: *mut u8, off: usize) -> &'static AtomicU32 {
        // SAFETY: `off` is a 4-aligned offset inside the leaked page, which
        // is only accessed atomically.
        unsafe { AtomicU32::from_ptr(p.add(off).cast()) }
    }

    /// What the fake server does with the next request.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Quirk {
        None,
        /// Answer nothing.
        Silent,
        /// Send a watch event and a reply with a wrong `req_id` first.
        EventAndStaleFirst,
        /// Publish an impossible `rsp_prod`.
        CorruptRspProd,
        /// Reply with another message type.
        WrongType,
    }

    struct FakeXenstored {
        page: *mut u8,
        ring: Option<XsRing>,
        dec: Decoder,
        nodes: BTreeMap<String, Vec<u8>>,
        watches: Vec<(String, Vec<u8>)>,
        quirk: Quirk,
        pending_out: Vec<u8>,
        requests: u32,
    }

    impl FakeXenstored {
        fn new(page: *mut u8) -> Self {
            word(page, xs_offsets::SERVER_FEATURES).store(
                XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR,
                Ordering::SeqCst,
            );
            Self {
                page,
                ring: Some(XsRing::server(shared(page)).expect("server end")),
                dec: Decoder::new(),
                nodes: BTreeMap::new(),
                watches: Vec::new(),
                quirk: Quirk::None,
                pending_out: Vec::new(),
                requests: 0,
            }
        }

        fn abs(p: &str) -> String {
            if p.starts_with('/') {
                p.into()
            } else {
                format!("/local/domain/1/{p}")
            }
        }

        fn fire(&mut self, path: &str) {
            for (w, tok) in self.watches.clone() {
                if path.starts_with(&Self::abs(&w)) {
                    let _ = PacketWriter::watch_event(&mut self.pending_out, path.as_bytes(), &tok);
                }
            }
        }

        fn handle(&mut self, hdr: Header, payload: &[u8]) {
            self.requests += 1;
            let quirk = self.quirk;
            let req = Request::parse(&hdr, payload).expect("client sends valid requests");
            let ty = req.msg_type();
            let mut reply: Result<Vec<u8>, XsError> = Ok(b"OK\0".to_vec());
            match req {
                Request::Read { path } => {
                    reply = self
                        .nodes
                        .get(&Self::abs(path))
                        .cloned()
                        .ok_or(XsError::Enoent)
                }
                Request::Write { path, value } => {
                    self.nodes.insert(Self::abs(path), value.to_vec());
                    self.fire(&Self::abs(path));
                }
                Request::Directory { path } => {
                    let base = Self::abs(path) + "/";
                    let mut out = Vec::new();
                    for k in self.nodes.keys() {
                        if let Some(rest) = k.strip_prefix(&base) {
                            if !rest.contains('/') {
                                out.extend_from_slice(rest.as_bytes());
                                out.push(0);
                            }
                        }
                    }
                    reply = Ok(out);
                }
                Request::Watch { path, token, .. } => {
                    self.watches.push((path.into(), token.to_vec()));
                    let _ =
                        PacketWriter::watch_event(&mut self.pending_out, path.as_bytes(), token);
                }
                Request::TransactionStart => reply = Ok(b"7\0".to_vec()),
                Request::TransactionEnd { commit } => {
                    if commit && hdr.tx_id == 7 && self.nodes.contains_key("/conflict") {
                        reply = Err(XsError::Eagain);
                    }
                }
                _ => reply = Err(XsError::Enosys),
            }
            match quirk {
                Quirk::Silent => return,
                Quirk::EventAndStaleFirst => {
                    let _ = PacketWriter::watch_event(&mut self.pending_out, b"/x", b"early");
                    let _ = PacketWriter::whole(
                        &mut self.pending_out,
                        ty,
                        hdr.req_id.wrapping_add(100),
                        0,
                        b"stale",
                    );
                }
                Quirk::CorruptRspProd => {
                    word(self.page, xs_offsets::RSP_PROD).store(5000, Ordering::SeqCst);
                    return;
                }
                _ => {}
            }
            let out_ty = if quirk == Quirk::WrongType {
                MsgType::Mkdir
            } else {
                ty
            };
            match reply {
                Ok(v) => {
                    let _ = PacketWriter::whole(
                        &mut self.pending_out,
                        out_ty,
                        hdr.req_id,
                        hdr.tx_id,
                        &v,
                    );
                }
                Err(e) => PacketWriter::error(&mut self.pending_out, hdr.req_id, hdr.tx_id, e),
            }
        }

        /// What xenstored does on a notification.
        fn on_event(&mut self) {
            if word(self.page, xs_offsets::CONNECTION).load(Ordering::SeqCst) == XENSTORE_RECONNECT
            {
                self.ring = None;
                for off in [
                    xs_offsets::REQ_CONS,
                    xs_offsets::REQ_PROD,
                    xs_offsets::RSP_CONS,
                    xs_offsets::RSP_PROD,
                ] {
                    word(self.page, off).store(0, Ordering::SeqCst);
                }
                self.ring = Some(XsRing::server(shared(self.page)).expect("server end"));
                self.dec = Decoder::new();
                self.watches.clear();
                self.pending_out.clear();
                word(self.page, xs_offsets::ERROR).store(XENSTORE_ERROR_NONE, Ordering::SeqCst);
                word(self.page, xs_offsets::CONNECTION).store(XENSTORE_CONNECTED, Ordering::SeqCst);
                return;
            }
            if word(self.page, xs_offsets::ERROR).load(Ordering::SeqCst) != XENSTORE_ERROR_NONE {
                return;
            }
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            let mut buf = [0u8; 1024];
            while let Ok(n) = ring.read(&mut buf) {
                if n == 0 {
                    break;
                }
                self.dec.push(&buf[..n]);
            }
            let mut packets = Vec::new();
            while let Ok(Some((h, p))) = self.dec.next_packet() {
                packets.push((h, p.to_vec()));
            }
            for (h, p) in packets {
                self.handle(h, &p);
            }
            if let Some(ring) = self.ring.as_mut() {
                let n = ring.write(&self.pending_out);
                self.pending_out.drain(..n);
            }
        }
    }

    type Events = FnEvents<
        Box<dyn Fn() -> Result<(), i32>>,
        Box<dyn Fn(Duration) -> bool>,
        Box<dyn Fn() -> u64>,
    >;

    struct Setup {
        page: *mut u8,
        server: Rc<RefCell<FakeXenstored>>,
        waits: Rc<Cell<u64>>,
    }

    fn setup() -> (Setup, Events) {
        let p = page();
        let server = Rc::new(RefCell::new(FakeXenstored::new(p)));
        let clock = Rc::new(Cell::new(0u64));
        let waits = Rc::new(Cell::new(0u64));
        let (s1, s2, c1, c2, w) = (
            Rc::clone(&server),
            Rc::clone(&server),
            Rc::clone(&clock),
            Rc::clone(&clock),
            Rc::clone(&waits),
        );
        let events: Events = FnEvents {
            notify: Box::new(move || {
                s1.borrow_mut().on_event();
                Ok(())
            }),
            wait: Box::new(move |t: Duration| {
                // The server also runs when the guest waits (it may have
                // been notified of space by the guest's reads).
                s2.borrow_mut().on_event();
                c1.set(c1.get() + t.as_nanos() as u64);
                w.set(w.get() + 1);
                true
            }),
            now_ns: Box::new(move || c2.get()),
        };
        (
            Setup {
                page: p,
                server,
                waits,
            },
            events,
        )
    }

    fn client() -> (Setup, XenbusClient<Events>) {
        let (s, ev) = setup();
        let c = XenbusClient::new(shared(s.page), ev, ClientConfig::default()).expect("client");
        (s, c)
    }

    #[test]
    fn test_client_write_then_read_returns_value() {
        // Arrange
        let (_s, mut c) = client();

        // Act
        c.write(0, "data/x", b"hello").expect("write");
        let v = c.read(0, "data/x").expect("read");

        // Assert
        assert_eq!(v, b"hello");
        assert_eq!(c.stats().requests, 2);
    }

    #[test]
    fn test_client_missing_node_is_xs_enoent() {
        let (_s, mut c) = client();
        assert_eq!(c.read(0, "nope"), Err(XenbusError::Xs(XsError::Enoent)));
    }

    #[test]
    fn test_client_directory_lists_children() {
        let (_s, mut c) = client();
        c.write(0, "d/a", b"1").expect("write");
        c.write(0, "d/b", b"2").expect("write");
        assert_eq!(c.directory(0, "d").expect("dir"), vec!["a", "b"]);
    }

    #[test]
    fn test_client_value_larger_than_ring_crosses_wrap() {
        let (_s, mut c) = client();
        let v = vec![b'z'; 3000];
        for i in 0..5 {
            c.write(0, &format!("big{i}"), &v).expect("write");
            assert_eq!(c.read(0, &format!("big{i}")).expect("read"), v);
        }
    }

    #[test]
    fn test_client_event_and_stale_reply_before_reply_are_sorted() {
        // Arrange
        let (s, mut c) = client();
        c.write(0, "k", b"v").expect("write");
        s.server.borrow_mut().quirk = Quirk::EventAndStaleFirst;

        // Act
        let v = c.read(0, "k").expect("read");

        // Assert
        assert_eq!(v, b"v");
        assert_eq!(c.stats().stale_replies, 1);
        assert_eq!(
            c.try_read_watch().expect("no error"),
            Some(WatchEvent {
                path: "/x".into(),
                token: "early".into()
            })
        );
    }

    #[test]
    fn test_client_watch_fires_on_write() {
        let (_s, mut c) = client();
        c.watch("dev", "tok").expect("watch");
        let first = c.read_watch(Some(Duration::from_secs(1))).expect("event");
        assert_eq!(first.map(|e| e.token), Some("tok".into()));
        c.write(0, "dev/vif", b"1").expect("write");
        let ev = c.read_watch(Some(Duration::from_secs(1))).expect("event");
        assert_eq!(
            ev,
            Some(WatchEvent {
                path: "/local/domain/1/dev/vif".into(),
                token: "tok".into()
            })
        );
        assert_eq!(c.read_watch(Some(Duration::from_millis(50))), Ok(None));
    }

    #[test]
    fn test_client_take_watch_events_removes_only_its_tokens_events() {
        let (_s, mut c) = client();
        c.watch("dev", "dev-tok").expect("watch");
        c.watch("control", "ctl-tok").expect("watch");
        // Both first events (Xen fires a watch once when it is set), then
        // one more of each.
        c.write(0, "dev/vif", b"1").expect("write");
        c.write(0, "control/shutdown", b"poweroff").expect("write");
        assert_eq!(c.take_watch_events("ctl-tok"), Ok(2));
        assert_eq!(c.take_watch_events("ctl-tok"), Ok(0));
        let mut left = Vec::new();
        while let Some(ev) = c.try_read_watch().expect("no error") {
            left.push(ev.token);
        }
        assert_eq!(left, ["dev-tok", "dev-tok"]);
    }

    #[test]
    fn test_client_transaction_conflict_is_eagain() {
        let (_s, mut c) = client();
        let t = c.transaction_start().expect("start");
        assert_eq!(t, 7);
        c.write(t, "/conflict", b"1").expect("write");
        assert_eq!(
            c.transaction_end(t, true),
            Err(XenbusError::Xs(XsError::Eagain))
        );
    }

    #[test]
    fn test_client_silent_server_times_out() {
        // Arrange
        let (s, ev) = setup();
        let cfg = ClientConfig {
            timeout: Duration::from_millis(100),
            ..ClientConfig::default()
        };
        let mut c = XenbusClient::new(shared(s.page), ev, cfg).expect("client");
        s.server.borrow_mut().quirk = Quirk::Silent;

        // Act
        let r = c.read(0, "x");

        // Assert
        assert_eq!(r, Err(XenbusError::Timeout));
        assert!(s.waits.get() <= 10, "bounded waits: {}", s.waits.get());
    }

    #[test]
    fn test_client_corrupt_rsp_prod_is_ring_error_then_reconnects() {
        // Arrange
        let (s, mut c) = client();
        c.watch("w", "t").expect("watch");
        let _ = c.read_watch(Some(Duration::from_millis(10)));
        s.server.borrow_mut().quirk = Quirk::CorruptRspProd;

        // Act
        let broken = c.read(0, "x");
        s.server.borrow_mut().quirk = Quirk::None;
        let healed = c.write(0, "after", b"1");

        // Assert
        assert!(matches!(broken, Err(XenbusError::Ring(_))), "{broken:?}");
        assert_eq!(healed, Ok(()));
        assert_eq!(c.stats().reconnections, 1);
        assert_eq!(s.server.borrow().watches.len(), 1, "watch registered again");
    }

    #[test]
    fn test_client_server_error_state_fails_then_reconnects() {
        // Arrange
        let (s, mut c) = client();
        word(s.page, xs_offsets::ERROR).store(XENSTORE_ERROR_RINGIDX, Ordering::SeqCst);
        let cfg_no_auto = ClientConfig {
            auto_reconnect: false,
            ..c.config()
        };
        c.cfg = cfg_no_auto;

        // Act
        let refused = c.read(0, "x");
        c.cfg.auto_reconnect = true;
        let healed = c.write(0, "y", b"1");

        // Assert
        assert_eq!(refused, Err(XenbusError::Server(XENSTORE_ERROR_RINGIDX)));
        assert_eq!(healed, Ok(()));
        assert_eq!(c.server_error(), XENSTORE_ERROR_NONE);
    }

    #[test]
    fn test_client_wrong_reply_type_is_bad_reply() {
        let (s, mut c) = client();
        s.server.borrow_mut().quirk = Quirk::WrongType;
        assert_eq!(c.read(0, "x"), Err(XenbusError::Xs(XsError::Enoent)));
        assert_eq!(c.write(0, "x", b"1"), Err(XenbusError::BadReply));
    }

    #[test]
    fn test_client_start_skips_stale_responses() {
        // Arrange: a previous user left 3 unread response bytes.
        let (s, ev) = setup();
        word(s.page, xs_offsets::RSP_PROD).store(3, Ordering::SeqCst);

        // Act
        let mut c = XenbusClient::new(shared(s.page), ev, ClientConfig::default()).expect("client");

        // Assert
        assert_eq!(word(s.page, xs_offsets::RSP_CONS).load(Ordering::SeqCst), 3);
        s.server.borrow_mut().ring = None;
        s.server.borrow_mut().ring = Some(XsRing::server(shared(s.page)).expect("server end"));
        c.write(0, "a", b"b").expect("works after the skip");
    }

    #[test]
    fn test_client_start_on_corrupt_page_reconnects() {
        let (s, ev) = setup();
        word(s.page, xs_offsets::REQ_PROD).store(9999, Ordering::SeqCst);
        let mut c = XenbusClient::new(shared(s.page), ev, ClientConfig::default()).expect("client");
        assert_eq!(c.stats().reconnections, 1);
        c.write(0, "a", b"b").expect("works after the reconnection");
    }

    #[test]
    fn test_client_oversized_request_is_too_big() {
        let (_s, mut c) = client();
        let v = vec![0u8; XENSTORE_PAYLOAD_MAX + 1];
        assert_eq!(c.write(0, "x", &v), Err(XenbusError::TooBig));
    }
}
