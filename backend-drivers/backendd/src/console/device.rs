//! One guest console: the domain's `xencons_interface` page (its reserved
//! grant entry `GNTTAB_RESERVED_CONSOLE`, mapped read-write), its console
//! event channel (bound interdomain to the port in `console/port`), a pty
//! and the log file, served by one thread.
//!
//! Each round (on an event, on pty readiness, or every tick):
//! - guest output: `out` is drained (at most [`MAX_ROUNDS`] ring-fulls per
//!   round), every byte appended to the log, then queued for the pty
//!   ([`OutBuf`]: the oldest bytes are dropped beyond the limit when nobody
//!   reads the pty), the guest signalled that there is room;
//! - input: what the pty has is read, at most what `in` has room for, and
//!   put in `in`; the guest signalled.
//!
//! A corrupt index from the guest fails only this console (the thread ends
//! with [`ConsoleFailure`], logged rate-limited); an event storm is
//! throttled by [`EventBudget`] (xenconsoled's 30 events per 200 ms, plus
//! one per 512 bytes of output drained: past that the port stays masked and
//! out of the poll set until the period ends). The ring is drained every [`TICK`] anyway (a
//! safety net: the guest's event and a stop wake the thread), and every
//! [`FLOWING`] while output keeps coming.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::GNTTAB_RESERVED_CONSOLE;
use xen_ring::bytes::ConsRing;
use xen_ring::{RingError, SharedRing};
use xen_shim_dom0::GrantMapping;
use xen_shim_dom0::{Evtchn, Gntdev};
use xenstore_client::{Client, XsOps};

use super::budget::{EventBudget, Unmask};
use super::outbuf::OutBuf;
use super::pty::Pty;
use xen_diag::{warn_limited, ErrorChain};

use crate::GUEST_LOG;

/// Ring-fulls of output taken per round before input gets a turn.
pub const MAX_ROUNDS: usize = 8;
/// How often the ring is looked at without events (a safety net; it was
/// 200 ms: five wake-ups a second from every idle guest's console).
pub const TICK: Duration = Duration::from_secs(5);
/// How soon the ring is looked at again without an event after a round
/// that took output.
pub const FLOWING: Duration = Duration::from_millis(1);

