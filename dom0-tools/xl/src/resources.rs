//! A domain's share of the host, as the hypervisor would hold it: each
//! domain's control group (`xen-cgroup`), made by `xl create` around the
//! PV runtime or the PVHVM VMM (and so every process the guest runs),
//! removed when the domain is destroyed; and the figures `xl list` shows.
//!
//! - Group: `<parent>/dom<domid>-<name>` in every hierarchy, the parent
//!   [`DEFAULT_CGROUP_PARENT`] from each hierarchy's root
//!   (`$`[`ENV_CGROUP_PARENT`] overrides it; the tests give each private
//!   Dom0 its own). The domid makes it unique among live domains; the name
//!   (characters other than `A-Za-z0-9._-` as `_`) is for people.
//! - Memory: `maxmem` (the most the domain may balloon to, `memory` by
//!   default) plus [`PV_RUNTIME_ALLOWANCE_MIB`] for the PV runtime (its own
//!   heap, threads and FUSE/TAP buffers: the guest's kernel) or
//!   [`VMM_ALLOWANCE_MIB`] for the VMM; swap is not a way around it and
//!   the OOM killer acts inside the group.
//! - CPU: a quota of `vcpus` CPUs per [`xen_cgroup::parse::DEFAULT_PERIOD_US`].
//! - `cpus=`: Xen's syntax ([`CpusSpec`]) as the group's cpuset (Xen pins
//!   each vCPU; here every task of the domain may run on the union).
//! - Tasks: [`DEFAULT_PIDS_MAX`] (processes and threads; xl.cfg has no key
//!   for it).

use std::collections::BTreeMap;
use std::time::Duration;

use xen_cgroup::{Cgroup, CgroupError, CpuQuota, CpuSet, Hierarchy};
use xen_shim_proto::protocol::DomainInfo;

use crate::config::{GuestType, XlConfig};

/// Overrides [`DEFAULT_CGROUP_PARENT`].
pub const ENV_CGROUP_PARENT: &str = "XL_CGROUP_PARENT";
/// Where the domains' groups live, from each hierarchy's root.
pub const DEFAULT_CGROUP_PARENT: &str = "xen";
/// Memory a PV domain's group gets beyond `maxmem`, MiB: the runtime's own
/// (its resident set, about 10 MiB idle, more with disk and NIC queues).
pub const PV_RUNTIME_ALLOWANCE_MIB: u64 = 64;
/// Memory a PVHVM domain's group gets beyond `maxmem`, MiB: the VMM's own
/// heap and KVM's structures (guest RAM pages are charged to the VMM that
/// touches them first, inside `maxmem`).
pub const VMM_ALLOWANCE_MIB: u64 = 64;
/// The tasks limit of a domain's group.
pub const DEFAULT_PIDS_MAX: u64 = 1024;
/// Where the kernel lists the online CPUs.
pub const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    /// A cgroup operation failed.
    #[error("cannot {what}")]
    Cgroup {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: CgroupError,
    },
    /// `cpus=` names CPUs this host does not have online.
    #[error("cpus=\"{spec}\" selects CPUs {wanted}, but this host's online CPUs are {online}")]
    Offline {
        /// The specification.
        spec: String,
        /// What it selects.
        wanted: String,
        /// What the host has.
        online: String,
    },
    /// The domain has no cgroup (not made by `xl create`).
    #[error("domain {0} has no cgroup")]
    NoGroup(u16),
    /// The freezer did not finish.
    #[error("the cgroup {0} did not freeze within {FREEZE_TIMEOUT:?}")]
    NotFrozen(String),
    /// `cpus=` is invalid.
    #[error("cpus=\"{spec}\": {why}")]
    Cpus {
        /// The specification.
        spec: String,
        /// What is wrong.
        why: String,
    },
}

fn cg(what: impl Into<String>) -> impl FnOnce(CgroupError) -> ResourcesError {
    let what = what.into();
    move |source| ResourcesError::Cgroup { what, source }
}

/// xl.cfg's `cpus=` (`xl.cfg(5)`): a string, or a list of strings (one per
/// vCPU, which here are united). Each string is comma-separated items:
/// `all`, `N`, `N-M`, and `^N`/`^N-M` to take CPUs out again, applied in
/// order. NUMA node lists (`nodes:`) are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusSpec(Vec<String>);

