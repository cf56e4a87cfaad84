//! Rate limiting of logs on paths a peer or the guest can drive.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one message per `interval`.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogLimiter {
    /// One message per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Whether a message may be logged now.
    pub fn allow(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_limiter_second_message_in_interval_is_dropped() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert!(l.allow());
        assert!(!l.allow());
    }
}
