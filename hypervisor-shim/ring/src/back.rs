//! The back end of an sring: consumes requests, produces responses.

use core::fmt;
use core::marker::PhantomData;

use crate::shared::{
    read_slot, write_slot, Geometry, SharedRing, REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD,
};
use crate::sync::{fence, Ordering};
use crate::{need_notify, RingEntry, RingError, SRING_HEADER_SIZE};

/// The back end of a shared request/response ring (`*_back_ring_t`).
///
/// Requests are copied out of their slots once each with
/// [`BackRing::take_request`]; every fresh `req_prod` is validated with
/// `RING_REQUEST_PROD_OVERFLOW` and clamped like
/// `XEN_RING_NR_UNCONSUMED_REQUESTS`. Responses are written with
/// [`BackRing::push_response`] and published with
/// [`BackRing::push_responses_and_check_notify`].
///
/// `Send` but not `Sync`: one thread drives an endpoint at a time.
///
/// ```compile_fail
/// fn is_sync<T: Sync>() {}
/// is_sync::<xen_ring::BackRing<u64, u64>>();
/// ```
pub struct BackRing<Req, Rsp> {
    mem: SharedRing,
    /// `nr_ents`, a power of two.
    nr_ents: u32,
    entry_size: usize,
    slot_align: usize,
    /// Next response slot to fill. Range: `rsp_prod_pvt <= req_cons` and
    /// `req_cons - rsp_prod_pvt <= nr_ents`.
    rsp_prod_pvt: u32,
    /// Next request to take. Range: `req_cons <= req_avail`.
    req_cons: u32,
    /// The `rsp_prod` we last published. Range: `rsp_prod_pub <= rsp_prod_pvt`
    /// and `req_cons - rsp_prod_pub <= nr_ents`.
    rsp_prod_pub: u32,
    /// `req_cons` + the validated, clamped number of unconsumed requests at the
    /// last fresh read of `req_prod`. Range:
    /// `req_avail - rsp_prod_pvt <= nr_ents`.
    req_avail: u32,
    _entries: PhantomData<fn(Rsp) -> Req>,
}

// SAFETY: the ring owns its SharedRing (Send) and plain indices; Req/Rsp values
// only move in and out by copy. It is not Sync (NonNull inside).
unsafe impl<Req: Send, Rsp: Send> Send for BackRing<Req, Rsp> {}

impl<Req, Rsp> fmt::Debug for BackRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("mem", &self.mem)
            .field("nr_ents", &self.nr_ents)
            .field("entry_size", &self.entry_size)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("req_cons", &self.req_cons)
            .field("rsp_prod_pub", &self.rsp_prod_pub)
            .field("req_avail", &self.req_avail)
            .finish()
    }
}

impl<Req: RingEntry, Rsp: RingEntry> BackRing<Req, Rsp> {
    /// `BACK_RING_ATTACH(r, s, s->rsp_prod, size)`: attaches to a ring the
    /// front end initialized; `rsp_prod_pvt = req_cons =` the page's
    /// `rsp_prod` (0 on a fresh ring, so this is also `BACK_RING_INIT`). The
    /// page's `req_prod` is not trusted here; it is validated on every read.
    pub fn attach(mem: SharedRing) -> Result<Self, RingError> {
        let geo = Geometry::new::<Req, Rsp>(&mem)?;
        let rsp_prod = mem.index(RSP_PROD).load(Ordering::Acquire);
        Ok(BackRing {
            mem,
            nr_ents: geo.nr_ents,
            entry_size: geo.entry_size,
            slot_align: geo.slot_align,
            rsp_prod_pvt: rsp_prod,
            req_cons: rsp_prod,
            rsp_prod_pub: rsp_prod,
            req_avail: rsp_prod,
            _entries: PhantomData,
        })
    }

    /// Gives the shared memory back.
    pub fn into_shared(self) -> SharedRing {
        self.mem
    }

    /// `RING_SIZE`: the number of slots, a power of two.
    #[inline]
    pub fn nr_ents(&self) -> u32 {
        self.nr_ents
    }

    /// `RING_SIZE` (same as [`BackRing::nr_ents`]).
    #[inline]
    pub fn size(&self) -> u32 {
        self.nr_ents
    }

    /// The size of one slot: `max(size_of::<Req>(), size_of::<Rsp>())`.
    #[inline]
    pub fn entry_size(&self) -> usize {
        self.entry_size
    }

