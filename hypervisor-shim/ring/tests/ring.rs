//! Normal operation of the request/response rings: layout, FIFO order,
//! wrap-around, notification hold-off, batching, reconnect, a model-based
//! property test and a two-thread stress test.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::VecDeque;
use xen_ring::{const_ring_size, BackRing, FrontRing, RingError, SharedRing, PAGE_SIZE};

#[test]
fn test_init_fresh_page_writes_shared_ring_init_header() {
    // Arrange: a page full of garbage.
    let pages = Pages::new(1);
    pages.fill(0, &XorShift(7).bytes(PAGE_SIZE));
    // Act
    let front = FrontRing::<Msg112, Msg112>::init(pages.shared()).unwrap();
    // Assert: SHARED_RING_INIT.
    assert_eq!(pages.peek_u32(REQ_PROD), 0);
    assert_eq!(pages.peek_u32(REQ_EVENT), 1);
    assert_eq!(pages.peek_u32(RSP_PROD), 0);
    assert_eq!(pages.peek_u32(RSP_EVENT), 1);
    for off in (16..64).step_by(4) {
        assert_eq!(pages.peek_u32(off), 0, "pad at {off}");
    }
    assert_eq!(front.req_prod_pvt(), 0);
    assert_eq!(front.rsp_cons(), 0);
    assert_eq!(front.free_requests(), 32);
}

#[test]
fn test_nr_ents_matches_const_ring_size() {
    // blkif: 112-byte requests, 12-byte responses -> 32 slots per page.
    let p1 = Pages::new(1);
    let f = FrontRing::<Msg112, Msg12>::init(p1.shared()).unwrap();
    assert_eq!(f.nr_ents(), 32);
    assert_eq!(f.size(), 32);
    assert_eq!(f.entry_size(), 112);
    let f = FrontRing::<Msg12, Msg12>::init(p1.shared()).unwrap();
    assert_eq!(f.nr_ents(), 256); // 4032 / 12 = 336 -> 256
    let p16 = Pages::new(16);
    let f = FrontRing::<Msg112, Msg12>::init(p16.shared()).unwrap();
    assert_eq!(f.nr_ents(), 512); // 65472 / 112 = 584 -> 512
    let f = FrontRing::<[u8; 4032], u8>::init(p1.shared()).unwrap();
    assert_eq!(f.nr_ents(), 1);
    assert_eq!(const_ring_size(4096, 112), 32);
    assert_eq!(const_ring_size(8192, 112), 64);
    assert_eq!(const_ring_size(4096, 4033), 0);
    assert_eq!(const_ring_size(4096, 0), 0);
}

#[test]
fn test_shared_ring_pages_and_len() {
    for pages in [1usize, 2, 4, 8, 16, 3] {
        let p = Pages::new(pages);
        let m = p.shared();
        assert_eq!(m.pages(), pages);
        assert_eq!(m.len(), pages * PAGE_SIZE);
        assert_eq!(m.as_ptr(), p.ptr());
    }
}

#[test]
fn test_round_trip_preserves_fifo_order() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg112, Msg12>(&pages);
    for round in 0..10u64 {
        for i in 0..20 {
            front.push_request(&msg112(round * 100 + i)).unwrap();
        }
        front.push_requests_and_check_notify();
        for i in 0..20 {
            let req = back.take_request().unwrap().expect("request");
            assert_eq!(req, msg112(round * 100 + i));
            back.push_response(&msg12((round * 100 + i) as u32))
                .unwrap();
        }
        assert_eq!(back.take_request().unwrap(), None);
        back.push_responses_and_check_notify();
        for i in 0..20 {
            assert_eq!(
                front.take_response().unwrap(),
                Some(msg12((round * 100 + i) as u32))
            );
        }
        assert_eq!(front.take_response().unwrap(), None);
    }
}

