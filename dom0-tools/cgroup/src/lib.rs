//! Domains' control groups: one small interface over the host's cgroups,
//! the part of "the hypervisor holds a domain to its memory and vCPUs"
//! that Linux does for us.
//!
//! [`Hierarchy::detect`] reads `/proc/self/mountinfo` and picks what the
//! host mounts: cgroup v1 controllers (`memory`, `cpu`, `cpuacct`,
//! `cpuset`, `pids`, and `freezer` when mounted; a v2 `unified` tree
//! without controllers beside them is ignored) or a cgroup v2 hierarchy
//! whose root offers `memory cpu cpuset pids`. Domain groups live under
//! one parent path from each hierarchy's root (the toolstack's `xen`);
//! [`Hierarchy::create`] makes one ([`Cgroup`]), with the same operations
//! on both versions:
//!
//! | operation | v1 | v2 |
//! |---|---|---|
//! | [`Cgroup::set_memory_limit`] | `memory.limit_in_bytes` + `memory.memsw.limit_in_bytes` (when swap is accounted), `memory.oom_control` = 0 (the OOM killer acts inside the group) | `memory.max`, `memory.swap.max` = 0 |
//! | [`Cgroup::set_cpu_quota`] | `cpu.cfs_period_us`, `cpu.cfs_quota_us` | `cpu.max` |
//! | [`Cgroup::set_cpu_shares`] | `cpu.shares` | `cpu.weight` ([`parse::shares_to_weight`]) |
//! | [`Cgroup::set_cpuset`] | `cpuset.cpus` (`cpuset.cpus`/`mems` copied from the parent at creation) | `cpuset.cpus` |
//! | [`Cgroup::set_pids_limit`] | `pids.max` | `pids.max` |
//! | [`Cgroup::cpu_time`] | `cpuacct.usage` | `cpu.stat` `usage_usec` |
//! | [`Cgroup::memory_usage`] | `memory.usage_in_bytes` | `memory.current` |
//! | [`Cgroup::oom_kills`] | `memory.oom_control` `oom_kill` | `memory.events` `oom_kill` |
//! | [`Cgroup::freeze`] | `freezer.state` | `cgroup.freeze` |
//! | [`Cgroup::destroy`] | SIGKILL every member (pidfds), `rmdir` each controller's directory | `cgroup.kill`, then the same |
//!
//! A process joins a group before it runs anything of its own with
//! [`Cgroup::enter_on_exec`] (the child writes `0` to each `cgroup.procs`,
//! on v1 each `tasks`, between fork and exec), so whatever it forks is born inside; the kernel
//! then charges its memory and CPU time there. [`GroupGuard`] destroys a
//! group when dropped (tests, error paths). The file formats are parsed
//! purely in [`parse`].
//!
//! Why not the `cgroups-rs` crate (kata-containers): 0.5 depends on `zbus`
//! (an async D-Bus stack, for systemd), `nix` 0.25 and `thiserror` 1 beside
//! our `nix` 0.29 and `thiserror` 2; its v1 groups are made in every
//! mounted hierarchy (`blkio`, `devices`, `net_cls` ...), and it moves a
//! task in only by pid after it runs, where a domain's runtime must be in
//! its group before it forks. What we need is a dozen files.

pub mod parse;
pub mod v1;
pub mod v2;

mod fsio;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use parse::{CpuQuota, CpuSet, ParseError};

/// Where the kernel lists mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// How long [`Cgroup::destroy`] waits for the members to die and the
/// directories to go.
pub const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the cgroup interface.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host mounts no hierarchy we can use.
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    /// A group name or parent path is not usable as a directory.
    #[error("bad cgroup name {0:?} (path components without '/', '.', '..' or NUL, at most 255 bytes each)")]
    BadName(String),
    /// The group exists already.
    #[error("cgroup {} already exists", .0.display())]
    Exists(PathBuf),
    /// A cgroup file or directory operation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was tried.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file holds what we cannot parse.
    #[error("cannot parse {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// Members survived [`Cgroup::destroy`].
    #[error("{} still holds processes {pids:?} after {DESTROY_TIMEOUT:?}", path.display())]
    Busy {
        /// The group's directory.
        path: PathBuf,
        /// Some of them.
        pids: Vec<i32>,
    },
    /// The hierarchy lacks a controller for this operation.
    #[error("{0} is not available on this host's cgroups")]
    Unsupported(&'static str),
}

/// Which cgroup version a [`Hierarchy`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

