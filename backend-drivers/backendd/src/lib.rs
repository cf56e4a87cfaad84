//! `backendd`: the Dom0 service that watches
//! `/local/domain/0/backend/<type>/<domid>/<devid>` and runs one backend per
//! device through the `io/xenbus.h` handshake.
//!
//! ```text
//!   xenstored ── watch /local/domain/0/backend ──► Service (one thread)
//!        │                                            │ per backend dir
//!        │ watch <frontend>/state ◄── DeviceHandle ───┘ (a thread each)
//!        │                               │ Backend trait (blkback...)
//!        └── state, features, error ◄────┘
//! ```
//!
//! - [`state`]: the backend side of the handshake as a pure function
//!   (Linux `xen-blkback` `frontend_changed`), skipped states tolerated;
//! - [`backend`]: the [`backend::Backend`] trait a device type implements
//!   (advertise, connect with the frontend's parameters, disconnect,
//!   failure) and its factory;
//! - [`driver`]: the [`backend::Backend`] scaffolding of the types a driver
//!   crate serves (`vbd`, `qdisk`, `vif`), once;
//! - [`device`]: the per-device thread (failure isolation: a failing or
//!   panicking backend, or a frontend writing garbage, closes that device
//!   only, logged once and rate-limited);
//! - [`service`]: the watch loop; [`vbd`]: the block backend
//!   (`xen-blkback`) as the `vbd` and `qdisk` types; [`vif`]: the network
//!   backend (`xen-netback`) as the `vif` type;
//! - [`console`]: consback, every guest's primary console (the xenconsoled
//!   role: `@introduceDomain`/`@releaseDomain`, the console ring to a pty
//!   and `guest-<name>.log`); [`cli`]: the binary.

pub mod backend;
pub mod cli;
pub mod console;
pub mod device;
pub mod driver;
pub mod service;
pub mod state;
pub mod vbd;
pub mod vif;

pub use backend::{Backend, BackendError, BackendFactory, DeviceInfo};
pub use service::{Service, ServiceConfig, ServiceError};

/// The limiter of guest-triggerable device messages (10 per second), for
/// [`xen_diag::warn_limited!`].
pub static GUEST_LOG: xen_diag::LogLimiter =
    xen_diag::LogLimiter::new(10, std::time::Duration::from_secs(1));