impl CpusSpec {
    /// Checks the syntax of `items` (against every possible CPU).
    ///
    /// # Errors
    /// What is wrong, as a sentence.
    pub fn parse(items: Vec<String>) -> Result<Self, String> {
        let s = Self(items);
        let every = CpuSet::range(0, xen_cgroup::parse::MAX_CPU).expect("a valid range");
        s.resolve_in(&every)?;
        Ok(s)
    }

    /// The specification as written (list items joined by `;`).
    #[must_use]
    pub fn text(&self) -> String {
        self.0.join(";")
    }

    /// The CPUs selected when `all` is `online`.
    ///
    /// # Errors
    /// What is wrong, as a sentence.
    pub fn resolve_in(&self, online: &CpuSet) -> Result<CpuSet, String> {
        let mut union = CpuSet::new();
        if self.0.is_empty() {
            return Err("an empty list selects no CPU".into());
        }
        for s in &self.0 {
            let mut set = CpuSet::new();
            for item in s.split(',').map(str::trim) {
                if item.starts_with("node") {
                    return Err("NUMA node lists (nodes:) are not supported".into());
                }
                if item == "all" {
                    set.extend(online);
                    continue;
                }
                let (neg, range) = match item.strip_prefix('^') {
                    Some(r) => (true, r),
                    None => (false, item),
                };
                let one = CpuSet::parse(range).map_err(|e| e.to_string())?;
                if one.is_empty() {
                    return Err(format!("empty item in \"{s}\""));
                }
                let (lo, hi) = (
                    one.iter().next().unwrap_or(0),
                    one.iter().last().unwrap_or(0),
                );
                if one.len() != (hi - lo + 1) as usize {
                    return Err(format!("bad item \"{item}\""));
                }
                if neg {
                    set.remove_range(lo, hi);
                } else {
                    set.extend(&one);
                }
            }
            union.extend(&set);
        }
        if union.is_empty() {
            return Err("selects no CPU".into());
        }
        Ok(union)
    }

    /// The CPUs selected on this host.
    ///
    /// # Errors
    /// [`ResourcesError::Cpus`] or [`ResourcesError::Offline`].
    pub fn resolve(&self) -> Result<CpuSet, ResourcesError> {
        let online = std::fs::read_to_string(ONLINE_CPUS)
            .ok()
            .and_then(|t| CpuSet::parse(&t).ok())
            .unwrap_or_default();
        let bad = |why| ResourcesError::Cpus {
            spec: self.text(),
            why,
        };
        let set = self.resolve_in(&online).map_err(bad)?;
        if !set.is_subset(&online) {
            return Err(ResourcesError::Offline {
                spec: self.text(),
                wanted: set.to_string(),
                online: online.to_string(),
            });
        }
        Ok(set)
    }
}

/// The limits of a domain's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// CPU quota.
    pub quota: CpuQuota,
    /// Cpuset (`None`: the parent's).
    pub cpus: Option<CpuSet>,
    /// Tasks.
    pub pids: u64,
}

impl Limits {
    /// The limits of a domain created from `cfg` (module docs).
    ///
    /// # Errors
    /// [`ResourcesError::Cpus`] or [`ResourcesError::Offline`] for a bad
    /// `cpus=`.
    pub fn of(cfg: &XlConfig) -> Result<Self, ResourcesError> {
        let allowance = if cfg.guest_type == GuestType::Pv {
            PV_RUNTIME_ALLOWANCE_MIB
        } else {
            VMM_ALLOWANCE_MIB
        };
        let quota = CpuQuota::cpus(cfg.vcpus).map_err(|e| ResourcesError::Cpus {
            spec: format!("vcpus = {}", cfg.vcpus),
            why: e.to_string(),
        })?;
        Ok(Self {
            memory_bytes: cfg
                .maxmem_mib
                .saturating_add(allowance)
                .saturating_mul(1 << 20),
            quota,
            cpus: cfg.cpus.as_ref().map(CpusSpec::resolve).transpose()?,
            pids: DEFAULT_PIDS_MAX,
        })
    }
}

/// The host's hierarchy with the domains' parent.
///
/// # Errors
/// [`ResourcesError::Cgroup`].
pub fn hierarchy() -> Result<Hierarchy, ResourcesError> {
    let parent = std::env::var(ENV_CGROUP_PARENT)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_CGROUP_PARENT.to_owned());
    Hierarchy::detect(&parent).map_err(cg("find the host's cgroups"))
}

/// The group name of domain `domid` called `name`.
#[must_use]
pub fn group_name(domid: u16, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("dom{domid}-{clean}")
}

