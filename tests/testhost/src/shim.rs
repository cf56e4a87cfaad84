//! The shim-only Dom0 of the cross-process tests and benchmarks (no
//! xenstored, no `xl`): a `xen-shimd` daemon on private paths, run in a
//! thread of the calling process ([`ShimDaemon`]); [`ShimDom0`], that
//! daemon with the Dom0 handles of the test process (control, gntdev,
//! evtchn); and [`GuestProcess`], a guest program on the PV runtime (the
//! `xen-pvguest` binary, a demo) started as a fresh domain the way the
//! toolstack does (create the domain, pass the domid and one-time token in
//! the environment, read the program's report lines, destroy the domain
//! when dropped).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::xen::domid_t;
use xen_pvguest::line::Line;
use xen_shim_dom0::{Control, Evtchn, Gntdev};
use xen_shim_proto::evtchn::EvtchnError;
use xen_shim_proto::protocol::{ControlError, DomainConfig, DomainInfo, DomainState};
use xen_shimd::{self as daemon, DaemonConfig};

/// Timeout of each step of the shim-only tests.
pub const STEP: Duration = Duration::from_secs(30);

/// Guest RAM of the shim-only tests' domains, MiB.
pub const MEMORY_MIB: u64 = 8;

/// Why a test fixture failed.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A file-system or process operation failed.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// The daemon did not come up.
    #[error("the shim daemon did not start listening on {0}")]
    DaemonDown(PathBuf),
    /// A control operation failed.
    #[error("control operation failed")]
    Control(#[from] ControlError),
    /// The guest did not print the expected line in time.
    #[error("no `{tag}` line from domain {domid} within {timeout:?} (saw: {seen:?})")]
    NoLine {
        /// Domain.
        domid: domid_t,
        /// Expected tag.
        tag: String,
        /// Timeout.
        timeout: Duration,
        /// Lines seen meanwhile.
        seen: Vec<String>,
    },
    /// The guest's line lacked a field.
    #[error("line `{0}` lacks field {1}")]
    Field(String, &'static str),
    /// The test does not run as root.
    #[error(
        "these tests run the shim daemon and need root: run them as root (sudo -E tests/run.sh)"
    )]
    NotRoot,
    /// Opening a Dom0 device of the shim failed.
    #[error("cannot open the Dom0 {0}")]
    Open(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync + 'static>,
    ),
    /// A port did not fire in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An event-channel operation failed.
    #[error("{what} failed")]
    Evtchn {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: EvtchnError,
    },
    /// A domain did not reach a state in time.
    #[error("domain {domid} never reached {what}: {info:?}")]
    State {
        /// Domain.
        domid: domid_t,
        /// The state waited for.
        what: String,
        /// Its last info (`None`: gone).
        info: Option<Box<DomainInfo>>,
    },
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name unique in this machine for this run: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `xen-shimd` on a private socket, state directory and memory directory,
/// served by a thread of this process.
///
/// The daemon's `run` has no stop handle (it stops on SIGTERM, which would
/// end this whole process), so the thread lives until the process exits; dropping
/// this value removes its directories (destroy the domains first).
#[derive(Debug)]
pub struct ShimDaemon {
    dir: PathBuf,
    mem_dir: PathBuf,
    socket: PathBuf,
}

impl ShimDaemon {
    /// Starts a daemon; `tag` goes into its paths. Waits until it answers.
    pub fn start(tag: &str) -> Result<Self, TestkitError> {
        let name = unique_name(tag);
        let dir = std::env::temp_dir().join(format!("xen-shim-{name}"));
        let mem_dir = PathBuf::from("/dev/shm").join(format!("xen-shim-{name}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| TestkitError::Io("create the daemon's directory", e))?;
        let socket = dir.join("control.sock");
        let cfg = DaemonConfig {
            socket: socket.clone(),
            state_dir: dir.join("state"),
            mem_dir: mem_dir.clone(),
            ..DaemonConfig::default()
        };
        let s = socket.clone();
        std::thread::Builder::new()
            .name(format!("xen-shimd-{name}"))
            .spawn(move || {
                if let Err(e) = daemon::run(cfg) {
                    tracing::error!(error = %e, socket = %s.display(), "test daemon stopped");
                }
            })
            .map_err(|e| TestkitError::Io("start the daemon thread", e))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Control::connect(&socket).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::DaemonDown(socket));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Self {
            dir,
            mem_dir,
            socket,
        })
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory of guest memory files.
    pub fn mem_dir(&self) -> &Path {
        &self.mem_dir
    }

    /// A new Dom0 control connection.
    pub fn control(&self) -> Result<Control, TestkitError> {
        Ok(Control::connect(&self.socket)?)
    }
}

impl Drop for ShimDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.mem_dir);
    }
}

/// A PV runtime process running as a new domain.
#[derive(Debug)]
pub struct GuestProcess {
    control: Arc<Control>,
    domid: domid_t,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    destroyed: bool,
}

