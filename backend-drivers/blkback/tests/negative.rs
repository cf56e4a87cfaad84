//! Hostile and buggy frontends: bad requests get error responses and the
//! device keeps serving; a corrupt ring or a flood of garbage fails the
//! device (reported, workers stopped) while another device keeps working.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use xen_abi::io::blkif::*;
use xen_blkback::{BlkBackend, DeviceStatus, DiskConfig, FailureReason};

#[test]
fn test_blkback_readonly_disk_refuses_writes_and_serves_reads() {
    // Arrange
    let w = World::start("bb-ro");
    let img = Image::new(1 << 20);
    img.write_at(0, &pattern(4, PAGE));
    let be = backend(&img, true);
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let g = f.data_refs[0];
    f.write_data(0, 0, &[0xee; PAGE]);

    // Act
    let wr = f.call(0, rw(BLKIF_OP_WRITE, 1, 0, &[seg(g, 0, 7)]));
    let di = f.call(0, discard(2, 0, 8));
    let rd = f.call(0, rw(BLKIF_OP_READ, 3, 0, &[seg(g, 0, 7)]));

    // Assert
    assert_eq!((wr.id, wr.status), (1, BLKIF_RSP_ERROR));
    assert_ne!(di.status, BLKIF_RSP_OKAY);
    assert_eq!((rd.id, rd.status), (3, BLKIF_RSP_OKAY));
    assert_eq!(f.read_data(0, 0, PAGE), pattern(4, PAGE));
    assert_eq!(img.read_at(0, PAGE), pattern(4, PAGE), "image untouched");
    assert_eq!(dev.status(), DeviceStatus::Running);
    dev.disconnect();
}

#[test]
fn test_blkback_bad_requests_get_errors_and_device_keeps_serving() {
    // Arrange: a 1 MiB disk (2048 sectors).
    let w = World::start("bb-bad");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let g = f.data_refs[0];
    let mut twelve = rw(BLKIF_OP_READ, 3, 0, &[seg(g, 0, 7)]);
    twelve[1] = 12;

    // Act
    let cases = [
        ("past the end", rw(BLKIF_OP_READ, 1, 2041, &[seg(g, 0, 7)])),
        (
            "sector overflow",
            rw(BLKIF_OP_WRITE, 2, u64::MAX - 3, &[seg(g, 0, 7)]),
        ),
        ("12 segments", twelve),
        ("0 segments", rw(BLKIF_OP_READ, 4, 0, &[])),
        ("last_sect 8", rw(BLKIF_OP_READ, 5, 0, &[seg(g, 0, 8)])),
        ("first > last", rw(BLKIF_OP_READ, 6, 0, &[seg(g, 4, 3)])),
        (
            "bad grant ref",
            rw(BLKIF_OP_READ, 7, 0, &[seg(99_999, 0, 7)]),
        ),
        (
            "unused grant ref",
            rw(BLKIF_OP_WRITE, 8, 0, &[seg(g + 1000, 0, 7)]),
        ),
        ("discard past end", discard(9, 2000, 49)),
        (
            "indirect 257 segments",
            indirect(BLKIF_OP_READ, 10, 0, 257, &[g]),
        ),
        (
            "indirect bad grant",
            indirect(BLKIF_OP_READ, 11, 0, 1, &[77_777]),
        ),
    ];
    let mut got = Vec::new();
    for (what, slot) in cases {
        got.push((what, f.call(0, slot)));
    }
    let unknown = f.call(0, rw(0x42, 12, 0, &[seg(g, 0, 7)]));
    let good = f.call(0, rw(BLKIF_OP_READ, 13, 2040, &[seg(g, 0, 7)]));

    // Assert
    for (what, r) in &got {
        assert_eq!(r.status, BLKIF_RSP_ERROR, "{what}: {r:?}");
    }
    assert_eq!(
        got.iter().map(|(_, r)| r.id).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<u64>>(),
        "each error answers its own id"
    );
    assert_eq!((unknown.id, unknown.status), (12, BLKIF_RSP_EOPNOTSUPP));
    assert_eq!(
        (good.id, good.status),
        (13, BLKIF_RSP_OKAY),
        "still serving"
    );
    let m = dev.metrics();
    assert_eq!((m.errors, m.unsupported, m.reads), (11, 1, 1));
    assert_eq!(dev.status(), DeviceStatus::Running);
    dev.disconnect();
}

