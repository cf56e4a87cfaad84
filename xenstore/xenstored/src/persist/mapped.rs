//! The journal file appended through a shared memory mapping: an append is a
//! `memcpy` into the page cache instead of a `write(2)`.
//!
//! Durability is the same as `write(2)` without `fsync`: the bytes are in
//! the kernel's page cache as soon as the copy returns, so they survive
//! `SIGKILL` or a crash of the daemon, not a power loss or a kernel crash
//! (the caller `msync`s for that: [`MappedFile::sync`]).
//!
//! The file is grown in [`GROW`] steps with `fallocate(2)`, which reserves
//! the blocks: storing into a page of a sparse file on a full disk would
//! raise `SIGBUS`, a preallocated page never does. The bytes between the
//! end of the records and the end of the file are zeros, where replay stops
//! (a record never starts with a zero length). A file system that cannot
//! preallocate (`EOPNOTSUPP`) makes [`MappedFile::new`] fail, and the caller
//! falls back to `write(2)`.
//!
//! Pages the appends have moved past are dropped from the mapping in
//! [`RELEASE`] steps (`MADV_DONTNEED`: for a shared file mapping that only
//! unmaps them; the data, dirty or not, stays in the page cache and the
//! file). The daemon's resident set then holds at most a few hundred KiB
//! of journal, not the whole journal up to its compaction (4 MiB or more),
//! which made xenstored's RSS a sawtooth of that height in long runs.
//!
//! The mapping reserves more address space than the file holds; only bytes
//! below the file's length are ever written, so no access reaches a page
//! beyond the end of the file. The state directory is the daemon's own: a
//! process truncating the journal under it would make the daemon's next
//! append fault, as it would corrupt the journal of a `write(2)` daemon.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::mman::{mmap, msync, munmap, MapFlags, MsFlags, ProtFlags};

/// The file grows by this much at a time (one `fallocate(2)` per step).
pub const GROW: usize = 256 << 10;

/// Address space reserved at least (no memory is used until written).
const MIN_MAP: usize = 64 << 20;

const PAGE: usize = 4096;

/// Pages behind the append offset are released once this many bytes of
/// them have accumulated (one `madvise(2)` per this much journal).
pub const RELEASE: usize = 64 << 10;

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|v| v / to * to)
}

/// A shared, writable mapping of the journal file.
#[derive(Debug)]
pub struct MappedFile {
    base: NonNull<u8>,
    /// Bytes of address space mapped.
    map_len: usize,
    /// Bytes of the file (all preallocated); `file_len <= map_len`.
    file_len: usize,
    /// Pages below this offset are not mapped in (released, or never
    /// touched through this mapping); page aligned.
    released: usize,
}

// SAFETY: the value owns its mapping exclusively (nothing else in the
// process holds the pointer) and only writes through it with `&mut self`.
unsafe impl Send for MappedFile {}

impl MappedFile {
    /// Grows `file` (preallocated) to hold at least `need` bytes and maps it.
    pub fn new(file: &File, need: usize) -> io::Result<MappedFile> {
        let file_len = Self::grow_file(file, 0, need)?;
        let (base, map_len) = Self::map(file, file_len)?;
        let m = MappedFile {
            base,
            map_len,
            file_len,
            released: 0,
        };
        m.populate(0, file_len);
        Ok(m)
    }