/// The mount points of the v1 controllers we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Mounts {
    /// `memory`.
    pub memory: PathBuf,
    /// `cpu` (may be the same directory as `cpuacct`: `cpu,cpuacct`).
    pub cpu: PathBuf,
    /// `cpuacct`.
    pub cpuacct: PathBuf,
    /// `cpuset`.
    pub cpuset: PathBuf,
    /// `pids`.
    pub pids: PathBuf,
    /// `freezer`, when mounted.
    pub freezer: Option<PathBuf>,
}

#[derive(Clone, Debug)]
enum Layout {
    V1(V1Mounts),
    V2(PathBuf),
}

/// The host's cgroups and the parent path under which domain groups live.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    layout: Layout,
    parent: PathBuf,
}

/// Checks a relative path made of usable directory names.
fn check_path(p: &str, single: bool) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadName(p.to_owned());
    let t = p.trim_matches('/');
    let comps: Vec<&str> = if t.is_empty() {
        Vec::new()
    } else {
        t.split('/').collect()
    };
    if (single && comps.len() != 1) || p.contains('\0') {
        return Err(bad());
    }
    for c in &comps {
        if c.is_empty() || *c == "." || *c == ".." || c.len() > 255 {
            return Err(bad());
        }
    }
    Ok(comps.iter().collect())
}

