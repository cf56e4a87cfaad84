//! The mapper's side of Xen's grant tables: a Dom0 power.
//!
//! A mapper validates a granter's entry and sets `GTF_reading` /
//! `GTF_writing` by compare-and-swap ([`set_status`], Xen's
//! `_set_status_v1/v2`, at most five attempts against a guest that keeps
//! changing the entry), then gets access to exactly that page; unmap clears
//! the bits when the last pin goes ([`clear_status`]). The granter's side
//! (`grant_access`, the XSA-396-safe `end_access`) and the entry format are
//! in [`xen_shim_proto::grant`], which a guest uses too.
//!
//! Pins are counted in the Dom0-only active-grant file ([`active`]) so every
//! Dom0 mapper process shares them, like Xen's active entries; each mapper
//! process also keeps a [`ledger`] of its own pins, so that the daemon can
//! release a dead mapper's. [`ForeignDomain`] puts it together for one
//! granting domain; [`GrantMapping`] is one mapping.
//!
//! Everything here reads guest entries with atomic loads, never through a
//! reference to a guest-writable struct; garbage in a guest's grant table
//! makes the operation fail with Xen's `GNTST_*` code.

pub mod active;
mod foreign;
pub mod ledger;
mod window;

use std::sync::atomic::{fence, Ordering};

pub use foreign::{grant_copy_one, CopySide, ForeignDomain, GrantMapping};
use xen_abi::grant_table::*;
use xen_abi::xen::domid_t;
use xen_shim_proto::grant::{combo, combo_domid, combo_flags, GrantError, GrantTableView};
use xen_shim_proto::layout::PAGE_SIZE;

/// Attempts of the flags compare-and-swap before declaring the entry unstable
/// (Xen's `retries++ == 4`).
pub const SET_STATUS_RETRIES: u32 = 5;

/// What a successful pin found in the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantTarget {
    /// The granted frame.
    pub frame: u64,
    /// v2 sub-page grants: `(offset, length)`; `None` for a whole page.
    pub sub_page: Option<(u16, u16)>,
}

/// Validates entry `gref` and sets `GTF_reading` (and `GTF_writing` unless
/// `readonly`): Xen's `_set_status_v1` / `_set_status_v2`.
///
/// `pinned`: the active entry already has pins (the type and domid were
/// checked by the first pinner and are not re-checked, as in Xen).
/// `mapflag`: a map (sub-page grants refused) rather than a copy.
///
/// `gref` must be below `t.nr_entries()` (the caller checks, reporting
/// `GNTST_bad_gntref`).
pub fn set_status(
    t: &impl GrantTableView,
    gref: grant_ref_t,
    mapper: domid_t,
    readonly: bool,
    pinned: bool,
    mapflag: bool,
) -> Result<(), GrantError> {
    let mut mask = GTF_type_mask;
    if mapflag {
        mask |= GTF_sub_page;
    }
    let hdr = t.header(gref);
    if t.version() == 2 {
        return set_status_v2(t, gref, mapper, readonly, pinned, mask);
    }
    let mut cur = hdr.load(Ordering::Acquire);
    let mut retries = 0;
    loop {
        let flags = combo_flags(cur);
        if !pinned {
            check_type_and_domid(gref, flags, combo_domid(cur), mask, mapper, false)?;
        }
        let mut new_flags = flags | GTF_reading;
        if !readonly {
            new_flags |= GTF_writing;
            if flags & GTF_readonly != 0 {
                return Err(GrantError::ReadOnlyGrant { gref });
            }
        }
        let new = combo(new_flags, combo_domid(cur));
        match hdr.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(prev) => {
                retries += 1;
                if retries >= SET_STATUS_RETRIES {
                    return Err(GrantError::Unstable { gref });
                }
                cur = prev;
            }
        }
    }
}

