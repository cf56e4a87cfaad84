//! The event budget of one console: xenconsoled's rate limit, paid for by
//! output. In each [`PERIOD`] a console may take [`ALLOWANCE`] events
//! (xenconsoled's 30 per 200 ms) plus one per [`USEFUL_BYTES`] of output it
//! drained in that period: bulk output buys the wake-ups it needs (their
//! cost is the logging the output needs anyway), a storm of events without
//! output gets xenconsoled's allowance. Past the budget the port stays
//! masked, and out of the poll set, until the period ends (its events wait
//! in the channel and are seen then).

use std::time::{Duration, Instant};

/// Events allowed per period without output (xenconsoled's
/// `RATE_LIMIT_ALLOWANCE`).
pub const ALLOWANCE: u32 = 30;
/// The period (xenconsoled's `RATE_LIMIT_PERIOD`, 200 ms).
pub const PERIOD: Duration = Duration::from_millis(200);
/// Output bytes that buy one more event.
pub const USEFUL_BYTES: u64 = 512;

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
    used: u64,
    bytes: u64,
    throttled: u64,
}

impl EventBudget {
    /// A fresh budget.
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self {
            period_start: now,
            used: 0,
            bytes: 0,
            throttled: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.period_start) >= PERIOD {
            self.period_start = now;
            self.used = 0;
            self.bytes = 0;
        }
    }

    /// `bytes` of output were drained at `now`.
    pub fn credit(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }

    /// An event was taken at `now`.
    pub fn on_event(&mut self, now: Instant) -> Unmask {
        self.roll(now);
        self.used = self.used.saturating_add(1);
        if self.used <= u64::from(ALLOWANCE) + self.bytes / USEFUL_BYTES {
            Unmask::Now
        } else {
            self.throttled = self.throttled.saturating_add(1);
            Unmask::At(self.period_start + PERIOD)
        }
    }

    /// Events after which the port was held masked.
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
            assert_eq!(b.on_event(t0), Unmask::Now);
        }
        assert_eq!(b.on_event(t0), Unmask::At(t0 + PERIOD));
        assert_eq!(b.throttled(), 1);
        assert_eq!(b.on_event(t0 + PERIOD), Unmask::Now, "a new period");
    }

    #[test]
    fn test_budget_output_buys_events() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        for _ in 0..300 {
            b.credit(t0, 2048);
            assert_eq!(b.on_event(t0), Unmask::Now);
        }
        assert_eq!(b.throttled(), 0);
    }

    #[test]
    fn test_budget_tiny_output_per_event_buys_almost_nothing() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        let mut allowed = 0;
        for _ in 0..1000 {
            b.credit(t0, 1);
            if b.on_event(t0) == Unmask::Now {
                allowed += 1;
            }
        }
        // 30 plus one per 512 bytes: at most 32 of 1000.
        assert!(allowed <= 32, "{allowed}");
        assert!(allowed >= 30);
    }

    #[test]
    fn test_budget_credit_does_not_carry_into_next_period() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        b.credit(t0, 1 << 20);
        let t1 = t0 + PERIOD;
        for _ in 0..ALLOWANCE {
            assert_eq!(b.on_event(t1), Unmask::Now);
        }
        assert!(matches!(b.on_event(t1), Unmask::At(_)));
    }
}