    /// The request consumer index (`req_cons`).
    #[inline]
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// The private response producer index (`rsp_prod_pvt`).
    #[inline]
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests taken but not yet answered (`req_cons - rsp_prod_pvt`): how
    /// many responses can be pushed.
    #[inline]
    pub fn pending_responses(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Responses pushed but not yet published (`rsp_prod_pvt - rsp_prod`).
    #[inline]
    pub fn unpublished_responses(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_prod_pub)
    }

    #[inline(always)]
    fn debug_check(&self) {
        debug_assert!(self.req_cons.wrapping_sub(self.rsp_prod_pvt) <= self.nr_ents);
        debug_assert!(self.rsp_prod_pvt.wrapping_sub(self.rsp_prod_pub) <= self.nr_ents);
        debug_assert!(self.req_cons.wrapping_sub(self.rsp_prod_pub) <= self.nr_ents);
        debug_assert!(
            self.req_avail.wrapping_sub(self.req_cons)
                <= self.nr_ents - self.req_cons.wrapping_sub(self.rsp_prod_pvt)
        );
    }

    #[inline(always)]
    fn slot_ptr(&self, idx: u32) -> *mut u8 {
        let slot = (idx & (self.nr_ents - 1)) as usize;
        // slot < nr_ents and 64 + nr_ents * entry_size <= len (Geometry).
        self.mem.ptr_at(SRING_HEADER_SIZE + slot * self.entry_size)
    }

