//! [`SharedPages`]: guest pages that may be granted to (and written by)
//! another domain, with volatile and atomic accessors only.

use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen_abi::xen::xen_pfn_t;

/// Xen's page size (`XEN_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;

/// The word size of the bulk copies in [`SharedPages::read`], `write` and
/// `fill`.
const WORD: usize = core::mem::size_of::<u64>();

/// Why a [`SharedPages`] access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PagesError {
    /// The range `offset..offset + len` is not inside the pages.
    #[error("range of {len} bytes at offset {offset} is outside {size} bytes of shared pages")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the pages in bytes.
        size: usize,
    },
    /// An atomic access at an offset not aligned to its size.
    #[error("offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// The offset.
        offset: usize,
        /// The alignment needed.
        align: usize,
    },
}

/// A run of `count` guest pages that are contiguous both in guest frame
/// numbers (`first_gfn .. first_gfn + count`) and in this address space
/// (so a multi-page ring can be laid over them), allocated by a
/// [`crate::Platform`] and returned to it with
/// [`crate::Platform::free_pages`].
///
/// Another domain may read and write these pages at any time once they are
/// granted, so this handle never gives out `&`/`&mut` to their bytes: it
/// copies with volatile accesses, offers atomics for words, and a raw
/// pointer for ring code (`xen_ring::SharedRing::new`) that makes the same
/// promise.
pub struct SharedPages {
    ptr: NonNull<u8>,
    first_gfn: xen_pfn_t,
    count: usize,
}

// SAFETY: the handle owns its pages (it is not Clone; the platform hands each
// run out once) and every access through it is volatile or atomic, so moving
// it to another thread is fine. It is not Sync: two threads writing the same
// bytes through `write` would race (harmlessly for the memory, but the
// contents would be torn), so sharing needs the owner's own locking.
unsafe impl Send for SharedPages {}

impl fmt::Debug for SharedPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPages")
            .field("ptr", &self.ptr)
            .field("first_gfn", &format_args!("{:#x}", self.first_gfn))
            .field("count", &self.count)
            .finish()
    }
}

impl SharedPages {
    /// Wraps `count` pages at `ptr` whose guest frames are
    /// `first_gfn .. first_gfn + count`. For platform implementations.
    ///
    /// # Safety
    ///
    /// - `ptr` is page-aligned and valid for reads and writes of
    ///   `count * PAGE_SIZE` bytes until this handle is given back to the
    ///   platform that made it (through [`crate::Platform::free_pages`]),
    ///   whether or not that platform value still exists (a platform that is
    ///   dropped leaks its pages rather than unmapping them);
    /// - no other `SharedPages` covers any of these bytes, and nothing in
    ///   this process holds a Rust reference to them;
    /// - `count >= 1` and `count * PAGE_SIZE` does not overflow.
    pub unsafe fn new(ptr: NonNull<u8>, first_gfn: xen_pfn_t, count: usize) -> SharedPages {
        debug_assert!(count >= 1);
        debug_assert!((ptr.as_ptr() as usize) % PAGE_SIZE == 0);
        SharedPages {
            ptr,
            first_gfn,
            count,
        }
    }

    /// The guest frame number of the first page.
    #[inline]
    pub fn first_gfn(&self) -> xen_pfn_t {
        self.first_gfn
    }

    /// The guest frame number of page `i`, if `i < count`.
    #[inline]
    pub fn gfn(&self, i: usize) -> Option<xen_pfn_t> {
        if i < self.count {
            self.first_gfn.checked_add(i as u64)
        } else {
            None
        }
    }

    /// The number of pages.
    #[inline]
    pub fn count(&self) -> usize {
        self.count
    }

    /// The size in bytes (`count * PAGE_SIZE`).
    #[inline]
    pub fn len(&self) -> usize {
        self.count * PAGE_SIZE
    }

