//! The guest's console (`hvc0`): the console page and event channel of
//! `start_info` driven by `xen-consfront`, with a pty standing in for the
//! guest's tty.
//!
//! [`PvConsole::start`] opens a pty, makes its slave the runtime's stdin,
//! stdout and stderr (so the runtime's own messages and every program it
//! starts, the init program above all, read and write the console, with a
//! tty's line discipline: echo, line editing, `\n` → `\r\n` as on a Linux
//! guest's `hvc0`), and starts a pump thread:
//!
//! - output: what the pty master yields goes into the ring's `out`, and no
//!   more is read from the pty while `out` is full, so writers block on the
//!   tty as on a real console whose backend is slow or restarting (never
//!   dropped); the backend's event after it consumed wakes the pump;
//! - input: what the backend puts in `in` is written to the pty master
//!   (the init program reads it from stdin);
//! - a backend writing impossible indices breaks the console
//!   ([`xen_consfront::ConsfrontError::Ring`]): output is then read and
//!   discarded, so the guest's programs never block on it.
//!
//! [`PvConsole::finish`] hands the remaining output to the backend (waiting
//! a bounded time for it to consume) and gives the runtime its original
//! stdio back.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_abi::event_channel::{evtchn_port_t, evtchn_send};
use xen_consfront::{ConsFront, ConsoleEvents};
use xen_front_platform::PAGE_SIZE;
use xen_ring::SharedRing;
use xen_shim_guest::Hypervisor;

use crate::events::EventHub;
use crate::PvGuestError;

/// How long output may stay quiet before [`PvConsole::finish`] takes the
/// pty as drained.
const QUIET: Duration = Duration::from_millis(50);

