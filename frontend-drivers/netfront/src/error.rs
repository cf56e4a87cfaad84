//! The errors of [`crate::NetFront`].

use xen_front_platform::PlatformError;
use xen_ring::RingError;

/// Why the device stopped: the backend broke the protocol (or the platform
/// failed under it). Every later data-path call returns
/// [`NetfrontError::Failed`] and the frontend state is Closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// A response producer index no well-behaved backend could have
    /// written (`RING_RESPONSE_PROD_OVERFLOW`).
    RingCorrupt(RingError),
    /// A tx response named no outstanding request (unknown or duplicate).
    UnknownTxId {
        /// The id as read.
        id: u16,
    },
    /// An rx response chain is longer than any packet can be, or its
    /// slot says more than a page.
    BadRxResponse,
    /// The backend's `mac` or features are invalid.
    BadBackendInfo(&'static str),
    /// A platform operation failed while setting up or using the rings.
    Platform(PlatformError),
}

impl core::fmt::Display for FailReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FailReason::RingCorrupt(e) => write!(f, "the backend corrupted a ring: {e}"),
            FailReason::UnknownTxId { id } => write!(f, "the backend answered unknown tx id {id}"),
            FailReason::BadRxResponse => write!(f, "the backend wrote an impossible rx response"),
            FailReason::BadBackendInfo(e) => write!(f, "invalid device information: {e}"),
            FailReason::Platform(e) => write!(f, "platform failure: {e}"),
        }
    }
}

/// Why a [`crate::NetFront`] call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetfrontError {
    /// The device failed (see the reason) and is Closing.
    #[error("the device failed: {0}")]
    Failed(FailReason),
    /// The device is not connected to its backend (yet, or any more).
    #[error("the device is not connected to its backend")]
    NotConnected,
    /// The frontend's `backend`, `backend-id` or `mac` node is missing or invalid.
    #[error("device/vif/{devid} has no valid backend, backend-id or mac node")]
    NoBackend {
        /// The device id.
        devid: u32,
    },
    /// The frame is empty, shorter than an Ethernet header or longer than
    /// the device carries.
    #[error("a frame of {len} bytes cannot be sent (at most {max})")]
    BadFrame {
        /// Its length.
        len: usize,
        /// The most the device sends.
        max: usize,
    },
    /// No such queue.
    #[error("queue {0} does not exist")]
    NoQueue(usize),
    /// A platform operation failed (the device itself is unharmed).
    #[error("platform operation failed")]
    Platform(#[from] PlatformError),
}
