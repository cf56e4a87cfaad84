//! The front end of an sring: produces requests, consumes responses.

use core::fmt;
use core::marker::PhantomData;

use crate::shared::{
    read_slot, write_slot, Geometry, SharedRing, PAD_START, REQ_EVENT, REQ_PROD, RSP_EVENT,
    RSP_PROD,
};
use crate::sync::{fence, Ordering};
use crate::{need_notify, RingEntry, RingError, SRING_HEADER_SIZE};

/// The front end of a shared request/response ring (`*_front_ring_t`).
///
/// Requests are written into slots with [`FrontRing::push_request`] and become
/// visible to the back end when published with
/// [`FrontRing::push_requests_and_check_notify`] (or
/// [`FrontRing::publish_requests`]). Responses are copied out once each with
/// [`FrontRing::take_response`].
///
/// The front distrusts its back end: every `rsp_prod` read from the page is
/// checked against the requests published so far.
///
/// `Send` but not `Sync`: one thread drives an endpoint at a time.
///
/// ```compile_fail
/// fn is_sync<T: Sync>() {}
/// is_sync::<xen_ring::FrontRing<u64, u64>>();
/// ```
pub struct FrontRing<Req, Rsp> {
    mem: SharedRing,
    /// `nr_ents`, a power of two.
    nr_ents: u32,
    entry_size: usize,
    slot_align: usize,
    /// Next request slot to fill. Range: `req_prod_pvt - rsp_cons <= nr_ents`.
    req_prod_pvt: u32,
    /// Next response to consume. Range: `rsp_cons <= rsp_prod_seen`.
    rsp_cons: u32,
    /// The `req_prod` we last published. Range:
    /// `rsp_cons <= req_prod_pub <= req_prod_pvt` (as distances from `rsp_cons`).
    req_prod_pub: u32,
    /// The last validated `rsp_prod` read from the page (a local cache so the
    /// fast path does not touch the shared cache line). Range:
    /// `rsp_prod_seen - rsp_cons <= req_prod_pub - rsp_cons`.
    rsp_prod_seen: u32,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

// SAFETY: the ring owns its SharedRing (Send) and plain indices; Req/Rsp values
// only move in and out by copy, so sending the endpoint to another thread is
// fine when the entry types are Send. It is not Sync (NonNull inside).
unsafe impl<Req: Send, Rsp: Send> Send for FrontRing<Req, Rsp> {}

impl<Req, Rsp> fmt::Debug for FrontRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("mem", &self.mem)
            .field("nr_ents", &self.nr_ents)
            .field("entry_size", &self.entry_size)
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("rsp_cons", &self.rsp_cons)
            .field("req_prod_pub", &self.req_prod_pub)
            .field("rsp_prod_seen", &self.rsp_prod_seen)
            .finish()
    }
}

impl<Req: RingEntry, Rsp: RingEntry> FrontRing<Req, Rsp> {
    /// `XEN_FRONT_RING_INIT`: initializes the shared header (`SHARED_RING_INIT`:
    /// `req_prod = rsp_prod = 0`, `req_event = rsp_event = 1`, padding zeroed)
    /// and attaches the front at index 0 (`FRONT_RING_INIT`).
    pub fn init(mem: SharedRing) -> Result<Self, RingError> {
        let geo = Geometry::new::<Req, Rsp>(&mem)?;
        mem.zero(PAD_START, SRING_HEADER_SIZE);
        mem.index(REQ_PROD).store(0, Ordering::Release);
        mem.index(RSP_PROD).store(0, Ordering::Release);
        mem.index(REQ_EVENT).store(1, Ordering::Release);
        mem.index(RSP_EVENT).store(1, Ordering::Release);
        Ok(Self::with_indices(mem, geo, 0, 0))
    }

    /// `FRONT_RING_ATTACH` to a ring that is already in use (after a
    /// reconnect): `req_prod_pvt` becomes the page's `req_prod` and `rsp_cons`
    /// the page's `rsp_prod`, each read once. When no request is outstanding
    /// the two are equal and this is exactly `FRONT_RING_ATTACH(r, s,
    /// s->rsp_prod, size)`.
    ///
    /// Fails with [`RingError::ProducerOverflow`] if `req_prod - rsp_prod >
    /// nr_ents` (the page was corrupted).
    pub fn attach(mem: SharedRing) -> Result<Self, RingError> {
        let geo = Geometry::new::<Req, Rsp>(&mem)?;
        let req_prod = mem.index(REQ_PROD).load(Ordering::Acquire);
        let rsp_prod = mem.index(RSP_PROD).load(Ordering::Acquire);
        if req_prod.wrapping_sub(rsp_prod) > geo.nr_ents {
            return Err(RingError::ProducerOverflow {
                prod: req_prod,
                cons: rsp_prod,
                limit: geo.nr_ents,
            });
        }
        Ok(Self::with_indices(mem, geo, req_prod, rsp_prod))
    }