#[test]
fn test_push_request_when_full_returns_full() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg112, Msg112>(&pages);
    for i in 0..32 {
        assert_eq!(front.free_requests(), 32 - i);
        front.push_request(&msg112(i as u64)).unwrap();
    }
    assert!(front.is_full());
    assert_eq!(front.push_request(&msg112(99)), Err(RingError::Full));
    front.push_requests_and_check_notify();
    // Taking requests does not free slots: only consumed responses do.
    let mut out = [[0u64; 14]; 32];
    assert_eq!(back.take_requests(&mut out).unwrap(), 32);
    assert_eq!(front.push_request(&msg112(99)), Err(RingError::Full));
    back.push_response(&msg112(0)).unwrap();
    back.push_responses_and_check_notify();
    assert_eq!(front.push_request(&msg112(99)), Err(RingError::Full));
    assert!(front.take_response().unwrap().is_some());
    assert_eq!(front.free_requests(), 1);
    front.push_request(&msg112(99)).unwrap();
}

#[test]
fn test_batch_push_and_take_return_counts() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    let reqs: Vec<Msg12> = (0..300).map(msg12).collect();
    assert_eq!(front.push_requests(&reqs), 256);
    assert_eq!(front.push_requests(&reqs), 0);
    // Not published yet.
    assert_eq!(back.unconsumed_requests().unwrap(), 0);
    assert_eq!(front.unpublished_requests(), 256);
    front.push_requests_and_check_notify();
    assert_eq!(back.unconsumed_requests().unwrap(), 256);
    let mut out = vec![[0u32; 3]; 100];
    assert_eq!(back.take_requests(&mut out).unwrap(), 100);
    assert_eq!(&out[..], &reqs[..100]);
    assert_eq!(back.pending_responses(), 100);
    assert_eq!(back.push_responses(&reqs[..150]), 100);
    assert_eq!(back.unpublished_responses(), 100);
    back.push_responses_and_check_notify();
    let mut rsps = vec![[0u32; 3]; 256];
    assert_eq!(front.take_responses(&mut rsps).unwrap(), 100);
    assert_eq!(&rsps[..100], &reqs[..100]);
    assert_eq!(front.take_responses(&mut rsps).unwrap(), 0);
}

/// Indices start a few before u32::MAX; several rings' worth of messages go
/// through, crossing the 2^32 wrap with every batch size.
#[test]
fn test_indices_near_u32_max_wrap_around() {
    for start in [
        u32::MAX - 3,
        u32::MAX,
        u32::MAX - 31,
        u32::MAX - 32,
        0x7fff_fff0,
    ] {
        for batch in [1u32, 3, 31, 32] {
            let pages = Pages::new(1);
            let (mut front, mut back) = pair_at::<Msg112, Msg12>(&pages, start);
            assert_eq!(front.req_prod_pvt(), start);
            assert_eq!(back.req_cons(), start);
            let mut next_req = 0u64;
            let mut next_rsp = 0u64;
            while next_rsp < 100 {
                for _ in 0..batch {
                    front.push_request(&msg112(next_req)).unwrap();
                    next_req += 1;
                }
                front.push_requests_and_check_notify();
                while let Some(r) = back.take_request().unwrap() {
                    back.push_response(&msg12(r[0] as u32)).unwrap();
                }
                back.push_responses_and_check_notify();
                while let Some(r) = front.take_response().unwrap() {
                    assert_eq!(r, msg12(msg112(next_rsp)[0] as u32));
                    next_rsp += 1;
                }
            }
            assert_eq!(front.req_prod_pvt(), start.wrapping_add(next_req as u32));
            assert_eq!(pages.peek_u32(REQ_PROD), front.req_prod_pvt());
            assert_eq!(pages.peek_u32(RSP_PROD), back.rsp_prod_pvt());
        }
    }
}

#[test]
fn test_push_and_check_notify_follows_req_event() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    // req_event = 1 after init: the first request notifies.
    front.push_request(&msg12(0)).unwrap();
    assert!(front.push_requests_and_check_notify());
    // Nothing new: no notification.
    assert!(!front.push_requests_and_check_notify());
    // The back end has not re-armed: no notification.
    front.push_request(&msg12(1)).unwrap();
    assert!(!front.push_requests_and_check_notify());
    // The back end drains, final check re-arms req_event = req_cons + 1.
    while back.take_request().unwrap().is_some() {}
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(pages.peek_u32(REQ_EVENT), 3);
    front.push_request(&msg12(2)).unwrap();
    front.push_request(&msg12(3)).unwrap();
    assert!(front.push_requests_and_check_notify());
    // Work pending: final check says so and does not touch req_event.
    assert!(back.final_check_for_requests().unwrap());
    assert_eq!(pages.peek_u32(REQ_EVENT), 3);
}

