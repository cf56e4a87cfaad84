//! Negative tests: a hostile or broken peer, and invalid construction
//! arguments. Every case must end in an error or in garbage values, never in a
//! panic or an out-of-bounds access.

mod common;

use common::*;
use proptest::prelude::*;
use xen_ring::bytes::{
    cons_offsets, split, xs_offsets, ByteRingConsumer, ByteRingLayout, ByteRingProducer, ConsRing,
    XsRing,
};
use xen_ring::{BackRing, FrontRing, RingError, SharedRing, PAGE_SIZE};

#[test]
fn test_req_prod_jump_by_2_pow_31_is_producer_overflow() {
    let pages = Pages::new(1);
    let (_front, mut back) = pair::<Msg112, Msg12>(&pages);
    pages.poke_u32(REQ_PROD, 1 << 31);
    let want = Err(RingError::ProducerOverflow {
        prod: 1 << 31,
        cons: 0,
        limit: 32,
    });
    assert_eq!(back.unconsumed_requests(), want);
    assert_eq!(back.check_for_requests(), want);
    assert_eq!(back.take_request().map(|_| ()), want.map(|_: u32| ()));
    let mut out = [[0u64; 14]; 4];
    assert_eq!(
        back.take_requests(&mut out).map(|_| ()),
        want.map(|_: u32| ())
    );
    assert_eq!(
        back.final_check_for_requests().map(|_| ()),
        want.map(|_: u32| ())
    );
    // The ring state is untouched: once the peer behaves, work resumes.
    pages.poke_u32(REQ_PROD, 0);
    assert_eq!(back.take_request(), Ok(None));
    assert_eq!(back.req_cons(), 0);
}

#[test]
fn test_req_prod_nr_ents_plus_one_ahead_is_producer_overflow() {
    for start in [0u32, u32::MAX - 5, 0x8000_0000] {
        let pages = Pages::new(1);
        let (_front, mut back) = pair_at::<Msg112, Msg12>(&pages, start);
        pages.poke_u32(REQ_PROD, start.wrapping_add(33));
        assert!(matches!(
            back.take_request(),
            Err(RingError::ProducerOverflow { limit: 32, .. })
        ));
        // Exactly nr_ents ahead is legal (a full ring of garbage).
        pages.poke_u32(REQ_PROD, start.wrapping_add(32));
        let mut n = 0;
        while back.take_request().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 32);
        // RING_REQUEST_CONS_OVERFLOW: nothing more until responses are made.
        pages.poke_u32(REQ_PROD, start.wrapping_add(40));
        assert!(back.take_request().is_err());
    }
}

/// Found by the `ring` fuzz target: a back end that answered a full ring
/// privately (not published yet) was handed the same slots again by a
/// hostile `req_prod`, and its next answer overwrote an unpublished one
/// (65 unpublished responses on a ring of 64).
#[test]
fn test_req_prod_past_unpublished_responses_gives_no_slot() {
    let pages = Pages::new(1);
    let (_front, mut back) = pair::<Msg112, Msg12>(&pages);
    pages.poke_u32(REQ_PROD, 32);
    for _ in 0..32 {
        back.take_request().unwrap().unwrap();
    }
    for _ in 0..32 {
        back.push_response(&[0; 3]).unwrap();
    }
    // Every slot holds an unpublished response: a req_prod a whole ring
    // further (within rsp_prod_pvt + nr_ents, so no overflow) gives nothing.
    pages.poke_u32(REQ_PROD, 64);
    assert_eq!(back.unconsumed_requests(), Ok(0));
    assert_eq!(back.take_request(), Ok(None));
    assert!(back.push_response(&[0; 3]).is_err());
    assert_eq!(back.unpublished_responses(), 32);
    // Once published, the slots are the front end's again.
    back.push_responses_and_check_notify();
    assert_eq!(back.unconsumed_requests(), Ok(32));
    for _ in 0..32 {
        back.take_request().unwrap().unwrap();
    }
    assert_eq!(back.take_request(), Ok(None));
}