impl Hierarchy {
    /// The host's hierarchy (from [`MOUNTINFO`]), domain groups under
    /// `parent` (a path from each hierarchy's root, e.g. `xen`).
    ///
    /// # Errors
    /// [`CgroupError::NoHierarchy`] naming what is missing,
    /// [`CgroupError::BadName`].
    pub fn detect(parent: &str) -> Result<Self, CgroupError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Io {
            what: "read",
            path: MOUNTINFO.into(),
            source,
        })?;
        Self::from_mounts(&parse::parse_mountinfo(&text), parent)
    }

    /// As [`Hierarchy::detect`] from parsed mounts: v1 when the `memory`,
    /// `cpu`, `cpuacct`, `cpuset` and `pids` controllers are mounted, else
    /// v2 when a `cgroup2` mount's `cgroup.controllers` lists `memory cpu
    /// cpuset pids`.
    ///
    /// # Errors
    /// As [`Hierarchy::detect`].
    pub fn from_mounts(mounts: &[parse::Mount], parent: &str) -> Result<Self, CgroupError> {
        let v1 = |c: &str| {
            mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == c))
                .map(|m| m.mountpoint.clone())
        };
        if let (Some(memory), Some(cpu), Some(cpuacct), Some(cpuset), Some(pids)) = (
            v1("memory"),
            v1("cpu"),
            v1("cpuacct"),
            v1("cpuset"),
            v1("pids"),
        ) {
            return Self::v1_at(
                V1Mounts {
                    memory,
                    cpu,
                    cpuacct,
                    cpuset,
                    pids,
                    freezer: v1("freezer"),
                },
                parent,
            );
        }
        let mut seen = Vec::new();
        for m in mounts.iter().filter(|m| m.fstype == "cgroup2") {
            match Self::v2_at(&m.mountpoint, parent) {
                Ok(h) => return Ok(h),
                Err(e) => seen.push(e.to_string()),
            }
        }
        let v1_seen: Vec<&str> = ["memory", "cpu", "cpuacct", "cpuset", "pids"]
            .into_iter()
            .filter(|c| v1(c).is_some())
            .collect();
        Err(CgroupError::NoHierarchy(format!(
            "v1 controllers mounted: {v1_seen:?} (memory, cpu, cpuacct, cpuset and pids are needed); \
             cgroup2: {}",
            if seen.is_empty() {
                "not mounted".to_owned()
            } else {
                seen.join("; ")
            }
        )))
    }

    /// v1 controllers mounted at `mounts` (a fake tree in tests).
    ///
    /// # Errors
    /// [`CgroupError::BadName`].
    pub fn v1_at(mounts: V1Mounts, parent: &str) -> Result<Self, CgroupError> {
        Ok(Self {
            layout: Layout::V1(mounts),
            parent: check_path(parent, false)?,
        })
    }

    /// A v2 hierarchy mounted at `mount` (a fake tree in tests); its
    /// `cgroup.controllers` must offer `memory cpu cpuset pids`.
    ///
    /// # Errors
    /// [`CgroupError::NoHierarchy`], [`CgroupError::BadName`].
    pub fn v2_at(mount: &Path, parent: &str) -> Result<Self, CgroupError> {
        let p = mount.join("cgroup.controllers");
        let have = std::fs::read_to_string(&p).unwrap_or_default();
        let missing: Vec<&str> = v2::CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !have.split_whitespace().any(|h| h == *c))
            .collect();
        if !missing.is_empty() {
            return Err(CgroupError::NoHierarchy(format!(
                "{} lacks the controllers {missing:?}",
                p.display()
            )));
        }
        Ok(Self {
            layout: Layout::V2(mount.to_path_buf()),
            parent: check_path(parent, false)?,
        })
    }

    /// Which version.
    #[must_use]
    pub fn version(&self) -> Version {
        match self.layout {
            Layout::V1(_) => Version::V1,
            Layout::V2(_) => Version::V2,
        }
    }

    /// The parent path of the domain groups (from each hierarchy's root).
    #[must_use]
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// The group `name` (one path component) under the parent, whether it
    /// exists or not (to destroy what may be left of it).
    ///
    /// # Errors
    /// [`CgroupError::BadName`].
    pub fn group(&self, name: &str) -> Result<Cgroup, CgroupError> {
        let rel = self.parent.join(check_path(name, true)?);
        Ok(match &self.layout {
            Layout::V1(m) => Cgroup::V1(v1::Group::new(m, &rel, name)),
            Layout::V2(root) => Cgroup::V2(v2::Group::new(root, &rel, name)),
        })
    }

    /// Creates the group `name` under the parent (and the parent when
    /// missing, as the kernel wants it: v1 `cpuset` directories get their
    /// parent's `cpuset.cpus`/`cpuset.mems`, v2 ancestors get the
    /// controllers in `cgroup.subtree_control`).
    ///
    /// # Errors
    /// [`CgroupError::Exists`] if any of its directories exists (destroy
    /// what is left first), or an I/O failure.
    pub fn create(&self, name: &str) -> Result<Cgroup, CgroupError> {
        let g = self.group(name)?;
        match (&self.layout, &g) {
            (Layout::V1(m), Cgroup::V1(g)) => g.create(m)?,
            (Layout::V2(root), Cgroup::V2(g)) => g.create(root)?,
            _ => unreachable!("group() builds the layout's version"),
        }
        Ok(g)
    }

    /// The group `name` if any of its directories exists.
    ///
    /// # Errors
    /// [`CgroupError::BadName`].
    pub fn open(&self, name: &str) -> Result<Option<Cgroup>, CgroupError> {
        let g = self.group(name)?;
        Ok(g.exists().then_some(g))
    }

    /// The names of the groups under the parent (none when it does not
    /// exist).
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn groups(&self) -> Result<Vec<String>, CgroupError> {
        let dir = match &self.layout {
            Layout::V1(m) => m.memory.join(&self.parent),
            Layout::V2(root) => root.join(&self.parent),
        };
        fsio::subdirs(&dir)
    }

    /// The CPU time of everything in the hierarchy (its root: the whole
    /// host, or the part of it a container sees).
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn root_cpu_time(&self) -> Result<Duration, CgroupError> {
        self.cpu_time_at(Path::new(""))
    }

    /// The CPU time of the parent's groups together, those removed since
    /// included (the kernel charges each ancestor as it goes); zero when
    /// the parent does not exist.
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn parent_cpu_time(&self) -> Result<Duration, CgroupError> {
        let g = match &self.layout {
            Layout::V1(m) => m.cpuacct.join(&self.parent),
            Layout::V2(root) => root.join(&self.parent),
        };
        if !g.is_dir() {
            return Ok(Duration::ZERO);
        }
        self.cpu_time_at(&self.parent)
    }

    fn cpu_time_at(&self, rel: &Path) -> Result<Duration, CgroupError> {
        match &self.layout {
            Layout::V1(m) => {
                let p = m.cpuacct.join(rel).join("cpuacct.usage");
                fsio::read_u64(&p, "cpuacct.usage").map(Duration::from_nanos)
            }
            Layout::V2(root) => {
                let p = root.join(rel).join("cpu.stat");
                fsio::read_keyed(&p, "usage_usec").map(Duration::from_micros)
            }
        }
    }

    /// Removes the parent's own directories once its groups are gone
    /// (those of an emptied test parent); a missing parent is fine.
    ///
    /// # Errors
    /// [`CgroupError::Io`] (`EBUSY` while groups or processes remain).
    pub fn remove_parent(&self) -> Result<(), CgroupError> {
        if self.parent.as_os_str().is_empty() {
            return Ok(());
        }
        let dirs = match &self.layout {
            Layout::V1(m) => v1::dirs_of(m, &self.parent),
            Layout::V2(root) => vec![root.join(&self.parent)],
        };
        for d in dirs {
            fsio::rmdir(&d)?;
        }
        Ok(())
    }
}

/// One domain's group, on either version; see the [crate docs](crate).
#[derive(Clone, Debug)]
pub enum Cgroup {
    /// Directories in the v1 controllers' hierarchies.
    V1(v1::Group),
    /// A directory in the unified hierarchy.
    V2(v2::Group),
}

