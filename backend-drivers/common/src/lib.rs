//! xen-backend-common: the scaffolding every Dom0 PV backend (blkback,
//! netback) shares, so each backend crate holds only its protocol.
//!
//! - [`Dom0Handles`], [`LazyDom0Handles`]: the grant mapper and the shim's
//!   socket a device connects with.
//! - [`keys`]: reading the frontend's directory ([`FrontendKeys`]):
//!   numbers, flags, and the multi-queue layout (`multi-queue-num-queues`,
//!   rings under `queue-N/` above one queue) both backends read as Linux's
//!   `xenbus` backends do.
//! - [`MappedBackRing`]: a frontend's ring mapped from its grants, the
//!   mapping kept alive as long as the ring.
//! - [`DeviceError`]: what can go wrong setting a device's queues up.
//! - [`FailOnce`], [`DeviceFailure`]: the first failure of a device (which
//!   queue, why), waited for by its owner.
//! - [`QueueThread`]: a queue worker thread with its stop kick.

pub mod keys;
mod queue;

pub use keys::{check_queue_count, parse_num, FrontendKeys, KeyError};
pub use queue::{
    stop_queues, DeviceError, DeviceFailure, FailOnce, FailureNotifier, MappedBackRing, QueueThread,
};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use xen_shim_dom0::Gntdev;

/// Dom0 handles a device needs: a grant mapper and the shim's socket (each
/// queue opens its own event-channel handle).
#[derive(Debug, Clone)]
pub struct Dom0Handles {
    /// Grant mapper (shared by all queues and devices).
    pub gntdev: Arc<Gntdev>,
    /// The shim daemon's socket.
    pub socket: PathBuf,
}

impl Dom0Handles {
    /// Opens a grant mapper on the shim at `socket`.
    ///
    /// # Errors
    /// The shim refused or is not there.
    pub fn open(socket: &Path) -> Result<Self, xen_shim_proto::ShimError> {
        Ok(Self {
            gntdev: Arc::new(Gntdev::open(socket)?),
            socket: socket.to_path_buf(),
        })
    }
}

/// [`Dom0Handles`] opened on first use and shared by every device after
/// (a service's factory of devices: the shim may start after it).
#[derive(Debug)]
pub struct LazyDom0Handles {
    socket: PathBuf,
    cell: OnceLock<Dom0Handles>,
}

impl LazyDom0Handles {
    /// Handles on the shim at `socket`, not opened yet.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            cell: OnceLock::new(),
        }
    }

    /// The handles, opened now if not yet.
    ///
    /// # Errors
    /// The shim refused or is not there (tried again next call).
    pub fn get(&self) -> Result<Dom0Handles, xen_shim_proto::ShimError> {
        if let Some(h) = self.cell.get() {
            return Ok(h.clone());
        }
        let h = Dom0Handles::open(&self.socket)?;
        Ok(self.cell.get_or_init(|| h).clone())
    }
}
