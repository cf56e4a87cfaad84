//! The xenbus handshake of a [`NetFront`]: the state machine on the
//! backend's state (offer the queues, connect, disconnect and reconnect,
//! fail, close) through [`xen_xenbus::FrontendDevice`], the queues it builds
//! (rings, tx and rx pages, grants, event channels) and tears down, and the
//! runs the backend still maps (revoked and freed later).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::{keys, NETIF_RX_RING_SIZE, NETIF_TX_RING_SIZE};
use xen_abi::io::xenbus::XenbusState;
use xen_front_platform::{Platform, PlatformError, SharedPages, XsWatchEvent};
use xen_ring::{FrontRing, SharedRing};
use xen_xenbus::{numbered_key, NodeWriter};

use super::{plat, BackendOffer, Deferred, FrontState, NetFront, Queue, QueueStats, RetiredTx};
use crate::error::{FailReason, NetfrontError};
use crate::request::{rx_request, MAX_EXTRAS, MAX_SLOTS};

impl<'p, P: Platform + ?Sized> NetFront<'p, P> {
    /// Handles a fired watch: `Ok(false)` if it is not this device's.
    pub fn handle_watch(&mut self, ev: &XsWatchEvent) -> Result<bool, NetfrontError> {
        if ev.token != self.xb.token() {
            return Ok(false);
        }
        self.backend_changed()?;
        Ok(true)
    }

    /// Reads the backend's state and acts on it (level-triggered):
    /// InitWait while waiting or closed: offer rings and go Connected;
    /// Connected while offered: start the data path; Closing, Closed or
    /// removed: tear down and go Closed.
    pub fn backend_changed(&mut self) -> Result<(), NetfrontError> {
        self.retry_deferred();
        if let Some(f) = &self.failure {
            return Err(NetfrontError::Failed(f.clone()));
        }
        let Some(be) = self.xb.backend_state(self.p).map_err(plat)? else {
            return Ok(());
        };
        self.backend_state = Some(be);
        match (be, self.state) {
            (XenbusState::InitWait, FrontState::WaitBackend | FrontState::Closed) => self.offer(),
            (XenbusState::InitWait, FrontState::Connected) => {
                // The backend restarted without closing.
                self.disconnect();
                self.offer()
            }
            (XenbusState::Connected, FrontState::Offered) => {
                self.state = FrontState::Connected;
                self.switch_state(XenbusState::Connected).map_err(plat)?;
                // Wake the backend for the rx buffers already posted.
                for i in 0..self.queues.len() {
                    let port = self.queues[i].port_rx;
                    self.notify(port)?;
                }
                Ok(())
            }
            (
                XenbusState::Closing | XenbusState::Closed,
                FrontState::Offered | FrontState::Connected,
            ) => {
                self.disconnect();
                self.state = FrontState::Closed;
                self.switch_state(XenbusState::Closed).map_err(plat)
            }
            _ => Ok(()),
        }
    }

    /// Writes our `state` (in a transaction), unless the toolstack removed
    /// the node.
    pub(super) fn switch_state(&self, s: XenbusState) -> Result<(), PlatformError> {
        self.xb.switch_state(self.p, s)
    }

    pub(super) fn read_backend(&self, key: &str) -> Option<String> {
        self.xb.read_backend(self.p, key)
    }