#[test]
fn test_req_prod_going_backwards_is_clamped_like_ring_h() {
    let pages = Pages::new(1);
    let (_front, mut back) = pair::<Msg12, Msg12>(&pages);
    pages.poke_u32(REQ_PROD, 10);
    for _ in 0..10 {
        back.take_request().unwrap().unwrap();
    }
    for _ in 0..4 {
        back.push_response(&[0; 3]).unwrap();
    }
    back.push_responses_and_check_notify();
    // req_prod goes back to 6: within rsp_prod_pvt + nr_ents, behind req_cons.
    // XEN_RING_NR_UNCONSUMED_REQUESTS clamps to nr_ents - (req_cons - rsp_prod_pvt).
    pages.poke_u32(REQ_PROD, 6);
    assert_eq!(back.unconsumed_requests(), Ok(256 - 6));
    // Behind rsp_prod_pvt: overflow.
    pages.poke_u32(REQ_PROD, 3);
    assert!(back.unconsumed_requests().is_err());
}

#[test]
fn test_garbage_slots_are_copied_out_as_values() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let pages = Pages::new(4);
    let (mut front, mut back) = pair::<Msg112, [u8; 13]>(&pages);
    let nr = back.nr_ents();
    for _ in 0..20 {
        pages.fill(64, &rng.bytes(pages.len() - 64));
        let prod = back.req_cons().wrapping_add(nr);
        pages.poke_u32(REQ_PROD, prod);
        let mut n = 0;
        while let Some(req) = back.take_request().unwrap() {
            std::hint::black_box(req);
            back.push_response(&[0xaa; 13]).unwrap();
            n += 1;
        }
        assert_eq!(n, nr);
        back.publish_responses();
        // The front end sees responses to requests it never sent: error.
        assert!(matches!(
            front.take_response(),
            Err(RingError::ProducerOverflow { .. })
        ));
    }
    // Garbage everywhere in the header too.
    pages.fill(0, &rng.bytes(64));
    let _ = back.take_request();
    let _ = front.take_response();
    let _ = front.final_check_for_responses();
    let _ = back.final_check_for_requests();
    let _ = front.push_requests_and_check_notify();
    let _ = back.push_responses_and_check_notify();
}

#[test]
fn test_rsp_prod_beyond_published_requests_is_producer_overflow() {
    let pages = Pages::new(1);
    let (mut front, _back) = pair::<Msg112, Msg12>(&pages);
    for i in 0..4 {
        front.push_request(&msg112(i)).unwrap();
    }
    front.push_requests_and_check_notify();
    front.push_request(&msg112(5)).unwrap(); // pushed, not published
    pages.poke_u32(RSP_PROD, 5);
    let want = RingError::ProducerOverflow {
        prod: 5,
        cons: 0,
        limit: 4,
    };
    assert_eq!(front.has_unconsumed_responses(), Err(want));
    assert_eq!(front.take_response(), Err(want));
    assert_eq!(front.final_check_for_responses(), Err(want));
    let mut out = [[0u32; 3]; 8];
    assert_eq!(front.take_responses(&mut out), Err(want));
    pages.poke_u32(RSP_PROD, 1 << 31);
    assert!(front.take_response().is_err());
    // Going backwards is also impossible for an honest back end.
    pages.poke_u32(RSP_PROD, 2);
    assert!(front.take_response().unwrap().is_some());
    assert!(front.take_response().unwrap().is_some());
    pages.poke_u32(RSP_PROD, 1);
    assert!(front.take_response().is_err());
}

#[test]
fn test_front_attach_to_corrupt_page_fails() {
    let pages = Pages::new(1);
    pages.poke_u32(REQ_PROD, 100);
    pages.poke_u32(RSP_PROD, 50);
    assert!(matches!(
        FrontRing::<Msg112, Msg112>::attach(pages.shared()),
        Err(RingError::ProducerOverflow { .. })
    ));
    pages.poke_u32(RSP_PROD, 101);
    assert!(FrontRing::<Msg112, Msg112>::attach(pages.shared()).is_err());
    pages.poke_u32(RSP_PROD, 68);
    assert!(FrontRing::<Msg112, Msg112>::attach(pages.shared()).is_ok());
}

