//! `xen-supervise`, the supervisor `xl` starts each host service under:
//! it runs the service as its child, waits on it and starts it again when
//! it dies (killed by a signal or a non-zero exit), with backoff: the
//! first restart after [`Backoff::FIRST`], each quick failure doubling the
//! delay up to [`Backoff::MAX`], back to the first once the service stayed
//! up [`Backoff::STABLE`]. Each death is logged (exit status or signal,
//! restart count, the delay). A clean exit (status 0) ends supervision, as
//! systemd's `Restart=on-failure`; SIGTERM/SIGINT to the supervisor are
//! passed to the service, which it then waits for and exits.
//!
//! One supervisor per service: `xl` starts each service on demand,
//! independently (`daemons::start`), and a supervisor is only the loop
//! above around one child, the role of `Restart=` in a systemd unit
//! (`dom0-tools/systemd/`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The usage line of `xen-supervise`.
pub const USAGE: &str = "usage: xen-supervise --name NAME --pid-file FILE \
[--child-pid-file FILE] -- PROGRAM [ARGS...]";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The command line is wrong.
    #[error("{0}\n{USAGE}")]
    Usage(String),
    /// A file could not be written or the service not started.
    #[error("cannot {what}")]
    Io {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What to supervise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The service's name (in log lines).
    pub name: String,
    /// The supervisor's own pid file.
    pub pid_file: PathBuf,
    /// Where to write the service's pid at each start (for services that
    /// write none themselves).
    pub child_pid_file: Option<PathBuf>,
    /// The program and its arguments.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl Spec {
    /// Parses `xen-supervise`'s arguments (without the program name).
    ///
    /// # Errors
    /// [`SuperviseError::Usage`].
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Spec, SuperviseError> {
        let mut it = args.into_iter();
        let (mut name, mut pid_file, mut child_pid_file) = (None, None, None);
        loop {
            let a = it
                .next()
                .ok_or_else(|| SuperviseError::Usage("no -- PROGRAM".into()))?;
            let mut val = |what: &str| {
                it.next()
                    .ok_or_else(|| SuperviseError::Usage(format!("{what} needs a value")))
            };
            match a.to_str() {
                Some("--name") => name = Some(val("--name")?),
                Some("--pid-file") => pid_file = Some(PathBuf::from(val("--pid-file")?)),
                Some("--child-pid-file") => {
                    child_pid_file = Some(PathBuf::from(val("--child-pid-file")?));
                }
                Some("--") => break,
                _ => {
                    return Err(SuperviseError::Usage(format!(
                        "unknown argument {}",
                        a.to_string_lossy()
                    )))
                }
            }
        }
        let program = it
            .next()
            .ok_or_else(|| SuperviseError::Usage("no PROGRAM after --".into()))?;
        Ok(Spec {
            name: name
                .ok_or_else(|| SuperviseError::Usage("--name is required".into()))?
                .to_string_lossy()
                .into_owned(),
            pid_file: pid_file
                .ok_or_else(|| SuperviseError::Usage("--pid-file is required".into()))?,
            child_pid_file,
            program,
            args: it.collect(),
        })
    }
}

/// The restart delays: [`Backoff::FIRST`] doubling to [`Backoff::MAX`] while
/// the service keeps failing, reset when it stayed up [`Backoff::STABLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    /// The first delay.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(30);
    /// A service up this long is healthy again: the next delay is
    /// [`Backoff::FIRST`].
    pub const STABLE: Duration = Duration::from_secs(10);

    /// The delay before the restart of a service that ran `uptime`.
    pub fn delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= Self::STABLE {
            self.next = Self::FIRST;
        }
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// The signal the supervisor got (SIGTERM or SIGINT), 0 for none.
static STOP: AtomicI32 = AtomicI32::new(0);

/// An eventfd the stop handler writes (-1: none yet), so that the waits
/// below sleep until the child ends or a stop comes, without polling.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a live local of
        // the 8 bytes an eventfd takes; a failure is of no consequence
        // (the flag is set, the waits also time out).
        let _ = unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// The stop eventfd, made once (before the handlers are installed).
