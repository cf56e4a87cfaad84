//! [`KPlatform`]: the `xen-front-platform` trait in the PVHVM kernel, so the
//! very same frontend crates as the PV process guest run here.
//!
//! - pages: runs of RAM frames above the kernel image and heap (identity
//!   mapped, so a frame's address is `gfn << 12`), first fit;
//! - grants: v1 entries this kernel writes in its own grant frames (whose
//!   gfns `GNTTABOP_setup_table` returned), revoked by compare-and-swap only
//!   when the peer holds no mapping (XSA-396); the table grows a frame at a
//!   time;
//! - event channels: pending/mask bits of `shared_info` read and cleared
//!   here at CPL3; sends ring the ioeventfd doorbell (no exit); binds, close
//!   and unmask are hypercalls; `evtchn_poll` spins on the pending bits for
//!   a few microseconds, then sleeps in `SCHEDOP_poll`;
//! - xenstore: the `xen-xenbus` client on the domain's store ring.
//!
//! [`KPlatform::resume_new_domain`] is the part of a resume in a new
//! domain (after `SCHEDOP_shutdown(SHUTDOWN_suspend)` returned 0) that is
//! the platform's: the grant table set up again and emptied, the event
//! bitmaps cleared, the new store port and domid.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use xen_abi::event_channel::{
    evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_close, evtchn_port_t, evtchn_unmask,
    EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain, EVTCHNOP_close, EVTCHNOP_unmask,
};
use xen_abi::grant_table::{
    gnttab_setup_table, grant_ref_t, GNTTABOP_setup_table, GTF_permit_access, GTF_reading,
    GTF_readonly, GTF_writing, GNTTAB_NR_RESERVED_ENTRIES,
};
use xen_abi::xen::{domid_t, shared_info, vcpu_time_info, xen_guest_handle, xen_pfn_t, DOMID_SELF};
use xen_front_platform::{
    Platform, PlatformError, SharedPages, XsTransaction, XsWatchEvent, PAGE_SIZE,
};
use xen_ring::SharedRing;
use xen_xenbus::{ClientConfig, XenbusClient, XenbusError, XenbusEvents};

use crate::arch::rdtsc;
use crate::hypercall;
use xen_front_platform::pagealloc::PageAllocator;

/// v1 grant entries per frame.
const GREFS_PER_FRAME: u32 = (PAGE_SIZE / 8) as u32;
/// Most grant frames this kernel grows to.
const MAX_GRANT_FRAMES: u32 = 64;
/// How long `evtchn_poll` spins on the pending bits before `SCHEDOP_poll`
/// (an exit costs ~25 us from CPL3; a backend answer often comes sooner);
/// `spin_us=N` on the command line sets it.
pub static SPIN_NS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(30_000);

/// The clock: Xen's `vcpu_time_info` scaling of the TSC.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t: vcpu_time_info,
}

impl Clock {
    /// The clock of `vcpu_time_info` `t`.
    pub fn new(t: vcpu_time_info) -> Self {
        Self { t }
    }

    /// System time in ns.
    pub fn now_ns(&self) -> u64 {
        let d = rdtsc().wrapping_sub(self.t.tsc_timestamp);
        let d = if self.t.tsc_shift >= 0 {
            d << self.t.tsc_shift
        } else {
            d >> -self.t.tsc_shift
        };
        self.t
            .system_time
            .wrapping_add(((u128::from(d) * u128::from(self.t.tsc_to_system_mul)) >> 32) as u64)
    }
}

/// The 2-level event bitmaps of `shared_info`.
#[derive(Debug, Clone, Copy)]
pub struct Events {
    shinfo: u64,
}

