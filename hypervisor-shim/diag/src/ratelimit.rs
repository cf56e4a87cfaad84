//! Rate limiting of log lines on paths a guest or a peer can drive.
//!
//! One behaviour for every caller: fixed windows of `window` starting at
//! the first message after the previous window ended; within a window the
//! first `burst` messages are allowed, the rest are counted; the next
//! allowed message carries that count (`suppressed = N`), so nothing is
//! dropped silently. `burst = 1` is "one message per `window`".

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A limiter of log lines: `burst` per `window`, counting the rest.
/// Shared by reference (`&self`; a `static` works, [`LogLimiter::new`] is
/// `const`).
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// `burst` messages per `window`.
    #[must_use]
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(State {
                window_start: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a message may be logged now: `Some(n)` yes, after `n`
    /// suppressed since the last allowed one (log that count with it);
    /// `None` no (it is counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`LogLimiter::check`] at time `now`.
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = s
            .window_start
            .is_none_or(|w| now.saturating_duration_since(w) >= self.window);
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

    /// Whether a message may be logged now, for a caller that does not
    /// log the suppressed count ([`LogLimiter::check`] and
    /// [`warn_limited!`](crate::warn_limited) do).
    pub fn allow(&self) -> bool {
        self.check().is_some()
    }

    /// Messages suppressed since the last allowed one.
    #[must_use]
    pub fn suppressed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .suppressed
    }
}

/// Logs a `tracing` warning through a [`LogLimiter`]: the arguments after
/// the limiter are `tracing::warn!`'s; an allowed message after suppressed
/// ones carries the field `suppressed = N`.
///
/// ```
/// use std::time::Duration;
/// static LOG: xen_diag::LogLimiter = xen_diag::LogLimiter::new(10, Duration::from_secs(1));
/// xen_diag::warn_limited!(LOG, domid = 3, "bad request");
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)*) => {
        if let Some(suppressed) = $limiter.check() {
            if suppressed > 0 {
                $crate::__tracing::warn!(suppressed, $($arg)*);
            } else {
                $crate::__tracing::warn!($($arg)*);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_limiter_burst_is_allowed_then_suppressed() {
        let l = LogLimiter::new(3, Duration::from_secs(3600));
        let t0 = Instant::now();

        let allowed = (0..10).filter(|_| l.check_at(t0).is_some()).count();

        assert_eq!(allowed, 3);
        assert_eq!(l.suppressed(), 7);
    }

    #[test]
    fn test_log_limiter_window_reopens_and_reports_suppressed() {
        let l = LogLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), None);
        assert_eq!(l.check_at(t0 + Duration::from_millis(999)), None);

        let reopened = l.check_at(t0 + Duration::from_secs(1));

        assert_eq!(reopened, Some(2));
        assert_eq!(l.suppressed(), 0);
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn test_log_limiter_burst_one_is_one_per_window() {
        let l = LogLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn test_log_limiter_window_starts_at_first_message_not_creation() {
        let l = LogLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_millis(500)), None);
    }

    // The cases of the five limiters this one replaced (xenstored's,
    // the shim's, backendd's, blkback's and the PV runtime's).

    #[test]
    fn test_log_limiter_allow_burst_then_refuses_and_counts() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert!(l.allow());
        assert!(l.allow());
        assert!(!l.allow());
        assert_eq!(l.suppressed(), 1);
    }

    #[test]
    fn test_log_limiter_check_after_burst_suppresses() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        assert_eq!(l.suppressed(), 2);
    }

    #[test]
    fn test_log_limiter_second_message_in_interval_is_dropped() {
        let l = LogLimiter::new(1, Duration::from_secs(60));
        assert!(l.allow());
        assert!(!l.allow());
    }

    #[test]
    fn test_warn_limited_expands_with_and_without_fields() {
        static LOG: LogLimiter = LogLimiter::new(1, Duration::from_secs(3600));
        crate::warn_limited!(LOG, domid = 1, "first");
        crate::warn_limited!(LOG, "second");
        assert_eq!(LOG.suppressed(), 1);
    }
}
