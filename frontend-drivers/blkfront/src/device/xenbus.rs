//! The xenbus handshake of a [`BlkFront`]: the state machine on the
//! backend's state (offer the rings, connect, disconnect and reconnect,
//! fail), the rings and event channels it builds and tears down, and the
//! transport nodes it writes, through [`xen_xenbus::FrontendDevice`].

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_abi::io::blkif::{keys, XEN_IO_PROTO_ABI_NATIVE};
use xen_abi::io::xenbus::XenbusState;
use xen_front_platform::{Platform, PlatformError, XsWatchEvent};
use xen_ring::{FrontRing, SharedRing};
use xen_xenbus::{numbered_key, NodeWriter};

use super::{plat, BlkFront, BlkStatus, FrontState, Queue};
use crate::error::{BlkfrontError, FailReason};
use crate::features::{DiskInfo, TransportOffer};

impl<'p, P: Platform + ?Sized> BlkFront<'p, P> {
    /// Handles a fired watch: `Ok(false)` if the event is not this device's,
    /// else runs [`BlkFront::backend_changed`].
    pub fn handle_watch(&mut self, ev: &XsWatchEvent) -> Result<bool, BlkfrontError> {
        if ev.token != self.xb.token() {
            return Ok(false);
        }
        self.backend_changed()?;
        Ok(true)
    }

    /// Reads the backend's state and acts on it (level-triggered, so lost or
    /// coalesced watch events and skipped states are harmless):
    /// - InitWait, while waiting or closed: allocate and grant the rings and
    ///   event channels, write them, switch to Initialised; while connected
    ///   (the backend restarted without closing): tear down, then the same;
    /// - Connected, while Initialised: read the disk, switch to Connected,
    ///   issue the requests that were waiting;
    /// - Closing, Closed or a removed node, after offering rings: harvest
    ///   responses, tear the rings down (outstanding requests wait for the
    ///   next backend), switch to Closed.
    pub fn backend_changed(&mut self) -> Result<(), BlkfrontError> {
        self.retry_deferred();
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        let Some(be) = self.xb.backend_state(self.p).map_err(plat)? else {
            self.stats.bad_backend_states = self.stats.bad_backend_states.saturating_add(1);
            return Ok(());
        };
        self.backend_state = Some(be);
        let r = match (be, self.state) {
            (XenbusState::InitWait, FrontState::WaitBackend | FrontState::Closed) => self.offer(),
            (XenbusState::InitWait, FrontState::Connected) => {
                self.disconnect()?;
                self.offer()
            }
            (XenbusState::Connected, FrontState::Initialised) => self.connect(),
            (
                XenbusState::Closing | XenbusState::Closed,
                FrontState::Initialised | FrontState::Connected,
            ) => {
                self.disconnect()?;
                self.state = FrontState::Closed;
                self.switch_state(XenbusState::Closed).map_err(plat)
            }
            _ => Ok(()),
        };
        self.retry_deferred();
        r
    }

    /// Writes our `state` (in a transaction), unless the toolstack removed
    /// the node (as Linux's `xenbus_switch_state`, which never recreates a
    /// removed device directory).
    pub(super) fn switch_state(&self, s: XenbusState) -> Result<(), PlatformError> {
        self.xb.switch_state(self.p, s)
    }

    pub(super) fn read_backend(&self, key: &str) -> Option<String> {
        self.xb.read_backend(self.p, key)
    }

    /// Allocates the rings and ports the backend's offer allows, writes
    /// them (one transaction) and switches to Initialised.
    pub(super) fn offer(&mut self) -> Result<(), BlkfrontError> {
        let offer = match TransportOffer::parse(&mut |k| self.read_backend(k)) {
            Ok(o) => o,
            Err(e) => return Err(self.fail(FailReason::BadBackendInfo(e))),
        };
        let order = self.cfg.max_ring_page_order.min(offer.max_ring_page_order);
        let nq = self.cfg.max_queues.min(offer.max_queues).max(1) as usize;
        if let Err(e) = self.build_queues(order, nq) {
            return Err(self.fail(FailReason::Platform(e)));
        }
        self.ring_order = order;
        if let Err(e) = self.write_transport() {
            return Err(self.fail(FailReason::Platform(e)));
        }
        self.state = FrontState::Initialised;
        self.switch_state(XenbusState::Initialised).map_err(plat)
    }