    /// Faults `off..end` in, writable, with one system call
    /// (`MADV_POPULATE_WRITE`, Linux 5.14): the copies of the following
    /// appends then take no page fault each (a fault per page of a freshly
    /// allocated file range cost about as much as the `write(2)` it
    /// replaces). Best effort: older kernels fault on first write.
    fn populate(&self, off: usize, end: usize) {
        let start = off / PAGE * PAGE;
        let end = end.min(self.file_len);
        if end <= start {
            return;
        }
        // SAFETY: `start` is page aligned and `start..end` lies within our
        // live mapping (end <= file_len <= map_len) and within the file, so
        // populating it cannot fault beyond the end of the file; madvise
        // changes no memory contents.
        let _ = unsafe {
            libc::madvise(
                self.base.as_ptr().add(start).cast(),
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    /// The file's length (the end of the preallocated bytes).
    #[must_use]
    pub fn file_len(&self) -> usize {
        self.file_len
    }

    fn grow_file(file: &File, from: usize, need: usize) -> io::Result<usize> {
        let len = round_up(need.max(1), GROW)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        if len <= from {
            return Ok(from);
        }
        let off = libc::off_t::try_from(from).map_err(|_| io::ErrorKind::InvalidInput)?;
        let add = libc::off_t::try_from(len - from).map_err(|_| io::ErrorKind::InvalidInput)?;
        fallocate(file.as_raw_fd(), FallocateFlags::empty(), off, add).map_err(io::Error::from)?;
        Ok(len)
    }

    fn map(file: &File, file_len: usize) -> io::Result<(NonNull<u8>, usize)> {
        let want = file_len
            .checked_mul(2)
            .and_then(|v| round_up(v.max(MIN_MAP), PAGE))
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let len = NonZeroUsize::new(want).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping placed by the kernel (addr None) of
        // the journal, which this process owns; it is only written through
        // raw pointers below the file's length (never through references)
        // and unmapped in Drop or when replaced.
        let p = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .map_err(io::Error::from)?;
        Ok((p.cast(), want))
    }

    /// Makes room for `need` bytes from the start of the file: grows the
    /// file, and the mapping if the file outgrew it.
    pub fn reserve(&mut self, file: &File, need: usize) -> io::Result<()> {
        if need <= self.file_len {
            return Ok(());
        }
        let new_len = Self::grow_file(file, self.file_len, need)?;
        if new_len > self.map_len {
            let (base, map_len) = Self::map(file, new_len)?;
            let old = std::mem::replace(&mut self.base, base);
            let old_len = std::mem::replace(&mut self.map_len, map_len);
            // SAFETY: `old` and `old_len` describe the mapping made by
            // `map` earlier, which nothing uses any more (the new one
            // replaced it in `self`).
            let _ = unsafe { munmap(old.cast(), old_len) };
        }
        let old_len = std::mem::replace(&mut self.file_len, new_len);
        self.populate(old_len, new_len);
        Ok(())
    }

    /// The appends have reached `off`: unmaps the whole pages below it
    /// (once [`RELEASE`] bytes of them are still mapped). Their bytes stay
    /// in the file; a later read through the mapping faults them back in.
    pub fn release_before(&mut self, off: usize) {
        let upto = (off / PAGE * PAGE).min(self.file_len);
        if upto < self.released.saturating_add(RELEASE) {
            return;
        }
        // SAFETY: `released..upto` is page aligned and lies within our live
        // mapping (upto <= file_len <= map_len); MADV_DONTNEED on a shared
        // file mapping only removes the page-table entries (a dirty page
        // stays dirty in the page cache), so no data is lost and no
        // reference into the range exists (it is only written through raw
        // pointers).
        let _ = unsafe {
            libc::madvise(
                self.base.as_ptr().add(self.released).cast(),
                upto - self.released,
                libc::MADV_DONTNEED,
            )
        };
        self.released = upto;
    }

    /// The file was truncated to zero by the caller: grows it again.
    pub fn reset(&mut self, file: &File) -> io::Result<()> {
        self.released = 0;
        self.file_len = 0;
        self.file_len = Self::grow_file(file, 0, GROW)?;
        self.populate(0, self.file_len);
        Ok(())
    }

    /// Copies `data` to offset `off` of the file.
    ///
    /// # Panics
    ///
    /// If the bytes would end beyond the file's preallocated length (the
    /// caller reserves first).
    pub fn write_at(&mut self, off: usize, data: &[u8]) {
        let end = off
            .checked_add(data.len())
            .expect("journal offsets are far below usize::MAX");
        assert!(
            end <= self.file_len,
            "journal write beyond the reserved file"
        );
        // SAFETY: `off..end` lies within the file's preallocated length,
        // which is within the mapping (`file_len <= map_len`), so the
        // destination is valid mapped memory of the file; `data` is a live
        // slice of ordinary memory, which cannot overlap the mapping; no
        // Rust reference to the mapping exists.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len());
        }
    }

    /// Writes `off..off + len` of the file to the disk (`msync(MS_SYNC)`).
    pub fn sync(&self, off: usize, len: usize) -> io::Result<()> {
        let start = off / PAGE * PAGE;
        let end = off.saturating_add(len).min(self.file_len);
        if end <= start {
            return Ok(());
        }
        // SAFETY: `start` is page aligned and `start..end` lies within the
        // mapping (end <= file_len <= map_len); msync only flushes it.
        let base = unsafe { self.base.add(start) };
        // SAFETY: as above: a page-aligned range of our own live mapping.
        unsafe { msync(base.cast(), end - start, MsFlags::MS_SYNC) }.map_err(io::Error::from)
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` describe our live mapping, used by
        // nothing else; it is not used after this.
        let _ = unsafe { munmap(self.base.cast(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A fresh journal file in a temporary directory (kept alive by the
    /// returned guard).
    fn journal_file() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("j");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("open");
        (dir, p, f)
    }

    /// `Rss:` (KiB) of the mapping that starts at `base`, from
    /// `/proc/self/smaps`.
    fn mapping_rss_kib(base: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
        let head = format!("{base:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        assert!(
            lines.next().is_some(),
            "the mapping at {base:#x} is in smaps"
        );
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("an Rss line")
    }

    #[test]
    fn test_mapped_appends_release_the_pages_behind_them_and_keep_the_bytes() {
        let (_dir, p, f) = journal_file();
        let mut m = MappedFile::new(&f, 1).expect("map");
        let total = 4 << 20;
        let mut off = 0;
        let mut n = 0u32;
        while off < total {
            let rec = [n.to_le_bytes(); 256].concat();
            m.reserve(&f, off + rec.len()).expect("grow");
            m.write_at(off, &rec);
            off += rec.len();
            m.release_before(off);
            n += 1;
        }
        // Resident: the unreleased tail and the populated step ahead of it,
        // not the 4 MiB appended.
        let rss = mapping_rss_kib(m.base.as_ptr() as usize);
        let bound = ((RELEASE + 2 * GROW) / 1024) as u64;
        assert!(
            rss <= bound,
            "{rss} KiB of the journal resident, bound {bound} KiB"
        );
        let mut data = Vec::new();
        std::fs::File::open(&p)
            .expect("reopen")
            .read_to_end(&mut data)
            .expect("read");
        for (i, rec) in data[..total].chunks(1024).enumerate() {
            let want = [(i as u32).to_le_bytes(); 256].concat();
            assert_eq!(rec, &want[..], "record {i} in the file");
        }
    }

    #[test]
    fn test_mapped_write_at_lands_in_file_rest_zero() {
        let (_dir, p, f) = journal_file();
        let mut m = MappedFile::new(&f, 10).expect("map");
        m.write_at(0, b"hello");
        m.reserve(&f, GROW + 3).expect("grow");
        m.write_at(GROW, b"abc");
        let mut data = Vec::new();
        std::fs::File::open(&p)
            .expect("reopen")
            .read_to_end(&mut data)
            .expect("read");
        assert_eq!(data.len(), 2 * GROW);
        assert_eq!(&data[..5], b"hello");
        assert!(data[5..GROW].iter().all(|&b| b == 0));
        assert_eq!(&data[GROW..GROW + 3], b"abc");
        m.sync(0, GROW + 3).expect("msync");
    }

    #[test]
    fn test_mapped_reserve_beyond_mapping_remaps_keeping_bytes() {
        let (_dir, p, f) = journal_file();
        let mut m = MappedFile::new(&f, 1).expect("map");
        m.write_at(0, b"x");
        let far = MIN_MAP + 1;
        m.reserve(&f, far + 1).expect("grow past the mapping");
        m.write_at(far, b"y");
        let data = std::fs::read(&p).expect("read");
        assert_eq!(data[0], b'x');
        assert_eq!(data[far], b'y');
    }

    #[test]
    #[should_panic(expected = "beyond the reserved file")]
    fn test_mapped_write_past_reservation_panics() {
        let (_dir, _, f) = journal_file();
        let mut m = MappedFile::new(&f, 1).expect("map");
        m.write_at(GROW - 1, b"ab");
    }
}
