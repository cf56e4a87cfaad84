//! Grant entries with Xen's semantics: the part both sides run.
//!
//! The granting domain writes v1 (or v2) entries in its own grant frames
//! ([`grant_access`]: frame and domid, release barrier, then flags). A mapper
//! validates the entry and sets `GTF_reading` / `GTF_writing` by
//! compare-and-swap (Xen's `_set_status_v1/v2`), then gets access to exactly
//! that page; unmap clears the bits when the last pin goes. The granter
//! revokes only by compare-and-swap when neither bit is set ([`end_access`],
//! XSA-396) and learns when that fails.
//!
//! This module is the entry format as atomics ([`GrantTableView`], over a
//! domain's memory file: [`SharedGrantTable`]), the errors with their
//! `GNTST_*` codes, and the granter's side, which a guest (its own grants)
//! and Dom0 (`Gntalloc`, the daemon's xenstore and console grants) both use.
//! The mapper's side (validation and the status compare-and-swap, pins in
//! the active-grant file, mappings) is a Dom0 power and lives in
//! `xen-shim-dom0`.
//!
//! Everything here reads guest entries with atomic loads, never through a
//! reference to a guest-writable struct; garbage in a guest's grant table
//! makes the operation fail with Xen's `GNTST_*` code ([`GrantError::gntst`]).

use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};

use xen_abi::grant_table::*;
use xen_abi::xen::domid_t;

use crate::layout::DomainLayout;
use crate::mem::GuestMemory;

/// Attempts of the granter's revoke compare-and-swap.
pub const END_ACCESS_RETRIES: u32 = 64;

