//! The frontend half of the xenbus handshake, written once for every
//! frontend (blkfront, netfront): [`FrontendDevice`] is a device's xenstore
//! identity (`device/<class>/<devid>`, its backend's directory and domain,
//! the watch token) and the handshake's xenstore operations over the
//! [`Platform`] trait, as Linux's `xenbus_probe_frontend.c` and
//! `xenbus_client.c` do them:
//!
//! - [`FrontendDevice::open`] reads `backend` and `backend-id` and checks
//!   them (`read_backend_details`);
//! - [`FrontendDevice::backend_state`] reads the backend's `state` with one
//!   parsing rule ([`crate::state::parse_state`]);
//! - [`FrontendDevice::switch_state`] writes our `state` in a transaction,
//!   never recreating a node the toolstack removed (`xenbus_switch_state`);
//! - [`FrontendDevice::write_nodes`] writes the transport nodes (ring
//!   references, event channels, `protocol`, features) in one transaction,
//!   retried a bounded number of times on `EAGAIN` (`talk_to_blkback`,
//!   `talk_to_netback`).
//!
//! What the frontend does on each backend state (the state machine itself)
//! stays in the frontend: it differs from device class to device class.

use alloc::format;
use alloc::string::String;
use core::fmt::Display;

use xen_abi::io::xenbus::XenbusState;
use xen_abi::xen::{domid_t, DOMID_FIRST_RESERVED};
use xen_front_platform::{xs_read_string, Platform, PlatformError, XsTransaction, XBT_NIL};
use xenstore_wire::path::{validate, PathKind};

use crate::state::{parse_state, switch_state, transaction};

/// Why a frontend device cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// `backend` or `backend-id` is missing or invalid (not an absolute
    /// node name, or not a domain id below `DOMID_FIRST_RESERVED`).
    #[error("the device has no valid backend or backend-id node")]
    NoBackend,
}

/// A frontend device's place in xenstore: its own directory, its backend's
/// directory and domain, and the token its backend-state watch fires with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendDevice {
    /// `device/<class>/<devid>` (relative to our domain's home).
    node: String,
    /// The backend's directory (absolute).
    backend: String,
    backend_id: domid_t,
    token: String,
}

impl FrontendDevice {
    /// Reads `<node>/backend` (an absolute node name other than `/`) and
    /// `<node>/backend-id` (a domain below `DOMID_FIRST_RESERVED`); values
    /// are read up to their first NUL, without surrounding whitespace for
    /// the number. Watches nothing yet ([`FrontendDevice::watch`]);
    /// `token` is the watch's token.
    ///
    /// # Errors
    /// [`FrontendError::NoBackend`] if either node is unreadable or invalid.
    pub fn open<P: Platform + ?Sized>(
        p: &P,
        node: String,
        token: String,
    ) -> Result<Self, FrontendError> {
        let backend = xs_read_string(p, XBT_NIL, &format!("{node}/backend"))
            .map_err(|_| FrontendError::NoBackend)?;
        let backend = String::from(c_str(&backend));
        let backend_ok = backend.len() > 1 && validate(&backend, false) == Ok(PathKind::Absolute);
        let backend_id = xs_read_string(p, XBT_NIL, &format!("{node}/backend-id"))
            .ok()
            .and_then(|s| c_str(&s).trim().parse::<domid_t>().ok())
            .filter(|&d| d < DOMID_FIRST_RESERVED);
        match (backend_ok, backend_id) {
            (true, Some(backend_id)) => Ok(FrontendDevice {
                node,
                backend,
                backend_id,
                token,
            }),
            _ => Err(FrontendError::NoBackend),
        }
    }

    /// Our directory (`device/<class>/<devid>`, relative).
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The backend's directory (absolute).
    #[must_use]
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The backend's domain.
    #[must_use]
    pub fn backend_id(&self) -> domid_t {
        self.backend_id
    }

    /// The token of the watch on the backend's `state`.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Watches `<backend>/state` with [`FrontendDevice::token`] (fires once
    /// at once, then on every change).
    pub fn watch<P: Platform + ?Sized>(&self, p: &P) -> Result<(), PlatformError> {
        p.xs_watch(&format!("{}/state", self.backend), &self.token)
    }

