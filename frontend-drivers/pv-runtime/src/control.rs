//! The guest side of Xen's PV shutdown protocol, as Linux's
//! `drivers/xen/manage.c` does it: the guest advertises
//! `control/feature-poweroff` and `control/feature-reboot`, watches
//! `control/shutdown`, and when the toolstack (`xl shutdown`, `xl reboot`)
//! writes `poweroff`, `halt` or `reboot` there, acknowledges it by writing
//! the empty string back (only requests it will carry out, as Linux) and
//! shuts down: the guest's init gets `SIGTERM` (its whole process group),
//! then `SIGKILL` after [`GRACE`], and the domain ends with
//! `SCHEDOP_shutdown` and the requested reason, so that xl's `on_poweroff`
//! / `on_reboot` actions apply.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_front_platform::{Platform, XBT_NIL};
use xen_shim_proto::protocol::ShutdownReason;

/// The node the toolstack writes shutdown requests to.
pub const SHUTDOWN_NODE: &str = "control/shutdown";

/// The watch token of [`watch`].
const TOKEN: &str = "pvguest-control-shutdown";

/// How long the init has between `SIGTERM` and `SIGKILL`.
pub const GRACE: Duration = Duration::from_secs(10);

/// How long [`watch`] waits for its watch event before reading
/// `control/shutdown` anyway (a safety net: every reader of the runtime's
/// xenstore connection sees every watch event, and a stop wakes it). It
/// read it every 200 ms, then every second: five, then one xenstore
/// request a second from every idle guest.
const FALLBACK_LOOK: Duration = Duration::from_secs(30);

/// Longest sleep between looks at a child without a pidfd (an old kernel).
const CHILD_SLICE: Duration = Duration::from_millis(50);

/// The reason a `control/shutdown` value asks for (`None`: not a request
/// this guest carries out, e.g. `suspend`, or the empty acknowledgement).
#[must_use]
pub fn parse_request(value: &[u8]) -> Option<ShutdownReason> {
    let v = value.split(|&b| b == 0).next().unwrap_or_default();
    match v {
        b"poweroff" | b"halt" => Some(ShutdownReason::Poweroff),
        b"reboot" => Some(ShutdownReason::Reboot),
        _ => None,
    }
}

/// The shutdown the toolstack asked for, once it did.
#[derive(Debug)]
pub struct ShutdownControl {
    requested: Mutex<Option<ShutdownReason>>,
    cond: Condvar,
    /// Readable once a request came (never read: a request is for good),
    /// for waiters that also wait for a child ([`wait_exit_or_request`]);
    /// `None` if the eventfd could not be made (they then look in slices).
    fd: Option<EventFd>,
}

impl Default for ShutdownControl {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownControl {
    /// No request yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            requested: Mutex::new(None),
            cond: Condvar::new(),
            fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .ok(),
        }
    }

    /// Records a request (the first one wins) and wakes the waiters.
    pub fn request(&self, reason: ShutdownReason) {
        let mut r = self.requested.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert(reason);
        if let Some(fd) = &self.fd {
            let _ = fd.write(1);
        }
        self.cond.notify_all();
    }

    /// The request, if one came.
    pub fn requested(&self) -> Option<ShutdownReason> {
        *self.requested.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for a request.
    pub fn wait(&self, timeout: Duration) -> Option<ShutdownReason> {
        let r = self.requested.lock().unwrap_or_else(|p| p.into_inner());
        let (r, _) = self
            .cond
            .wait_timeout_while(r, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        *r
    }

    /// The descriptor that becomes readable with the request.
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }
}

/// A pidfd of process `pid` (the shim's `pidfd_open`), `None` where the
/// kernel has none.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    xen_shim_proto::sys::pidfd_open(pid).ok()
}

/// Waits until the process of `pidfd` ends, `ctl` (when given) has a
/// request, or `timeout` (`None`: no limit) passes; the caller looks at
/// which. Without a pidfd (or without `ctl`'s descriptor while `ctl` is
/// given) it waits at most [`CHILD_SLICE`], so the caller's loop polls as
/// before.
pub(crate) fn wait_exit_or_request(
    pidfd: Option<&OwnedFd>,
    ctl: Option<&ShutdownControl>,
    timeout: Option<Duration>,
) {
    let ctl_fd = ctl.map(ShutdownControl::fd);
    let blind = pidfd.is_none() || matches!(ctl_fd, Some(None));
    let timeout = match (timeout, blind) {
        (Some(t), true) => Some(t.min(CHILD_SLICE)),
        (None, true) => Some(CHILD_SLICE),
        (t, false) => t,
    };
    let mut fds = Vec::with_capacity(2);
    if let Some(p) = pidfd {
        fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
    }
    if let Some(Some(c)) = ctl_fd {
        fds.push(PollFd::new(c, PollFlags::POLLIN));
    }
    let t = timeout.map_or(PollTimeout::NONE, |t| {
        PollTimeout::try_from(t.max(Duration::from_millis(1))).unwrap_or(PollTimeout::MAX)
    });
    if fds.is_empty() {
        std::thread::sleep(timeout.unwrap_or(CHILD_SLICE));
        return;
    }
    let _ = nix::poll::poll(&mut fds, t);
}

