//! cgroup v2: one directory in the unified hierarchy; the controllers are
//! enabled for it in each ancestor's `cgroup.subtree_control`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{fsio, CgroupError, CpuQuota, CpuSet};

/// The controllers a domain's group uses.
pub const CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuset", "pids"];

/// A domain's group in the unified hierarchy.
#[derive(Clone, Debug)]
pub struct Group {
    name: String,
    dir: PathBuf,
}

impl Group {
    pub(crate) fn new(root: &Path, rel: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dir: root.join(rel),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    /// Enables [`CONTROLLERS`] for the children of `dir`.
    fn delegate(dir: &Path) -> Result<(), CgroupError> {
        let p = dir.join("cgroup.subtree_control");
        let have = fsio::read(&p)?;
        let want: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| !have.split_whitespace().any(|h| h == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if want.is_empty() {
            return Ok(());
        }
        // EBUSY here is v2's no-internal-process rule: `dir` holds
        // processes; the parent path must be a group without any.
        fsio::write(&p, &want.join(" "))
    }

    pub(crate) fn create(&self, root: &Path) -> Result<(), CgroupError> {
        if self.dir.exists() {
            return Err(CgroupError::Exists(self.dir.clone()));
        }
        let rel = self.dir.strip_prefix(root).unwrap_or(&self.dir);
        let mut at = root.to_path_buf();
        for c in rel.components() {
            Self::delegate(&at)?;
            at.push(c);
            fsio::mkdir(&at)?;
        }
        Ok(())
    }

    pub(crate) fn set_memory_limit(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        let v = bytes.map_or_else(|| "max".to_owned(), |b| b.to_string());
        fsio::write(&self.dir.join("memory.max"), &v)?;
        let swap = self.dir.join("memory.swap.max");
        if swap.exists() {
            fsio::write(&swap, if bytes.is_some() { "0" } else { "max" })?;
        }
        Ok(())
    }

    pub(crate) fn memory_limit(&self) -> Result<Option<u64>, CgroupError> {
        fsio::read_limit(&self.dir.join("memory.max"), "memory.max")
    }

    pub(crate) fn set_cpu_quota(&self, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        let v = quota.map_or_else(|| "max".to_owned(), CpuQuota::cpu_max);
        fsio::write(&self.dir.join("cpu.max"), &v)
    }

    pub(crate) fn cpu_quota(&self) -> Result<Option<CpuQuota>, CgroupError> {
        let p = self.dir.join("cpu.max");
        CpuQuota::parse_cpu_max(&fsio::read(&p)?)
            .map_err(|source| CgroupError::Parse { path: p, source })
    }

    pub(crate) fn set_cpu_shares(&self, shares: u64) -> Result<(), CgroupError> {
        let w = crate::parse::shares_to_weight(shares);
        fsio::write(&self.dir.join("cpu.weight"), &w.to_string())
    }

    pub(crate) fn cpu_shares(&self) -> Result<u64, CgroupError> {
        let w = fsio::read_u64(&self.dir.join("cpu.weight"), "cpu.weight")?;
        Ok(crate::parse::weight_to_shares(w))
    }

    pub(crate) fn set_cpuset(&self, cpus: &CpuSet) -> Result<(), CgroupError> {
        fsio::write(&self.dir.join("cpuset.cpus"), &cpus.to_string())
    }

    pub(crate) fn cpuset(&self) -> Result<CpuSet, CgroupError> {
        // An empty cpuset.cpus in v2 means "the parent's": the effective
        // list is what the members get.
        let p = self.dir.join("cpuset.cpus.effective");
        CpuSet::parse(&fsio::read(&p)?).map_err(|source| CgroupError::Parse { path: p, source })
    }

    pub(crate) fn set_pids_limit(&self, max: Option<u64>) -> Result<(), CgroupError> {
        let v = max.map_or_else(|| "max".to_owned(), |m| m.to_string());
        fsio::write(&self.dir.join("pids.max"), &v)
    }

    pub(crate) fn pids_limit(&self) -> Result<Option<u64>, CgroupError> {
        fsio::read_limit(&self.dir.join("pids.max"), "pids.max")
    }

    pub(crate) fn pids_limit_hits(&self) -> Result<u64, CgroupError> {
        fsio::read_keyed(&self.dir.join("pids.events"), "max")
    }

    pub(crate) fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    pub(crate) fn threads_file(&self) -> PathBuf {
        self.dir.join("cgroup.threads")
    }

    pub(crate) fn cpu_time(&self) -> Result<Duration, CgroupError> {
        let us = fsio::read_keyed(&self.dir.join("cpu.stat"), "usage_usec")?;
        Ok(Duration::from_micros(us))
    }

    pub(crate) fn memory_usage(&self) -> Result<u64, CgroupError> {
        fsio::read_u64(&self.dir.join("memory.current"), "memory.current")
    }

    pub(crate) fn oom_kills(&self) -> Result<u64, CgroupError> {
        fsio::read_keyed(&self.dir.join("memory.events"), "oom_kill")
    }

    pub(crate) fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        fsio::write(
            &self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    }

    /// `cgroup.kill` (Linux 5.14): the kernel SIGKILLs every member at
    /// once; older kernels lack the file and [`crate::fsio`]'s loop does it.
    pub(crate) fn kill(&self) {
        let k = self.dir.join("cgroup.kill");
        if k.exists() {
            let _ = fsio::write(&k, "1");
        }
    }
}
