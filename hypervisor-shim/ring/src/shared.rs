//! The shared memory handle and the raw slot accessors.
//!
//! Nothing here ever creates a `&`/`&mut` to bytes of the shared memory: the
//! header indices are reached through `AtomicU32` and the slots with volatile
//! word accesses.

use core::fmt;
use core::mem::{size_of, MaybeUninit};
use core::ptr::{self, NonNull};

use crate::sync::AtomicU32;
use crate::{RingEntry, RingError, MAX_RING_PAGES, PAGE_SIZE, SRING_HEADER_SIZE};

/// Byte offsets of the `struct *_sring` header fields (`io/ring.h`).
pub(crate) const REQ_PROD: usize = 0;
pub(crate) const REQ_EVENT: usize = 4;
pub(crate) const RSP_PROD: usize = 8;
pub(crate) const RSP_EVENT: usize = 12;
/// `pvt` (4 bytes) and `__pad` (44 bytes): zeroed by `SHARED_RING_INIT`.
pub(crate) const PAD_START: usize = 16;

/// The minimum alignment accepted for the base of shared memory.
pub const MIN_BASE_ALIGN: usize = 4;

/// A handle to one or more contiguous pages shared with another party.
///
/// It is a pointer and a length: it gives no access to the bytes by itself,
/// rings built on it ([`crate::FrontRing`], [`crate::BackRing`],
/// [`crate::bytes`]) do, with atomic and volatile accesses only.
pub struct SharedRing {
    base: NonNull<u8>,
    len: usize,
    /// Under loom the four sring header indices are loom atomics, shared by
    /// the handles made with [`SharedRing::loom_clone`].
    #[cfg(loom)]
    loom_idx: loom::sync::Arc<[AtomicU32; 4]>,
}

// SAFETY: the handle is a pointer to memory that the creator promised (in
// `SharedRing::new`) stays valid and may be accessed from any thread; all
// accesses through it are atomic or volatile.
unsafe impl Send for SharedRing {}

impl fmt::Debug for SharedRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRing")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

#[allow(clippy::len_without_is_empty)] // never empty: at least one page
impl SharedRing {
    /// Wraps `len` bytes of shared memory at `base`.
    ///
    /// `len` must be a whole number of 4096-byte pages, 1 to 16 of them
    /// (ring-page-order 0..=4 gives 1, 2, 4, 8 or 16), else
    /// [`RingError::BadSize`]; `base` must be non-null and at least 4-byte
    /// aligned (64 is recommended, a page is usual), else
    /// [`RingError::Misaligned`].
    ///
    /// # Safety
    ///
    /// - `base` must be valid for reads and writes of `len` bytes for as long
    ///   as this handle or any ring built on it exists.
    /// - The memory may be modified concurrently by another party (another
    ///   domain, process or thread): that is what it is for. In this process
    ///   it must only be accessed through rings built on `SharedRing` handles,
    ///   with at most one endpoint per role on the same memory (one
    ///   [`crate::FrontRing`] and one [`crate::BackRing`] per sring; one
    ///   producer and one consumer per byte ring), and never through Rust
    ///   references.
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<SharedRing, RingError> {
        let addr = base as usize;
        let Some(base) = NonNull::new(base) else {
            return Err(RingError::Misaligned {
                addr,
                align: MIN_BASE_ALIGN,
            });
        };
        if addr % MIN_BASE_ALIGN != 0 {
            return Err(RingError::Misaligned {
                addr,
                align: MIN_BASE_ALIGN,
            });
        }
        if len == 0 || len % PAGE_SIZE != 0 || len / PAGE_SIZE > MAX_RING_PAGES {
            return Err(RingError::BadSize { len });
        }
        #[cfg(loom)]
        let loom_idx = {
            let read = |off: usize| {
                // SAFETY: off + 4 <= 16 <= len, base is 4-aligned and valid for
                // reads of len bytes (caller's contract).
                unsafe { ptr::read_volatile(base.as_ptr().add(off).cast::<u32>()) }
            };
            loom::sync::Arc::new([
                AtomicU32::new(read(REQ_PROD)),
                AtomicU32::new(read(REQ_EVENT)),
                AtomicU32::new(read(RSP_PROD)),
                AtomicU32::new(read(RSP_EVENT)),
            ])
        };
        Ok(SharedRing {
            base,
            len,
            #[cfg(loom)]
            loom_idx,
        })
    }