/// Advertises the features, then follows `control/shutdown` until `stop`
/// (see the [module docs](self)); requests go to `ctl`. Xenstore errors
/// are retried at the next look.
pub fn watch<P: Platform + ?Sized>(p: &P, ctl: &ShutdownControl, stop: &AtomicBool) {
    for f in ["control/feature-poweroff", "control/feature-reboot"] {
        if let Err(e) = p.xs_write(XBT_NIL, f, b"1") {
            tracing::debug!(node = f, error = %e, "cannot advertise a shutdown feature");
        }
    }
    let mut watching = p.xs_watch(SHUTDOWN_NODE, TOKEN).is_ok();
    let mut looked = Instant::now();
    while !stop.load(Ordering::Relaxed) && ctl.requested().is_none() {
        if !watching {
            watching = p.xs_watch(SHUTDOWN_NODE, TOKEN).is_ok();
        }
        // Look on our event (the watch fires once when set, then on every
        // change), and every FALLBACK_LOOK without one; a stop wakes the
        // wait (the runtime's platform returns `None` early).
        let wait = if watching {
            FALLBACK_LOOK.saturating_sub(looked.elapsed())
        } else {
            Duration::from_secs(1)
        };
        match p.xs_read_watch(Some(wait)) {
            Ok(Some(ev)) if ev.token != TOKEN => continue,
            Ok(None) if watching && looked.elapsed() < FALLBACK_LOOK => continue,
            Err(_) => std::thread::sleep(Duration::from_secs(1).min(wait)),
            _ => {}
        }
        looked = Instant::now();
        let Ok(v) = p.xs_read(XBT_NIL, SHUTDOWN_NODE) else {
            continue;
        };
        if let Some(reason) = parse_request(&v) {
            // Acknowledge (Linux writes "" back for requests it handles).
            if let Err(e) = p.xs_write(XBT_NIL, SHUTDOWN_NODE, b"") {
                tracing::warn!(error = %e, "cannot acknowledge the shutdown request");
            }
            ctl.request(reason);
        } else if !v.is_empty() && v.first() != Some(&0) {
            tracing::info!(
                request = %String::from_utf8_lossy(&v),
                "ignoring a shutdown request this guest does not carry out"
            );
        }
    }
    if watching {
        let _ = p.xs_unwatch(SHUTDOWN_NODE, TOKEN);
    }
}

/// Sends `sig` to process group `pgid`.
fn kill_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

/// Runs the guest's init `prog args` (with the `KEY=value` strings `env`
/// added to its environment) in its own process group until it exits;
/// once `ctl` has a request, the group gets `SIGTERM`, and `SIGKILL`
/// after [`GRACE`].
///
/// # Errors
/// The init cannot be started or waited for.
pub fn run_init(
    prog: &str,
    args: &[String],
    env: &[String],
    ctl: &ShutdownControl,
) -> io::Result<ExitStatus> {
    let env = env.iter().filter_map(|e| e.split_once('='));
    let mut cmd = Command::new(prog);
    cmd.args(args).envs(env).process_group(0);
    // SAFETY: rank_first_for_oom_in_child makes only async-signal-safe
    // system calls on static data, as pre_exec requires.
    unsafe {
        cmd.pre_exec(crate::machine::rank_first_for_oom_in_child);
    }
    let mut child = cmd.spawn()?;
    // The init runs: the runtime's set-up is over.
    crate::jail::after_setup(&mut std::io::stdout().lock());
    let pgid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // The init's end and the request wake this thread: no polling.
    let pidfd = pidfd_open(pgid);
    let mut termed: Option<Instant> = None;
    loop {
        if let Some(st) = child.try_wait()? {
            if termed.is_some() {
                // What the init left behind in its group goes too.
                kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            return Ok(st);
        }
        match termed {
            None => {
                if ctl.requested().is_some() {
                    kill_group(pgid, nix::sys::signal::Signal::SIGTERM);
                    termed = Some(Instant::now());
                    continue;
                }
                wait_exit_or_request(pidfd.as_ref(), Some(ctl), None);
            }
            Some(t) => {
                let left = GRACE.saturating_sub(t.elapsed());
                if left.is_zero() {
                    kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
                }
                wait_exit_or_request(
                    pidfd.as_ref(),
                    None,
                    Some(left.max(Duration::from_millis(100))),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_request_knows_xens_commands_and_ignores_the_rest() {
        assert_eq!(parse_request(b"poweroff"), Some(ShutdownReason::Poweroff));
        assert_eq!(parse_request(b"halt"), Some(ShutdownReason::Poweroff));
        assert_eq!(parse_request(b"reboot\0"), Some(ShutdownReason::Reboot));
        assert_eq!(parse_request(b""), None);
        assert_eq!(parse_request(b"suspend"), None);
        assert_eq!(parse_request(b"reboot now"), None);
    }

    #[test]
    fn test_run_init_terminates_the_init_group_on_request() {
        let ctl = ShutdownControl::new();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                ctl.request(ShutdownReason::Reboot);
            });
            // The shell's child (sleep) is in the group too.
            let st =
                run_init("sh", &["-c".into(), "sleep 30; true".into()], &[], &ctl).expect("run sh");
            assert!(!st.success(), "{st}");
        });
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(ctl.requested(), Some(ShutdownReason::Reboot));
    }

    #[test]
    fn test_run_init_without_request_returns_its_status() {
        let ctl = ShutdownControl::new();
        let st = run_init("sh", &["-c".into(), "exit 3".into()], &[], &ctl).expect("run sh");
        assert_eq!(st.code(), Some(3));
        assert_eq!(ctl.requested(), None);
    }
}
