//! `Gntalloc`: Dom0 grants its own pages to another domain (like
//! `/dev/xen/gntalloc`).
//!
//! Dom0 has a memory file and a grant table like any domain. Pages and grant
//! references are shared by all Dom0 processes, so both are allocated with
//! atomic operations in shared memory: pages in a bitmap (Dom0's special page
//! [`xen_shim_proto::layout::SPECIAL_DOM0_ALLOC`]), references by compare-and-swap of
//! a free entry (`flags == 0, domid == 0`) to a claimed marker
//! (`domid == DOMID_INVALID`) before the grant is written. A Dom0 process
//! that dies with allocations leaks them until the daemon restarts Dom0's
//! tables (a limitation: nothing tracks per-process ownership).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use xen_abi::grant_table::*;
use xen_abi::xen::{domid_t, DOMID_INVALID};

use xen_shim_proto::grant::{combo, end_access, grant_access, GrantError, GrantTableView};
use xen_shim_proto::layout::PAGE_SIZE;
use xen_shim_proto::mem::GuestSlice;
use xen_shim_proto::ShimError;

use crate::grant::ForeignDomain;
use crate::{Control, Gntdev};

/// Dom0's grant allocator.
#[derive(Debug)]
pub struct Gntalloc {
    gntdev: Gntdev,
    dom0: Arc<ForeignDomain>,
}

/// Pages of Dom0 granted to a domain. Dropping them revokes the grants and
/// frees the pages; a grant still mapped by the grantee cannot be revoked
/// (XSA-396), and its page then stays allocated (leaked, logged).
#[derive(Debug)]
pub struct GrantedPages {
    dom0: Arc<ForeignDomain>,
    grefs: Vec<grant_ref_t>,
    gfns: Vec<u64>,
    domid: domid_t,
    writable: bool,
}

impl GrantedPages {
    /// The grant references, one per page.
    pub fn grefs(&self) -> &[grant_ref_t] {
        &self.grefs
    }
    /// Dom0 frames of the pages.
    pub fn gfns(&self) -> &[u64] {
        &self.gfns
    }
    /// Domain the pages are granted to.
    pub fn domid(&self) -> domid_t {
        self.domid
    }
    /// Whether the grantee may write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    /// Page `i` (always writable for Dom0).
    pub fn page(&self, i: usize) -> Option<GuestSlice<'_>> {
        let gfn = *self.gfns.get(i)?;
        self.dom0.memory().page(gfn).ok()
    }
}

impl GrantedPages {
    /// Revokes every grant not in use and frees its page; keeps the others.
    fn release(&mut self) -> Result<(), GrantError> {
        let t = self.dom0.table()?;
        let mut kept_refs = Vec::new();
        let mut kept_gfns = Vec::new();
        let mut err = None;
        for (&g, &gfn) in self.grefs.iter().zip(self.gfns.iter()) {
            match end_access(&t, g) {
                Ok(()) => {
                    t.header(g).store(0, Ordering::Release);
                    free_page(&self.dom0, gfn);
                }
                Err(e) => {
                    kept_refs.push(g);
                    kept_gfns.push(gfn);
                    err.get_or_insert(e);
                }
            }
        }
        self.grefs = kept_refs;
        self.gfns = kept_gfns;
        match err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl Drop for GrantedPages {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(domid = self.domid, left = self.grefs.len(), error = %e, "granted Dom0 pages still in use; leaking them");
        }
    }
}

fn free_page(dom0: &ForeignDomain, gfn: u64) {
    if let Some(word) = bitmap_word(dom0, (gfn / 64) as usize) {
        word.fetch_and(!(1u64 << (gfn % 64)), Ordering::AcqRel);
    }
}

fn bitmap_word(dom0: &ForeignDomain, w: usize) -> Option<&std::sync::atomic::AtomicU64> {
    let page = dom0
        .memory()
        .page(dom0.memory().layout().dom0_alloc_gfn())
        .ok()?;
    page.atomic_u64(w * 8).ok()
}

impl Gntalloc {
    /// Opens Dom0's allocator through the daemon at `socket`.
    pub fn open(socket: &Path) -> Result<Self, ShimError> {
        let gntdev = Gntdev::from_control(Control::connect(socket)?);
        let dom0 = gntdev.domain(0)?;
        Ok(Self { gntdev, dom0 })
    }

    fn alloc_page(&self) -> Result<u64, GrantError> {
        let pages = self
            .dom0
            .memory()
            .layout()
            .nr_ram_pages
            .min((PAGE_SIZE * 8) as u64);
        for w in 0..(pages as usize).div_ceil(64) {
            let word = bitmap_word(&self.dom0, w).ok_or(GrantError::NoSpace)?;
            let mut cur = word.load(Ordering::Acquire);
            for _ in 0..64 {
                let free = !cur;
                if free == 0 {
                    break;
                }
                let bit = free.trailing_zeros() as u64;
                let gfn = w as u64 * 64 + bit;
                if gfn >= pages {
                    break;
                }
                match word.compare_exchange(
                    cur,
                    cur | (1 << bit),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(gfn),
                    Err(now) => cur = now,
                }
            }
        }
        Err(GrantError::NoSpace)
    }

    fn claim_ref(&self) -> Result<grant_ref_t, GrantError> {
        for attempt in 0..2 {
            let t = self.dom0.table()?;
            for g in GNTTAB_NR_RESERVED_ENTRIES..t.nr_entries() {
                if t.header(g)
                    .compare_exchange(
                        0,
                        combo(0, DOMID_INVALID),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return Ok(g);
                }
            }
            if attempt == 0 {
                let (cur, max) = self.dom0.query_size();
                if cur >= max {
                    return Err(GrantError::NoSpace);
                }
                self.gntdev.control().gnttab_setup_table(0, cur + 1)?;
            }
        }
        Err(GrantError::NoSpace)
    }

    /// Allocates `count` zeroed Dom0 pages and grants them to `domid`
    /// (`IOCTL_GNTALLOC_ALLOC_GREF`).
    pub fn alloc(
        &self,
        domid: domid_t,
        count: usize,
        writable: bool,
    ) -> Result<GrantedPages, GrantError> {
        let mut out = GrantedPages {
            dom0: Arc::clone(&self.dom0),
            grefs: Vec::with_capacity(count),
            gfns: Vec::with_capacity(count),
            domid,
            writable,
        };
        for _ in 0..count {
            let gfn = match self.alloc_page() {
                Ok(g) => g,
                Err(e) => {
                    let _ = self.dealloc(out);
                    return Err(e);
                }
            };
            if let Ok(p) = self.dom0.memory().page(gfn) {
                let _ = p.fill(0, PAGE_SIZE, 0);
            }
            let gref = match self.claim_ref() {
                Ok(g) => g,
                Err(e) => {
                    free_page(&self.dom0, gfn);
                    let _ = self.dealloc(out);
                    return Err(e);
                }
            };
            let t = self.dom0.table()?;
            grant_access(&t, gref, domid, gfn, !writable)?;
            out.grefs.push(gref);
            out.gfns.push(gfn);
        }
        Ok(out)
    }

    /// Revokes and frees the pages (`IOCTL_GNTALLOC_DEALLOC_GREF`). If some
    /// grant is still mapped, it is kept and comes back with the error (retry
    /// after the grantee unmapped); the others are freed.
    pub fn dealloc(&self, mut pages: GrantedPages) -> Result<(), (GrantedPages, GrantError)> {
        match pages.release() {
            Ok(()) => Ok(()),
            Err(e) => Err((pages, e)),
        }
    }
}