/// Why the console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console page of `start_info` is not in the domain.
    #[error("the console page {0:#x} is not in the domain")]
    BadPage(u64),
    /// The ring could not be attached.
    #[error("cannot attach to the console ring")]
    Ring(#[source] xen_consfront::ConsfrontError),
    /// A system call failed.
    #[error("cannot {what}")]
    Sys {
        /// What was tried.
        what: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
}

impl From<ConsoleError> for PvGuestError {
    fn from(e: ConsoleError) -> Self {
        PvGuestError::Console(e)
    }
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ConsoleError {
    move |source| ConsoleError::Sys { what, source }
}

/// The console port through the shim, woken by the dispatcher.
#[derive(Debug)]
struct PvConsEvents {
    hv: &'static Hypervisor,
    port: evtchn_port_t,
    wake: Arc<EventFd>,
    epoch: Instant,
}

fn wait_fd(fd: BorrowedFd<'_>, flags: PollFlags, timeout: Duration) -> bool {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, flags)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

impl ConsoleEvents for PvConsEvents {
    fn notify(&self) -> Result<(), i32> {
        self.hv
            .evtchnop_send(&evtchn_send { port: self.port })
            .map_err(|e| e.errno())
    }

    fn wait(&self, timeout: Duration) -> bool {
        let fired = wait_fd(self.wake.as_fd(), PollFlags::POLLIN, timeout);
        if fired {
            let _ = self.wake.read();
        }
        fired
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The running console; see the [module docs](self).
#[derive(Debug)]
pub struct PvConsole {
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    /// The runtime's stdin, stdout and stderr before the console.
    saved: Vec<OwnedFd>,
    hub: Arc<EventHub>,
    port: evtchn_port_t,
    /// How long finish waits for the backend.
    drain_timeout: Duration,
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), ConsoleError> {
    let raw = fd.as_raw_fd();
    let fl = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(sys("F_GETFL"))?);
    fcntl(raw, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map_err(sys("F_SETFL"))?;
    Ok(())
}

fn dup2_onto(src: BorrowedFd<'_>, target: i32) -> Result<(), ConsoleError> {
    // SAFETY: dup2 onto one of the standard descriptors, which this process
    // owns for its whole life; no Rust object owns fds 0-2 as OwnedFd.
    let r = unsafe { libc::dup2(src.as_raw_fd(), target) };
    if r < 0 {
        return Err(ConsoleError::Sys {
            what: "dup2 onto stdio",
            source: Errno::last(),
        });
    }
    Ok(())
}

impl PvConsole {
    /// Attaches to the console page `gfn` and port `port` of the domain
    /// behind `hv` and makes the console this process's stdio.
    ///
    /// # Errors
    /// [`ConsoleError`] (the stdio is then left as it was).
    pub fn start(
        hv: &'static Hypervisor,
        hub: Arc<EventHub>,
        gfn: u64,
        port: evtchn_port_t,
    ) -> Result<Self, ConsoleError> {
        let ptr = hv
            .memory()
            .page_ptr(gfn)
            .ok()
            .and_then(NonNull::new)
            .ok_or(ConsoleError::BadPage(gfn))?;
        // SAFETY: one page of the domain's memory mapping, which lives for
        // the rest of the process (the runtime leaks its Hypervisor) and is
        // page-aligned; in this process only the console uses this page,
        // through xen-ring's atomics and volatile copies.
        let mem = unsafe { SharedRing::new(ptr.as_ptr(), PAGE_SIZE) }
            .map_err(|e| ConsoleError::Ring(xen_consfront::ConsfrontError::Ring(e)))?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).map_err(sys("eventfd"))?,
        );
        let events = PvConsEvents {
            hv,
            port,
            wake: Arc::clone(&wake),
            epoch: Instant::now(),
        };
        let con = ConsFront::new(mem, events).map_err(ConsoleError::Ring)?;
        let pty = nix::pty::openpty(None, None).map_err(sys("openpty"))?;
        set_nonblocking(pty.master.as_fd())?;
        let mut saved = Vec::new();
        for fd in 0..3 {
            // SAFETY: fds 0-2 are open for the life of the process (or
            // dup fails with EBADF, handled).
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            match b.try_clone_to_owned() {
                Ok(o) => saved.push(o),
                Err(_) => {
                    // A closed standard fd: keep /dev/null in its place.
                    let n = std::fs::File::options()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(|_| ConsoleError::Sys {
                            what: "open /dev/null",
                            source: Errno::last(),
                        })?;
                    saved.push(n.into());
                }
            }
        }
        let w = Arc::clone(&wake);
        hub.set_handler(
            port,
            Some(Arc::new(move |_| {
                let _ = w.write(1);
            })),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let pump = Pump {
            con,
            master: pty.master,
            wake: Arc::clone(&wake),
            stop: Arc::clone(&stop),
            pend: Vec::new(),
            inbuf: Vec::new(),
            log: saved
                .get(2)
                .and_then(|f| f.try_clone().ok())
                .map(std::fs::File::from),
        };
        let thread = std::thread::Builder::new()
            .name("hvc0".into())
            .spawn(move || pump.run())
            .map_err(|_| ConsoleError::Sys {
                what: "start the console thread",
                source: Errno::last(),
            })?;
        let me = Self {
            stop,
            wake,
            thread: Some(thread),
            saved,
            hub,
            port,
            drain_timeout: Duration::from_secs(5),
        };
        for fd in 0..3 {
            dup2_onto(pty.slave.as_fd(), fd)?;
        }
        drop(pty.slave);
        // The backend may have been waiting for room already.
        let _ = me.wake.write(1);
        Ok(me)
    }

    /// Hands what is left to the backend (up to the drain timeout) and
    /// restores the original stdio.
    pub fn finish(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
        // The thread drains the pty until it is quiet and the ring until
        // the backend consumed it, bounded by the drain timeout.
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(1);
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (fd, saved) in self.saved.iter().enumerate() {
            let _ = dup2_onto(saved.as_fd(), fd as i32);
        }
        self.hub.set_handler(self.port, None);
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

impl Drop for PvConsole {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Pump {
    con: ConsFront<PvConsEvents>,
    master: OwnedFd,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    /// Read from the pty, not yet in `out`.
    pend: Vec<u8>,
    /// Taken from `in`, not yet written to the pty.
    inbuf: Vec<u8>,
    /// The original stderr, for the console's own trouble.
    log: Option<std::fs::File>,
}

impl Pump {
    fn report(&mut self, what: &str) {
        if let Some(f) = &mut self.log {
            let _ =
                std::io::Write::write_all(f, format!("xen-pvguest: console: {what}\n").as_bytes());
        }
    }

    /// Reads from the pty into `pend` (if empty); returns whether bytes came.
    fn fill(&mut self) -> bool {
        if !self.pend.is_empty() {
            return false;
        }
        let mut buf = [0u8; 2048];
        match nix::unistd::read(self.master.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => {
                self.pend.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    /// One pass over both directions.
    fn round(&mut self) {
        self.fill();
        if !self.pend.is_empty() {
            if self.con.is_broken() {
                self.pend.clear();
            } else {
                match self.con.write(&self.pend) {
                    Ok(n) => {
                        self.pend.drain(..n);
                    }
                    Err(e) => {
                        self.report(&e.to_string());
                        self.pend.clear();
                    }
                }
            }
        }
        if self.inbuf.is_empty() && !self.con.is_broken() {
            let mut buf = [0u8; 1024];
            match self.con.read(&mut buf) {
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) => self.report(&e.to_string()),
            }
        }
        if !self.inbuf.is_empty() {
            if let Ok(n) = nix::unistd::write(&self.master, &self.inbuf) {
                self.inbuf.drain(..n);
            }
        }
    }

    fn run(mut self) {
        loop {
            self.round();
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let mut flags = PollFlags::empty();
            if self.pend.is_empty() {
                flags |= PollFlags::POLLIN;
            }
            if !self.inbuf.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            let mut fds = [
                PollFd::new(self.master.as_fd(), flags),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            // The backend's event and a stop write `wake`: the timeout is
            // only a safety net (it was 500 ms: two wake-ups a second).
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(10_000u16));
            let _ = self.wake.read();
        }
        self.flush();
    }

    /// At the end: everything written so far goes to the backend.
    fn flush(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && !self.con.is_broken() {
            let got = self.fill();
            if got {
                quiet_since = Instant::now();
            }
            if !self.pend.is_empty() {
                match self.con.write(&self.pend) {
                    Ok(n) => {
                        self.pend.drain(..n);
                    }
                    Err(_) => break,
                }
            }
            if self.pend.is_empty() && quiet_since.elapsed() >= QUIET {
                break;
            }
            if self.pend.is_empty() {
                wait_fd(self.master.as_fd(), PollFlags::POLLIN, QUIET);
            } else {
                self.con.events().wait(Duration::from_millis(20));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(false) = self.con.drain(left) {
            self.report("the console backend did not take the last output");
        }
    }
}
