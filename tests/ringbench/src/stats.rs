//! Median, spread and latency percentiles.

/// What one repetition of one case measured.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Messages moved (requests; for xen-ring each also answered).
    pub msgs: u64,
    /// Wall time of the measured part, in seconds (pingpong: sum of round trips).
    pub secs: f64,
    /// eventfd writes, both directions.
    pub notifications: u64,
    /// Times `push_*_and_check_notify` said "notify" (pingpong does not act on it).
    pub notify_requested: u64,
    /// Involuntary context switches of both sides during the repetition.
    pub preempted: u64,
    /// Pingpong: median and 99th percentile round trip, in nanoseconds.
    pub latency: Option<(u64, u64)>,
}

impl Sample {
    /// Messages per second of this repetition.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.msgs as f64 / self.secs
        } else {
            0.0
        }
    }

    /// What the paired ratios compare (higher is better): the rate for streams, and
    /// 1 / p50 round trip for pingpong (whose mean-based rate a single long stall on a
    /// busy machine can drag down by orders of magnitude).
    pub fn paired_rate(&self) -> f64 {
        match self.latency {
            Some((p50, _)) if p50 > 0 => 1e9 / p50 as f64,
            Some(_) => 0.0,
            None => self.rate(),
        }
    }

    /// Notifications sent per message.
    pub fn notifications_per_msg(&self) -> f64 {
        if self.msgs > 0 {
            self.notifications as f64 / self.msgs as f64
        } else {
            0.0
        }
    }
}

/// Median of `values` (mean of the two middle values for an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Median of integer values (rounded down for an even count).
pub fn median_u64(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        v[mid - 1] / 2 + v[mid] / 2 + (v[mid - 1] % 2 + v[mid] % 2) / 2
    }
}

/// Nearest-rank percentile `p` (0..=100) of `sorted` (ascending); 0 if empty.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `rtts` in place and returns (p50, p99).
pub fn latency_summary(rtts: &mut [u64]) -> (u64, u64) {
    rtts.sort_unstable();
    (percentile_sorted(rtts, 50.0), percentile_sorted(rtts, 99.0))
}

/// Minimum and maximum of `values`; (0, 0) if empty.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_median_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median_u64(&[5, 1, 3]), 3);
        assert_eq!(median_u64(&[1, 2]), 1);
    }

    #[test]
    fn test_percentile_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let (p50, p99) = latency_summary(&mut v);
        assert_eq!(p50, 50);
        assert_eq!(p99, 99);
        assert_eq!(percentile_sorted(&[7], 99.0), 7);
    }

    #[test]
    fn test_min_max_spread() {
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
    }
}