#[test]
fn test_blkback_producer_overflow_fails_device_other_device_keeps_working() {
    // Arrange: two devices of the same guest on two images.
    let w = World::start("bb-ovf");
    let (img_a, img_b) = (Image::new(1 << 20), Image::new(1 << 20));
    let (be_a, be_b) = (backend(&img_a, false), backend(&img_b, false));
    let mut fa = Front::new(&w.rt, 1, 1, 1);
    let mut fb = Front::new(&w.rt, 1, 1, 1);
    let (hook_tx, hook_rx) = std::sync::mpsc::channel();
    let hook_tx = std::sync::Mutex::new(hook_tx);
    let hook: xen_blkback::FailureHook = std::sync::Arc::new(move |domid, f| {
        if let Ok(tx) = hook_tx.lock() {
            let _ = tx.send((domid, f.clone()));
        }
    });
    let dev_a = be_a
        .connect_with_hook(&w.handles, w.domid(), &fa.params(false), Some(hook))
        .expect("connect a");
    let dev_b = be_b
        .connect(&w.handles, w.domid(), &fb.params(false))
        .expect("connect b");
    assert_eq!(fa.call(0, flush(1)).status, BLKIF_RSP_OKAY);

    // Act: the attacker sets req_prod 100 slots ahead of a 32-slot ring.
    fa.queues[0]
        .ring_pages
        .store_u32(0, 1 + 100, Ordering::Release)
        .expect("req_prod");
    xen_front_platform::Platform::evtchn_notify(w.rt.platform().as_ref(), fa.queues[0].port)
        .expect("notify");
    let failure = dev_a.wait_failure(STEP);
    fb.write_data(0, 0, &pattern(8, PAGE));
    let b = fb.call(0, rw(BLKIF_OP_WRITE, 5, 0, &[seg(fb.data_refs[0], 0, 7)]));

    // Assert
    let failure = failure.expect("device a failed");
    assert_eq!(failure.queue, 0);
    assert!(
        matches!(
            failure.reason,
            FailureReason::RingOverflow { prod: 101, cons: 1 }
        ),
        "{failure:?}"
    );
    assert!(matches!(dev_a.status(), DeviceStatus::Failed(_)));
    let (hook_domid, hook_failure) = hook_rx.recv_timeout(STEP).expect("the hook ran");
    assert_eq!((hook_domid, &hook_failure), (w.domid(), &failure));
    assert!(hook_rx.try_recv().is_err(), "the hook runs once");
    assert_eq!((b.id, b.status), (5, BLKIF_RSP_OKAY));
    assert_eq!(img_b.read_at(0, PAGE), pattern(8, PAGE));
    assert_eq!(dev_b.status(), DeviceStatus::Running);
    dev_a.disconnect();
    dev_b.disconnect();
}

#[test]
fn test_blkback_garbage_flood_fails_device() {
    // Arrange: fail after 8 invalid requests in a row.
    let w = World::start("bb-flood");
    let img = Image::new(1 << 20);
    let mut cfg = DiskConfig::raw(img.path(), false);
    cfg.max_consecutive_invalid = 8;
    let be = BlkBackend::new(cfg).expect("open");
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");

    // Act: 8 slots of random-looking garbage.
    let garbage: Vec<Slot> = (0..8u8)
        .map(|i| {
            let mut s = [0u8; BLKIF_SRING_ENTRY_SIZE];
            for (j, b) in s.iter_mut().enumerate() {
                *b = (j as u8).wrapping_mul(97).wrapping_add(i).wrapping_add(200);
            }
            s[0] = 0x80 | i;
            s
        })
        .collect();
    f.submit(0, &garbage);
    let failure = dev.wait_failure(STEP);

    // Assert
    assert_eq!(
        failure.map(|f| f.reason),
        Some(FailureReason::TooManyInvalidRequests(8))
    );
    std::thread::sleep(Duration::from_millis(50));
    let m = dev.disconnect();
    assert_eq!(m.requests, 8);
}

#[test]
fn test_blkback_indirect_page_with_bad_segments_gets_errors() {
    // Arrange: an indirect page whose second segment ends past its page, and
    // one whose segments run past the end of the disk.
    let w = World::start("bb-badind");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 4);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let (d0, d1, ind) = (f.data_refs[0], f.data_refs[1], f.data_refs[3]);
    let bytes = |segs: &[xen_abi::io::blkif::blkif_request_segment]| -> Vec<u8> {
        segs.iter()
            .flat_map(|s| zerocopy::IntoBytes::as_bytes(s).to_vec())
            .collect()
    };

    // Act
    f.write_data(3, 0, &bytes(&[seg(d0, 0, 7), seg(d1, 0, 9)]));
    let bad_sect = f.call(0, indirect(BLKIF_OP_WRITE, 1, 0, 2, &[ind]));
    f.write_data(3, 0, &bytes(&[seg(d0, 0, 7), seg(d1, 0, 7)]));
    let past_end = f.call(0, indirect(BLKIF_OP_READ, 2, 2040, 2, &[ind]));
    let good = f.call(0, indirect(BLKIF_OP_READ, 3, 2032, 2, &[ind]));

    // Assert
    assert_eq!((bad_sect.id, bad_sect.status), (1, BLKIF_RSP_ERROR));
    assert_eq!((past_end.id, past_end.status), (2, BLKIF_RSP_ERROR));
    assert_eq!((good.id, good.status), (3, BLKIF_RSP_OKAY));
    assert!(
        img.read_at(0, PAGE).iter().all(|&b| b == 0),
        "nothing of the refused write reached the disk"
    );
    dev.disconnect();
}

#[test]
fn test_blkback_failure_report_names_the_cause() {
    let f = xen_blkback::DeviceFailure {
        queue: 2,
        reason: FailureReason::RingOverflow { prod: 99, cons: 1 },
    };
    assert_eq!(
        f.to_string(),
        "queue 2: the frontend's request producer 99 overflows the ring (consumer at 1)"
    );
}

#[test]
fn test_blkback_connect_to_bad_ring_ref_fails_cleanly() {
    // Arrange
    let w = World::start("bb-badring");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let f = Front::new(&w.rt, 1, 1, 1);
    let mut p = f.params(false);
    p.queues[0].ring_refs = vec![55_555];

    // Act
    let r = be.connect(&w.handles, w.domid(), &p);

    // Assert
    assert!(
        matches!(
            r,
            Err(xen_blkback::BlkbackError::Device(
                xen_blkback::DeviceError::MapRing { .. }
            ))
        ),
        "{r:?}"
    );
}