impl Events {
    fn word(&self, field: usize, port: evtchn_port_t) -> Option<(&'static AtomicU64, u64)> {
        let idx = port as usize / 64;
        if idx >= 64 {
            return None;
        }
        let addr = self.shinfo + field as u64 + 8 * idx as u64;
        // SAFETY: `addr` is an 8-aligned word of the shared_info page (the
        // VMM maps it for the kernel's whole life), accessed only atomically.
        Some((
            unsafe { AtomicU64::from_ptr(addr as *mut u64) },
            1 << (port % 64),
        ))
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: evtchn_port_t) -> bool {
        self.word(core::mem::offset_of!(shared_info, evtchn_pending), port)
            .is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
    }

    /// Clears `port`'s pending bit, returning whether it was set.
    pub fn clear(&self, port: evtchn_port_t) -> bool {
        self.word(core::mem::offset_of!(shared_info, evtchn_pending), port)
            .is_some_and(|(w, b)| w.fetch_and(!b, Ordering::AcqRel) & b != 0)
    }

    /// Clears every pending bit (a resume in a new domain: the old
    /// domain's events mean nothing here).
    pub fn clear_all(&self) {
        for w in 0..64u64 {
            let addr =
                self.shinfo + core::mem::offset_of!(shared_info, evtchn_pending) as u64 + 8 * w;
            // SAFETY: as in `word`: a word of the shared_info page's
            // pending bitmap, accessed only atomically.
            unsafe { AtomicU64::from_ptr(addr as *mut u64) }.store(0, Ordering::Release);
        }
    }

    /// Sets `port`'s mask bit.
    pub fn mask(&self, port: evtchn_port_t) -> bool {
        self.word(core::mem::offset_of!(shared_info, evtchn_mask), port)
            .map(|(w, b)| w.fetch_or(b, Ordering::AcqRel))
            .is_some()
    }
}

/// The store port (a resume in a new domain changes it).
static STORE_PORT: AtomicU32 = AtomicU32::new(0);

/// The store channel for the xenbus client.
pub struct StoreEvents {
    events: Events,
    clock: Clock,
}

impl XenbusEvents for StoreEvents {
    fn notify(&self) -> Result<(), XenbusError> {
        hypercall::doorbell(STORE_PORT.load(Ordering::Relaxed));
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> bool {
        let port = STORE_PORT.load(Ordering::Relaxed);
        let fired = poll(&self.events, &self.clock, &[port], Some(timeout));
        if fired {
            self.events.clear(port);
        }
        fired
    }

    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }
}

/// `SCHEDOP_poll` with a CPL3 spin first.
fn poll(ev: &Events, clock: &Clock, ports: &[evtchn_port_t], timeout: Option<Duration>) -> bool {
    let start = clock.now_ns();
    let deadline =
        timeout.map(|t| start.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
    loop {
        if ports.iter().any(|&p| ev.is_pending(p)) {
            return true;
        }
        let now = clock.now_ns();
        if deadline.is_some_and(|d| now >= d) {
            return false;
        }
        if now.saturating_sub(start) < SPIN_NS.load(Ordering::Relaxed) {
            core::hint::spin_loop();
            continue;
        }
        // Sleep in the VMM at most 100 ms at a time.
        let until = now.saturating_add(100_000_000);
        let until = deadline.map_or(until, |d| d.min(until));
        hypercall::sched_poll(ports, until.max(1));
    }
}

struct Grants {
    frames: Vec<xen_pfn_t>,
    free: Vec<grant_ref_t>,
}

/// Where the kernel's RAM goes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryPlan {
    /// First gfn the page allocator may hand out.
    pub first_gfn: u64,
    /// End of RAM (gfn).
    pub end_gfn: u64,
}

/// The platform; see the [module docs](self).
pub struct KPlatform {
    domid: Cell<domid_t>,
    /// The store ring's gfn.
    store_gfn: u64,
    events: Events,
    clock: Clock,
    pages: RefCell<PageAllocator>,
    grants: RefCell<Grants>,
    xs: RefCell<XenbusClient<StoreEvents>>,
    /// The control watch fired (seen by `xs_read_watch`).
    control_fired: Cell<bool>,
    /// The balloon's watch fired (seen by `xs_read_watch`).
    balloon_fired: Cell<bool>,
}

