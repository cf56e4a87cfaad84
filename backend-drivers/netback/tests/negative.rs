//! Hostile frontends against netback: a guest domain attached in the test
//! process (a real `xen-pvguest` runtime on a private shim daemon) plays a
//! hand-written netfront: it grants tx and rx rings and pages and writes
//! netif requests itself. The backend's TAP is real (no bridge; the test
//! counts its kernel-side statistics and injects frames with an
//! `AF_PACKET` socket). Bad packets are dropped with error responses
//! while the vif keeps serving; a packet of too many slots or a corrupt
//! producer index fails only that vif, another one keeps working.
//!
//! Needs root (the shim daemon, TAP devices).

mod common;

use common::*;
use xen_abi::io::netif::*;
use xen_front_platform::Platform;
use xen_netback::FailureReason;

#[test]
fn test_netback_valid_packets_reach_the_tap_both_ways() {
    // Arrange
    let w = World::start("nb-ok");
    let be = backend("ok");
    let mut f = Front::new(&w.rt);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let before = tap_rx_packets(&be);
    let pkt = frame(6000);
    f.pages.write(0, &pkt[..4096]).expect("page 0");
    f.pages.write(4096, &pkt[4096..]).expect("page 1");
    for i in 0..20 {
        let g = f.rx_refs[i];
        f.post_rx(i as u16, g);
    }

    // Act: a two-slot packet out; one frame in.
    let (g0, g1) = (f.refs[0], f.refs[1]);
    f.send(&[tx(g0, 0, NETTXF_more_data, 7, 6000), tx(g1, 0, 0, 8, 1904)]);
    let rsps = f.tx_responses(2);
    let after = wait_rx_packets(&be, before + 1);
    let incoming = frame(1000);
    inject(&be.config().ifname, &incoming);
    // The kernel may have queued its own frames (IPv6 MLD) first: take
    // responses until ours, checking each lands in its request's slot.
    let mut r = None;
    for slot in 0..20u16 {
        let x = f.rx_response(STEP).expect("an rx response");
        assert_eq!(
            (x.id, x.offset),
            (slot, 0),
            "rx response in the request's slot"
        );
        if x.status == 1000 {
            r = Some((slot, x));
            break;
        }
    }
    let (slot, r) = r.expect("our frame arrives");

    // Assert
    assert_eq!(
        rsps.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        vec![(7, NETIF_RSP_OKAY), (8, NETIF_RSP_OKAY)]
    );
    assert_eq!(after, before + 1, "the packet reached the TAP");
    assert_eq!(r.flags & NETRXF_more_data, 0);
    let mut got = vec![0u8; 1000];
    f.rx_pages
        .read(usize::from(slot) * 4096, &mut got)
        .expect("rx page");
    assert_eq!(got, incoming);
    assert!(dev.failure().is_none());
    let m = dev.disconnect();
    assert_eq!(m.tx_packets, 1);
    assert!(m.rx_packets >= 1);
}

#[test]
fn test_netback_bad_packets_are_dropped_and_the_vif_keeps_serving() {
    // Arrange
    let w = World::start("nb-bad");
    let be = backend("bad");
    let mut f = Front::new(&w.rt);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let before = tap_rx_packets(&be);
    f.pages.write(0, &frame(100)).expect("page");
    let g = f.refs[0];

    // Act
    let cases: Vec<(&str, Vec<netif_tx_request>)> = vec![
        ("bad grant", vec![tx(99_999, 0, 0, 1, 100)]),
        ("ungranted ref", vec![tx(g + 5000, 0, 0, 2, 100)]),
        ("crosses the page", vec![tx(g, 4000, 0, 3, 200)]),
        ("shorter than Ethernet", vec![tx(g, 0, 0, 4, 10)]),
        (
            "fragments exceed size",
            vec![tx(g, 0, NETTXF_more_data, 5, 100), tx(g, 0, 0, 6, 200)],
        ),
        (
            "checksum offload on no TCP/UDP",
            vec![tx(g, 0, NETTXF_csum_blank, 7, 100)],
        ),
    ];
    let mut statuses = Vec::new();
    for (what, slots) in &cases {
        f.send(slots);
        let r = f.tx_responses(slots.len());
        statuses.push((*what, r.iter().map(|r| r.status).collect::<Vec<_>>()));
    }
    f.send(&[tx(g, 0, 0, 9, 100)]);
    let good = f.tx_responses(1);

    // Assert
    for (what, st) in &statuses {
        assert!(st.iter().all(|&s| s == NETIF_RSP_ERROR), "{what}: {st:?}");
    }
    assert_eq!((good[0].id, good[0].status), (9, NETIF_RSP_OKAY));
    assert_eq!(
        wait_rx_packets(&be, before + 1),
        before + 1,
        "only the good packet reached the TAP"
    );
    assert!(
        dev.failure().is_none(),
        "dropping packets does not fail the vif"
    );
    let m = dev.disconnect();
    assert_eq!(m.tx_dropped, cases.len() as u64);
}

