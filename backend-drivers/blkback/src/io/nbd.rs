//! NBD exports: a client of the Network Block Device protocol
//! (`doc/proto.md` of the NBD project), over TCP or a Unix socket.
//!
//! Each connection does the fixed-newstyle handshake and `NBD_OPT_GO`
//! (falling back to `NBD_OPT_EXPORT_NAME` if the server does not know
//! it), asking for `NBD_INFO_BLOCK_SIZE`; structured replies are not
//! negotiated, so every reply is a simple one. A connection carries one
//! request at a time; the image keeps a small pool of them (opened on
//! demand, up to [`MAX_CONNECTIONS`]) so that the device's I/O threads
//! have several requests on the server at once. Data moves between the
//! socket and the guest pages with `readv`/`writev` (no copy).
//!
//! Commands: `NBD_CMD_READ`, `NBD_CMD_WRITE`, `NBD_CMD_FLUSH` (when the
//! server sets `NBD_FLAG_SEND_FLUSH`; sent on every connection that wrote
//! since the last flush, with no I/O in flight, so it covers every write
//! completed before it), `NBD_CMD_TRIM` (when `NBD_FLAG_SEND_TRIM`),
//! `NBD_CMD_DISC` when a connection closes. An export with
//! `NBD_FLAG_READ_ONLY` can only be attached read-only. Requests larger
//! than the server's maximum block size are split.
//!
//! Every reply is checked (magic, handle, length): a server that breaks the
//! protocol, closes the connection mid-reply or does not answer within
//! [`IO_TIMEOUT`] marks the image broken ([`NbdError::is_fatal`]), and
//! every later call fails; a server's error answer (`EIO`, ...) fails only
//! that request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use super::iov;
use super::{DiskImage, ImageError, IoVec};

/// Connections one image opens at most.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest wait for a server's answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the handshake of an extra connection (a server that
/// takes one client at a time, `qemu-nbd`'s default `--shared=1`, leaves
/// it in its listen queue): after that the image keeps the connections it
/// has.
pub const EXTRA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OLDSTYLE: u64 = 0x0000_4202_8186_1253;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;

/// Transmission flags (`NBD_FLAG_*`).
pub mod flags {
    /// The flags field is valid.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is understood.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_TRIM` is understood.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// Flush on one connection covers writes on every connection.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Errors of the NBD engine.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The target is not an NBD URI this client understands.
    #[error(
        "{0:?} is not an NBD URI (nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
    )]
    BadUri(String),
    /// The server could not be reached.
    #[error("cannot connect to NBD server {uri}")]
    Connect {
        /// URI.
        uri: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed.
    #[error("NBD handshake with {uri} failed: {what}")]
    Handshake {
        /// URI.
        uri: String,
        /// What, as a sentence.
        what: String,
    },
    /// The export can only be attached read-only.
    #[error("NBD export {0} is read-only; attach the disk read-only")]
    ExportReadOnly(String),
    /// The server broke the protocol.
    #[error("NBD server {uri} broke the protocol: {what}")]
    Protocol {
        /// URI.
        uri: String,
        /// What, as a sentence.
        what: String,
    },
    /// Talking to the server failed (closed, timed out).
    #[error("NBD connection to {uri} failed")]
    Io {
        /// URI.
        uri: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server answered a request with an error.
    #[error("NBD server {uri} answered {op} at offset {offset} with error {errno}")]
    Server {
        /// URI.
        uri: String,
        /// `"read"`, `"write"`, ...
        op: &'static str,
        /// Byte offset.
        offset: u64,
        /// The server's errno value.
        errno: u32,
    },
    /// An earlier failure made the image unusable.
    #[error("NBD disk {uri} is broken: {why}")]
    Broken {
        /// URI.
        uri: String,
        /// The first failure.
        why: String,
    },
    /// The range is outside the export.
    #[error("range {offset}+{len} is outside the {size}-byte export")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Export size.
        size: u64,
    },
    /// A write or trim on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The server cannot trim.
    #[error("the NBD server does not support trim")]
    TrimUnsupported,
}

