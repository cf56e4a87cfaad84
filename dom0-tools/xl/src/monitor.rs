//! The domain-death watcher: what xl's child process does after `xl
//! create` in Xen (it waits for the domain to shut down and applies the
//! configuration's `on_poweroff` / `on_reboot` / `on_crash` /
//! `on_watchdog` action, as libxl reports `LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN`).
//!
//! `xl create` starts one monitor per domain: the `xl` binary itself with
//! the hidden verb `monitor-domain`, in its own process group, its output in
//! `<rundir>/xl-<name>.log` (as Xen's `/var/log/xen/xl-<name>.log`). It
//! binds `VIRQ_DOM_EXC` (as libxl does) and reads the domain's state from
//! the shim each time it fires, and at least every [`POLL`] (every
//! [`POLL_FALLBACK`] if the VIRQ cannot be bound); once the domain is shut
//! down or crashed:
//!
//! - `destroy` (the default of all but `on_reboot`): removes the domain as
//!   `xl destroy` does (shim domain, every xenstore node, `XS_RELEASE`);
//! - `preserve`: leaves it listed (`s` or `c` in `xl list`) and exits;
//! - `restart`: destroys it and creates it again from the same
//!   configuration file, then watches the new domain.
//!
//! Other actions are refused by `xl create` (see [`check_actions`]). The
//! monitor exits when its domain is gone (destroyed by `xl destroy`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xen_shim_proto::protocol::{DomainInfo, DomainState, ShutdownReason};

use crate::config::{Action, XlConfig};
use crate::daemons;
use crate::toolstack::{self, ToolstackError};

/// Longest wait for `VIRQ_DOM_EXC` between two looks at the domain (a
/// safety net: the VIRQ fires on every shutdown, crash and destroy, and
/// the handle reattaches by itself after a daemon restart). It was 500 ms:
/// two wake-ups and two shim requests a second from every idle domain's
/// monitor.
pub const POLL: Duration = Duration::from_secs(5);

/// How often the monitor looks when it has no `VIRQ_DOM_EXC`.
pub const POLL_FALLBACK: Duration = Duration::from_millis(20);

/// `VIRQ_DOM_EXC` on an event-channel handle of the shim (`None` if it
/// cannot be bound).
fn dom_exc() -> Option<(xen_shim_dom0::Evtchn, u32)> {
    let ev = xen_shim_dom0::Evtchn::open_default().ok()?;
    let port = ev.bind_virq(xen_abi::xen::VIRQ_DOM_EXC).ok()?;
    Some((ev, port))
}

/// Waits until `VIRQ_DOM_EXC` fires or [`POLL`] passes (or sleeps
/// [`POLL_FALLBACK`] without the VIRQ); drops the handle when it fails (a
/// daemon restart) so that the next call binds again.
fn wait_dom_exc(virq: &mut Option<(xen_shim_dom0::Evtchn, u32)>) {
    if virq.is_none() {
        *virq = dom_exc();
    }
    let Some((ev, port)) = virq.as_ref() else {
        std::thread::sleep(POLL_FALLBACK);
        return;
    };
    match ev.pending(Some(POLL)) {
        Ok(fired) => {
            let gone = ev
                .take_control_events()
                .iter()
                .any(|e| matches!(e, xen_shim_proto::protocol::ControlEvent::Disconnected));
            if fired.contains(port) {
                let _ = ev.unmask(*port);
            }
            if gone && !reattach(ev) {
                // Not back within REATTACH_WITHIN: bind again on the next
                // wait (the old port is closed by the shim's grace).
                *virq = None;
            }
        }
        Err(_) => {
            *virq = None;
            std::thread::sleep(POLL_FALLBACK);
        }
    }
}

/// How long a monitor whose shim restarted tries to hand its port back
/// before it binds a new one.
const REATTACH_WITHIN: Duration = Duration::from_secs(2);

/// The shim went away: hands the handle's `VIRQ_DOM_EXC` port back to the
/// new daemon (binding a new one instead left the old port to be closed as
/// an orphan at the end of the shim's reattach grace); whether it did
/// within [`REATTACH_WITHIN`].
fn reattach(ev: &xen_shim_dom0::Evtchn) -> bool {
    let until = Instant::now() + REATTACH_WITHIN;
    loop {
        if ev.reattach().is_ok() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(POLL_FALLBACK);
    }
}

