//! The VMM's control channel: a Unix socket (`--control PATH`, which `xl` knows)
//! through which the toolstack saves the domain. One text line per command:
//!
//! ```text
//!   save          -> (the save file's descriptor comes with the line, SCM_RIGHTS:
//!                    a jailed VMM can open no path of the host)
//!                    "progress DONE TOTAL" lines, then "saved PAGES BYTES" or "error WHY";
//!                    vCPU 0 stays parked (the domain does not run) until
//!   resume        -> "resumed": the guest runs on (xl save -c / -p)
//!   migrate [MAX_ITERS [MIN_DIRTY]]
//!                 -> (the stream's descriptor comes with the line: a socket or
//!                    pipe to the destination) live rounds ("round N PAGES MS"
//!                    lines, `crate::migrate`), then "live-done ROUNDS";
//!                    the toolstack suspends the guest and sends
//!   final         -> the last round while vCPU 0 is parked, the closing
//!                    records, "round N PAGES MS" and "sent PAGES BYTES"
//!                    (or "error WHY"); parked as after "save"
//!   unpause       -> "unpaused": a VMM started with `--incoming` (the
//!                    destination of a migration, its memory loaded) runs
//!                    its vCPUs; until then it holds them
//!   pages         -> "pages CURRENT MAX": the domain's pages and maximum
//!                    (Xen's tot_pages and max_pages; `xl list`'s Mem)
//!   max-pages N   -> "ok" or "error WHY": the maximum the balloon may
//!                    populate to (`xl mem-max`, Xen's XEN_DOMCTL_max_mem)
//! ```
//!
//! Each connection has its own thread (an `xl list` is answered while an
//! `xl save` holds its connection); one save at a time.
//!
//! A connection that closes while the domain is parked resumes it (a dead `xl`
//! never leaves a guest stopped; `xl save` destroys the domain before it closes).
//!
//! Parking: the control thread raises [`Park`]'s request and signals vCPU 0's
//! thread out of `KVM_RUN`; at the top of its loop the vCPU completes any pending
//! I/O exit (`immediate_exit`), captures its own registers and waits. Guests with
//! secondary vCPUs online are refused (their state is not captured yet).

use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;

use crate::snapshot::KvmVcpuState;

/// How long vCPU 0 may take to stop.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct ParkState {
    requested: bool,
    captured: Option<Result<KvmVcpuState, String>>,
}

/// The rendezvous between the control thread and vCPU 0's thread.
#[derive(Debug, Default)]
pub struct Park {
    requested: AtomicBool,
    state: Mutex<ParkState>,
    cv: Condvar,
}

