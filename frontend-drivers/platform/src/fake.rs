//! An in-process [`Platform`] for unit tests of frontends: heap pages, a grant
//! table and 2-level event-channel state kept in plain memory, an in-memory
//! xenstore with transactions and watches, and `peer_*` methods through which
//! a test plays the other domain (maps grants, binds and signals ports).
//!
//! It never blocks: [`Platform::evtchn_poll`] and [`Platform::xs_read_watch`]
//! return at once, advancing a fake clock by the timeout when nothing is
//! pending, and refuse to wait forever.
//!
//! Semantics follow Xen where a frontend could notice: grant references below
//! `GNTTAB_NR_RESERVED_ENTRIES` are never handed out, a map checks the entry's
//! type, domid and read-only flag and sets `GTF_reading`/`GTF_writing`, a
//! revoke fails while mapped; port 0 is never allocated, events to a masked
//! port stay pending, closing one end leaves the other unbound; a xenstore
//! transaction that raced with another write fails with `EAGAIN`, a watch
//! fires once when set.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::ptr::{self, NonNull};
use core::time::Duration;

use xen_abi::event_channel::{
    evtchn_port_t, EVTCHNSTAT_closed, EVTCHNSTAT_interdomain, EVTCHNSTAT_unbound,
    EVTCHN_2L_NR_CHANNELS,
};
use xen_abi::grant_table::{
    grant_ref_t, GNTST_bad_gntref, GNTST_general_error, GTF_permit_access, GTF_reading,
    GTF_readonly, GTF_type_mask, GTF_writing, GNTTAB_NR_RESERVED_ENTRIES,
};
use xen_abi::io::xs_wire::XENSTORE_ABS_PATH_MAX;
use xen_abi::xen::{domid_t, xen_pfn_t};

use crate::error::{EAGAIN, EINVAL, ENOENT, ENOSPC};
use crate::{
    Platform, PlatformError, SharedPages, XsTransaction, XsWatchEvent, PAGE_SIZE, XBT_NIL,
};

/// Default number of grant entries of a [`FakePlatform`] (one v1 frame holds
/// 512).
pub const FAKE_GRANT_ENTRIES: usize = 1024;
/// Default page budget of a [`FakePlatform`].
pub const FAKE_MAX_PAGES: usize = 4096;
/// The first guest frame number the fake hands out.
const FIRST_GFN: u64 = 0x1000;

/// A v1 grant entry as the fake keeps it (`grant_entry_v1` fields).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    flags: u16,
    domid: domid_t,
    frame: u32,
    /// Whether this reference is handed out (the guest's free list).
    in_use: bool,
    /// Peer mappings (Xen's active entry pin count).
    pins: u32,
}

/// A 2-level port as the fake keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Free,
    Unbound {
        remote: domid_t,
    },
    Interdomain {
        remote: domid_t,
        remote_port: evtchn_port_t,
    },
}

#[derive(Debug, Clone, Copy)]
struct Port {
    state: PortState,
    pending: bool,
    masked: bool,
    /// Events the guest sent on this port.
    sent: u64,
}

#[derive(Debug)]
struct Alloc {
    raw: NonNull<u8>,
    count: usize,
    layout: Layout,
}

#[derive(Debug)]
struct Tx {
    nodes: BTreeMap<String, Vec<u8>>,
    base_generation: u64,
    changes: Vec<(String, bool)>,
}

#[derive(Debug)]
struct State {
    allocs: BTreeMap<u64, Alloc>,
    next_gfn: u64,
    used_pages: usize,
    max_pages: usize,
    grants: Vec<Entry>,
    ports: Vec<Port>,
    upcall_pending: bool,
    nodes: BTreeMap<String, Vec<u8>>,
    generation: u64,
    txs: BTreeMap<u32, Tx>,
    next_tx: u32,
    watches: Vec<(String, String)>,
    watch_queue: VecDeque<XsWatchEvent>,
    clock_ns: u64,
}

/// The fake platform; see the [module documentation](self).
pub struct FakePlatform {
    domid: domid_t,
    state: RefCell<State>,
}

impl fmt::Debug for FakePlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePlatform")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

/// A peer's mapping of a granted page (see [`FakePlatform::peer_map`]).
#[derive(Debug)]
pub struct FakeMapping {
    gref: grant_ref_t,
    ptr: NonNull<u8>,
    writable: bool,
}

impl FakeMapping {
    /// The grant reference mapped.
    pub fn gref(&self) -> grant_ref_t {
        self.gref
    }

