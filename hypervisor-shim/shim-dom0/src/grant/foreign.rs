//! Mapping and copying another domain's grants: [`ForeignDomain`] (the
//! granter's memory and active-grant file, mapped once per Dom0 process) and
//! [`GrantMapping`].
//!
//! Writes through grants are recorded in the granter's dirty log
//! ([`xen_shim_proto::dirty`]) while it is being migrated, as Xen marks a
//! page dirty for a writable grant mapping and a grant copy into it: the
//! target page is marked when a writable pin is taken (map, copy) and when
//! it is dropped (unmap, the copy's release, after the write).

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use xen_abi::grant_table::*;
use xen_abi::xen::domid_t;
use xen_diag::{warn_limited, LogLimiter};

use xen_shim_proto::dirty::DirtyLog;
use xen_shim_proto::grant::{GrantError, GrantTableView, SharedGrantTable};
use xen_shim_proto::layout::PAGE_SIZE;
use xen_shim_proto::mem::{GuestMemory, GuestSlice, MemError};

use super::active::{ActiveTable, PIN_LIMIT, PIN_READ_INC, PIN_WRITE_INC};
use super::ledger::Ledger;
use super::window::PageWindow;
use super::{clear_status, read_target, set_status, GrantTarget};

static UNMAP_LOG: LogLimiter = LogLimiter::new(5, std::time::Duration::from_secs(1));

/// A granting domain as seen by a mapper: its whole memory file mapped
/// (Dom0 is privileged), its active-grant file, the memory file's fd for
/// building contiguous multi-page windows, (for Dom0 mappers) the
/// mapper's own ledger, through which the daemon drops its pins once it is
/// gone ([`super::ledger`]), and the domain's dirty log, when it has one.
#[derive(Debug)]
pub struct ForeignDomain {
    domid: domid_t,
    mem: GuestMemory,
    active: ActiveTable,
    mem_file: File,
    ledger: Option<Ledger>,
    dirty: Option<(File, DirtyLog)>,
}

impl ForeignDomain {
    /// Wraps domain `domid`'s memory and active-grant files.
    pub fn open(domid: domid_t, mem_file: File, active_file: &File) -> Result<Self, GrantError> {
        let active = ActiveTable::map(active_file)?;
        if active.domid() != domid {
            return Err(GrantError::Invalid("active file of another domain"));
        }
        let layout = active.layout();
        let mem = GuestMemory::map(&mem_file, layout).map_err(|e| match e {
            MemError::Map(io) => GrantError::Io(io),
            _ => GrantError::Invalid("memory file"),
        })?;
        Ok(Self {
            domid,
            mem,
            active,
            mem_file,
            ledger: None,
            dirty: None,
        })
    }

    /// As [`ForeignDomain::open`], every pin also recorded in `ledger` (the
    /// file the daemon made for this mapper): when the mapper goes away,
    /// its pins are dropped for it.
    pub fn open_with_ledger(
        domid: domid_t,
        mem_file: File,
        active_file: &File,
        ledger: File,
    ) -> Result<Self, GrantError> {
        let mut d = Self::open(domid, mem_file, active_file)?;
        let l = Ledger::map(ledger)?;
        let o = l.owner();
        if o.domid != domid || o.instance != d.active.instance() {
            return Err(GrantError::Invalid("ledger of another domain"));
        }
        d.ledger = Some(l);
        Ok(d)
    }

    /// Records the writes through this domain's grants in its dirty-log
    /// file `file` (made by the daemon for this domain's memory file).
    pub fn with_dirty_log(mut self, file: File) -> Result<Self, GrantError> {
        let log = DirtyLog::map(&file, self.mem.layout().total_pages())
            .map_err(|_| GrantError::Invalid("dirty log of another domain"))?;
        self.dirty = Some((file, log));
        Ok(self)
    }

    /// The domain's dirty-log file, if it has one.
    pub fn dirty_log_file(&self) -> Option<&File> {
        self.dirty.as_ref().map(|(f, _)| f)
    }

    /// The domain's dirty log, if it has one.
    pub fn dirty_log(&self) -> Option<&DirtyLog> {
        self.dirty.as_ref().map(|(_, l)| l)
    }

