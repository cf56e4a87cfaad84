//! The `vbd` and `qdisk` backend types: [`xen_blkback`] behind the
//! [`Backend`] trait.
//!
//! The backend directory's `params` names the disk as libxl writes it:
//! a path for `vbd` (`phy`: raw files and block devices), and
//! `FORMAT:TARGET` for `qdisk` (`aio:` or `raw:` raw, `qcow2:`), where the
//! target is a path or an NBD URI (`nbd://HOST:PORT/EXPORT`,
//! `nbd+unix:///EXPORT?socket=PATH`, QEMU's forms) or a Ceph RBD image
//! (`rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]`). `mode` is `r` or `w`,
//! `discard-enable` (default 1) offers discard. The features, sizes and
//! limits are advertised before InitWait (Linux writes the sizes at connect
//! time; a frontend reads them only once the backend is Connected, so
//! either works); connect reads the frontend's rings as blkback's
//! `connect_ring` does and starts one worker per queue.

use std::path::PathBuf;

use xen_backend_common::LazyDom0Handles;
use xen_blkback::{
    BlkBackend, BlkbackError, Device, DiskConfig, DiskFormat, DiskSource, Dom0Handles,
    FrontendParams, NbdTarget, RbdTarget,
};
use xen_diag::ErrorChain;

use crate::backend::{
    Backend, BackendError, BackendFactory, DeviceInfo, FrontendReader, Statistics,
};
use crate::driver::{handles, Driver, DriverBackend};

/// Makes a [`VbdBackend`] per `vbd` (or `qdisk`) directory; the shim's
/// grant device is opened on first use (so the service may start before
/// the shim).
#[derive(Debug)]
pub struct VbdFactory {
    device_type: &'static str,
    handles: LazyDom0Handles,
}

/// Format names of libxl's `qdisk` `params` prefix
/// (`libxl__device_disk_string_of_format`).
const LIBXL_FORMATS: &[&str] = &["aio", "raw", "qcow", "qcow2", "vpc", "vhd", "qed", "empty"];

/// The disk `params` names: `[FORMAT:]TARGET`, the target a path, an
/// NBD URI or an RBD target.
pub fn disk_source(params: &str) -> Result<(DiskSource, DiskFormat), BackendError> {
    let (format, target) = match params.split_once(':') {
        Some((f, rest)) if LIBXL_FORMATS.contains(&f) => {
            let fmt = DiskFormat::parse(f).ok_or_else(|| {
                BackendError::Config(format!(
                    "disk {rest}: format {f} is not supported (raw or qcow2)"
                ))
            })?;
            (fmt, rest)
        }
        _ => (DiskFormat::Raw, params),
    };
    if target.is_empty() {
        return Err(BackendError::Config("no params node".into()));
    }
    if NbdTarget::is_uri(target) {
        let t = NbdTarget::parse(target)
            .map_err(|e| BackendError::Config(format!("disk {target}: {e}")))?;
        if format != DiskFormat::Raw {
            return Err(BackendError::Config(format!(
                "disk {target}: an NBD export is served as raw, not {format:?}"
            )));
        }
        return Ok((DiskSource::Nbd(t), format));
    }
    if RbdTarget::is_target(target) {
        let t = RbdTarget::parse(target)
            .map_err(|e| BackendError::Config(format!("disk {target}: {e}")))?;
        if format != DiskFormat::Raw {
            return Err(BackendError::Config(format!(
                "disk {target}: an RBD image is served as raw, not {format:?}"
            )));
        }
        return Ok((DiskSource::Rbd(t), format));
    }
    Ok((DiskSource::Path(PathBuf::from(target)), format))
}

impl VbdFactory {
    /// A `vbd` factory using the shim at `socket`.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self::of_type(socket, "vbd")
    }

    /// A `qdisk` factory (libxl's backend for qcow2 and NBD disks, QEMU's
    /// in Xen) using the shim at `socket`.
    #[must_use]
    pub fn qdisk(socket: PathBuf) -> Self {
        Self::of_type(socket, "qdisk")
    }

    fn of_type(socket: PathBuf, device_type: &'static str) -> Self {
        Self {
            device_type,
            handles: LazyDom0Handles::new(socket),
        }
    }
}

