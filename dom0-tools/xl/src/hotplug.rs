//! Device hotplug into running domains: `xl block-attach`/`block-detach`,
//! `xl network-attach`/`network-detach`, with libxl's xenstore protocol.
//!
//! Attach (`libxl__device_disk_add`, `libxl__device_nic_add`): the
//! frontend and backend directories are written in one transaction, the
//! same nodes `xl create` writes ([`crate::xsplan::disk_ops`],
//! [`crate::network::vif_ops`]); the transaction first checks that the
//! device is free, so a vdev in use writes nothing. Then it waits for the
//! backend (`backendd`) and the guest's frontend to reach Connected; a
//! backend that refuses the device (its `error/` node), or a guest that
//! does not connect it within the timeout, has both directories removed
//! again and the attach fails with the reason.
//!
//! Detach (`libxl__initiate_device_generic_remove`): the backend's
//! `online` = 0 and `state` = 5 (Closing) in one transaction; the guest's
//! frontend closes (Closed) and the backend follows (Closed); then both
//! directories (and the backend's error node) are removed. A guest that
//! still uses the device refuses to close (its frontend stays Connected):
//! the detach gives up after the timeout, puts the backend back to
//! Connected with `online` = 1 (the guest cancels its pending close) and
//! fails with a clear error. With `force` the directories are removed at
//! once: the backend disconnects (unmapping the grants), the guest's
//! in-flight I/O fails with EIO and the device disappears.
//!
//! The library functions ([`block_attach`], [`block_detach`],
//! [`network_attach`], [`network_detach`]) take a domain id and parsed
//! specifications; the verbs (`xl block-attach DOM DISKSPEC`...) resolve
//! names and parse specifications first.

use std::path::Path;
use std::time::{Duration, Instant};

use xen_abi::io::xenbus::XenbusState;
use xen_shim_dom0::Control;
use xen_shim_proto::layout::DomainType;
use xenstore_client::{Client, XsOps};

use crate::disk::{DiskSpec, DiskSpecError};
use crate::toolstack::{
    self, apply_in, find_domain, shim, xenstore, xs_err, ToolstackError, BACKEND_DOMID,
};
use crate::vif::{VifSpec, VifSpecError};
use crate::xsplan;

/// How long an attach waits for both ends to reach Connected.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a detach waits for both ends to close (libxl's
/// `LIBXL_DESTROY_TIMEOUT`).
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the ends' states are read while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Most vifs of one domain (devid 0..MAX_VIFS).
pub const MAX_VIFS: u32 = 64;

/// Errors of hotplug.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// A toolstack operation failed (no such domain, shim, xenstore, a
    /// disk target that cannot be used, a backend that refused).
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    /// The disk specification does not parse.
    #[error("invalid disk specification \"{spec}\"")]
    DiskSpec {
        /// The specification as given.
        spec: String,
        /// Why.
        #[source]
        source: DiskSpecError,
    },
    /// The vif specification does not parse.
    #[error("invalid vif specification \"{spec}\"")]
    VifSpec {
        /// The specification as given.
        spec: String,
        /// Why.
        #[source]
        source: VifSpecError,
    },
    /// Domain-0's devices are not hot-plugged.
    #[error("cannot hot-plug devices into Domain-0")]
    Domain0,
    /// The device is already attached.
    #[error("domain {domid}: {what} is already attached ({path})")]
    InUse {
        /// Domain.
        domid: u16,
        /// The device (`vbd xvdb`).
        what: String,
        /// Its frontend or backend directory.
        path: String,
    },
    /// No such device.
    #[error("domain {domid} has no {what}")]
    NoDevice {
        /// Domain.
        domid: u16,
        /// The device asked for (`vbd xvdc`, `vif 3`).
        what: String,
    },
    /// Something this toolstack does not hot-plug.
    #[error("{0}")]
    Unsupported(String),
    /// An end did not connect in time (both directories were removed).
    #[error(
        "domain {domid}: {what} did not connect within {secs} s (backend state {backend}, \
         frontend state {frontend}); the device was removed again"
    )]
    AttachTimeout {
        /// Domain.
        domid: u16,
        /// The device.
        what: String,
        /// Seconds waited.
        secs: u64,
        /// The backend's state then.
        backend: String,
        /// The frontend's state then.
        frontend: String,
    },
    /// The backend refused the device (its error node; both directories
    /// were removed).
    #[error("domain {domid}: the backend refused {what}: {msg}")]
    Refused {
        /// Domain.
        domid: u16,
        /// The device.
        what: String,
        /// backendd's message.
        msg: String,
    },
    /// The guest refused the device (its error node; both directories
    /// were removed).
    #[error("domain {domid} refused {what}: {msg}")]
    GuestRefused {
        /// Domain.
        domid: u16,
        /// The device.
        what: String,
        /// The guest's message.
        msg: String,
    },
    /// The guest did not release the device in time (it still uses it);
    /// the device stays attached.
    #[error(
        "domain {domid} did not release {what} within {secs} s (frontend state {frontend}: \
         the guest still uses it); it stays attached; use --force to remove it regardless"
    )]
    DetachTimeout {
        /// Domain.
        domid: u16,
        /// The device.
        what: String,
        /// Seconds waited.
        secs: u64,
        /// The frontend's state then.
        frontend: String,
    },
}

