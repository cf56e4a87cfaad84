//! The Ceph RBD engine: a disk that is an RBD image, through librbd's C
//! API as QEMU's `block/rbd.c` uses it (`rados_create`,
//! `rados_conf_read_file`, `rados_connect`, `rbd_open`, and
//! `rbd_aio_readv`/`writev`/`flush`/`discard` with a completion callback).
//!
//! The target is libxl's (and QEMU's) `rbd:POOL/IMAGE[@SNAP][:OPT=VAL]...`:
//! `conf=PATH` is the Ceph configuration file (default: librados' search,
//! `$CEPH_CONF` then `/etc/ceph/ceph.conf`), `id=USER` the client name
//! (default `admin`), any other `key=value` a librados option
//! (`rados_conf_set`, e.g. `rados_osd_op_timeout=10`). A snapshot is
//! opened read-only and served as a read-only disk. QEMU's `\:` escapes are
//! not supported (a target with a backslash is refused).
//!
//! Timeouts: librados waits forever for an OSD or a monitor by default.
//! Unless the target sets them, this engine sets `client_mount_timeout`
//! ([`DEFAULT_MOUNT_TIMEOUT`]: how long `xl create` waits for an unreachable
//! cluster before it refuses the disk), `rados_mon_op_timeout` and
//! `rados_osd_op_timeout` ([`DEFAULT_OP_TIMEOUT`]: a request the cluster
//! does not answer in time fails with `ETIMEDOUT`, which the guest sees as
//! an I/O error; nothing waits longer). These are set with
//! `rados_conf_set`, so they take precedence over the configuration file;
//! the target's options take precedence over them. It also turns librbd's
//! writeback cache off (`rbd_cache=false`, QEMU's `cache=none`; a target
//! may set `rbd_cache=true`): a write is answered once the OSDs have it.
//!
//! Every request is submitted with `rbd_aio_*` and ends in librbd's
//! completion callback (on a librbd thread). Reads and writes are
//! asynchronous for the device ([`DiskImage::is_async`](super::DiskImage::is_async)):
//! the callback sends the transfer's outcome to its queue worker's
//! completion channel, so a queue keeps its whole ring in flight and its
//! thread never waits for the cluster on a data request. Flush and discard
//! (fences: every earlier request has completed) and the synchronous
//! `readv`/`writev` wait for their callback, at most the op timeout.

use std::ffi::{c_int, c_void, CString};
use std::sync::{Arc, Condvar, Mutex};

use super::raw::IoVec;

/// Default `client_mount_timeout` (seconds; Ceph's is 300).
pub const DEFAULT_MOUNT_TIMEOUT: u32 = 10;
/// Default `rados_osd_op_timeout` and `rados_mon_op_timeout` (seconds;
/// Ceph's is 0, wait forever).
pub const DEFAULT_OP_TIMEOUT: u32 = 30;

/// Errors of the RBD engine.
#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    /// The target is not an RBD target this engine understands.
    #[error("{target:?} is not an RBD target (rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER][:OPTION=VALUE]): {what}")]
    BadTarget {
        /// The target.
        target: String,
        /// What is wrong, as a sentence.
        what: String,
    },
    /// A librados or librbd call failed while attaching the image.
    #[error("cannot attach RBD image {target}: {call} failed")]
    Attach {
        /// The target.
        target: String,
        /// What was called (with its argument).
        call: String,
        /// librados' `-errno`, as an error.
        #[source]
        source: std::io::Error,
    },
    /// The image is read-only (a snapshot) and the disk was asked for
    /// read-write.
    #[error("RBD snapshot {0} is read-only; attach the disk read-only")]
    SnapshotReadOnly(String),
    /// A request failed (`ETIMEDOUT` when the cluster did not answer in
    /// `rados_osd_op_timeout`).
    #[error("RBD {op} on {target} failed")]
    Io {
        /// The target.
        target: String,
        /// The operation.
        op: &'static str,
        /// librbd's `-errno`, as an error.
        #[source]
        source: std::io::Error,
    },
    /// The transfer is too large or has too many buffers for one request.
    #[error("RBD request of {0} buffers is too large")]
    TooLarge(usize),
}