fn stop_fd() -> Option<std::os::fd::RawFd> {
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        return Some(fd);
    }
    // Kept for the life of the process (the handler uses it).
    let fd = std::os::fd::IntoRawFd::into_raw_fd(xen_shim_proto::sys::eventfd().ok()?);
    STOP_FD.store(fd, Ordering::SeqCst);
    Some(fd)
}

/// Waits until the process of `pidfd` ends, a stop signal comes (the stop
/// eventfd) or `timeout` passes; without a pidfd or the eventfd, at most
/// 20 ms (the loops then poll as before).
fn wait_child_or_stop(pidfd: Option<&std::os::fd::OwnedFd>, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let stop = STOP_FD.load(Ordering::SeqCst);
    let Some(pidfd) = pidfd.filter(|_| stop >= 0) else {
        std::thread::sleep(timeout.min(Duration::from_millis(20)));
        return;
    };
    let mut fds = [
        libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // Once a stop came the eventfd stays readable: only the child
            // then (a negative fd is ignored by poll).
            fd: if STOP.load(Ordering::SeqCst) == 0 {
                stop
            } else {
                -1
            },
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: two live pollfds of a local array, its length passed.
    let _ = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
}

/// A pidfd of the child `c` (`None` on a kernel without pidfd_open).
fn pidfd_of(c: &Child) -> Option<std::os::fd::OwnedFd> {
    let pid = libc::pid_t::try_from(c.id()).ok()?;
    xen_shim_proto::sys::pidfd_open(pid).ok()
}

/// How an exit reads in the log.
#[must_use]
pub fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => {
            let name = nix::sys::signal::Signal::try_from(s).map_or("?", |s| s.as_str());
            format!("killed by signal {s} ({name})")
        }
        _ => format!("{st}"),
    }
}

fn stamp() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

fn write_pid(path: &std::path::Path, pid: u32) -> Result<(), SuperviseError> {
    // Whole, then renamed into place: a reader never sees it empty.
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| SuperviseError::Io {
            what: format!("write {}", path.display()),
            source,
        })
}

