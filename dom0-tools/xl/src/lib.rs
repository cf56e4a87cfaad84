//! The `xl` toolstack.
//!
//! - [`config`]: the `xl.cfg` parser (Xen's syntax; errors name file and
//!   line), with [`disk`] (`xl-disk-configuration(5)`, vdev → devid as in
//!   `xen-vbd-interface(7)`) and [`vif`] (`xl-network-configuration(5)`);
//! - [`xsplan`]: the xenstore nodes and permissions libxl writes for a PV
//!   domain and its vbds, as a pure plan;
//! - [`toolstack`]: the verbs (`create`, `list`, `destroy`, `pause`,
//!   `unpause`, `shutdown`/`reboot`, `block-list`) over the shim's
//!   `dom0::Control` and `xenstore-client`;
//! - [`console`]: `xl console` (the pty consback publishes, raw mode,
//!   `Ctrl-]` detaches);
//! - [`network`]: the vif nodes (libxl's), MACs in `00:16:3e`,
//!   `network-list`;
//! - [`hotplug`]: `block-attach`/`block-detach`, `network-attach`/
//!   `network-detach` into running domains (libxl's protocol);
//! - [`resources`]: each domain's cgroup (memory, vCPUs, `cpus=`, tasks)
//!   and the figures of `xl list`;
//! - [`monitor`]: the per-domain watcher `xl create` leaves behind, which
//!   applies `on_poweroff`/`on_reboot`/`on_crash`/`on_watchdog`;
//! - [`stat`]: the figures of the host and its domains in one pass (Xen's
//!   `libxenstat`), with its two views [`top`] (`xl top`, xentop's table)
//!   and [`metrics`] (`xl metrics`, Prometheus over HTTP);
//! - [`info`]: `xl info`, `uptime`, `vcpu-list`, `domid`, `domname`,
//!   `list -l` and `create -n`'s JSON;
//! - [`saverestore`]: `xl save` / `xl restore` of PVHVM guests in Xen 4.17's
//!   save file format, through the VMM's control socket;
//! - [`daemons`]: starting `xen-shimd`, `xenstored` and `backendd` when
//!   none run, each under [`supervise`] (`xen-supervise`, which restarts
//!   it when it dies); [`cli`]: the binary.

pub mod cli;
pub mod config;
pub mod console;
pub mod daemons;
pub mod disk;
pub mod hotplug;
pub mod info;
pub mod mem;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod network;
pub mod resources;
pub mod saverestore;
pub mod sched;
pub mod stat;
pub mod supervise;
pub mod toolstack;
pub mod top;
pub mod vif;
pub mod xsplan;
