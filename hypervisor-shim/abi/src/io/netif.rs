//! Mirrors `xen/io/netif.h`: transmit/receive requests and responses, extra
//! info slots, the control ring, the flag and status constants, the ring
//! sizes and the xenstore keys of the network protocol.
#![allow(non_camel_case_types, non_upper_case_globals)]

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::grant_table::grant_ref_t;
use crate::io::ring::{const_ring_size, XEN_PAGE_SIZE};
use crate::union::xen_union;

/// Minimum number of slots per packet a backend must accept (the historical
/// Linux `MAX_SKB_FRAGS`).
pub const XEN_NETIF_NR_SLOTS_MIN: u32 = 18;
/// Largest packet size a tx request can describe.
pub const XEN_NETIF_MAX_TX_SIZE: u32 = 0xFFFF;

// ---------------------------------------------------------------------------
// Transmit.

/// Bit number of `NETTXF_csum_blank`.
pub const _NETTXF_csum_blank: u16 = 0;
/// The protocol checksum field is blank (checksum offload).
pub const NETTXF_csum_blank: u16 = 1 << _NETTXF_csum_blank;
/// Bit number of `NETTXF_data_validated`.
pub const _NETTXF_data_validated: u16 = 1;
/// The packet data has been validated against its checksum.
pub const NETTXF_data_validated: u16 = 1 << _NETTXF_data_validated;
/// Bit number of `NETTXF_more_data`.
pub const _NETTXF_more_data: u16 = 2;
/// The packet continues in the next request.
pub const NETTXF_more_data: u16 = 1 << _NETTXF_more_data;
/// Bit number of `NETTXF_extra_info`.
pub const _NETTXF_extra_info: u16 = 3;
/// The request is followed by `netif_extra_info` slot(s).
pub const NETTXF_extra_info: u16 = 1 << _NETTXF_extra_info;

/// Transmit request (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_tx_request {
    /// Grant reference of the buffer page.
    pub gref: grant_ref_t,
    /// Offset in the buffer page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Request id, echoed in the response.
    pub id: u16,
    /// Packet size (first slot) or fragment size (other slots).
    pub size: u16,
}

/// Transmit response (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_tx_response {
    /// `id` of the request.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

// ---------------------------------------------------------------------------
// Extra info.

/// Never used (invalid).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// `u.gso`.
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// `u.mcast`: add a multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `u.mcast`: delete a multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `u.hash`.
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last extra type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// Bit number of `XEN_NETIF_EXTRA_FLAG_MORE`.
pub const _XEN_NETIF_EXTRA_FLAG_MORE: u8 = 0;
/// Another extra info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << _XEN_NETIF_EXTRA_FLAG_MORE;

/// No GSO.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// TCP over IPv4 segmentation.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// TCP over IPv6 segmentation.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// `netif_extra_info.u.gso`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_extra_info_gso {
    /// Maximum payload of each segment (the MSS for TCP).
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`.
    pub r#type: u8,
    /// Padding.
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*`.
    pub features: u16,
}

/// `netif_extra_info.u.mcast`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_extra_info_mcast {
    /// Multicast MAC address to add or remove.
    pub addr: [u8; 6],
}

/// `netif_extra_info.u.hash`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_extra_info_hash {
    /// `_XEN_NETIF_CTRL_HASH_TYPE_*`.
    pub r#type: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// Hash value, least significant byte first.
    pub value: [u8; 4],
}

xen_union! {
    /// `netif_extra_info.u` (6 bytes, 2-aligned), selected by `type`.
    pub union netif_extra_info_u: [u16; 3] {
        /// `XEN_NETIF_EXTRA_TYPE_GSO`.
        gso: netif_extra_info_gso, set_gso, from_gso;
        /// `XEN_NETIF_EXTRA_TYPE_MCAST_{ADD,DEL}`.
        mcast: netif_extra_info_mcast, set_mcast, from_mcast;
        /// `XEN_NETIF_EXTRA_TYPE_HASH`.
        hash: netif_extra_info_hash, set_hash, from_hash;
        /// Raw padding view.
        pad: [u16; 3], set_pad, from_pad;
    }
}

/// Extra info slot (8 bytes): follows a request or response with
/// `NET{T,R}XF_extra_info`, overlaying a tx request or rx response slot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_extra_info {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub r#type: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// Type-specific data.
    pub u: netif_extra_info_u,
}

// ---------------------------------------------------------------------------
// Receive.

/// Receive request (8 bytes): a granted page for the backend to fill.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_rx_request {
    /// Request id, echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// Grant reference of the receive page.
    pub gref: grant_ref_t,
}

