//! A hostile or broken backend: the frontend fails the device cleanly
//! (Closing, outstanding requests completed with errors, later calls
//! refused) and never panics.

mod common;

use common::{connected, pump, run_until, FakeBack, Offer, DEVID};
use xen_abi::io::blkif::{blkif_response, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY};
use xen_blkfront::{BlkFront, BlkStatus, BlkfrontConfig, BlkfrontError, FailReason, FrontState};
use xen_front_platform::fake::FakePlatform;
use xen_front_platform::{Platform, XBT_NIL};

fn platform() -> FakePlatform {
    FakePlatform::with_limits(common::GUEST, 4096, 8192)
}

fn assert_failed_cleanly(
    front: &mut BlkFront<'_, FakePlatform>,
    back: &FakeBack<'_>,
    outstanding: usize,
) {
    assert_eq!(front.state(), FrontState::Failed);
    assert_eq!(back.fe_state().as_deref(), Some("5"), "frontend Closing");
    let errs = front.take_completions();
    assert_eq!(errs.len(), outstanding);
    assert!(errs.iter().all(|c| c.status == BlkStatus::Error));
    assert!(matches!(
        front.submit_read(0, 512),
        Err(BlkfrontError::Failed(_))
    ));
    assert!(matches!(
        front.poll_completions(),
        Err(BlkfrontError::Failed(_))
    ));
    assert!(matches!(front.wait(None), Err(BlkfrontError::Failed(_))));
    assert_eq!(front.outstanding(), 0);
}

