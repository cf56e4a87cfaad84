//! `VIRQ_DOM_EXC`: when the hypervisor says a domain changed state,
//! xenstored asks which introduced domains shut down or died and cleans up
//! as Xen's `domain_cleanup` does:
//!
//! - a domain that shut down (or crashed) fires `@releaseDomain` once (the
//!   flag is cleared by `XS_RESUME`);
//! - a domain that is dying or gone is released: its connection is dropped
//!   (watches, transactions, queued output), its ring unmapped and its port
//!   unbound, it is no longer introduced, and `@releaseDomain` fires.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use xenstore_wire::{path, DomId};

use crate::core::Core;

/// What the hypervisor says about an introduced domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainFate {
    /// Running or paused: nothing to do.
    Running,
    /// Shut down or crashed, not yet destroyed.
    Shutdown,
    /// Dying or destroyed: release it.
    Dead,
}

/// The source of `VIRQ_DOM_EXC` and of domain states (the shim's
/// [`crate::shim_mapper::ShimLink`], or a test double).
pub trait DomainWatcher: fmt::Debug + Send {
    /// Becomes readable when `VIRQ_DOM_EXC` fired.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Consumes the event and reports the fate of each of the `introduced`
    /// domains (a domain left out counts as [`DomainFate::Running`]).
    fn check(&mut self, introduced: &[DomId]) -> io::Result<Vec<(DomId, DomainFate)>>;
}

/// Applies `fates` to the engine (Xen's `domain_cleanup`); returns the
/// domains released. The server then drops their connections
/// ([`crate::core::DomainAction::Released`]).
pub fn apply(core: &mut Core, fates: &[(DomId, DomainFate)]) -> Vec<DomId> {
    let mut shutdown = false;
    let mut released = Vec::new();
    for &(domid, fate) in fates {
        match fate {
            DomainFate::Running => {}
            DomainFate::Shutdown => {
                if let Some(d) = core.domains.get_mut(domid) {
                    if !d.shutdown {
                        d.shutdown = true;
                        shutdown = true;
                    }
                }
            }
            DomainFate::Dead => {
                // Fires @releaseDomain itself.
                if core.release(domid).is_ok() {
                    released.push(domid);
                }
            }
        }
    }
    if shutdown && released.is_empty() {
        core.special_event(path::RELEASE_DOMAIN);
    }
    released
}

/// Asks `watcher` about every introduced domain and applies the answer.
pub fn check(core: &mut Core, watcher: &mut dyn DomainWatcher) -> Vec<DomId> {
    let introduced: Vec<DomId> = core
        .domains
        .iter()
        .map(|d| d.domid)
        .filter(|&d| d != 0)
        .collect();
    match watcher.check(&introduced) {
        Ok(fates) => {
            let released = apply(core, &fates);
            for d in &released {
                tracing::info!(domid = d, "domain died: released");
            }
            released
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn the domains' states after VIRQ_DOM_EXC");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ConnKind, DomainAction};
    use crate::ops::Caller;
    use xenstore_wire::{Header, MsgType, Request};

    fn core_with_watcher() -> (Core, usize) {
        let mut core = Core::default();
        let dom0 = core.new_conn(Caller::dom0(), ConnKind::Socket { read_only: false });
        let mut wire = Vec::new();
        Request::Watch {
            path: path::RELEASE_DOMAIN,
            token: b"r",
            depth: None,
        }
        .encode(1, 0, &mut wire)
        .expect("encode");
        let hdr = Header::decode(&wire).expect("header");
        core.handle(dom0, &hdr, &wire[Header::SIZE..]);
        for d in [3, 4] {
            core.introduce(d, 10, 1).expect("introduce");
        }
        core.actions.clear();
        // Forget the replies and the first events.
        if let Some(c) = core.conn_mut(dom0) {
            let n = c.out.pending().len();
            c.out.consume(n);
        }
        (core, dom0)
    }

    fn release_events(core: &mut Core, id: usize) -> usize {
        let c = core.conn_mut(id).expect("conn");
        let mut dec = xenstore_wire::Decoder::new();
        dec.push(c.out.pending());
        let n = c.out.pending().len();
        c.out.consume(n);
        let mut count = 0;
        while let Ok(Some((h, p))) = dec.next_packet() {
            if h.msg_type() == Some(MsgType::WatchEvent) && p.starts_with(b"@releaseDomain\0") {
                count += 1;
            }
        }
        count
    }

    #[test]
    fn test_apply_dead_domain_released_and_watch_fires() {
        // Arrange
        let (mut core, dom0) = core_with_watcher();

        // Act
        let released = apply(
            &mut core,
            &[(3, DomainFate::Dead), (4, DomainFate::Running)],
        );

        // Assert
        assert_eq!(released, vec![3]);
        assert!(!core.domains.is_introduced(3));
        assert!(core.domains.is_introduced(4));
        assert_eq!(release_events(&mut core, dom0), 1);
        assert!(matches!(
            core.actions.as_slice(),
            [DomainAction::Released { domid: 3, .. }]
        ));
    }

    #[test]
    fn test_apply_shutdown_fires_once_until_resume() {
        let (mut core, dom0) = core_with_watcher();
        apply(&mut core, &[(4, DomainFate::Shutdown)]);
        assert_eq!(release_events(&mut core, dom0), 1);
        apply(&mut core, &[(4, DomainFate::Shutdown)]);
        assert_eq!(release_events(&mut core, dom0), 0, "only once per shutdown");
        assert!(core.domains.is_introduced(4), "a shut-down domain stays");
        core.domains.get_mut(4).expect("introduced").shutdown = false;
        apply(&mut core, &[(4, DomainFate::Shutdown)]);
        assert_eq!(release_events(&mut core, dom0), 1);
    }

    #[test]
    fn test_apply_unknown_domain_ignored() {
        let (mut core, dom0) = core_with_watcher();
        assert!(apply(&mut core, &[(9, DomainFate::Dead)]).is_empty());
        assert_eq!(release_events(&mut core, dom0), 0);
    }
}