impl core::fmt::Debug for KPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KPlatform")
            .field("domid", &self.domid.get())
            .finish_non_exhaustive()
    }
}

/// What `KPlatform::new` needs from `start_info`.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    /// Guest-physical address of `shared_info`.
    pub shared_info: u64,
    /// The store ring's gfn and port.
    pub store: (u64, evtchn_port_t),
    /// RAM for the page allocator.
    pub plan: MemoryPlan,
}

fn xs_err(e: XenbusError) -> PlatformError {
    match e {
        XenbusError::Xs(x) => PlatformError::Xenstore { errno: x.errno() },
        XenbusError::Timeout => PlatformError::Hypervisor { errno: 110 },
        XenbusError::Notify(errno) => PlatformError::Hypervisor { errno },
        XenbusError::TooBig => PlatformError::Xenstore { errno: 7 },
        _ => PlatformError::Xenstore { errno: 5 },
    }
}

fn evtchn_err(port: evtchn_port_t, rc: i64) -> PlatformError {
    if rc == -22 {
        PlatformError::BadPort { port }
    } else {
        PlatformError::Evtchn {
            errno: i32::try_from(-rc).unwrap_or(5),
        }
    }
}

impl KPlatform {
    /// The platform: grant table frame 0, the xenstore client, the domid.
    pub fn new(b: &Boot, clock_ti: vcpu_time_info) -> Result<Self, PlatformError> {
        let clock = Clock { t: clock_ti };
        let events = Events {
            shinfo: b.shared_info,
        };
        let frames = setup_table(1)?;
        // SAFETY: the store page is the domain's xenstore ring, inside the
        // identity map, used only by this client (atomics and volatile
        // copies).
        let mem =
            unsafe { SharedRing::new((b.store.0 << 12) as *mut u8, PAGE_SIZE) }.map_err(|_| {
                PlatformError::Unsupported {
                    op: "xenstore ring",
                }
            })?;
        STORE_PORT.store(b.store.1, Ordering::Relaxed);
        let se = StoreEvents { events, clock };
        let xs = XenbusClient::new(mem, se, ClientConfig::default()).map_err(xs_err)?;
        let p = Self {
            domid: Cell::new(DOMID_SELF),
            store_gfn: b.store.0,
            events,
            clock,
            pages: RefCell::new(PageAllocator::new(
                b.plan.first_gfn,
                b.plan.end_gfn.saturating_sub(b.plan.first_gfn),
            )),
            grants: RefCell::new(Grants {
                free: (GNTTAB_NR_RESERVED_ENTRIES..GREFS_PER_FRAME)
                    .rev()
                    .collect(),
                frames,
            }),
            xs: RefCell::new(xs),
            control_fired: Cell::new(false),
            balloon_fired: Cell::new(false),
        };
        p.read_domid()?;
        Ok(p)
    }

    fn read_domid(&self) -> Result<(), PlatformError> {
        let id = xen_front_platform::xs_read_u64(self, xen_front_platform::XBT_NIL, "domid")?;
        self.domid
            .set(domid_t::try_from(id).map_err(|_| PlatformError::Xenstore { errno: 22 })?);
        Ok(())
    }

