//! I/O engines: where the disk's bytes live.
//!
//! Only raw images for now ([`raw::RawImage`]); qcow2 and NBD come later.
//! [`pool::IoPool`] runs the transfers of a batch in parallel.

pub mod pool;
pub mod raw;

pub use pool::{IoPool, PoolError};
pub use raw::{IoVec, RawError, RawImage};
