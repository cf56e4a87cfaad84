//! The PV guest runtime: a Linux process that the toolstack (or a test)
//! starts as domain N of the hypervisor shim, and that runs `no_std`
//! frontends through the `xen-front-platform` trait. This crate is the
//! guest's kernel only: booting and attaching, the platform, the devices,
//! and the `xen-pvguest` binary. Guest programs with other roles link it as
//! a library (the plumbing demos in `tests/pvguest-demos`, the block load
//! generator in `tests/blkbench`); the Dom0 side of the tests is
//! `tests/testhost`.
//!
//! ```text
//!   xen-pvguest (domain N)                               Dom0
//!   ┌───────────────────────────────────┐     ┌──────────────────────────┐
//!   │ devices: blkfront → /dev/xvdX,    │     │ backendd: blkback,       │
//!   │ netfront → ethN, consfront → hvc0 │     │ netback, consback        │
//!   │   │ Platform trait                │     └────────────┬─────────────┘
//!   │ PvPlatform: pages, grants, evtchn │                  │
//!   │ EventHub + dispatcher thread      │                  │
//!   │ xen_shim_guest::Hypervisor ───────┼── control ── xen-shimd
//!   │   memory file (RAM, shared_info,  │                  │
//!   │   start_info, grant frames)  ◄────┼── data plane: mapped pages,
//!   └───────────────────────────────────┘   eventfds (no daemon hop)
//! ```
//!
//! Boot and attach:
//! - [`runtime`]: attach as domain N (domid and one-time token from argv or
//!   the environment), map the memory, read `start_info`, set up the grant
//!   table (`GNTTABOP_setup_table`), start the event dispatcher;
//! - [`boot`]: a guest program's life around its body (attach, console,
//!   `pvguest ready`, PV shutdown protocol, `SCHEDOP_shutdown`), shared by
//!   every guest program on this library; [`line`]: their report lines;
//! - [`cli`]: the `xen-pvguest` binary: its kernel command line
//!   ([`cmdline`], Linux's rules) boots the guest machine ([`machine`]:
//!   root from a PV disk or a ramdisk, [`initramfs`]; init as PID 1 in its
//!   own namespaces, [`guestns`]: a user namespace of its own with an
//!   idmapped root), or an init program of the host's file system, or
//!   idles; [`mountd`]: guest root's mounts of its own disks, made by the
//!   runtime (seccomp user notification, as LXD).
//!
//! Platform:
//! - [`events`]: the dispatcher (epoll over the ports' eventfds → Xen's
//!   2-level pending bits in `shared_info` → upcall → registered handlers)
//!   and the hub frontends wait on (`SCHEDOP_poll`);
//! - [`platform`]: [`platform::PvPlatform`], the platform trait for process
//!   guests; [`grefalloc`]: its grant references;
//! - [`xenstore`]: the domain's xenstore connection (the `xen-xenbus`
//!   client on the store ring and event channel from `start_info`) behind
//!   the platform's `xs_*` methods.
//!
//! Devices:
//! - [`vbd`]: blkfront as a synchronous block device; [`blockfile`]: a
//!   block device as a FUSE file; [`pvdisk`]: every `device/vbd` as
//!   `/dev/<vdev>` and the init run with them;
//! - [`pvnet`]: every `device/vif` as a TAP in the guest's network
//!   namespace;
//! - [`hotplug`]: devices attached and detached while the guest runs
//!   (`xl block-attach`, `xl network-attach`, their detaches);
//! - [`xenbusdev`]: `/dev/xen/xenbus` for the guest's programs (each open
//!   file a xenstore connection of its own, multiplexed over the domain's
//!   ring as Linux's `xenbus_dev_frontend` does);
//! - [`console`]: the guest's console (`hvc0`): `xen-consfront` on the
//!   console page, a pty as the runtime's stdio, a pump thread between them;
//! - [`control`]: Xen's PV shutdown protocol (`control/shutdown`).
//!
//! Confinement: [`jail`]: once set up, the runtime runs as its domain's
//! own host uid with a named kept capability set and a seccomp allow-list
//! (when the toolstack asks; `xen-jail` is the mechanism).

pub mod blockfile;
pub mod boot;
pub mod cli;
pub mod cmdline;
pub mod console;
pub mod control;
mod error;
pub mod events;
pub mod grefalloc;
pub mod guestns;
pub mod hotplug;
pub mod initramfs;
pub mod jail;
pub mod line;
pub mod machine;
pub mod mountd;
/// The guest-page allocator (shared with the PVHVM kernel).
pub use xen_front_platform::pagealloc;
pub mod platform;
pub mod pvdisk;
pub mod pvnet;
pub mod runtime;
pub mod vbd;
pub mod xenbusdev;
pub mod xenstore;

pub use error::PvGuestError;
