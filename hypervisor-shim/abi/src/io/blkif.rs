//! Mirrors `xen/io/blkif.h`: block requests and responses, `BLKIF_OP_*`,
//! `BLKIF_RSP_*`, `VDISK_*`, the ring size and the xenstore keys of the
//! block protocol.
//!
//! On x86_64 `blkif_request` has 4 bytes of padding after `handle`, so `id`
//! is at 8, `sector_number` at 16 and `seg` at 24 (112 bytes in all).
#![allow(non_camel_case_types)]

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::grant_table::grant_ref_t;
use crate::io::ring::{const_ring_size, XEN_PAGE_SIZE};

pub use crate::io::protocols::{
    XEN_IO_PROTO_ABI_ARM, XEN_IO_PROTO_ABI_NATIVE, XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64,
};

/// Virtual device handle (`blkif_vdev_t`).
pub type blkif_vdev_t = u16;
/// Sector number, in 512-byte units unless `feature-large-sector-size`
/// (`blkif_sector_t`).
pub type blkif_sector_t = u64;

/// Read from the device.
pub const BLKIF_OP_READ: u8 = 0;
/// Write to the device.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write after all earlier writes complete (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the device's volatile cache (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (SLES device-specific command packets).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range (`feature-discard`), `blkif_request_discard`.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// Indirect request (`feature-max-indirect-segments`),
/// `blkif_request_indirect`.
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Maximum scatter/gather segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Maximum indirect pages in an indirect request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments held by one indirect page (`XEN_PAGE_SIZE /
/// sizeof(struct blkif_request_segment)`, 512).
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize = XEN_PAGE_SIZE / size_of::<blkif_request_segment>();

/// `blkif_request_discard.flag`: secure discard (`discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// The operation failed because it is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// The operation failed (`-EIO`).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// The operation succeeded.
pub const BLKIF_RSP_OKAY: i16 = 0;

/// `info` bit: the device is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// `info` bit: the device is removable.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `info` bit: the device is read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// One segment of a request: sectors `first_sect..=last_sect` of the
/// granted page `gref` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct blkif_request_segment {
    /// Grant reference of the I/O buffer page.
    pub gref: grant_ref_t,
    /// First sector in the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last sector in the page to transfer (inclusive).
    pub last_sect: u8,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
}

/// A block request: the shape of every ring slot (112 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct blkif_request {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// Device handle (read/write only).
    pub handle: blkif_vdev_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
    /// Private frontend value, echoed in the response.
    pub id: u64,
    /// Start sector on the disk (read/write only).
    pub sector_number: blkif_sector_t,
    /// Segments.
    pub seg: [blkif_request_segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// A request with `operation == BLKIF_OP_DISCARD` (32 bytes, fits in a
/// `blkif_request` slot).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct blkif_request_discard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or 0.
    pub flag: u8,
    /// Device handle.
    pub handle: blkif_vdev_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
    /// Private frontend value, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: blkif_sector_t,
    /// Number of contiguous sectors to discard.
    pub nr_sectors: u64,
}

/// The common prefix of any request (operation and `id`), for operations
/// without a payload such as `BLKIF_OP_FLUSH_DISKCACHE`.
///
/// Not in Xen's `blkif.h`: this is Linux's `struct blkif_request_other`
/// (`include/xen/interface/io/blkif.h`, a member of the request union after
/// `operation`), flattened to start at the slot like the other request
/// structs here. Its fields sit at the same offsets as those of
/// `blkif_request` (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct blkif_request_other {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Padding (`nr_segments` slot).
    pub _pad1: u8,
    /// Padding (`handle` slot).
    pub _pad2: blkif_vdev_t,
    /// Padding (x86_64 alignment hole).
    pub _pad3: u32,
    /// Private frontend value, echoed in the response.
    pub id: u64,
}

/// A request with `operation == BLKIF_OP_INDIRECT` (64 bytes): the segments
/// live in the granted pages `indirect_grefs`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct blkif_request_indirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Number of segments.
    pub nr_segments: u16,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u32,
    /// Private frontend value, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: blkif_sector_t,
    /// Device handle.
    pub handle: blkif_vdev_t,
    /// Implicit C padding (not a field of the header).
    pub _pad1: u16,
    /// Grant references of the pages holding `blkif_request_segment`s.
    pub indirect_grefs: [grant_ref_t; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Implicit C padding (not a field of the header).
    pub _pad2: u32,
}

/// A block response (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct blkif_response {
    /// `id` copied from the request.
    pub id: u64,
    /// `operation` copied from the request.
    pub operation: u8,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Implicit C padding (not a field of the header).
    pub _pad1: u32,
}

/// Size of a blkif ring slot (`union blkif_sring_entry`: the larger of
/// request and response, 112 bytes).
pub const BLKIF_SRING_ENTRY_SIZE: usize =
    if size_of::<blkif_request>() > size_of::<blkif_response>() {
        size_of::<blkif_request>()
    } else {
        size_of::<blkif_response>()
    };

/// Slots of a one-page blkif ring (`__CONST_RING_SIZE(blkif, 4096)`, 32).
pub const BLKIF_RING_SIZE: usize = const_ring_size(XEN_PAGE_SIZE, BLKIF_SRING_ENTRY_SIZE);

