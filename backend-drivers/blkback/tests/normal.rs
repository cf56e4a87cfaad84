//! blkback serving a real guest runtime's rings: the test process is both the
//! guest (a `xen-pvguest` runtime attached as domain N, with a hand-written
//! frontend) and Dom0 (the backend under test), over a private shim daemon.

mod common;

use common::*;
use xen_abi::io::blkif::*;
use xen_blkback::{DeviceStatus, DiskConfig};
use xen_front_platform::{Platform, PlatformError};

#[test]
fn test_blkback_write_then_read_roundtrips_through_guest_pages() {
    // Arrange
    let w = World::start("bb-rw");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 4);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let a = pattern(1, PAGE);
    let b = pattern(2, PAGE);
    f.write_data(0, 0, &a);
    f.write_data(1, 0, &b);
    let (g0, g1, g2, g3) = (
        f.data_refs[0],
        f.data_refs[1],
        f.data_refs[2],
        f.data_refs[3],
    );

    // Act: write page 0 whole and sectors 2..=5 of page 1 at sector 16,
    // then read them back into pages 2 and 3.
    let wr = f.call(
        0,
        rw(BLKIF_OP_WRITE, 7, 16, &[seg(g0, 0, 7), seg(g1, 2, 5)]),
    );
    let rd = f.call(0, rw(BLKIF_OP_READ, 8, 16, &[seg(g2, 0, 7), seg(g3, 2, 5)]));

    // Assert
    assert_eq!(
        (wr.id, wr.operation, wr.status),
        (7, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    );
    assert_eq!(
        (rd.id, rd.operation, rd.status),
        (8, BLKIF_OP_READ, BLKIF_RSP_OKAY)
    );
    assert_eq!(f.read_data(2, 0, PAGE), a);
    assert_eq!(f.read_data(3, 1024, 2048), b[1024..3072].to_vec());
    assert_eq!(img.read_at(16 * 512, PAGE), a, "the image holds the data");
    assert_eq!(img.read_at(16 * 512 + 4096, 2048), b[1024..3072].to_vec());
    let m = dev.metrics();
    assert_eq!((m.reads, m.writes, m.errors), (1, 1, 0));
    assert_eq!((m.bytes_read, m.bytes_written), (6144, 6144));
    assert_eq!(dev.status(), DeviceStatus::Running);
    dev.disconnect();
}

#[test]
fn test_blkback_indirect_256_segments_roundtrip() {
    // Arrange: 256 data pages plus one indirect page of segments.
    let w = World::start("bb-ind");
    let img = Image::new(4 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 257);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let data = pattern(9, 256 * PAGE);
    f.data.write(0, &data).expect("fill");
    let segs: Vec<u8> = (0..256)
        .flat_map(|i| {
            let s = seg(f.data_refs[i], 0, 7);
            zerocopy::IntoBytes::as_bytes(&s).to_vec()
        })
        .collect();
    f.write_data(256, 0, &segs);
    let ind = f.data_refs[256];

    // Act: write 1 MiB at sector 100, zero the pages, read it back.
    let wr = f.call(0, indirect(BLKIF_OP_WRITE, 1, 100, 256, &[ind]));
    f.data.fill(0, 256 * PAGE, 0).expect("zero");
    let rd = f.call(0, indirect(BLKIF_OP_READ, 2, 100, 256, &[ind]));

    // Assert: indirect responses echo the inner operation (as Linux blkback).
    assert_eq!((wr.status, wr.operation), (BLKIF_RSP_OKAY, BLKIF_OP_WRITE));
    assert_eq!((rd.status, rd.operation), (BLKIF_RSP_OKAY, BLKIF_OP_READ));
    let mut back = vec![0u8; 256 * PAGE];
    f.data.read(0, &mut back).expect("read");
    assert!(back == data, "1 MiB read back differs");
    assert!(img.read_at(100 * 512, 256 * PAGE) == data);
    assert_eq!(dev.metrics().bytes_written, 1 << 20);
    dev.disconnect();
}

#[test]
fn test_blkback_flush_barrier_and_discard_succeed() {
    // Arrange
    let w = World::start("bb-fd");
    let img = Image::new(1 << 20);
    img.write_at(0, &vec![0xaa; 64 * 1024]);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    f.write_data(0, 0, &pattern(3, PAGE));
    let g = f.data_refs[0];

    // Act
    let fl = f.call(0, flush(1));
    let ba = f.call(0, rw(BLKIF_OP_WRITE_BARRIER, 2, 200, &[seg(g, 0, 7)]));
    let di = f.call(0, discard(3, 16, 64));

    // Assert
    assert_eq!(
        (fl.status, fl.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_FLUSH_DISKCACHE)
    );
    assert_eq!(
        (ba.status, ba.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_WRITE_BARRIER)
    );
    assert_eq!(img.read_at(200 * 512, PAGE), pattern(3, PAGE));
    assert_eq!(
        (di.status, di.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_DISCARD)
    );
    assert!(
        img.read_at(16 * 512, 64 * 512).iter().all(|&b| b == 0),
        "the discarded range reads as zeros"
    );
    assert!(img.read_at(0, 16 * 512).iter().all(|&b| b == 0xaa));
    assert!(img.read_at(80 * 512, 512).iter().all(|&b| b == 0xaa));
    let m = dev.metrics();
    assert_eq!((m.flushes, m.discards, m.writes), (1, 1, 1));
    dev.disconnect();
}

