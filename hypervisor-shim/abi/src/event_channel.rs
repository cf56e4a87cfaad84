//! Mirrors `xen/event_channel.h`: `EVTCHNOP_*` operations and their argument
//! structs, `EVTCHNSTAT_*`, the 2-level ABI size and the FIFO ABI constants.
#![allow(non_camel_case_types, non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::union::xen_union;
use crate::xen::{domid_t, xen_ulong_t};

/// Event channel port number (`evtchn_port_t`).
pub type evtchn_port_t = u32;

/// `EVTCHNOP_bind_interdomain` (`evtchn_bind_interdomain`).
pub const EVTCHNOP_bind_interdomain: u32 = 0;
/// `EVTCHNOP_bind_virq` (`evtchn_bind_virq`).
pub const EVTCHNOP_bind_virq: u32 = 1;
/// `EVTCHNOP_bind_pirq` (`evtchn_bind_pirq`).
pub const EVTCHNOP_bind_pirq: u32 = 2;
/// `EVTCHNOP_close` (`evtchn_close`).
pub const EVTCHNOP_close: u32 = 3;
/// `EVTCHNOP_send` (`evtchn_send`).
pub const EVTCHNOP_send: u32 = 4;
/// `EVTCHNOP_status` (`evtchn_status`).
pub const EVTCHNOP_status: u32 = 5;
/// `EVTCHNOP_alloc_unbound` (`evtchn_alloc_unbound`).
pub const EVTCHNOP_alloc_unbound: u32 = 6;
/// `EVTCHNOP_bind_ipi` (`evtchn_bind_ipi`).
pub const EVTCHNOP_bind_ipi: u32 = 7;
/// `EVTCHNOP_bind_vcpu` (`evtchn_bind_vcpu`).
pub const EVTCHNOP_bind_vcpu: u32 = 8;
/// `EVTCHNOP_unmask` (`evtchn_unmask`).
pub const EVTCHNOP_unmask: u32 = 9;
/// `EVTCHNOP_reset` (`evtchn_reset`).
pub const EVTCHNOP_reset: u32 = 10;
/// `EVTCHNOP_init_control` (`evtchn_init_control`).
pub const EVTCHNOP_init_control: u32 = 11;
/// `EVTCHNOP_expand_array` (`evtchn_expand_array`).
pub const EVTCHNOP_expand_array: u32 = 12;
/// `EVTCHNOP_set_priority` (`evtchn_set_priority`).
pub const EVTCHNOP_set_priority: u32 = 13;

/// Allocate a port in `dom` for later binding by `remote_dom`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_alloc_unbound {
    /// IN: domain owning the new port (`DOMID_SELF` usually).
    pub dom: domid_t,
    /// IN: domain allowed to bind to it.
    pub remote_dom: domid_t,
    /// OUT: the new port.
    pub port: evtchn_port_t,
}

/// Connect a local port to a remote domain's unbound port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_bind_interdomain {
    /// IN: remote domain.
    pub remote_dom: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// IN: remote (unbound) port.
    pub remote_port: evtchn_port_t,
    /// OUT: local port.
    pub local_port: evtchn_port_t,
}

/// Bind a VIRQ on a vCPU to a new port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_bind_virq {
    /// IN: `VIRQ_*`.
    pub virq: u32,
    /// IN: vCPU.
    pub vcpu: u32,
    /// OUT: port.
    pub port: evtchn_port_t,
}

/// `evtchn_bind_pirq.flags`: the PIRQ may be shared.
pub const BIND_PIRQ__WILL_SHARE: u32 = 1;

/// Bind a physical IRQ to a new port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_bind_pirq {
    /// IN: physical IRQ.
    pub pirq: u32,
    /// IN: `BIND_PIRQ__*`.
    pub flags: u32,
    /// OUT: port.
    pub port: evtchn_port_t,
}

/// Bind an inter-vCPU IPI to a new port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_bind_ipi {
    /// IN: vCPU.
    pub vcpu: u32,
    /// OUT: port.
    pub port: evtchn_port_t,
}

/// Close a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_close {
    /// IN: port.
    pub port: evtchn_port_t,
}

/// Send an event on a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_send {
    /// IN: port.
    pub port: evtchn_port_t,
}

/// `evtchn_status.status`: the channel is not in use.
pub const EVTCHNSTAT_closed: u32 = 0;
/// `evtchn_status.status`: waiting for an interdomain connection.
pub const EVTCHNSTAT_unbound: u32 = 1;
/// `evtchn_status.status`: connected to a remote domain.
pub const EVTCHNSTAT_interdomain: u32 = 2;
/// `evtchn_status.status`: bound to a physical IRQ.
pub const EVTCHNSTAT_pirq: u32 = 3;
/// `evtchn_status.status`: bound to a VIRQ.
pub const EVTCHNSTAT_virq: u32 = 4;
/// `evtchn_status.status`: bound to an IPI.
pub const EVTCHNSTAT_ipi: u32 = 5;

/// `evtchn_status.u.unbound` (`EVTCHNSTAT_unbound`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_status_unbound {
    /// Domain allowed to bind.
    pub dom: domid_t,
}

/// `evtchn_status.u.interdomain` (`EVTCHNSTAT_interdomain`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_status_interdomain {
    /// Remote domain.
    pub dom: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// Remote port.
    pub port: evtchn_port_t,
}

