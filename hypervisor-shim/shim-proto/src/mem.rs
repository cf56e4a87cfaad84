//! Guest memory: a mapping of a domain's memory file, and bounds-checked
//! volatile views of its pages.
//!
//! No `&`/`&mut` to guest bytes is ever made: slices copy in and out with
//! volatile accesses ([`crate::sys::volatile_copy`]) and hand out atomics
//! (`AtomicU32::from_ptr`...) for words that both sides update.

use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8};

use zerocopy::{FromBytes, IntoBytes};

use crate::layout::{DomainLayout, PAGE_SIZE};
use crate::sys::MappedRegion;

/// Errors of guest-memory accesses.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The access is outside the region.
    #[error("access of {len} bytes at offset {offset} is outside a region of {size} bytes")]
    OutOfBounds {
        /// Offset.
        offset: usize,
        /// Length.
        len: usize,
        /// Region size.
        size: usize,
    },
    /// A write through a read-only view.
    #[error("write through a read-only mapping")]
    ReadOnly,
    /// An atomic access at a misaligned offset.
    #[error("offset {0} is misaligned for an atomic access")]
    Misaligned(usize),
    /// The gfn is outside the domain's memory.
    #[error("gfn {0:#x} is outside the domain's memory")]
    BadGfn(u64),
    /// Mapping the memory file failed.
    #[error("cannot map guest memory")]
    Map(#[source] std::io::Error),
}

/// A domain's whole memory file, mapped shared read-write.
#[derive(Debug)]
pub struct GuestMemory {
    region: MappedRegion,
    layout: DomainLayout,
}

impl GuestMemory {
    /// Maps the memory file `file` of a domain with `layout`.
    pub fn map(file: &File, layout: DomainLayout) -> Result<Self, MemError> {
        let len = usize::try_from(layout.total_bytes())
            .map_err(|_| MemError::Map(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        let actual = file.metadata().map_err(MemError::Map)?.len();
        if actual < layout.total_bytes() {
            return Err(MemError::Map(std::io::Error::other(format!(
                "memory file has {actual} bytes, layout needs {}",
                layout.total_bytes()
            ))));
        }
        let region = MappedRegion::map(file.as_fd(), len).map_err(MemError::Map)?;
        Ok(Self { region, layout })
    }

    /// The layout.
    pub fn layout(&self) -> &DomainLayout {
        &self.layout
    }

    /// Base address of gfn 0.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the mapping is empty (never).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Address of page `gfn`.
    pub fn page_ptr(&self, gfn: u64) -> Result<*mut u8, MemError> {
        let off = self.layout.gfn_offset(gfn).ok_or(MemError::BadGfn(gfn))?;
        let off = usize::try_from(off).map_err(|_| MemError::BadGfn(gfn))?;
        // SAFETY: `gfn_offset` returned an offset below total_bytes == the
        // mapping length, so the result stays inside the mapping.
        Ok(unsafe { self.region.as_ptr().add(off) })
    }

    /// A read-write view of page `gfn`.
    pub fn page(&self, gfn: u64) -> Result<GuestSlice<'_>, MemError> {
        let p = self.page_ptr(gfn)?;
        // SAFETY: `p` is a page inside this mapping, which outlives the slice
        // (lifetime tied to `&self`).
        Ok(unsafe { GuestSlice::new(p, PAGE_SIZE, true) })
    }

    /// A read-write view of `pages` pages from `gfn`.
    pub fn pages(&self, gfn: u64, pages: u64) -> Result<GuestSlice<'_>, MemError> {
        let last = gfn
            .checked_add(pages)
            .and_then(|e| e.checked_sub(1))
            .ok_or(MemError::BadGfn(gfn))?;
        self.layout.gfn_offset(last).ok_or(MemError::BadGfn(last))?;
        let p = self.page_ptr(gfn)?;
        let len = usize::try_from(pages)
            .ok()
            .and_then(|n| n.checked_mul(PAGE_SIZE))
            .ok_or(MemError::BadGfn(gfn))?;
        // SAFETY: gfn..=last are inside the mapping (checked), which outlives
        // the slice.
        Ok(unsafe { GuestSlice::new(p, len, true) })
    }
}

/// A bounds-checked view of shared guest memory (one or more pages), in the
/// style of vm-memory's `VolatileSlice`: copies in and out are volatile, words
/// shared with the other side are reached as atomics.
#[derive(Clone, Copy, Debug)]
pub struct GuestSlice<'a> {
    ptr: *mut u8,
    len: usize,
    writable: bool,
    _life: PhantomData<&'a ()>,
}

// SAFETY: a view of shared memory accessed only through raw pointers with
// volatile/atomic operations; moving it to another thread is fine while the
// owner (lifetime 'a) lives.
unsafe impl Send for GuestSlice<'_> {}
// SAFETY: as above; `&GuestSlice` only performs volatile/atomic accesses.
unsafe impl Sync for GuestSlice<'_> {}

