//! xen-diag: diagnostics every std process of the stack shares (the Dom0
//! services, the shim, the PV guest runtime, the VMM, `xl`).
//!
//! - [`ErrorChain`]: an error and its `source()` chain on one line,
//!   `error: cause: cause`, for logs and exit messages.
//! - [`LogLimiter`] and [`warn_limited!`]: rate-limited logging for paths
//!   a guest or another peer can drive (firecracker's
//!   `src/vmm/src/logger/mod.rs`), so a hostile peer cannot flood the log.
//!
//! The crate holds no Dom0 power: it depends on `tracing` only.

mod chain;
mod ratelimit;

pub use chain::ErrorChain;
pub use ratelimit::LogLimiter;

/// The `tracing` crate, for [`warn_limited!`]'s expansion.
#[doc(hidden)]
pub use tracing as __tracing;
