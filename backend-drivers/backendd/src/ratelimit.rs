//! Rate limiting of logs on guest-triggerable paths: at most `burst`
//! messages per `interval`, then one summary of what was suppressed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket for log lines.
#[derive(Debug)]
pub struct LogLimiter {
    inner: Mutex<State>,
    burst: u32,
    interval: Duration,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// `burst` messages per `interval`.
    #[must_use]
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self {
            inner: Mutex::new(State {
                window_start: None,
                used: 0,
                suppressed: 0,
            }),
            burst,
            interval,
        }
    }

    /// Whether a message may be logged now; `Some(n)` means yes, after `n`
    /// suppressed ones (log that count too).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = s
            .window_start
            .is_none_or(|w| now.saturating_duration_since(w) >= self.interval);
        if fresh {
            s.window_start = Some(now);
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }
}

/// The limiter of guest-triggerable device messages (10 per second).
pub static GUEST_LOG: LogLimiter = LogLimiter::new(10, Duration::from_secs(1));

/// Logs a warning through [`GUEST_LOG`].
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)*) => {
        if let Some(suppressed) = $crate::ratelimit::GUEST_LOG.check() {
            if suppressed > 0 {
                tracing::warn!(suppressed, "guest-triggered messages suppressed");
            }
            tracing::warn!($($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_limiter_burst_then_suppresses_then_reports() {
        let l = LogLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), None);
        assert_eq!(l.check_at(t0), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Some(2));
    }
}