    /// Whether the mapping is writable.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The page's address (valid until the page is freed by the guest).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Copies bytes out of the mapped page. Panics when out of the page (a
    /// test helper).
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let end = offset.checked_add(buf.len()).expect("range overflows");
        assert!(end <= PAGE_SIZE, "read past the mapped page");
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: offset + i < PAGE_SIZE and the page is valid while the
            // guest has not freed it; the fake refuses to free a page while a
            // grant of it is in use, and a mapping pins its grant.
            *b = unsafe { ptr::read_volatile(self.ptr.as_ptr().add(offset + i)) };
        }
    }

    /// Copies bytes into the mapped page. Panics when out of the page or the
    /// mapping is read-only (a test helper).
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(self.writable, "write through a read-only mapping");
        let end = offset.checked_add(data.len()).expect("range overflows");
        assert!(end <= PAGE_SIZE, "write past the mapped page");
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`, for writes.
            unsafe { ptr::write_volatile(self.ptr.as_ptr().add(offset + i), *b) };
        }
    }
}

fn xs_err(errno: i32) -> PlatformError {
    PlatformError::Xenstore { errno }
}

/// Whether `path` is `base` or under it.
fn is_under(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.len() > base.len()
            && path.starts_with(base)
            && path.as_bytes().get(base.len()) == Some(&b'/'))
}

fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

impl FakePlatform {
    /// A fake domain `domid` with [`FAKE_GRANT_ENTRIES`] grant entries, 4096
    /// ports and a [`FAKE_MAX_PAGES`] page budget; its xenstore holds `/`,
    /// `/local/domain/<domid>`.
    pub fn new(domid: domid_t) -> FakePlatform {
        Self::with_limits(domid, FAKE_GRANT_ENTRIES, FAKE_MAX_PAGES)
    }

    /// Like [`FakePlatform::new`] with other grant-table and memory limits.
    pub fn with_limits(domid: domid_t, grant_entries: usize, max_pages: usize) -> FakePlatform {
        let mut nodes = BTreeMap::new();
        for p in ["/", "/local", "/local/domain"] {
            nodes.insert(p.to_string(), Vec::new());
        }
        nodes.insert(format!("/local/domain/{domid}"), Vec::new());
        let port = Port {
            state: PortState::Free,
            pending: false,
            masked: false,
            sent: 0,
        };
        FakePlatform {
            domid,
            state: RefCell::new(State {
                allocs: BTreeMap::new(),
                next_gfn: FIRST_GFN,
                used_pages: 0,
                max_pages,
                grants: alloc::vec![Entry::default(); grant_entries],
                ports: alloc::vec![port; EVTCHN_2L_NR_CHANNELS],
                upcall_pending: false,
                nodes,
                generation: 0,
                txs: BTreeMap::new(),
                next_tx: 1,
                watches: Vec::new(),
                watch_queue: VecDeque::new(),
                clock_ns: 0,
            }),
        }
    }

    /// The guest now runs in a new domain (Xen's restore after a suspend):
    /// what Xen does not carry over is gone (every grant entry cleared and
    /// the old backend's mappings of them with it, every port closed, the
    /// xenstore watches and queued events dropped); the guest's pages and
    /// the xenstore nodes stay (the test writes the new domain's device
    /// nodes as the toolstack would). Mappings the test still holds
    /// ([`FakeMapping`]) must not be used afterwards.
    pub fn new_domain(&self) {
        let mut st = self.state.borrow_mut();
        for e in st.grants.iter_mut() {
            *e = Entry::default();
        }
        for p in st.ports.iter_mut() {
            *p = Port {
                state: PortState::Free,
                pending: false,
                masked: false,
                sent: 0,
            };
        }
        st.upcall_pending = false;
        st.watches.clear();
        st.watch_queue.clear();
        st.txs.clear();
    }

    /// [`FakePlatform::new_domain`] as a guest whose xenstore connection
    /// was reconnected sees it: the client set its watches again (each
    /// fires once), so those of the old domain's devices are still set.
    pub fn new_domain_rewatched(&self) {
        let watches = self.state.borrow().watches.clone();
        self.new_domain();
        let mut st = self.state.borrow_mut();
        for (path, token) in watches {
            st.watch_queue.push_back(XsWatchEvent {
                path: path.clone(),
                token: token.clone(),
            });
            st.watches.push((path, token));
        }
    }

    /// Resolves a relative path and validates it (`EINVAL`).
    fn resolve(&self, path: &str, watch: bool) -> Result<String, PlatformError> {
        if watch && path.starts_with('@') {
            return Ok(path.to_string());
        }
        let abs = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/local/domain/{}/{}", self.domid, path)
        };
        let ok_chars = abs
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-@".contains(&b));
        if path.is_empty()
            || abs.len() > XENSTORE_ABS_PATH_MAX
            || !ok_chars
            || abs.contains("//")
            || (abs.len() > 1 && abs.ends_with('/'))
        {
            return Err(xs_err(EINVAL));
        }
        Ok(abs)
    }

    // ----------------------------------------------------------------------
    // The peer's side: what a backend in another domain would do.

    /// Maps grant `gref` as domain `mapper` would (`GNTTABOP_map_grant_ref`),
    /// with Xen's checks: a reference outside the table is
    /// `GNTST_bad_gntref`; an entry that is not `GTF_permit_access`, names
    /// another domain, is read-only for a write map, or whose frame is not a
    /// page of this guest is `GNTST_general_error`. Sets `GTF_reading`
    /// (and `GTF_writing` for a write map).
    pub fn peer_map(
        &self,
        gref: grant_ref_t,
        mapper: domid_t,
        writable: bool,
    ) -> Result<FakeMapping, i16> {
        let mut st = self.state.borrow_mut();
        let gfn = {
            let e = st.grants.get(gref as usize).ok_or(GNTST_bad_gntref)?;
            if e.flags & GTF_type_mask != GTF_permit_access
                || e.domid != mapper
                || (writable && e.flags & GTF_readonly != 0)
            {
                return Err(GNTST_general_error);
            }
            u64::from(e.frame)
        };
        let ptr = Self::page_ptr(&st, gfn).ok_or(GNTST_general_error)?;
        let e = &mut st.grants[gref as usize];
        e.pins = e.pins.checked_add(1).ok_or(GNTST_general_error)?;
        e.flags |= GTF_reading;
        if writable {
            e.flags |= GTF_writing;
        }
        Ok(FakeMapping {
            gref,
            ptr,
            writable,
        })
    }

    /// Unmaps a peer mapping: drops its pin and clears `GTF_reading`/
    /// `GTF_writing` with the last one.
    pub fn peer_unmap(&self, mapping: FakeMapping) {
        let mut st = self.state.borrow_mut();
        if let Some(e) = st.grants.get_mut(mapping.gref as usize) {
            e.pins = e.pins.saturating_sub(1);
            if e.pins == 0 {
                e.flags &= !(GTF_reading | GTF_writing);
            }
        }
    }

    /// The raw flags of a grant entry (`None` outside the table).
    pub fn grant_flags(&self, gref: grant_ref_t) -> Option<u16> {
        self.state
            .borrow()
            .grants
            .get(gref as usize)
            .map(|e| e.flags)
    }

    /// The number of grant references handed out.
    pub fn grants_in_use(&self) -> usize {
        self.state
            .borrow()
            .grants
            .iter()
            .filter(|e| e.in_use)
            .count()
    }

    /// The domain a port is (or may be) connected to and the remote port, as
    /// `(EVTCHNSTAT_*, remote domid, remote port)`.
    pub fn port_status(&self, port: evtchn_port_t) -> (u32, domid_t, evtchn_port_t) {
        let st = self.state.borrow();
        match st.ports.get(port as usize).map(|p| p.state) {
            Some(PortState::Unbound { remote }) => (EVTCHNSTAT_unbound, remote, 0),
            Some(PortState::Interdomain {
                remote,
                remote_port,
            }) => (EVTCHNSTAT_interdomain, remote, remote_port),
            _ => (EVTCHNSTAT_closed, 0, 0),
        }
    }

    /// The peer binds its port `remote_port` to our unbound `port`
    /// (`EVTCHNOP_bind_interdomain` run by the peer). `-EINVAL` as an errno
    /// if `port` is not unbound for `peer`.
    pub fn peer_bind(
        &self,
        port: evtchn_port_t,
        peer: domid_t,
        remote_port: evtchn_port_t,
    ) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = st
            .ports
            .get_mut(port as usize)
            .ok_or(PlatformError::BadPort { port })?;
        match p.state {
            PortState::Unbound { remote } if remote == peer => {
                p.state = PortState::Interdomain {
                    remote: peer,
                    remote_port,
                };
                Ok(())
            }
            _ => Err(PlatformError::Evtchn { errno: EINVAL }),
        }
    }

    /// The peer sends an event on our `port`: Xen's `evtchn_2l_set_pending`
    /// (set the pending bit; if it was clear and the port is unmasked, the
    /// upcall becomes pending).
    pub fn peer_notify(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = st
            .ports
            .get_mut(port as usize)
            .ok_or(PlatformError::BadPort { port })?;
        if !matches!(p.state, PortState::Interdomain { .. }) {
            return Err(PlatformError::BadPort { port });
        }
        let was = p.pending;
        p.pending = true;
        if !was && !p.masked {
            st.upcall_pending = true;
        }
        Ok(())
    }

    /// The peer closes its end of our `port`: ours becomes unbound again (as
    /// in Xen, it may be re-bound by the same remote domain).
    pub fn peer_close(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = st
            .ports
            .get_mut(port as usize)
            .ok_or(PlatformError::BadPort { port })?;
        match p.state {
            PortState::Interdomain { remote, .. } => {
                p.state = PortState::Unbound { remote };
                Ok(())
            }
            _ => Err(PlatformError::BadPort { port }),
        }
    }

    /// How many events the guest sent on `port`.
    pub fn notifications(&self, port: evtchn_port_t) -> u64 {
        self.state
            .borrow()
            .ports
            .get(port as usize)
            .map_or(0, |p| p.sent)
    }

    /// Whether an upcall is pending (`evtchn_upcall_pending`), and clears it.
    pub fn take_upcall(&self) -> bool {
        core::mem::take(&mut self.state.borrow_mut().upcall_pending)
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: evtchn_port_t) -> bool {
        self.state
            .borrow()
            .ports
            .get(port as usize)
            .is_some_and(|p| p.pending)
    }

    /// Advances the fake clock.
    pub fn advance_clock(&self, by: Duration) {
        let mut st = self.state.borrow_mut();
        st.clock_ns = st
            .clock_ns
            .saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
    }

    // ----------------------------------------------------------------------
    // Internals.

    fn page_ptr(st: &State, gfn: u64) -> Option<NonNull<u8>> {
        let (&first, a) = st.allocs.range(..=gfn).next_back()?;
        let idx = usize::try_from(gfn - first).ok()?;
        if idx >= a.count {
            return None;
        }
        // idx < count, so the offset is inside the allocation.
        NonNull::new(a.raw.as_ptr().wrapping_add(idx * PAGE_SIZE))
    }

    fn port_mut(st: &mut State, port: evtchn_port_t) -> Result<&mut Port, PlatformError> {
        match st.ports.get_mut(port as usize) {
            Some(p) if p.state != PortState::Free => Ok(p),
            _ => Err(PlatformError::BadPort { port }),
        }
    }

    fn free_port(st: &State) -> Result<evtchn_port_t, PlatformError> {
        st.ports
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, p)| p.state == PortState::Free)
            .map(|(i, _)| i as evtchn_port_t)
            .ok_or(PlatformError::Evtchn { errno: ENOSPC })
    }

    fn nodes_for(
        st: &mut State,
        tx: XsTransaction,
    ) -> Result<&mut BTreeMap<String, Vec<u8>>, PlatformError> {
        if tx == XBT_NIL {
            Ok(&mut st.nodes)
        } else {
            st.txs
                .get_mut(&tx.0)
                .map(|t| &mut t.nodes)
                .ok_or(xs_err(ENOENT))
        }
    }

    /// Records a change: fires watches now (no transaction) or at commit.
    fn changed(st: &mut State, tx: XsTransaction, path: &str, removed: bool) {
        if tx == XBT_NIL {
            st.generation += 1;
            Self::fire(st, path, removed);
        } else if let Some(t) = st.txs.get_mut(&tx.0) {
            t.changes.push((path.to_string(), removed));
        }
    }

    fn fire(st: &mut State, path: &str, removed: bool) {
        let mut events = Vec::new();
        for (w, token) in &st.watches {
            if is_under(path, w) {
                events.push(XsWatchEvent {
                    path: path.to_string(),
                    token: token.clone(),
                });
            } else if removed && is_under(w, path) {
                events.push(XsWatchEvent {
                    path: w.clone(),
                    token: token.clone(),
                });
            }
        }
        st.watch_queue.extend(events);
    }

    fn create_with_parents(nodes: &mut BTreeMap<String, Vec<u8>>, path: &str) {
        let mut p = Some(path);
        let mut missing = Vec::new();
        while let Some(cur) = p {
            if nodes.contains_key(cur) {
                break;
            }
            missing.push(cur.to_string());
            p = parent_of(cur);
        }
        for m in missing {
            nodes.insert(m, Vec::new());
        }
    }
}

// SAFETY: pages come from `alloc_zeroed` with a page-aligned layout and are
// only deallocated by `free_pages`, given back the `SharedPages` (not Clone)
// that covered them; dropping the fake leaks them. Allocations never overlap
// (fresh heap memory) and their gfns are a fresh range per allocation, mapped
// back to the same memory by `peer_map`.
unsafe impl Platform for FakePlatform {
    fn domid(&self) -> domid_t {
        self.domid
    }

    fn alloc_pages(&self, count: usize) -> Result<SharedPages, PlatformError> {
        let mut st = self.state.borrow_mut();
        let nomem = PlatformError::NoMemory { pages: count };
        let total = st.used_pages.checked_add(count).ok_or(nomem.clone())?;
        if count == 0 || total > st.max_pages {
            return Err(nomem);
        }
        let layout =
            Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).map_err(|_| nomem.clone())?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let raw = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(nomem)?;
        let gfn = st.next_gfn;
        st.next_gfn += count as u64;
        st.used_pages = total;
        st.allocs.insert(gfn, Alloc { raw, count, layout });
        // SAFETY: fresh zeroed page-aligned memory of count pages, deallocated
        // only when this handle comes back through free_pages; no reference
        // to it exists.
        Ok(unsafe { SharedPages::new(raw, gfn, count) })
    }

    fn free_pages(&self, pages: SharedPages) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let gfn = pages.first_gfn();
        match st.allocs.get(&gfn) {
            Some(a) if a.raw.as_ptr() == pages.as_ptr() && a.count == pages.count() => {}
            _ => return Err(PlatformError::UnknownPages { gfn }),
        }
        let count = pages.count() as u64;
        let granted = st
            .grants
            .iter()
            .any(|e| e.in_use && u64::from(e.frame) >= gfn && u64::from(e.frame) < gfn + count);
        if granted {
            // Refuse: the peer may still map it. The handle is consumed, so
            // the pages leak, which is safe.
            return Err(PlatformError::GrantInUse { gref: 0 });
        }
        if let Some(a) = st.allocs.remove(&gfn) {
            st.used_pages -= a.count;
            let _consumed = pages;
            // SAFETY: allocated in alloc_pages with this layout; its only
            // handle was moved into this function and is not used again.
            unsafe { dealloc(a.raw.as_ptr(), a.layout) };
        }
        Ok(())
    }

    fn grant_access(
        &self,
        domid: domid_t,
        gfn: xen_pfn_t,
        readonly: bool,
    ) -> Result<grant_ref_t, PlatformError> {
        let frame = u32::try_from(gfn).map_err(|_| PlatformError::Grant {
            status: GNTST_general_error,
        })?;
        let mut st = self.state.borrow_mut();
        let (gref, e) = st
            .grants
            .iter_mut()
            .enumerate()
            .skip(GNTTAB_NR_RESERVED_ENTRIES as usize)
            .find(|(_, e)| !e.in_use)
            .ok_or(PlatformError::NoFreeGrantRef)?;
        e.in_use = true;
        e.domid = domid;
        e.frame = frame;
        // (the release barrier between the fields and the flags is a no-op in
        // this single-threaded fake)
        e.flags = GTF_permit_access | if readonly { GTF_readonly } else { 0 };
        Ok(gref as grant_ref_t)
    }

    fn end_access(&self, gref: grant_ref_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let e = match st.grants.get_mut(gref as usize) {
            Some(e) if e.in_use => e,
            _ => return Err(PlatformError::BadGrantRef { gref }),
        };
        if e.flags & (GTF_reading | GTF_writing) != 0 {
            return Err(PlatformError::GrantInUse { gref });
        }
        *e = Entry::default();
        Ok(())
    }

    fn evtchn_alloc_unbound(&self, remote_dom: domid_t) -> Result<evtchn_port_t, PlatformError> {
        let mut st = self.state.borrow_mut();
        let port = Self::free_port(&st)?;
        st.ports[port as usize] = Port {
            state: PortState::Unbound { remote: remote_dom },
            pending: false,
            masked: false,
            sent: 0,
        };
        Ok(port)
    }

    fn evtchn_bind_interdomain(
        &self,
        remote_dom: domid_t,
        remote_port: evtchn_port_t,
    ) -> Result<evtchn_port_t, PlatformError> {
        let mut st = self.state.borrow_mut();
        if remote_port == 0 || remote_port as usize >= EVTCHN_2L_NR_CHANNELS {
            return Err(PlatformError::Evtchn { errno: EINVAL });
        }
        let port = Self::free_port(&st)?;
        st.ports[port as usize] = Port {
            state: PortState::Interdomain {
                remote: remote_dom,
                remote_port,
            },
            pending: false,
            masked: false,
            sent: 0,
        };
        Ok(port)
    }

    fn evtchn_notify(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = Self::port_mut(&mut st, port)?;
        match p.state {
            PortState::Interdomain { .. } => {
                p.sent = p.sent.saturating_add(1);
                Ok(())
            }
            _ => Err(PlatformError::BadPort { port }),
        }
    }

    fn evtchn_unmask(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = Self::port_mut(&mut st, port)?;
        let redeliver = p.masked && p.pending;
        p.masked = false;
        if redeliver {
            st.upcall_pending = true;
        }
        Ok(())
    }

    fn evtchn_mask(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        Self::port_mut(&mut st, port)?.masked = true;
        Ok(())
    }

    fn evtchn_close(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = Self::port_mut(&mut st, port)?;
        p.state = PortState::Free;
        p.pending = false;
        p.masked = false;
        Ok(())
    }

    fn evtchn_clear(&self, port: evtchn_port_t) -> Result<bool, PlatformError> {
        let mut st = self.state.borrow_mut();
        let p = Self::port_mut(&mut st, port)?;
        Ok(core::mem::take(&mut p.pending))
    }

    fn evtchn_poll(
        &self,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, PlatformError> {
        let any = {
            let st = self.state.borrow();
            ports
                .iter()
                .any(|&p| st.ports.get(p as usize).is_some_and(|p| p.pending))
        };
        if any {
            return Ok(true);
        }
        match timeout {
            Some(t) => {
                self.advance_clock(t);
                Ok(false)
            }
            None => Err(PlatformError::Unsupported {
                op: "waiting forever on the fake platform (nothing is pending)",
            }),
        }
    }

    fn xs_read(&self, tx: XsTransaction, path: &str) -> Result<Vec<u8>, PlatformError> {
        let path = self.resolve(path, false)?;
        let mut st = self.state.borrow_mut();
        let nodes = Self::nodes_for(&mut st, tx)?;
        nodes.get(&path).cloned().ok_or(xs_err(ENOENT))
    }

    fn xs_write(&self, tx: XsTransaction, path: &str, value: &[u8]) -> Result<(), PlatformError> {
        let path = self.resolve(path, false)?;
        let mut st = self.state.borrow_mut();
        let nodes = Self::nodes_for(&mut st, tx)?;
        Self::create_with_parents(nodes, &path);
        nodes.insert(path.clone(), value.to_vec());
        Self::changed(&mut st, tx, &path, false);
        Ok(())
    }

    fn xs_mkdir(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError> {
        let path = self.resolve(path, false)?;
        let mut st = self.state.borrow_mut();
        let nodes = Self::nodes_for(&mut st, tx)?;
        if nodes.contains_key(&path) {
            return Ok(());
        }
        Self::create_with_parents(nodes, &path);
        Self::changed(&mut st, tx, &path, false);
        Ok(())
    }

    fn xs_rm(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError> {
        let path = self.resolve(path, false)?;
        if path == "/" {
            return Err(xs_err(EINVAL));
        }
        let mut st = self.state.borrow_mut();
        let nodes = Self::nodes_for(&mut st, tx)?;
        if !nodes.contains_key(&path) {
            return Err(xs_err(ENOENT));
        }
        nodes.retain(|k, _| !is_under(k, &path));
        Self::changed(&mut st, tx, &path, true);
        Ok(())
    }

    fn xs_directory(&self, tx: XsTransaction, path: &str) -> Result<Vec<String>, PlatformError> {
        let path = self.resolve(path, false)?;
        let mut st = self.state.borrow_mut();
        let nodes = Self::nodes_for(&mut st, tx)?;
        if !nodes.contains_key(&path) {
            return Err(xs_err(ENOENT));
        }
        Ok(nodes
            .keys()
            .filter(|k| k.as_str() != path && parent_of(k) == Some(path.as_str()))
            .filter_map(|k| k.rsplit('/').next().map(ToString::to_string))
            .collect())
    }

    fn xs_watch(&self, path: &str, token: &str) -> Result<(), PlatformError> {
        let path = self.resolve(path, true)?;
        let mut st = self.state.borrow_mut();
        if st.watches.iter().any(|(p, t)| *p == path && t == token) {
            return Err(xs_err(17)); // EEXIST, as xenstored answers
        }
        st.watches.push((path.clone(), token.to_string()));
        st.watch_queue.push_back(XsWatchEvent {
            path,
            token: token.to_string(),
        });
        Ok(())
    }

    fn xs_unwatch(&self, path: &str, token: &str) -> Result<(), PlatformError> {
        let path = self.resolve(path, true)?;
        let mut st = self.state.borrow_mut();
        let before = st.watches.len();
        st.watches.retain(|(p, t)| !(*p == path && t == token));
        if st.watches.len() == before {
            return Err(xs_err(ENOENT));
        }
        Ok(())
    }

    fn xs_read_watch(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<XsWatchEvent>, PlatformError> {
        if let Some(ev) = self.state.borrow_mut().watch_queue.pop_front() {
            return Ok(Some(ev));
        }
        match timeout {
            Some(t) => {
                self.advance_clock(t);
                Ok(None)
            }
            None => Err(PlatformError::Unsupported {
                op: "waiting forever on the fake platform (no watch fired)",
            }),
        }
    }

    fn xs_transaction_start(&self) -> Result<XsTransaction, PlatformError> {
        let mut st = self.state.borrow_mut();
        let id = st.next_tx;
        st.next_tx = st.next_tx.checked_add(1).unwrap_or(1).max(1);
        let tx = Tx {
            nodes: st.nodes.clone(),
            base_generation: st.generation,
            changes: Vec::new(),
        };
        st.txs.insert(id, tx);
        Ok(XsTransaction(id))
    }

    fn xs_transaction_end(&self, tx: XsTransaction, commit: bool) -> Result<(), PlatformError> {
        let mut st = self.state.borrow_mut();
        let t = st.txs.remove(&tx.0).ok_or(xs_err(ENOENT))?;
        if !commit {
            return Ok(());
        }
        if t.base_generation != st.generation {
            return Err(xs_err(EAGAIN));
        }
        st.nodes = t.nodes;
        if !t.changes.is_empty() {
            st.generation += 1;
        }
        for (path, removed) in &t.changes {
            Self::fire(&mut st, path, *removed);
        }
        Ok(())
    }

    fn monotonic_ns(&self) -> u64 {
        self.state.borrow().clock_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::grant_table::GNTST_bad_gntref;

    #[test]
    fn test_fake_grant_peer_maps_then_revoke_refused_until_unmap() {
        // Arrange
        let p = FakePlatform::new(5);
        let pages = p.alloc_pages(1).expect("pages");
        pages.write(0, b"hello").expect("write");
        let gref = p.grant_access(0, pages.first_gfn(), false).expect("grant");

        // Act
        let m = p.peer_map(gref, 0, true).expect("map");
        let mut buf = [0u8; 5];
        m.read(0, &mut buf);
        m.write(8, b"back");
        let refused = p.end_access(gref);
        p.peer_unmap(m);

        // Assert
        assert_eq!(&buf, b"hello");
        let mut ans = [0u8; 4];
        pages.read(8, &mut ans).expect("read");
        assert_eq!(&ans, b"back");
        assert_eq!(refused, Err(PlatformError::GrantInUse { gref }));
        assert_eq!(p.end_access(gref), Ok(()));
        assert_eq!(p.grant_flags(gref), Some(0));
        p.free_pages(pages).expect("free");
    }

    #[test]
    fn test_fake_grant_reserved_refs_never_handed_out() {
        let p = FakePlatform::new(1);
        let pages = p.alloc_pages(1).expect("pages");
        let gref = p.grant_access(0, pages.first_gfn(), true).expect("grant");
        assert!(gref >= GNTTAB_NR_RESERVED_ENTRIES);
    }

    #[test]
    fn test_fake_grant_write_map_of_readonly_is_refused() {
        let p = FakePlatform::new(1);
        let pages = p.alloc_pages(1).expect("pages");
        let gref = p.grant_access(0, pages.first_gfn(), true).expect("grant");
        assert_eq!(p.peer_map(gref, 0, true).err(), Some(GNTST_general_error));
        assert_eq!(p.peer_map(gref, 7, false).err(), Some(GNTST_general_error));
        assert_eq!(p.peer_map(99_999, 0, false).err(), Some(GNTST_bad_gntref));
        let m = p.peer_map(gref, 0, false).expect("read-only map");
        assert_eq!(p.grant_flags(gref).map(|f| f & GTF_writing), Some(0));
        p.peer_unmap(m);
    }

    #[test]
    fn test_fake_grant_table_full_gives_no_free_ref() {
        let p = FakePlatform::with_limits(1, GNTTAB_NR_RESERVED_ENTRIES as usize + 2, 16);
        let pages = p.alloc_pages(1).expect("pages");
        let g = pages.first_gfn();
        p.grant_access(0, g, true).expect("first");
        p.grant_access(0, g, true).expect("second");
        assert_eq!(
            p.grant_access(0, g, true),
            Err(PlatformError::NoFreeGrantRef)
        );
    }

    #[test]
    fn test_fake_free_pages_while_granted_is_refused() {
        let p = FakePlatform::new(1);
        let pages = p.alloc_pages(2).expect("pages");
        p.grant_access(0, pages.first_gfn() + 1, false)
            .expect("grant");
        assert!(matches!(
            p.free_pages(pages),
            Err(PlatformError::GrantInUse { .. })
        ));
    }

    #[test]
    fn test_fake_alloc_over_budget_fails() {
        let p = FakePlatform::with_limits(1, 16, 3);
        let a = p.alloc_pages(2).expect("fits");
        assert_eq!(
            p.alloc_pages(2).err(),
            Some(PlatformError::NoMemory { pages: 2 })
        );
        p.free_pages(a).expect("free");
        let b = p.alloc_pages(3).expect("fits after free");
        assert_ne!(b.first_gfn(), 0);
    }

    #[test]
    fn test_fake_evtchn_masked_event_stays_pending_until_unmask() {
        // Arrange
        let p = FakePlatform::new(3);
        let port = p.evtchn_alloc_unbound(0).expect("port");
        p.peer_bind(port, 0, 17).expect("bind");
        p.evtchn_mask(port).expect("mask");

        // Act
        p.peer_notify(port).expect("notify");
        let upcall_while_masked = p.take_upcall();
        p.evtchn_unmask(port).expect("unmask");

        // Assert
        assert!(port != 0);
        assert!(!upcall_while_masked);
        assert!(p.take_upcall());
        assert!(p.evtchn_poll(&[port], Some(Duration::ZERO)).expect("poll"));
        assert_eq!(p.evtchn_clear(port), Ok(true));
        assert_eq!(p.evtchn_clear(port), Ok(false));
        assert!(!p
            .evtchn_poll(&[port], Some(Duration::from_millis(5)))
            .expect("poll"));
        assert_eq!(p.monotonic_ns(), 5_000_000);
    }

    #[test]
    fn test_fake_evtchn_notify_counts_and_close_unbinds() {
        let p = FakePlatform::new(3);
        let port = p.evtchn_bind_interdomain(0, 9).expect("bind");
        p.evtchn_notify(port).expect("notify");
        p.evtchn_notify(port).expect("notify");
        assert_eq!(p.notifications(port), 2);
        assert_eq!(p.port_status(port), (EVTCHNSTAT_interdomain, 0, 9));
        p.peer_close(port).expect("peer close");
        assert_eq!(p.port_status(port).0, EVTCHNSTAT_unbound);
        assert_eq!(p.evtchn_notify(port), Err(PlatformError::BadPort { port }));
        p.evtchn_close(port).expect("close");
        assert_eq!(p.port_status(port).0, EVTCHNSTAT_closed);
        assert_eq!(p.evtchn_close(port), Err(PlatformError::BadPort { port }));
    }

    #[test]
    fn test_fake_evtchn_poll_forever_with_nothing_pending_errors() {
        let p = FakePlatform::new(3);
        let port = p.evtchn_alloc_unbound(0).expect("port");
        assert!(matches!(
            p.evtchn_poll(&[port], None),
            Err(PlatformError::Unsupported { .. })
        ));
    }

    #[test]
    fn test_fake_xs_relative_write_read_directory() {
        let p = FakePlatform::new(4);
        p.xs_write(XBT_NIL, "device/vbd/51712/state", b"1")
            .expect("write");
        assert_eq!(
            crate::xs_read_u64(&p, XBT_NIL, "/local/domain/4/device/vbd/51712/state"),
            Ok(1)
        );
        assert_eq!(
            p.xs_directory(XBT_NIL, "device/vbd").expect("dir"),
            alloc::vec!["51712".to_string()]
        );
        assert!(p
            .xs_read(XBT_NIL, "device/nope")
            .unwrap_err()
            .is_xs_enoent());
        assert_eq!(
            p.xs_read(XBT_NIL, "bad//path"),
            Err(PlatformError::Xenstore { errno: EINVAL })
        );
    }

    #[test]
    fn test_fake_xs_watch_fires_on_set_and_on_change_below() {
        // Arrange
        let p = FakePlatform::new(4);
        p.xs_watch("device", "tok").expect("watch");

        // Act
        let initial = p.xs_read_watch(Some(Duration::ZERO)).expect("read");
        p.xs_write(XBT_NIL, "device/vif/0/state", b"4")
            .expect("write");
        p.xs_write(XBT_NIL, "other", b"x").expect("write");
        let changed = p.xs_read_watch(Some(Duration::ZERO)).expect("read");
        let none = p.xs_read_watch(Some(Duration::ZERO)).expect("read");

        // Assert
        assert_eq!(
            initial.map(|e| e.path),
            Some("/local/domain/4/device".to_string())
        );
        assert_eq!(
            changed,
            Some(XsWatchEvent {
                path: "/local/domain/4/device/vif/0/state".to_string(),
                token: "tok".to_string()
            })
        );
        assert_eq!(none, None);
    }

    #[test]
    fn test_fake_xs_rm_fires_watches_below_removed_node() {
        let p = FakePlatform::new(4);
        p.xs_write(XBT_NIL, "a/b/c", b"").expect("write");
        p.xs_watch("a/b/c", "t").expect("watch");
        let _ = p.xs_read_watch(Some(Duration::ZERO));
        p.xs_rm(XBT_NIL, "a").expect("rm");
        let ev = p.xs_read_watch(Some(Duration::ZERO)).expect("read");
        assert_eq!(
            ev.map(|e| e.path),
            Some("/local/domain/4/a/b/c".to_string())
        );
        assert!(p.xs_rm(XBT_NIL, "a").unwrap_err().is_xs_enoent());
    }

    #[test]
    fn test_fake_xs_transaction_conflict_gives_eagain() {
        // Arrange
        let p = FakePlatform::new(4);
        let tx = p.xs_transaction_start().expect("start");
        p.xs_write(tx, "k", b"in-tx").expect("tx write");

        // Act
        p.xs_write(XBT_NIL, "other", b"racing").expect("write");
        let end = p.xs_transaction_end(tx, true);

        // Assert
        assert!(end.unwrap_err().is_xs_eagain());
        assert!(p.xs_read(XBT_NIL, "k").unwrap_err().is_xs_enoent());
    }

    #[test]
    fn test_fake_xs_transaction_commit_applies_and_fires() {
        let p = FakePlatform::new(4);
        p.xs_watch("k", "t").expect("watch");
        let _ = p.xs_read_watch(Some(Duration::ZERO));
        let tx = p.xs_transaction_start().expect("start");
        p.xs_write(tx, "k", b"v").expect("tx write");
        assert!(p.xs_read(XBT_NIL, "k").is_err(), "invisible before commit");
        assert_eq!(p.xs_read_watch(Some(Duration::ZERO)), Ok(None));
        p.xs_transaction_end(tx, true).expect("commit");
        assert_eq!(p.xs_read(XBT_NIL, "k"), Ok(b"v".to_vec()));
        assert!(p
            .xs_read_watch(Some(Duration::ZERO))
            .expect("read")
            .is_some());
        assert_eq!(
            p.xs_transaction_end(tx, true),
            Err(PlatformError::Xenstore { errno: ENOENT })
        );
    }
}