/// Grant-table errors. [`GrantError::gntst`] gives the `GNTST_*` code Xen
/// would report.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The reference is beyond the domain's current table.
    #[error("grant reference {gref} is beyond the table's {nr_entries} entries")]
    BadGntref {
        /// Reference.
        gref: grant_ref_t,
        /// Entries in the table.
        nr_entries: u32,
    },
    /// The granting domain does not exist or is dying.
    #[error("domain {0} does not exist or is dying")]
    BadDomain(domid_t),
    /// The entry is not a (whole-page, for maps) `GTF_permit_access` grant.
    #[error("grant entry {gref} has flags {flags:#06x}: not a grant this operation accepts")]
    BadEntry {
        /// Reference.
        gref: grant_ref_t,
        /// Flags found.
        flags: u16,
    },
    /// The entry grants access to another domain.
    #[error("grant entry {gref} is for domain {granted_to}, not for domain {mapper}")]
    WrongDomain {
        /// Reference.
        gref: grant_ref_t,
        /// Domain in the entry.
        granted_to: domid_t,
        /// Domain asking.
        mapper: domid_t,
    },
    /// A write mapping of a read-only grant.
    #[error("grant entry {gref} is read-only and a write access was asked")]
    ReadOnlyGrant {
        /// Reference.
        gref: grant_ref_t,
    },
    /// The granter kept changing the entry during the compare-and-swap.
    #[error("grant entry {gref} kept changing; giving up")]
    Unstable {
        /// Reference.
        gref: grant_ref_t,
    },
    /// The entry names a frame the domain may not grant.
    #[error("grant entry {gref} names frame {frame:#x}, which the domain may not grant")]
    BadFrame {
        /// Reference.
        gref: grant_ref_t,
        /// Frame.
        frame: u64,
    },
    /// The reference is already mapped by another domain, or its pin count
    /// would overflow, or it is a sub-page grant pinned for a copy.
    #[error("grant entry {gref} cannot be pinned again")]
    PinConflict {
        /// Reference.
        gref: grant_ref_t,
    },
    /// Another Dom0 thread holds the reference's active entry for too long.
    #[error("grant entry {gref} is busy; try again")]
    Busy {
        /// Reference.
        gref: grant_ref_t,
    },
    /// The granter's revoke failed: a mapper still has the grant mapped.
    #[error("grant entry {gref} is still in use by its mapper")]
    InUse {
        /// Reference.
        gref: grant_ref_t,
    },
    /// A copy's offset plus length leaves the page or the sub-page grant.
    #[error("copy of {len} bytes at offset {offset} leaves the granted area")]
    BadCopyArg {
        /// Offset.
        offset: u16,
        /// Length.
        len: u16,
    },
    /// A copy by frame number (not by reference) of a foreign domain's page.
    #[error("copy by frame number is allowed only for the caller's own memory")]
    PermissionDenied,
    /// Unmap of something not mapped (an internal pin-count mismatch).
    #[error("grant entry {gref} is not mapped")]
    BadHandle {
        /// Reference.
        gref: grant_ref_t,
    },
    /// The table is full (no free grant reference) or the frame limit is hit.
    #[error("no free grant reference")]
    NoSpace,
    /// The operation or entry kind is not supported by this shim.
    #[error("unsupported grant operation: {0}")]
    Unsupported(&'static str),
    /// An invalid argument (version, frame count...).
    #[error("invalid grant-table argument: {0}")]
    Invalid(&'static str),
    /// A `GNTST_*` status reported by the daemon for an operation it did.
    #[error("grant operation failed with {}", gntst_name(*.0))]
    Status(i16),
    /// The control plane failed.
    #[error("control operation failed")]
    Control(#[from] crate::protocol::ControlError),
    /// Mapping memory failed.
    #[error("mapping failed")]
    Io(#[from] std::io::Error),
}

impl GrantError {
    /// The `GNTST_*` code Xen reports for this failure.
    pub fn gntst(&self) -> i16 {
        match self {
            GrantError::BadGntref { .. } => GNTST_bad_gntref,
            GrantError::BadDomain(_) => GNTST_bad_domain,
            GrantError::BadEntry { .. }
            | GrantError::WrongDomain { .. }
            | GrantError::ReadOnlyGrant { .. }
            | GrantError::Unstable { .. }
            | GrantError::PinConflict { .. }
            | GrantError::InUse { .. }
            | GrantError::Unsupported(_)
            | GrantError::Invalid(_)
            | GrantError::Control(_)
            | GrantError::Io(_) => GNTST_general_error,
            GrantError::BadFrame { .. } => GNTST_bad_page,
            GrantError::Busy { .. } => GNTST_eagain,
            GrantError::BadCopyArg { .. } => GNTST_bad_copy_arg,
            GrantError::PermissionDenied => GNTST_permission_denied,
            GrantError::BadHandle { .. } => GNTST_bad_handle,
            GrantError::NoSpace => GNTST_no_space,
            GrantError::Status(s) => *s,
        }
    }

    /// The error for a `GNTST_*` status from the daemon (`None` for okay).
    pub fn from_gntst(status: i16) -> Option<Self> {
        (status != GNTST_okay).then_some(GrantError::Status(status))
    }
}

/// Flag bits of a grant entry's first 32-bit word: flags in the low half,
/// domid in the high half (x86 little-endian, Xen's `union grant_combo`).
#[inline]
pub const fn combo(flags: u16, domid: domid_t) -> u32 {
    flags as u32 | ((domid as u32) << 16)
}

/// The flags half of an entry's first word.
#[inline]
pub const fn combo_flags(raw: u32) -> u16 {
    raw as u16
}

/// The domid half of an entry's first word.
#[inline]
pub const fn combo_domid(raw: u32) -> domid_t {
    (raw >> 16) as u16
}

/// Access to one domain's grant entries (v1 or v2) and v2 status words, as
/// atomics. Implemented over guest memory ([`SharedGrantTable`]) and over
/// plain vectors in tests.
pub trait GrantTableView {
    /// Table version (1 or 2).
    fn version(&self) -> u32;
    /// Entries in the current table.
    fn nr_entries(&self) -> u32;
    /// The `{flags, domid}` word of entry `gref` (`gref < nr_entries`).
    fn header(&self, gref: grant_ref_t) -> &AtomicU32;
    /// v1: the `frame` word; v2: the low half of `full_page.frame`.
    fn frame_lo(&self, gref: grant_ref_t) -> &AtomicU32;
    /// v2 only: the whole second 8-byte word (`full_page.frame`, or
    /// `sub_page.page_off|length` in its first half for sub-page entries).
    fn word1(&self, gref: grant_ref_t) -> Option<&AtomicU64>;
    /// v2 only: the 8 bytes holding `sub_page.page_off` and `length`
    /// (bytes 4..8 of the entry) as a 32-bit word.
    fn sub_page_word(&self, gref: grant_ref_t) -> Option<&AtomicU32>;
    /// v2 only: the status word of entry `gref`.
    fn status(&self, gref: grant_ref_t) -> Option<&AtomicU16>;
}

/// Granter side: lets `domid` access `frame` through entry `gref` (v1: frame
/// and domid, release barrier, then flags: `gnttab_grant_foreign_access_ref`).
pub fn grant_access(
    t: &impl GrantTableView,
    gref: grant_ref_t,
    domid: domid_t,
    frame: u64,
    readonly: bool,
) -> Result<(), GrantError> {
    if gref >= t.nr_entries() {
        return Err(GrantError::BadGntref {
            gref,
            nr_entries: t.nr_entries(),
        });
    }
    let flags = GTF_permit_access | if readonly { GTF_readonly } else { 0 };
    if t.version() == 2 {
        let w = t
            .word1(gref)
            .ok_or(GrantError::Invalid("v2 entry without frame word"))?;
        w.store(frame, Ordering::Relaxed);
    } else {
        let f = u32::try_from(frame).map_err(|_| GrantError::Invalid("v1 frame above 2^32"))?;
        t.frame_lo(gref).store(f, Ordering::Relaxed);
    }
    // The mapper must see the frame before it sees the flags (Xen's wmb()).
    t.header(gref).store(combo(flags, domid), Ordering::Release);
    Ok(())
}

/// Granter side: revokes entry `gref` only if no mapper holds it (XSA-396):
/// v1 compare-and-swap of the flags to 0 unless `GTF_reading|GTF_writing`;
/// v2 clear the flags, full barrier, then check the status word. Returns
/// [`GrantError::InUse`] when a mapper still holds it (v2: the entry is
/// already invalid for new mappers; retry later).
pub fn end_access(t: &impl GrantTableView, gref: grant_ref_t) -> Result<(), GrantError> {
    if gref >= t.nr_entries() {
        return Err(GrantError::BadGntref {
            gref,
            nr_entries: t.nr_entries(),
        });
    }
    let hdr = t.header(gref);
    if t.version() == 2 {
        let raw = hdr.load(Ordering::Acquire);
        hdr.store(combo(0, combo_domid(raw)), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let st = t
            .status(gref)
            .map(|s| s.load(Ordering::Acquire))
            .unwrap_or(0);
        if st & (GTF_reading | GTF_writing) != 0 {
            return Err(GrantError::InUse { gref });
        }
        return Ok(());
    }
    let mut cur = hdr.load(Ordering::Acquire);
    for _ in 0..END_ACCESS_RETRIES {
        if combo_flags(cur) & (GTF_reading | GTF_writing) != 0 {
            return Err(GrantError::InUse { gref });
        }
        match hdr.compare_exchange(
            cur,
            combo(0, combo_domid(cur)),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(()),
            Err(prev) => cur = prev,
        }
    }
    Err(GrantError::Unstable { gref })
}

/// Reads entry `gref`'s flags and domid (for diagnostics and tests).
pub fn entry_flags(t: &impl GrantTableView, gref: grant_ref_t) -> Option<(u16, domid_t)> {
    if gref >= t.nr_entries() {
        return None;
    }
    let raw = t.header(gref).load(Ordering::Acquire);
    Some((combo_flags(raw), combo_domid(raw)))
}

/// A domain's grant table in its memory file.
#[derive(Clone, Copy, Debug)]
pub struct SharedGrantTable<'a> {
    mem: &'a GuestMemory,
    frames: *mut u8,
    status: *mut u8,
    version: u32,
    nr_entries: u32,
}

impl<'a> SharedGrantTable<'a> {
    /// The table of `mem` with `version` and `nr_frames` current frames
    /// (clamped to the layout's maximum; version 1 or 2, else `Invalid`).
    pub fn new(mem: &'a GuestMemory, version: u32, nr_frames: u32) -> Result<Self, GrantError> {
        let layout: &DomainLayout = mem.layout();
        if version != 1 && version != 2 {
            return Err(GrantError::Invalid("grant table version"));
        }
        let frames_gfn = layout
            .grant_frame_gfn(0)
            .ok_or(GrantError::Invalid("no grant frames"))?;
        let status_gfn = layout
            .status_frame_gfn(0)
            .ok_or(GrantError::Invalid("no status frames"))?;
        let frames = mem
            .page_ptr(frames_gfn)
            .map_err(|_| GrantError::Invalid("grant frames"))?;
        let status = mem
            .page_ptr(status_gfn)
            .map_err(|_| GrantError::Invalid("status frames"))?;
        let nr_frames = nr_frames.min(layout.max_grant_frames);
        Ok(Self {
            mem,
            frames,
            status,
            version,
            nr_entries: crate::layout::entries_for_frames(nr_frames, version),
        })
    }

    /// The memory the table lives in.
    pub fn memory(&self) -> &'a GuestMemory {
        self.mem
    }

    fn entry_ptr(&self, gref: grant_ref_t, byte: usize) -> *mut u8 {
        let off = crate::layout::grant_entry_offset(
            gref.min(self.nr_entries.saturating_sub(1)),
            self.version,
        );
        // SAFETY: `gref` is clamped below nr_entries, whose entries lie inside
        // the grant frames (nr_frames <= max_grant_frames), inside the mapping;
        // `byte` is below the entry size (8 or 16) at every call site.
        unsafe { self.frames.add(off as usize + byte) }
    }
}

impl GrantTableView for SharedGrantTable<'_> {
    fn version(&self) -> u32 {
        self.version
    }
    fn nr_entries(&self) -> u32 {
        self.nr_entries
    }
    fn header(&self, gref: grant_ref_t) -> &AtomicU32 {
        // SAFETY: an aligned in-bounds word of the mapped grant frames (entry
        // sizes are multiples of 8 and frames are page-aligned), valid while
        // `self.mem` lives; guest memory is only accessed atomically/volatilely.
        unsafe { AtomicU32::from_ptr(self.entry_ptr(gref, 0).cast()) }
    }
    fn frame_lo(&self, gref: grant_ref_t) -> &AtomicU32 {
        let byte = if self.version == 2 { 8 } else { 4 };
        // SAFETY: as in `header`: aligned, in bounds, valid while mapped.
        unsafe { AtomicU32::from_ptr(self.entry_ptr(gref, byte).cast()) }
    }
    fn word1(&self, gref: grant_ref_t) -> Option<&AtomicU64> {
        if self.version != 2 {
            return None;
        }
        // SAFETY: as in `header`; v2 entries are 16 bytes, 8-aligned.
        Some(unsafe { AtomicU64::from_ptr(self.entry_ptr(gref, 8).cast()) })
    }
    fn sub_page_word(&self, gref: grant_ref_t) -> Option<&AtomicU32> {
        if self.version != 2 {
            return None;
        }
        // SAFETY: as in `header`; bytes 4..8 of a 16-byte v2 entry.
        Some(unsafe { AtomicU32::from_ptr(self.entry_ptr(gref, 4).cast()) })
    }
    fn status(&self, gref: grant_ref_t) -> Option<&AtomicU16> {
        if self.version != 2 {
            return None;
        }
        let g = gref.min(self.nr_entries.saturating_sub(1)) as usize;
        // SAFETY: the status frames hold max v2 entries * 2 bytes (layout's
        // max_status_frames), `g` is below the v2 entry count, so the u16 is
        // aligned and in bounds, valid while mapped.
        Some(unsafe { AtomicU16::from_ptr(self.status.add(g * 2).cast()) })
    }
}
