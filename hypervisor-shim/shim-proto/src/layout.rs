//! The layout of a domain's memory file and of its Dom0-only active-grant file.
//!
//! # Guest memory (one shared-memory file per domain)
//!
//! ```text
//! gfn 0 .. nr_ram_pages              RAM (memory MiB * 256 pages)
//! special = nr_ram_pages:
//!   special + 0                      shared_info page (xen-abi `shared_info`)
//!   special + 1                      start_info page (xen-abi `start_info`)
//!   special + 2                      xenstore ring page (`xenstore_domain_interface`)
//!   special + 3                      console ring page (`xencons_interface`)
//!   special + 4                      Dom0 only: page-allocation bitmap of `Gntalloc`
//!   special + 5 .. special + 8       reserved (zero)
//!   special + 8 .. + max_grant_frames            grant-table frames (v1 or v2 entries)
//!   then ceil(max v2 entries * 2 / 4096) frames  v2 status frames (`grant_status_t`)
//! ```
//!
//! This is the shape of Xen's HVM "magic pages" after RAM. Every page lives in
//! the domain's memory file, so a Dom0 process that maps the file (privileged,
//! as Dom0 is in Xen) reaches any page of the domain; a guest maps only its own.
//!
//! # Active-grant file (Dom0 only)
//!
//! Xen keeps, per grant reference, an "active entry" in hypervisor memory: the
//! pin counts of the current mappings. Here that table is a small shared file
//! created by the daemon with the domain and handed only to Dom0 processes, so
//! that several Dom0 mappers (backends, xenstored) pin the same reference with
//! atomics and no daemon round trip:
//!
//! ```text
//! bytes 0 .. 4096                    ActiveHeader (daemon-written: version, nr_frames...)
//! 4096 + 32 * ref                    active entry of `ref` (lock, pin, frame, mapper, sub-page)
//! ```

use xen_abi::grant_table::{grant_entry_v1, grant_entry_v2, grant_status_t};
use xen_abi::xen::XEN_LEGACY_MAX_VCPUS;

/// Xen's page size (`XEN_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// Special page: `shared_info`, relative to the first special gfn.
pub const SPECIAL_SHARED_INFO: u64 = 0;
/// Special page: `start_info`.
pub const SPECIAL_START_INFO: u64 = 1;
/// Special page: the xenstore ring.
pub const SPECIAL_XENSTORE: u64 = 2;
/// Special page: the console ring.
pub const SPECIAL_CONSOLE: u64 = 3;
/// Special page (Dom0 only): one bit per RAM page, set while a Dom0 process
/// uses the page for `Gntalloc` (allocation by atomic bit operations).
pub const SPECIAL_DOM0_ALLOC: u64 = 4;
/// First special page of the grant-table frames.
pub const SPECIAL_GRANT_FRAMES: u64 = 8;

/// Default (and maximum) grant-table frames of a domain: 64 frames, 32768 v1
/// entries (Xen's `gnttab_max_frames` default).
pub const DEFAULT_MAX_GRANT_FRAMES: u32 = 64;
/// Grant-table frames a domain has at creation (the toolstack seeds the
/// reserved entries in frame 0); `GNTTABOP_setup_table` grows it.
pub const INITIAL_GRANT_FRAMES: u32 = 1;
/// v1 grant entries per frame.
pub const GRANT_ENTRIES_PER_FRAME_V1: u32 =
    (PAGE_SIZE / core::mem::size_of::<grant_entry_v1>()) as u32;
/// v2 grant entries per frame.
pub const GRANT_ENTRIES_PER_FRAME_V2: u32 =
    (PAGE_SIZE / core::mem::size_of::<grant_entry_v2>()) as u32;
/// v2 status entries per status frame.
pub const STATUS_ENTRIES_PER_FRAME: u32 =
    (PAGE_SIZE / core::mem::size_of::<grant_status_t>()) as u32;

