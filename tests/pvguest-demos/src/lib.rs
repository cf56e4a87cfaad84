//! The plumbing demos: guest programs on the PV runtime (`xen-pvguest`'s
//! library) that exercise the split-driver mechanisms one by one, against a
//! Dom0 played by the tests of this crate (`tests/`, on
//! `xen_testhost::shim`).
//!
//! - [`demo`]: a page shared by grant with event-channel signalling (grant
//!   demo), an `io/ring.h` ring on granted pages (ring demo), and the page
//!   layout and values both halves use;
//! - [`xsdemo`]: the domain's xenstore over its ring (a guest using its
//!   store, a hostile one that corrupts its ring, a benchmark);
//! - [`cli`]: the `pvguest-demo` binary, the guest half of each demo
//!   (`--demo NAME`), attached and shut down by `xen_pvguest::boot`.
//!
//! The Dom0 halves of the grant and ring demos are in
//! `tests/common/dom0peer.rs` (the shim's Dom0 API); the xenstore demos'
//! Dom0 is our xenstored, run by `tests/xenstore_ring.rs`.
//! `examples/xenstore_ring_bench.rs` times the xenstore benchmark.

pub mod cli;
pub mod demo;
pub mod xsdemo;
