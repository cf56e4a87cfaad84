//! Xenstored on the hypervisor shim: domains' rings and `VIRQ_DOM_EXC`
//! through the shim's Dom0 API (`xen_shim_dom0`), as Xen's xenstored uses
//! `/dev/xen/gntdev` and `/dev/xen/evtchn`.
//!
//! [`ShimLink`] is one shared connection to `xen-shimd` that plays three
//! parts, installed by [`crate::run`]:
//!
//! - [`IntroduceCheck`] (in the engine): an `XS_INTRODUCE` is checked and its
//!   ring mapped before it is acknowledged. The domain must exist in the shim
//!   (else `ENOENT`) and not be Dom0; the `mfn` argument must be the store
//!   frame the shim's domain builder wrote into the domain's `start_info`
//!   (`store_mfn`, the layout's xenstore gfn; else `EINVAL`, like
//!   oxenstored's check of the mfn); the domain's grant entry 1
//!   (`GNTTAB_RESERVED_XENSTORE`) is mapped read-write and its port bound
//!   with `bind_interdomain` (a failure of either is `EINVAL`, as the failed
//!   `xengnttab_map_grant_ref`/`xenevtchn_bind_interdomain` calls are in
//!   Xen). A shim that does not answer makes the request fail with `EINVAL`;
//!   the socket side keeps working. Introducing an introduced domain again
//!   binds its port again ("XS_INTRODUCE for recreating the xenbus
//!   event-channel") and maps the page again.
//! - [`DomainMapper`] (in the server): hands the prepared page and
//!   [`ShimNotifier`] to the ring transport; domains restored from the state
//!   directory are mapped the same way.
//! - [`DomainWatcher`]: `VIRQ_DOM_EXC`, bound on the shared event-channel
//!   handle, wakes the server's epoll loop (through a small epoll set of its
//!   own, so that the fd stays the same if the shim comes up later); the
//!   check asks the shim for the domains' states.
//!
//! The handle stays attached to the shim across the shim's restarts by
//! itself ([`ShimLink::keep_attached`]): its connection socket is in the
//! same small epoll set, so the shim going away wakes the server, which
//! hands the handle's ports back to the new shim at once (retrying every
//! [`REATTACH_RETRY`] until it is up). A restarted shim closes the ports no
//! handle reclaimed within its grace (10 s): waiting for the next
//! `XS_INTRODUCE` to reattach, as before, cut every guest's xenstore event
//! channel after a quiet restart. Once reattached, every ring is kicked in
//! both directions (the guest notified, the server's side woken), so a
//! request or reply whose notification fell in the gap is seen.
//!
//! The ring's event channel is a port of the shared [`Evtchn`] handle. The
//! server polls a duplicate of the port's incoming eventfd (owned by the
//! notifier, so it lives exactly as long as the connection), `ack` drains
//! it, `notify` is the handle's one-`write(2)` send. The handle's own wait
//! functions are never used, so they never consume a ring's wake-ups.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use xen_abi::grant_table::GNTTAB_RESERVED_XENSTORE;
use xen_abi::xen::VIRQ_DOM_EXC;
use xen_shim_dom0::{Evtchn, Gntdev};
use xen_shim_proto::protocol::{ControlError, DomainState};
use xen_shim_proto::{EvtchnError, GrantError, ShimError};
use xenstore_wire::{DomId, XsError};

