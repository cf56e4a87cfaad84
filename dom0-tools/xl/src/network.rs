//! Network devices: the xenstore nodes libxl writes for a PV vif (as a
//! pure plan), MAC generation in Xen's `00:16:3e` OUI, and `xl
//! network-list`.
//!
//! Backend `/local/domain/<be>/backend/vif/<domid>/<devid>`: `frontend`,
//! `frontend-id`, `online`, `state`, `script`, `mac`, `bridge`, `handle`,
//! `type`, and `ip`/`mtu`/`vifname` when given. Frontend
//! `/local/domain/<domid>/device/vif/<devid>`: `backend`, `backend-id`,
//! `state`, `handle`, `mac`. The backend (`backendd`'s netback) creates the
//! TAP `vif<domid>.<devid>` on the bridge; removing the backend directory
//! (`xl destroy`) removes the TAP and its bridge port.

use std::io::{Read, Write};

use xenstore_client::{Perm, XsOps, PERM_NONE, PERM_READ};

use crate::toolstack::{find_domain, shim, xenstore, ToolstackError};
use crate::vif::VifSpec;
use crate::xsplan::XsOp;

/// Xen's vif-bridge hotplug script (written as libxl does; backendd does
/// its work itself).
pub const VIF_SCRIPT: &str = "/etc/xen/scripts/vif-bridge";

/// `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A random MAC in Xen's OUI (`00:16:3e:xx:xx:xx`, the last three octets
/// random, as libxl does).
///
/// # Errors
/// [`ToolstackError::Io`] if `/dev/urandom` is unreadable.
pub fn random_mac() -> Result<[u8; 6], ToolstackError> {
    let mut b = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|source| ToolstackError::Io {
            what: "read /dev/urandom".into(),
            source,
        })?;
    Ok([0x00, 0x16, 0x3e, b[0] & 0x7f, b[1], b[2]])
}

/// The frontend directory of vif `devid`.
#[must_use]
pub fn vif_frontend_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vif/{devid}")
}

/// The backend directory of vif `devid`.
#[must_use]
pub fn vif_backend_path(backend_domid: u16, domid: u16, devid: u32) -> String {
    format!("/local/domain/{backend_domid}/backend/vif/{domid}/{devid}")
}

fn dir(path: String, perms: Vec<Perm>) -> XsOp {
    XsOp::Dir { path, perms }
}

fn w(path: String, value: impl Into<String>) -> XsOp {
    XsOp::Write {
        path,
        value: value.into(),
    }
}

/// The nodes of vif `devid` (`mac` already chosen).
#[must_use]
pub fn vif_ops(
    domid: u16,
    backend_domid: u16,
    devid: u32,
    vif: &VifSpec,
    mac: [u8; 6],
) -> Vec<XsOp> {
    let fe = vif_frontend_path(domid, devid);
    let be = vif_backend_path(backend_domid, domid, devid);
    let mac = format_mac(mac);
    let mut ops = vec![
        dir(
            fe.clone(),
            vec![
                Perm::new(domid, PERM_NONE),
                Perm::new(backend_domid, PERM_READ),
            ],
        ),
        dir(
            be.clone(),
            vec![
                Perm::new(backend_domid, PERM_NONE),
                Perm::new(domid, PERM_READ),
            ],
        ),
        w(format!("{be}/frontend"), fe.clone()),
        w(format!("{be}/frontend-id"), domid.to_string()),
        w(format!("{be}/online"), "1"),
        w(format!("{be}/state"), "1"),
        w(
            format!("{be}/script"),
            vif.script.clone().unwrap_or_else(|| VIF_SCRIPT.to_owned()),
        ),
        w(format!("{be}/mac"), mac.clone()),
        w(
            format!("{be}/bridge"),
            vif.bridge.clone().unwrap_or_else(|| "xenbr0".to_owned()),
        ),
        w(format!("{be}/handle"), devid.to_string()),
        w(
            format!("{be}/type"),
            vif.vif_type.clone().unwrap_or_else(|| "vif".to_owned()),
        ),
    ];
    if !vif.ip.is_empty() {
        ops.push(w(format!("{be}/ip"), vif.ip.join(" ")));
    }
    if let Some(m) = vif.mtu {
        ops.push(w(format!("{be}/mtu"), m.to_string()));
    }
    if let Some(n) = &vif.vifname {
        ops.push(w(format!("{be}/vifname"), n.clone()));
    }
    ops.extend([
        w(format!("{fe}/backend"), be),
        w(format!("{fe}/backend-id"), backend_domid.to_string()),
        w(format!("{fe}/state"), "1"),
        w(format!("{fe}/handle"), devid.to_string()),
        w(format!("{fe}/mac"), mac),
    ]);
    ops
}