#[test]
fn test_response_with_unknown_id_fails_device() {
    // Arrange
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_read(0, 4096).expect("read");
    front.submit_read(8, 4096).expect("read");
    back.take_and_hold(2, false);

    // Act
    back.push_raw(
        0,
        blkif_response {
            id: 0xdead_beef,
            operation: BLKIF_OP_READ,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    let r = front.poll_completions();

    // Assert
    assert_eq!(
        r,
        Err(BlkfrontError::Failed(FailReason::UnknownResponseId {
            id: 0xdead_beef
        }))
    );
    assert_failed_cleanly(&mut front, &back, 2);
}

/// A response for a request on queue 0 that arrives on queue 1 fails the
/// device, even with a valid id and operation and room on queue 1's ring
/// (issue 18 item 5c).
#[test]
fn test_response_on_the_wrong_queue_fails_device() {
    // Arrange: two queues, one read on each (round-robin), both held.
    let p = platform();
    let offer = Offer {
        max_queues: 2,
        ..Offer::default()
    };
    let cfg = BlkfrontConfig {
        max_queues: 2,
        ..BlkfrontConfig::default()
    };
    let (mut front, mut back) = connected(&p, offer, cfg);
    assert_eq!(front.queues(), 2);
    front.submit_read(0, 512).expect("read");
    front.submit_read(8, 512).expect("read");
    assert_eq!(back.take_and_hold(2, false), 2);
    let queues: Vec<usize> = back.held.iter().map(|(q, _)| *q).collect();
    assert_eq!(queues, vec![0, 1], "one request per queue");
    let id0 = xen_blkfront::request::decode_request(&back.held[0].1).id;

    // Act: queue 0's request answered, well-formed, on queue 1.
    back.push_raw(
        1,
        blkif_response {
            id: id0,
            operation: BLKIF_OP_READ,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    let r = front.poll_completions();

    // Assert
    assert_eq!(
        r,
        Err(BlkfrontError::Failed(FailReason::UnknownResponseId {
            id: id0
        }))
    );
    assert_failed_cleanly(&mut front, &back, 2);
}

#[test]
fn test_duplicate_response_fails_device() {
    // Arrange: a request answered properly, then a second request that
    // reuses its id slot (new generation).
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_read(0, 512).expect("read");
    back.take_and_hold(1, false);
    let stale = xen_blkfront::request::decode_request(&back.held[0].1).id;
    back.answer_held();
    assert_eq!(front.poll_completions().expect("good answer").len(), 1);
    front.submit_read(1, 512).expect("read");
    back.take_and_hold(1, false);
    let current = xen_blkfront::request::decode_request(&back.held[0].1).id;
    assert_eq!(current & 0xffff_ffff, stale & 0xffff_ffff, "same slot");
    assert_ne!(current, stale);

    // Act: replay the first response.
    back.push_raw(
        0,
        blkif_response {
            id: stale,
            operation: BLKIF_OP_READ,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    let r = front.poll_completions();

    // Assert
    assert_eq!(
        r,
        Err(BlkfrontError::Failed(FailReason::UnknownResponseId {
            id: stale
        }))
    );
    assert_failed_cleanly(&mut front, &back, 1);
}

#[test]
fn test_response_producer_overflow_fails_device() {
    // Arrange
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_write(0, &[1u8; 512]).expect("write");
    back.take_and_hold(1, false);

    // Act: rsp_prod jumps far past the one published request.
    back.write_rsp_prod(0, 1000);
    let r = front.poll_completions();

    // Assert
    assert!(
        matches!(r, Err(BlkfrontError::Failed(FailReason::RingCorrupt(_)))),
        "{r:?}"
    );
    assert_failed_cleanly(&mut front, &back, 1);
}

#[test]
fn test_response_producer_overflow_seen_by_wait_fails_device() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_read(0, 512).expect("read");
    back.write_rsp_prod(0, u32::MAX);
    assert!(matches!(
        front.wait(None),
        Err(BlkfrontError::Failed(FailReason::RingCorrupt(_)))
    ));
    assert_failed_cleanly(&mut front, &back, 1);
}

#[test]
fn test_response_with_wrong_operation_fails_device() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_read(0, 512).expect("read");
    back.take_and_hold(1, false);
    let id = xen_blkfront::request::decode_request(&back.held[0].1).id;
    back.push_raw(
        0,
        blkif_response {
            id,
            operation: BLKIF_OP_WRITE,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    assert_eq!(
        front.poll_completions(),
        Err(BlkfrontError::Failed(FailReason::WrongResponseOp {
            id,
            op: BLKIF_OP_WRITE
        }))
    );
    assert_failed_cleanly(&mut front, &back, 1);
}

#[test]
fn test_backend_keeping_non_persistent_grant_fails_device_and_defers_page() {
    // Arrange: a non-persistent backend that maps the data page and keeps it.
    let p = platform();
    let offer = Offer {
        persistent: false,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    front.submit_read(0, 512).expect("read");
    back.take_and_hold(1, false);
    let req = xen_blkfront::request::decode_request(&back.held[0].1);
    let kept = p.peer_map(req.seg[0].gref, 0, true).expect("map");

    // Act
    back.push_raw(
        0,
        blkif_response {
            id: req.id,
            operation: BLKIF_OP_READ,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    let r = front.poll_completions();

    // Assert: failed; the page is not freed while mapped, and is once unmapped.
    assert_eq!(r, Err(BlkfrontError::Failed(FailReason::BackendKeptGrant)));
    assert!(front.deferred_pages() >= 1);
    p.peer_unmap(kept);
    back.unmap_all();
    let _ = front.backend_changed();
    assert_eq!(front.deferred_pages(), 0);
    drop(front);
    assert_eq!(p.grants_in_use(), 0);
}

#[test]
fn test_backend_state_garbage_is_ignored_and_counted() {
    let p = platform();
    let back = FakeBack::new(&p, Offer::default());
    let mut front = BlkFront::new(&p, DEVID, BlkfrontConfig::default()).expect("open");
    back.set_state("banana");
    pump(&p, &mut front);
    back.set_state("99");
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::WaitBackend);
    assert!(front.stats().bad_backend_states >= 2);
    back.init_wait();
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Initialised);
}

#[test]
fn test_backend_connected_without_sectors_fails_device() {
    let p = platform();
    let mut back = FakeBack::new(&p, Offer::default());
    let mut front = BlkFront::new(&p, DEVID, BlkfrontConfig::default()).expect("open");
    pump(&p, &mut front);
    back.init_wait();
    pump(&p, &mut front);
    back.connect();
    p.xs_rm(XBT_NIL, &format!("{}/sectors", back.be))
        .expect("rm");
    pump(&p, &mut front);
    assert!(matches!(
        front.failure(),
        Some(FailReason::BadBackendInfo(_))
    ));
    assert_eq!(back.fe_state().as_deref(), Some("5"));
}

#[test]
fn test_backend_garbage_ring_order_fails_device() {
    let p = platform();
    let back = FakeBack::new(&p, Offer::default());
    let mut front = BlkFront::new(&p, DEVID, BlkfrontConfig::default()).expect("open");
    p.xs_write(
        XBT_NIL,
        &format!("{}/max-ring-page-order", back.be),
        b"lots",
    )
    .expect("write");
    back.set_state("2");
    pump(&p, &mut front);
    assert!(matches!(
        front.failure(),
        Some(FailReason::BadBackendInfo(_))
    ));
    // No rings were left behind.
    assert_eq!(p.grants_in_use(), 0);
}

#[test]
fn test_hostile_responses_after_failure_are_harmless() {
    // A failed device ignores the ring: more garbage changes nothing.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_read(0, 512).expect("read");
    back.write_rsp_prod(0, 7777);
    let _ = front.poll_completions();
    let _ = front.take_completions();
    back.set_state("4");
    pump(&p, &mut front);
    assert!(matches!(
        front.backend_changed(),
        Err(BlkfrontError::Failed(_))
    ));
    assert_eq!(front.take_completions().len(), 0);
    run_until_failed(&mut front);
}

fn run_until_failed(front: &mut BlkFront<'_, FakePlatform>) {
    for _ in 0..3 {
        assert!(front.poll_completions().is_err());
    }
}

#[test]
fn test_eopnotsupp_flush_disables_flush() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    back.offer.flush = false; // the backend changes its mind
    front.flush().expect("flush offered at connect");
    let done = run_until(&mut front, &mut back, 1);
    assert_eq!(done[0].status, BlkStatus::NotSupported);
    assert_eq!(
        front.flush(),
        Err(BlkfrontError::Unsupported { op: "flush" })
    );
}

#[test]
fn test_backend_keeping_a_buffer_grant_fails_device_and_buffer_is_refused() {
    // Arrange: a non-persistent backend keeps the page of a registered
    // buffer mapped after answering.
    let p = platform();
    let offer = Offer {
        persistent: false,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    let buf = front.alloc_buffer(4096).expect("buffer");
    front.submit_read_buffer(0, buf).expect("read");
    back.take_and_hold(1, false);
    let req = xen_blkfront::request::decode_request(&back.held[0].1);
    let kept = p.peer_map(req.seg[0].gref, 0, true).expect("map");

    // Act
    back.push_raw(
        0,
        blkif_response {
            id: req.id,
            operation: BLKIF_OP_READ,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    let r = front.poll_completions();

    // Assert: failed; the buffer lost its page (refused, not freed while
    // mapped), can still be unregistered, and nothing leaks once unmapped.
    assert_eq!(r, Err(BlkfrontError::Failed(FailReason::BackendKeptGrant)));
    assert_eq!(
        front.buffer_read(buf, 0, &mut [0u8; 16]),
        Err(BlkfrontError::BadBuffer)
    );
    assert!(front.deferred_pages() >= 1);
    front.free_buffer(buf).expect("unregister");
    p.peer_unmap(kept);
    back.unmap_all();
    let _ = front.backend_changed();
    assert_eq!(front.deferred_pages(), 0);
    drop(front);
    assert_eq!(p.grants_in_use(), 0);
}

#[test]
fn test_device_failure_with_busy_buffer_completes_it_with_error() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let buf = front.alloc_buffer(8192).expect("buffer");
    front.submit_write_buffer(8, buf).expect("write");
    back.take_and_hold(1, false);
    // A response for an id never issued fails the device.
    back.push_raw(
        0,
        blkif_response {
            id: 0xdead_beef,
            operation: BLKIF_OP_WRITE,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        },
    );
    assert!(matches!(
        front.poll_completions(),
        Err(BlkfrontError::Failed(_))
    ));
    assert_failed_cleanly(&mut front, &back, 1);
    assert_eq!(
        front.buffer_write(buf, 0, &[0u8; 16]),
        Err(BlkfrontError::BadBuffer)
    );
    front.free_buffer(buf).expect("unregister");
    back.unmap_all();
    drop(front);
    assert_eq!(p.grants_in_use(), 0);
}
