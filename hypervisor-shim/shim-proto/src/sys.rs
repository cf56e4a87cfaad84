//! Linux system interfaces used by the shim: shared-memory mappings,
//! eventfds, epoll, `SOCK_SEQPACKET` messages with `SCM_RIGHTS`, pidfds,
//! volatile copies. Everything platform-specific sits here (but the page
//! windows of Dom0's grant mappings, in `xen-shim-dom0`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

/// Largest control message (bytes of JSON) accepted on the control socket.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Most file descriptors carried by one control message.
pub const MAX_MESSAGE_FDS: usize = 250;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A shared read-write mapping of (part of) a file, unmapped on drop.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain shared memory owned by this handle; all access
// goes through raw pointers with atomic or volatile operations, from any
// thread.
unsafe impl Send for MappedRegion {}
// SAFETY: as above: `&MappedRegion` only hands out raw pointers.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Maps `len` bytes of `fd` from offset 0, shared, readable and writable.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::map_with(fd, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// Maps `len` bytes of `fd` from offset 0, shared, read-only.
    pub fn map_readonly(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::map_with(fd, len, libc::PROT_READ)
    }

    fn map_with(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no
        // existing memory is affected; the fd is valid for the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    /// Base address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: mappings have a length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 32-bit word at byte `off`, for files whose words every party
    /// (processes included) only ever accesses atomically (the active-grant
    /// and ledger files). Panics if the word is misaligned or outside the
    /// region.
    pub fn atomic_u32(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(off % 4 == 0 && off.checked_add(4).is_some_and(|e| e <= self.len));
        // SAFETY: 4-aligned and inside the mapping (checked above; the mapping
        // is page-aligned), valid while `self` lives; the file's words are only
        // accessed atomically.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.as_ptr().add(off).cast()) }
    }

    /// The 64-bit word at byte `off`; as [`Self::atomic_u32`], 8-aligned.
    pub fn atomic_u64(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(off % 8 == 0 && off.checked_add(8).is_some_and(|e| e <= self.len));
        // SAFETY: as in `atomic_u32`, 8-aligned.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.as_ptr().add(off).cast()) }
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `map_with` with this length and is
        // unmapped exactly once; users hold raw pointers only while they hold
        // an `Arc` of the owner.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Creates (exclusively) a shared-memory file of `len` bytes at `path`, mode 0600.
pub fn create_shm_file(path: &Path, len: u64) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    f.set_len(len)?;
    Ok(f)
}

/// Opens an existing shared-memory file read-write.
pub fn open_shm_file(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// Creates an anonymous shared-memory file (memfd) of `len` bytes.
pub fn memfd(name: &str, len: u64) -> io::Result<File> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall with a valid NUL-terminated name.
    let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a fresh fd that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len)?;
    Ok(f)
}

/// Creates a non-blocking, close-on-exec eventfd with counter 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: eventfd returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter: exactly one `write(2)`.
///
/// An `EAGAIN` (counter at its maximum) is success: the event is already
/// pending, and a flood coalesces in the counter.
#[inline]
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to a caller-provided fd.
    let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if n == 8 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Reads and resets a non-blocking eventfd's counter: `Ok(0)` when it was 0.
#[inline]
pub fn eventfd_consume(fd: RawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from a caller-provided fd.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        return Ok(v);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(0)
    } else {
        Err(e)
    }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// One ready event: the registered token and the epoll event bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Token given at registration.
    pub token: u64,
    /// `EPOLLIN`, `EPOLLHUP`... bits.
    pub events: u32,
}

