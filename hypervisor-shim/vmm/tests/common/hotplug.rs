//! Device hotplug for the tests, in one place: attach and detach are the
//! real `xl block-attach` / `network-attach` / `block-detach` /
//! `network-detach` (libxl's protocol: both directories in one
//! transaction, both ends Connected; `online` = 0 and `state` = Closing,
//! both ends Closed, both directories removed). A disk no backend serves
//! (a backend the test plays) is written with the toolstack's own plan
//! (`xsplan::disk_ops`, `toolstack::apply`, the code `xl create` uses).
//!
//! Also the leak probe: the grants a domain has granted (its grant table
//! as the shim sees it) and the grant mappings Dom0 holds on it (the pins
//! of the shim's active-grant table, which backendd's mappings make).

use std::path::Path;
use std::time::{Duration, Instant};

use xen_abi::grant_table::{GTF_type_mask, GNTTAB_NR_RESERVED_ENTRIES};
use xen_xl::disk::DiskSpec;
use xen_xl::vif::VifSpec;
use xen_xl::xsplan::{disk_backend_path, vbd_frontend_path, BackendDisk};
use xenstore_client::Client;

use super::{ok, Host};

/// The backend domain (Dom0).
const BACKEND: u16 = 0;

/// How a device is detached.
#[derive(Debug, Clone)]
enum Detach {
    /// `xl block-detach DOM VDEV`.
    Block(String),
    /// `xl network-detach DOM DEVID`.
    Network(u32),
}

/// A device attached by [`block_attach`], [`network_attach`] or
/// [`played_disk_attach`].
#[derive(Debug, Clone)]
pub struct Attached {
    /// Its frontend directory.
    pub frontend: String,
    /// Its backend directory.
    pub backend: String,
    how: Detach,
}

fn client(h: &Host) -> Client {
    Client::connect_path(h.xenstored_socket()).expect("connect to the test's xenstored")
}

/// Attaches disk `spec` (an xl disk specification of a raw image) to
/// domain `domid` with `xl block-attach` (which returns once both ends
/// are Connected).
pub fn block_attach(h: &Host, domid: u16, spec: &str) -> Attached {
    let disk = DiskSpec::parse(spec).unwrap_or_else(|e| panic!("disk spec {spec:?}: {e}"));
    let target = disk.target.clone().expect("a disk target");
    let b = BackendDisk::vbd(&target, false);
    ok(
        "xl block-attach",
        &h.xl(&["block-attach", &domid.to_string(), spec]),
    );
    Attached {
        frontend: vbd_frontend_path(domid, disk.devid),
        backend: disk_backend_path(b.kind, BACKEND, domid, disk.devid),
        how: Detach::Block(disk.vdev.clone()),
    }
}

/// Attaches disk `spec` with libxl's nodes but a backend directory of
/// kind `kind` that no backend serves: the test plays the backend by
/// writing its nodes (a hostile or broken backend). `xl block-detach`
/// removes it as any other.
pub fn played_disk_attach(h: &Host, domid: u16, spec: &str, kind: &'static str) -> Attached {
    let disk = DiskSpec::parse(spec).unwrap_or_else(|e| panic!("disk spec {spec:?}: {e}"));
    let b = BackendDisk {
        kind,
        params: String::new(),
        type_node: "file",
    };
    let ops = xen_xl::xsplan::disk_ops(domid, BACKEND, &disk, &b);
    xen_xl::toolstack::apply(&client(h), &ops).expect("write the disk's nodes");
    Attached {
        frontend: vbd_frontend_path(domid, disk.devid),
        backend: disk_backend_path(b.kind, BACKEND, domid, disk.devid),
        how: Detach::Block(disk.vdev.clone()),
    }
}

