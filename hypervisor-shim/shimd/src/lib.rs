//! `xen-shimd`, the hypervisor shim's control daemon: this library (run
//! in-process by tests and the test host with [`spawn`] / [`run`]) and the
//! `xen-shimd` binary ([`main_from_env`]).
//!
//! One thread, one epoll loop over: the listening socket, every client
//! connection, a signalfd (SIGTERM/SIGINT: save and exit, leaving domains
//! running) and a pidfd per attached guest runtime (its death is a crash).
//! It owns the domain table, domid allocation, every domain's port table and
//! the eventfds of every port, and hands fds out over `SCM_RIGHTS`. It is
//! never on the data path.
//!
//! State survives a restart: memory and active-grant files live in
//! `--mem-dir` (a tmpfs), the tables in `<state-dir>/state.json` (written
//! with tmp + fsync + rename after every change). See `xen_shim_proto` (the
//! crate documentation: architecture, event channels, restarts) for what a
//! restart keeps and what needs a reattach.
//!
//! The daemon speaks [`xen_shim_proto::protocol`] and does the grant work it
//! performs itself (`GNTTABOP_copy`, the xenstore and console grants, dead
//! mappers' pins) with `xen_shim_dom0::grant`.

mod domain;
mod domsock;
mod handlers;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xen_diag::{warn_limited, LogLimiter};

use domain::{Domain, SavedDomain};
use xen_shim_proto::protocol::{ControlEvent, DomainConfig, Message, WireError};
use xen_shim_proto::sys::{self, Epoll, PeerCred, Ready};

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A command-line argument is wrong.
    #[error("bad command line: {0}")]
    Usage(String),
    /// A system call failed.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// Another daemon already serves the socket.
    #[error("another daemon already listens on {0}")]
    AlreadyRunning(PathBuf),
    /// The state file is unreadable.
    #[error("the state file {0} is corrupt")]
    BadState(PathBuf, #[source] serde_json::Error),
    /// An invalid request argument.
    #[error("{0}")]
    Invalid(String),
    /// A request failed with an errno.
    #[error("{1}")]
    Errno(i32, String),
    /// A grant-table request failed with a `GNTST_*`.
    #[error("{1}")]
    Gntst(i16, String),
}

impl DaemonError {
    fn wire(&self) -> WireError {
        let (errno, gntst) = match self {
            DaemonError::Errno(e, _) => (*e, 0),
            DaemonError::Gntst(g, _) => (libc::EINVAL, *g),
            DaemonError::Invalid(_) | DaemonError::Usage(_) => (libc::EINVAL, 0),
            DaemonError::Io(_, e) => (e.raw_os_error().unwrap_or(libc::EIO), 0),
            DaemonError::AlreadyRunning(_) => (libc::EBUSY, 0),
            DaemonError::BadState(..) => (libc::EIO, 0),
        };
        WireError {
            errno,
            gntst,
            message: self.to_string(),
        }
    }
}

/// Daemon settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Directory of the state file.
    pub state_dir: PathBuf,
    /// Directory of memory and active-grant files (a tmpfs).
    pub mem_dir: PathBuf,
    /// Dom0's memory (for `Gntalloc`), MiB.
    pub dom0_memory_mib: u64,
    /// How long after a restart Dom0 handles have to reclaim their ports
    /// before those are closed.
    pub reattach_grace: Duration,
    /// The first domid a fresh daemon (no saved state) gives out; later
    /// ones count up from it, wrapping to 1. Private test stacks start at
    /// different domids so that their domains' host uid ranges differ.
    pub first_domid: u16,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: xen_shim_proto::default_socket_path(),
            state_dir: PathBuf::from(xen_shim_proto::DEFAULT_STATE_DIR),
            mem_dir: PathBuf::from(xen_shim_proto::DEFAULT_MEM_DIR),
            dom0_memory_mib: 16,
            reattach_grace: Duration::from_secs(10),
            first_domid: 1,
        }
    }
}

