//! The PV block frontend: Linux's `xen-blkfront` protocol (`io/blkif.h` over
//! the `io/xenbus.h` handshake), `no_std` + `alloc`, written against the
//! [`xen_front_platform::Platform`] trait so that the PV guest runtime and
//! the PVHVM guest kernel run it unmodified.
//!
//! # Handshake
//!
//! [`BlkFront::new`] reads `device/vbd/<devid>/backend` and `backend-id` and
//! watches `<backend>/state`. Every watch event goes to
//! [`BlkFront::handle_watch`], which reads the backend's state and acts on it
//! (level-triggered, so skipped or coalesced states are harmless). The
//! xenstore side (backend details, the backend's state, our state switched
//! and the transport nodes written in transactions) is
//! [`xen_xenbus::FrontendDevice`], shared with netfront:
//!
//! | backend | frontend was | frontend does |
//! |---|---|---|
//! | InitWait | waiting or Closed | read `max-ring-page-order` and `multi-queue-max-queues`; allocate and grant the rings (`ring-ref` or `ring-ref0..N`, `ring-page-order`; `queue-N/` with `multi-queue-num-queues`), `alloc_unbound` one event channel per queue; write them, `protocol` = `x86_64-abi` and `feature-persistent` in one transaction; switch to Initialised |
//! | InitWait | Connected | the backend restarted: tear down as below, then the same |
//! | Connected | Initialised | read `sectors`, `sector-size`, `info`, `feature-flush-cache`/`feature-barrier`, `feature-discard` (+ granularity, alignment, secure), `feature-max-indirect-segments`, `feature-persistent`; switch to Connected; issue waiting requests |
//! | Closing, Closed, or removed | Initialised or Connected | take the responses already on the rings, put every request still on a ring back in line (new id), revoke all grants (deferring those the backend still maps), free the rings, close the ports, switch to Closed |
//!
//! # Data path
//!
//! `submit_read`/`submit_write`/`flush`/`discard` return a [`RequestTag`];
//! [`BlkFront::poll_completions`] returns [`Completion`]s (a read's data is
//! in it); [`BlkFront::wait`] sleeps on the event channels with
//! [`xen_front_platform::Platform::evtchn_poll`] after the ring's final
//! check. Data is always copied through frontend-owned pages: up to 11
//! segments go in a direct request, more (when the backend offers
//! `feature-max-indirect-segments`) in an indirect one whose descriptor
//! pages are granted read-only. With `feature-persistent` on both sides the
//! data pages keep their (writable) grants and are reused from a pool, as
//! Linux does; otherwise each request's grants are revoked when it
//! completes, and a backend that still maps one fails the device (XSA-396).
//!
//! # Distrust
//!
//! Responses are copied out of the ring once; a response producer index
//! beyond the published requests (`RingError::ProducerOverflow`), an id that
//! names no outstanding request on that ring (ids carry a generation, so
//! duplicates and stale ids are caught), or an operation that is not the
//! request's fails the device: it goes to Closing, its outstanding requests
//! complete with [`BlkStatus::Error`], and every later call returns
//! [`BlkfrontError::Failed`]. Backend xenstore values are parsed strictly
//! ([`features`]). Nothing panics on backend input and every loop it could
//! drive is bounded.
//!
//! This crate does not log (it has no logger in `no_std`): everything that
//! goes wrong is returned, and [`BlkfrontStats`] counts the rest.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod device;
mod error;
pub mod features;
pub mod idtable;
pub mod request;

pub use device::{
    BlkFront, BlkStatus, BlkfrontConfig, BlkfrontStats, BufferId, Completion, FrontState,
    RequestKind, RequestTag, DEFAULT_POLL_BUDGET, MAX_BUFFER_BYTES,
};
pub use error::{BlkfrontError, FailReason};
pub use features::{DiscardInfo, DiskInfo, FlushOp, TransportOffer};
