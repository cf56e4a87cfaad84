//! The service: one xenstore watch on `/local/domain/<self>/backend`, a
//! device thread per backend directory of a type it has a factory for,
//! watch events routed to the device they concern.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xenstore_client::{Client, XsClientError, XsOps};

use xen_diag::warn_limited;

use crate::backend::BackendFactory;
use crate::device::{read_info, DeviceEvent, DeviceHandle};
use crate::GUEST_LOG;

/// Token of the service's backend-tree watch.
pub const BACKEND_TOKEN: &str = "backend";
/// Most entries read from one directory level of the backend tree.
pub const MAX_DIR_ENTRIES: usize = 4096;

/// Errors of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Connecting to xenstored, or watching the backend tree, failed.
    #[error("xenstore operation on {path} failed")]
    Xenstore {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: XsClientError,
    },
    /// xenstored closed the connection.
    #[error("xenstored closed the connection")]
    Disconnected,
}

/// Service settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This (backend) domain's id (0 for Dom0).
    pub domid: u16,
    /// How often a device re-checks its state without events.
    pub poll: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            domid: 0,
            poll: Duration::from_millis(500),
        }
    }
}

/// The backend service.
pub struct Service {
    xs: Arc<Client>,
    root: String,
    poll: Duration,
    factories: HashMap<String, Arc<dyn BackendFactory>>,
    devices: HashMap<String, DeviceHandle>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("root", &self.root)
            .field("types", &self.factories.keys().collect::<Vec<_>>())
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `xs` with the given backend factories.
    #[must_use]
    pub fn new(
        xs: Arc<Client>,
        cfg: &ServiceConfig,
        factories: Vec<Arc<dyn BackendFactory>>,
    ) -> Self {
        Self {
            xs,
            root: format!("/local/domain/{}/backend", cfg.domid),
            poll: cfg.poll,
            factories: factories
                .into_iter()
                .map(|f| (f.device_type().to_owned(), f))
                .collect(),
            devices: HashMap::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that stops [`Service::run`] within one poll interval.
    #[must_use]
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The backend paths of the live devices.
    #[must_use]
    pub fn device_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.devices.keys().cloned().collect();
        v.sort();
        v
    }

    /// Runs until the stop flag is set or xenstored goes away; devices are
    /// disconnected on the way out (their xenstore states are left as they
    /// are, for a restarted service to pick up).
    ///
    /// # Errors
    /// [`ServiceError::Xenstore`] if the watch cannot be set,
    /// [`ServiceError::Disconnected`] if xenstored goes away.
    pub fn run(&mut self) -> Result<(), ServiceError> {
        self.xs
            .watch(&self.root, BACKEND_TOKEN)
            .map_err(|source| ServiceError::Xenstore {
                path: self.root.clone(),
                source,
            })?;
        let r = self.event_loop();
        for (_, d) in self.devices.drain() {
            d.shutdown();
        }
        let _ = self.xs.unwatch(&self.root, BACKEND_TOKEN);
        r
    }

    fn event_loop(&mut self) -> Result<(), ServiceError> {
        self.rescan();
        while !self.stop.load(Ordering::Relaxed) {
            match self.xs.wait_watch_event(Some(self.poll)) {
                Ok(Some(ev)) => self.on_event(&ev.path, &ev.token),
                Ok(None) => {}
                Err(XsClientError::Disconnected) => return Err(ServiceError::Disconnected),
                Err(e) => {
                    return Err(ServiceError::Xenstore {
                        path: self.root.clone(),
                        source: e,
                    })
                }
            }
            self.devices.retain(|_, d| !d.is_finished());
        }
        Ok(())
    }

    fn on_event(&mut self, path: &str, token: &str) {
        if let Some(be) = token.strip_prefix("fe:") {
            if let Some(d) = self.devices.get(be) {
                d.notify(DeviceEvent::Changed);
            }
            return;
        }
        if token != BACKEND_TOKEN {
            return;
        }
        let Some(rest) = path.strip_prefix(&self.root) else {
            return;
        };
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match parts.as_slice() {
            // A device's own counters (its thread writes them): nothing
            // for it to look at.
            [_, _, _, "statistics", ..] => {}
            [ty, dom, dev, ..] => {
                let be = format!("{}/{ty}/{dom}/{dev}", self.root);
                match self.devices.get(&be) {
                    Some(d) => d.notify(DeviceEvent::Changed),
                    None => self.try_add(ty, dom, dev),
                }
            }
            // One frontend domain's directory of one type (made or removed
            // with a guest): only its devices. A whole rescan here read
            // every device's directory and woke every device thread for
            // each guest created, a cost growing with the guests.
            [ty, dom] => {
                let (ty, dom) = ((*ty).to_owned(), (*dom).to_owned());
                self.scan_domain(&ty, &dom);
            }
            _ => self.rescan(),
        }
    }

    /// Starts the devices of `ty/dom` not yet running and wakes the running
    /// ones (their directory may be gone).
    fn scan_domain(&mut self, ty: &str, dom: &str) {
        if !self.factories.contains_key(ty) {
            return;
        }
        let prefix = format!("{}/{ty}/{dom}/", self.root);
        for (be, d) in &self.devices {
            if be.starts_with(&prefix) {
                d.notify(DeviceEvent::Changed);
            }
        }
        for dev in self.list(&format!("{}/{ty}/{dom}", self.root)) {
            let be = format!("{prefix}{dev}");
            if !self.devices.contains_key(&be) {
                self.try_add(ty, dom, &dev);
            }
        }
    }

    fn list(&self, path: &str) -> Vec<String> {
        match self.xs.directory(path) {
            Ok(mut v) => {
                v.truncate(MAX_DIR_ENTRIES);
                v
            }
            Err(e) if e.is_enoent() => Vec::new(),
            Err(e) => {
                tracing::warn!(path, error = %e, "cannot list");
                Vec::new()
            }
        }
    }

    /// Looks at the whole backend tree for devices not yet running.
    fn rescan(&mut self) {
        let types: Vec<String> = self
            .list(&self.root)
            .into_iter()
            .filter(|t| self.factories.contains_key(t))
            .collect();
        for ty in types {
            for dom in self.list(&format!("{}/{ty}", self.root)) {
                for dev in self.list(&format!("{}/{ty}/{dom}", self.root)) {
                    let be = format!("{}/{ty}/{dom}/{dev}", self.root);
                    match self.devices.get(&be) {
                        Some(d) => d.notify(DeviceEvent::Changed),
                        None => self.try_add(&ty, &dom, &dev),
                    }
                }
            }
        }
    }

    fn try_add(&mut self, ty: &str, dom: &str, dev: &str) {
        let Some(factory) = self.factories.get(ty) else {
            return;
        };
        let (Ok(domid), Ok(devid)) = (dom.parse::<u16>(), dev.parse::<u32>()) else {
            return;
        };
        let be = format!("{}/{ty}/{dom}/{dev}", self.root);
        // A directory still being written (no frontend node yet) is picked
        // up by a later event.
        match self.xs.read_opt(&format!("{be}/frontend")) {
            Ok(Some(_)) => {}
            _ => return,
        }
        let info = match read_info(&self.xs, &be, ty, domid, devid) {
            Ok(i) => i,
            Err(e) => {
                warn_limited!(GUEST_LOG, path = %be, error = %e, "ignoring backend directory");
                return;
            }
        };
        match DeviceHandle::spawn(Arc::clone(&self.xs), info, Arc::clone(factory), self.poll) {
            Ok(h) => {
                tracing::info!(path = %be, "device added");
                self.devices.insert(be, h);
            }
            Err(e) => tracing::error!(path = %be, error = %e, "cannot start the device"),
        }
    }
}
