//! The frontend against a well-behaved backend played by the test.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{connected, pump, run_until, FakeBack, Offer, Rng, DEVID};
use xen_blkfront::{BlkFront, BlkStatus, BlkfrontConfig, BlkfrontError, FrontState, RequestKind};
use xen_front_platform::fake::FakePlatform;

fn platform() -> FakePlatform {
    FakePlatform::with_limits(common::GUEST, 16384, 32768)
}

#[test]
fn test_handshake_multi_page_ring_writes_libxl_nodes_and_connects() {
    // Arrange
    let p = platform();
    let mut back = FakeBack::new(&p, Offer::default());
    let mut front = BlkFront::new(&p, DEVID, BlkfrontConfig::default()).expect("open");

    // Act: nothing happens until the backend is in InitWait.
    pump(&p, &mut front);
    let before = front.state();
    back.init_wait();
    pump(&p, &mut front);
    let offered = front.state();
    back.connect();
    pump(&p, &mut front);

    // Assert
    assert_eq!(before, FrontState::WaitBackend);
    assert_eq!(offered, FrontState::Initialised);
    assert_eq!(front.state(), FrontState::Connected);
    assert_eq!(back.fe_node("ring-page-order").as_deref(), Some("2"));
    for i in 0..4 {
        assert!(back.fe_node(&format!("ring-ref{i}")).is_some());
    }
    assert_eq!(back.fe_node("ring-ref"), None);
    assert_eq!(back.fe_node("protocol").as_deref(), Some("x86_64-abi"));
    assert_eq!(back.fe_node("feature-persistent").as_deref(), Some("1"));
    assert_eq!(back.fe_state().as_deref(), Some("4"));
    assert_eq!(back.ring_pages_seen, 4);
    let disk = front.disk().expect("disk");
    assert_eq!(disk.sectors, 8192);
    assert!(front.persistent());
    // The default: 256 segments a request, as many as the backend offers.
    assert_eq!(front.max_request_bytes(), 256 * 4096);
}

#[test]
fn test_handshake_backend_without_order_gets_single_ring_ref() {
    let p = platform();
    let offer = Offer {
        max_ring_page_order: 0,
        ..Offer::default()
    };
    let (front, back) = connected(&p, offer, BlkfrontConfig::default());
    assert_eq!(front.ring_page_order(), 0);
    assert!(back.fe_node("ring-ref").is_some());
    assert_eq!(back.fe_node("ring-page-order"), None);
    assert_eq!(back.fe_node("ring-ref0"), None);
}

fn read_after_write(persistent_backend: bool, queues: u32, seed: u64) {
    // Arrange
    let p = platform();
    let offer = Offer {
        persistent: persistent_backend,
        max_queues: 4,
        ..Offer::default()
    };
    let cfg = BlkfrontConfig {
        max_queues: queues,
        ..BlkfrontConfig::default()
    };
    let (mut front, mut back) = connected(&p, offer, cfg);
    let sectors = offer.sectors;
    let max_sectors = (front.max_request_bytes() / 512) as u64;
    let mut model = vec![0u8; (sectors * 512) as usize];
    let mut rng = Rng(seed);

    // Act + Assert: batches of random writes then reads of random ranges.
    for _round in 0..10 {
        let mut writes = HashMap::new();
        let mut written_ranges: Vec<(u64, u64)> = Vec::new();
        for _ in 0..16 {
            let len = 1 + rng.below(max_sectors);
            let sector = rng.below(sectors - len + 1);
            // Keep a batch's writes disjoint so completion order cannot matter.
            if written_ranges
                .iter()
                .any(|&(s, l)| sector < s + l && s < sector + len)
            {
                continue;
            }
            written_ranges.push((sector, len));
            let data = rng.bytes((len * 512) as usize);
            model[(sector * 512) as usize..((sector + len) * 512) as usize].copy_from_slice(&data);
            let tag = front.submit_write(sector, &data).expect("submit write");
            writes.insert(tag, ());
        }
        let done = run_until(&mut front, &mut back, writes.len());
        assert_eq!(done.len(), writes.len());
        assert!(done
            .iter()
            .all(|c| c.status == BlkStatus::Okay && writes.contains_key(&c.tag)));

        let mut reads = HashMap::new();
        for _ in 0..16 {
            let len = 1 + rng.below(max_sectors);
            let sector = rng.below(sectors - len + 1);
            let tag = front
                .submit_read(sector, (len * 512) as usize)
                .expect("submit read");
            reads.insert(tag, (sector, len));
        }
        let done = run_until(&mut front, &mut back, reads.len());
        assert_eq!(done.len(), reads.len());
        for c in done {
            let (sector, len) = reads.remove(&c.tag).expect("each read completes once");
            assert_eq!(c.kind, RequestKind::Read);
            assert_eq!(c.status, BlkStatus::Okay);
            assert!(
                c.data == model[(sector * 512) as usize..((sector + len) * 512) as usize],
                "read of {len} sectors at {sector} differs"
            );
        }
    }
    assert_eq!(back.disk, model);
    assert!(back.indirect_seen > 0, "large transfers went indirect");
    assert_eq!(front.outstanding(), 0);
    assert_eq!(back.per_queue.len(), queues as usize);
    assert!(
        back.per_queue.iter().all(|&n| n > 0),
        "{:?}",
        back.per_queue
    );
}