/// Most vCPUs a domain may have (the `vcpu_info`s of the shared-info page).
pub const MAX_VCPUS: u32 = XEN_LEGACY_MAX_VCPUS as u32;
/// Largest domain memory in MiB accepted by the daemon (64 GiB).
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

/// Byte size of the active-grant file header.
pub const ACTIVE_HEADER_SIZE: usize = PAGE_SIZE;
/// Byte size of one active entry.
pub const ACTIVE_ENTRY_SIZE: usize = 32;
/// `ActiveHeader::magic`.
pub const ACTIVE_MAGIC: u64 = u64::from_le_bytes(*b"XSHMACT1");

/// Byte offsets in the active-grant header (all fields naturally aligned and
/// accessed atomically).
pub mod active_header {
    /// `u64`: [`super::ACTIVE_MAGIC`].
    pub const MAGIC: usize = 0;
    /// `u32`: domid of the granting domain.
    pub const DOMID: usize = 8;
    /// `u32`: grant-table version (1 or 2), written by the daemon.
    pub const VERSION: usize = 12;
    /// `u32`: current number of grant frames, written by the daemon.
    pub const NR_FRAMES: usize = 16;
    /// `u32`: maximum number of grant frames.
    pub const MAX_FRAMES: usize = 20;
    /// `u64`: RAM pages of the domain.
    pub const NR_RAM_PAGES: usize = 24;
    /// `u32`: [`FLAG_DYING`](super::active_header::FLAG_DYING)...
    pub const FLAGS: usize = 32;
    /// `u32`: domain instance number (changes if a domid is ever reused).
    pub const INSTANCE: usize = 36;
    /// `FLAGS` bit: the domain is being destroyed; new maps fail.
    pub const FLAG_DYING: u32 = 1;
}

/// Byte offsets inside one active entry.
pub mod active_entry {
    /// `u32`: thread id of the Dom0 thread changing this entry, 0 if none.
    pub const LOCK: usize = 0;
    /// `u32`: read pins in bits 0..16, write pins in bits 16..32.
    pub const PIN: usize = 4;
    /// `u64`: frame pinned by the first mapper (valid while `PIN != 0`).
    pub const FRAME: usize = 8;
    /// `u32`: domid of the mapper holding the pins (valid while `PIN != 0`).
    pub const DOMID: usize = 16;
    /// `u32`: v2 sub-page grant: offset in bits 0..16, length in bits 16..32;
    /// 0 for a whole page (valid while `PIN != 0`).
    pub const SUB_PAGE: usize = 20;
}

/// Domain type, as in `xl.cfg`'s `type=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// A process guest run by the PV guest runtime.
    Pv,
    /// A KVM guest run by the shim's VMM.
    Pvhvm,
}

/// The geometry of one domain's memory file: where every special page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainLayout {
    /// RAM pages (gfn 0 .. nr_ram_pages).
    pub nr_ram_pages: u64,
    /// Maximum grant-table frames.
    pub max_grant_frames: u32,
}

/// Errors of [`DomainLayout::new`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The memory size is zero or above [`MAX_MEMORY_MIB`].
    #[error("memory size of {0} MiB is outside 1..={MAX_MEMORY_MIB} MiB")]
    BadMemorySize(u64),
    /// The grant-frame limit is zero or above [`DEFAULT_MAX_GRANT_FRAMES`].
    #[error("grant frame limit {0} is outside 1..={DEFAULT_MAX_GRANT_FRAMES}")]
    BadGrantFrames(u32),
}

impl DomainLayout {
    /// The layout of a domain with `memory_mib` MiB of RAM and up to
    /// `max_grant_frames` grant frames.
    pub fn new(memory_mib: u64, max_grant_frames: u32) -> Result<Self, LayoutError> {
        if memory_mib == 0 || memory_mib > MAX_MEMORY_MIB {
            return Err(LayoutError::BadMemorySize(memory_mib));
        }
        if max_grant_frames == 0 || max_grant_frames > DEFAULT_MAX_GRANT_FRAMES {
            return Err(LayoutError::BadGrantFrames(max_grant_frames));
        }
        Ok(Self {
            nr_ram_pages: memory_mib * (1 << 20) / PAGE_SIZE as u64,
            max_grant_frames,
        })
    }

