//! Xen's domain watchdog (`SCHEDOP_watchdog`, `xen/common/sched/core.c`'s
//! `domain_watchdog`): a domain holds up to [`NR_WATCHDOGS`] timers; `id` 0
//! arms a free one for `timeout` seconds and returns its id (1-based,
//! `-ENOSPC` when none is free); `id` N with a timeout re-arms it, with 0
//! destroys it (`-EINVAL` for an id not in use). When one expires the
//! domain is shut down with `SHUTDOWN_watchdog`, whatever the guest is
//! doing: the VMM's watchdog thread waits for the earliest deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Timers per domain (Xen's `NR_DOMAIN_WATCHDOG_TIMERS`).
pub const NR_WATCHDOGS: usize = 2;

const EINVAL: i64 = -22;
const ENOSPC: i64 = -28;

/// A domain's watchdog timers.
#[derive(Debug, Default)]
pub struct Watchdogs {
    /// Deadline of each timer in use.
    timers: Mutex<[Option<Instant>; NR_WATCHDOGS]>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Watchdogs {
    /// No timer in use.
    pub fn new() -> Self {
        Self::default()
    }

    /// `SCHEDOP_watchdog(id, timeout)` at `now`: the hypercall's result.
    pub fn op(&self, id: u32, timeout: u32, now: Instant) -> i64 {
        let deadline = now
            .checked_add(Duration::from_secs(u64::from(timeout)))
            .unwrap_or(now + Duration::from_secs(u64::from(u32::MAX) / 4));
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let r = if id == 0 {
            match t.iter().position(Option::is_none) {
                Some(i) => {
                    t[i] = Some(deadline);
                    i as i64 + 1
                }
                None => ENOSPC,
            }
        } else {
            match t.get_mut(id as usize - 1) {
                Some(slot @ Some(_)) => {
                    *slot = (timeout != 0).then_some(deadline);
                    0
                }
                _ => EINVAL,
            }
        };
        self.cv.notify_all();
        r
    }

    /// The earliest deadline in use.
    fn next(t: &[Option<Instant>; NR_WATCHDOGS]) -> Option<(usize, Instant)> {
        t.iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i, d)))
            .min_by_key(|&(_, d)| d)
    }

    /// Waits until a watchdog expires (returns its id, and frees it) or
    /// [`Watchdogs::stop`] is called (`None`).
    pub fn wait_expiry(&self) -> Option<u32> {
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            let now = Instant::now();
            let wait = match Self::next(&t) {
                Some((i, d)) if d <= now => {
                    t[i] = None;
                    return Some(i as u32 + 1);
                }
                Some((_, d)) => d - now,
                None => Duration::from_secs(3600),
            };
            t = match self.cv.wait_timeout(t, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Ends [`Watchdogs::wait_expiry`] (the domain ended otherwise).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _g = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_watchdog_ids_rearm_destroy_as_xen() {
        let w = Watchdogs::new();
        let now = Instant::now();
        assert_eq!(w.op(0, 10, now), 1);
        assert_eq!(w.op(0, 10, now), 2);
        assert_eq!(w.op(0, 10, now), ENOSPC, "only two timers");
        assert_eq!(w.op(1, 20, now), 0, "re-arm");
        assert_eq!(w.op(2, 0, now), 0, "destroy");
        assert_eq!(w.op(2, 5, now), EINVAL, "destroyed id");
        assert_eq!(w.op(3, 5, now), EINVAL, "no such id");
        assert_eq!(w.op(u32::MAX, 5, now), EINVAL);
        assert_eq!(w.op(0, 10, now), 2, "a freed timer is reused");
    }

    #[test]
    fn test_watchdog_expires_unless_petted() {
        let w = std::sync::Arc::new(Watchdogs::new());
        let past = Instant::now() - Duration::from_secs(5);
        // Armed 5 s ago for 1 s: already expired.
        assert_eq!(w.op(0, 1, past), 1);
        assert_eq!(w.wait_expiry(), Some(1));
        // Expired timers are freed.
        assert_eq!(w.op(1, 1, Instant::now()), EINVAL);
        // A far deadline does not fire; stop ends the wait.
        assert_eq!(w.op(0, 3600, Instant::now()), 1);
        let w2 = std::sync::Arc::clone(&w);
        let t = std::thread::spawn(move || w2.wait_expiry());
        std::thread::sleep(Duration::from_millis(50));
        w.stop();
        assert_eq!(t.join().expect("waiter"), None);
    }
}
