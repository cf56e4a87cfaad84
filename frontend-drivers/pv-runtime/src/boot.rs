//! Bringing a guest program up and down on the runtime: what the
//! `xen-pvguest` binary does around its devices and init, shared with the
//! other guest programs built on this library (the plumbing demos of
//! `tests/pvguest-demos`, the block load generator of `tests/blkbench`).
//!
//! [`run_guest`] attaches as domain N ([`AttachArgs`]: domid and one-time
//! token from argv or the environment), puts the program's stdio on the PV
//! console if asked, prints `pvguest ready ...`, optionally follows Xen's
//! PV shutdown protocol ([`crate::control`]), runs the program's body, and
//! ends the domain (`SCHEDOP_shutdown`): with the toolstack's reason when
//! it asked, `poweroff` after a body that succeeded, `crash` after one
//! that failed (`pvguest frontend-failed error=...`). A body may instead
//! ask to keep the domain running until the toolstack shuts it down
//! ([`Then::Stay`]); meanwhile a restart of the shim daemon is survived by
//! reattaching.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use xen_abi::xen::domid_t;
use xen_diag::ErrorChain;
use xen_shim_proto::protocol::ShutdownReason;

use crate::control::ShutdownControl;
use crate::line::emit;
use crate::platform::PvPlatform;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::PvGuestError;
use xen_front_platform::Platform as _;

/// Where the runtime's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsoleMode {
    /// The stdio the runtime was started with (tests read stdout).
    Stdio,
    /// The domain's PV console (`start_info`'s console ring), as a tty.
    Hvc0,
}

/// How a guest program attaches to the shim, where its stdio goes and how
/// long it waits for its peers: the options every guest program on this
/// runtime takes (flatten them into its own `clap` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct AttachArgs {
    /// The shim's control socket (default: $XEN_SHIM_SOCKET, else
    /// /run/xen-shim/control.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// This domain's id (default: $XEN_SHIM_DOMID).
    #[arg(long)]
    pub domid: Option<domid_t>,
    /// The one-time attach token from create_domain (default:
    /// $XEN_SHIM_TOKEN; prefer the environment, argv is visible to `ps`).
    #[arg(long)]
    pub token: Option<String>,
    /// Where stdin, stdout and stderr of the runtime and its programs go:
    /// `hvc0` is the domain's PV console (what `xl` passes).
    #[arg(long, value_enum, default_value_t = ConsoleMode::Stdio)]
    pub console: ConsoleMode,
    /// Seconds to wait for a backend or peer at each step.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

impl AttachArgs {
    /// The per-step timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    fn config(&self) -> Result<RuntimeConfig, PvGuestError> {
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(xen_shim_proto::default_socket_path);
        let domid = match self.domid {
            Some(d) => d,
            None => std::env::var(xen_shim_proto::ENV_DOMID)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(PvGuestError::Missing(
                    "the domid (--domid or XEN_SHIM_DOMID)",
                ))?,
        };
        let token = match &self.token {
            Some(t) => t.clone(),
            None => std::env::var(xen_shim_proto::ENV_TOKEN)
                .map_err(|_| PvGuestError::Missing("the token (--token or XEN_SHIM_TOKEN)"))?,
        };
        Ok(RuntimeConfig {
            socket,
            domid,
            token,
        })
    }
}

/// What the domain does after the body returned successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Shut down: with the toolstack's reason if it asked, else `poweroff`.
    PowerOff,
    /// Keep running until the toolstack shuts the domain down.
    Stay,
    /// Shut down with this reason, unless the toolstack asked for one.
    Shutdown(ShutdownReason),
}

/// Whether the guest follows Xen's PV shutdown protocol (advertises
/// `control/feature-*` and watches `control/shutdown` in a thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvShutdown {
    /// Follow it (the `xen-pvguest` runtime, as a Linux guest).
    Follow,
    /// Do not touch xenstore behind the body's back (the demos).
    Ignore,
}

/// How long the runtime keeps trying to reattach after the daemon went away.
pub const REATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause of the body's reattach thread between two failed reattaches, and
/// its look while a shutdown is under way.
const REATTACH_RETRY: Duration = Duration::from_millis(100);

fn reason_name(r: ShutdownReason) -> &'static str {
    match r {
        ShutdownReason::Poweroff => "poweroff",
        ShutdownReason::Reboot => "reboot",
        ShutdownReason::Suspend => "suspend",
        ShutdownReason::Crash => "crash",
        ShutdownReason::Watchdog => "watchdog",
        ShutdownReason::SoftReset => "soft_reset",
    }
}

/// Runs a guest program: attach, `body`, shut down; see the [module
/// docs](self). `body` gets the platform, the toolstack's shutdown request
/// (set only with [`PvShutdown::Follow`]) and the program's stdout. Exit
/// status 0, or 1 after a failed body, 2 when the domain could not be
/// brought up.
pub fn run_guest<E, F>(args: &AttachArgs, pv_shutdown: PvShutdown, body: F) -> ExitCode
where
    E: std::error::Error,
    F: FnOnce(&PvPlatform, &ShutdownControl, &mut dyn Write) -> Result<Then, E>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run_inner(args, pv_shutdown, body) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xen-pvguest: {}", ErrorChain(&e));
            ExitCode::from(2)
        }
    }
}