    /// First special gfn (just after RAM).
    pub const fn special_base(&self) -> u64 {
        self.nr_ram_pages
    }
    /// Gfn of the shared-info page.
    pub const fn shared_info_gfn(&self) -> u64 {
        self.nr_ram_pages + SPECIAL_SHARED_INFO
    }
    /// Gfn of the start-info page.
    pub const fn start_info_gfn(&self) -> u64 {
        self.nr_ram_pages + SPECIAL_START_INFO
    }
    /// Gfn of the xenstore ring page.
    pub const fn xenstore_gfn(&self) -> u64 {
        self.nr_ram_pages + SPECIAL_XENSTORE
    }
    /// Gfn of the console ring page.
    pub const fn console_gfn(&self) -> u64 {
        self.nr_ram_pages + SPECIAL_CONSOLE
    }
    /// Gfn of the Dom0 page-allocation bitmap page.
    pub const fn dom0_alloc_gfn(&self) -> u64 {
        self.nr_ram_pages + SPECIAL_DOM0_ALLOC
    }
    /// Gfn of grant frame `i` (`None` when `i >= max_grant_frames`).
    pub const fn grant_frame_gfn(&self, i: u32) -> Option<u64> {
        if i < self.max_grant_frames {
            Some(self.nr_ram_pages + SPECIAL_GRANT_FRAMES + i as u64)
        } else {
            None
        }
    }
    /// Number of v2 status frames reserved (enough for the v2 maximum).
    pub const fn max_status_frames(&self) -> u32 {
        let entries = self.max_grant_frames * GRANT_ENTRIES_PER_FRAME_V2;
        entries.div_ceil(STATUS_ENTRIES_PER_FRAME)
    }
    /// Gfn of v2 status frame `i` (`None` when out of range).
    pub const fn status_frame_gfn(&self, i: u32) -> Option<u64> {
        if i < self.max_status_frames() {
            Some(self.nr_ram_pages + SPECIAL_GRANT_FRAMES + self.max_grant_frames as u64 + i as u64)
        } else {
            None
        }
    }
    /// Total pages of the memory file.
    pub const fn total_pages(&self) -> u64 {
        self.nr_ram_pages
            + SPECIAL_GRANT_FRAMES
            + self.max_grant_frames as u64
            + self.max_status_frames() as u64
    }
    /// Total bytes of the memory file.
    pub const fn total_bytes(&self) -> u64 {
        self.total_pages() * PAGE_SIZE as u64
    }
    /// Byte offset of a gfn in the memory file (`None` beyond the file).
    pub const fn gfn_offset(&self, gfn: u64) -> Option<u64> {
        if gfn < self.total_pages() {
            Some(gfn * PAGE_SIZE as u64)
        } else {
            None
        }
    }
    /// Most grant entries for a table `version` (1 or 2) at the frame limit.
    pub const fn max_grant_entries(&self, version: u32) -> u32 {
        entries_for_frames(self.max_grant_frames, version)
    }
    /// Whether a frame may be the target of a grant mapping or copy: RAM and
    /// the xenstore and console ring pages (which the toolstack grants through
    /// the reserved entries), never the shared-info, start-info or grant-table
    /// pages.
    pub const fn is_grantable_gfn(&self, gfn: u64) -> bool {
        gfn < self.nr_ram_pages || gfn == self.xenstore_gfn() || gfn == self.console_gfn()
    }
    /// Byte size of the active-grant file.
    pub const fn active_file_bytes(&self) -> u64 {
        ACTIVE_HEADER_SIZE as u64 + self.max_grant_entries(1) as u64 * ACTIVE_ENTRY_SIZE as u64
    }
}

/// Grant entries held by `frames` grant frames of table `version` (v1: 512
/// per frame, v2: 256 per frame; any other version: 0).
pub const fn entries_for_frames(frames: u32, version: u32) -> u32 {
    match version {
        1 => frames * GRANT_ENTRIES_PER_FRAME_V1,
        2 => frames * GRANT_ENTRIES_PER_FRAME_V2,
        _ => 0,
    }
}