    /// Validates a `req_prod` value read once from the page and returns the
    /// number of requests that may be taken.
    #[inline]
    fn unconsumed_for(&self, prod: u32) -> Result<u32, RingError> {
        // RING_REQUEST_PROD_OVERFLOW
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.nr_ents {
            return Err(RingError::ProducerOverflow {
                prod,
                cons: self.rsp_prod_pvt,
                limit: self.nr_ents,
            });
        }
        // XEN_RING_NR_UNCONSUMED_REQUESTS, with the free slots counted from
        // the published `rsp_prod` rather than `rsp_prod_pvt`: the slots
        // from `rsp_prod` to `req_cons` are ours (requests taken, responses
        // not yet published). Counted from `rsp_prod_pvt`, a hostile
        // `req_prod` hands us the slot of a response we have not published
        // yet, and answering it overwrites that response
        // (`rsp_prod_pvt - rsp_prod > nr_ents`; found by the `ring` fuzz
        // target). An honest front end never publishes past `rsp_prod +
        // nr_ents`, so this never holds one back.
        let req = prod.wrapping_sub(self.req_cons);
        let rsp = self.nr_ents - self.req_cons.wrapping_sub(self.rsp_prod_pub);
        Ok(req.min(rsp))
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`: reads `req_prod` once, validates it
    /// (`RING_REQUEST_PROD_OVERFLOW`: `req_prod - rsp_prod_pvt > nr_ents` is
    /// [`RingError::ProducerOverflow`]) and returns
    /// `min(req_prod - req_cons, nr_ents - (req_cons - rsp_prod))`, with
    /// `rsp_prod` the published index (`ring.h` counts from `rsp_prod_pvt`;
    /// see `unconsumed_for` for why not here).
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let prod = self.mem.index(REQ_PROD).load(Ordering::Acquire);
        self.unconsumed_for(prod)
    }

    /// Like [`BackRing::unconsumed_requests`], and remembers the result so the
    /// following `take_request` calls need not read `req_prod` again.
    #[inline]
    pub fn check_for_requests(&mut self) -> Result<u32, RingError> {
        let n = self.unconsumed_requests()?;
        self.req_avail = self.req_cons.wrapping_add(n);
        Ok(n)
    }

    /// Copies the next request out of its slot once (`RING_COPY_REQUEST`) and
    /// advances `req_cons`. `Ok(None)` when there is none (or when
    /// `RING_REQUEST_CONS_OVERFLOW`: all slots hold unanswered requests).
    ///
    /// Only reads `req_prod` from the page when the requests seen last time
    /// are used up.
    #[inline]
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        self.debug_check();
        if self.req_cons == self.req_avail && self.check_for_requests()? == 0 {
            return Ok(None);
        }
        let src = self.slot_ptr(self.req_cons);
        // SAFETY: src is a slot inside the shared memory (masked index,
        // Geometry bound), valid for reads of entry_size >= size_of::<Req>()
        // bytes, aligned to slot_align. The Acquire load of req_prod that
        // covered this index orders the read after the front end's writes; a
        // hostile front end can only make the bytes garbage, which any Req
        // accepts.
        let req = unsafe { read_slot::<Req>(src, self.slot_align) };
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Takes up to `out.len()` requests; returns how many were copied into
    /// the front of `out`. Reads `req_prod` at most once.
    #[inline]
    pub fn take_requests(&mut self, out: &mut [Req]) -> Result<usize, RingError> {
        let mut avail = self.req_avail.wrapping_sub(self.req_cons);
        if (avail as usize) < out.len() {
            avail = self.check_for_requests()?;
        }
        let n = (avail as usize).min(out.len());
        for slot in &mut out[..n] {
            let src = self.slot_ptr(self.req_cons);
            // SAFETY: as in take_request: req_cons < validated req_avail.
            *slot = unsafe { read_slot::<Req>(src, self.slot_align) };
            self.req_cons = self.req_cons.wrapping_add(1);
        }
        Ok(n)
    }

    /// Writes `rsp` into the slot at `rsp_prod_pvt` and advances it. Not yet
    /// visible to the front end: publish with
    /// [`BackRing::push_responses_and_check_notify`].
    ///
    /// Fails with [`RingError::ResponseOverrun`] if every taken request has
    /// already been answered.
    #[inline]
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.debug_check();
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::ResponseOverrun {
                rsp_prod: self.rsp_prod_pvt,
                req_cons: self.req_cons,
            });
        }
        let dst = self.slot_ptr(self.rsp_prod_pvt);
        // SAFETY: dst is a slot inside the shared memory, valid for writes of
        // entry_size >= size_of::<Rsp>() bytes, aligned to slot_align. The
        // slot's request was already copied out (rsp_prod_pvt < req_cons).
        unsafe { write_slot(dst, rsp, self.slot_align) };
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Pushes as many of `rsps` as there are taken, unanswered requests;
    /// returns how many.
    #[inline]
    pub fn push_responses(&mut self, rsps: &[Rsp]) -> usize {
        let n = (self.pending_responses() as usize).min(rsps.len());
        for rsp in &rsps[..n] {
            let dst = self.slot_ptr(self.rsp_prod_pvt);
            // SAFETY: as in push_response: n <= req_cons - rsp_prod_pvt.
            unsafe { write_slot(dst, rsp, self.slot_align) };
            self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        }
        n
    }

    /// `RING_PUSH_RESPONSES`: publishes `rsp_prod = rsp_prod_pvt` (Release,
    /// the `xen_wmb()`), without checking whether to notify.
    #[inline]
    pub fn publish_responses(&mut self) {
        self.mem
            .index(RSP_PROD)
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.rsp_prod_pub = self.rsp_prod_pvt;
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes `rsp_prod`
    /// (Release), full fence (`xen_mb()`), then returns whether `rsp_event`
    /// lies in `(old, new]`. Returns `false` without a fence when nothing is
    /// new.
    #[inline]
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod_pub;
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        self.mem.index(RSP_PROD).store(new, Ordering::Release);
        self.rsp_prod_pub = new;
        fence(Ordering::SeqCst);
        let event = self.mem.index(RSP_EVENT).load(Ordering::Acquire);
        need_notify(old, new, event)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: `true` if requests are pending;
    /// otherwise sets `req_event = req_cons + 1`, full fence, and checks
    /// again. Call before sleeping on the event channel; sleep only on
    /// `false`.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.final_check_for_requests_batched(1)
    }

    /// [`BackRing::final_check_for_requests`] that asks to be notified only
    /// once `ahead` more requests are published: `req_event = req_cons +
    /// ahead`, `ahead` clamped to `1..=` the requests the front end can still
    /// send without a new response (`rsp_prod + nr_ents - req_cons`).
    ///
    /// Batching here is only safe if the front end keeps sending until that
    /// many are published (or also notifies otherwise).
    pub fn final_check_for_requests_batched(&mut self, ahead: u32) -> Result<bool, RingError> {
        if self.req_cons != self.req_avail || self.check_for_requests()? != 0 {
            return Ok(true);
        }
        self.set_req_event(ahead);
        fence(Ordering::SeqCst);
        Ok(self.check_for_requests()? != 0)
    }

    /// Sets `req_event = req_cons + ahead` (Release store, no fence), `ahead`
    /// clamped as in [`BackRing::final_check_for_requests_batched`]; returns
    /// the event index written.
    pub fn set_req_event(&mut self, ahead: u32) -> u32 {
        let room = self
            .nr_ents
            .saturating_sub(self.req_cons.wrapping_sub(self.rsp_prod_pub));
        let ahead = ahead.min(room).max(1);
        let event = self.req_cons.wrapping_add(ahead);
        self.mem.index(REQ_EVENT).store(event, Ordering::Release);
        event
    }
}
