//! The xenbus state machine helpers a frontend needs, as pure functions
//! over the [`Platform`] trait (Linux's `xenbus_switch_state`,
//! `xenbus_read_driver_state` and `xenbus_read_otherend_details`).

use alloc::format;
use alloc::string::String;

use xen_abi::io::xenbus::XenbusState;
use xen_abi::xen::domid_t;
use xen_front_platform::{
    xs_read_string, Platform, PlatformError, XsTransaction, EINVAL, ENOENT, XBT_NIL,
};

/// Attempts of a transaction that keeps conflicting (`EAGAIN`).
pub const MAX_TRANSACTION_ATTEMPTS: u32 = 16;

/// The other end of a device: its domain and its xenstore directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherEnd {
    /// The other end's domain.
    pub domid: domid_t,
    /// Its directory (`/local/domain/0/backend/vbd/5/51712`).
    pub path: String,
}

fn xs_err(errno: i32) -> PlatformError {
    PlatformError::Xenstore { errno }
}

/// Parses a `state` value the way Linux's `xenbus_read_driver_state` reads
/// it (`xenbus_scanf("%d")` on the C string): the value ends at its first
/// NUL, surrounding ASCII whitespace is ignored, and what is left must be
/// the decimal number of a [`XenbusState`] (`"4"`, `"4\0"`, `" 4\n"`).
/// Anything else (`"banana"`, `"99"`, `"4x"`, `""`) is `None`: unlike
/// `scanf` we do not read a number off the front of garbage, a peer that
/// writes it is broken.
#[must_use]
pub fn parse_state(value: &[u8]) -> Option<XenbusState> {
    let text = value
        .iter()
        .position(|&b| b == 0)
        .map_or(value, |nul| &value[..nul]);
    XenbusState::parse_bytes(text.trim_ascii()).ok()
}

/// The state in `<dir>/state`, or [`XenbusState::Unknown`] when it is
/// missing, unreadable or not a state ([`parse_state`]; as Linux's
/// `xenbus_read_driver_state`).
pub fn read_state<P: Platform + ?Sized>(p: &P, tx: XsTransaction, dir: &str) -> XenbusState {
    p.xs_read(tx, &format!("{dir}/state"))
        .ok()
        .and_then(|v| parse_state(&v))
        .unwrap_or(XenbusState::Unknown)
}

