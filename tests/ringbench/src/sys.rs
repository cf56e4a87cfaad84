//! Linux plumbing: CPU pinning, page-aligned mappings, eventfd notifications.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

/// Page size the ring geometry is computed in (Xen's `XEN_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;

/// Pins the calling thread to CPU `core` (which [`pick_cores`] found usable; a pinned
/// thread's children inherit its mask, so this does not look the mask up again).
pub fn pin_to(core: usize) -> Result<()> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        bail!("sched_setaffinity to CPU {core} failed");
    }
    Ok(())
}

/// The two CPUs to pin frontend and backend to, if the machine has two.
pub fn pick_cores() -> Option<(usize, usize)> {
    let ids = core_affinity::get_core_ids()?;
    let has = |n| ids.iter().any(|c| c.id == n);
    if has(0) && has(1) {
        Some((0, 1))
    } else if ids.len() >= 2 {
        Some((ids[0].id, ids[1].id))
    } else {
        None
    }
}

/// A page-aligned, zero-filled memory mapping, unmapped on drop.
///
/// It only hands out a raw base pointer: every access to the ring inside goes through
/// `xen-ring`'s atomic/volatile accessors, never through references.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Region` owns a mapping and exposes it only as a raw pointer; moving the
// owner to another thread does not create any aliasing reference.
unsafe impl Send for Region {}
// SAFETY: shared access only yields the raw base pointer and the length; concurrent
// accesses through that pointer are the ring's business (atomics/volatile).
unsafe impl Sync for Region {}

impl Region {
    /// A private anonymous mapping of `len` bytes (threads placement).
    pub fn anonymous(len: usize) -> Result<Self> {
        let length = NonZeroUsize::new(len).context("a mapping needs a non-zero length")?;
        // SAFETY: no address hint, so the kernel picks a fresh range and nothing existing
        // is replaced; the result is owned by the returned `Region` and unmapped once.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
            )
        }
        .with_context(|| format!("mmap of {len} anonymous bytes failed"))?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A shared mapping of the first `len` bytes of `fd` (processes placement).
    pub fn shared(fd: BorrowedFd<'_>, len: usize) -> Result<Self> {
        let length = NonZeroUsize::new(len).context("a mapping needs a non-zero length")?;
        // SAFETY: no address hint (fresh range, nothing replaced); `fd` is a memfd at
        // least `len` bytes long (the parent ftruncated it), so no access faults with
        // SIGBUS; the mapping is owned by the returned `Region` and unmapped once.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
                fd,
                0,
            )
        }
        .with_context(|| format!("mmap of {len} shared bytes failed"))?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Base address (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing unmapped them;
        // whoever used the pointer (rings, threads) is gone by the time the owner drops.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A fresh memfd of `len` bytes, inheritable by a child process (no `MFD_CLOEXEC`).
pub fn memfd(len: usize) -> Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"ringbench", nix::sys::memfd::MemFdCreateFlag::empty())
        .context("memfd_create failed")?;
    let off = i64::try_from(len).context("memfd length does not fit off_t")?;
    nix::unistd::ftruncate(&fd, off)
        .with_context(|| format!("ftruncate of the memfd to {len} failed"))?;
    Ok(fd)
}

/// One direction of an event channel: an eventfd plus a count of the writes made
/// through this handle (the notifications the benchmark reports).
#[derive(Debug)]
pub struct Event {
    fd: OwnedFd,
    sent: u64,
}

impl Event {
    /// A new eventfd; `inheritable` leaves `EFD_CLOEXEC` off so a child can use it.
    pub fn new(inheritable: bool) -> Result<Self> {
        let flags = if inheritable { 0 } else { libc::EFD_CLOEXEC };
        // SAFETY: plain syscall with no pointer arguments.
        let raw = unsafe { libc::eventfd(0, flags) };
        if raw < 0 {
            return Err(Errno::last()).context("eventfd failed");
        }
        // SAFETY: `raw` is a new, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, sent: 0 })
    }

    /// Takes ownership of an eventfd inherited from the parent process.
    ///
    /// # Safety
    /// `raw` must be an open eventfd that nothing else in this process owns or closes.
    pub unsafe fn from_inherited(raw: RawFd) -> Self {
        // SAFETY: the caller guarantees `raw` is open and exclusively ours.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Self { fd, sent: 0 }
    }

    /// A second handle (dup) on the same eventfd, with its own write count.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone().context("dup of an eventfd failed")?,
            sent: 0,
        })
    }

    /// Signals the peer (one eventfd write) and counts it.
    #[inline]
    pub fn notify(&mut self) -> Result<()> {
        self.sent += 1;
        loop {
            match nix::unistd::write(self.fd.as_fd(), &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("eventfd write failed"),
            }
        }
    }

    /// Blocks until the counter is non-zero, then resets it.
    pub fn wait(&self) -> Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(8) => return Ok(u64::from_ne_bytes(buf)),
                Ok(n) => bail!("eventfd read returned {n} bytes"),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("eventfd read failed"),
            }
        }
    }

    /// Writes made through this handle.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The descriptor number (to pass to a child).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Fraction (0..=1) of all CPUs' time spent busy over the next `window`, from two
/// reads of `/proc/stat`; `None` if it cannot be read.
pub fn cpu_busy(window: std::time::Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().sum(), idle))
    }
    let (t0, i0) = sample()?;
    std::thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0).filter(|&t| t > 0)?;
    let idle = i1.saturating_sub(i0).min(total);
    Some(1.0 - idle as f64 / total as f64)
}

/// Involuntary context switches of the calling thread so far (`ru_nivcsw` of
/// `getrusage(RUSAGE_THREAD)`): how often something else took its CPU; 0 if unknown.
pub fn involuntary_switches() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the size getrusage fills.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded and filled the struct (it was zeroed before anyway).
    let ru = unsafe { ru.assume_init() };
    u64::try_from(ru.ru_nivcsw).unwrap_or(0)
}
