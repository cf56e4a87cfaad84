//! Device hotplug as libxl does it, for the tests, in one place (to be
//! swapped for `xl block-attach` / `network-attach` / `*-detach` when they
//! land): an attach writes the device's frontend and backend nodes with
//! the toolstack's own plan (`xsplan::disk_ops`, `network::vif_ops`,
//! `toolstack::apply`, the code `xl create` uses); a detach is libxl's
//! `libxl__initiate_device_generic_remove`: the backend's `online` = 0 and
//! `state` = Closing in one transaction, a wait until the backend and the
//! frontend are both Closed, then both directories removed.
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
use xenstore_client::{Client, XsOps};

use super::Host;

/// The backend domain (Dom0).
const BACKEND: u16 = 0;

/// A device attached by [`block_attach`] or [`network_attach`].
#[derive(Debug, Clone)]
pub struct Attached {
    /// Its frontend directory.
    pub frontend: String,
    /// Its backend directory.
    pub backend: String,
}

fn client(h: &Host) -> Client {
    Client::connect_path(h.xenstored_socket()).expect("connect to the test's xenstored")
}

/// Attaches disk `spec` (an xl disk specification of a raw image) to
/// domain `domid`, as `xl block-attach` (libxl) writes it.
pub fn block_attach(h: &Host, domid: u16, spec: &str) -> Attached {
    let disk = DiskSpec::parse(spec).unwrap_or_else(|e| panic!("disk spec {spec:?}: {e}"));
    let target = disk.target.clone().expect("a disk target");
    let b = BackendDisk::vbd(&target, false);
    let ops = xen_xl::xsplan::disk_ops(domid, BACKEND, &disk, &b);
    xen_xl::toolstack::apply(&client(h), &ops).expect("write the disk's nodes");
    Attached {
        frontend: vbd_frontend_path(domid, disk.devid),
        backend: disk_backend_path(b.kind, BACKEND, domid, disk.devid),
    }
}

/// Attaches disk `spec` with libxl's nodes but a backend directory of
/// kind `kind` that no backend serves: the test plays the backend by
/// writing its nodes (a hostile or broken backend).
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
    }
}

/// Attaches vif `devid` (an xl vif specification with its `mac=`) to
/// domain `domid`, as `xl network-attach` (libxl) writes it.
pub fn network_attach(h: &Host, domid: u16, devid: u32, spec: &str) -> Attached {
    let vif = VifSpec::parse(spec).unwrap_or_else(|e| panic!("vif spec {spec:?}: {e}"));
    let mac = vif.mac.expect("a mac= in the vif spec");
    let ops = xen_xl::network::vif_ops(domid, BACKEND, devid, &vif, mac);
    xen_xl::toolstack::apply(&client(h), &ops).expect("write the vif's nodes");
    Attached {
        frontend: xen_xl::network::vif_frontend_path(domid, devid),
        backend: xen_xl::network::vif_backend_path(BACKEND, domid, devid),
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

/// Detaches a device of guest `name` as libxl does: `online` = 0 and
/// `state` = 5 (Closing) in one transaction, both ends Closed (6) within
/// `timeout`, then both directories removed.
pub fn detach(h: &Host, name: &str, d: &Attached, timeout: Duration) {
    let xs = client(h);
    xs.transaction(|tx| {
        tx.write(&format!("{}/online", d.backend), "0")?;
        tx.write(&format!("{}/state", d.backend), "5")?;
        Ok(())
    })
    .expect("write online = 0, state = Closing");
    wait_node(
        h,
        name,
        &format!("{}/state", d.frontend),
        "6",
        timeout,
        "the frontend closes",
    );
    wait_node(
        h,
        name,
        &format!("{}/state", d.backend),
        "6",
        timeout,
        "the backend closes",
    );
    xs.transaction(|tx| {
        tx.rm(&d.frontend)?;
        tx.rm(&d.backend)?;
        Ok(())
    })
    .expect("remove the device's directories");
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