fn run_inner<E, F>(
    args: &AttachArgs,
    pv_shutdown: PvShutdown,
    body: F,
) -> Result<ExitCode, PvGuestError>
where
    E: std::error::Error,
    F: FnOnce(&PvPlatform, &ShutdownControl, &mut dyn Write) -> Result<Then, E>,
{
    let cfg = args.config()?;
    let rt = Runtime::start(&cfg)?;
    crate::jail::attached_as(rt.hypervisor());
    let console = match args.console {
        ConsoleMode::Stdio => None,
        ConsoleMode::Hvc0 => {
            let boot = rt.boot_info();
            Some(crate::console::PvConsole::start(
                rt.hypervisor(),
                Arc::clone(rt.hub()),
                boot.console_mfn,
                boot.console_evtchn,
            )?)
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let boot = rt.boot_info();
    let _ = emit(
        &mut out,
        "pvguest ready",
        &[
            ("domid", rt.domid().to_string()),
            ("pid", std::process::id().to_string()),
            ("nr_pages", boot.nr_pages.to_string()),
            ("grant_frames", rt.platform().grant_frames().to_string()),
            ("store_evtchn", boot.store_evtchn.to_string()),
            ("console_evtchn", boot.console_evtchn.to_string()),
        ],
    );
    // Xen's PV shutdown protocol (control/shutdown), for the guests an xl
    // user shuts down or reboots.
    let ctl = Arc::new(ShutdownControl::new());
    let ctl_stop = Arc::new(AtomicBool::new(false));
    let ctl_thread = (pv_shutdown == PvShutdown::Follow).then(|| {
        let (p, ctl, stop) = (
            Arc::clone(rt.platform()),
            Arc::clone(&ctl),
            Arc::clone(&ctl_stop),
        );
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                crate::control::watch(p.as_ref(), &ctl, &stop);
                // A request: the idle loop below waits on the hub.
                p.hub().wake_all();
            })
    });
    // While the body runs (a guest machine's init: the domain's whole
    // life), a restart of the shim daemon is survived by reattaching as soon
    // as it is back, as the idle loop below does: the data plane keeps
    // working without the daemon, but until the runtime hands its ports
    // back the daemon cannot give them to a new peer (a restarted xenstored
    // could not bind the domain's store port, so the guest got no more
    // watch events: found by tests/soak).
    let body_done = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let watcher = std::thread::Builder::new()
            .name("reattach".into())
            .spawn_scoped(s, || {
                let done = || body_done.load(Ordering::Relaxed);
                while !done() {
                    if rt.hub().disconnected() {
                        if rt.reattach(REATTACH_TIMEOUT) {
                            tracing::info!("reattached to the restarted shim daemon");
                        } else {
                            std::thread::sleep(REATTACH_RETRY);
                        }
                    } else if rt.hub().shutdown_requested().is_some() {
                        // The body is ending the domain; the hub's wait
                        // would return at once.
                        std::thread::sleep(REATTACH_RETRY);
                    } else {
                        // Sleeps until the connection breaks, a shutdown
                        // request or the body's end (woken below).
                        let _ = rt.hub().wait_shutdown_or(None, done);
                    }
                }
            });
        if let Err(e) = &watcher {
            tracing::warn!(error = %e, "cannot start the reattach thread");
        }
        let r = body(rt.platform().as_ref(), &ctl, &mut out);
        body_done.store(true, Ordering::Relaxed);
        rt.hub().wake_all();
        r
    });
    let (reason, code) = match result {
        Err(e) => {
            let _ = emit(
                &mut out,
                "pvguest frontend-failed",
                &[("error", ErrorChain(&e).to_string().replace(' ', "_"))],
            );
            (ShutdownReason::Crash, ExitCode::from(1))
        }
        Ok(Then::Stay) => loop {
            // An idle domain is set up once it idles.
            crate::jail::after_setup(&mut out);
            if let Some(r) = ctl.requested() {
                break (r, ExitCode::SUCCESS);
            }
            // Sleeps until a request (the control thread wakes the hub),
            // the daemon's shutdown or its connection breaking.
            if let Some(r) = rt
                .hub()
                .wait_shutdown_or(None, || ctl.requested().is_some())
            {
                break (r, ExitCode::SUCCESS);
            }
            if !rt.hub().disconnected() {
                continue;
            }
            // The daemon went away (a restart): the domain keeps running;
            // reattach when it is back.
            let _ = emit(&mut out, "pvguest disconnected", &[]);
            if !rt.reattach(REATTACH_TIMEOUT) {
                return Ok(ExitCode::from(1));
            }
            let _ = emit(&mut out, "pvguest reattached", &[]);
        },
        Ok(Then::PowerOff) => (
            ctl.requested().unwrap_or(ShutdownReason::Poweroff),
            ExitCode::SUCCESS,
        ),
        Ok(Then::Shutdown(r)) => (ctl.requested().unwrap_or(r), ExitCode::SUCCESS),
    };
    // Not joined: without a xenstored the watcher may sit in a request
    // until the client's timeout; the process ends after the shutdown.
    ctl_stop.store(true, Ordering::Relaxed);
    rt.platform().xs_wake_readers();
    drop(ctl_thread);
    let _ = emit(
        &mut out,
        "pvguest shutdown",
        &[("reason", reason_name(reason).to_owned())],
    );
    let _ = out.flush();
    drop(out);
    if let Some(c) = console {
        c.finish();
    }
    rt.finish(reason)?;
    Ok(code)
}