/// Bit number of `NETRXF_data_validated`.
pub const _NETRXF_data_validated: u16 = 0;
/// The packet data has been validated against its checksum.
pub const NETRXF_data_validated: u16 = 1 << _NETRXF_data_validated;
/// Bit number of `NETRXF_csum_blank`.
pub const _NETRXF_csum_blank: u16 = 1;
/// The protocol checksum field is blank.
pub const NETRXF_csum_blank: u16 = 1 << _NETRXF_csum_blank;
/// Bit number of `NETRXF_more_data`.
pub const _NETRXF_more_data: u16 = 2;
/// The packet continues in the next response.
pub const NETRXF_more_data: u16 = 1 << _NETRXF_more_data;
/// Bit number of `NETRXF_extra_info`.
pub const _NETRXF_extra_info: u16 = 3;
/// The response is followed by `netif_extra_info` slot(s).
pub const NETRXF_extra_info: u16 = 1 << _NETRXF_extra_info;
/// Bit number of `NETRXF_gso_prefix`.
pub const _NETRXF_gso_prefix: u16 = 4;
/// Deprecated: the packet has a GSO prefix.
pub const NETRXF_gso_prefix: u16 = 1 << _NETRXF_gso_prefix;

/// Receive response (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct netif_rx_response {
    /// `id` of the request.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Negative: `NETIF_RSP_*`; otherwise the received size.
    pub status: i16,
}

/// The packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// The request failed.
pub const NETIF_RSP_ERROR: i16 = -1;
/// The request succeeded.
pub const NETIF_RSP_OKAY: i16 = 0;
/// No response: used for auxiliary requests (extra info slots).
pub const NETIF_RSP_NULL: i16 = 1;

/// Slot size of the tx ring (`union netif_tx_sring_entry`, 12 bytes).
pub const NETIF_TX_SRING_ENTRY_SIZE: usize = max(
    size_of::<netif_tx_request>(),
    size_of::<netif_tx_response>(),
);
/// Slot size of the rx ring (`union netif_rx_sring_entry`, 8 bytes).
pub const NETIF_RX_SRING_ENTRY_SIZE: usize = max(
    size_of::<netif_rx_request>(),
    size_of::<netif_rx_response>(),
);
/// Slots of a one-page tx ring (`__CONST_RING_SIZE(netif_tx, 4096)`, 256).
pub const NETIF_TX_RING_SIZE: usize = const_ring_size(XEN_PAGE_SIZE, NETIF_TX_SRING_ENTRY_SIZE);
/// Slots of a one-page rx ring (`__CONST_RING_SIZE(netif_rx, 4096)`, 256).
pub const NETIF_RX_RING_SIZE: usize = const_ring_size(XEN_PAGE_SIZE, NETIF_RX_SRING_ENTRY_SIZE);

// ---------------------------------------------------------------------------
// Control ring.

/// Bit number of `XEN_NETIF_CTRL_HASH_TYPE_IPV4`.
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 0;
/// Hash over IPv4 source and destination addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4;
/// Bit number of `XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`.
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1;
/// Hash over IPv4 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
/// Bit number of `XEN_NETIF_CTRL_HASH_TYPE_IPV6`.
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 2;
/// Hash over IPv6 source and destination addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6;
/// Bit number of `XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`.
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 3;
/// Hash over IPv6 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;
/// No hashing.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
/// Toeplitz hashing.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;

/// Control request type: invalid.
pub const XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
/// Control request type: get the supported hash types.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
/// Control request type: set the hash types.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
/// Control request type: set the hash key.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
/// Control request type: get the maximum hash mapping size.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
/// Control request type: set the hash mapping size.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
/// Control request type: set hash mapping entries.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
/// Control request type: set the hash algorithm.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
/// Control request type: get the number of static grant mappings.
pub const XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
/// Control request type: add static grant mappings.
pub const XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
/// Control request type: remove static grant mappings.
pub const XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;

/// Control status: success.
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
/// Control status: the request type is not supported.
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// Control status: a parameter is invalid.
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// Control status: a buffer is too small.
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

/// Control ring request (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct xen_netif_ctrl_request {
    /// Request id, echoed in the response.
    pub id: u16,
    /// `XEN_NETIF_CTRL_TYPE_*`.
    pub r#type: u16,
    /// Type-specific data.
    pub data: [u32; 3],
}

/// Control ring response (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct xen_netif_ctrl_response {
    /// `id` of the request.
    pub id: u16,
    /// `type` of the request.
    pub r#type: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u32,
    /// Type-specific data.
    pub data: u32,
}

/// Bit number of `XEN_NETIF_CTRLF_GREF_readonly`.
pub const _XEN_NETIF_CTRLF_GREF_readonly: u16 = 0;
/// `xen_netif_gref.flags`: map read-only.
pub const XEN_NETIF_CTRLF_GREF_readonly: u16 = 1 << _XEN_NETIF_CTRLF_GREF_readonly;

/// Entry of a static grant mapping table (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct xen_netif_gref {
    /// IN: grant reference.
    pub r#ref: grant_ref_t,
    /// IN: `XEN_NETIF_CTRLF_GREF_*`.
    pub flags: u16,
    /// OUT: `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u16,
}