impl NbdError {
    /// Whether the image is unusable (protocol broken, connection lost).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            NbdError::Protocol { .. } | NbdError::Io { .. } | NbdError::Broken { .. }
        )
    }
}

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdTarget {
    /// TCP: host (name or address) and port.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Export name.
        export: String,
    },
    /// A Unix socket.
    Unix {
        /// Socket path.
        socket: PathBuf,
        /// Export name.
        export: String,
    },
}

impl NbdTarget {
    /// Whether `s` looks like an NBD URI (`nbd:`, `nbd+tcp:`, `nbd+unix:`).
    pub fn is_uri(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+tcp://") || s.starts_with("nbd+unix://")
    }

    /// Parses QEMU's NBD URIs: `nbd://HOST[:PORT]/EXPORT`,
    /// `nbd+tcp://...` (the same), `nbd+unix:///EXPORT?socket=PATH`.
    /// `HOST` may be `[v6 address]`; the export may be empty.
    pub fn parse(uri: &str) -> Result<Self, NbdError> {
        let bad = || NbdError::BadUri(uri.to_string());
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(bad)?;
            let export = path.strip_prefix('/').unwrap_or(path);
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad());
            }
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|s| !s.is_empty())
                .ok_or_else(bad)?;
            return Ok(NbdTarget::Unix {
                socket: PathBuf::from(socket),
                export: export.to_string(),
            });
        }
        let rest = uri
            .strip_prefix("nbd://")
            .or_else(|| uri.strip_prefix("nbd+tcp://"))
            .ok_or_else(bad)?;
        if rest.contains('?') {
            return Err(bad());
        }
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(bad)?;
            (h, p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| bad())?,
        };
        Ok(NbdTarget::Tcp {
            host: host.to_string(),
            port,
            export: export.to_string(),
        })
    }

    /// The export name.
    pub fn export(&self) -> &str {
        match self {
            NbdTarget::Tcp { export, .. } | NbdTarget::Unix { export, .. } => export,
        }
    }

    /// The URI, as QEMU writes it.
    pub fn uri(&self) -> String {
        match self {
            NbdTarget::Tcp { host, port, export } if host.contains(':') => {
                format!("nbd://[{host}]:{port}/{export}")
            }
            NbdTarget::Tcp { host, port, export } => format!("nbd://{host}:{port}/{export}"),
            NbdTarget::Unix { socket, export } => {
                format!("nbd+unix:///{export}?socket={}", socket.display())
            }
        }
    }
}

/// A connected socket.
#[derive(Debug)]
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }

    fn read_exact(&mut self, b: &mut [u8]) -> std::io::Result<()> {
        match self {
            Sock::Tcp(s) => s.read_exact(b),
            Sock::Unix(s) => s.read_exact(b),
        }
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Sock::Tcp(s) => s.write_all(b),
            Sock::Unix(s) => s.write_all(b),
        }
    }
}

/// What the handshake told about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExportInfo {
    size: u64,
    flags: u16,
    min_block: u32,
    pref_block: u32,
    max_block: u32,
}

/// One connection in transmission phase.
#[derive(Debug)]
struct Conn {
    sock: Sock,
    /// Wrote since its last flush.
    dirty: bool,
    /// Between requests (a failed one may have left the stream mid-message).
    clean: bool,
}

impl Conn {
    fn new(sock: Sock) -> Self {
        Self {
            sock,
            dirty: false,
            clean: true,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.clean {
            return;
        }
        // NBD_CMD_DISC: the server closes its end; no reply.
        let mut h = [0u8; 28];
        request_header(&mut h, CMD_DISC, 0, 0, 0);
        let _ = self.sock.write_all(&h);
    }
}

fn request_header(h: &mut [u8; 28], cmd: u16, handle: u64, offset: u64, len: u32) {
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&cmd.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
}

/// A client of one NBD export.
#[derive(Debug)]
pub struct NbdImage {
    target: NbdTarget,
    uri: String,
    info: ExportInfo,
    readonly: bool,
    idle: Mutex<Vec<Conn>>,
    /// Connections open (idle or busy).
    open: Mutex<usize>,
    /// Connections the server takes (lowered when an extra one fails).
    cap: std::sync::atomic::AtomicUsize,
    freed: Condvar,
    /// I/O holds it shared, flush exclusively.
    gate: RwLock<()>,
    broken: AtomicBool,
    why: Mutex<Option<String>>,
    handle: AtomicU64,
}

impl NbdImage {
    /// Connects to the export at `uri` (see [`NbdTarget::parse`]).
    pub fn open_uri(uri: &str, readonly: bool) -> Result<Self, NbdError> {
        Self::open(NbdTarget::parse(uri)?, readonly)
    }

