//! Mirrors `xen/io/ring.h`: the layout of a shared ring page
//! (`struct <name>_sring` from `DEFINE_RING_TYPES`) and `__CONST_RING_SIZE`.
//!
//! A shared ring page starts with a 64-byte header (producer and event
//! indices, a private area and padding) followed by the ring array of
//! `union <name>_sring_entry` slots, whose count is the largest power of two
//! that fits. The indices are free-running `RING_IDX` counters; a slot is
//! `idx & (size - 1)`.
#![allow(non_camel_case_types)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Free-running ring index (`RING_IDX`).
pub type RING_IDX = u32;

/// Size of a Xen page (the granularity of grants and rings).
pub const XEN_PAGE_SIZE: usize = 4096;
/// `log2(XEN_PAGE_SIZE)`.
pub const XEN_PAGE_SHIFT: u32 = 12;

/// Offset of `req_prod` (written by the frontend) in the shared ring.
pub const SRING_REQ_PROD_OFFSET: usize = 0;
/// Offset of `req_event` (written by the backend) in the shared ring.
pub const SRING_REQ_EVENT_OFFSET: usize = 4;
/// Offset of `rsp_prod` (written by the backend) in the shared ring.
pub const SRING_RSP_PROD_OFFSET: usize = 8;
/// Offset of `rsp_event` (written by the frontend) in the shared ring.
pub const SRING_RSP_EVENT_OFFSET: usize = 12;
/// Offset of the `pvt` union (`pvt_pad[4]`) in the shared ring.
pub const SRING_PVT_OFFSET: usize = 16;
/// Size of the `pvt` union.
pub const SRING_PVT_SIZE: usize = 4;
/// Offset of `__pad[44]` in the shared ring.
pub const SRING_PAD_OFFSET: usize = 20;
/// Size of `__pad`.
pub const SRING_PAD_SIZE: usize = 44;
/// Offset of the ring array (`ring[]`), i.e. the size of the header.
pub const SRING_RING_OFFSET: usize = 64;

/// The header of every shared ring page (the fixed part of
/// `struct <name>_sring`, 64 bytes); the ring array follows at
/// [`SRING_RING_OFFSET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct sring_header {
    /// Requests produced by the frontend.
    pub req_prod: RING_IDX,
    /// Backend asks to be notified when `req_prod` passes this index.
    pub req_event: RING_IDX,
    /// Responses produced by the backend.
    pub rsp_prod: RING_IDX,
    /// Frontend asks to be notified when `rsp_prod` passes this index.
    pub rsp_event: RING_IDX,
    /// The `pvt` union (`netif.smartpoll_active`, `tapif_user.msg`,
    /// `pvt_pad[4]`); zero in practice.
    pub pvt: [u8; SRING_PVT_SIZE],
    /// Padding up to the ring array.
    pub __pad: [u8; SRING_PAD_SIZE],
}

impl Default for sring_header {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// `__RD32`: rounds a 32-bit value down to a power of two (0 stays 0).
#[must_use]
pub const fn rd32(x: u32) -> u32 {
    if x == 0 {
        0
    } else {
        1 << (31 - x.leading_zeros())
    }
}

/// `__CONST_RING_SIZE`: the number of `entry_size`-byte slots of a shared
/// ring occupying `ring_bytes` bytes, i.e. `(ring_bytes - 64) / entry_size`
/// rounded down to a power of two. Gives 0 if nothing fits or `entry_size`
/// is 0.
#[must_use]
pub const fn const_ring_size(ring_bytes: usize, entry_size: usize) -> usize {
    if entry_size == 0 || ring_bytes <= SRING_RING_OFFSET {
        return 0;
    }
    let slots = (ring_bytes - SRING_RING_OFFSET) / entry_size;
    if slots == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - slots.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_sring_header_offsets_match_constants() {
        assert_eq!(offset_of!(sring_header, req_prod), SRING_REQ_PROD_OFFSET);
        assert_eq!(offset_of!(sring_header, req_event), SRING_REQ_EVENT_OFFSET);
        assert_eq!(offset_of!(sring_header, rsp_prod), SRING_RSP_PROD_OFFSET);
        assert_eq!(offset_of!(sring_header, rsp_event), SRING_RSP_EVENT_OFFSET);
        assert_eq!(offset_of!(sring_header, pvt), SRING_PVT_OFFSET);
        assert_eq!(offset_of!(sring_header, __pad), SRING_PAD_OFFSET);
        assert_eq!(size_of::<sring_header>(), SRING_RING_OFFSET);
        assert_eq!(1 << XEN_PAGE_SHIFT, XEN_PAGE_SIZE);
    }

    #[test]
    fn test_const_ring_size_one_page_gives_header_values() {
        assert_eq!(const_ring_size(XEN_PAGE_SIZE, 112), 32); // blkif
        assert_eq!(const_ring_size(XEN_PAGE_SIZE, 12), 256); // netif tx
        assert_eq!(const_ring_size(XEN_PAGE_SIZE, 8), 256); // netif rx
        assert_eq!(const_ring_size(4 * XEN_PAGE_SIZE, 112), 128);
    }

    #[test]
    fn test_const_ring_size_degenerate_inputs_give_zero() {
        assert_eq!(const_ring_size(64, 8), 0);
        assert_eq!(const_ring_size(10, 8), 0);
        assert_eq!(const_ring_size(100, 0), 0);
        assert_eq!(const_ring_size(100, 64), 0);
    }

    #[test]
    fn test_rd32_rounds_down_to_power_of_two() {
        assert_eq!(rd32(0), 0);
        assert_eq!(rd32(1), 1);
        assert_eq!(rd32(36), 32);
        assert_eq!(rd32(336), 256);
        assert_eq!(rd32(u32::MAX), 1 << 31);
    }
}