/// A parsed `rbd:` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdTarget {
    /// The pool.
    pub pool: String,
    /// The image.
    pub image: String,
    /// The snapshot (a read-only disk).
    pub snap: Option<String>,
    /// `conf=`: the Ceph configuration file.
    pub conf: Option<String>,
    /// `id=`: the client's user name (without `client.`).
    pub id: Option<String>,
    /// Every other `key=value`, in order (librados options).
    pub options: Vec<(String, String)>,
}

impl RbdTarget {
    /// Whether `t` names an RBD image (`rbd:`).
    pub fn is_target(t: &str) -> bool {
        t.starts_with("rbd:")
    }

    /// Parses `rbd:POOL/IMAGE[@SNAP][:KEY=VALUE]...`.
    pub fn parse(target: &str) -> Result<Self, RbdError> {
        let bad = |what: &str| RbdError::BadTarget {
            target: target.to_string(),
            what: what.to_string(),
        };
        let rest = target
            .strip_prefix("rbd:")
            .ok_or_else(|| bad("it does not start with rbd:"))?;
        if rest.contains('\\') {
            return Err(bad("backslash escapes are not supported"));
        }
        if rest.contains('\0') {
            return Err(bad("it contains a NUL byte"));
        }
        let mut parts = rest.split(':');
        let name = parts.next().unwrap_or_default();
        let (pool, image) = name
            .split_once('/')
            .ok_or_else(|| bad("no POOL/ before the image name"))?;
        let (image, snap) = match image.split_once('@') {
            Some((i, s)) => (i, Some(s)),
            None => (image, None),
        };
        if pool.is_empty() || image.is_empty() || image.contains('/') {
            return Err(bad(
                "the pool and image names must be non-empty (POOL/IMAGE)",
            ));
        }
        if snap.is_some_and(str::is_empty) {
            return Err(bad("the snapshot name after @ is empty"));
        }
        let mut t = RbdTarget {
            pool: pool.to_string(),
            image: image.to_string(),
            snap: snap.map(str::to_string),
            conf: None,
            id: None,
            options: Vec::new(),
        };
        for opt in parts {
            let (k, v) = opt
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| bad(&format!("option {opt:?} is not KEY=VALUE")))?;
            match k {
                "conf" => t.conf = Some(v.to_string()),
                "id" => t.id = Some(v.to_string()),
                _ => t.options.push((k.to_string(), v.to_string())),
            }
        }
        Ok(t)
    }

    /// The target as libxl writes it.
    pub fn uri(&self) -> String {
        let mut s = format!("rbd:{}/{}", self.pool, self.image);
        if let Some(snap) = &self.snap {
            s.push('@');
            s.push_str(snap);
        }
        if let Some(c) = &self.conf {
            s.push_str(":conf=");
            s.push_str(c);
        }
        if let Some(i) = &self.id {
            s.push_str(":id=");
            s.push_str(i);
        }
        for (k, v) in &self.options {
            s.push_str(&format!(":{k}={v}"));
        }
        s
    }
}