/// How an attach or a detach waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For both ends to connect.
    pub attach: Duration,
    /// For both ends to close.
    pub detach: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            attach: ATTACH_TIMEOUT,
            detach: DETACH_TIMEOUT,
        }
    }
}

/// An attached device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Domain.
    pub domid: u16,
    /// Device id (the vbd's number, the vif's index).
    pub devid: u32,
    /// Frontend directory.
    pub frontend: String,
    /// Backend directory.
    pub backend: String,
    /// The vif's MAC (`aa:bb:...`); `None` for a disk.
    pub mac: Option<String>,
}

/// The running (not Domain-0) domain `domid`.
fn guest(
    control: &Control,
    domid: u16,
) -> Result<xen_shim_proto::protocol::DomainInfo, HotplugError> {
    if domid == 0 {
        return Err(HotplugError::Domain0);
    }
    Ok(find_domain(control, &domid.to_string())?)
}

/// A node's value as a trimmed string.
fn read(xs: &Client, path: &str) -> Option<String> {
    xs.read_opt(path).ok().flatten().map(|v| {
        String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .trim()
            .to_owned()
    })
}

/// A `state` node as a xenbus state (`None`: absent or not a state).
fn state(xs: &Client, dir: &str) -> Option<XenbusState> {
    xs.read_opt(&format!("{dir}/state"))
        .ok()
        .flatten()
        .and_then(|v| XenbusState::parse_bytes(&v).ok())
}

fn state_name(s: Option<XenbusState>) -> String {
    s.map_or_else(|| "absent".to_owned(), |s| s.as_u32().to_string())
}

/// The backend's error node (`/local/domain/0/error/<backend path>/error`)
/// of a backend directory.
fn error_dir(backend: &str) -> Option<String> {
    let rel = backend.strip_prefix("/local/domain/")?;
    let (be_dom, rest) = rel.split_once('/')?;
    Some(format!("/local/domain/{be_dom}/error/{rest}"))
}

/// The guest's error node of a frontend directory (Xen's
/// `xenbus_dev_fatal` from the frontend:
/// `/local/domain/N/error/device/<kind>/<devid>/error`).
fn guest_error_node(frontend: &str) -> Option<String> {
    let (home, dev) = frontend.split_once("/device/")?;
    Some(format!("{home}/error/device/{dev}/error"))
}

