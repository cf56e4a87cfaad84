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
use xen_abi::grant_table::GNTTAB_RESERVED_XENSTORE;
use xen_abi::xen::VIRQ_DOM_EXC;
use xen_shim_dom0::{Evtchn, Gntdev};
use xen_shim_proto::protocol::{ControlError, ControlEvent, DomainState};
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

/// Reads the notifications queued on the event-channel handle's socket
/// (peers closing our ports), so that it never fills up, and reattaches the
/// handle's ports if the shim daemon restarted meanwhile.
fn drain_control_events(h: &Handles) {
    let evs = h.evtchn.take_control_events();
    if evs.contains(&ControlEvent::Disconnected) {
        match h.evtchn.reattach() {
            Ok(()) => tracing::info!("the hypervisor shim restarted: event channels reattached"),
            Err(e) => tracing::warn!(error = %e, "cannot reattach event channels to the shim"),
        }
    }
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
        Ok(ShimLink {
            shared: Arc::new(Shared {
                socket: socket.to_owned(),
                handles: Mutex::new(None),
                bound: Mutex::new(HashMap::new()),
                serial: AtomicU64::new(1),
                prepared: Mutex::new(HashMap::new()),
                exc,
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
        Ok(h)
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
        drain_control_events(&h);
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
        drain_control_events(&h);
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
