//! netfront against a hostile test-played netback: unknown tx ids, an rx
//! response producer beyond the posted requests and endless rx chains fail
//! the device (Closing, no panic); an rx error status drops only its frame.

mod common;

use common::*;
use xen_abi::io::netif::*;
use xen_front_platform::fake::FakePlatform;
use xen_netfront::{FailReason, NetfrontError, PacketMeta, MAX_FRAME};

#[test]
fn test_netfront_unknown_tx_id_fails_the_device() {
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    assert!(f
        .transmit(0, &[0u8; 60], PacketMeta::default())
        .expect("transmit"));
    f.push_tx(0).expect("push");
    let _ = b.tx_requests();
    b.tx_respond(200, NETIF_RSP_OKAY);
    let e = f.reap_tx(0).expect_err("unknown id");
    assert!(
        matches!(
            e,
            NetfrontError::Failed(FailReason::UnknownTxId { id: 200 })
        ),
        "{e}"
    );
    assert_eq!(b.fe_node("state").as_deref(), Some("5"), "Closing");
    assert!(matches!(
        f.transmit(0, &[0u8; 60], PacketMeta::default()),
        Err(NetfrontError::Failed(_))
    ));
}

#[test]
fn test_netfront_duplicate_tx_response_fails_the_device() {
    // Arrange: two frames in flight.
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    for _ in 0..2 {
        assert!(f
            .transmit(0, &[0u8; 60], PacketMeta::default())
            .expect("transmit"));
    }
    f.push_tx(0).expect("push");
    let reqs = b.tx_requests();
    let id = u16::from_ne_bytes([reqs[0][8], reqs[0][9]]);

    // Act: both answered with the first one's id.
    b.tx_respond(id, NETIF_RSP_OKAY);
    b.tx_respond(id, NETIF_RSP_OKAY);
    let e = f.reap_tx(0).expect_err("a duplicate id");

    // Assert
    assert!(
        matches!(e, NetfrontError::Failed(FailReason::UnknownTxId { id: x }) if x == id),
        "{e}"
    );
}

#[test]
fn test_netfront_rx_producer_overflow_fails_the_device() {
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    b.corrupt_rx_rsp_prod(10_000);
    let mut buf = vec![0u8; MAX_FRAME];
    let e = f.receive(0, &mut buf).expect_err("overflow");
    assert!(
        matches!(e, NetfrontError::Failed(FailReason::RingCorrupt(_))),
        "{e}"
    );
}

#[test]
fn test_netfront_endless_rx_chain_fails_the_device() {
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    for _ in 0..40 {
        b.rx_raw(netif_rx_response {
            id: 0,
            offset: 0,
            flags: NETRXF_more_data,
            status: 100,
        });
    }
    b.rx.as_mut().expect("rx").publish_responses();
    let mut buf = vec![0u8; MAX_FRAME];
    let e = f.receive(0, &mut buf).expect_err("too long");
    assert!(
        matches!(e, NetfrontError::Failed(FailReason::BadRxResponse)),
        "{e}"
    );
}

#[test]
fn test_netfront_rx_error_or_bad_offset_drops_only_that_frame() {
    let p = FakePlatform::new(GUEST);
    let mut b = FakeBack::new(&p);
    let mut f = connected(&p, &mut b);
    b.rx_raw(netif_rx_response {
        id: 0,
        offset: 0,
        flags: 0,
        status: NETIF_RSP_ERROR,
    });
    b.rx_raw(netif_rx_response {
        id: 1,
        offset: 4000,
        flags: 0,
        status: 1000,
    });
    b.rx.as_mut().expect("rx").publish_responses();
    b.rx_deliver(&[7u8; 100], 0);
    let mut buf = vec![0u8; MAX_FRAME];
    let got = f
        .receive(0, &mut buf)
        .expect("receive")
        .expect("the good frame");
    assert_eq!(got.0, 100);
    assert_eq!(f.stats().rx_errors, 2);
    assert!(f.failure().is_none());
}
