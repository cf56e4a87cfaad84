//! The xenstore nodes `xl create` writes, as libxl writes them for a PV
//! domain (`libxl__domain_make`, `libxl__build_post`,
//! `libxl__device_disk_add`), as a pure plan: paths, values, permissions.
//!
//! ```text
//! /local/domain/N            owner N               (libxl's rwperm)
//!   vm, name, domid, memory/{static-max,target}, store/{port,ring-ref},
//!   console/{port,ring-ref}, cpu/<i>/availability
//!   cpu, memory, device, control  owner 0, N may read (roperm)
//!   control/shutdown, control/feature-{poweroff,reboot,suspend},
//!   control/sysrq, data, drivers,
//!   feature, attr, error  owner N
//!   device/vbd/<devid>       owner N, backend domain may read
//!     backend, backend-id, state=1, virtual-device, device-type, trusted
//! /vm/<uuid>                 owner 0, N may read: uuid, name, start_time
//! /local/domain/0/backend/vbd/N/<devid>   owner 0, N may read
//!   frontend, frontend-id, online=1, state=1, params, type, mode, dev,
//!   removable, bootable, discard-enable
//! ```
//!
//! Which backend serves a disk follows `libxl__device_disk_set_backend`:
//! raw files and block devices go to `vbd` (`params` = the path, `type` =
//! `file` or `phy`); qcow2 images and NBD exports, which libxl's `phy`
//! cannot serve, go to `qdisk` (`backend/qdisk/N/<devid>`, `type` =
//! `qdisk`, `params` = `FORMAT:TARGET` with libxl's format names: `aio:`
//! for raw, `qcow2:`), as `backendtype=qdisk` does for any disk.

use xenstore_client::{Perm, PERM_NONE, PERM_READ};

use crate::disk::{Access, DevType, DiskSpec};

/// One directory whose permissions are set before its children are
/// written (children inherit them), or one node with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsOp {
    /// `mkdir` then `set_perms`.
    Dir {
        /// Path.
        path: String,
        /// Permissions (first: owner and default access).
        perms: Vec<Perm>,
    },
    /// `write`.
    Write {
        /// Path.
        path: String,
        /// Value.
        value: String,
    },
}

fn dir(path: impl Into<String>, perms: Vec<Perm>) -> XsOp {
    XsOp::Dir {
        path: path.into(),
        perms,
    }
}

fn w(path: impl Into<String>, value: impl Into<String>) -> XsOp {
    XsOp::Write {
        path: path.into(),
        value: value.into(),
    }
}

/// What the plan needs to know about a new domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPlan {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// `/vm/<uuid>` key.
    pub uuid: String,
    /// `memory`, MiB.
    pub memory_mib: u64,
    /// `maxmem`, MiB.
    pub maxmem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// xenstore ring gfn and event channel.
    pub store: (u64, u32),
    /// console ring gfn and event channel ([`console_ops`]).
    pub console: (u64, u32),
    /// Seconds since the epoch, for `/vm/<uuid>/start_time`.
    pub start_time: u64,
}

/// The domain's own nodes.
#[must_use]
pub fn domain_ops(p: &DomainPlan) -> Vec<XsOp> {
    let d = p.domid;
    let home = format!("/local/domain/{d}");
    let vm = format!("/vm/{}", p.uuid);
    let rw = vec![Perm::new(d, PERM_NONE)];
    let ro = vec![Perm::new(0, PERM_NONE), Perm::new(d, PERM_READ)];
    let mut ops = vec![
        dir(&home, rw.clone()),
        dir(&vm, ro.clone()),
        w(format!("{vm}/uuid"), &p.uuid),
        w(format!("{vm}/name"), &p.name),
        w(format!("{vm}/start_time"), p.start_time.to_string()),
    ];
    for sub in ["cpu", "memory", "device", "control"] {
        ops.push(dir(format!("{home}/{sub}"), ro.clone()));
    }
    for sub in [
        "control/shutdown",
        "control/feature-poweroff",
        "control/feature-reboot",
        // As libxl: the guest advertises suspend (PVHVM kernel) there,
        // and sysrq requests go there.
        "control/feature-suspend",
        "control/sysrq",
        "data",
        "drivers",
        "feature",
        "attr",
        "error",
    ] {
        ops.push(dir(format!("{home}/{sub}"), rw.clone()));
    }
    ops.extend([
        w(format!("{home}/vm"), &vm),
        w(format!("{home}/name"), &p.name),
        w(format!("{home}/domid"), d.to_string()),
        w(
            format!("{home}/memory/static-max"),
            (p.maxmem_mib.saturating_mul(1024)).to_string(),
        ),
        w(
            format!("{home}/memory/target"),
            (p.memory_mib.saturating_mul(1024)).to_string(),
        ),
        w(format!("{home}/store/port"), p.store.1.to_string()),
        w(format!("{home}/store/ring-ref"), p.store.0.to_string()),
    ]);
    for i in 0..p.vcpus {
        ops.push(w(format!("{home}/cpu/{i}/availability"), "online"));
    }
    ops
}

