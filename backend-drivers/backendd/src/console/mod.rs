//! consback: the primary console of every guest, as xenconsoled serves it.
//!
//! Xen's primary console has no backend directory of its own that
//! xenconsoled reads: xenconsoled watches `@introduceDomain` and
//! `@releaseDomain` and, for each domain, reads
//! `/local/domain/<id>/console/{ring-ref,port}` (written by the toolstack)
//! and `name`. [`Consoles`] does the same on its own xenstore connection
//! (its watch events never mix with the backend tree's): a rescan at start,
//! on each of the two watches, 1 s and 4 s after each event, and every
//! 30 s (level-triggered: a lost or coalesced event cannot leave a
//! console unserved for long), starts a
//! [`ConsoleHandle`] per domain that has a console, and stops it (after a
//! last drain of the ring) once the domain's home is gone. A console that
//! failed (a corrupt ring) stays failed until its domain goes: it is not
//! restarted for the same domain and port. The log's name is the domain's
//! `name` when serving starts (sanitized: the node is guest-writable).
//!
//! Each console writes `/local/domain/<id>/console/tty` (the pty slave,
//! as xenconsoled does; removed again when the console fails or the service
//! stops, so it never names a closed pty whose number may be reused) and
//! appends every byte of the guest's output to
//! `<log_dir>/guest-<name>.log`. A restarted service picks every running
//! domain up again: the ring's indices live in the guest's page, so no
//! output is lost; the pty (and `console/tty`) is new.

pub mod budget;
pub mod device;
pub mod outbuf;
pub mod pty;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the watch loop looks for failed consoles without an event.
const REAP: Duration = Duration::from_secs(1);
/// How often every domain's console nodes are read without an event (a
/// safety net: a domain's introduction and release fire the watches). It
/// was every poll (500 ms): three xenstore reads per domain each time,
/// 1,500 requests a second at 256 guests.
const RESCAN_SAFETY: Duration = Duration::from_secs(30);
/// Rescans after each watch event, counted from it. `@releaseDomain` can
/// fire before the toolstack has removed the domain's home (`xl destroy`
/// destroys the domain, then removes its nodes): the rescan on the event
/// itself still sees the console, and nothing else fires when the home
/// goes. Without these, a destroyed guest's console (its ring mapped, its
/// memory files open) lived until the next [`RESCAN_SAFETY`].
const SETTLE: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];

use xen_shim_dom0::Gntdev;
use xenstore_client::{Client, XsClientError, XsOps};

pub use device::{ConsoleFailure, ConsoleHandle, ConsoleSpec, ConsoleStats};

use xen_diag::{warn_limited, ErrorChain};

use crate::GUEST_LOG;

/// Token of the `@introduceDomain` watch.
pub const INTRODUCE_TOKEN: &str = "console-introduce";
/// Token of the `@releaseDomain` watch.
pub const RELEASE_TOKEN: &str = "console-release";
/// Where guest console logs go by default (xenconsoled's
/// `--log-dir`, `/var/log/xen/console`).
pub const DEFAULT_LOG_DIR: &str = "/var/log/xen/console";
/// Overrides [`DEFAULT_LOG_DIR`] (as `xl` reads it).
pub const ENV_LOG_DIR: &str = "XEN_CONSOLE_LOGDIR";
/// Default most bytes kept for a pty nobody reads (xenconsoled's
/// `buffer-limit` default is 1 MiB per domain).
pub const DEFAULT_PTY_LIMIT: usize = 1 << 20;
/// Most domains looked at in one rescan.
pub const MAX_DOMAINS: usize = 4096;

/// Errors of the console service.
#[derive(Debug, thiserror::Error)]
pub enum ConsolesError {
    /// Setting a watch failed.
    #[error("cannot watch {path}")]
    Watch {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: XsClientError,
    },
    /// xenstored closed the connection.
    #[error("xenstored closed the connection")]
    Disconnected,
}

/// Settings of the console service.
#[derive(Debug, Clone)]
pub struct ConsolesConfig {
    /// This (backend) domain, whose own console is not served.
    pub domid: u16,
    /// The directory of the `guest-<name>.log` files.
    pub log_dir: PathBuf,
    /// The shim's control socket.
    pub shim_socket: PathBuf,
    /// Rescan interval without events.
    pub poll: Duration,
    /// Most bytes queued for a pty nobody reads.
    pub pty_limit: usize,
}

impl ConsolesConfig {
    /// The log directory from `$XEN_CONSOLE_LOGDIR`, else the default.
    #[must_use]
    pub fn default_log_dir() -> PathBuf {
        std::env::var_os(ENV_LOG_DIR)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_LOG_DIR), PathBuf::from)
    }
}