macro_rules! both {
    ($self:ident, $g:ident => $e:expr) => {
        match $self {
            Cgroup::V1($g) => $e,
            Cgroup::V2($g) => $e,
        }
    };
}

impl Cgroup {
    /// The group's name (under the hierarchy's parent).
    #[must_use]
    pub fn name(&self) -> &str {
        both!(self, g => g.name())
    }

    /// Which version.
    #[must_use]
    pub fn version(&self) -> Version {
        match self {
            Cgroup::V1(_) => Version::V1,
            Cgroup::V2(_) => Version::V2,
        }
    }

    /// The group's directories (one per v1 hierarchy, one on v2).
    #[must_use]
    pub fn dirs(&self) -> Vec<PathBuf> {
        both!(self, g => g.dirs())
    }

    /// Whether any of its directories exists.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// Limits the memory of every member together to `bytes` (`None`: no
    /// limit); beyond it the kernel reclaims, then the OOM killer kills a
    /// member (the largest), inside the group only. Swap is not a way
    /// around it.
    ///
    /// # Errors
    /// [`CgroupError::Io`] (a limit below the current usage that cannot
    /// be reclaimed is refused with `EBUSY`).
    pub fn set_memory_limit(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        both!(self, g => g.set_memory_limit(bytes))
    }

    /// The memory limit (`None`: unlimited).
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn memory_limit(&self) -> Result<Option<u64>, CgroupError> {
        both!(self, g => g.memory_limit())
    }

    /// Limits the members' CPU time together (`None`: no limit).
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn set_cpu_quota(&self, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        both!(self, g => g.set_cpu_quota(quota))
    }

    /// The CPU quota (`None`: unlimited).
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn cpu_quota(&self) -> Result<Option<CpuQuota>, CgroupError> {
        both!(self, g => g.cpu_quota())
    }

    /// Sets the group's share of contended CPUs, in v1 `cpu.shares` units
    /// (clamped to [`parse::SHARES_RANGE`]; [`parse::DEFAULT_SHARES`] is a
    /// new group's): on v2 `cpu.weight` by [`parse::shares_to_weight`].
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn set_cpu_shares(&self, shares: u64) -> Result<(), CgroupError> {
        let s = shares.clamp(*parse::SHARES_RANGE.start(), *parse::SHARES_RANGE.end());
        both!(self, g => g.set_cpu_shares(s))
    }

    /// The group's CPU share, v1 `cpu.shares` units (on v2 from
    /// `cpu.weight` by [`parse::weight_to_shares`], so close to what was
    /// set, not always equal).
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn cpu_shares(&self) -> Result<u64, CgroupError> {
        both!(self, g => g.cpu_shares())
    }

    /// Runs the members only on `cpus` (a subset of the parent's).
    ///
    /// # Errors
    /// [`CgroupError::Io`] (`EINVAL` for CPUs the parent does not have).
    pub fn set_cpuset(&self, cpus: &CpuSet) -> Result<(), CgroupError> {
        both!(self, g => g.set_cpuset(cpus))
    }

    /// The CPUs the members may run on.
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn cpuset(&self) -> Result<CpuSet, CgroupError> {
        both!(self, g => g.cpuset())
    }

    /// Limits how many tasks (processes and threads) the members may have
    /// together (`None`: no limit); a fork beyond it fails with `EAGAIN`.
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn set_pids_limit(&self, max: Option<u64>) -> Result<(), CgroupError> {
        both!(self, g => g.set_pids_limit(max))
    }

    /// The pids limit (`None`: unlimited).
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn pids_limit(&self) -> Result<Option<u64>, CgroupError> {
        both!(self, g => g.pids_limit())
    }

    /// How many forks the pids limit refused so far (`pids.events` `max`).
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn pids_limit_hits(&self) -> Result<u64, CgroupError> {
        both!(self, g => g.pids_limit_hits())
    }

    /// Moves process `pid` (all its threads) into the group.
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for d in self.dirs() {
            fsio::write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Makes the process `cmd` spawns join this group between fork and
    /// exec, before it runs anything of its own (the files are opened now;
    /// the child only writes `0` to them).
    ///
    /// On v1 the child writes its `tasks` files: between fork and exec it
    /// has one thread, so moving that thread moves the process, and a
    /// thread moving itself skips the global lock a `cgroup.procs` write
    /// takes (`cgroup_threadgroup_rwsem`), whose first taking waits for an
    /// RCU grace period: 17 ms of a guest's creation here, against well
    /// under 1 ms. v2 has no such file: `cgroup.procs`.
    ///
    /// # Errors
    /// [`CgroupError::Io`] if a file cannot be opened.
    pub fn enter_on_exec(&self, cmd: &mut Command) -> Result<(), CgroupError> {
        let file = match self {
            Cgroup::V1(_) => "tasks",
            Cgroup::V2(_) => "cgroup.procs",
        };
        fsio::enter_on_exec(&self.dirs(), file, cmd)
    }

    /// The member processes.
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        both!(self, g => fsio::read_pids(&g.procs_file()))
    }

