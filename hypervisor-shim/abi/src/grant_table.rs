//! Mirrors `xen/grant_table.h`: grant entries (v1 and v2), `GTF_*` flags,
//! `GNTTABOP_*` operations with their argument structs, `GNTMAP_*` flags and
//! `GNTST_*` status codes.
//!
//! The v2 definitions (`grant_entry_header`, `grant_entry_v2`,
//! `GNTTABOP_set_version`...) are only exposed by the header for
//! `__XEN_INTERFACE_VERSION__ >= 0x0003020a`.
#![allow(non_camel_case_types, non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::union::xen_union;
use crate::xen::{domid_t, xen_guest_handle, xen_pfn_t};

/// Index of an entry in a grant table (`grant_ref_t`).
pub type grant_ref_t = u32;
/// Handle of a grant mapping, returned by `GNTTABOP_map_grant_ref`.
pub type grant_handle_t = u32;
/// Entry of the v2 status table (`grant_status_t`).
pub type grant_status_t = u16;

// ---------------------------------------------------------------------------
// Grant entries.

/// Version 1 grant entry (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct grant_entry_v1 {
    /// `GTF_*` type and flags. Written by the guest and Xen.
    pub flags: u16,
    /// The domain being granted foreign privileges.
    pub domid: domid_t,
    /// GFN that `domid` may access (or transfer into).
    pub frame: u32,
}

/// Number of grant entries reserved for the toolstack.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Reserved grant entry of the console ring page.
pub const GNTTAB_RESERVED_CONSOLE: grant_ref_t = 0;
/// Reserved grant entry of the xenstore ring page.
pub const GNTTAB_RESERVED_XENSTORE: grant_ref_t = 1;

/// Type: the entry grants nothing.
pub const GTF_invalid: u16 = 0;
/// Type: allow `domid` to map/access `frame`.
pub const GTF_permit_access: u16 = 1;
/// Type: allow `domid` to transfer a frame into `frame`.
pub const GTF_accept_transfer: u16 = 2;
/// Type: transitive grant (v2 only).
pub const GTF_transitive: u16 = 3;
/// Mask of the entry type.
pub const GTF_type_mask: u16 = 3;
/// Bit number of `GTF_readonly`.
pub const _GTF_readonly: u16 = 2;
/// Restrict `domid` to read-only mappings.
pub const GTF_readonly: u16 = 1 << _GTF_readonly;
/// Bit number of `GTF_reading`.
pub const _GTF_reading: u16 = 3;
/// Set by Xen while `domid` has the frame mapped for reading.
pub const GTF_reading: u16 = 1 << _GTF_reading;
/// Bit number of `GTF_writing`.
pub const _GTF_writing: u16 = 4;
/// Set by Xen while `domid` has the frame mapped for writing.
pub const GTF_writing: u16 = 1 << _GTF_writing;
/// Bit number of `GTF_PWT`.
pub const _GTF_PWT: u16 = 5;
/// Cache attribute: page write-through.
pub const GTF_PWT: u16 = 1 << _GTF_PWT;
/// Bit number of `GTF_PCD`.
pub const _GTF_PCD: u16 = 6;
/// Cache attribute: page cache disable.
pub const GTF_PCD: u16 = 1 << _GTF_PCD;
/// Bit number of `GTF_PAT`.
pub const _GTF_PAT: u16 = 7;
/// Cache attribute: PAT.
pub const GTF_PAT: u16 = 1 << _GTF_PAT;
/// Bit number of `GTF_sub_page`.
pub const _GTF_sub_page: u16 = 8;
/// v2: the grant covers `[page_off, page_off + length)` only.
pub const GTF_sub_page: u16 = 1 << _GTF_sub_page;
/// Bit number of `GTF_transfer_committed`.
pub const _GTF_transfer_committed: u16 = 2;
/// Transfer: Xen has committed to transferring the frame.
pub const GTF_transfer_committed: u16 = 1 << _GTF_transfer_committed;
/// Bit number of `GTF_transfer_completed`.
pub const _GTF_transfer_completed: u16 = 3;
/// Transfer: the frame has been transferred.
pub const GTF_transfer_completed: u16 = 1 << _GTF_transfer_completed;