    /// The platform's part of a resume in a new domain (Linux's
    /// `gnttab_resume` and `xen_setup_shutdown_event` path): the grant
    /// table is set up again in the new domain (as many frames as before)
    /// and emptied (the old domain's grants are gone: every frontend
    /// forgets its own, so every reference is free again; the reserved
    /// entries, which the toolstack seeds, stay), the event bitmaps lose
    /// the old domain's pending bits, the store port is `store_port`
    /// (the new start info), the xenstore connection is re-established on
    /// the same ring page (`XenbusClient::reconnect`, which sets the
    /// client's watches again in the new domain), and the domid is read
    /// again.
    ///
    /// # Errors
    /// The grant table or xenstore failed.
    pub fn resume_new_domain(&self, store_port: evtchn_port_t) -> Result<(), PlatformError> {
        STORE_PORT.store(store_port, Ordering::Relaxed);
        // The ring's indexes are the old domain's: xenstore's reconnection
        // (the ring's `connection` field) resets them with the new domain's
        // xenstored, and registers the client's watches again.
        self.with_xs(|c| c.reconnect())?;
        {
            let mut g = self.grants.borrow_mut();
            let nr = g.frames.len() as u32;
            g.frames = setup_table(nr.max(1))?;
            for (n, &f) in g.frames.iter().enumerate() {
                // Frame 0's reserved entries are the toolstack's (the
                // console and xenstore pages it granted to their backends):
                // consback and xenstored map them in the new domain.
                let first = if n == 0 {
                    u64::from(GNTTAB_NR_RESERVED_ENTRIES)
                } else {
                    0
                };
                for i in first..GREFS_PER_FRAME as u64 {
                    // SAFETY: `f` is one of our grant frames
                    // (identity-mapped); no peer maps the new domain's
                    // unreserved entries yet; the words are written
                    // atomically.
                    unsafe { AtomicU64::from_ptr(((f << 12) + 8 * i) as *mut u64) }
                        .store(0, Ordering::Relaxed);
                }
            }
            fence(Ordering::Release);
            let end = g.frames.len() as u32 * GREFS_PER_FRAME;
            g.free = (GNTTAB_NR_RESERVED_ENTRIES..end).rev().collect();
        }
        self.events.clear_all();
        self.control_fired.set(false);
        self.read_domid()
    }

    /// Address of grant entry `gref` (for the hostile test).
    pub fn grant_entry_addr(&self, gref: grant_ref_t) -> Option<u64> {
        let g = self.grants.borrow();
        let f = g.frames.get((gref / GREFS_PER_FRAME) as usize)?;
        Some((f << 12) + 8 * u64::from(gref % GREFS_PER_FRAME))
    }

    /// Grant references handed out and not ended (the hotplug report:
    /// a removed device leaves none behind).
    pub fn grants_in_use(&self) -> usize {
        let g = self.grants.borrow();
        (g.frames.len() * GREFS_PER_FRAME as usize)
            .saturating_sub(GNTTAB_NR_RESERVED_ENTRIES as usize)
            .saturating_sub(g.free.len())
    }

    /// Guest-physical address of the store ring (for the hostile test).
    pub fn store_page(&self) -> u64 {
        self.store_gfn << 12
    }

    /// The store port.
    pub fn store_port(&self) -> evtchn_port_t {
        STORE_PORT.load(Ordering::Relaxed)
    }

    /// Whether the control watch ([`crate::control::TOKEN`]) fired since
    /// the last call: its queued events are taken out of the watch queue
    /// (the devices' events stay, in order), and those a device's
    /// [`Platform::xs_read_watch`] met first count too.
    pub fn take_control_events(&self) -> Result<bool, PlatformError> {
        let n = self.with_xs(|c| c.take_watch_events(crate::control::TOKEN))?;
        Ok(self.control_fired.replace(false) || n > 0)
    }

    /// Whether the balloon's watch ([`crate::balloon::TOKEN`]) fired since
    /// the last call (as [`KPlatform::take_control_events`]).
    pub fn take_balloon_events(&self) -> Result<bool, PlatformError> {
        let n = self.with_xs(|c| c.take_watch_events(crate::balloon::TOKEN))?;
        Ok(self.balloon_fired.replace(false) || n > 0)
    }

    /// One free page for the balloon (its gfn), taken from the page
    /// allocator so that nothing else is handed it; its contents are not
    /// touched.
    pub fn balloon_take_page(&self) -> Option<u64> {
        self.pages.borrow_mut().alloc(1).ok()
    }

