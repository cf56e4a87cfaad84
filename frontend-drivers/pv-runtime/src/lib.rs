//! The PV guest runtime: a Linux process that the toolstack (or a test)
//! starts as domain N of the hypervisor shim, and that runs `no_std`
//! frontends through the `xen-front-platform` trait.
//!
//! ```text
//!   xen-pvguest (domain N)                               Dom0
//!   ┌───────────────────────────────────┐     ┌──────────────────────────┐
//!   │ frontends (demo, later blk/net)   │     │ backend (dom0peer, later │
//!   │   │ Platform trait                │     │ backendd): Gntdev, Evtchn │
//!   │ PvPlatform: pages, grants, evtchn │     └────────────┬─────────────┘
//!   │ EventHub + dispatcher thread      │                  │
//!   │ xen_shim_guest::Hypervisor ───────┼── control ── xen-shimd
//!   │   memory file (RAM, shared_info,  │                  │
//!   │   start_info, grant frames)  ◄────┼── data plane: mapped pages,
//!   └───────────────────────────────────┘   eventfds (no daemon hop)
//! ```
//!
//! - [`runtime`]: attach as domain N (domid and one-time token from argv or
//!   the environment), map the memory, read `start_info`, set up the grant
//!   table (`GNTTABOP_setup_table`), start the event dispatcher;
//! - [`events`]: the dispatcher (epoll over the ports' eventfds → Xen's
//!   2-level pending bits in `shared_info` → upcall → registered handlers)
//!   and the hub frontends wait on (`SCHEDOP_poll`);
//! - [`platform`]: [`platform::PvPlatform`], the platform trait for process
//!   guests;
//! - [`xenstore`]: the domain's xenstore connection (the `xen-xenbus`
//!   client on the store ring and event channel from `start_info`) behind
//!   the platform's `xs_*` methods;
//! - [`demo`]: the built-in plumbing frontends (grant + event demo, ring
//!   demo) and their line protocol; [`dom0peer`]: their Dom0 halves on the
//!   shim's `Gntdev`/`Evtchn`; [`xsdemo`]: xenstore frontends (a guest using
//!   its store over the ring, and a hostile one that corrupts it);
//! - [`console`]: the guest's console (`hvc0`): `xen-consfront` on the
//!   console page, a pty as the runtime's stdio, a pump thread between them;
//! - [`cli`]: the `xen-pvguest` binary; [`testkit`]: an in-process daemon
//!   and a guest-process launcher for cross-process tests and benchmarks.

pub mod blkload;
pub mod blockfile;
pub mod cli;
pub mod console;
pub mod control;
pub mod demo;
pub mod dom0peer;
mod error;
pub mod events;
pub mod grefalloc;
/// The guest-page allocator (shared with the PVHVM kernel).
pub use xen_front_platform::pagealloc;
pub mod platform;
pub mod pvdisk;
pub mod pvnet;
pub mod runtime;
pub mod testkit;
pub mod vbd;
pub mod xenstore;
pub mod xsdemo;

pub use error::PvGuestError;
