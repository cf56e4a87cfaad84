//! [`PvPlatform`]: the `xen-front-platform` trait for a process guest attached
//! to the hypervisor shim.
//!
//! - pages come from the domain's RAM (gfn `0 .. nr_ram_pages` of its memory
//!   file, which the runtime has mapped whole), handed out by
//!   [`PageAllocator`] and zeroed on allocation;
//! - grants are entries this domain writes in its own grant frames through
//!   the shim's guest API (no daemon round trip), with references from
//!   [`GrefAllocator`]; when the table is full the runtime grows it with
//!   `GNTTABOP_setup_table`, up to the domain's frame limit;
//! - event channels go through the shim's `EVTCHNOP_*`; waiting is the
//!   dispatcher's [`EventHub`];
//! - xenstore is the `xen-xenbus` client on the domain's store ring
//!   ([`PvXenstore`], attached by the runtime at start); without one the
//!   `xs_*` methods return [`PlatformError::Unsupported`].

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use xen_abi::event_channel::{
    evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_close, evtchn_port_t, evtchn_send,
    evtchn_unmask,
};
use xen_abi::grant_table::{gnttab_setup_table, grant_ref_t};
use xen_abi::xen::{domid_t, xen_pfn_t, DOMID_SELF};
use xen_front_platform::{Platform, PlatformError, SharedPages, XsTransaction, XsWatchEvent};
use xen_shim_guest::Hypervisor;
use xen_shim_proto::evtchn::EvtchnError;
use xen_shim_proto::grant::GrantError;
use xen_shim_proto::layout::GRANT_ENTRIES_PER_FRAME_V1;

use crate::events::EventHub;
use crate::grefalloc::GrefAllocator;
use crate::xenstore::PvXenstore;
use xen_front_platform::pagealloc::{PageAllocError, PageAllocator};

const XS_UNSUPPORTED: PlatformError = PlatformError::Unsupported {
    op: "xenstore (no xenstore connection is attached to this platform)",
};

/// The grant table's growth state.
#[derive(Debug)]
struct Grants {
    refs: GrefAllocator,
    frames: u32,
    max_frames: u32,
}

/// The platform of a PV guest runtime; see the [module docs](self).
#[derive(Debug)]
pub struct PvPlatform {
    hv: &'static Hypervisor,
    hub: Arc<EventHub>,
    pages: Mutex<PageAllocator>,
    grants: Mutex<Grants>,
    epoch: Instant,
    xs: OnceLock<PvXenstore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The allocators stay consistent across a panic (each operation is a
    // few map updates that complete or do not start), so recover the guard.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn grant_error(e: &GrantError) -> PlatformError {
    match e {
        GrantError::InUse { gref } => PlatformError::GrantInUse { gref: *gref },
        GrantError::NoSpace => PlatformError::NoFreeGrantRef,
        other => PlatformError::Grant {
            status: other.gntst(),
        },
    }
}

fn evtchn_error(port: evtchn_port_t, e: &EvtchnError) -> PlatformError {
    match e {
        EvtchnError::InvalidPort(_) | EvtchnError::WrongState(_) => PlatformError::BadPort { port },
        EvtchnError::Control(_) => PlatformError::Hypervisor { errno: e.errno() },
        other => PlatformError::Evtchn {
            errno: other.errno(),
        },
    }
}

impl PvPlatform {
    /// The platform over an attached domain whose grant table has `frames`
    /// frames set up (out of `max_frames`).
    pub fn new(hv: &'static Hypervisor, hub: Arc<EventHub>, frames: u32, max_frames: u32) -> Self {
        let ram = hv.layout().nr_ram_pages;
        Self {
            hv,
            hub,
            pages: Mutex::new(PageAllocator::new(0, ram)),
            grants: Mutex::new(Grants {
                refs: GrefAllocator::new(frames.saturating_mul(GRANT_ENTRIES_PER_FRAME_V1)),
                frames,
                max_frames,
            }),
            epoch: Instant::now(),
            xs: OnceLock::new(),
        }
    }

