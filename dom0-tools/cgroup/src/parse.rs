//! Pure parsing and formatting of what the cgroup files hold: CPU lists
//! (`cpuset.cpus`, the kernel's list format `0-1,3`), CPU quotas (v1
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`, v2 `cpu.max`), limits (`max` or
//! a number), flat keyed files (`cpu.stat`, `memory.events`,
//! `memory.oom_control`, `pids.events`) and `/proc/self/mountinfo`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

/// The highest CPU number accepted in a list (the kernel's largest
/// `NR_CPUS` is 8192): bounds what a hostile list can make us allocate.
pub const MAX_CPU: u32 = 8191;

/// The kernel's default CFS period (`cpu.cfs_period_us`, `cpu.max`), 100 ms.
pub const DEFAULT_PERIOD_US: u64 = 100_000;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A CPU list is malformed.
    #[error("bad CPU list {text:?}: {why}")]
    CpuList {
        /// The list.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A number is malformed or out of range.
    #[error("bad {what}: {text:?}")]
    Number {
        /// What was read.
        what: &'static str,
        /// Its text.
        text: String,
    },
    /// A CPU quota is out of the kernel's range.
    #[error("CPU quota {quota_us} us per {period_us} us is out of range (period 1000..=1000000 us, quota at least 1000 us)")]
    Quota {
        /// Quota.
        quota_us: u64,
        /// Period.
        period_us: u64,
    },
}

/// A set of CPU numbers, written in the kernel's list format (`0-1,3`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    /// The empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs `lo..=hi`.
    ///
    /// # Errors
    /// [`ParseError::CpuList`] when `lo > hi` or `hi > MAX_CPU`.
    pub fn range(lo: u32, hi: u32) -> Result<Self, ParseError> {
        let mut s = Self::new();
        s.insert_range(lo, hi)?;
        Ok(s)
    }

    /// Adds CPUs `lo..=hi`.
    ///
    /// # Errors
    /// [`ParseError::CpuList`] when `lo > hi` or `hi > MAX_CPU`.
    pub fn insert_range(&mut self, lo: u32, hi: u32) -> Result<(), ParseError> {
        let text = || format!("{lo}-{hi}");
        if lo > hi {
            return Err(ParseError::CpuList {
                text: text(),
                why: "a range ends below its start",
            });
        }
        if hi > MAX_CPU {
            return Err(ParseError::CpuList {
                text: text(),
                why: "CPU number above 8191",
            });
        }
        self.0.extend(lo..=hi);
        Ok(())
    }

    /// Removes CPUs `lo..=hi`.
    pub fn remove_range(&mut self, lo: u32, hi: u32) {
        self.0.retain(|c| !(lo..=hi).contains(c));
    }

    /// Parses the kernel's list format: comma-separated numbers and
    /// `lo-hi` ranges; empty (or only whitespace) is the empty set.
    ///
    /// # Errors
    /// [`ParseError::CpuList`].
    pub fn parse(list: &str) -> Result<Self, ParseError> {
        let bad = |why| ParseError::CpuList {
            text: list.to_owned(),
            why,
        };
        let mut s = Self::new();
        let t = list.trim();
        if t.is_empty() {
            return Ok(s);
        }
        for item in t.split(',') {
            let (lo, hi) = parse_range(item.trim()).ok_or_else(|| bad("not a number or range"))?;
            s.insert_range(lo, hi).map_err(|e| match e {
                ParseError::CpuList { why, .. } => bad(why),
                e => e,
            })?;
        }
        Ok(s)
    }

    /// Whether `cpu` is in the set.
    #[must_use]
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many CPUs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The CPUs, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Whether every CPU of `self` is in `other`.
    #[must_use]
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Adds every CPU of `other`.
    pub fn extend(&mut self, other: &CpuSet) {
        self.0.extend(other.0.iter().copied());
    }
}

/// `N` or `lo-hi` (bounded numbers).
fn parse_range(item: &str) -> Option<(u32, u32)> {
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    match item.split_once('-') {
        Some((a, b)) => Some((num(a)?, num(b)?)),
        None => num(item).map(|n| (n, n)),
    }
}

impl fmt::Display for CpuSet {
    /// The kernel's list format, ranges merged: `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(lo) = it.next() {
            let mut hi = lo;
            while it.peek() == Some(&(hi + 1)) {
                hi += 1;
                it.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for CpuSet {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

/// v1 `cpu.shares`' range (the kernel's `MIN_SHARES`, `MAX_SHARES`).
pub const SHARES_RANGE: std::ops::RangeInclusive<u64> = 2..=262_144;
/// v1 `cpu.shares`' default (one task's "nice 0" weight).
pub const DEFAULT_SHARES: u64 = 1024;

/// v2 `cpu.weight` for v1 `shares` (clamped to [`SHARES_RANGE`]): the
/// linear map of `[2, 262144]` onto `[1, 10000]` that runc and Kubernetes
/// use (1024 shares is weight 39; v2's default weight 100 is about 2600
/// shares).
#[must_use]
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(*SHARES_RANGE.start(), *SHARES_RANGE.end());
    1 + ((s - 2) * 9999) / 262_142
}

/// v1 shares for a v2 `cpu.weight` (clamped to `[1, 10000]`): the inverse
/// of [`shares_to_weight`] (rounded up, so that the weight reads back).
#[must_use]
pub fn weight_to_shares(weight: u64) -> u64 {
    let w = weight.clamp(1, 10_000);
    2 + ((w - 1) * 262_142).div_ceil(9999)
}

/// A CPU bandwidth limit: `quota_us` of CPU time per `period_us` (two
/// CPUs' worth is twice the period).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuQuota {
    quota_us: u64,
    period_us: u64,
}

impl CpuQuota {
    /// A quota of `quota_us` per `period_us`, in the kernel's ranges
    /// (period 1 ms to 1 s, quota at least 1 ms, at most 4096 periods).
    ///
    /// # Errors
    /// [`ParseError::Quota`].
    pub fn new(quota_us: u64, period_us: u64) -> Result<Self, ParseError> {
        if !(1000..=1_000_000).contains(&period_us)
            || quota_us < 1000
            || quota_us > period_us.saturating_mul(4096)
        {
            return Err(ParseError::Quota {
                quota_us,
                period_us,
            });
        }
        Ok(Self {
            quota_us,
            period_us,
        })
    }

    /// `millicpus` thousandths of a CPU per [`DEFAULT_PERIOD_US`] (500 is
    /// half a CPU, 2000 two CPUs).
    ///
    /// # Errors
    /// [`ParseError::Quota`] below 10 millicpus (1 ms per period) or above
    /// 4096 CPUs.
    pub fn millicpus(millicpus: u64) -> Result<Self, ParseError> {
        Self::new(
            millicpus.saturating_mul(DEFAULT_PERIOD_US) / 1000,
            DEFAULT_PERIOD_US,
        )
    }

    /// `n` whole CPUs.
    ///
    /// # Errors
    /// [`ParseError::Quota`] for 0 or more than 4096.
    pub fn cpus(n: u32) -> Result<Self, ParseError> {
        Self::millicpus(u64::from(n).saturating_mul(1000))
    }

    /// The quota, microseconds per period.
    #[must_use]
    pub fn quota_us(self) -> u64 {
        self.quota_us
    }

    /// The period, microseconds.
    #[must_use]
    pub fn period_us(self) -> u64 {
        self.period_us
    }

    /// Thousandths of a CPU this quota allows (rounded down).
    #[must_use]
    pub fn as_millicpus(self) -> u64 {
        self.quota_us.saturating_mul(1000) / self.period_us
    }

    /// v2 `cpu.max`'s text: `QUOTA PERIOD`.
    #[must_use]
    pub fn cpu_max(self) -> String {
        format!("{} {}", self.quota_us, self.period_us)
    }

    /// Parses v2 `cpu.max` (`max PERIOD` is no limit: `None`).
    ///
    /// # Errors
    /// [`ParseError::Number`] or [`ParseError::Quota`].
    pub fn parse_cpu_max(text: &str) -> Result<Option<Self>, ParseError> {
        let bad = || ParseError::Number {
            what: "cpu.max",
            text: text.to_owned(),
        };
        let mut w = text.split_whitespace();
        let (q, p) = (w.next().ok_or_else(bad)?, w.next());
        if w.next().is_some() {
            return Err(bad());
        }
        let period = match p {
            Some(p) => p.parse::<u64>().map_err(|_| bad())?,
            None => DEFAULT_PERIOD_US,
        };
        if q == "max" {
            return Ok(None);
        }
        let quota = q.parse::<u64>().map_err(|_| bad())?;
        Self::new(quota, period).map(Some)
    }
}

/// A limit file's value: `max` (v2) or a number; v1's "unlimited" (the
/// page counter's maximum, about 2^63) is `None` as well.
///
/// # Errors
/// [`ParseError::Number`].
pub fn parse_limit(what: &'static str, text: &str) -> Result<Option<u64>, ParseError> {
    let t = text.trim();
    if t == "max" || t == "-1" {
        return Ok(None);
    }
    let v: u64 = t.parse().map_err(|_| ParseError::Number {
        what,
        text: t.to_owned(),
    })?;
    Ok((v < 1 << 62).then_some(v))
}

/// A number file (`cpuacct.usage`, `memory.usage_in_bytes`, ...).
///
/// # Errors
/// [`ParseError::Number`].
pub fn parse_u64(what: &'static str, text: &str) -> Result<u64, ParseError> {
    text.trim().parse().map_err(|_| ParseError::Number {
        what,
        text: text.trim().to_owned(),
    })
}

/// The value of `key` in a flat keyed file (`key value` lines: `cpu.stat`,
/// `memory.events`, `memory.oom_control`, `pids.events`).
#[must_use]
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One line of `/proc/self/mountinfo` (the fields we use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount's root within its filesystem (`/` unless a container
    /// sees only part of a hierarchy).
    pub root: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`cgroup`, `cgroup2`, ...).
    pub fstype: String,
    /// Superblock options (a v1 hierarchy's controllers are among them).
    pub super_opts: Vec<String>,
}

