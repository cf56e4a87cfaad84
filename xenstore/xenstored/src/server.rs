//! The event loop: one thread, epoll over the listening sockets, the
//! clients' sockets and the domains' event channels. Idle connections cost
//! nothing per request (epoll reports only ready ones).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signalfd::SignalFd;
use xenstore_wire::{DecodeError, Decoder, DomId, Header, XENSTORE_PAYLOAD_MAX};

use crate::core::{ConnKind, Core, DomainAction};
use crate::domain_exc::DomainWatcher;
use crate::ops::Caller;
use crate::persist::{PersistError, StateDir};
use crate::transport::{
    DomainMapper, RingTransport, SocketTransport, Transport, TransportError, Wakeup,
};
use crate::watch::ConnId;
use xen_diag::{warn_limited, LogLimiter};
use xen_ring::PollWindow;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be set up.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("another xenstored is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// epoll or eventfd failed.
    #[error("event loop system call failed")]
    Sys(#[from] nix::Error),
    /// The state could not be persisted: the daemon stops rather than
    /// acknowledge writes it cannot keep.
    #[error("persisting the state failed")]
    Persist(#[from] PersistError),
}

const T_LISTEN: u64 = 0;
const T_LISTEN_RO: u64 = 1;
const T_STOP: u64 = 2;
const T_SIGNAL: u64 = 3;
const T_DOM_EXC: u64 = 4;
const T_CONN: u64 = 16;

/// Reads per connection per wakeup (fairness: at most this many chunks of
/// [`READ_CHUNK`] requests from one pipelining client before the others).
const MAX_READS: usize = 4;
/// The default longest busy-poll after a reply (`--poll-us`), us: above
/// a cross-CPU wake-up on a small virtual machine (30-50 us), so a client
/// answering at once is caught.
pub const DEFAULT_POLL_US: u32 = 50;

/// The shared read buffer (one for all connections).
const READ_CHUNK: usize = 64 * 1024;
/// After connections closed, the heap is trimmed once the loop has been
/// idle this long ...
const TRIM_IDLE_MS: u16 = 100;
/// How often a domain ring that could not be mapped is tried again.
const RING_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a domain ring that cannot be mapped is tried again for.
const RING_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(120);
/// ... or after this many closes.
const TRIM_AFTER_CLOSES: usize = 1024;
/// Input buffer an idle connection may keep.
const IDLE_IN_CAPACITY: usize = 4096;

/// Stops a running [`Server`] from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    /// Asks the server to stop (it returns from [`Server::run`]).
    pub fn stop(&self) {
        let _ = self.0.write(1);
    }
}

#[derive(Debug)]
struct ConnIo {
    transport: Box<dyn Transport>,
    decoder: Decoder,
    /// The decoder holds more than [`IDLE_IN_CAPACITY`] bytes of buffer.
    decoder_big: bool,
    interest: EpollFlags,
    domid: Option<DomId>,
}

impl ConnIo {
    /// Appends bytes read (into the server's shared read buffer): the
    /// decoder only grows to what the client actually sent.
    fn take(&mut self, data: &[u8]) {
        self.decoder_big |= self.decoder.buffered() + data.len() > IDLE_IN_CAPACITY;
        self.decoder.push(data);
    }

    /// Frees a large input buffer once every packet in it is handled: an
    /// idle connection keeps no more than [`IDLE_IN_CAPACITY`].
    fn shrink_if_idle(&mut self) {
        if self.decoder_big && self.decoder.buffered() == 0 {
            self.decoder = Decoder::with_max_payload(XENSTORE_PAYLOAD_MAX);
            self.decoder_big = false;
        }
    }
}

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The socket path.
    pub socket: PathBuf,
    /// Also listen on `<socket>_ro` for read-only clients.
    pub read_only_socket: bool,
    /// The state directory (`None`: no persistence).
    pub state_dir: Option<PathBuf>,
    /// `fdatasync` the journal before each batch of replies.
    pub fsync: bool,
}

