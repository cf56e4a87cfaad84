//! Starting the host services `xl` needs when none run: `xen-shimd`,
//! `xenstored` and `backendd`, found next to the `xl` executable (or in
//! `$XL_LIBEXEC_DIR`), with pid files under `/run/xen-split`
//! (`$XEN_SPLIT_RUNDIR`) and logs beside them. Each runs under its own
//! `xen-supervise` (`crate::supervise`, pid file `<name>-supervisor.pid`),
//! which starts it again when it dies.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Default run directory of the services `xl` starts.
pub const DEFAULT_RUNDIR: &str = "/run/xen-split";
/// Overrides [`DEFAULT_RUNDIR`].
pub const ENV_RUNDIR: &str = "XEN_SPLIT_RUNDIR";
/// Where guest console output is logged, as xenconsoled does
/// (`guest-<name>.log`).
pub const DEFAULT_CONSOLE_LOGDIR: &str = "/var/log/xen/console";
/// Overrides [`DEFAULT_CONSOLE_LOGDIR`].
pub const ENV_CONSOLE_LOGDIR: &str = "XEN_CONSOLE_LOGDIR";
/// Overrides where the sibling binaries are looked for.
pub const ENV_LIBEXEC: &str = "XL_LIBEXEC_DIR";
/// How long a started service gets to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DaemonsError {
    /// A binary is not next to `xl`.
    #[error("cannot find {name} (looked in {dir}); build it or set {ENV_LIBEXEC}")]
    NotFound {
        /// Binary name.
        name: &'static str,
        /// Where it was looked for.
        dir: String,
    },
    /// Starting or preparing a service failed.
    #[error("cannot {what}")]
    Io {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service did not come up in time.
    #[error("{name} did not come up within {timeout:?} (log: {log})")]
    Timeout {
        /// Service.
        name: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: String,
    },
}

/// The run directory.
#[must_use]
pub fn rundir() -> PathBuf {
    std::env::var_os(ENV_RUNDIR)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from)
}

/// The directory of the guests' console logs.
#[must_use]
pub fn console_logdir() -> PathBuf {
    std::env::var_os(ENV_CONSOLE_LOGDIR)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONSOLE_LOGDIR), PathBuf::from)
}

/// The directory of the sibling binaries.
#[must_use]
pub fn libexec_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_LIBEXEC).filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A sibling binary's path.
///
/// # Errors
/// [`DaemonsError::NotFound`].
pub fn sibling(name: &'static str) -> Result<PathBuf, DaemonsError> {
    let dir = libexec_dir();
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(DaemonsError::NotFound {
            name,
            dir: dir.display().to_string(),
        })
    }
}

/// Whether the pid in `pidfile` is a live process.
#[must_use]
pub fn pidfile_alive(pidfile: &Path) -> bool {
    let Ok(s) = std::fs::read_to_string(pidfile) else {
        return false;
    };
    let Ok(pid) = s.trim().parse::<i32>() else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists; it
    // has no memory-safety preconditions.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The pid file of the supervisor of service `name`.
#[must_use]
pub fn supervisor_pidfile(name: &str) -> PathBuf {
    rundir().join(format!("{name}-supervisor.pid"))
}

/// Whether the pid in `pidfile` is a live `xen-supervise` (not a process
/// that got a dead supervisor's pid since).
fn supervisor_alive(pidfile: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| c.split(|&b| b == 0).next().map(<[u8]>::to_vec))
        .is_some_and(|argv0| argv0.ends_with(b"xen-supervise"))
}

/// Starts `bin` with `args` under `xen-supervise`, detached (own process
/// group, stdin null, output to `<rundir>/<name>.log`), then waits until
/// `ready` is true. If a supervisor of `name` already runs (restarting
/// its service), only waits. `xen-shimd`, which writes no pid file of its
/// own, gets `<rundir>/xen-shimd.pid` from its supervisor.
///
/// # Errors
/// [`DaemonsError::NotFound`], [`DaemonsError::Io`] or
/// [`DaemonsError::Timeout`].
pub fn start(
    name: &'static str,
    bin: &Path,
    args: &[&std::ffi::OsStr],
    ready: impl Fn() -> bool,
) -> Result<(), DaemonsError> {
    let dir = rundir();
    std::fs::create_dir_all(&dir).map_err(|source| DaemonsError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let log_path = dir.join(format!("{name}.log"));
    let sup_pid = supervisor_pidfile(name);
    let mut child = if supervisor_alive(&sup_pid) {
        None
    } else {
        let supervisor = sibling("xen-supervise")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| DaemonsError::Io {
                what: format!("open {}", log_path.display()),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| DaemonsError::Io {
            what: "duplicate the log fd".into(),
            source,
        })?;
        let mut cmd = Command::new(supervisor);
        cmd.arg("--name").arg(name).arg("--pid-file").arg(&sup_pid);
        if name == "xen-shimd" {
            cmd.arg("--child-pid-file")
                .arg(dir.join(format!("{name}.pid")));
        }
        Some(
            cmd.arg("--")
                .arg(bin)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(0)
                .spawn()
                .map_err(|source| DaemonsError::Io {
                    what: format!("start {} under xen-supervise", bin.display()),
                    source,
                })?,
        )
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ready() {
            // The supervisor runs on; it is reaped by init once we exit.
            return Ok(());
        }
        if let Some(Ok(Some(_))) = child.as_mut().map(std::process::Child::try_wait) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(DaemonsError::Timeout {
        name,
        timeout: START_TIMEOUT,
        log: log_path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_supervisor_alive_only_for_a_live_xen_supervise() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("x-supervisor.pid");
        assert!(!supervisor_alive(&p), "no pid file");
        std::fs::write(&p, "garbage\n").expect("write");
        assert!(!supervisor_alive(&p), "not a pid");
        // This test process is alive but is not xen-supervise (a reused pid).
        std::fs::write(&p, format!("{}\n", std::process::id())).expect("write");
        assert!(pidfile_alive(&p));
        assert!(!supervisor_alive(&p), "another program with that pid");
    }
}
