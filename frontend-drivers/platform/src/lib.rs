//! The one platform trait every PV frontend (blkfront, netfront, consfront,
//! the xenbus client) is written against, shaped like the hypercalls a Xen
//! guest makes: grant tables, event channels, xenstore, and the guest pages
//! that can be granted.
//!
//! Two platforms implement it: the PV guest runtime (a Linux process attached
//! to the hypervisor shim, crate `xen-pvguest`) and the PVHVM guest kernel
//! (`frontend-drivers/pvhvm-kernel`, in a KVM guest of `xen-vmm`). The
//! [`fake`] module (feature `fake`, always on in this crate's own tests) is
//! an in-process platform with heap pages, an in-memory xenstore and a
//! simulated peer domain, for unit tests of frontends.
//!
//! The trait is `no_std` + `alloc`; frontends are expected to be too, and
//! `tests/nostd-check` links this crate into a freestanding binary.
//!
//! # Shape
//!
//! - Pages: [`Platform::alloc_pages`] returns [`SharedPages`], runs of guest
//!   pages contiguous in frame numbers and in the address space (multi-page
//!   rings), accessed only with volatile and atomic accessors.
//! - Grants: [`Platform::grant_access`] writes a v1 grant entry (domid and
//!   frame, write barrier, then the flags, as Linux's
//!   `gnttab_grant_foreign_access` does); [`Platform::end_access`] revokes it
//!   by compare-and-swap and fails with [`PlatformError::GrantInUse`] while
//!   the peer has it mapped (XSA-396).
//! - Event channels: the 2-level ABI. Incoming events set the port's pending
//!   bit; [`Platform::evtchn_poll`] is `SCHEDOP_poll` (wait until one of the
//!   given ports is pending), [`Platform::evtchn_clear`] clears a pending bit
//!   (as a guest's upcall handler does before handling the port).
//! - Xenstore: the `xs_wire.h` operations a frontend needs, with
//!   transactions ([`XsTransaction`], `XBT_NIL` outside one) and watches.
//!
//! Every method takes `&self`: a platform is shared by all the frontends of a
//! guest, which keep a reference (or an `Rc`/`Arc`) to it; implementations use
//! interior mutability.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(all(feature = "freestanding", target_arch = "x86_64"))]
pub mod freestanding;

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::xen::{domid_t, xen_pfn_t};

mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod pagealloc;
mod pages;

pub use error::{PlatformError, EAGAIN, EINVAL, ENOENT, ENOSPC};
pub use pages::{PagesError, SharedPages, PAGE_SIZE};

/// A xenstore transaction id (`tx_id` of `xsd_sockmsg`); [`XBT_NIL`] means
/// "no transaction".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct XsTransaction(pub u32);

/// No transaction: each operation stands alone (`XBT_NIL`).
pub const XBT_NIL: XsTransaction = XsTransaction(0);

/// A fired xenstore watch (`XS_WATCH_EVENT`): the path that changed and the
/// token given to [`Platform::xs_watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XsWatchEvent {
    /// The node that changed (or the watched path itself).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// The services a PV frontend needs from the domain it runs in.
///
/// # Safety
///
/// Implementations promise, for memory safety of the safe accessors of
/// [`SharedPages`]:
/// - every [`SharedPages`] returned by [`Platform::alloc_pages`] covers
///   page-aligned memory valid for reads and writes until it is passed back to
///   [`Platform::free_pages`] of the same platform, even if the platform value
///   is dropped first (then the pages are leaked, never unmapped);
/// - runs handed out never overlap while allocated;
/// - a run's guest frames are `first_gfn .. first_gfn + count`, and granting
///   one of them with [`Platform::grant_access`] gives the peer access to
///   exactly the page this process sees at the matching offset.
pub unsafe trait Platform {
    /// This domain's id.
    fn domid(&self) -> domid_t;

    // ----------------------------------------------------------------------
    // Memory.