fn check_type_and_domid(
    gref: grant_ref_t,
    flags: u16,
    domid: domid_t,
    mask: u16,
    mapper: domid_t,
    allow_transitive: bool,
) -> Result<(), GrantError> {
    let kind = flags & mask;
    if kind == GTF_transitive && allow_transitive {
        return Err(GrantError::Unsupported("transitive grants"));
    }
    if kind != GTF_permit_access {
        return Err(GrantError::BadEntry { gref, flags });
    }
    if domid != mapper {
        return Err(GrantError::WrongDomain {
            gref,
            granted_to: domid,
            mapper,
        });
    }
    Ok(())
}

fn set_status_v2(
    t: &impl GrantTableView,
    gref: grant_ref_t,
    mapper: domid_t,
    readonly: bool,
    pinned: bool,
    mask: u16,
) -> Result<(), GrantError> {
    let status = t
        .status(gref)
        .ok_or(GrantError::Invalid("v2 table without status frames"))?;
    let hdr = t.header(gref);
    let raw = hdr.load(Ordering::Acquire);
    let (flags, domid) = (combo_flags(raw), combo_domid(raw));
    if !pinned {
        check_type_and_domid(gref, flags, domid, mask, mapper, true)?;
    }
    let bits = if readonly {
        GTF_reading
    } else {
        if flags & GTF_readonly != 0 {
            return Err(GrantError::ReadOnlyGrant { gref });
        }
        GTF_reading | GTF_writing
    };
    status.fetch_or(bits, Ordering::SeqCst);
    // Make sure the guest sees the status update before re-checking that the
    // flags are still valid (Xen's smp_mb()).
    fence(Ordering::SeqCst);
    let raw = hdr.load(Ordering::Acquire);
    let (flags, domid) = (combo_flags(raw), combo_domid(raw));
    if !pinned {
        let still_ok = check_type_and_domid(gref, flags, domid, mask, mapper, true).is_ok()
            && (readonly || flags & GTF_readonly == 0);
        if !still_ok {
            status.fetch_and(!(GTF_reading | GTF_writing), Ordering::SeqCst);
            return Err(GrantError::Unstable { gref });
        }
    } else if flags & GTF_readonly != 0 && !readonly {
        status.fetch_and(!GTF_writing, Ordering::SeqCst);
        return Err(GrantError::Unstable { gref });
    }
    Ok(())
}

/// Clears `bits` (`GTF_reading`, `GTF_writing`) of entry `gref`: in the entry
/// flags (v1) or the status word (v2). An atomic AND, as Xen's
/// `gnttab_clear_flags`: it cannot be livelocked by the guest.
pub fn clear_status(t: &impl GrantTableView, gref: grant_ref_t, bits: u16) {
    if t.version() == 2 {
        if let Some(s) = t.status(gref) {
            s.fetch_and(!bits, Ordering::SeqCst);
        }
        return;
    }
    t.header(gref).fetch_and(!(bits as u32), Ordering::SeqCst);
}

