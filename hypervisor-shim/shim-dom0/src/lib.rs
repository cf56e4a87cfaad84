//! The hypervisor shim's Dom0-side API, shaped like Linux's Xen devices:
//!
//! - [`Gntdev`] (`/dev/xen/gntdev`): map other domains' grants, grant copy;
//! - [`Gntalloc`] (`/dev/xen/gntalloc`): grant Dom0's own pages;
//! - [`Evtchn`] (`/dev/xen/evtchn`): bind, notify, read pending ports, unmask;
//! - [`Control`]: domain control (create, destroy, pause, list...), like the
//!   toolstack's domctl calls.
//!
//! Each handle has its own connection to the daemon; Dom0 is identified by
//! the socket's permissions (root only) and the peer's uid.
//!
//! Under them, [`grant`] is the mapper's side of Xen's grant tables: entry
//! validation and the `GTF_*` compare-and-swap, pins in the shared
//! active-grant file, per-process ledgers, [`GrantMapping`]. The daemon
//! (`xen-shimd`) uses it for `GNTTABOP_copy` and to release a dead mapper's
//! pins. Everything both sides run (protocol, layout, the granter's side of
//! grants, event-channel bits, the port set) is in `xen-shim-proto`; no
//! guest crate depends on this one (`tests/testhost/tests/layering.rs`).

mod control;
mod evtchn;
mod gntalloc;
mod gntdev;
pub mod grant;

pub use control::{Control, CreatedDomain, DomainFiles};
pub use evtchn::Evtchn;
pub use gntalloc::{Gntalloc, GrantedPages};
pub use gntdev::Gntdev;
pub use grant::GrantMapping;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn test_handles_are_send_and_sync() {
        assert_send_sync::<crate::Gntdev>();
        assert_send_sync::<crate::Evtchn>();
        assert_send_sync::<crate::Control>();
        assert_send_sync::<crate::Gntalloc>();
        assert_send_sync::<crate::GrantMapping>();
    }
}