    /// Allocates `count` zeroed pages that may be granted, contiguous in guest
    /// frames and in this address space.
    fn alloc_pages(&self, count: usize) -> Result<SharedPages, PlatformError>;

    /// Returns pages to the platform. Revoke every grant of them first
    /// ([`Platform::end_access`]): freeing a page a peer still maps would
    /// let it see the page's next use.
    fn free_pages(&self, pages: SharedPages) -> Result<(), PlatformError>;

    // ----------------------------------------------------------------------
    // Grant tables.

    /// Grants `domid` access to guest frame `gfn` (read-only if `readonly`)
    /// and returns the grant reference to pass to it. Never hands out the
    /// reserved references (`GNTTAB_NR_RESERVED_ENTRIES`).
    fn grant_access(
        &self,
        domid: domid_t,
        gfn: xen_pfn_t,
        readonly: bool,
    ) -> Result<grant_ref_t, PlatformError>;

    /// Revokes a grant (`gnttab_end_foreign_access_ref`): a compare-and-swap
    /// of the flags to 0 that succeeds only when the peer has no mapping of
    /// it. Fails with [`PlatformError::GrantInUse`] (the entry is left as it
    /// is; retry after the peer unmapped) or [`PlatformError::BadGrantRef`].
    /// On success the reference is free for reuse.
    fn end_access(&self, gref: grant_ref_t) -> Result<(), PlatformError>;

    // ----------------------------------------------------------------------
    // Event channels (2-level ABI).

    /// `EVTCHNOP_alloc_unbound`: a new local port that `remote_dom` may bind
    /// to.
    fn evtchn_alloc_unbound(&self, remote_dom: domid_t) -> Result<evtchn_port_t, PlatformError>;

    /// `EVTCHNOP_bind_interdomain`: binds a new local port to `remote_port` of
    /// `remote_dom` (which must be unbound and allocated for this domain).
    fn evtchn_bind_interdomain(
        &self,
        remote_dom: domid_t,
        remote_port: evtchn_port_t,
    ) -> Result<evtchn_port_t, PlatformError>;

    /// `EVTCHNOP_send`: notifies the other end of `port`.
    fn evtchn_notify(&self, port: evtchn_port_t) -> Result<(), PlatformError>;

    /// `EVTCHNOP_unmask`: clears the port's mask bit; an event that arrived
    /// while masked is delivered now.
    fn evtchn_unmask(&self, port: evtchn_port_t) -> Result<(), PlatformError>;

    /// Sets the port's mask bit (a guest does this itself in `shared_info`):
    /// events stay pending and are not delivered until unmasked.
    fn evtchn_mask(&self, port: evtchn_port_t) -> Result<(), PlatformError>;

    /// `EVTCHNOP_close`: closes the port; the other end sees it unbound.
    fn evtchn_close(&self, port: evtchn_port_t) -> Result<(), PlatformError>;

    /// Clears the port's pending bit and returns whether it was set (what an
    /// upcall handler does before handling the port).
    fn evtchn_clear(&self, port: evtchn_port_t) -> Result<bool, PlatformError>;