/// Attaches vif `spec` (an xl vif specification with its `mac=`) to
/// domain `domid` with `xl network-attach`, which must give it `devid`
/// (the next free one).
pub fn network_attach(h: &Host, domid: u16, devid: u32, spec: &str) -> Attached {
    VifSpec::parse(spec).unwrap_or_else(|e| panic!("vif spec {spec:?}: {e}"));
    ok(
        "xl network-attach",
        &h.xl(&["network-attach", &domid.to_string(), spec]),
    );
    let frontend = xen_xl::network::vif_frontend_path(domid, devid);
    assert!(
        h.xs_read(&format!("{frontend}/state")).is_some(),
        "xl network-attach gave the vif another devid than {devid}"
    );
    Attached {
        frontend,
        backend: xen_xl::network::vif_backend_path(BACKEND, domid, devid),
        how: Detach::Network(devid),
    }
}

/// Waits until `path` reads `want`; panics with `what` and guest
/// `name`'s console and VMM logs after `timeout`.
pub fn wait_node(h: &Host, name: &str, path: &str, want: &str, timeout: Duration, what: &str) {
    let t0 = Instant::now();
    loop {
        let v = h.xs_read(path);
        if v.as_deref() == Some(want) {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "{what}: {path} is {v:?}, not {want:?}, after {timeout:?}\nconsole log of {name}:\n{}\nVMM log:\n{}",
            h.log(name),
            h.vmm_log(name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Detaches a device of guest `name` with `xl block-detach` /
/// `xl network-detach` (libxl's: `online` = 0 and `state` = 5 (Closing),
/// both ends Closed (6), then both directories removed), and checks both
/// directories are gone. `timeout` bounds the wait for the nodes to go.
pub fn detach(h: &Host, name: &str, d: &Attached, timeout: Duration) {
    let out = match &d.how {
        Detach::Block(vdev) => h.xl(&["block-detach", name, vdev]),
        Detach::Network(devid) => h.xl(&["network-detach", name, &devid.to_string()]),
    };
    if !out.status.success() {
        panic!(
            "xl detach of {}: {}\nconsole log of {name}:\n{}\nVMM log:\n{}",
            d.frontend,
            String::from_utf8_lossy(&out.stderr),
            h.log(name),
            h.vmm_log(name)
        );
    }
    let t0 = Instant::now();
    while h.xs_read(&format!("{}/state", d.frontend)).is_some()
        || h.xs_read(&format!("{}/state", d.backend)).is_some()
    {
        assert!(
            t0.elapsed() < timeout,
            "{} or {} still there after xl's detach",
            d.frontend,
            d.backend
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a domain holds in grants: entries it grants (any type but
/// invalid) and the pins of Dom0's mappings of them, the reserved entries
/// (console, xenstore) aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantUse {
    /// Entries of its grant table in use.
    pub granted: u32,
    /// Pins of Dom0's mappings (backendd's) of its grants.
    pub pinned: u32,
}

/// Reads domain `domid`'s grant table and active pins through the shim.
pub fn grant_use(shim: &Path, domid: u16) -> GrantUse {
    let gnt = xen_shim_dom0::Gntdev::open(shim).expect("open a gntdev handle on the shim");
    let mut u = GrantUse {
        granted: 0,
        pinned: 0,
    };
    {
        let dom = gnt.domain(domid).expect("the domain's grant files");
        let table = dom.table().expect("the domain's grant table");
        let n = xen_shim_proto::grant::GrantTableView::nr_entries(&table);
        // The reserved entries are the toolstack's (the console and
        // xenstore rings, which consback and xenstored map).
        for gref in GNTTAB_NR_RESERVED_ENTRIES..n {
            if let Some((flags, _)) = xen_shim_proto::grant::entry_flags(&table, gref) {
                if flags & GTF_type_mask != 0 {
                    u.granted += 1;
                }
            }
            let pins = dom.active().pins(gref);
            u.pinned += (pins & 0xffff) + (pins >> 16);
        }
    }
    gnt.release_domain(domid);
    u
}

/// Waits until [`grant_use`] reads `want` (a transient frame in flight
/// may hold a grant for a moment); panics with the last reading after
/// `timeout`.
pub fn wait_grant_use(shim: &Path, domid: u16, want: GrantUse, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let u = grant_use(shim, domid);
        if u == want {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "domain {domid} holds {u:?} after {timeout:?}, {want:?} before the attach: a leak"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
