//! Resume in a new domain after a suspend (Xen's restore; Linux's
//! `blkfront_resume`): the old domain's grants, ports and watches are gone
//! (the fake's `new_domain`), a new backend serves the same disk, and
//! every request that was outstanding at the suspend, whatever the old
//! backend had done with it, completes exactly once with the right data.

mod common;

use std::collections::HashMap;

use common::{check_exactly_once, connected, pump, run_until, FakeBack, Offer, Rng};
use xen_blkfront::{BlkFront, BlkfrontConfig, FrontState, RequestTag};
use xen_front_platform::fake::FakePlatform;
use xen_front_platform::Platform;

fn platform() -> FakePlatform {
    FakePlatform::with_limits(common::GUEST, 8192, 16384)
}

/// The old domain goes (its backend's mappings with it), the guest runs in
/// a new one: `resume`, then a new backend on the same (shared) disk.
fn move_to_new_domain<'a>(
    p: &'a FakePlatform,
    front: &mut BlkFront<'a, FakePlatform>,
    old: &mut FakeBack<'a>,
    offer: Offer,
) -> FakeBack<'a> {
    old.unmap_all();
    old.held.clear();
    p.new_domain();
    // The toolstack writes the new domain's device nodes; the backend
    // starts on the same disk.
    let mut back = FakeBack::new(p, offer);
    back.disk = old.disk.clone();
    front.resume().expect("resume");
    assert_eq!(front.state(), FrontState::WaitBackend);
    back.init_wait();
    pump(p, front);
    assert_eq!(front.state(), FrontState::Initialised);
    back.connect();
    pump(p, front);
    assert_eq!(front.state(), FrontState::Connected);
    back
}

#[test]
fn test_resume_in_a_new_domain_reissues_every_outstanding_request_exactly_once() {
    // Arrange: 20 writes and 8 reads outstanding at the suspend: 4 writes
    // answered on the ring (not yet harvested: the guest was suspended),
    // 6 executed but unanswered, 3 taken and not executed, the rest never
    // taken; plus 5 writes submitted while the ring was full or later.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let mut rng = Rng(99);
    let mut model = vec![0u8; back.disk.len()];
    let mut tags: HashMap<RequestTag, u64> = HashMap::new();
    // Something to read back: written and completed before.
    let pre = rng.bytes(8 * 8192);
    model[..pre.len()].copy_from_slice(&pre);
    back.disk[..pre.len()].copy_from_slice(&pre);
    let mut reads = HashMap::new();
    for i in 0..8u64 {
        let t = front.submit_read(i * 16, 8192).expect("read");
        reads.insert(t, i * 16);
        tags.insert(t, i * 16);
    }
    for i in 0..25u64 {
        let sector = 1024 + i * 16;
        let data = rng.bytes(8192);
        let at = (sector * 512) as usize;
        model[at..at + 8192].copy_from_slice(&data);
        tags.insert(front.submit_write(sector, &data).expect("write"), sector);
    }
    back.take_and_hold(4, false);
    back.answer_held();
    back.take_and_hold(6, true);
    back.held.clear();
    back.take_and_hold(3, false);
    let outstanding = front.outstanding();
    assert_eq!(outstanding, 33);

    // Act
    let mut back = move_to_new_domain(&p, &mut front, &mut back, Offer::default());
    let mut done = front.take_completions();
    done.extend(run_until(&mut front, &mut back, tags.len() - done.len()));

    // Assert
    check_exactly_once(&done, &tags);
    for c in &done {
        if let Some(&sector) = reads.get(&c.tag) {
            let at = (sector * 512) as usize;
            assert!(c.data == model[at..at + 8192], "read at {sector}");
        }
    }
    assert_eq!(front.stats().reissued, outstanding as u64);
    assert!(back.disk == model, "disk content after the resume");
    assert_eq!(front.outstanding(), 0);
    assert_eq!(front.deferred_pages(), 0);
    // New requests go on the new rings.
    let t = front.submit_read(1024, 8192).expect("read");
    let done = run_until(&mut front, &mut back, 1);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, t);
    assert!(done[0].data == model[1024 * 512..1024 * 512 + 8192]);
}

#[test]
fn test_resume_in_a_new_domain_with_a_smaller_ring_and_no_persistent_grants() {
    // The new host's backend offers less: one ring page, no persistent
    // grants; the requests still complete once each.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let mut rng = Rng(5);
    let mut model = vec![0u8; back.disk.len()];
    let mut tags = HashMap::new();
    for i in 0..40u64 {
        let sector = i * 16;
        let data = rng.bytes(8192);
        let at = (sector * 512) as usize;
        model[at..at + 8192].copy_from_slice(&data);
        tags.insert(front.submit_write(sector, &data).expect("write"), sector);
    }
    back.take_and_hold(10, true);
    back.held.clear();
    let offer = Offer {
        max_ring_page_order: 0,
        persistent: false,
        ..Offer::default()
    };
    let mut back = move_to_new_domain(&p, &mut front, &mut back, offer);
    assert_eq!(front.ring_page_order(), 0);
    assert!(!front.persistent());
    let done = run_until(&mut front, &mut back, tags.len());
    check_exactly_once(&done, &tags);
    assert!(back.disk == model);
}

#[test]
fn test_resume_without_backend_nodes_is_no_backend() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    back.unmap_all();
    p.new_domain();
    p.xs_rm(xen_front_platform::XBT_NIL, &format!("{}/backend", back.fe))
        .expect("rm");
    let e = front.resume().expect_err("no backend");
    assert!(
        matches!(e, xen_blkfront::BlkfrontError::NoBackend { .. }),
        "{e:?}"
    );
}

/// Regression: restored on another host, the new domain got the old one's
/// domid, so its backend's directory is the old one's, whose watch the
/// xenstore client's reconnection had set again; resume failed with
/// EEXIST when it set the watch (found by the two-host rig's
/// save-on-A-restore-on-B test). It now removes the old watch first.
#[test]
fn test_resume_with_the_old_backend_directory_and_its_watch_set_again_connects() {
    // Arrange
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let t = front.submit_write(8, &[0x5a; 4096]).expect("write");
    back.take_and_hold(1, true);
    back.unmap_all();
    back.held.clear();
    p.new_domain_rewatched();
    let mut back2 = FakeBack::new(&p, Offer::default());
    back2.disk = back.disk.clone();

    // Act
    front.resume().expect("resume");
    back2.init_wait();
    pump(&p, &mut front);
    back2.connect();
    pump(&p, &mut front);
    let done = run_until(&mut front, &mut back2, 1);

    // Assert
    assert_eq!(front.state(), FrontState::Connected);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, t, "the write re-issued once");
    assert!(back2.disk[8 * 512..8 * 512 + 4096]
        .iter()
        .all(|&b| b == 0x5a));
}
