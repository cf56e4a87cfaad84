//! The Dom0-only active-grant file: per grant reference, the pins of current
//! mappings (Xen's `struct active_grant_entry`), shared by every Dom0 process
//! that maps the domain's grants, plus a header the daemon keeps current
//! (table version, frames, dying flag). See [`xen_shim_proto::layout`] for the byte
//! layout.
//!
//! Each entry has a lock word holding the id of the Dom0 thread changing it.
//! Dom0 processes are trusted, but one may die holding a lock: a waiter that
//! finds the holder gone takes the lock over. A lock held for longer than
//! [`LOCK_TIMEOUT`] by a live thread makes the operation fail with
//! `GNTST_eagain` instead of hanging.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xen_abi::grant_table::grant_ref_t;

use xen_shim_proto::grant::GrantError;
use xen_shim_proto::layout::{self, active_entry, active_header, DomainLayout, ACTIVE_MAGIC};
use xen_shim_proto::sys::{self, MappedRegion};

/// How long a map waits for another thread's hold on an active entry.
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// Read pins are bits 0..16 of the pin word.
pub const PIN_READ_INC: u32 = 1;
/// Write pins are bits 16..32 of the pin word.
pub const PIN_WRITE_INC: u32 = 1 << 16;
/// A pin count at or above this is refused (Xen's overflow guard).
pub const PIN_LIMIT: u32 = 0x7fff;

/// A mapped active-grant file.
#[derive(Debug)]
pub struct ActiveTable {
    region: MappedRegion,
    max_entries: u32,
}

impl ActiveTable {
    /// Maps an active-grant file created by [`ActiveTable::init`].
    pub fn map(file: &File) -> Result<Self, GrantError> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| GrantError::Invalid("active file size"))?;
        if len < layout::ACTIVE_HEADER_SIZE {
            return Err(GrantError::Invalid("active file too small"));
        }
        let region = MappedRegion::map(file.as_fd(), len)?;
        let max_entries = ((len - layout::ACTIVE_HEADER_SIZE) / layout::ACTIVE_ENTRY_SIZE) as u32;
        let t = Self {
            region,
            max_entries,
        };
        if t.u64_at(active_header::MAGIC).load(Ordering::Acquire) != ACTIVE_MAGIC {
            return Err(GrantError::Invalid("active file magic"));
        }
        let l = t.layout();
        if l.max_grant_entries(1) > max_entries {
            return Err(GrantError::Invalid("active file shorter than its layout"));
        }
        Ok(t)
    }

    /// Sizes and initialises a fresh active-grant file for `domid` (daemon).
    pub fn init(
        file: &File,
        domid: u16,
        l: &DomainLayout,
        instance: u32,
    ) -> Result<Self, GrantError> {
        file.set_len(l.active_file_bytes())?;
        let len = usize::try_from(l.active_file_bytes())
            .map_err(|_| GrantError::Invalid("active size"))?;
        let region = MappedRegion::map(file.as_fd(), len)?;
        let t = Self {
            region,
            max_entries: l.max_grant_entries(1),
        };
        t.u32_at(active_header::DOMID)
            .store(u32::from(domid), Ordering::Relaxed);
        t.u32_at(active_header::VERSION).store(1, Ordering::Relaxed);
        t.u32_at(active_header::NR_FRAMES).store(
            layout::INITIAL_GRANT_FRAMES.min(l.max_grant_frames),
            Ordering::Relaxed,
        );
        t.u32_at(active_header::MAX_FRAMES)
            .store(l.max_grant_frames, Ordering::Relaxed);
        t.u64_at(active_header::NR_RAM_PAGES)
            .store(l.nr_ram_pages, Ordering::Relaxed);
        t.u32_at(active_header::FLAGS).store(0, Ordering::Relaxed);
        t.u32_at(active_header::INSTANCE)
            .store(instance, Ordering::Relaxed);
        t.u64_at(active_header::MAGIC)
            .store(ACTIVE_MAGIC, Ordering::Release);
        Ok(t)
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        self.region.atomic_u32(off)
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        self.region.atomic_u64(off)
    }

    /// The domain's layout as recorded in the header.
    pub fn layout(&self) -> DomainLayout {
        DomainLayout {
            nr_ram_pages: self
                .u64_at(active_header::NR_RAM_PAGES)
                .load(Ordering::Acquire),
            max_grant_frames: self
                .u32_at(active_header::MAX_FRAMES)
                .load(Ordering::Acquire),
        }
    }

    /// Domid in the header.
    pub fn domid(&self) -> u16 {
        self.u32_at(active_header::DOMID).load(Ordering::Acquire) as u16
    }

    /// Instance number in the header.
    pub fn instance(&self) -> u32 {
        self.u32_at(active_header::INSTANCE).load(Ordering::Acquire)
    }

    /// Current table version.
    pub fn version(&self) -> u32 {
        self.u32_at(active_header::VERSION).load(Ordering::Acquire)
    }

    /// Sets the table version (daemon only).
    pub fn set_version(&self, v: u32) {
        self.u32_at(active_header::VERSION)
            .store(v, Ordering::Release);
    }

    /// Current frame count.
    pub fn nr_frames(&self) -> u32 {
        self.u32_at(active_header::NR_FRAMES)
            .load(Ordering::Acquire)
    }

    /// Sets the frame count (daemon only).
    pub fn set_nr_frames(&self, n: u32) {
        self.u32_at(active_header::NR_FRAMES)
            .store(n, Ordering::Release);
    }

    /// Whether the domain is dying.
    pub fn is_dying(&self) -> bool {
        self.u32_at(active_header::FLAGS).load(Ordering::Acquire) & active_header::FLAG_DYING != 0
    }

    /// Marks the domain dying (daemon only): new maps fail with `bad_domain`.
    pub fn set_dying(&self) {
        self.u32_at(active_header::FLAGS)
            .fetch_or(active_header::FLAG_DYING, Ordering::AcqRel);
    }

    /// Whether any reference has pins (used by `set_version`, which Xen
    /// refuses while grants are in use).
    pub fn any_pinned(&self) -> bool {
        (0..self.max_entries).any(|g| self.pins(g) != 0)
    }

    fn entry_off(&self, gref: grant_ref_t) -> Option<usize> {
        (gref < self.max_entries).then(|| layout::active_entry_offset(gref) as usize)
    }

    /// Pin word of `gref` (0 when out of range).
    pub fn pins(&self, gref: grant_ref_t) -> u32 {
        self.entry_off(gref)
            .map(|o| self.u32_at(o + active_entry::PIN).load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Locks the active entry of `gref`.
    pub fn lock(&self, gref: grant_ref_t) -> Result<ActiveEntry<'_>, GrantError> {
        let off = self.entry_off(gref).ok_or(GrantError::BadGntref {
            gref,
            nr_entries: self.max_entries,
        })?;
        let lock = self.u32_at(off + active_entry::LOCK);
        let me = sys::gettid();
        let start = Instant::now();
        let mut spins: u32 = 0;
        loop {
            match lock.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => {
                    return Ok(ActiveEntry {
                        table: self,
                        off,
                        lock,
                    })
                }
                Err(holder) => {
                    spins = spins.wrapping_add(1);
                    if holder != 0 && spins % 256 == 0 && (holder == me || !sys::task_alive(holder))
                    {
                        // The holder died (or is a thread id reused by us after
                        // its owner died): take the lock over.
                        if lock
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                        {
                            return Ok(ActiveEntry {
                                table: self,
                                off,
                                lock,
                            });
                        }
                    }
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    if spins % 64 == 0 && start.elapsed() > LOCK_TIMEOUT {
                        return Err(GrantError::Busy { gref });
                    }
                }
            }
        }
    }
}