/// Slots of a blkif ring of `nr_pages` pages (`ring-page-order` =
/// log2 of `nr_pages`).
#[must_use]
pub const fn blkif_ring_size(nr_pages: usize) -> usize {
    const_ring_size(
        XEN_PAGE_SIZE.saturating_mul(nr_pages),
        BLKIF_SRING_ENTRY_SIZE,
    )
}

/// Xenstore node names of the block protocol (values are decimal strings
/// unless noted).
pub mod keys {
    // Backend, device identification (private to the backend).
    /// `"r"` (read-only) or `"w"` (writable) access to the backing store.
    pub const MODE: &str = "mode";
    /// Free-form backing store description for the hotplug script.
    pub const PARAMS: &str = "params";
    /// `"MAJOR:MINOR"` of the backing device.
    pub const PHYSICAL_DEVICE: &str = "physical-device";
    /// Absolute path of the disk image.
    pub const PHYSICAL_DEVICE_PATH: &str = "physical-device-path";
    /// Backing type: `"file"`, `"phy"` or `"tap"`.
    pub const TYPE: &str = "type";
    /// Backing storage is safe for `O_DIRECT`.
    pub const DIRECT_IO_SAFE: &str = "direct-io-safe";

    // Backend features and transport parameters.
    /// Backend supports `BLKIF_OP_WRITE_BARRIER`.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// Backend supports `BLKIF_OP_FLUSH_DISKCACHE`.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// Backend supports `BLKIF_OP_DISCARD`.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Persistent grants (backend and frontend).
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// Maximum segments of a `BLKIF_OP_INDIRECT` request.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Maximum ring size the backend supports, as log2(pages).
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Deprecated: maximum ring size in pages.
    pub const MAX_RING_PAGES: &str = "max-ring-pages";
    /// Maximum number of queues the backend supports.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";

    // Backend device properties.
    /// Toolstack: offer discard (default 1).
    pub const DISCARD_ENABLE: &str = "discard-enable";
    /// Offset in bytes of the first discard extent.
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    /// Size in bytes of a discard extent.
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    /// Backend supports `BLKIF_DISCARD_SECURE`.
    pub const DISCARD_SECURE: &str = "discard-secure";
    /// `VDISK_*` bitmap.
    pub const INFO: &str = "info";
    /// Logical block size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Physical block size in bytes.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// Device size in `sector-size` units.
    pub const SECTORS: &str = "sectors";

    // Frontend transport parameters and features.
    /// Event channel of the ring.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Grant reference of a one-page ring. A multi-page ring uses
    /// `"ring-ref%u"` instead: [`RING_REF`] followed by the page index
    /// (`ring-ref0`, `ring-ref1`...).
    pub const RING_REF: &str = "ring-ref";
    /// The header's pattern for multi-page ring references.
    pub const RING_REF_PATTERN: &str = "ring-ref%u";
    /// Ring size, as log2(pages).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Deprecated: ring size in pages.
    pub const NUM_RING_PAGES: &str = "num-ring-pages";
    /// Ring ABI (`XEN_IO_PROTO_ABI_*`, e.g. `"x86_64-abi"`).
    pub const PROTOCOL: &str = "protocol";
    /// Number of queues the frontend uses.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    /// Prefix of per-queue directories (`queue-0`, `queue-1`...).
    pub const QUEUE_PREFIX: &str = "queue-";
    /// Frontend handles `sector-size` other than 512.
    pub const FEATURE_LARGE_SECTOR_SIZE: &str = "feature-large-sector-size";
    /// `"0"`: the frontend should not trust the backend.
    pub const TRUSTED: &str = "trusted";
    /// `"disk"`, `"cdrom"`, `"floppy"`...
    pub const DEVICE_TYPE: &str = "device-type";
    /// Virtual device number (see docs/misc/vbd-interface.txt).
    pub const VIRTUAL_DEVICE: &str = "virtual-device";
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_blkif_request_layout_is_112_with_seg_at_24() {
        assert_eq!(size_of::<blkif_request>(), 112);
        assert_eq!(offset_of!(blkif_request, id), 8);
        assert_eq!(offset_of!(blkif_request, sector_number), 16);
        assert_eq!(offset_of!(blkif_request, seg), 24);
        assert_eq!(size_of::<blkif_request_segment>(), 8);
    }

    #[test]
    fn test_blkif_response_and_variants_sizes() {
        assert_eq!(size_of::<blkif_response>(), 16);
        assert_eq!(offset_of!(blkif_response, status), 10);
        assert_eq!(size_of::<blkif_request_discard>(), 32);
        assert_eq!(size_of::<blkif_request_indirect>(), 64);
        assert_eq!(
            offset_of!(blkif_request_other, id),
            offset_of!(blkif_request, id)
        );
    }

    #[test]
    fn test_blkif_ring_size_one_page_is_32() {
        assert_eq!(BLKIF_SRING_ENTRY_SIZE, 112);
        assert_eq!(BLKIF_RING_SIZE, 32);
        assert_eq!(blkif_ring_size(1), 32);
        assert_eq!(blkif_ring_size(8), 256);
        assert_eq!(BLKIF_SEGS_PER_INDIRECT_FRAME, 512);
    }
}
