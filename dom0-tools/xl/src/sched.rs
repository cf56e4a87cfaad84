//! Resource control of running domains: `xl sched-credit`, Xen's credit
//! scheduler's weight and cap mapped onto the domain's cgroup (made by
//! `xl create`, [`crate::resources`]).
//!
//! - Weight (1 to 65535, Xen's default [`DEFAULT_WEIGHT`]): the group's CPU
//!   share, v1 `cpu.shares` = weight × [`SHARES_PER_WEIGHT`] (256 is the
//!   kernel's default 1024), v2 `cpu.weight` from those shares
//!   ([`xen_cgroup::parse::shares_to_weight`]). Like Xen's, it only
//!   matters when domains compete for a CPU: two busy domains on one CPU
//!   at 256 and 512 get one third and two thirds of it.
//! - Cap (percent of one CPU, 0 = none): the group's CFS quota, at most
//!   the `vcpus` CPUs `xl create` gave it (the smaller holds: a cap of 300
//!   on a 2-vCPU domain is 2 CPUs, and reads back as 0, "no cap", as a
//!   cap above the vCPUs' worth means nothing in Xen either).
//! - Both live in the group itself, so `xl sched-credit -d DOM` reads back
//!   what was set (v2 weights round-trip through `cpu.weight` and may read
//!   back off by one or two).
//! - Domain-0 is the host: shown with Xen's defaults, never changed.
//!
//! And `xl vcpu-pin DOM VCPU CPUS` (`VCPU` a number or `all`, `CPUS` as
//! xl.cfg's `cpus=`: `0-1,3`, `all`, `^N`): a PVHVM domain's vCPU is its
//! VMM's `xen-vmm-vcpuN` thread, pinned with `sched_setaffinity` (within
//! the domain's cpuset); a PV domain's vCPUs are not threads of their
//! own, so only `all` (or vCPU 0 of a one-vCPU domain) is accepted and
//! moves the domain's cpuset. `xl vcpu-list` shows each vCPU thread's
//! affinity ([`vcpu_affinities`]).

use std::io::Write;

use xen_cgroup::{Cgroup, CgroupError, CpuQuota, CpuSet};
use xen_shim_proto::protocol::DomainInfo;

use crate::resources::{self, ResourcesError};
use crate::toolstack::{self, ToolstackError};

/// Xen credit scheduler's default weight.
pub const DEFAULT_WEIGHT: u32 = 256;
/// Xen's largest weight.
pub const MAX_WEIGHT: u32 = 65535;
/// v1 `cpu.shares` per unit of weight (256 → the kernel's default 1024).
pub const SHARES_PER_WEIGHT: u64 = 4;