/// How long the monitor tolerates an unreachable shim daemon (a restart).
const DAEMON_GRACE: Duration = Duration::from_secs(60);

/// Refuses, at `xl create`, the actions the monitor cannot carry out.
///
/// # Errors
/// [`ToolstackError::Unsupported`] naming the key and the action.
pub fn check_actions(cfg: &XlConfig) -> Result<(), ToolstackError> {
    for (key, a) in [
        ("on_poweroff", cfg.on_poweroff),
        ("on_reboot", cfg.on_reboot),
        ("on_crash", cfg.on_crash),
        ("on_watchdog", cfg.on_watchdog),
    ] {
        if !matches!(a, Action::Destroy | Action::Restart | Action::Preserve) {
            return Err(ToolstackError::Unsupported(format!(
                "{key} = \"{}\" is not supported (use destroy, restart or preserve)",
                a.as_str()
            )));
        }
    }
    Ok(())
}

/// The action for a domain that ended this way.
#[must_use]
pub fn action_for(cfg: &XlConfig, state: &DomainState) -> Option<Action> {
    Some(match state {
        DomainState::Shutdown { reason } => match reason {
            ShutdownReason::Poweroff => cfg.on_poweroff,
            ShutdownReason::Reboot => cfg.on_reboot,
            ShutdownReason::Crash => cfg.on_crash,
            ShutdownReason::Watchdog => cfg.on_watchdog,
            // A suspended domain waits for `xl save`/`restore` (not here);
            // a soft reset is not supported: leave both as they are.
            ShutdownReason::Suspend | ShutdownReason::SoftReset => Action::Preserve,
        },
        // The runtime died without shutting down.
        DomainState::Crashed => cfg.on_crash,
        DomainState::Running | DomainState::Paused | DomainState::Dying => return None,
    })
}