impl Epoll {
    /// Creates an epoll instance (close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live local; both fds are valid for the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Watches `fd` for readability with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, token)
    }

    /// Changes the watched events of `fd` (0 = watch nothing, keep registered).
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (`None` = forever, zero = poll) for events.
    /// `EINTR` gives an empty result.
    pub fn wait(
        &self,
        out: &mut Vec<Ready>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_millis();
                let ms = if ms == 0 && !d.is_zero() { 1 } else { ms };
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let max = max.clamp(1, 64);
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: `evs` has room for `max` <= 64 events.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                max as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(e);
        }
        let n = n as usize;
        for ev in evs.iter().take(n) {
            out.push(Ready {
                token: ev.u64,
                events: ev.events,
            });
        }
        Ok(n)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sends one `SOCK_SEQPACKET` message with `fds` as `SCM_RIGHTS`.
pub fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    if data.len() > MAX_MESSAGE_BYTES || fds.len() > MAX_MESSAGE_FDS {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    let iov = [io::IoSlice::new(data)];
    let cmsgs_with = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs_with };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(_) => return Err(io::Error::other("short write on a SOCK_SEQPACKET socket")),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Receives one `SOCK_SEQPACKET` message and the fds it carries. `Ok(None)`
/// at end of file. A truncated message or truncated fd list is an error (the
/// fds that did arrive are closed).
pub fn recv_msg(
    sock: BorrowedFd<'_>,
    nonblocking: bool,
) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_MESSAGE_FDS]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let res = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags);
        let msg = match res {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: SCM_RIGHTS gave this process a fresh fd that
                        // nothing else owns.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let n = msg.bytes;
        if truncated {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(n);
        return Ok(Some((buf, fds)));
    }
}

/// Credentials of the peer of a Unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Reads `SO_PEERCRED` of a connected Unix socket.
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the right size.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bumped in a child after `fork` (a `pthread_atfork` handler): a thread id
/// cached before the fork is the parent's, not the child's.
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

std::thread_local! {
    /// `(fork generation, tid)` of this thread, 0 tid: not asked yet.
    static TID: std::cell::Cell<(u64, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// The calling thread's id (the kernel's, as `gettid(2)`; cached per thread,
/// asked again after a `fork`). The grant tables' entry locks take it on
/// every map and unmap, so it must not cost a syscall each time.
pub fn gettid() -> u32 {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic (async-signal
        // safe, as a handler run in the child of a fork must be); it stays
        // valid for the life of the process (a plain function).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    let gen = FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed);
    let ask = || {
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() };
        u32::try_from(tid).unwrap_or(u32::MAX)
    };
    TID.try_with(|c| {
        let (g, tid) = c.get();
        if tid != 0 && g == gen {
            return tid;
        }
        let tid = ask();
        c.set((gen, tid));
        tid
    })
    .unwrap_or_else(|_| ask())
}

/// Whether a thread or process with id `tid` exists and runs (`kill(tid,
/// 0)`, then `/proc/<tid>/stat`): a zombie (a SIGKILLed process its parent
/// has not reaped yet) counts as gone, it holds nothing any more.
pub fn task_alive(tid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(tid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    if !(r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)) {
        return false;
    }
    !task_is_zombie(pid)
}

/// Whether `/proc/<tid>/stat` shows a zombie or dead task (`false` when it
/// cannot be read).
fn task_is_zombie(tid: libc::pid_t) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/stat")) else {
        return false;
    };
    s.rfind(')')
        .and_then(|i| s.get(i + 1..))
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|st| st == "Z" || st == "X")
}

/// `n` random bytes from the kernel (`getrandom`).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    let mut tries = 0;
    while done < buf.len() {
        tries += 1;
        if tries > 64 {
            return Err(io::Error::other("getrandom made no progress"));
        }
        let rest = &mut buf[done..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Number of open fds of this process (entries of `/proc/self/fd`, minus the
/// one used to read it).
pub fn count_open_fds() -> io::Result<usize> {
    count_fds_of("self")
}

/// Number of open fds of process `pid` (entries of `/proc/<pid>/fd`).
pub fn count_fds_of(pid: &str) -> io::Result<usize> {
    let n = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(if pid == "self" {
        n.saturating_sub(1)
    } else {
        n
    })
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a live local.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) })?;
    r.rlim_cur = r.rlim_max;
    // SAFETY: `r` is a live local.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) })?;
    Ok(r.rlim_cur)
}