/// Runs `body` in a xenstore transaction and commits it; a commit that
/// conflicted (`EAGAIN`) runs it again, at most
/// [`MAX_TRANSACTION_ATTEMPTS`] times in all (then `Err(Xenstore {
/// EAGAIN })`). An error from `body` aborts the transaction and is
/// returned. `body` must be safe to run again: it sees a fresh
/// transaction each time.
pub fn transaction<P: Platform + ?Sized, T>(
    p: &P,
    mut body: impl FnMut(XsTransaction) -> Result<T, PlatformError>,
) -> Result<T, PlatformError> {
    for _ in 0..MAX_TRANSACTION_ATTEMPTS {
        let tx = p.xs_transaction_start()?;
        let value = match body(tx) {
            Ok(v) => v,
            Err(e) => {
                let _ = p.xs_transaction_end(tx, false);
                return Err(e);
            }
        };
        match p.xs_transaction_end(tx, true) {
            Ok(()) => return Ok(value),
            Err(e) if e.is_xs_eagain() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(xs_err(xen_front_platform::EAGAIN))
}

/// Sets `<nodename>/state` to `state` in a transaction (retried on
/// `EAGAIN`), writing only when it changes so that watches do not fire for
/// nothing. Returns whether it wrote. A missing `state` node is not created
/// again (the toolstack removed the device): `Err(Xenstore { ENOENT })`.
pub fn switch_state<P: Platform + ?Sized>(
    p: &P,
    nodename: &str,
    state: XenbusState,
) -> Result<bool, PlatformError> {
    let node = format!("{nodename}/state");
    transaction(p, |tx| {
        let current = parse_state(&p.xs_read(tx, &node)?);
        if current == Some(state) {
            return Ok(false);
        }
        p.xs_write(tx, &node, state.as_xenstore_str().as_bytes())?;
        Ok(true)
    })
}

/// Reads the other end of device `nodename`: its domain from
/// `<nodename>/<id_node>` and its directory from `<nodename>/<path_node>`,
/// which must exist (Linux's `xenbus_read_otherend_details`).
pub fn read_otherend<P: Platform + ?Sized>(
    p: &P,
    nodename: &str,
    id_node: &str,
    path_node: &str,
) -> Result<OtherEnd, PlatformError> {
    let id = xs_read_string(p, XBT_NIL, &format!("{nodename}/{id_node}"))?;
    let domid = id.trim().parse::<domid_t>().map_err(|_| xs_err(EINVAL))?;
    let path = xs_read_string(p, XBT_NIL, &format!("{nodename}/{path_node}"))?;
    let path = String::from(path.trim_end_matches(['\0', '\n']));
    if path.is_empty() {
        return Err(xs_err(ENOENT));
    }
    p.xs_read(XBT_NIL, &path)?;
    Ok(OtherEnd { domid, path })
}

/// A frontend's backend: `backend-id` and `backend` under `nodename`.
pub fn read_backend<P: Platform + ?Sized>(
    p: &P,
    nodename: &str,
) -> Result<OtherEnd, PlatformError> {
    read_otherend(p, nodename, "backend-id", "backend")
}

/// The state of the other end.
pub fn otherend_state<P: Platform + ?Sized>(p: &P, other: &OtherEnd) -> XenbusState {
    read_state(p, XBT_NIL, &other.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_front_platform::fake::FakePlatform;

    #[test]
    fn test_switch_state_changed_value_writes_once() {
        // Arrange
        let p = FakePlatform::new(5);
        p.xs_write(XBT_NIL, "device/vbd/51712/state", b"1")
            .expect("seed");

        // Act
        let first = switch_state(&p, "device/vbd/51712", XenbusState::Initialised);
        let again = switch_state(&p, "device/vbd/51712", XenbusState::Initialised);

        // Assert
        assert_eq!(first, Ok(true));
        assert_eq!(again, Ok(false));
        assert_eq!(
            read_state(&p, XBT_NIL, "device/vbd/51712"),
            XenbusState::Initialised
        );
    }

    #[test]
    fn test_switch_state_missing_node_is_not_recreated() {
        let p = FakePlatform::new(5);
        let r = switch_state(&p, "device/vbd/1", XenbusState::Connected);
        assert!(matches!(r, Err(e) if e.is_xs_enoent()));
        assert!(p.xs_read(XBT_NIL, "device/vbd/1/state").is_err());
    }

    #[test]
    fn test_read_state_garbage_is_unknown() {
        let p = FakePlatform::new(5);
        p.xs_write(XBT_NIL, "d/state", b"forty").expect("seed");
        assert_eq!(read_state(&p, XBT_NIL, "d"), XenbusState::Unknown);
        assert_eq!(read_state(&p, XBT_NIL, "missing"), XenbusState::Unknown);
        p.xs_write(XBT_NIL, "e/state", b"4\n").expect("seed");
        assert_eq!(read_state(&p, XBT_NIL, "e"), XenbusState::Connected);
    }

    #[test]
    fn test_parse_state_nul_terminated_and_whitespace_are_tolerated() {
        for (value, want) in [
            (&b"4"[..], XenbusState::Connected),
            (b"4\0", XenbusState::Connected),
            (b"4\0\0", XenbusState::Connected),
            (
                b"4\0trailing bytes after the C string",
                XenbusState::Connected,
            ),
            (b"  1\n", XenbusState::Initialising),
            (b"\t6 \0", XenbusState::Closed),
            (b"0", XenbusState::Unknown),
        ] {
            assert_eq!(parse_state(value), Some(want), "{value:?}");
        }
    }

    #[test]
    fn test_parse_state_garbage_is_none() {
        for value in [
            &b""[..],
            b"\0",
            b"\x004",
            b" ",
            b"banana",
            b"99",
            b"-1",
            b"+4",
            b"4x",
            b"4 4",
            b"0x4",
            b"\xff",
        ] {
            assert_eq!(parse_state(value), None, "{value:?}");
        }
    }

    #[test]
    fn test_transaction_conflicts_retried_then_eagain() {
        // Arrange: every run races with a write outside the transaction.
        let p = FakePlatform::new(5);
        let mut runs = 0u32;

        // Act
        let r = transaction(&p, |tx| {
            runs += 1;
            p.xs_write(tx, "d/a", b"1")?;
            p.xs_write(XBT_NIL, "d/b", b"1")
        });

        // Assert
        assert!(matches!(r, Err(e) if e.is_xs_eagain()));
        assert_eq!(runs, MAX_TRANSACTION_ATTEMPTS);
    }

    #[test]
    fn test_transaction_second_attempt_commits() {
        let p = FakePlatform::new(5);
        let mut runs = 0u32;
        let r = transaction(&p, |tx| {
            runs += 1;
            p.xs_write(tx, "d/a", b"1")?;
            if runs == 1 {
                p.xs_write(XBT_NIL, "d/b", b"1")?;
            }
            Ok(runs)
        });
        assert_eq!(r, Ok(2));
        assert_eq!(p.xs_read(XBT_NIL, "d/a"), Ok(b"1".to_vec()));
    }

    #[test]
    fn test_read_backend_valid_details_parsed() {
        // Arrange
        let p = FakePlatform::new(5);
        let be = "/local/domain/0/backend/vbd/5/51712";
        p.xs_write(XBT_NIL, "device/vbd/51712/backend-id", b"0")
            .expect("seed");
        p.xs_write(XBT_NIL, "device/vbd/51712/backend", be.as_bytes())
            .expect("seed");
        p.xs_write(XBT_NIL, &format!("{be}/state"), b"2")
            .expect("seed");

        // Act
        let other = read_backend(&p, "device/vbd/51712").expect("backend");

        // Assert
        assert_eq!(
            other,
            OtherEnd {
                domid: 0,
                path: be.into()
            }
        );
        assert_eq!(otherend_state(&p, &other), XenbusState::InitWait);
    }

    #[test]
    fn test_read_backend_bad_id_or_missing_dir_fails() {
        let p = FakePlatform::new(5);
        p.xs_write(XBT_NIL, "device/vif/0/backend-id", b"zero")
            .expect("seed");
        p.xs_write(XBT_NIL, "device/vif/0/backend", b"/nowhere")
            .expect("seed");
        assert!(read_backend(&p, "device/vif/0").is_err());
        p.xs_write(XBT_NIL, "device/vif/0/backend-id", b"0")
            .expect("seed");
        assert!(matches!(read_backend(&p, "device/vif/0"), Err(e) if e.is_xs_enoent()));
    }
}