#[test]
fn test_netback_too_many_slots_or_ring_overflow_fail_only_that_vif() {
    // Arrange: two vifs of the same guest.
    let w = World::start("nb-fatal");
    let (be1, be2, be3) = (backend("f1"), backend("f2"), backend("f3"));
    let mut f1 = Front::new(&w.rt);
    let mut f2 = Front::new(&w.rt);
    let mut f3 = Front::new(&w.rt);
    let d1 = be1
        .connect(&w.handles, w.rt.domid(), &f1.params())
        .expect("connect 1");
    let d2 = be2
        .connect(&w.handles, w.rt.domid(), &f2.params())
        .expect("connect 2");
    let d3 = be3
        .connect(&w.handles, w.rt.domid(), &f3.params())
        .expect("connect 3");
    f3.pages.write(0, &frame(100)).expect("page");
    let before3 = tap_rx_packets(&be3);

    // Act: vif 1 chains 40 slots; vif 2 publishes a producer 1000 ahead.
    let g = f1.refs[0];
    let chain: Vec<netif_tx_request> = (0..40)
        .map(|i| tx(g, 0, NETTXF_more_data, i, 100))
        .collect();
    f1.send(&chain);
    let prod = f2.tx.req_prod_pvt().wrapping_add(1000);
    f2.tx.publish_requests();
    overwrite_req_prod(&f2, prod);
    w.rt.platform().evtchn_notify(f2.port).expect("notify");
    let g3 = f3.refs[0];
    f3.send(&[tx(g3, 0, 0, 1, 100)]);
    let ok3 = f3.tx_responses(1);

    // Assert
    let e1 = d1.wait_failure(STEP).expect("vif 1 fails");
    let e2 = d2.wait_failure(STEP).expect("vif 2 fails");
    assert!(matches!(e1.reason, FailureReason::Fatal(_)), "{e1}");
    assert!(
        matches!(e2.reason, FailureReason::RingOverflow("tx")),
        "{e2}"
    );
    assert_eq!((ok3[0].id, ok3[0].status), (1, NETIF_RSP_OKAY));
    assert_eq!(wait_rx_packets(&be3, before3 + 1), before3 + 1);
    assert!(d3.failure().is_none(), "the other vif keeps working");
    d1.disconnect();
    d2.disconnect();
    d3.disconnect();
}

#[test]
fn test_netback_bad_rx_grant_errors_that_slot_and_the_vif_keeps_receiving() {
    // Arrange: slot 0 names a grant that does not exist, the rest are good.
    let w = World::start("nb-rxbad");
    let be = backend("rxb");
    let mut f = Front::new(&w.rt);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    f.post_rx(0, 99_999);
    for i in 1..40 {
        let g = f.rx_refs[i];
        f.post_rx(i as u16, g);
    }
    f.kick();

    // Act: the first frame (ours or the kernel's own) meets the bad
    // slot; then ours again.
    let incoming = frame(700);
    inject(&be.config().ifname, &incoming);
    let first = f.rx_response(STEP).expect("a response");
    inject(&be.config().ifname, &incoming);
    let mut ours = None;
    for slot in 1..40u16 {
        let x = f.rx_response(STEP).expect("a response");
        if x.status == 700 {
            ours = Some((slot, x));
            break;
        }
    }

    // Assert
    assert_eq!(
        (first.id, first.status),
        (0, NETIF_RSP_ERROR),
        "slot 0 answers with an error"
    );
    let (slot, r) = ours.expect("our frame arrives after the bad slot");
    assert_eq!(r.id, slot);
    let mut got = vec![0u8; 700];
    f.rx_pages
        .read(usize::from(slot) * 4096, &mut got)
        .expect("rx page");
    assert_eq!(got, incoming);
    assert!(
        dev.failure().is_none(),
        "a bad rx grant does not fail the vif"
    );
    assert!(dev.disconnect().rx_dropped >= 1);
}
