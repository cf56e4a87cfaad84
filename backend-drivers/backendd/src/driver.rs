//! The [`Backend`] scaffolding of the device types served by a driver
//! crate (`vbd`/`qdisk` by [`xen_blkback`], `vif` by [`xen_netback`]), once:
//! the shim's handles opened on first use, advertise the driver's features,
//! connect (dropping a previous connection first), disconnect, report the
//! connected device's failure. Each type says only what is its own
//! ([`Driver`]).

use xen_backend_common::{Dom0Handles, LazyDom0Handles};
use xen_diag::ErrorChain;

use crate::backend::{Backend, BackendError, FrontendReader};

/// What a driver crate's backend of one device does for backendd.
pub trait Driver: Send + std::fmt::Debug {
    /// A connected device (its queue workers running).
    type Device: Send + std::fmt::Debug;
    /// The frontend's parameters, read at connect time.
    type Params;
    /// The driver's errors.
    type Error: std::error::Error;

    /// The keys to write in the backend directory before InitWait.
    fn features(&self) -> Vec<(&'static str, String)>;

    /// Reads the frontend's parameters (an error is the frontend's fault).
    ///
    /// # Errors
    /// The parameters are missing or unusable.
    fn params(&self, frontend: FrontendReader<'_>) -> Result<Self::Params, Self::Error>;

    /// Connects to frontend `domid`.
    ///
    /// # Errors
    /// Setting up the data path failed.
    fn connect(
        &self,
        handles: &Dom0Handles,
        domid: u16,
        params: &Self::Params,
    ) -> Result<Self::Device, Self::Error>;

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
        let params = self
            .driver
            .params(frontend)
            .map_err(|e| BackendError::Frontend(e.to_string()))?;
        let dev = self
            .driver
            .connect(&self.handles, self.domid, &params)
            .map_err(|e| BackendError::Connect(ErrorChain(&e).to_string()))?;
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