/// Common header of v2 grant entries.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct grant_entry_header {
    /// `GTF_*` type and flags.
    pub flags: u16,
    /// The domain being granted foreign privileges.
    pub domid: domid_t,
}

/// `grant_entry_v2.full_page`: whole-page access or transfer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct grant_entry_v2_full_page {
    /// Entry header.
    pub hdr: grant_entry_header,
    /// Padding.
    pub pad0: u32,
    /// Frame, as in `grant_entry_v1::frame`.
    pub frame: u64,
}

/// `grant_entry_v2.sub_page`: access to `[page_off, page_off + length)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct grant_entry_v2_sub_page {
    /// Entry header (with `GTF_sub_page`).
    pub hdr: grant_entry_header,
    /// First byte granted.
    pub page_off: u16,
    /// Number of bytes granted.
    pub length: u16,
    /// Frame.
    pub frame: u64,
}

/// `grant_entry_v2.transitive`: use grant `gref` of `trans_domid`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct grant_entry_v2_transitive {
    /// Entry header (type `GTF_transitive`).
    pub hdr: grant_entry_header,
    /// Domain owning the original grant.
    pub trans_domid: domid_t,
    /// Padding.
    pub pad0: u16,
    /// Grant reference in `trans_domid`.
    pub gref: grant_ref_t,
}

xen_union! {
    /// Version 2 grant entry (`union grant_entry_v2`, 16 bytes).
    pub union grant_entry_v2: [u64; 2] {
        /// Header common to all members.
        hdr: grant_entry_header, set_hdr, from_hdr;
        /// Full-page grant.
        full_page: grant_entry_v2_full_page, set_full_page, from_full_page;
        /// Sub-page grant.
        sub_page: grant_entry_v2_sub_page, set_sub_page, from_sub_page;
        /// Transitive grant.
        transitive: grant_entry_v2_transitive, set_transitive, from_transitive;
        /// Padding to a power of two.
        __spacer: [u32; 4], set___spacer, from___spacer;
    }
}

// ---------------------------------------------------------------------------
// Operations.

/// `GNTTABOP_map_grant_ref` (`gnttab_map_grant_ref`).
pub const GNTTABOP_map_grant_ref: u32 = 0;
/// `GNTTABOP_unmap_grant_ref` (`gnttab_unmap_grant_ref`).
pub const GNTTABOP_unmap_grant_ref: u32 = 1;
/// `GNTTABOP_setup_table` (`gnttab_setup_table`).
pub const GNTTABOP_setup_table: u32 = 2;
/// `GNTTABOP_dump_table` (`gnttab_dump_table`).
pub const GNTTABOP_dump_table: u32 = 3;
/// `GNTTABOP_transfer` (`gnttab_transfer`).
pub const GNTTABOP_transfer: u32 = 4;
/// `GNTTABOP_copy` (`gnttab_copy`).
pub const GNTTABOP_copy: u32 = 5;
/// `GNTTABOP_query_size` (`gnttab_query_size`).
pub const GNTTABOP_query_size: u32 = 6;
/// `GNTTABOP_unmap_and_replace` (`gnttab_unmap_and_replace`).
pub const GNTTABOP_unmap_and_replace: u32 = 7;
/// `GNTTABOP_set_version` (`gnttab_set_version`).
pub const GNTTABOP_set_version: u32 = 8;
/// `GNTTABOP_get_status_frames` (`gnttab_get_status_frames`).
pub const GNTTABOP_get_status_frames: u32 = 9;
/// `GNTTABOP_get_version` (`gnttab_get_version`).
pub const GNTTABOP_get_version: u32 = 10;
/// `GNTTABOP_swap_grant_ref` (`gnttab_swap_grant_ref`).
pub const GNTTABOP_swap_grant_ref: u32 = 11;
/// `GNTTABOP_cache_flush` (`gnttab_cache_flush`).
pub const GNTTABOP_cache_flush: u32 = 12;