    /// Attaches the domain's xenstore connection (once; the runtime does it
    /// at start). Returns `false` if one was attached already.
    pub fn attach_xenstore(&self, xs: PvXenstore) -> bool {
        self.xs.set(xs).is_ok()
    }

    /// The xenstore connection, if attached.
    pub fn xenstore(&self) -> Option<&PvXenstore> {
        self.xs.get()
    }

    fn xs(&self) -> Result<&PvXenstore, PlatformError> {
        self.xs.get().ok_or(XS_UNSUPPORTED)
    }

    /// The shim's guest API.
    pub fn hypervisor(&self) -> &'static Hypervisor {
        self.hv
    }

    /// `SCHEDOP_poll` on ports of which some are direct (masked, see
    /// `evtchn_mask`): looks at the direct ports' eventfds between short
    /// waits on the hub.
    fn poll_mixed(&self, ports: &[evtchn_port_t], timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            for &p in ports {
                if self.hv.is_direct(p)
                    && self.hv.poll_port(p, Some(Duration::ZERO)).unwrap_or(false)
                {
                    return true;
                }
            }
            let slice = Duration::from_millis(1);
            let wait = match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return false;
                    }
                    (d - now).min(slice)
                }
                None => slice,
            };
            if self.hub.poll(ports, Some(wait)) {
                return true;
            }
        }
    }

    /// The event hub (handlers, shutdown requests).
    pub fn hub(&self) -> &Arc<EventHub> {
        &self.hub
    }

    /// Grant frames currently set up.
    pub fn grant_frames(&self) -> u32 {
        lock(&self.grants).frames
    }

    /// Free RAM pages.
    pub fn free_pages_count(&self) -> u64 {
        lock(&self.pages).free_pages()
    }

    /// Grows the grant table by one frame (`GNTTABOP_setup_table`).
    fn grow_grants(&self, g: &mut Grants) -> Result<(), PlatformError> {
        if g.frames >= g.max_frames {
            return Err(PlatformError::NoFreeGrantRef);
        }
        let want = g.frames + 1;
        let mut op = gnttab_setup_table {
            dom: DOMID_SELF,
            nr_frames: want,
            ..Default::default()
        };
        let mut frames = vec![0 as xen_pfn_t; want as usize];
        self.hv
            .gnttabop_setup_table(&mut op, &mut frames)
            .map_err(|e| grant_error(&e))?;
        g.frames = want;
        g.refs.grow(want.saturating_mul(GRANT_ENTRIES_PER_FRAME_V1));
        tracing::debug!(frames = want, "grant table grown");
        Ok(())
    }
}

// SAFETY: pages are runs of the domain's RAM inside the Hypervisor's mapping
// of its memory file; the Hypervisor is `'static` (the runtime leaks it on
// purpose: it is the domain's memory for the life of the process), so the
// mapping outlives every `SharedPages`, whether or not this platform is
// dropped. The PageAllocator never hands out overlapping runs, and a run's
// gfns are exactly the pages at `page_ptr(gfn)`, which is what a grant of
// those gfns exposes to the peer.
unsafe impl Platform for PvPlatform {
    fn domid(&self) -> domid_t {
        self.hv.domid()
    }

