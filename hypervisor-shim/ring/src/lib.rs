//! Xen shared I/O rings on plain memory, `no_std`.
//!
//! This crate mirrors Xen's `xen/include/public/io/ring.h` (the
//! specification) for split-driver request/response rings, and the byte
//! rings of `io/xs_wire.h` (`xenstore_domain_interface`) and `io/console.h`
//! (`xencons_interface`).
//!
//! # Request/response rings (srings)
//!
//! The shared memory ([`SharedRing`], 1 to 16 pages) starts with the 64-byte
//! header of `struct *_sring`: `req_prod` at byte 0, `req_event` at 4,
//! `rsp_prod` at 8, `rsp_event` at 12, padding to 64; the slots follow, each
//! `max(size_of::<Req>(), size_of::<Rsp>())` bytes (the C union), and there are
//! `__CONST_RING_SIZE` of them: the largest power of two that fits
//! ([`const_ring_size`]).
//!
//! [`FrontRing`] produces requests and consumes responses, [`BackRing`] the
//! reverse. Indices are free-running `u32`s with wrapping arithmetic; a slot is
//! `idx & (nr_ents - 1)`.
//!
//! ```
//! use xen_ring::{BackRing, FrontRing, SharedRing};
//!
//! #[repr(C, align(4096))]
//! struct Page([u8; 4096]);
//! let mut page = Box::new(Page([0; 4096]));
//! let p = page.0.as_mut_ptr();
//! // SAFETY: the page outlives both rings; one front and one back.
//! let (fm, bm) = unsafe { (SharedRing::new(p, 4096)?, SharedRing::new(p, 4096)?) };
//! let mut front = FrontRing::<[u64; 2], u32>::init(fm)?;
//! let mut back = BackRing::<[u64; 2], u32>::attach(bm)?;
//!
//! front.push_request(&[1, 2])?;
//! let notify = front.push_requests_and_check_notify();
//! assert!(notify); // the back end asked for the first request (req_event = 1)
//! let req = back.take_request()?.expect("one request");
//! back.push_response(&(req[0] as u32 + req[1] as u32))?;
//! back.push_responses_and_check_notify();
//! assert_eq!(front.take_response()?, Some(3));
//! assert!(!front.final_check_for_responses()?);
//! # Ok::<(), xen_ring::RingError>(())
//! ```
//!
//! # Memory model
//!
//! No `&`/`&mut` to shared bytes is ever made. Indices are `AtomicU32`s:
//! `Acquire` to read the peer's index, `Release` to publish one's own, and
//! `fence(SeqCst)` where `ring.h` has `xen_mb()` (in `*_and_check_notify` and
//! `final_check_*`, never on the per-message path). Slots are copied with
//! volatile word accesses, each slot read exactly once into a local value
//! (`RING_COPY_REQUEST`) before the caller sees it.
//!
//! Each endpoint caches the peer's producer index and reads the page only when
//! the cached value says empty; every fresh read is validated before use
//! (`RING_REQUEST_PROD_OVERFLOW` on the back end; on the front end, responses
//! can never outnumber published requests). A hostile peer gets
//! [`RingError::ProducerOverflow`] and garbage values, never a panic or an
//! out-of-bounds access.
//!
//! # Performance
//!
//! The per-message paths (`push_request`, `take_request`, `push_response`,
//! `take_response` and their batch forms) touch only the slot and private
//! state, plus one `Acquire` load of the peer's index when the cached one is
//! used up; no fence. Publishing is one `Release` store; the
//! `*_and_check_notify` and `final_check_*` calls add the `xen_mb()` full
//! fence, as `ring.h` requires. Because `req_prod` and `rsp_prod` share the
//! header's cache line (fixed by the ABI) and responses overwrite the request
//! slots, publishing one message at a time is bound by cache-line transfers;
//! publish in batches (`push_requests` + one check) and batch notifications
//! with [`FrontRing::final_check_for_responses_batched`].
//!
//! # Byte rings
//!
//! [`bytes`] has generic byte-stream producers and consumers and the xenstore
//! ([`bytes::XsRing`]) and console ([`bytes::ConsRing`]) page layouts.
//!
//! # Testing
//!
//! `cargo test -p xen-ring` runs unit, property, threaded and hostile-peer
//! tests. The notification protocol (`*_and_check_notify` against
//! `final_check_*`) is model-checked with loom, on the real ring code (the
//! header indices become loom atomics under `--cfg loom`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p xen-ring --release --test loom
//! ```
#![cfg_attr(not(loom), no_std)]

mod back;
pub mod bytes;
mod entry;
mod error;
mod front;
pub mod poll;
mod shared;
mod sync;

pub use back::BackRing;
pub use entry::RingEntry;
pub use error::RingError;
pub use front::FrontRing;
pub use poll::PollWindow;
pub use shared::{const_ring_size, SharedRing, MIN_BASE_ALIGN};

/// Xen's ring page size (`XEN_PAGE_SHIFT` 12), whatever the host's page size.
pub const PAGE_SIZE: usize = 4096;

/// The most pages a [`SharedRing`] may have (ring-page-order 4).
pub const MAX_RING_PAGES: usize = 16;

/// The size of the sring header; slots start at this byte offset.
pub const SRING_HEADER_SIZE: usize = 64;

/// The `*_AND_CHECK_NOTIFY` decision: after moving a producer index from `old`
/// to `new`, the peer must be notified iff its event index lies in
/// `(old, new]` (modulo 2^32): `(new - event) < (new - old)`.
#[inline]
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::need_notify;

    /// The definition: notify iff `event` is one of `old + 1 ..= new`.
    fn in_window(old: u32, new: u32, event: u32) -> bool {
        let n = new.wrapping_sub(old);
        let k = event.wrapping_sub(old);
        k >= 1 && k <= n
    }

    #[test]
    fn test_need_notify_exhaustive_near_wrap_points_matches_window() {
        for base in [0u32, 1, 0x7fff_ffc0, 0x8000_0000, u32::MAX - 40, u32::MAX] {
            for d_new in 0u32..=64 {
                for d_ev in 0u32..=160 {
                    let old = base;
                    let new = base.wrapping_add(d_new);
                    let event = base.wrapping_add(d_ev).wrapping_sub(48);
                    assert_eq!(
                        need_notify(old, new, event),
                        in_window(old, new, event),
                        "old={old} new={new} event={event}"
                    );
                }
            }
        }
    }

    #[test]
    fn test_need_notify_randomized_matches_window() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let old = x as u32;
            // Publishes move at most 2^31 (a ring holds at most 2^15 entries).
            let new = old.wrapping_add(((x >> 32) as u32) >> 1);
            let event = (x >> 17) as u32;
            assert_eq!(need_notify(old, new, event), in_window(old, new, event));
            let near = new.wrapping_sub((x >> 50) as u32 & 63);
            assert_eq!(need_notify(old, new, near), in_window(old, new, near));
        }
    }

    #[test]
    fn test_endpoints_are_send() {
        fn is_send<T: Send>() {}
        is_send::<crate::FrontRing<[u64; 14], [u8; 16]>>();
        is_send::<crate::BackRing<[u64; 14], [u8; 16]>>();
        is_send::<crate::SharedRing>();
        is_send::<crate::bytes::XsRing>();
        is_send::<crate::bytes::ConsRing>();
        is_send::<crate::bytes::ByteRingProducer>();
        is_send::<crate::bytes::ByteRingConsumer>();
    }

    #[test]
    fn test_need_notify_nothing_published_never_notifies() {
        for ev in [0u32, 1, 5, u32::MAX] {
            assert!(!need_notify(5, 5, ev));
        }
    }
}