/// Reads the frame (and v2 sub-page range) of entry `gref`, after its status
/// was set. A sub-page grant whose range leaves the page is refused.
pub fn read_target(t: &impl GrantTableView, gref: grant_ref_t) -> Result<GrantTarget, GrantError> {
    if t.version() == 2 {
        let flags = combo_flags(t.header(gref).load(Ordering::Acquire));
        let frame = t
            .word1(gref)
            .map(|w| w.load(Ordering::Acquire))
            .unwrap_or(u64::MAX);
        if flags & GTF_sub_page != 0 {
            let sp = t
                .sub_page_word(gref)
                .map(|w| w.load(Ordering::Acquire))
                .unwrap_or(0);
            let (off, len) = (sp as u16, (sp >> 16) as u16);
            if usize::from(off) + usize::from(len) > PAGE_SIZE {
                return Err(GrantError::BadCopyArg { offset: off, len });
            }
            return Ok(GrantTarget {
                frame,
                sub_page: Some((off, len)),
            });
        }
        return Ok(GrantTarget {
            frame,
            sub_page: None,
        });
    }
    Ok(GrantTarget {
        frame: u64::from(t.frame_lo(gref).load(Ordering::Acquire)),
        sub_page: None,
    })
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! A grant table in plain vectors, for unit tests of the pure logic and
    //! the fuzz targets (feature `fake`).
    use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};

    use super::*;

    /// v1 or v2 table of `n` entries.
    #[derive(Debug)]
    pub struct FakeTable {
        /// 1 or 2.
        pub version: u32,
        /// The entries' 8-byte words (one per v1 entry, two per v2 entry).
        pub words: Vec<AtomicU64>,
        /// The v2 status words (one per entry).
        pub status: Vec<AtomicU16>,
    }

    impl FakeTable {
        /// An all-zero (all invalid) table of `n` entries.
        #[must_use]
        pub fn new(version: u32, n: usize) -> Self {
            let per = if version == 2 { 2 } else { 1 };
            Self {
                version,
                words: (0..n * per).map(|_| AtomicU64::new(0)).collect(),
                status: (0..n).map(|_| AtomicU16::new(0)).collect(),
            }
        }
        fn base(&self, gref: u32) -> *const u8 {
            let per = if self.version == 2 { 2 } else { 1 };
            self.words[gref as usize * per].as_ptr().cast_const().cast()
        }
        /// Writes raw bytes into entry `gref` (hostile contents).
        pub fn poke(&self, gref: u32, word: usize, v: u64) {
            let per = if self.version == 2 { 2 } else { 1 };
            self.words[gref as usize * per + word].store(v, Ordering::SeqCst);
        }
    }

    impl GrantTableView for FakeTable {
        fn version(&self) -> u32 {
            self.version
        }
        fn nr_entries(&self) -> u32 {
            self.status.len() as u32
        }
        fn header(&self, gref: u32) -> &AtomicU32 {
            // SAFETY: the first half of an aligned AtomicU64 we own; only
            // accessed atomically.
            unsafe { AtomicU32::from_ptr(self.base(gref).cast_mut().cast()) }
        }
        fn frame_lo(&self, gref: u32) -> &AtomicU32 {
            let byte = if self.version == 2 { 8 } else { 4 };
            // SAFETY: an aligned u32 inside the entry's words, which we own.
            unsafe { AtomicU32::from_ptr(self.base(gref).add(byte).cast_mut().cast()) }
        }
        fn word1(&self, gref: u32) -> Option<&AtomicU64> {
            (self.version == 2).then(|| &self.words[gref as usize * 2 + 1])
        }
        fn sub_page_word(&self, gref: u32) -> Option<&AtomicU32> {
            // SAFETY: bytes 4..8 of the entry's first word, which we own.
            (self.version == 2)
                .then(|| unsafe { AtomicU32::from_ptr(self.base(gref).add(4).cast_mut().cast()) })
        }
        fn status(&self, gref: u32) -> Option<&AtomicU16> {
            (self.version == 2).then(|| &self.status[gref as usize])
        }
    }
}

#[cfg(test)]
mod tests {
    //! The mapper's compare-and-swap against the granter's side
    //! (`xen_shim_proto::grant`), on a table in plain vectors.
    use xen_shim_proto::grant::{end_access, entry_flags, grant_access};

    use super::fake::FakeTable;
    use super::*;

    #[test]
    fn test_set_status_valid_rw_grant_sets_reading_and_writing() {
        // Arrange
        let t = FakeTable::new(1, 8);
        grant_access(&t, 3, 0, 42, false).expect("grant");

        // Act
        set_status(&t, 3, 0, false, false, true).expect("map");

        // Assert
        let (flags, domid) = entry_flags(&t, 3).expect("entry");
        assert_eq!(flags, GTF_permit_access | GTF_reading | GTF_writing);
        assert_eq!(domid, 0);
        assert_eq!(read_target(&t, 3).expect("target").frame, 42);
    }