/// Errors of the scheduling verbs.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// Finding the domain or the host's cgroups failed.
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    /// Finding the domain's group failed.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    /// A cgroup file could not be read or written.
    #[error("cannot {what}")]
    Cgroup {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: CgroupError,
    },
    /// A weight outside Xen's range.
    #[error("weight {0} is out of range (1 to {MAX_WEIGHT})")]
    Weight(u32),
    /// A cap the CFS quota cannot express.
    #[error("cap {0} is out of range (0 = no cap, else 1 to 409600 percent of one CPU)")]
    Cap(u32),
    /// `-w`/`-c` without `-d`.
    #[error("setting a weight or cap needs a domain (-d DOM)")]
    NeedDomain,
    /// Domain-0's share is the host's, not the toolstack's.
    #[error("Domain-0 is the host itself: its weight and cap are not set by xl")]
    Dom0,
    /// The domain has no group (not made by `xl create`).
    #[error("domain {0} has no cgroup (was it made by xl create?)")]
    NoGroup(u16),
    /// A vCPU the domain does not have, or one of a PV domain.
    #[error("domain {domid} has no vCPU {vcpu} of its own to pin{why}")]
    Vcpu {
        /// Domain.
        domid: u16,
        /// The vCPU asked for.
        vcpu: String,
        /// Why.
        why: &'static str,
    },
    /// The CPU list is invalid, offline or outside the domain's cpuset.
    #[error("CPUs \"{spec}\": {why}")]
    Cpus {
        /// The list.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// `sched_setaffinity` failed.
    #[error("cannot pin thread {tid} (vCPU {vcpu})")]
    Pin {
        /// The thread.
        tid: i32,
        /// Its vCPU.
        vcpu: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the table failed.
    #[error("cannot write the table")]
    Write(#[source] std::io::Error),
}

fn cg(what: impl Into<String>) -> impl FnOnce(CgroupError) -> SchedError {
    let what = what.into();
    move |source| SchedError::Cgroup { what, source }
}

/// `xl sched-credit`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedCreditArgs {
    /// The domain (name or id); without it, every domain is listed.
    #[arg(short = 'd', long = "domain")]
    pub domain: Option<String>,
    /// New weight (1 to 65535; Xen's default 256).
    #[arg(short = 'w', long = "weight")]
    pub weight: Option<u32>,
    /// New cap, percent of one CPU (0: no cap).
    #[arg(short = 'c', long = "cap")]
    pub cap: Option<u32>,
}

/// The v1 shares of Xen weight `w`.
///
/// # Errors
/// [`SchedError::Weight`] outside 1 to [`MAX_WEIGHT`].
pub fn weight_to_shares(w: u32) -> Result<u64, SchedError> {
    if !(1..=MAX_WEIGHT).contains(&w) {
        return Err(SchedError::Weight(w));
    }
    Ok(u64::from(w) * SHARES_PER_WEIGHT)
}

/// The Xen weight of v1 `shares` (rounded to the nearest, at least 1).
#[must_use]
pub fn shares_to_weight(shares: u64) -> u32 {
    let w = (shares + SHARES_PER_WEIGHT / 2) / SHARES_PER_WEIGHT;
    u32::try_from(w.clamp(1, u64::from(MAX_WEIGHT))).unwrap_or(MAX_WEIGHT)
}

/// The group quota of cap `cap` (percent of one CPU, 0: none) on a domain
/// with `vcpus` vCPUs: the smaller of the cap and the vCPUs' worth.
///
/// # Errors
/// [`SchedError::Cap`] beyond what a CFS quota can hold.
pub fn cap_quota(cap: u32, vcpus: u32) -> Result<CpuQuota, SchedError> {
    let whole = u64::from(vcpus.max(1)) * 1000;
    let milli = if cap == 0 {
        whole
    } else {
        (u64::from(cap) * 10).min(whole)
    };
    CpuQuota::millicpus(milli).map_err(|_| SchedError::Cap(cap))
}

/// The cap a group `quota` means on a domain with `vcpus` vCPUs (0 when
/// it is the vCPUs' worth or more, or none).
#[must_use]
pub fn quota_cap(quota: Option<CpuQuota>, vcpus: u32) -> u32 {
    let Some(q) = quota else {
        return 0;
    };
    let milli = q.as_millicpus();
    if milli >= u64::from(vcpus.max(1)) * 1000 {
        return 0;
    }
    u32::try_from((milli + 5) / 10).unwrap_or(u32::MAX)
}

/// One row: name, id, weight, cap (Xen's `%-33s %4d %6d %4d`).
#[must_use]
pub fn row(name: &str, domid: u16, weight: u32, cap: u32) -> String {
    format!("{name:<33} {domid:>4} {weight:>6} {cap:>4}")
}

/// The header of [`row`]s.
#[must_use]
pub fn header() -> String {
    format!("{:<33} {:>4} {:>6} {:>4}", "Name", "ID", "Weight", "Cap")
}

/// The group of domain `d`.
fn group_of(d: &DomainInfo) -> Result<Cgroup, SchedError> {
    let h = resources::hierarchy()?;
    h.open(&resources::group_name(d.domid, &d.name))
        .map_err(cg(format!("open the cgroup of domain {}", d.domid)))?
        .ok_or(SchedError::NoGroup(d.domid))
}

/// The weight and cap of domain `d` (Xen's defaults for Domain-0).
///
/// # Errors
/// [`SchedError::NoGroup`] or a cgroup read failure.
pub fn read(d: &DomainInfo) -> Result<(u32, u32), SchedError> {
    if d.domid == 0 {
        return Ok((DEFAULT_WEIGHT, 0));
    }
    let g = group_of(d)?;
    let shares = g
        .cpu_shares()
        .map_err(cg(format!("read the CPU share of domain {}", d.domid)))?;
    let quota = g
        .cpu_quota()
        .map_err(cg(format!("read the CPU quota of domain {}", d.domid)))?;
    Ok((shares_to_weight(shares), quota_cap(quota, d.vcpus)))
}

/// Sets domain `d`'s weight and/or cap.
///
/// # Errors
/// [`SchedError::Dom0`], [`SchedError::Weight`], [`SchedError::Cap`],
/// [`SchedError::NoGroup`] or a cgroup write failure.
pub fn set(d: &DomainInfo, weight: Option<u32>, cap: Option<u32>) -> Result<(), SchedError> {
    if d.domid == 0 {
        return Err(SchedError::Dom0);
    }
    // Check both before changing either.
    let shares = weight.map(weight_to_shares).transpose()?;
    let quota = cap.map(|c| cap_quota(c, d.vcpus)).transpose()?;
    let g = group_of(d)?;
    if let Some(s) = shares {
        g.set_cpu_shares(s)
            .map_err(cg(format!("set the CPU share of domain {}", d.domid)))?;
    }
    if let Some(q) = quota {
        g.set_cpu_quota(Some(q))
            .map_err(cg(format!("set the CPU quota of domain {}", d.domid)))?;
    }
    Ok(())
}

/// `xl sched-credit`: sets (`-d` with `-w`/`-c`) or lists (every domain,
/// or `-d`'s) the weights and caps.
///
/// # Errors
/// As [`set`] and [`read`]; [`SchedError::NeedDomain`].
pub fn sched_credit(out: &mut dyn Write, a: &SchedCreditArgs) -> Result<(), SchedError> {
    let control = toolstack::shim(false)?;
    let setting = a.weight.is_some() || a.cap.is_some();
    let domains = match &a.domain {
        Some(w) => vec![toolstack::find_domain(&control, w)?],
        None if setting => return Err(SchedError::NeedDomain),
        None => control.list_domains().map_err(|source| {
            SchedError::Toolstack(ToolstackError::Shim {
                what: "list domains".into(),
                source,
            })
        })?,
    };
    if setting {
        return set(&domains[0], a.weight, a.cap);
    }
    writeln!(out, "{}", header()).map_err(SchedError::Write)?;
    for d in &domains {
        let (w, c) = match read(d) {
            Ok(wc) => wc,
            // A domain not made by xl (no group) has the host's defaults.
            Err(SchedError::NoGroup(_)) if a.domain.is_none() => (DEFAULT_WEIGHT, 0),
            Err(e) => return Err(e),
        };
        writeln!(out, "{}", row(&d.name, d.domid, w, c)).map_err(SchedError::Write)?;
    }
    Ok(())
}

/// `xl vcpu-pin`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct VcpuPinArgs {
    /// Name or id.
    pub domain: String,
    /// vCPU number, or `all`.
    pub vcpu: String,
    /// Hard affinity: CPUs as xl.cfg's `cpus=` (`0-1,3`, `all`, `^N`).
    pub cpus: String,
    /// Soft affinity: only `-` (none) is accepted.
    pub soft: Option<String>,
}

