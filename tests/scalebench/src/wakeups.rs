//! Wake-ups of idle guests and of the Dom0 services: every thread's
//! context switches (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`
//! of `/proc/PID/task/TID/status`) counted over a window, by process role
//! and thread name. A thread that sleeps until it has work switches once
//! per wake-up; one that polls on a timeout switches on every tick, which
//! is what keeps a host full of idle guests busy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What a process is to the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A guest's runtime (`xen-pvguest` and its helpers: the init waiter,
    /// the loop broker).
    Runtime,
    /// A guest's `xl` monitor.
    Monitor,
    /// The guest's own programs (its init, its shell).
    GuestPrograms,
    /// `backendd`.
    Backendd,
    /// `xenstored`.
    Xenstored,
    /// `xen-shimd`.
    Shimd,
    /// The services' `xen-supervise`.
    Supervisor,
}

impl Role {
    /// Its name in the table.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Runtime => "runtime (xen-pvguest, xen-vmm)",
            Role::Monitor => "monitor (xl)",
            Role::GuestPrograms => "guest programs",
            Role::Backendd => "backendd",
            Role::Xenstored => "xenstored",
            Role::Shimd => "xen-shimd",
            Role::Supervisor => "xen-supervise",
        }
    }

    /// Whether there is one per guest.
    #[must_use]
    pub fn per_guest(self) -> bool {
        matches!(self, Role::Runtime | Role::Monitor | Role::GuestPrograms)
    }
}

/// Context switches of every thread of `pid`: (thread id, name, count).
fn threads(pid: i32) -> Vec<(i32, String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let field = |k: &str| -> Option<u64> {
                st.lines()
                    .find_map(|l| l.strip_prefix(k))?
                    .trim()
                    .parse()
                    .ok()
            };
            let name = st.lines().find_map(|l| l.strip_prefix("Name:"))?.trim();
            let n = field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?;
            Some((tid, name.to_owned(), n))
        })
        .collect()
}

/// One sample: per (role, pid, tid) the thread's name and switches.
type Sample = BTreeMap<(Role, i32, i32), (String, u64)>;

fn sample(procs: &[(Role, i32)]) -> Sample {
    let mut s = Sample::new();
    for &(role, pid) in procs {
        for (tid, name, n) in threads(pid) {
            s.insert((role, pid, tid), (name, n));
        }
    }
    s
}

/// Wake-ups per second over a window, by role and thread name.
#[derive(Debug, Clone, Default)]
pub struct Wakeups {
    /// The window.
    pub window: Duration,
    /// Guests measured.
    pub guests: usize,
    /// (role, thread name) → (threads, wake-ups per second, all of them).
    pub rows: BTreeMap<(Role, String), (usize, f64)>,
}

impl Wakeups {
    /// Wake-ups per second of `role` (all its processes).
    #[must_use]
    pub fn total(&self, role: Role) -> f64 {
        self.rows
            .iter()
            .filter(|((r, _), _)| *r == role)
            .map(|(_, (_, w))| w)
            .sum()
    }

    /// The same per guest.
    #[must_use]
    pub fn per_guest(&self, role: Role) -> f64 {
        self.total(role) / self.guests.max(1) as f64
    }

    /// Markdown: one row per role (all, per guest), then one per thread
    /// name.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Idle wake-ups over {:.0} s with {} guests up (context switches of every thread):\n",
            self.window.as_secs_f64(),
            self.guests
        );
        let _ = writeln!(s, "| process | threads | wake-ups/s | per guest |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let mut roles: Vec<Role> = self.rows.keys().map(|(r, _)| *r).collect();
        roles.dedup();
        for r in &roles {
            let threads: usize = self
                .rows
                .iter()
                .filter(|((x, _), _)| x == r)
                .map(|(_, (t, _))| t)
                .sum();
            let _ = writeln!(
                s,
                "| {} | {threads} | {:.1} | {:.2} |",
                r.name(),
                self.total(*r),
                self.per_guest(*r)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| process | thread | threads | wake-ups/s | per guest |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|");
        for ((r, name), (t, w)) in &self.rows {
            if *w < 0.05 {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {name} | {t} | {w:.1} | {:.2} |",
                r.name(),
                w / self.guests.max(1) as f64
            );
        }
        s
    }
}

/// Counts the wake-ups of `procs` over `window` (`guests`: how many guests
/// they serve, for the per-guest figures). Thread names that differ only
/// by a guest's number (`evtchn-d7`, `console-d7`, `blkback-7-q0`) are
/// counted together.
#[must_use]
pub fn measure(procs: &[(Role, i32)], guests: usize, window: Duration) -> Wakeups {
    let t0 = Instant::now();
    let a = sample(procs);
    std::thread::sleep(window);
    let b = sample(procs);
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let mut rows: BTreeMap<(Role, String), (usize, f64)> = BTreeMap::new();
    for (k, (name, n)) in &b {
        let Some((_, before)) = a.get(k) else {
            continue;
        };
        let e = rows.entry((k.0, generic_name(name))).or_default();
        e.0 += 1;
        e.1 += n.saturating_sub(*before) as f64 / secs;
    }
    Wakeups {
        window,
        guests,
        rows,
    }
}

/// `evtchn-d7` → `evtchn-dN`, `blkback-7-q0` → `blkback-N-q0`,
/// `dev-vif-7-0` → `dev-vif-N-0`: digits runs after a `-` or a `d` that
/// follows one become `N`, except a trailing queue or device number.
fn generic_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('-').collect();
    let n = parts.len();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if i > 0 && i + 1 < n && digits(p) {
                "N".to_owned()
            } else if i > 0 && i + 1 == n && p.starts_with('d') && digits(&p[1..]) {
                "dN".to_owned()
            } else {
                (*p).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_generic_name_folds_guest_numbers_only() {
        assert_eq!(generic_name("evtchn-d7"), "evtchn-dN");
        assert_eq!(generic_name("console-d12"), "console-dN");
        assert_eq!(generic_name("blkback-7-q0"), "blkback-N-q0");
        assert_eq!(generic_name("dev-vif-7-0"), "dev-vif-N-0");
        assert_eq!(generic_name("dev-qdisk-3-517"), "dev-qdisk-N-517");
        assert_eq!(generic_name("xs-reader"), "xs-reader");
        assert_eq!(generic_name("hvc0"), "hvc0");
    }

    #[test]
    fn test_measure_counts_a_thread_that_wakes_on_a_tick() {
        // Arrange: this process has a thread waking every 10 ms.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        let t = std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .expect("spawn");
        let me = i32::try_from(std::process::id()).expect("pid");

        // Act
        let w = measure(&[(Role::Runtime, me)], 1, Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = t.join();

        // Assert: about 100 a second (at least 40 under load).
        let ticker = w
            .rows
            .get(&(Role::Runtime, "ticker".to_owned()))
            .map_or(0.0, |r| r.1);
        assert!(ticker > 40.0, "{w:?}");
    }
}