#[test]
fn test_blkback_multi_page_ring_with_persistent_grants_maps_once() {
    // Arrange: a 16-page ring (order 4) and persistent grants.
    let w = World::start("bb-pers");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 16, 8);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(true))
        .expect("connect");
    for i in 0..8 {
        f.write_data(i, 0, &pattern(i as u8, PAGE));
    }

    // Act: a full round of 8 writes, then 200 more requests over the same
    // pages (more than the 512-slot ring? no: the ring wraps many times).
    let mut slots = Vec::new();
    for i in 0..8u64 {
        slots.push(rw(
            BLKIF_OP_WRITE,
            i,
            i * 8,
            &[seg(f.data_refs[i as usize], 0, 7)],
        ));
    }
    f.submit(0, &slots);
    let first = f.responses(0, 8);
    let maps_after_first = dev.metrics().grant_maps;
    for round in 0..25u64 {
        let reads: Vec<_> = (0..8u64)
            .map(|i| {
                rw(
                    BLKIF_OP_READ,
                    100 + round * 8 + i,
                    i * 8,
                    &[seg(f.data_refs[i as usize], 0, 7)],
                )
            })
            .collect();
        f.submit(0, &reads);
        let r = f.responses(0, 8);
        assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{r:?}");
    }

    // Assert
    assert!(first.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    let m = dev.metrics();
    assert_eq!(maps_after_first, 8, "each data page mapped once");
    assert_eq!(m.grant_maps, 8, "later requests reuse the persistent maps");
    assert_eq!(m.persistent_grants, 8);
    for i in 0..8 {
        assert_eq!(img.read_at(i as u64 * 4096, PAGE), pattern(i as u8, PAGE));
    }
    let end = dev.disconnect();
    assert_eq!(end.persistent_grants, 0, "disconnect unmaps them");
    // The guest can revoke every grant again: nothing is left mapped.
    let p = w.rt.platform();
    for g in f.data_refs.iter().chain(&f.queues[0].ring_refs) {
        p.end_access(*g).expect("revoke after disconnect");
    }
}

#[test]
fn test_blkback_two_queues_each_served() {
    // Arrange
    let w = World::start("bb-mq");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 2, 1, 2);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    assert_eq!(dev.nr_queues(), 2);
    f.write_data(0, 0, &pattern(5, PAGE));
    f.write_data(1, 0, &pattern(6, PAGE));

    // Act
    let a = f.call(0, rw(BLKIF_OP_WRITE, 1, 0, &[seg(f.data_refs[0], 0, 7)]));
    let b = f.call(1, rw(BLKIF_OP_WRITE, 2, 8, &[seg(f.data_refs[1], 0, 7)]));

    // Assert
    assert_eq!((a.id, a.status), (1, BLKIF_RSP_OKAY));
    assert_eq!((b.id, b.status), (2, BLKIF_RSP_OKAY));
    assert_eq!(img.read_at(0, PAGE), pattern(5, PAGE));
    assert_eq!(img.read_at(4096, PAGE), pattern(6, PAGE));
    dev.disconnect();
}

#[test]
fn test_blkback_buffered_io_without_direct_roundtrips() {
    // Arrange: O_DIRECT off.
    let w = World::start("bb-buf");
    let img = Image::new(1 << 20);
    let mut cfg = DiskConfig::raw(img.path(), false);
    cfg.direct_io = false;
    let be = xen_blkback::BlkBackend::new(cfg).expect("open");
    assert!(!be.is_direct());
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    f.write_data(0, 512, &[0x5a; 512]);

    // Act
    let r = f.call(0, rw(BLKIF_OP_WRITE, 1, 3, &[seg(f.data_refs[0], 1, 1)]));

    // Assert
    assert_eq!(r.status, BLKIF_RSP_OKAY);
    assert_eq!(img.read_at(3 * 512, 512), vec![0x5a; 512]);
    dev.disconnect();
}