#[test]
fn test_final_check_for_responses_rearms_rsp_event() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    for i in 0..4 {
        front.push_request(&msg12(i)).unwrap();
    }
    front.push_requests_and_check_notify();
    assert!(!front.final_check_for_responses().unwrap());
    assert_eq!(pages.peek_u32(RSP_EVENT), 1);
    let mut out = [[0; 3]; 4];
    back.take_requests(&mut out).unwrap();
    back.push_response(&out[0]).unwrap();
    assert!(back.push_responses_and_check_notify());
    back.push_response(&out[1]).unwrap();
    assert!(!back.push_responses_and_check_notify());
    assert!(front.final_check_for_responses().unwrap());
    while front.take_response().unwrap().is_some() {}
    assert!(!front.final_check_for_responses().unwrap());
    assert_eq!(pages.peek_u32(RSP_EVENT), 3);
    back.push_responses(&out[2..]);
    assert!(back.push_responses_and_check_notify());
}

#[test]
fn test_batched_rsp_event_notifies_once_per_batch() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    for i in 0..16 {
        front.push_request(&msg12(i)).unwrap();
    }
    front.push_requests_and_check_notify();
    assert!(!front.final_check_for_responses_batched(8).unwrap());
    assert_eq!(pages.peek_u32(RSP_EVENT), 8);
    let mut notifies = 0;
    for _ in 0..16 {
        let r = back.take_request().unwrap().unwrap();
        back.push_response(&r).unwrap();
        notifies += back.push_responses_and_check_notify() as u32;
    }
    assert_eq!(notifies, 1);
    // Clamped to the outstanding requests: asking for 100 with 4 in flight
    // sets the event 4 ahead.
    let mut out = [[0; 3]; 16];
    assert_eq!(front.take_responses(&mut out).unwrap(), 16);
    for i in 0..4 {
        front.push_request(&msg12(i)).unwrap();
    }
    front.push_requests_and_check_notify();
    assert_eq!(front.set_rsp_event(100), 20);
    // No requests outstanding: at least one ahead.
    for _ in 0..4 {
        let r = back.take_request().unwrap().unwrap();
        back.push_response(&r).unwrap();
    }
    back.push_responses_and_check_notify();
    front.take_responses(&mut out).unwrap();
    assert_eq!(front.set_rsp_event(100), 21);
    assert_eq!(front.set_rsp_event(0), 21);
}

#[test]
fn test_batched_req_event_is_clamped_to_ring_room() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg112, Msg112>(&pages);
    assert!(!back.final_check_for_requests_batched(1000).unwrap());
    assert_eq!(pages.peek_u32(REQ_EVENT), 32);
    let mut notifies = 0;
    for i in 0..32 {
        front.push_request(&msg112(i)).unwrap();
        notifies += front.push_requests_and_check_notify() as u32;
    }
    assert_eq!(notifies, 1);
    assert_eq!(back.set_req_event(0), 1);
}

#[test]
fn test_attach_after_reconnect_keeps_in_flight_requests() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<Msg12, Msg12>(&pages);
    for i in 0..5 {
        front.push_request(&msg12(i)).unwrap();
    }
    front.push_requests_and_check_notify();
    for _ in 0..2 {
        let r = back.take_request().unwrap().unwrap();
        back.push_response(&r).unwrap();
    }
    back.push_responses_and_check_notify();
    // The front end goes away and comes back.
    let mem = front.into_shared();
    let mut front = FrontRing::<Msg12, Msg12>::attach(mem).unwrap();
    assert_eq!(front.req_prod_pvt(), 5);
    assert_eq!(front.rsp_cons(), 2);
    assert_eq!(front.free_requests(), 256 - 3);
    for _ in 0..3 {
        let r = back.take_request().unwrap().unwrap();
        back.push_response(&r).unwrap();
    }
    back.push_responses_and_check_notify();
    for i in 2..5 {
        assert_eq!(front.take_response().unwrap(), Some(msg12(i)));
    }
    // A back end attaching to a used ring starts at rsp_prod.
    let back2 = BackRing::<Msg12, Msg12>::attach(back.into_shared()).unwrap();
    assert_eq!(back2.req_cons(), 5);
    assert_eq!(back2.rsp_prod_pvt(), 5);
}