/// The domain's console nodes (`console` of [`DomainPlan`]), which consback
/// (xenconsoled's role) starts serving on as soon as they exist: written
/// with [`domain_ops`] for a new domain, but for a restored or migrated one
/// only once its memory is loaded (and it has its final name), as libxl
/// writes them in `libxl__build_post` after the stream: a console started
/// on the empty page would hold indices the stream then replaces.
#[must_use]
pub fn console_ops(domid: u16, console: (u64, u32)) -> Vec<XsOp> {
    let home = format!("/local/domain/{domid}");
    vec![
        w(format!("{home}/console/port"), console.1.to_string()),
        w(format!("{home}/console/ring-ref"), console.0.to_string()),
    ]
}

/// The frontend directory of a vbd.
#[must_use]
pub fn vbd_frontend_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

/// The backend directory of a vbd served by `backend_domid`.
#[must_use]
pub fn vbd_backend_path(backend_domid: u16, domid: u16, devid: u32) -> String {
    format!("/local/domain/{backend_domid}/backend/vbd/{domid}/{devid}")
}

/// The backend directory of a disk of backend kind `kind` (`vbd`,
/// `qdisk`).
#[must_use]
pub fn disk_backend_path(kind: &str, backend_domid: u16, domid: u16, devid: u32) -> String {
    format!("/local/domain/{backend_domid}/backend/{kind}/{domid}/{devid}")
}

/// How one disk is handed to its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDisk {
    /// Backend kind (the directory under `backend/`): `vbd` or `qdisk`.
    pub kind: &'static str,
    /// The `params` node.
    pub params: String,
    /// The `type` node: `phy`, `file` or `qdisk`.
    pub type_node: &'static str,
}

impl BackendDisk {
    /// A raw file or block device served by `vbd` (libxl's `phy`).
    #[must_use]
    pub fn vbd(path: &str, block_device: bool) -> Self {
        Self {
            kind: "vbd",
            params: path.to_owned(),
            type_node: backend_type(block_device),
        }
    }

    /// A disk served by `qdisk`: `params` = `FORMAT:TARGET` with libxl's
    /// format name (`libxl__device_disk_string_of_format`: raw is `aio`).
    #[must_use]
    pub fn qdisk(format: crate::disk::DiskFormat, target: &str) -> Self {
        use crate::disk::DiskFormat;
        let f = match format {
            DiskFormat::Raw => "aio",
            DiskFormat::Vhd => "vpc",
            other => other.as_str(),
        };
        Self {
            kind: "qdisk",
            params: format!("{f}:{target}"),
            type_node: "qdisk",
        }
    }
}

/// The backend `type` node for a target: `phy` for a block device, `file`
/// for an image (`io/blkif.h`'s documented values).
#[must_use]
pub fn backend_type(target_is_block_device: bool) -> &'static str {
    if target_is_block_device {
        "phy"
    } else {
        "file"
    }
}

/// The frontend and backend nodes of one raw disk served by `vbd`;
/// `params` is the absolute target path, `backend_domid` the serving
/// domain.
#[must_use]
pub fn vbd_ops(
    domid: u16,
    backend_domid: u16,
    disk: &DiskSpec,
    params: &str,
    block_device: bool,
) -> Vec<XsOp> {
    disk_ops(
        domid,
        backend_domid,
        disk,
        &BackendDisk::vbd(params, block_device),
    )
}

