//! The backend goes away and comes back (closing properly, restarting
//! without closing, still mapping pages, with a smaller ring): every
//! request submitted completes exactly once, with the right data.

mod common;

use std::collections::HashMap;

use common::{check_exactly_once, connected, pump, run_until, FakeBack, Offer, Rng};
use xen_blkfront::{BlkFront, BlkfrontConfig, FrontState, RequestTag};
use xen_front_platform::fake::FakePlatform;

fn platform() -> FakePlatform {
    FakePlatform::with_limits(common::GUEST, 8192, 16384)
}

/// Submits `n` writes of 8 KiB at distinct places; returns tag -> (sector,
/// data) and updates `model`.
fn submit_writes(
    front: &mut BlkFront<'_, FakePlatform>,
    rng: &mut Rng,
    model: &mut [u8],
    n: u64,
    base: u64,
) -> HashMap<RequestTag, u64> {
    let mut tags = HashMap::new();
    for i in 0..n {
        let sector = base + i * 16;
        let data = rng.bytes(8192);
        model[(sector * 512) as usize..(sector * 512) as usize + 8192].copy_from_slice(&data);
        tags.insert(front.submit_write(sector, &data).expect("write"), sector);
    }
    tags
}

/// Backend: dies, then a new instance probes and connects.
fn restart_via_closing(
    p: &FakePlatform,
    front: &mut BlkFront<'_, FakePlatform>,
    back: &mut FakeBack<'_>,
) {
    back.unmap_all();
    back.set_state("5");
    pump(p, front);
    assert_eq!(front.state(), FrontState::Closed);
    assert_eq!(back.fe_state().as_deref(), Some("6"));
    back.set_state("6");
    pump(p, front);
    back.init_wait();
    pump(p, front);
    assert_eq!(front.state(), FrontState::Initialised);
    back.connect();
    pump(p, front);
    assert_eq!(front.state(), FrontState::Connected);
}

#[test]
fn test_reconnect_after_closing_reissues_in_flight_requests_none_lost_none_duplicated() {
    // Arrange: 20 writes; 4 answered (not yet harvested), 6 executed but
    // unanswered, 3 taken and not executed, 7 never taken.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let mut rng = Rng(42);
    let mut model = vec![0u8; back.disk.len()];
    let tags = submit_writes(&mut front, &mut rng, &mut model, 20, 0);
    back.take_and_hold(4, false);
    back.answer_held();
    back.take_and_hold(6, true);
    back.held.clear();
    back.take_and_hold(3, false);
    let ring_grants_before = p.grants_in_use();

    // Act
    restart_via_closing(&p, &mut front, &mut back);
    let mut done = front.take_completions();
    let remaining = tags.len() - done.len();
    done.extend(run_until(&mut front, &mut back, remaining));

    // Assert
    check_exactly_once(&done, &tags);
    assert_eq!(front.stats().reissued, 16);
    assert_eq!(front.stats().disconnects, 1);
    assert!(back.disk == model, "disk content after re-issue");
    assert_eq!(front.outstanding(), 0);
    assert_eq!(front.deferred_pages(), 0);
    assert!(p.grants_in_use() <= ring_grants_before, "no grant leaked");
}

#[test]
fn test_backend_restart_straight_to_initwait_reissues_reads_and_writes() {
    // Arrange
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let mut rng = Rng(7);
    let mut model = vec![0u8; back.disk.len()];
    let mut tags = submit_writes(&mut front, &mut rng, &mut model, 8, 0);
    let done = run_until(&mut front, &mut back, 8);
    check_exactly_once(&done, &tags);
    tags.clear();
    let mut reads = HashMap::new();
    for i in 0..8u64 {
        reads.insert(front.submit_read(i * 16, 8192).expect("read"), i * 16);
    }
    let writes = submit_writes(&mut front, &mut rng, &mut model, 8, 1024);
    back.take_and_hold(10, true);

    // Act: the backend dies and a new one probes without Closing/Closed.
    back.unmap_all();
    back.init_wait();
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Initialised);
    back.connect();
    pump(&p, &mut front);
    let done = run_until(&mut front, &mut back, 16);

    // Assert
    assert_eq!(done.len(), 16);
    let mut all = reads.clone();
    all.extend(writes.iter().map(|(t, s)| (*t, *s)));
    check_exactly_once(&done, &all);
    for c in &done {
        if let Some(&sector) = reads.get(&c.tag) {
            let at = (sector * 512) as usize;
            assert!(c.data == model[at..at + 8192]);
        }
    }
    assert!(back.disk == model);
}