impl GuestProcess {
    /// Creates a PV domain `name` with `memory_mib` MiB and starts `exe`
    /// (the `xen-pvguest` binary) with `args` as its runtime, with
    /// `XEN_SHIM_SOCKET`, `XEN_SHIM_DOMID` and `XEN_SHIM_TOKEN` set.
    pub fn spawn(
        control: Arc<Control>,
        socket: &Path,
        name: &str,
        memory_mib: u64,
        exe: &Path,
        args: &[&str],
    ) -> Result<Self, TestkitError> {
        let created = control.create_domain(&DomainConfig::pv(name, memory_mib))?;
        let spawned = Command::new(exe)
            .args(args)
            .env(xen_shim_proto::ENV_SOCKET, socket)
            .env(xen_shim_proto::ENV_DOMID, created.domid.to_string())
            .env(xen_shim_proto::ENV_TOKEN, &created.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = control.destroy_domain(created.domid);
                return Err(TestkitError::Io("start the guest runtime", e));
            }
        };
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let spawned = std::thread::Builder::new()
                .name(format!("guest-{}-stdout", created.domid))
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                let _ = child.kill();
                let _ = child.wait();
                let _ = control.destroy_domain(created.domid);
                return Err(TestkitError::Io("start the stdout reader", e));
            }
        }
        Ok(Self {
            control,
            domid: created.domid,
            child,
            lines: rx,
            seen: Vec::new(),
            destroyed: false,
        })
    }

    /// The domain id.
    pub fn domid(&self) -> domid_t {
        self.domid
    }

    /// The runtime's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The control connection.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Waits for the next line whose tag is `tag`, skipping others (kept for
    /// error messages).
    pub fn expect(&mut self, tag: &str, timeout: Duration) -> Result<Line, TestkitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(s) => {
                    let parsed = Line::parse(&s);
                    self.seen.push(s);
                    if let Some(l) = parsed {
                        if l.tag == tag {
                            return Ok(l);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(TestkitError::NoLine {
                        domid: self.domid,
                        tag: tag.to_owned(),
                        timeout,
                        seen: self.seen.clone(),
                    })
                }
            }
        }
    }

    /// Lines seen so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits up to `timeout` for the runtime to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, TestkitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .try_wait()
                .map_err(|e| TestkitError::Io("wait for the runtime", e))?
            {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Destroys the domain (the daemon kills the runtime) and reaps the
    /// process.
    pub fn destroy(&mut self) -> Result<ExitStatus, TestkitError> {
        if !self.destroyed {
            self.control.destroy_domain(self.domid)?;
            self.destroyed = true;
        }
        match self.wait_exit(Duration::from_secs(10))? {
            Some(st) => Ok(st),
            None => {
                let _ = self.child.kill();
                self.child
                    .wait()
                    .map_err(|e| TestkitError::Io("reap the runtime", e))
            }
        }
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        if !self.destroyed {
            let _ = self.control.destroy_domain(self.domid);
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Fails unless the process runs as root (the daemon serves only its own
/// uid and the tests run it as root, as the CI does; `/dev/shm` must be
/// writable).
pub fn require_root() -> Result<(), TestkitError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(TestkitError::NotRoot)
    }
}

/// Waits until `port` fires on `evtchn` (then unmasks it, as a user of
/// `/dev/xen/evtchn` does after reading a port).
pub fn wait_port(
    evtchn: &Evtchn,
    port: evtchn_port_t,
    timeout: Duration,
    what: &'static str,
) -> Result<(), TestkitError> {
    let ev = |what| move |source| TestkitError::Evtchn { what, source };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TestkitError::Timeout(what));
        }
        let fired = evtchn
            .pending(Some(left))
            .map_err(ev("waiting for events"))?;
        let mut mine = false;
        for p in fired {
            evtchn.unmask(p).map_err(ev("unmasking"))?;
            mine |= p == port;
        }
        if mine {
            return Ok(());
        }
    }
}

/// A private daemon and the Dom0 handles of the test process to it.
#[derive(Debug)]
pub struct ShimDom0 {
    /// The daemon.
    pub daemon: ShimDaemon,
    /// Dom0's control connection.
    pub control: Arc<Control>,
    /// Dom0's grant mapper.
    pub gntdev: Gntdev,
    /// Dom0's event channels.
    pub evtchn: Evtchn,
}

impl ShimDom0 {
    /// A fresh daemon on private paths (`tag` goes into them) and Dom0
    /// handles to it. Needs root. The daemon runs in this process: its logs
    /// go to the test's output (shown for failing tests), at `RUST_LOG`'s
    /// level (default warn).
    pub fn start(tag: &str) -> Result<ShimDom0, TestkitError> {
        require_root()?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let daemon = ShimDaemon::start(tag)?;
        let control = Arc::new(daemon.control()?);
        let gntdev =
            Gntdev::open(daemon.socket()).map_err(|e| TestkitError::Open("gntdev", e.into()))?;
        let evtchn =
            Evtchn::open(daemon.socket()).map_err(|e| TestkitError::Open("evtchn", e.into()))?;
        Ok(ShimDom0 {
            daemon,
            control,
            gntdev,
            evtchn,
        })
    }

    /// Starts the guest program `exe` with `args` as a new domain of
    /// [`MEMORY_MIB`].
    pub fn guest(&self, exe: &Path, args: &[&str]) -> Result<GuestProcess, TestkitError> {
        GuestProcess::spawn(
            Arc::clone(&self.control),
            self.daemon.socket(),
            &unique_name("pvguest"),
            MEMORY_MIB,
            exe,
            args,
        )
    }

    /// The domain's info, `None` once it is gone.
    pub fn info(&self, domid: domid_t) -> Option<DomainInfo> {
        self.control.domain_info(domid).ok()
    }

    /// Waits (up to [`STEP`]) until `pred` holds for the domain's state.
    pub fn wait_state(
        &self,
        domid: domid_t,
        what: &str,
        pred: impl Fn(Option<&DomainState>) -> bool,
    ) -> Result<(), TestkitError> {
        let deadline = Instant::now() + STEP;
        loop {
            let info = self.info(domid);
            if pred(info.as_ref().map(|i| &i.state)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::State {
                    domid,
                    what: what.to_owned(),
                    info: info.map(Box::new),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The scheduler state letter of a process (`R`, `S`, `T`...), from
/// `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — comm may contain spaces; the state follows the last ')'.
    let after = &s[s.rfind(')')? + 1..];
    after.trim_start().chars().next()
}