/// Parses `/proc/self/mountinfo` (`proc(5)`); malformed lines are skipped.
#[must_use]
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?.to_owned();
            let _source = post.next()?;
            let super_opts = post
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(Mount {
                root: unescape(pre.get(3)?),
                mountpoint: PathBuf::from(unescape(pre.get(4)?)),
                fstype,
                super_opts,
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpuset_parse_ranges_and_singles_round_trip() {
        let s = CpuSet::parse("0-1,3").expect("valid");
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!(s.to_string(), "0-1,3");
        let s = CpuSet::parse(" 5,0,1,2, 7-8\n").expect("valid");
        assert_eq!(s.to_string(), "0-2,5,7-8");
        assert!(CpuSet::parse("").expect("empty").is_empty());
        assert!(CpuSet::parse("\n").expect("empty").is_empty());
        assert_eq!(CpuSet::parse("4").expect("one").to_string(), "4");
    }

    #[test]
    fn test_cpuset_parse_bad_lists_fail() {
        for bad in ["a", "1-", "-1", "3-1", "1,,2", "0-99999", "1 2", "0x1"] {
            assert!(CpuSet::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn test_cpu_quota_cpus_and_cpu_max_format() {
        let q = CpuQuota::cpus(2).expect("two");
        assert_eq!((q.quota_us(), q.period_us()), (200_000, 100_000));
        assert_eq!(q.cpu_max(), "200000 100000");
        let h = CpuQuota::millicpus(500).expect("half");
        assert_eq!(h.cpu_max(), "50000 100000");
        assert_eq!(h.as_millicpus(), 500);
        assert!(CpuQuota::cpus(0).is_err());
        assert!(CpuQuota::new(5000, 500).is_err());
        assert!(CpuQuota::new(500, 100_000).is_err());
    }

    #[test]
    fn test_cpu_max_parse_max_and_numbers() {
        assert_eq!(CpuQuota::parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(
            CpuQuota::parse_cpu_max("50000 100000"),
            Ok(Some(CpuQuota::millicpus(500).expect("half")))
        );
        assert!(CpuQuota::parse_cpu_max("").is_err());
        assert!(CpuQuota::parse_cpu_max("1 2 3").is_err());
        assert!(CpuQuota::parse_cpu_max("lots 100000").is_err());
    }

    #[test]
    fn test_parse_limit_max_unlimited_and_numbers() {
        assert_eq!(parse_limit("x", "max\n"), Ok(None));
        assert_eq!(parse_limit("x", "9223372036854771712\n"), Ok(None));
        assert_eq!(parse_limit("x", "67108864"), Ok(Some(64 << 20)));
        assert!(parse_limit("x", "lots").is_err());
    }

    #[test]
    fn test_keyed_finds_values() {
        let stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(keyed(stat, "usage_usec"), Some(1234));
        assert_eq!(keyed(stat, "usage"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(3));
    }

    #[test]
    fn test_mountinfo_v1_and_v2_lines() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
40 25 0:35 /docker/x /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
41 25 0:36 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].super_opts, vec!["rw", "cpu", "cpuacct"]);
        assert_eq!(m[1].mountpoint, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            (m[2].fstype.as_str(), m[2].root.as_str()),
            ("cgroup2", "/docker/x")
        );
        assert_eq!(m[3].mountpoint, PathBuf::from("/mnt/a b"));
    }

    #[test]
    fn test_shares_weight_map_ends_and_round_trip() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
        // Twice the shares is (about) twice the weight.
        let (a, b) = (shares_to_weight(1024), shares_to_weight(2048));
        assert!((2 * a).abs_diff(b) <= 1, "{a} {b}");
        for w in [1, 39, 78, 100, 5000, 10_000] {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w, "{w}");
        }
    }
}