#[test]
fn test_shared_ring_new_rejects_bad_memory() {
    let pages = Pages::new(17);
    let p = pages.ptr();
    // SAFETY: (all calls) the pointers are inside a 17-page allocation that
    // outlives the handles, or null; only validation runs.
    unsafe {
        assert!(matches!(
            SharedRing::new(std::ptr::null_mut(), PAGE_SIZE),
            Err(RingError::Misaligned { addr: 0, .. })
        ));
        assert!(matches!(
            SharedRing::new(p.add(2), PAGE_SIZE),
            Err(RingError::Misaligned { align: 4, .. })
        ));
        for len in [0, 1, 4095, 4097, 17 * PAGE_SIZE, 6000] {
            assert_eq!(
                SharedRing::new(p, len).map(|_| ()),
                Err(RingError::BadSize { len })
            );
        }
        assert!(SharedRing::new(p, 16 * PAGE_SIZE).is_ok());
    }
}

#[test]
fn test_entry_too_large_or_zero_sized_is_rejected() {
    let pages = Pages::new(1);
    assert_eq!(
        FrontRing::<[u8; 4033], u8>::init(pages.shared()).map(|_| ()),
        Err(RingError::EntryTooLarge {
            entry_size: 4033,
            len: 4096
        })
    );
    assert_eq!(
        BackRing::<u8, [u8; 5000]>::attach(pages.shared()).map(|_| ()),
        Err(RingError::EntryTooLarge {
            entry_size: 5000,
            len: 4096
        })
    );
    assert_eq!(
        FrontRing::<[u8; 0], u8>::init(pages.shared()).map(|_| ()),
        Err(RingError::ZeroSizedEntry)
    );
}

#[test]
fn test_push_response_without_request_is_response_overrun() {
    let pages = Pages::new(1);
    let (_front, mut back) = pair::<Msg12, Msg12>(&pages);
    assert_eq!(
        back.push_response(&[1, 2, 3]),
        Err(RingError::ResponseOverrun {
            rsp_prod: 0,
            req_cons: 0
        })
    );
    assert_eq!(back.push_responses(&[[1, 2, 3]]), 0);
}

// ---------------------------------------------------------------------------
// Byte rings.

#[test]
fn test_byte_ring_garbage_cons_index_fails_writer() {
    let pages = Pages::new(1);
    let mut guest = XsRing::guest(pages.shared()).unwrap();
    pages.poke_u32(xs_offsets::REQ_CONS, 5000);
    assert!(matches!(
        guest.try_write(b"hello"),
        Err(RingError::ProducerOverflow { limit: 1024, .. })
    ));
    assert_eq!(guest.write(b"hello"), 0);
    assert!(guest.free_space().is_err());
    // Nothing was written.
    assert_eq!(pages.peek_u32(xs_offsets::REQ_PROD), 0);
}

#[test]
fn test_byte_ring_garbage_prod_index_fails_reader() {
    let pages = Pages::new(1);
    let mut server = XsRing::server(pages.shared()).unwrap();
    let mut buf = [0u8; 64];
    for bad in [1025u32, 1 << 31, u32::MAX] {
        pages.poke_u32(xs_offsets::REQ_PROD, bad);
        assert!(matches!(
            server.read(&mut buf),
            Err(RingError::ProducerOverflow { .. })
        ));
        assert!(server.peek(&mut buf).is_err());
        assert!(server.available().is_err());
        assert!(server.advance(1).is_err());
    }
    assert_eq!(server.rx().cons(), 0);
    // Exactly full is legal: garbage bytes, no panic.
    pages.poke_u32(xs_offsets::REQ_PROD, 1024);
    let mut big = [0u8; 2048];
    assert_eq!(server.read(&mut big), Ok(1024));
}

#[test]
fn test_byte_ring_attach_to_corrupt_indices_fails() {
    let pages = Pages::new(1);
    pages.poke_u32(cons_offsets::OUT_PROD, 4000);
    assert!(ConsRing::backend(pages.shared()).is_err());
    assert!(ConsRing::guest(pages.shared()).is_err());
}