    fn with_indices(mem: SharedRing, geo: Geometry, req_prod: u32, rsp_prod: u32) -> Self {
        FrontRing {
            mem,
            nr_ents: geo.nr_ents,
            entry_size: geo.entry_size,
            slot_align: geo.slot_align,
            req_prod_pvt: req_prod,
            rsp_cons: rsp_prod,
            req_prod_pub: req_prod,
            rsp_prod_seen: rsp_prod,
            _entries: PhantomData,
        }
    }

    /// Gives the shared memory back (to re-attach after a reconnect).
    pub fn into_shared(self) -> SharedRing {
        self.mem
    }

    /// `RING_SIZE`: the number of slots, a power of two.
    #[inline]
    pub fn nr_ents(&self) -> u32 {
        self.nr_ents
    }

    /// `RING_SIZE`: the number of slots (same as [`FrontRing::nr_ents`]).
    #[inline]
    pub fn size(&self) -> u32 {
        self.nr_ents
    }

    /// The size of one slot: `max(size_of::<Req>(), size_of::<Rsp>())`.
    #[inline]
    pub fn entry_size(&self) -> usize {
        self.entry_size
    }

    /// The private request producer index (`req_prod_pvt`).
    #[inline]
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// The response consumer index (`rsp_cons`).
    #[inline]
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// `RING_FREE_REQUESTS`: `nr_ents - (req_prod_pvt - rsp_cons)`.
    #[inline]
    pub fn free_requests(&self) -> u32 {
        self.debug_check();
        self.nr_ents - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FULL`.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests pushed but not yet published (`req_prod_pvt - req_prod`).
    #[inline]
    pub fn unpublished_requests(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod_pub)
    }

    #[inline(always)]
    fn debug_check(&self) {
        debug_assert!(self.req_prod_pvt.wrapping_sub(self.rsp_cons) <= self.nr_ents);
        debug_assert!(
            self.req_prod_pub.wrapping_sub(self.rsp_cons)
                <= self.req_prod_pvt.wrapping_sub(self.rsp_cons)
        );
        debug_assert!(
            self.rsp_prod_seen.wrapping_sub(self.rsp_cons)
                <= self.req_prod_pub.wrapping_sub(self.rsp_cons)
        );
    }

    #[inline(always)]
    fn slot_ptr(&self, idx: u32) -> *mut u8 {
        let slot = (idx & (self.nr_ents - 1)) as usize;
        // slot < nr_ents and 64 + nr_ents * entry_size <= len (Geometry).
        self.mem.ptr_at(SRING_HEADER_SIZE + slot * self.entry_size)
    }

    /// Writes `req` into the slot at `req_prod_pvt` and advances it
    /// (`RING_GET_REQUEST` + `req_prod_pvt++`). Not yet visible to the back
    /// end: publish with [`FrontRing::push_requests_and_check_notify`].
    ///
    /// Fails with [`RingError::Full`] when `RING_FULL`.
    #[inline]
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        self.debug_check();
        if self.req_prod_pvt.wrapping_sub(self.rsp_cons) >= self.nr_ents {
            return Err(RingError::Full);
        }
        let dst = self.slot_ptr(self.req_prod_pvt);
        // SAFETY: dst is a slot inside the shared memory (masked index,
        // Geometry bound), valid for writes of entry_size >= size_of::<Req>()
        // bytes, aligned to slot_align (Geometry). The slot is ours: it is
        // between rsp_cons and rsp_cons + nr_ents, so the back end is done
        // with it (it only reads requests below the published req_prod and
        // writes responses below it).
        unsafe { write_slot(dst, req, self.slot_align) };
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Pushes as many of `reqs` as fit, in order; returns how many.
    #[inline]
    pub fn push_requests(&mut self, reqs: &[Req]) -> usize {
        let n = (self.free_requests() as usize).min(reqs.len());
        for req in &reqs[..n] {
            let dst = self.slot_ptr(self.req_prod_pvt);
            // SAFETY: as in push_request: n <= free slots, so each slot is
            // ours and inside the memory.
            unsafe { write_slot(dst, req, self.slot_align) };
            self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        }
        n
    }

    /// `RING_PUSH_REQUESTS`: publishes `req_prod = req_prod_pvt` (Release,
    /// the `xen_wmb()`), without checking whether to notify.
    #[inline]
    pub fn publish_requests(&mut self) {
        self.mem
            .index(REQ_PROD)
            .store(self.req_prod_pvt, Ordering::Release);
        self.req_prod_pub = self.req_prod_pvt;
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes `req_prod` (Release:
    /// the back end sees the requests before the index), then a full fence
    /// (`xen_mb()`: the back end sees the new index before we read
    /// `req_event`), then returns whether `req_event` lies in
    /// `(old, new]`, i.e. whether the back end asked to be notified.
    ///
    /// `old` is the value this endpoint last published (the page's `req_prod`
    /// for a well-behaved peer; a peer scribbling on it cannot change the
    /// decision). Returns `false` without a fence when nothing is new.
    #[inline]
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod_pub;
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        self.mem.index(REQ_PROD).store(new, Ordering::Release);
        self.req_prod_pub = new;
        fence(Ordering::SeqCst);
        let event = self.mem.index(REQ_EVENT).load(Ordering::Acquire);
        need_notify(old, new, event)
    }

    /// Reads `rsp_prod` once and validates it: a back end can only have
    /// answered published requests, so `rsp_prod - rsp_cons <= req_prod -
    /// rsp_cons` (this also implies `RING_RESPONSE_PROD_OVERFLOW`'s `<=
    /// nr_ents` and catches an index that went backwards).
    #[inline]
    fn fetch_rsp_prod(&self) -> Result<u32, RingError> {
        let prod = self.mem.index(RSP_PROD).load(Ordering::Acquire);
        let limit = self.req_prod_pub.wrapping_sub(self.rsp_cons);
        if prod.wrapping_sub(self.rsp_cons) > limit {
            return Err(RingError::ProducerOverflow {
                prod,
                cons: self.rsp_cons,
                limit,
            });
        }
        Ok(prod)
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES`: the number of responses available,
    /// from one fresh validated read of `rsp_prod`.
    pub fn has_unconsumed_responses(&self) -> Result<u32, RingError> {
        Ok(self.fetch_rsp_prod()?.wrapping_sub(self.rsp_cons))
    }

    /// Like [`FrontRing::has_unconsumed_responses`], and remembers the value
    /// so the following `take_response` calls need not read it again.
    #[inline]
    pub fn check_for_responses(&mut self) -> Result<u32, RingError> {
        let prod = self.fetch_rsp_prod()?;
        self.rsp_prod_seen = prod;
        Ok(prod.wrapping_sub(self.rsp_cons))
    }

    /// Copies the next response out of its slot once (`RING_COPY_RESPONSE`) and
    /// advances `rsp_cons`. `Ok(None)` when there is none.
    ///
    /// Only reads `rsp_prod` from the page when the responses seen last time
    /// are used up.
    #[inline]
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.debug_check();
        if self.rsp_cons == self.rsp_prod_seen && self.check_for_responses()? == 0 {
            return Ok(None);
        }
        let src = self.slot_ptr(self.rsp_cons);
        // SAFETY: src is a slot inside the shared memory (masked index,
        // Geometry bound), valid for reads of entry_size >= size_of::<Rsp>()
        // bytes, aligned to slot_align. The Acquire load of rsp_prod that
        // covered this index orders the read after the back end's writes.
        let rsp = unsafe { read_slot::<Rsp>(src, self.slot_align) };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Takes up to `out.len()` responses; returns how many were copied into
    /// the front of `out`. Reads `rsp_prod` at most once.
    #[inline]
    pub fn take_responses(&mut self, out: &mut [Rsp]) -> Result<usize, RingError> {
        let mut avail = self.rsp_prod_seen.wrapping_sub(self.rsp_cons);
        if (avail as usize) < out.len() {
            avail = self.check_for_responses()?;
        }
        let n = (avail as usize).min(out.len());
        for slot in &mut out[..n] {
            let src = self.slot_ptr(self.rsp_cons);
            // SAFETY: as in take_response: rsp_cons < validated rsp_prod.
            *slot = unsafe { read_slot::<Rsp>(src, self.slot_align) };
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        Ok(n)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: `true` if responses are pending;
    /// otherwise sets `rsp_event = rsp_cons + 1`, full fence, and checks
    /// again. Call before sleeping on the event channel; sleep only on
    /// `false`.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.final_check_for_responses_batched(1)
    }

    /// [`FrontRing::final_check_for_responses`] that asks to be notified only
    /// once `ahead` more responses are published: `rsp_event = rsp_cons +
    /// ahead`, with `ahead` clamped to `1..=` the outstanding published
    /// requests (so the notification is certain to come once the back end
    /// has answered them).
    pub fn final_check_for_responses_batched(&mut self, ahead: u32) -> Result<bool, RingError> {
        if self.rsp_cons != self.rsp_prod_seen || self.check_for_responses()? != 0 {
            return Ok(true);
        }
        self.set_rsp_event(ahead);
        fence(Ordering::SeqCst);
        Ok(self.check_for_responses()? != 0)
    }

    /// Sets `rsp_event = rsp_cons + ahead` (Release store, no fence), with
    /// `ahead` clamped to `1..=` the outstanding published requests; returns
    /// the event index written. Follow it with a fence-and-recheck
    /// ([`FrontRing::final_check_for_responses_batched`] does all three).
    pub fn set_rsp_event(&mut self, ahead: u32) -> u32 {
        let outstanding = self.req_prod_pub.wrapping_sub(self.rsp_cons);
        let ahead = ahead.min(outstanding).max(1);
        let event = self.rsp_cons.wrapping_add(ahead);
        self.mem.index(RSP_EVENT).store(event, Ordering::Release);
        event
    }
}