/// A locked active entry; unlocks on drop.
#[derive(Debug)]
pub struct ActiveEntry<'a> {
    table: &'a ActiveTable,
    off: usize,
    lock: &'a AtomicU32,
}

impl ActiveEntry<'_> {
    /// The pin word.
    pub fn pin(&self) -> u32 {
        self.table
            .u32_at(self.off + active_entry::PIN)
            .load(Ordering::Acquire)
    }
    /// Sets the pin word.
    pub fn set_pin(&self, v: u32) {
        self.table
            .u32_at(self.off + active_entry::PIN)
            .store(v, Ordering::Release);
    }
    /// The pinned frame.
    pub fn frame(&self) -> u64 {
        self.table
            .u64_at(self.off + active_entry::FRAME)
            .load(Ordering::Acquire)
    }
    /// The mapper domid.
    pub fn domid(&self) -> u16 {
        self.table
            .u32_at(self.off + active_entry::DOMID)
            .load(Ordering::Acquire) as u16
    }
    /// The sub-page range (`None` = whole page).
    pub fn sub_page(&self) -> Option<(u16, u16)> {
        let v = self
            .table
            .u32_at(self.off + active_entry::SUB_PAGE)
            .load(Ordering::Acquire);
        (v != 0).then_some((v as u16, (v >> 16) as u16))
    }
    /// Records what the first pinner found.
    pub fn set_target(&self, frame: u64, domid: u16, sub_page: Option<(u16, u16)>) {
        self.table
            .u64_at(self.off + active_entry::FRAME)
            .store(frame, Ordering::Relaxed);
        self.table
            .u32_at(self.off + active_entry::DOMID)
            .store(u32::from(domid), Ordering::Relaxed);
        let sp = sub_page
            .map(|(o, l)| u32::from(o) | (u32::from(l) << 16))
            .unwrap_or(0);
        self.table
            .u32_at(self.off + active_entry::SUB_PAGE)
            .store(sp, Ordering::Relaxed);
    }
}

impl Drop for ActiveEntry<'_> {
    fn drop(&mut self) {
        self.lock.store(0, Ordering::Release);
    }
}
