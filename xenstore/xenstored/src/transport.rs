//! How bytes reach a connection: a Unix socket or a domain's shared ring
//! (`xenstore_domain_interface`) with an event channel.

use std::any::Any;
use std::fmt;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::eventfd::EventFd;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use xen_abi::io::xs_wire::{XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_RECONNECT};
use xen_ring::bytes::{xs_offsets, XsRing};
use xen_ring::SharedRing;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer broke the ring protocol (`XENSTORE_ERROR_*` code).
    #[error("the peer broke the ring protocol (error {0})")]
    Protocol(u32),
    /// A system call failed.
    #[error("transport I/O failed")]
    Io(#[from] io::Error),
}

/// What an event on the transport's fd meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// Data or space may be available.
    Data,
    /// The guest asked to reconnect: its state was reset.
    Reconnected,
}

/// One connection's byte transport.
pub trait Transport: fmt::Debug {
    /// Reads what is available; `Ok(0)` when nothing is, `Err(Closed)` at
    /// end of stream.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError>;
    /// Writes what fits; `Ok(0)` when nothing does now.
    fn write(&mut self, buf: &[u8]) -> Result<usize, TransportError>;
    /// The fd to poll for readiness.
    fn fd(&self) -> RawFd;
    /// Whether the fd also signals writability (sockets) or only peer
    /// notifications (rings).
    fn polls_writable(&self) -> bool;
    /// Whether a read that returned less than the buffer's size means that
    /// nothing more is available now. For a stream socket it does (the
    /// kernel copies everything queued), so the server does not issue a
    /// second `recv` only to get `EAGAIN`: the level-triggered epoll set
    /// reports the socket again if more arrives. Rings are read from
    /// memory, where one more look costs nothing.
    fn short_read_drains(&self) -> bool {
        false
    }
    /// Called when the fd is readable, before reading.
    fn wakeup(&mut self) -> Result<Wakeup, TransportError> {
        Ok(Wakeup::Data)
    }
    /// Called after a batch of reads and writes (rings notify the peer).
    fn flush(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    /// Called once the replies to what [`Transport::read`] returned were
    /// written: drops those bytes from the kernel's queue, using `scratch`
    /// as a bounce buffer ([`SocketTransport`] only peeks in `read`).
    /// Returns how many new bytes it read into `scratch` instead (only if
    /// `may_read`; the caller handles them as a [`Transport::read`]'s):
    /// then nothing was dropped.
    fn release(&mut self, _scratch: &mut [u8], _may_read: bool) -> Result<usize, TransportError> {
        Ok(0)
    }
    /// Marks the connection failed for the peer (`XENSTORE_ERROR_*`).
    fn fail(&mut self, _error: u32) {}
    /// Publishes `server_features` (rings only).
    fn set_features(&mut self, _features: u32) {}
}

/// Peeked bytes a socket keeps in the kernel's queue while its client
/// sends more: past it they are dropped whatever the client does (a few
/// dozen requests; each small write holds about 1.5 KiB of the client's
/// 208 KiB default send buffer).
const MAX_HELD: usize = 1024;

/// A Unix socket client.
///
/// Requests are peeked (`MSG_PEEK` with `SO_PEEK_OFF`, so each read
/// continues after the last) and dropped from the socket only after their
/// replies were sent ([`Transport::release`]). Consuming a client's bytes
/// wakes every task sleeping on its socket (the kernel's
/// `unix_write_space` on freed send-buffer space): a client blocked in
/// `read` for our reply, as libxenstore's, would be woken for nothing
/// while we work on its request, a cross-CPU wake-up that delays the reply
/// (and often preempts us on our own CPU). Once the reply is out the
/// client is awake already and the release wakes nobody.
#[derive(Debug)]
pub struct SocketTransport {
    stream: UnixStream,
    /// Bytes peeked and not yet dropped from the socket.
    peeked: usize,
}

impl SocketTransport {
    /// Wraps an accepted stream (made non-blocking, peek offset enabled).
    pub fn new(stream: UnixStream) -> io::Result<SocketTransport> {
        stream.set_nonblocking(true)?;
        let zero: libc::c_int = 0;
        // SAFETY: the fd is the live stream's; the kernel reads one c_int
        // from the live local `zero`, whose size is passed.
        let r = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                std::ptr::addr_of!(zero).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketTransport { stream, peeked: 0 })
    }

