//! The [`Backend`] scaffolding of the device types served by a driver
//! crate (`vbd`/`qdisk` by [`xen_blkback`], `vif` by [`xen_netback`]), once:
//! the shim's handles opened on first use, advertise the driver's features,
//! connect (dropping a previous connection first), disconnect, report the
//! connected device's failure. Each type says only what is its own
//! ([`Driver`]).

use xen_backend_common::{Dom0Handles, FailureNotifier, LazyDom0Handles};
use xen_diag::ErrorChain;

use crate::backend::{Backend, BackendError, FrontendReader, Statistics};

/// What a driver crate's backend of one device does for backendd.
pub trait Driver: Send + std::fmt::Debug {
    /// A connected device (its queue workers running).
    type Device: Send + std::fmt::Debug;
    /// The frontend's parameters, read at connect time.
    type Params;
    /// The driver's errors.
    type Error: std::error::Error + 'static;

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

    /// Has `f` called at the connected device's first failure.
    fn notify_failure(device: &Self::Device, f: FailureNotifier);

    /// The connected device's counters (of this connection).
    fn statistics(_device: &Self::Device) -> Statistics {
        Statistics::new()
    }
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
pub struct DriverBackend<D: Driver> {
    driver: D,
    handles: Dom0Handles,
    domid: u16,
    device: Option<D::Device>,
    /// The counters of the earlier connections.
    past: Statistics,
    /// Connections made.
    connects: u64,
    /// Told of each connection's first failure.
    notifier: Option<FailureNotifier>,
}

impl<D: Driver> std::fmt::Debug for DriverBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverBackend")
            .field("driver", &self.driver)
            .field("domid", &self.domid)
            .field("device", &self.device)
            .field("connects", &self.connects)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> DriverBackend<D> {
    /// Device `driver` of frontend `domid`, not connected yet.
    pub(crate) fn new(driver: D, handles: Dom0Handles, domid: u16) -> Self {
        Self {
            driver,
            handles,
            domid,
            device: None,
            past: Statistics::new(),
            connects: 0,
            notifier: None,
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
            .map_err(|e| {
                if shim_away(&e) {
                    BackendError::ShimAway(ErrorChain(&e).to_string())
                } else {
                    BackendError::Connect(ErrorChain(&e).to_string())
                }
            })?;
        if let Some(n) = &self.notifier {
            D::notify_failure(&dev, std::sync::Arc::clone(n));
        }
        self.device = Some(dev);
        self.connects = self.connects.saturating_add(1);
        Ok(Vec::new())
    }

    fn disconnect(&mut self) {
        if let Some(d) = self.device.take() {
            self.past = add_statistics(&self.past, &D::statistics(&d));
            D::disconnect(d);
        }
    }

    fn failure(&self) -> Option<String> {
        self.device.as_ref().and_then(D::failure)
    }

    fn set_failure_notifier(&mut self, f: FailureNotifier) {
        if let Some(d) = &self.device {
            D::notify_failure(d, std::sync::Arc::clone(&f));
        }
        self.notifier = Some(f);
    }

    fn statistics(&self) -> Statistics {
        let now = self.device.as_ref().map(D::statistics).unwrap_or_default();
        let mut s = add_statistics(&self.past, &now);
        s.push(("connects", self.connects));
        s
    }
}

impl<D: Driver> Drop for DriverBackend<D> {
    /// The device is gone (its frontend's domain destroyed or the device
    /// detached): its connection first, then the domain's entry in the
    /// shared gntdev's cache, which would otherwise keep the domain's
    /// memory, active-grant and dirty-log files and its grant ledger mapped
    /// and open for the life of backendd (found by `tests/soak`). Another
    /// device of the same live domain keeps its own mappings and maps the
    /// domain again on its next use.
    fn drop(&mut self) {
        self.disconnect();
        self.handles.gntdev.release_domain(self.domid);
    }
}

/// Whether `e` comes from the shim daemon's control connection breaking
/// or being refused (the daemon restarting), by its source chain.
fn shim_away(e: &(dyn std::error::Error + 'static)) -> bool {
    use xen_shim_proto::protocol::ControlError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ControlError>() {
            if matches!(
                c,
                ControlError::Io(_) | ControlError::Disconnected | ControlError::Connect { .. }
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// `a + b` by name (names of either, in `a`'s order then `b`'s new ones).
fn add_statistics(a: &Statistics, b: &Statistics) -> Statistics {
    let mut sum = a.clone();
    for (k, v) in b {
        match sum.iter_mut().find(|(n, _)| n == k) {
            Some((_, s)) => *s = s.saturating_add(*v),
            None => sum.push((k, *v)),
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver error wrapping another, as blkback's and netback's do.
    #[derive(Debug, thiserror::Error)]
    #[error("event channel set-up failed")]
    struct Wrapped(#[source] xen_shim_proto::protocol::ControlError);

    #[test]
    fn test_shim_away_is_a_broken_or_refused_control_connection_anywhere_in_the_chain() {
        use xen_shim_proto::protocol::ControlError;
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(shim_away(&Wrapped(ControlError::Io(reset))));
        assert!(shim_away(&Wrapped(ControlError::Disconnected)));
        assert!(shim_away(&ControlError::Disconnected));
        // The daemon answering with a refusal is not its absence.
        assert!(!shim_away(&Wrapped(ControlError::Unexpected("x".into()))));
        assert!(!shim_away(&std::io::Error::other("not the shim")));
    }

    #[test]
    fn test_add_statistics_sums_by_name_and_keeps_new_names() {
        let a = vec![("rd_req", 2), ("wr_req", 1)];
        let b = vec![("wr_req", 5), ("oo_req", 1)];
        assert_eq!(
            add_statistics(&a, &b),
            vec![("rd_req", 2), ("wr_req", 6), ("oo_req", 1)]
        );
        assert_eq!(add_statistics(&Vec::new(), &a), a);
    }
}
