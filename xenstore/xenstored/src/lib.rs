//! `xenstored`: a xenstore daemon that Xen's clients cannot tell from
//! Xen's own.
//!
//! - [`config`]: command line and socket path rules.
//! - [`store`], [`txn`], [`ops`]: the node tree, transactions with
//!   per-node generation counts, and the node operations with Xen's
//!   permission and quota rules.
//! - [`watch`], [`domain`], [`quota`], [`control`]: watches, introduced
//!   domains, quotas and `XS_CONTROL`.
//! - [`core`]: the protocol engine (pure: packets in, packets out).
//! - [`persist`]: journal and snapshots.
//! - [`transport`], [`server`]: sockets, domain rings and the epoll loop.
//! - [`shim_mapper`], [`domain_exc`]: domains' rings and `VIRQ_DOM_EXC`
//!   through the hypervisor shim (`xen-shimd`): `XS_INTRODUCE` checked and
//!   mapped before it is acknowledged, dead domains released.
//!
//! [`run`] is the daemon's `main`.

pub mod config;
pub mod control;
pub mod core;
pub mod domain;
pub mod domain_exc;
pub mod harness;
pub mod ops;
pub mod persist;
pub mod quota;
pub mod server;
pub mod shim_mapper;
pub mod store;
pub mod transport;
pub mod txn;
pub mod watch;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub use config::Options;
pub use server::{Server, ServerConfig, StopHandle};

/// Errors of the daemon's start-up.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad options.
    #[error("invalid configuration")]
    Config(#[from] config::ConfigError),
    /// The server could not start or failed.
    #[error("server failed")]
    Server(#[from] server::ServerError),
    /// The log file could not be opened.
    #[error("cannot open log file {0}")]
    Log(PathBuf, #[source] std::io::Error),
    /// Forking into the background failed.
    #[error("cannot daemonize")]
    Daemonize(#[source] nix::Error),
    /// The pid file could not be written.
    #[error("cannot write pid file {0}")]
    PidFile(PathBuf, #[source] std::io::Error),
    /// Signal set-up failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// The hypervisor shim link could not be set up.
    #[error("cannot set up the link to the hypervisor shim")]
    Shim(#[from] shim_mapper::ShimLinkError),
}

fn init_logging(opts: &Options) -> Result<(), DaemonError> {
    let level = if opts.verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("XENSTORED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let r = match &opts.trace_file {
        Some(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| DaemonError::Log(p.clone(), e))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    // Already initialised (a test harness): keep the existing subscriber.
    let _ = r;
    Ok(())
}

fn daemonize() -> Result<bool, DaemonError> {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: called before any thread is spawned (the daemon is single
    // threaded), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(DaemonError::Daemonize)? {
        ForkResult::Parent { .. } => return Ok(false),
        ForkResult::Child => {}
    }
    setsid().map_err(DaemonError::Daemonize)?;
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this
            // process owns; /dev/null stays open through `null`.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    Ok(true)
}

/// Serves domains' rings through the hypervisor shim at `socket`
/// ([`shim_mapper::ShimLink`]): checks `XS_INTRODUCE`, maps rings (those of
/// restored domains too) and watches `VIRQ_DOM_EXC`. A shim that is not
/// running yet is looked for again at each `XS_INTRODUCE`.
pub fn install_shim(server: &mut Server, socket: &std::path::Path) -> Result<(), DaemonError> {
    let link = shim_mapper::ShimLink::new(socket)?;
    match link.connect() {
        Ok(()) => {}
        Err(e) => tracing::warn!(
            socket = %socket.display(),
            error = %e,
            "the hypervisor shim is not reachable: XS_INTRODUCE fails until it is"
        ),
    }
    server.core.introduce_check = Some(Box::new(link.clone()));
    server.set_domain_watcher(Box::new(link.clone()))?;
    server.set_mapper(Box::new(link));
    // Domains restored from the state directory that died meanwhile.
    server.check_domains();
    Ok(())
}

/// The daemon: parses nothing (see [`Options`]), sets up logging, loads
/// the state, listens, forks unless `--no-fork`, writes the pid file and
/// serves until SIGTERM/SIGINT/SIGHUP.
pub fn run(opts: &Options) -> Result<(), DaemonError> {
    init_logging(opts)?;
    let cfg = ServerConfig {
        socket: opts.socket_path(),
        read_only_socket: !opts.no_ro_socket,
        state_dir: if opts.no_persist {
            None
        } else {
            Some(opts.state_dir.clone())
        },
        fsync: opts.fsync,
    };
    let quotas = opts.quota_settings()?;
    let mut server = Server::new(&cfg)?;
    server.set_poll_window(u64::from(opts.poll_us) * 1000);
    for (q, v) in quotas {
        server
            .core
            .quotas
            .set_global(q, v)
            .map_err(|_| config::ConfigError::BadQuota(quota::NAMES[q].to_owned()))?;
    }
    if !opts.no_shim {
        install_shim(&mut server, &opts.shim_socket_path())?;
    }
    if !opts.foreground && !daemonize()? {
        // The parent: the socket exists already, clients may connect.
        return Ok(());
    }
    // The stop signals are taken through a signalfd, blocked before the pid
    // is published: a SIGTERM sent as soon as the pid file appears must stop
    // the daemon cleanly (socket and pid file removed), not kill it.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(DaemonError::Signals)?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(DaemonError::Signals)?;
    server.set_signal_fd(sfd)?;
    let pid = std::process::id();
    if opts.output_pid {
        println!("{pid}");
        let _ = std::io::stdout().flush();
    }
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, format!("{pid}\n")).map_err(|e| DaemonError::PidFile(p.clone(), e))?;
    }
    tracing::info!(socket = %cfg.socket.display(), pid, "xenstored serving");
    let r = server.run();
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("xenstored stopped");
    r.map_err(Into::into)
}
