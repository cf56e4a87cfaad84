//! The backend side of the `io/xenbus.h` handshake, as a pure function of
//! the two ends' states (Linux `xen-blkback/xenbus.c`, `frontend_changed`).
//!
//! ```text
//!  backend                         frontend
//!  Initialising ─probe: advertise─► InitWait
//!                                   Initialising → Initialised (ring-ref, event-channel)
//!  InitWait ─read frontend, connect─► Connected
//!                                   Connected (the frontend may skip Initialised)
//!  on frontend Closing: Closing;  on frontend Closed: disconnect → Closed
//!  (with `online` 0 the device then only waits for the toolstack to
//!  remove its directory);
//!  Closed + frontend Initialising again: InitWait (reconnect)
//!  frontend state garbage / Reconfiguring / Reconfigured: fatal → Closing
//! ```
//!
//! The device re-reads the frontend's state on every watch event, so
//! intermediate states it missed (a frontend that writes Initialised and
//! Connected back to back) are simply skipped.

use xen_abi::io::xenbus::XenbusState;

/// The frontend's `state` node as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendState {
    /// A valid state.
    State(XenbusState),
    /// The node (or the whole frontend directory) does not exist.
    Missing,
    /// Not a decimal state number: the raw value (lossy, for the log).
    Garbage(String),
}

impl FrontendState {
    /// Parses the raw node value (`None`: the node does not exist).
    #[must_use]
    pub fn from_node(raw: Option<&[u8]>) -> Self {
        match raw {
            None => Self::Missing,
            Some(b) => match XenbusState::parse_bytes(b) {
                Ok(s) => Self::State(s),
                Err(_) => {
                    Self::Garbage(String::from_utf8_lossy(&b[..b.len().min(32)]).into_owned())
                }
            },
        }
    }
}

/// What the device must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Nothing,
    /// Switch to InitWait (the frontend re-initialised after a Closed).
    InitWait,
    /// Read the frontend's parameters, connect the backend, switch to
    /// Connected.
    Connect,
    /// Switch to Closing (the frontend is closing).
    Closing,
    /// Disconnect the backend and switch to Closed.
    Closed,
    /// Disconnect and switch to Closed for good (the toolstack set
    /// `online` to 0, or the frontend is gone): the device then waits for
    /// its directory to be removed.
    Remove,
    /// The frontend misbehaved: fail this device (Closing, error node).
    Fatal(String),
}

/// The backend's reaction to the frontend being in `fe` while the
/// backend is in `be`; `online` is the backend's `online` node.
#[must_use]
pub fn frontend_changed(be: XenbusState, fe: &FrontendState, online: bool) -> Step {
    use XenbusState as S;
    let fe = match fe {
        FrontendState::State(s) => *s,
        FrontendState::Missing => {
            return if be == S::Closed && online {
                Step::Nothing
            } else {
                Step::Remove
            }
        }
        FrontendState::Garbage(raw) => {
            return Step::Fatal(format!("saw state {raw:?} at frontend"))
        }
    };
    match fe {
        S::Initialising | S::InitWait => {
            if be == S::Closed {
                Step::InitWait
            } else {
                Step::Nothing
            }
        }
        S::Initialised | S::Connected => match be {
            S::Connected => Step::Nothing,
            // A failed (Closing) or closed device waits for the frontend to
            // go through Closed and Initialising again.
            S::Closing | S::Closed => Step::Nothing,
            _ => Step::Connect,
        },
        S::Closing => {
            if be == S::Closing || be == S::Closed {
                Step::Nothing
            } else {
                Step::Closing
            }
        }
        S::Closed => {
            if !online {
                Step::Remove
            } else if be == S::Closed {
                Step::Nothing
            } else {
                Step::Closed
            }
        }
        S::Unknown => Step::Remove,
        S::Reconfiguring | S::Reconfigured => {
            Step::Fatal(format!("saw state {} at frontend", fe.as_u32()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XenbusState as S;

    fn fe(s: S) -> FrontendState {
        FrontendState::State(s)
    }

    #[test]
    fn test_frontend_changed_normal_handshake_connects() {
        assert_eq!(
            frontend_changed(S::InitWait, &fe(S::Initialising), true),
            Step::Nothing
        );
        assert_eq!(
            frontend_changed(S::InitWait, &fe(S::Initialised), true),
            Step::Connect
        );
        assert_eq!(
            frontend_changed(S::Connected, &fe(S::Connected), true),
            Step::Nothing
        );
    }

    #[test]
    fn test_frontend_changed_skipped_initialised_connects() {
        assert_eq!(
            frontend_changed(S::InitWait, &fe(S::Connected), true),
            Step::Connect
        );
        // A backend that never reached InitWait (skipped) still connects.
        assert_eq!(
            frontend_changed(S::Initialising, &fe(S::Connected), true),
            Step::Connect
        );
    }

    #[test]
    fn test_frontend_changed_close_sequence() {
        assert_eq!(
            frontend_changed(S::Connected, &fe(S::Closing), true),
            Step::Closing
        );
        assert_eq!(
            frontend_changed(S::Closing, &fe(S::Closing), true),
            Step::Nothing
        );
        assert_eq!(
            frontend_changed(S::Closing, &fe(S::Closed), true),
            Step::Closed
        );
        assert_eq!(
            frontend_changed(S::Connected, &fe(S::Closed), true),
            Step::Closed
        );
        assert_eq!(
            frontend_changed(S::Closed, &fe(S::Closed), true),
            Step::Nothing
        );
    }

    #[test]
    fn test_frontend_changed_reconnect_after_closed() {
        assert_eq!(
            frontend_changed(S::Closed, &fe(S::Initialising), true),
            Step::InitWait
        );
        assert_eq!(
            frontend_changed(S::Closed, &fe(S::Connected), true),
            Step::Nothing
        );
    }

    #[test]
    fn test_frontend_changed_offline_closed_removes() {
        assert_eq!(
            frontend_changed(S::Closing, &fe(S::Closed), false),
            Step::Remove
        );
        assert_eq!(
            frontend_changed(S::Connected, &fe(S::Unknown), true),
            Step::Remove
        );
        assert_eq!(
            frontend_changed(S::Connected, &FrontendState::Missing, true),
            Step::Remove
        );
        assert_eq!(
            frontend_changed(S::Closed, &FrontendState::Missing, true),
            Step::Nothing
        );
    }

    #[test]
    fn test_frontend_changed_garbage_is_fatal() {
        let g = FrontendState::from_node(Some(b"banana"));
        assert_eq!(g, FrontendState::Garbage("banana".into()));
        assert!(matches!(
            frontend_changed(S::InitWait, &g, true),
            Step::Fatal(_)
        ));
        let g = FrontendState::from_node(Some(b"99"));
        assert!(matches!(
            frontend_changed(S::Connected, &g, true),
            Step::Fatal(_)
        ));
        assert!(matches!(
            frontend_changed(S::Connected, &fe(S::Reconfiguring), true),
            Step::Fatal(_)
        ));
    }

    #[test]
    fn test_frontend_state_from_node_long_garbage_truncated() {
        let raw = vec![b'x'; 4096];
        let FrontendState::Garbage(s) = FrontendState::from_node(Some(&raw)) else {
            panic!("garbage")
        };
        assert_eq!(s.len(), 32);
        assert_eq!(FrontendState::from_node(None), FrontendState::Missing);
    }
}
