//! Pure building and parsing of netif ring slots: tx requests (a packet is
//! a first request carrying the whole size, an optional GSO extra-info
//! slot, then fragments while `NETTXF_more_data`), and rx response chains
//! (first response, extra-info slots, fragments while `NETRXF_more_data`).

use alloc::vec::Vec;

use xen_abi::io::netif::*;
use zerocopy::{FromBytes, IntoBytes};

/// A tx ring slot (`union netif_tx_sring_entry`).
pub type TxSlot = [u8; NETIF_TX_SRING_ENTRY_SIZE];
/// A tx response as read.
pub type TxRspSlot = [u8; core::mem::size_of::<netif_tx_response>()];
/// An rx ring slot (request or response).
pub type RxSlot = [u8; NETIF_RX_SRING_ENTRY_SIZE];

/// Most data slots of one packet (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN as usize;
/// Most extra-info slots after one response.
pub const MAX_EXTRAS: usize = (XEN_NETIF_EXTRA_TYPE_MAX - 1) as usize;

/// Segmentation offload of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// TCP over IPv6 (else IPv4).
    pub ipv6: bool,
    /// Segment payload size (MSS).
    pub size: u16,
}

/// Offload metadata of a packet (both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// The transport checksum is partial (`csum_blank`): the pseudo-header
    /// sum is in the field and the receiver (or the NIC) completes it.
    pub csum_blank: bool,
    /// The checksum was verified (`data_validated`).
    pub data_validated: bool,
    /// Segmentation offload.
    pub gso: Option<Gso>,
}

/// A tx request slot.
#[must_use]
pub fn tx_request(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxSlot {
    let mut s = [0u8; NETIF_TX_SRING_ENTRY_SIZE];
    s.copy_from_slice(
        netif_tx_request {
            gref,
            offset,
            flags,
            id,
            size,
        }
        .as_bytes(),
    );
    s
}

/// A GSO extra-info slot.
#[must_use]
pub fn gso_extra(g: Gso) -> netif_extra_info {
    netif_extra_info {
        r#type: XEN_NETIF_EXTRA_TYPE_GSO,
        flags: 0,
        u: netif_extra_info_u::from_gso(netif_extra_info_gso {
            size: g.size,
            r#type: if g.ipv6 {
                XEN_NETIF_GSO_TYPE_TCPV6
            } else {
                XEN_NETIF_GSO_TYPE_TCPV4
            },
            pad: 0,
            features: 0,
        }),
    }
}

/// A GSO extra-info tx slot.
#[must_use]
pub fn tx_gso_slot(g: Gso) -> TxSlot {
    let mut s = [0u8; NETIF_TX_SRING_ENTRY_SIZE];
    s[..8].copy_from_slice(gso_extra(g).as_bytes());
    s
}

/// An rx request slot.
#[must_use]
pub fn rx_request(id: u16, gref: u32) -> RxSlot {
    let mut s = [0u8; NETIF_RX_SRING_ENTRY_SIZE];
    s.copy_from_slice(netif_rx_request { id, pad: 0, gref }.as_bytes());
    s
}

/// Decodes a tx response.
#[must_use]
pub fn tx_response(s: &TxRspSlot) -> netif_tx_response {
    netif_tx_response::read_from_bytes(s).unwrap_or_default()
}

/// One data slot of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxSeg {
    /// Index of the slot in the chain (its page is the ring slot's).
    pub slot: usize,
    /// Offset of the data in the page.
    pub offset: u16,
    /// Its length.
    pub len: u16,
}

/// A complete rx response chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPacket {
    /// Slots the chain used (data and extra).
    pub slots: usize,
    /// The data slots.
    pub segs: Vec<RxSeg>,
    /// Offloads.
    pub meta: PacketMeta,
    /// A slot had an error status or described more than its page: drop
    /// the packet.
    pub bad: bool,
}

/// What the responses at the head of the pending rx chain hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxParse {
    /// The chain's last slot is not published yet.
    Incomplete,
    /// A whole chain.
    Packet(RxPacket),
    /// More slots than any packet has: the backend is broken.
    TooLong,
}