impl Park {
    /// Whether vCPU 0 should park (checked at the top of its loop).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// vCPU 0's side: complete the last exit, capture, wait for the release.
    /// `rax`: the value the captured state holds in rax instead of the
    /// vCPU's (a suspended guest's hypercall returns 0 once restored).
    pub fn park_here(&self, v: &mut VcpuFd, rax: Option<u64>) {
        v.set_kvm_immediate_exit(1);
        let _ = v.run(); // returns EINTR at once, after completing pending I/O
        v.set_kvm_immediate_exit(0);
        let cap = KvmVcpuState::capture(v)
            .map(|mut c| {
                if let Some(r) = rax {
                    c.regs.rax = r;
                }
                c
            })
            .map_err(|e| xen_diag::ErrorChain(&e).to_string());
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.captured = Some(cap);
        self.cv.notify_all();
        while st.requested {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.captured = None;
    }

    /// The control side: ask vCPU 0 to park (calling `kick` until it does) and
    /// return its state.
    pub fn request(&self, kick: impl Fn()) -> Result<KvmVcpuState, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested = true;
        st.captured = None;
        self.requested.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        loop {
            if let Some(c) = st.captured.take() {
                // Keep a marker that vCPU 0 is parked.
                st.captured = Some(Err("parked".into()));
                return c;
            }
            if t0.elapsed() > PARK_TIMEOUT {
                drop(st);
                self.release();
                return Err("vCPU 0 did not stop within 5 s".into());
            }
            kick();
            st = match self.cv.wait_timeout(st, Duration::from_millis(10)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Let vCPU 0 run again.
    pub fn release(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested = false;
        self.requested.store(false, Ordering::SeqCst);
        self.cv.notify_all();
    }
}

/// A gate held until released: an incoming domain's vCPUs until the
/// toolstack's "unpause" (Xen creates a migrated domain paused and unpauses
/// it once the source has given it up), the control connections until the
/// VMM is jailed ([`serve`]).
#[derive(Debug, Default)]
pub struct Hold {
    held: Mutex<bool>,
    cv: Condvar,
}

impl Hold {
    /// A hold, held or not.
    pub fn new(held: bool) -> Self {
        Self {
            held: Mutex::new(held),
            cv: Condvar::new(),
        }
    }

    /// Waits until released.
    pub fn wait(&self) {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *g {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Releases the hold; `false` if it was not held.
    pub fn release(&self) -> bool {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let was = *g;
        *g = false;
        self.cv.notify_all();
        was
    }
}

/// What the control thread asks of the VMM.
pub trait Saver: Send + Sync {
    /// Live-migrate to `out` (see [`crate::migrate::send`]); on success the
    /// domain stays parked as after [`Saver::save`].
    /// `config`: the xl header's config instead of the domain's.
    fn migrate(
        &self,
        out: File,
        config: Option<Vec<u8>>,
        opts: crate::migrate::LiveOptions,
        report: &mut dyn FnMut(&str),
        await_final: &mut dyn FnMut() -> bool,
    ) -> Result<crate::migrate::Sent, String>;
    /// Let an incoming domain's vCPUs run.
    fn unpause(&self) -> Result<(), String>;
    /// Park the vCPUs and write the save file to `file`, reporting progress
    /// `(done, total)` in bytes; returns (pages, bytes). The domain stays parked.
    fn save(&self, file: File, progress: &mut dyn FnMut(u64, u64)) -> Result<(u64, u64), String>;
    /// Let a parked domain run again.
    fn release(&self);
    /// The domain's pages and maximum pages.
    fn reservation(&self) -> (u64, u64);
    /// Sets the maximum pages.
    fn set_max_pages(&self, pages: u64) -> Result<(), String>;
}

/// Serve the control socket at `path` (replacing a stale one) on a thread.
/// Connections wait in the socket's backlog until the returned gate is
/// released: the VMM releases it once jailed, so that no connection's
/// thread is being created while the jail changes every thread's
/// credentials (a thread spawned then failed to drop its privileges: a
/// migration's receiver connects as soon as the socket exists).
pub fn serve(
    path: &Path,
    saver: std::sync::Arc<dyn Saver>,
) -> std::io::Result<std::sync::Arc<Hold>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // Only the toolstack's user may ask for a save (it names a file to write).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let gate = std::sync::Arc::new(Hold::new(true));
    let opened = std::sync::Arc::clone(&gate);
    std::thread::Builder::new()
        .name("xen-vmm-control".into())
        .spawn(move || {
            opened.wait();
            let busy = std::sync::Arc::new(AtomicBool::new(false));
            for conn in listener.incoming().flatten() {
                let saver = std::sync::Arc::clone(&saver);
                let busy = std::sync::Arc::clone(&busy);
                let r = std::thread::Builder::new()
                    .name("xen-vmm-ctl-conn".into())
                    .spawn(move || {
                        if let Err(e) = session(conn, &*saver, &busy) {
                            tracing::warn!(error = %e, "control connection failed");
                        }
                    });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot serve a control connection");
                }
            }
        })?;
    Ok(gate)
}

/// The largest config text `migrate` takes.
const MAX_CONFIG: u64 = 1 << 20;

/// The longest command line accepted.
const MAX_LINE: usize = 4096;

/// Reads the control connection's lines, with the descriptors sent along
/// them (`SCM_RIGHTS`).
struct Lines {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Lines {
    /// The next line (without its newline) and every descriptor received so
    /// far; `None` at the end of the connection.
    fn next_line(&mut self) -> std::io::Result<Option<(String, Vec<OwnedFd>)>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line[..i]).into_owned();
                return Ok(Some((text, std::mem::take(&mut self.fds))));
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "control line too long",
                ));
            }
            let mut chunk = [0u8; 512];
            let mut cmsg = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let msg = nix::sys::socket::recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let n = msg.bytes;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: the kernel installed `fd` in this process
                        // for this message; nothing else owns it.
                        self.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn session(conn: UnixStream, saver: &dyn Saver, busy: &AtomicBool) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut parked = false;
    let mut lines = Lines {
        sock: conn,
        buf: Vec::new(),
        fds: Vec::new(),
    };
    let r = (|| {
        while let Some((line, mut fds)) = lines.next_line()? {
            let cmd = line.split_whitespace().next().unwrap_or("");
            match cmd {
                "save" if !parked && fds.len() == 1 && busy.swap(true, Ordering::SeqCst) => {
                    writeln!(out, "error another save of this domain is in progress")?;
                }
                "save" if !parked && fds.len() == 1 => {
                    let file = File::from(fds.remove(0));
                    let mut last = Instant::now();
                    let mut progress = |done: u64, total: u64| {
                        if last.elapsed() >= Duration::from_millis(50) || done == total {
                            last = Instant::now();
                            let _ = writeln!(out, "progress {done} {total}");
                        }
                    };
                    match saver.save(file, &mut progress) {
                        Ok((pages, bytes)) => {
                            parked = true;
                            writeln!(out, "saved {pages} {bytes}")?;
                        }
                        Err(why) => {
                            busy.store(false, Ordering::SeqCst);
                            writeln!(out, "error {}", why.replace('\n', " "))?;
                        }
                    }
                }
                "migrate"
                    if !parked
                        && (1..=2).contains(&fds.len())
                        && busy.swap(true, Ordering::SeqCst) =>
                {
                    writeln!(
                        out,
                        "error a save or migration of this domain is in progress"
                    )?;
                }
                "migrate" if !parked && (1..=2).contains(&fds.len()) => {
                    let file = File::from(fds.remove(0));
                    // `xl migrate -C CONFIG`: the config text sent instead.
                    let config = match fds.pop() {
                        Some(fd) => {
                            let mut text = Vec::new();
                            let read = std::io::Read::read_to_end(
                                &mut std::io::Read::take(File::from(fd), MAX_CONFIG + 1),
                                &mut text,
                            );
                            if let Err(e) = read {
                                busy.store(false, Ordering::SeqCst);
                                writeln!(out, "error cannot read the config: {e}")?;
                                continue;
                            }
                            if text.len() as u64 > MAX_CONFIG {
                                busy.store(false, Ordering::SeqCst);
                                writeln!(out, "error the config is over {MAX_CONFIG} bytes")?;
                                continue;
                            }
                            Some(text)
                        }
                        None => None,
                    };
                    let mut opts = crate::migrate::LiveOptions::default();
                    let mut words = line.split_whitespace().skip(1);
                    if let Some(n) = words.next().and_then(|w| w.parse().ok()) {
                        opts.max_iters = n;
                    }
                    if let Some(n) = words.next().and_then(|w| w.parse().ok()) {
                        opts.min_dirty = n;
                    }
                    let mut report = |l: &str| {
                        let _ = writeln!(out, "{l}");
                    };
                    let mut await_final =
                        || matches!(lines.next_line(), Ok(Some((l, _))) if l.trim() == "final");
                    let r = saver.migrate(file, config, opts, &mut report, &mut await_final);
                    match r {
                        Ok(sent) => {
                            parked = true;
                            let pages: u64 = sent.rounds.iter().sum();
                            writeln!(out, "sent {pages} {}", sent.bytes)?;
                        }
                        Err(why) => {
                            busy.store(false, Ordering::SeqCst);
                            writeln!(out, "error {}", why.replace('\n', " "))?;
                        }
                    }
                }
                "unpause" => match saver.unpause() {
                    Ok(()) => writeln!(out, "unpaused")?,
                    Err(why) => writeln!(out, "error {}", why.replace('\n', " "))?,
                },
                "resume" if parked => {
                    saver.release();
                    parked = false;
                    busy.store(false, Ordering::SeqCst);
                    writeln!(out, "resumed")?;
                }
                "pages" => {
                    let (cur, max) = saver.reservation();
                    writeln!(out, "pages {cur} {max}")?;
                }
                "max-pages" => {
                    let n = line.split_whitespace().nth(1).and_then(|v| v.parse().ok());
                    match n.map(|n| saver.set_max_pages(n)) {
                        Some(Ok(())) => writeln!(out, "ok")?,
                        Some(Err(why)) => writeln!(out, "error {why}")?,
                        None => writeln!(out, "error max-pages needs a page count")?,
                    }
                }
                _ => writeln!(out, "error unknown or out-of-place command {cmd:?}")?,
            }
        }
        Ok(())
    })();
    if parked {
        saver.release();
        busy.store(false, Ordering::SeqCst);
    }
    r
}