/// Sleeps `d`, or less if a stop signal came.
fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while STOP.load(Ordering::SeqCst) == 0 {
        let now = Instant::now();
        if now >= end {
            return;
        }
        let fd = STOP_FD.load(Ordering::SeqCst);
        if fd < 0 {
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
            continue;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from((end - now).as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live pollfd.
        let _ = unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

impl Spec {
    fn spawn(&self) -> Result<Child, SuperviseError> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .spawn()
            .map_err(|source| SuperviseError::Io {
                what: format!("start {}", self.program.to_string_lossy()),
                source,
            })?;
        if let Some(p) = &self.child_pid_file {
            write_pid(p, child.id())?;
        }
        Ok(child)
    }
}

/// Supervises `spec` until the service exits cleanly or a stop signal
/// comes (see the [module docs](self)).
///
/// # Errors
/// [`SuperviseError::Io`] when the pid file cannot be written; a service
/// that cannot be started is retried with backoff like one that died.
pub fn run(spec: &Spec) -> Result<(), SuperviseError> {
    let _ = stop_fd();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the handler is a valid `extern "C" fn`.
        unsafe {
            libc::signal(
                sig,
                on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    write_pid(&spec.pid_file, std::process::id())?;
    let name = &spec.name;
    let mut backoff = Backoff::default();
    let mut restarts = 0u64;
    loop {
        let started = Instant::now();
        let child = spec.spawn();
        let status = match child {
            Ok(mut c) => {
                eprintln!(
                    "[{}] xen-supervise: {name} started, pid {}",
                    stamp(),
                    c.id()
                );
                wait(&mut c)?
            }
            Err(e) => {
                eprintln!(
                    "[{}] xen-supervise: {name}: {}",
                    stamp(),
                    xen_diag::ErrorChain(&e)
                );
                None
            }
        };
        let sig = STOP.load(Ordering::SeqCst);
        if sig != 0 {
            eprintln!(
                "[{}] xen-supervise: {name} stopped (signal {sig} to the supervisor)",
                stamp()
            );
            return Ok(());
        }
        if status.is_some_and(|s| s.success()) {
            eprintln!(
                "[{}] xen-supervise: {name} exited cleanly, not restarted",
                stamp()
            );
            return Ok(());
        }
        let why = status.map_or_else(|| "did not start".to_owned(), describe);
        let delay = backoff.delay(started.elapsed());
        restarts += 1;
        eprintln!(
            "[{}] xen-supervise: {name} {why} after {:.3} s; restart {restarts} in {:.3} s",
            stamp(),
            started.elapsed().as_secs_f64(),
            delay.as_secs_f64()
        );
        sleep_unless_stopped(delay);
        if STOP.load(Ordering::SeqCst) != 0 {
            return Ok(());
        }
    }
}

/// Waits for `c`; on a stop signal passes it on and waits for the service
/// (SIGKILL after 10 s). `None` only if waiting failed.
fn wait(c: &mut Child) -> Result<Option<ExitStatus>, SuperviseError> {
    let mut passed: Option<Instant> = None;
    // The child's end and a stop wake the wait: no polling (it looked every
    // 20 ms: fifty wake-ups a second from each supervisor).
    let pidfd = pidfd_of(c);
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Ok(Some(st)),
            Ok(None) => {}
            Err(source) => {
                return Err(SuperviseError::Io {
                    what: "wait for the service".into(),
                    source,
                })
            }
        }
        let sig = STOP.load(Ordering::SeqCst);
        if sig != 0 {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(i32::MAX));
            match passed {
                None => {
                    if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
                        let _ = nix::sys::signal::kill(pid, s);
                    }
                    passed = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(10) => {
                    let _ = c.kill();
                }
                Some(_) => {}
            }
        }
        // After a stop the eventfd stays readable: look again in 100 ms.
        let timeout = if passed.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(60)
        };
        wait_child_or_stop(pidfd.as_ref(), timeout);
    }
}

/// `xen-supervise`'s main.
#[must_use]
pub fn main_from_env() -> ExitCode {
    let r = Spec::parse(std::env::args_os().skip(1)).and_then(|s| run(&s));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xen-supervise: {}", xen_diag::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_doubles_to_max_and_resets_after_stable_uptime() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let ds: Vec<_> = (0..12).map(|_| b.delay(quick)).collect();
        assert_eq!(ds[0], Duration::from_millis(100));
        assert_eq!(ds[1], Duration::from_millis(200));
        assert_eq!(ds[2], Duration::from_millis(400));
        assert!(ds.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(ds[11], Backoff::MAX);
        assert_eq!(b.delay(Backoff::STABLE), Backoff::FIRST);
        assert_eq!(b.delay(quick), Duration::from_millis(200));
    }

    #[test]
    fn test_parse_needs_name_pid_file_and_program() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let s = Spec::parse(os(&[
            "--name",
            "b",
            "--pid-file",
            "/p",
            "--",
            "/bin/x",
            "-a",
            "--",
            "y",
        ]))
        .expect("valid");
        assert_eq!(s.name, "b");
        assert_eq!(s.program, OsString::from("/bin/x"));
        assert_eq!(s.args, os(&["-a", "--", "y"]));
        assert!(s.child_pid_file.is_none());
        for bad in [
            &["--pid-file", "/p", "--", "/bin/x"][..],
            &["--name", "b", "--", "/bin/x"][..],
            &["--name", "b", "--pid-file", "/p", "--"][..],
            &["--name", "b", "--pid-file", "/p", "/bin/x"][..],
            &["--name"][..],
        ] {
            assert!(
                matches!(Spec::parse(os(bad)), Err(SuperviseError::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
