//! netback serving well-behaved hand-written frontends: a TCP segment
//! train with checksum offload and a GSO extra slot goes to the TAP as one
//! GSO packet (the kernel accepts its virtio-net header), and two queues
//! each serve their own rings on their own TAP queue. Needs root.

mod common;

use common::*;
use xen_abi::io::netif::*;
use xen_netback::{FrontendParams, NetBackend, NetConfig};
use zerocopy::IntoBytes;

/// An Ethernet + IPv4 + TCP frame of `len` bytes with the pseudo-header
/// sum in the checksum field (what a sender with a partial checksum leaves).
fn tcp_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[20] = 0x40; // DF
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[192, 0, 2, 1]);
    f[30..34].copy_from_slice(&[192, 0, 2, 2]);
    f[34..36].copy_from_slice(&5001u16.to_be_bytes());
    f[36..38].copy_from_slice(&5002u16.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x10; // ACK
    for (i, b) in f.iter_mut().enumerate().skip(54) {
        *b = i as u8;
    }
    f
}

#[test]
fn test_netback_gso_tcp_train_goes_to_the_tap_as_one_gso_packet() {
    // Arrange
    let w = World::start("nb-gso");
    let be = backend("gso");
    let mut f = Front::new(&w.rt);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let pkt = tcp_frame(9014);
    for (i, c) in pkt.chunks(4096).enumerate() {
        f.pages.write(i * 4096, c).expect("tx page");
    }
    let (g0, g1, g2) = (f.refs[0], f.refs[1], f.refs[2]);
    let extra = netif_extra_info {
        r#type: XEN_NETIF_EXTRA_TYPE_GSO,
        flags: 0,
        u: netif_extra_info_u::from_gso(netif_extra_info_gso {
            size: 1448,
            r#type: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        }),
    };
    let mut es = [0u8; 12];
    es[..8].copy_from_slice(extra.as_bytes());
    let before = tap_rx_packets(&be);

    // Act
    let flags = NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank | NETTXF_data_validated;
    f.tx.push_request(&req_slot(tx(g0, 0, flags, 1, 9014)))
        .expect("slot");
    f.tx.push_request(&es).expect("extra");
    f.tx.push_request(&req_slot(tx(g1, 0, NETTXF_more_data, 2, 4096)))
        .expect("slot");
    f.tx.push_request(&req_slot(tx(g2, 0, 0, 3, 9014 - 8192)))
        .expect("slot");
    f.kick();
    let r = f.tx_responses(4);

    // Assert: the kernel took the GSO packet (a bad virtio-net header is
    // refused with EINVAL, answered NETIF_RSP_DROPPED).
    assert_eq!(
        r.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![
            NETIF_RSP_OKAY,
            NETIF_RSP_NULL,
            NETIF_RSP_OKAY,
            NETIF_RSP_OKAY
        ]
    );
    assert!(wait_rx_packets(&be, before + 1) > before);
    let m = dev.disconnect();
    assert_eq!((m.tx_packets, m.tx_dropped), (1, 0));
}

fn req_slot(r: netif_tx_request) -> [u8; 12] {
    let mut s = [0u8; 12];
    s.copy_from_slice(r.as_bytes());
    s
}

#[test]
fn test_netback_two_queues_each_serve_their_rings() {
    // Arrange
    let w = World::start("nb-mq");
    let mut c = NetConfig::new(0, 0);
    c.ifname = format!("nbt{}mq", std::process::id() % 100_000);
    c.bridge = None;
    c.max_queues = 2;
    let be = NetBackend::new(c).expect("TAP");
    let mut q0 = Front::new(&w.rt);
    let mut q1 = Front::new(&w.rt);
    let mut p: FrontendParams = q0.params();
    p.queues.extend(q1.params().queues);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &p)
        .expect("connect two queues");
    let before = tap_rx_packets(&be);

    // Act
    for (i, f) in [&mut q0, &mut q1].into_iter().enumerate() {
        f.pages.write(0, &frame(200)).expect("page");
        let g = f.refs[0];
        f.send(&[tx(g, 0, 0, 10 + i as u16, 200)]);
    }
    let r0 = q0.tx_responses(1);
    let r1 = q1.tx_responses(1);

    // Assert
    assert_eq!(dev.nr_queues(), 2);
    assert_eq!((r0[0].id, r0[0].status), (10, NETIF_RSP_OKAY));
    assert_eq!((r1[0].id, r1[0].status), (11, NETIF_RSP_OKAY));
    assert_eq!(wait_rx_packets(&be, before + 2), before + 2);
    let m = dev.disconnect();
    assert_eq!(m.tx_packets, 2);
}
