//! The `vbd` backend type: [`xen_blkback`] behind the [`Backend`] trait.
//!
//! The backend directory's `params` names the image, `mode` is `r` or `w`,
//! `discard-enable` (default 1) offers discard. The features, sizes and
//! limits are advertised before InitWait (Linux writes the sizes at connect
//! time; a frontend reads them only once the backend is Connected, so
//! either works); connect reads the frontend's rings as blkback's
//! `connect_ring` does and starts one worker per queue.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use xen_blkback::{BlkBackend, Device, DiskConfig, Dom0Handles, FrontendParams};
use xen_shim::dom0::Gntdev;

use crate::backend::{Backend, BackendError, BackendFactory, DeviceInfo, FrontendReader};

/// Makes a [`VbdBackend`] per `vbd` directory; the shim's grant device is
/// opened on first use (so the service may start before the shim).
#[derive(Debug)]
pub struct VbdFactory {
    socket: PathBuf,
    handles: OnceLock<Dom0Handles>,
}

impl VbdFactory {
    /// A factory using the shim at `socket`.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            handles: OnceLock::new(),
        }
    }

    fn handles(&self) -> Result<Dom0Handles, BackendError> {
        if let Some(h) = self.handles.get() {
            return Ok(h.clone());
        }
        let gntdev = Gntdev::open(&self.socket)
            .map_err(|e| BackendError::Config(format!("cannot open the shim's gntdev: {e}")))?;
        let h = Dom0Handles {
            gntdev: Arc::new(gntdev),
            socket: self.socket.clone(),
        };
        Ok(self.handles.get_or_init(|| h).clone())
    }
}

impl BackendFactory for VbdFactory {
    fn device_type(&self) -> &str {
        "vbd"
    }

    fn create(&self, info: &DeviceInfo) -> Result<Box<dyn Backend>, BackendError> {
        let path = info
            .nodes
            .get("params")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| BackendError::Config("no params node".into()))?;
        let readonly = match info.nodes.get("mode").map(String::as_str) {
            Some("w") => false,
            Some("r") | None => true,
            Some(m) => return Err(BackendError::Config(format!("mode {m:?} is not r or w"))),
        };
        let mut cfg = DiskConfig::raw(path, readonly);
        cfg.discard = info.nodes.get("discard-enable").map(String::as_str) != Some("0");
        let disk =
            BlkBackend::new(cfg).map_err(|e| BackendError::Config(format!("{}: {e}", path)))?;
        Ok(Box::new(VbdBackend {
            disk,
            handles: self.handles()?,
            domid: info.frontend_domid,
            device: None,
        }))
    }
}

/// One virtual block device.
#[derive(Debug)]
pub struct VbdBackend {
    disk: BlkBackend,
    handles: Dom0Handles,
    domid: u16,
    device: Option<Device>,
}

impl Backend for VbdBackend {
    fn advertise(&mut self) -> Result<Vec<(String, String)>, BackendError> {
        Ok(self
            .disk
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
        let c = self.disk.config();
        let params = FrontendParams::from_keys(frontend, c.max_ring_page_order, c.max_queues)
            .map_err(|e| BackendError::Frontend(e.to_string()))?;
        let dev = self
            .disk
            .connect(&self.handles, self.domid, &params)
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                BackendError::Connect(msg)
            })?;
        self.device = Some(dev);
        Ok(Vec::new())
    }

    fn disconnect(&mut self) {
        if let Some(d) = self.device.take() {
            let _ = d.disconnect();
        }
    }

    fn failure(&self) -> Option<String> {
        self.device
            .as_ref()
            .and_then(Device::failure)
            .map(|f| format!("queue {} failed: {:?}", f.queue, f.reason))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn info(nodes: &[(&str, &str)]) -> DeviceInfo {
        DeviceInfo {
            device_type: "vbd".into(),
            frontend_domid: 1,
            devid: 51712,
            backend_path: "/local/domain/0/backend/vbd/1/51712".into(),
            frontend_path: "/local/domain/1/device/vbd/51712".into(),
            nodes: nodes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn create_err(nodes: &[(&str, &str)]) -> String {
        let f = VbdFactory::new(PathBuf::from("/nonexistent/shim.sock"));
        match f.create(&info(nodes)) {
            Ok(_) => panic!("create must fail"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn test_vbd_factory_missing_params_fails() {
        assert!(create_err(&[("mode", "w")]).contains("no params node"));
        assert!(create_err(&[("params", ""), ("mode", "w")]).contains("no params node"));
    }

    #[test]
    fn test_vbd_factory_bad_mode_fails() {
        assert!(create_err(&[("params", "/x"), ("mode", "rw!")]).contains("mode"));
    }

    #[test]
    fn test_vbd_factory_missing_image_fails() {
        let e = create_err(&[("params", "/nonexistent/disk.img"), ("mode", "w")]);
        assert!(e.contains("/nonexistent/disk.img"), "{e}");
    }

    #[test]
    fn test_vbd_factory_without_shim_fails_cleanly() {
        let img = tempfile::NamedTempFile::new().expect("temp file");
        img.as_file().set_len(1 << 20).expect("size");
        let p = img.path().to_str().expect("utf-8").to_owned();
        let e = create_err(&[("params", &p), ("mode", "r")]);
        assert!(e.contains("gntdev"), "{e}");
    }
}
