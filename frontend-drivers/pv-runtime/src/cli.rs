//! The `xen-pvguest` command line and what the binary does with it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use xen_abi::xen::domid_t;
use xen_shim_proto::protocol::ShutdownReason;

use crate::demo::{self, emit, DemoError};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::PvGuestError;

/// The frontend the runtime runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Frontend {
    /// No device: run until the toolstack shuts the domain down.
    Idle,
    /// Share one page with the peer by grant and signal it (see `demo`).
    GrantDemo,
    /// An `io/ring.h` ring with the peer (see `demo`).
    RingDemo,
    /// Use the domain's xenstore over its ring (see `xsdemo`).
    XenstoreDemo,
    /// Corrupt the xenstore ring, then recover by reconnecting (see
    /// `xsdemo`).
    XenstoreHostile,
    /// Time `--messages` xenstore reads and writes over the ring.
    XenstoreBench,
    /// Connect every `device/vbd`, expose each as `/dev/<vdev>` (a FUSE
    /// block file) in a private mount namespace and run `--init` there
    /// (see `pvdisk`).
    Disk,
    /// Drive the first `device/vbd` directly with `--pattern`, `--bs`,
    /// `--qd` for `--seconds` each, printing one JSON line per pattern
    /// (see `blkload`).
    Blkload,
}

/// Where the runtime's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsoleMode {
    /// The stdio the runtime was started with (tests read stdout).
    Stdio,
    /// The domain's PV console (`start_info`'s console ring), as a tty.
    Hvc0,
}

/// `xen-pvguest`: the PV guest runtime, started by the toolstack as domain N.
#[derive(Debug, Parser)]
#[command(
    args_override_self = true,
    name = "xen-pvguest",
    about = "PV guest runtime: attaches to xen-shimd as domain N and runs frontends"
)]
pub struct Args {
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
    /// The frontend to run.
    #[arg(long, value_enum, default_value_t = Frontend::Idle)]
    pub frontend: Frontend,
    /// The backend's domain.
    #[arg(long, default_value_t = 0)]
    pub peer: domid_t,
    /// Messages of the ring demo (operations of each kind for the xenstore
    /// benchmark).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Pages of the ring demo's ring (1, 2, 4, 8 or 16).
    #[arg(long, default_value_t = 1)]
    pub ring_pages: usize,
    /// Seconds to wait for the peer at each step of a demo.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// The guest's init program (run by the `disk` frontend with the
    /// disks exposed; without it the disks are connected and released).
    #[arg(long)]
    pub init: Option<String>,
    /// An argument of the init program (repeat for more).
    #[arg(long = "init-arg", allow_hyphen_values = true)]
    pub init_args: Vec<String>,
    /// Patterns of the `blkload` frontend (comma-separated, run in turn).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "randread")]
    pub pattern: Vec<crate::blkload::Pattern>,
    /// I/O size in bytes of the `blkload` frontend.
    #[arg(long, default_value_t = 4096)]
    pub bs: usize,
    /// I/Os in flight of the `blkload` frontend.
    #[arg(long, default_value_t = 32)]
    pub qd: usize,
    /// Seconds each `blkload` pattern runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// `blkload` moves the data through blkfront's copying API instead of
    /// registered buffers.
    #[arg(long)]
    pub blkload_copy: bool,
    /// How long blkfront polls its rings before sleeping on the event
    /// channel, microseconds (`blkload`).
    #[arg(long, default_value_t = 50)]
    pub poll_us: u64,
    /// Queues (rings) `blkload` asks blkfront for.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// After the demo, keep running until the toolstack shuts the domain
    /// down (instead of powering off).
    #[arg(long)]
    pub stay: bool,
}