#[test]
fn test_odd_sized_entries_copy_bytewise() {
    let pages = Pages::new(1);
    let (mut front, mut back) = pair::<[u8; 7], [u16; 3]>(&pages);
    assert_eq!(front.entry_size(), 7);
    for round in 0..100u8 {
        let req = [round, 1, 2, 3, 4, 5, round ^ 0xff];
        front.push_request(&req).unwrap();
        front.push_requests_and_check_notify();
        assert_eq!(back.take_request().unwrap(), Some(req));
        back.push_response(&[round as u16, 0xbeef, 7]).unwrap();
        back.push_responses_and_check_notify();
        assert_eq!(
            front.take_response().unwrap(),
            Some([round as u16, 0xbeef, 7])
        );
    }
}

#[test]
fn test_four_byte_aligned_base_works() {
    let pages = Pages::new(2);
    // A 4-aligned (not 8-aligned) base: one page starting 4 bytes in, inside
    // a two-page allocation.
    // SAFETY: p + 4 .. p + 4 + 4096 lies inside the allocation, which outlives
    // the rings.
    let m = |_: ()| unsafe { SharedRing::new(pages.ptr().add(4), PAGE_SIZE) }.unwrap();
    let mut front = FrontRing::<[u64; 3], u64>::init(m(())).unwrap();
    let mut back = BackRing::<[u64; 3], u64>::attach(m(())).unwrap();
    for i in 0..1000u64 {
        front.push_request(&[i, !i, i << 7]).unwrap();
        front.push_requests_and_check_notify();
        assert_eq!(back.take_request().unwrap(), Some([i, !i, i << 7]));
        back.push_response(&i).unwrap();
        back.push_responses_and_check_notify();
        assert_eq!(front.take_response().unwrap(), Some(i));
    }
}

#[test]
fn test_error_messages_are_sentences() {
    let e = RingError::ProducerOverflow {
        prod: 40,
        cons: 0,
        limit: 32,
    };
    assert_eq!(
        e.to_string(),
        "the peer's producer index 40 is not within 32 entries ahead of index 0"
    );
    assert_eq!(RingError::Full.to_string(), "the ring has no free slot");
}

// ---------------------------------------------------------------------------
// Model-based property test: a random interleaving of front and back
// operations on one thread, checked against a queue model.

#[derive(Debug, Clone)]
enum Op {
    PushReqs(u8),
    PublishReqs,
    TakeReqs(u8),
    Respond(u8),
    PublishRsps,
    TakeRsps(u8),
    FinalCheckReqs,
    FinalCheckRsps,
    FinalCheckRspsBatched(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..40).prop_map(Op::PushReqs),
        Just(Op::PublishReqs),
        (0u8..40).prop_map(Op::TakeReqs),
        (0u8..40).prop_map(Op::Respond),
        Just(Op::PublishRsps),
        (0u8..40).prop_map(Op::TakeRsps),
        Just(Op::FinalCheckReqs),
        Just(Op::FinalCheckRsps),
        (0u8..40).prop_map(Op::FinalCheckRspsBatched),
    ]
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        (u32::MAX - 80)..=u32::MAX,
        0x7fff_ffb0u32..=0x8000_0010,
        any::<u32>(),
    ]
}

