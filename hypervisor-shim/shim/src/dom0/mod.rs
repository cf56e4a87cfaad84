//! The Dom0-side API, shaped like Linux's Xen devices:
//!
//! - [`Gntdev`] (`/dev/xen/gntdev`): map other domains' grants, grant copy;
//! - [`Gntalloc`] (`/dev/xen/gntalloc`): grant Dom0's own pages;
//! - [`Evtchn`] (`/dev/xen/evtchn`): bind, notify, read pending ports, unmask;
//! - [`Control`]: domain control (create, destroy, pause, list...), like the
//!   toolstack's domctl calls.
//!
//! Each handle has its own connection to the daemon; Dom0 is identified by
//! the socket's permissions (root only) and the peer's uid.

mod control;
mod evtchn;
mod gntalloc;
mod gntdev;

pub use control::{Control, CreatedDomain, DomainFiles};
pub use evtchn::Evtchn;
pub use gntalloc::{Gntalloc, GrantedPages};
pub use gntdev::Gntdev;