impl Args {
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

/// How long the runtime keeps trying to reattach after the daemon went away.
pub const REATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// How often an idle guest looks for a toolstack shutdown request.
const CONTROL_LOOK: Duration = Duration::from_millis(100);

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

/// Runs the runtime: attach, print `pvguest ready ...`, run the frontend,
/// then shut the domain down (`SCHEDOP_shutdown`): with the toolstack's
/// reason when it asked, `poweroff` after a successful demo, `crash` after
/// a failed one. Exit status 0, or 1 after a failed demo, 2 when the domain
/// could not be brought up.
pub fn run(args: &Args) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xen-pvguest: {}", xen_diag::ErrorChain(&e));
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &Args) -> Result<ExitCode, PvGuestError> {
    let cfg = args.config()?;
    let rt = Runtime::start(&cfg)?;
    let console = match args.console {
        ConsoleMode::Stdio => None,
        ConsoleMode::Hvc0 => {
            let boot = rt.boot_info();
            Some(crate::console::PvConsole::start(
                rt.hypervisor(),
                std::sync::Arc::clone(rt.hub()),
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
    let timeout = Duration::from_secs(args.timeout_secs);
    // Xen's PV shutdown protocol (control/shutdown), for the guests an xl
    // user shuts down or reboots: the disk frontend runs an init, idle
    // guests wait.
    let ctl = std::sync::Arc::new(crate::control::ShutdownControl::new());
    let ctl_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctl_thread = matches!(args.frontend, Frontend::Disk | Frontend::Idle).then(|| {
        let (p, ctl, stop) = (
            std::sync::Arc::clone(rt.platform()),
            std::sync::Arc::clone(&ctl),
            std::sync::Arc::clone(&ctl_stop),
        );
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || crate::control::watch(p.as_ref(), &ctl, &stop))
    });
    let p = rt.platform().as_ref();
    let result: Result<(), DemoError> = match args.frontend {
        Frontend::Idle => {
            let _ = emit(&mut out, "idle running", &[]);
            Ok(())
        }
        Frontend::GrantDemo => demo::grant_demo(p, args.peer, timeout, &mut out).map(|_| ()),
        Frontend::RingDemo => demo::ring_demo(
            p,
            args.peer,
            args.messages,
            args.ring_pages,
            timeout,
            &mut out,
        )
        .map(|_| ()),
        Frontend::XenstoreDemo => crate::xsdemo::xenstore_demo(p, timeout, &mut out),
        Frontend::XenstoreHostile => crate::xsdemo::xenstore_hostile(p, timeout, &mut out),
        Frontend::XenstoreBench => {
            crate::xsdemo::xenstore_bench(p, args.messages, timeout, &mut out)
        }
        Frontend::Disk => {
            let init: Vec<String> = args
                .init
                .iter()
                .chain(args.init_args.iter())
                .cloned()
                .collect();
            crate::pvdisk::run_with_disks(p, &init, timeout, &ctl, &mut out)
                .map_err(DemoError::from)
        }
        Frontend::Blkload => {
            let cfg = crate::blkload::LoadConfig {
                patterns: args.pattern.clone(),
                bs: args.bs,
                qd: args.qd,
                duration: Duration::try_from_secs_f64(args.seconds)
                    .unwrap_or(Duration::from_secs(5)),
                copy: args.blkload_copy,
                poll_budget: Duration::from_micros(args.poll_us),
                queues: args.queues,
            };
            crate::blkload::run_load(p, &cfg, timeout, &mut out)
                .map(drop)
                .map_err(DemoError::from)
        }
    };
    let (reason, code) = match result {
        Err(e) => {
            let msg = xen_diag::ErrorChain(&e).to_string();
            let _ = emit(
                &mut out,
                "pvguest frontend-failed",
                &[("error", msg.replace(' ', "_"))],
            );
            (ShutdownReason::Crash, ExitCode::from(1))
        }
        Ok(()) if args.stay || args.frontend == Frontend::Idle => loop {
            if let Some(r) = ctl.requested() {
                break (r, ExitCode::SUCCESS);
            }
            if let Some(r) = rt.hub().wait_shutdown(Some(CONTROL_LOOK)) {
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
        Ok(()) => (
            ctl.requested().unwrap_or(ShutdownReason::Poweroff),
            ExitCode::SUCCESS,
        ),
    };
    // Not joined: without a xenstored the watcher may sit in a request
    // until the client's timeout; the process ends after the shutdown.
    ctl_stop.store(true, std::sync::atomic::Ordering::Relaxed);
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