#[test]
fn test_reconnect_to_smaller_ring_issues_backlog_as_slots_free() {
    // Arrange: 100 requests outstanding on a 128-slot ring.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let mut rng = Rng(3);
    let mut model = vec![0u8; back.disk.len()];
    let tags = submit_writes(&mut front, &mut rng, &mut model, 100, 0);

    // Act: the new backend only offers a one-page (32-slot) ring.
    back.unmap_all();
    back.set_state("6");
    pump(&p, &mut front);
    back.offer.max_ring_page_order = 0;
    back.init_wait();
    pump(&p, &mut front);
    back.connect();
    pump(&p, &mut front);
    let done = run_until(&mut front, &mut back, 100);

    // Assert
    assert_eq!(front.ring_page_order(), 0);
    check_exactly_once(&done, &tags);
    assert!(back.disk == model);
}

#[test]
fn test_backend_closing_while_mapping_defers_pages_until_unmapped() {
    // Arrange: persistent backend with data pages and the ring mapped.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let mut rng = Rng(11);
    let mut model = vec![0u8; back.disk.len()];
    let mut tags = submit_writes(&mut front, &mut rng, &mut model, 4, 0);
    run_until(&mut front, &mut back, 4);
    tags.clear();
    let tags2 = submit_writes(&mut front, &mut rng, &mut model, 4, 512);
    back.take_and_hold(4, false);

    // Act 1: Closing while everything is still mapped.
    back.set_state("5");
    pump(&p, &mut front);
    let deferred = front.deferred_pages();

    // Act 2: the backend unmaps and closes; later a new one connects.
    back.unmap_all();
    back.set_state("6");
    pump(&p, &mut front);
    let deferred_after = front.deferred_pages();
    back.init_wait();
    pump(&p, &mut front);
    back.connect();
    pump(&p, &mut front);
    let done = run_until(&mut front, &mut back, 4);

    // Assert
    assert!(
        deferred > 4,
        "ring pages and mapped data pages deferred: {deferred}"
    );
    assert_eq!(deferred_after, 0);
    check_exactly_once(&done, &tags2);
    assert!(back.disk == model);
}

#[test]
fn test_requests_submitted_while_disconnected_wait_for_new_backend() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    back.unmap_all();
    back.set_state("6");
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Closed);
    let mut rng = Rng(5);
    let mut model = vec![0u8; back.disk.len()];
    let tags = submit_writes(&mut front, &mut rng, &mut model, 5, 0);
    assert!(front.poll_completions().expect("poll").is_empty());
    back.init_wait();
    pump(&p, &mut front);
    back.connect();
    pump(&p, &mut front);
    let done = run_until(&mut front, &mut back, 5);
    check_exactly_once(&done, &tags);
    assert!(back.disk == model);
    assert_eq!(front.stats().reissued, 0);
}

#[test]
fn test_backend_node_removed_closes_frontend() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    back.unmap_all();
    xen_front_platform::Platform::xs_rm(&p, xen_front_platform::XBT_NIL, &back.be).expect("rm");
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Closed);
    assert_eq!(front.deferred_pages(), 0);
}

#[test]
fn test_reconnect_with_fewer_queues_removes_stale_queue_nodes() {
    // Arrange: two queues.
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
    assert_eq!(back.fe_node("multi-queue-num-queues").as_deref(), Some("2"));

    // Act: the new backend is single-queue with a one-page ring.
    back.unmap_all();
    back.set_state("6");
    pump(&p, &mut front);
    back.offer.max_queues = 1;
    back.offer.max_ring_page_order = 0;
    back.init_wait();
    pump(&p, &mut front);
    back.connect();
    pump(&p, &mut front);

    // Assert
    assert_eq!(front.queues(), 1);
    assert_eq!(back.fe_node("multi-queue-num-queues"), None);
    assert_eq!(back.fe_node("queue-0/ring-ref0"), None);
    assert_eq!(back.fe_node("ring-page-order"), None);
    assert!(back.fe_node("ring-ref").is_some());
    front.submit_read(0, 512).expect("read");
    assert_eq!(run_until(&mut front, &mut back, 1).len(), 1);
}

#[test]
fn test_backend_closing_before_connect_then_initwait_offers_again() {
    let p = platform();
    let mut back = FakeBack::new(&p, Offer::default());
    let mut front = BlkFront::new(&p, common::DEVID, BlkfrontConfig::default()).expect("open");
    pump(&p, &mut front);
    back.init_wait();
    pump(&p, &mut front);
    let grants_offered = p.grants_in_use();
    back.set_state("5");
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Closed);
    assert_eq!(p.grants_in_use(), 0, "rings revoked");
    back.init_wait();
    pump(&p, &mut front);
    assert_eq!(p.grants_in_use(), grants_offered);
    back.connect();
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Connected);
}

#[test]
fn test_frontend_node_removed_by_toolstack_is_not_recreated() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    back.unmap_all();
    xen_front_platform::Platform::xs_rm(&p, xen_front_platform::XBT_NIL, &back.fe).expect("rm");
    back.set_state("6");
    pump(&p, &mut front);
    assert_eq!(front.state(), FrontState::Closed);
    assert_eq!(back.fe_state(), None);
}
