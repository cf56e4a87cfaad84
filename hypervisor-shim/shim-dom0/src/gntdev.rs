//! `Gntdev`: Dom0 maps other domains' grants (like `/dev/xen/gntdev`).
//!
//! The first use of a domain costs one daemon round trip (its memory and
//! active-grant files, mapped once, and this handle's grant ledger); every
//! map and unmap after that is a few atomic operations in shared memory, no
//! syscall for a one-page map, no daemon.
//!
//! As with Linux's gntdev, whose `release` unmaps everything a process still
//! has mapped when its file is closed, the grants a handle still has mapped
//! when its process dies are unmapped for it: each pin is also recorded in
//! the handle's ledger ([`crate::grant::ledger`]), and the daemon drops the
//! pins of ledgers nobody holds open any more (`GTF_reading`/`GTF_writing`
//! cleared, so the granter's `end_foreign_access` succeeds). A live process
//! keeps its mappings, also across daemon restarts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use xen_abi::grant_table::*;
use xen_abi::xen::{domid_t, DOMID_SELF};

use xen_shim_proto::grant::GrantError;
use xen_shim_proto::layout::PAGE_SIZE;
use xen_shim_proto::protocol::ControlError;
use xen_shim_proto::ShimError;

use crate::grant::{grant_copy_one, ForeignDomain, GrantMapping};
use crate::Control;

/// The mapper domid of Dom0 processes.
const DOM0: domid_t = 0;

/// Grant mapping for Dom0 processes.
#[derive(Debug)]
pub struct Gntdev {
    control: Control,
    domains: Mutex<HashMap<domid_t, Arc<ForeignDomain>>>,
}

impl Gntdev {
    /// Opens a handle through the daemon at `socket`.
    pub fn open(socket: &Path) -> Result<Self, ShimError> {
        Ok(Self::from_control(Control::connect(socket)?))
    }

    /// Opens a handle through the default socket.
    pub fn open_default() -> Result<Self, ShimError> {
        Self::open(&xen_shim_proto::default_socket_path())
    }

    /// A handle using an existing control connection.
    pub fn from_control(control: Control) -> Self {
        Self {
            control,
            domains: Mutex::new(HashMap::new()),
        }
    }

    /// The control connection.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The granting domain `domid` (fetched and mapped on first use; a dying
    /// one is dropped from the cache).
    pub fn domain(&self, domid: domid_t) -> Result<Arc<ForeignDomain>, GrantError> {
        let domid = if domid == DOMID_SELF { DOM0 } else { domid };
        let mut map = self
            .domains
            .lock()
            .map_err(|_| GrantError::Invalid("gntdev lock poisoned"))?;
        if let Some(d) = map.get(&domid) {
            if !d.is_dying() {
                return Ok(Arc::clone(d));
            }
            map.remove(&domid);
        }
        let files = match self.control.mapper_files(domid) {
            Ok(f) => f,
            Err(ControlError::Remote(w)) if w.errno == libc::ESRCH => {
                return Err(GrantError::BadDomain(domid))
            }
            Err(e) => return Err(GrantError::Control(e)),
        };
        let ledger = files
            .ledger
            .ok_or(GrantError::Invalid("no ledger from the daemon"))?;
        let d = Arc::new(
            ForeignDomain::open_with_ledger(domid, files.memory, &files.active, ledger)?
                .with_dirty_log(files.dirty)?,
        );
        map.insert(domid, Arc::clone(&d));
        Ok(d)
    }

    /// Forgets a domain: its memory is unmapped once the last mapping of it
    /// is dropped.
    pub fn release_domain(&self, domid: domid_t) {
        if let Ok(mut m) = self.domains.lock() {
            m.remove(&domid);
        }
    }

    /// Forgets every cached domain that is dying or destroyed (call it on
    /// `VIRQ_DOM_EXC`): their memory is unmapped once their last mapping
    /// goes. Returns the domids forgotten.
    pub fn release_dead_domains(&self) -> Vec<domid_t> {
        let Ok(mut m) = self.domains.lock() else {
            return Vec::new();
        };
        let dead: Vec<domid_t> = m
            .iter()
            .filter(|(_, d)| d.is_dying())
            .map(|(&k, _)| k)
            .collect();
        for k in &dead {
            m.remove(k);
        }
        dead
    }