    pub(super) fn offer(&mut self) -> Result<(), NetfrontError> {
        let max_queues = match self.read_backend(keys::MULTI_QUEUE_MAX_QUEUES) {
            None => 1,
            Some(v) => match v.trim_end_matches('\0').trim().parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(self.fail(FailReason::BadBackendInfo("multi-queue-max-queues"))),
            },
        };
        self.offer = BackendOffer {
            sg: parse_flag(self.read_backend(keys::FEATURE_SG)),
            gso_tcpv4: parse_flag(self.read_backend(keys::FEATURE_GSO_TCPV4)),
            gso_tcpv6: parse_flag(self.read_backend(keys::FEATURE_GSO_TCPV6)),
            ipv6_csum: parse_flag(self.read_backend(keys::FEATURE_IPV6_CSUM_OFFLOAD)),
            split: parse_flag(self.read_backend(keys::FEATURE_SPLIT_EVENT_CHANNELS)),
            max_queues,
        };
        if let Some(m) = self.read_backend(keys::MTU) {
            match m.trim_end_matches('\0').trim().parse::<u32>() {
                Ok(v) if (68..=65535).contains(&v) => self.mtu = v,
                _ => return Err(self.fail(FailReason::BadBackendInfo("mtu"))),
            }
        }
        let nq = self.cfg.max_queues.min(max_queues).max(1) as usize;
        let split = self.cfg.split_event_channels && self.offer.split;
        for _ in 0..nq {
            match self.build_queue(split) {
                Ok(q) => self.queues.push(q),
                Err(e) => {
                    self.teardown_queues();
                    return Err(self.fail(FailReason::Platform(e)));
                }
            }
        }
        if let Err(e) = self.write_transport() {
            self.teardown_queues();
            return Err(self.fail(FailReason::Platform(e)));
        }
        self.state = FrontState::Offered;
        // Initialised, then Connected once the backend is: Linux netback
        // connects on either, and a restarted backend that finds a
        // frontend already Connected waits for a fresh offer.
        self.switch_state(XenbusState::Initialised).map_err(plat)
    }

    pub(super) fn grant_run(
        &self,
        pages: &SharedPages,
        readonly: bool,
        out: &mut Vec<grant_ref_t>,
    ) -> Result<(), PlatformError> {
        for i in 0..pages.count() {
            let gfn = pages.gfn(i).ok_or(PlatformError::UnknownPages {
                gfn: pages.first_gfn(),
            })?;
            out.push(self.p.grant_access(self.xb.backend_id(), gfn, readonly)?);
        }
        Ok(())
    }

    pub(super) fn build_queue(&mut self, split: bool) -> Result<Queue, PlatformError> {
        let p = self.p;
        let n = NETIF_TX_RING_SIZE;
        let mut runs: Vec<SharedPages> = Vec::with_capacity(4);
        for count in [1, 1, n, NETIF_RX_RING_SIZE] {
            match p.alloc_pages(count) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    for r in runs {
                        let _ = p.free_pages(r);
                    }
                    return Err(e);
                }
            }
        }
        let mut grefs: Vec<Vec<grant_ref_t>> = Vec::with_capacity(4);
        let mut ports: Vec<evtchn_port_t> = Vec::new();
        let r = (|| {
            for (i, run) in runs.iter().enumerate() {
                let mut g = Vec::with_capacity(run.count());
                let r = self.grant_run(run, i == 2, &mut g);
                grefs.push(g);
                r?;
            }
            let port_tx = p.evtchn_alloc_unbound(self.xb.backend_id())?;
            ports.push(port_tx);
            if split {
                ports.push(p.evtchn_alloc_unbound(self.xb.backend_id())?);
            }
            Ok(())
        })();
        if let Err(e) = r {
            for g in grefs.iter().flatten() {
                let _ = p.end_access(*g);
            }
            for port in ports {
                let _ = p.evtchn_close(port);
            }
            for r in runs {
                let _ = p.free_pages(r);
            }
            return Err(e);
        }
        let port_tx = ports[0];
        let port_rx = *ports.last().unwrap_or(&port_tx);
        let mut runs = runs.into_iter();
        let mut grefs = grefs.into_iter();
        let (Some(tx_ring), Some(rx_ring), Some(tx_pages), Some(rx_pages)) =
            (runs.next(), runs.next(), runs.next(), runs.next())
        else {
            return Err(PlatformError::Unsupported { op: "page runs" });
        };
        let (Some(g0), Some(g1), Some(tx_grefs), Some(rx_grefs)) =
            (grefs.next(), grefs.next(), grefs.next(), grefs.next())
        else {
            return Err(PlatformError::Unsupported { op: "grants" });
        };
        let mut q = Queue {
            tx: Self::ring(&tx_ring)?,
            rx: Self::ring(&rx_ring)?,
            tx_ring,
            rx_ring,
            tx_ring_gref: g0[0],
            rx_ring_gref: g1[0],
            port_tx,
            port_rx,
            tx_pages,
            tx_grefs,
            tx_free: (0..n as u16).rev().collect(),
            tx_busy: vec![false; n],
            rx_pages,
            rx_grefs,
            rx_pending: Vec::with_capacity(MAX_SLOTS + MAX_EXTRAS),
            tx_reserved: 0,
            rx_held: 0,
            stats: QueueStats::default(),
        };
        // Post every rx page: page i for ring slot i, so a response's slot
        // names its page (the backend answers in the request's slot).
        for i in 0..q.rx_grefs.len() {
            let _ = q.rx.push_request(&rx_request(i as u16, q.rx_grefs[i]));
        }
        q.rx.publish_requests();
        Ok(q)
    }

    pub(super) fn ring<Req: xen_ring::RingEntry, Rsp: xen_ring::RingEntry>(
        pages: &SharedPages,
    ) -> Result<FrontRing<Req, Rsp>, PlatformError> {
        let bad = || PlatformError::Unsupported {
            op: "a ring on the platform's pages",
        };
        // SAFETY: the page stays valid until it goes back to `free_pages`,
        // which happens only after this FrontRing is turned back into its
        // SharedRing and dropped (`teardown_queues`); this process touches
        // the page only through this one FrontRing.
        let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) }.map_err(|_| bad())?;
        FrontRing::init(mem).map_err(|_| bad())
    }

    /// Writes the transport nodes (Linux's `talk_to_netback`) in one
    /// transaction, retried while it conflicts (bounded).
    pub(super) fn write_transport(&self) -> Result<(), PlatformError> {
        self.xb.write_nodes(self.p, |w| self.write_transport_in(w))
    }

    pub(super) fn write_transport_in(&self, w: &NodeWriter<'_, P>) -> Result<(), PlatformError> {
        // Remove what an earlier connection may have left: the transport
        // keys and `queue-N`.
        w.remove_where(|k| {
            [
                keys::TX_RING_REF,
                keys::RX_RING_REF,
                keys::EVENT_CHANNEL,
                keys::EVENT_CHANNEL_TX,
                keys::EVENT_CHANNEL_RX,
                keys::MULTI_QUEUE_NUM_QUEUES,
            ]
            .contains(&k)
                || numbered_key(k, keys::QUEUE_PREFIX)
        })?;
        let write_queue = |prefix: &str, q: &Queue| -> Result<(), PlatformError> {
            w.write(&format!("{prefix}{}", keys::TX_RING_REF), q.tx_ring_gref)?;
            w.write(&format!("{prefix}{}", keys::RX_RING_REF), q.rx_ring_gref)?;
            if q.port_tx == q.port_rx {
                w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL), q.port_tx)
            } else {
                w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL_TX), q.port_tx)?;
                w.write(&format!("{prefix}{}", keys::EVENT_CHANNEL_RX), q.port_rx)
            }
        };
        if self.queues.len() == 1 {
            write_queue("", &self.queues[0])?;
        } else {
            w.write(keys::MULTI_QUEUE_NUM_QUEUES, self.queues.len())?;
            for (i, q) in self.queues.iter().enumerate() {
                write_queue(&format!("{}{i}/", keys::QUEUE_PREFIX), q)?;
            }
        }
        let on = if self.cfg.offloads { "1" } else { "0" };
        w.write(keys::REQUEST_RX_COPY, "1")?;
        w.write(keys::FEATURE_RX_NOTIFY, "1")?;
        w.write(keys::FEATURE_SG, on)?;
        w.write(keys::FEATURE_GSO_TCPV4, on)?;
        w.write(keys::FEATURE_GSO_TCPV6, on)?;
        w.write(keys::FEATURE_IPV6_CSUM_OFFLOAD, on)?;
        w.write(
            keys::FEATURE_NO_CSUM_OFFLOAD,
            if self.cfg.offloads { "0" } else { "1" },
        )
    }

    /// Revokes every grant, frees the pages (keeping those the backend
    /// still maps, and tx pages outstanding reservations point into until
    /// they end), closes the ports.
    pub(super) fn teardown_queues(&mut self) {
        self.drop_queues(false);
    }

    /// Takes the queues down (see [`NetFront::teardown_queues`]); with
    /// `forget` (the guest runs in a new domain) their grants and ports
    /// are not the guest's any more: they are left alone, only the pages
    /// are freed.
    fn drop_queues(&mut self, forget: bool) {
        let p = self.p;
        if self.queues.is_empty() {
            return;
        }
        let conn = self.conn;
        self.conn = self.conn.wrapping_add(1);
        for (qi, q) in core::mem::take(&mut self.queues).into_iter().enumerate() {
            let Queue {
                tx,
                rx,
                tx_ring,
                rx_ring,
                tx_ring_gref,
                rx_ring_gref,
                port_tx,
                port_rx,
                tx_pages,
                tx_grefs,
                rx_pages,
                rx_grefs,
                tx_reserved,
                ..
            } = q;
            let _tx_mem: SharedRing = tx.into_shared();
            let _rx_mem: SharedRing = rx.into_shared();
            let (tx_ring_g, rx_ring_g, tx_g, rx_g): (&[grant_ref_t], &[grant_ref_t], &[_], &[_]) =
                if forget {
                    (&[], &[], &[], &[])
                } else {
                    (&[tx_ring_gref], &[rx_ring_gref], &tx_grefs, &rx_grefs)
                };
            self.release_run(tx_ring_g, tx_ring);
            self.release_run(rx_ring_g, rx_ring);
            if tx_reserved > 0 {
                // Writers are filling some of these pages: revoke now, free
                // when the last reservation ends.
                let grefs = self.revoke(tx_g, tx_pages.count());
                self.retired.push(RetiredTx {
                    conn,
                    q: qi,
                    pages: tx_pages,
                    grefs,
                    outstanding: tx_reserved,
                });
            } else {
                self.release_run(tx_g, tx_pages);
            }
            self.release_run(rx_g, rx_pages);
            if !forget {
                let _ = p.evtchn_close(port_tx);
                if port_rx != port_tx {
                    let _ = p.evtchn_close(port_rx);
                }
            }
        }
    }

    /// Revokes `grefs`; those the backend still maps (counted in
    /// `leaked_pages` as `pages` pages once per run).
    pub(super) fn revoke(&mut self, grefs: &[grant_ref_t], pages: usize) -> Vec<grant_ref_t> {
        let left: Vec<grant_ref_t> = grefs
            .iter()
            .copied()
            .filter(|&g| matches!(self.p.end_access(g), Err(PlatformError::GrantInUse { .. })))
            .collect();
        if !left.is_empty() {
            self.stats.leaked_pages = self.stats.leaked_pages.saturating_add(pages as u64);
        }
        left
    }

    /// Revokes `grefs` and frees `pages`, or defers both while the
    /// backend maps any of them.
    pub(super) fn release_run(&mut self, grefs: &[grant_ref_t], pages: SharedPages) {
        let left = self.revoke(grefs, pages.count());
        self.free_or_defer(left, pages);
    }

    pub(super) fn free_or_defer(&mut self, left: Vec<grant_ref_t>, pages: SharedPages) {
        if left.is_empty() {
            // A platform refusal leaks the pages, which is safe.
            let _ = self.p.free_pages(pages);
        } else {
            self.deferred.push(Deferred { grefs: left, pages });
        }
    }

    /// Retries the deferred revocations; frees the runs no longer mapped.
    pub(super) fn retry_deferred(&mut self) {
        for d in core::mem::take(&mut self.deferred) {
            let left: Vec<grant_ref_t> = d
                .grefs
                .into_iter()
                .filter(|&g| matches!(self.p.end_access(g), Err(PlatformError::GrantInUse { .. })))
                .collect();
            self.free_or_defer(left, d.pages);
        }
    }

    /// Retries the revocations of the pages kept because the backend still
    /// mapped some of their grants (a backend that died with them mapped
    /// releases them later, when its Dom0 unmaps them for it); the pages
    /// still kept.
    pub fn retry_deferred_pages(&mut self) -> usize {
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
        self.deferred_pages()
    }

    /// Pages kept because the backend still maps some of their grants.
    pub fn deferred_pages(&self) -> usize {
        self.deferred.iter().map(|d| d.pages.count()).sum()
    }

    /// The guest runs in a new domain after a suspend (Xen's restore;
    /// Linux's `netfront_resume`): the old domain's grants and ports are
    /// gone with it, so they are forgotten, never revoked or closed (a
    /// port number may already name another channel here), and its watch,
    /// which the xenstore client's reconnection set again, is removed; the
    /// pages are ours still and go back to the allocator (tx pages that
    /// reservations point into stay until those end, which report them
    /// stale). What was on the rings is not read: frames in flight are
    /// lost, as on a real link (the guest's TCP retransmits). The device's
    /// `backend` and `backend-id` are read again, the watch is set again
    /// and the handshake starts over: on InitWait fresh rings are offered
    /// with every rx buffer posted. Announcing the MAC (a gratuitous ARP,
    /// Linux's `netdev_notify_peers`) is the network stack's part, once
    /// connected.
    ///
    /// # Errors
    /// [`NetfrontError::NoBackend`] when the device has no valid backend
    /// nodes in the new domain; a failed device stays failed.
    pub fn resume(&mut self) -> Result<(), NetfrontError> {
        if let Some(f) = &self.failure {
            return Err(NetfrontError::Failed(f.clone()));
        }
        self.drop_queues(true);
        for r in &mut self.retired {
            r.grefs.clear();
        }
        for d in core::mem::take(&mut self.deferred) {
            let _ = self.p.free_pages(d.pages);
        }
        self.state = FrontState::WaitBackend;
        self.backend_state = None;
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
        let no_backend = NetfrontError::NoBackend { devid: self.devid };
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
        .map_err(|_| no_backend)?;
        self.xb.watch(self.p).map_err(plat)?;
        self.backend_changed()
    }

    pub(super) fn disconnect(&mut self) {
        self.teardown_queues();
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
    }

    pub(super) fn fail(&mut self, reason: FailReason) -> NetfrontError {
        if self.failure.is_none() {
            self.failure = Some(reason.clone());
            self.state = FrontState::Failed;
            self.teardown_queues();
            let _ = self.switch_state(XenbusState::Closing);
        }
        NetfrontError::Failed(reason)
    }

    /// Closes the device: our state Closing then Closed, rings torn down.
    pub fn close(&mut self) {
        let _ = self.switch_state(XenbusState::Closing);
        self.teardown_queues();
        self.state = FrontState::Closed;
        let _ = self.switch_state(XenbusState::Closed);
    }
}

fn parse_flag(v: Option<String>) -> bool {
    v.is_some_and(|v| v.trim_end_matches('\0').trim() == "1")
}