    #[test]
    fn test_set_status_write_of_readonly_grant_is_general_error() {
        let t = FakeTable::new(1, 8);
        grant_access(&t, 1, 0, 5, true).expect("grant");

        let e = set_status(&t, 1, 0, false, false, true).expect_err("refused");

        assert!(matches!(e, GrantError::ReadOnlyGrant { gref: 1 }));
        assert_eq!(e.gntst(), GNTST_general_error);
        // The flags are untouched.
        assert_eq!(
            entry_flags(&t, 1),
            Some((GTF_permit_access | GTF_readonly, 0))
        );
        // A read-only map of it works.
        set_status(&t, 1, 0, true, false, true).expect("ro map");
    }

    #[test]
    fn test_set_status_wrong_domid_is_refused() {
        let t = FakeTable::new(1, 8);
        grant_access(&t, 2, 7, 5, false).expect("grant");

        let e = set_status(&t, 2, 0, true, false, true).expect_err("refused");

        assert!(matches!(
            e,
            GrantError::WrongDomain {
                granted_to: 7,
                mapper: 0,
                ..
            }
        ));
        assert_eq!(e.gntst(), GNTST_general_error);
    }

    #[test]
    fn test_set_status_invalid_or_transfer_type_is_refused() {
        let t = FakeTable::new(1, 8);
        for flags in [
            GTF_invalid,
            GTF_accept_transfer,
            GTF_transitive,
            GTF_permit_access | GTF_sub_page,
        ] {
            t.poke(0, 0, u64::from(flags));
            let e = set_status(&t, 0, 0, true, false, true).expect_err("refused");
            assert!(matches!(e, GrantError::BadEntry { .. }), "flags {flags:#x}");
        }
    }

    #[test]
    fn test_set_status_already_pinned_skips_type_check() {
        // Xen does not re-validate the type and domid of a pinned entry.
        let t = FakeTable::new(1, 8);
        t.poke(0, 0, u64::from(GTF_permit_access | GTF_reading) | (9 << 16));
        set_status(&t, 0, 0, true, true, true).expect("pinned entries are not re-checked");
    }

    #[test]
    fn test_end_access_while_mapped_fails_then_succeeds_after_clear() {
        // Arrange
        let t = FakeTable::new(1, 8);
        grant_access(&t, 4, 0, 1, false).expect("grant");
        set_status(&t, 4, 0, false, false, true).expect("map");

        // Act / Assert: revoke refused while mapped (XSA-396)
        assert!(matches!(
            end_access(&t, 4),
            Err(GrantError::InUse { gref: 4 })
        ));
        clear_status(&t, 4, GTF_writing);
        assert!(matches!(end_access(&t, 4), Err(GrantError::InUse { .. })));
        clear_status(&t, 4, GTF_reading);
        end_access(&t, 4).expect("revoked");
        assert_eq!(entry_flags(&t, 4).map(|f| f.0), Some(0));
        // A map after revoke fails.
        assert!(set_status(&t, 4, 0, true, false, true).is_err());
    }

    #[test]
    fn test_set_status_v2_uses_status_word() {
        let t = FakeTable::new(2, 8);
        grant_access(&t, 5, 0, 0x0001_2345_6789, false).expect("grant");

        set_status(&t, 5, 0, false, false, true).expect("map");

        assert_eq!(
            t.status[5].load(Ordering::SeqCst),
            GTF_reading | GTF_writing
        );
        assert_eq!(entry_flags(&t, 5), Some((GTF_permit_access, 0)));
        assert_eq!(read_target(&t, 5).expect("target").frame, 0x0001_2345_6789);
        assert!(matches!(end_access(&t, 5), Err(GrantError::InUse { .. })));
        clear_status(&t, 5, GTF_reading | GTF_writing);
        end_access(&t, 5).expect("revoked");
    }