/// librados/librbd's C API (Ceph 16, `rados/librados.h` and
/// `rbd/librbd.h`); the handles are opaque pointers.
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    pub type RadosT = *mut c_void;
    pub type IoctxT = *mut c_void;
    pub type ImageT = *mut c_void;
    pub type CompletionT = *mut c_void;
    pub type Callback = extern "C" fn(c: CompletionT, arg: *mut c_void);

    #[link(name = "rados")]
    extern "C" {
        pub fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
        pub fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
        pub fn rados_conf_set(
            cluster: RadosT,
            option: *const c_char,
            value: *const c_char,
        ) -> c_int;
        pub fn rados_connect(cluster: RadosT) -> c_int;
        pub fn rados_shutdown(cluster: RadosT);
        pub fn rados_ioctx_create(cluster: RadosT, pool: *const c_char, io: *mut IoctxT) -> c_int;
        pub fn rados_ioctx_destroy(io: IoctxT);
    }

    #[link(name = "rbd")]
    extern "C" {
        pub fn rbd_open(
            io: IoctxT,
            name: *const c_char,
            image: *mut ImageT,
            snap: *const c_char,
        ) -> c_int;
        pub fn rbd_open_read_only(
            io: IoctxT,
            name: *const c_char,
            image: *mut ImageT,
            snap: *const c_char,
        ) -> c_int;
        pub fn rbd_close(image: ImageT) -> c_int;
        pub fn rbd_get_size(image: ImageT, size: *mut u64) -> c_int;
        pub fn rbd_aio_create_completion(
            arg: *mut c_void,
            cb: Callback,
            c: *mut CompletionT,
        ) -> c_int;
        pub fn rbd_aio_get_return_value(c: CompletionT) -> isize;
        pub fn rbd_aio_release(c: CompletionT);
        pub fn rbd_aio_readv(
            image: ImageT,
            iov: *const libc::iovec,
            iovcnt: c_int,
            off: u64,
            c: CompletionT,
        ) -> c_int;
        pub fn rbd_aio_writev(
            image: ImageT,
            iov: *const libc::iovec,
            iovcnt: c_int,
            off: u64,
            c: CompletionT,
        ) -> c_int;
        pub fn rbd_aio_flush(image: ImageT, c: CompletionT) -> c_int;
        pub fn rbd_aio_discard(image: ImageT, off: u64, len: u64, c: CompletionT) -> c_int;
    }
}

/// What runs when a request completes: gets librbd's return value.
type OnDone = Box<dyn FnOnce(isize) + Send>;

/// librbd's completion callback: hands the result to the request's
/// [`OnDone`] (its boxed box is `arg`) and releases the completion.
extern "C" fn on_complete(c: ffi::CompletionT, arg: *mut c_void) {
    // SAFETY: `c` is the completion librbd completes, valid until released
    // here (once: librbd calls this once per completion).
    let r = unsafe { ffi::rbd_aio_get_return_value(c) };
    // SAFETY: as above; nothing uses `c` after this.
    unsafe { ffi::rbd_aio_release(c) };
    // SAFETY: `arg` is the `Box<OnDone>` leaked by `RbdImage::submit` for
    // this completion, reclaimed exactly once, here.
    let done = unsafe { Box::from_raw(arg.cast::<OnDone>()) };
    // A panic must not unwind into librbd (that aborts backendd).
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(r))).is_err() {
        tracing::error!("an RBD completion handler panicked");
    }
}

/// A request's result, waited for by its submitter.
#[derive(Debug, Default)]
struct Waiter {
    result: Mutex<Option<isize>>,
    cv: Condvar,
}

impl Waiter {
    fn set(&self, r: isize) {
        let mut g = self.result.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(r);
        self.cv.notify_all();
    }