/// Why a console could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleFailure {
    /// The console page could not be mapped.
    #[error("cannot map the console page of domain {domid}")]
    Map {
        /// The domain.
        domid: u16,
        /// Why.
        #[source]
        source: xen_shim_proto::GrantError,
    },
    /// The mapping is not one writable, aligned page.
    #[error("the console mapping of domain {0} is not a writable page")]
    BadMapping(u16),
    /// The event channel could not be opened or bound.
    #[error("cannot bind the console port {port} of domain {domid}")]
    Bind {
        /// The domain.
        domid: u16,
        /// Its port.
        port: u32,
        /// Why.
        #[source]
        source: xen_shim_proto::EvtchnError,
    },
    /// The pty or the log could not be opened.
    #[error("cannot {what}")]
    Io {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest wrote an impossible ring index.
    #[error("the guest corrupted its console ring: {0:?}")]
    Ring(RingError),
    /// Waiting for events failed.
    #[error("waiting for console events failed")]
    Poll(#[source] Errno),
}

/// What a console needs to start.
#[derive(Debug, Clone)]
pub struct ConsoleSpec {
    /// The guest domain.
    pub domid: u16,
    /// Its name (the log is `guest-<name>.log`).
    pub name: String,
    /// The guest's console port (`console/port`).
    pub remote_port: u32,
    /// The log file.
    pub log_path: PathBuf,
    /// Most bytes queued for a pty nobody reads.
    pub pty_limit: usize,
}

/// Counters of one console, readable while it runs.
#[derive(Debug, Default)]
pub struct ConsoleStats {
    /// Bytes taken from the guest's `out`.
    pub bytes_out: AtomicU64,
    /// Bytes put in the guest's `in`.
    pub bytes_in: AtomicU64,
    /// Bytes dropped because nobody read the pty.
    pub pty_dropped: AtomicU64,
    /// Events taken from the port.
    pub events: AtomicU64,
    /// Events after which the port was held masked (an event storm).
    pub throttled: AtomicU64,
    /// Times the console thread woke up.
    pub wakeups: AtomicU64,
}

/// A running console thread.
#[derive(Debug)]
pub struct ConsoleHandle {
    spec: ConsoleSpec,
    stop: Arc<AtomicBool>,
    /// Written with `stop` (wakes the thread; never read).
    woken: Arc<EventFd>,
    stats: Arc<ConsoleStats>,
    tty: PathBuf,
    thread: Option<JoinHandle<Result<(), ConsoleFailure>>>,
}

impl ConsoleHandle {
    /// Maps, binds, opens the pty and the log, writes `console/tty` and
    /// starts the thread.
    ///
    /// # Errors
    /// [`ConsoleFailure`] if any step fails (nothing is left running).
    pub fn start(
        spec: ConsoleSpec,
        gntdev: &Gntdev,
        shim_socket: &std::path::Path,
        xs: &Client,
    ) -> Result<Self, ConsoleFailure> {
        let domid = spec.domid;
        let mapping = gntdev
            .map_grant_ref(domid, GNTTAB_RESERVED_CONSOLE, true)
            .map_err(|source| ConsoleFailure::Map { domid, source })?;
        let ptr = mapping
            .as_mut_ptr()
            .filter(|p| (*p as usize) % 4096 == 0 && mapping.len() >= 4096)
            .ok_or(ConsoleFailure::BadMapping(domid))?;
        // SAFETY: checked just above: `ptr` is page-aligned, writable and
        // the mapping covers a page from it; the mapping moves into the
        // console thread with the ring and is dropped after it (field
        // order of `Console`), and the page is only accessed through
        // xen-ring's atomics and volatile copies.
        let mem = unsafe { SharedRing::new(ptr, 4096) }.map_err(ConsoleFailure::Ring)?;
        let ring = ConsRing::backend(mem).map_err(ConsoleFailure::Ring)?;
        let bind = |source| ConsoleFailure::Bind {
            domid,
            port: spec.remote_port,
            source,
        };
        let evtchn = Evtchn::open(shim_socket).map_err(bind)?;
        let local = evtchn
            .bind_interdomain(domid, spec.remote_port)
            .map_err(bind)?;
        let pty = Pty::open().map_err(|source| ConsoleFailure::Io {
            what: "open a pty".into(),
            source,
        })?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|source| ConsoleFailure::Io {
                what: format!("open {}", spec.log_path.display()),
                source,
            })?;
        let tty = pty.path.clone();
        write_tty(xs, domid, &tty);
        let stop = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| ConsoleFailure::Io {
                    what: "make the stop eventfd".into(),
                    source: e.into(),
                })?,
        );
        let stats = Arc::new(ConsoleStats::default());
        let con = Console {
            ring,
            _mapping: mapping,
            evtchn,
            local,
            pty,
            log,
            log_ok: true,
            out: OutBuf::new(spec.pty_limit),
            budget: EventBudget::new(std::time::Instant::now()),
            masked_until: None,
            stop: Arc::clone(&stop),
            woken: Arc::clone(&woken),
            stats: Arc::clone(&stats),
            domid,
        };
        let thread = std::thread::Builder::new()
            .name(format!("console-d{domid}"))
            .spawn(move || con.run())
            .map_err(|source| ConsoleFailure::Io {
                what: "start the console thread".into(),
                source,
            })?;
        Ok(Self {
            spec,
            stop,
            woken,
            stats,
            tty,
            thread: Some(thread),
        })
    }

    /// What it was started with.
    #[must_use]
    pub fn spec(&self) -> &ConsoleSpec {
        &self.spec
    }

    /// The pty slave's path.
    #[must_use]
    pub fn tty(&self) -> &std::path::Path {
        &self.tty
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &Arc<ConsoleStats> {
        &self.stats
    }

    /// Whether the thread ended (the console failed).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread after a last drain of the ring, and returns how it
    /// ended.
    pub fn stop(mut self) -> Result<(), ConsoleFailure> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.woken.write(1);
        self.join()
    }

    /// Waits for a finished thread and returns how it ended.
    pub fn join(&mut self) -> Result<(), ConsoleFailure> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for ConsoleHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.woken.write(1);
        let _ = self.join();
    }
}

/// Writes `console/tty` unless the domain's console directory is gone
/// (never recreating a removed domain).
fn write_tty(xs: &Client, domid: u16, tty: &std::path::Path) {
    let dir = format!("/local/domain/{domid}/console");
    let r = xs.transaction(|tx| {
        if tx.read_opt(&dir)?.is_none() {
            return Ok(());
        }
        tx.write(&format!("{dir}/tty"), tty.display().to_string())
    });
    if let Err(e) = r {
        warn_limited!(GUEST_LOG, domid, error = %e, "cannot write console/tty");
    }
}

/// The state of the console thread. Field order matters: the ring is
/// dropped before the mapping it points into.
struct Console {
    ring: ConsRing,
    _mapping: GrantMapping,
    evtchn: Evtchn,
    local: evtchn_port_t,
    pty: Pty,
    log: File,
    log_ok: bool,
    out: OutBuf,
    budget: EventBudget,
    /// The port is held masked by the budget until then.
    masked_until: Option<std::time::Instant>,
    stop: Arc<AtomicBool>,
    woken: Arc<EventFd>,
    stats: Arc<ConsoleStats>,
    domid: u16,
}