/// Byte offset of grant entry `gref` from the start of the grant frames.
pub const fn grant_entry_offset(gref: u32, version: u32) -> u64 {
    match version {
        2 => gref as u64 * core::mem::size_of::<grant_entry_v2>() as u64,
        _ => gref as u64 * core::mem::size_of::<grant_entry_v1>() as u64,
    }
}

/// Byte offset of active entry `gref` in the active-grant file.
pub const fn active_entry_offset(gref: u32) -> u64 {
    ACTIVE_HEADER_SIZE as u64 + gref as u64 * ACTIVE_ENTRY_SIZE as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_layout_special_pages_follow_ram() {
        // Arrange
        let l = DomainLayout::new(16, DEFAULT_MAX_GRANT_FRAMES).expect("valid layout");

        // Act / Assert
        assert_eq!(l.nr_ram_pages, 4096);
        assert_eq!(l.shared_info_gfn(), 4096);
        assert_eq!(l.start_info_gfn(), 4097);
        assert_eq!(l.xenstore_gfn(), 4098);
        assert_eq!(l.console_gfn(), 4099);
        assert_eq!(l.grant_frame_gfn(0), Some(4104));
        assert_eq!(l.grant_frame_gfn(63), Some(4167));
        assert_eq!(l.grant_frame_gfn(64), None);
        assert_eq!(l.max_status_frames(), 8);
        assert_eq!(l.status_frame_gfn(0), Some(4168));
        assert_eq!(l.status_frame_gfn(8), None);
        assert_eq!(l.total_pages(), 4096 + 8 + 64 + 8);
    }

    #[test]
    fn test_layout_entry_counts_match_xen() {
        assert_eq!(GRANT_ENTRIES_PER_FRAME_V1, 512);
        assert_eq!(GRANT_ENTRIES_PER_FRAME_V2, 256);
        assert_eq!(entries_for_frames(64, 1), 32768);
        assert_eq!(entries_for_frames(64, 2), 16384);
        assert_eq!(entries_for_frames(64, 3), 0);
        assert_eq!(grant_entry_offset(3, 1), 24);
        assert_eq!(grant_entry_offset(3, 2), 48);
    }

    #[test]
    fn test_layout_bad_sizes_are_rejected() {
        assert_eq!(DomainLayout::new(0, 64), Err(LayoutError::BadMemorySize(0)));
        assert_eq!(
            DomainLayout::new(MAX_MEMORY_MIB + 1, 64),
            Err(LayoutError::BadMemorySize(MAX_MEMORY_MIB + 1))
        );
        assert_eq!(DomainLayout::new(1, 0), Err(LayoutError::BadGrantFrames(0)));
        assert_eq!(
            DomainLayout::new(1, 65),
            Err(LayoutError::BadGrantFrames(65))
        );
    }

    #[test]
    fn test_layout_grantable_gfns_exclude_grant_frames() {
        let l = DomainLayout::new(1, 4).expect("valid layout");
        assert!(l.is_grantable_gfn(0));
        assert!(l.is_grantable_gfn(255));
        assert!(!l.is_grantable_gfn(l.shared_info_gfn()));
        assert!(!l.is_grantable_gfn(l.start_info_gfn()));
        assert!(l.is_grantable_gfn(l.xenstore_gfn()));
        assert!(l.is_grantable_gfn(l.console_gfn()));
        assert!(!l.is_grantable_gfn(l.grant_frame_gfn(0).expect("frame 0")));
        assert!(!l.is_grantable_gfn(u64::MAX));
    }

    #[test]
    fn test_layout_active_file_covers_every_v1_entry() {
        let l = DomainLayout::new(1, 64).expect("valid layout");
        assert_eq!(l.active_file_bytes(), 4096 + 32768 * 32);
        assert_eq!(active_entry_offset(32767) + 32, l.active_file_bytes());
    }
}