#[test]
fn test_read_after_write_persistent_random_sectors_and_sizes_match() {
    read_after_write(true, 1, 0x1234_5678);
}

#[test]
fn test_read_after_write_non_persistent_random_sectors_and_sizes_match() {
    read_after_write(false, 1, 0x9abc_def0);
}

#[test]
fn test_read_after_write_two_queues_uses_both_rings() {
    read_after_write(true, 2, 0x5555);
}

#[test]
fn test_multi_queue_writes_queue_directories() {
    let p = platform();
    let offer = Offer {
        max_queues: 4,
        ..Offer::default()
    };
    let cfg = BlkfrontConfig {
        max_queues: 3,
        ..BlkfrontConfig::default()
    };
    let (front, back) = connected(&p, offer, cfg);
    assert_eq!(front.queues(), 3);
    assert_eq!(back.queues(), 3);
    assert_eq!(back.fe_node("multi-queue-num-queues").as_deref(), Some("3"));
    for q in 0..3 {
        assert!(back.fe_node(&format!("queue-{q}/ring-ref0")).is_some());
        assert!(back.fe_node(&format!("queue-{q}/event-channel")).is_some());
    }
    assert_eq!(back.fe_node("event-channel"), None);
}

#[test]
fn test_non_persistent_grants_are_revoked_after_completion() {
    // Arrange
    let p = platform();
    let offer = Offer {
        persistent: false,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    let ring_grants = p.grants_in_use();

    // Act
    let data = vec![0xa5u8; 64 * 1024];
    front.submit_write(0, &data).expect("write");
    let in_flight = p.grants_in_use();
    let done = run_until(&mut front, &mut back, 1);

    // Assert
    assert!(!front.persistent());
    assert_eq!(done[0].status, BlkStatus::Okay);
    assert_eq!(
        in_flight,
        ring_grants + 16 + 1,
        "16 data pages and 1 indirect page"
    );
    assert_eq!(p.grants_in_use(), ring_grants);
}

#[test]
fn test_persistent_grants_are_reused_across_requests() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    for i in 0..10u64 {
        front.submit_write(i * 8, &[i as u8; 4096]).expect("write");
        run_until(&mut front, &mut back, 1);
    }
    // One data page granted once, reused ten times.
    assert_eq!(front.stats().grants, 1);
}

#[test]
fn test_direct_only_backend_caps_requests_at_eleven_segments() {
    let p = platform();
    let offer = Offer {
        max_indirect_segments: 0,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    assert_eq!(front.max_request_bytes(), 11 * 4096);
    assert_eq!(
        front.submit_write(0, &[1u8; 12 * 4096]),
        Err(BlkfrontError::TooLarge {
            len: 12 * 4096,
            max: 11 * 4096
        })
    );
    front.submit_write(0, &[7u8; 11 * 4096]).expect("fits");
    run_until(&mut front, &mut back, 1);
    assert_eq!(back.indirect_seen, 0);
    assert!(back.disk[..11 * 4096].iter().all(|&b| b == 7));
}

#[test]
fn test_indirect_request_of_256_segments_round_trips() {
    let p = platform();
    let cfg = BlkfrontConfig {
        max_indirect_segments: 256,
        ..BlkfrontConfig::default()
    };
    let (mut front, mut back) = connected(&p, Offer::default(), cfg);
    let mut rng = Rng(77);
    let data = rng.bytes(256 * 4096);
    front.submit_write(16, &data).expect("write 1 MiB");
    run_until(&mut front, &mut back, 1);
    let tag = front.submit_read(16, data.len()).expect("read");
    let done = run_until(&mut front, &mut back, 1);
    assert_eq!(done[0].tag, tag);
    assert!(done[0].data == data);
    assert_eq!(back.indirect_seen, 2);
}

#[test]
fn test_flush_and_discard_reach_the_backend() {
    // Arrange
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    front.submit_write(0, &[9u8; 8192]).expect("write");
    run_until(&mut front, &mut back, 1);

    // Act
    let f = front.flush().expect("flush");
    let d = front.discard(0, 8, false).expect("discard");
    let done = run_until(&mut front, &mut back, 2);

    // Assert
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .any(|c| c.tag == f && c.kind == RequestKind::Flush));
    assert!(done
        .iter()
        .any(|c| c.tag == d && c.kind == RequestKind::Discard));
    assert!(done.iter().all(|c| c.status == BlkStatus::Okay));
    assert_eq!((back.flushes, back.discards), (1, 1));
    assert!(back.disk[..4096].iter().all(|&b| b == 0));
    assert!(back.disk[4096..8192].iter().all(|&b| b == 9));
}

