//! Hostile frontends (project issue 5), beyond `negative.rs`: a grant
//! revoked mid-request, a bad indirect page (revoked, or a data page full of
//! garbage descriptors), an event storm on the device's port; and, during
//! all of them, a second guest (a second real domain) whose disk keeps
//! working.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use xen_abi::io::blkif::*;
use xen_blkback::DeviceStatus;
use xen_front_platform::{Platform, PlatformError};
use xen_pvguest::runtime::Runtime;
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::unique_name;

/// A second guest domain, attached in this process.
fn second_guest(w: &World, tag: &str) -> Runtime {
    let created = w
        .control
        .create_domain(&DomainConfig::pv(&unique_name(tag), MEMORY_MIB))
        .expect("create the second guest domain");
    Runtime::start_with(w.daemon.socket(), created.domid, &created.token)
        .expect("the second guest runtime attaches")
}

/// Writes a pattern through `f`'s data page 0 at `sector` and reads it back
/// through data page 1; returns whether both succeeded and matched.
fn victim_round(f: &mut Front<'_>, id: u64, sector: u64, tag: u8) -> bool {
    f.write_data(0, 0, &pattern(tag, PAGE));
    let w = f.call(
        0,
        rw(BLKIF_OP_WRITE, id, sector, &[seg(f.data_refs[0], 0, 7)]),
    );
    let r = f.call(
        0,
        rw(BLKIF_OP_READ, id + 1, sector, &[seg(f.data_refs[1], 0, 7)]),
    );
    w.status == BLKIF_RSP_OKAY
        && r.status == BLKIF_RSP_OKAY
        && (w.id, r.id) == (id, id + 1)
        && f.read_data(1, 0, PAGE) == pattern(tag, PAGE)
}

#[test]
fn test_blkback_grant_revoked_after_queueing_gets_error_and_device_keeps_serving() {
    // Arrange
    let w = World::start("bb-revq");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 2);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let (g0, g1) = (f.data_refs[0], f.data_refs[1]);
    f.write_data(0, 0, &[0xab; PAGE]);

    // Act: the request is on the ring, then its grant is revoked, then the
    // frontend publishes and notifies.
    f.queues[0]
        .front
        .push_request(&rw(BLKIF_OP_WRITE, 1, 0, &[seg(g0, 0, 7)]))
        .expect("room");
    w.rt.platform()
        .end_access(g0)
        .expect("revoke the unmapped grant");
    if f.queues[0].front.push_requests_and_check_notify() {
        w.rt.platform()
            .evtchn_notify(f.queues[0].port)
            .expect("notify");
    }
    let revoked = f.responses(0, 1)[0];
    f.write_data(1, 0, &pattern(3, PAGE));
    let good = f.call(0, rw(BLKIF_OP_WRITE, 2, 8, &[seg(g1, 0, 7)]));

    // Assert
    assert_eq!((revoked.id, revoked.status), (1, BLKIF_RSP_ERROR));
    assert!(
        img.read_at(0, PAGE).iter().all(|&b| b == 0),
        "nothing written"
    );
    assert_eq!((good.id, good.status), (2, BLKIF_RSP_OKAY));
    assert_eq!(img.read_at(8 * 512, PAGE), pattern(3, PAGE));
    assert_eq!(dev.status(), DeviceStatus::Running);
    dev.disconnect();
}