fn fd(f: &OwnedFd) -> BorrowedFd<'_> {
    f.as_fd()
}

impl Console {
    fn run(mut self) -> Result<(), ConsoleFailure> {
        let r = self.serve();
        let _ = self.evtchn.unbind(self.local);
        if let Err(e) = &r {
            warn_limited!(GUEST_LOG, domid = self.domid, error = %ErrorChain(e), "console failed");
        }
        r
    }

    fn serve(&mut self) -> Result<(), ConsoleFailure> {
        // A freshly bound port may have missed events: look at once.
        let mut took = self.round()?;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                // The last words of a dying guest.
                self.round()?;
                return Ok(());
            }
            let in_room = self.ring.free_space().map_err(ConsoleFailure::Ring)? > 0;
            let mut pty_flags = PollFlags::empty();
            if in_room {
                pty_flags |= PollFlags::POLLIN;
            }
            if !self.out.is_empty() {
                pty_flags |= PollFlags::POLLOUT;
            }
            let now = std::time::Instant::now();
            let mut wait = if took > 0 { FLOWING } else { TICK };
            if let Some(t) = self.masked_until {
                wait = wait.min(t.saturating_duration_since(now).max(FLOWING));
            }
            let ev_fd = self.evtchn.as_raw_fd();
            // SAFETY: the epoll fd is owned by `self.evtchn`, which outlives
            // this borrow (the poll below).
            let ev = unsafe { BorrowedFd::borrow_raw(ev_fd) };
            // While the budget holds the port masked, its events must not
            // wake us either: they wait in the channel's counter.
            let ev_flags = if self.masked_until.is_some() {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            let mut fds = [
                PollFd::new(ev, ev_flags),
                PollFd::new(fd(&self.pty.master), pty_flags),
                PollFd::new(self.woken.as_fd(), PollFlags::POLLIN),
            ];
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
            match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(ConsoleFailure::Poll(e)),
            }
            self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            let mut fired = false;
            let pending = if self.masked_until.is_some() {
                Vec::new()
            } else {
                self.evtchn.try_pending().unwrap_or_default()
            };
            for p in pending {
                if p == self.local {
                    fired = true;
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                }
            }
            took = self.round()?;
            let now = std::time::Instant::now();
            self.budget.credit(now, took);
            if fired {
                match self.budget.on_event(now) {
                    Unmask::Now => {
                        let _ = self.evtchn.unmask(self.local);
                    }
                    Unmask::At(t) => self.masked_until = Some(t),
                }
                self.stats
                    .throttled
                    .store(self.budget.throttled(), Ordering::Relaxed);
            }
            if self.masked_until.is_some_and(|t| now >= t) {
                self.masked_until = None;
                let _ = self.evtchn.unmask(self.local);
            }
        }
    }

    fn notify(&self) {
        let _ = self.evtchn.notify(self.local);
    }

    /// One pass over both directions (see the module docs); returns the
    /// bytes of output taken.
    fn round(&mut self) -> Result<usize, ConsoleFailure> {
        let mut buf = [0u8; 2048];
        let mut took = 0;
        for _ in 0..MAX_ROUNDS {
            let n = self.ring.read(&mut buf).map_err(ConsoleFailure::Ring)?;
            if n == 0 {
                break;
            }
            took += n;
            // Signal at once: the guest refills while the log is written.
            self.notify();
            self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            self.append_log(&buf[..n]);
            self.out.push(&buf[..n]);
        }
        self.flush_pty();
        self.stats
            .pty_dropped
            .store(self.out.dropped(), Ordering::Relaxed);
        let room = self.ring.free_space().map_err(ConsoleFailure::Ring)? as usize;
        if room > 0 {
            let mut inb = [0u8; 1024];
            let want = room.min(inb.len());
            match nix::unistd::read(self.pty.master.as_raw_fd(), &mut inb[..want]) {
                Ok(n) if n > 0 => {
                    let w = self
                        .ring
                        .try_write(&inb[..n])
                        .map_err(ConsoleFailure::Ring)?;
                    self.stats.bytes_in.fetch_add(w as u64, Ordering::Relaxed);
                    self.notify();
                }
                _ => {}
            }
        }
        Ok(took)
    }

    fn append_log(&mut self, bytes: &[u8]) {
        match self.log.write_all(bytes) {
            Ok(()) => self.log_ok = true,
            Err(e) => {
                if self.log_ok {
                    warn_limited!(GUEST_LOG, domid = self.domid, error = %e, "cannot append to the console log");
                }
                self.log_ok = false;
            }
        }
    }

    fn flush_pty(&mut self) {
        while !self.out.is_empty() {
            match nix::unistd::write(&self.pty.master, self.out.front()) {
                Ok(n) if n > 0 => self.out.consume(n),
                _ => break,
            }
        }
    }
}