impl BackendFactory for VbdFactory {
    fn device_type(&self) -> &str {
        self.device_type
    }

    fn create(&self, info: &DeviceInfo) -> Result<Box<dyn Backend>, BackendError> {
        let params = info
            .nodes
            .get("params")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| BackendError::Config("no params node".into()))?;
        let (source, format) = disk_source(params)?;
        let readonly = match info.nodes.get("mode").map(String::as_str) {
            Some("w") => false,
            Some("r") | None => true,
            Some(m) => return Err(BackendError::Config(format!("mode {m:?} is not r or w"))),
        };
        let name = source.to_string();
        let mut cfg = DiskConfig::new(source, format, readonly);
        cfg.discard = info.nodes.get("discard-enable").map(String::as_str) != Some("0");
        let disk = BlkBackend::new(cfg)
            .map_err(|e| BackendError::Config(format!("disk {name}: {}", ErrorChain(&e))))?;
        Ok(Box::new(VbdBackend::new(
            disk,
            handles(&self.handles)?,
            info.frontend_domid,
        )))
    }
}

/// One virtual block device.
pub type VbdBackend = DriverBackend<BlkBackend>;

impl Driver for BlkBackend {
    type Device = Device;
    type Params = FrontendParams;
    type Error = BlkbackError;

    fn features(&self) -> Vec<(&'static str, String)> {
        BlkBackend::features(self)
    }

    fn params(&self, frontend: FrontendReader<'_>) -> Result<FrontendParams, BlkbackError> {
        let c = self.config();
        FrontendParams::from_keys(frontend, c.max_ring_page_order, c.max_queues)
    }

    fn connect(
        &self,
        handles: &Dom0Handles,
        domid: u16,
        params: &FrontendParams,
    ) -> Result<Device, BlkbackError> {
        BlkBackend::connect(self, handles, domid, params)
    }

    fn disconnect(device: Device) {
        let _ = device.disconnect();
    }

    fn notify_failure(device: &Device, f: xen_backend_common::FailureNotifier) {
        device.set_failure_notifier(f);
    }

    fn failure(device: &Device) -> Option<String> {
        device
            .failure()
            .map(|f| format!("queue {} failed: {:?}", f.queue, f.reason))
    }

