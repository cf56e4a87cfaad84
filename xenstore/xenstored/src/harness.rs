//! Drives the engine without sockets or a daemon: the fuzz targets
//! (`tests/fuzz`) and the stable property tests share this code.
//!
//! A [`Harness`] holds one [`Core`] and [`CONNS`] connections: the Dom0
//! socket, guest domain 1 (bytes handed straight to its decoder), a
//! read-only Dom0 socket, and guest domains 2 and 3 over real
//! `xenstore_domain_interface` pages in memory, served by xenstored's own
//! [`RingTransport`] while the guest's end of each page may be written
//! hostile indices ([`Harness::poke_ring`]). What a connection does wrong
//! is handled as the server handles it: a ring is failed and reset, a
//! socket closed.

use std::any::Any;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::eventfd::EventFd;
use xen_abi::io::xs_wire::XENSTORE_ERROR_PROTO;
use xen_ring::bytes::{xs_offsets, XsRing};
use xen_ring::SharedRing;
use xenstore_wire::{DecodeError, Decoder};

use crate::core::{ConnKind, Core};
use crate::ops::Caller;
use crate::transport::{Notifier, RingPage, RingTransport, Transport, TransportError, Wakeup};
use crate::watch::ConnId;

/// The number of connections of a [`Harness`].
pub const CONNS: usize = 5;

/// Connection indices of a [`Harness`] ([`Harness::feed_conn`]).
pub mod conn {
    /// The privileged Dom0 socket.
    pub const DOM0: usize = 0;
    /// Guest domain 1, bytes straight into its decoder.
    pub const GUEST: usize = 1;
    /// A read-only Dom0 socket.
    pub const DOM0_RO: usize = 2;
    /// Guest domain 2 over a ring page.
    pub const RING_A: usize = 3;
    /// Guest domain 3 over a ring page.
    pub const RING_B: usize = 4;
}

/// The words of a ring page a hostile guest may overwrite
/// ([`Harness::poke_ring`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingWord {
    /// `req_cons` (the server's index).
    ReqCons,
    /// `req_prod`.
    ReqProd,
    /// `rsp_cons`.
    RspCons,
    /// `rsp_prod` (the server's index).
    RspProd,
    /// `connection` (`XENSTORE_RECONNECT` asks for a reset).
    Connection,
}

impl RingWord {
    /// The word for a selector byte (modulo 5).
    #[must_use]
    pub fn from_byte(b: u8) -> RingWord {
        match b % 5 {
            0 => RingWord::ReqCons,
            1 => RingWord::ReqProd,
            2 => RingWord::RspCons,
            3 => RingWord::RspProd,
            _ => RingWord::Connection,
        }
    }

    fn offset(self) -> usize {
        match self {
            RingWord::ReqCons => xs_offsets::REQ_CONS,
            RingWord::ReqProd => xs_offsets::REQ_PROD,
            RingWord::RspCons => xs_offsets::RSP_CONS,
            RingWord::RspProd => xs_offsets::RSP_PROD,
            RingWord::Connection => xs_offsets::CONNECTION,
        }
    }
}

/// A page-aligned page of memory for a ring.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// The event channel of a harness ring: nothing to signal, the harness
/// serves the ring after each write (the eventfd is never polled).
#[derive(Debug)]
struct NoNotify(EventFd);