    /// Connects to `target` (one connection now, more on demand).
    pub fn open(target: NbdTarget, readonly: bool) -> Result<Self, NbdError> {
        let uri = target.uri();
        let (sock, info) = connect(&target, &uri, IO_TIMEOUT)?;
        if info.flags & flags::READ_ONLY != 0 && !readonly {
            return Err(NbdError::ExportReadOnly(uri));
        }
        Ok(Self {
            target,
            uri,
            info,
            readonly,
            idle: Mutex::new(vec![Conn::new(sock)]),
            open: Mutex::new(1),
            cap: std::sync::atomic::AtomicUsize::new(MAX_CONNECTIONS),
            freed: Condvar::new(),
            gate: RwLock::new(()),
            broken: AtomicBool::new(false),
            why: Mutex::new(None),
            handle: AtomicU64::new(1),
        })
    }

    /// The export's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The transmission flags the server sent.
    pub fn transmission_flags(&self) -> u16 {
        self.info.flags
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.open.lock().map_or(0, |g| *g)
    }

    fn check(&self) -> Result<(), NbdError> {
        if self.broken.load(Ordering::Acquire) {
            let why = self
                .why
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_default();
            return Err(NbdError::Broken {
                uri: self.uri.clone(),
                why,
            });
        }
        Ok(())
    }

    fn mark_broken(&self, e: &NbdError) {
        let why = xen_diag::ErrorChain(e).to_string();
        if let Ok(mut g) = self.why.lock() {
            if g.is_none() {
                *g = Some(why.clone());
            }
        }
        // Logged once: later calls fail in `check` before reaching here,
        // except the few already in flight.
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::warn!(uri = %self.uri, error = %why, "NBD disk broken");
        }
    }

    /// Takes an idle connection or opens one (waits when all are busy).
    fn take(&self) -> Result<Conn, NbdError> {
        loop {
            self.check()?;
            // `open` is held while looking at `idle`, and `give` notifies
            // under it: a connection given back is never missed.
            let mut open = self.open.lock().map_err(|_| self.poisoned())?;
            if let Some(c) = self.idle.lock().ok().and_then(|mut g| g.pop()) {
                return Ok(c);
            }
            if *open < self.cap.load(Ordering::Relaxed) {
                *open += 1;
                let first = *open == 1;
                drop(open);
                let timeout = if first {
                    IO_TIMEOUT
                } else {
                    EXTRA_CONNECT_TIMEOUT
                };
                return match connect(&self.target, &self.uri, timeout) {
                    Ok((sock, info)) if info.size == self.info.size => Ok(Conn::new(sock)),
                    Ok(_) => {
                        self.lost();
                        let e = NbdError::Protocol {
                            uri: self.uri.clone(),
                            what: "a new connection reports another export size".into(),
                        };
                        self.mark_broken(&e);
                        Err(e)
                    }
                    Err(e) if !first => {
                        // The server takes no more clients: go on with the
                        // connections there are.
                        if let Ok(mut g) = self.open.lock() {
                            *g = g.saturating_sub(1);
                            self.cap.store((*g).max(1), Ordering::Relaxed);
                        }
                        tracing::info!(uri = %self.uri, error = %e,
                            "the NBD server takes no more connections; using the open ones");
                        continue;
                    }
                    Err(e) => {
                        self.lost();
                        Err(e)
                    }
                };
            }
            // Every connection is busy: wait for one to come back.
            let _ = self
                .freed
                .wait_timeout(open, Duration::from_millis(100))
                .map_err(|_| self.poisoned())?;
        }
    }

    fn poisoned(&self) -> NbdError {
        NbdError::Broken {
            uri: self.uri.clone(),
            why: "a lock is poisoned".into(),
        }
    }

    fn give(&self, c: Conn) {
        if let Ok(mut g) = self.idle.lock() {
            g.push(c);
        }
        let _open = self.open.lock();
        self.freed.notify_one();
    }