    /// Xen's vbd `statistics/` (Linux blkback's sysfs names), plus the
    /// requests answered with an error or as unsupported.
    fn statistics(device: &Device) -> Statistics {
        let m = device.metrics();
        vec![
            ("oo_req", m.out_of_requests),
            ("rd_req", m.reads),
            ("wr_req", m.writes),
            ("f_req", m.flushes),
            ("ds_req", m.discards),
            ("rd_sect", m.sectors_read()),
            ("wr_sect", m.sectors_written()),
            ("errors", m.errors),
            ("unsupported", m.unsupported),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn info(nodes: &[(&str, &str)]) -> DeviceInfo {
        DeviceInfo {
            device_type: "vbd".into(),
            frontend_domid: 1,
            devid: 51712,
            backend_path: "/local/domain/0/backend/vbd/1/51712".into(),
            frontend_path: "/local/domain/1/device/vbd/51712".into(),
            nodes: nodes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn create_err(nodes: &[(&str, &str)]) -> String {
        let f = VbdFactory::new(PathBuf::from("/nonexistent/shim.sock"));
        match f.create(&info(nodes)) {
            Ok(_) => panic!("create must fail"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn test_vbd_factory_missing_params_fails() {
        assert!(create_err(&[("mode", "w")]).contains("no params node"));
        assert!(create_err(&[("params", ""), ("mode", "w")]).contains("no params node"));
    }

    #[test]
    fn test_vbd_factory_bad_mode_fails() {
        assert!(create_err(&[("params", "/x"), ("mode", "rw!")]).contains("mode"));
    }

    #[test]
    fn test_vbd_factory_missing_image_fails() {
        let e = create_err(&[("params", "/nonexistent/disk.img"), ("mode", "w")]);
        assert!(e.contains("/nonexistent/disk.img"), "{e}");
    }

    #[test]
    fn test_vbd_factory_without_shim_fails_cleanly() {
        let img = tempfile::NamedTempFile::new().expect("temp file");
        img.as_file().set_len(1 << 20).expect("size");
        let p = img.path().to_str().expect("utf-8").to_owned();
        let e = create_err(&[("params", &p), ("mode", "r")]);
        assert!(e.contains("gntdev"), "{e}");
    }

    #[test]
    fn test_disk_source_libxl_params_forms() {
        let p = |s: &str| disk_source(s).expect(s);
        assert_eq!(
            p("/srv/d.img"),
            (DiskSource::Path("/srv/d.img".into()), DiskFormat::Raw)
        );
        assert_eq!(
            p("qcow2:/srv/d.qcow2"),
            (DiskSource::Path("/srv/d.qcow2".into()), DiskFormat::Qcow2)
        );
        assert_eq!(
            p("aio:/srv/a:b.img"),
            (DiskSource::Path("/srv/a:b.img".into()), DiskFormat::Raw)
        );
        assert_eq!(
            p("/srv/a:b.img"),
            (DiskSource::Path("/srv/a:b.img".into()), DiskFormat::Raw)
        );
        assert_eq!(
            p("aio:nbd://127.0.0.1:10809/e").0,
            DiskSource::Nbd(NbdTarget::parse("nbd://127.0.0.1:10809/e").expect("uri"))
        );
        assert_eq!(
            p("nbd+unix:///e?socket=/run/n.sock").0,
            DiskSource::Nbd(NbdTarget::parse("nbd+unix:///e?socket=/run/n.sock").expect("uri"))
        );
    }

    #[test]
    fn test_disk_source_rbd_targets_as_libxl_writes_them() {
        let p = |s: &str| disk_source(s).expect(s);
        let (src, fmt) = p("aio:rbd:rbd/vm0:conf=/etc/ceph/c.conf:id=xen");
        assert_eq!(fmt, DiskFormat::Raw);
        let DiskSource::Rbd(t) = src else {
            panic!("not rbd: {src:?}");
        };
        assert_eq!((t.pool.as_str(), t.image.as_str()), ("rbd", "vm0"));
        assert_eq!(t.conf.as_deref(), Some("/etc/ceph/c.conf"));
        assert_eq!(t.id.as_deref(), Some("xen"));
        let DiskSource::Rbd(t) = p("rbd:p/i@s1").0 else {
            panic!("not rbd");
        };
        assert_eq!(t.snap.as_deref(), Some("s1"));
        let e = |s: &str| disk_source(s).expect_err(s).to_string();
        assert!(e("qcow2:rbd:p/i").contains("served as raw"));
        assert!(e("aio:rbd:noslash").contains("rbd:noslash"));
    }

    #[test]
    fn test_disk_source_bad_forms_name_the_disk() {
        let e = |s: &str| disk_source(s).expect_err(s).to_string();
        assert!(e("vhd:/srv/d.vhd").contains("format vhd is not supported"));
        assert!(e("vhd:/srv/d.vhd").contains("/srv/d.vhd"));
        assert!(e("qcow2:nbd://h/e").contains("raw"));
        assert!(e("nbd://h:x/e").contains("nbd://h:x/e"));
        assert!(e("qcow2:").contains("no params"));
    }

    #[test]
    fn test_vbd_factory_unreachable_nbd_server_names_the_disk() {
        let e = create_err(&[
            ("params", "aio:nbd+unix:///e?socket=/nonexistent/nbd.sock"),
            ("mode", "w"),
        ]);
        assert!(
            e.contains("disk nbd+unix:///e?socket=/nonexistent/nbd.sock"),
            "{e}"
        );
        assert!(e.contains("cannot connect"), "{e}");
    }

    #[test]
    fn test_vbd_factory_corrupt_qcow2_names_the_disk() {
        let img = tempfile::NamedTempFile::new().expect("temp file");
        img.as_file().set_len(1 << 20).expect("size");
        let p = format!("qcow2:{}", img.path().display());
        let e = create_err(&[("params", &p), ("mode", "w")]);
        assert!(e.contains("not a qcow2 image"), "{e}");
        assert!(e.contains(&img.path().display().to_string()), "{e}");
    }
}
