//! The errors of [`crate::BlkFront`].

use xen_front_platform::PlatformError;
use xen_ring::RingError;

use crate::features::FeaturesError;
use crate::request::RequestError;

/// Why the device stopped: the backend broke the protocol (or the platform
/// failed under it). The device answers every later call with
/// [`BlkfrontError::Failed`] and its frontend state is Closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The backend published a response producer index no well-behaved
    /// backend could have written (`RING_RESPONSE_PROD_OVERFLOW`).
    RingCorrupt(RingError),
    /// A response carried an id that names no outstanding request on that
    /// queue (unknown, stale or duplicate).
    UnknownResponseId {
        /// The id as read.
        id: u64,
    },
    /// A response's operation is not the request's.
    WrongResponseOp {
        /// The id.
        id: u64,
        /// The operation in the response.
        op: u8,
    },
    /// After answering, the backend still had a (non-persistent) grant of
    /// the request mapped (Linux's XSA-396 check).
    BackendKeptGrant,
    /// The backend's description of the disk is invalid.
    BadBackendInfo(FeaturesError),
    /// A platform operation failed while setting up or using the rings.
    Platform(PlatformError),
}

impl core::fmt::Display for FailReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FailReason::RingCorrupt(e) => write!(f, "the backend corrupted the ring: {e}"),
            FailReason::UnknownResponseId { id } => {
                write!(f, "the backend answered unknown request id {id:#x}")
            }
            FailReason::WrongResponseOp { id, op } => {
                write!(
                    f,
                    "the backend answered request {id:#x} with operation {op}"
                )
            }
            FailReason::BackendKeptGrant => {
                write!(f, "the backend kept a grant mapped after answering")
            }
            FailReason::BadBackendInfo(e) => write!(f, "{e}"),
            FailReason::Platform(e) => write!(f, "platform failure: {e}"),
        }
    }
}

/// Why a [`crate::BlkFront`] call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlkfrontError {
    /// The device failed (see the reason) and is Closing.
    #[error("the device failed: {0}")]
    Failed(FailReason),
    /// The device has not connected to its backend yet.
    #[error("the device is not connected to its backend yet")]
    NotConnected,
    /// The frontend's `backend` or `backend-id` node is missing or invalid.
    #[error("device/vbd/{devid} has no valid backend or backend-id node")]
    NoBackend {
        /// The device id.
        devid: u32,
    },
    /// Every request id is in use: poll completions and retry.
    #[error("too many requests are outstanding")]
    Busy,
    /// The disk is read-only (`VDISK_READONLY`).
    #[error("the disk is read-only")]
    ReadOnly,
    /// The sector range is outside the disk.
    #[error("sectors {sector}..+{count} are outside the disk of {size} sectors")]
    OutOfRange {
        /// First 512-byte sector.
        sector: u64,
        /// Number of 512-byte sectors.
        count: u64,
        /// Disk size in 512-byte sectors.
        size: u64,
    },
    /// The start or length is not a multiple of the disk's sector size.
    #[error(
        "sector {sector} or length {len} is not aligned to the {sector_size}-byte sector size"
    )]
    Misaligned {
        /// First 512-byte sector.
        sector: u64,
        /// Length in bytes.
        len: usize,
        /// The disk's sector size.
        sector_size: u32,
    },
    /// The transfer is larger than one request can carry.
    #[error("a transfer of {len} bytes exceeds the {max} bytes one request carries")]
    TooLarge {
        /// Length asked for.
        len: usize,
        /// [`crate::BlkFront::max_request_bytes`].
        max: usize,
    },
    /// The backend does not offer the operation (flush, discard).
    #[error("the backend does not support {op}")]
    Unsupported {
        /// The operation.
        op: &'static str,
    },
    /// The registered buffer does not exist, lost its pages (the device
    /// failed), or the length or range asked for does not fit it.
    #[error("no such registered buffer, or the range does not fit it")]
    BadBuffer,
    /// A request is using the registered buffer.
    #[error("the registered buffer is in use by a request")]
    BufferBusy,
    /// A request could not be built.
    #[error("invalid request")]
    Request(#[from] RequestError),
    /// A platform operation failed (the device itself is unharmed).
    #[error("platform operation failed")]
    Platform(#[from] PlatformError),
}
