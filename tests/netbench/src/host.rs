//! The private Dom0 of one benchmark run ([`xen_testhost::Dom0`]: the shim
//! and xenstored as threads, the real `xl` (which starts `backendd`) and
//! `xen-pvguest` binaries) and the guests the benchmark runs on it.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use xen_testhost::Dom0;

/// The binaries a run needs next to each other.
pub const BINARIES: [&str; 4] = ["xl", "xen-supervise", "backendd", "xen-pvguest"];

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
                     (or pass --libexec)",
                    libexec.join(b).display()
                );
            }
        }
        Ok(Host(Dom0::start("netbench-", libexec)?))
    }

    /// The directory of the binaries.
    pub fn libexec(&self) -> &Path {
        &self.0.libexec
    }

    /// `xl create`s guest `name` from config text `cfg`, waits until it
    /// shut down (or `limit`), destroys it and returns its console log.
    pub fn run_guest(&mut self, name: &str, cfg: &str, limit: Duration) -> Result<String> {
        self.create_guest(name, cfg)?;
        let done = self.wait_log_any(
            name,
            &["pvguest shutdown", "frontend-failed"],
            limit,
            Duration::from_millis(50),
        );
        self.destroy_guests();
        let (log, which) = done?;
        if which == 1 {
            bail!("the guest failed; its log:\n{log}");
        }
        Ok(log)
    }
}
