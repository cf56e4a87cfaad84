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
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use xen_front_platform::{Platform, XBT_NIL};
use xen_shim_proto::protocol::ShutdownReason;

/// The node the toolstack writes shutdown requests to.
pub const SHUTDOWN_NODE: &str = "control/shutdown";

/// The watch token of [`watch`].
const TOKEN: &str = "pvguest-control-shutdown";

/// How long the init has between `SIGTERM` and `SIGKILL`.
pub const GRACE: Duration = Duration::from_secs(10);

/// How often [`watch`] checks its stop flag.
const SLICE: Duration = Duration::from_millis(200);

/// How often [`watch`] reads `control/shutdown` without a watch event: the
/// platform's one watch queue is shared, and another reader (a disk's
/// waiter during I/O) may take our event. It read it every [`SLICE`]:
/// five xenstore requests a second from every idle guest, 1,280 a second
/// at the scale benchmark's 256 guests.
const FALLBACK_LOOK: Duration = Duration::from_secs(1);

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
#[derive(Debug, Default)]
pub struct ShutdownControl {
    requested: Mutex<Option<ShutdownReason>>,
    cond: Condvar,
}

impl ShutdownControl {
    /// No request yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a request (the first one wins) and wakes the waiters.
    pub fn request(&self, reason: ShutdownReason) {
        let mut r = self.requested.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert(reason);
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
        // change), and every FALLBACK_LOOK without one.
        match p.xs_read_watch(Some(SLICE)) {
            Ok(Some(ev)) if ev.token != TOKEN => continue,
            Ok(None) if watching && looked.elapsed() < FALLBACK_LOOK => continue,
            Err(_) => std::thread::sleep(SLICE),
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
                if ctl.wait(Duration::from_millis(50)).is_some() {
                    kill_group(pgid, nix::sys::signal::Signal::SIGTERM);
                    termed = Some(Instant::now());
                }
            }
            Some(t) => {
                if t.elapsed() >= GRACE {
                    kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(50));
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
