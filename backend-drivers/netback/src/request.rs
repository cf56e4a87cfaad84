//! Pure parsing of the transmit ring: a packet is a first request (its
//! `size` is the whole packet's), the extra-info slots it announces
//! (`NETTXF_extra_info`, then `XEN_NETIF_EXTRA_FLAG_MORE`), and the
//! fragments that follow while `NETTXF_more_data` is set. Every slot was
//! copied out of the ring once before it gets here.

use xen_abi::io::netif::*;
use zerocopy::FromBytes;

use crate::offload::ETH_HLEN;

/// A tx ring slot as copied out of the ring.
pub type TxSlot = [u8; NETIF_TX_SRING_ENTRY_SIZE];

/// Most data slots of one packet (`XEN_NETIF_NR_SLOTS_MIN`): a frontend
/// sending more fails its vif, as Linux netback's `fatal_skb_slots`.
pub const MAX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN as usize;
/// Most extra-info slots after one request (one per extra type).
pub const MAX_EXTRAS: usize = (XEN_NETIF_EXTRA_TYPE_MAX - 1) as usize;

/// Why a packet is dropped (its requests get `NETIF_RSP_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The first slot's size is below an Ethernet header.
    #[error("packet of {0} bytes is shorter than an Ethernet header")]
    TooShort(u16),
    /// The fragments add up to more than the packet's size.
    #[error("fragments of {frags} bytes exceed the packet size {size}")]
    SizeMismatch {
        /// The first slot's size.
        size: u16,
        /// The fragments' sizes added up.
        frags: u32,
    },
    /// A slot's data crosses its page.
    #[error("slot data at offset {offset} of {len} bytes crosses the page")]
    CrossesPage {
        /// Offset.
        offset: u16,
        /// Length.
        len: u32,
    },
    /// An extra-info slot has an unknown type.
    #[error("extra info type {0} is invalid")]
    BadExtra(u8),
    /// The GSO extra is not one this backend offers.
    #[error("GSO type {gso_type} with size {size} is invalid")]
    BadGso {
        /// `XEN_NETIF_GSO_TYPE_*`.
        gso_type: u8,
        /// Segment size.
        size: u16,
    },
}

/// A fault that fails the vif (a correct frontend never does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxFatal {
    /// More data slots than `XEN_NETIF_NR_SLOTS_MIN`.
    #[error("a packet uses more than {MAX_SLOTS} slots")]
    TooManySlots,
    /// More extra-info slots than there are types.
    #[error("a request has more than {MAX_EXTRAS} extra info slots")]
    TooManyExtras,
}

/// One slot of a parsed packet and the response it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A data slot: the request.
    Data(netif_tx_request),
    /// An extra-info slot (answered with `NETIF_RSP_NULL`).
    Extra,
}

/// A complete, validated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// Every slot, in ring order (one response each).
    pub slots: Vec<SlotKind>,
    /// The data: `(gref, offset, len)` per data slot, first slot first.
    pub frags: Vec<(u32, u16, u16)>,
    /// The packet's size.
    pub size: u16,
    /// `NETTXF_csum_blank`.
    pub csum_blank: bool,
    /// `NETTXF_data_validated`.
    pub data_validated: bool,
    /// The GSO extra: (`XEN_NETIF_GSO_TYPE_*`, segment size).
    pub gso: Option<(u8, u16)>,
}

/// What the slots at the head of the pending requests hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxParse {
    /// Not all of the packet's slots are published yet.
    Incomplete,
    /// A packet; `Err` for one to drop (with the slots it used).
    Packet(Result<TxPacket, (RequestError, Vec<SlotKind>)>),
    /// The vif must fail.
    Fatal(TxFatal),
}

fn req(slot: &TxSlot) -> netif_tx_request {
    netif_tx_request::read_from_prefix(slot)
        .map_or_else(|_| netif_tx_request::default(), |(r, _)| r)
}

fn extra(slot: &TxSlot) -> netif_extra_info {
    netif_extra_info::read_from_prefix(slot)
        .map_or_else(|_| netif_extra_info::default(), |(r, _)| r)
}

