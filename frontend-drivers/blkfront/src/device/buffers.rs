//! The pages of a [`BlkFront`]'s requests: data and indirect-descriptor
//! pages and their grants (kept when persistent, revoked per request when
//! not), the two page pools, the runs the backend still maps (revoked and
//! freed later), and the registered buffers of the zero-copy path.

use alloc::vec::Vec;

use xen_abi::grant_table::grant_ref_t;
use xen_abi::xen::domid_t;
use xen_front_platform::{Platform, PlatformError, SharedPages, PAGE_SIZE};

use super::{plat, BlkFront, BlkfrontStats, BufferId};
use crate::error::BlkfrontError;
use crate::request::{MAX_INDIRECT_SEGMENTS, SECTOR_BYTES};

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

/// A page holding request data or indirect descriptors, with its grant.
#[derive(Debug)]
pub(super) struct DataPage {
    pub(super) page: SharedPages,
    /// `(gref, readonly)` while granted to the backend.
    pub(super) grant: Option<(grant_ref_t, bool)>,
}

/// A registered buffer: its pages stay with it (with their grants, when
/// persistent) from request to request.
#[derive(Debug)]
pub(super) struct IoBuffer {
    /// Empty while a request uses the pages (they travel in its shadow).
    pub(super) pages: Vec<DataPage>,
    /// Bytes.
    pub(super) len: usize,
    /// A request is using it.
    pub(super) busy: bool,
}

/// Pages the backend still maps: revoked and freed later.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) grefs: Vec<grant_ref_t>,
    pub(super) pages: SharedPages,
}

/// Grants `dp` to `be` with the wanted access, reusing a matching grant.
pub(super) fn ensure_grant<P: Platform + ?Sized>(
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
    pub(super) fn take_page(&mut self, indirect: bool) -> Result<DataPage, PlatformError> {
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

    pub(super) fn data_pages(
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

    /// Returns a page to its pool. Without persistent grants its grant is
    /// revoked first; `false` if the backend still maps it (the page is
    /// deferred).
    pub(super) fn recycle(&mut self, dp: DataPage, indirect: bool) -> bool {
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
    pub(super) fn revoke_unless_persistent(&mut self, mut dp: DataPage) -> Option<DataPage> {
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

    /// Revokes the grants of `pages`; a page the backend still maps is
    /// replaced by a fresh copy and deferred.
    pub(super) fn revoke_keep(&mut self, pages: Vec<DataPage>) -> Vec<DataPage> {
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

    /// Revokes `grefs` and frees `pages`, or defers both while the backend
    /// maps any of them.
    pub(super) fn release_run(&mut self, grefs: Vec<grant_ref_t>, pages: SharedPages) {
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
    pub(super) fn retry_deferred(&mut self) {
        let list = core::mem::take(&mut self.deferred);
        for d in list {
            self.release_run(d.grefs, d.pages);
        }
    }

    /// Revokes (or defers) a page's grant and frees it.
    pub(super) fn drop_page(&mut self, dp: DataPage) {
        match dp.grant {
            Some((g, _)) => self.release_run(alloc::vec![g], dp.page),
            None => {
                let _ = self.p.free_pages(dp.page);
            }
        }
    }

    /// Frees the page pools and the registered buffers' pages (revoking
    /// their grants, or deferring those the backend still maps); the
    /// buffers stay registered, idle and empty (`buffer_*` refuse them,
    /// `free_buffer` still unregisters them).
    pub(super) fn drop_pools(&mut self) {
        let mut pool: Vec<DataPage> = self
            .free_data
            .drain(..)
            .chain(self.free_indirect.drain(..))
            .collect();
        for b in self.buffers.iter_mut().flatten() {
            pool.append(&mut b.pages);
            b.busy = false;
        }
        for dp in pool {
            self.drop_page(dp);
        }
    }

    /// Hands a [`Completion::data`](super::Completion::data) buffer back for reuse by later reads
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
    pub(super) fn idle_buffer(&self, id: BufferId) -> Result<&IoBuffer, BlkfrontError> {
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
}