/// One simulated endpoint's view of notifications: asleep after a final check
/// said "nothing", woken by the peer's notification.
#[derive(Default)]
struct Sleeper {
    asleep: bool,
    notified: bool,
    /// With a batched event, the notification is only due once this many
    /// messages are pending.
    due_at: u32,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_random_interleavings_keep_fifo_and_wakeups(
        start in start_index(),
        pages_n in prop_oneof![Just(1usize), Just(2)],
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let pages = Pages::new(pages_n);
        let (mut front, mut back) = pair_at::<Msg112, Msg12>(&pages, start);
        let nr = front.nr_ents();
        let mut next_req: u64 = 0;
        // Requests pushed (not necessarily published), in order.
        let mut unpublished_reqs: VecDeque<u64> = VecDeque::new();
        let mut published_reqs: VecDeque<u64> = VecDeque::new();
        let mut taken: VecDeque<u64> = VecDeque::new();
        let mut unpublished_rsps: VecDeque<u64> = VecDeque::new();
        let mut published_rsps: VecDeque<u64> = VecDeque::new();
        let mut next_rsp_expected: u64 = 0;
        let mut back_sleep = Sleeper::default();
        let mut front_sleep = Sleeper::default();

        for op in ops {
            match op {
                Op::PushReqs(k) => {
                    for _ in 0..k {
                        let outstanding = unpublished_reqs.len() + published_reqs.len()
                            + taken.len() + unpublished_rsps.len() + published_rsps.len();
                        let r = front.push_request(&msg112(next_req));
                        if outstanding < nr as usize {
                            prop_assert_eq!(r, Ok(()));
                            unpublished_reqs.push_back(next_req);
                            next_req += 1;
                        } else {
                            prop_assert_eq!(r, Err(RingError::Full));
                        }
                    }
                }
                Op::PublishReqs => {
                    let n = front.push_requests_and_check_notify();
                    prop_assert_eq!(n && unpublished_reqs.is_empty(), false);
                    published_reqs.extend(unpublished_reqs.drain(..));
                    if n {
                        back_sleep.notified = true;
                    }
                    if back_sleep.asleep && published_reqs.len() as u32 >= back_sleep.due_at {
                        prop_assert!(back_sleep.notified, "lost wake-up of the back end");
                    }
                }
                Op::TakeReqs(k) => {
                    back_sleep.asleep = false;
                    if k % 2 == 0 {
                        for _ in 0..k {
                            match back.take_request().unwrap() {
                                Some(r) => {
                                    let want = published_reqs.pop_front();
                                    prop_assert_eq!(Some(msg112(want.unwrap_or(u64::MAX))), Some(r));
                                    taken.push_back(want.unwrap());
                                }
                                None => prop_assert!(published_reqs.is_empty()),
                            }
                        }
                    } else {
                        let mut out = vec![[0u64; 14]; k as usize];
                        let n = back.take_requests(&mut out).unwrap();
                        prop_assert_eq!(n, published_reqs.len().min(k as usize));
                        for r in &out[..n] {
                            let want = published_reqs.pop_front().unwrap();
                            prop_assert_eq!(*r, msg112(want));
                            taken.push_back(want);
                        }
                    }
                }
                Op::Respond(k) => {
                    for _ in 0..k {
                        match taken.pop_front() {
                            Some(id) => {
                                back.push_response(&msg12(id as u32)).unwrap();
                                unpublished_rsps.push_back(id);
                            }
                            None => {
                                let is_overrun = matches!(
                                    back.push_response(&msg12(0)),
                                    Err(RingError::ResponseOverrun { .. })
                                );
                                prop_assert!(is_overrun);
                            }
                        }
                    }
                }
                Op::PublishRsps => {
                    let n = back.push_responses_and_check_notify();
                    prop_assert_eq!(n && unpublished_rsps.is_empty(), false);
                    published_rsps.extend(unpublished_rsps.drain(..));
                    if n {
                        front_sleep.notified = true;
                    }
                    if front_sleep.asleep && published_rsps.len() as u32 >= front_sleep.due_at {
                        prop_assert!(front_sleep.notified, "lost wake-up of the front end");
                    }
                }
                Op::TakeRsps(k) => {
                    front_sleep.asleep = false;
                    let mut out = vec![[0u32; 3]; k as usize];
                    let n = front.take_responses(&mut out).unwrap();
                    prop_assert_eq!(n, published_rsps.len().min(k as usize));
                    for r in &out[..n] {
                        let id = published_rsps.pop_front().unwrap();
                        prop_assert_eq!(id, next_rsp_expected);
                        next_rsp_expected += 1;
                        prop_assert_eq!(*r, msg12(id as u32));
                    }
                }
                Op::FinalCheckReqs => {
                    let work = back.final_check_for_requests().unwrap();
                    prop_assert_eq!(work, !published_reqs.is_empty());
                    if !work {
                        back_sleep = Sleeper { asleep: true, notified: false, due_at: 1 };
                    }
                }
                Op::FinalCheckRsps => {
                    let work = front.final_check_for_responses().unwrap();
                    prop_assert_eq!(work, !published_rsps.is_empty());
                    if !work {
                        front_sleep = Sleeper { asleep: true, notified: false, due_at: 1 };
                    }
                }
                Op::FinalCheckRspsBatched(k) => {
                    let work = front.final_check_for_responses_batched(k as u32).unwrap();
                    prop_assert_eq!(work, !published_rsps.is_empty());
                    if !work {
                        let in_flight = (published_reqs.len() + taken.len() + unpublished_rsps.len()) as u32;
                        let due = (k as u32).min(in_flight).max(1);
                        front_sleep = Sleeper { asleep: true, notified: false, due_at: due };
                    }
                }
            }
            // Counts stay within the ring.
            prop_assert!(front.free_requests() <= nr);
            let outstanding = unpublished_reqs.len() + published_reqs.len()
                + taken.len() + unpublished_rsps.len() + published_rsps.len();
            prop_assert_eq!(front.free_requests() as usize, nr as usize - outstanding);
            prop_assert_eq!(back.unconsumed_requests().unwrap() as usize, published_reqs.len());
            prop_assert_eq!(front.has_unconsumed_responses().unwrap() as usize, published_rsps.len());
            prop_assert_eq!(back.pending_responses() as usize, taken.len());
        }
    }
}