/// Copies `len` bytes between raw pointers, either of which may be shared
/// memory that another party writes concurrently. Uses volatile accesses (8
/// bytes at a time when both sides are aligned) so no Rust reference to the
/// shared bytes exists and the compiler does not assume they are stable.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes; the two
/// ranges must not overlap.
pub unsafe fn volatile_copy(dst: *mut u8, src: *const u8, len: usize) {
    let mut i = 0usize;
    if (dst as usize) % 8 == 0 && (src as usize) % 8 == 0 {
        while i + 8 <= len {
            // SAFETY: `i + 8 <= len` keeps both accesses in bounds (caller's
            // contract) and both pointers are 8-aligned (checked above, and
            // `i` is a multiple of 8).
            unsafe {
                let v = std::ptr::read_volatile(src.add(i).cast::<u64>());
                std::ptr::write_volatile(dst.add(i).cast::<u64>(), v);
            }
            i += 8;
        }
    }
    while i < len {
        // SAFETY: `i < len` keeps both accesses in bounds (caller's contract).
        unsafe {
            let v = std::ptr::read_volatile(src.add(i));
            std::ptr::write_volatile(dst.add(i), v);
        }
        i += 1;
    }
}

/// Fills `len` bytes at `dst` (shared memory) with `byte`, volatile (8
/// bytes at a time between the unaligned edges).
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
pub unsafe fn volatile_fill(dst: *mut u8, byte: u8, len: usize) {
    let head = ((8 - (dst as usize) % 8) % 8).min(len);
    let words = (len - head) / 8;
    let word = u64::from_ne_bytes([byte; 8]);
    for i in 0..head {
        // SAFETY: `i < head <= len` keeps the write in bounds (caller's contract).
        unsafe { std::ptr::write_volatile(dst.add(i), byte) };
    }
    for w in 0..words {
        // SAFETY: `head + 8 * (w + 1) <= len` keeps the write in bounds, and
        // `dst + head` is 8-aligned (the head ends on a boundary).
        unsafe { std::ptr::write_volatile(dst.add(head + 8 * w).cast::<u64>(), word) };
    }
    for i in head + 8 * words..len {
        // SAFETY: `i < len` keeps the write in bounds (caller's contract).
        unsafe { std::ptr::write_volatile(dst.add(i), byte) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_tid() -> u32 {
        // SAFETY: gettid cannot fail.
        u32::try_from(unsafe { libc::gettid() }).expect("tid")
    }

    #[test]
    fn test_volatile_fill_every_edge_touches_exactly_the_range() {
        for start in 0..17 {
            for len in 0..40 {
                let mut buf = [0xeeu8; 64];
                // SAFETY: start + len <= 56 < 64, inside `buf`.
                unsafe { volatile_fill(buf.as_mut_ptr().add(start), 0x5a, len) };
                for (i, &b) in buf.iter().enumerate() {
                    let want = if (start..start + len).contains(&i) {
                        0x5a
                    } else {
                        0xee
                    };
                    assert_eq!(b, want, "start {start} len {len} byte {i}");
                }
            }
        }
    }

    #[test]
    fn test_gettid_cached_matches_kernel_in_each_thread() {
        assert_eq!(gettid(), kernel_tid());
        assert_eq!(gettid(), kernel_tid());
        let other = std::thread::spawn(|| (gettid(), kernel_tid()))
            .join()
            .expect("thread");
        assert_eq!(other.0, other.1);
        assert_ne!(other.0, gettid());
    }

    #[test]
    fn test_gettid_after_fork_is_the_child_s() {
        let parent = gettid();
        // SAFETY: the child only reads its thread id (a thread-local and a
        // raw syscall, no locks) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = gettid() == kernel_tid() && gettid() != parent;
            // SAFETY: ends the child without running the parent's atexit state.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