    /// A second handle to the same memory whose sring header indices are the
    /// same loom atomics (loom builds only: loom atomics cannot live in raw
    /// memory, so two `new` calls would not share them).
    ///
    /// # Safety
    ///
    /// As for [`SharedRing::new`]: at most one endpoint per role.
    #[cfg(loom)]
    pub unsafe fn loom_clone(&self) -> SharedRing {
        SharedRing {
            base: self.base,
            len: self.len,
            loom_idx: self.loom_idx.clone(),
        }
    }

    /// The length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The number of 4096-byte pages.
    #[inline]
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// The base address (for grant/mapping bookkeeping; do not dereference).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// A second handle on the same memory, for endpoints that use disjoint
    /// parts of it (the two directions of a byte ring page).
    pub(crate) fn dup(&self) -> SharedRing {
        SharedRing {
            base: self.base,
            len: self.len,
            #[cfg(loom)]
            loom_idx: self.loom_idx.clone(),
        }
    }

    /// The sring header index at byte offset `off` (one of the `REQ_*`/`RSP_*`
    /// constants).
    #[inline(always)]
    pub(crate) fn index(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off < PAD_START);
        #[cfg(loom)]
        {
            &self.loom_idx[off / 4]
        }
        #[cfg(not(loom))]
        {
            // SAFETY: off < 16 <= len, so the 4 bytes are inside the memory,
            // which is valid for the lifetime of `self` (contract of `new`);
            // base is 4-aligned (checked in `new`) and off is a multiple of 4,
            // so the pointer is aligned for AtomicU32. In this process the
            // header indices are only accessed atomically (every ring goes
            // through this function); the peer is outside our memory model.
            unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
        }
    }

    /// An atomic `u32` at any 4-aligned offset (byte-ring indices and the
    /// xenstore feature words). Panics if out of bounds or misaligned (layouts
    /// are validated at construction, so it does not).
    #[inline(always)]
    pub(crate) fn word(&self, off: usize) -> &core::sync::atomic::AtomicU32 {
        assert!(
            off % 4 == 0 && off + 4 <= self.len,
            "word offset checked at construction"
        );
        // SAFETY: off + 4 <= len and off % 4 == 0 (asserted above, and checked
        // when the layout was validated), base is 4-aligned, the memory is
        // valid for the lifetime of `self` (contract of `new`); in this process
        // this word is only accessed atomically.
        unsafe {
            core::sync::atomic::AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>())
        }
    }

    /// Writes zero bytes to `[start, end)` with volatile stores.
    pub(crate) fn zero(&self, start: usize, end: usize) {
        assert!(
            start <= end && end <= self.len,
            "zero range within the memory"
        );
        for off in start..end {
            // SAFETY: off < end <= len, the memory is valid for writes
            // (contract of `new`), byte accesses need no alignment.
            unsafe { ptr::write_volatile(self.base.as_ptr().add(off), 0) };
        }
    }

    /// Pointer to byte `off`; `off` must be `<= len` (not checked here).
    #[inline(always)]
    pub(crate) fn ptr_at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.len);
        self.base.as_ptr().wrapping_add(off)
    }
}

/// `__CONST_RING_SIZE`: the number of entries of `entry_size` bytes that fit in
/// `ring_bytes` after the 64-byte header, rounded down to a power of two; 0 if
/// not even one fits (or `entry_size` is 0).
pub const fn const_ring_size(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let n = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    if n == 0 {
        return 0;
    }
    // __RD32: round down to a power of two. n < 2^32 since ring_bytes <= 64 KiB
    // for a SharedRing, but clamp for arbitrary inputs.
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    1u32 << (31 - n.leading_zeros())
}

/// The slot geometry of an sring with entries `Req`/`Rsp` on `mem`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// `nr_ents`, a power of two >= 1.
    pub nr_ents: u32,
    /// `sizeof(union sring_entry)`.
    pub entry_size: usize,
    /// The alignment every slot address has: 8, 4 or 1.
    pub slot_align: usize,
}