/// The domid a group name belongs to.
#[must_use]
pub fn group_domid(group: &str) -> Option<u16> {
    group.strip_prefix("dom")?.split_once('-')?.0.parse().ok()
}

/// Creates the group of a new domain with `limits` (what is left of a
/// group of an earlier domain with this domid is destroyed first).
///
/// # Errors
/// [`ResourcesError::Cgroup`] naming the step.
pub fn create_group(domid: u16, name: &str, limits: &Limits) -> Result<Cgroup, ResourcesError> {
    let h = hierarchy()?;
    destroy_groups_of(&h, domid, &[])?;
    let gname = group_name(domid, name);
    let g = h
        .create(&gname)
        .map_err(cg(format!("create the cgroup {gname}")))?;
    let r = (|| {
        g.set_memory_limit(Some(limits.memory_bytes))
            .map_err(cg("set the domain's memory limit"))?;
        g.set_cpu_quota(Some(limits.quota))
            .map_err(cg("set the domain's CPU quota"))?;
        if let Some(c) = &limits.cpus {
            g.set_cpuset(c)
                .map_err(cg(format!("pin the domain to CPUs {c}")))?;
        }
        g.set_pids_limit(Some(limits.pids))
            .map_err(cg("set the domain's tasks limit"))
    })();
    if let Err(e) = r {
        let _ = g.destroy();
        return Err(e);
    }
    Ok(g)
}

fn destroy_groups_of(h: &Hierarchy, domid: u16, fuse: &[u32]) -> Result<(), ResourcesError> {
    let mut aborted = false;
    for name in h.groups().map_err(cg("list the domains' cgroups"))? {
        if group_domid(&name) == Some(domid) {
            let g = h
                .group(&name)
                .map_err(cg(format!("open the cgroup {name}")))?;
            // A runtime killed while its guest's root was dirty hangs in
            // its exit: its last flush waits on the FUSE block file it no
            // longer serves. Its FUSE connections are aborted first (as
            // root: the jailed runtime cannot), so that I/O fails at once
            // and the group goes: the domain's power is being pulled, and
            // waiting for the group first cost `DESTROY_TIMEOUT` (10 s) per
            // such guest (the scale benchmark's 64 guests took 223 s to
            // destroy). Aborted once, and only while the group has members
            // (their mount namespace holds the connections: a number is not
            // reused for another domain's disk before they are gone).
            if !aborted && g.procs().is_ok_and(|p| !p.is_empty()) {
                abort_fuse(fuse);
                aborted = true;
            }
            g.destroy()
                .map_err(cg(format!("destroy the cgroup {name}")))?;
        }
    }
    Ok(())
}

/// Kills what runs in domain `domid`'s group and removes it (nothing to
/// do when it has none). `fuse` are the domain's PV disks' FUSE
/// connections ([`domain_fuse_disks`], taken while its runtime lived),
/// aborted before the members are killed.
///
/// # Errors
/// [`ResourcesError::Cgroup`].
pub fn destroy_group(domid: u16, fuse: &[u32]) -> Result<(), ResourcesError> {
    destroy_groups_of(&hierarchy()?, domid, fuse)
}

/// The FUSE connections (fusectl numbers) of domain `domid`'s PV disks:
/// the `xen-blkfront` block files mounted in the mount namespaces of its
/// group's processes. A domain's runtime mounts its disks in a private
/// mount namespace, so these are that domain's disks only. Read while the
/// runtime lives: an exiting thread has left its namespaces. A thread in
/// xl's own mount namespace (a runtime not yet in its private one) is
/// skipped: it sees the host's mounts, whose `xen-blkfront` block files
/// (another tool's, a test's) are not the domain's to abort.
#[must_use]
pub fn domain_fuse_disks(domid: u16) -> Vec<u32> {
    let Ok(h) = hierarchy() else {
        return Vec::new();
    };
    let Ok(own_ns) = std::fs::read_link("/proc/self/ns/mnt") else {
        return Vec::new();
    };
    let mut conns = std::collections::BTreeSet::new();
    for name in h.groups().unwrap_or_default() {
        if group_domid(&name) != Some(domid) {
            continue;
        }
        let Ok(g) = h.group(&name) else { continue };
        for pid in g.procs().unwrap_or_default() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                if !in_other_mount_ns(&t.path(), &own_ns) {
                    continue;
                }
                if let Ok(info) = std::fs::read_to_string(t.path().join("mountinfo")) {
                    conns.extend(info.lines().filter_map(pvdisk_fuse_connection));
                }
            }
        }
    }
    conns.into_iter().collect()
}