/// Usage text of `xen-shimd`.
pub const USAGE: &str = "usage: xen-shimd [--socket PATH] [--state-dir DIR] [--mem-dir DIR] [--dom0-memory MIB] [--reattach-grace SECS] [--first-domid N]
  --socket PATH      control socket (default $XEN_SHIM_SOCKET or /run/xen-shim/control.sock)
  --state-dir DIR    state file directory (default /run/xen-shim)
  --mem-dir DIR      guest memory files, a tmpfs (default /dev/shm/xen-shim)
  --dom0-memory MIB  Dom0 memory for gntalloc (default 16)
  --reattach-grace S seconds Dom0 handles get to reclaim ports after a restart (default 10)
  --first-domid N    the first domid a daemon without saved state gives out (default 1)
Logs go to stderr; RUST_LOG sets the level (default info).";

impl DaemonConfig {
    /// Parses `xen-shimd`'s arguments (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self, DaemonError> {
        let mut c = DaemonConfig::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| {
                it.next()
                    .ok_or_else(|| DaemonError::Usage(format!("{name} needs a value")))
            };
            match a.as_str() {
                "--socket" => c.socket = PathBuf::from(val("--socket")?),
                "--state-dir" => c.state_dir = PathBuf::from(val("--state-dir")?),
                "--mem-dir" => c.mem_dir = PathBuf::from(val("--mem-dir")?),
                "--dom0-memory" => {
                    c.dom0_memory_mib = val("--dom0-memory")?
                        .parse()
                        .map_err(|_| DaemonError::Usage("--dom0-memory takes MiB".into()))?
                }
                "--reattach-grace" => {
                    let s: u64 = val("--reattach-grace")?
                        .parse()
                        .map_err(|_| DaemonError::Usage("--reattach-grace takes seconds".into()))?;
                    c.reattach_grace = Duration::from_secs(s);
                }
                "--first-domid" => {
                    c.first_domid = val("--first-domid")?
                        .parse()
                        .ok()
                        .filter(|d| (1..xen_abi::xen::DOMID_FIRST_RESERVED).contains(d))
                        .ok_or_else(|| {
                            DaemonError::Usage("--first-domid takes 1 to 32751".into())
                        })?
                }
                "-h" | "--help" => return Err(DaemonError::Usage(USAGE.into())),
                other => {
                    return Err(DaemonError::Usage(format!(
                        "unknown argument {other}\n{USAGE}"
                    )))
                }
            }
        }
        Ok(c)
    }
}

