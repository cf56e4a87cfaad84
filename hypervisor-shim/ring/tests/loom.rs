//! Model check of the notification protocol with loom, on the real ring code.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p xen-ring --release --test loom
//! ```
//!
//! Under `--cfg loom` the four sring header indices are loom atomics and the
//! `xen_mb()` fences are loom `fence(SeqCst)`, so loom explores every
//! interleaving and every weak-memory outcome the C++20 model allows for
//! `push_*_and_check_notify` racing `final_check_for_*`. The event channel is
//! an `AtomicBool` pending bit with a loom `Condvar` to block on: if a wake-up were lost, a
//! side would block forever and loom reports the deadlock.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use xen_ring::{BackRing, FrontRing, SharedRing};

/// One direction of an event channel: `pending` is the port's pending bit
/// (an `AtomicBool`, set by `notify`, cleared by the waiter); the mutex and
/// condition variable only let the waiter block instead of spinning.
struct EventChannel {
    pending: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl EventChannel {
    fn new() -> Self {
        EventChannel {
            pending: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn notify(&self) {
        let _guard = self.lock.lock().unwrap();
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Sleeps until the pending bit is set, then clears it.
    fn wait(&self) {
        let mut guard = self.lock.lock().unwrap();
        while !self.pending.swap(false, Ordering::AcqRel) {
            guard = self.wake.wait(guard).unwrap();
        }
    }
}

/// 4096-byte page on the heap, 8-aligned; freed by the caller.
fn page() -> *mut u8 {
    Box::into_raw(Box::new([0u64; 512])).cast::<u8>()
}

fn free_page(p: *mut u8) {
    // SAFETY: p came from Box::into_raw of a [u64; 512] in `page`, and no ring
    // uses it any more (both threads have finished).
    drop(unsafe { Box::from_raw(p.cast::<[u64; 512]>()) });
}

/// 1024-byte entries: 3 fit in a page after the header, so 2 slots.
type Big = [u64; 128];

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

/// Front sends `n` requests (more than the 2 slots when n > 2, so it also
/// waits for room), the back end answers each; both sides use the
/// check-notify / final-check protocol and sleep on their event channel.
/// `rsp_batch` > 1 uses the batched final check on the front end.
fn round_trip(n: u64, rsp_batch: u32) {
    builder().check(move || {
        let p = page();
        // SAFETY: the page outlives both rings (freed after the join); one
        // front, one back.
        let mem = unsafe { SharedRing::new(p, 4096) }.unwrap();
        // SAFETY: as above; same header atomics for the back end.
        let mem2 = unsafe { mem.loom_clone() };
        let mut front = FrontRing::<Big, u64>::init(mem).unwrap();
        let mut back = BackRing::<Big, u64>::attach(mem2).unwrap();
        assert_eq!(front.nr_ents(), 2);
        let to_back = Arc::new(EventChannel::new());
        let to_front = Arc::new(EventChannel::new());

        let (tb, tf) = (to_back.clone(), to_front.clone());
        let backend = thread::spawn(move || {
            let mut handled = 0u64;
            loop {
                while let Some(req) = back.take_request().unwrap() {
                    assert_eq!(req[0], handled);
                    back.push_response(&(req[0] + 100)).unwrap();
                    handled += 1;
                }
                if back.push_responses_and_check_notify() {
                    tf.notify();
                }
                if handled == n {
                    break;
                }
                if !back.final_check_for_requests().unwrap() {
                    tb.wait();
                }
            }
        });

        let mut sent = 0u64;
        let mut got = 0u64;
        while got < n {
            while sent < n && !front.is_full() {
                let mut req = [0u64; 128];
                req[0] = sent;
                front.push_request(&req).unwrap();
                sent += 1;
            }
            if front.push_requests_and_check_notify() {
                to_back.notify();
            }
            while let Some(rsp) = front.take_response().unwrap() {
                assert_eq!(rsp, got + 100);
                got += 1;
            }
            if got == n || (sent < n && !front.is_full()) {
                continue;
            }
            if !front.final_check_for_responses_batched(rsp_batch).unwrap() {
                to_front.wait();
            }
        }
        backend.join().unwrap();
        assert_eq!(sent, n);
        free_page(p);
    });
}

#[test]
fn loom_requests_one_way_no_lost_wakeup() {
    // The back end only consumes; the front pushes one request at a time,
    // notifying only when check_notify says so.
    builder().check(|| {
        let p = page();
        // SAFETY: the page outlives both rings; one front, one back.
        let mem = unsafe { SharedRing::new(p, 4096) }.unwrap();
        // SAFETY: as above.
        let mem2 = unsafe { mem.loom_clone() };
        let mut front = FrontRing::<u64, u64>::init(mem).unwrap();
        let mut back = BackRing::<u64, u64>::attach(mem2).unwrap();
        let evt = Arc::new(EventChannel::new());
        let evt2 = evt.clone();
        const N: u64 = 3;
        let consumer = thread::spawn(move || {
            let mut got = 0;
            loop {
                while let Some(v) = back.take_request().unwrap() {
                    assert_eq!(v, got);
                    got += 1;
                }
                if got == N {
                    break;
                }
                if !back.final_check_for_requests().unwrap() {
                    evt2.wait();
                }
            }
        });
        for i in 0..N {
            front.push_request(&i).unwrap();
            if front.push_requests_and_check_notify() {
                evt.notify();
            }
        }
        consumer.join().unwrap();
        free_page(p);
    });
}

#[test]
fn loom_round_trip_within_ring_no_lost_wakeup() {
    round_trip(2, 1);
}

#[test]
fn loom_round_trip_ring_full_no_lost_wakeup() {
    round_trip(3, 1);
}

#[test]
fn loom_round_trip_batched_rsp_event_no_lost_wakeup() {
    round_trip(3, 2);
}
