//! Bounds-checked, volatile access to guest-physical memory (the domain's
//! memory file, mapped once by the shim's guest API). The guest may write
//! any of it at any time: values are copied in and out, never borrowed.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::VmmError;

/// Guest-physical memory: `[0, len)` maps to `base`.
#[derive(Debug, Clone, Copy)]
pub struct GuestPhys {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is shared memory valid for the life of the process
// (the VMM leaks its Hypervisor); every access is a volatile copy or an
// atomic, so concurrent use from vCPU and event threads is sound.
unsafe impl Send for GuestPhys {}
// SAFETY: as for Send.
unsafe impl Sync for GuestPhys {}

impl GuestPhys {
    /// # Safety
    /// `base` must be valid for reads and writes of `len` bytes for the rest
    /// of the process, and only accessed volatilely or atomically.
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        Self { base, len }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of gpa `0`.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    fn check(&self, gpa: u64, len: usize) -> Result<usize, VmmError> {
        let off = usize::try_from(gpa).map_err(|_| VmmError::BadGpa { gpa, len })?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(off),
            _ => Err(VmmError::BadGpa { gpa, len }),
        }
    }

    /// Host pointer to `len` bytes at `gpa` (checked).
    pub fn ptr(&self, gpa: u64, len: usize) -> Result<*mut u8, VmmError> {
        let off = self.check(gpa, len)?;
        // SAFETY: off + len <= self.len (checked), inside the mapping.
        Ok(unsafe { self.base.add(off) })
    }

    /// Copies `buf.len()` bytes out of guest memory at `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmmError> {
        let p = self.ptr(gpa, buf.len())?;
        // SAFETY: `p` is valid for buf.len() bytes (checked); `buf` is ours.
        unsafe { xen_shim_proto::sys::volatile_copy(buf.as_mut_ptr(), p, buf.len()) };
        Ok(())
    }

    /// Copies `buf` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), VmmError> {
        let p = self.ptr(gpa, buf.len())?;
        // SAFETY: `p` is valid for buf.len() bytes (checked).
        unsafe { xen_shim_proto::sys::volatile_copy(p, buf.as_ptr(), buf.len()) };
        Ok(())
    }

    /// Reads a `T` at `gpa`.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T, VmmError> {
        let mut v = T::new_zeroed();
        self.read(gpa, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a `T` at `gpa`.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gpa: u64, v: &T) -> Result<(), VmmError> {
        self.write(gpa, v.as_bytes())
    }

    /// Zeroes `len` bytes at `gpa`.
    pub fn zero(&self, gpa: u64, len: usize) -> Result<(), VmmError> {
        let p = self.ptr(gpa, len)?;
        // SAFETY: `p` is valid for `len` bytes (checked).
        unsafe { xen_shim_proto::sys::volatile_fill(p, 0, len) };
        Ok(())
    }
}