    /// Gives a page [`KPlatform::balloon_take_page`] took back to the page
    /// allocator.
    pub fn balloon_return_page(&self, gfn: u64) -> bool {
        self.pages.borrow_mut().free(gfn, 1).is_ok()
    }

    /// Writes every free page of the page allocator once (so the domain's
    /// memory file holds them, as a guest that has used its memory);
    /// returns the pages written.
    pub fn touch_free_pages(&self) -> u64 {
        let mut pages = self.pages.borrow_mut();
        let mut runs = Vec::new();
        let mut want = pages.free_pages();
        while want > 0 {
            match pages.alloc(want) {
                Ok(gfn) => runs.push((gfn, want)),
                Err(_) => want /= 2,
            }
            want = want.min(pages.free_pages());
        }
        let mut n = 0;
        for &(gfn, count) in &runs {
            for g in gfn..gfn + count {
                // SAFETY: the page is free RAM, allocated to us just now
                // and identity-mapped; nothing else uses it.
                unsafe { core::ptr::write_volatile((g << 12) as *mut u8, 0) };
            }
            n += count;
        }
        for (gfn, count) in runs {
            let _ = pages.free(gfn, count);
        }
        n
    }

    /// Takes the page allocator's free pages but `keep` and writes a
    /// non-zero byte into each (data a save or a migration carries, unlike
    /// a zero page); they stay allocated for the kernel's life (a workload
    /// whose RAM is in use). Returns the pages taken.
    pub fn fill_free_pages(&self, keep: u64) -> u64 {
        let mut pages = self.pages.borrow_mut();
        let mut n = 0;
        let mut want = pages.free_pages().saturating_sub(keep);
        while want > 0 {
            match pages.alloc(want) {
                Ok(gfn) => {
                    for g in gfn..gfn + want {
                        // SAFETY: the page is free RAM, allocated to us
                        // just now (and never freed) and identity-mapped;
                        // nothing else uses it.
                        unsafe { core::ptr::write_volatile((g << 12) as *mut u8, g as u8 | 1) };
                    }
                    n += want;
                }
                Err(_) => want /= 2,
            }
            want = want.min(pages.free_pages().saturating_sub(keep));
        }
        n
    }

    /// Runs `f` on the xenstore client.
    pub fn with_xs<R>(
        &self,
        f: impl FnOnce(&mut XenbusClient<StoreEvents>) -> Result<R, XenbusError>,
    ) -> Result<R, PlatformError> {
        let mut c = self
            .xs
            .try_borrow_mut()
            .map_err(|_| PlatformError::Unsupported {
                op: "re-entrant xenstore",
            })?;
        f(&mut c).map_err(xs_err)
    }

    fn grow_grants(&self, g: &mut Grants) -> Result<(), PlatformError> {
        let have = g.frames.len() as u32;
        if have >= MAX_GRANT_FRAMES {
            return Err(PlatformError::NoFreeGrantRef);
        }
        g.frames = setup_table(have + 1)?;
        let first = have * GREFS_PER_FRAME;
        g.free.extend((first..first + GREFS_PER_FRAME).rev());
        Ok(())
    }

    fn entry(&self, g: &Grants, gref: grant_ref_t) -> Option<u64> {
        let f = g.frames.get((gref / GREFS_PER_FRAME) as usize)?;
        Some((f << 12) + 8 * u64::from(gref % GREFS_PER_FRAME))
    }
}

fn setup_table(nr: u32) -> Result<Vec<xen_pfn_t>, PlatformError> {
    let mut frames = vec![0 as xen_pfn_t; nr as usize];
    let mut op = gnttab_setup_table {
        dom: DOMID_SELF,
        nr_frames: nr,
        frame_list: xen_guest_handle {
            p: frames.as_mut_ptr() as u64,
        },
        ..Default::default()
    };
    let rc = hypercall::gnttab_op(GNTTABOP_setup_table, &mut op);
    if rc != 0 || op.status != 0 {
        return Err(PlatformError::Grant {
            status: if op.status != 0 { op.status } else { -1 },
        });
    }
    Ok(frames)
}

