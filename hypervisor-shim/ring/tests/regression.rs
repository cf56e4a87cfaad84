//! Regression-style tests: edge cases of the index arithmetic, caching and
//! layout that are easy to break when optimizing.

mod common;

use common::*;
use xen_ring::bytes::{xs_offsets, XsRing};
use xen_ring::{BackRing, FrontRing, RingError, PAGE_SIZE};

#[test]
fn test_check_notify_with_nothing_new_leaves_page_untouched() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    pages.poke_u32(REQ_PROD, 0xdead); // the peer scribbles our index
    assert!(!front.push_requests_and_check_notify());
    assert_eq!(pages.peek_u32(REQ_PROD), 0xdead);
    pages.poke_u32(REQ_PROD, 0);
    assert!(!back.push_responses_and_check_notify());
    assert_eq!(pages.peek_u32(RSP_PROD), 0);
}

#[test]
fn test_cached_responses_are_served_before_a_corrupt_index_is_seen() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    for i in 0..2 {
        front.push_request(&msg12(i)).unwrap();
    }
    front.push_requests_and_check_notify();
    for _ in 0..2 {
        let r = back.take_request().unwrap().unwrap();
        back.push_response(&r).unwrap();
    }
    back.push_responses_and_check_notify();
    assert_eq!(front.check_for_responses(), Ok(2));
    // The back end turns hostile after the front has validated rsp_prod = 2.
    pages.poke_u32(RSP_PROD, 1 << 31);
    assert_eq!(front.take_response(), Ok(Some(msg12(0))));
    assert_eq!(front.take_response(), Ok(Some(msg12(1))));
    // The next fetch is fresh, and validated.
    assert!(matches!(
        front.take_response(),
        Err(RingError::ProducerOverflow {
            prod: 0x8000_0000,
            ..
        })
    ));
    // But the non-caching query sees it at once.
    assert!(front.has_unconsumed_responses().is_err());
}

#[test]
fn test_set_event_without_outstanding_work_is_one_ahead() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair_at::<Msg12, Msg12>(&pages, u32::MAX);
    assert_eq!(front.set_rsp_event(0), 0);
    assert_eq!(front.set_rsp_event(u32::MAX), 0);
    assert_eq!(back.set_req_event(0), 0);
    assert_eq!(pages.peek_u32(REQ_EVENT), 0);
    assert_eq!(pages.peek_u32(RSP_EVENT), 0);
}

#[test]
fn test_request_cons_overflow_stops_taking_until_responses() {
    let pages = Pages::new(1);
    let (_front, mut back) = pair::<Msg112, Msg12>(&pages);
    pages.poke_u32(REQ_PROD, 32);
    for _ in 0..32 {
        back.take_request().unwrap().unwrap();
    }
    assert_eq!(back.take_request(), Ok(None));
    assert_eq!(back.unconsumed_requests(), Ok(0));
    back.push_response(&msg12(0)).unwrap();
    pages.poke_u32(REQ_PROD, 33);
    // The slot is free once its response is published, not before (its
    // unpublished response would be overwritten).
    assert_eq!(back.unconsumed_requests(), Ok(0));
    back.push_responses_and_check_notify();
    assert_eq!(back.unconsumed_requests(), Ok(1));
    assert!(back.take_request().unwrap().is_some());
}

#[test]
fn test_sixteen_page_ring_stays_inside_its_slots() {
    let pages = Pages::new(16);
    let (mut front, mut back) = pair::<Msg112, Msg12>(&pages);
    assert_eq!(front.nr_ents(), 512);
    let end_of_slots = 64 + 512 * 112;
    let sentinel = vec![0xa5u8; pages.len() - end_of_slots];
    pages.fill(end_of_slots, &sentinel);
    for round in 0..3u64 {
        for i in 0..512 {
            front
                .push_request(&[u64::MAX; 14])
                .unwrap_or_else(|e| panic!("{round}/{i}: {e}"));
        }
        front.push_requests_and_check_notify();
        while back.take_request().unwrap().is_some() {
            back.push_response(&[u32::MAX; 3]).unwrap();
        }
        back.push_responses_and_check_notify();
        while front.take_response().unwrap().is_some() {}
    }
    for off in (end_of_slots..pages.len()).step_by(4) {
        assert_eq!(pages.peek_u32(off), 0xa5a5_a5a5, "byte {off} clobbered");
    }
}

#[test]
fn test_entry_size_is_the_larger_of_request_and_response() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<u32, Msg112>(&pages);
    assert_eq!(front.entry_size(), 112);
    assert_eq!(back.nr_ents(), 32);
    for i in 0..100u32 {
        front.push_request(&i).unwrap();
        front.push_requests_and_check_notify();
        assert_eq!(back.take_request(), Ok(Some(i)));
        back.push_response(&msg112(i as u64)).unwrap();
        back.push_responses_and_check_notify();
        assert_eq!(front.take_response(), Ok(Some(msg112(i as u64))));
    }
}

#[test]
fn test_zero_length_byte_ring_io_leaves_indices_alone() {
    let pages = Pages::new(1);
    let mut guest = XsRing::guest(pages.shared()).unwrap();
    assert_eq!(guest.write(&[]), 0);
    assert_eq!(guest.read(&mut []), Ok(0));
    assert_eq!(guest.advance(0), Ok(()));
    assert_eq!(pages.peek_u32(xs_offsets::REQ_PROD), 0);
    assert_eq!(pages.peek_u32(xs_offsets::RSP_CONS), 0);
}

#[test]
fn test_backend_attach_ignores_garbage_req_prod_until_it_reads_it() {
    let pages = Pages::new(1);
    pages.poke_u32(REQ_PROD, 0x1234_5678);
    pages.poke_u32(RSP_PROD, 7);
    let mut back = BackRing::<Msg12, Msg12>::attach(pages.shared()).unwrap();
    assert_eq!(back.req_cons(), 7);
    assert!(back.take_request().is_err());
    assert_eq!(back.req_cons(), 7);
}

#[test]
fn test_front_init_after_use_resets_everything() {
    let pages = Pages::new(2);
    {
        let (mut front, _back) = pair_at::<Msg12, Msg12>(&pages, 1000);
        front.push_request(&msg12(1)).unwrap();
        front.push_requests_and_check_notify();
    }
    let front = FrontRing::<Msg12, Msg12>::init(pages.shared()).unwrap();
    assert_eq!(front.free_requests(), front.nr_ents());
    assert_eq!(front.nr_ents(), 512); // (8192 - 64) / 12 = 677 -> 512
    assert_eq!(pages.peek_u32(REQ_PROD), 0);
    assert_eq!(pages.len(), 2 * PAGE_SIZE);
}
