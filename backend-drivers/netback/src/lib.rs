//! netback: the PV network backend, as a library for `backendd`.
//!
//! ```text
//!   NetBackend::new(NetConfig)       the TAP vif<domid>.<devid> (virtio-net
//!                                    header, multi-queue) on its bridge
//!     .features()                    xenstore keys for the backend dir
//!   FrontendParams::from_keys(..)    tx-ring-ref, rx-ring-ref, event
//!                                    channel(s), offloads, queues
//!     .connect(handles, domid, &p)   map rings, bind ports, one worker per
//!                                    queue, each on its own TAP queue
//!   Device::{failure, metrics, disconnect}
//! ```
//!
//! Modules: [`request`] (pure parsing of the tx ring), [`offload`]
//! (virtio-net header and checksum positions), [`tap`] (TAP and bridge
//! ioctls), [`device`] (the connected vif and its queue workers).
//!
//! What the backend offers: scatter-gather (`feature-sg`), IPv4 and IPv6
//! checksum offload, TCPv4/v6 segmentation offload (`feature-gso-tcpv4`,
//! `-tcpv6`) carried through the TAP's virtio-net header both ways,
//! split event channels, multi-queue (one TAP queue per ring pair), copy
//! receive (`feature-rx-copy`; the frontend must ask for it and must
//! offer `feature-rx-notify`, as with Linux netback).

pub mod device;
/// The TAP offloads, shared with the guest side (`xen-netif-offload`).
pub use xen_netif_offload as offload;
pub mod request;
pub mod tap;

use std::sync::Arc;
use std::time::Duration;

use xen_abi::io::netif::keys;
use xen_abi::xen::domid_t;
use xen_backend_common::{check_queue_count, FrontendKeys, KeyError};

pub use xen_backend_common::Dom0Handles;

pub use device::{Device, DeviceError, DeviceFailure, FailureReason, MetricsSnapshot, QueueParams};
pub use tap::{TapError, TapQueue};

/// Largest number of queues offered.
pub const MAX_QUEUES: u32 = 8;
/// The MAC Xen gives the Dom0 end of every vif (`fe:ff:ff:ff:ff:ff`): it
/// never wins the bridge's address election.
pub const BACKEND_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];
/// The default bridge (Xen's).
pub const DEFAULT_BRIDGE: &str = "xenbr0";
/// How long a queue may go without being able to deliver a waiting packet
/// before the vif's carrier goes off (Linux netback's
/// `rx_stall_timeout_msecs`, 60 s).
pub const DEFAULT_RX_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the network backend's API.
#[derive(Debug, thiserror::Error)]
pub enum NetbackError {
    /// The TAP or bridge could not be set up.
    #[error("cannot set up the vif's TAP device")]
    Tap(#[from] TapError),
    /// A frontend key is missing.
    #[error("frontend key {0} is missing")]
    MissingKey(String),
    /// A frontend key has a value this backend refuses.
    #[error("frontend key {key} has an invalid value {value:?}")]
    BadKey {
        /// Key.
        key: String,
        /// Value read.
        value: String,
    },
    /// The frontend lacks a feature this backend requires.
    #[error("the frontend does not offer {0}")]
    Required(&'static str),
    /// Connecting failed.
    #[error("cannot connect the vif")]
    Device(#[from] DeviceError),
}

/// How to serve one vif.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP's name (`vif<domid>.<devid>` by default).
    pub ifname: String,
    /// The bridge to attach to (`None`: no bridge).
    pub bridge: Option<String>,
    /// MTU of the TAP (and advertised as `mtu`).
    pub mtu: u32,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// Guest rx stall detection (`None`: off): a queue that has had a
    /// packet waiting for this long without the frontend posting enough rx
    /// requests for it, and delivered nothing meanwhile, is stalled; while
    /// a queue is stalled the TAP's carrier is off, so the bridge stops
    /// forwarding to a guest that does not receive (Linux netback's
    /// `xenvif_rx_queue_stalled`/`_ready`).
    pub rx_stall_timeout: Option<Duration>,
}

impl NetConfig {
    /// The Xen defaults for vif `devid` of `domid`: `vif<domid>.<devid>`
    /// on `xenbr0`, MTU 1500.
    #[must_use]
    pub fn new(domid: domid_t, devid: u32) -> Self {
        Self {
            ifname: format!("vif{domid}.{devid}"),
            bridge: Some(DEFAULT_BRIDGE.to_owned()),
            mtu: 1500,
            max_queues: 2,
            rx_stall_timeout: Some(DEFAULT_RX_STALL_TIMEOUT),
        }
    }
}

/// The frontend's transport parameters and features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendParams {
    /// One entry per queue.
    pub queues: Vec<QueueParams>,
    /// `feature-sg`.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_tcpv6: bool,
    /// Partial IPv4 checksums may be sent to the frontend (not
    /// `feature-no-csum-offload`).
    pub csum_ipv4: bool,
    /// `feature-ipv6-csum-offload`.
    pub csum_ipv6: bool,
}

impl From<KeyError> for NetbackError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Missing(key) => NetbackError::MissingKey(key),
            KeyError::Bad { key, value } => NetbackError::BadKey { key, value },
        }
    }
}