impl Geometry {
    pub(crate) fn new<Req, Rsp>(mem: &SharedRing) -> Result<Geometry, RingError> {
        let entry_size = size_of::<Req>().max(size_of::<Rsp>());
        if size_of::<Req>() == 0 || size_of::<Rsp>() == 0 {
            return Err(RingError::ZeroSizedEntry);
        }
        let nr_ents = const_ring_size(mem.len(), entry_size);
        if nr_ents == 0 {
            return Err(RingError::EntryTooLarge {
                entry_size,
                len: mem.len(),
            });
        }
        // Slot i is at base + 64 + i * entry_size: its alignment is the
        // smallest of the base's, 64's and entry_size's power-of-two factors.
        let base_align = 1usize << (mem.as_ptr() as usize).trailing_zeros().min(6);
        let size_align = 1usize << entry_size.trailing_zeros().min(6);
        let align = base_align.min(size_align);
        let slot_align = if align >= 8 {
            8
        } else if align >= 4 {
            4
        } else {
            1
        };
        debug_assert!(SRING_HEADER_SIZE + nr_ents as usize * entry_size <= mem.len());
        Ok(Geometry {
            nr_ents,
            entry_size,
            slot_align,
        })
    }
}

/// Copies a `T` out of the slot at `src` (`RING_COPY_REQUEST`): each byte of
/// shared memory is read exactly once, with volatile word loads.
///
/// # Safety
///
/// `src` must be valid for reads of `size_of::<T>()` bytes and aligned to
/// `align`, which is 8, 4 or 1.
#[inline(always)]
pub(crate) unsafe fn read_slot<T: RingEntry>(src: *const u8, align: usize) -> T {
    let n = size_of::<T>();
    let mut out = MaybeUninit::<T>::uninit();
    let dst = out.as_mut_ptr().cast::<u8>();
    let mut off = 0;
    if align >= 8 {
        while off + 8 <= n {
            // SAFETY: off + 8 <= n, src is valid for n bytes (caller) and
            // src + off is 8-aligned (src is, off is a multiple of 8); dst is
            // a local of n bytes, written unaligned.
            unsafe {
                let w = ptr::read_volatile(src.add(off).cast::<u64>());
                ptr::write_unaligned(dst.add(off).cast::<u64>(), w);
            }
            off += 8;
        }
    }
    if align >= 4 {
        // Pairs of 4-byte loads stored as one 8-byte word: a consumer reading an
        // 8-byte field of the copy then gets it by store forwarding instead of
        // stalling on a load that spans two stores.
        while off + 8 <= n {
            // SAFETY: off + 8 <= n; src + off and src + off + 4 are 4-aligned
            // (src is, off is a multiple of 4) and valid for reads (caller); dst
            // is a local of n bytes, written unaligned.
            unsafe {
                let lo = ptr::read_volatile(src.add(off).cast::<u32>());
                let hi = ptr::read_volatile(src.add(off + 4).cast::<u32>());
                // The native word whose memory image is lo's bytes, then hi's.
                let w = if cfg!(target_endian = "little") {
                    u64::from(lo) | (u64::from(hi) << 32)
                } else {
                    (u64::from(lo) << 32) | u64::from(hi)
                };
                ptr::write_unaligned(dst.add(off).cast::<u64>(), w);
            }
            off += 8;
        }
        while off + 4 <= n {
            // SAFETY: as above with 4-byte words: src + off is 4-aligned.
            unsafe {
                let w = ptr::read_volatile(src.add(off).cast::<u32>());
                ptr::write_unaligned(dst.add(off).cast::<u32>(), w);
            }
            off += 4;
        }
    }
    while off < n {
        // SAFETY: off < n: in bounds of both; bytes need no alignment.
        unsafe { dst.add(off).write(ptr::read_volatile(src.add(off))) };
        off += 1;
    }
    // SAFETY: all n bytes were written above, and T: RingEntry accepts any bit
    // pattern.
    unsafe { out.assume_init() }
}