    fn alloc_pages(&self, count: usize) -> Result<SharedPages, PlatformError> {
        let nomem = PlatformError::NoMemory { pages: count };
        let n = u64::try_from(count).map_err(|_| nomem.clone())?;
        let gfn = lock(&self.pages).alloc(n).map_err(|e| match e {
            PageAllocError::NoSpace(_) | PageAllocError::Empty => nomem.clone(),
            PageAllocError::NotAllocated { first, .. } => {
                PlatformError::UnknownPages { gfn: first }
            }
        })?;
        let mem = self.hv.memory();
        let slice = match mem.pages(gfn, n) {
            Ok(s) => s,
            Err(_) => {
                let _ = lock(&self.pages).free(gfn, n);
                return Err(nomem);
            }
        };
        let Some(ptr) = NonNull::new(slice.as_ptr()) else {
            let _ = lock(&self.pages).free(gfn, n);
            return Err(nomem);
        };
        // SAFETY: `ptr` is page `gfn` of the 'static guest-memory mapping,
        // `count` pages long (`pages` checked the range), page-aligned; the
        // allocator gives this run to no one else until `free_pages`; nothing
        // in the runtime holds references to guest RAM.
        let pages = unsafe { SharedPages::new(ptr, gfn, count) };
        // Zeroed through the handle: its fill writes aligned words, the
        // guest-memory slice's writes bytes.
        pages
            .fill(0, pages.len(), 0)
            .expect("the whole run is inside its own handle");
        Ok(pages)
    }

    fn free_pages(&self, pages: SharedPages) -> Result<(), PlatformError> {
        let first = pages.first_gfn();
        let ok = self
            .hv
            .memory()
            .page_ptr(first)
            .is_ok_and(|p| p == pages.as_ptr());
        if !ok {
            return Err(PlatformError::UnknownPages { gfn: first });
        }
        lock(&self.pages)
            .free(first, pages.count() as u64)
            .map_err(|_| PlatformError::UnknownPages { gfn: first })
    }

    fn grant_access(
        &self,
        domid: domid_t,
        gfn: xen_pfn_t,
        readonly: bool,
    ) -> Result<grant_ref_t, PlatformError> {
        let mut g = lock(&self.grants);
        let gref = match g.refs.alloc() {
            Some(r) => r,
            None => {
                self.grow_grants(&mut g)?;
                g.refs.alloc().ok_or(PlatformError::NoFreeGrantRef)?
            }
        };
        if let Err(e) = self.hv.grant_foreign_access(gref, domid, gfn, readonly) {
            g.refs.free(gref);
            return Err(grant_error(&e));
        }
        Ok(gref)
    }

    fn end_access(&self, gref: grant_ref_t) -> Result<(), PlatformError> {
        let mut g = lock(&self.grants);
        if !g.refs.is_allocated(gref) {
            return Err(PlatformError::BadGrantRef { gref });
        }
        self.hv
            .end_foreign_access(gref)
            .map_err(|e| grant_error(&e))?;
        g.refs.free(gref);
        Ok(())
    }

    fn evtchn_alloc_unbound(&self, remote_dom: domid_t) -> Result<evtchn_port_t, PlatformError> {
        let mut op = evtchn_alloc_unbound {
            dom: DOMID_SELF,
            remote_dom,
            port: 0,
        };
        self.hv
            .evtchnop_alloc_unbound(&mut op)
            .map_err(|e| evtchn_error(0, &e))?;
        Ok(op.port)
    }

    fn evtchn_bind_interdomain(
        &self,
        remote_dom: domid_t,
        remote_port: evtchn_port_t,
    ) -> Result<evtchn_port_t, PlatformError> {
        let mut op = evtchn_bind_interdomain {
            remote_dom,
            remote_port,
            ..Default::default()
        };
        self.hv
            .evtchnop_bind_interdomain(&mut op)
            .map_err(|e| match e {
                EvtchnError::InvalidPort(_) | EvtchnError::WrongState(_) => {
                    PlatformError::Evtchn { errno: e.errno() }
                }
                other => evtchn_error(remote_port, &other),
            })?;
        Ok(op.local_port)
    }

    fn evtchn_notify(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        self.hv
            .evtchnop_send(&evtchn_send { port })
            .map_err(|e| evtchn_error(port, &e))
    }