/// The daemon's event loop and state.
#[derive(Debug)]
pub struct Server {
    /// The protocol engine.
    pub core: Core,
    epoll: Epoll,
    listener: UnixListener,
    ro_listener: Option<UnixListener>,
    socket: PathBuf,
    ro_socket: Option<PathBuf>,
    io: Vec<Option<ConnIo>>,
    state: Option<StateDir>,
    mapper: Option<Box<dyn DomainMapper>>,
    watcher: Option<Box<dyn DomainWatcher>>,
    stop: Arc<EventFd>,
    signal: Option<SignalFd>,
    bad_client_log: LogLimiter,
    work: Vec<ConnId>,
    retry: Vec<ConnId>,
    /// Introduced domains whose ring could not be mapped yet, with when
    /// that first failed: after a restart of the shim the bind is refused
    /// until the guest's runtime has reattached (`EAGAIN`) or while the
    /// shim still holds a dead xenstored's binding of the port (`EINVAL`,
    /// until its reclaim grace ends). Tried again every [`RING_RETRY`]
    /// until mapped, the domain released, or [`RING_RETRY_FOR`] passed.
    pending_rings: Vec<(DomId, Instant)>,
    last_ring_retry: Instant,
    overflowed: Vec<ConnId>,
    scratch: Vec<u8>,
    closed_since_trim: usize,
    poll: PollWindow,
}

/// The `_ro` companion of a socket path.
#[must_use]
pub fn read_only_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push("_ro");
    PathBuf::from(s)
}

fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    // Root-only, like Xen's xenstored.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

