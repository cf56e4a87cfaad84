//! Rate limiting for logs on guest-triggerable paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Allows at most `per_window` messages per second; counts the suppressed ones.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u64,
    window_start_ms: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
    epoch: Instant,
}

impl LogLimiter {
    /// At most `per_window` messages per second.
    pub fn new(per_window: u64) -> Self {
        Self {
            per_window,
            window_start_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether a message may be logged now; returns the number suppressed
    /// since the last allowed message in `Some`.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= 1000 {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_window {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Logs a warning through a [`LogLimiter`].
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)*) => {
        if let Some(suppressed) = $limiter.allow() {
            if suppressed > 0 {
                $crate::ratelimit::__tracing::warn!(suppressed, $($arg)*);
            } else {
                $crate::ratelimit::__tracing::warn!($($arg)*);
            }
        }
    };
}
#[doc(hidden)]
pub use tracing as __tracing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_limiter_burst_beyond_limit_is_suppressed() {
        let l = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| l.allow().is_some()).count();
        assert_eq!(allowed, 3);
    }
}
