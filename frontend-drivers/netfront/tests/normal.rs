//! netfront against a well-behaved test-played netback: the handshake,
//! transmit with scatter-gather and GSO, receive with re-posting.

mod common;

use common::*;
use xen_abi::io::netif::*;
use xen_front_platform::fake::FakePlatform;
use xen_netfront::{Gso, PacketMeta, MAX_FRAME};
use zerocopy::FromBytes;

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn test_netfront_handshake_writes_netif_keys_and_connects() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);

    // Act
    let f = connected(&p, &mut b);

    // Assert
    assert_eq!(
        b.fe_node("state").as_deref(),
        Some("4"),
        "Connected after the backend"
    );
    assert_eq!(f.mac(), [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]);
    assert_eq!(f.mtu(), 1500);
    assert_eq!(f.offloads(), (true, true, true));
    for k in [
        "feature-sg",
        "feature-gso-tcpv4",
        "feature-gso-tcpv6",
        "feature-ipv6-csum-offload",
    ] {
        assert_eq!(b.fe_node(k).as_deref(), Some("1"), "{k}");
    }
    assert_eq!(b.fe_node("feature-no-csum-offload").as_deref(), Some("0"));
    assert!(b.fe_node("event-channel").is_none(), "split channels");
    // Every rx page is posted: 256 requests.
    assert_eq!(
        b.rx.as_ref()
            .expect("rx")
            .unconsumed_requests()
            .expect("rx"),
        256
    );
}

#[test]
fn test_netfront_transmit_gso_frame_spans_slots_with_extra_info() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    let data = frame(9000);
    let meta = PacketMeta {
        csum_blank: true,
        data_validated: false,
        gso: Some(Gso {
            ipv6: false,
            size: 1448,
        }),
    };

    // Act
    assert!(f.transmit(0, &data, meta).expect("transmit"));
    f.push_tx(0).expect("push");
    let slots = b.tx_requests();

    // Assert: first slot (whole size), GSO extra, two fragments.
    assert_eq!(slots.len(), 4);
    let r0 = netif_tx_request::read_from_prefix(&slots[0])
        .expect("req")
        .0;
    assert_eq!(r0.size, 9000);
    assert_eq!(
        r0.flags & (NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank),
        NETTXF_more_data | NETTXF_extra_info | NETTXF_csum_blank
    );
    let e = netif_extra_info::read_from_prefix(&slots[1])
        .expect("extra")
        .0;
    assert_eq!(
        (e.r#type, e.u.gso().size, e.u.gso().r#type),
        (XEN_NETIF_EXTRA_TYPE_GSO, 1448, XEN_NETIF_GSO_TYPE_TCPV4)
    );
    let r1 = netif_tx_request::read_from_prefix(&slots[2])
        .expect("req")
        .0;
    let r2 = netif_tx_request::read_from_prefix(&slots[3])
        .expect("req")
        .0;
    assert_eq!((r1.size, r2.size), (4096, 9000 - 8192));
    assert_eq!(r2.flags & NETTXF_more_data, 0);
    let mut got = b.tx_data(&r0, 4096);
    got.extend(b.tx_data(&r1, 4096));
    got.extend(b.tx_data(&r2, 808));
    assert_eq!(got, data);
    // Responses free the buffers (the extra gets NETIF_RSP_NULL).
    b.tx_respond(r0.id, NETIF_RSP_OKAY);
    b.tx_respond(0, NETIF_RSP_NULL);
    b.tx_respond(r1.id, NETIF_RSP_OKAY);
    b.tx_respond(r2.id, NETIF_RSP_OKAY);
    assert_eq!(f.reap_tx(0).expect("reap"), 3);
    assert_eq!(f.stats().tx_packets, 1);
}

#[test]
fn test_netfront_fills_ring_then_waits_for_responses() {
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    let data = frame(MAX_FRAME);
    let mut n = 0;
    while f
        .transmit(0, &data, PacketMeta::default())
        .expect("transmit")
    {
        n += 1;
        assert!(n < 100, "the ring must fill");
    }
    assert_eq!(n, 256 / 16, "16 slots per 64 KiB frame, 256 tx pages");
}