    /// Always `false`: a run has at least one page.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The base address, for ring code that takes a raw pointer
    /// (`xen_ring::SharedRing::new`, whose safety contract then applies).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), PagesError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(PagesError::OutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    fn check_aligned(&self, offset: usize, align: usize) -> Result<(), PagesError> {
        self.check(offset, align)?;
        if offset % align != 0 {
            return Err(PagesError::Misaligned { offset, align });
        }
        Ok(())
    }

    /// Bytes from `offset` to the next 8-byte boundary of the pages (the
    /// base is page-aligned, so offsets and addresses agree), at most `len`.
    #[inline]
    fn head_len(offset: usize, len: usize) -> usize {
        ((WORD - offset % WORD) % WORD).min(len)
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the pages
    /// (volatile reads: the peer may be writing them; aligned 8-byte reads
    /// for the middle of the range, byte reads at its unaligned edges).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), PagesError> {
        self.check(offset, buf.len())?;
        let base = self.ptr.as_ptr();
        let head = Self::head_len(offset, buf.len());
        let (head_buf, rest) = buf.split_at_mut(head);
        for (i, b) in head_buf.iter_mut().enumerate() {
            // SAFETY: offset + i < offset + buf.len() <= len (checked), the
            // memory is valid for reads (contract of `new`), byte reads need
            // no alignment, and no reference to the byte exists.
            *b = unsafe { ptr::read_volatile(base.add(offset + i)) };
        }
        let mut at = offset + head;
        let mut words = rest.chunks_exact_mut(WORD);
        for chunk in words.by_ref() {
            // SAFETY: at + WORD <= offset + buf.len() <= len (checked; the
            // chunk is a whole word of `buf` at the same position), `at` is a
            // multiple of 8 (the head ends on a boundary) on a page-aligned
            // base so the u64 access is aligned, the memory is valid for
            // reads (contract of `new`), and no reference to it exists.
            let w = unsafe { ptr::read_volatile(base.add(at).cast::<u64>()) };
            chunk.copy_from_slice(&w.to_ne_bytes());
            at += WORD;
        }
        for b in words.into_remainder() {
            // SAFETY: as for the head bytes: `at` < offset + buf.len() <= len.
            *b = unsafe { ptr::read_volatile(base.add(at)) };
            at += 1;
        }
        Ok(())
    }

    /// Copies `data` into the pages at `offset` (volatile writes: aligned
    /// 8-byte writes for the middle of the range, bytes at its edges).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), PagesError> {
        self.check(offset, data.len())?;
        let base = self.ptr.as_ptr();
        let head = Self::head_len(offset, data.len());
        let (head_data, rest) = data.split_at(head);
        for (i, b) in head_data.iter().enumerate() {
            // SAFETY: as in `read`, for writes.
            unsafe { ptr::write_volatile(base.add(offset + i), *b) };
        }
        let mut at = offset + head;
        let mut words = rest.chunks_exact(WORD);
        for chunk in words.by_ref() {
            let mut w = [0u8; WORD];
            w.copy_from_slice(chunk);
            // SAFETY: as for the words in `read`, for writes.
            unsafe { ptr::write_volatile(base.add(at).cast::<u64>(), u64::from_ne_bytes(w)) };
            at += WORD;
        }
        for b in words.remainder() {
            // SAFETY: as in `read`, for writes.
            unsafe { ptr::write_volatile(base.add(at), *b) };
            at += 1;
        }
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `value` (volatile writes, 8 bytes at
    /// a time for the aligned middle).
    pub fn fill(&self, offset: usize, len: usize, value: u8) -> Result<(), PagesError> {
        self.check(offset, len)?;
        let base = self.ptr.as_ptr();
        let end = offset + len;
        let head_end = offset + Self::head_len(offset, len);
        let mid_end = head_end + (end - head_end) / WORD * WORD;
        let word = u64::from_ne_bytes([value; WORD]);
        for at in offset..head_end {
            // SAFETY: at < end <= self.len() (checked), valid for writes
            // (contract of `new`), no alignment needed, no reference exists.
            unsafe { ptr::write_volatile(base.add(at), value) };
        }
        for at in (head_end..mid_end).step_by(WORD) {
            // SAFETY: at + WORD <= mid_end <= end <= self.len() (checked),
            // `at` is 8-aligned (head_end is, steps are 8) on a page-aligned
            // base, valid for writes (contract of `new`), no reference exists.
            unsafe { ptr::write_volatile(base.add(at).cast::<u64>(), word) };
        }
        for at in mid_end..end {
            // SAFETY: as for the head bytes.
            unsafe { ptr::write_volatile(base.add(at), value) };
        }
        Ok(())
    }

    fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, PagesError> {
        self.check_aligned(offset, 4)?;
        // SAFETY: offset + 4 <= len and offset is 4-aligned (checked) on a
        // page-aligned base; the memory is valid for the lifetime of `self`
        // (contract of `new`). This process only touches the word atomically
        // through this handle; the peer is outside our memory model.
        Ok(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast::<u32>()) })
    }

    fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, PagesError> {
        self.check_aligned(offset, 8)?;
        // SAFETY: as in `atomic_u32`, with 8-byte size and alignment.
        Ok(unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast::<u64>()) })
    }

    /// Atomically loads the `u32` at `offset` (4-aligned).
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, PagesError> {
        Ok(self.atomic_u32(offset)?.load(order))
    }

    /// Atomically stores `value` at `offset` (4-aligned).
    pub fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), PagesError> {
        self.atomic_u32(offset)?.store(value, order);
        Ok(())
    }

    /// Atomically loads the `u64` at `offset` (8-aligned).
    pub fn load_u64(&self, offset: usize, order: Ordering) -> Result<u64, PagesError> {
        Ok(self.atomic_u64(offset)?.load(order))
    }

    /// Atomically stores `value` at `offset` (8-aligned).
    pub fn store_u64(&self, offset: usize, value: u64, order: Ordering) -> Result<(), PagesError> {
        self.atomic_u64(offset)?.store(value, order);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    fn with_pages(count: usize, f: impl FnOnce(&SharedPages)) {
        let layout = Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).expect("layout");
        // SAFETY: non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).expect("allocation");
        // SAFETY: fresh page-aligned allocation, freed only after `pages` is gone.
        let pages = unsafe { SharedPages::new(ptr, 0x100, count) };
        f(&pages);
        let _consumed = pages;
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(raw, layout) };
    }

    #[test]
    fn test_shared_pages_write_then_read_roundtrips() {
        with_pages(2, |p| {
            p.write(4090, b"across a page").expect("in bounds");
            let mut buf = [0u8; 13];
            p.read(4090, &mut buf).expect("in bounds");
            assert_eq!(&buf, b"across a page");
            assert_eq!(p.gfn(1), Some(0x101));
            assert_eq!(p.gfn(2), None);
        });
    }

    #[test]
    fn test_shared_pages_out_of_bounds_is_refused() {
        with_pages(1, |p| {
            let mut buf = [0u8; 2];
            assert!(matches!(
                p.read(4095, &mut buf),
                Err(PagesError::OutOfBounds { .. })
            ));
            assert!(p.write(usize::MAX, b"x").is_err());
            assert!(p.fill(4000, 97, 0).is_err());
        });
    }

    #[test]
    fn test_shared_pages_misaligned_atomic_is_refused() {
        with_pages(1, |p| {
            assert_eq!(
                p.load_u32(2, Ordering::Relaxed),
                Err(PagesError::Misaligned {
                    offset: 2,
                    align: 4
                })
            );
            p.store_u64(8, 0xdead_beef_0000_0001, Ordering::Release)
                .expect("aligned");
            assert_eq!(p.load_u64(8, Ordering::Acquire), Ok(0xdead_beef_0000_0001));
            assert_eq!(p.load_u32(8, Ordering::Relaxed), Ok(1));
        });
    }

    /// A byte pattern that differs at every position and from the fill.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
            .collect()
    }

    #[test]
    fn test_shared_pages_word_copy_every_edge_matches_bytes() {
        with_pages(1, |p| {
            for offset in 0..=9usize {
                for len in 0..=17usize {
                    p.fill(0, 64, 0xee).expect("in bounds");
                    let data = pattern(len);
                    p.write(offset, &data).expect("in bounds");
                    let mut all = [0u8; 64];
                    p.read(0, &mut all).expect("in bounds");
                    for (i, b) in all.iter().enumerate() {
                        let want = if i >= offset && i < offset + len {
                            data[i - offset]
                        } else {
                            0xee
                        };
                        assert_eq!(*b, want, "write offset {offset} len {len} byte {i}");
                    }
                    let mut back = vec![0u8; len];
                    p.read(offset, &mut back).expect("in bounds");
                    assert_eq!(back, data, "read offset {offset} len {len}");
                    p.fill(offset, len, 0x5a).expect("in bounds");
                    p.read(0, &mut all).expect("in bounds");
                    for (i, b) in all.iter().enumerate() {
                        let want = if i >= offset && i < offset + len {
                            0x5a
                        } else {
                            0xee
                        };
                        assert_eq!(*b, want, "fill offset {offset} len {len} byte {i}");
                    }
                }
            }
        });
    }

    #[test]
    fn test_shared_pages_word_copy_across_page_roundtrips() {
        with_pages(2, |p| {
            for offset in PAGE_SIZE - 17..=PAGE_SIZE + 1 {
                for len in [0usize, 1, 7, 8, 9, 16, 17, 33] {
                    let data = pattern(len);
                    p.write(offset, &data).expect("in bounds");
                    let mut back = vec![0u8; len];
                    p.read(offset, &mut back).expect("in bounds");
                    assert_eq!(back, data, "offset {offset} len {len}");
                }
            }
            p.fill(PAGE_SIZE - 3, 11, 0x11).expect("in bounds");
            let mut back = [0u8; 13];
            p.read(PAGE_SIZE - 4, &mut back).expect("in bounds");
            assert_ne!(back[0], 0x11);
            assert!(back[1..12].iter().all(|b| *b == 0x11));
        });
    }

    #[test]
    fn test_shared_pages_word_copy_at_end_is_bounded() {
        with_pages(1, |p| {
            let data = pattern(17);
            p.write(PAGE_SIZE - 17, &data).expect("last bytes");
            let mut back = [0u8; 17];
            p.read(PAGE_SIZE - 17, &mut back).expect("last bytes");
            assert_eq!(&back[..], &data[..]);
            assert!(p.write(PAGE_SIZE - 16, &data).is_err());
            assert!(p.read(PAGE_SIZE - 8, &mut back).is_err());
            assert!(p.fill(PAGE_SIZE - 7, 8, 0).is_err());
            p.fill(PAGE_SIZE, 0, 0).expect("empty range at the end");
        });
    }
}
