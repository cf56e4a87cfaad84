//! `repr(C)` mirrors of the Xen public headers used by a split-driver PV I/O
//! stack: shared info, grant tables, event channels, the shared-ring layout and
//! the block, network, console, xenstore and xenbus protocols.
//!
//! Every type keeps the name and field names of its C counterpart (so
//! `blkif_request`, `netif_tx_request`, `shared_info`...), is `#[repr(C)]`,
//! and derives the `zerocopy` traits `FromBytes`, `IntoBytes`, `KnownLayout`
//! and `Immutable`. Where the C compiler would insert padding, the Rust
//! struct has an explicit `_padN` field instead (zerocopy forbids implicit
//! padding in `IntoBytes` types); those fields are not in the headers.
//!
//! C unions are modelled as a struct holding an integer array with the union's
//! size and alignment, plus typed accessors (`member()`, `set_member()`,
//! `from_member()`), because zerocopy cannot derive `IntoBytes` on unions.
//!
//! The layout is x86_64 (LP64). The reference is the Xen 4.17 public headers
//! (`/usr/include/xen`, Debian `libxen-dev`); where a definition depends on
//! `__XEN_INTERFACE_VERSION__`, this crate mirrors the latest interface
//! ([`xen::__XEN_LATEST_INTERFACE_VERSION__`]), whose layouts are identical to
//! the legacy (default) interface. The integration test `tests/layout.rs`
//! compiles a C program against those headers and checks the size, alignment
//! and every field offset of every struct here, and the value of every
//! constant that the headers define.
//!
//! Modules:
//! - [`xen`], from `xen.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_64.h`, `sched.h`.
//! - [`grant_table`], from `grant_table.h`.
//! - [`event_channel`], from `event_channel.h`.
//! - [`memory`], from `memory.h` (the reservation operations).
//! - [`io::ring`], [`io::blkif`], [`io::netif`], [`io::console`],
//!   [`io::xs_wire`], [`io::xenbus`], [`io::protocols`], from the `io/` headers.
#![no_std]
#![deny(missing_docs)]

pub mod event_channel;
pub mod grant_table;
pub mod io;
pub mod memory;
pub mod pvhvm;
pub mod xen;

mod union;
