//! Per-domain quotas with Xen's defaults; Dom0 (privileged) is exempt.

use std::collections::HashMap;

use xenstore_wire::DomId;

/// Errors of this module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// No quota has this name.
    #[error("there is no quota named {0:?}")]
    Unknown(String),
    /// The value is out of range for this quota.
    #[error("{value} is out of range for quota {name}")]
    OutOfRange {
        /// The quota.
        name: &'static str,
        /// The rejected value.
        value: u32,
    },
}

/// A quota, by index into [`NAMES`].
pub type QuotaId = usize;

/// Nodes owned by a domain (`nodes`, Xen's `-E`): 1000.
pub const NODES: QuotaId = 0;
/// Size of a node: value, children names, permissions (`node-size`, `-S`):
/// 2048.
pub const NODE_SIZE: QuotaId = 1;
/// Watches per domain (`watches`, `-W`): 128.
pub const WATCHES: QuotaId = 2;
/// Open transactions per domain (`transactions`, `-t`): 10.
pub const TRANSACTIONS: QuotaId = 3;
/// Outstanding requests (replies and events not yet read) per domain
/// (`outstanding`): 20. The daemon stops reading a domain's requests at the
/// limit.
pub const OUTSTANDING: QuotaId = 4;
/// Permissions per node (`node-permissions`, `-A`): 5.
pub const PERMISSIONS: QuotaId = 5;
/// Path length below `/local/domain/<domid>/` (`path-length`, `-M`): 2048.
pub const PATH_LENGTH: QuotaId = 6;
/// Nodes accessed per transaction (`transaction-nodes`): 1024.
pub const TRANSACTION_NODES: QuotaId = 7;
/// Request payload (`payload`): 4096, at most [`xenstore_wire::XENSTORE_PAYLOAD_MAX`].
pub const PAYLOAD: QuotaId = 8;
/// Watch events queued for a guest's connection (`watch-events`, XSA-349):
/// 256. One more fails the ring until the guest reconnects (no event is
/// dropped while later ones are delivered), as does its byte bound
/// ([`crate::core::MAX_QUEUED_BYTES`]).
pub const WATCH_EVENTS: QuotaId = 9;
/// Bytes of the nodes a domain owns (`memory`, Xen 4.17's hard per-domain
/// memory quota, 2.5 MiB): each node's path, value, permissions and a
/// 24-byte header ([`crate::store::node_memory`]), charged to its owner.
/// A guest's change that takes its owner past it fails with `ENOSPC`;
/// Dom0's nodes and Dom0's own requests are not limited.
pub const MEMORY: QuotaId = 10;

/// How many quotas there are.
pub const COUNT: usize = 11;

/// The quota names, as `XS_GET_QUOTA` and `xenstore-control quota` use.
pub const NAMES: [&str; COUNT] = [
    "nodes",
    "node-size",
    "watches",
    "transactions",
    "outstanding",
    "node-permissions",
    "path-length",
    "transaction-nodes",
    "payload",
    "watch-events",
    "memory",
];

/// The defaults (Xen's).
pub const DEFAULTS: [u32; COUNT] = [
    1000,
    2048,
    128,
    10,
    20,
    5,
    2048,
    1024,
    4096,
    256,
    2560 << 10,
];

/// The quota named `name`.
pub fn by_name(name: &str) -> Result<QuotaId, QuotaError> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| QuotaError::Unknown(name.to_owned()))
}

/// Global values and per-domain overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    global: [u32; COUNT],
    per_domain: HashMap<DomId, [Option<u32>; COUNT]>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            global: DEFAULTS,
            per_domain: HashMap::new(),
        }
    }
}

impl Quotas {
    /// The value for `domid`.
    #[must_use]
    pub fn get(&self, domid: DomId, q: QuotaId) -> u32 {
        self.per_domain
            .get(&domid)
            .and_then(|o| o[q])
            .unwrap_or(self.global[q])
    }

    /// The global value.
    #[must_use]
    pub fn global(&self, q: QuotaId) -> u32 {
        self.global[q]
    }

    fn check(q: QuotaId, value: u32) -> Result<(), QuotaError> {
        if q == PAYLOAD && value as usize > xenstore_wire::XENSTORE_PAYLOAD_MAX {
            return Err(QuotaError::OutOfRange {
                name: NAMES[q],
                value,
            });
        }
        Ok(())
    }

    /// Sets the global value.
    pub fn set_global(&mut self, q: QuotaId, value: u32) -> Result<(), QuotaError> {
        Self::check(q, value)?;
        self.global[q] = value;
        Ok(())
    }

    /// Sets (or with `None` clears) a domain's override.
    pub fn set_domain(
        &mut self,
        domid: DomId,
        q: QuotaId,
        value: Option<u32>,
    ) -> Result<(), QuotaError> {
        if let Some(v) = value {
            Self::check(q, v)?;
        }
        let e = self.per_domain.entry(domid).or_insert([None; COUNT]);
        e[q] = value;
        if e.iter().all(Option::is_none) {
            self.per_domain.remove(&domid);
        }
        Ok(())
    }

    /// Forgets a domain's overrides (on release).
    pub fn forget(&mut self, domid: DomId) {
        self.per_domain.remove(&domid);
    }

    /// Every per-domain override: `(domid, quota, value)`.
    #[must_use]
    pub fn overrides(&self) -> Vec<(DomId, QuotaId, u32)> {
        let mut v = Vec::new();
        for (d, o) in &self.per_domain {
            for (q, val) in o.iter().enumerate() {
                if let Some(val) = val {
                    v.push((*d, q, *val));
                }
            }
        }
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_quotas_defaults_like_xen() {
        let q = Quotas::default();
        assert_eq!(q.get(5, NODES), 1000);
        assert_eq!(q.get(5, NODE_SIZE), 2048);
        assert_eq!(q.get(5, WATCHES), 128);
        assert_eq!(q.get(5, TRANSACTIONS), 10);
        assert_eq!(q.get(5, OUTSTANDING), 20);
        assert_eq!(q.get(5, PAYLOAD), 4096);
        assert_eq!(q.get(5, MEMORY), 2_621_440);
        assert_eq!(by_name("memory"), Ok(MEMORY));
    }

    #[test]
    fn test_quotas_domain_override_wins_then_clears() {
        let mut q = Quotas::default();
        q.set_domain(5, NODES, Some(3)).unwrap();
        assert_eq!(q.get(5, NODES), 3);
        assert_eq!(q.get(6, NODES), 1000);
        q.set_domain(5, NODES, None).unwrap();
        assert_eq!(q.get(5, NODES), 1000);
        assert!(q.overrides().is_empty());
    }

    #[test]
    fn test_quotas_payload_above_max_rejected() {
        let mut q = Quotas::default();
        assert!(q.set_global(PAYLOAD, 5000).is_err());
        assert_eq!(by_name("nodes"), Ok(NODES));
        assert!(by_name("bogus").is_err());
    }
}