#[test]
fn test_backend_without_flush_or_discard_refuses_them() {
    let p = platform();
    let offer = Offer {
        flush: false,
        discard: false,
        ..Offer::default()
    };
    let (mut front, _back) = connected(&p, offer, BlkfrontConfig::default());
    assert_eq!(
        front.flush(),
        Err(BlkfrontError::Unsupported { op: "flush" })
    );
    assert_eq!(
        front.discard(0, 8, false),
        Err(BlkfrontError::Unsupported { op: "discard" })
    );
}

#[test]
fn test_read_only_disk_refuses_write_but_reads() {
    let p = platform();
    let offer = Offer {
        read_only: true,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    assert!(front.disk().expect("disk").read_only());
    assert_eq!(
        front.submit_write(0, &[1u8; 512]),
        Err(BlkfrontError::ReadOnly)
    );
    front.submit_read(0, 512).expect("read");
    let done = run_until(&mut front, &mut back, 1);
    assert_eq!(done[0].status, BlkStatus::Okay);
}

#[test]
fn test_submit_outside_disk_or_misaligned_is_refused() {
    let p = platform();
    let (mut front, _back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    assert!(matches!(
        front.submit_read(8191, 1024),
        Err(BlkfrontError::OutOfRange { .. })
    ));
    assert!(matches!(
        front.submit_read(u64::MAX, 512),
        Err(BlkfrontError::OutOfRange { .. })
    ));
    assert!(matches!(
        front.submit_read(0, 100),
        Err(BlkfrontError::Misaligned { .. })
    ));
    assert!(matches!(
        front.submit_read(0, 0),
        Err(BlkfrontError::Misaligned { .. })
    ));
    assert_eq!(front.outstanding(), 0);
}

#[test]
fn test_submit_before_connect_is_not_connected() {
    let p = platform();
    let _back = FakeBack::new(&p, Offer::default());
    let mut front = BlkFront::new(&p, DEVID, BlkfrontConfig::default()).expect("open");
    assert_eq!(front.submit_read(0, 512), Err(BlkfrontError::NotConnected));
}

#[test]
fn test_missing_backend_node_is_no_backend() {
    let p = platform();
    assert!(matches!(
        BlkFront::new(&p, DEVID, BlkfrontConfig::default()),
        Err(BlkfrontError::NoBackend { devid: DEVID })
    ));
}

#[test]
fn test_full_id_table_is_busy_until_completions() {
    // Arrange: one-page ring, 32 ids.
    let p = platform();
    let cfg = BlkfrontConfig {
        max_ring_page_order: 0,
        ..BlkfrontConfig::default()
    };
    let (mut front, mut back) = connected(&p, Offer::default(), cfg);
    for i in 0..32u64 {
        front.submit_read(i, 512).expect("room");
    }

    // Act
    let busy = front.submit_read(0, 512);
    let done = run_until(&mut front, &mut back, 32);

    // Assert
    assert_eq!(busy, Err(BlkfrontError::Busy));
    assert_eq!(done.len(), 32);
    front.submit_read(0, 512).expect("room again");
}

#[test]
fn test_wait_reports_pending_responses_and_times_out_when_idle() {
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    assert_eq!(front.wait(Some(Duration::from_millis(5))), Ok(false));
    front.submit_read(0, 512).expect("read");
    back.serve();
    assert_eq!(front.wait(None), Ok(true));
    assert_eq!(front.poll_completions().expect("poll").len(), 1);
}

#[test]
fn test_drop_releases_every_grant_and_page() {
    let p = platform();
    {
        let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
        front.submit_write(0, &[1u8; 65536]).expect("write");
        run_until(&mut front, &mut back, 1);
        back.unmap_all();
    }
    assert_eq!(p.grants_in_use(), 0);
}

#[test]
fn test_order_four_ring_of_sixteen_pages_carries_traffic() {
    let p = platform();
    let offer = Offer {
        max_ring_page_order: 4,
        ..Offer::default()
    };
    let cfg = BlkfrontConfig {
        max_ring_page_order: 4,
        ..BlkfrontConfig::default()
    };
    let (mut front, mut back) = connected(&p, offer, cfg);
    assert_eq!(back.ring_pages_seen, 16);
    assert!(back.fe_node("ring-ref15").is_some());
    // More requests than a 4-page ring holds, all in flight at once.
    for i in 0..300u64 {
        front
            .submit_write(i, &[i as u8; 512])
            .expect("room on a 512-slot ring");
    }
    let done = run_until(&mut front, &mut back, 300);
    assert_eq!(done.len(), 300);
    assert!((0..300usize).all(|i| back.disk[i * 512] == i as u8));
}

#[test]
fn test_large_sector_disk_refuses_unaligned_and_serves_aligned() {
    let p = platform();
    let offer = Offer {
        sector_size: 4096,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    let disk = *front.disk().expect("disk");
    assert_eq!((disk.sector_size, disk.sectors), (4096, 1024));
    assert_eq!(disk.sectors_512(), 8192);
    assert!(matches!(
        front.submit_write(1, &[1u8; 4096]),
        Err(BlkfrontError::Misaligned { .. })
    ));
    assert!(matches!(
        front.submit_write(8, &[1u8; 512]),
        Err(BlkfrontError::Misaligned { .. })
    ));
    front.submit_write(8, &[3u8; 8192]).expect("aligned");
    run_until(&mut front, &mut back, 1);
    assert!(back.disk[4096..12288].iter().all(|&b| b == 3));
}

#[test]
fn test_grant_table_exhaustion_holds_requests_until_grants_free() {
    // Arrange: 8 reserved + 1 ring + 40 free grants, non-persistent backend.
    let p = FakePlatform::with_limits(common::GUEST, 8 + 1 + 40, 4096);
    let offer = Offer {
        persistent: false,
        max_ring_page_order: 0,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    let mut rng = Rng(9);
    let mut model = vec![0u8; back.disk.len()];

    // Act: four 64 KiB writes need 4 * 17 grants, more than the table has.
    let mut tags = Vec::new();
    for i in 0..4u64 {
        let data = rng.bytes(65536);
        let at = (i * 65536) as usize;
        model[at..at + 65536].copy_from_slice(&data);
        tags.push(front.submit_write(i * 128, &data).expect("accepted"));
    }
    let pushed_at_first = front.stats().pushed;
    let done = run_until(&mut front, &mut back, 4);

    // Assert
    assert_eq!(pushed_at_first, 2, "only two fit in the grant table");
    assert_eq!(done.len(), 4);
    assert!(done.iter().all(|c| c.status == BlkStatus::Okay));
    assert!(back.disk == model);
}

#[test]
fn test_given_back_buffer_reused_read_has_exact_length_and_data() {
    // Arrange: a written region and a stale, larger buffer handed back.
    let p = platform();
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let data: Vec<u8> = (0..8192u32).map(|i| ((i * 13) ^ (i >> 8)) as u8).collect();
    front.submit_write(8, &data).expect("submit write");
    let done = run_until(&mut front, &mut back, 1);
    assert_eq!(done[0].status, BlkStatus::Okay);
    front.give_back_buffer(vec![0xaa; 4096 * 3]);

    // Act: two reads, shorter than the stale buffer.
    front.submit_read(8, 4096).expect("submit read");
    front.submit_read(16, 4096).expect("submit read");
    let done = run_until(&mut front, &mut back, 2);

    // Assert
    assert_eq!(done.len(), 2);
    for c in &done {
        assert_eq!(c.status, BlkStatus::Okay);
        assert_eq!(c.data.len(), 4096);
        assert!(c.data == data[..4096] || c.data == data[4096..]);
    }
    assert!(done[0].data != done[1].data, "the two reads differ");
}

fn buffer_roundtrip(persistent_backend: bool) {
    // Arrange: a 64 KiB buffer (indirect) and a 4 KiB one (direct).
    let p = platform();
    let offer = Offer {
        persistent: persistent_backend,
        ..Offer::default()
    };
    let (mut front, mut back) = connected(&p, offer, BlkfrontConfig::default());
    let big = front.alloc_buffer(65536).expect("buffer");
    let small = front.alloc_buffer(4096).expect("buffer");
    let mut rng = Rng(7);
    let data = rng.bytes(65536);
    front.buffer_write(big, 0, &data).expect("fill");

    // Act: write it at sector 16, read it back into the other buffers.
    let w = front.submit_write_buffer(16, big).expect("write");
    let busy = front.buffer_write(big, 0, &[0; 8]);
    let done = run_until(&mut front, &mut back, 1);
    let readback = front.alloc_buffer(65536).expect("buffer");
    front.submit_read_buffer(16, readback).expect("read");
    front.submit_read_buffer(16 + 8, small).expect("read");
    let reads = run_until(&mut front, &mut back, 2);

    // Assert
    assert_eq!(busy, Err(BlkfrontError::BufferBusy));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].tag, w);
    assert_eq!(done[0].status, BlkStatus::Okay);
    assert!(done[0].data.is_empty(), "no copy for a buffer request");
    assert_eq!(&back.disk[16 * 512..16 * 512 + 65536], &data[..]);
    assert!(reads.iter().all(|c| c.status == BlkStatus::Okay));
    let mut got = vec![0u8; 65536];
    front
        .buffer_read(readback, 0, &mut got)
        .expect("read buffer");
    assert_eq!(got, data);
    let mut part = vec![0u8; 4096];
    front.buffer_read(small, 0, &mut part).expect("read buffer");
    assert_eq!(&part[..], &data[4096..8192]);
    // Unaligned access across a page boundary of the buffer.
    let mut mid = vec![0u8; 100];
    front
        .buffer_read(readback, 4050, &mut mid)
        .expect("read buffer");
    assert_eq!(&mid[..], &data[4050..4150]);
    for b in [big, small, readback] {
        front.free_buffer(b).expect("free");
    }
    assert_eq!(front.free_buffer(big), Err(BlkfrontError::BadBuffer));
}

#[test]
fn test_buffer_write_then_read_roundtrips_with_persistent_backend() {
    buffer_roundtrip(true);
}

#[test]
fn test_buffer_write_then_read_roundtrips_without_persistent_grants() {
    buffer_roundtrip(false);
}

#[test]
fn test_buffer_bad_lengths_and_ranges_are_refused() {
    let p = platform();
    // 32 segments a request: a registered buffer may be larger than one
    // request carries.
    let cfg = BlkfrontConfig {
        max_indirect_segments: 32,
        ..BlkfrontConfig::default()
    };
    let (mut front, _back) = connected(&p, Offer::default(), cfg);
    assert_eq!(front.alloc_buffer(0), Err(BlkfrontError::BadBuffer));
    assert_eq!(front.alloc_buffer(100), Err(BlkfrontError::BadBuffer));
    assert_eq!(
        front.alloc_buffer(xen_blkfront::MAX_BUFFER_BYTES + 512),
        Err(BlkfrontError::BadBuffer)
    );
    let b = front.alloc_buffer(1024).expect("buffer");
    assert_eq!(front.buffer_len(b), Ok(1024));
    assert_eq!(
        front.buffer_write(b, 1000, &[0; 25]),
        Err(BlkfrontError::BadBuffer)
    );
    assert_eq!(
        front.buffer_read(b, usize::MAX, &mut [0; 2]),
        Err(BlkfrontError::BadBuffer)
    );
    // A buffer larger than one request carries is refused at submission.
    let max = front.max_request_bytes();
    let huge = front.alloc_buffer(max + 4096).expect("buffer");
    assert!(matches!(
        front.submit_read_buffer(0, huge),
        Err(BlkfrontError::TooLarge { .. })
    ));
    // Outside the disk.
    let sectors = front.disk().expect("disk").sectors;
    assert!(matches!(
        front.submit_read_buffer(sectors - 1, b),
        Err(BlkfrontError::OutOfRange { .. })
    ));
    // Refused submissions leave the buffer idle and usable.
    front.buffer_write(huge, 0, &[1; 16]).expect("idle");
    front.buffer_write(b, 0, &[1; 16]).expect("idle");
}

#[test]
fn test_wait_polls_then_times_out_without_a_moving_clock() {
    // The fake platform's clock does not move: the bounded poll must end.
    let p = platform();
    let cfg = BlkfrontConfig {
        poll_budget: Duration::from_millis(10),
        ..BlkfrontConfig::default()
    };
    let (mut front, mut back) = connected(&p, Offer::default(), cfg);
    assert_eq!(front.wait(Some(Duration::from_millis(20))), Ok(false));
    front.submit_read(0, 512).expect("read");
    back.serve();
    assert_eq!(front.wait(Some(Duration::from_millis(20))), Ok(true));
}
