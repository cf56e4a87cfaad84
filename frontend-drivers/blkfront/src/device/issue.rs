//! Submitting requests to a [`BlkFront`]: checking them against the disk,
//! queueing them (a shadow per request in the id table), building each
//! ring request (grants, indirect descriptor pages) and pushing them onto
//! the rings with one notification per ring touched.

use alloc::vec::Vec;

use xen_abi::io::blkif::{
    blkif_vdev_t, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
};
use xen_front_platform::{Platform, PlatformError};

use super::buffers::{ensure_grant, DataPage};
use super::{plat, BlkFront, BlkStatus, BufferId, FrontState, RequestKind, RequestTag, Shadow};
use crate::error::BlkfrontError;
use crate::features::{DiskInfo, FlushOp};
use crate::request::{
    data_segments, encode_discard, encode_indirect, encode_no_data, encode_rw, indirect_page_bytes,
    indirect_pages_needed, ReqSlot, SECTOR_BYTES,
};

impl<'p, P: Platform + ?Sized> BlkFront<'p, P> {
    pub(super) fn check_usable(&self) -> Result<&DiskInfo, BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        self.disk.as_ref().ok_or(BlkfrontError::NotConnected)
    }

    pub(super) fn check_range(
        &self,
        sector: u64,
        len: usize,
        write: bool,
    ) -> Result<(), BlkfrontError> {
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

    pub(super) fn new_shadow(kind: RequestKind, sector: u64, len: u64) -> Shadow {
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

    pub(super) fn enqueue(&mut self, shadow: Shadow) -> Result<RequestTag, BlkfrontError> {
        self.enqueue_kept(shadow).map_err(|(e, s)| {
            for dp in s.into_iter().flatten() {
                self.recycle(dp, false);
            }
            e
        })
    }

    /// [`Self::enqueue`] that hands the data pages back when no id is free
    /// (`Some`); `None` when the request was accepted but issuing failed.
    pub(super) fn enqueue_kept(
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

    /// Submits a read of `len` bytes at 512-byte sector `sector` (both
    /// aligned to the disk's sector size, `len <=`
    /// [`BlkFront::max_request_bytes`]). The data comes in the
    /// [`Completion`](super::Completion).
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

    pub(super) fn submit_buffer(
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

    /// A queue with a free slot, round-robin.
    pub(super) fn pick_queue(&mut self) -> Option<usize> {
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
    pub(super) fn kick(&mut self) -> Result<(), BlkfrontError> {
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
    pub(super) fn build(&mut self, id: u64) -> Result<ReqSlot, BuildError> {
        let disk = self.disk.ok_or(BuildError::Unfit)?;
        let p = self.p;
        let be = self.xb.backend_id();
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
}

pub(super) enum BuildError {
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