    /// One `recv(2)`; `Ok(0)` when nothing is available, `Err(Closed)` at
    /// end of stream.
    fn recv(&mut self, buf: &mut [u8], flags: libc::c_int) -> Result<usize, TransportError> {
        loop {
            // SAFETY: the fd is the live stream's; the kernel writes at
            // most `buf.len()` bytes into the live `buf`.
            let r = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags | libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                return Ok(r as usize);
            }
            if r == 0 {
                return Err(TransportError::Closed);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::ConnectionReset => return Err(TransportError::Closed),
                _ => return Err(e.into()),
            }
        }
    }
}

impl Transport for SocketTransport {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.recv(buf, libc::MSG_PEEK)?;
        self.peeked += n;
        Ok(n)
    }

    fn release(&mut self, scratch: &mut [u8], may_read: bool) -> Result<usize, TransportError> {
        if self.peeked == 0 {
            return Ok(0);
        }
        // A client that sent more since our last peek is asleep waiting
        // for its reply (or about to be): dropping bytes now would wake it
        // for nothing. That happens when the client we woke with a reply
        // ran on our CPU at once, sent its next request and blocked before
        // we got here. Its new bytes are returned to be handled at once
        // (no trip through epoll), and everything is dropped after a later
        // reply, when we are not preempted, or once [`MAX_HELD`] are held.
        // Whenever the client has sent nothing more the bytes are dropped
        // at once, so a client blocked in `write` on a small send buffer
        // never waits for us. A connection that may not read (its
        // replies are not being read) keeps them until it may.
        if self.peeked < MAX_HELD {
            if !may_read {
                return Ok(0);
            }
            let n = self.read(scratch)?;
            if n > 0 {
                return Ok(n);
            }
        }
        while self.peeked > 0 {
            let len = self.peeked.min(scratch.len());
            match self.recv(&mut scratch[..len], 0)? {
                // Peeked bytes stay queued until we take them: only a
                // broken socket loses them.
                0 => return Err(TransportError::Closed),
                n => self.peeked -= n,
            }
        }
        Ok(0)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, TransportError> {
        loop {
            match self.stream.write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Err(TransportError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn polls_writable(&self) -> bool {
        true
    }

    fn short_read_drains(&self) -> bool {
        true
    }
}

/// The event channel of a domain connection, seen from xenstored.
pub trait Notifier: fmt::Debug + Send {
    /// Signals the guest.
    fn notify(&self) -> io::Result<()>;
    /// The fd that becomes readable when the guest signals us.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Consumes pending signals from the guest.
    fn ack(&self) -> io::Result<()>;
}

/// A [`Notifier`] over two eventfds (the shim's event channels are
/// eventfds too): `from_guest` is polled, `to_guest` written.
#[derive(Debug)]
pub struct EventFdNotifier {
    /// Guest to xenstored.
    pub from_guest: EventFd,
    /// Xenstored to guest.
    pub to_guest: EventFd,
}

impl Notifier for EventFdNotifier {
    fn notify(&self) -> io::Result<()> {
        self.to_guest.write(1).map(|_| ()).map_err(io::Error::from)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.from_guest.as_fd()
    }

    fn ack(&self) -> io::Result<()> {
        match self.from_guest.read() {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The 4096-byte page holding a domain's `xenstore_domain_interface`,
/// mapped for the lifetime of this value.
pub struct RingPage {
    base: NonNull<u8>,
    unmap: bool,
    _keep: Option<Box<dyn Any + Send>>,
}

// SAFETY: the page is plain shared memory accessed only through atomics and
// volatile copies (xen-ring); the handle owns the mapping.
unsafe impl Send for RingPage {}

impl fmt::Debug for RingPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingPage")
            .field("base", &self.base)
            .finish()
    }
}

/// Size of the ring page.
pub const PAGE_SIZE: usize = 4096;

impl RingPage {
    /// Maps page `index` of `fd` (a memfd, or the shim's grant mapping)
    /// shared and read-write.
    pub fn map_fd(fd: BorrowedFd<'_>, index: i64) -> io::Result<RingPage> {
        let len = NonZeroUsize::new(PAGE_SIZE).expect("page size is not zero");
        let off = index
            .checked_mul(PAGE_SIZE as i64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (addr None),
        // of a file we only read through atomics/volatile accesses; it is
        // unmapped in Drop and never aliased by Rust references.
        let p = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                off,
            )
        }
        .map_err(io::Error::from)?;
        Ok(RingPage {
            base: p.cast(),
            unmap: true,
            _keep: None,
        })
    }

    /// Wraps memory mapped by someone else (the shim's grant mapping).
    ///
    /// # Safety
    ///
    /// `base` must be 4096-byte aligned and valid for reads and writes of
    /// 4096 bytes until `keep` is dropped (which happens when this value
    /// is), and must not be accessed through Rust references meanwhile.
    pub unsafe fn from_raw(base: NonNull<u8>, keep: Box<dyn Any + Send>) -> RingPage {
        RingPage {
            base,
            unmap: false,
            _keep: Some(keep),
        }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= xs_offsets::SIZE);
        // SAFETY: off is a 4-aligned offset inside the 2076-byte interface,
        // which lies in the page valid for the lifetime of self; AtomicU32
        // has the layout of u32 and all accesses to these words are atomic.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn shared(&self) -> io::Result<SharedRing> {
        // SAFETY: the page is valid for PAGE_SIZE bytes while self lives and
        // the ring built on it is dropped before self (RingTransport field
        // order); xenstored builds exactly one server end per page.
        unsafe { SharedRing::new(self.base.as_ptr(), PAGE_SIZE) }
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }
}

impl Drop for RingPage {
    fn drop(&mut self) {
        if self.unmap {
            // SAFETY: base/len are exactly what mmap returned in map_fd.
            let _ = unsafe { munmap(self.base.cast(), PAGE_SIZE) };
        }
    }
}

/// A domain connection over its ring page.
#[derive(Debug)]
pub struct RingTransport {
    ring: XsRing,
    notifier: Box<dyn Notifier>,
    need_notify: bool,
    failed: bool,
    // Dropped last: the ring points into it.
    page: RingPage,
}

impl RingTransport {
    /// Attaches to a domain's page as the server: publishes
    /// `server_features` and takes the indices the page holds.
    pub fn new(
        page: RingPage,
        notifier: Box<dyn Notifier>,
        features: u32,
    ) -> io::Result<RingTransport> {
        let ring = XsRing::server(page.shared()?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        ring.set_server_features(features);
        Ok(RingTransport {
            ring,
            notifier,
            need_notify: false,
            failed: false,
            page,
        })
    }

    fn reconnect(&mut self) -> io::Result<()> {
        for off in [
            xs_offsets::REQ_CONS,
            xs_offsets::REQ_PROD,
            xs_offsets::RSP_CONS,
            xs_offsets::RSP_PROD,
        ] {
            self.page.word(off).store(0, Ordering::SeqCst);
        }
        self.ring = XsRing::server(self.page.shared()?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.ring.set_error(XENSTORE_ERROR_NONE);
        self.failed = false;
        self.ring.set_connection(XENSTORE_CONNECTED);
        self.notifier.notify()
    }
}

impl Transport for RingTransport {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        if self.failed {
            return Ok(0);
        }
        let n = self
            .ring
            .read(buf)
            .map_err(|_| TransportError::Protocol(xen_abi::io::xs_wire::XENSTORE_ERROR_RINGIDX))?;
        if n > 0 {
            self.need_notify = true;
        }
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, TransportError> {
        if self.failed {
            return Ok(0);
        }
        let n = self
            .ring
            .try_write(buf)
            .map_err(|_| TransportError::Protocol(xen_abi::io::xs_wire::XENSTORE_ERROR_RINGIDX))?;
        if n > 0 {
            self.need_notify = true;
        }
        Ok(n)
    }

    fn fd(&self) -> RawFd {
        self.notifier.fd().as_raw_fd()
    }

    fn polls_writable(&self) -> bool {
        false
    }

    fn wakeup(&mut self) -> Result<Wakeup, TransportError> {
        self.notifier.ack()?;
        if self.ring.connection() == XENSTORE_RECONNECT {
            self.reconnect()?;
            return Ok(Wakeup::Reconnected);
        }
        Ok(Wakeup::Data)
    }

    fn flush(&mut self) -> Result<(), TransportError> {
        if self.need_notify {
            self.need_notify = false;
            self.notifier.notify()?;
        }
        Ok(())
    }

    fn set_features(&mut self, features: u32) {
        self.ring.set_server_features(features);
    }

    fn fail(&mut self, error: u32) {
        self.failed = true;
        self.ring.set_error(error);
        let _ = self.notifier.notify();
    }
}

/// Maps introduced domains' rings: the hypervisor shim's Dom0 API (grant
/// entry 1 of the domain, `GNTTAB_RESERVED_XENSTORE`, and its event
/// channel), or a test double.
pub trait DomainMapper: fmt::Debug + Send {
    /// Maps domain `domid`'s xenstore page and binds `port`.
    fn map(&mut self, domid: u16, mfn: u64, port: u32)
        -> io::Result<(RingPage, Box<dyn Notifier>)>;
    /// Called after the domain's connection is closed.
    fn unmap(&mut self, _domid: u16) {}
}