/// Parses the packet at the head of `slots`. Bounded: looks at most at
/// `MAX_SLOTS + MAX_EXTRAS` slots.
#[must_use]
pub fn parse_tx(slots: &[TxSlot]) -> TxParse {
    let Some(first_slot) = slots.first() else {
        return TxParse::Incomplete;
    };
    let first = req(first_slot);
    let mut kinds = vec![SlotKind::Data(first)];
    let mut i = 1;
    let mut gso = None;
    let mut error = None;
    if first.flags & NETTXF_extra_info != 0 {
        let mut more = true;
        let mut n = 0;
        while more {
            if n == MAX_EXTRAS {
                return TxParse::Fatal(TxFatal::TooManyExtras);
            }
            let Some(s) = slots.get(i) else {
                return TxParse::Incomplete;
            };
            let e = extra(s);
            kinds.push(SlotKind::Extra);
            i += 1;
            n += 1;
            more = e.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
            match e.r#type {
                XEN_NETIF_EXTRA_TYPE_GSO => {
                    let g = e.u.gso();
                    let ok = matches!(
                        g.r#type,
                        XEN_NETIF_GSO_TYPE_TCPV4 | XEN_NETIF_GSO_TYPE_TCPV6
                    ) && g.size > 0;
                    if ok {
                        gso = Some((g.r#type, g.size));
                    } else {
                        error.get_or_insert(RequestError::BadGso {
                            gso_type: g.r#type,
                            size: g.size,
                        });
                    }
                }
                // Multicast filter updates and hashes: accepted, not used.
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD
                | XEN_NETIF_EXTRA_TYPE_MCAST_DEL
                | XEN_NETIF_EXTRA_TYPE_HASH => {}
                t => {
                    error.get_or_insert(RequestError::BadExtra(t));
                }
            }
        }
    }
    let mut frags = Vec::new();
    let mut more = first.flags & NETTXF_more_data != 0;
    let mut data_slots = 1;
    let mut frag_bytes: u32 = 0;
    while more {
        if data_slots == MAX_SLOTS {
            return TxParse::Fatal(TxFatal::TooManySlots);
        }
        let Some(s) = slots.get(i) else {
            return TxParse::Incomplete;
        };
        let r = req(s);
        kinds.push(SlotKind::Data(r));
        i += 1;
        data_slots += 1;
        more = r.flags & NETTXF_more_data != 0;
        frag_bytes += u32::from(r.size);
        frags.push((r.gref, r.offset, r.size));
    }
    let fail = |e: RequestError, kinds: Vec<SlotKind>| TxParse::Packet(Err((e, kinds)));
    if let Some(e) = error {
        return fail(e, kinds);
    }
    if usize::from(first.size) < ETH_HLEN {
        return fail(RequestError::TooShort(first.size), kinds);
    }
    if frag_bytes > u32::from(first.size) {
        return fail(
            RequestError::SizeMismatch {
                size: first.size,
                frags: frag_bytes,
            },
            kinds,
        );
    }
    let first_len = u32::from(first.size) - frag_bytes;
    let mut all = Vec::with_capacity(frags.len() + 1);
    all.push((first.gref, first.offset, first_len as u16));
    all.extend(frags);
    for &(_, off, len) in &all {
        if u32::from(off) + u32::from(len) > 4096 {
            return fail(
                RequestError::CrossesPage {
                    offset: off,
                    len: u32::from(len),
                },
                kinds,
            );
        }
    }
    TxParse::Packet(Ok(TxPacket {
        slots: kinds,
        frags: all,
        size: first.size,
        csum_blank: first.flags & NETTXF_csum_blank != 0,
        data_validated: first.flags & NETTXF_data_validated != 0,
        gso,
    }))
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes;

    use super::*;

    fn slot(r: netif_tx_request) -> TxSlot {
        let mut s = [0u8; NETIF_TX_SRING_ENTRY_SIZE];
        s.copy_from_slice(r.as_bytes());
        s
    }

    fn tx(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxSlot {
        slot(netif_tx_request {
            gref,
            offset,
            flags,
            id,
            size,
        })
    }

    fn gso_slot(t: u8, size: u16) -> TxSlot {
        let e = netif_extra_info {
            r#type: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: 0,
            u: netif_extra_info_u::from_gso(netif_extra_info_gso {
                size,
                r#type: t,
                pad: 0,
                features: 0,
            }),
        };
        let mut s = [0u8; NETIF_TX_SRING_ENTRY_SIZE];
        s[..8].copy_from_slice(e.as_bytes());
        s
    }

    #[test]
    fn test_parse_tx_single_slot_packet() {
        let p = parse_tx(&[tx(8, 100, NETTXF_csum_blank, 3, 60)]);
        let TxParse::Packet(Ok(p)) = p else {
            panic!("{p:?}")
        };
        assert_eq!(p.frags, vec![(8, 100, 60)]);
        assert!(p.csum_blank && p.gso.is_none());
        assert_eq!(p.slots.len(), 1);
    }

    #[test]
    fn test_parse_tx_gso_and_fragments() {
        let slots = [
            tx(1, 0, NETTXF_more_data | NETTXF_extra_info, 0, 9000),
            gso_slot(XEN_NETIF_GSO_TYPE_TCPV4, 1448),
            tx(2, 0, NETTXF_more_data, 1, 4096),
            tx(3, 0, 0, 2, 904),
        ];
        let TxParse::Packet(Ok(p)) = parse_tx(&slots) else {
            panic!()
        };
        assert_eq!(p.gso, Some((XEN_NETIF_GSO_TYPE_TCPV4, 1448)));
        assert_eq!(p.frags, vec![(1, 0, 4000), (2, 0, 4096), (3, 0, 904)]);
        assert_eq!(p.slots.len(), 4);
        assert_eq!(p.slots[1], SlotKind::Extra);
    }

    #[test]
    fn test_parse_tx_unfinished_packet_is_incomplete() {
        assert_eq!(
            parse_tx(&[tx(1, 0, NETTXF_more_data, 0, 100)]),
            TxParse::Incomplete
        );
        assert_eq!(
            parse_tx(&[tx(1, 0, NETTXF_extra_info, 0, 100)]),
            TxParse::Incomplete
        );
        assert_eq!(parse_tx(&[]), TxParse::Incomplete);
    }

    #[test]
    fn test_parse_tx_too_many_slots_is_fatal() {
        let slots: Vec<TxSlot> = (0..40)
            .map(|i| tx(i, 0, NETTXF_more_data, i as u16, 100))
            .collect();
        assert_eq!(parse_tx(&slots), TxParse::Fatal(TxFatal::TooManySlots));
    }

    /// A chain of `n` data slots of 100 bytes each (the last ends it).
    fn chain(n: usize, first_flags: u16) -> Vec<TxSlot> {
        (0..n)
            .map(|i| {
                let more = if i + 1 < n { NETTXF_more_data } else { 0 };
                let flags = if i == 0 { more | first_flags } else { more };
                let size = if i == 0 { 100 * n as u16 } else { 100 };
                tx(i as u32, 0, flags, i as u16, size)
            })
            .collect()
    }

    /// The bound is exact: 18 data slots (`XEN_NETIF_NR_SLOTS_MIN`, Linux's
    /// `XEN_NETBK_LEGACY_SLOTS_MAX`) pass, 19 fail the vif (issue 18 item 5b).
    #[test]
    fn test_parse_tx_slot_bound_18_accepted_19_fatal() {
        assert_eq!(MAX_SLOTS, 18);
        let TxParse::Packet(Ok(p)) = parse_tx(&chain(18, 0)) else {
            panic!("18 slots must be accepted")
        };
        assert_eq!(p.slots.len(), 18);
        assert_eq!(p.frags.len(), 18);
        assert_eq!(p.frags[0], (0, 0, 100));
        assert_eq!(
            parse_tx(&chain(19, 0)),
            TxParse::Fatal(TxFatal::TooManySlots)
        );
        // Extra-info slots do not count against the data-slot bound.
        let mut with_gso = chain(18, NETTXF_extra_info);
        with_gso.insert(1, gso_slot(XEN_NETIF_GSO_TYPE_TCPV4, 1448));
        let TxParse::Packet(Ok(p)) = parse_tx(&with_gso) else {
            panic!("18 data slots and a GSO extra must be accepted")
        };
        assert_eq!((p.slots.len(), p.frags.len()), (19, 18));
        let mut with_gso = chain(19, NETTXF_extra_info);
        with_gso.insert(1, gso_slot(XEN_NETIF_GSO_TYPE_TCPV4, 1448));
        assert_eq!(parse_tx(&with_gso), TxParse::Fatal(TxFatal::TooManySlots));
        // Seen before its end, the 19th slot's announcement is already fatal.
        assert_eq!(
            parse_tx(&chain(40, 0)[..19]),
            TxParse::Fatal(TxFatal::TooManySlots)
        );
    }

    #[test]
    fn test_parse_tx_bad_sizes_and_offsets_are_dropped() {
        let short = parse_tx(&[tx(1, 0, 0, 0, 10)]);
        assert!(matches!(
            short,
            TxParse::Packet(Err((RequestError::TooShort(10), _)))
        ));
        let cross = parse_tx(&[tx(1, 4000, 0, 0, 200)]);
        assert!(matches!(
            cross,
            TxParse::Packet(Err((RequestError::CrossesPage { .. }, _)))
        ));
        let mismatch = parse_tx(&[tx(1, 0, NETTXF_more_data, 0, 100), tx(2, 0, 0, 1, 200)]);
        let TxParse::Packet(Err((RequestError::SizeMismatch { .. }, kinds))) = mismatch else {
            panic!()
        };
        assert_eq!(kinds.len(), 2, "both slots are answered");
        let gso = parse_tx(&[tx(1, 0, NETTXF_extra_info, 0, 100), gso_slot(7, 0)]);
        assert!(matches!(
            gso,
            TxParse::Packet(Err((RequestError::BadGso { .. }, _)))
        ));
    }
}