/// Parses the response chain at the head of `slots` (bounded: at most
/// `MAX_SLOTS + MAX_EXTRAS` slots are looked at).
#[must_use]
pub fn parse_rx(slots: &[RxSlot]) -> RxParse {
    let Some(first) = slots.first() else {
        return RxParse::Incomplete;
    };
    let rsp = |s: &RxSlot| netif_rx_response::read_from_bytes(s).unwrap_or_default();
    let r0 = rsp(first);
    let mut meta = PacketMeta {
        csum_blank: r0.flags & NETRXF_csum_blank != 0,
        data_validated: r0.flags & NETRXF_data_validated != 0,
        gso: None,
    };
    let mut bad = false;
    let mut segs = Vec::new();
    let mut push = |i: usize, r: &netif_rx_response, bad: &mut bool| {
        if r.status < 0 || usize::from(r.offset) + r.status as usize > 4096 {
            *bad = true;
        } else {
            segs.push(RxSeg {
                slot: i,
                offset: r.offset,
                len: r.status as u16,
            });
        }
    };
    push(0, &r0, &mut bad);
    let mut i = 1;
    if r0.flags & NETRXF_extra_info != 0 {
        let mut more = true;
        let mut n = 0;
        while more {
            if n == MAX_EXTRAS {
                return RxParse::TooLong;
            }
            let Some(s) = slots.get(i) else {
                return RxParse::Incomplete;
            };
            let e = netif_extra_info::read_from_prefix(s)
                .map_or_else(|_| netif_extra_info::default(), |(e, _)| e);
            i += 1;
            n += 1;
            more = e.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
            if e.r#type == XEN_NETIF_EXTRA_TYPE_GSO {
                let g = e.u.gso();
                match g.r#type {
                    XEN_NETIF_GSO_TYPE_TCPV4 | XEN_NETIF_GSO_TYPE_TCPV6 if g.size > 0 => {
                        meta.gso = Some(Gso {
                            ipv6: g.r#type == XEN_NETIF_GSO_TYPE_TCPV6,
                            size: g.size,
                        });
                    }
                    _ => bad = true,
                }
            }
        }
    }
    let mut more = r0.flags & NETRXF_more_data != 0;
    let mut data = 1;
    while more {
        if data == MAX_SLOTS {
            return RxParse::TooLong;
        }
        let Some(s) = slots.get(i) else {
            return RxParse::Incomplete;
        };
        let r = rsp(s);
        push(i, &r, &mut bad);
        more = r.flags & NETRXF_more_data != 0;
        i += 1;
        data += 1;
    }
    RxParse::Packet(RxPacket {
        slots: i,
        segs,
        meta,
        bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(offset: u16, flags: u16, status: i16) -> RxSlot {
        let mut s = [0u8; 8];
        s.copy_from_slice(
            netif_rx_response {
                id: 0,
                offset,
                flags,
                status,
            }
            .as_bytes(),
        );
        s
    }

    fn extra(g: Gso) -> RxSlot {
        let mut s = [0u8; 8];
        s.copy_from_slice(gso_extra(g).as_bytes());
        s
    }

    #[test]
    fn test_parse_rx_single_slot() {
        let RxParse::Packet(p) = parse_rx(&[rsp(0, NETRXF_data_validated, 60)]) else {
            panic!()
        };
        assert_eq!(p.slots, 1);
        assert_eq!(
            p.segs,
            alloc::vec![RxSeg {
                slot: 0,
                offset: 0,
                len: 60
            }]
        );
        assert!(p.meta.data_validated && !p.bad);
    }

    #[test]
    fn test_parse_rx_gso_chain() {
        let g = Gso {
            ipv6: false,
            size: 1448,
        };
        let slots = [
            rsp(
                0,
                NETRXF_extra_info | NETRXF_more_data | NETRXF_csum_blank,
                4096,
            ),
            extra(g),
            rsp(0, NETRXF_more_data, 4096),
            rsp(0, 0, 100),
        ];
        let RxParse::Packet(p) = parse_rx(&slots) else {
            panic!()
        };
        assert_eq!(p.slots, 4);
        assert_eq!(p.meta.gso, Some(g));
        assert_eq!(
            p.segs.iter().map(|s| s.slot).collect::<Vec<_>>(),
            alloc::vec![0, 2, 3]
        );
    }

    #[test]
    fn test_parse_rx_incomplete_and_too_long() {
        assert_eq!(
            parse_rx(&[rsp(0, NETRXF_more_data, 10)]),
            RxParse::Incomplete
        );
        let endless: Vec<RxSlot> = (0..40).map(|_| rsp(0, NETRXF_more_data, 10)).collect();
        assert_eq!(parse_rx(&endless), RxParse::TooLong);
    }

    #[test]
    fn test_parse_rx_bad_status_or_offset_marks_bad() {
        let RxParse::Packet(p) = parse_rx(&[rsp(0, 0, NETIF_RSP_ERROR)]) else {
            panic!()
        };
        assert!(p.bad);
        let RxParse::Packet(p) = parse_rx(&[rsp(4000, 0, 200)]) else {
            panic!()
        };
        assert!(p.bad);
    }
}
