//! [`XenbusError`]: why a xenbus operation failed.

use xen_ring::RingError;
use xenstore_wire::XsError;

/// Why a xenbus operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XenbusError {
    /// Xenstore answered with an `XS_ERROR`.
    #[error("xenstore refused the request")]
    Xs(#[source] XsError),
    /// No reply (or no ring space) within the client's timeout.
    #[error("xenstore did not answer within the timeout")]
    Timeout,
    /// The server's index on the ring is impossible (a corrupt or hostile
    /// xenstored): the connection is unusable until a reconnection.
    #[error("the xenstore ring is corrupt")]
    Ring(#[source] RingError),
    /// Xenstored put the ring in an error state (`XENSTORE_ERROR_*` in the
    /// page's `error` field): it ignores the ring until a reconnection.
    #[error("xenstored reports error {0} on the ring")]
    Server(u32),
    /// A reply is not what the request asks for (wrong type, malformed or
    /// oversized): the stream is out of sync until a reconnection.
    #[error("xenstore sent a malformed reply")]
    BadReply,
    /// The request does not fit in one xenstore packet.
    #[error("the request is larger than a xenstore packet may be")]
    TooBig,
    /// Signalling the store event channel failed (positive errno).
    #[error("signalling the xenstore event channel failed (errno {0})")]
    Notify(i32),
    /// The ring needs a reconnection and xenstored does not offer
    /// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
    #[error("the xenstore connection is broken and xenstored does not support reconnection")]
    NoReconnect,
    /// Xenstored did not complete a reconnection in time.
    #[error("xenstored did not complete the reconnection")]
    ReconnectTimeout,
}

impl XenbusError {
    /// The xenstore error of an `XS_ERROR` reply, if this is one.
    #[must_use]
    pub fn xs_error(&self) -> Option<XsError> {
        match self {
            XenbusError::Xs(e) => Some(*e),
            _ => None,
        }
    }

    /// Whether the connection must be re-established before it can be used
    /// again (the client does it itself on the next request when it may).
    #[must_use]
    pub fn is_connection_broken(&self) -> bool {
        matches!(
            self,
            XenbusError::Ring(_)
                | XenbusError::Server(_)
                | XenbusError::BadReply
                | XenbusError::NoReconnect
                | XenbusError::ReconnectTimeout
        )
    }
}