// SAFETY: pages are runs of identity-mapped RAM above the kernel and heap,
// never unmapped; the allocator never hands out overlapping runs; a run's
// gfns are its addresses >> 12, which is exactly what a grant of them
// exposes to the peer (guest RAM is the domain's memory file).
unsafe impl Platform for KPlatform {
    fn domid(&self) -> domid_t {
        self.domid.get()
    }

    fn alloc_pages(&self, count: usize) -> Result<SharedPages, PlatformError> {
        let nomem = PlatformError::NoMemory { pages: count };
        let gfn = self
            .pages
            .borrow_mut()
            .alloc(count as u64)
            .map_err(|_| nomem.clone())?;
        let ptr = (gfn << 12) as *mut u8;
        // SAFETY: the run is ours alone (just allocated), identity-mapped
        // RAM of `count` pages.
        unsafe { core::ptr::write_bytes(ptr, 0, count * PAGE_SIZE) };
        let nn = NonNull::new(ptr).ok_or(nomem)?;
        // SAFETY: see the impl's safety comment; the run is page-aligned.
        Ok(unsafe { SharedPages::new(nn, gfn, count) })
    }

    fn free_pages(&self, pages: SharedPages) -> Result<(), PlatformError> {
        let gfn = pages.first_gfn();
        self.pages
            .borrow_mut()
            .free(gfn, pages.count() as u64)
            .map_err(|_| PlatformError::UnknownPages { gfn })
    }

    fn grant_access(
        &self,
        domid: domid_t,
        gfn: xen_pfn_t,
        readonly: bool,
    ) -> Result<grant_ref_t, PlatformError> {
        let frame = u32::try_from(gfn).map_err(|_| PlatformError::Grant { status: -1 })?;
        let mut g = self.grants.borrow_mut();
        if g.free.is_empty() {
            self.grow_grants(&mut g)?;
        }
        let gref = g.free.pop().ok_or(PlatformError::NoFreeGrantRef)?;
        let Some(e) = self.entry(&g, gref) else {
            g.free.push(gref);
            return Err(PlatformError::NoFreeGrantRef);
        };
        // SAFETY: `e` is the 8-aligned v1 entry `gref` in one of our grant
        // frames (identity-mapped), accessed only atomically here and by
        // the peer.
        unsafe {
            AtomicU16::from_ptr((e + 2) as *mut u16).store(domid, Ordering::Relaxed);
            AtomicU32::from_ptr((e + 4) as *mut u32).store(frame, Ordering::Relaxed);
            fence(Ordering::Release);
            let flags = GTF_permit_access | if readonly { GTF_readonly } else { 0 };
            AtomicU16::from_ptr(e as *mut u16).store(flags, Ordering::Release);
        }
        Ok(gref)
    }