#[test]
fn test_byte_ring_bad_layouts_are_rejected() {
    let pages = Pages::new(1);
    let base = ByteRingLayout::XENSTORE_REQ;
    let bad = [
        ByteRingLayout { size: 1000, ..base },
        ByteRingLayout { size: 0, ..base },
        ByteRingLayout {
            data_offset: 4000,
            ..base
        },
        ByteRingLayout {
            prod_offset: 2050,
            ..base
        },
        ByteRingLayout {
            prod_offset: 4096,
            ..base
        },
        ByteRingLayout {
            cons_offset: usize::MAX - 2,
            ..base
        },
        ByteRingLayout {
            prod_offset: 8,
            ..base
        },
        ByteRingLayout {
            cons_offset: base.prod_offset,
            ..base
        },
    ];
    for layout in bad {
        assert_eq!(
            ByteRingProducer::new(pages.shared(), layout).map(|_| ()),
            Err(RingError::BadLayout),
            "{layout:?}"
        );
        assert_eq!(
            ByteRingConsumer::new(pages.shared(), layout).map(|_| ()),
            Err(RingError::BadLayout)
        );
    }
    // Two directions on the same bytes.
    assert_eq!(
        split(pages.shared(), base, base).map(|_| ()),
        Err(RingError::BadLayout)
    );
}

#[test]
fn test_byte_ring_advance_past_available_is_rejected() {
    let pages = Pages::new(1);
    let mut guest = ConsRing::guest(pages.shared()).unwrap();
    let mut backend = ConsRing::backend(pages.shared()).unwrap();
    assert_eq!(guest.write(b"abc"), 3);
    assert_eq!(
        backend.advance(4),
        Err(RingError::AdvanceOverrun {
            requested: 4,
            available: 3
        })
    );
    assert_eq!(backend.advance(3), Ok(()));
}

proptest! {
    /// Arbitrary header values and slot bytes, then arbitrary operations on
    /// both ends: no panic (including the debug assertions on our own index
    /// ranges), and every reported count stays within the ring.
    #[test]
    fn prop_hostile_headers_never_panic(
        header in prop::array::uniform16(any::<u8>()),
        start in any::<u32>(),
        scribbles in prop::collection::vec((0usize..4, any::<u32>(), 0u8..8), 0..60),
    ) {
        let pages = Pages::new(1);
        let (mut front, mut back) = pair_at::<Msg112, Msg12>(&pages, start);
        pages.fill(0, &header);
        let nr = front.nr_ents();
        for (field, value, action) in scribbles {
            pages.poke_u32(field * 4, value);
            match action {
                0 => { let _ = front.push_request(&msg112(1)); }
                1 => { front.push_requests_and_check_notify(); }
                2 => {
                    if let Ok(n) = back.unconsumed_requests() { prop_assert!(n <= nr); }
                    let _ = back.take_request();
                }
                3 => { let _ = back.push_response(&msg12(2)); }
                4 => { back.push_responses_and_check_notify(); }
                5 => {
                    if let Ok(n) = front.has_unconsumed_responses() { prop_assert!(n <= nr); }
                    let _ = front.take_response();
                }
                6 => { let _ = back.final_check_for_requests_batched(value); }
                _ => { let _ = front.final_check_for_responses_batched(value); }
            }
            prop_assert!(front.free_requests() <= nr);
            prop_assert!(back.pending_responses() <= nr);
        }
    }

    #[test]
    fn prop_hostile_byte_ring_indices_never_panic(
        values in prop::collection::vec((any::<bool>(), any::<u32>(), 0usize..3000), 1..50),
    ) {
        let pages = Pages::new(1);
        let mut guest = XsRing::guest(pages.shared()).unwrap();
        let data = vec![0x5au8; 3000];
        let mut buf = vec![0u8; 3000];
        for (is_prod, value, n) in values {
            // The server is hostile: it scribbles its indices.
            let off = if is_prod { xs_offsets::RSP_PROD } else { xs_offsets::REQ_CONS };
            pages.poke_u32(off, value);
            if let Ok(w) = guest.try_write(&data[..n]) { prop_assert!(w <= 1024); }
            if let Ok(r) = guest.read(&mut buf[..n]) { prop_assert!(r <= 1024); }
            if let Ok(a) = guest.available() { prop_assert!(a <= 1024); }
            if let Ok(f) = guest.free_space() { prop_assert!(f <= 1024); }
        }
    }
}
