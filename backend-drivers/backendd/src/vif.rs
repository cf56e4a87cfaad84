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

use xen_backend_common::LazyDom0Handles;
use xen_diag::ErrorChain;
use xen_netback::{Device, Dom0Handles, FrontendParams, NetBackend, NetConfig, NetbackError};

use crate::backend::{
    Backend, BackendError, BackendFactory, DeviceInfo, FrontendReader, Statistics,
};
use crate::driver::{handles, Driver, DriverBackend};

/// Makes a [`VifBackend`] per `vif` directory.
#[derive(Debug)]
pub struct VifFactory {
    handles: LazyDom0Handles,
    rx_stall_timeout: Option<std::time::Duration>,
}

impl VifFactory {
    /// A factory using the shim at `socket`.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self {
            handles: LazyDom0Handles::new(socket),
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
        let handles = handles(&self.handles)?;
        let nic =
            NetBackend::new(cfg).map_err(|e| BackendError::Config(ErrorChain(&e).to_string()))?;
        tracing::info!(ifname = %nic.config().ifname, bridge = ?nic.config().bridge, "vif TAP up");
        Ok(Box::new(VifBackend::new(nic, handles, info.frontend_domid)))
    }
}

/// One virtual NIC.
pub type VifBackend = DriverBackend<NetBackend>;

impl Driver for NetBackend {
    type Device = Device;
    type Params = FrontendParams;
    type Error = NetbackError;

    fn features(&self) -> Vec<(&'static str, String)> {
        NetBackend::features(self)
    }

    fn params(&self, frontend: FrontendReader<'_>) -> Result<FrontendParams, NetbackError> {
        FrontendParams::from_keys(frontend, self.config().max_queues)
    }

    fn connect(
        &self,
        handles: &Dom0Handles,
        domid: u16,
        params: &FrontendParams,
    ) -> Result<Device, NetbackError> {
        NetBackend::connect(self, handles, domid, params)
    }

    fn disconnect(device: Device) {
        let _ = device.disconnect();
    }

    fn notify_failure(device: &Device, f: xen_backend_common::FailureNotifier) {
        device.set_failure_notifier(f);
    }

    fn failure(device: &Device) -> Option<String> {
        device.failure().map(|f| f.to_string())
    }

    /// The data path's counters (the TAP's own are in its sysfs
    /// `statistics/`): packets and bytes each way and the drops.
    fn statistics(device: &Device) -> Statistics {
        let m = device.metrics();
        vec![
            ("tx_packets", m.tx_packets),
            ("tx_bytes", m.tx_bytes),
            ("tx_dropped", m.tx_dropped),
            ("rx_packets", m.rx_packets),
            ("rx_bytes", m.rx_bytes),
            ("rx_dropped", m.rx_dropped),
        ]
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
