//! The event budget of one console, xenconsoled's rate limit made
//! data-aware: an event after which the ring held at least
//! [`USEFUL_BYTES`] of output pays for itself (its cost is the logging the
//! output needs anyway) and the port is unmasked at once; other events
//! (a storm of events without output) get xenconsoled's allowance,
//! [`ALLOWANCE`] per [`PERIOD`], after which the port stays masked until
//! the period ends (its events stay pending and are seen then).

use std::time::{Duration, Instant};

/// Data-less events allowed per period (xenconsoled's
/// `RATE_LIMIT_ALLOWANCE`).
pub const ALLOWANCE: u32 = 30;
/// The period (xenconsoled's `RATE_LIMIT_PERIOD`, 200 ms).
pub const PERIOD: Duration = Duration::from_millis(200);
/// Output bytes that make an event useful.
pub const USEFUL_BYTES: usize = 512;

/// What to do with the port after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmask {
    /// Unmask it now.
    Now,
    /// Keep it masked until then.
    At(Instant),
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct EventBudget {
    period_start: Instant,
    used: u32,
    throttled: u64,
}

impl EventBudget {
    /// A fresh budget.
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self {
            period_start: now,
            used: 0,
            throttled: 0,
        }
    }

    /// An event was served at `now` and the round took `took` bytes.
    pub fn on_event(&mut self, now: Instant, took: usize) -> Unmask {
        if now.saturating_duration_since(self.period_start) >= PERIOD {
            self.period_start = now;
            self.used = 0;
        }
        if took >= USEFUL_BYTES {
            return Unmask::Now;
        }
        self.used = self.used.saturating_add(1);
        if self.used <= ALLOWANCE {
            Unmask::Now
        } else {
            self.throttled = self.throttled.saturating_add(1);
            Unmask::At(self.period_start + PERIOD)
        }
    }

    /// Times the port was held masked.
    #[must_use]
    pub fn throttled(&self) -> u64 {
        self.throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_budget_allows_allowance_then_masks_until_period_end() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        for _ in 0..ALLOWANCE {
            assert_eq!(b.on_event(t0, 0), Unmask::Now);
        }
        assert_eq!(b.on_event(t0, 10), Unmask::At(t0 + PERIOD));
        assert_eq!(b.throttled(), 1);
        assert_eq!(b.on_event(t0 + PERIOD, 0), Unmask::Now, "a new period");
    }

    #[test]
    fn test_budget_events_with_output_are_free() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        for _ in 0..10 * ALLOWANCE {
            assert_eq!(b.on_event(t0, USEFUL_BYTES), Unmask::Now);
        }
        assert_eq!(b.throttled(), 0);
        for _ in 0..ALLOWANCE {
            assert_eq!(b.on_event(t0, 0), Unmask::Now);
        }
        assert!(matches!(b.on_event(t0, 0), Unmask::At(_)));
    }
}