/// The vCPU threads (`xen-vmm-vcpuN`) among `tids`: (vCPU, thread id),
/// by vCPU.
#[must_use]
pub fn vcpu_threads(tids: &[i32]) -> Vec<(u32, i32)> {
    let mut v: Vec<(u32, i32)> = tids
        .iter()
        .filter_map(|&tid| {
            let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).ok()?;
            let id = comm
                .trim()
                .strip_prefix(crate::stat::VCPU_THREAD)?
                .parse()
                .ok()?;
            Some((id, tid))
        })
        .collect();
    v.sort_unstable();
    v
}

/// `Cpus_allowed_list` of `/proc/<tid>/status`.
fn thread_affinity(tid: i32) -> Option<CpuSet> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| CpuSet::parse(v.trim()).ok())
}

/// Each vCPU thread's affinity in group `g` (vCPU → CPUs), for
/// `xl vcpu-list`; empty for a PV domain.
#[must_use]
pub fn vcpu_affinities(g: &Cgroup) -> Vec<(u32, CpuSet)> {
    vcpu_threads(&g.threads().unwrap_or_default())
        .into_iter()
        .filter_map(|(id, tid)| Some((id, thread_affinity(tid)?)))
        .collect()
}

fn set_affinity(tid: i32, vcpu: u32, cpus: &CpuSet) -> Result<(), SchedError> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus.iter() {
        // SAFETY: CPU_SET writes within `set`; it ignores CPUs beyond its
        // size.
        unsafe { libc::CPU_SET(c as usize, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(SchedError::Pin {
            tid,
            vcpu,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `xl vcpu-pin DOM VCPU CPUS [-]`.
///
/// # Errors
/// [`SchedError::Vcpu`], [`SchedError::Cpus`], [`SchedError::Pin`],
/// [`SchedError::NoGroup`], [`SchedError::Dom0`] or a cgroup failure.
pub fn vcpu_pin(a: &VcpuPinArgs) -> Result<(), SchedError> {
    if a.soft.as_deref().is_some_and(|s| s != "-") {
        return Err(SchedError::Cpus {
            spec: a.soft.clone().unwrap_or_default(),
            why: "soft affinity is not supported (only \"-\")".into(),
        });
    }
    let control = toolstack::shim(false)?;
    let d = toolstack::find_domain(&control, &a.domain)?;
    if d.domid == 0 {
        return Err(SchedError::Dom0);
    }
    let bad = |why: String| SchedError::Cpus {
        spec: a.cpus.clone(),
        why,
    };
    let spec = resources::CpusSpec::parse(vec![a.cpus.clone()]).map_err(bad)?;
    let cpus = spec.resolve().map_err(|e| bad(e.to_string()))?;
    let vcpu = match a.vcpu.as_str() {
        "all" => None,
        v => Some(v.parse::<u32>().map_err(|_| SchedError::Vcpu {
            domid: d.domid,
            vcpu: v.to_owned(),
            why: " (a number or all)",
        })?),
    };
    let g = group_of(&d)?;
    if d.kind != xen_shim_proto::layout::DomainType::Pvhvm {
        if vcpu.is_some_and(|v| v != 0 || d.vcpus != 1) {
            return Err(SchedError::Vcpu {
                domid: d.domid,
                vcpu: a.vcpu.clone(),
                why: ": a PV domain's vCPUs are not threads of their own (pin `all`: the domain's cpuset)",
            });
        }
        return g
            .set_cpuset(&cpus)
            .map_err(cg(format!("pin domain {} to CPUs {cpus}", d.domid)));
    }
    let allowed = g
        .cpuset()
        .map_err(cg(format!("read the cpuset of domain {}", d.domid)))?;
    // `all` is the domain's CPUs, not the host's.
    let cpus = if a.cpus.trim() == "all" {
        allowed.clone()
    } else {
        cpus
    };
    if !cpus.is_subset(&allowed) {
        return Err(bad(format!(
            "outside the domain's cpuset {allowed} (its cpus= setting)"
        )));
    }
    let threads = vcpu_threads(&g.threads().map_err(cg("list the domain's threads"))?);
    let chosen: Vec<(u32, i32)> = threads
        .into_iter()
        .filter(|(id, _)| vcpu.is_none_or(|v| v == *id))
        .collect();
    if chosen.is_empty() {
        return Err(SchedError::Vcpu {
            domid: d.domid,
            vcpu: a.vcpu.clone(),
            why: "",
        });
    }
    for (id, tid) in chosen {
        set_affinity(tid, id, &cpus)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_weight_maps_to_shares_and_back() {
        assert_eq!(weight_to_shares(256).expect("ok"), 1024);
        assert_eq!(weight_to_shares(512).expect("ok"), 2048);
        assert_eq!(weight_to_shares(1).expect("ok"), 4);
        assert_eq!(weight_to_shares(MAX_WEIGHT).expect("ok"), 262_140);
        assert!(matches!(weight_to_shares(0), Err(SchedError::Weight(0))));
        assert!(weight_to_shares(65536).is_err());
        for w in [1, 7, 256, 512, 65535] {
            assert_eq!(shares_to_weight(weight_to_shares(w).expect("ok")), w);
        }
        // The kernel's own range ends read back within Xen's.
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), MAX_WEIGHT);
    }

    #[test]
    fn test_cap_is_the_smaller_of_cap_and_vcpus_and_reads_back() {
        assert_eq!(cap_quota(0, 2).expect("ok").as_millicpus(), 2000);
        assert_eq!(cap_quota(50, 1).expect("ok").as_millicpus(), 500);
        assert_eq!(cap_quota(150, 2).expect("ok").as_millicpus(), 1500);
        assert_eq!(cap_quota(300, 2).expect("ok").as_millicpus(), 2000);
        assert_eq!(quota_cap(Some(cap_quota(50, 1).expect("ok")), 1), 50);
        assert_eq!(quota_cap(Some(cap_quota(150, 2).expect("ok")), 2), 150);
        assert_eq!(quota_cap(Some(cap_quota(0, 2).expect("ok")), 2), 0);
        assert_eq!(quota_cap(Some(cap_quota(300, 2).expect("ok")), 2), 0);
        assert_eq!(quota_cap(None, 1), 0);
        assert_eq!(quota_cap(Some(CpuQuota::millicpus(333).expect("q")), 1), 33);
    }

    #[test]
    fn test_rows_as_xen_prints_them() {
        assert_eq!(
            header(),
            "Name                                ID Weight  Cap"
        );
        assert_eq!(
            row("Domain-0", 0, 256, 0),
            "Domain-0                             0    256    0"
        );
    }
}