/// A domain's console as xenstore describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleNodes {
    /// `console/port`.
    pub port: u32,
    /// `name` (the domain id when there is none).
    pub name: String,
}

/// A log file name for a guest name: `guest-<name>.log`, with anything
/// but `[A-Za-z0-9._-]` replaced by `_` (the name is guest-writable
/// through xenstore and must never name another directory).
#[must_use]
pub fn log_file_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.is_empty() || safe.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        safe
    };
    format!("guest-{safe}.log")
}

/// Parses `console/port`: a decimal port, not 0.
#[must_use]
pub fn parse_port(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&p| p != 0)
}

/// What the service says about one domain's console.
#[derive(Debug, Clone)]
pub struct ConsoleStatus {
    /// The pty slave (`console/tty`), while serving.
    pub tty: Option<PathBuf>,
    /// Why it failed, once it did.
    pub failed: Option<String>,
    /// Its counters.
    pub stats: Arc<ConsoleStats>,
}

/// The consoles' status by domain, updated on every rescan.
pub type StatusBoard = Arc<Mutex<BTreeMap<u16, ConsoleStatus>>>;

struct Entry {
    nodes: ConsoleNodes,
    /// `None` once it failed (kept so it is not restarted).
    handle: Option<ConsoleHandle>,
    status: ConsoleStatus,
}

/// The console service; see the [module docs](self).
pub struct Consoles {
    xs: Arc<Client>,
    cfg: ConsolesConfig,
    gntdev: OnceLock<Gntdev>,
    live: HashMap<u16, Entry>,
    stop: Arc<AtomicBool>,
    board: StatusBoard,
}

