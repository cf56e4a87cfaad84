//! `xen-netif-offload`: offloads between the netif protocol and a Linux
//! TAP's virtio-net header
//! (`struct virtio_net_hdr`, `IFF_VNET_HDR`): where a partial checksum
//! starts and is stored (the netif protocol does not carry it, so it is
//! found in the packet's headers, as Linux netback's
//! `skb_checksum_setup` does), and the checksum itself when a frontend
//! cannot take a partial one.
//!
//! Shared by netback (its Dom0 TAP) and the PV guest runtime (the guest's
//! `eth<N>` TAP, through netfront): pure computation, `no_std`, no I/O.
#![cfg_attr(not(test), no_std)]

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const VNET_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VNET_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const VNET_GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VNET_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const VNET_GSO_ECN: u8 = 0x80;
/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// `ETH_HLEN`.
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// `struct virtio_net_hdr` in host byte order (the TAP's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (GSO).
    pub hdr_len: u16,
    /// Segment payload size (GSO).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the 10 header bytes.
    #[must_use]
    pub fn decode(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    /// Encodes the 10 header bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Where a packet's transport checksum lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsumInfo {
    /// Offset of the transport header (`csum_start`).
    pub start: u16,
    /// Offset of the checksum field in it (16 for TCP, 6 for UDP).
    pub offset: u16,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// TCP (else UDP).
    pub tcp: bool,
    /// End of the TCP header (`hdr_len` for GSO); the UDP header's end for UDP.
    pub headers_end: u16,
}

/// Finds the transport checksum of an Ethernet frame whose headers are in
/// `head` (the first bytes of the frame; at least the headers): Ethernet
/// (one optional 802.1Q tag), IPv4 (any IHL, not a fragment) or IPv6
/// (no extension headers), then TCP or UDP. `None` for anything else.
#[must_use]
pub fn checksum_info(head: &[u8]) -> Option<CsumInfo> {
    let be16 =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*head.get(i)?, *head.get(i + 1)?])) };
    let mut l3 = ETH_HLEN;
    let mut proto = be16(12)?;
    if proto == ETH_P_8021Q {
        proto = be16(16)?;
        l3 += 4;
    }
    let (l4, l4proto, ipv6) = match proto {
        ETH_P_IP => {
            let vihl = *head.get(l3)?;
            if vihl >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(vihl & 0xf) * 4;
            if ihl < 20 {
                return None;
            }
            // More fragments or a fragment offset: not a whole datagram.
            if be16(l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            (l3 + ihl, *head.get(l3 + 9)?, false)
        }
        ETH_P_IPV6 => {
            if *head.get(l3)? >> 4 != 6 {
                return None;
            }
            (l3 + 40, *head.get(l3 + 6)?, true)
        }
        _ => return None,
    };
    let (offset, end, tcp) = match l4proto {
        IPPROTO_TCP => {
            let doff = usize::from(*head.get(l4 + 12)? >> 4) * 4;
            if doff < 20 {
                return None;
            }
            (16, l4 + doff, true)
        }
        IPPROTO_UDP => (6, l4 + 8, false),
        _ => return None,
    };
    Some(CsumInfo {
        start: u16::try_from(l4).ok()?,
        offset,
        ipv6,
        tcp,
        headers_end: u16::try_from(end).ok()?,
    })
}

/// One's-complement sum of `data` added to `sum` (RFC 1071), 16-bit words
/// in network order.
#[must_use]
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
        if sum >> 60 != 0 {
            sum = (sum & 0xffff_ffff) + (sum >> 32);
        }
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds a sum to 16 bits.
#[must_use]
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a partial checksum in place (what the kernel does for a
/// `CHECKSUM_PARTIAL` packet a device cannot checksum): the field at
/// `start + offset` holds the pseudo-header sum; the one's complement of
/// the sum from `start` to the end is stored there. `false` if the
/// offsets are outside the frame.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if field + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let sum = csum_add(0, &frame[start..]);
    let mut c = !csum_fold(sum);
    if c == 0 && offset == 6 {
        // UDP: a computed 0 is sent as 0xffff.
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        f[14] = 0x45;
        let tot = (20 + 20 + payload.len()) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        f[22] = 64;
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34 + 12] = 5 << 4;
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn test_checksum_info_ipv4_tcp_finds_offsets() {
        let f = ipv4_tcp(b"hello");
        let c = checksum_info(&f).expect("tcp");
        assert_eq!(
            (c.start, c.offset, c.tcp, c.ipv6, c.headers_end),
            (34, 16, true, false, 54)
        );
    }

    #[test]
    fn test_checksum_info_fragment_or_unknown_is_none() {
        let mut f = ipv4_tcp(b"x");
        f[20] = 0x20; // more fragments
        assert!(checksum_info(&f).is_none());
        let mut g = ipv4_tcp(b"x");
        g[23] = 1; // ICMP
        assert!(checksum_info(&g).is_none());
        assert!(checksum_info(&[0u8; 10]).is_none());
    }

    #[test]
    fn test_complete_checksum_tcp_verifies_to_zero() {
        // Arrange: pseudo-header sum in the field, as a sender with
        // CHECKSUM_PARTIAL leaves it.
        let mut f = ipv4_tcp(b"some payload!");
        let tcp_len = (f.len() - 34) as u64;
        let pseudo = csum_add(0, &f[26..34]) + u64::from(IPPROTO_TCP) + tcp_len;
        let p = csum_fold(pseudo);
        f[50..52].copy_from_slice(&p.to_be_bytes());

        // Act
        assert!(complete_checksum(&mut f, 34, 16));

        // Assert: the full sum over pseudo header and segment is 0xffff.
        let total = csum_add(0, &f[26..34]) + u64::from(IPPROTO_TCP) + tcp_len;
        let total = csum_add(total, &f[34..]);
        assert_eq!(csum_fold(total), 0xffff);
    }

    #[test]
    fn test_vnet_hdr_roundtrips() {
        let h = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: VNET_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::decode(&h.encode()), h);
    }

    #[test]
    fn test_complete_checksum_out_of_range_is_refused() {
        let mut f = vec![0u8; 20];
        assert!(!complete_checksum(&mut f, 19, 16));
        assert!(!complete_checksum(&mut f, usize::MAX, 16));
    }
}
