//! A throwaway one-node Ceph cluster per test: `tests/ceph-one.sh` (one
//! monitor, one in-memory OSD, auth none, pool `rbd` initialised for RBD)
//! in a fresh temporary directory, on a free port the script picks, so
//! tests run in parallel. [`CephCluster`] stops the daemons (by the pids the
//! script recorded) and removes the directory on drop, also when the test
//! panics. [`CephCluster::freeze`] stops the daemons with `SIGSTOP` (the
//! cluster is unreachable, its data kept: the fault tests' outage) and
//! [`CephCluster::thaw`] resumes them.
//!
//! [`CephCluster::start_in`] runs it inside a network namespace on one of
//! its addresses, for clients in other namespaces (the two-host rig's
//! hosts); its `rbd` commands then run in that namespace too.
//!
//! Needs Debian's `ceph-mon`, `ceph-osd` and `ceph-common` (`rbd`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{need, stdout_of};

/// A running one-node cluster.
#[derive(Debug)]
pub struct CephCluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// The network namespace it runs in (`ip netns exec`), if not the
    /// caller's.
    netns: Option<String>,
    stopped: bool,
}

/// The cluster script (a copy of the project's shared one).
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ceph-one.sh")
}

impl CephCluster {
    /// Starts a cluster of `size` bytes of in-memory store (pool `rbd`).
    pub fn start(size: u64) -> Result<Self> {
        Self::start_in(size, None)
    }

    /// Like [`Self::start`], the OSD's objects kept in fixed-size pages
    /// (`memstore_page_set`). Memstore's default keeps an object as a list
    /// of buffers that every small overwrite splits: after a few seconds of
    /// 4 KiB random writes every later request of any client is slower (an
    /// rbd engine's 4 KiB random reads fell from 31k to 10k IOPS within one
    /// benchmark run), so whatever a benchmark measures later is measured
    /// on a slower cluster. With the page set the rates hold.
    pub fn start_paged(size: u64) -> Result<Self> {
        Self::start_with(size, None, true)
    }

    /// Like [`Self::start`], in network namespace `NAME` (from `ip netns`)
    /// on its address `ADDR` when `at` is `Some((NAME, ADDR))`.
    pub fn start_in(size: u64, at: Option<(&str, &str)>) -> Result<Self> {
        Self::start_with(size, at, false)
    }

    fn start_with(size: u64, at: Option<(&str, &str)>, page_set: bool) -> Result<Self> {
        need("ceph-mon", "ceph-mon")?;
        need("ceph-osd", "ceph-osd")?;
        need("rbd", "ceph-common")?;
        // Unix socket paths under the directory must stay short.
        let dir = tempfile::Builder::new()
            .prefix("ceph-")
            .tempdir_in("/tmp")
            .context("create the cluster's directory")?;
        let mut me = Self {
            conf: dir.path().join("ceph.conf"),
            dir,
            netns: at.map(|(ns, _)| ns.to_owned()),
            stopped: false,
        };
        let mut c = me.command("bash");
        c.arg(script())
            .arg("start")
            .arg(me.dir.path())
            .env("CEPH_ONE_SIZE", size.to_string())
            .env("CEPH_ONE_PAGESET", if page_set { "true" } else { "false" });
        if let Some((_, addr)) = at {
            c.env("CEPH_ONE_ADDR", addr);
        }
        let out = c.output().context("run tests/ceph-one.sh")?;
        if let Err(e) = stdout_of("ceph-one.sh start", &out) {
            me.stop();
            return Err(e);
        }
        Ok(me)
    }

    /// The clients' configuration file (`-c`, `rados_conf_read_file`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The cluster's directory (logs under `log/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `prog`, in the cluster's network namespace if it has one.
    fn command(&self, prog: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        }
    }

    /// Runs `rbd -c CONF args`; its stdout.
    pub fn rbd(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .context("cannot run rbd")?;
        stdout_of(&format!("rbd {}", args.join(" ")), &out)
    }

    /// Creates image `rbd/NAME` of `mib` MiB.
    pub fn create_image(&self, name: &str, mib: u64) -> Result<()> {
        self.rbd(&[
            "create",
            "--size",
            &format!("{mib}M"),
            &format!("rbd/{name}"),
        ])?;
        Ok(())
    }

    /// The daemons' pids, as the script recorded them.
    fn pids(&self) -> Result<Vec<i32>> {
        let s = std::fs::read_to_string(self.dir.path().join("pids"))
            .context("read the cluster's pid file")?;
        s.lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|p| p.parse::<i32>().context("a pid in the cluster's pid file"))
            .collect()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pids = self.pids()?;
        if pids.is_empty() {
            bail!("the cluster has no daemons");
        }
        for p in pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig)
                .with_context(|| format!("signal {sig} to ceph daemon {p}"))?;
        }
        Ok(())
    }

    /// Stops every daemon with `SIGSTOP`: clients' requests go unanswered
    /// (as with a cluster cut off by the network) until [`Self::thaw`].
    pub fn freeze(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Resumes the daemons [`Self::freeze`] stopped.
    pub fn thaw(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    /// Stops the cluster (idempotent).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // A frozen daemon must run again to act on SIGTERM.
        let _ = self.thaw();
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