    /// The member tasks (every thread).
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        both!(self, g => fsio::read_pids(&g.threads_file()))
    }

    /// The CPU time the members have used (the kernel's accounting,
    /// including members that have exited).
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn cpu_time(&self) -> Result<Duration, CgroupError> {
        both!(self, g => g.cpu_time())
    }

    /// The memory charged to the group now, bytes.
    ///
    /// # Errors
    /// [`CgroupError::Io`] or [`CgroupError::Parse`].
    pub fn memory_usage(&self) -> Result<u64, CgroupError> {
        both!(self, g => g.memory_usage())
    }

    /// How many members the OOM killer killed in this group.
    ///
    /// # Errors
    /// [`CgroupError::Io`].
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        both!(self, g => g.oom_kills())
    }

    /// Freezes (`true`) or thaws every member.
    ///
    /// # Errors
    /// [`CgroupError::Unsupported`] without a v1 `freezer`, or
    /// [`CgroupError::Io`].
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        both!(self, g => g.freeze(frozen))
    }

    /// Kills every member (thawing a frozen group first) and removes the
    /// group's directories; a group that is (partly) gone already is fine.
    ///
    /// # Errors
    /// [`CgroupError::Busy`] when members survive [`DESTROY_TIMEOUT`], or
    /// [`CgroupError::Io`].
    pub fn destroy(&self) -> Result<(), CgroupError> {
        // Frozen members would hold their SIGKILL until thawed.
        if self.exists() {
            let _ = self.freeze(false);
        }
        if let Cgroup::V2(g) = self {
            g.kill();
        }
        fsio::kill_and_remove(&self.dirs(), &both!(self, g => g.procs_file()))
    }
}

/// A group destroyed when dropped (tests; set-up steps that may fail).
#[derive(Debug)]
pub struct GroupGuard(Option<Cgroup>);

impl GroupGuard {
    /// Guards `g`.
    #[must_use]
    pub fn new(g: Cgroup) -> Self {
        Self(Some(g))
    }

    /// Keeps the group: it is no longer destroyed on drop.
    #[must_use]
    pub fn keep(mut self) -> Cgroup {
        self.0.take().expect("present until keep or drop")
    }
}

impl std::ops::Deref for GroupGuard {
    type Target = Cgroup;
    fn deref(&self) -> &Cgroup {
        self.0.as_ref().expect("present until keep or drop")
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            if let Err(e) = g.destroy() {
                eprintln!("xen-cgroup: cannot destroy {}: {e}", g.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_path_refuses_escapes() {
        assert!(check_path("xen", true).is_ok());
        assert_eq!(
            check_path("/a/b/", false).expect("ok"),
            PathBuf::from("a/b")
        );
        assert_eq!(check_path("", false).expect("root"), PathBuf::new());
        for bad in ["..", "a/..", ".", "a//b", "a\0b"] {
            assert!(check_path(bad, false).is_err(), "{bad:?}");
        }
        assert!(check_path("a/b", true).is_err());
        assert!(check_path("", true).is_err());
    }

    #[test]
    fn test_from_mounts_picks_v1_with_controllers_over_empty_unified() {
        let text = "\
1 0 0:1 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
2 0 0:2 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
3 0 0:3 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n\
4 0 0:4 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
5 0 0:5 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
6 0 0:6 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::from_mounts(&parse::parse_mountinfo(text), "xen").expect("v1");
        assert_eq!(h.version(), Version::V1);
        let g = h.group("dom1-a").expect("name");
        assert!(g
            .dirs()
            .contains(&PathBuf::from("/sys/fs/cgroup/memory/xen/dom1-a")));
        assert_eq!(g.dirs().len(), 5, "no freezer mounted");
    }

    #[test]
    fn test_from_mounts_without_controllers_names_what_is_missing() {
        let text = "4 0 0:4 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let e = Hierarchy::from_mounts(&parse::parse_mountinfo(text), "xen")
            .expect_err("no cpu")
            .to_string();
        assert!(
            e.contains("[\"memory\"]") && e.contains("not mounted"),
            "{e}"
        );
    }
}
