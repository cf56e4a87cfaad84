//! Mirrors `xen/io/console.h`: the PV console ring page
//! (`xencons_interface`).
#![allow(non_camel_case_types, non_snake_case)]

use core::fmt;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Console ring index (`XENCONS_RING_IDX`), free-running.
pub type XENCONS_RING_IDX = u32;

/// Size of `xencons_interface::in` (backend to frontend).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of `xencons_interface::out` (frontend to backend).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `MASK_XENCONS_IDX(idx, ring)`: the byte position of free-running index
/// `idx` in a ring of `ring_size` bytes (a power of two).
#[must_use]
pub const fn MASK_XENCONS_IDX(idx: XENCONS_RING_IDX, ring_size: usize) -> usize {
    // Widening u32 -> usize on the 64-bit targets this crate describes.
    (idx as usize) & (ring_size - 1)
}

/// The console ring page (3088 bytes).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct xencons_interface {
    /// Input ring: bytes for the guest (written by the backend).
    pub r#in: [u8; XENCONS_IN_SIZE],
    /// Output ring: bytes from the guest (written by the frontend).
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Input consumer index (frontend).
    pub in_cons: XENCONS_RING_IDX,
    /// Input producer index (backend).
    pub in_prod: XENCONS_RING_IDX,
    /// Output consumer index (backend).
    pub out_cons: XENCONS_RING_IDX,
    /// Output producer index (frontend).
    pub out_prod: XENCONS_RING_IDX,
}

impl Default for xencons_interface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl fmt::Debug for xencons_interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("xencons_interface")
            .field("in_cons", &self.in_cons)
            .field("in_prod", &self.in_prod)
            .field("out_cons", &self.out_cons)
            .field("out_prod", &self.out_prod)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_xencons_interface_layout_is_3088() {
        assert_eq!(size_of::<xencons_interface>(), 3088);
        assert_eq!(offset_of!(xencons_interface, out), 1024);
        assert_eq!(offset_of!(xencons_interface, in_cons), 3072);
        assert_eq!(offset_of!(xencons_interface, out_prod), 3084);
    }

    #[test]
    fn test_mask_xencons_idx_wraps() {
        assert_eq!(MASK_XENCONS_IDX(1025, XENCONS_IN_SIZE), 1);
        assert_eq!(MASK_XENCONS_IDX(u32::MAX, XENCONS_OUT_SIZE), 2047);
    }
}
