//! `/dev/xen/xenbus` for the guest's programs: what Linux's
//! `drivers/xen/xenbus/xenbus_dev_frontend.c` gives a Xen guest. Each open
//! file is a xenstore connection of its own: the program writes
//! `xsd_sockmsg` packets and reads the replies and its watches' events;
//! the runtime (the guest's "kernel") carries them all over the domain's
//! one xenstore ring ([`crate::xenstore`]). libxenstore (`xs_open`, hence
//! Debian's `xenstore-read`, `xenstore-write`, `xenstore-watch`) uses it as
//! it uses Linux's.
//!
//! - [`XenbusMux`] is the multiplexer, pure logic over an [`XsConn`]:
//!   packets are reassembled from the writes (any split), each is sent as
//!   a request of the ring's client (which numbers it: the program's
//!   `req_id` is put back in the reply), and the reply is queued for the
//!   handle's reads. As Linux does: a `tx_id` the handle did not start is
//!   answered `ENOENT` without reaching xenstored; `XS_WATCH` registers the
//!   watch under a token of the runtime's own, so watches are per handle
//!   (two handles may use the same token) and their events go to the
//!   handle that set them, with its token; `XS_UNWATCH` answers `OK`.
//!   Every other request (`XS_SET_PERMS`, `XS_INTRODUCE`, `XS_RELEASE`,
//!   ...) goes to xenstored, which decides (and refuses a guest what Dom0
//!   alone may do). A request that does not parse is answered with the
//!   error xenstored would give (`EINVAL`, `ENOSYS`). Closing a handle
//!   aborts its transactions and removes its watches.
//! - Bounds: a handle's unread replies and events stay under
//!   [`MAX_QUEUED_BYTES`] and one reply (events past it are dropped and
//!   counted, a write is refused with `ENOBUFS` until the program reads);
//!   at most [`MAX_HANDLES`] handles and [`MAX_WATCHES`] watches per
//!   handle. As in Linux a write carries part of a packet, up to its end,
//!   never more: a write past a packet's end, or a packet longer than
//!   `XENSTORE_PAYLOAD_MAX`, ends its handle (its transactions and watches
//!   too): that write fails with `EINVAL`, later ones with `EIO`. Nothing
//!   a program writes can stop the runtime.
//! - [`XenbusDev`] serves the multiplexer as a FUSE file (mounted over an
//!   empty regular file, as the PV disks are, [`crate::blockfile`]): direct
//!   I/O, a stream (`FOPEN_STREAM`: a thread may write while another is
//!   blocked reading the same file, as libxenstore's watch thread does),
//!   reads that wait for a reply or an event (the FUSE reply is kept and
//!   sent when one is queued; `O_NONBLOCK` reads get `EAGAIN`), and
//!   `poll`. [`XenbusRouter::run`] (its own thread) moves the ring's watch
//!   events to the handles and answers a waiting read with `EINTR` when a
//!   signal interrupts it, as Linux's interruptible wait does: FUSE waits
//!   for the server's answer even for a killed process (fuser does not
//!   take `FUSE_INTERRUPT`), so the runtime looks every 100 ms for a
//!   pending signal the reading thread does not block in
//!   `/proc/<tid>/status` (a `SIGKILL`, `pthread_cancel`'s, a caught one).
//!   Unlike Linux, a read interrupted by a signal whose handler has
//!   `SA_RESTART` returns `EINTR` instead of restarting.
//!
//! Not served: `/proc/xen/xenbus` (the same device at Linux's old path),
//! and `XS_RESTRICT` (a type Xen removed; answered `ENOSYS`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, PollHandle, ReplyAttr, ReplyData,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyPoll, ReplyWrite, Request as FuseRequest, Session,
    SessionUnmounter, TimeOrNow,
};
use xen_diag::LogLimiter;
use xen_front_platform::PlatformError;
use xenstore_wire::{Header, MsgType, PacketWriter, Request, XsError, XENSTORE_PAYLOAD_MAX};

use crate::xenstore::PvXenstore;

/// Bytes of replies and events a handle may leave unread.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024;
/// Open handles at once (the guest's programs together).
pub const MAX_HANDLES: usize = 256;
/// Watches one handle may set.
pub const MAX_WATCHES: usize = 128;
/// The runtime's watch tokens start so (other tokens on the ring are its
/// frontends').
const TOKEN_PREFIX: &str = "xenbusdev-";
/// How often [`XenbusRouter::run`] looks for interrupted readers.
const SWEEP: Duration = Duration::from_millis(100);
/// Longest sleep of [`XenbusRouter::run`] while no read waits (a safety
/// net).
const ROUTER_IDLE: Duration = Duration::from_secs(30);