    /// A connection was dropped.
    fn lost(&self) {
        if let Ok(mut g) = self.open.lock() {
            *g = g.saturating_sub(1);
        }
        self.freed.notify_one();
    }

    fn range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        if offset.checked_add(len).is_none_or(|e| e > self.info.size) {
            return Err(NbdError::OutOfRange {
                offset,
                len,
                size: self.info.size,
            });
        }
        Ok(())
    }

    /// Runs one command on a connection: request, payload (writes), simple
    /// reply, payload (reads).
    ///
    /// # Safety
    ///
    /// `iov` as in [`DiskImage::readv`] (reads) / [`DiskImage::writev`]
    /// (writes); empty for other commands.
    unsafe fn command(
        &self,
        conn: &mut Conn,
        cmd: u16,
        offset: u64,
        len: u32,
        iov: &[IoVec],
    ) -> Result<(), NbdError> {
        let io = |source| NbdError::Io {
            uri: self.uri.clone(),
            source,
        };
        let handle = self.handle.fetch_add(1, Ordering::Relaxed);
        let mut h = [0u8; 28];
        request_header(&mut h, cmd, handle, offset, len);
        let mut out = vec![libc::iovec {
            iov_base: h.as_mut_ptr().cast(),
            iov_len: h.len(),
        }];
        if cmd == CMD_WRITE {
            out.extend(iov.iter().map(|v| libc::iovec {
                iov_base: v.ptr.cast(),
                iov_len: v.len,
            }));
        }
        // SAFETY: `h` lives until the call returns; the caller guarantees
        // the write buffers are readable.
        unsafe { xfer_all(conn.sock.fd(), out, true) }.map_err(io)?;
        let mut r = [0u8; 16];
        conn.sock.read_exact(&mut r).map_err(io)?;
        let magic = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        let error = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
        let mut hb = [0u8; 8];
        hb.copy_from_slice(&r[8..16]);
        let got = u64::from_be_bytes(hb);
        let proto = |what: String| NbdError::Protocol {
            uri: self.uri.clone(),
            what,
        };
        if magic == STRUCTURED_REPLY_MAGIC {
            return Err(proto("a structured reply, which was not negotiated".into()));
        }
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(proto(format!("reply magic {magic:#x}")));
        }
        if got != handle {
            return Err(proto(format!(
                "a reply for handle {got:#x} while {handle:#x} was outstanding"
            )));
        }
        if error != 0 {
            let op = match cmd {
                CMD_READ => "read",
                CMD_WRITE => "write",
                CMD_FLUSH => "flush",
                _ => "trim",
            };
            return Err(NbdError::Server {
                uri: self.uri.clone(),
                op,
                offset,
                errno: error,
            });
        }
        if cmd == CMD_READ {
            let inv = iov
                .iter()
                .map(|v| libc::iovec {
                    iov_base: v.ptr.cast(),
                    iov_len: v.len,
                })
                .collect();
            // SAFETY: the caller guarantees the read buffers are writable.
            unsafe { xfer_all(conn.sock.fd(), inv, false) }.map_err(io)?;
        }
        Ok(())
    }

    /// Runs `cmd` with a pooled connection; on failure the connection is
    /// dropped, and a protocol or connection failure breaks the image.
    ///
    /// # Safety
    ///
    /// As [`NbdImage::command`].
    unsafe fn pooled(
        &self,
        cmd: u16,
        offset: u64,
        len: u32,
        iov: &[IoVec],
    ) -> Result<(), NbdError> {
        let mut c = self.take()?;
        // SAFETY: forwarded from the caller.
        match unsafe { self.command(&mut c, cmd, offset, len, iov) } {
            Ok(()) => {
                if cmd == CMD_WRITE || cmd == CMD_TRIM {
                    c.dirty = true;
                }
                self.give(c);
                Ok(())
            }
            Err(e) if !e.is_fatal() => {
                // An error answer: with simple replies the server sends no
                // payload after it (NBD spec), so the connection goes on.
                self.give(c);
                Err(e)
            }
            Err(e) => {
                self.mark_broken(&e);
                c.clean = false;
                drop(c);
                self.lost();
                Err(e)
            }
        }
    }

    /// Splits a transfer into requests the server accepts.
    ///
    /// # Safety
    ///
    /// As [`NbdImage::command`].
    unsafe fn transfer(&self, cmd: u16, iov: &[IoVec], offset: u64) -> Result<(), NbdError> {
        if cmd == CMD_WRITE && self.readonly {
            return Err(NbdError::ReadOnly);
        }
        let total = iov::total(iov);
        self.range(offset, total as u64)?;
        let _g = self.gate.read().map_err(|_| self.poisoned())?;
        let max = (self.info.max_block as usize).clamp(4096, 32 << 20);
        let mut at = 0usize;
        while at < total {
            let n = (total - at).min(max);
            let sub = iov::slice(iov, at, n);
            // SAFETY: `sub` lies inside the caller's buffers; `n` fits u32.
            unsafe { self.pooled(cmd, offset + at as u64, n as u32, &sub) }?;
            at += n;
        }
        Ok(())
    }

    /// Makes every completed write durable: `NBD_CMD_FLUSH` on every
    /// connection that wrote, with no other request in flight.
    pub fn sync(&self) -> Result<(), NbdError> {
        self.check()?;
        if self.info.flags & flags::SEND_FLUSH == 0 {
            return Ok(());
        }
        let _g = self.gate.write().map_err(|_| self.poisoned())?;
        let mut conns = std::mem::take(&mut *self.idle.lock().map_err(|_| self.poisoned())?);
        let multi = self.info.flags & flags::CAN_MULTI_CONN != 0;
        let mut result = Ok(());
        let mut sent = false;
        for c in &mut conns {
            // With CAN_MULTI_CONN one flush covers every connection.
            if (multi && sent) || (!multi && !c.dirty) {
                c.dirty = false;
                continue;
            }
            sent = true;
            // SAFETY: a flush has no buffers.
            match unsafe { self.command(c, CMD_FLUSH, 0, 0, &[]) } {
                Ok(()) => c.dirty = false,
                Err(e) => {
                    self.mark_broken(&e);
                    c.clean = false;
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            if let Ok(mut g) = self.idle.lock() {
                g.extend(conns);
            }
        } else {
            let n = conns.len();
            drop(conns);
            for _ in 0..n {
                self.lost();
            }
        }
        result
    }

    /// `NBD_CMD_TRIM` over the range.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        if self.readonly {
            return Err(NbdError::ReadOnly);
        }
        if self.info.flags & flags::SEND_TRIM == 0 {
            return Err(NbdError::TrimUnsupported);
        }
        self.range(offset, len)?;
        let _g = self.gate.read().map_err(|_| self.poisoned())?;
        let max = u64::from(u32::MAX) & !0xfff;
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(max);
            // SAFETY: a trim has no buffers.
            unsafe { self.pooled(CMD_TRIM, offset + at, n as u32, &[]) }?;
            at += n;
        }
        Ok(())
    }
}