    fn end_access(&self, gref: grant_ref_t) -> Result<(), PlatformError> {
        let mut g = self.grants.borrow_mut();
        if gref < GNTTAB_NR_RESERVED_ENTRIES || g.free.contains(&gref) {
            return Err(PlatformError::BadGrantRef { gref });
        }
        let e = self
            .entry(&g, gref)
            .ok_or(PlatformError::BadGrantRef { gref })?;
        // SAFETY: as in grant_access.
        let flags = unsafe { AtomicU16::from_ptr(e as *mut u16) };
        let mut cur = flags.load(Ordering::Acquire);
        loop {
            if cur & (GTF_reading | GTF_writing) != 0 {
                return Err(PlatformError::GrantInUse { gref });
            }
            match flags.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        g.free.push(gref);
        Ok(())
    }

    fn evtchn_alloc_unbound(&self, remote_dom: domid_t) -> Result<evtchn_port_t, PlatformError> {
        let mut op = evtchn_alloc_unbound {
            dom: DOMID_SELF,
            remote_dom,
            port: 0,
        };
        match hypercall::evtchn_op(EVTCHNOP_alloc_unbound, &mut op) {
            0 => Ok(op.port),
            rc => Err(evtchn_err(0, rc)),
        }
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
        match hypercall::evtchn_op(EVTCHNOP_bind_interdomain, &mut op) {
            0 => Ok(op.local_port),
            rc => Err(evtchn_err(remote_port, rc)),
        }
    }

    fn evtchn_notify(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        hypercall::doorbell(port);
        Ok(())
    }

    fn evtchn_unmask(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut op = evtchn_unmask { port };
        match hypercall::evtchn_op(EVTCHNOP_unmask, &mut op) {
            0 => Ok(()),
            rc => Err(evtchn_err(port, rc)),
        }
    }

    fn evtchn_mask(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        if self.events.mask(port) {
            Ok(())
        } else {
            Err(PlatformError::BadPort { port })
        }
    }

    fn evtchn_close(&self, port: evtchn_port_t) -> Result<(), PlatformError> {
        let mut op = evtchn_close { port };
        match hypercall::evtchn_op(EVTCHNOP_close, &mut op) {
            0 => Ok(()),
            rc => Err(evtchn_err(port, rc)),
        }
    }

    fn evtchn_clear(&self, port: evtchn_port_t) -> Result<bool, PlatformError> {
        Ok(self.events.clear(port))
    }

    fn evtchn_poll(
        &self,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, PlatformError> {
        Ok(poll(&self.events, &self.clock, ports, timeout))
    }

    fn xs_read(&self, tx: XsTransaction, path: &str) -> Result<Vec<u8>, PlatformError> {
        self.with_xs(|c| c.read(tx.0, path))
    }

    fn xs_write(&self, tx: XsTransaction, path: &str, value: &[u8]) -> Result<(), PlatformError> {
        self.with_xs(|c| c.write(tx.0, path, value))
    }

    fn xs_mkdir(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError> {
        self.with_xs(|c| c.mkdir(tx.0, path))
    }

    fn xs_rm(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError> {
        self.with_xs(|c| c.rm(tx.0, path))
    }

    fn xs_directory(&self, tx: XsTransaction, path: &str) -> Result<Vec<String>, PlatformError> {
        self.with_xs(|c| c.directory(tx.0, path))
    }

    fn xs_watch(&self, path: &str, token: &str) -> Result<(), PlatformError> {
        self.with_xs(|c| c.watch(path, token))
    }

    fn xs_unwatch(&self, path: &str, token: &str) -> Result<(), PlatformError> {
        self.with_xs(|c| c.unwatch(path, token))
    }

    fn xs_read_watch(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<XsWatchEvent>, PlatformError> {
        let deadline = timeout.map(|t| self.clock.now_ns().saturating_add(t.as_nanos() as u64));
        loop {
            let left =
                deadline.map(|d| Duration::from_nanos(d.saturating_sub(self.clock.now_ns())));
            let Some(w) = self.with_xs(|c| c.read_watch(left))? else {
                return Ok(None);
            };
            // The control watch's events are the control module's, never a
            // device's (see `take_control_events`).
            if w.token == crate::control::TOKEN {
                self.control_fired.set(true);
                continue;
            }
            if w.token == crate::balloon::TOKEN {
                self.balloon_fired.set(true);
                continue;
            }
            return Ok(Some(XsWatchEvent {
                path: w.path,
                token: w.token,
            }));
        }
    }

    fn xs_transaction_start(&self) -> Result<XsTransaction, PlatformError> {
        self.with_xs(|c| c.transaction_start()).map(XsTransaction)
    }

    fn xs_transaction_end(&self, tx: XsTransaction, commit: bool) -> Result<(), PlatformError> {
        self.with_xs(|c| c.transaction_end(tx.0, commit))
    }

    fn monotonic_ns(&self) -> u64 {
        self.clock.now_ns()
    }
}
