//! Receiving on a [`NetFront`]: rx responses taken off the ring as chains,
//! each chain checked and turned into a frame (copied out, or handed over
//! in place until released), the rx pages posted again.

use xen_front_platform::{Platform, PAGE_SIZE};

use super::{NetFront, ETH_HLEN, MAX_FRAME};
use crate::error::{FailReason, NetfrontError};
use crate::request::{parse_rx, rx_request, PacketMeta, RxParse, MAX_EXTRAS, MAX_SLOTS};

impl<'p, P: Platform + ?Sized> NetFront<'p, P> {
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

    pub(super) fn take_rx_frame(&mut self, q: usize) -> Result<Option<RxFrame>, NetfrontError> {
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
