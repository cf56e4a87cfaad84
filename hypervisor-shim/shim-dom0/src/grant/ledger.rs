//! Per-mapper grant ledgers: what one Dom0 mapper (one [`crate::Gntdev`]
//! handle's view of one granting domain) has pinned, so that its pins can be
//! dropped when it goes away, as Linux's gntdev does in its `release`
//! (closing `/dev/xen/gntdev`, which happens when its process dies, unmaps
//! every grant it mapped).
//!
//! The active-grant file ([`super::active`]) counts the pins of all Dom0
//! mappers together. Each mapper also keeps, in its own ledger file, a pin
//! word per grant reference with its own share, written under the same
//! active-entry lock as the shared count, so that whenever an entry is
//! unlocked, **its pin count is the sum of the ledgers' words**.
//!
//! The daemon creates a ledger for each mapper (request `MapperFds`), takes
//! an exclusive `flock` on it and hands the open file over `SCM_RIGHTS`; it
//! keeps no copy. The lock then lives exactly as long as the mapper has the
//! file open: until its `ForeignDomain` is dropped, or its process dies
//! (the kernel closes the file). The daemon later finds a ledger it can lock
//! itself and knows its mapper is gone: for every reference that ledger has
//! pinned, it locks the active entry and sets its pins to the sum of the
//! remaining ledgers, clearing `GTF_writing`/`GTF_reading` as an unmap
//! would ([`reclaim`]). Recomputing from the survivors rather than
//! subtracting makes the repair exact even when the dead mapper was killed
//! halfway through a map (it holds the entry lock, the daemon takes it over).
//!
//! A mapper writes its word before it sets the grant's status bits and
//! after it clears them, so a mapper killed mid-operation always leaves a
//! non-zero word on the reference it was changing.
//!
//! ```text
//! bytes 0 .. 4096          header: magic, domid, instance, owner pid, owner start time
//! 4096 + 4 * ref           pin word of `ref` (read pins bits 0..16, write pins 16..32)
//! ```

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen_abi::grant_table::{grant_ref_t, GTF_reading, GTF_writing};
use xen_shim_proto::grant::{GrantError, GrantTableView};
use xen_shim_proto::sys::MappedRegion;

use super::active::{ActiveTable, PIN_WRITE_INC};
use super::clear_status;

/// Ledger header magic.
pub const LEDGER_MAGIC: u64 = u64::from_le_bytes(*b"XSHMLDG1");
/// Bytes of the ledger header.
pub const LEDGER_HEADER_SIZE: usize = 4096;
/// Bytes of one ledger word.
pub const LEDGER_ENTRY_SIZE: usize = 4;

mod header {
    pub const MAGIC: usize = 0;
    pub const DOMID: usize = 8;
    pub const INSTANCE: usize = 12;
    pub const PID: usize = 16;
    pub const START: usize = 24;
}

/// Bytes of a ledger for `max_entries` references.
pub const fn ledger_bytes(max_entries: u32) -> u64 {
    LEDGER_HEADER_SIZE as u64 + max_entries as u64 * LEDGER_ENTRY_SIZE as u64
}

/// A mapped ledger file.
#[derive(Debug)]
pub struct Ledger {
    region: MappedRegion,
    max_entries: u32,
    // Keeps the file (and, for the owner, its flock) open.
    _file: File,
}