/// Copies `*val` into the slot at `dst` with volatile word stores.
///
/// # Safety
///
/// `dst` must be valid for writes of `size_of::<T>()` bytes and aligned to
/// `align`, which is 8, 4 or 1.
#[inline(always)]
pub(crate) unsafe fn write_slot<T: RingEntry>(dst: *mut u8, val: &T, align: usize) {
    let n = size_of::<T>();
    let src = (val as *const T).cast::<u8>();
    let mut off = 0;
    if align >= 8 {
        while off + 8 <= n {
            // SAFETY: off + 8 <= n; src points to a T, whose bytes are all
            // initialized (RingEntry: no padding), read unaligned; dst + off
            // is 8-aligned and valid for writes (caller).
            unsafe {
                let w = ptr::read_unaligned(src.add(off).cast::<u64>());
                ptr::write_volatile(dst.add(off).cast::<u64>(), w);
            }
            off += 8;
        }
    }
    if align >= 4 {
        while off + 4 <= n {
            // SAFETY: as above with 4-byte words.
            unsafe {
                let w = ptr::read_unaligned(src.add(off).cast::<u32>());
                ptr::write_volatile(dst.add(off).cast::<u32>(), w);
            }
            off += 4;
        }
    }
    while off < n {
        // SAFETY: off < n, in bounds of both; bytes need no alignment.
        unsafe { ptr::write_volatile(dst.add(off), src.add(off).read()) };
        off += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 2 * PAGE_SIZE]);

    #[test]
    fn test_const_ring_size_rounds_down_to_power_of_two() {
        assert_eq!(const_ring_size(4096, 112), 32);
        assert_eq!(
            const_ring_size(4096, 64),
            63usize.next_power_of_two() as u32 / 2
        );
        assert_eq!(const_ring_size(4096, 12), 256);
        assert_eq!(const_ring_size(4096, 1), 2048);
        assert_eq!(const_ring_size(65536, 1), 32768);
        assert_eq!(const_ring_size(4096, 4032), 1);
        assert_eq!(const_ring_size(4096, 4033), 0);
        assert_eq!(const_ring_size(64, 1), 0);
        assert_eq!(const_ring_size(4096, 0), 0);
    }

    #[test]
    fn test_geometry_slot_alignment_follows_base_and_entry_size() {
        let mut page = Page([0; 2 * PAGE_SIZE]);
        let p = page.0.as_mut_ptr();
        // SAFETY: p .. p + 4096 and p + 4 .. p + 4100 are inside `page`, which
        // outlives the handles; nothing else accesses it.
        let (aligned, off4) = unsafe {
            (
                SharedRing::new(p, PAGE_SIZE).unwrap(),
                SharedRing::new(p.add(4), PAGE_SIZE).unwrap(),
            )
        };
        assert_eq!(
            Geometry::new::<[u64; 14], [u32; 3]>(&aligned)
                .unwrap()
                .slot_align,
            8
        );
        assert_eq!(
            Geometry::new::<[u32; 3], [u32; 3]>(&aligned)
                .unwrap()
                .slot_align,
            4
        );
        assert_eq!(
            Geometry::new::<[u8; 7], u8>(&aligned).unwrap().slot_align,
            1
        );
        assert_eq!(Geometry::new::<[u64; 14], u8>(&off4).unwrap().slot_align, 4);
        let g = Geometry::new::<[u64; 14], [u32; 3]>(&aligned).unwrap();
        assert_eq!((g.nr_ents, g.entry_size), (32, 112));
    }

    #[test]
    fn test_read_write_slot_round_trip_all_alignments() {
        let mut buf = [0u64; 32];
        let p = buf.as_mut_ptr().cast::<u8>();
        let v: [u8; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
        for (off, align) in [(0usize, 8usize), (4, 4), (3, 1)] {
            // SAFETY: p + off .. + 13 is inside buf (256 bytes), aligned to
            // `align` by construction.
            let back: [u8; 13] = unsafe {
                write_slot(p.add(off), &v, align);
                read_slot(p.add(off), align)
            };
            assert_eq!(back, v);
        }
        let w: [u64; 14] = core::array::from_fn(|i| (i as u64) << 40 | i as u64);
        // SAFETY: 112 bytes at p + 8, inside buf, 8-aligned.
        let back: [u64; 14] = unsafe {
            write_slot(p.add(8), &w, 8);
            read_slot(p.add(8), 8)
        };
        assert_eq!(back, w);
    }

    #[test]
    fn test_shared_ring_new_checks_alignment_and_size() {
        let mut page = Page([0; 2 * PAGE_SIZE]);
        let p = page.0.as_mut_ptr();
        // SAFETY: all ranges are inside `page` (or the call fails first).
        unsafe {
            assert!(SharedRing::new(p, 2 * PAGE_SIZE).is_ok());
            assert!(matches!(
                SharedRing::new(p.add(1), PAGE_SIZE),
                Err(RingError::Misaligned { .. })
            ));
            assert!(matches!(
                SharedRing::new(p, 100),
                Err(RingError::BadSize { len: 100 })
            ));
        }
    }
}