use crate::domain::IntroduceCheck;
use crate::domain_exc::{DomainFate, DomainWatcher};
use crate::transport::{DomainMapper, Notifier, RingPage, PAGE_SIZE};
use xen_diag::{warn_limited, ErrorChain, LogLimiter};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ShimLinkError {
    /// The shim's grant-mapping handle could not be opened (is `xen-shimd`
    /// running?).
    #[error("cannot open a grant-mapping handle on the shim at {0}")]
    Gntdev(PathBuf, #[source] ShimError),
    /// The shim's event-channel handle could not be opened.
    #[error("cannot open an event-channel handle on the shim at {0}")]
    Evtchn(PathBuf, #[source] EvtchnError),
    /// `VIRQ_DOM_EXC` could not be bound.
    #[error("cannot bind VIRQ_DOM_EXC")]
    Virq(#[source] EvtchnError),
    /// Dom0 talks to xenstored over the socket, it has no ring here.
    #[error("domain 0 has no xenstore ring (Dom0 uses the socket)")]
    Dom0,
    /// Port 0 is never a valid event channel.
    #[error("event channel port 0 is invalid")]
    BadPort,
    /// The shim does not know the domain, or it is dying.
    #[error("domain {0} does not exist")]
    NoDomain(DomId),
    /// The `mfn` of `XS_INTRODUCE` is not the domain's store frame.
    #[error("domain {domid}'s store frame is {expected:#x}, not {mfn:#x}")]
    WrongMfn {
        /// The domain.
        domid: DomId,
        /// The frame given.
        mfn: u64,
        /// The frame in its `start_info`.
        expected: u64,
    },
    /// Asking the shim about the domain failed.
    #[error("cannot ask the shim about domain {0}")]
    Control(DomId, #[source] ControlError),
    /// Grant entry 1 of the domain could not be mapped.
    #[error("cannot map grant entry 1 (GNTTAB_RESERVED_XENSTORE) of domain {0}")]
    Map(DomId, #[source] GrantError),
    /// The mapping is not a whole, writable, page-aligned page.
    #[error("the mapping of domain {0}'s xenstore page is not a writable aligned page")]
    BadMapping(DomId),
    /// The domain's port could not be bound.
    #[error("cannot bind port {port} of domain {domid}")]
    Bind {
        /// The domain.
        domid: DomId,
        /// Its port.
        port: u32,
        /// The cause.
        #[source]
        source: EvtchnError,
    },
    /// An fd could not be duplicated or polled.
    #[error("event loop system call failed")]
    Sys(#[from] io::Error),
}

impl ShimLinkError {
    /// The `XS_ERROR` an `XS_INTRODUCE` failing this way gets.
    #[must_use]
    pub fn xs_error(&self) -> XsError {
        match self {
            ShimLinkError::NoDomain(_) => XsError::Enoent,
            _ => XsError::Einval,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations that complete or do
    // not start: a panic elsewhere cannot leave the maps inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Duplicates `raw` (close-on-exec).
///
/// # Safety
///
/// `raw` must be an open fd for the duration of the call.
unsafe fn dup_fd(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: the caller promises `raw` is open during this call; the
    // borrow does not outlive it.
    unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()
}

/// Drains an eventfd (non-blocking: the shim creates them `EFD_NONBLOCK`).
fn drain_eventfd(fd: BorrowedFd<'_>) -> io::Result<()> {
    match xen_shim_proto::sys::eventfd_consume(fd.as_raw_fd()) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// How often a handle whose shim went away tries to reattach.
pub const REATTACH_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Token of the handle's connection socket in `exc`.
const EXC_CONTROL: u64 = 1;
/// Token of the reattach retry timer in `exc`.
const EXC_RETRY: u64 = 2;

/// The event-channel handle's connection as watched in `exc`.
#[derive(Debug, Default)]
struct Attach {
    /// A duplicate of the handle's connection socket, registered in `exc`,
    /// and the socket's inode: a different inode behind the handle's fd
    /// means it reconnected (here or inside a call that met the restart).
    watched: Option<(OwnedFd, u64)>,
    /// The shim went away and the handle is not attached yet.
    lost: bool,
}

fn inode(fd: RawFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
}

/// The connection to the shim, once made.
#[derive(Debug)]
struct Handles {
    gntdev: Gntdev,
    evtchn: Evtchn,
    /// The `VIRQ_DOM_EXC` port's incoming eventfd (a duplicate).
    virq_fd: OwnedFd,
}

/// A ring mapped and bound by [`IntroduceCheck::check`], waiting for the
/// server to take it.
#[derive(Debug)]
struct Prepared {
    mfn: u64,
    remote_port: u32,
    page: RingPage,
    notifier: ShimNotifier,
}

struct Shared {
    socket: PathBuf,
    handles: Mutex<Option<Arc<Handles>>>,
    /// The live binding of each domain: (local port, serial of the notifier
    /// that owns it). A notifier unbinds its port on drop only if it still
    /// owns it (a re-introduction took it over otherwise).
    bound: Mutex<HashMap<DomId, (u32, u64)>>,
    serial: AtomicU64,
    prepared: Mutex<HashMap<DomId, Prepared>>,
    /// Readable when `VIRQ_DOM_EXC` fired; stays the same fd whether or not
    /// the shim is up.
    exc: Epoll,
    attach: Mutex<Attach>,
    /// In `exc`: armed while the handle is lost, to try again.
    retry: TimerFd,
    log: LogLimiter,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("socket", &self.socket)
            .field("connected", &lock(&self.handles).is_some())
            .finish_non_exhaustive()
    }
}

/// The shim behind xenstored; see the [module docs](self). Clones share
/// one connection.
#[derive(Debug, Clone)]
pub struct ShimLink {
    shared: Arc<Shared>,
}

/// A domain ring's event channel: a port of the shared [`Evtchn`] handle.
pub struct ShimNotifier {
    shared: Arc<Shared>,
    handles: Arc<Handles>,
    domid: DomId,
    port: u32,
    serial: u64,
    in_fd: OwnedFd,
}

impl fmt::Debug for ShimNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShimNotifier")
            .field("domid", &self.domid)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ShimNotifier {
    /// The local (Dom0) port.
    #[must_use]
    pub fn port(&self) -> u32 {
        self.port
    }
}

impl Notifier for ShimNotifier {
    fn notify(&self) -> io::Result<()> {
        self.handles
            .evtchn
            .notify(self.port)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.in_fd.as_fd()
    }

    fn ack(&self) -> io::Result<()> {
        drain_eventfd(self.in_fd.as_fd())
    }
}

impl Drop for ShimNotifier {
    fn drop(&mut self) {
        let mine = {
            let mut bound = lock(&self.shared.bound);
            let mine = bound.get(&self.domid) == Some(&(self.port, self.serial));
            if mine {
                bound.remove(&self.domid);
            }
            mine
        };
        if mine {
            if let Err(e) = self.handles.evtchn.unbind(self.port) {
                tracing::debug!(domid = self.domid, port = self.port, error = %e, "unbind failed");
            }
        }
    }
}

impl ShimLink {
    /// A link to the shim whose control socket is `socket`. Connects lazily
    /// (see [`ShimLink::connect`]): the shim may start after xenstored.
    pub fn new(socket: &Path) -> Result<ShimLink, ShimLinkError> {
        let exc = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        let retry = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        exc.add(
            retry.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, EXC_RETRY),
        )
        .map_err(io::Error::from)?;
        Ok(ShimLink {
            shared: Arc::new(Shared {
                socket: socket.to_owned(),
                handles: Mutex::new(None),
                bound: Mutex::new(HashMap::new()),
                serial: AtomicU64::new(1),
                prepared: Mutex::new(HashMap::new()),
                exc,
                attach: Mutex::new(Attach::default()),
                retry,
                log: LogLimiter::new(10, std::time::Duration::from_secs(5)),
            }),
        })
    }

    /// The shim's control socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// Whether the shim was reached.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.handles).is_some()
    }

    /// Connects to the shim if not done yet: opens the grant-mapping and
    /// event-channel handles and binds `VIRQ_DOM_EXC`.
    pub fn connect(&self) -> Result<(), ShimLinkError> {
        self.handles().map(drop)
    }

    fn handles(&self) -> Result<Arc<Handles>, ShimLinkError> {
        let mut slot = lock(&self.shared.handles);
        if let Some(h) = slot.as_ref() {
            return Ok(Arc::clone(h));
        }
        let path = &self.shared.socket;
        let gntdev = Gntdev::open(path).map_err(|e| ShimLinkError::Gntdev(path.clone(), e))?;
        let evtchn = Evtchn::open(path).map_err(|e| ShimLinkError::Evtchn(path.clone(), e))?;
        let virq = evtchn
            .bind_virq(VIRQ_DOM_EXC)
            .map_err(ShimLinkError::Virq)?;
        let raw = evtchn
            .port_in_fd(virq)
            .ok_or(ShimLinkError::Virq(EvtchnError::InvalidPort(virq)))?;
        // SAFETY: `raw` is the incoming eventfd of a port `evtchn` just
        // bound and still holds (nothing can unbind it meanwhile: `evtchn`
        // is local to this function).
        let virq_fd = unsafe { dup_fd(raw) }?;
        self.shared
            .exc
            .add(virq_fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(io::Error::from)?;
        tracing::info!(socket = %path.display(), virq_port = virq, "connected to the hypervisor shim");
        let h = Arc::new(Handles {
            gntdev,
            evtchn,
            virq_fd,
        });
        *slot = Some(Arc::clone(&h));
        drop(slot);
        self.watch_control(&mut lock(&self.shared.attach), &h);
        Ok(h)
    }

    /// Registers the handle's current connection socket in `exc` (a
    /// duplicate, so the registration lives as long as it); returns
    /// whether it replaced another one (the handle reconnected).
    fn watch_control(&self, st: &mut Attach, h: &Handles) -> bool {
        let Some(fd) = h.evtchn.control_fd() else {
            return false;
        };
        let ino = inode(fd);
        if ino.is_some() && st.watched.as_ref().map(|w| w.1) == ino {
            return false;
        }
        let had = self.unwatch_control(st);
        // SAFETY: `fd` is the handle's live connection socket (the handle
        // is borrowed for this call); dup_fd makes a descriptor of our own.
        let Ok(dup) = (unsafe { dup_fd(fd) }) else {
            return had;
        };
        let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, EXC_CONTROL);
        if self.shared.exc.add(dup.as_fd(), ev).is_ok() {
            st.watched = Some((dup, ino.unwrap_or(0)));
        }
        had
    }

    /// Takes the watched socket out of `exc`; whether one was watched.
    fn unwatch_control(&self, st: &mut Attach) -> bool {
        match st.watched.take() {
            Some((dup, _)) => {
                let _ = self.shared.exc.delete(dup.as_fd());
                true
            }
            None => false,
        }
    }

    /// Reads the notifications queued on the event-channel handle's socket
    /// (peers closing our ports), so that it never fills up, and, if the
    /// shim went away, hands the handle's ports back to the new one (see
    /// the [module docs](self)); returns whether the handle is attached.
    fn keep_attached(&self, h: &Handles) -> bool {
        let _ = h.evtchn.take_control_events();
        let _ = self.shared.retry.wait();
        let mut st = lock(&self.shared.attach);
        match h.evtchn.reattach() {
            Ok(()) => {
                let was_lost = std::mem::replace(&mut st.lost, false);
                let _ = self.shared.retry.unset();
                if self.watch_control(&mut st, h) || was_lost {
                    drop(st);
                    tracing::info!("the hypervisor shim restarted: event channels reattached");
                    self.kick_rings(h);
                }
                true
            }
            Err(e) => {
                if !st.lost {
                    tracing::warn!(error = %e, "the hypervisor shim went away: reattaching");
                }
                st.lost = true;
                self.unwatch_control(&mut st);
                let at = TimeSpec::from_duration(REATTACH_RETRY);
                let _ = self
                    .shared
                    .retry
                    .set(Expiration::OneShot(at), TimerSetTimeFlags::empty());
                false
            }
        }
    }

    /// After a reattach: notifies every domain's ring port (the guest looks
    /// at its ring again) and wakes the server's side of each (it reads
    /// what the guest wrote meanwhile).
    fn kick_rings(&self, h: &Handles) {
        let ports: Vec<u32> = lock(&self.shared.bound).values().map(|&(p, _)| p).collect();
        for port in ports {
            if let Err(e) = h.evtchn.notify(port) {
                tracing::debug!(port, error = %e, "kick after reattach failed");
            }
            if let Some(fd) = h.evtchn.port_in_fd(port) {
                let _ = xen_shim_proto::sys::eventfd_signal(fd);
            }
        }
    }

    /// Binds `port` of `domid`, first dropping the domain's live binding
    /// (a re-introduction).
    fn bind(
        &self,
        h: &Arc<Handles>,
        domid: DomId,
        port: u32,
    ) -> Result<ShimNotifier, ShimLinkError> {
        let old = lock(&self.shared.bound).remove(&domid);
        if let Some((p, _)) = old {
            let _ = h.evtchn.unbind(p);
        }
        let local =
            h.evtchn
                .bind_interdomain(domid, port)
                .map_err(|source| ShimLinkError::Bind {
                    domid,
                    port,
                    source,
                })?;
        let raw = match h.evtchn.port_in_fd(local) {
            Some(fd) => fd,
            None => {
                let _ = h.evtchn.unbind(local);
                return Err(ShimLinkError::Bind {
                    domid,
                    port,
                    source: EvtchnError::InvalidPort(local),
                });
            }
        };
        // SAFETY: `raw` is the incoming eventfd of port `local`, bound just
        // now on `h.evtchn`; only this thread unbinds ports of this handle.
        let in_fd = match unsafe { dup_fd(raw) } {
            Ok(fd) => fd,
            Err(e) => {
                let _ = h.evtchn.unbind(local);
                return Err(e.into());
            }
        };
        let serial = self.shared.serial.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.bound).insert(domid, (local, serial));
        Ok(ShimNotifier {
            shared: Arc::clone(&self.shared),
            handles: Arc::clone(h),
            domid,
            port: local,
            serial,
            in_fd,
        })
    }

    /// Maps grant entry 1 of `domid` read-write.
    fn map_page(h: &Handles, domid: DomId) -> Result<RingPage, ShimLinkError> {
        let m = h
            .gntdev
            .map_grant_ref(domid, GNTTAB_RESERVED_XENSTORE, true)
            .map_err(|e| ShimLinkError::Map(domid, e))?;
        let ptr = m
            .as_mut_ptr()
            .and_then(NonNull::new)
            .filter(|p| p.as_ptr() as usize % PAGE_SIZE == 0 && m.len() >= PAGE_SIZE)
            .ok_or(ShimLinkError::BadMapping(domid))?;
        // SAFETY: checked just above: `ptr` is page-aligned, writable and
        // `m` covers at least PAGE_SIZE bytes from it; the mapping stays valid
        // until `m` is dropped, which the RingPage does when it goes, and the
        // page is only accessed through xen-ring's atomics and volatile
        // copies (never through references).
        Ok(unsafe { RingPage::from_raw(ptr, Box::new(m)) })
    }

    /// Checks, maps and binds (see the module docs).
    fn prepare(&self, domid: DomId, mfn: u64, port: u32) -> Result<Prepared, ShimLinkError> {
        if domid == 0 {
            return Err(ShimLinkError::Dom0);
        }
        if port == 0 {
            return Err(ShimLinkError::BadPort);
        }
        let h = self.handles()?;
        self.keep_attached(&h);
        let info = match h.gntdev.control().domain_info(domid) {
            Ok(i) => i,
            Err(e) if e.errno() == Some(libc::ESRCH) => return Err(ShimLinkError::NoDomain(domid)),
            Err(e) => return Err(ShimLinkError::Control(domid, e)),
        };
        if info.state == DomainState::Dying {
            return Err(ShimLinkError::NoDomain(domid));
        }
        let expected = info.layout.xenstore_gfn();
        if mfn != expected {
            return Err(ShimLinkError::WrongMfn {
                domid,
                mfn,
                expected,
            });
        }
        let page = Self::map_page(&h, domid)?;
        let notifier = self.bind(&h, domid, port)?;
        Ok(Prepared {
            mfn,
            remote_port: port,
            page,
            notifier,
        })
    }

    fn warn(&self, domid: DomId, e: &ShimLinkError) {
        warn_limited!(self.shared.log, domid, error = %ErrorChain(e), "domain ring not connected");
    }
}

impl IntroduceCheck for ShimLink {
    fn check(&mut self, domid: DomId, mfn: u64, port: u32) -> Result<(), XsError> {
        match self.prepare(domid, mfn, port) {
            Ok(p) => {
                let old = lock(&self.shared.prepared).insert(domid, p);
                drop(old);
                Ok(())
            }
            Err(e) => {
                self.warn(domid, &e);
                Err(e.xs_error())
            }
        }
    }
}

impl DomainMapper for ShimLink {
    fn map(
        &mut self,
        domid: u16,
        mfn: u64,
        port: u32,
    ) -> io::Result<(RingPage, Box<dyn Notifier>)> {
        let ready = lock(&self.shared.prepared).remove(&domid);
        if let Some(p) = ready {
            if p.mfn == mfn && p.remote_port == port {
                return Ok((p.page, Box::new(p.notifier)));
            }
            drop(p);
        }
        // Not checked through XS_INTRODUCE: a domain restored from the
        // state directory.
        match self.prepare(domid, mfn, port) {
            Ok(p) => Ok((p.page, Box::new(p.notifier))),
            Err(e) => Err(io::Error::other(ErrorChain(&e).to_string())),
        }
    }

    fn unmap(&mut self, domid: u16) {
        let live = lock(&self.shared.bound).contains_key(&domid);
        if live {
            return;
        }
        if let Some(h) = lock(&self.shared.handles).as_ref() {
            h.gntdev.release_domain(domid);
        }
    }
}

impl DomainWatcher for ShimLink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.shared.exc.0.as_fd()
    }

    fn check(&mut self, introduced: &[DomId]) -> io::Result<Vec<(DomId, DomainFate)>> {
        let Some(h) = lock(&self.shared.handles).clone() else {
            return Ok(Vec::new());
        };
        drain_eventfd(h.virq_fd.as_fd())?;
        if !self.keep_attached(&h) {
            // The shim is away: nothing to learn until it is back.
            return Ok(Vec::new());
        }
        let doms = h
            .gntdev
            .control()
            .list_domains()
            .map_err(|e| io::Error::other(ErrorChain(&e).to_string()))?;
        let state: HashMap<u16, DomainState> = doms.iter().map(|d| (d.domid, d.state)).collect();
        let fates = introduced
            .iter()
            .map(|&d| {
                let fate = match state.get(&d) {
                    None | Some(DomainState::Dying) => DomainFate::Dead,
                    Some(DomainState::Shutdown { .. } | DomainState::Crashed) => {
                        DomainFate::Shutdown
                    }
                    Some(DomainState::Running | DomainState::Paused) => DomainFate::Running,
                };
                (d, fate)
            })
            .collect();
        for d in h.gntdev.release_dead_domains() {
            tracing::debug!(domid = d, "forgot a dead domain's memory");
        }
        Ok(fates)
    }
}