    /// `SCHEDOP_poll`: returns `true` as soon as one of `ports` is pending
    /// (masked or not), `false` once `timeout` (`None`: forever) has passed
    /// without one. Does not clear pending bits.
    fn evtchn_poll(
        &self,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, PlatformError>;

    /// Makes local port `port` pending as if its peer had sent on it, so
    /// that a thread waiting for it ([`Platform::evtchn_poll`]) wakes and
    /// looks at its stop flag or its device's state: a spurious event to
    /// the port's driver (a ring consumer looks and finds nothing). A
    /// platform whose waits end by themselves needs nothing (the default).
    fn evtchn_wake(&self, port: evtchn_port_t) {
        let _ = port;
    }

    // ----------------------------------------------------------------------
    // Xenstore (`xs_wire.h`). Relative paths are relative to
    // `/local/domain/<domid>`.

    /// `XS_READ`.
    fn xs_read(&self, tx: XsTransaction, path: &str) -> Result<Vec<u8>, PlatformError>;

    /// `XS_WRITE` (creates missing parents).
    fn xs_write(&self, tx: XsTransaction, path: &str, value: &[u8]) -> Result<(), PlatformError>;

    /// `XS_MKDIR` (no error if it exists).
    fn xs_mkdir(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError>;

    /// `XS_RM` (the node and everything under it).
    fn xs_rm(&self, tx: XsTransaction, path: &str) -> Result<(), PlatformError>;

    /// `XS_DIRECTORY`: the names of the node's children.
    fn xs_directory(&self, tx: XsTransaction, path: &str) -> Result<Vec<String>, PlatformError>;

    /// `XS_WATCH`: fires once right away, then whenever `path` or a node
    /// under it changes.
    fn xs_watch(&self, path: &str, token: &str) -> Result<(), PlatformError>;

    /// `XS_UNWATCH`.
    fn xs_unwatch(&self, path: &str, token: &str) -> Result<(), PlatformError>;

    /// The next fired watch, waiting up to `timeout` (`None`: forever);
    /// `Ok(None)` on timeout.
    fn xs_read_watch(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<XsWatchEvent>, PlatformError>;

    /// Makes every thread waiting in [`Platform::xs_read_watch`] return
    /// soon (`Ok(None)` unless an event is there), so that a loop around
    /// it looks at its stop flag: call it after setting one. A platform
    /// whose waits end by themselves needs nothing (the default).
    fn xs_wake_readers(&self) {}

    /// `XS_TRANSACTION_START`.
    fn xs_transaction_start(&self) -> Result<XsTransaction, PlatformError>;

    /// `XS_TRANSACTION_END`: commits (`commit`) or aborts. A commit that
    /// conflicted fails with `PlatformError::Xenstore { errno: EAGAIN }`
    /// ([`PlatformError::is_xs_eagain`]): run the transaction again.
    fn xs_transaction_end(&self, tx: XsTransaction, commit: bool) -> Result<(), PlatformError>;

    // ----------------------------------------------------------------------
    // Time and scheduling.

    /// A monotonic clock in nanoseconds (for frontend timeouts).
    fn monotonic_ns(&self) -> u64;

    /// `SCHEDOP_yield`.
    fn yield_now(&self) {}

    // ----------------------------------------------------------------------
    // Barriers (`xen_mb`, `xen_rmb`, `xen_wmb`). Rings use `xen-ring`, which
    // has its own; these are for hand-written shared-memory protocols.

    /// Full barrier (`xen_mb()`).
    fn mb(&self) {
        fence(Ordering::SeqCst);
    }

    /// Read barrier (`xen_rmb()`).
    fn rmb(&self) {
        fence(Ordering::Acquire);
    }

    /// Write barrier (`xen_wmb()`).
    fn wmb(&self) {
        fence(Ordering::Release);
    }
}

/// Reads a xenstore node as UTF-8 text (frontends read numbers, states and
/// paths this way).
pub fn xs_read_string<P: Platform + ?Sized>(
    p: &P,
    tx: XsTransaction,
    path: &str,
) -> Result<String, PlatformError> {
    let bytes = p.xs_read(tx, path)?;
    String::from_utf8(bytes).map_err(|_| PlatformError::Xenstore { errno: EINVAL })
}

/// Reads a xenstore node holding a decimal unsigned number (a domid, a grant
/// reference, a port, a `XenbusState`).
pub fn xs_read_u64<P: Platform + ?Sized>(
    p: &P,
    tx: XsTransaction,
    path: &str,
) -> Result<u64, PlatformError> {
    let s = xs_read_string(p, tx, path)?;
    s.trim()
        .parse::<u64>()
        .map_err(|_| PlatformError::Xenstore { errno: EINVAL })
}
