//! Xenstore client library, for Dom0 daemons and tools (the `xenstore`
//! command is the `xenstore-cli` crate, the benchmark `tests/xsbench`).
//!
//! - [`Client`]: a blocking connection usable from many threads, with watch
//!   events demultiplexed from replies ([`Client::watch_events`]),
//!   transactions ([`Client::transaction`] retries on `EAGAIN`) and
//!   `DIRECTORY_PART` for large directories ([`XsOps::directory`]).
//! - [`NbConnection`]: a non-blocking connection for event loops (`epoll` on
//!   its fd, parsed messages out).
//! - [`discovery::socket_path`]: finds the socket as Xen's clients do
//!   (`XENSTORED_PATH`, `XENSTORED_RUNDIR/socket`, `/var/run/xenstored/socket`).
//!
//! ```no_run
//! use xenstore_client::{Client, XsOps};
//! let xs = Client::connect()?;
//! xs.write("/local/domain/0/name", "Domain-0")?;
//! let n = xs.transaction(|tx| {
//!     let v: u32 = tx.read_string("/counter").unwrap_or_default().parse().unwrap_or(0);
//!     tx.write("/counter", (v + 1).to_string())?;
//!     Ok(v + 1)
//! })?;
//! xs.watch("/local/domain/0/backend", "be")?;
//! for ev in xs.watch_events().take(1) {
//!     println!("{} fired ({n})", ev?.path);
//! }
//! # Ok::<(), xenstore_client::XsClientError>(())
//! ```

pub mod client;
pub mod discovery;
pub mod error;
pub mod msg;
pub mod nonblocking;
pub mod ops;
pub mod request;
pub mod watch;

pub use client::{Client, Transaction, WatchEvents, XBT_NULL};
pub use error::{Result, XsClientError};
pub use nonblocking::{Incoming, NbConnection};
pub use ops::XsOps;
pub use request::Request;
pub use watch::WatchEvent;
pub use xenstore_wire::{
    DomId, Perm, PermList, XsError, PERM_BOTH, PERM_NONE, PERM_READ, PERM_WRITE,
};