/// Map a grant into the caller's address space.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_map_grant_ref {
    /// IN: host address (or PTE machine address with `GNTMAP_contains_pte`).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: grant reference.
    pub r#ref: grant_ref_t,
    /// IN: granting domain.
    pub dom: domid_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: mapping handle.
    pub handle: grant_handle_t,
    /// OUT: bus address for `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}

/// Unmap a grant mapping.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_unmap_grant_ref {
    /// IN: host address of the mapping.
    pub host_addr: u64,
    /// IN: bus address of the device mapping.
    pub dev_bus_addr: u64,
    /// IN: handle from `gnttab_map_grant_ref`.
    pub handle: grant_handle_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
}

/// Set up a domain's grant table frames.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_setup_table {
    /// IN: domain.
    pub dom: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// IN: number of frames.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad1: [u8; 6],
    /// OUT: guest handle to an array of `xen_pfn_t`.
    pub frame_list: xen_guest_handle,
}

/// Dump a grant table to Xen's console.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_dump_table {
    /// IN: domain.
    pub dom: domid_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
}

/// Transfer a frame to another domain.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_transfer {
    /// IN: frame to transfer.
    pub mfn: xen_pfn_t,
    /// IN: receiving domain.
    pub domid: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// IN: receiver's grant reference.
    pub r#ref: grant_ref_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad1: [u8; 6],
}

/// `GNTCOPY_*` bit: `source.u.ref` is a grant reference (else a GMFN).
pub const _GNTCOPY_source_gref: u16 = 0;
/// `source.u` holds a grant reference.
pub const GNTCOPY_source_gref: u16 = 1 << _GNTCOPY_source_gref;
/// `GNTCOPY_*` bit: `dest.u.ref` is a grant reference (else a GMFN).
pub const _GNTCOPY_dest_gref: u16 = 1;
/// `dest.u` holds a grant reference.
pub const GNTCOPY_dest_gref: u16 = 1 << _GNTCOPY_dest_gref;

xen_union! {
    /// `gnttab_copy_ptr.u`: a grant reference or a GMFN (8 bytes).
    pub union gnttab_copy_ptr_u: u64 {
        /// Grant reference (with `GNTCOPY_*_gref`).
        r#ref: grant_ref_t, set_ref, from_ref;
        /// Guest machine frame number.
        gmfn: xen_pfn_t, set_gmfn, from_gmfn;
    }
}

/// One side of a `gnttab_copy`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_copy_ptr {
    /// Grant reference or GMFN.
    pub u: gnttab_copy_ptr_u,
    /// Owning domain.
    pub domid: domid_t,
    /// Byte offset in the page.
    pub offset: u16,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
}

/// Copy bytes between (granted) frames.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_copy {
    /// IN: source.
    pub source: gnttab_copy_ptr,
    /// IN: destination.
    pub dest: gnttab_copy_ptr,
    /// IN: number of bytes.
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
}

/// Query the current and maximum size of a grant table.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_query_size {
    /// IN: domain.
    pub dom: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// OUT: current number of frames.
    pub nr_frames: u32,
    /// OUT: maximum number of frames.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad1: u16,
}

/// Unmap a grant and move another PTE's mapping into its place.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_unmap_and_replace {
    /// IN: host address of the grant mapping.
    pub host_addr: u64,
    /// IN: address whose mapping replaces it.
    pub new_addr: u64,
    /// IN: mapping handle.
    pub handle: grant_handle_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
}

/// Select the grant table version (1 or 2).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_set_version {
    /// IN/OUT: version.
    pub version: u32,
}

/// Get the frames of the v2 status table.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_get_status_frames {
    /// IN: number of frames.
    pub nr_frames: u32,
    /// IN: domain.
    pub dom: domid_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: guest handle to an array of `uint64_t` frames.
    pub frame_list: xen_guest_handle,
}