impl std::fmt::Debug for Consoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consoles")
            .field("cfg", &self.cfg)
            .field("domains", &self.live.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Consoles {
    /// The service over its own xenstore connection `xs`.
    #[must_use]
    pub fn new(xs: Arc<Client>, cfg: ConsolesConfig) -> Self {
        Self {
            xs,
            cfg,
            gntdev: OnceLock::new(),
            live: HashMap::new(),
            stop: Arc::new(AtomicBool::new(false)),
            board: Arc::default(),
        }
    }

    /// The status board (shared; updated on every rescan).
    #[must_use]
    pub fn status(&self) -> StatusBoard {
        Arc::clone(&self.board)
    }

    fn publish(&self) {
        let mut b = self
            .board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.clear();
        for (&d, e) in &self.live {
            b.insert(d, e.status.clone());
        }
    }

    /// A flag that stops [`Consoles::run`] within one poll interval.
    #[must_use]
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The domains with a running console.
    #[must_use]
    pub fn serving(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .live
            .iter()
            .filter(|(_, e)| e.handle.as_ref().is_some_and(|h| !h.is_finished()))
            .map(|(&d, _)| d)
            .collect();
        v.sort_unstable();
        v
    }

    /// Runs until the stop flag is set or xenstored goes away; the
    /// consoles are stopped (after a last drain) on the way out.
    ///
    /// # Errors
    /// [`ConsolesError::Watch`] if a watch cannot be set,
    /// [`ConsolesError::Disconnected`] if xenstored goes away.
    pub fn run(&mut self) -> Result<(), ConsolesError> {
        for (path, token) in [
            ("@introduceDomain", INTRODUCE_TOKEN),
            ("@releaseDomain", RELEASE_TOKEN),
        ] {
            self.xs
                .watch(path, token)
                .map_err(|source| ConsolesError::Watch {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let r = self.event_loop();
        for (d, e) in std::mem::take(&mut self.live) {
            if let Some(h) = e.handle {
                let _ = h.stop();
                self.forget_tty(d);
            }
        }
        r
    }

    fn event_loop(&mut self) -> Result<(), ConsolesError> {
        self.rescan();
        let mut rescanned = Instant::now();
        // The follow-up rescans still due after the last event (SETTLE).
        let mut settle: Vec<Instant> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let base = self.cfg.poll.max(REAP);
            let wait = settle
                .first()
                .map_or(base, |t| {
                    t.saturating_duration_since(Instant::now()).min(base)
                })
                .max(Duration::from_millis(10));
            let event = match self.xs.wait_watch_event(Some(wait)) {
                Ok(ev) => ev.is_some(),
                Err(XsClientError::Disconnected) => return Err(ConsolesError::Disconnected),
                Err(e) => {
                    warn_limited!(GUEST_LOG, error = %e, "console watch wait failed");
                    std::thread::sleep(self.cfg.poll);
                    true
                }
            };
            // A domain comes and goes with its watch event; the full rescan
            // (every domain's nodes read) otherwise only every
            // RESCAN_SAFETY, and failed consoles are reaped meanwhile.
            let now = Instant::now();
            let settling = settle.first().is_some_and(|t| now >= *t);
            if event {
                settle = SETTLE.iter().map(|d| now + *d).collect();
            } else if settling {
                settle.remove(0);
            }
            if rescanned.elapsed() >= RESCAN_SAFETY {
                self.rescan();
                rescanned = Instant::now();
            } else if event || settling {
                self.rescan_changed();
            } else {
                self.reap();
            }
        }
        Ok(())
    }

    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.xs.read_opt(path).ok().flatten()
    }

    /// The console nodes of `domid`, if it has a console.
    fn nodes(&self, domid: u16) -> Option<ConsoleNodes> {
        let home = format!("/local/domain/{domid}");
        let port = parse_port(&self.read(&format!("{home}/console/port"))?)?;
        // ring-ref is read as xenconsoled does, but the page is mapped
        // through the reserved grant entry, whatever the guest wrote.
        self.read(&format!("{home}/console/ring-ref"))?;
        let name = self
            .read(&format!("{home}/name"))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| domid.to_string());
        Some(ConsoleNodes { port, name })
    }

    /// Removes `console/tty` (`rm` never recreates a removed domain).
    fn forget_tty(&self, domid: u16) {
        match self.xs.rm(&format!("/local/domain/{domid}/console/tty")) {
            Ok(()) => {}
            Err(e) if e.is_enoent() => {}
            Err(e) => warn_limited!(GUEST_LOG, domid, error = %e, "cannot remove console/tty"),
        }
    }

    fn gntdev(&self) -> Option<&Gntdev> {
        if let Some(g) = self.gntdev.get() {
            return Some(g);
        }
        match Gntdev::open(&self.cfg.shim_socket) {
            Ok(g) => Some(self.gntdev.get_or_init(|| g)),
            Err(e) => {
                warn_limited!(GUEST_LOG, error = %e, "cannot open the shim's gntdev for consoles");
                None
            }
        }
    }

    /// Brings the running consoles in line with xenstore: every domain's
    /// console nodes read (a new incarnation under a served domid is seen
    /// by its port).
    pub fn rescan(&mut self) {
        self.rescan_with(true);
    }

    /// What a domain's introduction or release changes: the domains listed
    /// and not served are read and started, the served ones no longer
    /// listed stopped; the served ones still listed are not read. A full
    /// [`Consoles::rescan`] read three nodes of every domain on every event:
    /// with guests created one after another, three rescans each (the
    /// event and its [`SETTLE`] follow-ups), 2,300 xenstore reads for the
    /// 256th guest, on the single-threaded xenstored its own devices wait
    /// for.
    pub fn rescan_changed(&mut self) {
        self.rescan_with(false);
    }

    fn rescan_with(&mut self, full: bool) {
        let mut domains: Vec<u16> = match self.xs.directory("/local/domain") {
            Ok(v) => v.iter().filter_map(|d| d.parse().ok()).collect(),
            Err(e) if e.is_enoent() => Vec::new(),
            Err(e) => {
                warn_limited!(GUEST_LOG, error = %e, "cannot list /local/domain");
                return;
            }
        };
        domains.retain(|&d| d != self.cfg.domid);
        domains.truncate(MAX_DOMAINS);
        let mut present = HashMap::new();
        for d in to_read(&domains, &self.live, full) {
            if let Some(n) = self.nodes(d) {
                present.insert(d, n);
            }
        }
        // Served and still listed, not read again: as they are.
        if !full {
            for d in &domains {
                if let Some(e) = self.live.get(d) {
                    present.entry(*d).or_insert_with(|| e.nodes.clone());
                }
            }
        }
        // Gone, or a new incarnation (another port): stop. The name is
        // taken once, when serving starts (as xenconsoled does): a guest
        // renaming itself later must not move its log onto another's.
        let stale: Vec<u16> = self
            .live
            .iter()
            .filter(|(d, e)| present.get(d).map(|n| n.port) != Some(e.nodes.port))
            .map(|(&d, _)| d)
            .collect();
        for d in stale {
            if let Some(e) = self.live.remove(&d) {
                if let Some(h) = e.handle {
                    let _ = h.stop();
                    // Its ring's domain out of the gntdev's cache (else its
                    // files stay mapped and open).
                    if let Some(g) = self.gntdev.get() {
                        g.release_domain(d);
                    }
                    tracing::info!(domid = d, "console stopped");
                }
            }
        }
        self.reap_failed();
        for (d, nodes) in present {
            if self.live.contains_key(&d) {
                continue;
            }
            self.start(d, nodes);
        }
        self.publish();
    }

    /// Records the consoles that failed (their threads ended), without
    /// reading xenstore.
    fn reap(&mut self) {
        if self.reap_failed() {
            self.publish();
        }
    }

    /// Failed ones stay failed (no restart loop on a hostile guest), and
    /// their closed pty is no longer named (its number may be reused).
    /// Returns whether one was found.
    fn reap_failed(&mut self) -> bool {
        let mut failed = Vec::new();
        for (d, e) in &mut self.live {
            if e.handle.as_ref().is_some_and(ConsoleHandle::is_finished) {
                if let Some(mut h) = e.handle.take() {
                    let why = match h.join() {
                        Ok(()) => "the console thread ended".to_owned(),
                        Err(f) => ErrorChain(&f).to_string(),
                    };
                    e.status.tty = None;
                    e.status.failed = Some(why);
                    failed.push(*d);
                }
            }
        }
        let found = !failed.is_empty();
        for d in failed {
            self.forget_tty(d);
        }
        found
    }

    fn start(&mut self, domid: u16, nodes: ConsoleNodes) {
        let Some(gntdev) = self.gntdev() else { return };
        if let Err(e) = std::fs::create_dir_all(&self.cfg.log_dir) {
            warn_limited!(GUEST_LOG, dir = %self.cfg.log_dir.display(), error = %e, "cannot create the console log directory");
        }
        let spec = ConsoleSpec {
            domid,
            name: nodes.name.clone(),
            remote_port: nodes.port,
            log_path: self.cfg.log_dir.join(log_file_name(&nodes.name)),
            pty_limit: self.cfg.pty_limit,
        };
        match ConsoleHandle::start(spec, gntdev, &self.cfg.shim_socket, &self.xs) {
            Ok(h) => {
                tracing::info!(domid, tty = %h.tty().display(), "console started");
                let status = ConsoleStatus {
                    tty: Some(h.tty().to_path_buf()),
                    failed: None,
                    stats: Arc::clone(h.stats()),
                };
                self.live.insert(
                    domid,
                    Entry {
                        nodes,
                        handle: Some(h),
                        status,
                    },
                );
            }
            Err(e) => {
                // The domain may still be being built (its runtime not yet
                // attached): a later rescan tries again.
                tracing::debug!(domid, error = %ErrorChain(&e), "console not started");
                if matches!(e, ConsoleFailure::Ring(_)) {
                    warn_limited!(GUEST_LOG, domid, error = %ErrorChain(&e), "console refused");
                    self.live.insert(
                        domid,
                        Entry {
                            nodes,
                            handle: None,
                            status: ConsoleStatus {
                                tty: None,
                                failed: Some(ErrorChain(&e).to_string()),
                                stats: Arc::default(),
                            },
                        },
                    );
                }
            }
        }
    }
}

/// The domains of `listed` whose console nodes a rescan reads: all of
/// them (`full`), or those not served yet.
fn to_read(listed: &[u16], live: &HashMap<u16, Entry>, full: bool) -> Vec<u16> {
    listed
        .iter()
        .copied()
        .filter(|d| full || !live.contains_key(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(domid: u16) -> (u16, Entry) {
        (
            domid,
            Entry {
                nodes: ConsoleNodes {
                    port: 2,
                    name: format!("g{domid}"),
                },
                handle: None,
                status: ConsoleStatus {
                    tty: None,
                    failed: None,
                    stats: Arc::default(),
                },
            },
        )
    }

    #[test]
    fn test_event_rescan_reads_only_the_domains_not_served() {
        let live: HashMap<u16, Entry> = (1..=255).map(served).collect();
        let listed: Vec<u16> = (1..=256).collect();
        assert_eq!(to_read(&listed, &live, false), vec![256]);
        assert_eq!(to_read(&listed, &live, true), listed);
        assert!(to_read(&[3, 4], &live, false).is_empty());
    }

    #[test]
    fn test_log_file_name_plain_name_kept() {
        assert_eq!(log_file_name("pv-disk_1.a"), "guest-pv-disk_1.a.log");
    }

    #[test]
    fn test_log_file_name_hostile_name_cannot_escape_dir() {
        assert_eq!(log_file_name("../../etc/x"), "guest-.._.._etc_x.log");
        assert_eq!(log_file_name(".."), "guest-_.log");
        assert_eq!(log_file_name(""), "guest-_.log");
        assert!(log_file_name(&"a".repeat(1000)).len() < 200);
    }

    #[test]
    fn test_parse_port_rejects_garbage_and_zero() {
        assert_eq!(parse_port(b"5"), Some(5));
        assert_eq!(parse_port(b" 17\n"), Some(17));
        assert_eq!(parse_port(b"0"), None);
        assert_eq!(parse_port(b"-1"), None);
        assert_eq!(parse_port(b"\xff"), None);
        assert_eq!(parse_port(b"99999999999"), None);
    }
}
