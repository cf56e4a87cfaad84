//! The atomics used for the sring header indices.
//!
//! Under `--cfg loom` the indices live in loom-tracked atomics (see
//! [`crate::SharedRing`]) so that loom can model-check the notification
//! protocol of the real ring code; otherwise they are `core` atomics placed in
//! the shared page.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32};

pub(crate) use core::sync::atomic::Ordering;