/// Starts the monitor of `domid` (`instance` from the shim) created from
/// `cfg_path`; returns its pid.
///
/// # Errors
/// [`ToolstackError::Io`] if it cannot be started.
pub fn spawn(
    cfg_path: &Path,
    name: &str,
    domid: u16,
    instance: u64,
) -> Result<u32, ToolstackError> {
    let io = |what: String| move |source| ToolstackError::Io { what, source };
    let exe = std::env::current_exe().map_err(io("find the xl binary".into()))?;
    let cfg = std::fs::canonicalize(cfg_path).unwrap_or_else(|_| cfg_path.to_path_buf());
    let dir = daemons::rundir();
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let log = dir.join(format!("xl-{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(format!("open {}", log.display())))?;
    let err = out.try_clone().map_err(io("duplicate the log fd".into()))?;
    let child = std::os::unix::process::CommandExt::process_group(
        Command::new(exe)
            .arg("monitor-domain")
            .arg("--domid")
            .arg(domid.to_string())
            .arg("--instance")
            .arg(instance.to_string())
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
        0,
    )
    .spawn()
    .map_err(io("start the domain monitor".into()))?;
    Ok(child.id())
}

fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

/// Our domain's info; `Ok(None)` once it is gone (destroyed, or its domid
/// reused by another domain).
fn info(
    control: &mut Option<xen_shim_dom0::Control>,
    domid: u16,
    instance: u64,
) -> Result<Option<DomainInfo>, ToolstackError> {
    let c = match control {
        Some(c) => c,
        None => control.insert(toolstack::shim(false)?),
    };
    match c.domain_info(domid) {
        Ok(i) if i.instance == instance && i.state != DomainState::Dying => Ok(Some(i)),
        Ok(_) => Ok(None),
        Err(xen_shim_proto::protocol::ControlError::Remote(w)) if w.errno == libc::ESRCH => {
            Ok(None)
        }
        Err(e) => {
            // Reconnect next time (the daemon may have restarted).
            *control = None;
            Err(ToolstackError::Unsupported(e.to_string()))
        }
    }
}

/// The monitor's loop (`xl monitor-domain`): returns when the domain is
/// gone or preserved.
///
/// # Errors
/// The configuration cannot be read, the shim daemon stays away, or a
/// restart fails.
pub fn run(cfg_path: &Path, mut domid: u16, mut instance: u64) -> Result<(), ToolstackError> {
    let cfg = XlConfig::load(cfg_path)?;
    println!("{} monitoring domain {domid} ({})", now(), cfg.name);
    let mut unreachable: Option<Instant> = None;
    let mut control = None;
    // Bound before the first look, so no state change is missed.
    let mut virq = dom_exc();
    loop {
        let d = match info(&mut control, domid, instance) {
            Ok(Some(d)) => {
                unreachable = None;
                d
            }
            Ok(None) => {
                println!("{} domain {domid} is gone", now());
                return Ok(());
            }
            Err(e) => {
                let t0 = *unreachable.get_or_insert_with(Instant::now);
                // A daemon that restarts comes back on the same socket; one
                // whose socket is gone (and stays gone) has ended for good.
                let gone = !xen_shim_proto::default_socket_path().exists()
                    && t0.elapsed() > Duration::from_secs(2);
                if gone || t0.elapsed() > DAEMON_GRACE {
                    println!("{} the shim daemon is gone: {e}", now());
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let Some(mut action) = action_for(&cfg, &d.state) else {
            wait_dom_exc(&mut virq);
            continue;
        };
        if d.name.ends_with(crate::migrate::INCOMING_SUFFIX) {
            // A migration's destination that ended before it was renamed
            // (its stream failed, its receiver died): its guest never ran
            // here, the source still has it; no action of the config applies.
            action = Action::Destroy;
        }
        println!(
            "{} domain {domid} ended ({:?}): {}",
            now(),
            d.state,
            action.as_str()
        );
        match action {
            Action::Preserve => return Ok(()),
            Action::Restart => {
                toolstack::destroy_by_id(domid)?;
                let c = toolstack::create_unmonitored(cfg_path)?;
                domid = c.domid;
                instance = c.instance;
                println!(
                    "{} restarted as domain {domid} (runtime pid {})",
                    now(),
                    c.pid
                );
            }
            _ => {
                toolstack::destroy_by_id(domid)?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> XlConfig {
        XlConfig::parse("t.cfg", &format!("name = 'a'\n{text}")).expect("valid config")
    }

    #[test]
    fn test_action_for_each_reason_and_the_defaults() {
        let c = cfg("");
        let sd = |reason| DomainState::Shutdown { reason };
        assert_eq!(
            action_for(&c, &sd(ShutdownReason::Poweroff)),
            Some(Action::Destroy)
        );
        assert_eq!(
            action_for(&c, &sd(ShutdownReason::Reboot)),
            Some(Action::Restart)
        );
        assert_eq!(
            action_for(&c, &sd(ShutdownReason::Crash)),
            Some(Action::Destroy)
        );
        assert_eq!(
            action_for(&c, &sd(ShutdownReason::Watchdog)),
            Some(Action::Destroy)
        );
        assert_eq!(action_for(&c, &DomainState::Crashed), Some(Action::Destroy));
        assert_eq!(action_for(&c, &DomainState::Running), None);
        assert_eq!(action_for(&c, &DomainState::Paused), None);
        let c = cfg("on_crash = 'preserve'\non_watchdog = 'restart'\non_poweroff = 'preserve'");
        assert_eq!(
            action_for(&c, &DomainState::Crashed),
            Some(Action::Preserve)
        );
        assert_eq!(
            action_for(&c, &sd(ShutdownReason::Watchdog)),
            Some(Action::Restart)
        );
        assert_eq!(
            action_for(&c, &sd(ShutdownReason::Poweroff)),
            Some(Action::Preserve)
        );
    }

    #[test]
    fn test_unsupported_actions_are_refused_by_name() {
        assert!(check_actions(&cfg("on_reboot = 'restart'")).is_ok());
        for (k, a) in [
            ("on_crash", "coredump-destroy"),
            ("on_poweroff", "rename-restart"),
            ("on_watchdog", "coredump-restart"),
            ("on_reboot", "soft-reset"),
        ] {
            let e = check_actions(&cfg(&format!("{k} = '{a}'")))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(k) && e.contains(a), "{e}");
        }
    }
}