fn full_ring_batch(io_threads: usize) {
    // Arrange: 32 data pages, each with its own pattern.
    let w = World::start("bb-batch");
    let img = Image::new(1 << 20);
    let mut cfg = DiskConfig::raw(img.path(), false);
    cfg.io_threads = io_threads;
    let be = xen_blkback::BlkBackend::new(cfg).expect("open");
    let mut f = Front::new(&w.rt, 1, 1, 32);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    for i in 0..32 {
        f.write_data(i, 0, &pattern(i as u8 + 40, PAGE));
    }

    // Act: one full ring: 15 writes, a flush, 16 more writes, in one push.
    let mut slots = Vec::new();
    for i in 0..32u64 {
        if i == 15 {
            slots.push(flush(1000));
            continue;
        }
        slots.push(rw(
            BLKIF_OP_WRITE,
            i,
            i * 8,
            &[seg(f.data_refs[i as usize], 0, 7)],
        ));
    }
    f.submit(0, &slots);
    let r = f.responses(0, 32);

    // Assert: every request answered once, with its id.
    let mut ids: Vec<u64> = r.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let mut want: Vec<u64> = (0..32u64).filter(|&i| i != 15).collect();
    want.push(1000);
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{r:?}");
    for i in (0..32usize).filter(|&i| i != 15) {
        assert_eq!(
            img.read_at(i as u64 * 4096, PAGE),
            pattern(i as u8 + 40, PAGE)
        );
    }
    let m = dev.disconnect();
    assert_eq!((m.writes, m.flushes), (31, 1));
}

#[test]
fn test_blkback_full_ring_batch_with_flush_through_io_pool_all_answered() {
    full_ring_batch(4);
}

#[test]
fn test_blkback_full_ring_batch_with_flush_inline_all_answered() {
    full_ring_batch(0);
}

#[test]
fn test_blkback_notifies_a_frontend_sleeping_on_its_event_channel() {
    // Arrange: the frontend masks its port and sleeps in SCHEDOP_poll after
    // RING_FINAL_CHECK_FOR_RESPONSES, as a real blkfront would.
    let w = World::start("bb-notify");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let p = w.rt.platform();
    let port = f.queues[0].port;
    p.evtchn_mask(port).expect("mask");
    let g = f.data_refs[0];

    // Act: 20 requests, one at a time, each awaited by sleeping.
    let mut polls_timed_out = 0;
    for i in 0..20u64 {
        f.submit(0, &[rw(BLKIF_OP_READ, i, i * 8, &[seg(g, 0, 7)])]);
        let q = &mut f.queues[0].front;
        let rsp = loop {
            if let Some(r) = q.take_response().expect("sane") {
                break r;
            }
            if !q.final_check_for_responses().expect("sane") {
                if !p
                    .evtchn_poll(&[port], Some(std::time::Duration::from_secs(5)))
                    .expect("poll")
                {
                    polls_timed_out += 1;
                }
                p.evtchn_clear(port).expect("clear");
            }
        };
        assert_eq!(rsp[..8], i.to_ne_bytes());
    }

    // Assert
    assert_eq!(
        polls_timed_out, 0,
        "every sleep was ended by a notification"
    );
    assert!(dev.metrics().notifications >= 1);
    dev.disconnect();
}

#[test]
fn test_blkback_persistent_cache_full_maps_the_rest_per_request() {
    // Arrange: room for 2 persistent grants, 4 pages in use.
    let w = World::start("bb-pfull");
    let img = Image::new(1 << 20);
    let mut cfg = DiskConfig::raw(img.path(), false);
    cfg.max_persistent_grants = 2;
    let be = xen_blkback::BlkBackend::new(cfg).expect("open");
    let mut f = Front::new(&w.rt, 1, 1, 4);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(true))
        .expect("connect");
    for i in 0..4 {
        f.write_data(i, 0, &pattern(i as u8 + 60, PAGE));
    }

    // Act: the same 4 writes twice.
    for round in 0..2u64 {
        let slots: Vec<_> = (0..4u64)
            .map(|i| {
                rw(
                    BLKIF_OP_WRITE,
                    round * 4 + i,
                    i * 8,
                    &[seg(f.data_refs[i as usize], 0, 7)],
                )
            })
            .collect();
        f.submit(0, &slots);
        let r = f.responses(0, 4);
        assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{r:?}");
    }

    // Assert: 2 persistent maps, then 2 per-request maps per round.
    let m = dev.metrics();
    assert_eq!(m.persistent_grants, 2);
    assert_eq!(m.grant_maps, 2 + 2 * 2);
    for i in 0..4 {
        assert_eq!(img.read_at(i * 4096, PAGE), pattern(i as u8 + 60, PAGE));
    }
    dev.disconnect();
}