#[test]
fn test_blkback_grant_revoked_mid_request_is_refused_or_errors_and_device_keeps_serving() {
    // Arrange: 24 writes in flight on one page (no persistent grants: the
    // backend maps and unmaps it for each request).
    let w = World::start("bb-revmid");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 2);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let (g0, g1) = (f.data_refs[0], f.data_refs[1]);
    f.write_data(0, 0, &pattern(5, PAGE));
    let warm = f.call(0, rw(BLKIF_OP_WRITE, 99, 200 * 8, &[seg(g0, 0, 7)]));
    let slots: Vec<Slot> = (0..24u64)
        .map(|i| rw(BLKIF_OP_WRITE, 100 + i, i * 8, &[seg(g0, 0, 7)]))
        .collect();

    // Act: revoke while the backend serves them, as fast as we can.
    f.submit(0, &slots);
    let mut revoke = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let r = w.rt.platform().end_access(g0);
        let done = r.is_ok();
        revoke.push(r);
        if done {
            break;
        }
    }
    let rsps = f.responses(0, slots.len());
    f.write_data(1, 0, &pattern(6, PAGE));
    let after = f.call(0, rw(BLKIF_OP_WRITE, 200, 250 * 8, &[seg(g1, 0, 7)]));
    let m = dev.disconnect();

    // Assert: a revocation while mapped is refused (XSA-396), a request
    // after it gets an error; every request is answered exactly once and
    // every acknowledged write is on the disk.
    assert_eq!(warm.status, BLKIF_RSP_OKAY);
    for r in &revoke {
        assert!(
            matches!(r, Ok(()) | Err(PlatformError::GrantInUse { .. })),
            "{r:?}"
        );
    }
    assert!(
        matches!(revoke.last(), Some(Ok(()))),
        "the grant was revoked in the end"
    );
    let mut ids: Vec<u64> = rsps.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (100..124).collect::<Vec<u64>>());
    let mut ok = 0;
    for r in &rsps {
        assert!(
            r.status == BLKIF_RSP_OKAY || r.status == BLKIF_RSP_ERROR,
            "{r:?}"
        );
        if r.status == BLKIF_RSP_OKAY {
            ok += 1;
            let off = (r.id - 100) * 8 * 512;
            assert_eq!(img.read_at(off, PAGE), pattern(5, PAGE), "id {}", r.id);
        }
    }
    eprintln!(
        "revoke attempts {} (refused while mapped: {}), writes ok {ok}, errors {}",
        revoke.len(),
        revoke.len() - 1,
        24 - ok
    );
    assert_eq!((after.id, after.status), (200, BLKIF_RSP_OKAY));
    assert_eq!(img.read_at(250 * 8 * 512, PAGE), pattern(6, PAGE));
    assert!(m.writes >= 2, "{m:?}");
}

#[test]
fn test_blkback_persistently_mapped_grant_cannot_be_revoked_and_device_keeps_serving() {
    // Arrange: persistent grants: the backend keeps the page mapped after
    // its first use.
    let w = World::start("bb-revpers");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(true))
        .expect("connect");
    let g0 = f.data_refs[0];
    f.write_data(0, 0, &pattern(7, PAGE));
    let first = f.call(0, rw(BLKIF_OP_WRITE, 1, 0, &[seg(g0, 0, 7)]));

    // Act: the frontend tries to take the page back while it is mapped,
    // then keeps using it.
    let revoke = w.rt.platform().end_access(g0);
    f.write_data(0, 0, &pattern(8, PAGE));
    let second = f.call(0, rw(BLKIF_OP_WRITE, 2, 8, &[seg(g0, 0, 7)]));
    dev.disconnect();
    let revoke_after_disconnect = w.rt.platform().end_access(g0);

    // Assert
    assert_eq!((first.id, first.status), (1, BLKIF_RSP_OKAY));
    assert!(
        matches!(revoke, Err(PlatformError::GrantInUse { .. })),
        "{revoke:?}"
    );
    assert_eq!((second.id, second.status), (2, BLKIF_RSP_OKAY));
    assert_eq!(img.read_at(8 * 512, PAGE), pattern(8, PAGE));
    assert!(
        revoke_after_disconnect.is_ok(),
        "{revoke_after_disconnect:?}"
    );
}