/// `xl network-list DOMAIN`: xl's columns.
///
/// # Errors
/// A shim/xenstore failure or an unknown domain.
pub fn network_list(out: &mut dyn Write, which: &str) -> Result<(), ToolstackError> {
    let control = shim(false)?;
    let xs = xenstore(false)?;
    let d = find_domain(&control, which)?;
    let io = |source| ToolstackError::Io {
        what: "write the listing".into(),
        source,
    };
    writeln!(
        out,
        "{:<4} {:<3} {:<17} {:<6} {:<5} {:<6} {:<8} {:<8} {:<30}",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-/rx-ring-ref", "", "BE-path"
    )
    .map_err(io)?;
    let fe_dir = format!("/local/domain/{}/device/vif", d.domid);
    let mut devs: Vec<u32> = xs
        .directory(&fe_dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    devs.sort_unstable();
    for dev in devs {
        let rd = |k: &str| {
            xs.read_opt(&format!("{fe_dir}/{dev}/{k}"))
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        let evtch = rd("event-channel")
            .or_else(|| rd("event-channel-tx"))
            .or_else(|| rd("queue-0/event-channel-tx"))
            .or_else(|| rd("queue-0/event-channel"))
            .unwrap_or_else(|| "-1".into());
        let tx = rd("tx-ring-ref").or_else(|| rd("queue-0/tx-ring-ref"));
        let rx = rd("rx-ring-ref").or_else(|| rd("queue-0/rx-ring-ref"));
        writeln!(
            out,
            "{:<4} {:<3} {:<17} {:<6} {:<5} {:<6} {:<8}/{:<8} {:<30}",
            dev,
            rd("backend-id").unwrap_or_else(|| "-1".into()),
            rd("mac").unwrap_or_default(),
            rd("handle").unwrap_or_else(|| dev.to_string()),
            rd("state").unwrap_or_else(|| "-1".into()),
            evtch,
            tx.unwrap_or_else(|| "-1".into()),
            rx.unwrap_or_else(|| "-1".into()),
            rd("backend").unwrap_or_default()
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(ops: &[XsOp]) -> std::collections::HashMap<String, String> {
        ops.iter()
            .filter_map(|o| match o {
                XsOp::Write { path, value } => Some((path.clone(), value.clone())),
                XsOp::Dir { .. } => None,
            })
            .collect()
    }

    #[test]
    fn test_vif_ops_write_libxl_nodes() {
        let spec = VifSpec::parse("mac=00:16:3e:01:02:03, bridge=br9, ip=10.1.2.3").expect("valid");
        let mac = spec.mac.expect("mac");
        let ops = vif_ops(4, 0, 0, &spec, mac);
        let m = writes(&ops);
        let be = "/local/domain/0/backend/vif/4/0";
        let fe = "/local/domain/4/device/vif/0";
        assert_eq!(m[&format!("{be}/frontend")], fe);
        assert_eq!(m[&format!("{be}/frontend-id")], "4");
        assert_eq!(m[&format!("{be}/online")], "1");
        assert_eq!(m[&format!("{be}/state")], "1");
        assert_eq!(m[&format!("{be}/script")], VIF_SCRIPT);
        assert_eq!(m[&format!("{be}/mac")], "00:16:3e:01:02:03");
        assert_eq!(m[&format!("{be}/bridge")], "br9");
        assert_eq!(m[&format!("{be}/handle")], "0");
        assert_eq!(m[&format!("{be}/type")], "vif");
        assert_eq!(m[&format!("{be}/ip")], "10.1.2.3");
        assert_eq!(m[&format!("{fe}/backend")], be);
        assert_eq!(m[&format!("{fe}/backend-id")], "0");
        assert_eq!(m[&format!("{fe}/state")], "1");
        assert_eq!(m[&format!("{fe}/handle")], "0");
        assert_eq!(m[&format!("{fe}/mac")], "00:16:3e:01:02:03");
        // Directories first, with the guest reading its backend's.
        assert!(matches!(&ops[0], XsOp::Dir { path, .. } if path == fe));
        assert!(
            matches!(&ops[1], XsOp::Dir { path, perms } if path == be && perms[1] == Perm::new(4, PERM_READ))
        );
    }

    #[test]
    fn test_random_mac_is_in_xen_oui_and_unicast() {
        let m = random_mac().expect("urandom");
        assert_eq!(&m[..3], &[0x00, 0x16, 0x3e]);
        assert_eq!(m[3] & 0x80, 0);
        assert_eq!(format_mac(m).len(), 17);
    }
}