    /// Removes the watch of [`FrontendDevice::watch`].
    pub fn unwatch<P: Platform + ?Sized>(&self, p: &P) -> Result<(), PlatformError> {
        p.xs_unwatch(&format!("{}/state", self.backend), &self.token)
    }

    /// The backend's state: `Ok(Some(Closed))` when its `state` node is
    /// gone (the backend or the toolstack removed it), `Ok(None)` when it
    /// holds something that is not a state ([`parse_state`]; the caller
    /// ignores it and waits for the next change).
    pub fn backend_state<P: Platform + ?Sized>(
        &self,
        p: &P,
    ) -> Result<Option<XenbusState>, PlatformError> {
        match p.xs_read(XBT_NIL, &format!("{}/state", self.backend)) {
            Ok(v) => Ok(parse_state(&v)),
            Err(e) if e.is_xs_enoent() => Ok(Some(XenbusState::Closed)),
            Err(e) => Err(e),
        }
    }

    /// A backend node as text (`None` if missing or not UTF-8).
    pub fn read_backend<P: Platform + ?Sized>(&self, p: &P, key: &str) -> Option<String> {
        xs_read_string(p, XBT_NIL, &format!("{}/{key}", self.backend)).ok()
    }

    /// Sets our `state` in a transaction (written only when it changes). A
    /// `state` node the toolstack removed is not created again (the device
    /// is going away): that is `Ok(())`.
    pub fn switch_state<P: Platform + ?Sized>(
        &self,
        p: &P,
        state: XenbusState,
    ) -> Result<(), PlatformError> {
        match switch_state(p, &self.node, state) {
            Ok(_) => Ok(()),
            Err(e) if e.is_xs_enoent() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes nodes under our directory in one transaction: `body` writes
    /// and removes them through a [`NodeWriter`]; a conflicting commit runs
    /// it again (bounded, [`crate::state::MAX_TRANSACTION_ATTEMPTS`]).
    pub fn write_nodes<P: Platform + ?Sized>(
        &self,
        p: &P,
        mut body: impl FnMut(&NodeWriter<'_, P>) -> Result<(), PlatformError>,
    ) -> Result<(), PlatformError> {
        transaction(p, |tx| {
            body(&NodeWriter {
                p,
                tx,
                dir: &self.node,
            })
        })
    }
}

/// Writes nodes under one directory inside one transaction
/// ([`FrontendDevice::write_nodes`]).
#[derive(Debug)]
pub struct NodeWriter<'a, P: Platform + ?Sized> {
    p: &'a P,
    tx: XsTransaction,
    dir: &'a str,
}

impl<P: Platform + ?Sized> NodeWriter<'_, P> {
    /// Writes `<dir>/<key>` = `value` (its `Display` text).
    pub fn write(&self, key: &str, value: impl Display) -> Result<(), PlatformError> {
        self.p.xs_write(
            self.tx,
            &format!("{}/{key}", self.dir),
            format!("{value}").as_bytes(),
        )
    }

    /// Removes `<dir>/<key>` and what is under it; a missing node is fine.
    pub fn remove(&self, key: &str) -> Result<(), PlatformError> {
        match self.p.xs_rm(self.tx, &format!("{}/{key}", self.dir)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_xs_enoent() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes every child `<dir>/<key>` for which `stale(key)` holds: one
    /// directory listing, then one removal per such child present (a first
    /// connection has none, where removing each candidate cost a frontend
    /// 34 round trips to xenstored, 1.3 ms).
    pub fn remove_where(&self, stale: impl Fn(&str) -> bool) -> Result<(), PlatformError> {
        let children = match self.p.xs_directory(self.tx, self.dir) {
            Ok(c) => c,
            Err(e) if e.is_xs_enoent() => return Ok(()),
            Err(e) => return Err(e),
        };
        for k in children.iter().filter(|k| stale(k)) {
            self.remove(k)?;
        }
        Ok(())
    }
}

/// Whether `key` is `prefix` followed by a decimal number or nothing
/// (`ring-ref`, `ring-ref3`, `queue-0` for the prefixes `ring-ref` and
/// `queue-`): the numbered keys of multi-page rings and queues.
pub fn numbered_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
}

/// A xenstore value as the C string a Linux client sees: up to its first
/// NUL.
fn c_str(s: &str) -> &str {
    s.split('\0').next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_front_platform::fake::FakePlatform;

    const NODE: &str = "device/vbd/51712";
    const BE: &str = "/local/domain/0/backend/vbd/5/51712";

    fn seeded(backend: &[u8], backend_id: &[u8]) -> FakePlatform {
        let p = FakePlatform::new(5);
        p.xs_write(XBT_NIL, &format!("{NODE}/backend"), backend)
            .expect("seed");
        p.xs_write(XBT_NIL, &format!("{NODE}/backend-id"), backend_id)
            .expect("seed");
        p.xs_write(XBT_NIL, &format!("{NODE}/state"), b"1")
            .expect("seed");
        p
    }

    fn open(p: &FakePlatform) -> Result<FrontendDevice, FrontendError> {
        FrontendDevice::open(p, NODE.into(), "tok".into())
    }

    #[test]
    fn test_open_valid_nodes_with_nul_and_whitespace_are_read() {
        // Arrange
        let p = seeded(b"/local/domain/0/backend/vbd/5/51712\0", b" 0\n\0");

        // Act
        let dev = open(&p).expect("open");

        // Assert
        assert_eq!(dev.node(), NODE);
        assert_eq!(dev.backend(), BE);
        assert_eq!(dev.backend_id(), 0);
        assert_eq!(dev.token(), "tok");
    }

    #[test]
    fn test_open_invalid_backend_or_id_is_no_backend() {
        for (backend, id) in [
            (&b"relative/path"[..], &b"0"[..]),
            (b"/", b"0"),
            (b"/local/domain/0/backend/", b"0"),
            (b"/local/domain/0/back end", b"0"),
            (b"/local//domain", b"0"),
            (BE.as_bytes(), b"zero"),
            (BE.as_bytes(), b"32752"),
            (BE.as_bytes(), b"-1"),
        ] {
            let p = seeded(backend, id);
            assert_eq!(
                open(&p),
                Err(FrontendError::NoBackend),
                "{backend:?} {id:?}"
            );
        }
        let p = FakePlatform::new(5);
        assert_eq!(open(&p), Err(FrontendError::NoBackend));
    }

    #[test]
    fn test_backend_state_values_follow_one_rule() {
        // Arrange
        let p = seeded(BE.as_bytes(), b"0");
        let dev = open(&p).expect("open");
        let cases: [(&[u8], Option<XenbusState>); 9] = [
            (b"4", Some(XenbusState::Connected)),
            (b"4\0", Some(XenbusState::Connected)),
            (b"4\0junk", Some(XenbusState::Connected)),
            (b" 2\n", Some(XenbusState::InitWait)),
            (b"5 \0", Some(XenbusState::Closing)),
            (b"banana", None),
            (b"99", None),
            (b"4x", None),
            (b"\0", None),
        ];
        for (value, want) in cases {
            // Act
            p.xs_write(XBT_NIL, &format!("{BE}/state"), value)
                .expect("seed");
            let got = dev.backend_state(&p);

            // Assert
            assert_eq!(got, Ok(want), "{value:?}");
        }
        p.xs_rm(XBT_NIL, &format!("{BE}/state")).expect("rm");
        assert_eq!(dev.backend_state(&p), Ok(Some(XenbusState::Closed)));
    }

    #[test]
    fn test_switch_state_removed_node_is_not_recreated() {
        // Arrange
        let p = seeded(BE.as_bytes(), b"0");
        let dev = open(&p).expect("open");

        // Act
        let set = dev.switch_state(&p, XenbusState::Initialised);
        p.xs_rm(XBT_NIL, &format!("{NODE}/state")).expect("rm");
        let gone = dev.switch_state(&p, XenbusState::Closed);

        // Assert
        assert_eq!(set, Ok(()));
        assert_eq!(gone, Ok(()));
        assert!(p.xs_read(XBT_NIL, &format!("{NODE}/state")).is_err());
    }

    #[test]
    fn test_numbered_key_takes_the_prefix_and_digits_only() {
        assert!(numbered_key("ring-ref", "ring-ref"));
        assert!(numbered_key("ring-ref12", "ring-ref"));
        assert!(numbered_key("queue-0", "queue-"));
        assert!(!numbered_key("ring-refx", "ring-ref"));
        assert!(!numbered_key("queue-1/ring-ref", "queue-"));
        assert!(!numbered_key("protocol", "ring-ref"));
    }

    #[test]
    fn test_remove_where_removes_only_matching_children() {
        // Arrange
        let p = seeded(BE.as_bytes(), b"0");
        let dev = open(&p).expect("open");
        for k in ["ring-ref3", "queue-1/ring-ref", "protocol"] {
            p.xs_write(XBT_NIL, &format!("{NODE}/{k}"), b"1")
                .expect("seed");
        }

        // Act
        let r = dev.write_nodes(&p, |w| {
            w.remove_where(|k| k.starts_with("ring-ref") || k.starts_with("queue-"))
        });

        // Assert
        assert_eq!(r, Ok(()));
        for gone in ["ring-ref3", "queue-1/ring-ref", "queue-1"] {
            assert!(
                p.xs_read(XBT_NIL, &format!("{NODE}/{gone}")).is_err(),
                "{gone}"
            );
        }
        for kept in ["protocol", "backend", "state"] {
            assert!(
                p.xs_read(XBT_NIL, &format!("{NODE}/{kept}")).is_ok(),
                "{kept}"
            );
        }
    }

    #[test]
    fn test_write_nodes_commits_writes_and_removals_together() {
        // Arrange
        let p = seeded(BE.as_bytes(), b"0");
        let dev = open(&p).expect("open");
        p.xs_write(XBT_NIL, &format!("{NODE}/ring-ref0"), b"9")
            .expect("seed");

        // Act
        let r = dev.write_nodes(&p, |w| {
            w.remove("ring-ref0")?;
            w.remove("never-written")?;
            w.write("ring-ref", 8u32)?;
            w.write("protocol", "x86_64-abi")
        });

        // Assert
        assert_eq!(r, Ok(()));
        assert!(p.xs_read(XBT_NIL, &format!("{NODE}/ring-ref0")).is_err());
        assert_eq!(
            p.xs_read(XBT_NIL, &format!("{NODE}/ring-ref")),
            Ok(b"8".to_vec())
        );
        assert_eq!(
            p.xs_read(XBT_NIL, &format!("{NODE}/protocol")),
            Ok(b"x86_64-abi".to_vec())
        );
    }

    #[test]
    fn test_write_nodes_conflict_is_retried_then_bounded() {
        // Arrange: every run of the body races with a write outside it.
        let p = seeded(BE.as_bytes(), b"0");
        let dev = open(&p).expect("open");
        let mut runs = 0u32;

        // Act
        let r = dev.write_nodes(&p, |w| {
            runs += 1;
            w.write("ring-ref", runs)?;
            p.xs_write(XBT_NIL, &format!("{NODE}/ring-ref"), b"0")
        });

        // Assert
        assert!(matches!(r, Err(e) if e.is_xs_eagain()));
        assert_eq!(runs, crate::state::MAX_TRANSACTION_ATTEMPTS);
    }

    #[test]
    fn test_write_nodes_body_error_aborts() {
        let p = seeded(BE.as_bytes(), b"0");
        let dev = open(&p).expect("open");
        let r = dev.write_nodes(&p, |w| {
            w.write("ring-ref", 8)?;
            Err(PlatformError::Xenstore {
                errno: xen_front_platform::EINVAL,
            })
        });
        assert!(r.is_err());
        assert!(p.xs_read(XBT_NIL, &format!("{NODE}/ring-ref")).is_err());
    }
}
