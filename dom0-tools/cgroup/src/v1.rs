//! cgroup v1: one directory per controller hierarchy (`memory`, `cpu`,
//! `cpuacct`, `cpuset`, `pids`, `freezer`; two controllers mounted
//! together share one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{fsio, parse, CgroupError, CpuQuota, CpuSet, V1Mounts};

/// A domain's group in the v1 hierarchies.
#[derive(Clone, Debug)]
pub struct Group {
    name: String,
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    cpuset: PathBuf,
    pids: PathBuf,
    freezer: Option<PathBuf>,
}

/// `rel` in each hierarchy, each directory once.
pub(crate) fn dirs_of(m: &V1Mounts, rel: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    for root in [&m.memory, &m.cpu, &m.cpuacct, &m.cpuset, &m.pids]
        .into_iter()
        .chain(m.freezer.as_ref())
    {
        let d = root.join(rel);
        if !v.contains(&d) {
            v.push(d);
        }
    }
    v
}

impl Group {
    pub(crate) fn new(m: &V1Mounts, rel: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            memory: m.memory.join(rel),
            cpu: m.cpu.join(rel),
            cpuacct: m.cpuacct.join(rel),
            cpuset: m.cpuset.join(rel),
            pids: m.pids.join(rel),
            freezer: m.freezer.as_ref().map(|f| f.join(rel)),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = Vec::new();
        for d in self.dirs_in_mount_order() {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        v
    }

    /// Makes `dir` and its missing ancestors below the mount `root`; a new
    /// `cpuset` directory gets its parent's `cpuset.cpus` and
    /// `cpuset.mems` (v1 leaves them empty, and an empty cpuset takes no
    /// task). Whether `dir` itself was made.
    fn make(root: &Path, dir: &Path, cpuset: bool) -> Result<bool, CgroupError> {
        if dir == root || dir.is_dir() {
            return Ok(false);
        }
        if let Some(up) = dir.parent() {
            Self::make(root, up, cpuset)?;
        }
        let made = fsio::mkdir(dir)?;
        if made && cpuset {
            let up = dir.parent().unwrap_or(root);
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = fsio::read(&up.join(f))?;
                fsio::write(&dir.join(f), v.trim())?;
            }
        }
        Ok(made)
    }

    pub(crate) fn create(&self, m: &V1Mounts) -> Result<(), CgroupError> {
        if let Some(d) = self.dirs().into_iter().find(|d| d.exists()) {
            return Err(CgroupError::Exists(d));
        }
        let roots = [&m.memory, &m.cpu, &m.cpuacct, &m.cpuset, &m.pids]
            .into_iter()
            .chain(m.freezer.as_ref());
        let mut made = Vec::new();
        let r = (|| {
            for (root, dir) in roots.zip(self.dirs_in_mount_order()) {
                if Self::make(root, &dir, dir == self.cpuset)? {
                    made.push(dir);
                }
            }
            // The OOM killer acts inside the group (never paused in it).
            fsio::write(&self.memory.join("memory.oom_control"), "0")
        })();
        if r.is_err() {
            for d in made.iter().rev() {
                let _ = fsio::rmdir(d);
            }
        }
        r
    }

    /// The directories in the order of [`dirs_of`]'s mounts (duplicates
    /// kept, so that they zip with the mounts).
    fn dirs_in_mount_order(&self) -> Vec<PathBuf> {
        [
            &self.memory,
            &self.cpu,
            &self.cpuacct,
            &self.cpuset,
            &self.pids,
        ]
        .into_iter()
        .chain(self.freezer.as_ref())
        .cloned()
        .collect()
    }