fn is_aligned(addr: usize, align: usize) -> bool {
    addr % align == 0
}

macro_rules! atomic_at {
    ($name:ident, $ty:ty, $size:expr) => {
        /// The naturally aligned atomic word at `offset`.
        pub fn $name(&self, offset: usize) -> Result<&'a $ty, MemError> {
            self.check(offset, $size)?;
            if !is_aligned((self.ptr as usize).wrapping_add(offset), $size) {
                return Err(MemError::Misaligned(offset));
            }
            // SAFETY: in bounds (checked), aligned (checked); the memory is
            // valid for 'a (constructor contract) and only ever accessed
            // atomically or volatilely, never through plain references.
            Ok(unsafe { <$ty>::from_ptr(self.ptr.add(offset).cast()) })
        }
    };
}

impl<'a> GuestSlice<'a> {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads (and writes when `writable`) of `len`
    /// bytes for the lifetime `'a`, and only accessed through atomic or
    /// volatile operations by anyone in this process during `'a`.
    pub unsafe fn new(ptr: *mut u8, len: usize, writable: bool) -> Self {
        Self {
            ptr,
            len,
            writable,
            _life: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Base address (for rings: `xen_ring::SharedRing::new(ptr, len)`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MemError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// A sub-view.
    pub fn subslice(&self, offset: usize, len: usize) -> Result<GuestSlice<'a>, MemError> {
        self.check(offset, len)?;
        // SAFETY: in bounds (checked); same validity as `self`.
        Ok(unsafe { GuestSlice::new(self.ptr.add(offset), len, self.writable) })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(offset, buf.len())?;
        // SAFETY: source in bounds (checked), destination is a live local
        // buffer, and the two cannot overlap (guest memory vs our buffer).
        unsafe { crate::sys::volatile_copy(buf.as_mut_ptr(), self.ptr.add(offset), buf.len()) };
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        if !self.writable {
            return Err(MemError::ReadOnly);
        }
        self.check(offset, data.len())?;
        // SAFETY: destination in bounds (checked) and writable; the source is
        // a live local slice that cannot overlap guest memory.
        unsafe { crate::sys::volatile_copy(self.ptr.add(offset), data.as_ptr(), data.len()) };
        Ok(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemError> {
        if !self.writable {
            return Err(MemError::ReadOnly);
        }
        self.check(offset, len)?;
        // SAFETY: destination in bounds (checked) and writable.
        unsafe { crate::sys::volatile_fill(self.ptr.add(offset), byte, len) };
        Ok(())
    }

    /// Reads a plain-old-data value at `offset` (a copy: never a reference).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, MemError> {
        let mut v = T::new_zeroed();
        self.read(offset, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain-old-data value at `offset`.
    pub fn write_obj<T: IntoBytes + zerocopy::Immutable>(
        &self,
        offset: usize,
        v: &T,
    ) -> Result<(), MemError> {
        self.write(offset, v.as_bytes())
    }

    atomic_at!(atomic_u8, AtomicU8, 1);
    atomic_at!(atomic_u16, AtomicU16, 2);
    atomic_at!(atomic_u32, AtomicU32, 4);
    atomic_at!(atomic_u64, AtomicU64, 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guest_slice_out_of_bounds_read_is_refused() {
        let mut buf = [0u8; 64];
        // SAFETY: `buf` outlives the slice and is only accessed through it.
        let s = unsafe { GuestSlice::new(buf.as_mut_ptr(), 64, true) };
        let mut out = [0u8; 8];
        assert!(s.read(56, &mut out).is_ok());
        assert!(matches!(
            s.read(57, &mut out),
            Err(MemError::OutOfBounds {
                offset: 57,
                len: 8,
                size: 64
            })
        ));
        assert!(s.read(usize::MAX, &mut out).is_err());
    }

    #[test]
    fn test_guest_slice_readonly_write_is_refused() {
        let mut buf = [0u8; 16];
        // SAFETY: `buf` outlives the slice.
        let s = unsafe { GuestSlice::new(buf.as_mut_ptr(), 16, false) };
        assert!(matches!(s.write(0, &[1]), Err(MemError::ReadOnly)));
    }

    #[test]
    fn test_guest_slice_write_then_read_roundtrips() {
        let mut buf = [0u64; 8];
        // SAFETY: `buf` outlives the slice.
        let s = unsafe { GuestSlice::new(buf.as_mut_ptr().cast(), 64, true) };
        s.write(3, b"hello").expect("in bounds");
        let mut out = [0u8; 5];
        s.read(3, &mut out).expect("in bounds");
        assert_eq!(&out, b"hello");
        s.atomic_u32(8)
            .expect("aligned")
            .store(7, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(s.read_obj::<u32>(8).expect("in bounds"), 7);
        assert!(matches!(s.atomic_u32(6), Err(MemError::Misaligned(6))));
    }
}
