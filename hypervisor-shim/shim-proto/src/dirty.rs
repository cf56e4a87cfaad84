//! A domain's grant dirty log: the pages Dom0 mappers write through its
//! grants, for live migration (Xen's `paging_mark_dirty` at the unmap of a
//! writable grant mapping and after a grant copy into a page).
//!
//! Dom0 backends write guest memory through their own mapping of the
//! domain's memory file, which KVM's dirty log never sees. The daemon creates
//! one such file per domain next to its memory file (`domN-I.dirty`) and
//! hands it to every mapper with the memory file and to the domain's runtime
//! (the VMM) at attach. Layout: a 64-byte header (magic, flags, number of
//! pages), then one bit per page of the memory file in 64-bit words, only
//! ever accessed atomically. Mappers OR bits in ([`DirtyLog::mark`]) while
//! the header's [`MIGRATING`] flag is set (a relaxed load otherwise: no cost
//! when no migration runs); the migrating VMM sets the flag and
//! fetches-and-clears the bitmap word by word ([`DirtyLog::take`]).

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::MappedRegion;

/// Magic of a dirty-log file (`"XSDIRTY1"`).
pub const DIRTY_MAGIC: u64 = u64::from_le_bytes(*b"XSDIRTY1");
/// Bytes before the bitmap.
pub const DIRTY_HEADER_SIZE: usize = 64;
/// Header flag: a migration runs, mappers record their writes.
pub const MIGRATING: u32 = 1;

const OFF_MAGIC: usize = 0;
const OFF_FLAGS: usize = 8;
const OFF_NR_PAGES: usize = 16;

/// Errors of the dirty-log file.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// The file cannot be sized, read or mapped.
    #[error("dirty log: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a dirty log of this domain's size.
    #[error("dirty log: {0}")]
    Invalid(&'static str),
}

/// Byte size of the dirty-log file of a memory file of `nr_pages` pages.
pub const fn file_bytes(nr_pages: u64) -> u64 {
    DIRTY_HEADER_SIZE as u64 + nr_pages.div_ceil(64) * 8
}

/// A mapped dirty-log file.
#[derive(Debug)]
pub struct DirtyLog {
    region: MappedRegion,
    nr_pages: u64,
}

impl DirtyLog {
    /// Sizes and initialises a fresh dirty-log file for a memory file of
    /// `nr_pages` pages (daemon).
    pub fn init(file: &File, nr_pages: u64) -> Result<Self, DirtyError> {
        let len = file_bytes(nr_pages);
        file.set_len(len)?;
        let len = usize::try_from(len).map_err(|_| DirtyError::Invalid("size"))?;
        let region = MappedRegion::map(file.as_fd(), len)?;
        let log = Self { region, nr_pages };
        log.region
            .atomic_u64(OFF_NR_PAGES)
            .store(nr_pages, Ordering::Relaxed);
        log.flags().store(0, Ordering::Relaxed);
        log.region
            .atomic_u64(OFF_MAGIC)
            .store(DIRTY_MAGIC, Ordering::Release);
        Ok(log)
    }

    /// Maps a dirty-log file made by [`DirtyLog::init`] for a memory file of
    /// `nr_pages` pages.
    pub fn map(file: &File, nr_pages: u64) -> Result<Self, DirtyError> {
        let len = file.metadata()?.len();
        if len != file_bytes(nr_pages) {
            return Err(DirtyError::Invalid("file size does not match the domain"));
        }
        let len = usize::try_from(len).map_err(|_| DirtyError::Invalid("size"))?;
        let region = MappedRegion::map(file.as_fd(), len)?;
        let log = Self { region, nr_pages };
        if log.region.atomic_u64(OFF_MAGIC).load(Ordering::Acquire) != DIRTY_MAGIC {
            return Err(DirtyError::Invalid("bad magic"));
        }
        if log.region.atomic_u64(OFF_NR_PAGES).load(Ordering::Relaxed) != nr_pages {
            return Err(DirtyError::Invalid("page count does not match the domain"));
        }
        Ok(log)
    }

    fn flags(&self) -> &AtomicU32 {
        self.region.atomic_u32(OFF_FLAGS)
    }

    fn word(&self, i: u64) -> &AtomicU64 {
        // `i < nr_pages / 64` (rounded up): inside the file (checked at map).
        self.region.atomic_u64(DIRTY_HEADER_SIZE + i as usize * 8)
    }

    /// Pages the log covers.
    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    /// Whether a migration is recording (mappers check it first).
    pub fn is_migrating(&self) -> bool {
        self.flags().load(Ordering::Relaxed) & MIGRATING != 0
    }

    /// Starts (`true`) or stops recording (the migrating VMM). Mappers see
    /// the flag at their next map, unmap or copy: the VMM samples what is
    /// mapped or granted at the same time (see `vmm::migrate`).
    pub fn set_migrating(&self, on: bool) {
        if on {
            self.flags().fetch_or(MIGRATING, Ordering::SeqCst);
        } else {
            self.flags().fetch_and(!MIGRATING, Ordering::SeqCst);
        }
    }

    /// Records a write to page `gfn` while a migration runs; a gfn outside
    /// the memory file is ignored (never indexes past the bitmap).
    pub fn mark(&self, gfn: u64) {
        if !self.is_migrating() || gfn >= self.nr_pages {
            return;
        }
        self.word(gfn / 64)
            .fetch_or(1u64 << (gfn % 64), Ordering::Release);
    }

    /// Fetches and clears every recorded page (atomically, word by word), in
    /// ascending order.
    pub fn take(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for i in 0..self.nr_pages.div_ceil(64) {
            let w = self.word(i);
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = w.swap(0, Ordering::Acquire);
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                out.push(i * 64 + b);
                bits &= bits - 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(nr: u64) -> (File, DirtyLog) {
        let f = crate::sys::memfd("dirty-test", 0).expect("memfd");
        let l = DirtyLog::init(&f, nr).expect("init");
        (f, l)
    }

    #[test]
    fn test_mark_only_while_migrating_and_take_clears() {
        let (f, l) = log(130);
        l.mark(3);
        assert!(l.take().is_empty(), "no record without a migration");
        l.set_migrating(true);
        let other = DirtyLog::map(&f, 130).expect("map");
        for g in [129, 3, 64, 3, 130, u64::MAX] {
            other.mark(g);
        }
        assert_eq!(l.take(), vec![3, 64, 129]);
        assert!(l.take().is_empty());
        l.set_migrating(false);
        assert!(!other.is_migrating());
    }

    #[test]
    fn test_map_refuses_a_file_of_another_size_or_magic() {
        let (f, _l) = log(100);
        assert!(matches!(
            DirtyLog::map(&f, 200),
            Err(DirtyError::Invalid(_))
        ));
        let g = crate::sys::memfd("dirty-test", file_bytes(100)).expect("memfd");
        assert!(matches!(
            DirtyLog::map(&g, 100),
            Err(DirtyError::Invalid(_))
        ));
    }
}
