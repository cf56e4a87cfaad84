//! [`PollWindow`]: how long a ring endpoint busy-polls its peer's index
//! before it arms its event index and sleeps, adapted as KVM adapts
//! `halt_poll_ns` (`virt/kvm/kvm_main.c`, `grow_halt_poll_ns` /
//! `shrink_halt_poll_ns`).
//!
//! Polling pays only while the peer runs on another CPU: then it answers
//! within microseconds and the poller saves a notification and a wake-up
//! (30-50 us across CPUs on a small machine). When the peer shares the
//! poller's CPU (a loaded host), polling only delays it. So the window
//! grows (doubling from [`PollWindow::START_NS`] up to the maximum) when a
//! poll finds work, or when a sleep ends within the maximum (a poll that
//! long would have found it); it drops to zero when a poll runs out without
//! finding work, or when a sleep lasts longer than the maximum.

/// The adaptive busy-poll window of one ring endpoint (pure logic: the
/// caller polls, sleeps and measures time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    cur_ns: u64,
    max_ns: u64,
}

impl PollWindow {
    /// The window after the first success from zero (as KVM's
    /// `halt_poll_ns_grow_start`, 10 us, rounded to a power of two).
    pub const START_NS: u64 = 8_192;

    /// A window that starts at `max_ns` (0: never poll).
    pub fn new(max_ns: u64) -> Self {
        Self {
            cur_ns: max_ns,
            max_ns,
        }
    }

    /// How long to poll now, ns.
    pub fn budget_ns(&self) -> u64 {
        self.cur_ns
    }

    /// The largest window, ns.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    fn grow(&mut self) {
        self.cur_ns = self
            .cur_ns
            .saturating_mul(2)
            .max(Self::START_NS)
            .min(self.max_ns);
    }

    /// A poll found work.
    pub fn hit(&mut self) {
        self.grow();
    }

    /// A poll of the whole window found nothing.
    pub fn miss(&mut self) {
        self.cur_ns = 0;
    }

    /// After a sleep of `slept_ns` that ended with work.
    pub fn woke(&mut self, slept_ns: u64) {
        if slept_ns <= self.max_ns {
            self.grow();
        } else {
            self.cur_ns = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_poll_window_miss_drops_to_zero_and_short_sleeps_grow_it_back() {
        // Arrange
        let mut w = PollWindow::new(50_000);
        assert_eq!(w.budget_ns(), 50_000);
        // Act / Assert: a useless poll (peer on our CPU) stops polling.
        w.miss();
        assert_eq!(w.budget_ns(), 0);
        // A quick wake-up: a short poll would have caught it.
        w.woke(3_000);
        assert_eq!(w.budget_ns(), PollWindow::START_NS);
        w.hit();
        w.hit();
        assert_eq!(w.budget_ns(), 4 * PollWindow::START_NS);
        w.hit();
        assert_eq!(w.budget_ns(), 50_000, "clamped to the maximum");
        // A long idle period stops polling too.
        w.woke(1_000_000);
        assert_eq!(w.budget_ns(), 0);
    }

    #[test]
    fn test_poll_window_zero_max_never_polls() {
        let mut w = PollWindow::new(0);
        w.hit();
        w.woke(0);
        assert_eq!(w.budget_ns(), 0);
    }
}
