//! The guest side of xenstore, `no_std` + `alloc`: the xenbus client that
//! frontends (through their platform) use to talk to xenstored over the
//! domain's `xenstore_domain_interface` page, and the xenbus state-machine
//! helpers.
//!
//! - [`XenbusClient`]: `xs_wire.h` requests over the guest end of the ring
//!   (`xen_ring::bytes::XsRing::guest`): request/reply matched by `req_id`,
//!   watch events queued, transactions, Xen's reconnection protocol
//!   (`connection`/`error`/`server_features` fields) honoured, a distrustful
//!   reading of the server's indices and replies. See [`client`].
//! - [`XenbusEvents`]: the store event channel and a clock as the client
//!   needs them (signal, wait, time), so the same client runs in the PV
//!   guest runtime, the PVHVM kernel and unit tests; [`FnEvents`] builds one
//!   from closures, [`PlatformEvents`] from a [`xen_front_platform::Platform`].
//! - [`state`]: `switch_state`, `read_state`, `read_otherend` over the
//!   platform trait, as Linux's `xenbus_client.c` has them, with the one
//!   rule for parsing a `state` value ([`state::parse_state`]) and bounded
//!   transactions ([`state::transaction`]).
//! - [`frontend`]: [`FrontendDevice`], the frontend half of the handshake
//!   every frontend (blkfront, netfront) uses: its backend, the backend's
//!   state, our state switched in a transaction, the transport nodes
//!   written in one transaction.
//!
//! ```no_run
//! # use xen_xenbus::{ClientConfig, FnEvents, XenbusClient};
//! # fn demo(store_page: xen_ring::SharedRing) -> Result<(), xen_xenbus::XenbusError> {
//! let events = FnEvents {
//!     notify: || Ok(()),                 // EVTCHNOP_send(store_evtchn)
//!     wait: |_timeout| true,             // SCHEDOP_poll + clear pending
//!     now_ns: || 0,                      // a monotonic clock
//! };
//! let mut xs = XenbusClient::new(store_page, events, ClientConfig::default())?;
//! xs.write(0, "data/hello", b"world")?;
//! let v = xs.read(0, "data/hello")?;
//! # let _ = v; Ok(()) }
//! ```
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod client;
mod error;
mod events;
pub mod frontend;
pub mod state;

pub use client::{ClientConfig, ClientStats, WatchEvent, XenbusClient};
pub use error::XenbusError;
pub use events::{FnEvents, PlatformEvents, XenbusEvents};
pub use frontend::{numbered_key, FrontendDevice, FrontendError, NodeWriter};