/// What a ledger's header says about its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerOwner {
    /// Granting domain.
    pub domid: u16,
    /// Its instance.
    pub instance: u32,
    /// Process id of the mapper (as the daemon saw it).
    pub pid: i32,
    /// Its start time (clock ticks since boot), 0 if unknown.
    pub start_time: u64,
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Ledger {
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        self.region.atomic_u32(off)
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        self.region.atomic_u64(off)
    }

    /// Creates a ledger at `path` (exclusively) for `owner`, sized for
    /// `max_entries`, locked (`flock` exclusive) on the returned file, which
    /// is meant to be handed to the mapper (daemon).
    pub fn create(path: &Path, owner: LedgerOwner, max_entries: u32) -> std::io::Result<File> {
        let file = xen_shim_proto::sys::create_shm_file(path, ledger_bytes(max_entries))?;
        let r = (|| {
            flock(&file, libc::LOCK_EX | libc::LOCK_NB)?;
            let region = MappedRegion::map(file.as_fd(), LEDGER_HEADER_SIZE)?;
            let l = Ledger {
                region,
                max_entries: 0,
                _file: file.try_clone()?,
            };
            l.u32_at(header::DOMID)
                .store(u32::from(owner.domid), Ordering::Relaxed);
            l.u32_at(header::INSTANCE)
                .store(owner.instance, Ordering::Relaxed);
            l.u32_at(header::PID)
                .store(owner.pid as u32, Ordering::Relaxed);
            l.u64_at(header::START)
                .store(owner.start_time, Ordering::Relaxed);
            l.u64_at(header::MAGIC)
                .store(LEDGER_MAGIC, Ordering::Release);
            Ok(())
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(file)
    }

    /// Maps a ledger file (the mapper, with the file the daemon handed it;
    /// the daemon, to read or reclaim one).
    pub fn map(file: File) -> Result<Self, GrantError> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| GrantError::Invalid("ledger size"))?;
        if len < LEDGER_HEADER_SIZE {
            return Err(GrantError::Invalid("ledger too small"));
        }
        let region = MappedRegion::map(file.as_fd(), len)?;
        let max_entries = ((len - LEDGER_HEADER_SIZE) / LEDGER_ENTRY_SIZE) as u32;
        let l = Self {
            region,
            max_entries,
            _file: file,
        };
        if l.u64_at(header::MAGIC).load(Ordering::Acquire) != LEDGER_MAGIC {
            return Err(GrantError::Invalid("ledger magic"));
        }
        Ok(l)
    }

    /// Tries to take the ledger's lock on `file` (a fresh open of it):
    /// `true` when it was free, i.e. its mapper is gone (the lock is then
    /// held by `file`).
    pub fn try_lock(file: &File) -> bool {
        flock(file, libc::LOCK_EX | libc::LOCK_NB).is_ok()
    }

    /// Owner recorded in the header.
    pub fn owner(&self) -> LedgerOwner {
        LedgerOwner {
            domid: self.u32_at(header::DOMID).load(Ordering::Acquire) as u16,
            instance: self.u32_at(header::INSTANCE).load(Ordering::Acquire),
            pid: self.u32_at(header::PID).load(Ordering::Acquire) as i32,
            start_time: self.u64_at(header::START).load(Ordering::Acquire),
        }
    }

    /// References covered.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn word(&self, gref: grant_ref_t) -> Option<&AtomicU32> {
        (gref < self.max_entries)
            .then(|| self.u32_at(LEDGER_HEADER_SIZE + gref as usize * LEDGER_ENTRY_SIZE))
    }

    /// This mapper's pin word of `gref` (0 out of range).
    pub fn pins(&self, gref: grant_ref_t) -> u32 {
        self.word(gref)
            .map(|w| w.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Sets this mapper's pin word of `gref` (under the active-entry lock).
    /// Out of range is refused: a mapper must not pin what it cannot record.
    pub fn set_pins(&self, gref: grant_ref_t, v: u32) -> Result<(), GrantError> {
        let w = self.word(gref).ok_or(GrantError::BadGntref {
            gref,
            nr_entries: self.max_entries,
        })?;
        w.store(v, Ordering::Release);
        Ok(())
    }

    /// References with a non-zero word.
    pub fn pinned(&self) -> Vec<grant_ref_t> {
        (0..self.max_entries)
            .filter(|&g| self.pins(g) != 0)
            .collect()
    }
}

/// File name of a ledger: `dom<D>-<instance>.<pid>.<n>.ledger`.
pub fn ledger_name(domid: u16, instance: u64, pid: i32, n: u64) -> String {
    format!("dom{domid}-{instance}.{pid}.{n}.ledger")
}

/// Parses a ledger file name into `(domid, instance)`.
pub fn parse_ledger_name(name: &str) -> Option<(u16, u64)> {
    let rest = name.strip_prefix("dom")?.strip_suffix(".ledger")?;
    let (dom_inst, _) = rest.split_once('.')?;
    let (d, i) = dom_inst.split_once('-')?;
    Some((d.parse().ok()?, i.parse().ok()?))
}

/// The outcome of [`reclaim`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// References whose pins were recomputed.
    pub grefs: u32,
    /// References that went unmapped (no pin left).
    pub released: u32,
    /// References whose entry another live thread held too long (retry).
    pub busy: u32,
}