/// Moves all of the buffers through `fd` (`writev` or `readv`), retrying
/// partial transfers and `EINTR`; end of stream is `UnexpectedEof`.
///
/// # Safety
///
/// Every iovec must be valid (and writable when reading) for the call.
unsafe fn xfer_all(fd: RawFd, mut v: Vec<libc::iovec>, write: bool) -> std::io::Result<()> {
    let mut first = 0usize;
    while first < v.len() {
        if v[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let cnt = (v.len() - first).min(1024) as libc::c_int;
        // SAFETY: the iovecs are valid per the caller; `cnt` is in range;
        // an all-zero msghdr is valid (no name, no control data).
        let r = unsafe {
            if write {
                // sendmsg with MSG_NOSIGNAL: a closed peer is EPIPE, not
                // SIGPIPE.
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = v.as_mut_ptr().add(first);
                msg.msg_iovlen = cnt as usize;
                libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
            } else {
                libc::readv(fd, v.as_ptr().add(first), cnt)
            }
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let mut n = r as usize;
        while n > 0 && first < v.len() {
            if n >= v[first].iov_len {
                n -= v[first].iov_len;
                first += 1;
            } else {
                // SAFETY: `n < iov_len`: the new base stays in the buffer.
                v[first].iov_base = unsafe { v[first].iov_base.cast::<u8>().add(n) }.cast();
                v[first].iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Opens a socket to `target` and does the handshake.
fn connect(
    target: &NbdTarget,
    uri: &str,
    handshake_timeout: Duration,
) -> Result<(Sock, ExportInfo), NbdError> {
    let cerr = |source| NbdError::Connect {
        uri: uri.to_string(),
        source,
    };
    let mut sock = match target {
        NbdTarget::Tcp { host, port, .. } => {
            let s = TcpStream::connect((host.as_str(), *port)).map_err(cerr)?;
            let _ = s.set_nodelay(true);
            s.set_read_timeout(Some(handshake_timeout)).map_err(cerr)?;
            s.set_write_timeout(Some(IO_TIMEOUT)).map_err(cerr)?;
            Sock::Tcp(s)
        }
        NbdTarget::Unix { socket, .. } => {
            let s = UnixStream::connect(socket).map_err(cerr)?;
            s.set_read_timeout(Some(handshake_timeout)).map_err(cerr)?;
            s.set_write_timeout(Some(IO_TIMEOUT)).map_err(cerr)?;
            Sock::Unix(s)
        }
    };
    let info = handshake(&mut sock, target.export(), uri)?;
    let restore = match &sock {
        Sock::Tcp(s) => s.set_read_timeout(Some(IO_TIMEOUT)),
        Sock::Unix(s) => s.set_read_timeout(Some(IO_TIMEOUT)),
    };
    restore.map_err(cerr)?;
    Ok((sock, info))
}

/// The fixed-newstyle handshake, `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME`).
fn handshake(s: &mut Sock, export: &str, uri: &str) -> Result<ExportInfo, NbdError> {
    let hs = |what: String| NbdError::Handshake {
        uri: uri.to_string(),
        what,
    };
    let io = |e: std::io::Error| hs(format!("the connection failed ({e})"));
    let mut b = [0u8; 18];
    s.read_exact(&mut b).map_err(io)?;
    let magic = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
    let opt = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    if magic != NBDMAGIC {
        return Err(hs(format!("the server sent {magic:#x}, not NBDMAGIC")));
    }
    if opt == OLDSTYLE {
        return Err(hs("the server speaks the oldstyle protocol".into()));
    }
    if opt != IHAVEOPT {
        return Err(hs(format!("the server sent {opt:#x}, not IHAVEOPT")));
    }
    let sflags = u16::from_be_bytes([b[16], b[17]]);
    if sflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(hs("the server does not offer fixed newstyle".into()));
    }
    let no_zeroes = sflags & FLAG_NO_ZEROES != 0;
    let cflags = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { 2 } else { 0 };
    s.write_all(&cflags.to_be_bytes()).map_err(io)?;
    if export.len() > 4096 {
        return Err(hs("the export name is longer than 4096 bytes".into()));
    }
    // NBD_OPT_GO: name, then one information request (block sizes).
    let mut data = Vec::with_capacity(export.len() + 8);
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &data).map_err(io)?;
    let mut info = ExportInfo {
        size: 0,
        flags: 0,
        min_block: 1,
        pref_block: 4096,
        max_block: 32 << 20,
    };
    let mut have_export = false;
    for _ in 0..64 {
        let mut r = [0u8; 20];
        s.read_exact(&mut r).map_err(io)?;
        let magic = u64::from_be_bytes(r[0..8].try_into().expect("8 bytes"));
        let ropt = u32::from_be_bytes(r[8..12].try_into().expect("4 bytes"));
        let rtype = u32::from_be_bytes(r[12..16].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(r[16..20].try_into().expect("4 bytes"));
        if magic != REPLY_MAGIC || ropt != OPT_GO {
            return Err(hs(format!(
                "bad option reply (magic {magic:#x}, option {ropt})"
            )));
        }
        if len > 65536 {
            return Err(hs(format!("an option reply of {len} bytes")));
        }
        let mut p = vec![0u8; len as usize];
        s.read_exact(&mut p).map_err(io)?;
        match rtype {
            REP_ACK => {
                if !have_export {
                    return Err(hs("the server did not describe the export".into()));
                }
                return Ok(info);
            }
            REP_INFO if p.len() >= 2 => {
                let it = u16::from_be_bytes([p[0], p[1]]);
                match it {
                    INFO_EXPORT if p.len() == 12 => {
                        info.size = u64::from_be_bytes(p[2..10].try_into().expect("8 bytes"));
                        info.flags = u16::from_be_bytes([p[10], p[11]]);
                        have_export = true;
                    }
                    INFO_BLOCK_SIZE if p.len() == 14 => {
                        let g =
                            |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes"));
                        info.min_block = g(2);
                        info.pref_block = g(6);
                        info.max_block = g(10);
                    }
                    INFO_EXPORT | INFO_BLOCK_SIZE => {
                        return Err(hs(format!("info {it} of {} bytes", p.len())));
                    }
                    _ => {}
                }
            }
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes, uri),
            t if t & 0x8000_0000 != 0 => {
                let msg = String::from_utf8_lossy(&p).into_owned();
                let what = match t & 0x7fff_ffff {
                    2 => "policy forbids it",
                    3 => "invalid request",
                    5 => "TLS is required",
                    6 => "unknown export",
                    7 => "the server is shutting down",
                    _ => "error",
                };
                return Err(hs(format!(
                    "export {export:?} refused: {what} ({t:#x}) {msg}"
                )));
            }
            _ => {}
        }
    }
    Err(hs("too many option replies".into()))
}

fn send_option(s: &mut Sock, opt: u32, data: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

/// `NBD_OPT_EXPORT_NAME`, for servers without `NBD_OPT_GO`.
fn export_name(
    s: &mut Sock,
    export: &str,
    no_zeroes: bool,
    uri: &str,
) -> Result<ExportInfo, NbdError> {
    let io = |e: std::io::Error| NbdError::Handshake {
        uri: uri.to_string(),
        what: format!("NBD_OPT_EXPORT_NAME failed ({e})"),
    };
    send_option(s, OPT_EXPORT_NAME, export.as_bytes()).map_err(io)?;
    let mut b = [0u8; 10];
    s.read_exact(&mut b).map_err(io)?;
    if !no_zeroes {
        let mut z = [0u8; 124];
        s.read_exact(&mut z).map_err(io)?;
    }
    Ok(ExportInfo {
        size: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
        flags: u16::from_be_bytes([b[8], b[9]]),
        min_block: 1,
        pref_block: 4096,
        max_block: 32 << 20,
    })
}

impl DiskImage for NbdImage {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn size(&self) -> u64 {
        self.info.size
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn discard_granularity(&self) -> Option<u64> {
        (self.info.flags & flags::SEND_TRIM != 0 && !self.readonly)
            .then(|| u64::from(self.info.pref_block.clamp(512, 1 << 20)))
    }

    unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { self.transfer(CMD_READ, iov, offset) }?)
    }

    unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { self.transfer(CMD_WRITE, iov, offset) }?)
    }

    fn flush(&self) -> Result<(), ImageError> {
        Ok(self.sync()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match self.trim(offset, len) {
            Err(NbdError::TrimUnsupported) => Err(ImageError::DiscardUnsupported),
            r => Ok(r?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_nbd_uri_forms_parse() {
        assert_eq!(
            NbdTarget::parse("nbd://127.0.0.1:10900/disk").expect("tcp"),
            NbdTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "disk".into()
            }
        );
        assert_eq!(
            NbdTarget::parse("nbd://example").expect("default port"),
            NbdTarget::Tcp {
                host: "example".into(),
                port: DEFAULT_PORT,
                export: String::new()
            }
        );
        assert_eq!(
            NbdTarget::parse("nbd://[::1]:99/e").expect("v6"),
            NbdTarget::Tcp {
                host: "::1".into(),
                port: 99,
                export: "e".into()
            }
        );
        let u = NbdTarget::parse("nbd+unix:///exp?socket=/run/x.sock").expect("unix");
        assert_eq!(
            u,
            NbdTarget::Unix {
                socket: "/run/x.sock".into(),
                export: "exp".into()
            }
        );
        assert_eq!(u.uri(), "nbd+unix:///exp?socket=/run/x.sock");
        for bad in [
            "nbd:///x",
            "nbd://h:port/x",
            "nbd+unix:///x",
            "nbd+unix:///x?socket=",
            "file:///x",
            "nbd://h/x?socket=/a",
        ] {
            assert!(
                matches!(NbdTarget::parse(bad), Err(NbdError::BadUri(_))),
                "{bad}"
            );
        }
    }
}