    pub(crate) fn set_memory_limit(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        let mem = self.memory.join("memory.limit_in_bytes");
        let memsw = self.memory.join("memory.memsw.limit_in_bytes");
        let v = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
        if !memsw.exists() {
            return fsio::write(&mem, &v);
        }
        // memory+swap may never be below memory: raise it first, lower it
        // last.
        let cur = fsio::read_limit(&memsw, "memory.memsw.limit_in_bytes")?;
        let raising = match (bytes, cur) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(b), Some(c)) => b > c,
        };
        if raising {
            fsio::write(&memsw, &v)?;
            fsio::write(&mem, &v)
        } else {
            fsio::write(&mem, &v)?;
            fsio::write(&memsw, &v)
        }
    }

    pub(crate) fn memory_limit(&self) -> Result<Option<u64>, CgroupError> {
        fsio::read_limit(
            &self.memory.join("memory.limit_in_bytes"),
            "memory.limit_in_bytes",
        )
    }

    pub(crate) fn set_cpu_quota(&self, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        let q = self.cpu.join("cpu.cfs_quota_us");
        // Unlimited first, so that no intermediate quota/period pair is
        // refused.
        fsio::write(&q, "-1")?;
        if let Some(quota) = quota {
            fsio::write(
                &self.cpu.join("cpu.cfs_period_us"),
                &quota.period_us().to_string(),
            )?;
            fsio::write(&q, &quota.quota_us().to_string())?;
        }
        Ok(())
    }

    pub(crate) fn cpu_quota(&self) -> Result<Option<CpuQuota>, CgroupError> {
        let qp = self.cpu.join("cpu.cfs_quota_us");
        let q = fsio::read(&qp)?;
        if q.trim() == "-1" {
            return Ok(None);
        }
        let pp = self.cpu.join("cpu.cfs_period_us");
        let p = fsio::read_u64(&pp, "cpu.cfs_period_us")?;
        let q = parse::parse_u64("cpu.cfs_quota_us", &q).map_err(|source| CgroupError::Parse {
            path: qp.clone(),
            source,
        })?;
        CpuQuota::new(q, p)
            .map(Some)
            .map_err(|source| CgroupError::Parse { path: qp, source })
    }

    pub(crate) fn set_cpu_shares(&self, shares: u64) -> Result<(), CgroupError> {
        fsio::write(&self.cpu.join("cpu.shares"), &shares.to_string())
    }

    pub(crate) fn cpu_shares(&self) -> Result<u64, CgroupError> {
        fsio::read_u64(&self.cpu.join("cpu.shares"), "cpu.shares")
    }

    pub(crate) fn set_cpuset(&self, cpus: &CpuSet) -> Result<(), CgroupError> {
        fsio::write(&self.cpuset.join("cpuset.cpus"), &cpus.to_string())
    }

    pub(crate) fn cpuset(&self) -> Result<CpuSet, CgroupError> {
        let p = self.cpuset.join("cpuset.cpus");
        CpuSet::parse(&fsio::read(&p)?).map_err(|source| CgroupError::Parse { path: p, source })
    }

    pub(crate) fn set_pids_limit(&self, max: Option<u64>) -> Result<(), CgroupError> {
        let v = max.map_or_else(|| "max".to_owned(), |m| m.to_string());
        fsio::write(&self.pids.join("pids.max"), &v)
    }

    pub(crate) fn pids_limit(&self) -> Result<Option<u64>, CgroupError> {
        fsio::read_limit(&self.pids.join("pids.max"), "pids.max")
    }

    pub(crate) fn pids_limit_hits(&self) -> Result<u64, CgroupError> {
        fsio::read_keyed(&self.pids.join("pids.events"), "max")
    }

    pub(crate) fn procs_file(&self) -> PathBuf {
        self.pids.join("cgroup.procs")
    }

    pub(crate) fn threads_file(&self) -> PathBuf {
        self.pids.join("tasks")
    }

    pub(crate) fn cpu_time(&self) -> Result<Duration, CgroupError> {
        let ns = fsio::read_u64(&self.cpuacct.join("cpuacct.usage"), "cpuacct.usage")?;
        Ok(Duration::from_nanos(ns))
    }

    pub(crate) fn memory_usage(&self) -> Result<u64, CgroupError> {
        fsio::read_u64(
            &self.memory.join("memory.usage_in_bytes"),
            "memory.usage_in_bytes",
        )
    }

    pub(crate) fn oom_kills(&self) -> Result<u64, CgroupError> {
        fsio::read_keyed(&self.memory.join("memory.oom_control"), "oom_kill")
    }

    pub(crate) fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let f = self
            .freezer
            .as_ref()
            .ok_or(CgroupError::Unsupported("the freezer controller"))?;
        fsio::write(
            &f.join("freezer.state"),
            if frozen { "FROZEN" } else { "THAWED" },
        )
    }
}