/// Get a domain's grant table version.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_get_version {
    /// IN: domain.
    pub dom: domid_t,
    /// Padding.
    pub pad: u16,
    /// OUT: version.
    pub version: u32,
}

/// Swap two grant entries.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_swap_grant_ref {
    /// IN: first entry.
    pub ref_a: grant_ref_t,
    /// IN: second entry.
    pub ref_b: grant_ref_t,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
}

xen_union! {
    /// `gnttab_cache_flush.a`: a bus address or a grant reference (8 bytes).
    pub union gnttab_cache_flush_a: u64 {
        /// Device bus address.
        dev_bus_addr: u64, set_dev_bus_addr, from_dev_bus_addr;
        /// Grant reference (with `GNTTAB_CACHE_SOURCE_GREF`).
        r#ref: grant_ref_t, set_ref, from_ref;
    }
}

/// `gnttab_cache_flush.op`: clean.
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
/// `gnttab_cache_flush.op`: invalidate.
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;
/// `gnttab_cache_flush.op`: `a` is a grant reference.
pub const GNTTAB_CACHE_SOURCE_GREF: u32 = 1 << 31;

/// Flush the cache for (part of) a grant.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct gnttab_cache_flush {
    /// Bus address or grant reference.
    pub a: gnttab_cache_flush_a,
    /// Offset from the start of the grant.
    pub offset: u16,
    /// Length within the grant.
    pub length: u16,
    /// `GNTTAB_CACHE_*`.
    pub op: u32,
}

// ---------------------------------------------------------------------------
// GNTMAP_* flags.

/// Bit number of `GNTMAP_device_map`.
pub const _GNTMAP_device_map: u32 = 0;
/// Map for access by I/O devices.
pub const GNTMAP_device_map: u32 = 1 << _GNTMAP_device_map;
/// Bit number of `GNTMAP_host_map`.
pub const _GNTMAP_host_map: u32 = 1;
/// Map for access by host CPUs.
pub const GNTMAP_host_map: u32 = 1 << _GNTMAP_host_map;
/// Bit number of `GNTMAP_readonly`.
pub const _GNTMAP_readonly: u32 = 2;
/// Map read-only.
pub const GNTMAP_readonly: u32 = 1 << _GNTMAP_readonly;
/// Bit number of `GNTMAP_application_map`.
pub const _GNTMAP_application_map: u32 = 3;
/// Host mapping usable by the current application too.
pub const GNTMAP_application_map: u32 = 1 << _GNTMAP_application_map;
/// Bit number of `GNTMAP_contains_pte`.
pub const _GNTMAP_contains_pte: u32 = 4;
/// `host_addr` is the machine address of the PTE to update.
pub const GNTMAP_contains_pte: u32 = 1 << _GNTMAP_contains_pte;
/// First bit available to guests.
pub const _GNTMAP_guest_avail0: u32 = 16;
/// Bits available to guests.
pub const GNTMAP_guest_avail_mask: u32 = !0u32 << _GNTMAP_guest_avail0;

// ---------------------------------------------------------------------------
// GNTST_* status codes (`enum grant_status`).

/// Normal return.
pub const GNTST_okay: i16 = 0;
/// General undefined error.
pub const GNTST_general_error: i16 = -1;
/// Unrecognised domain id.
pub const GNTST_bad_domain: i16 = -2;
/// Unrecognised or inappropriate grant reference.
pub const GNTST_bad_gntref: i16 = -3;
/// Unrecognised or inappropriate handle.
pub const GNTST_bad_handle: i16 = -4;
/// Inappropriate virtual address to map.
pub const GNTST_bad_virt_addr: i16 = -5;
/// Inappropriate device address to unmap.
pub const GNTST_bad_dev_addr: i16 = -6;
/// Out of space in the I/O MMU.
pub const GNTST_no_device_space: i16 = -7;
/// Not enough privilege for the operation.
pub const GNTST_permission_denied: i16 = -8;
/// Specified page was invalid for the operation.
pub const GNTST_bad_page: i16 = -9;
/// Copy arguments cross a page boundary.
pub const GNTST_bad_copy_arg: i16 = -10;
/// Transfer page address too large.
pub const GNTST_address_too_big: i16 = -11;
/// Operation not done; try again.
pub const GNTST_eagain: i16 = -12;
/// Out of space (handles etc.).
pub const GNTST_no_space: i16 = -13;