// ---------------------------------------------------------------------------
// Two real threads.

/// A level-triggered event channel: `notify` sets it, `wait` blocks until set
/// and clears it. Waiting more than 20 s means a lost wake-up.
#[derive(Default)]
struct EventChannel {
    pending: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl EventChannel {
    fn notify(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let guard = self.pending.lock().unwrap();
        let (mut guard, timeout) = self
            .cv
            .wait_timeout_while(guard, std::time::Duration::from_secs(20), |p| !*p)
            .unwrap();
        assert!(!timeout.timed_out(), "lost wake-up: waited 20 s");
        *guard = false;
    }
}

fn two_thread_stress<Req, F>(pages_n: usize, total: u64, batch: usize, make: F)
where
    Req: xen_ring::RingEntry + PartialEq + std::fmt::Debug + Send + Default,
    F: Fn(u64) -> Req + Send + Sync + Copy + 'static,
{
    use std::sync::Arc;
    let pages = Arc::new(Pages::new(pages_n));
    let (mut front, mut back) = pair::<Req, u64>(&pages);
    let to_back = Arc::new(EventChannel::default());
    let to_front = Arc::new(EventChannel::default());

    let (tb, tf) = (to_back.clone(), to_front.clone());
    let backend = std::thread::spawn(move || {
        let mut expect = 0u64;
        let mut buf = vec![Req::default(); batch];
        let mut notifies = 0u64;
        while expect < total {
            let n = back.take_requests(&mut buf).unwrap();
            for r in &buf[..n] {
                assert_eq!(*r, make(expect));
                back.push_response(&expect).unwrap();
                expect += 1;
            }
            if n > 0 {
                if back.push_responses_and_check_notify() {
                    notifies += 1;
                    tf.notify();
                }
                continue;
            }
            if !back.final_check_for_requests().unwrap() {
                tb.wait();
            }
        }
        notifies
    });

    let mut sent = 0u64;
    let mut got = 0u64;
    let mut notifies = 0u64;
    let mut rsps = vec![0u64; batch];
    while got < total {
        let mut pushed = 0;
        while sent < total && pushed < batch && front.push_request(&make(sent)).is_ok() {
            sent += 1;
            pushed += 1;
        }
        if pushed > 0 && front.push_requests_and_check_notify() {
            notifies += 1;
            to_back.notify();
        }
        let n = front.take_responses(&mut rsps).unwrap();
        for r in &rsps[..n] {
            assert_eq!(*r, got);
            got += 1;
        }
        if n > 0 || (sent < total && !front.is_full()) {
            continue;
        }
        if got < total
            && !front
                .final_check_for_responses_batched(batch as u32)
                .unwrap()
        {
            to_front.wait();
        }
    }
    let back_notifies = backend.join().unwrap();
    // Notifications happen at most once per publish.
    assert!(notifies <= total && back_notifies <= total);
}

#[test]
fn test_two_threads_112_byte_one_at_a_time() {
    two_thread_stress::<Msg112, _>(1, 200_000, 1, msg112);
}

#[test]
fn test_two_threads_112_byte_batched() {
    two_thread_stress::<Msg112, _>(16, 400_000, 64, msg112);
}

#[test]
fn test_two_threads_12_byte_batched() {
    two_thread_stress::<Msg12, _>(1, 400_000, 32, |i| msg12(i as u32));
}