#[test]
fn test_blkback_persistent_cache_full_evicts_grants_of_earlier_rounds() {
    // Arrange: room for 2 persistent grants; pages 0 and 1 used in one
    // round, then pages 2 and 3 in later rounds.
    let w = World::start("bb-pevict");
    let img = Image::new(1 << 20);
    let mut cfg = DiskConfig::raw(img.path(), false);
    cfg.max_persistent_grants = 2;
    let be = xen_blkback::BlkBackend::new(cfg).expect("open");
    let mut f = Front::new(&w.rt, 1, 1, 4);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(true))
        .expect("connect");
    for i in 0..4 {
        f.write_data(i, 0, &pattern(i as u8 + 80, PAGE));
    }
    let write = |f: &mut Front<'_>, id: u64, pages: &[usize]| {
        let slots: Vec<_> = pages
            .iter()
            .map(|&i| {
                rw(
                    BLKIF_OP_WRITE,
                    id + i as u64,
                    i as u64 * 8,
                    &[seg(f.data_refs[i], 0, 7)],
                )
            })
            .collect();
        f.submit(0, &slots);
        let r = f.responses(0, pages.len());
        assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{r:?}");
    };

    // Act
    write(&mut f, 0, &[0, 1]);
    write(&mut f, 10, &[2]);
    write(&mut f, 20, &[3]);
    let p = w.rt.platform();
    let revoke_evicted = [p.end_access(f.data_refs[0]), p.end_access(f.data_refs[1])];
    let revoke_cached = p.end_access(f.data_refs[3]);

    // Assert: each page mapped once, the two oldest unmapped to make room
    // (their grants can be revoked again), the newest still pinned.
    let m = dev.metrics();
    assert_eq!(m.grant_maps, 4);
    assert_eq!(m.persistent_grants, 2);
    assert!(
        revoke_evicted.iter().all(|r| r.is_ok()),
        "{revoke_evicted:?}"
    );
    assert!(
        matches!(revoke_cached, Err(PlatformError::GrantInUse { .. })),
        "{revoke_cached:?}"
    );
    for i in 0..4 {
        assert_eq!(img.read_at(i * 4096, PAGE), pattern(i as u8 + 80, PAGE));
    }
    let end = dev.disconnect();
    assert_eq!(end.persistent_grants, 0);
    assert!(
        p.end_access(f.data_refs[3]).is_ok(),
        "unmapped at disconnect"
    );
}

#[test]
fn test_blkback_adjacent_requests_of_a_batch_merge_and_each_is_answered() {
    // Arrange: 4 pages with distinct data.
    let w = World::start("bb-merge");
    let img = Image::new(1 << 20);
    let be = backend(&img, false);
    let mut f = Front::new(&w.rt, 1, 1, 6);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    for i in 0..4 {
        f.write_data(i, 0, &pattern(i as u8 + 40, PAGE));
    }
    let g = f.data_refs.clone();

    // Act: one batch of writes: pages 0..3 at sectors 64, 72, 80 (adjacent),
    // then page 3 at sector 200 (not adjacent); then one batch of two
    // adjacent reads of sectors 64..80 into pages 4 and 5.
    let writes: Vec<_> = [(0usize, 64u64), (1, 72), (2, 80), (3, 200)]
        .iter()
        .map(|&(i, sector)| rw(BLKIF_OP_WRITE, 10 + i as u64, sector, &[seg(g[i], 0, 7)]))
        .collect();
    f.submit(0, &writes);
    let mut wr = f.responses(0, 4);
    let merged_writes = dev.metrics().merged;
    f.submit(
        0,
        &[
            rw(BLKIF_OP_READ, 20, 64, &[seg(g[4], 0, 7)]),
            rw(BLKIF_OP_READ, 21, 72, &[seg(g[5], 0, 7)]),
        ],
    );
    let mut rd = f.responses(0, 2);

    // Assert: every request answered with its own id and operation.
    wr.sort_by_key(|r| r.id);
    rd.sort_by_key(|r| r.id);
    let ids = |v: &[blkif_response]| {
        v.iter()
            .map(|r| (r.id, r.operation, r.status))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&wr),
        [10, 11, 12, 13].map(|id| (id, BLKIF_OP_WRITE, BLKIF_RSP_OKAY))
    );
    assert_eq!(
        ids(&rd),
        [20, 21].map(|id| (id, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    );
    assert_eq!(merged_writes, 2, "sectors 72 and 80 joined sector 64");
    let m = dev.metrics();
    assert_eq!(m.merged, 3);
    assert_eq!((m.writes, m.reads), (4, 2));
    assert_eq!((m.bytes_written, m.bytes_read), (4 * 4096, 2 * 4096));
    for (i, sector) in [(0u8, 64u64), (1, 72), (2, 80), (3, 200)] {
        assert_eq!(img.read_at(sector * 512, PAGE), pattern(i + 40, PAGE));
    }
    assert_eq!(f.read_data(4, 0, PAGE), pattern(40, PAGE));
    assert_eq!(f.read_data(5, 0, PAGE), pattern(41, PAGE));
    dev.disconnect();
}