    /// Records a write through a grant to `frame` (a no-op unless the
    /// domain is being migrated).
    fn mark_dirty(&self, frame: u64) {
        if let Some((_, log)) = &self.dirty {
            log.mark(frame);
        }
    }

    /// This mapper's ledger, if it has one.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// The granting domain.
    pub fn domid(&self) -> domid_t {
        self.domid
    }

    /// Its memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Its memory file.
    pub fn memory_file(&self) -> &File {
        &self.mem_file
    }

    /// Its active-grant table.
    pub fn active(&self) -> &ActiveTable {
        &self.active
    }

    /// Whether the domain is dying.
    pub fn is_dying(&self) -> bool {
        self.active.is_dying()
    }

    /// The current grant table (version and size from the active header).
    pub fn table(&self) -> Result<SharedGrantTable<'_>, GrantError> {
        SharedGrantTable::new(&self.mem, self.active.version(), self.active.nr_frames())
    }

    /// `GNTTABOP_query_size`: `(nr_frames, max_nr_frames)`.
    pub fn query_size(&self) -> (u32, u32) {
        (self.active.nr_frames(), self.mem.layout().max_grant_frames)
    }

    /// Pins `gref` for `mapper` (Xen's map path up to the page lookup):
    /// validates, sets `GTF_reading`/`GTF_writing` on first use, counts the
    /// pin. `for_copy` allows v2 sub-page grants.
    pub fn pin(
        &self,
        gref: grant_ref_t,
        mapper: domid_t,
        writable: bool,
        for_copy: bool,
    ) -> Result<GrantTarget, GrantError> {
        if self.active.is_dying() {
            return Err(GrantError::BadDomain(self.domid));
        }
        let t = self.table()?;
        let nr_entries = GrantTableView::nr_entries(&t);
        if gref >= nr_entries {
            return Err(GrantError::BadGntref { gref, nr_entries });
        }
        let act = self.active.lock(gref)?;
        let pin = act.pin();
        let (rp, wp) = (pin & 0xffff, pin >> 16);
        if pin != 0 && (act.domid() != mapper || (act.sub_page().is_some() && !for_copy)) {
            return Err(GrantError::PinConflict { gref });
        }
        if rp >= PIN_LIMIT || wp >= PIN_LIMIT {
            return Err(GrantError::PinConflict { gref });
        }
        let inc = if writable {
            PIN_WRITE_INC
        } else {
            PIN_READ_INC
        };
        // The ledger word goes up before the status bits are set, so a
        // mapper killed from here on leaves a trace the daemon repairs.
        let own = self.ledger.as_ref().map(|l| (l, l.pins(gref)));
        if let Some((l, own)) = own {
            l.set_pins(gref, own + inc)?;
        }
        let undo_ledger = || {
            if let Some((l, own)) = own {
                let _ = l.set_pins(gref, own);
            }
        };
        if pin == 0 || (writable && wp == 0) {
            if let Err(e) = set_status(&t, gref, mapper, !writable, pin != 0, !for_copy) {
                undo_ledger();
                return Err(e);
            }
        }
        if pin == 0 {
            let target = match read_target(&t, gref) {
                Ok(target) => target,
                Err(e) => {
                    clear_status(&t, gref, GTF_reading | GTF_writing);
                    undo_ledger();
                    return Err(e);
                }
            };
            if !self.mem.layout().is_grantable_gfn(target.frame) {
                clear_status(&t, gref, GTF_reading | GTF_writing);
                undo_ledger();
                return Err(GrantError::BadFrame {
                    gref,
                    frame: target.frame,
                });
            }
            act.set_target(target.frame, mapper, target.sub_page);
        }
        act.set_pin(pin + inc);
        if writable {
            self.mark_dirty(act.frame());
        }
        Ok(GrantTarget {
            frame: act.frame(),
            sub_page: act.sub_page(),
        })
    }

    /// For the tests of a mapper killed inside [`ForeignDomain::pin`]: its
    /// first half, left as such a mapper leaves it. The active entry stays
    /// locked by this thread (never unlocked by this process), this
    /// mapper's ledger word is raised and the status bits are set, the pin
    /// is not counted in the active entry.
    #[doc(hidden)]
    pub fn pin_halfway_for_tests(
        &self,
        gref: grant_ref_t,
        mapper: domid_t,
        writable: bool,
    ) -> Result<(), GrantError> {
        let t = self.table()?;
        let act = self.active.lock(gref)?;
        let pin = act.pin();
        let inc = if writable {
            PIN_WRITE_INC
        } else {
            PIN_READ_INC
        };
        if let Some(l) = &self.ledger {
            l.set_pins(gref, l.pins(gref) + inc)?;
        }
        if pin == 0 || (writable && pin >> 16 == 0) {
            set_status(&t, gref, mapper, !writable, pin != 0, true)?;
        }
        std::mem::forget(act);
        Ok(())
    }

    /// Drops one pin of `gref` taken by [`ForeignDomain::pin`]; clears
    /// `GTF_writing` when the last write pin goes and `GTF_reading` when the
    /// last pin goes.
    pub fn unpin(&self, gref: grant_ref_t, writable: bool) -> Result<(), GrantError> {
        let t = self.table()?;
        let act = self.active.lock(gref)?;
        let pin = act.pin();
        let (rp, wp) = (pin & 0xffff, pin >> 16);
        let new = if writable {
            if wp == 0 {
                return Err(GrantError::BadHandle { gref });
            }
            pin - PIN_WRITE_INC
        } else {
            if rp == 0 {
                return Err(GrantError::BadHandle { gref });
            }
            pin - PIN_READ_INC
        };
        if writable {
            // The write is over (unmap, copy done): Xen's mark at unmap.
            self.mark_dirty(act.frame());
        }
        if writable && new >> 16 == 0 {
            clear_status(&t, gref, GTF_writing);
        }
        if new == 0 {
            clear_status(&t, gref, GTF_reading);
        }
        act.set_pin(new);
        // The ledger word goes down last (see `pin`).
        if let Some(l) = &self.ledger {
            let own = l.pins(gref);
            let (r, w) = (own & 0xffff, own >> 16);
            let (r, w) = if writable {
                (r, w.saturating_sub(1))
            } else {
                (r.saturating_sub(1), w)
            };
            let _ = l.set_pins(gref, r + w * PIN_WRITE_INC);
        }
        Ok(())
    }

    /// Address of granted `frame` (validated by `pin`).
    fn frame_ptr(&self, frame: u64) -> Result<*mut u8, GrantError> {
        self.mem
            .page_ptr(frame)
            .map_err(|_| GrantError::BadFrame { gref: 0, frame })
    }

    /// Maps one grant: pins it and returns the page.
    pub fn map(
        self: &Arc<Self>,
        gref: grant_ref_t,
        mapper: domid_t,
        writable: bool,
    ) -> Result<GrantMapping, GrantError> {
        let target = self.pin(gref, mapper, writable, false)?;
        match self.frame_ptr(target.frame) {
            Ok(ptr) => Ok(GrantMapping {
                dom: Arc::clone(self),
                grefs: vec![gref],
                writable,
                ptr,
                len: PAGE_SIZE,
                window: None,
                live: true,
            }),
            Err(e) => {
                let _ = self.unpin(gref, writable);
                Err(e)
            }
        }
    }

    /// Maps several grants into one virtually contiguous range (for
    /// multi-page rings): each page of the granter's memory file is mapped
    /// with `MAP_FIXED` into a reserved window, read-only unless `writable`.
    pub fn map_contiguous(
        self: &Arc<Self>,
        grefs: &[grant_ref_t],
        mapper: domid_t,
        writable: bool,
    ) -> Result<GrantMapping, GrantError> {
        if grefs.is_empty() {
            return Err(GrantError::Invalid("no grant references"));
        }
        if grefs.len() == 1 {
            return self.map(grefs[0], mapper, writable);
        }
        let window = PageWindow::reserve(grefs.len())?;
        let mut pinned: Vec<grant_ref_t> = Vec::with_capacity(grefs.len());
        let mut fail = None;
        for (i, &g) in grefs.iter().enumerate() {
            match self.pin(g, mapper, writable, false) {
                Ok(target) => {
                    pinned.push(g);
                    let off = target.frame.checked_mul(PAGE_SIZE as u64);
                    let r = off
                        .ok_or(GrantError::BadFrame {
                            gref: g,
                            frame: target.frame,
                        })
                        .and_then(|off| {
                            window
                                .map_page(i, self.mem_file.as_fd(), off, writable)
                                .map_err(GrantError::Io)
                        });
                    if let Err(e) = r {
                        fail = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    fail = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = fail {
            for g in pinned {
                let _ = self.unpin(g, writable);
            }
            return Err(e);
        }
        Ok(GrantMapping {
            dom: Arc::clone(self),
            grefs: grefs.to_vec(),
            writable,
            ptr: window.as_ptr(),
            len: window.len(),
            window: Some(window),
            live: true,
        })
    }
}

/// One mapping of one or more grants of a foreign domain. The pages stay
/// accessible, and the grants pinned (`GTF_reading`/`GTF_writing` set, the
/// granter's revoke refused), until [`GrantMapping::unmap`] or drop.
///
/// A one-page mapping points into the granter's memory file, which the mapper
/// process has mapped whole (Dom0 is privileged, as with Xen's foreign
/// mappings); the read-only restriction of a read-only mapping is then
/// enforced by this API ([`GrantMapping::as_mut_ptr`] and
/// [`GrantMapping::write`] refuse), not by the MMU. Multi-page mappings are
/// separate `mmap`s, `PROT_READ` when read-only.
#[derive(Debug)]
pub struct GrantMapping {
    dom: Arc<ForeignDomain>,
    grefs: Vec<grant_ref_t>,
    writable: bool,
    ptr: *mut u8,
    len: usize,
    window: Option<PageWindow>,
    live: bool,
}

// SAFETY: the mapping is shared memory reached only through raw pointers with
// volatile/atomic accesses; the owning `Arc<ForeignDomain>` (Send + Sync) keeps
// it mapped.
unsafe impl Send for GrantMapping {}
// SAFETY: `&GrantMapping` only performs volatile/atomic accesses.
unsafe impl Sync for GrantMapping {}

impl GrantMapping {
    /// The granting domain.
    pub fn domid(&self) -> domid_t {
        self.dom.domid
    }

    /// The mapped references, in page order.
    pub fn grefs(&self) -> &[grant_ref_t] {
        &self.grefs
    }

    /// Whether the mapping is writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Length in bytes (4096 per reference).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this is a separate contiguous window (multi-page map).
    pub fn is_window(&self) -> bool {
        self.window.is_some()
    }

    /// Base address for reads.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Base address for writes (for `xen_ring::SharedRing::new`); `None` for
    /// a read-only mapping.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.writable.then_some(self.ptr)
    }

    /// A bounds-checked volatile view of the mapping.
    pub fn slice(&self) -> GuestSlice<'_> {
        // SAFETY: `ptr..ptr+len` stays mapped while `self` lives (it holds the
        // Arc of the memory mapping, or owns the window); writes are allowed
        // only when the grant was mapped writable.
        unsafe { GuestSlice::new(self.ptr, self.len, self.writable) }
    }

    /// Copies bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.slice().read(offset, buf)
    }

    /// Copies `data` to `offset` (refused on a read-only mapping).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.slice().write(offset, data)
    }

    /// Unmaps: drops the pins (clearing `GTF_writing`/`GTF_reading` when they
    /// were the last) and the window.
    pub fn unmap(mut self) -> Result<(), GrantError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), GrantError> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        // Unmap the window before the grants are released, like Xen (the
        // PTE goes before the pin).
        self.window = None;
        let mut first_err = None;
        for &g in &self.grefs {
            if let Err(e) = self.dom.unpin(g, self.writable) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn_limited!(UNMAP_LOG, domid = self.dom.domid, error = %e, "grant unmap on drop failed");
        }
    }
}

