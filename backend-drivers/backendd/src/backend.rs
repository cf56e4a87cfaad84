//! The interface between backendd and a device backend (blkback's `vbd` and
//! netback's `vif`, through the driver runner in `driver.rs`; consback serves
//! consoles on its own): advertise features, connect with the frontend's
//! published parameters, disconnect, report failure.

use std::collections::BTreeMap;

/// Errors a backend reports; the device goes to Closing with the message.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend's own configuration (backend directory nodes) is unusable.
    #[error("bad backend configuration: {0}")]
    Config(String),
    /// The frontend's parameters are missing or invalid.
    #[error("bad frontend parameters: {0}")]
    Frontend(String),
    /// Setting up the data path failed (grant map, event channel, I/O).
    #[error("cannot connect the backend: {0}")]
    Connect(String),
    /// The shim daemon went away during the set-up (a restart): worth
    /// trying again once it is back, not the frontend's fault.
    #[error("cannot connect the backend for now (the shim daemon is away): {0}")]
    ShimAway(String),
}

/// Identity and configuration of one device, read when it appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Backend type (`vbd`, `vif`, `console`...).
    pub device_type: String,
    /// The frontend's domain.
    pub frontend_domid: u16,
    /// Device id (`51712` for `xvda`).
    pub devid: u32,
    /// `/local/domain/<backend>/backend/<type>/<domid>/<devid>`.
    pub backend_path: String,
    /// The backend's `frontend` node.
    pub frontend_path: String,
    /// Every leaf node directly in the backend directory at creation
    /// (`params`, `mode`, `type`...), as text.
    pub nodes: BTreeMap<String, String>,
}

/// Reads a node of the frontend's directory by relative key
/// (`"ring-ref"`, `"queue-1/event-channel"`); `None` if absent.
pub type FrontendReader<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A device backend. Every call comes from the device's own thread; a
/// panic in one is caught and fails only that device.
pub trait Backend: Send {
    /// Feature nodes to write in the backend directory before switching to
    /// InitWait (`feature-flush-cache`, `max-ring-page-order`...).
    ///
    /// # Errors
    /// [`BackendError::Config`]: the device fails.
    fn advertise(&mut self) -> Result<Vec<(String, String)>, BackendError>;

    /// Connects to the frontend (maps its rings, binds its event
    /// channels); returns nodes to write before switching to Connected
    /// (`sectors`, `info`, `sector-size`...).
    ///
    /// # Errors
    /// [`BackendError::Frontend`] or [`BackendError::Connect`]: the device
    /// fails.
    fn connect(
        &mut self,
        frontend: FrontendReader<'_>,
    ) -> Result<Vec<(String, String)>, BackendError>;

    /// Tears the data path down (idempotent).
    fn disconnect(&mut self);

    /// A failure found while connected (corrupt ring, dead I/O), if any.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Has `f` called when a connection fails (what [`Backend::failure`]
    /// then reports), so that the device's thread sleeps until then
    /// rather than looking; a backend that cannot fail ignores it.
    fn set_failure_notifier(&mut self, f: xen_backend_common::FailureNotifier) {
        let _ = f;
    }

    /// The device's counters since it was probed (all its connections),
    /// published as `statistics/<name>` nodes of the backend directory
    /// (Xen's names where Xen has them: a vbd's `rd_req`, `rd_sect`...).
    fn statistics(&self) -> Statistics {
        Statistics::new()
    }
}

/// A device's counters by name ([`Backend::statistics`]).
pub type Statistics = Vec<(&'static str, u64)>;

/// Makes backends of one type.
pub trait BackendFactory: Send + Sync {
    /// The backend type served (`vbd`).
    fn device_type(&self) -> &str;

    /// A backend for a newly seen device.
    ///
    /// # Errors
    /// [`BackendError::Config`] when the backend directory is unusable.
    fn create(&self, info: &DeviceInfo) -> Result<Box<dyn Backend>, BackendError>;
}