/// Whether task `task` (`/proc/PID/task/TID`) is in a mount namespace other
/// than `own` (a `/proc/.../ns/mnt` link); `false` when it cannot be told.
fn in_other_mount_ns(task: &std::path::Path, own: &std::path::Path) -> bool {
    std::fs::read_link(task.join("ns/mnt")).is_ok_and(|ns| ns != own)
}

/// Aborts the FUSE connections `conns` (mounting `fusectl` first if the
/// host has not); returns how many were aborted.
fn abort_fuse(conns: &[u32]) -> usize {
    if conns.is_empty() {
        return 0;
    }
    let dir = std::path::Path::new("/sys/fs/fuse/connections");
    let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(2) == Some("fusectl"))
    });
    if !mounted {
        if let Err(e) = nix::mount::mount(
            Some("fusectl"),
            dir,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            eprintln!("xl: cannot mount fusectl on {}: {e}", dir.display());
        }
    }
    let mut aborted = 0;
    for c in conns {
        let path = format!("/sys/fs/fuse/connections/{c}/abort");
        match std::fs::write(&path, "1") {
            Ok(()) => aborted += 1,
            // Gone with its runtime already.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("xl: cannot abort the FUSE connection {path}: {e}"),
        }
    }
    aborted
}

/// The fusectl connection number of a PV disk's mount, from one line of
/// `mountinfo` (`ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS] - TYPE SOURCE
/// SUPER`): FUSE's anonymous device `0:N` is connection `N`.
fn pvdisk_fuse_connection(line: &str) -> Option<u32> {
    let (head, tail) = line.split_once(" - ")?;
    let mut t = tail.split_whitespace();
    let (fstype, source) = (t.next()?, t.next()?);
    if !fstype.starts_with("fuse") || source != "xen-blkfront" {
        return None;
    }
    let dev = head.split_whitespace().nth(2)?;
    let (major, minor) = dev.split_once(':')?;
    (major == "0").then(|| minor.parse().ok()).flatten()
}

