//! The `vif` backend type: [`xen_netback`] behind the [`Backend`] trait.
//!
//! The backend directory's `bridge` names the bridge (default `xenbr0`,
//! created when missing, as Xen's `vif-bridge` script does), `vifname`
//! the TAP (default `vif<domid>.<devid>`), `mtu` its MTU (default 1500).
//! The TAP exists from the device's probe until its directory goes away
//! (`xl destroy`, `xl network-detach`): dropping the backend closes it,
//! which removes the interface and its bridge port. A restarted backendd
//! makes it again (the old one went with the old process's files) or
//! attaches to it if it is still there. Its carrier is on only while the
//! frontend is connected and receiving (netback's rx stall detection,
//! `--vif-rx-stall-timeout-ms`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use xen_netback::{Dom0Handles, FrontendParams, NetBackend, NetConfig};
use xen_shim_dom0::Gntdev;

use crate::backend::{Backend, BackendError, BackendFactory, DeviceInfo, FrontendReader};

/// Makes a [`VifBackend`] per `vif` directory.
#[derive(Debug)]
pub struct VifFactory {
    socket: PathBuf,
    handles: OnceLock<Dom0Handles>,
    rx_stall_timeout: Option<std::time::Duration>,
}

impl VifFactory {
    /// A factory using the shim at `socket`.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            handles: OnceLock::new(),
            rx_stall_timeout: Some(xen_netback::DEFAULT_RX_STALL_TIMEOUT),
        }
    }

    /// Guest rx stall detection of the vifs (`None`: off; default 60 s,
    /// as Linux netback's `rx_stall_timeout_msecs`).
    #[must_use]
    pub fn with_rx_stall_timeout(mut self, t: Option<std::time::Duration>) -> Self {
        self.rx_stall_timeout = t;
        self
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

/// The TAP's settings from the backend directory's nodes.
///
/// # Errors
/// [`BackendError::Config`] for a bad `mtu`, `vifname` or `bridge`.
pub fn net_config(info: &DeviceInfo) -> Result<NetConfig, BackendError> {
    let mut c = NetConfig::new(info.frontend_domid, info.devid);
    let node = |k: &str| {
        info.nodes
            .get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(n) = node("vifname") {
        c.ifname = n;
    }
    if let Some(b) = node("bridge") {
        c.bridge = Some(b);
    }
    if let Some(m) = node("mtu") {
        c.mtu = m
            .parse()
            .ok()
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| BackendError::Config(format!("mtu {m:?} is not 68..=65535")))?;
    }
    for n in std::iter::once(&c.ifname).chain(c.bridge.as_ref()) {
        xen_netback::tap::check_name(n).map_err(|e| BackendError::Config(e.to_string()))?;
    }
    Ok(c)
}

impl BackendFactory for VifFactory {
    fn device_type(&self) -> &str {
        "vif"
    }

    fn create(&self, info: &DeviceInfo) -> Result<Box<dyn Backend>, BackendError> {
        let mut cfg = net_config(info)?;
        cfg.rx_stall_timeout = self.rx_stall_timeout;
        let handles = self.handles()?;
        let nic = NetBackend::new(cfg).map_err(|e| BackendError::Config(chain(&e)))?;
        tracing::info!(ifname = %nic.config().ifname, bridge = ?nic.config().bridge, "vif TAP up");
        Ok(Box::new(VifBackend {
            nic,
            handles,
            domid: info.frontend_domid,
            device: None,
        }))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// One virtual NIC.
#[derive(Debug)]
pub struct VifBackend {
    nic: NetBackend,
    handles: Dom0Handles,
    domid: u16,
    device: Option<xen_netback::Device>,
}

impl Backend for VifBackend {
    fn advertise(&mut self) -> Result<Vec<(String, String)>, BackendError> {
        Ok(self
            .nic
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
        let params = FrontendParams::from_keys(frontend, self.nic.config().max_queues)
            .map_err(|e| BackendError::Frontend(e.to_string()))?;
        let dev = self
            .nic
            .connect(&self.handles, self.domid, &params)
            .map_err(|e| BackendError::Connect(chain(&e)))?;
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
            .and_then(xen_netback::Device::failure)
            .map(|f| f.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn info(nodes: &[(&str, &str)]) -> DeviceInfo {
        DeviceInfo {
            device_type: "vif".into(),
            frontend_domid: 3,
            devid: 1,
            backend_path: "/local/domain/0/backend/vif/3/1".into(),
            frontend_path: "/local/domain/3/device/vif/1".into(),
            nodes: nodes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn test_net_config_defaults_are_xens() {
        let c = net_config(&info(&[])).expect("defaults");
        assert_eq!(c.ifname, "vif3.1");
        assert_eq!(c.bridge.as_deref(), Some("xenbr0"));
        assert_eq!(c.mtu, 1500);
    }

    #[test]
    fn test_net_config_reads_nodes_and_refuses_bad_ones() {
        let c = net_config(&info(&[
            ("bridge", "br-t1"),
            ("vifname", "tapx"),
            ("mtu", "9000"),
        ]))
        .expect("valid");
        assert_eq!(
            (c.ifname.as_str(), c.bridge.as_deref(), c.mtu),
            ("tapx", Some("br-t1"), 9000)
        );
        assert!(net_config(&info(&[("mtu", "12")])).is_err());
        assert!(net_config(&info(&[("bridge", "a/b")])).is_err());
        assert!(net_config(&info(&[("vifname", "0123456789abcdefg")])).is_err());
    }
}