#[test]
fn test_blkback_attacks_on_one_guest_leave_second_guests_disk_working() {
    // Arrange: the attacker (domain A) and the victim (domain B), each with
    // its own device on its own image.
    let w = World::start("bb-2dom");
    let rt_b = second_guest(&w, "bb-2dom-b");
    assert_ne!(w.domid(), rt_b.domid());
    let (img_a, img_b) = (Image::new(1 << 20), Image::new(1 << 20));
    let (be_a, be_b) = (backend(&img_a, false), backend(&img_b, false));
    let mut fa = Front::new(&w.rt, 1, 1, 4);
    let mut fb = Front::new(&rt_b, 1, 1, 2);
    let dev_a = be_a
        .connect(&w.handles, w.domid(), &fa.params(false))
        .expect("connect a");
    let dev_b = be_b
        .connect(&w.handles, rt_b.domid(), &fb.params(false))
        .expect("connect b");
    let pa = w.rt.platform().clone();
    let mut victim_ok = Vec::new();
    let mut id_b = 1000u64;
    let mut victim = |fb: &mut Front<'_>, what: &str| {
        id_b += 2;
        let tag = (id_b % 251) as u8;
        victim_ok.push((
            what.to_string(),
            victim_round(fb, id_b, (id_b % 200) * 8, tag),
        ));
    };

    // Act 1: bad indirect pages: a revoked one, and a data page of garbage.
    let ind = fa.data_refs[3];
    pa.end_access(ind).expect("revoke the indirect page");
    let revoked_ind = fa.call(0, indirect(BLKIF_OP_WRITE, 1, 0, 4, &[ind]));
    victim(&mut fb, "after a revoked indirect page");
    fa.write_data(2, 0, &[0xff; PAGE]);
    let garbage_ind = fa.call(0, indirect(BLKIF_OP_READ, 2, 0, 8, &[fa.data_refs[2]]));
    victim(&mut fb, "after a garbage indirect page");
    let out_of_range = fa.call(
        0,
        rw(BLKIF_OP_WRITE, 3, 1 << 40, &[seg(fa.data_refs[0], 0, 7)]),
    );
    victim(&mut fb, "after an out-of-range sector");

    // Act 2: an event storm on A's port for a second, B served throughout.
    let storm_until = Instant::now() + Duration::from_secs(1);
    let mut sent = 0u64;
    let mut storm_errors = 0u64;
    while Instant::now() < storm_until {
        for _ in 0..500 {
            match pa.evtchn_notify(fa.queues[0].port) {
                Ok(()) => sent += 1,
                Err(_) => storm_errors += 1,
            }
        }
        victim(&mut fb, "during the event storm");
    }
    let a_after_storm = fa.call(0, flush(4));

    // Act 3: producer overflow fails A.
    fa.queues[0]
        .ring_pages
        .store_u32(0, 5 + 1000, Ordering::Release)
        .expect("req_prod");
    pa.evtchn_notify(fa.queues[0].port).expect("notify");
    let failure = dev_a.wait_failure(STEP);
    victim(&mut fb, "after A failed");

    // Assert
    eprintln!("event storm: {sent} notifications sent, {storm_errors} refused");
    assert_eq!((revoked_ind.id, revoked_ind.status), (1, BLKIF_RSP_ERROR));
    assert_eq!((garbage_ind.id, garbage_ind.status), (2, BLKIF_RSP_ERROR));
    assert_eq!((out_of_range.id, out_of_range.status), (3, BLKIF_RSP_ERROR));
    assert!(sent > 0, "the storm sent nothing");
    assert_eq!(
        (a_after_storm.id, a_after_storm.status),
        (4, BLKIF_RSP_OKAY),
        "A itself still served after the storm"
    );
    assert!(failure.is_some(), "the overflow failed A");
    assert!(matches!(dev_a.status(), DeviceStatus::Failed(_)));
    let bad: Vec<_> = victim_ok.iter().filter(|(_, ok)| !ok).collect();
    assert!(bad.is_empty(), "B's disk failed: {bad:?}");
    assert!(victim_ok.len() >= 5);
    assert_eq!(dev_b.status(), DeviceStatus::Running);
    assert!(
        img_a.read_at(0, PAGE).iter().all(|&b| b == 0),
        "A wrote nothing"
    );
    dev_a.disconnect();
    dev_b.disconnect();
}