impl FrontendParams {
    /// Reads the parameters through `read` (a key relative to the
    /// frontend's directory), as Linux netback's `connect`/`connect_data_rings`:
    /// `multi-queue-num-queues` (default 1; above 1 the rings are under
    /// `queue-N/`), per queue `tx-ring-ref`, `rx-ring-ref` and
    /// `event-channel` or `event-channel-tx` + `event-channel-rx`;
    /// `request-rx-copy` and `feature-rx-notify` are required.
    pub fn from_keys(
        read: impl Fn(&str) -> Option<String>,
        max_queues: u32,
    ) -> Result<Self, NetbackError> {
        let fe = FrontendKeys::new(read);
        if !fe.flag(keys::REQUEST_RX_COPY, false)? {
            return Err(NetbackError::Required(keys::REQUEST_RX_COPY));
        }
        if !fe.flag(keys::FEATURE_RX_NOTIFY, false)? {
            return Err(NetbackError::Required(keys::FEATURE_RX_NOTIFY));
        }
        let dirs = fe.queue_dirs(max_queues.clamp(1, MAX_QUEUES))?;
        let mut queues = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let num = |k: &str| fe.num::<u32>(&format!("{dir}{k}"));
            let tx_ring_ref = num(keys::TX_RING_REF)?;
            let rx_ring_ref = num(keys::RX_RING_REF)?;
            let (evtchn_tx, evtchn_rx) = match fe.get(&format!("{dir}{}", keys::EVENT_CHANNEL_TX)) {
                Some(_) => (num(keys::EVENT_CHANNEL_TX)?, num(keys::EVENT_CHANNEL_RX)?),
                None => {
                    let p = num(keys::EVENT_CHANNEL)?;
                    (p, p)
                }
            };
            queues.push(QueueParams {
                tx_ring_ref,
                rx_ring_ref,
                evtchn_tx,
                evtchn_rx,
            });
        }
        let sg = fe.flag(keys::FEATURE_SG, false)?;
        Ok(Self {
            queues,
            sg,
            // GSO needs scatter-gather (a segment train spans pages).
            gso_tcpv4: sg && fe.flag(keys::FEATURE_GSO_TCPV4, false)?,
            gso_tcpv6: sg && fe.flag(keys::FEATURE_GSO_TCPV6, false)?,
            csum_ipv4: !fe.flag(keys::FEATURE_NO_CSUM_OFFLOAD, false)?,
            csum_ipv6: fe.flag(keys::FEATURE_IPV6_CSUM_OFFLOAD, false)?,
        })
    }
}

/// One vif's Dom0 end: the TAP exists (and is a bridge port) from
/// [`NetBackend::new`] until the value is dropped. Its carrier is on only
/// while a frontend is connected ([`NetBackend::connect`] until the
/// [`Device`] is disconnected or dropped) and its rx queues are not
/// stalled, as Linux netback's `netif_carrier_on`/`_off`.
#[derive(Debug)]
pub struct NetBackend {
    config: NetConfig,
    /// Queue 0's file: keeps the device alive between connections.
    queue0: Arc<TapQueue>,
}