    fn wait(&self) -> isize {
        let mut g = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = *g {
                return r;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One request to submit.
enum Op<'a> {
    Read(&'a [libc::iovec]),
    Write(&'a [libc::iovec]),
    Flush,
    Discard(u64, u64),
}

impl Op<'_> {
    fn name(&self) -> &'static str {
        match self {
            Op::Read(_) => "read",
            Op::Write(_) => "write",
            Op::Flush => "flush",
            Op::Discard(..) => "discard",
        }
    }
}

/// The C iovecs of a transfer in flight, kept until it completes.
struct CIovecs(Vec<libc::iovec>);

// SAFETY: the pointers are only handed to librbd (which reaches the
// buffers from its own threads anyway) and never dereferenced here.
unsafe impl Send for CIovecs {}

/// An open RBD image.
#[derive(Debug)]
pub struct RbdImage {
    target: RbdTarget,
    /// `target.uri()`, made once (every failed request names it).
    uri: Arc<str>,
    cluster: ffi::RadosT,
    ioctx: ffi::IoctxT,
    image: ffi::ImageT,
    size: u64,
    readonly: bool,
}

// SAFETY: librados and librbd handles are thread-safe (QEMU and fio submit
// on them from several threads); this type only hands them to librbd.
unsafe impl Send for RbdImage {}
// SAFETY: as above.
unsafe impl Sync for RbdImage {}

/// `-errno` as an I/O error.
fn errno(r: isize) -> std::io::Error {
    std::io::Error::from_raw_os_error(i32::try_from(-r).unwrap_or(libc::EIO))
}

impl RbdImage {
    /// Connects to the cluster and opens the image (read-only for a
    /// snapshot, which must then be attached read-only).
    pub fn open(target: RbdTarget, readonly: bool) -> Result<Self, RbdError> {
        let uri = target.uri();
        if target.snap.is_some() && !readonly {
            return Err(RbdError::SnapshotReadOnly(uri));
        }
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| RbdError::BadTarget {
                target: uri.clone(),
                what: "it contains a NUL byte".into(),
            })
        };
        let attach = |call: String, r: c_int| RbdError::Attach {
            target: uri.clone(),
            call,
            source: errno(r as isize),
        };
        let id = target.id.as_deref().map(cstr).transpose()?;
        let mut me = RbdImage {
            target: target.clone(),
            uri: Arc::from(uri.as_str()),
            cluster: std::ptr::null_mut(),
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
            size: 0,
            readonly,
        };
        // SAFETY: `me.cluster` is written on success; `id` is a C string or
        // null (the default user).
        let r = unsafe {
            ffi::rados_create(
                &mut me.cluster,
                id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        if r < 0 {
            me.cluster = std::ptr::null_mut();
            return Err(attach("rados_create".into(), r));
        }
        let conf = target.conf.as_deref().map(cstr).transpose()?;
        // SAFETY: a created cluster handle; a C string or null (search).
        let r = unsafe {
            ffi::rados_conf_read_file(
                me.cluster,
                conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        if r < 0 {
            let what = target.conf.as_deref().unwrap_or("the default search path");
            return Err(attach(format!("rados_conf_read_file({what})"), r));
        }
        let mount = DEFAULT_MOUNT_TIMEOUT.to_string();
        let op = DEFAULT_OP_TIMEOUT.to_string();
        let defaults = [
            ("client_mount_timeout", mount.as_str()),
            ("rados_mon_op_timeout", op.as_str()),
            ("rados_osd_op_timeout", op.as_str()),
            // As QEMU's cache=none (and our raw engine's O_DIRECT): a
            // write completes when the OSDs have it, so an outage fails
            // the guest's writes rather than a later flush.
            ("rbd_cache", "false"),
        ];
        let opts = defaults
            .iter()
            .map(|&(k, v)| (k, v))
            .chain(target.options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (k, v) in opts {
            let (ck, cv) = (cstr(k)?, cstr(v)?);
            // SAFETY: a created cluster handle and two C strings.
            let r = unsafe { ffi::rados_conf_set(me.cluster, ck.as_ptr(), cv.as_ptr()) };
            if r < 0 {
                return Err(attach(format!("rados_conf_set({k}={v})"), r));
            }
        }
        // SAFETY: a configured cluster handle; blocks at most
        // `client_mount_timeout`.
        let r = unsafe { ffi::rados_connect(me.cluster) };
        if r < 0 {
            return Err(attach("rados_connect (is the cluster up?)".into(), r));
        }
        let pool = cstr(&target.pool)?;
        // SAFETY: a connected cluster; `me.ioctx` written on success.
        let r = unsafe { ffi::rados_ioctx_create(me.cluster, pool.as_ptr(), &mut me.ioctx) };
        if r < 0 {
            me.ioctx = std::ptr::null_mut();
            return Err(attach(
                format!("rados_ioctx_create(pool {})", target.pool),
                r,
            ));
        }
        let name = cstr(&target.image)?;
        let snap = target.snap.as_deref().map(cstr).transpose()?;
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: an open I/O context, C strings (or null: the head);
        // `me.image` written on success.
        let r = unsafe {
            if readonly {
                ffi::rbd_open_read_only(me.ioctx, name.as_ptr(), &mut me.image, snap_ptr)
            } else {
                ffi::rbd_open(me.ioctx, name.as_ptr(), &mut me.image, snap_ptr)
            }
        };
        if r < 0 {
            me.image = std::ptr::null_mut();
            let what = match &target.snap {
                Some(s) => format!("rbd_open({}/{}@{s})", target.pool, target.image),
                None => format!("rbd_open({}/{})", target.pool, target.image),
            };
            return Err(attach(what, r));
        }
        // SAFETY: an open image; `me.size` written.
        let r = unsafe { ffi::rbd_get_size(me.image, &mut me.size) };
        if r < 0 {
            return Err(attach("rbd_get_size".into(), r));
        }
        Ok(me)
    }

    /// The target.
    pub fn target(&self) -> &RbdTarget {
        &self.target
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether writes and discards are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// `iov` as C iovecs.
    fn iovecs(iov: &[IoVec]) -> Result<Vec<libc::iovec>, RbdError> {
        if iov.len() > c_int::MAX as usize {
            return Err(RbdError::TooLarge(iov.len()));
        }
        Ok(iov
            .iter()
            .map(|v| libc::iovec {
                iov_base: v.ptr.cast::<c_void>(),
                iov_len: v.len,
            })
            .collect())
    }

    /// Reads `offset..` into the buffers.
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` writable bytes for the call.
    pub unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), RbdError> {
        let v = Self::iovecs(iov)?;
        // SAFETY: forwarded from the caller; waits for completion.
        unsafe { self.run_at(Op::Read(&v), offset) }
    }

    /// Writes the buffers at `offset..`.
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` readable bytes for the call.
    pub unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), RbdError> {
        let v = Self::iovecs(iov)?;
        // SAFETY: forwarded from the caller; waits for completion.
        unsafe { self.run_at(Op::Write(&v), offset) }
    }

    /// Submits `op` (a read or write at `offset`); `done` runs once with
    /// librbd's return value (`-errno` on failure), on a librbd thread, or
    /// here if the request could not be submitted.
    ///
    /// # Safety
    ///
    /// The buffers of a read or write, and a read's iovec array, must stay
    /// valid (writable for reads) until `done` has run.
    unsafe fn submit(&self, op: Op<'_>, offset: u64, done: OnDone) {
        let arg = Box::into_raw(Box::new(done)).cast::<c_void>();
        let mut c: ffi::CompletionT = std::ptr::null_mut();
        // SAFETY: `c` is written on success; `arg` is reclaimed by
        // `on_complete` or below.
        let mut r = unsafe { ffi::rbd_aio_create_completion(arg, on_complete, &mut c) };
        if r >= 0 {
            // SAFETY: an open image, a fresh completion; the buffers stay
            // valid until completion (the caller's promise).
            r = unsafe {
                match op {
                    Op::Read(iov) => {
                        ffi::rbd_aio_readv(self.image, iov.as_ptr(), iov.len() as c_int, offset, c)
                    }
                    Op::Write(iov) => {
                        ffi::rbd_aio_writev(self.image, iov.as_ptr(), iov.len() as c_int, offset, c)
                    }
                    Op::Flush => ffi::rbd_aio_flush(self.image, c),
                    Op::Discard(off, len) => ffi::rbd_aio_discard(self.image, off, len, c),
                }
            };
            if r < 0 {
                // SAFETY: the completion was not submitted: never called back.
                unsafe { ffi::rbd_aio_release(c) };
            }
        }
        if r < 0 {
            // SAFETY: not handed to librbd (or refused by it): ours again.
            let done = unsafe { Box::from_raw(arg.cast::<OnDone>()) };
            done(r as isize);
        }
    }

    fn io_error(&self, op: &'static str, r: isize) -> RbdError {
        RbdError::Io {
            target: self.uri.to_string(),
            op,
            source: errno(r),
        }
    }

    /// Runs `op` and waits for its completion (bounded by
    /// `rados_osd_op_timeout`).
    ///
    /// # Safety
    ///
    /// As [`Self::submit`] (this returns only after completion).
    unsafe fn run_at(&self, op: Op<'_>, offset: u64) -> Result<(), RbdError> {
        let name = op.name();
        let w = Arc::new(Waiter::default());
        let w2 = Arc::clone(&w);
        // SAFETY: forwarded; waits for `done` below.
        unsafe { self.submit(op, offset, Box::new(move |r| w2.set(r))) };
        match w.wait() {
            r if r < 0 => Err(self.io_error(name, r)),
            _ => Ok(()),
        }
    }

    /// Starts a read (`write` false) or write of `iov` at `offset`; `done`
    /// runs once with the result, on a librbd thread (or here if it could
    /// not be started).
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` bytes (writable for a read) that
    /// stay valid until `done` has run.
    pub unsafe fn submit_rw(
        &self,
        write: bool,
        iov: &[IoVec],
        offset: u64,
        done: Box<dyn FnOnce(Result<(), RbdError>) + Send>,
    ) {
        // A write of several segments is copied into one buffer first:
        // librbd copies each iovec into a buffer of its own, and a 1 MiB
        // write of 256 page-sized pieces cost its messenger about three
        // times the CPU per byte of one piece (CRC and send), which on a
        // loaded host is the OSD's CPU (1 MiB QD32 writes: 0.66x of fio's
        // rbd engine without this, 0.84-0.87x with it; tests/blkbench
        // README). The copy also snapshots the guest's pages: the bytes
        // librbd checksums are the bytes it sends.
        let mut flat: Vec<u8> = Vec::new();
        let v = if write && iov.len() > 1 {
            let total: usize = iov.iter().map(|v| v.len).sum();
            flat.reserve_exact(total);
            for v in iov {
                // SAFETY: every `iov` points to `len` readable bytes (the
                // caller's promise).
                flat.extend_from_slice(unsafe { std::slice::from_raw_parts(v.ptr, v.len) });
            }
            CIovecs(vec![libc::iovec {
                iov_base: flat.as_mut_ptr().cast::<c_void>(),
                iov_len: total,
            }])
        } else {
            match Self::iovecs(iov) {
                Ok(v) => CIovecs(v),
                Err(e) => return done(Err(e)),
            }
        };
        // librbd keeps a read's iovec array until it completes: `v` moves
        // into the completion (its heap buffer does not move).
        let ptr: *const [libc::iovec] = &v.0[..];
        let (op, name) = if write {
            // SAFETY: `ptr` is `v`'s buffer, alive until `on_done` runs.
            (Op::Write(unsafe { &*ptr }), "write")
        } else {
            // SAFETY: as above.
            (Op::Read(unsafe { &*ptr }), "read")
        };
        let target = Arc::clone(&self.uri);
        let on_done: OnDone = Box::new(move |r| {
            drop(v);
            // The flattened write's buffer, which `v` points into.
            drop(flat);
            done(if r < 0 {
                Err(RbdError::Io {
                    target: target.to_string(),
                    op: name,
                    source: errno(r),
                })
            } else {
                Ok(())
            });
        });
        // SAFETY: the buffers stay valid until `done` (the caller's
        // promise), which runs after the completion; `v` lives in
        // `on_done`.
        unsafe { self.submit(op, offset, on_done) }
    }

    /// Makes every completed write durable (`rbd_aio_flush`).
    pub fn flush(&self) -> Result<(), RbdError> {
        // SAFETY: no buffers.
        unsafe { self.run_at(Op::Flush, 0) }
    }

    /// Discards `offset..offset + len` (`rbd_aio_discard`).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), RbdError> {
        // SAFETY: no buffers.
        unsafe { self.run_at(Op::Discard(offset, len), 0) }
    }
}

impl Drop for RbdImage {
    fn drop(&mut self) {
        // Nothing is in flight: every request is waited for by its caller,
        // who borrows `self`.
        if !self.image.is_null() {
            // SAFETY: an open image, closed once.
            unsafe { ffi::rbd_close(self.image) };
        }
        if !self.ioctx.is_null() {
            // SAFETY: an open I/O context, destroyed once.
            unsafe { ffi::rados_ioctx_destroy(self.ioctx) };
        }
        if !self.cluster.is_null() {
            // SAFETY: a created cluster handle, shut down once.
            unsafe { ffi::rados_shutdown(self.cluster) };
        }
    }
}
