//! Benchmark statistics shared by the benchmarks: median and spread of
//! repeated samples, and paired ratios of two implementations measured
//! interleaved (each sample against the reference sample taken next to it).

/// Median, minimum and maximum of `v` (mean of the two middle values for
/// an even count); `None` if empty.
pub fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

/// Each sample of `v` divided by the reference sample taken next to it
/// (`reference[i]`), skipping pairs whose reference is not positive; as
/// many ratios as the shorter of the two has pairs.
pub fn paired_ratios(v: &[f64], reference: &[f64]) -> Vec<f64> {
    v.iter()
        .zip(reference)
        .filter(|(_, &b)| b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_spread_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn test_paired_ratios_pair_by_position_and_skip_zero_references() {
        assert_eq!(
            paired_ratios(&[2.0, 6.0, 3.0], &[1.0, 2.0, 0.0]),
            vec![2.0, 3.0]
        );
        assert_eq!(paired_ratios(&[1.0, 2.0], &[2.0]), vec![0.5]);
    }
}
