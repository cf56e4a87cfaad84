//! Transmitting on a [`NetFront`]: frames copied into the tx pages or
//! written in place through reservations, the tx requests of a frame (with
//! its GSO extra), tx responses, and the queue a flow goes to.

use alloc::vec::Vec;

use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::{
    NETTXF_csum_blank, NETTXF_data_validated, NETTXF_extra_info, NETTXF_more_data, NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
};
use xen_front_platform::{Platform, PlatformError, PAGE_SIZE};

use super::{NetFront, RetiredTx, ETH_HLEN};
use crate::error::{FailReason, NetfrontError};
use crate::request::{tx_gso_slot, tx_request, tx_response, Gso, PacketMeta, MAX_SLOTS};

impl<'p, P: Platform + ?Sized> NetFront<'p, P> {
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

    pub(super) fn check_frame(&self, len: usize, meta: &PacketMeta) -> Result<(), NetfrontError> {
        let max = self.max_frame();
        let (_, gso4, gso6) = self.offloads();
        let gso_ok = meta.gso.is_none_or(|g| if g.ipv6 { gso6 } else { gso4 });
        if len < ETH_HLEN || len > max || !gso_ok {
            return Err(NetfrontError::BadFrame { len, max });
        }
        Ok(())
    }

    pub(super) fn room(&self, q: usize, slots: usize, pages: usize) -> bool {
        let qu = &self.queues[q];
        qu.tx.free_requests() as usize >= slots && qu.tx_free.len() >= pages
    }

    /// Pushes the requests of a frame of `len` bytes whose data is in the
    /// tx pages `ids` (one per 4 KiB); the caller checked the room.
    pub(super) fn push_frame(&mut self, q: usize, ids: &[u16], len: usize, meta: PacketMeta) {
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
    pub(super) fn end_stale(&mut self, r: &TxReservation) {
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
