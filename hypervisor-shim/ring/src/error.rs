//! The error type of every ring in this crate.

use core::fmt;

/// Why a ring operation or a ring construction failed.
///
/// `ProducerOverflow` is the hostile-peer error: the other side published an
/// index that no well-behaved peer could have written. The ring state is left
/// untouched when it is returned, so the caller can mark the connection failed
/// (Xen drivers "halt ring processing" at this point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The ring has no free slot for another request or byte.
    Full,
    /// The peer's producer index is further ahead of the consumer index than
    /// is possible (`prod - cons > limit`, wrapping), or it went backwards.
    ProducerOverflow {
        /// The producer index as read (once) from shared memory.
        prod: u32,
        /// The consumer-side index it was checked against.
        cons: u32,
        /// The largest distance a well-behaved producer can be ahead.
        limit: u32,
    },
    /// A backend tried to push a response for a request it has not taken.
    ResponseOverrun {
        /// The backend's private response producer index.
        rsp_prod: u32,
        /// The backend's request consumer index.
        req_cons: u32,
    },
    /// The shared memory length is not 1 to 16 whole pages of 4096 bytes, or
    /// too small for the layout asked for.
    BadSize {
        /// The length that was given.
        len: usize,
    },
    /// One ring entry does not fit in the ring area even once.
    EntryTooLarge {
        /// `max(size_of::<Req>(), size_of::<Rsp>())`.
        entry_size: usize,
        /// The shared memory length.
        len: usize,
    },
    /// A request or response type has size zero.
    ZeroSizedEntry,
    /// The shared memory base address is null or not aligned enough.
    Misaligned {
        /// The base address that was given.
        addr: usize,
        /// The alignment that is required.
        align: usize,
    },
    /// A byte-ring layout is invalid: the size is not a power of two, a field
    /// lies outside the shared memory, an index is misaligned or fields overlap.
    BadLayout,
    /// A byte-ring consumer tried to advance past the bytes available.
    AdvanceOverrun {
        /// How many bytes the caller asked to consume.
        requested: usize,
        /// How many bytes were available.
        available: u32,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::Full => write!(f, "the ring has no free slot"),
            RingError::ProducerOverflow { prod, cons, limit } => write!(
                f,
                "the peer's producer index {prod} is not within {limit} entries ahead of index {cons}"
            ),
            RingError::ResponseOverrun { rsp_prod, req_cons } => write!(
                f,
                "response {rsp_prod} would answer a request that was not taken (request consumer is at {req_cons})"
            ),
            RingError::BadSize { len } => write!(
                f,
                "shared memory of {len} bytes is not 1 to 16 pages of 4096 bytes or is too small for the layout"
            ),
            RingError::EntryTooLarge { entry_size, len } => write!(
                f,
                "a ring entry of {entry_size} bytes does not fit in a shared ring of {len} bytes"
            ),
            RingError::ZeroSizedEntry => write!(f, "ring entries must not be zero-sized"),
            RingError::Misaligned { addr, align } => write!(
                f,
                "shared memory at {addr:#x} is null or not aligned to {align} bytes"
            ),
            RingError::BadLayout => write!(f, "the byte-ring layout is invalid"),
            RingError::AdvanceOverrun {
                requested,
                available,
            } => write!(
                f,
                "cannot consume {requested} bytes when only {available} are available"
            ),
        }
    }
}

impl core::error::Error for RingError {}
