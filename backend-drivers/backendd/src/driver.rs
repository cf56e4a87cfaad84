//! The [`Backend`] scaffolding of the device types served by a driver
//! crate (`vbd`/`qdisk` by [`xen_blkback`], `vif` by [`xen_netback`]), once:
//! the shim's handles opened on first use, advertise the driver's features,
//! connect (dropping a previous connection first), disconnect, report the
//! connected device's failure. Each type says only what is its own
//! ([`Driver`]).

use xen_backend_common::{Dom0Handles, LazyDom0Handles};

use crate::backend::{Backend, BackendError, FrontendReader};

/// What a driver crate's backend of one device does for backendd.
pub trait Driver: Send + std::fmt::Debug {
    /// A connected device (its queue workers running).
    type Device: Send + std::fmt::Debug;

    /// The keys to write in the backend directory before InitWait.
    fn features(&self) -> Vec<(&'static str, String)>;

    /// Reads the frontend's parameters and connects to frontend `domid`.
    ///
    /// # Errors
    /// [`BackendError::Frontend`] for unusable parameters,
    /// [`BackendError::Connect`] when setting up the data path failed.
    fn connect(
        &self,
        handles: &Dom0Handles,
        domid: u16,
        frontend: FrontendReader<'_>,
    ) -> Result<Self::Device, BackendError>;

    /// Stops a connected device.
    fn disconnect(device: Self::Device);

    /// The connected device's failure, as a message.
    fn failure(device: &Self::Device) -> Option<String>;
}

/// The shim's handles of a factory, opened on first use (so the service
/// may start before the shim).
///
/// # Errors
/// [`BackendError::Config`]: the shim's gntdev cannot be opened.
pub(crate) fn handles(lazy: &LazyDom0Handles) -> Result<Dom0Handles, BackendError> {
    lazy.get()
        .map_err(|e| BackendError::Config(format!("cannot open the shim's gntdev: {e}")))
}

/// One device served by driver `D`.
#[derive(Debug)]
pub struct DriverBackend<D: Driver> {
    driver: D,
    handles: Dom0Handles,
    domid: u16,
    device: Option<D::Device>,
}

impl<D: Driver> DriverBackend<D> {
    /// Device `driver` of frontend `domid`, not connected yet.
    pub(crate) fn new(driver: D, handles: Dom0Handles, domid: u16) -> Self {
        Self {
            driver,
            handles,
            domid,
            device: None,
        }
    }
}

impl<D: Driver> Backend for DriverBackend<D> {
    fn advertise(&mut self) -> Result<Vec<(String, String)>, BackendError> {
        Ok(self
            .driver
            .features()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect())
    }

    fn connect(
        &mut self,
        frontend: FrontendReader<'_>,
    ) -> Result<Vec<(String, String)>, BackendError> {
        self.disconnect();
        let dev = self.driver.connect(&self.handles, self.domid, frontend)?;
        self.device = Some(dev);
        Ok(Vec::new())
    }

    fn disconnect(&mut self) {
        if let Some(d) = self.device.take() {
            D::disconnect(d);
        }
    }

    fn failure(&self) -> Option<String> {
        self.device.as_ref().and_then(D::failure)
    }
}