/// Removes a device's two directories (and the backend's and the guest's
/// error nodes) in one transaction.
fn remove_device(xs: &Client, frontend: &str, backend: &str) -> Result<(), HotplugError> {
    let err = error_dir(backend);
    let guest_err =
        guest_error_node(frontend).and_then(|e| e.strip_suffix("/error").map(str::to_owned));
    xs.transaction(|tx| {
        for p in [
            Some(frontend),
            Some(backend),
            err.as_deref(),
            guest_err.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            match tx.rm(p) {
                Ok(()) => {}
                Err(e) if e.is_enoent() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .map_err(xs_err(format!("remove {frontend} and {backend}")))?;
    Ok(())
}

/// Removes the error nodes an earlier device of that number left.
fn clear_error_nodes(xs: &Client, frontend: &str, backend: &str) {
    if let Some(e) = error_dir(backend) {
        let _ = xs.rm(&e);
    }
    if let Some(e) = guest_error_node(frontend) {
        let _ = xs.rm(&e);
    }
}

/// Writes `ops` unless `frontend` or `backend` exists already (checked in
/// the same transaction: nothing is written for a device in use).
fn write_new_device(
    xs: &Client,
    domid: u16,
    what: &str,
    frontend: &str,
    backend: &str,
    ops: &[xsplan::XsOp],
) -> Result<(), HotplugError> {
    let taken = xs
        .transaction(|tx| {
            for p in [frontend, backend] {
                if tx.read_opt(p)?.is_some() {
                    return Ok(Some(p.to_owned()));
                }
            }
            apply_in(tx, ops)?;
            Ok(None)
        })
        .map_err(xs_err(format!("write the nodes of {what}")))?;
    match taken {
        Some(path) => Err(HotplugError::InUse {
            domid,
            what: what.to_owned(),
            path,
        }),
        None => Ok(()),
    }
}

/// Waits until both ends of a new device are Connected; on a backend
/// error or the timeout, removes the device again and fails.
fn wait_connected(
    xs: &Client,
    domid: u16,
    what: &str,
    frontend: &str,
    backend: &str,
    timeout: Duration,
) -> Result<(), HotplugError> {
    let err_node = error_dir(backend).map(|d| format!("{d}/error"));
    let guest_err = guest_error_node(frontend);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = guest_err.as_deref().and_then(|p| read(xs, p)) {
            let _ = remove_device(xs, frontend, backend);
            let msg = e.split_once(' ').map_or(e.as_str(), |(_, m)| m).to_owned();
            return Err(HotplugError::GuestRefused {
                domid,
                what: what.to_owned(),
                msg,
            });
        }
        if let Some(e) = err_node.as_deref().and_then(|p| read(xs, p)) {
            let _ = remove_device(xs, frontend, backend);
            // backendd writes "<errno> <message>".
            let msg = e.split_once(' ').map_or(e.as_str(), |(_, m)| m).to_owned();
            return Err(HotplugError::Refused {
                domid,
                what: what.to_owned(),
                msg,
            });
        }
        let (be, fe) = (state(xs, backend), state(xs, frontend));
        if be == Some(XenbusState::Connected) && fe == Some(XenbusState::Connected) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = remove_device(xs, frontend, backend);
            return Err(HotplugError::AttachTimeout {
                domid,
                what: what.to_owned(),
                secs: timeout.as_secs(),
                backend: state_name(be),
                frontend: state_name(fe),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Closes a device as libxl does (see the [module docs](self)) and removes
/// its directories.
fn close_device(
    xs: &Client,
    domid: u16,
    what: &str,
    frontend: &str,
    backend: &str,
    force: bool,
    timeout: Duration,
) -> Result<(), HotplugError> {
    if force {
        return remove_device(xs, frontend, backend);
    }
    let (online, st) = (format!("{backend}/online"), format!("{backend}/state"));
    xs.transaction(|tx| {
        if tx.read_opt(&st)?.is_none() {
            return Ok(());
        }
        tx.write(&online, "0")?;
        let cur = tx
            .read_opt(&st)?
            .and_then(|v| XenbusState::parse_bytes(&v).ok());
        if cur != Some(XenbusState::Closed) {
            tx.write(&st, XenbusState::Closing.as_xenstore_str())?;
        }
        Ok(())
    })
    .map_err(xs_err(format!("close {backend}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        let (be, fe) = (state(xs, backend), state(xs, frontend));
        let fe_closed = matches!(fe, None | Some(XenbusState::Closed));
        if fe_closed && matches!(be, None | Some(XenbusState::Closed)) {
            return remove_device(xs, frontend, backend);
        }
        if Instant::now() >= deadline {
            if fe == Some(XenbusState::Connected) {
                // The guest refused (Xen: "device in use; refusing to
                // close"): the device goes back to service.
                let _ = xs.transaction(|tx| {
                    if tx.read_opt(&st)?.is_some() {
                        tx.write(&online, "1")?;
                        tx.write(&st, XenbusState::Connected.as_xenstore_str())?;
                    }
                    Ok(())
                });
            }
            return Err(HotplugError::DetachTimeout {
                domid,
                what: what.to_owned(),
                secs: timeout.as_secs(),
                frontend: state_name(fe),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// `xl block-attach`: attaches `disk` to the running domain `domid`
/// (relative targets are taken from `cwd`) and waits until both ends are
/// Connected.
///
/// # Errors
/// No such domain or Domain-0, a target that cannot be used, a vdev in
/// use, the backend's refusal, the timeout, a shim/xenstore failure.
pub fn block_attach(
    domid: u16,
    disk: &DiskSpec,
    cwd: &Path,
    t: Timeouts,
) -> Result<Attached, HotplugError> {
    let control = shim(false)?;
    let d = guest(&control, domid)?;
    if d.kind != DomainType::Pv && toolstack::is_emulated(disk) {
        return Err(HotplugError::Unsupported(format!(
            "disk {}: an emulated (hd*) disk cannot be hot-plugged; use an xvd* vdev",
            disk.vdev
        )));
    }
    let target = toolstack::disk_target(disk, cwd)?;
    let xs = xenstore(false)?;
    toolstack::ensure_backendd()?;
    let frontend = xsplan::vbd_frontend_path(domid, disk.devid);
    let backend = xsplan::disk_backend_path(target.kind, BACKEND_DOMID, domid, disk.devid);
    let what = format!("vbd {}", disk.vdev);
    clear_error_nodes(&xs, &frontend, &backend);
    let ops = xsplan::disk_ops(domid, BACKEND_DOMID, disk, &target);
    write_new_device(&xs, domid, &what, &frontend, &backend, &ops)?;
    wait_connected(&xs, domid, &what, &frontend, &backend, t.attach)?;
    Ok(Attached {
        domid,
        devid: disk.devid,
        frontend,
        backend,
        mac: None,
    })
}

/// The frontend and backend directories of the domain's vbd `vdev` (a
/// name such as `xvdb` or a device number).
fn find_vbd(xs: &Client, domid: u16, vdev: &str) -> Result<(String, String), HotplugError> {
    let devid = crate::disk::vdev_to_devid(vdev).ok_or_else(|| {
        HotplugError::Unsupported(format!(
            "\"{vdev}\" is not a virtual device name (xvdb, 51728)"
        ))
    })?;
    let frontend = xsplan::vbd_frontend_path(domid, devid);
    let backend = read(xs, &format!("{frontend}/backend"))
        .or_else(|| {
            ["vbd", "qdisk"].iter().find_map(|k| {
                let b = xsplan::disk_backend_path(k, BACKEND_DOMID, domid, devid);
                xs.read_opt(&b).ok().flatten().map(|_| b)
            })
        })
        .ok_or_else(|| HotplugError::NoDevice {
            domid,
            what: format!("vbd {vdev}"),
        })?;
    check_backend_path(domid, &backend, &["vbd", "qdisk"])?;
    Ok((frontend, backend))
}

/// A backend path named by the guest's frontend must be one of ours: the
/// guest writes its frontend directory.
fn check_backend_path(domid: u16, backend: &str, kinds: &[&str]) -> Result<(), HotplugError> {
    let ok = kinds.iter().any(|k| {
        backend
            .strip_prefix(&format!(
                "/local/domain/{BACKEND_DOMID}/backend/{k}/{domid}/"
            ))
            .is_some_and(|dev| !dev.is_empty() && dev.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(())
    } else {
        Err(HotplugError::Unsupported(format!(
            "domain {domid}: the frontend names the backend {backend:?}, not one of this toolstack's"
        )))
    }
}

/// `xl block-detach`: closes the domain's vbd `vdev` (waiting for the
/// guest to release it unless `force`) and removes it.
///
/// # Errors
/// No such domain or vbd, the guest did not release it in time, a
/// shim/xenstore failure.
pub fn block_detach(domid: u16, vdev: &str, force: bool, t: Timeouts) -> Result<(), HotplugError> {
    let control = shim(false)?;
    guest(&control, domid)?;
    let xs = xenstore(false)?;
    let (frontend, backend) = find_vbd(&xs, domid, vdev)?;
    close_device(
        &xs,
        domid,
        &format!("vbd {vdev}"),
        &frontend,
        &backend,
        force,
        t.detach,
    )
}

/// `xl network-attach`: attaches a vif as `vif` says (the next free device
/// id; a random `00:16:3e` MAC unless given) and waits until both ends are
/// Connected.
///
/// # Errors
/// No such domain or Domain-0, a MAC in use, no free device id, the
/// backend's refusal (a missing bridge), the timeout, a shim/xenstore
/// failure.
pub fn network_attach(domid: u16, vif: &VifSpec, t: Timeouts) -> Result<Attached, HotplugError> {
    let control = shim(false)?;
    guest(&control, domid)?;
    if vif
        .backend
        .as_deref()
        .is_some_and(|b| b != "0" && b != "Domain-0")
    {
        return Err(HotplugError::Unsupported(
            "vif backend: only Domain-0 serves vifs (driver domains are not supported)".into(),
        ));
    }
    let xs = xenstore(false)?;
    toolstack::ensure_backendd()?;
    let fe_dir = format!("/local/domain/{domid}/device/vif");
    let existing: Vec<u32> = toolstack::list_or_empty(&xs, &fe_dir)
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let mac = match vif.mac {
        Some(m) => m,
        None => crate::network::random_mac()?,
    };
    let mac_s = crate::network::format_mac(mac);
    for dev in &existing {
        if read(&xs, &format!("{fe_dir}/{dev}/mac")).is_some_and(|m| m.eq_ignore_ascii_case(&mac_s))
        {
            return Err(HotplugError::InUse {
                domid,
                what: format!("MAC {mac_s}"),
                path: format!("{fe_dir}/{dev}"),
            });
        }
    }
    // libxl: one past the highest device id in use.
    let devid = existing.iter().max().map_or(0, |m| m + 1);
    if devid >= MAX_VIFS {
        return Err(HotplugError::Unsupported(format!(
            "domain {domid}: no free vif device id (most {MAX_VIFS})"
        )));
    }
    let frontend = crate::network::vif_frontend_path(domid, devid);
    let backend = crate::network::vif_backend_path(BACKEND_DOMID, domid, devid);
    let what = format!("vif {devid}");
    clear_error_nodes(&xs, &frontend, &backend);
    let ops = crate::network::vif_ops(domid, BACKEND_DOMID, devid, vif, mac);
    write_new_device(&xs, domid, &what, &frontend, &backend, &ops)?;
    wait_connected(&xs, domid, &what, &frontend, &backend, t.attach)?;
    Ok(Attached {
        domid,
        devid,
        frontend,
        backend,
        mac: Some(mac_s),
    })
}

/// `xl network-detach`: closes the domain's vif `which` (its device id or
/// its MAC) and removes it; `force` removes it without waiting for the
/// guest.
///
/// # Errors
/// No such domain or vif, the guest did not close it in time, a
/// shim/xenstore failure.
pub fn network_detach(
    domid: u16,
    which: &str,
    force: bool,
    t: Timeouts,
) -> Result<(), HotplugError> {
    let control = shim(false)?;
    guest(&control, domid)?;
    let xs = xenstore(false)?;
    let fe_dir = format!("/local/domain/{domid}/device/vif");
    let devid = if let Ok(n) = which.parse::<u32>() {
        toolstack::list_or_empty(&xs, &fe_dir)
            .iter()
            .any(|d| d.parse() == Ok(n))
            .then_some(n)
    } else {
        let mac = crate::vif::parse_mac(which).ok_or_else(|| {
            HotplugError::Unsupported(format!("\"{which}\" is neither a device id nor a MAC"))
        })?;
        let mac = crate::network::format_mac(mac);
        toolstack::list_or_empty(&xs, &fe_dir)
            .iter()
            .filter_map(|d| d.parse::<u32>().ok())
            .find(|d| {
                read(&xs, &format!("{fe_dir}/{d}/mac"))
                    .is_some_and(|m| m.eq_ignore_ascii_case(&mac))
            })
    };
    let devid = devid.ok_or_else(|| HotplugError::NoDevice {
        domid,
        what: format!("vif {which}"),
    })?;
    let frontend = crate::network::vif_frontend_path(domid, devid);
    let backend = read(&xs, &format!("{frontend}/backend"))
        .unwrap_or_else(|| crate::network::vif_backend_path(BACKEND_DOMID, domid, devid));
    check_backend_path(domid, &backend, &["vif"])?;
    close_device(
        &xs,
        domid,
        &format!("vif {devid}"),
        &frontend,
        &backend,
        force,
        t.detach,
    )
}

/// The domain id of `which` (a name or an id).
fn domid_of(which: &str) -> Result<u16, HotplugError> {
    let control = shim(false)?;
    Ok(find_domain(&control, which)?.domid)
}

/// `xl block-attach DOMAIN DISKSPEC...` (the words of the specification
/// are joined with `,`, as xl does); prints nothing on success.
///
/// # Errors
/// As [`block_attach`], or a bad specification (named in the error).
pub fn block_attach_verb(which: &str, spec: &[String]) -> Result<Attached, HotplugError> {
    let spec = spec.join(",");
    let disk = DiskSpec::parse(&spec).map_err(|source| HotplugError::DiskSpec {
        spec: spec.clone(),
        source,
    })?;
    let domid = domid_of(which)?;
    let cwd = std::env::current_dir().map_err(|source| ToolstackError::Io {
        what: "read the current directory".into(),
        source,
    })?;
    block_attach(domid, &disk, &cwd, Timeouts::default())
}

/// `xl block-detach DOMAIN VDEV [--force]`.
///
/// # Errors
/// As [`block_detach`].
pub fn block_detach_verb(which: &str, vdev: &str, force: bool) -> Result<(), HotplugError> {
    block_detach(domid_of(which)?, vdev, force, Timeouts::default())
}

/// `xl network-attach DOMAIN [KEY=VALUE...]` (the words joined with `,`).
///
/// # Errors
/// As [`network_attach`], or a bad specification (named in the error).
pub fn network_attach_verb(which: &str, spec: &[String]) -> Result<Attached, HotplugError> {
    let spec = spec.join(",");
    let vif = VifSpec::parse(&spec).map_err(|source| HotplugError::VifSpec {
        spec: spec.clone(),
        source,
    })?;
    network_attach(domid_of(which)?, &vif, Timeouts::default())
}

/// `xl network-detach DOMAIN DEVID|MAC [--force]`.
///
/// # Errors
/// As [`network_detach`].
pub fn network_detach_verb(which: &str, dev: &str, force: bool) -> Result<(), HotplugError> {
    network_detach(domid_of(which)?, dev, force, Timeouts::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_dir_of_backend_is_xen_error_node_dir() {
        assert_eq!(
            error_dir("/local/domain/0/backend/vbd/3/51728").as_deref(),
            Some("/local/domain/0/error/backend/vbd/3/51728")
        );
        assert_eq!(error_dir("/x"), None);
    }

    #[test]
    fn test_guest_error_node_is_under_the_guests_error_dir() {
        assert_eq!(
            guest_error_node("/local/domain/3/device/vif/1").as_deref(),
            Some("/local/domain/3/error/device/vif/1/error")
        );
    }

    #[test]
    fn test_check_backend_path_refuses_paths_outside_the_domains_backends() {
        assert!(check_backend_path(3, "/local/domain/0/backend/vbd/3/51728", &["vbd"]).is_ok());
        assert!(check_backend_path(
            3,
            "/local/domain/0/backend/qdisk/3/51728",
            &["vbd", "qdisk"]
        )
        .is_ok());
        for bad in [
            "/local/domain/0/backend/vbd/4/51728",
            "/local/domain/0/backend/vif/3/0",
            "/local/domain/0/backend/vbd/3/../../x",
            "/local/domain/0/backend/vbd/3/",
            "/vm/x",
        ] {
            let e = check_backend_path(3, bad, &["vbd"]).expect_err(bad);
            assert!(e.to_string().contains("not one of this toolstack's"), "{e}");
        }
    }

    #[test]
    fn test_verbs_bad_specs_are_named_before_any_connection() {
        let e = block_attach_verb("1", &["format=bogus, vdev=xvdb, target=/x".into()])
            .expect_err("bad format");
        assert!(
            matches!(e, HotplugError::DiskSpec { .. })
                && e.to_string().contains("format=bogus, vdev=xvdb, target=/x"),
            "{e}"
        );
        let e = network_attach_verb("1", &["mac=zz".into()]).expect_err("bad mac");
        assert!(
            matches!(e, HotplugError::VifSpec { .. }) && e.to_string().contains("mac=zz"),
            "{e}"
        );
    }
}