/// `FOPEN_DIRECT_IO`: no page cache.
const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_STREAM`: no file position (so no `f_pos` lock between a reader
/// and a writer of the same file).
const FOPEN_STREAM: u32 = 1 << 4;
/// `FUSE_POLL_SCHEDULE_NOTIFY`: the kernel waits for a notification.
const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;
/// The file's inode.
const ROOT_INO: u64 = 1;
const TTL: Duration = Duration::from_secs(3600);

/// Why a handle's operation, or the device, failed.
#[derive(Debug, thiserror::Error)]
pub enum XenbusDevError {
    /// A packet's length is more than xenstore allows; the handle ended.
    #[error("a packet of {0} bytes is longer than xenstore's {XENSTORE_PAYLOAD_MAX}")]
    Oversized(u32),
    /// A write went past the end of its packet, or past the longest
    /// packet; the handle ended.
    #[error("{0} bytes written go past the packet's end")]
    Overlong(usize),
    /// The handle ended after a bad packet.
    #[error("the handle ended after a bad packet")]
    Ended,
    /// The handle is not open.
    #[error("no open handle {0}")]
    NoHandle(u64),
    /// [`MAX_HANDLES`] are open.
    #[error("{MAX_HANDLES} handles are open already")]
    TooManyHandles,
    /// The handle's unread replies and events reached [`MAX_QUEUED_BYTES`].
    #[error("{0} bytes of replies and events are unread")]
    Backlog(usize),
    /// Mounting the FUSE file failed.
    #[error("cannot mount the xenbus device on {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Serving the FUSE requests failed.
    #[error("the xenbus device's server failed")]
    Serve(#[source] std::io::Error),
}

impl XenbusDevError {
    /// The errno the program's `read`/`write`/`open` gets.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            XenbusDevError::Oversized(_) | XenbusDevError::Overlong(_) => libc::EINVAL,
            XenbusDevError::Ended | XenbusDevError::Serve(_) => libc::EIO,
            XenbusDevError::NoHandle(_) => libc::EBADF,
            XenbusDevError::TooManyHandles => libc::ENFILE,
            XenbusDevError::Backlog(_) => libc::ENOBUFS,
            XenbusDevError::Mount { .. } => libc::ENODEV,
        }
    }
}

/// What the multiplexer needs of the guest's xenstore connection.
pub trait XsConn {
    /// Sends `req` in transaction `tx_id`: the reply's payload, or the
    /// error xenstored answered.
    fn request(&self, tx_id: u32, req: &Request<'_>) -> Result<Vec<u8>, XsError>;
    /// `XS_WATCH` of `path` with `token`.
    fn watch(&self, path: &str, token: &str) -> Result<(), XsError>;
    /// `XS_UNWATCH` of `path` with `token`.
    fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError>;
    /// The next watch event (path, token) of the connection, waiting up to
    /// `timeout`; `Ok(None)` early once `done()` holds (looked at before
    /// each wait, so a [`XsConn::wake`] after making it true is never lost).
    fn next_event(
        &self,
        timeout: Duration,
        done: &dyn Fn() -> bool,
    ) -> Result<Option<(String, String)>, XsError>;
    /// Makes a thread waiting in [`XsConn::next_event`] look at its `done`
    /// (a read started waiting, or a stop); nothing for a connection whose
    /// waits end by themselves.
    fn wake(&self) {}
}

fn xs_error(e: &PlatformError) -> XsError {
    match e {
        PlatformError::Xenstore { errno } => XsError::from_errno(*errno).unwrap_or(XsError::Eio),
        _ => XsError::Eio,
    }
}

impl XsConn for PvXenstore {
    fn request(&self, tx_id: u32, req: &Request<'_>) -> Result<Vec<u8>, XsError> {
        self.with_client(|c| c.request(tx_id, req))
            .map_err(|e| xs_error(&e))
    }

    fn watch(&self, path: &str, token: &str) -> Result<(), XsError> {
        self.with_client(|c| c.watch(path, token))
            .map_err(|e| xs_error(&e))
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError> {
        self.with_client(|c| c.unwatch(path, token))
            .map_err(|e| xs_error(&e))
    }

    fn next_event(
        &self,
        timeout: Duration,
        done: &dyn Fn() -> bool,
    ) -> Result<Option<(String, String)>, XsError> {
        self.read_watch_or(Some(timeout), done)
            .map(|ev| ev.map(|ev| (ev.path, ev.token)))
            .map_err(|e| xs_error(&e))
    }

    fn wake(&self) {
        self.wake_readers();
    }
}

/// One open file.
#[derive(Debug, Default)]
struct Handle {
    /// Bytes of a packet not yet whole.
    partial: Vec<u8>,
    /// Replies and events to read.
    out: VecDeque<u8>,
    /// Transactions it started and did not end.
    transactions: BTreeSet<u32>,
    /// Its watches, by the runtime's token.
    watches: Vec<String>,
    /// Ended by a bad packet.
    ended: bool,
    /// Events dropped because `out` was full.
    dropped_events: u64,
}

/// A watch a handle set.
#[derive(Debug)]
struct Watch {
    handle: u64,
    path: String,
    /// The program's token.
    token: Vec<u8>,
}

/// The multiplexer; see the [module docs](self).
#[derive(Debug)]
pub struct XenbusMux {
    handles: HashMap<u64, Handle>,
    /// By the runtime's token.
    watches: HashMap<String, Watch>,
    next_handle: u64,
    next_watch: u64,
    max_queued: usize,
    log: LogLimiter,
}

impl Default for XenbusMux {
    fn default() -> Self {
        Self::new(MAX_QUEUED_BYTES)
    }
}

fn packet(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Header {
        ty,
        req_id,
        tx_id,
        len,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

fn error_packet(hdr: &Header, e: XsError) -> Vec<u8> {
    packet(
        MsgType::Error.as_u32(),
        hdr.req_id,
        hdr.tx_id,
        e.as_payload(),
    )
}

impl XenbusMux {
    /// A multiplexer whose handles keep at most `max_queued` unread bytes.
    #[must_use]
    pub fn new(max_queued: usize) -> Self {
        Self {
            handles: HashMap::new(),
            watches: HashMap::new(),
            next_handle: 1,
            next_watch: 0,
            max_queued,
            log: LogLimiter::new(1, Duration::from_secs(5)),
        }
    }

    /// Opens a handle.
    pub fn open(&mut self) -> Result<u64, XenbusDevError> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(XenbusDevError::TooManyHandles);
        }
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(h, Handle::default());
        Ok(h)
    }

    /// Open handles.
    #[must_use]
    pub fn handles(&self) -> usize {
        self.handles.len()
    }

    /// Watches set through the handles.
    #[must_use]
    pub fn watches(&self) -> usize {
        self.watches.len()
    }

    fn handle(&mut self, h: u64) -> Result<&mut Handle, XenbusDevError> {
        self.handles.get_mut(&h).ok_or(XenbusDevError::NoHandle(h))
    }

    /// Takes `data` written to handle `h` (part of a packet, at most one
    /// packet's end, as Linux's `xenbus_dev_write`): a packet it completes
    /// is served through `conn` and its reply queued. Returns the bytes
    /// taken (all of them).
    pub fn write(
        &mut self,
        h: u64,
        data: &[u8],
        conn: &dyn XsConn,
    ) -> Result<usize, XenbusDevError> {
        let max_queued = self.max_queued;
        let hd = self.handle(h)?;
        if hd.ended {
            return Err(XenbusDevError::Ended);
        }
        if hd.out.len() >= max_queued {
            return Err(XenbusDevError::Backlog(hd.out.len()));
        }
        let have = hd.partial.len() + data.len();
        if have > Header::SIZE + XENSTORE_PAYLOAD_MAX {
            self.end(h, conn);
            return Err(XenbusDevError::Overlong(have));
        }
        hd.partial.extend_from_slice(data);
        let Ok(hdr) = Header::decode(&hd.partial) else {
            return Ok(data.len());
        };
        if hdr.len as usize > XENSTORE_PAYLOAD_MAX {
            self.end(h, conn);
            return Err(XenbusDevError::Oversized(hdr.len));
        }
        let total = Header::SIZE + hdr.len as usize;
        if hd.partial.len() < total {
            return Ok(data.len());
        }
        if hd.partial.len() > total {
            self.end(h, conn);
            return Err(XenbusDevError::Overlong(have));
        }
        let pkt = std::mem::take(&mut hd.partial);
        let reply = self.serve(h, &hdr, &pkt[Header::SIZE..], conn);
        self.handle(h)?.out.extend(reply);
        Ok(data.len())
    }

    /// One packet of handle `h`: the reply to queue.
    fn serve(&mut self, h: u64, hdr: &Header, payload: &[u8], conn: &dyn XsConn) -> Vec<u8> {
        let req = match Request::parse(hdr, payload) {
            Ok(r) => r,
            Err(e) => return error_packet(hdr, e.xs_error()),
        };
        let reply = |payload: &[u8]| packet(hdr.ty, hdr.req_id, hdr.tx_id, payload);
        match req {
            Request::Watch { path, token, .. } => return self.watch(h, hdr, path, token, conn),
            Request::Unwatch { path, token } => {
                self.unwatch(h, path, token, conn);
                return reply(b"OK\0");
            }
            _ => {}
        }
        let Some(hd) = self.handles.get_mut(&h) else {
            return error_packet(hdr, XsError::Eio);
        };
        // Linux's xenbus_write_transaction: only the handle's own.
        if hdr.tx_id != 0 && !hd.transactions.contains(&hdr.tx_id) {
            return error_packet(hdr, XsError::Enoent);
        }
        let r = conn.request(hdr.tx_id, &req);
        match req {
            Request::TransactionStart => {
                if let Ok(p) = &r {
                    let id = std::str::from_utf8(p.split(|&b| b == 0).next().unwrap_or(&[]))
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok());
                    if let Some(id) = id {
                        hd.transactions.insert(id);
                    }
                }
            }
            Request::TransactionEnd { .. } => {
                hd.transactions.remove(&hdr.tx_id);
            }
            _ => {}
        }
        match r {
            Ok(p) => reply(&p),
            Err(e) => error_packet(hdr, e),
        }
    }

    fn watch(
        &mut self,
        h: u64,
        hdr: &Header,
        path: &str,
        token: &[u8],
        conn: &dyn XsConn,
    ) -> Vec<u8> {
        let Some(hd) = self.handles.get_mut(&h) else {
            return error_packet(hdr, XsError::Eio);
        };
        if hd.watches.len() >= MAX_WATCHES {
            return error_packet(hdr, XsError::Enospc);
        }
        let ours = format!("{TOKEN_PREFIX}{}", self.next_watch);
        self.next_watch += 1;
        // Known before xenstored fires it (at once, after its reply).
        self.watches.insert(
            ours.clone(),
            Watch {
                handle: h,
                path: path.to_owned(),
                token: token.to_vec(),
            },
        );
        match conn.watch(path, &ours) {
            Ok(()) => {
                hd.watches.push(ours);
                packet(hdr.ty, hdr.req_id, hdr.tx_id, b"OK\0")
            }
            Err(e) => {
                self.watches.remove(&ours);
                error_packet(hdr, e)
            }
        }
    }

    fn unwatch(&mut self, h: u64, path: &str, token: &[u8], conn: &dyn XsConn) {
        let Some(hd) = self.handles.get_mut(&h) else {
            return;
        };
        let watches = &self.watches;
        let found = hd.watches.iter().position(|t| {
            watches
                .get(t)
                .is_some_and(|w| w.path == path && w.token == token)
        });
        if let Some(i) = found {
            let ours = hd.watches.remove(i);
            self.watches.remove(&ours);
            let _ = conn.unwatch(path, &ours);
        }
    }

    /// Ends handle `h`'s transactions (aborted) and watches.
    fn release(&mut self, hd: &mut Handle, conn: &dyn XsConn) {
        for tx in std::mem::take(&mut hd.transactions) {
            let _ = conn.request(tx, &Request::TransactionEnd { commit: false });
        }
        for ours in std::mem::take(&mut hd.watches) {
            if let Some(w) = self.watches.remove(&ours) {
                let _ = conn.unwatch(&w.path, &ours);
            }
        }
    }

    /// Ends handle `h` after a bad packet: its state is released, its
    /// reads and writes fail from now on.
    fn end(&mut self, h: u64, conn: &dyn XsConn) {
        let Some(mut hd) = self.handles.remove(&h) else {
            return;
        };
        self.release(&mut hd, conn);
        self.handles.insert(
            h,
            Handle {
                ended: true,
                ..Handle::default()
            },
        );
    }

    /// Closes handle `h`: aborts its transactions and removes its watches.
    pub fn close(&mut self, h: u64, conn: &dyn XsConn) {
        if let Some(mut hd) = self.handles.remove(&h) {
            self.release(&mut hd, conn);
            if hd.dropped_events > 0 {
                tracing::debug!(
                    handle = h,
                    dropped = hd.dropped_events,
                    "xenbus device handle closed with dropped watch events"
                );
            }
        }
    }

    /// Up to `max` bytes of handle `h`'s replies and events (`None`:
    /// nothing queued).
    pub fn read(&mut self, h: u64, max: usize) -> Result<Option<Vec<u8>>, XenbusDevError> {
        let hd = self.handle(h)?;
        if hd.ended {
            return Err(XenbusDevError::Ended);
        }
        if hd.out.is_empty() {
            return Ok(None);
        }
        let n = max.min(hd.out.len());
        Ok(Some(hd.out.drain(..n).collect()))
    }

    /// Whether a read of handle `h` returns at once (data, or its error).
    #[must_use]
    pub fn readable(&self, h: u64) -> bool {
        self.handles
            .get(&h)
            .is_none_or(|hd| hd.ended || !hd.out.is_empty())
    }

    /// The connection's watch event (`path`, `token`): queued for the
    /// handle that set the watch, with its token. Returns that handle, or
    /// `None` for an event that is not a handle's (or was dropped).
    pub fn deliver(&mut self, path: &str, token: &str) -> Option<u64> {
        let w = self.watches.get(token)?;
        let mut ev = Vec::new();
        PacketWriter::watch_event(&mut ev, path.as_bytes(), &w.token).ok()?;
        let h = w.handle;
        let hd = self.handles.get_mut(&h)?;
        if hd.out.len() >= self.max_queued {
            hd.dropped_events += 1;
            if self.log.allow() {
                tracing::warn!(
                    handle = h,
                    dropped = hd.dropped_events,
                    "a xenbus device handle does not read its events; dropped"
                );
            }
            return None;
        }
        hd.out.extend(ev);
        Some(h)
    }
}

/// A read waiting for data.
#[derive(Debug)]
struct PendingRead {
    reply: ReplyData,
    size: u32,
    /// The reading thread (in the runtime's PID namespace).
    tid: u32,
}

/// The multiplexer and the FUSE requests waiting on it.
#[derive(Debug, Default)]
struct DevState {
    mux: XenbusMux,
    reads: HashMap<u64, VecDeque<PendingRead>>,
    polls: HashMap<u64, PollHandle>,
}

impl DevState {
    /// Answers handle `h`'s waiting reads and polls that can be answered.
    fn wake(&mut self, h: u64) {
        if let Some(q) = self.reads.get_mut(&h) {
            while let Some(p) = q.front() {
                match self.mux.read(h, p.size as usize) {
                    Ok(None) => break,
                    Ok(Some(d)) => {
                        if let Some(p) = q.pop_front() {
                            p.reply.data(&d);
                        }
                    }
                    Err(e) => {
                        if let Some(p) = q.pop_front() {
                            p.reply.error(e.errno());
                        }
                    }
                }
            }
            if q.is_empty() {
                self.reads.remove(&h);
            }
        }
        if self.mux.readable(h) {
            if let Some(ph) = self.polls.remove(&h) {
                let _ = ph.notify();
            }
        }
    }

    /// Answers `EINTR` to the waiting reads whose thread is gone or has a
    /// signal to take ([`interrupted`]).
    fn sweep(&mut self) {
        for q in self.reads.values_mut() {
            let (dead, live): (VecDeque<_>, VecDeque<_>) = std::mem::take(q)
                .into_iter()
                .partition(|p| interrupted(p.tid));
            *q = live;
            for p in dead {
                p.reply.error(libc::EINTR);
            }
        }
        self.reads.retain(|_, q| !q.is_empty());
    }
}

/// Whether a read of thread `tid` would have been interrupted in Linux's
/// `wait_event_interruptible`: the thread is gone, or a signal it does not
/// block is pending for it or its process (`SigPnd`/`ShdPnd` against
/// `SigBlk` in `/proc/<tid>/status`): a `SIGKILL`, its process exiting,
/// `pthread_cancel`'s signal, a caught signal.
fn interrupted(tid: u32) -> bool {
    let status = match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(s) => s,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let gone = status
        .lines()
        .any(|l| l.starts_with("State:") && (l.contains("zombie") || l.contains("dead")));
    gone || (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

fn lock(m: &Mutex<DevState>) -> MutexGuard<'_, DevState> {
    // Every change of the state completes under the lock or does not
    // start; a panicked holder leaves it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The FUSE file system: one file, the device.
struct XenbusDevFs<'c, C: XsConn> {
    state: Arc<Mutex<DevState>>,
    conn: &'c C,
    uid: u32,
    gid: u32,
    created: SystemTime,
}

impl<C: XsConn> XenbusDevFs<'_, C> {
    fn attr(&self) -> FileAttr {
        FileAttr {
            ino: ROOT_INO,
            size: 0,
            blocks: 0,
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl<C: XsConn> Filesystem for XenbusDevFs<'_, C> {
    fn init(
        &mut self,
        _req: &FuseRequest<'_>,
        _config: &mut KernelConfig,
    ) -> Result<(), libc::c_int> {
        Ok(())
    }

    fn lookup(&mut self, _req: &FuseRequest<'_>, _parent: u64, _name: &OsStr, reply: ReplyEntry) {
        reply.error(libc::ENOTDIR);
    }

    fn getattr(&mut self, _req: &FuseRequest<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if ino == ROOT_INO {
            reply.attr(&TTL, &self.attr());
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn setattr(
        &mut self,
        _req: &FuseRequest<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // A device's attributes do not change (`O_TRUNC` is ignored).
        if ino == ROOT_INO {
            reply.attr(&TTL, &self.attr());
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn open(&mut self, _req: &FuseRequest<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino != ROOT_INO {
            return reply.error(libc::ENOENT);
        }
        match lock(&self.state).mux.open() {
            Ok(h) => reply.opened(h, FOPEN_DIRECT_IO | FOPEN_STREAM),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &mut self,
        req: &FuseRequest<'_>,
        _ino: u64,
        fh: u64,
        _offset: i64,
        size: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut st = lock(&self.state);
        if st.reads.get(&fh).is_some_and(|q| !q.is_empty()) {
            // Reads are answered in order: this one waits behind the others.
            st.reads.entry(fh).or_default().push_back(PendingRead {
                reply,
                size,
                tid: req.pid(),
            });
            return st.wake(fh);
        }
        match st.mux.read(fh, size as usize) {
            Ok(Some(d)) => reply.data(&d),
            Ok(None) if flags & libc::O_NONBLOCK != 0 => reply.error(libc::EAGAIN),
            Ok(None) => {
                st.reads.entry(fh).or_default().push_back(PendingRead {
                    reply,
                    size,
                    tid: req.pid(),
                });
                drop(st);
                // The router sleeps long while no read waits: it now looks
                // for this one's interruption every SWEEP.
                self.conn.wake();
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn write(
        &mut self,
        _req: &FuseRequest<'_>,
        _ino: u64,
        fh: u64,
        _offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut st = lock(&self.state);
        let r = st.mux.write(fh, data, self.conn);
        st.wake(fh);
        match r {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn poll(
        &mut self,
        _req: &FuseRequest<'_>,
        _ino: u64,
        fh: u64,
        ph: PollHandle,
        _events: u32,
        flags: u32,
        reply: ReplyPoll,
    ) {
        let mut st = lock(&self.state);
        // Always writable (a full backlog fails the write at once).
        let mut revents = libc::POLLOUT as u32 | libc::POLLWRNORM as u32;
        if st.mux.readable(fh) {
            revents |= libc::POLLIN as u32 | libc::POLLRDNORM as u32;
        } else if flags & FUSE_POLL_SCHEDULE_NOTIFY != 0 {
            st.polls.insert(fh, ph);
        }
        reply.poll(revents);
    }

    fn flush(&mut self, _req: &FuseRequest<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &FuseRequest<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        st.mux.close(fh, self.conn);
        st.polls.remove(&fh);
        if let Some(q) = st.reads.remove(&fh) {
            for p in q {
                p.reply.error(libc::EBADF);
            }
        }
        reply.ok();
    }

    fn access(&mut self, _req: &FuseRequest<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        if ino == ROOT_INO {
            reply.ok();
        } else {
            reply.error(libc::ENOENT);
        }
    }
}

/// The device mounted and ready to serve; see the [module docs](self).
pub struct XenbusDev<'c, C: XsConn> {
    session: Session<XenbusDevFs<'c, C>>,
    state: Arc<Mutex<DevState>>,
    conn: &'c C,
    path: PathBuf,
}

impl<C: XsConn> std::fmt::Debug for XenbusDev<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenbusDev")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Unmounts a [`XenbusDev`] from another thread.
#[derive(Debug)]
pub struct XenbusDevUnmounter {
    inner: SessionUnmounter,
}

impl XenbusDevUnmounter {
    /// Detaches the mount (`umount2(MNT_DETACH)`).
    pub fn unmount(&mut self) -> Result<(), XenbusDevError> {
        self.inner.unmount().map_err(XenbusDevError::Serve)
    }
}

/// The event router of a [`XenbusDev`]: the shared state and the connection.
pub struct XenbusRouter<'c, C: XsConn> {
    state: Arc<Mutex<DevState>>,
    conn: &'c C,
}

impl<C: XsConn> std::fmt::Debug for XenbusRouter<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenbusRouter").finish_non_exhaustive()
    }
}

impl<C: XsConn> XenbusRouter<'_, C> {
    /// Moves the connection's watch events to the handles and answers the
    /// interrupted reads ([`interrupted`]), until `stop` is set. Run it on a thread of
    /// its own (the connection's events are read at a per-thread cursor).
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            // Sweeps are for waiting reads; without any it sleeps until an
            // event, a new waiting read or a stop wakes it.
            let idle = lock(&self.state).reads.is_empty();
            let wait = if idle { ROUTER_IDLE } else { SWEEP };
            // A read that starts waiting after the look above (or a stop)
            // wakes the connection; `look` then ends the long sleep (a
            // wake-up that came before the wait began is not lost: `look`
            // is looked at first).
            let look =
                || stop.load(Ordering::Relaxed) || (idle && !lock(&self.state).reads.is_empty());
            match self.conn.next_event(wait, &look) {
                Ok(Some((path, token))) if token.starts_with(TOKEN_PREFIX) => {
                    let mut st = lock(&self.state);
                    if let Some(h) = st.mux.deliver(&path, &token) {
                        st.wake(h);
                    }
                }
                Ok(_) => {}
                // The connection reports (rate-limited) and repairs itself.
                Err(_) => std::thread::sleep(SWEEP),
            }
            lock(&self.state).sweep();
        }
    }
}

impl<'c, C: XsConn> XenbusDev<'c, C> {
    /// Mounts the device as the file `path` (an existing empty regular
    /// file), owned by `uid`:`gid`, mode 0600, serving requests over
    /// `conn`.
    pub fn mount(conn: &'c C, path: &Path, uid: u32, gid: u32) -> Result<Self, XenbusDevError> {
        let state = Arc::new(Mutex::new(DevState::default()));
        let fs = XenbusDevFs {
            state: Arc::clone(&state),
            conn,
            uid,
            gid,
            created: SystemTime::now(),
        };
        let opts = [
            MountOption::FSName("xen-xenbus".into()),
            MountOption::Subtype("xenbus".into()),
            MountOption::DefaultPermissions,
            // Guest root (an unprivileged host uid) opens it: its mode
            // and owner decide, not who mounted it.
            MountOption::AllowOther,
        ];
        let session = Session::new(fs, path, &opts).map_err(|source| XenbusDevError::Mount {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            session,
            state,
            conn,
            path: path.to_owned(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that unmounts the device from another thread.
    pub fn unmounter(&mut self) -> XenbusDevUnmounter {
        XenbusDevUnmounter {
            inner: self.session.unmount_callable(),
        }
    }

    /// The event router of this device, for its own thread.
    pub fn router(&self) -> XenbusRouter<'c, C> {
        XenbusRouter {
            state: Arc::clone(&self.state),
            conn: self.conn,
        }
    }

    /// Serves requests until the device is unmounted and released.
    pub fn serve(mut self) -> Result<(), XenbusDevError> {
        self.session.run().map_err(XenbusDevError::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A xenstored of a map, recording what reached it.
    #[derive(Default)]
    struct FakeXs {
        nodes: RefCell<BTreeMap<String, Vec<u8>>>,
        next_tx: RefCell<u32>,
        txs: RefCell<BTreeSet<u32>>,
        watches: RefCell<Vec<(String, String)>>,
        sent: RefCell<Vec<(u32, MsgType)>>,
    }

    impl XsConn for FakeXs {
        fn request(&self, tx_id: u32, req: &Request<'_>) -> Result<Vec<u8>, XsError> {
            self.sent.borrow_mut().push((tx_id, req.msg_type()));
            if tx_id != 0 && !self.txs.borrow().contains(&tx_id) {
                return Err(XsError::Enoent);
            }
            match req {
                Request::Read { path } => self
                    .nodes
                    .borrow()
                    .get(*path)
                    .cloned()
                    .ok_or(XsError::Enoent),
                Request::Write { path, value } => {
                    self.nodes
                        .borrow_mut()
                        .insert((*path).to_owned(), value.to_vec());
                    Ok(b"OK\0".to_vec())
                }
                Request::TransactionStart => {
                    let mut n = self.next_tx.borrow_mut();
                    *n += 1;
                    self.txs.borrow_mut().insert(*n);
                    Ok(format!("{n}\0").into_bytes())
                }
                Request::TransactionEnd { .. } => {
                    self.txs.borrow_mut().remove(&tx_id);
                    Ok(b"OK\0".to_vec())
                }
                Request::Introduce { .. } | Request::Release { .. } => Err(XsError::Eacces),
                _ => Err(XsError::Enosys),
            }
        }

        fn watch(&self, path: &str, token: &str) -> Result<(), XsError> {
            self.watches
                .borrow_mut()
                .push((path.to_owned(), token.to_owned()));
            Ok(())
        }

        fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError> {
            let mut w = self.watches.borrow_mut();
            let n = w.len();
            w.retain(|(p, t)| !(p == path && t == token));
            if w.len() == n {
                Err(XsError::Enoent)
            } else {
                Ok(())
            }
        }

        fn next_event(
            &self,
            _timeout: Duration,
            _done: &dyn Fn() -> bool,
        ) -> Result<Option<(String, String)>, XsError> {
            Ok(None)
        }
    }

    fn req(ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        packet(ty.as_u32(), req_id, tx_id, payload)
    }

    /// Every whole packet queued on `h`: (header, payload).
    fn replies(mux: &mut XenbusMux, h: u64) -> Vec<(Header, Vec<u8>)> {
        let mut bytes = mux.read(h, usize::MAX).expect("open").unwrap_or_default();
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let hdr = Header::decode(&bytes).expect("whole header");
            let end = Header::SIZE + hdr.len as usize;
            out.push((hdr, bytes[Header::SIZE..end].to_vec()));
            bytes.drain(..end);
        }
        out
    }

    #[test]
    fn test_mux_reply_carries_the_programs_req_id_whatever_the_split() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let h = mux.open().expect("open");
        // Byte by byte, then header and payload apart (libxenstore):
        // packets are reassembled.
        for b in &req(MsgType::Write, 0xdead_beef, 0, b"data/x\0v1") {
            assert_eq!(mux.write(h, std::slice::from_ref(b), &xs).expect("w"), 1);
        }
        let read = req(MsgType::Read, 7, 0, b"data/x\0");
        mux.write(h, &read[..Header::SIZE], &xs).expect("header");
        mux.write(h, &read[Header::SIZE..], &xs).expect("payload");
        let r = replies(&mut mux, h);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0.req_id, 0xdead_beef);
        assert_eq!(r[0].0.ty, MsgType::Write.as_u32());
        assert_eq!(r[1].0.req_id, 7);
        assert_eq!(r[1].1, b"v1");
    }

    #[test]
    fn test_mux_error_reply_is_xs_error_with_the_name() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let h = mux.open().expect("open");
        mux.write(h, &req(MsgType::Release, 3, 0, b"5\0"), &xs)
            .expect("w");
        mux.write(h, &req(MsgType::Read, 4, 0, b"no/such\0"), &xs)
            .expect("w");
        let r = replies(&mut mux, h);
        assert_eq!(r[0].0.ty, MsgType::Error.as_u32());
        assert_eq!(r[0].0.req_id, 3);
        assert_eq!(r[0].1, b"EACCES\0");
        assert_eq!(r[1].1, b"ENOENT\0");
    }

    #[test]
    fn test_mux_foreign_tx_id_is_refused_without_reaching_xenstored() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let (a, b) = (mux.open().expect("a"), mux.open().expect("b"));
        mux.write(a, &req(MsgType::TransactionStart, 1, 0, b"\0"), &xs)
            .expect("w");
        let r = replies(&mut mux, a);
        let tx: u32 = std::str::from_utf8(&r[0].1[..r[0].1.len() - 1])
            .expect("utf8")
            .parse()
            .expect("id");
        let sent = xs.sent.borrow().len();
        // b uses a's transaction: refused, xenstored never sees it.
        mux.write(b, &req(MsgType::Write, 2, tx, b"data/y\0z"), &xs)
            .expect("w");
        let r = replies(&mut mux, b);
        assert_eq!(r[0].0.ty, MsgType::Error.as_u32());
        assert_eq!(r[0].1, b"ENOENT\0");
        assert_eq!(xs.sent.borrow().len(), sent);
        assert!(xs.nodes.borrow().get("data/y").is_none());
        // a's own use of it goes through.
        mux.write(a, &req(MsgType::Write, 3, tx, b"data/y\0z"), &xs)
            .expect("w");
        assert_eq!(replies(&mut mux, a)[0].0.ty, MsgType::Write.as_u32());
    }

    #[test]
    fn test_mux_watch_events_go_to_the_handle_that_set_them_with_its_token() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let (a, b) = (mux.open().expect("a"), mux.open().expect("b"));
        // Both use the same token: the runtime's tokens tell them apart.
        mux.write(a, &req(MsgType::Watch, 1, 0, b"data/a\0tok\0"), &xs)
            .expect("w");
        mux.write(b, &req(MsgType::Watch, 1, 0, b"data/b\0tok\0"), &xs)
            .expect("w");
        assert_eq!(replies(&mut mux, a)[0].1, b"OK\0");
        assert_eq!(replies(&mut mux, b)[0].1, b"OK\0");
        let w = xs.watches.borrow().clone();
        assert_eq!(w.len(), 2);
        assert_ne!(w[0].1, w[1].1);
        assert!(w.iter().all(|(_, t)| t.starts_with(TOKEN_PREFIX)));
        let (pb, tb) = w.iter().find(|(p, _)| p == "data/b").expect("b's").clone();
        assert_eq!(mux.deliver(&pb, &tb), Some(b));
        assert!(replies(&mut mux, a).is_empty());
        let r = replies(&mut mux, b);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0.ty, MsgType::WatchEvent.as_u32());
        assert_eq!((r[0].0.req_id, r[0].0.tx_id), (0, 0));
        assert_eq!(r[0].1, b"data/b\0tok\0");
        // Another party's token (a frontend's) is not a handle's.
        assert_eq!(mux.deliver("device/vbd", "vbd-768"), None);
    }

    #[test]
    fn test_mux_unwatch_removes_only_the_handles_own_watch() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let (a, b) = (mux.open().expect("a"), mux.open().expect("b"));
        mux.write(a, &req(MsgType::Watch, 1, 0, b"data/w\0t\0"), &xs)
            .expect("w");
        // b asks to remove a's watch: answered OK (Linux), a's stays.
        mux.write(b, &req(MsgType::Unwatch, 2, 0, b"data/w\0t\0"), &xs)
            .expect("w");
        assert_eq!(replies(&mut mux, b)[0].1, b"OK\0");
        assert_eq!(xs.watches.borrow().len(), 1);
        mux.write(a, &req(MsgType::Unwatch, 2, 0, b"data/w\0t\0"), &xs)
            .expect("w");
        assert!(xs.watches.borrow().is_empty());
        assert_eq!(mux.watches(), 0);
    }

    #[test]
    fn test_mux_close_aborts_transactions_and_removes_watches() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let (a, b) = (mux.open().expect("a"), mux.open().expect("b"));
        mux.write(a, &req(MsgType::TransactionStart, 1, 0, b"\0"), &xs)
            .expect("w");
        mux.write(a, &req(MsgType::Watch, 2, 0, b"data/a\0t\0"), &xs)
            .expect("w");
        mux.write(b, &req(MsgType::Watch, 2, 0, b"data/b\0t\0"), &xs)
            .expect("w");
        let ours_a = xs.watches.borrow()[0].1.clone();
        assert_eq!(xs.txs.borrow().len(), 1);
        mux.close(a, &xs);
        assert!(xs.txs.borrow().is_empty(), "a's transaction aborted");
        assert!(xs
            .sent
            .borrow()
            .iter()
            .any(|&(tx, ty)| tx != 0 && ty == MsgType::TransactionEnd));
        let w = xs.watches.borrow().clone();
        assert_eq!(w.len(), 1, "only b's watch is left: {w:?}");
        assert_eq!(w[0].0, "data/b");
        assert_eq!(mux.deliver("data/a", &ours_a), None);
        assert_eq!(mux.handles(), 1);
        assert!(matches!(mux.read(a, 16), Err(XenbusDevError::NoHandle(_))));
    }

    #[test]
    fn test_mux_oversized_packet_ends_the_handle_and_its_state() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let h = mux.open().expect("open");
        mux.write(h, &req(MsgType::Watch, 1, 0, b"data/a\0t\0"), &xs)
            .expect("w");
        let bad = Header {
            ty: MsgType::Write.as_u32(),
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX as u32 + 1,
        }
        .encode();
        let e = mux.write(h, &bad, &xs).expect_err("oversized");
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(xs.watches.borrow().is_empty(), "its watch is gone");
        let e = mux
            .write(h, &req(MsgType::Read, 1, 0, b"data/a\0"), &xs)
            .expect_err("ended");
        assert_eq!(e.errno(), libc::EIO);
        assert!(mux.readable(h));
        // Another handle is untouched.
        let g = mux.open().expect("open");
        mux.write(g, &req(MsgType::Read, 1, 0, b"data/a\0"), &xs)
            .expect("w");
    }

    #[test]
    fn test_mux_unread_backlog_is_bounded() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::new(256);
        let h = mux.open().expect("open");
        mux.write(h, &req(MsgType::Watch, 1, 0, b"data/a\0t\0"), &xs)
            .expect("w");
        let ours = xs.watches.borrow()[0].1.clone();
        let mut delivered = 0;
        for _ in 0..1000 {
            if mux.deliver("data/a", &ours).is_some() {
                delivered += 1;
            }
        }
        assert!(delivered < 20, "{delivered} events queued");
        let e = mux
            .write(h, &req(MsgType::Read, 2, 0, b"data/a\0"), &xs)
            .expect_err("backlog");
        assert_eq!(e.errno(), libc::ENOBUFS);
        let queued = mux.read(h, usize::MAX).expect("r").expect("data").len();
        assert!(queued <= 256 + 4096 + 16, "{queued}");
        mux.write(h, &req(MsgType::Read, 2, 0, b"data/a\0"), &xs)
            .expect("accepted again once read");
    }

    #[test]
    fn test_mux_write_past_the_packets_end_ends_the_handle() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let h = mux.open().expect("open");
        let mut two = req(MsgType::Write, 1, 0, b"data/x\0a");
        two.extend(req(MsgType::Write, 2, 0, b"data/y\0b"));
        let e = mux.write(h, &two, &xs).expect_err("two packets");
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(xs.sent.borrow().is_empty(), "neither reached xenstored");
        let e = mux.read(h, 16).expect_err("ended");
        assert_eq!(e.errno(), libc::EIO);
        let h = mux.open().expect("open");
        let e = mux.write(h, &vec![0u8; 5000], &xs).expect_err("too long");
        assert_eq!(e.errno(), libc::EINVAL);
    }

    #[test]
    fn test_mux_unparsable_request_gets_xenstoreds_answer_locally() {
        let xs = FakeXs::default();
        let mut mux = XenbusMux::default();
        let h = mux.open().expect("open");
        mux.write(h, &packet(128, 9, 0, b"5\0"), &xs).expect("w");
        mux.write(h, &req(MsgType::Read, 10, 0, b"no-nul"), &xs)
            .expect("w");
        let r = replies(&mut mux, h);
        assert_eq!(r[0].1, b"ENOSYS\0");
        assert_eq!(r[1].1, b"EINVAL\0");
        assert!(xs.sent.borrow().is_empty());
    }

    #[test]
    fn test_interrupted_is_false_for_a_quiet_thread_and_true_for_none() {
        assert!(!interrupted(std::process::id()));
        assert!(interrupted(u32::MAX - 1));
    }

    /// A child killed and reaped on drop, so a failing test leaves no
    /// stopped or sleeping process behind (holding the test's output).
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn test_interrupted_sees_a_pending_signal_the_thread_does_not_block() {
        let mut child = Reaped(
            std::process::Command::new("sh")
                .args(["-c", "trap 'exit 7' USR1; kill -STOP $$; :"])
                .spawn()
                .expect("sh"),
        );
        let pid = child.0.id();
        // Stopped: a signal sent now stays pending.
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("State:\tT")))
        };
        let t0 = std::time::Instant::now();
        while !stopped() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stopped(), "the shell stopped itself");
        assert!(!interrupted(pid));
        // SAFETY: kill(2) on our own child, with a valid signal.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
        assert!(interrupted(pid), "SIGUSR1 pending");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
        let st = child.0.wait().expect("wait");
        assert_eq!(st.code(), Some(7));
    }

    #[test]
    fn test_interrupted_ignores_a_pending_signal_the_thread_blocks() {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60");
        // SAFETY: only async-signal-safe calls (sigemptyset, sigaddset,
        // sigprocmask) between fork and exec; the mask survives exec.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Reaped(cmd.spawn().expect("sleep"));
        let pid = child.0.id();
        // SIGUSR2 (12) is bit 11 of the process's pending set.
        let blocked = || {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("ShdPnd:"))
                    .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .any(|m| m & (1 << (libc::SIGUSR2 - 1)) != 0)
            })
        };
        // SAFETY: kill(2) on our own child, with a valid signal.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
        let t0 = std::time::Instant::now();
        while !blocked() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(blocked(), "SIGUSR2 pending and blocked");
        assert!(!interrupted(pid), "a blocked signal does not interrupt");
    }
}