    /// A read-only v2 grant mapped writable is refused by the first check,
    /// before the status word is touched: `GTF_writing` is never visible to
    /// the granter, pinned or not (issue 18 item 5e; a later re-check would
    /// refuse it too, but as `Unstable` and after setting the bit).
    #[test]
    fn test_v2_readonly_grant_mapped_writable_refused_before_status_changes() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        let t = Arc::new(FakeTable::new(2, 8));
        grant_access(&*t, 2, 0, 9, true).expect("grant");

        // Not pinned: refused as read-only, status word untouched.
        let e = set_status(&*t, 2, 0, false, false, true).expect_err("refused");
        assert!(matches!(e, GrantError::ReadOnlyGrant { gref: 2 }), "{e:?}");
        assert_eq!(e.gntst(), GNTST_general_error);
        assert_eq!(t.status[2].load(Ordering::SeqCst), 0);
        assert_eq!(
            entry_flags(&*t, 2),
            Some((GTF_permit_access | GTF_readonly, 0))
        );

        // Pinned read-only by someone else: a writable pin is refused the
        // same way and leaves the reader's bit alone.
        set_status(&*t, 2, 0, true, false, true).expect("ro map");
        assert_eq!(t.status[2].load(Ordering::SeqCst), GTF_reading);
        let e = set_status(&*t, 2, 0, false, true, true).expect_err("refused");
        assert!(matches!(e, GrantError::ReadOnlyGrant { gref: 2 }), "{e:?}");
        assert_eq!(t.status[2].load(Ordering::SeqCst), GTF_reading);
        clear_status(&*t, 2, GTF_reading);

        // The granter watching its status word never sees GTF_writing.
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (t, stop) = (Arc::clone(&t), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if t.status[2].load(Ordering::SeqCst) & GTF_writing != 0 {
                        seen += 1;
                    }
                }
                seen
            })
        };
        for i in 0..200_000 {
            let e = set_status(&*t, 2, 0, false, i % 2 == 0, true).expect_err("refused");
            assert!(matches!(e, GrantError::ReadOnlyGrant { .. }), "{e:?}");
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(watcher.join().expect("watcher"), 0, "GTF_writing was seen");
    }

    #[test]
    fn test_v2_sub_page_is_refused_for_map_allowed_for_copy() {
        let t = FakeTable::new(2, 8);
        t.poke(
            1,
            0,
            u64::from(GTF_permit_access | GTF_sub_page) | (100u64 << 32) | (200u64 << 48),
        );
        t.poke(1, 1, 77);

        assert!(set_status(&t, 1, 0, true, false, true).is_err());
        set_status(&t, 1, 0, true, false, false).expect("copy pin");
        assert_eq!(
            read_target(&t, 1).expect("target"),
            GrantTarget {
                frame: 77,
                sub_page: Some((100, 200))
            }
        );
    }

    #[test]
    fn test_v2_sub_page_beyond_page_is_refused() {
        let t = FakeTable::new(2, 2);
        t.poke(
            0,
            0,
            u64::from(GTF_permit_access | GTF_sub_page) | (4000u64 << 32) | (200u64 << 48),
        );
        set_status(&t, 0, 0, true, false, false).expect("pin");
        assert!(matches!(
            read_target(&t, 0),
            Err(GrantError::BadCopyArg { .. })
        ));
    }

    #[test]
    fn test_grant_access_out_of_range_ref_is_bad_gntref() {
        let t = FakeTable::new(1, 4);
        let e = grant_access(&t, 4, 0, 1, false).expect_err("out of range");
        assert_eq!(e.gntst(), GNTST_bad_gntref);
    }

    #[test]
    fn test_set_status_random_entries_never_panic() {
        // Hostile contents: every combination of flag bits and domids.
        let t = FakeTable::new(1, 1);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t.poke(0, 0, x);
            let r = set_status(&t, 0, (x >> 40) as u16 & 3, x & 1 == 0, false, true);
            if r.is_ok() {
                let (flags, _) = entry_flags(&t, 0).expect("entry");
                assert_eq!(flags & GTF_type_mask, GTF_permit_access);
                assert_ne!(flags & GTF_reading, 0);
            }
        }
    }
}