/// `GNTTABOP_error_msgs`: message for status `-i` at index `i`.
pub const GNTTABOP_error_msgs: [&str; 14] = [
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
];

/// Symbolic names of the `GNTST_*` codes, indexed by `-status`.
const GNTST_NAMES: [&str; 14] = [
    "GNTST_okay",
    "GNTST_general_error",
    "GNTST_bad_domain",
    "GNTST_bad_gntref",
    "GNTST_bad_handle",
    "GNTST_bad_virt_addr",
    "GNTST_bad_dev_addr",
    "GNTST_no_device_space",
    "GNTST_permission_denied",
    "GNTST_bad_page",
    "GNTST_bad_copy_arg",
    "GNTST_address_too_big",
    "GNTST_eagain",
    "GNTST_no_space",
];

/// Index into the `GNTST_*` tables for `status`, if it is a known code.
fn gntst_index(status: i16) -> Option<usize> {
    let index = usize::try_from(status.checked_neg()?).ok()?;
    (index < GNTST_NAMES.len()).then_some(index)
}

/// The symbolic name of a grant status code (`-12` gives `"GNTST_eagain"`);
/// `"GNTST_unknown"` for codes the header does not define.
#[must_use]
pub fn gntst_name(status: i16) -> &'static str {
    gntst_index(status).map_or("GNTST_unknown", |i| GNTST_NAMES[i])
}

/// The header's message for a grant status code (`GNTTABOP_error_msgs`;
/// `-12` gives `"operation not done; try again"`); `"unknown grant status"`
/// for codes the header does not define.
#[must_use]
pub fn gntst_error_msg(status: i16) -> &'static str {
    gntst_index(status).map_or("unknown grant status", |i| GNTTABOP_error_msgs[i])
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_grant_entry_sizes_match_header() {
        assert_eq!(size_of::<grant_entry_v1>(), 8);
        assert_eq!(size_of::<grant_entry_v2>(), 16);
        assert_eq!(size_of::<gnttab_copy>(), 40);
        assert_eq!(offset_of!(gnttab_setup_table, frame_list), 16);
    }

    #[test]
    fn test_gntst_name_known_codes_give_symbols() {
        assert_eq!(gntst_name(GNTST_okay), "GNTST_okay");
        assert_eq!(gntst_name(GNTST_eagain), "GNTST_eagain");
        assert_eq!(gntst_name(GNTST_no_space), "GNTST_no_space");
        assert_eq!(
            gntst_error_msg(GNTST_eagain),
            "operation not done; try again"
        );
    }

    #[test]
    fn test_gntst_name_unknown_codes_give_unknown() {
        assert_eq!(gntst_name(1), "GNTST_unknown");
        assert_eq!(gntst_name(-14), "GNTST_unknown");
        assert_eq!(gntst_name(i16::MIN), "GNTST_unknown");
        assert_eq!(gntst_error_msg(i16::MIN), "unknown grant status");
    }

    #[test]
    fn test_grant_entry_v2_sub_page_roundtrips() {
        // Arrange
        let sub = grant_entry_v2_sub_page {
            hdr: grant_entry_header {
                flags: GTF_permit_access | GTF_sub_page,
                domid: 3,
            },
            page_off: 512,
            length: 1024,
            frame: 0xabcd,
        };

        // Act
        let entry = grant_entry_v2::from_sub_page(sub);

        // Assert
        assert_eq!(entry.sub_page(), sub);
        assert_eq!(entry.hdr(), sub.hdr);
        assert_eq!(entry.full_page().frame, 0xabcd);
    }
}
