//! Mirrors `xen/io/xenbus.h`: the state of each end of a split device
//! (`enum xenbus_state`, `XenbusState`), stored in xenstore as a decimal
//! string under `<device path>/state`.
#![allow(non_camel_case_types)]

use core::fmt;
use core::str::FromStr;

/// State of one end of a xenbus device (`XenbusState`).
///
/// `Debug` gives the name (`Connected`), `Display` the xenstore value
/// (`4`), and `FromStr` parses the xenstore value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum XenbusState {
    /// `XenbusStateUnknown`.
    Unknown = 0,
    /// `XenbusStateInitialising`.
    Initialising = 1,
    /// `XenbusStateInitWait`: early initialisation done, waiting for the
    /// peer or hotplug scripts.
    InitWait = 2,
    /// `XenbusStateInitialised`: waiting for a connection from the peer.
    Initialised = 3,
    /// `XenbusStateConnected`.
    Connected = 4,
    /// `XenbusStateClosing`: closing due to an error or an unplug event.
    Closing = 5,
    /// `XenbusStateClosed`.
    Closed = 6,
    /// `XenbusStateReconfiguring`.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`.
    Reconfigured = 8,
}

/// The C enum name, `enum xenbus_state`.
pub type xenbus_state = XenbusState;

/// Errors of this module: a xenstore `state` value that is not a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// The number is not a `XenbusState` value.
    UnknownState(u32),
    /// The string is not a decimal `u32`.
    NotANumber,
}

impl fmt::Display for XenbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownState(n) => write!(f, "{n} is not a xenbus state"),
            Self::NotANumber => f.write_str("xenbus state is not a decimal number"),
        }
    }
}

impl core::error::Error for XenbusError {}

impl XenbusState {
    /// All states, in numeric order.
    pub const ALL: [Self; 9] = [
        Self::Unknown,
        Self::Initialising,
        Self::InitWait,
        Self::Initialised,
        Self::Connected,
        Self::Closing,
        Self::Closed,
        Self::Reconfiguring,
        Self::Reconfigured,
    ];

    /// The numeric value.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The state name without the `XenbusState` prefix (`"Connected"`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Initialising => "Initialising",
            Self::InitWait => "InitWait",
            Self::Initialised => "Initialised",
            Self::Connected => "Connected",
            Self::Closing => "Closing",
            Self::Closed => "Closed",
            Self::Reconfiguring => "Reconfiguring",
            Self::Reconfigured => "Reconfigured",
        }
    }

    /// The value written to xenstore (`"4"` for `Connected`).
    #[must_use]
    pub const fn as_xenstore_str(self) -> &'static str {
        match self {
            Self::Unknown => "0",
            Self::Initialising => "1",
            Self::InitWait => "2",
            Self::Initialised => "3",
            Self::Connected => "4",
            Self::Closing => "5",
            Self::Closed => "6",
            Self::Reconfiguring => "7",
            Self::Reconfigured => "8",
        }
    }

    /// Parses a xenstore `state` value given as raw bytes (as read from the
    /// store, without a trailing NUL).
    ///
    /// # Errors
    /// [`XenbusError::NotANumber`] if the bytes are not a decimal `u32`,
    /// [`XenbusError::UnknownState`] if the number is not a state.
    pub fn parse_bytes(value: &[u8]) -> Result<Self, XenbusError> {
        core::str::from_utf8(value)
            .map_err(|_| XenbusError::NotANumber)?
            .parse()
    }
}

impl TryFrom<u32> for XenbusState {
    type Error = XenbusError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .ok_or(XenbusError::UnknownState(value))
    }
}

impl From<XenbusState> for u32 {
    fn from(state: XenbusState) -> Self {
        state.as_u32()
    }
}

impl FromStr for XenbusState {
    type Err = XenbusError;

    /// Parses the decimal xenstore value (`"4"`); surrounding whitespace or
    /// anything but ASCII digits is rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(XenbusError::NotANumber);
        }
        let n: u32 = s.parse().map_err(|_| XenbusError::NotANumber)?;
        Self::try_from(n)
    }
}

impl fmt::Display for XenbusState {
    /// Writes the xenstore value (`4`); use `{:?}` or [`XenbusState::name`]
    /// for the name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_xenstore_str())
    }
}

/// Generic xenbus node names (toolstack conventions, not in `xenbus.h`).
pub mod keys {
    /// The `XenbusState` of this end.
    pub const STATE: &str = "state";
    /// Frontend: path of the backend directory.
    pub const BACKEND: &str = "backend";
    /// Frontend: domain id of the backend.
    pub const BACKEND_ID: &str = "backend-id";
    /// Backend: path of the frontend directory.
    pub const FRONTEND: &str = "frontend";
    /// Backend: domain id of the frontend.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Backend: `"1"` while the device should exist.
    pub const ONLINE: &str = "online";
    /// Backend: result of the hotplug script (`"connected"` on success).
    pub const HOTPLUG_STATUS: &str = "hotplug-status";
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn test_xenbus_state_try_from_all_values_roundtrip() {
        for (i, state) in XenbusState::ALL.iter().enumerate() {
            let n = u32::try_from(i).expect("nine states");
            assert_eq!(XenbusState::try_from(n), Ok(*state));
            assert_eq!(state.as_u32(), n);
        }
    }

    #[test]
    fn test_xenbus_state_try_from_out_of_range_fails() {
        assert_eq!(XenbusState::try_from(9), Err(XenbusError::UnknownState(9)));
        assert_eq!(
            XenbusState::try_from(u32::MAX),
            Err(XenbusError::UnknownState(u32::MAX))
        );
    }

    #[test]
    fn test_xenbus_state_from_str_decimal_parses() {
        assert_eq!("4".parse(), Ok(XenbusState::Connected));
        assert_eq!("0".parse(), Ok(XenbusState::Unknown));
        assert_eq!(XenbusState::parse_bytes(b"6"), Ok(XenbusState::Closed));
    }

    #[test]
    fn test_xenbus_state_from_str_garbage_fails() {
        assert_eq!("".parse::<XenbusState>(), Err(XenbusError::NotANumber));
        assert_eq!(" 4".parse::<XenbusState>(), Err(XenbusError::NotANumber));
        assert_eq!("+4".parse::<XenbusState>(), Err(XenbusError::NotANumber));
        assert_eq!(
            "Connected".parse::<XenbusState>(),
            Err(XenbusError::NotANumber)
        );
        assert_eq!(
            "99999999999".parse::<XenbusState>(),
            Err(XenbusError::NotANumber)
        );
        assert_eq!(
            "10".parse::<XenbusState>(),
            Err(XenbusError::UnknownState(10))
        );
        assert_eq!(
            XenbusState::parse_bytes(b"\xff"),
            Err(XenbusError::NotANumber)
        );
    }

    #[test]
    fn test_xenbus_state_display_roundtrips_through_from_str() {
        for state in XenbusState::ALL {
            assert_eq!(state.to_string().parse(), Ok(state));
        }
        assert_eq!(std::format!("{:?}", XenbusState::InitWait), "InitWait");
        assert_eq!(XenbusState::InitWait.name(), "InitWait");
    }
}