/// How long [`freeze_domain`] waits for the freezer to finish.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Freezes (`true`: every task of the domain's group, the runtime and what
/// the guest runs, and waits until the freezer says `FROZEN`) or thaws the
/// domain's group. A frozen task is not "stopped" for job control, so a
/// stop signal sent to it meanwhile waits until it is thawed (`xl create
/// -p`: the shim's pause of a runtime whose parent `xl` exits would
/// otherwise have the kernel hang it up, its process group orphaned with a
/// stopped member).
///
/// # Errors
/// [`ResourcesError::NoGroup`], [`ResourcesError::Cgroup`] (no freezer),
/// or [`ResourcesError::NotFrozen`] in [`FREEZE_TIMEOUT`].
pub fn freeze_domain(domid: u16, frozen: bool) -> Result<(), ResourcesError> {
    let h = hierarchy()?;
    let name = h
        .groups()
        .map_err(cg("list the domains' cgroups"))?
        .into_iter()
        .find(|n| group_domid(n) == Some(domid))
        .ok_or(ResourcesError::NoGroup(domid))?;
    let g = h
        .group(&name)
        .map_err(cg(format!("open the cgroup {name}")))?;
    let what = if frozen { "freeze" } else { "thaw" };
    g.freeze(frozen)
        .map_err(cg(format!("{what} the cgroup {name}")))?;
    if !frozen {
        return Ok(());
    }
    let state = g
        .dirs()
        .into_iter()
        .map(|d| d.join("freezer.state"))
        .find(|p| p.exists());
    let Some(state) = state else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
    loop {
        if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN") {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ResourcesError::NotFrozen(name));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What `xl list` shows of one domain beyond the shim's info.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Mem, MiB.
    pub mem_mib: u64,
    /// Time(s).
    pub time_s: f64,
    /// State.
    pub flags: String,
}

/// The domains' groups and the host's figures, read once per listing.
#[derive(Debug, Default)]
pub struct Census {
    groups: BTreeMap<u16, Cgroup>,
    /// CPU time of the whole host (the root group) less the domains'
    /// parent group, which keeps the time of destroyed domains too.
    dom0_time: Option<Duration>,
    mem_total_mib: u64,
    /// The PV domains' balloon targets (`xl mem-set`), MiB.
    targets: BTreeMap<u16, u64>,
}

impl Census {
    /// Reads the host (never fails: what cannot be read is left out).
    #[must_use]
    pub fn take() -> Self {
        Self::take_of(None)
    }

    /// [`Census::take`] of the domains `only` (all with `None`): `xl list
    /// NAME` read every domain's cgroup and balloon target, a xenstore read
    /// per domain, to print one line.
    #[must_use]
    pub fn take_of(only: Option<&[u16]>) -> Self {
        let mut c = Self {
            mem_total_mib: mem_total_mib(),
            ..Self::default()
        };
        let Ok(h) = hierarchy() else {
            return c;
        };
        for name in h.groups().unwrap_or_default() {
            let Some(id) = group_domid(&name) else {
                continue;
            };
            if only.is_some_and(|o| !o.contains(&id)) {
                continue;
            }
            if let Ok(g) = h.group(&name) {
                c.groups.insert(id, g);
            }
        }
        if let Ok(xs) = crate::toolstack::xenstore(false) {
            for &id in c.groups.keys() {
                if let Some(t) = crate::mem::target_mib(&xs, id) {
                    c.targets.insert(id, t);
                }
            }
        }
        if let Ok(root) = h.root_cpu_time() {
            let guests = h.parent_cpu_time().unwrap_or_default();
            c.dom0_time = Some(root.saturating_sub(guests));
        }
        c
    }

    /// The figures of `d` among `all` the listed domains.
    #[must_use]
    pub fn figures(&self, d: &DomainInfo, all: &[DomainInfo]) -> Figures {
        if d.domid == 0 {
            // As Xen's Dom0 with autoballoon: the host's memory less what
            // the other domains were given.
            let guests: u64 = all
                .iter()
                .filter(|o| o.domid != 0)
                .map(|o| o.memory_mib)
                .sum();
            let mem_mib = if self.mem_total_mib > 0 {
                self.mem_total_mib.saturating_sub(guests)
            } else {
                d.memory_mib
            };
            return Figures {
                mem_mib,
                time_s: self.dom0_time.map_or(0.0, |t| t.as_secs_f64()),
                flags: d.flags.clone(),
            };
        }
        let Some(g) = self.groups.get(&d.domid) else {
            // No group (a domain not made by xl): its runtime's own time.
            return Figures {
                mem_mib: d.memory_mib,
                time_s: d.pid.map_or(0.0, process_cpu_seconds),
                flags: d.flags.clone(),
            };
        };
        let mut flags: Vec<char> = d.flags.chars().collect();
        // The shim's `r` is "its runtime is attached"; Xen's is "on a CPU
        // or runnable", else `b`: any task of the group in state R.
        if flags.first() == Some(&'r') && flags.len() == 6 && !any_runnable(g) {
            flags[0] = '-';
            flags[1] = 'b';
        }
        // A PV domain's Mem is its balloon target (xl mem-set); a PVHVM
        // domain's the pages its VMM counts (what its balloon left).
        let mem_mib = match d.kind {
            xen_shim_proto::layout::DomainType::Pv => {
                self.targets.get(&d.domid).copied().unwrap_or(d.memory_mib)
            }
            xen_shim_proto::layout::DomainType::Pvhvm => d
                .pid
                .and_then(|_| crate::mem::vmm_pages(d.domid, &d.name).ok())
                .map_or(d.memory_mib, |(pages, _)| pages / 256),
        };
        Figures {
            mem_mib,
            time_s: g.cpu_time().map_or(0.0, |t| t.as_secs_f64()),
            flags: flags.into_iter().collect(),
        }
    }
}

/// Whether any task of `g` is running or runnable (`R` in its stat).
fn any_runnable(g: &Cgroup) -> bool {
    g.threads().unwrap_or_default().iter().any(|tid| {
        std::fs::read_to_string(format!("/proc/{tid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next())
            })
            == Some('R')
    })
}

/// `MemTotal` of `/proc/meminfo`, MiB (0 if unreadable).
fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb / 1024)
}