/// The frontend and backend nodes of one disk, served as `b` says.
#[must_use]
pub fn disk_ops(domid: u16, backend_domid: u16, disk: &DiskSpec, b: &BackendDisk) -> Vec<XsOp> {
    let fe = vbd_frontend_path(domid, disk.devid);
    let be = disk_backend_path(b.kind, backend_domid, domid, disk.devid);
    let cdrom = disk.devtype == DevType::Cdrom;
    vec![
        dir(
            &fe,
            vec![
                Perm::new(domid, PERM_NONE),
                Perm::new(backend_domid, PERM_READ),
            ],
        ),
        dir(
            &be,
            vec![
                Perm::new(backend_domid, PERM_NONE),
                Perm::new(domid, PERM_READ),
            ],
        ),
        w(format!("{be}/frontend"), &fe),
        w(format!("{be}/frontend-id"), domid.to_string()),
        w(format!("{be}/online"), "1"),
        w(format!("{be}/state"), "1"),
        w(format!("{be}/params"), &b.params),
        w(format!("{be}/type"), b.type_node),
        w(
            format!("{be}/mode"),
            match disk.access {
                Access::ReadOnly => "r",
                Access::ReadWrite => "w",
            },
        ),
        w(format!("{be}/dev"), &disk.vdev),
        w(format!("{be}/removable"), if cdrom { "1" } else { "0" }),
        w(format!("{be}/bootable"), "1"),
        w(
            format!("{be}/discard-enable"),
            if disk.discard == Some(false) {
                "0"
            } else {
                "1"
            },
        ),
        w(format!("{be}/device-type"), disk.devtype.as_str()),
        w(format!("{fe}/backend"), &be),
        w(format!("{fe}/backend-id"), backend_domid.to_string()),
        w(format!("{fe}/state"), "1"),
        w(format!("{fe}/virtual-device"), disk.devid.to_string()),
        w(format!("{fe}/device-type"), disk.devtype.as_str()),
        w(
            format!("{fe}/trusted"),
            if disk.trusted == Some(false) {
                "0"
            } else {
                "1"
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DomainPlan {
        DomainPlan {
            domid: 3,
            name: "g".into(),
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            memory_mib: 64,
            maxmem_mib: 128,
            vcpus: 2,
            store: (16386, 1),
            console: (16387, 2),
            start_time: 5,
        }
    }

    fn value<'a>(ops: &'a [XsOp], path: &str) -> Option<&'a str> {
        ops.iter().find_map(|o| match o {
            XsOp::Write { path: p, value } if p == path => Some(value.as_str()),
            _ => None,
        })
    }

    fn perms<'a>(ops: &'a [XsOp], path: &str) -> Option<&'a [Perm]> {
        ops.iter().find_map(|o| match o {
            XsOp::Dir { path: p, perms } if p == path => Some(perms.as_slice()),
            _ => None,
        })
    }

    #[test]
    fn test_domain_ops_libxl_nodes_and_perms() {
        let ops = domain_ops(&plan());
        assert_eq!(value(&ops, "/local/domain/3/name"), Some("g"));
        assert_eq!(value(&ops, "/local/domain/3/domid"), Some("3"));
        assert_eq!(
            value(&ops, "/local/domain/3/vm"),
            Some("/vm/00000000-0000-4000-8000-000000000001")
        );
        assert_eq!(value(&ops, "/local/domain/3/memory/target"), Some("65536"));
        assert_eq!(
            value(&ops, "/local/domain/3/memory/static-max"),
            Some("131072")
        );
        assert_eq!(value(&ops, "/local/domain/3/store/ring-ref"), Some("16386"));
        assert_eq!(
            value(&ops, "/local/domain/3/cpu/1/availability"),
            Some("online")
        );
        assert_eq!(
            perms(&ops, "/local/domain/3"),
            Some(&[Perm::new(3, PERM_NONE)][..])
        );
        assert_eq!(
            perms(&ops, "/local/domain/3/device"),
            Some(&[Perm::new(0, PERM_NONE), Perm::new(3, PERM_READ)][..])
        );
        // Directories come before the nodes written in them.
        let home_dir = ops
            .iter()
            .position(|o| matches!(o, XsOp::Dir { path, .. } if path == "/local/domain/3"))
            .expect("home dir");
        let name = ops
            .iter()
            .position(|o| matches!(o, XsOp::Write { path, .. } if path == "/local/domain/3/name"))
            .expect("name");
        assert!(home_dir < name);
        // The console nodes are a step of their own (after a restore's load).
        assert_eq!(value(&ops, "/local/domain/3/console/port"), None);
    }

    #[test]
    fn test_console_ops_port_and_ring_ref() {
        let ops = console_ops(3, (16387, 2));
        assert_eq!(value(&ops, "/local/domain/3/console/port"), Some("2"));
        assert_eq!(
            value(&ops, "/local/domain/3/console/ring-ref"),
            Some("16387")
        );
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn test_vbd_ops_frontend_and_backend_nodes() {
        let disk =
            DiskSpec::parse("format=raw, vdev=xvda, access=ro, target=/srv/d.img").expect("valid");
        let ops = vbd_ops(3, 0, &disk, "/srv/d.img", false);
        let fe = "/local/domain/3/device/vbd/51712";
        let be = "/local/domain/0/backend/vbd/3/51712";
        assert_eq!(value(&ops, &format!("{fe}/backend")), Some(be));
        assert_eq!(value(&ops, &format!("{fe}/backend-id")), Some("0"));
        assert_eq!(value(&ops, &format!("{fe}/state")), Some("1"));
        assert_eq!(value(&ops, &format!("{fe}/virtual-device")), Some("51712"));
        assert_eq!(value(&ops, &format!("{fe}/device-type")), Some("disk"));
        assert_eq!(value(&ops, &format!("{be}/frontend")), Some(fe));
        assert_eq!(value(&ops, &format!("{be}/frontend-id")), Some("3"));
        assert_eq!(value(&ops, &format!("{be}/online")), Some("1"));
        assert_eq!(value(&ops, &format!("{be}/params")), Some("/srv/d.img"));
        assert_eq!(value(&ops, &format!("{be}/type")), Some("file"));
        assert_eq!(value(&ops, &format!("{be}/mode")), Some("r"));
        assert_eq!(value(&ops, &format!("{be}/dev")), Some("xvda"));
        assert_eq!(value(&ops, &format!("{be}/removable")), Some("0"));
        assert_eq!(value(&ops, &format!("{be}/bootable")), Some("1"));
        assert_eq!(
            perms(&ops, fe),
            Some(&[Perm::new(3, PERM_NONE), Perm::new(0, PERM_READ)][..])
        );
        assert_eq!(
            perms(&ops, be),
            Some(&[Perm::new(0, PERM_NONE), Perm::new(3, PERM_READ)][..])
        );
    }

    #[test]
    fn test_vbd_ops_cdrom_block_device_no_discard() {
        let disk = DiskSpec::parse("/dev/sr0,,hdc,cdrom,no-discard,untrusted").expect("valid");
        let ops = vbd_ops(4, 0, &disk, "/dev/sr0", true);
        let be = vbd_backend_path(0, 4, disk.devid);
        let fe = vbd_frontend_path(4, disk.devid);
        assert_eq!(value(&ops, &format!("{be}/type")), Some("phy"));
        assert_eq!(value(&ops, &format!("{be}/removable")), Some("1"));
        assert_eq!(value(&ops, &format!("{be}/discard-enable")), Some("0"));
        assert_eq!(value(&ops, &format!("{fe}/device-type")), Some("cdrom"));
        assert_eq!(value(&ops, &format!("{fe}/trusted")), Some("0"));
    }

    #[test]
    fn test_disk_ops_qcow2_and_nbd_go_to_qdisk_as_libxl_writes_them() {
        use crate::disk::DiskFormat;
        let disk = DiskSpec::parse("format=qcow2, vdev=xvdb, target=/srv/d.qcow2").expect("valid");
        let ops = disk_ops(
            3,
            0,
            &disk,
            &BackendDisk::qdisk(DiskFormat::Qcow2, "/srv/d.qcow2"),
        );
        let fe = "/local/domain/3/device/vbd/51728";
        let be = "/local/domain/0/backend/qdisk/3/51728";
        assert_eq!(value(&ops, &format!("{fe}/backend")), Some(be));
        assert_eq!(
            value(&ops, &format!("{be}/params")),
            Some("qcow2:/srv/d.qcow2")
        );
        assert_eq!(value(&ops, &format!("{be}/type")), Some("qdisk"));
        assert_eq!(value(&ops, &format!("{be}/frontend")), Some(fe));
        let b = BackendDisk::qdisk(DiskFormat::Raw, "nbd://127.0.0.1:10809/e");
        assert_eq!(b.params, "aio:nbd://127.0.0.1:10809/e");
        assert_eq!(b.kind, "qdisk");
    }
}