    fn evtchn_unmask(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        if self.hv.is_direct(port) {
            self.hv
                .set_direct(port, false)
                .map_err(|e| evtchn_error(port, &e))?;
        }
        self.hv
            .evtchnop_unmask(&evtchn_unmask { port })
            .map_err(|e| evtchn_error(port, &e))
    }

    fn evtchn_mask(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        if port as usize >= xen_abi::event_channel::EVTCHN_2L_NR_CHANNELS {
            return Err(PlatformError::BadPort { port });
        }
        self.hv.mask(port);
        // A masked port is polled by its owner (SCHEDOP_poll): its events go
        // straight to that thread, not through the dispatcher (one wake-up
        // instead of two). A port not known locally yet stays as it is.
        match self.hv.set_direct(port, true) {
            Ok(()) | Err(EvtchnError::InvalidPort(_)) => Ok(()),
            Err(e) => Err(evtchn_error(port, &e)),
        }
    }

    fn evtchn_close(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        self.hv
            .evtchnop_close(&evtchn_close { port })
            .map_err(|e| evtchn_error(port, &e))?;
        self.hub.forget(port);
        Ok(())
    }

    fn evtchn_clear(&self, port: evtchn_port_t) -> Result<bool, PlatformError> {
        if port as usize >= xen_abi::event_channel::EVTCHN_2L_NR_CHANNELS {
            return Err(PlatformError::BadPort { port });
        }
        Ok(self.hub.clear(port))
    }

    fn evtchn_poll(
        &self,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, PlatformError> {
        match ports {
            [port] if self.hv.is_direct(*port) => self
                .hv
                .poll_port(*port, timeout)
                .map_err(|e| evtchn_error(*port, &e)),
            _ if ports.iter().any(|&p| self.hv.is_direct(p)) => Ok(self.poll_mixed(ports, timeout)),
            _ => Ok(self.hub.poll(ports, timeout)),
        }
    }

    fn evtchn_wake(&self, port: evtchn_port_t) {
        if let Err(e) = self.hv.raise_local(port) {
            tracing::debug!(port, error = %e, "cannot wake the port's poller");
        }
    }

    fn xs_read(&self, tx: XsTransaction, path: &str) -> Result<Vec<u8>, PlatformError> {
        self.xs()?.with_client(|c| c.read(tx.0, path))
    }

    fn xs_write(&self, tx: XsTransaction, path: &str, value: &[u8]) -> Result<(), PlatformError> {
        self.xs()?.with_client(|c| c.write(tx.0, path, value))
    }

    fn xs_mkdir(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError> {
        self.xs()?.with_client(|c| c.mkdir(tx.0, path))
    }

    fn xs_rm(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError> {
        self.xs()?.with_client(|c| c.rm(tx.0, path))
    }

    fn xs_directory(&self, tx: XsTransaction, path: &str) -> Result<Vec<String>, PlatformError> {
        self.xs()?.with_client(|c| c.directory(tx.0, path))
    }

    fn xs_watch(&self, path: &str, token: &str) -> Result<(), PlatformError> {
        self.xs()?.with_client(|c| c.watch(path, token))
    }

    fn xs_unwatch(&self, path: &str, token: &str) -> Result<(), PlatformError> {
        self.xs()?.with_client(|c| c.unwatch(path, token))
    }

    fn xs_read_watch(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<XsWatchEvent>, PlatformError> {
        self.xs()?.read_watch(timeout)
    }

    fn xs_wake_readers(&self) {
        self.hub.wake_all();
    }

    fn xs_transaction_start(&self) -> Result<XsTransaction, PlatformError> {
        self.xs()?
            .with_client(|c| c.transaction_start())
            .map(XsTransaction)
    }

    fn xs_transaction_end(&self, tx: XsTransaction, commit: bool) -> Result<(), PlatformError> {
        self.xs()?.with_client(|c| c.transaction_end(tx.0, commit))
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn yield_now(&self) {
        self.hv.schedop_yield();
    }
}
