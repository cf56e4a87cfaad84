//! The private Dom0 of one benchmark run ([`xen_testhost::Dom0`]: the shim
//! and xenstored as threads, the real `xl`, `backendd`, `xen-pvguest` and
//! `blkload` binaries) and the guests the benchmark runs on it.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_testhost::Dom0;

/// The binaries a run needs next to each other.
pub const BINARIES: [&str; 5] = ["xl", "xen-supervise", "backendd", "xen-pvguest", "blkload"];

/// The private services; see the [module docs](self).
#[derive(Debug)]
pub struct Host(Dom0);

impl Deref for Host {
    type Target = Dom0;
    fn deref(&self) -> &Dom0 {
        &self.0
    }
}

impl DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Dom0 {
        &mut self.0
    }
}

impl Host {
    /// Starts the shim and xenstored; `libexec` holds [`BINARIES`].
    pub fn start(libexec: &Path) -> Result<Host> {
        for b in BINARIES {
            if !libexec.join(b).exists() {
                bail!(
                    "{} is missing: cargo build --release -p xen-xl -p xen-backendd -p xen-pvguest \
                     -p blkbench --bins (or pass --libexec)",
                    libexec.join(b).display()
                );
            }
        }
        Ok(Host(Dom0::start("blkbench-", libexec)?))
    }

    /// `xl create`s guest `name` with disk `disk` (an `xl` disk spec),
    /// running `program`
    /// (`kernel=`; default `xl`'s, the `xen-pvguest` runtime) with `extra`
    /// as its command line, waits until it shut down (or `limit`), destroys
    /// it and returns its console log and the time from `xl create` to the
    /// disk's Connected line in that log (`blkload` prints one).
    pub fn run_guest_timed(
        &mut self,
        name: &str,
        disk: &str,
        program: Option<&Path>,
        extra: &str,
        limit: Duration,
    ) -> Result<(String, Option<Duration>)> {
        let kernel = program.map_or(String::new(), |p| format!("kernel = '{}'\n", p.display()));
        // vcpus = 2: the guest's cgroup gets both host CPUs, as the fio
        // reference in Dom0 has (its blkfront threads are the guest's kernel).
        let cfg = format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 128\nvcpus = 2\n{kernel}\
             extra = '{extra}'\n\
             disk = [ '{disk}' ]\n"
        );
        self.run_cfg(
            name,
            &cfg,
            &["pvguest shutdown", "frontend-failed"],
            "frontend-failed",
            limit,
        )
    }

    /// `xl create`s a PVHVM guest `name` booting `kernel` with `extra` as
    /// its command line, PV disk `image` and, if given, the emulated disk
    /// `fv_image` (`vdev=hda`); waits until it shut down (or `limit`),
    /// destroys it and returns its console log and the time from `xl
    /// create` to its disk's Connected line in the log.
    pub fn run_pvhvm_guest(
        &mut self,
        name: &str,
        kernel: &Path,
        image: &Path,
        fv_image: Option<&Path>,
        extra: &str,
        limit: Duration,
    ) -> Result<(String, Option<Duration>)> {
        let fv = fv_image.map_or(String::new(), |p| {
            format!(
                ", 'format=raw, vdev=hda, access=rw, target={}'",
                p.display()
            )
        });
        let cfg = format!(
            "name = \"{name}\"\ntype = 'pvh'\nmemory = 128\nvcpus = 1\n\
             kernel = '{}'\nextra = '{extra}'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target={}'{fv} ]\n",
            kernel.display(),
            image.display()
        );
        self.run_cfg(
            name,
            &cfg,
            &["pvhvm-kernel: shutdown", "crashed"],
            "crashed",
            limit,
        )
    }

    fn run_cfg(
        &mut self,
        name: &str,
        text: &str,
        done: &[&str],
        failed: &str,
        limit: Duration,
    ) -> Result<(String, Option<Duration>)> {
        let cfg = self.write_config(name, text)?;
        let cfg_s = cfg.to_str().context("utf-8 temp path")?;
        let t0 = Instant::now();
        let out = self.xl(&["create", cfg_s])?;
        self.track_guest(name);
        if !out.status.success() {
            bail!(
                "xl create failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = Instant::now() + limit;
        let mut connected = None;
        let log = loop {
            let log = self.guest_log(name);
            if connected.is_none() && log.contains("Connected in") {
                connected = Some(t0.elapsed());
            }
            if done.iter().any(|d| log.contains(d)) {
                break log;
            }
            if Instant::now() >= deadline {
                self.destroy_guests();
                bail!("the guest did not finish within {limit:?}; its log:\n{log}");
            }
            // Poll finely until the disk connected (that time is measured).
            let nap = if connected.is_none() { 1 } else { 50 };
            std::thread::sleep(Duration::from_millis(nap));
        };
        self.destroy_guests();
        if log.contains(failed) {
            bail!("the guest failed; its log:\n{log}");
        }
        Ok((log, connected))
    }
}