    /// Maps grant `gref` of `domid` (`IOCTL_GNTDEV_MAP_GRANT_REF` + `mmap`).
    pub fn map_grant_ref(
        &self,
        domid: domid_t,
        gref: grant_ref_t,
        writable: bool,
    ) -> Result<GrantMapping, GrantError> {
        let d = self.domain(domid)?;
        let r = d.map(gref, DOM0, writable);
        if matches!(r, Err(GrantError::BadDomain(_))) {
            self.release_domain(domid);
        }
        r
    }

    /// Maps several grants of `domid` into one contiguous range (multi-page
    /// rings), all or nothing.
    pub fn map_grant_refs(
        &self,
        domid: domid_t,
        grefs: &[grant_ref_t],
        writable: bool,
    ) -> Result<GrantMapping, GrantError> {
        let d = self.domain(domid)?;
        d.map_contiguous(grefs, DOM0, writable)
    }

    /// Batched `GNTTABOP_map_grant_ref`: each op gets its `status` (and
    /// `handle` = index in the batch); a mapping is returned for each success.
    /// `GNTMAP_readonly` in `flags` asks for a read-only map; without
    /// `GNTMAP_host_map` (or `device_map`) the op fails with `bad_gntref` as
    /// in Xen.
    pub fn map_batch(&self, ops: &mut [gnttab_map_grant_ref]) -> Vec<Option<GrantMapping>> {
        ops.iter_mut()
            .enumerate()
            .map(|(i, op)| {
                if op.flags & (GNTMAP_host_map | GNTMAP_device_map) == 0 {
                    op.status = GNTST_bad_gntref;
                    return None;
                }
                let writable = op.flags & GNTMAP_readonly == 0;
                match self.map_grant_ref(op.dom, op.r#ref, writable) {
                    Ok(m) => {
                        op.status = GNTST_okay;
                        op.handle = i as grant_handle_t;
                        op.host_addr = m.as_ptr() as u64;
                        Some(m)
                    }
                    Err(e) => {
                        op.status = e.gntst();
                        None
                    }
                }
            })
            .collect()
    }

    /// Batched unmap: one result per mapping.
    pub fn unmap_batch(&self, maps: Vec<GrantMapping>) -> Vec<Result<(), GrantError>> {
        maps.into_iter().map(GrantMapping::unmap).collect()
    }

    /// `GNTTABOP_copy` for Dom0: each op's `status` gets its `GNTST_*`. Frame
    /// numbers (no `GNTCOPY_*_gref`) refer to Dom0's own memory.
    pub fn copy(&self, ops: &mut [gnttab_copy]) {
        let mut resolve = |d: domid_t| self.domain(d);
        for op in ops.iter_mut() {
            op.status = match grant_copy_one(op, DOM0, &mut resolve) {
                Ok(()) => GNTST_okay,
                Err(e) => e.gntst(),
            };
        }
    }

    fn with_pinned<R>(
        &self,
        domid: domid_t,
        gref: grant_ref_t,
        offset: usize,
        len: usize,
        writable: bool,
        f: impl FnOnce(&GrantMapping) -> R,
    ) -> Result<R, GrantError> {
        if offset.checked_add(len).is_none_or(|e| e > PAGE_SIZE) {
            return Err(GrantError::BadCopyArg {
                offset: u16::try_from(offset).unwrap_or(u16::MAX),
                len: u16::try_from(len).unwrap_or(u16::MAX),
            });
        }
        let m = self.map_grant_ref(domid, gref, writable)?;
        let r = f(&m);
        m.unmap()?;
        Ok(r)
    }

    /// Copies from a grant into a local buffer (a grant copy whose
    /// destination is this process's memory).
    pub fn copy_from_grant(
        &self,
        domid: domid_t,
        gref: grant_ref_t,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), GrantError> {
        self.with_pinned(domid, gref, offset, buf.len(), false, |m| {
            m.read(offset, buf)
        })?
        .map_err(|_| GrantError::Invalid("read out of bounds"))
    }

    /// Copies a local buffer into a grant.
    pub fn copy_to_grant(
        &self,
        domid: domid_t,
        gref: grant_ref_t,
        offset: usize,
        data: &[u8],
    ) -> Result<(), GrantError> {
        self.with_pinned(domid, gref, offset, data.len(), true, |m| {
            m.write(offset, data)
        })?
        .map_err(|_| GrantError::Invalid("write out of bounds"))
    }

    /// `GNTTABOP_query_size` of `domid`: `(nr_frames, max_nr_frames)`.
    pub fn query_size(&self, domid: domid_t) -> Result<(u32, u32), GrantError> {
        Ok(self.domain(domid)?.query_size())
    }
}
