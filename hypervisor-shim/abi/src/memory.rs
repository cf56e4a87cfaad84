//! `memory.h`: the reservation operations of `HYPERVISOR_memory_op` a
//! balloon driver uses (Linux's `drivers/xen/balloon.c`): give pages back
//! with `XENMEM_decrease_reservation`, take them again with
//! `XENMEM_populate_physmap`, read the counts with
//! `XENMEM_current_reservation` / `XENMEM_maximum_reservation`.
#![allow(non_camel_case_types, non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::{domid_t, xen_guest_handle, xen_ulong_t};

/// `XENMEM_increase_reservation` (`xen_memory_reservation`).
pub const XENMEM_increase_reservation: u32 = 0;
/// `XENMEM_decrease_reservation` (`xen_memory_reservation`): `extent_start`
/// lists the gfns of the extents to free; returns how many were freed.
pub const XENMEM_decrease_reservation: u32 = 1;
/// `XENMEM_maximum_ram_page`.
pub const XENMEM_maximum_ram_page: u32 = 2;
/// `XENMEM_current_reservation` (arg: `domid_t *`): the domain's pages.
pub const XENMEM_current_reservation: u32 = 3;
/// `XENMEM_maximum_reservation` (arg: `domid_t *`): its page limit.
pub const XENMEM_maximum_reservation: u32 = 4;
/// `XENMEM_populate_physmap` (`xen_memory_reservation`): `extent_start`
/// lists the gpfns to populate; returns how many were populated.
pub const XENMEM_populate_physmap: u32 = 6;

/// Argument of `XENMEM_increase_reservation`, `XENMEM_decrease_reservation`
/// and `XENMEM_populate_physmap` (`struct xen_memory_reservation`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct xen_memory_reservation {
    /// Guest handle to an array of `xen_pfn_t`: the extents' first frames.
    pub extent_start: xen_guest_handle,
    /// Number of extents.
    pub nr_extents: xen_ulong_t,
    /// Each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// `XENMEMF_*` flags (`address_bits` before interface 0x00030209).
    pub mem_flags: u32,
    /// The domain (`DOMID_SELF` for an unprivileged one).
    pub domid: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: [u8; 6],
}
