//! A token bucket for logs on guest-triggerable paths.

use std::time::{Duration, Instant};

/// Allows `burst` events per `period`.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    period: Duration,
    left: u32,
    since: Instant,
    /// Events refused since the last allowed one.
    pub suppressed: u64,
}

impl RateLimit {
    /// A limiter of `burst` per `period`.
    #[must_use]
    pub fn new(burst: u32, period: Duration) -> RateLimit {
        RateLimit {
            burst,
            period,
            left: burst,
            since: Instant::now(),
            suppressed: 0,
        }
    }

    /// Whether one more event may be logged now.
    pub fn allow(&mut self) -> bool {
        if self.since.elapsed() >= self.period {
            self.since = Instant::now();
            self.left = self.burst;
        }
        if self.left > 0 {
            self.left -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rate_limit_burst_then_refuses() {
        let mut r = RateLimit::new(2, Duration::from_secs(3600));
        assert!(r.allow());
        assert!(r.allow());
        assert!(!r.allow());
        assert_eq!(r.suppressed, 1);
    }
}