/// One side of a grant copy, resolved.
#[derive(Clone, Copy, Debug)]
pub enum CopySide {
    /// A grant reference of a domain.
    Gref(grant_ref_t),
    /// A frame of the caller's own memory.
    Gmfn(u64),
}

/// Performs one `gnttab_copy` for `caller` with Xen's checks: both sides'
/// `offset + len <= 4096` (`GNTST_bad_copy_arg`), frames only of the caller's
/// own memory (`GNTST_permission_denied`), grants pinned for the copy
/// (source read-only, destination writable) and released after.
/// `resolve(domid)` gives the domain behind a side's domid (with
/// `DOMID_SELF` already replaced by `caller`).
pub fn grant_copy_one(
    op: &gnttab_copy,
    caller: domid_t,
    resolve: &mut dyn FnMut(domid_t) -> Result<Arc<ForeignDomain>, GrantError>,
) -> Result<(), GrantError> {
    use xen_abi::xen::DOMID_SELF;
    let len = usize::from(op.len);
    for p in [&op.source, &op.dest] {
        if usize::from(p.offset) + len > PAGE_SIZE {
            return Err(GrantError::BadCopyArg {
                offset: p.offset,
                len: op.len,
            });
        }
    }
    let side = |p: &gnttab_copy_ptr, gref_flag: u16| -> (domid_t, CopySide) {
        let dom = if p.domid == DOMID_SELF {
            caller
        } else {
            p.domid
        };
        if op.flags & gref_flag != 0 {
            (dom, CopySide::Gref(p.u.r#ref()))
        } else {
            (dom, CopySide::Gmfn(p.u.gmfn()))
        }
    };
    let (sdom, sside) = side(&op.source, GNTCOPY_source_gref);
    let (ddom, dside) = side(&op.dest, GNTCOPY_dest_gref);
    for (dom, s) in [(sdom, sside), (ddom, dside)] {
        if matches!(s, CopySide::Gmfn(_)) && dom != caller {
            return Err(GrantError::PermissionDenied);
        }
    }
    let src_dom = resolve(sdom)?;
    let dst_dom = if ddom == sdom {
        Arc::clone(&src_dom)
    } else {
        resolve(ddom)?
    };

    let src = acquire_for_copy(&src_dom, sside, op.source.offset, op.len, caller, false)?;
    let dst = match acquire_for_copy(&dst_dom, dside, op.dest.offset, op.len, caller, true) {
        Ok(d) => d,
        Err(e) => {
            release_copy(&src_dom, sside, false);
            return Err(e);
        }
    };
    let mut bounce = [0u8; PAGE_SIZE];
    let buf = &mut bounce[..len];
    // SAFETY: `src` and `dst` point at validated pages of mapped guest memory
    // (offset + len <= 4096 checked above); the bounce buffer is a local, so
    // neither copy overlaps its source.
    unsafe {
        xen_shim_proto::sys::volatile_copy(
            buf.as_mut_ptr(),
            src.add(usize::from(op.source.offset)),
            len,
        );
        xen_shim_proto::sys::volatile_copy(dst.add(usize::from(op.dest.offset)), buf.as_ptr(), len);
    }
    release_copy(&src_dom, sside, false);
    release_copy(&dst_dom, dside, true);
    Ok(())
}

fn acquire_for_copy(
    dom: &Arc<ForeignDomain>,
    side: CopySide,
    offset: u16,
    len: u16,
    caller: domid_t,
    writable: bool,
) -> Result<*mut u8, GrantError> {
    match side {
        CopySide::Gmfn(gfn) => {
            if !dom.mem.layout().is_grantable_gfn(gfn) {
                return Err(GrantError::BadFrame {
                    gref: 0,
                    frame: gfn,
                });
            }
            dom.frame_ptr(gfn)
        }
        CopySide::Gref(gref) => {
            let target = dom.pin(gref, caller, writable, true)?;
            if let Some((so, sl)) = target.sub_page {
                let end = u32::from(offset) + u32::from(len);
                if offset < so || end > u32::from(so) + u32::from(sl) {
                    let _ = dom.unpin(gref, writable);
                    return Err(GrantError::BadCopyArg { offset, len });
                }
            }
            match dom.frame_ptr(target.frame) {
                Ok(p) => Ok(p),
                Err(e) => {
                    let _ = dom.unpin(gref, writable);
                    Err(e)
                }
            }
        }
    }
}

fn release_copy(dom: &ForeignDomain, side: CopySide, writable: bool) {
    match side {
        CopySide::Gref(g) => {
            if let Err(e) = dom.unpin(g, writable) {
                warn_limited!(UNMAP_LOG, domid = dom.domid, error = %e, "grant copy release failed");
            }
        }
        // The caller's own frame, written by the daemon's copy (outside the
        // caller's own dirty tracking).
        CopySide::Gmfn(gfn) if writable => dom.mark_dirty(gfn),
        CopySide::Gmfn(_) => {}
    }
}