/// The binary's entry: parse arguments, log to stderr, run.
pub fn main_from_env() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = match DaemonConfig::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(DaemonError::Usage(u)) => {
            eprintln!("{u}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("xen-shimd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xen-shimd: {}", xen_diag::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let mut d = Daemon::start(cfg, true)?;
    d.serve()
}

/// A daemon served by a thread of this process (tests, benchmarks, or a
/// toolstack that embeds it). It listens when [`spawn`] returns; dropping the
/// handle stops it (state saved, domains left as they are, like SIGTERM).
#[derive(Debug)]
pub struct DaemonHandle {
    stop: OwnedFd,
    socket: PathBuf,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
}

impl DaemonHandle {
    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the daemon and waits for its thread.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), DaemonError> {
        let _ = sys::eventfd_signal(self.stop.as_raw_fd());
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(DaemonError::Invalid("the daemon thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Starts a daemon in a thread of this process (signals are left alone).
pub fn spawn(cfg: DaemonConfig) -> Result<DaemonHandle, DaemonError> {
    let socket = cfg.socket.clone();
    let mut d = Daemon::start(cfg, false)?;
    let stop = sys::eventfd().map_err(|e| DaemonError::Io("create an eventfd", e))?;
    let theirs = stop
        .try_clone()
        .map_err(|e| DaemonError::Io("duplicate an eventfd", e))?;
    d.epoll
        .add(theirs.as_raw_fd(), TOKEN_SIGNAL)
        .map_err(|e| DaemonError::Io("watch the stop eventfd", e))?;
    d.signal = Some(theirs);
    let thread = std::thread::Builder::new()
        .name("xen-shimd".into())
        .spawn(move || d.serve())
        .map_err(|e| DaemonError::Io("start the daemon thread", e))?;
    Ok(DaemonHandle {
        stop,
        socket,
        thread: Some(thread),
    })
}

const TOKEN_LISTENER: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_CONN_BASE: u64 = 1 << 20;
const TOKEN_DOMSOCK_BASE: u64 = 1 << 36;
const TOKEN_PIDFD_BASE: u64 = 1 << 40;
const TOKEN_OWNER_BASE: u64 = 1 << 50;
/// Subdirectory of the memory directory holding the mappers' grant ledgers.
const LEDGER_DIR: &str = "grants";
/// How often the ledgers are checked without any other reason to.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Delay of the check after a Dom0 connection closes (a process's files
/// close one by one as it exits).
const SWEEP_AFTER_DISCONNECT: Duration = Duration::from_millis(20);
const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    New,
    Dom0,
    Guest(u16),
}

#[derive(Debug)]
struct Client {
    sock: OwnedFd,
    role: Role,
    cred: PeerCred,
    /// Accepted on this domain's own socket: it may attach as that domain
    /// only.
    bound: Option<u16>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    version: u32,
    next_domid: u16,
    next_instance: u64,
    domains: Vec<SavedDomain>,
}

/// The daemon's state.
#[derive(Debug)]
pub(crate) struct Daemon {
    cfg: DaemonConfig,
    epoll: Epoll,
    listener: OwnedFd,
    /// Each domain's own socket (`domsock`).
    dom_listeners: HashMap<u16, OwnedFd>,
    signal: Option<OwnedFd>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    domains: BTreeMap<u16, Domain>,
    next_domid: u16,
    next_instance: u64,
    reattach_deadline: Option<Instant>,
    /// Directory of the mappers' grant ledgers.
    ledger_dir: PathBuf,
    ledger_seq: u64,
    /// Pidfds of the processes that own ledgers (their death triggers a
    /// sweep), by pid.
    owners: HashMap<i32, OwnedFd>,
    last_sweep: Instant,
    sweep_at: Option<Instant>,
    log: LogLimiter,
    uid: u32,
    running: bool,
    dirty: bool,
}

/// The owner's pid in a grant ledger's name (`dom<D>-<I>.<pid>.<n>.ledger`).
fn ledger_owner_pid(p: &Path) -> Option<i32> {
    p.file_name()?.to_str()?.split('.').nth(1)?.parse().ok()
}

fn block_signals() -> Result<OwnedFd, DaemonError> {
    // SAFETY: sigset manipulation on a local, then a plain syscall.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(DaemonError::Io(
                "block signals",
                std::io::Error::last_os_error(),
            ));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(DaemonError::Io(
                "create a signalfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: signalfd returned a fresh fd nothing else owns.
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn listen(path: &Path) -> Result<OwnedFd, DaemonError> {
    use nix::sys::socket::{
        listen as nix_listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| DaemonError::Io("create the socket directory", e))?;
    }
    if path.exists() {
        if xen_shim_proto::client::Conn::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| DaemonError::Io("remove a stale socket", e))?;
    }
    let io = |what: &'static str| {
        move |e: nix::errno::Errno| DaemonError::Io(what, std::io::Error::from(e))
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io("create the control socket"))?;
    let addr = UnixAddr::new(path).map_err(io("name the control socket"))?;
    domsock::bind_owner_only(&sock, &addr).map_err(io("bind the control socket"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| DaemonError::Io("chmod the control socket", e))?;
    }
    let backlog = Backlog::new(128).map_err(io("size the listen backlog"))?;
    nix_listen(&sock, backlog).map_err(io("listen on the control socket"))?;
    Ok(sock)
}

/// Creates `dir` (and its missing parents) mode 0700, or tightens it to
/// 0700 when it exists, is ours and is not a shared sticky directory (as
/// `/dev/shm` itself): the domains' memory and grant files are reached by
/// fd from the daemon only, never by path (a jailed runtime's uid must not
/// even list them).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let m = std::fs::metadata(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() == me && m.mode() & 0o1000 == 0 && m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Start time (clock ticks since boot) of a process, from `/proc/<pid>/stat`.
fn process_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn random_token() -> Result<String, DaemonError> {
    let mut b = [0u8; 16];
    sys::random_bytes(&mut b).map_err(|e| DaemonError::Io("read random bytes", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Daemon {
    fn start(cfg: DaemonConfig, signals: bool) -> Result<Self, DaemonError> {
        let _ = sys::raise_nofile_limit();
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| DaemonError::Io("create the state directory", e))?;
        private_dir(&cfg.mem_dir).map_err(|e| DaemonError::Io("create the memory directory", e))?;
        let ledger_dir = cfg.mem_dir.join(LEDGER_DIR);
        private_dir(&ledger_dir)
            .map_err(|e| DaemonError::Io("create the grant-ledger directory", e))?;
        let signal = if signals {
            Some(block_signals()?)
        } else {
            None
        };
        let listener = listen(&cfg.socket)?;
        let epoll = Epoll::new().map_err(|e| DaemonError::Io("create an epoll", e))?;
        epoll
            .add(listener.as_raw_fd(), TOKEN_LISTENER)
            .map_err(|e| DaemonError::Io("watch the socket", e))?;
        if let Some(sig) = &signal {
            epoll
                .add(sig.as_raw_fd(), TOKEN_SIGNAL)
                .map_err(|e| DaemonError::Io("watch signals", e))?;
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let first_domid = cfg.first_domid.max(1);
        let mut d = Daemon {
            cfg,
            epoll,
            listener,
            dom_listeners: HashMap::new(),
            signal,
            clients: HashMap::new(),
            next_client: 0,
            domains: BTreeMap::new(),
            next_domid: first_domid,
            next_instance: 1,
            reattach_deadline: None,
            ledger_dir,
            ledger_seq: 0,
            owners: HashMap::new(),
            last_sweep: Instant::now(),
            sweep_at: None,
            log: LogLimiter::new(20, Duration::from_secs(1)),
            uid,
            running: true,
            dirty: false,
        };
        d.load_state()?;
        if !d.domains.contains_key(&0) {
            let cfg0 = DomainConfig {
                name: "Domain-0".into(),
                memory_mib: d.cfg.dom0_memory_mib.max(1),
                vcpus: 1,
                kind: xen_shim_proto::layout::DomainType::Pv,
                max_grant_frames: None,
                max_evtchn_port: Some(domain::MAX_PORT_LIMIT),
                store_domid: 0,
                console_domid: 0,
            };
            let inst = d.take_instance();
            let dom0 = Domain::create(0, cfg0, inst, &d.cfg.mem_dir, String::new())?;
            d.domains.insert(0, dom0);
        }
        d.write_state();
        let guests: Vec<u16> = d.domains.keys().copied().filter(|&id| id != 0).collect();
        for domid in guests {
            d.open_domain_socket(domid);
        }
        // Mappers that died while no daemon ran lose their pins now; the
        // live ones are watched.
        d.sweep_ledgers();
        tracing::info!(socket = %d.cfg.socket.display(), domains = d.domains.len(), "xen-shimd ready");
        Ok(d)
    }

    fn take_instance(&mut self) -> u64 {
        let i = self.next_instance;
        self.next_instance = self.next_instance.wrapping_add(1).max(1);
        i
    }

    fn state_path(&self) -> PathBuf {
        self.cfg.state_dir.join(STATE_FILE)
    }

    fn load_state(&mut self) -> Result<(), DaemonError> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(DaemonError::Io("read the state file", e)),
        };
        let st: SavedState =
            serde_json::from_slice(&bytes).map_err(|e| DaemonError::BadState(path.clone(), e))?;
        self.next_domid = st.next_domid.max(1);
        self.next_instance = st.next_instance.max(1);
        for sd in st.domains {
            let domid = sd.domid;
            match Domain::restore(sd) {
                Ok(mut d) => {
                    if let (Some(pid), Some(start)) = (d.pid, d.pid_start) {
                        if process_start_time(pid) == Some(start) {
                            if let Ok(pfd) = sys::pidfd_open(pid) {
                                let _ = self
                                    .epoll
                                    .add(pfd.as_raw_fd(), TOKEN_PIDFD_BASE + u64::from(domid));
                                d.pidfd = Some(pfd);
                            }
                        } else {
                            d.pid = None;
                            if matches!(
                                d.state,
                                xen_shim_proto::protocol::DomainState::Running
                                    | xen_shim_proto::protocol::DomainState::Paused
                            ) && domid != 0
                            {
                                d.state = xen_shim_proto::protocol::DomainState::Crashed;
                            }
                        }
                    }
                    tracing::info!(domid, "restored domain");
                    self.domains.insert(domid, d);
                }
                Err(e) => tracing::warn!(domid, error = %e, "cannot restore domain; dropping it"),
            }
        }
        self.reattach_deadline = Some(Instant::now() + self.cfg.reattach_grace);
        Ok(())
    }

    /// Marks the state dirty: it is written before the reply to the current
    /// request, or at the end of the current batch of events.
    fn save_state(&mut self) {
        self.dirty = true;
    }

    /// Writes the state file crash-safely: tmp, fsync, rename, fsync dir.
    /// Compact JSON: it is rewritten after every change of any domain, and
    /// at 256 guests the pretty form was 1.1 MB (0.6 MB compact), written
    /// ten times a second while guests were created.
    fn write_state(&mut self) {
        self.dirty = false;
        let st = SavedState {
            version: STATE_VERSION,
            next_domid: self.next_domid,
            next_instance: self.next_instance,
            domains: self.domains.values().map(Domain::save).collect(),
        };
        let path = self.state_path();
        let tmp = self.cfg.state_dir.join(format!("{STATE_FILE}.tmp"));
        let r = (|| -> std::io::Result<()> {
            let data = serde_json::to_vec(&st).map_err(std::io::Error::other)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Ok(dir) = std::fs::File::open(&self.cfg.state_dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write the state file");
        }
    }

    fn serve(&mut self) -> Result<(), DaemonError> {
        let mut ready: Vec<Ready> = Vec::with_capacity(64);
        while self.running {
            let now = Instant::now();
            let next_sweep = self
                .sweep_at
                .unwrap_or(self.last_sweep + SWEEP_INTERVAL)
                .min(self.last_sweep + SWEEP_INTERVAL);
            let timeout = Some(
                self.reattach_deadline
                    .map_or(next_sweep, |d| d.min(next_sweep))
                    .saturating_duration_since(now),
            );
            ready.clear();
            self.epoll
                .wait(&mut ready, 64, timeout)
                .map_err(|e| DaemonError::Io("wait for events", e))?;
            for r in ready.clone() {
                match r.token {
                    TOKEN_LISTENER => self.accept(None),
                    TOKEN_SIGNAL => {
                        if let Some(sig) = &self.signal {
                            let mut buf = [0u8; 128];
                            // SAFETY: reads into a live local buffer of its size.
                            let _ = unsafe {
                                libc::read(sig.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                            };
                        }
                        tracing::info!(
                            "signal received; saving state and exiting (domains keep running)"
                        );
                        self.running = false;
                    }
                    t if t >= TOKEN_OWNER_BASE => {
                        let pid = (t - TOKEN_OWNER_BASE) as i32;
                        if let Some(p) = self.owners.remove(&pid) {
                            let _ = self.epoll.delete(p.as_raw_fd());
                        }
                        self.sweep_ledgers();
                    }
                    t if t >= TOKEN_PIDFD_BASE => {
                        let domid = (t - TOKEN_PIDFD_BASE) as u16;
                        self.runtime_died(domid);
                    }
                    t if t >= TOKEN_DOMSOCK_BASE => {
                        self.accept(u16::try_from(t - TOKEN_DOMSOCK_BASE).ok());
                    }
                    t if t >= TOKEN_CONN_BASE => self.client_ready(t - TOKEN_CONN_BASE, r.events),
                    _ => {}
                }
            }
            if self.reattach_deadline.is_some_and(|d| Instant::now() >= d) {
                self.reattach_deadline = None;
                self.close_orphans();
            }
            let now = Instant::now();
            if self.sweep_at.is_some_and(|t| now >= t) || now >= self.last_sweep + SWEEP_INTERVAL {
                self.sweep_ledgers();
            }
            if self.dirty {
                self.write_state();
            }
        }
        self.write_state();
        let _ = std::fs::remove_file(&self.cfg.socket);
        // The domains' own sockets stay (the next daemon binds them again in
        // place): a jailed VMM's root is its socket's directory.
        Ok(())
    }

    /// Accepts on the control socket (`bound` `None`) or on domain
    /// `bound`'s own socket.
    fn accept(&mut self, bound: Option<u16>) {
        let listener = match bound {
            None => self.listener.as_raw_fd(),
            Some(d) => match self.dom_listeners.get(&d) {
                Some(l) => l.as_raw_fd(),
                None => return,
            },
        };
        for _ in 0..64 {
            // SAFETY: accept4 on our listening socket; null address is allowed.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 returned a fresh fd nothing else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let Ok(cred) = sys::peer_cred(sock.as_fd()) else {
                continue;
            };
            let domain_uid = bound.map(xen_jail::domain_uid);
            if cred.uid != self.uid && Some(cred.uid) != domain_uid {
                warn_limited!(
                    self.log,
                    uid = cred.uid,
                    "refusing a client with another uid"
                );
                continue;
            }
            let id = self.next_client;
            self.next_client += 1;
            if self
                .epoll
                .add(sock.as_raw_fd(), TOKEN_CONN_BASE + id)
                .is_err()
            {
                continue;
            }
            self.clients.insert(
                id,
                Client {
                    sock,
                    role: Role::New,
                    cred,
                    bound,
                },
            );
        }
    }

    fn client_ready(&mut self, id: u64, _events: u32) {
        for _ in 0..32 {
            let Some(c) = self.clients.get(&id) else {
                return;
            };
            match sys::recv_msg(c.sock.as_fd(), true) {
                Ok(Some((bytes, fds))) => {
                    let reply = match serde_json::from_slice(&bytes) {
                        Ok(req) => self.handle(id, req, fds),
                        Err(e) => {
                            warn_limited!(self.log, client = id, error = %e, "malformed request");
                            Err(DaemonError::Invalid("malformed request".into()))
                        }
                    };
                    let (result, out_fds) = match reply {
                        Ok((r, f)) => (Ok(r), f),
                        Err(e) => (Err(e.wire()), Vec::new()),
                    };
                    // What the client is told is on disk first (a daemon
                    // crash after the reply must not forget it).
                    if self.dirty {
                        self.write_state();
                    }
                    self.send(id, &Message::Reply { result }, &out_fds);
                }
                Ok(None) => {
                    self.disconnect(id);
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return,
                Err(e) => {
                    warn_limited!(self.log, client = id, error = %e, "client socket error");
                    self.disconnect(id);
                    return;
                }
            }
        }
    }

    fn send(&mut self, id: u64, msg: &Message, fds: &[std::sync::Arc<OwnedFd>]) {
        let Some(c) = self.clients.get(&id) else {
            return;
        };
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let r = serde_json::to_vec(msg)
            .map_err(std::io::Error::other)
            .and_then(|data| sys::send_msg(c.sock.as_fd(), &data, &raw));
        if let Err(e) = r {
            warn_limited!(self.log, client = id, error = %e, "cannot send to a client; dropping it");
            self.disconnect(id);
        }
    }

    fn notify(&mut self, id: u64, event: ControlEvent) {
        self.send(id, &Message::Event { event }, &[]);
    }

    fn disconnect(&mut self, id: u64) {
        let Some(c) = self.clients.remove(&id) else {
            return;
        };
        let _ = self.epoll.delete(c.sock.as_raw_fd());
        match c.role {
            Role::Dom0 => {
                self.close_owned_ports(id);
                let at = Instant::now() + SWEEP_AFTER_DISCONNECT;
                self.sweep_at = Some(self.sweep_at.map_or(at, |t| t.min(at)));
            }
            Role::Guest(domid) => {
                if self
                    .domains
                    .get(&domid)
                    .is_some_and(|d| d.attached == Some(id))
                {
                    self.runtime_died(domid);
                }
            }
            Role::New => {}
        }
    }

    /// A guest's runtime went away (connection EOF or pidfd): a crash unless
    /// the domain had shut down.
    fn runtime_died(&mut self, domid: u16) {
        use xen_shim_proto::protocol::DomainState;
        let Some(d) = self.domains.get_mut(&domid) else {
            return;
        };
        if let Some(p) = d.pidfd.take() {
            let _ = self.epoll.delete(p.as_raw_fd());
        }
        let conn = d.attached.take();
        d.pid = None;
        d.pid_start = None;
        let changed = matches!(d.state, DomainState::Running | DomainState::Paused);
        if changed {
            d.state = DomainState::Crashed;
            tracing::warn!(domid, "domain runtime died without shutting down: crashed");
        }
        if let Some(c) = conn {
            if let Some(cl) = self.clients.remove(&c) {
                let _ = self.epoll.delete(cl.sock.as_raw_fd());
            }
        }
        if changed {
            self.fire_dom_exc();
        }
        self.save_state();
    }

    /// Signals every Dom0 port bound to `VIRQ_DOM_EXC`.
    fn fire_dom_exc(&self) {
        if let Some(d0) = self.domains.get(&0) {
            for p in d0.ports.iter().flatten() {
                if p.kind
                    == (domain::PortKind::Virq {
                        virq: xen_abi::xen::VIRQ_DOM_EXC,
                    })
                {
                    if let Some(f) = &p.fds {
                        let _ = sys::eventfd_signal(f.in_fd.as_raw_fd());
                    }
                }
            }
        }
    }

    fn close_owned_ports(&mut self, conn: u64) {
        let owned: Vec<u32> = self
            .domains
            .get(&0)
            .map(|d| {
                d.ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        p.as_ref()
                            .filter(|p| p.owner == Some(conn))
                            .map(|_| i as u32)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for p in &owned {
            self.close_port(0, *p);
        }
        if !owned.is_empty() {
            self.save_state();
        }
    }

    fn close_orphans(&mut self) {
        let orphans: Vec<(u32, String)> = self
            .domains
            .get(&0)
            .map(|d| {
                d.ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        p.as_ref()
                            .filter(|p| p.orphan)
                            .map(|p| (i as u32, format!("{:?}", p.kind)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (p, kind) in &orphans {
            tracing::info!(
                port = p,
                kind = %kind,
                "closing a Dom0 port nobody reclaimed after the restart"
            );
            self.close_port(0, *p);
        }
        if !orphans.is_empty() {
            self.save_state();
        }
    }

    /// Closes port `port` of `domid` (Xen's `evtchn_close`): the peer of an
    /// interdomain channel becomes unbound (remote = `domid`) and is told.
    fn close_port(&mut self, domid: u16, port: u32) {
        let Some(p) = self.domains.get_mut(&domid).and_then(|d| d.take_port(port)) else {
            return;
        };
        if let domain::PortKind::Interdomain {
            remote_dom,
            remote_port,
        } = p.kind
        {
            let mut tell = None;
            if let Some(rp) = self.domains.get_mut(&remote_dom).and_then(|rd| {
                let attached = rd.attached;
                rd.port_mut(remote_port).map(|rp| (rp, attached))
            }) {
                let (rp, attached) = rp;
                if rp.kind
                    == (domain::PortKind::Interdomain {
                        remote_dom: domid,
                        remote_port: port,
                    })
                {
                    rp.kind = domain::PortKind::Unbound { remote: domid };
                    tell = if remote_dom == 0 { rp.owner } else { attached };
                }
            }
            if let Some(c) = tell {
                self.notify(c, ControlEvent::PeerClosed { port: remote_port });
            }
        }
    }

    /// Creates a grant ledger of domain `domid` for the mapper process
    /// `pid` (request `MapperFds`), locked on the returned file, and watches
    /// `pid`.
    fn create_ledger(&mut self, domid: u16, pid: i32) -> Result<std::fs::File, DaemonError> {
        use xen_shim_dom0::grant::ledger::{ledger_name, Ledger, LedgerOwner};
        let d = self.domains.get(&domid).ok_or(DaemonError::Errno(
            libc::ESRCH,
            format!("no domain {domid}"),
        ))?;
        let owner = LedgerOwner {
            domid,
            instance: d.instance as u32,
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        };
        let (instance, max) = (d.instance, d.layout.max_grant_entries(1));
        let mut last = None;
        for _ in 0..16 {
            self.ledger_seq = self.ledger_seq.wrapping_add(1);
            let mut r = [0u8; 4];
            let _ = sys::random_bytes(&mut r);
            let n = (u64::from(u32::from_le_bytes(r)) << 32) | (self.ledger_seq & 0xffff_ffff);
            let path = self.ledger_dir.join(ledger_name(domid, instance, pid, n));
            match Ledger::create(&path, owner, max) {
                Ok(f) => {
                    self.watch_owner(pid);
                    return Ok(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(DaemonError::Io("create a grant ledger", e)),
            }
        }
        Err(DaemonError::Io(
            "create a grant ledger",
            last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EEXIST)),
        ))
    }

    /// Watches a ledger owner's death (not our own process's).
    fn watch_owner(&mut self, pid: i32) {
        if pid <= 0 || pid == std::process::id() as i32 || self.owners.contains_key(&pid) {
            return;
        }
        if let Ok(pfd) = sys::pidfd_open(pid) {
            let Ok(token) = u64::try_from(pid).map(|p| TOKEN_OWNER_BASE + p) else {
                return;
            };
            if self.epoll.add(pfd.as_raw_fd(), token).is_ok() {
                self.owners.insert(pid, pfd);
            }
        }
    }

    /// Removes the ledgers of a destroyed domain instance.
    fn remove_ledgers(&self, domid: u16, instance: u64) {
        for (p, d, i) in xen_shim_dom0::grant::ledger::list_ledgers(&self.ledger_dir) {
            if d == domid && i == instance {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Finds the ledgers whose mapper is gone (their lock is free) and drops
    /// their pins (gntdev's release, for a process that closed its handle or
    /// died): see [`xen_shim_dom0::grant::ledger`]. Ledgers of domains that
    /// no longer exist are removed; owners of live ones are watched.
    fn sweep_ledgers(&mut self) {
        use xen_shim_dom0::grant::ledger::{list_ledgers, reclaim, GrantTableViewDyn, Ledger};
        self.last_sweep = Instant::now();
        self.sweep_at = None;
        let mut by_dom: BTreeMap<(u16, u64), Vec<PathBuf>> = BTreeMap::new();
        for (p, d, i) in list_ledgers(&self.ledger_dir) {
            by_dom.entry((d, i)).or_default().push(p);
        }
        let mut watch = Vec::new();
        let mut retry = false;
        for ((domid, instance), paths) in by_dom {
            let Some(dom) = self.domains.get(&domid).filter(|d| d.instance == instance) else {
                for p in paths {
                    let _ = std::fs::remove_file(p);
                }
                continue;
            };
            let mut dead = Vec::new();
            let mut held = Vec::new();
            for p in paths {
                let Ok(f) = sys::open_shm_file(&p) else {
                    continue;
                };
                if Ledger::try_lock(&f) {
                    dead.push((p, f));
                } else {
                    held.push((p, f));
                }
            }
            // A held ledger is read only when a dead one of the same domain
            // needs the live mappings, or to learn an owner not watched yet
            // (its pid is in the name): mapping every ledger and reading its
            // owner's /proc entry on every sweep cost 1,000 files at 256
            // guests, every 2 s and after every Dom0 client's disconnection,
            // with every other request waiting.
            let mut live = Vec::new();
            let mut unreadable = false;
            for (p, f) in held {
                let watched =
                    ledger_owner_pid(&p).is_some_and(|pid| self.owners.contains_key(&pid));
                if dead.is_empty() && watched {
                    continue;
                }
                match Ledger::map(f) {
                    Ok(l) => live.push(l),
                    Err(e) => {
                        warn_limited!(self.log, path = %p.display(), error = %e, "unreadable live grant ledger");
                        unreadable = true;
                    }
                }
            }
            for l in &live {
                let o = l.owner();
                if o.start_time != 0 && process_start_time(o.pid) == Some(o.start_time) {
                    watch.push(o.pid);
                }
            }
            if dead.is_empty() || unreadable {
                continue;
            }
            let table = dom.foreign.table().ok();
            for (p, f) in dead {
                let l = match Ledger::map(f) {
                    Ok(l) => l,
                    Err(_) => {
                        // Never handed out complete: nothing recorded.
                        let _ = std::fs::remove_file(&p);
                        continue;
                    }
                };
                let r = reclaim(
                    &l,
                    &live,
                    dom.active(),
                    table.as_ref().map(|t| t as &dyn GrantTableViewDyn),
                    dom.foreign.dirty_log(),
                );
                if r.grefs > 0 {
                    let o = l.owner();
                    tracing::info!(
                        domid,
                        pid = o.pid,
                        grants = r.grefs,
                        released = r.released,
                        busy = r.busy,
                        "dropped the grant mappings of a mapper that went away"
                    );
                }
                if r.busy == 0 {
                    let _ = std::fs::remove_file(&p);
                } else {
                    retry = true;
                }
            }
        }
        for pid in watch {
            self.watch_owner(pid);
        }
        if retry {
            self.sweep_at = Some(Instant::now() + Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ledger_owner_pid_read_from_the_mappers_file_name() {
        let name = xen_shim_dom0::grant::ledger::ledger_name(7, 42, 1234, 3);
        let p = Path::new("/dev/shm/x/grants").join(name);
        assert_eq!(ledger_owner_pid(&p), Some(1234));
        assert_eq!(ledger_owner_pid(Path::new("/dev/shm/x/dom7-42.mem")), None);
        assert_eq!(ledger_owner_pid(Path::new("dom7-42.x.3.ledger")), None);
    }
}
