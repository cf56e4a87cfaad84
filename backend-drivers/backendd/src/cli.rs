//! The `backendd` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use xenstore_client::Client;

use crate::backend::BackendFactory;
use crate::console::{Consoles, ConsolesConfig};
use crate::service::{Service, ServiceConfig};

/// `backendd`: runs the backends of the devices in
/// `/local/domain/<domid>/backend`.
#[derive(Debug, Parser)]
#[command(
    name = "backendd",
    about = "Dom0 backend service: one backend per xenstore backend directory"
)]
pub struct Args {
    /// The backend domain (this service's domain).
    #[arg(long, default_value_t = 0)]
    pub domid: u16,
    /// xenstored's socket (default: $XENSTORED_PATH, else
    /// $XENSTORED_RUNDIR/socket, else /var/run/xenstored/socket).
    #[arg(long)]
    pub xenstored: Option<PathBuf>,
    /// The hypervisor shim's control socket (default: $XEN_SHIM_SOCKET,
    /// else /run/xen-shim/control.sock).
    #[arg(long)]
    pub shim_socket: Option<PathBuf>,
    /// Milliseconds between a device's state re-checks without events.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// Write the pid here (removed on a clean exit).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Directory of the guests' console logs, `guest-<name>.log`
    /// (default: $XEN_CONSOLE_LOGDIR, else /var/log/xen/console).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Do not serve the guests' primary consoles (consback).
    #[arg(long)]
    pub no_consoles: bool,
    /// Milliseconds a vif's guest may leave a waiting packet without rx
    /// requests before its TAP loses carrier (Linux netback's
    /// `rx_stall_timeout_msecs`); 0 turns stall detection off.
    #[arg(long, default_value_t = 60_000)]
    pub vif_rx_stall_timeout_ms: u64,
}

/// The factories compiled in: `vbd` and `qdisk` (blkback; libxl's
/// backend types for raw disks and for qcow2/NBD disks) and `vif`
/// (netback, with guest rx stall detection after `rx_stall_timeout`)
/// over the shim at `socket`.
#[must_use]
pub fn factories(
    socket: PathBuf,
    rx_stall_timeout: Option<Duration>,
) -> Vec<Arc<dyn BackendFactory>> {
    vec![
        Arc::new(crate::vbd::VbdFactory::new(socket.clone())),
        Arc::new(crate::vbd::VbdFactory::qdisk(socket.clone())),
        Arc::new(crate::vif::VifFactory::new(socket).with_rx_stall_timeout(rx_stall_timeout)),
    ]
}

/// Runs the service until SIGTERM/SIGINT.
#[must_use]
pub fn run(args: &Args) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // Each guest's disk and NIC hold about 55 descriptors here (images,
    // event channels, TAPs, eventfds): the usual soft limit of 1024
    // (systemd's default) stopped the scale benchmark at guest 19, its NIC
    // never connecting. The hard limit is the administrator's bound.
    match xen_shim_proto::sys::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let path = args
        .xenstored
        .clone()
        .unwrap_or_else(xenstore_client::discovery::socket_path);
    let xs = match Client::connect_path(&path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("backendd: {e}");
            return ExitCode::from(2);
        }
    };
    // The stop handler goes in before the pid is published: a SIGTERM
    // sent as soon as the pid file appears stops backendd cleanly.
    let signals = install_signal_flag();
    if let Some(p) = &args.pid_file {
        // Written whole, then renamed into place: a reader that sees the
        // file never sees it empty.
        let tmp = p.with_extension("pid.tmp");
        let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, p));
        if let Err(e) = written {
            eprintln!("backendd: cannot write {}: {e}", p.display());
            return ExitCode::from(2);
        }
    }
    let cfg = ServiceConfig {
        domid: args.domid,
        poll: Duration::from_millis(args.poll_ms.max(1)),
    };
    let shim = args
        .shim_socket
        .clone()
        .unwrap_or_else(xen_shim_proto::default_socket_path);
    let consoles = if args.no_consoles {
        None
    } else {
        match start_consoles(&path, args, &cfg, &shim) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("backendd: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let stall = (args.vif_rx_stall_timeout_ms > 0)
        .then(|| Duration::from_millis(args.vif_rx_stall_timeout_ms));
    let mut svc = Service::new(xs, &cfg, factories(shim, stall));
    let stop = svc.stop_flag();
    let console_stop = consoles.as_ref().map(|(s, _)| Arc::clone(s));
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if signals.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
                if let Some(c) = &console_stop {
                    c.store(true, Ordering::Relaxed);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    if watcher.is_err() {
        eprintln!("backendd: cannot start the signal thread");
        return ExitCode::from(2);
    }
    let r = svc.run();
    if let Some((stop, thread)) = consoles {
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backendd: {e}");
            ExitCode::FAILURE
        }
    }
}

type ConsolesThread = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

/// consback on its own xenstore connection and thread.
fn start_consoles(
    xs_path: &std::path::Path,
    args: &Args,
    cfg: &ServiceConfig,
    shim: &std::path::Path,
) -> Result<ConsolesThread, String> {
    let xs = Client::connect_path(xs_path).map_err(|e| e.to_string())?;
    let ccfg = ConsolesConfig {
        domid: cfg.domid,
        log_dir: args
            .log_dir
            .clone()
            .unwrap_or_else(ConsolesConfig::default_log_dir),
        shim_socket: shim.to_path_buf(),
        poll: cfg.poll,
        pty_limit: crate::console::DEFAULT_PTY_LIMIT,
    };
    let mut consoles = Consoles::new(Arc::new(xs), ccfg);
    let stop = consoles.stop_flag();
    let t = std::thread::Builder::new()
        .name("consoles".into())
        .spawn(move || {
            if let Err(e) = consoles.run() {
                tracing::error!(error = %e, "the console service stopped");
            }
        })
        .map_err(|e| format!("cannot start the console thread: {e}"))?;
    Ok((stop, t))
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

fn install_signal_flag() -> &'static std::sync::atomic::AtomicBool {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `on_signal` is async-signal-safe (one atomic store) and
        // has the `extern "C" fn(c_int)` signature `signal` expects; the
        // previous handler is not needed.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    &SIGNALLED
}