    pub(super) fn build_queues(&mut self, order: u32, nq: usize) -> Result<(), PlatformError> {
        let npages = 1usize << order;
        for _ in 0..nq {
            let pages = self.p.alloc_pages(npages)?;
            let mut grefs = Vec::with_capacity(npages);
            for i in 0..npages {
                let gfn = pages.gfn(i).ok_or(PlatformError::UnknownPages {
                    gfn: pages.first_gfn(),
                })?;
                match self.p.grant_access(self.xb.backend_id(), gfn, false) {
                    Ok(g) => grefs.push(g),
                    Err(e) => {
                        self.release_run(grefs, pages);
                        return Err(e);
                    }
                }
            }
            // SAFETY: `pages` is valid for reads and writes of its whole
            // length until it goes back to `free_pages`, which happens only
            // after this ring is turned back into its SharedRing and dropped
            // (`teardown_queues`, `Drop`); in this process the memory is
            // touched only through this one FrontRing, the backend's
            // BackRing being the other endpoint.
            let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) };
            let ring = match mem.and_then(FrontRing::init) {
                Ok(r) => r,
                Err(_) => {
                    self.release_run(grefs, pages);
                    return Err(PlatformError::Unsupported {
                        op: "a ring on the platform's pages",
                    });
                }
            };
            let port = match self.p.evtchn_alloc_unbound(self.xb.backend_id()) {
                Ok(port) => port,
                Err(e) => {
                    let _mem: SharedRing = ring.into_shared();
                    self.release_run(grefs, pages);
                    return Err(e);
                }
            };
            self.queues.push(Queue {
                ring,
                pages,
                grefs,
                port,
            });
        }
        Ok(())
    }

    /// Writes the transport nodes (Linux's `talk_to_blkback`) in one
    /// transaction, retried while it conflicts (bounded).
    pub(super) fn write_transport(&self) -> Result<(), PlatformError> {
        self.xb.write_nodes(self.p, |w| self.write_transport_in(w))
    }

    fn write_transport_in(&self, w: &NodeWriter<'_, P>) -> Result<(), PlatformError> {
        // Remove what an earlier connection may have left: the transport
        // keys, `ring-refN` and `queue-N`.
        w.remove_where(|k| {
            [
                keys::EVENT_CHANNEL,
                keys::RING_PAGE_ORDER,
                keys::MULTI_QUEUE_NUM_QUEUES,
            ]
            .contains(&k)
                || numbered_key(k, keys::RING_REF)
                || numbered_key(k, keys::QUEUE_PREFIX)
        })?;
        let write_queue = |prefix: &str, q: &Queue| -> Result<(), PlatformError> {
            if q.grefs.len() == 1 {
                w.write(&format!("{prefix}{}", keys::RING_REF), q.grefs[0])?;
            } else {
                for (i, g) in q.grefs.iter().enumerate() {
                    w.write(&format!("{prefix}{}{i}", keys::RING_REF), g)?;
                }
            }
            w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL), q.port)
        };
        if self.ring_order > 0 {
            w.write(keys::RING_PAGE_ORDER, self.ring_order)?;
        }
        if self.queues.len() == 1 {
            write_queue("", &self.queues[0])?;
        } else {
            w.write(keys::MULTI_QUEUE_NUM_QUEUES, self.queues.len())?;
            for (i, q) in self.queues.iter().enumerate() {
                write_queue(&format!("{}{i}/", keys::QUEUE_PREFIX), q)?;
            }
        }
        w.write(keys::PROTOCOL, XEN_IO_PROTO_ABI_NATIVE)?;
        w.write(
            keys::FEATURE_PERSISTENT,
            if self.cfg.persistent_grants { "1" } else { "0" },
        )
    }

    /// The backend is Connected: read the disk, go Connected, issue what
    /// waits.
    pub(super) fn connect(&mut self) -> Result<(), BlkfrontError> {
        let disk = match DiskInfo::parse(&mut |k| self.read_backend(k)) {
            Ok(d) => d,
            Err(e) => return Err(self.fail(FailReason::BadBackendInfo(e))),
        };
        self.persistent = self.cfg.persistent_grants && disk.persistent;
        self.max_segments = disk.segments_per_request(self.cfg.max_indirect_segments);
        self.disk = Some(disk);
        self.state = FrontState::Connected;
        self.switch_state(XenbusState::Connected).map_err(plat)?;
        self.kick()
    }

    /// The backend went away: harvest what it answered, put every request
    /// that was on a ring back in line (with a new id), revoke every grant
    /// (deferring those still mapped), tear the rings down.
    pub(super) fn disconnect(&mut self) -> Result<(), BlkfrontError> {
        if !self.queues.is_empty() && self.state == FrontState::Connected {
            self.process_responses()?;
        }
        self.requeue_on_ring();
        // Revoke the grants of every outstanding request's pages.
        for id in self.ids.ids() {
            let Some(mut s) = self.ids.get_mut(id).map(|s| {
                (
                    core::mem::take(&mut s.data),
                    core::mem::take(&mut s.indirect),
                )
            }) else {
                continue;
            };
            s.0 = self.revoke_keep(s.0);
            s.1 = self.revoke_keep(s.1);
            if let Some(sh) = self.ids.get_mut(id) {
                sh.data = s.0;
                sh.indirect = s.1;
            }
        }
        let data = core::mem::take(&mut self.free_data);
        let ind = core::mem::take(&mut self.free_indirect);
        self.free_data = self.revoke_keep(data);
        self.free_indirect = self.revoke_keep(ind);
        self.teardown_queues();
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
        Ok(())
    }

    /// The guest runs in a new domain after a suspend (Xen's restore;
    /// Linux's `blkfront_resume` and `blkif_recover`): the old domain's
    /// grants and ports are gone with it, so they are forgotten, never
    /// revoked or closed (a port number may already name another channel
    /// here), and its xenstore watch, which the client's reconnection set
    /// again, is removed; the ring pages and data pages are ours
    /// still. The rings are not read: a response the old backend wrote
    /// after the guest's memory was saved may be missing, so every request
    /// that was on a ring is put back in line (in submission order, with a
    /// new id) ahead of those waiting, to be issued on the new rings: each
    /// completes exactly once (a write may reach the disk twice, which is
    /// harmless as Linux's). The device's `backend` and `backend-id` are
    /// read again (the new domain has its own backend directory), the
    /// watch is set again, and the handshake starts over from the
    /// backend's state.
    ///
    /// # Errors
    /// [`BlkfrontError::NoBackend`] when the device has no valid backend
    /// nodes in the new domain; a failed device stays failed.
    pub fn resume(&mut self) -> Result<(), BlkfrontError> {
        if let Some(f) = &self.failure {
            return Err(BlkfrontError::Failed(f.clone()));
        }
        // The rings: their pages go back to the allocator, their grants
        // and ports are forgotten.
        for q in core::mem::take(&mut self.queues) {
            let _mem: SharedRing = q.ring.into_shared();
            let _ = self.p.free_pages(q.pages);
        }
        // Deferred revocations were of the old domain's grants.
        for d in core::mem::take(&mut self.deferred) {
            let _ = self.p.free_pages(d.pages);
        }
        let forget = |pages: &mut Vec<super::buffers::DataPage>| {
            for dp in pages.iter_mut() {
                dp.grant = None;
            }
        };
        forget(&mut self.free_data);
        forget(&mut self.free_indirect);
        for b in self.buffers.iter_mut().flatten() {
            forget(&mut b.pages);
        }
        for id in self.ids.ids() {
            if let Some(s) = self.ids.get_mut(id) {
                forget(&mut s.data);
                forget(&mut s.indirect);
            }
        }
        self.requeue_on_ring();
        self.state = FrontState::WaitBackend;
        self.backend_state = None;
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
        // The old backend's watch: the xenstore client's reconnection set
        // it again. Removed, as Linux's `talk_to_otherend` frees the old
        // otherend watch: when the new domain has the old one's domid (a
        // restore on another host), the new backend's directory is the
        // same and setting the watch below would fail with EEXIST; else
        // it would stay, stale. Not there (no reconnection): nothing to do.
        let _ = self.xb.unwatch(self.p);
        self.xb = xen_xenbus::FrontendDevice::open(
            self.p,
            String::from(self.xb.node()),
            String::from(self.xb.token()),
        )
        .map_err(|_| BlkfrontError::NoBackend { devid: self.devid })?;
        self.xb.watch(self.p).map_err(plat)?;
        self.backend_changed()
    }

    /// Puts every request that is on a ring back in line, in submission
    /// order with a new id (a late response to the old id is refused),
    /// ahead of those waiting.
    fn requeue_on_ring(&mut self) {
        let mut on_ring: Vec<(u64, u64)> = Vec::new();
        for id in self.ids.ids() {
            if let Some(s) = self.ids.get_mut(id) {
                if s.queue.take().is_some() {
                    on_ring.push((s.seq, id));
                }
            }
        }
        on_ring.sort_unstable();
        let mut requeued = VecDeque::with_capacity(on_ring.len() + self.pending.len());
        for (_, id) in on_ring {
            if let Ok(new) = self.ids.renew(id) {
                requeued.push_back(new);
                self.stats.reissued = self.stats.reissued.saturating_add(1);
            }
        }
        requeued.extend(self.pending.drain(..));
        self.pending = requeued;
    }

    pub(super) fn teardown_queues(&mut self) {
        let queues = core::mem::take(&mut self.queues);
        for q in queues {
            // The ring no longer refers to the pages once it is dropped.
            let _mem: SharedRing = q.ring.into_shared();
            let _ = self.p.evtchn_close(q.port);
            self.release_run(q.grefs, q.pages);
        }
    }

    /// Marks the device failed: Closing, every outstanding request completed
    /// with an error, grants revoked (or deferred), rings torn down.
    pub(super) fn fail(&mut self, reason: FailReason) -> BlkfrontError {
        if let Some(f) = &self.failure {
            return BlkfrontError::Failed(f.clone());
        }
        self.failure = Some(reason.clone());
        self.state = FrontState::Failed;
        let _ = self.switch_state(XenbusState::Closing);
        let mut ids = self.ids.ids();
        ids.sort_unstable_by_key(|&id| self.ids.get(id).map_or(0, |s| s.seq));
        for id in ids {
            if let Ok(s) = self.ids.remove(id) {
                self.push_completion(s.tag, s.kind, BlkStatus::Error, Vec::new());
                for dp in s.data.into_iter().chain(s.indirect) {
                    self.drop_page(dp);
                }
            }
        }
        self.pending.clear();
        // Registered buffers lose their pages (and grants): `buffer_*`
        // refuse them from now on; `free_buffer` still unregisters them.
        self.drop_pools();
        self.teardown_queues();
        BlkfrontError::Failed(reason)
    }
}
