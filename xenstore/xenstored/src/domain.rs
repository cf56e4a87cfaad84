//! Introduced domains (`XS_INTRODUCE` and friends).

use std::collections::BTreeMap;
use std::fmt;

use xenstore_wire::{DomId, XsError};

use crate::watch::ConnId;

/// What xenstored knows about one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// The domain id.
    pub domid: DomId,
    /// The `mfn` given at introduction (informative: the ring page is the
    /// domain's grant entry 1, `GNTTAB_RESERVED_XENSTORE`).
    pub mfn: u64,
    /// The domain's event channel port for xenstore.
    pub port: u32,
    /// The domain this one acts for (`XS_SET_TARGET`).
    pub target: Option<DomId>,
    /// The `server_features` offered to the domain (`XS_SET_FEATURE`).
    pub features: u32,
    /// Its ring connection, once mapped.
    pub conn: Option<ConnId>,
    /// Set when a shutdown was reported (cleared by `XS_RESUME`).
    pub shutdown: bool,
}

/// The introduced domains.
#[derive(Debug, Default)]
pub struct Domains {
    map: BTreeMap<DomId, Domain>,
}

impl Domains {
    /// The domain `domid`, if introduced.
    #[must_use]
    pub fn get(&self, domid: DomId) -> Option<&Domain> {
        self.map.get(&domid)
    }

    /// The domain `domid`, if introduced.
    pub fn get_mut(&mut self, domid: DomId) -> Option<&mut Domain> {
        self.map.get_mut(&domid)
    }

    /// Whether `domid` is introduced (Dom0 always is).
    #[must_use]
    pub fn is_introduced(&self, domid: DomId) -> bool {
        domid == 0 || self.map.contains_key(&domid)
    }

    /// Records an introduction; returns the previous record, if any.
    pub fn insert(&mut self, d: Domain) -> Option<Domain> {
        self.map.insert(d.domid, d)
    }

    /// Forgets a domain.
    pub fn remove(&mut self, domid: DomId) -> Option<Domain> {
        self.map.remove(&domid)
    }

    /// All introduced domains, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Domain> {
        self.map.values()
    }

    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is introduced.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Checks an `XS_INTRODUCE` with the hypervisor before it is acknowledged,
/// and may map and bind the domain's ring already (the shim's
/// [`crate::shim_mapper::ShimLink`]), so that a domain that does not exist,
/// a wrong store frame or a port that cannot be bound fail the request with
/// an error reply, as in Xen, instead of being recorded and failing later.
pub trait IntroduceCheck: fmt::Debug + Send {
    /// Accepts (`Ok`) or refuses (`EINVAL`, `ENOENT`...) the introduction of
    /// `domid` with store frame `mfn` and event channel `port`.
    fn check(&mut self, domid: DomId, mfn: u64, port: u32) -> Result<(), XsError>;
}