/// CPU seconds of a process (`utime + stime` of `/proc/<pid>/stat`).
fn process_cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may contain spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let total = ticks(11).saturating_add(ticks(12));
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return 0.0;
    }
    total as f64 / hz as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pvdisk_fuse_connection_only_of_pv_disks() {
        let disk = "812 790 0:93 / /dev/xvda rw,nosuid,nodev,relatime - fuse.pvdisk xen-blkfront rw,user_id=0,group_id=0,default_permissions,allow_other";
        assert_eq!(pvdisk_fuse_connection(disk), Some(93));
        let other_fuse = "813 790 0:94 / /mnt rw - fuse.sshfs host:/ rw";
        assert_eq!(pvdisk_fuse_connection(other_fuse), None);
        let ext4 = "30 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw";
        assert_eq!(pvdisk_fuse_connection(ext4), None);
        assert_eq!(pvdisk_fuse_connection("garbage"), None);
    }

    /// A thread in xl's own mount namespace sees the host's mounts: its
    /// FUSE disks are not taken for the domain's (a domain's destroy
    /// aborted a test's own block file); one in a namespace of its own is
    /// looked at.
    #[test]
    fn test_only_tasks_in_another_mount_namespace_are_looked_at() {
        let own = std::fs::read_link("/proc/self/ns/mnt").expect("own mount namespace");
        let me = std::path::PathBuf::from(format!("/proc/self/task/{}", nix::unistd::gettid()));
        assert!(!in_other_mount_ns(&me, &own));
        let mut child = std::process::Command::new("unshare")
            .args(["-m", "sleep", "10"])
            .spawn()
            .expect("unshare -m (util-linux; root)");
        let task = std::path::PathBuf::from(format!("/proc/{0}/task/{0}", child.id()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // unshare execs sleep once its namespace is made.
        while !std::fs::read_link(format!("/proc/{}/exe", child.id()))
            .is_ok_and(|e| e.ends_with("sleep"))
        {
            assert!(std::time::Instant::now() < deadline, "unshare did not exec");
            std::thread::sleep(Duration::from_millis(10));
        }
        let other = in_other_mount_ns(&task, &own);
        let _ = child.kill();
        let _ = child.wait();
        assert!(other);
        assert!(!in_other_mount_ns(
            std::path::Path::new("/proc/none/task/none"),
            &own
        ));
    }

    fn spec(s: &[&str]) -> Result<CpusSpec, String> {
        CpusSpec::parse(s.iter().map(|x| (*x).to_owned()).collect())
    }

    #[test]
    fn test_cpus_spec_xen_forms_resolve() {
        let online = CpuSet::range(0, 7).expect("range");
        let r = |s: &[&str]| {
            spec(s)
                .expect("valid")
                .resolve_in(&online)
                .expect("resolves")
                .to_string()
        };
        assert_eq!(r(&["0-1"]), "0-1");
        assert_eq!(r(&["0,1"]), "0-1");
        assert_eq!(r(&["all"]), "0-7");
        assert_eq!(r(&["all,^1"]), "0,2-7");
        assert_eq!(r(&["0-3,5,^1"]), "0,2-3,5");
        // A list: one entry per vCPU, united.
        assert_eq!(r(&["2", "3-5,^4"]), "2-3,5");
        assert_eq!(r(&["3"]), "3");
    }

    #[test]
    fn test_cpus_spec_bad_forms_fail() {
        assert!(spec(&["nodes:0-1"]).expect_err("numa").contains("NUMA"));
        assert!(spec(&["x"]).is_err());
        assert!(spec(&["1-"]).is_err());
        assert!(spec(&[""]).is_err());
        assert!(spec(&[]).is_err());
        assert!(spec(&["1,^1"]).expect_err("none").contains("no CPU"));
        assert!(spec(&["99999"]).is_err());
    }

    #[test]
    fn test_group_name_is_one_clean_component_with_the_domid() {
        assert_eq!(group_name(3, "web-1.a_b"), "dom3-web-1.a_b");
        assert_eq!(group_name(12, "a b/c"), "dom12-a_b_c");
        assert_eq!(group_domid("dom12-a_b_c"), Some(12));
        assert_eq!(group_domid("dom1-x-y"), Some(1));
        assert_eq!(group_domid("xen"), None);
        assert_eq!(group_domid("domx-1"), None);
    }

    #[test]
    fn test_limits_memory_plus_allowance_vcpus_quota() {
        let c = XlConfig::parse(
            "t.cfg",
            "name='a'\nmemory=64\nmaxmem=96\nvcpus=2\ncpus='0'\n",
        )
        .expect("valid");
        let l = Limits::of(&c).expect("limits");
        assert_eq!(l.memory_bytes, (96 + PV_RUNTIME_ALLOWANCE_MIB) << 20);
        assert_eq!(l.quota.as_millicpus(), 2000);
        assert_eq!(l.cpus.map(|c| c.to_string()).as_deref(), Some("0"));
        assert_eq!(l.pids, DEFAULT_PIDS_MAX);
    }
}