fn raise_fd_limit() {
    // Best effort: 1000s of idle clients must not hit the soft limit.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

impl Server {
    /// Loads the state (if persistent) and binds the sockets.
    pub fn new(cfg: &ServerConfig) -> Result<Server, ServerError> {
        raise_fd_limit();
        let (state, core) = match &cfg.state_dir {
            Some(dir) => {
                let (sd, loaded) = StateDir::open(dir, cfg.fsync)?;
                if loaded.truncated_tail {
                    tracing::warn!(dir = %dir.display(), "journal had a torn tail; cut off");
                }
                let mut core = Core::new(loaded.tree.unwrap_or_default(), true);
                core.quotas = loaded.quotas;
                core.restored = loaded.conns;
                for d in loaded.domains {
                    core.domains.insert(d);
                }
                tracing::info!(
                    nodes = core.tree.len(),
                    domains = core.domains.len(),
                    ring_states = core.restored.len(),
                    replayed = loaded.replayed,
                    "state loaded"
                );
                (Some(sd), core)
            }
            None => (None, Core::new(crate::store::Tree::new(), false)),
        };
        let listener = bind(&cfg.socket)?;
        let (ro_listener, ro_socket) = if cfg.read_only_socket {
            let p = read_only_path(&cfg.socket);
            (Some(bind(&p)?), Some(p))
        } else {
            (None, None)
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, T_LISTEN))?;
        if let Some(l) = &ro_listener {
            epoll.add(l, EpollEvent::new(EpollFlags::EPOLLIN, T_LISTEN_RO))?;
        }
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        epoll.add(stop.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, T_STOP))?;
        let mut s = Server {
            core,
            epoll,
            listener,
            ro_listener,
            socket: cfg.socket.clone(),
            ro_socket,
            io: Vec::new(),
            state,
            mapper: None,
            watcher: None,
            stop,
            signal: None,
            bad_client_log: LogLimiter::new(10, std::time::Duration::from_secs(5)),
            work: Vec::new(),
            retry: Vec::new(),
            pending_rings: Vec::new(),
            last_ring_retry: Instant::now(),
            overflowed: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            closed_since_trim: 0,
            poll: PollWindow::new(DEFAULT_POLL_US as u64 * 1000),
        };
        // Compact at start: the journal replayed becomes the snapshot.
        s.compact()?;
        Ok(s)
    }

    /// Sets how introduced domains' rings are mapped.
    pub fn set_mapper(&mut self, mapper: Box<dyn DomainMapper>) {
        self.mapper = Some(mapper);
        // Domains restored from disk get their rings back.
        let doms: Vec<(DomId, u64, u32)> = self
            .core
            .domains
            .iter()
            .filter(|d| d.conn.is_none())
            .map(|d| (d.domid, d.mfn, d.port))
            .collect();
        for (domid, mfn, port) in doms {
            self.core
                .actions
                .push(DomainAction::Introduced { domid, mfn, port });
        }
        self.process_actions();
    }

    /// Watches `VIRQ_DOM_EXC` through `watcher`: when its fd is readable,
    /// dead domains are released and shut-down ones reported
    /// ([`crate::domain_exc`]).
    pub fn set_domain_watcher(
        &mut self,
        watcher: Box<dyn DomainWatcher>,
    ) -> Result<(), ServerError> {
        self.epoll.add(
            watcher.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, T_DOM_EXC),
        )?;
        self.watcher = Some(watcher);
        Ok(())
    }

    /// Asks the domain watcher which introduced domains shut down or died,
    /// and cleans up (Xen's `domain_cleanup`).
    pub fn check_domains(&mut self) {
        if let Some(w) = self.watcher.as_mut() {
            crate::domain_exc::check(&mut self.core, w.as_mut());
            self.process_actions();
        }
    }

    /// Stops the loop on SIGTERM, SIGINT and SIGHUP (the signals must be
    /// blocked in every thread).
    pub fn set_signal_fd(&mut self, sfd: SignalFd) -> Result<(), ServerError> {
        self.epoll
            .add(sfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, T_SIGNAL))?;
        self.signal = Some(sfd);
        Ok(())
    }

    /// A handle that stops [`Server::run`].
    #[must_use]
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// The socket path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn compact(&mut self) -> Result<(), ServerError> {
        if let Some(sd) = &mut self.state {
            sd.append(&mut self.core.journal.buf)?;
            let conns = self.core.conn_records();
            sd.compact(
                &self.core.tree,
                self.core.domains.iter(),
                &self.core.quotas,
                conns.into_iter(),
            )?;
            // The snapshot's buffer (the whole tree) was freed: give it
            // back to the system once idle, as after closed connections.
            self.closed_since_trim = self.closed_since_trim.max(1);
        }
        Ok(())
    }

    /// Serves until stopped; returns after flushing the journal and
    /// removing the sockets.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::empty(); 256];
        // What set-up queued (restored watches' events, requests a guest
        // wrote before its ring was mapped again) goes out before the
        // first wait.
        let r = match self.flush() {
            Ok(()) => loop {
                self.retry_rings();
                let n = match self.wait(&mut events) {
                    Ok(0) => {
                        if self.closed_since_trim > 0 {
                            self.trim();
                        }
                        continue;
                    }
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => break Err(e.into()),
                };
                let mut stop = false;
                for ev in &events[..n] {
                    match ev.data() {
                        T_LISTEN => self.accept(false),
                        T_LISTEN_RO => self.accept(true),
                        T_STOP | T_SIGNAL => stop = true,
                        T_DOM_EXC => self.check_domains(),
                        t => {
                            let id = (t - T_CONN) as ConnId;
                            let f = ev.events();
                            if f.intersects(
                                EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR,
                            ) {
                                self.on_readable(id);
                            }
                            if f.contains(EpollFlags::EPOLLOUT) {
                                self.work.push(id);
                            }
                        }
                    }
                }
                if let Err(e) = self.flush() {
                    break Err(e);
                }
                if stop {
                    break Ok(());
                }
            },
            Err(e) => Err(e),
        };
        self.shutdown();
        r
    }

    /// Sets the longest busy-poll after a reply, ns (0: never poll).
    pub fn set_poll_window(&mut self, max_ns: u64) {
        self.poll = PollWindow::new(max_ns);
    }

    /// Waits for events. First busy-polls for up to the adaptive window
    /// ([`PollWindow`], as the rings' endpoints and KVM's `halt_poll_ns`
    /// do): a client that sends its next request within microseconds of
    /// its reply then finds the daemon awake instead of paying a cross-CPU
    /// wake-up. Between polls the loop yields, so a client that shares our
    /// CPU runs. Returns 0 on the idle timeout that trims the heap.
    fn wait(&mut self, events: &mut [EpollEvent]) -> nix::Result<usize> {
        let budget = self.poll.budget_ns();
        if budget > 0 {
            let t0 = Instant::now();
            loop {
                let n = self.epoll.wait(events, EpollTimeout::ZERO)?;
                if n > 0 {
                    self.poll.hit();
                    return Ok(n);
                }
                if t0.elapsed().as_nanos() as u64 >= budget {
                    self.poll.miss();
                    break;
                }
                std::thread::yield_now();
            }
        }
        let timeout = if !self.pending_rings.is_empty() {
            EpollTimeout::from(RING_RETRY.as_millis() as u16)
        } else if self.closed_since_trim > 0 {
            EpollTimeout::from(TRIM_IDLE_MS)
        } else {
            EpollTimeout::NONE
        };
        let t0 = Instant::now();
        let n = self.epoll.wait(events, timeout)?;
        if n > 0 && self.poll.max_ns() > 0 {
            // A sleep shorter than the largest window: polling that long
            // would have caught this request, so poll the whole window next
            // time (a request-reply client's think time is steady; growing
            // from the ring's small start would never reach it). A miss
            // drops it back to nothing.
            if t0.elapsed().as_nanos() as u64 <= self.poll.max_ns() {
                self.poll = PollWindow::new(self.poll.max_ns());
            } else {
                self.poll.woke(u64::MAX);
            }
        }
        Ok(n)
    }

    fn shutdown(&mut self) {
        if let Some(sd) = &mut self.state {
            if let Err(e) = sd.append(&mut self.core.journal.buf) {
                tracing::error!(error = %e, "final journal write failed");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(p) = &self.ro_socket {
            let _ = std::fs::remove_file(p);
        }
    }

    fn accept(&mut self, read_only: bool) {
        for _ in 0..64 {
            let l = if read_only {
                match &self.ro_listener {
                    Some(l) => l,
                    None => return,
                }
            } else {
                &self.listener
            };
            match l.accept() {
                Ok((stream, _)) => {
                    let t = match SocketTransport::new(stream) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot set up client socket");
                            continue;
                        }
                    };
                    let id = self
                        .core
                        .new_conn(Caller::dom0(), ConnKind::Socket { read_only });
                    if let Err(e) = self.add_io(id, Box::new(t), None) {
                        tracing::warn!(error = %e, "cannot poll client socket");
                        self.core.close_conn(id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn add_io(
        &mut self,
        id: ConnId,
        t: Box<dyn Transport>,
        domid: Option<DomId>,
    ) -> Result<(), ServerError> {
        let fd: RawFd = t.fd();
        // SAFETY: fd belongs to the transport, which stays alive (in
        // self.io) until after it is removed from the epoll set.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        self.epoll.add(
            bfd,
            EpollEvent::new(EpollFlags::EPOLLIN, T_CONN + id as u64),
        )?;
        if self.io.len() <= id {
            self.io.resize_with(id + 1, || None);
        }
        self.io[id] = Some(ConnIo {
            transport: t,
            decoder: Decoder::with_max_payload(XENSTORE_PAYLOAD_MAX),
            decoder_big: false,
            interest: EpollFlags::EPOLLIN,
            domid,
        });
        Ok(())
    }

    /// Gives the heap freed by closed connections back to the system
    /// (glibc keeps freed small blocks in its arenas otherwise, so RSS
    /// would stay at the peak number of connections).
    /// Introduces again, at most every [`RING_RETRY`], the domains whose
    /// ring could not be mapped (`pending_rings`); a domain released or
    /// connected meanwhile leaves the list.
    fn retry_rings(&mut self) {
        if self.pending_rings.is_empty() || self.last_ring_retry.elapsed() < RING_RETRY {
            return;
        }
        self.last_ring_retry = Instant::now();
        for (domid, since) in std::mem::take(&mut self.pending_rings) {
            let Some(d) = self.core.domains.get(domid) else {
                continue;
            };
            if d.conn.is_some() {
                continue;
            }
            let (mfn, port) = (d.mfn, d.port);
            self.pending_rings.push((domid, since));
            self.core
                .actions
                .push(DomainAction::Introduced { domid, mfn, port });
        }
        self.process_actions();
    }

    fn trim(&mut self) {
        self.closed_since_trim = 0;
        // SAFETY: malloc_trim only releases free heap pages; no pointer
        // is invalidated.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn drop_conn(&mut self, id: ConnId) {
        self.closed_since_trim += 1;
        if self.closed_since_trim >= TRIM_AFTER_CLOSES {
            self.trim();
        }
        if let Some(io) = self.io.get_mut(id).and_then(Option::take) {
            // SAFETY: the fd is still open (owned by io.transport, dropped
            // at the end of this block).
            let bfd = unsafe { BorrowedFd::borrow_raw(io.transport.fd()) };
            let _ = self.epoll.delete(bfd);
            if let (Some(d), Some(m)) = (io.domid, self.mapper.as_mut()) {
                m.unmap(d);
            }
        }
        self.core.close_conn(id);
    }

    fn set_interest(&mut self, id: ConnId, want: EpollFlags) {
        let Some(io) = self.io.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if io.interest == want {
            return;
        }
        // SAFETY: the fd is owned by io.transport, alive here.
        let bfd = unsafe { BorrowedFd::borrow_raw(io.transport.fd()) };
        let mut ev = EpollEvent::new(want, T_CONN + id as u64);
        if self.epoll.modify(bfd, &mut ev).is_ok() {
            io.interest = want;
        }
    }

    /// Ends connection `id` after its transport failed with `e`: a
    /// corrupt ring (`why`) is failed as [`Server::bad_client`] does; a
    /// closed or failed socket is dropped.
    fn transport_failed(&mut self, id: ConnId, why: &str, e: TransportError) {
        match e {
            TransportError::Protocol(code) => self.bad_client(id, why, code),
            _ => self.drop_conn(id),
        }
    }

    fn bad_client(&mut self, id: ConnId, why: &str, code: u32) {
        warn_limited!(self.bad_client_log, conn = id, "dropping client: {why}");
        let is_ring = self
            .io
            .get(id)
            .and_then(Option::as_ref)
            .is_some_and(|io| io.domid.is_some());
        if is_ring {
            // A domain cannot reconnect its ring by itself: ignore it until
            // it asks for a reconnection (Xen's ignore_connection).
            if let Some(io) = self.io.get_mut(id).and_then(Option::as_mut) {
                io.transport.fail(code);
                io.decoder = Decoder::new();
            }
            self.core.reset_conn(id);
        } else {
            self.drop_conn(id);
        }
    }

    /// Handles complete packets already buffered, while the connection may
    /// be read.
    fn process_input(&mut self, id: ConnId) -> bool {
        let Server { core, io, .. } = self;
        let Some(cio) = io.get_mut(id).and_then(Option::as_mut) else {
            return false;
        };
        let mut handled = 0usize;
        loop {
            if !core.can_read(id) {
                break;
            }
            match cio.decoder.next_packet() {
                Ok(Some((hdr, payload))) => {
                    let hdr: Header = hdr;
                    core.handle(id, &hdr, payload);
                    handled += 1;
                }
                Ok(None) => break,
                Err(DecodeError::Oversized { len, .. }) => {
                    let _ = len;
                    self.bad_client(
                        id,
                        "oversized packet",
                        xen_abi::io::xs_wire::XENSTORE_ERROR_PROTO,
                    );
                    return false;
                }
            }
        }
        cio.shrink_if_idle();
        if handled > 0 {
            self.process_actions();
        }
        true
    }

    fn on_readable(&mut self, id: ConnId) {
        let Some(cio) = self.io.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        match cio.transport.wakeup() {
            Ok(Wakeup::Data) => {}
            Ok(Wakeup::Reconnected) => {
                cio.decoder = Decoder::new();
                self.core.reset_conn(id);
            }
            Err(e) => {
                tracing::warn!(conn = id, error = %e, "transport wakeup failed");
                self.drop_conn(id);
                return;
            }
        }
        // Rings: a notification may mean space in the response ring.
        self.work.push(id);
        for _ in 0..MAX_READS {
            if !self.core.can_read(id) {
                break;
            }
            let Server { io, scratch, .. } = self;
            let Some(cio) = io.get_mut(id).and_then(Option::as_mut) else {
                return;
            };
            let room = scratch.len();
            let drained = match cio.transport.read(scratch) {
                Ok(0) => break,
                Ok(n) => {
                    cio.take(&scratch[..n]);
                    n < room && cio.transport.short_read_drains()
                }
                Err(e) => {
                    if let TransportError::Io(err) = &e {
                        tracing::warn!(conn = id, error = %err, "read failed");
                    }
                    self.transport_failed(id, "ring index corrupt", e);
                    return;
                }
            };
            if !self.process_input(id) || drained {
                return;
            }
        }
    }

    fn process_actions(&mut self) {
        let actions = std::mem::take(&mut self.core.actions);
        for a in actions {
            match a {
                DomainAction::Introduced { domid, mfn, port } => {
                    if self.mapper.is_none() {
                        tracing::info!(domid, "domain introduced (no ring mapper: recorded only)");
                        continue;
                    }
                    let old = self.core.domains.get(domid).and_then(|d| d.conn);
                    if let Some(old) = old {
                        self.drop_conn(old);
                    }
                    let Some(m) = self.mapper.as_mut() else {
                        continue;
                    };
                    let features = self
                        .core
                        .domains
                        .get(domid)
                        .map_or(crate::core::SERVER_FEATURES, |d| d.features);
                    match m
                        .map(domid, mfn, port)
                        .and_then(|(page, n)| RingTransport::new(page, n, features))
                    {
                        Ok(t) => {
                            let id = self.core.new_conn(Caller::guest(domid), ConnKind::Domain);
                            if let Err(e) = self.add_io(id, Box::new(t), Some(domid)) {
                                tracing::warn!(domid, error = %e, "cannot poll domain event channel");
                                self.core.close_conn(id);
                                continue;
                            }
                            self.pending_rings.retain(|(d, _)| *d != domid);
                            self.core.attach_domain_conn(domid, id);
                            self.core.restore_conn(domid, id);
                            // The guest may have written before we mapped.
                            self.retry.push(id);
                            tracing::info!(domid, conn = id, "domain ring connected");
                        }
                        Err(e) => {
                            let first = self
                                .pending_rings
                                .iter()
                                .find(|(d, _)| *d == domid)
                                .map(|&(_, t)| t);
                            self.pending_rings.retain(|(d, _)| *d != domid);
                            let since = first.unwrap_or_else(Instant::now);
                            if since.elapsed() < RING_RETRY_FOR {
                                if first.is_none() {
                                    tracing::warn!(domid, error = %e, "cannot map domain ring yet: trying again");
                                }
                                self.pending_rings.push((domid, since));
                            } else {
                                tracing::warn!(domid, error = %e, "cannot map domain ring: gave up");
                            }
                        }
                    }
                }
                DomainAction::Released { domid, conn } => {
                    if let Some(id) = conn {
                        if let Some(io) = self.io.get_mut(id).and_then(Option::take) {
                            // SAFETY: fd owned by io.transport, alive here.
                            let bfd = unsafe { BorrowedFd::borrow_raw(io.transport.fd()) };
                            let _ = self.epoll.delete(bfd);
                        }
                    }
                    if let Some(m) = self.mapper.as_mut() {
                        m.unmap(domid);
                    }
                    tracing::info!(domid, "domain released");
                }
                DomainAction::Features { domid, features } => {
                    if let Some(id) = self.core.domains.get(domid).and_then(|d| d.conn) {
                        if let Some(io) = self.io.get_mut(id).and_then(Option::as_mut) {
                            io.transport.set_features(features);
                        }
                    }
                }
            }
        }
    }

    fn write_out(&mut self, id: ConnId) {
        let Server { core, io, .. } = self;
        let (Some(c), Some(cio)) = (core.conn_mut(id), io.get_mut(id).and_then(Option::as_mut))
        else {
            return;
        };
        let mut err = None;
        for _ in 0..64 {
            let pending = c.out.pending();
            if pending.is_empty() {
                break;
            }
            match cio.transport.write(pending) {
                Ok(0) => break,
                Ok(n) => c.out.consume(n),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        if err.is_none() {
            if let Err(e) = cio.transport.flush() {
                err = Some(e);
            }
        }
        let polls_out = cio.transport.polls_writable();
        let empty = c.out.is_empty();
        if let Some(e) = err {
            self.transport_failed(id, "response ring corrupt", e);
            return;
        }
        let readable = self.core.can_read(id);
        // The replies to what was read are out (or queued for a client
        // not reading them): only now drop the requests from the socket,
        // unless the client sent more meanwhile: that is taken now, when
        // the connection may read, handled in this flush (`retry`) and
        // dropped after its reply.
        let Server {
            io, scratch, retry, ..
        } = self;
        let released = match io.get_mut(id).and_then(Option::as_mut) {
            Some(cio) => match cio.transport.release(scratch, readable) {
                Ok(0) => Ok(()),
                Ok(n) => {
                    cio.take(&scratch[..n]);
                    retry.push(id);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => return,
        };
        if let Err(e) = released {
            self.transport_failed(id, "ring index corrupt", e);
            return;
        }
        let mut want = EpollFlags::empty();
        if readable || !polls_out {
            want |= EpollFlags::EPOLLIN;
        }
        if polls_out && !empty {
            want |= EpollFlags::EPOLLOUT;
        }
        self.set_interest(id, want);
        if readable {
            self.retry.push(id);
        }
    }

    /// Persists the journal, then sends what is queued.
    fn flush(&mut self) -> Result<(), ServerError> {
        for _round in 0..8 {
            self.end_overflowed();
            if let Some(sd) = &mut self.state {
                sd.append(&mut self.core.journal.buf)?;
            }
            let mut work = std::mem::take(&mut self.work);
            self.core.take_dirty(&mut work);
            work.sort_unstable();
            work.dedup();
            for &id in &work {
                self.write_out(id);
            }
            work.clear();
            self.work = work;
            // Connections that were throttled and may read again: handle
            // what they already sent.
            let mut retry = std::mem::take(&mut self.retry);
            retry.sort_unstable();
            retry.dedup();
            let mut again = false;
            for &id in &retry {
                let buffered = self
                    .io
                    .get(id)
                    .and_then(Option::as_ref)
                    .is_some_and(|io| io.decoder.buffered() > 0 || io.domid.is_some());
                if buffered && self.core.can_read(id) {
                    let before = self.core.requests;
                    if self.process_input(id)
                        && self
                            .io
                            .get(id)
                            .and_then(Option::as_ref)
                            .is_some_and(|io| io.domid.is_some())
                    {
                        self.on_ring_retry(id);
                    }
                    again |= self.core.requests != before;
                }
            }
            retry.clear();
            self.retry = retry;
            if !again {
                break;
            }
        }
        if let Some(sd) = &self.state {
            if sd.wants_compaction() {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Ends the connections whose output outgrew its bound
    /// ([`Core::take_overflowed`]; the engine logged it, rate-limited): a
    /// socket is closed, a ring failed until the guest reconnects.
    fn end_overflowed(&mut self) {
        let mut ids = std::mem::take(&mut self.overflowed);
        self.core.take_overflowed(&mut ids);
        for &id in &ids {
            if self.core.conn(id).is_some_and(|c| c.overflowed) {
                self.bad_client(
                    id,
                    "output queue over its bound",
                    xen_abi::io::xs_wire::XENSTORE_ERROR_COMM,
                );
            }
        }
        ids.clear();
        self.overflowed = ids;
    }

    /// A ring gets no new notification for requests it already wrote:
    /// read them when the connection is allowed to read again.
    fn on_ring_retry(&mut self, id: ConnId) {
        for _ in 0..MAX_READS {
            if !self.core.can_read(id) {
                return;
            }
            let Server { io, scratch, .. } = self;
            let Some(cio) = io.get_mut(id).and_then(Option::as_mut) else {
                return;
            };
            match cio.transport.read(scratch) {
                Ok(0) => return,
                Ok(n) => cio.take(&scratch[..n]),
                Err(e) => {
                    self.transport_failed(id, "ring index corrupt", e);
                    return;
                }
            }
            if !self.process_input(id) {
                return;
            }
        }
    }
}