#[test]
fn test_netfront_receive_multi_slot_frame_and_repost() {
    // Arrange
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    let data = frame(5000);
    let mut buf = vec![0u8; MAX_FRAME];

    // Act
    b.rx_deliver(&data, NETRXF_data_validated);
    let got = f.receive(0, &mut buf).expect("receive").expect("a frame");
    f.push_rx(0).expect("repost");
    let none = f.receive(0, &mut buf).expect("receive");

    // Assert
    assert_eq!(got.0, 5000);
    assert!(got.1.data_validated);
    assert_eq!(&buf[..5000], &data[..]);
    assert!(none.is_none());
    assert_eq!(
        b.rx.as_ref()
            .expect("rx")
            .unconsumed_requests()
            .expect("rx"),
        256,
        "both pages re-posted"
    );
}

#[test]
fn test_netfront_take_rx_holds_the_pages_until_release() {
    // Arrange: two frames delivered (two slots and one slot).
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    let (d1, d2) = (frame(5000), frame(60));
    b.rx_deliver(&d1, NETRXF_data_validated);
    b.rx_deliver(&d2, 0);
    let posted = |b: &FakeBack<'_>| {
        b.rx.as_ref()
            .expect("rx")
            .unconsumed_requests()
            .expect("rx")
    };

    // Act: take both without releasing, read them in place.
    let read = |fr: &xen_netfront::RxFrame| -> Vec<u8> {
        let mut v = Vec::new();
        for g in fr.frags() {
            // SAFETY: a taken frame's fragments stay valid until release.
            v.extend_from_slice(unsafe { core::slice::from_raw_parts(g.ptr, g.len) });
        }
        v
    };
    let f1 = f.take_rx(0).expect("take").expect("frame 1");
    let f2 = f.take_rx(0).expect("take").expect("frame 2");
    let got = (read(&f1), read(&f2));
    let none = f.take_rx(0).expect("take").is_none();
    f.push_rx(0).expect("push");
    let while_held = posted(&b);
    f.release_rx(0).expect("release");
    f.push_rx(0).expect("push");
    let after = posted(&b);

    // Assert
    assert_eq!(got.0, d1);
    assert_eq!(got.1, d2);
    assert!(f1.meta.data_validated && !f2.meta.data_validated);
    assert_eq!((f1.len(), f2.len()), (5000, 60));
    assert!(none);
    assert_eq!(while_held, 253, "the three held pages are not posted");
    assert_eq!(after, 256, "all three re-posted on release");
    assert_eq!(f.queue_stats(0).map(|s| s.rx_packets), Some(2));
}

#[test]
fn test_netfront_multi_queue_writes_per_queue_keys() {
    // Arrange: the backend offers 4 queues, the frontend wants 2 (514
    // pages and grants each).
    let p = FakePlatform::with_limits(GUEST, 4096, 4096);
    let b = FakeBack::new(&p);
    let cfg = xen_netfront::NetfrontConfig {
        max_queues: 2,
        ..xen_netfront::NetfrontConfig::default()
    };
    let mut f = xen_netfront::NetFront::new(&p, DEVID, cfg).expect("new");
    b.init_wait();
    xen_front_platform::Platform::xs_write(
        &p,
        xen_front_platform::XBT_NIL,
        &format!("{}/multi-queue-max-queues", b.be),
        b"4",
    )
    .expect("offer 4 queues");

    // Act
    pump(&p, &mut f);

    // Assert
    assert_eq!(f.queues(), 2);
    assert_eq!(b.fe_node("multi-queue-num-queues").as_deref(), Some("2"));
    assert!(
        b.fe_node("tx-ring-ref").is_none(),
        "no flat keys with queues"
    );
    for q in 0..2 {
        for k in [
            "tx-ring-ref",
            "rx-ring-ref",
            "event-channel-tx",
            "event-channel-rx",
        ] {
            assert!(
                b.fe_node(&format!("queue-{q}/{k}")).is_some(),
                "queue-{q}/{k}"
            );
        }
    }
    let (t0, r0) = f.ports(0).expect("queue 0");
    let (t1, r1) = f.ports(1).expect("queue 1");
    assert!(
        t0 != t1 && r0 != r1 && t0 != r0,
        "own ports per queue and direction"
    );
}