/// Slot size of the control ring (`union xen_netif_ctrl_sring_entry`).
pub const XEN_NETIF_CTRL_SRING_ENTRY_SIZE: usize = max(
    size_of::<xen_netif_ctrl_request>(),
    size_of::<xen_netif_ctrl_response>(),
);
/// Slots of a one-page control ring (`__CONST_RING_SIZE(xen_netif_ctrl, 4096)`).
pub const XEN_NETIF_CTRL_RING_SIZE: usize =
    const_ring_size(XEN_PAGE_SIZE, XEN_NETIF_CTRL_SRING_ENTRY_SIZE);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Xenstore node names of the network protocol. Those not named in
/// `netif.h` are the conventions of the Linux and toolstack drivers.
pub mod keys {
    /// Scatter-gather: packets may span several slots.
    pub const FEATURE_SG: &str = "feature-sg";
    /// TCPv4 segmentation offload.
    pub const FEATURE_GSO_TCPV4: &str = "feature-gso-tcpv4";
    /// TCPv6 segmentation offload.
    pub const FEATURE_GSO_TCPV6: &str = "feature-gso-tcpv6";
    /// `"1"` turns IPv4 checksum offload off (default on).
    pub const FEATURE_NO_CSUM_OFFLOAD: &str = "feature-no-csum-offload";
    /// `"1"` turns IPv6 checksum offload on (default off).
    pub const FEATURE_IPV6_CSUM_OFFLOAD: &str = "feature-ipv6-csum-offload";
    /// Frontend notifies the backend when it posts rx requests.
    pub const FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
    /// Backend can copy into rx pages (grant copy).
    pub const FEATURE_RX_COPY: &str = "feature-rx-copy";
    /// Legacy page-flipping rx.
    pub const FEATURE_RX_FLIP: &str = "feature-rx-flip";
    /// Frontend asks for copying rx.
    pub const REQUEST_RX_COPY: &str = "request-rx-copy";
    /// Separate tx and rx event channels.
    pub const FEATURE_SPLIT_EVENT_CHANNELS: &str = "feature-split-event-channels";
    /// Backend can filter multicast (set before Connected).
    pub const FEATURE_MULTICAST_CONTROL: &str = "feature-multicast-control";
    /// Backend re-samples `request-multicast-control` at any time.
    pub const FEATURE_DYNAMIC_MULTICAST_CONTROL: &str = "feature-dynamic-multicast-control";
    /// Frontend asks for multicast filtering.
    pub const REQUEST_MULTICAST_CONTROL: &str = "request-multicast-control";
    /// Backend supports a control ring.
    pub const FEATURE_CTRL_RING: &str = "feature-ctrl-ring";
    /// Grant reference of the control ring.
    pub const CTRL_RING_REF: &str = "ctrl-ring-ref";
    /// Event channel of the control ring.
    pub const EVENT_CHANNEL_CTRL: &str = "event-channel-ctrl";
    /// Maximum number of queues the backend supports.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Number of queues the frontend uses.
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    /// Prefix of per-queue directories (`queue-0`, `queue-1`...).
    pub const QUEUE_PREFIX: &str = "queue-";
    /// Grant reference of the tx ring.
    pub const TX_RING_REF: &str = "tx-ring-ref";
    /// Grant reference of the rx ring.
    pub const RX_RING_REF: &str = "rx-ring-ref";
    /// Single event channel for tx and rx.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Tx event channel (split event channels).
    pub const EVENT_CHANNEL_TX: &str = "event-channel-tx";
    /// Rx event channel (split event channels).
    pub const EVENT_CHANNEL_RX: &str = "event-channel-rx";
    /// MAC address, `"aa:bb:cc:dd:ee:ff"`.
    pub const MAC: &str = "mac";
    /// MTU in octets (default 1500).
    pub const MTU: &str = "mtu";
    /// Link state: `"0"` down, `"1"` up (default up).
    pub const CARRIER: &str = "carrier";
    /// `"0"`: the frontend should not trust the backend.
    pub const TRUSTED: &str = "trusted";
    /// Interface handle (vif number).
    pub const HANDLE: &str = "handle";
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_netif_slot_sizes_match_header() {
        assert_eq!(size_of::<netif_tx_request>(), 12);
        assert_eq!(size_of::<netif_tx_response>(), 4);
        assert_eq!(size_of::<netif_rx_request>(), 8);
        assert_eq!(size_of::<netif_rx_response>(), 8);
        assert_eq!(size_of::<netif_extra_info>(), 8);
        assert_eq!(offset_of!(netif_extra_info, u), 2);
    }

    #[test]
    fn test_netif_ring_sizes_one_page_are_256() {
        assert_eq!(NETIF_TX_RING_SIZE, 256);
        assert_eq!(NETIF_RX_RING_SIZE, 256);
        assert_eq!(XEN_NETIF_CTRL_RING_SIZE, 128);
    }

    #[test]
    fn test_netif_extra_info_gso_roundtrips() {
        // Arrange
        let gso = netif_extra_info_gso {
            size: 1448,
            r#type: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };

        // Act
        let extra = netif_extra_info {
            r#type: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: 0,
            u: netif_extra_info_u::from_gso(gso),
        };

        // Assert
        assert_eq!(extra.u.gso(), gso);
        assert_eq!(extra.as_bytes(), &[1, 0, 0xa8, 0x05, 1, 0, 0, 0]);
    }
}
