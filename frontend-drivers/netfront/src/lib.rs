//! The PV network frontend: Linux's `xen-netfront` protocol (`io/netif.h`
//! over the `io/xenbus.h` handshake), `no_std` + `alloc`, written against
//! the [`xen_front_platform::Platform`] trait so that the PV guest runtime
//! and the PVHVM guest kernel run it unmodified.
//!
//! # Handshake
//!
//! [`NetFront::new`] reads `device/vif/<devid>/backend`, `backend-id` and
//! `mac` and watches `<backend>/state`. Every watch event goes to
//! [`NetFront::handle_watch`] (level-triggered). The xenstore side
//! (backend details, the backend's state, our state switched and the
//! transport nodes written in transactions) is
//! [`xen_xenbus::FrontendDevice`], shared with blkfront:
//!
//! | backend | frontend was | frontend does |
//! |---|---|---|
//! | InitWait | waiting or Closed | read `multi-queue-max-queues`, `feature-split-event-channels`, `feature-sg`, `feature-gso-tcpv4`/`v6`, `feature-ipv6-csum-offload`, `mtu`; per queue allocate and grant a tx and an rx ring page, 256 tx pages (read-only) and 256 rx pages (writable), one or two unbound ports; post every rx page; write `tx-ring-ref`, `rx-ring-ref`, `event-channel` (or `-tx`/`-rx`), `queue-N/` with `multi-queue-num-queues`, `request-rx-copy`, `feature-rx-notify`, `feature-sg`, `feature-gso-tcpv4`/`v6`, `feature-ipv6-csum-offload`, `feature-no-csum-offload` in one transaction; switch to Initialised (Linux netfront goes straight to Connected; Linux netback connects on either, and backendd after a restart waits for a fresh Initialised) |
//! | Connected | offered | switch to Connected; the data path starts; the backend is kicked for the posted rx pages |
//! | InitWait | Connected | the backend restarted without closing (a killed and restarted backendd): tear down as below, then offer fresh rings as above |
//! | Closing, Closed, or removed | offered or Connected | revoke every grant (pages the backend still maps are deferred: kept and retried at each later look, never reused while mapped), free the rings, close the ports, switch to Closed |
//!
//! Every teardown changes [`NetFront::connection`]: a caller that cached
//! ports, offloads or the MTU reads them again. A tx reservation made on
//! torn-down rings ends with [`NetfrontError::NotConnected`] (its frame is
//! dropped, as a NIC drops frames while its link is down); its pages stay
//! valid until then.
//!
//! # Data path
//!
//! [`NetFront::transmit`] copies a frame into tx pages (one page per slot,
//! the first slot carrying the whole size and the headers, a GSO extra
//! slot after it) and [`NetFront::push_tx`] publishes; tx id `i` is tx page
//! `i`, freed by [`NetFront::reap_tx`]. Rx page `i` belongs to ring slot
//! `i`: the backend answers in the request's slot (Linux netfront ignores
//! the rx id as well), so [`NetFront::receive`] finds each fragment's page
//! from its slot, copies the frame out and re-posts the pages in the same
//! slots. `arm_tx`/`arm_rx` set the event indices before the caller
//! sleeps on the ports ([`NetFront::ports`]).
//!
//! # Distrust
//!
//! Responses are copied out of the ring once; a response producer beyond
//! the published requests, a tx response naming no outstanding id, or an
//! rx chain longer than any packet fails the device (Closing; every later
//! call returns [`NetfrontError::Failed`]). Rx fragments with an error
//! status or crossing their page drop only their packet. Nothing panics on
//! backend input and every loop it could drive is bounded.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod device;
mod error;
/// The TAP offloads (`xen-netif-offload`), for the platforms that pump frames
/// between netfront and a TAP.
pub use xen_netif_offload as offload;
pub mod request;

pub use device::{
    gso, parse_mac, pick_queue, FrontState, NetFront, NetfrontConfig, NetfrontStats, QueueStats,
    RxFrag, RxFrame, TxReservation, MAX_FRAME, MAX_QUEUES,
};
pub use error::{FailReason, NetfrontError};
pub use request::{Gso, PacketMeta};