xen_union! {
    /// `evtchn_status.u` (8 bytes, 4-aligned), selected by `status`.
    pub union evtchn_status_u: [u32; 2] {
        /// `EVTCHNSTAT_unbound`.
        unbound: evtchn_status_unbound, set_unbound, from_unbound;
        /// `EVTCHNSTAT_interdomain`.
        interdomain: evtchn_status_interdomain, set_interdomain, from_interdomain;
        /// `EVTCHNSTAT_pirq`.
        pirq: u32, set_pirq, from_pirq;
        /// `EVTCHNSTAT_virq`.
        virq: u32, set_virq, from_virq;
    }
}

/// Get the state of a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_status {
    /// IN: domain.
    pub dom: domid_t,
    /// Implicit C padding (not a field of the header).
    pub _pad0: u16,
    /// IN: port.
    pub port: evtchn_port_t,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: vCPU the channel is bound to.
    pub vcpu: u32,
    /// OUT: details, by `status`.
    pub u: evtchn_status_u,
}

/// Deliver a port's events to another vCPU.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_bind_vcpu {
    /// IN: port.
    pub port: evtchn_port_t,
    /// IN: vCPU.
    pub vcpu: u32,
}

/// Unmask a port (and re-deliver a pending event).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_unmask {
    /// IN: port.
    pub port: evtchn_port_t,
}

/// Close all ports of a domain.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_reset {
    /// IN: domain.
    pub dom: domid_t,
}

/// Register a FIFO control block for a vCPU.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_init_control {
    /// IN: GFN of the control block page.
    pub control_gfn: u64,
    /// IN: offset of the control block in the page.
    pub offset: u32,
    /// IN: vCPU.
    pub vcpu: u32,
    /// OUT: number of link bits.
    pub link_bits: u8,
    /// Padding.
    pub _pad: [u8; 7],
}

/// Add a page to the FIFO event array.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_expand_array {
    /// IN: GFN of the new event array page.
    pub array_gfn: u64,
}

/// Set a port's FIFO priority.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_set_priority {
    /// IN: port.
    pub port: evtchn_port_t,
    /// IN: priority (`EVTCHN_FIFO_PRIORITY_*`).
    pub priority: u32,
}

/// Bits in one word of the 2-level `evtchn_pending`/`evtchn_mask` bitmaps
/// and in `evtchn_pending_sel` (`sizeof(xen_ulong_t) * 8`).
pub const BITS_PER_EVTCHN_WORD: usize = core::mem::size_of::<xen_ulong_t>() * 8;

/// Number of ports of the 2-level ABI (`EVTCHN_2L_NR_CHANNELS`, 4096 on
/// 64-bit): one bit per port in `shared_info::evtchn_pending`.
pub const EVTCHN_2L_NR_CHANNELS: usize =
    core::mem::size_of::<xen_ulong_t>() * core::mem::size_of::<xen_ulong_t>() * 64;

/// FIFO ABI: highest priority.
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = 0;
/// FIFO ABI: default priority.
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = 7;
/// FIFO ABI: lowest priority.
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = 15;
/// FIFO ABI: number of queues (one per priority).
pub const EVTCHN_FIFO_MAX_QUEUES: usize = EVTCHN_FIFO_PRIORITY_MIN as usize + 1;

/// FIFO ABI event word.
pub type event_word_t = u32;

/// FIFO event word bit: pending.
pub const EVTCHN_FIFO_PENDING: u32 = 31;
/// FIFO event word bit: masked.
pub const EVTCHN_FIFO_MASKED: u32 = 30;
/// FIFO event word bit: linked.
pub const EVTCHN_FIFO_LINKED: u32 = 29;
/// FIFO event word bit: busy.
pub const EVTCHN_FIFO_BUSY: u32 = 28;
/// FIFO event word: number of link bits.
pub const EVTCHN_FIFO_LINK_BITS: u32 = 17;
/// FIFO event word: link mask.
pub const EVTCHN_FIFO_LINK_MASK: u32 = (1 << EVTCHN_FIFO_LINK_BITS) - 1;
/// FIFO ABI: number of ports.
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = 1 << EVTCHN_FIFO_LINK_BITS;

/// FIFO ABI per-vCPU control block.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct evtchn_fifo_control_block {
    /// Bitmap of queues with events.
    pub ready: u32,
    /// Reserved.
    pub _rsvd: u32,
    /// Head of each priority queue.
    pub head: [u32; EVTCHN_FIFO_MAX_QUEUES],
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_evtchn_2l_nr_channels_is_4096_on_64_bit() {
        assert_eq!(EVTCHN_2L_NR_CHANNELS, 4096);
        assert_eq!(BITS_PER_EVTCHN_WORD, 64);
    }

    #[test]
    fn test_evtchn_status_union_layout_matches_header() {
        assert_eq!(size_of::<evtchn_status>(), 24);
        assert_eq!(offset_of!(evtchn_status, u), 16);
        assert_eq!(size_of::<evtchn_status_u>(), 8);
    }

    #[test]
    fn test_evtchn_status_interdomain_roundtrips() {
        // Arrange
        let inter = evtchn_status_interdomain {
            dom: 5,
            _pad0: 0,
            port: 42,
        };

        // Act
        let u = evtchn_status_u::from_interdomain(inter);

        // Assert
        assert_eq!(u.interdomain(), inter);
        assert_eq!(u.unbound().dom, 5);
    }
}
