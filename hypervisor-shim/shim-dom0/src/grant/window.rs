//! Page windows: a reserved address range into which the granted pages of
//! another domain's memory file are mapped one by one, for a virtually
//! contiguous multi-page grant mapping.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use xen_shim_proto::layout::PAGE_SIZE;

/// A reserved `PROT_NONE` address range into which pages of files are mapped
/// with `MAP_FIXED`, giving a virtually contiguous view of scattered pages.
#[derive(Debug)]
pub struct PageWindow {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: same as `MappedRegion`: raw shared memory accessed via raw pointers.
unsafe impl Send for PageWindow {}
// SAFETY: as above.
unsafe impl Sync for PageWindow {}

impl PageWindow {
    /// Reserves `pages` pages of address space.
    pub fn reserve(pages: usize) -> io::Result<Self> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh anonymous PROT_NONE reservation; affects no memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    /// Maps the page at byte `file_offset` of `fd` at page `index` of the
    /// window, shared, writable or not.
    pub fn map_page(
        &self,
        index: usize,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let off = index
            .checked_mul(PAGE_SIZE)
            .filter(|&o| o < self.len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let file_offset = libc::off_t::try_from(file_offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: the target page lies inside this window's reservation (checked
        // above), which this handle owns, so MAP_FIXED replaces only memory of
        // ours; the fd is valid for the call.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().add(off).cast(),
                PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                file_offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Base address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for PageWindow {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the reservation made in `reserve` (and the
        // pages fixed-mapped inside it), once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