/// Drops the pins of the dead mapper `dead` (its ledger, locked by the
/// caller) on the granting domain `active`/`table`: for every reference it
/// recorded, locks the active entry, sets the pins to the sum of the `live`
/// ledgers' words, clears `GTF_writing` when no write pin is left and
/// `GTF_reading` when none is, and zeroes the dead word. Returns what it did;
/// references reported busy keep their dead word for a later retry.
///
/// The caller guarantees that `live` holds every other ledger of the domain
/// (no ledger is created meanwhile) and that it holds no unrecorded pins of
/// its own.
pub fn reclaim(
    dead: &Ledger,
    live: &[Ledger],
    active: &ActiveTable,
    table: Option<&dyn GrantTableViewDyn>,
    dirty: Option<&xen_shim_proto::dirty::DirtyLog>,
) -> Reclaimed {
    let mut out = Reclaimed::default();
    for g in dead.pinned() {
        let Ok(act) = active.lock(g) else {
            out.busy += 1;
            continue;
        };
        if dead.pins(g) >> 16 != 0 {
            // A writable mapping goes: its page counts as written (the
            // unmap's dirty mark, for a migration).
            if let Some(d) = dirty {
                d.mark(act.frame());
            }
        }
        let (mut r, mut w) = (0u32, 0u32);
        for l in live {
            let p = l.pins(g);
            r = r.saturating_add(p & 0xffff);
            w = w.saturating_add(p >> 16);
        }
        let (r, w) = (r.min(0xffff), w.min(0xffff));
        if let Some(t) = table {
            if g < t.entries() {
                if w == 0 {
                    t.clear(g, GTF_writing);
                }
                if r == 0 && w == 0 {
                    t.clear(g, GTF_reading);
                }
            }
        }
        act.set_pin(r + w * PIN_WRITE_INC);
        let _ = dead.set_pins(g, 0);
        drop(act);
        out.grefs += 1;
        if r == 0 && w == 0 {
            out.released += 1;
        }
    }
    out
}

/// The two operations [`reclaim`] needs of a grant table (object safe).
pub trait GrantTableViewDyn {
    /// Entries in the current table.
    fn entries(&self) -> u32;
    /// Clears status `bits` of `gref`.
    fn clear(&self, gref: grant_ref_t, bits: u16);
}

impl<T: GrantTableView> GrantTableViewDyn for T {
    fn entries(&self) -> u32 {
        self.nr_entries()
    }
    fn clear(&self, gref: grant_ref_t, bits: u16) {
        clear_status(self, gref, bits);
    }
}

/// Paths of the ledger files in `dir`, with their `(domid, instance)`.
pub fn list_ledgers(dir: &Path) -> Vec<(PathBuf, u16, u64)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, u16, u64)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let (d, i) = parse_ledger_name(name.to_str()?)?;
            Some((e.path(), d, i))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ledger_name_round_trips() {
        let n = ledger_name(7, 42, 1234, 3);
        assert_eq!(n, "dom7-42.1234.3.ledger");
        assert_eq!(parse_ledger_name(&n), Some((7, 42)));
        assert_eq!(parse_ledger_name("dom7-42.mem"), None);
        assert_eq!(parse_ledger_name("dom7-42.active"), None);
        assert_eq!(parse_ledger_name("domx-1.2.3.ledger"), None);
    }
}