impl NetBackend {
    /// Creates the TAP (or attaches to it when it exists: a restarted
    /// service finds a vif whose TAP another process still holds), turns
    /// its carrier off (no frontend yet), sets its MAC
    /// (`fe:ff:ff:ff:ff:ff`) and MTU, makes it a port of the bridge
    /// (created if missing; kept when it already is one) and sets it up.
    pub fn new(config: NetConfig) -> Result<Self, NetbackError> {
        let mut config = config;
        config.max_queues = config.max_queues.clamp(1, MAX_QUEUES);
        let q = TapQueue::open(&config.ifname)?;
        q.set_carrier(false).map_err(|source| TapError::Io {
            what: "TUNSETCARRIER",
            name: config.ifname.clone(),
            source,
        })?;
        tap::set_mac(&config.ifname, BACKEND_MAC)?;
        tap::set_mtu(&config.ifname, config.mtu)?;
        if let Some(br) = &config.bridge {
            tap::ensure_bridge(br)?;
            tap::ensure_port(br, &config.ifname)?;
        }
        tap::set_up(&config.ifname)?;
        Ok(Self {
            config,
            queue0: Arc::new(q),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The keys to write in the backend's directory before InitWait.
    #[must_use]
    pub fn features(&self) -> Vec<(&'static str, String)> {
        vec![
            (keys::FEATURE_SG, "1".into()),
            (keys::FEATURE_GSO_TCPV4, "1".into()),
            (keys::FEATURE_GSO_TCPV6, "1".into()),
            (keys::FEATURE_IPV6_CSUM_OFFLOAD, "1".into()),
            (keys::FEATURE_RX_COPY, "1".into()),
            (keys::FEATURE_RX_FLIP, "0".into()),
            (keys::FEATURE_SPLIT_EVENT_CHANNELS, "1".into()),
            (keys::FEATURE_MULTICAST_CONTROL, "0".into()),
            (
                keys::MULTI_QUEUE_MAX_QUEUES,
                self.config.max_queues.to_string(),
            ),
            (keys::MTU, self.config.mtu.to_string()),
        ]
    }

    /// Connects to frontend `domid`: maps each queue's rings, binds its
    /// event channel(s), sets the TAP's offloads to what the frontend takes,
    /// starts one worker per queue and turns the carrier on.
    pub fn connect(
        &self,
        handles: &Dom0Handles,
        domid: domid_t,
        params: &FrontendParams,
    ) -> Result<Device, NetbackError> {
        check_queue_count(params.queues.len(), self.config.max_queues)?;
        let mut offload = 0;
        if params.csum_ipv4 || params.csum_ipv6 {
            offload |= tap::TUN_F_CSUM;
            if params.gso_tcpv4 {
                offload |= tap::TUN_F_TSO4;
            }
            if params.gso_tcpv6 {
                offload |= tap::TUN_F_TSO6;
            }
        }
        self.queue0
            .set_offload(offload)
            .map_err(|source| TapError::Io {
                what: "TUNSETOFFLOAD",
                name: self.config.ifname.clone(),
                source,
            })?;
        let started = (|| {
            let mut taps = vec![Arc::clone(&self.queue0)];
            for _ in 1..params.queues.len() {
                // (Attaching a queue file turns the carrier on.)
                taps.push(Arc::new(TapQueue::open(&self.config.ifname)?));
            }
            Ok(Device::start(
                handles,
                domid,
                params,
                taps,
                self.config.mtu,
                self.config.rx_stall_timeout,
            )?)
        })();
        if started.is_err() {
            let _ = self.queue0.set_carrier(false);
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn reader(kv: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const BASE: [(&str, &str); 5] = [
        ("tx-ring-ref", "8"),
        ("rx-ring-ref", "9"),
        ("event-channel", "5"),
        ("request-rx-copy", "1"),
        ("feature-rx-notify", "1"),
    ];

    #[test]
    fn test_frontend_params_single_queue_parses() {
        let mut kv = BASE.to_vec();
        kv.extend([("feature-sg", "1"), ("feature-gso-tcpv4", "1")]);
        let p = FrontendParams::from_keys(reader(&kv), 4).expect("valid");
        assert_eq!(
            p.queues,
            vec![QueueParams {
                tx_ring_ref: 8,
                rx_ring_ref: 9,
                evtchn_tx: 5,
                evtchn_rx: 5
            }]
        );
        assert!(p.sg && p.gso_tcpv4 && !p.gso_tcpv6 && p.csum_ipv4 && !p.csum_ipv6);
    }

    #[test]
    fn test_frontend_params_multi_queue_split_channels_parse() {
        let p = FrontendParams::from_keys(
            reader(&[
                ("request-rx-copy", "1"),
                ("feature-rx-notify", "1"),
                ("multi-queue-num-queues", "2"),
                ("queue-0/tx-ring-ref", "1"),
                ("queue-0/rx-ring-ref", "2"),
                ("queue-0/event-channel-tx", "3"),
                ("queue-0/event-channel-rx", "4"),
                ("queue-1/tx-ring-ref", "5"),
                ("queue-1/rx-ring-ref", "6"),
                ("queue-1/event-channel", "7"),
                ("feature-gso-tcpv4", "1"),
            ]),
            4,
        )
        .expect("valid");
        assert_eq!(p.queues.len(), 2);
        assert_eq!((p.queues[0].evtchn_tx, p.queues[0].evtchn_rx), (3, 4));
        assert_eq!((p.queues[1].evtchn_tx, p.queues[1].evtchn_rx), (7, 7));
        assert!(!p.gso_tcpv4, "GSO without feature-sg is not used");
    }

    #[test]
    fn test_frontend_params_missing_or_bad_keys_are_refused() {
        let without = |k: &str| {
            BASE.iter()
                .copied()
                .filter(|(x, _)| *x != k)
                .collect::<Vec<_>>()
        };
        assert!(matches!(
            FrontendParams::from_keys(reader(&without("request-rx-copy")), 4),
            Err(NetbackError::Required(_))
        ));
        assert!(matches!(
            FrontendParams::from_keys(reader(&without("feature-rx-notify")), 4),
            Err(NetbackError::Required(_))
        ));
        assert!(matches!(
            FrontendParams::from_keys(reader(&without("rx-ring-ref")), 4),
            Err(NetbackError::MissingKey(k)) if k == "rx-ring-ref"
        ));
        let mut bad = BASE.to_vec();
        bad.push(("multi-queue-num-queues", "9"));
        assert!(matches!(
            FrontendParams::from_keys(reader(&bad), 4),
            Err(NetbackError::BadKey { .. })
        ));
        let mut bad = BASE.to_vec();
        bad[0] = ("tx-ring-ref", "x");
        assert!(matches!(
            FrontendParams::from_keys(reader(&bad), 4),
            Err(NetbackError::BadKey { .. })
        ));
    }
}