impl Notifier for NoNotify {
    fn notify(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn ack(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The guest's end of a ring page and xenstored's transport on it.
struct HarnessRing {
    // Dropped first: it points into the page the transport keeps.
    guest: XsRing,
    base: NonNull<u8>,
    transport: RingTransport,
}

impl std::fmt::Debug for HarnessRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessRing")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl HarnessRing {
    fn new() -> Option<HarnessRing> {
        let page: Box<Page> = Box::new(Page([0; 4096]));
        let base = NonNull::from(&page.0).cast::<u8>();
        let keep: Box<dyn Any + Send> = page;
        // SAFETY: `base` is the 4096-aligned start of the boxed page, valid
        // for reads and writes of 4096 bytes until `keep` (owned by the
        // RingPage) is dropped; the box is never accessed through a Rust
        // reference again.
        let rp = unsafe { RingPage::from_raw(base, keep) };
        let fd = EventFd::new().ok()?;
        let transport =
            RingTransport::new(rp, Box::new(NoNotify(fd)), crate::core::SERVER_FEATURES).ok()?;
        // SAFETY: the page stays valid while `transport` lives, and `guest`
        // is dropped before it (field order); it is the only guest end.
        let shared = unsafe { SharedRing::new(base.as_ptr(), 4096) }.ok()?;
        let guest = XsRing::guest(shared).ok()?;
        guest.set_connection(xen_abi::io::xs_wire::XENSTORE_CONNECTED);
        Some(HarnessRing {
            guest,
            base,
            transport,
        })
    }

    fn word(&self, w: RingWord) -> &AtomicU32 {
        // SAFETY: the offsets are 4-aligned and inside the 2076-byte
        // interface at the start of the page, valid while self lives; every
        // access to these words is atomic.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(w.offset()).cast()) }
    }
}

// SAFETY: the raw page pointer is only used through atomics and xen-ring's
// volatile accessors, and the page moves with the value.
unsafe impl Send for HarnessRing {}

#[derive(Debug)]
struct HarnessConn {
    id: ConnId,
    decoder: Decoder,
    ring: Option<HarnessRing>,
    closed: bool,
}

/// An engine with the [`CONNS`] connections (see the module doc).
#[derive(Debug)]
pub struct Harness {
    /// The engine.
    pub core: Core,
    /// The Dom0 connection.
    pub dom0: ConnId,
    /// The guest connection (domain 1).
    pub guest: ConnId,
    conns: Vec<HarnessConn>,
    scratch: Vec<u8>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh store and the connections; domains 1 to 3 are introduced
    /// and own their homes.
    #[must_use]
    pub fn new() -> Harness {
        let mut core = Core::new(crate::store::Tree::new(), true);
        let dom0 = core.new_conn(Caller::dom0(), ConnKind::Socket { read_only: false });
        let guest = core.new_conn(Caller::guest(1), ConnKind::Domain);
        let ro = core.new_conn(Caller::dom0(), ConnKind::Socket { read_only: true });
        let mut conns = vec![
            HarnessConn {
                id: dom0,
                decoder: Decoder::new(),
                ring: None,
                closed: false,
            },
            HarnessConn {
                id: guest,
                decoder: Decoder::new(),
                ring: None,
                closed: false,
            },
            HarnessConn {
                id: ro,
                decoder: Decoder::new(),
                ring: None,
                closed: false,
            },
        ];
        for domid in 1..=3 {
            let _ = core.introduce(domid, 0, 0);
            core.tree.upsert(
                &format!("/local/domain/{domid}"),
                Vec::new(),
                xenstore_wire::PermList::owner(domid, xenstore_wire::PERM_NONE),
            );
        }
        for domid in 2..=3 {
            let id = core.new_conn(Caller::guest(domid), ConnKind::Domain);
            core.attach_domain_conn(domid, id);
            let ring = HarnessRing::new();
            conns.push(HarnessConn {
                id,
                decoder: Decoder::new(),
                closed: ring.is_none(),
                ring,
            });
        }
        core.actions.clear();
        core.journal.buf.clear();
        Harness {
            core,
            dom0,
            guest,
            conns,
            scratch: vec![0; 4096],
        }
    }

    /// Feeds bytes as sent by Dom0 (`guest` false) or guest domain 1,
    /// handling every complete packet and discarding the output; an
    /// oversized packet is the error that drops a connection.
    pub fn feed(&mut self, guest: bool, data: &[u8]) -> Result<(), DecodeError> {
        let i = if guest { conn::GUEST } else { conn::DOM0 };
        self.feed_conn(i, data)
    }

    /// Feeds bytes on connection `i` (modulo [`CONNS`]): straight into the
    /// decoder of a socket or domain 1, or written by the guest into its
    /// request ring (as much as fits, the ring served in between). Returns
    /// the decode error that closed a socket connection; a ring connection
    /// that errs is failed and reset instead, as the server does.
    pub fn feed_conn(&mut self, i: usize, data: &[u8]) -> Result<(), DecodeError> {
        let i = i % CONNS;
        if self.conns[i].closed {
            return Ok(());
        }
        if self.conns[i].ring.is_some() {
            let mut rest = data;
            // Bounded: each round either moves bytes or stops.
            for _ in 0..64 {
                let Some(ring) = self.conns[i].ring.as_mut() else {
                    break;
                };
                let n = ring.guest.try_write(rest).unwrap_or(0);
                rest = &rest[n..];
                self.serve_ring(i);
                if n == 0 || rest.is_empty() {
                    break;
                }
            }
            return Ok(());
        }
        let c = &mut self.conns[i];
        c.decoder.push(data);
        let mut n = 0usize;
        loop {
            match c.decoder.next_packet() {
                Ok(Some((hdr, payload))) => self.core.handle(c.id, &hdr, payload),
                Ok(None) => break,
                Err(e) => {
                    c.closed = true;
                    self.core.close_conn(c.id);
                    self.discard_output();
                    return Err(e);
                }
            }
            n += 1;
            if n > 10_000 {
                break;
            }
        }
        self.discard_output();
        Ok(())
    }

    /// Writes `value` into word `w` of ring connection `i`'s page (as a
    /// hostile guest may at any time), then serves the ring. A no-op for
    /// connections without a ring.
    pub fn poke_ring(&mut self, i: usize, w: RingWord, value: u32) {
        let i = i % CONNS;
        if let Some(ring) = self.conns[i].ring.as_ref() {
            ring.word(w).store(value, Ordering::SeqCst);
            self.serve_ring(i);
        }
    }

    /// Serves ring connection `i` as the server's event loop does after a
    /// notification: a reconnection request, the requests, the replies.
    fn serve_ring(&mut self, i: usize) {
        let Harness {
            core,
            conns,
            scratch,
            ..
        } = self;
        let c = &mut conns[i];
        let Some(ring) = c.ring.as_mut() else {
            return;
        };
        if c.closed || core.conn(c.id).is_none() {
            c.closed = true;
            return;
        }
        if let Ok(Wakeup::Reconnected) = ring.transport.wakeup() {
            c.decoder = Decoder::new();
            core.reset_conn(c.id);
        }
        let mut bad = None;
        'reads: for _ in 0..16 {
            if !core.can_read(c.id) {
                break;
            }
            match ring.transport.read(scratch) {
                Ok(0) => break,
                Ok(n) => c.decoder.push(&scratch[..n]),
                Err(TransportError::Protocol(code)) => {
                    bad = Some(code);
                    break;
                }
                Err(_) => break,
            }
            while core.can_read(c.id) {
                match c.decoder.next_packet() {
                    Ok(Some((hdr, payload))) => core.handle(c.id, &hdr, payload),
                    Ok(None) => break,
                    Err(_) => {
                        bad = Some(XENSTORE_ERROR_PROTO);
                        break 'reads;
                    }
                }
            }
        }
        // The replies, as far as the response ring takes them.
        if bad.is_none() {
            if let Some(conn) = core.conn_mut(c.id) {
                for _ in 0..64 {
                    let pending = conn.out.pending();
                    if pending.is_empty() {
                        break;
                    }
                    match ring.transport.write(pending) {
                        Ok(0) => break,
                        Ok(n) => conn.out.consume(n),
                        Err(TransportError::Protocol(code)) => {
                            bad = Some(code);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            let _ = ring.transport.flush();
        }
        if let Some(code) = bad {
            ring.transport.fail(code);
            c.decoder = Decoder::new();
            core.reset_conn(c.id);
        }
        // The guest reads what it was sent (a hostile rsp_cons may make
        // this fail: then it reads nothing).
        for _ in 0..8 {
            match ring.guest.read(scratch) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        core.journal.buf.clear();
        core.actions.clear();
    }

    fn discard_output(&mut self) {
        for c in &self.conns {
            if c.ring.is_some() {
                continue;
            }
            if let Some(conn) = self.core.conn_mut(c.id) {
                let len = conn.out.pending().len();
                conn.out.consume(len);
            }
        }
        // Ring connections keep their output for their rings: serve them
        // (a watch event from another connection's write lands there).
        for i in 0..self.conns.len() {
            if self.conns[i].ring.is_some() {
                self.serve_ring(i);
            }
        }
        self.core.journal.buf.clear();
        self.core.actions.clear();
    }

    /// The tree's invariants hold.
    pub fn check(&self) -> Result<(), String> {
        self.core.tree.verify()
    }
}

#[cfg(test)]
mod tests {
    use xenstore_wire::Request;

    use super::*;

    fn enc(r: &Request<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        r.encode(1, 0, &mut v).expect("small request");
        v
    }

    #[test]
    fn test_ring_connection_serves_requests_through_its_page() {
        let mut h = Harness::new();
        let w = enc(&Request::Write {
            path: "x",
            value: b"1",
        });
        h.feed_conn(conn::RING_A, &w).expect("ring feed");
        h.feed_conn(conn::RING_B, &w).expect("ring feed");
        assert_eq!(
            h.core
                .tree
                .get("/local/domain/2/x")
                .map(|n| n.value.clone()),
            Some(b"1".to_vec())
        );
        assert!(h.core.tree.get("/local/domain/3/x").is_some());
        // The reply went through the response ring and the guest read it.
        let ring = h.conns[conn::RING_A].ring.as_ref().expect("ring");
        let rsp_prod = ring.word(RingWord::RspProd).load(Ordering::SeqCst);
        assert!(rsp_prod > 0);
        assert_eq!(
            ring.word(RingWord::RspCons).load(Ordering::SeqCst),
            rsp_prod
        );
        assert!(h.check().is_ok());
    }

    #[test]
    fn test_ring_hostile_index_fails_and_reset_serves_again() {
        let mut h = Harness::new();
        // A producer index far beyond the ring: the server fails the ring.
        h.poke_ring(conn::RING_A, RingWord::ReqProd, 5000);
        let ring = h.conns[conn::RING_A].ring.as_ref().expect("ring");
        assert_eq!(
            ring.guest.error(),
            xen_abi::io::xs_wire::XENSTORE_ERROR_RINGIDX
        );
        // The guest asks to reconnect: indices reset, requests served.
        h.poke_ring(conn::RING_A, RingWord::ReqProd, 0);
        h.poke_ring(
            conn::RING_A,
            RingWord::Connection,
            xen_abi::io::xs_wire::XENSTORE_RECONNECT,
        );
        let ring = h.conns[conn::RING_A].ring.as_ref().expect("ring");
        assert_eq!(
            ring.guest.error(),
            xen_abi::io::xs_wire::XENSTORE_ERROR_NONE
        );
        let w = enc(&Request::Write {
            path: "y",
            value: b"2",
        });
        h.feed_conn(conn::RING_A, &w).expect("ring feed");
        assert!(h.core.tree.get("/local/domain/2/y").is_some());
    }

    #[test]
    fn test_oversized_packet_closes_a_socket_connection() {
        let mut h = Harness::new();
        let hdr = xenstore_wire::Header::new(xenstore_wire::MsgType::Write, 0, 0, 5000);
        assert!(h.feed_conn(conn::DOM0_RO, &hdr.encode()).is_err());
        assert!(h.core.conn(h.conns[conn::DOM0_RO].id).is_none());
        // Later bytes on it are ignored.
        assert!(h.feed_conn(conn::DOM0_RO, b"junk").is_ok());
    }
}
