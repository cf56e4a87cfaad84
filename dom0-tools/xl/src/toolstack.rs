//! The domain verbs over the hypervisor shim (`dom0::Control`) and
//! xenstore: `create`, `list`, `destroy`, `block-list`.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xen_shim_dom0::Control;
use xen_shim_proto::layout::PAGE_SIZE;
use xen_shim_proto::protocol::{ControlError, DomainConfig, DomainInfo, DomainState};
use xenstore_client::{Client, XsClientError, XsOps};

use crate::config::{ConfigError, GuestType, XlConfig};
use crate::daemons::{self, DaemonsError};
use crate::disk::{BackendType, DiskFormat, DiskSpec};
use crate::xsplan::BackendDisk;
use crate::xsplan::{self, DomainPlan, XsOp};

/// The backend domain of every device (driver domains are not supported).
pub const BACKEND_DOMID: u16 = 0;
/// How long `create` waits for the runtime to attach.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `create` waits for each disk's backend to reach InitWait (or
/// fail), as libxl waits for its devices.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the verbs.
#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A host service could not be started.
    #[error(transparent)]
    Daemons(#[from] DaemonsError),
    /// The domain's cgroup could not be made, limited or removed.
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourcesError),
    /// The shim refused or failed.
    #[error("hypervisor shim operation failed: {what}")]
    Shim {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: ControlError,
    },
    /// xenstore refused or failed.
    #[error("xenstore operation failed: {what}")]
    Xenstore {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: XsClientError,
    },
    /// No such domain.
    #[error("domain {0} does not exist")]
    NoDomain(String),
    /// Something in the configuration this toolstack cannot do yet.
    #[error("{0}")]
    Unsupported(String),
    /// A disk target cannot be used.
    #[error("disk {vdev}: cannot use {target}")]
    Target {
        /// vdev.
        vdev: String,
        /// The target path.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Starting the guest runtime, or another local operation, failed.
    #[error("cannot {what}")]
    Io {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A disk's backend refused it (the message is backendd's error node).
    #[error("disk {vdev}: the backend refused it: {msg}")]
    DiskFailed {
        /// Virtual device.
        vdev: String,
        /// The backend's error.
        msg: String,
    },
    /// The guest runtime exited or did not attach.
    #[error("the guest runtime of domain {domid} did not start (log: {log})")]
    RuntimeFailed {
        /// Domain.
        domid: u16,
        /// The runtime's log.
        log: String,
    },
}

pub(crate) fn shim_err(what: impl Into<String>) -> impl FnOnce(ControlError) -> ToolstackError {
    let what = what.into();
    move |source| ToolstackError::Shim { what, source }
}

pub(crate) fn xs_err(what: impl Into<String>) -> impl FnOnce(XsClientError) -> ToolstackError {
    let what = what.into();
    move |source| ToolstackError::Xenstore { what, source }
}

/// Connects to the shim, starting `xen-shimd` if nothing answers.
///
/// # Errors
/// [`ToolstackError::Daemons`] or [`ToolstackError::Shim`].
pub fn shim(start: bool) -> Result<Control, ToolstackError> {
    let socket = xen_shim_proto::default_socket_path();
    if let Ok(c) = Control::connect(&socket) {
        return Ok(c);
    }
    if start {
        let bin = daemons::sibling("xen-shimd")?;
        let s = socket.clone();
        daemons::start(
            "xen-shimd",
            &bin,
            &["--socket".as_ref(), socket.as_os_str()],
            move || Control::connect(&s).is_ok(),
        )?;
    }
    Control::connect(&socket).map_err(shim_err("connect to xen-shimd"))
}

/// Connects to xenstored, starting it if nothing answers.
///
/// # Errors
/// [`ToolstackError::Daemons`] or [`ToolstackError::Xenstore`].
pub fn xenstore(start: bool) -> Result<Client, ToolstackError> {
    let socket = xenstore_client::discovery::socket_path();
    if let Ok(c) = Client::connect_path(&socket) {
        return Ok(c);
    }
    if start {
        let bin = daemons::sibling("xenstored")?;
        let pid = daemons::rundir().join("xenstored.pid");
        let s = socket.clone();
        daemons::start(
            "xenstored",
            &bin,
            &[
                "-N".as_ref(),
                "--socket".as_ref(),
                socket.as_os_str(),
                "-F".as_ref(),
                pid.as_os_str(),
            ],
            move || Client::connect_path(&s).is_ok(),
        )?;
    }
    Client::connect_path(&socket).map_err(xs_err("connect to xenstored"))
}

/// Starts `backendd` unless its pid file names a live process.
///
/// # Errors
/// [`ToolstackError::Daemons`].
pub fn ensure_backendd() -> Result<(), ToolstackError> {
    let pid = daemons::rundir().join("backendd.pid");
    if daemons::pidfile_alive(&pid) {
        return Ok(());
    }
    let bin = daemons::sibling("backendd")?;
    let xs = xenstore_client::discovery::socket_path();
    let shim = xen_shim_proto::default_socket_path();
    let logdir = daemons::console_logdir();
    let p = pid.clone();
    daemons::start(
        "backendd",
        &bin,
        &[
            "--xenstored".as_ref(),
            xs.as_os_str(),
            "--shim-socket".as_ref(),
            shim.as_os_str(),
            "--pid-file".as_ref(),
            pid.as_os_str(),
            "--log-dir".as_ref(),
            logdir.as_os_str(),
        ],
        move || daemons::pidfile_alive(&p),
    )?;
    Ok(())
}

/// A random version-4 UUID (`/vm/<uuid>`).
///
/// # Errors
/// [`ToolstackError::Io`] if `/dev/urandom` is unreadable.
pub fn random_uuid() -> Result<String, ToolstackError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|f| f.read_exact_at(&mut b, 0))
        .map_err(|source| ToolstackError::Io {
            what: "read /dev/urandom".into(),
            source,
        })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Carries out a plan of [`XsOp`]s in one transaction (a directory's
/// permissions set before its children are written), as libxl writes a
/// domain's or a device's nodes.
pub fn apply(xs: &Client, ops: &[XsOp]) -> Result<(), ToolstackError> {
    xs.transaction(|tx| apply_in(tx, ops))
        .map_err(xs_err("write the domain's nodes"))
}

/// Writes `ops` inside the transaction `tx` (directories with their
/// permissions before their children).
pub(crate) fn apply_in(
    tx: &xenstore_client::Transaction<'_>,
    ops: &[XsOp],
) -> Result<(), XsClientError> {
    for op in ops {
        match op {
            XsOp::Dir { path, perms } => {
                tx.mkdir(path)?;
                tx.set_perms(path, perms)?;
            }
            XsOp::Write { path, value } => tx.write(path, value)?,
        }
    }
    Ok(())
}

/// Whether a target is an NBD URI (QEMU's forms).
fn is_nbd_uri(t: &str) -> bool {
    t.starts_with("nbd://") || t.starts_with("nbd+tcp://") || t.starts_with("nbd+unix://")
}

/// Whether a target is a Ceph RBD image (libxl's and QEMU's
/// `rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]`).
fn is_rbd_target(t: &str) -> bool {
    t.starts_with("rbd:")
}

/// Whether a target is served over the network (NBD or RBD), not a path.
fn is_network_target(t: &str) -> bool {
    is_nbd_uri(t) || is_rbd_target(t)
}

/// A disk's target, checked, and the backend that serves it (libxl's
/// choice, `libxl__device_disk_set_backend`): raw files and block devices
/// go to `vbd`, qcow2 images, NBD exports and RBD images to `qdisk`. Relative paths are
/// taken from the configuration file's directory.
pub(crate) fn disk_target(disk: &DiskSpec, cfg_dir: &Path) -> Result<BackendDisk, ToolstackError> {
    let unsupported =
        |what: String| ToolstackError::Unsupported(format!("disk {}: {what}", disk.vdev));
    match disk.backendtype {
        Some(BackendType::Tap) => {
            return Err(unsupported(
                "backendtype tap is not supported (phy or qdisk)".into(),
            ))
        }
        Some(BackendType::Standalone) => {
            return Err(unsupported(
                "backendtype standalone is not supported (phy or qdisk)".into(),
            ))
        }
        _ => {}
    }
    if let Some(t) = disk.target.as_deref().filter(|t| is_network_target(t)) {
        let what = if is_rbd_target(t) { "RBD" } else { "NBD" };
        if disk.format != DiskFormat::Raw {
            return Err(unsupported(format!(
                "an {what} disk is served raw; format {} over {what} is not supported",
                disk.format.as_str()
            )));
        }
        if disk.backendtype == Some(BackendType::Phy) {
            return Err(unsupported(format!(
                "backendtype phy cannot serve {t} (use qdisk or no backendtype)"
            )));
        }
        return Ok(BackendDisk::qdisk(DiskFormat::Raw, t));
    }
    let (path, blk) = disk_path(disk, cfg_dir)?;
    let p = path.display().to_string();
    if disk.format == DiskFormat::Qcow2 {
        if disk.backendtype == Some(BackendType::Phy) {
            return Err(unsupported(
                "backendtype phy supports only raw disks, not qcow2".into(),
            ));
        }
        let mut magic = [0u8; 4];
        let is_qcow2 = std::fs::File::open(&path)
            .and_then(|f| f.read_exact_at(&mut magic, 0))
            .is_ok()
            && magic == *b"QFI\xfb";
        if !is_qcow2 {
            return Err(unsupported(format!(
                "{p} is not a qcow2 image (format=qcow2)"
            )));
        }
        return Ok(BackendDisk::qdisk(DiskFormat::Qcow2, &p));
    }
    if disk.backendtype == Some(BackendType::Qdisk) {
        return Ok(BackendDisk::qdisk(DiskFormat::Raw, &p));
    }
    Ok(BackendDisk::vbd(&p, blk))
}

/// Waits until every disk's backend is in InitWait or later, or fails
/// with its error node (`/local/domain/0/error/backend/<kind>/N/<devid>`).
fn wait_backends(
    xs: &Client,
    domid: u16,
    disks: &[(&DiskSpec, &BackendDisk)],
) -> Result<(), ToolstackError> {
    let read = |p: &str| {
        xs.read_opt(p).ok().flatten().map(|v| {
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .to_owned()
        })
    };
    // Woken by watches on each backend's state and error node (a poll
    // every 20 ms cost a create 10 ms on average: backendd answers within
    // a few); the watches' first events fire at once.
    let token = format!("xl-create-{domid}");
    let mut watched = Vec::new();
    let result = (|| {
        for (d, b) in disks {
            let be = xsplan::disk_backend_path(b.kind, BACKEND_DOMID, domid, d.devid);
            let err = format!(
                "/local/domain/{BACKEND_DOMID}/error/backend/{}/{domid}/{}/error",
                b.kind, d.devid
            );
            for p in [format!("{be}/state"), err.clone()] {
                if xs.watch(&p, &token).is_ok() {
                    watched.push(p);
                }
            }
            let deadline = Instant::now() + BACKEND_TIMEOUT;
            loop {
                if let Some(e) = read(&err) {
                    let msg = e.split_once(' ').map_or(e.as_str(), |(_, m)| m).to_owned();
                    return Err(ToolstackError::DiskFailed {
                        vdev: d.vdev.clone(),
                        msg,
                    });
                }
                let state: u32 = read(&format!("{be}/state"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if (2..=4).contains(&state) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(ToolstackError::DiskFailed {
                        vdev: d.vdev.clone(),
                        msg: format!(
                            "backendd did not bring {be} to InitWait in {BACKEND_TIMEOUT:?} (state {state})"
                        ),
                    });
                }
                // Bounded: a lost event (or a refused watch) costs 20 ms.
                let _ = xs.wait_watch_event(Some((deadline - now).min(Duration::from_millis(20))));
            }
        }
        Ok(())
    })();
    for p in &watched {
        let _ = xs.unwatch(p, &token);
    }
    result
}

/// A disk's absolute path, checked: relative paths are taken from the
/// configuration file's directory.
fn disk_path(disk: &DiskSpec, cfg_dir: &Path) -> Result<(PathBuf, bool), ToolstackError> {
    let Some(t) = &disk.target else {
        return Err(ToolstackError::Unsupported(format!(
            "disk {}: empty cdrom drives are not supported yet",
            disk.vdev
        )));
    };
    if !matches!(disk.format, DiskFormat::Raw | DiskFormat::Qcow2) {
        return Err(ToolstackError::Unsupported(format!(
            "disk {}: format {} is not supported (raw or qcow2)",
            disk.vdev,
            disk.format.as_str()
        )));
    }
    let p = Path::new(t);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cfg_dir.join(p)
    };
    let meta = std::fs::metadata(&p).map_err(|source| ToolstackError::Target {
        vdev: disk.vdev.clone(),
        target: p.display().to_string(),
        source,
    })?;
    // backendd opens it from its own working directory: an absolute path.
    let p = std::fs::canonicalize(&p).unwrap_or(p);
    Ok((p, meta.file_type().is_block_device()))
}

/// Writes the kernel command line into `start_info.cmd_line`, as Xen's
/// domain builder does (truncated to 1023 bytes, NUL-terminated).
fn write_cmdline(control: &Control, domid: u16, cmdline: &str) -> Result<(), ToolstackError> {
    let files = control
        .domain_files(domid)
        .map_err(shim_err("get the domain's memory"))?;
    let si_gfn = files.info.layout.start_info_gfn();
    let off = si_gfn
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|o| {
            o.checked_add(core::mem::offset_of!(xen_abi::xen::start_info, cmd_line) as u64)
        })
        .ok_or_else(|| ToolstackError::Unsupported("start_info beyond the address space".into()))?;
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.truncate(xen_abi::xen::MAX_GUEST_CMDLINE - 1);
    bytes.push(0);
    files
        .memory
        .write_all_at(&bytes, off)
        .map_err(|source| ToolstackError::Io {
            what: "write start_info.cmd_line".into(),
            source,
        })
}

/// Whether an HVM guest's disk is an emulated one (`hd*`), not a PV vbd.
pub(crate) fn is_emulated(d: &DiskSpec) -> bool {
    d.vdev.starts_with("hd")
}

/// What `create` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Domain id.
    pub domid: u16,
    /// The runtime's pid.
    pub pid: u32,
    /// The guest's console log (`guest-<name>.log`).
    pub log: PathBuf,
    /// The runtime's own log until its console is up.
    pub runtime_log: PathBuf,
    /// The shim's instance number of the domain.
    pub instance: u64,
    /// The domain's name.
    pub name: String,
    /// Pid of the domain's monitor (`None` when not started).
    pub monitor: Option<u32>,
}

/// `xl create`: the domain in the shim, its xenstore nodes, XS_INTRODUCE,
/// the devices' nodes, `backendd`, then the PV guest runtime as the
/// domain's "kernel" (`type = "pv"`) or `xen-vmm` booting `kernel=` in a
/// KVM virtual machine (`type = "pvh"` or `"hvm"`). On any failure after the domain exists, it is
/// destroyed again.
///
/// # Errors
/// Any [`ToolstackError`].
pub fn create(cfg_path: &Path, start_daemons: bool) -> Result<Created, ToolstackError> {
    create_with(cfg_path, &[], start_daemons, true)
}

/// [`create`] with xl's `KEY=VALUE` `overrides` after the file's settings
/// ([`XlConfig::load_with`]; a restart by the monitor reads the file
/// alone), and without the monitor unless `monitored` (`xl create -e`).
///
/// # Errors
/// Any [`ToolstackError`].
pub fn create_with(
    cfg_path: &Path,
    overrides: &[String],
    start_daemons: bool,
    monitored: bool,
) -> Result<Created, ToolstackError> {
    create_full(cfg_path, overrides, start_daemons, monitored, None)
}

/// What `xl restore` hands to [`create_from`]: the save file (validated) and
/// the directory the saved config's relative paths refer to.
#[derive(Debug, Clone)]
pub struct RestoreFrom {
    /// The save file.
    pub file: PathBuf,
    /// The original config's directory.
    pub cfg_dir: PathBuf,
    /// `file` is a migration stream (a FIFO) and the VMM holds the vCPUs
    /// until its control channel's "unpause" (`xl migrate-receive`).
    pub incoming: bool,
}

/// `xl create`, or with `restore` the domain of `xl restore`: the same
/// domain and devices, its VMM restoring the save file instead of booting.
///
/// # Errors
/// Any [`ToolstackError`].
pub fn create_from(
    cfg_path: &Path,
    start_daemons: bool,
    restore: Option<&RestoreFrom>,
) -> Result<Created, ToolstackError> {
    create_full(cfg_path, &[], start_daemons, true, restore)
}

/// The destination domain of `xl migrate-receive`: as [`create_from`] with
/// the config `overrides` (its `--incoming` name).
///
/// # Errors
/// Any [`ToolstackError`].
pub fn create_incoming(
    cfg_path: &Path,
    overrides: &[String],
    restore: &RestoreFrom,
) -> Result<Created, ToolstackError> {
    create_full(cfg_path, overrides, true, true, Some(restore))
}

/// Renames domain `domid` (`libxl_domain_rename`): the shim's name, the
/// xenstore `name` nodes, the VMM's control socket.
///
/// # Errors
/// The name is taken, or a shim/xenstore failure.
pub fn rename(control: &Control, domid: u16, from: &str, to: &str) -> Result<(), ToolstackError> {
    control
        .rename_domain(domid, to)
        .map_err(shim_err(format!("rename domain {domid} to {to}")))?;
    let xs = xenstore(false)?;
    let home = format!("/local/domain/{domid}");
    xs.write(&format!("{home}/name"), to)
        .map_err(xs_err(format!("write {home}/name")))?;
    if let Ok(Some(vm)) = xs.read_opt(&format!("{home}/vm")) {
        let vm = String::from_utf8_lossy(&vm).into_owned();
        let _ = xs.write(&format!("{vm}/name"), to);
    }
    let old = vmm_control_socket(from);
    if old.exists() {
        std::fs::rename(&old, vmm_control_socket(to)).map_err(|source| ToolstackError::Io {
            what: format!("rename {}", old.display()),
            source,
        })?;
    }
    // The VMM's log follows its domain's name (its file stays open).
    let dir = daemons::rundir();
    let _ = std::fs::rename(
        dir.join(format!("pvguest-{from}.log")),
        dir.join(format!("pvguest-{to}.log")),
    );
    Ok(())
}

fn create_full(
    cfg_path: &Path,
    overrides: &[String],
    start_daemons: bool,
    monitored: bool,
    restore: Option<&RestoreFrom>,
) -> Result<Created, ToolstackError> {
    let mut c = create_inner(cfg_path, overrides, start_daemons, restore)?;
    if !monitored {
        return Ok(c);
    }
    // As xl's child after `xl create`: a watcher that applies the on_*
    // action when the domain shuts down.
    match crate::monitor::spawn(cfg_path, &c.name, c.domid, c.instance) {
        Ok(pid) => c.monitor = Some(pid),
        Err(e) => {
            if let (Ok(control), Ok(xs)) = (shim(false), xenstore(false)) {
                let _ = destroy_domid(&control, &xs, c.domid);
            }
            return Err(e);
        }
    }
    Ok(c)
}

/// [`create`] without starting a monitor (the monitor's own restarts).
///
/// # Errors
/// Any [`ToolstackError`].
pub fn create_unmonitored(cfg_path: &Path) -> Result<Created, ToolstackError> {
    create_inner(cfg_path, &[], true, None)
}

fn create_inner(
    cfg_path: &Path,
    overrides: &[String],
    start_daemons: bool,
    restore: Option<&RestoreFrom>,
) -> Result<Created, ToolstackError> {
    let cfg = XlConfig::load_with(cfg_path, overrides)?;
    crate::monitor::check_actions(&cfg)?;
    // Checked before the domain exists (a cpus= this host cannot give).
    let limits = crate::resources::Limits::of(&cfg)?;
    // PV and PVHVM guests get the same vif nodes (`network::vif_ops`):
    // both run xen-netfront.
    let pvhvm = cfg.guest_type != GuestType::Pv;
    let cfg_dir = match restore {
        Some(r) => r.cfg_dir.clone(),
        None => cfg_path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let mut targets = Vec::new();
    for d in &cfg.disks {
        targets.push(disk_target(d, &cfg_dir)?);
    }
    // A PV guest's "kernel" is the PV guest runtime, which reads the command
    // line from start_info as a kernel does (or the program named by
    // `kernel=`, started with the command line as its arguments); a PVH/HVM
    // guest is a KVM virtual machine: `xen-vmm` boots `kernel=` (relative
    // to the configuration's directory), whose command line goes to
    // `start_info.cmd_line` only.
    let cmdline = cfg.cmdline.clone().unwrap_or_default();
    let (runtime, mut args): (PathBuf, Vec<std::ffi::OsString>) = if pvhvm && restore.is_some() {
        (daemons::sibling("xen-vmm")?, Vec::new())
    } else if pvhvm {
        let Some(k) = &cfg.kernel else {
            return Err(ToolstackError::Unsupported(format!(
                "type \"{}\" needs kernel= (a PVHVM kernel image)",
                cfg.guest_type.as_str()
            )));
        };
        let k = Path::new(k);
        let k = if k.is_absolute() {
            k.to_path_buf()
        } else {
            cfg_dir.join(k)
        };
        if !k.is_file() {
            return Err(ToolstackError::Unsupported(format!(
                "kernel {} does not exist",
                k.display()
            )));
        }
        let k = std::fs::canonicalize(&k).unwrap_or(k);
        let mut args: Vec<std::ffi::OsString> = vec!["--kernel".into(), k.into_os_string()];
        // An `hd*` disk of an HVM guest is emulated (IDE in Xen's QEMU; here
        // the VMM's PIO disk), not a PV vbd.
        let mut emulated = cfg
            .disks
            .iter()
            .zip(&targets)
            .filter(|(d, _)| is_emulated(d));
        if let Some((d, _)) = emulated.next() {
            if d.format != DiskFormat::Raw || d.target.as_deref().is_some_and(is_network_target) {
                return Err(ToolstackError::Unsupported(format!(
                    "disk {}: an emulated (hd*) disk must be a raw file",
                    d.vdev
                )));
            }
            let (path, _) = disk_path(d, &cfg_dir)?;
            args.push("--fvdisk".into());
            args.push(path.clone().into_os_string());
        }
        if emulated.next().is_some() {
            return Err(ToolstackError::Unsupported(
                "only one emulated (hd*) disk is supported".into(),
            ));
        }
        (daemons::sibling("xen-vmm")?, args)
    } else if restore.is_some() {
        return Err(ToolstackError::Unsupported(
            "a PV process guest cannot be restored (only PVHVM guests are saved)".into(),
        ));
    } else {
        // The runtime's stdio is its PV console (hvc0), served by consback.
        let mut args: Vec<std::ffi::OsString> = vec!["--console".into(), "hvc0".into()];
        let r = match &cfg.kernel {
            // Another guest program on the runtime's library (blkbench's
            // load generator): the command line's words are its options.
            Some(k) => {
                args.extend(cmdline.split_whitespace().map(Into::into));
                PathBuf::from(k)
            }
            // The runtime reads the command line from start_info, as a
            // kernel; the ramdisk is handed over by path (Xen's builder
            // loads it into the guest's memory).
            None => {
                if let Some(rd) = &cfg.ramdisk {
                    let p = Path::new(rd);
                    let p = if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        cfg_dir.join(p)
                    };
                    let p = std::fs::canonicalize(&p).map_err(|source| ToolstackError::Io {
                        what: format!("open the ramdisk {}", p.display()),
                        source,
                    })?;
                    args.push("--ramdisk".into());
                    args.push(p.into_os_string());
                }
                daemons::sibling("xen-pvguest")?
            }
        };
        (r, args)
    };
    if pvhvm {
        // The VMM's control channel (xl save) and the config its save files embed.
        args.push("--control".into());
        args.push(vmm_control_socket(&cfg.name).into_os_string());
        args.push("--config".into());
        args.push(
            std::fs::canonicalize(cfg_path)
                .unwrap_or_else(|_| cfg_path.to_path_buf())
                .into_os_string(),
        );
        if let Some(r) = restore {
            args.push("--restore".into());
            args.push(r.file.clone().into_os_string());
            // Held until `introduce_restored` and `unpause_loaded`.
            args.push(if r.incoming { "--incoming" } else { "--paused" }.into());
        }
    }
    let control = shim(start_daemons)?;
    let xs = xenstore(start_daemons)?;
    // backendd serves the disks, the vifs and, as xenconsoled does, every
    // guest's console: it runs for every domain.
    if start_daemons {
        ensure_backendd()?;
    }
    let dc = DomainConfig {
        vcpus: cfg.vcpus,
        kind: if pvhvm {
            xen_shim_proto::layout::DomainType::Pvhvm
        } else {
            xen_shim_proto::layout::DomainType::Pv
        },
        ..DomainConfig::pv(&cfg.name, cfg.memory_mib)
    };
    let created = control
        .create_domain(&dc)
        .map_err(shim_err(format!("create domain {}", cfg.name)))?;
    let domid = created.domid;
    let r = (|| {
        let info = control
            .domain_info(domid)
            .map_err(shim_err("read the new domain"))?;
        // The domain's cgroup, which the runtime (or VMM) joins before it
        // runs: everything the guest forks is held by it. The runtime's
        // process is forked and put into it now, and waits at a gate until
        // the domain's xenstore nodes, backends and command line are ready:
        // on cgroup v1 the first move into a group waits for an RCU grace
        // period (17 ms on our machines), which then overlaps the rest of
        // the set-up instead of following it.
        let group = crate::resources::create_group(domid, &cfg.name, &limits)?;
        let gated = GatedRuntime::fork(
            &control,
            domid,
            &created.token,
            &cfg.name,
            &runtime,
            &args,
            &group,
        )?;
        let plan = DomainPlan {
            domid,
            name: cfg.name.clone(),
            uuid: random_uuid()?,
            memory_mib: cfg.memory_mib,
            maxmem_mib: cfg.maxmem_mib,
            vcpus: cfg.vcpus,
            store: (info.layout.xenstore_gfn(), info.store_port),
            console: (info.layout.console_gfn(), info.console_port),
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let mut ops = xsplan::domain_ops(&plan);
        // A restored domain gets its console and its introduction once its
        // memory is loaded ([`introduce_restored`]).
        if restore.is_none() {
            ops.extend(xsplan::console_ops(domid, plan.console));
        }
        for (d, b) in cfg.disks.iter().zip(&targets) {
            if pvhvm && is_emulated(d) {
                continue;
            }
            ops.extend(xsplan::disk_ops(domid, BACKEND_DOMID, d, b));
        }
        for (devid, v) in cfg.vifs.iter().enumerate() {
            let mac = match v.mac {
                Some(m) => m,
                None => crate::network::random_mac()?,
            };
            ops.extend(crate::network::vif_ops(
                domid,
                BACKEND_DOMID,
                devid as u32,
                v,
                mac,
            ));
        }
        // The console log, kept across boots; consback appends to it from
        // the introduction on. An incoming domain's is created under its
        // final name by [`introduce_restored`].
        let log = if restore.is_some_and(|r| r.incoming) {
            daemons::console_logdir().join(format!("guest-{}.log", cfg.name))
        } else {
            console_log(&cfg.name)?
        };
        apply(&xs, &ops)?;
        if !cfg.disks.is_empty() && daemons::pidfile_alive(&daemons::rundir().join("backendd.pid"))
        {
            let disks: Vec<_> = cfg
                .disks
                .iter()
                .zip(&targets)
                .filter(|(d, _)| !(pvhvm && is_emulated(d)))
                .collect();
            wait_backends(&xs, domid, &disks)?;
        }
        if restore.is_none() {
            xs.introduce(domid, plan.store.0, plan.store.1)
                .map_err(xs_err(format!("introduce domain {domid}")))?;
        }
        write_cmdline(&control, domid, &cmdline)?;
        gated
            .release(&control, domid)
            .map(|(pid, runtime_log)| Created {
                domid,
                pid,
                log,
                runtime_log,
                instance: info.instance,
                monitor: None,
                name: cfg.name.clone(),
            })
    })();
    if r.is_err() {
        let _ = destroy_domid(&control, &xs, domid);
    }
    r
}

/// The last steps of a restored or migrated domain `domid`, once its VMM
/// has loaded the stream and the domain has its final `name` (libxl's
/// `libxl__build_post` after `xc_domain_restore`): its console nodes and
/// console log `guest-<name>.log`, and its introduction to xenstored.
/// Before the load, consback and xenstored would have started on the empty
/// ring pages and kept their indices while the stream replaced them.
/// Returns the console log.
///
/// # Errors
/// A shim, xenstore or log file failure.
pub fn introduce_restored(domid: u16, name: &str) -> Result<PathBuf, ToolstackError> {
    let control = shim(false)?;
    let xs = xenstore(false)?;
    let info = control
        .domain_info(domid)
        .map_err(shim_err(format!("read domain {domid}")))?;
    let log = console_log(name)?;
    apply(
        &xs,
        &xsplan::console_ops(domid, (info.layout.console_gfn(), info.console_port)),
    )?;
    xs.introduce(domid, info.layout.xenstore_gfn(), info.store_port)
        .map_err(xs_err(format!("introduce domain {domid}")))?;
    Ok(log)
}

/// How long [`await_loaded`] waits for a VMM to load its stream.
const LOAD_WAIT: Duration = Duration::from_secs(30);

/// Connects to the control socket of the restoring VMM of domain `domid`
/// (named `name`) once it has loaded its stream: it binds the socket after
/// the load.
///
/// # Errors
/// The VMM ended or did not load the stream within 30 s.
pub fn await_loaded(name: &str, domid: u16) -> Result<UnixStream, ToolstackError> {
    let t0 = Instant::now();
    let control = shim(false)?;
    let socket = vmm_control_socket(name);
    loop {
        match UnixStream::connect(&socket) {
            Ok(s) => return Ok(s),
            Err(source) => {
                let alive = control.domain_info(domid).is_ok_and(|i| i.pid.is_some());
                if !alive || t0.elapsed() > LOAD_WAIT {
                    return Err(ToolstackError::Io {
                        what: format!(
                            "reach domain {domid}'s VMM after its stream (it did not load it)"
                        ),
                        source,
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Lets the held vCPUs of a loaded VMM run (its control socket `vmm`,
/// from [`await_loaded`]).
///
/// # Errors
/// The VMM refused or did not answer.
pub fn unpause_loaded(vmm: UnixStream, domid: u16) -> Result<(), ToolstackError> {
    let io = |source| ToolstackError::Io {
        what: format!("unpause domain {domid}'s VMM"),
        source,
    };
    let mut out = vmm.try_clone().map_err(io)?;
    writeln!(out, "unpause").map_err(io)?;
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(vmm), &mut answer).map_err(io)?;
    if answer.trim() != "unpaused" {
        return Err(ToolstackError::Unsupported(format!(
            "the VMM of domain {domid} refused to unpause it: {}",
            answer.trim()
        )));
    }
    Ok(())
}

/// The control socket of the VMM of the PVHVM domain `name`.
pub fn vmm_control_socket(name: &str) -> PathBuf {
    daemons::rundir().join(format!("vmm-{name}.sock"))
}

/// Creates the guest's console log, `guest-<name>.log` in the console log
/// directory, or keeps it: like xenconsoled's logs it is appended to, so a
/// guest restarted by `on_reboot` keeps what it printed before.
fn console_log(name: &str) -> Result<PathBuf, ToolstackError> {
    let dir = daemons::console_logdir();
    std::fs::create_dir_all(&dir).map_err(|source| ToolstackError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let log = dir.join(format!("guest-{name}.log"));
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|source| ToolstackError::Io {
            what: format!("create {}", log.display()),
            source,
        })?;
    Ok(log)
}

/// The guest's process (the PV runtime, with its console on the PV console,
/// or the PVHVM guest's VMM) with its `args`, inside the domain's cgroup
/// from before its first instruction: forked and moved into the cgroup at
/// once, held before `exec` until [`GatedRuntime::release`]. What it prints
/// before its console is up (a failed attach) goes to
/// `<rundir>/pvguest-<name>.log`. Dropped without a release, the process
/// exits before it runs anything.
struct GatedRuntime {
    /// The write end of the gate: one byte lets the child `exec`; closing
    /// it without one makes the child exit.
    gate: Option<std::os::fd::OwnedFd>,
    /// The thread blocked in `Command::spawn` (which returns once the
    /// child has `exec`ed or failed).
    spawner: Option<std::thread::JoinHandle<std::io::Result<std::process::Child>>>,
    runtime: PathBuf,
    log: PathBuf,
}

impl GatedRuntime {
    fn fork(
        control: &Control,
        domid: u16,
        token: &str,
        name: &str,
        runtime: &Path,
        args: &[std::ffi::OsString],
        group: &xen_cgroup::Cgroup,
    ) -> Result<Self, ToolstackError> {
        let dir = daemons::rundir();
        std::fs::create_dir_all(&dir).map_err(|source| ToolstackError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let log = dir.join(format!("pvguest-{name}.log"));
        let out = std::fs::File::create(&log).map_err(|source| ToolstackError::Io {
            what: format!("create {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ToolstackError::Io {
            what: "duplicate the log fd".into(),
            source,
        })?;
        let mut cmd = Command::new(runtime);
        cmd.args(args)
            .env(xen_shim_proto::ENV_SOCKET, control.socket_path())
            .env(xen_shim_proto::ENV_DOMID, domid.to_string())
            .env(xen_shim_proto::ENV_TOKEN, token)
            .env(xen_jail::ENV_JAIL, if jail_runtimes() { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        group.enter_on_exec(&mut cmd).map_err(|source| {
            crate::resources::ResourcesError::Cgroup {
                what: format!("enter the cgroup {}", group.name()),
                source,
            }
        })?;
        let (gate_r, gate_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ToolstackError::Io {
                what: "create the runtime's start gate".into(),
                source: e.into(),
            })?;
        let (r, w) = (gate_r.as_raw_fd(), gate_w.as_raw_fd());
        // SAFETY: the hook runs in the child between fork and exec (after
        // the cgroup hook); it only calls close(2), read(2) on descriptors
        // of the parent's (both close at exec: O_CLOEXEC) and builds an
        // io::Error from errno, which does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                // The child's copy of the write end, or the gate would never
                // see the parent close it.
                libc::close(w);
                let mut b = 0u8;
                loop {
                    let n = libc::read(r, std::ptr::addr_of_mut!(b).cast(), 1);
                    if n == 1 {
                        return Ok(());
                    }
                    if n < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                    {
                        continue;
                    }
                    // Closed without a byte: the domain's set-up failed.
                    return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
                }
            });
        }
        let spawner = std::thread::Builder::new()
            .name("runtime-fork".into())
            .spawn(move || {
                let child = cmd.spawn();
                drop(gate_r);
                child
            })
            .map_err(|source| ToolstackError::Io {
                what: "start the runtime's fork thread".into(),
                source,
            })?;
        Ok(Self {
            gate: Some(gate_w),
            spawner: Some(spawner),
            runtime: runtime.to_path_buf(),
            log,
        })
    }

    /// Opens the gate and waits until the runtime has attached to the shim
    /// (its pid and log).
    fn release(mut self, control: &Control, domid: u16) -> Result<(u32, PathBuf), ToolstackError> {
        if let Some(g) = self.gate.take() {
            // A failed write is a child already gone: `spawn` says why.
            let _ = nix::unistd::write(&g, b"g");
        }
        let spawned = match self.spawner.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err(std::io::Error::other("the runtime's fork thread panicked")),
        };
        let mut child = spawned.map_err(|source| ToolstackError::Io {
            what: format!("start {}", self.runtime.display()),
            source,
        })?;
        let pid = child.id();
        let log = std::mem::take(&mut self.log);
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        // Whether the runtime has attached: its pid is recorded, or (it
        // attached and already went away, e.g. killed by its jail right
        // after) the shim has marked the domain crashed or shut down.
        let attached = || {
            control.domain_info(domid).is_ok_and(|info| {
                info.pid.is_some()
                    || matches!(
                        info.state,
                        DomainState::Crashed | DomainState::Shutdown { .. }
                    )
            })
        };
        let mut nap = Duration::from_millis(1);
        loop {
            if attached() {
                return Ok((pid, log));
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            // Exited after attaching between the two checks: started (and
            // the domain's crash is handled like any other).
            if exited && attached() {
                return Ok((pid, log));
            }
            if exited || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolstackError::RuntimeFailed {
                    domid,
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }
}

impl Drop for GatedRuntime {
    fn drop(&mut self) {
        // Not released: close the gate (the child exits before exec) and
        // reap it through `spawn`'s error.
        drop(self.gate.take());
        if let Some(t) = self.spawner.take() {
            if let Ok(Ok(mut child)) = t.join() {
                // Cannot happen without the gate's byte; kill it anyway.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Whether the runtimes and VMMs xl starts jail themselves once set up
/// (`xen-jail`: the domain's own uid, a kept capability set, seccomp):
/// always as root, unless `XEN_JAIL=0` is in xl's environment (to debug a
/// runtime with its full powers).
fn jail_runtimes() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::env::var(xen_jail::ENV_JAIL).map_or(true, |v| v != "0")
}

/// Finds a domain by name or id.
///
/// # Errors
/// [`ToolstackError::NoDomain`] or [`ToolstackError::Shim`].
pub fn find_domain(control: &Control, which: &str) -> Result<DomainInfo, ToolstackError> {
    let domains = control.list_domains().map_err(shim_err("list domains"))?;
    let by_id = which.parse::<u16>().ok();
    domains
        .into_iter()
        .find(|d| Some(d.domid) == by_id || d.name == which)
        .ok_or_else(|| ToolstackError::NoDomain(which.to_owned()))
}

/// The children of `path` (none if it is absent or unreadable).
pub(crate) fn list_or_empty(xs: &Client, path: &str) -> Vec<String> {
    xs.directory(path).unwrap_or_default()
}

/// Removes every xenstore trace of `domid` and destroys it in the shim.
fn destroy_domid(control: &Control, xs: &Client, domid: u16) -> Result<(), ToolstackError> {
    let home = format!("/local/domain/{domid}");
    // Backend directories of the domain's devices (as named by the
    // frontends, and the standard place in Dom0's tree).
    let mut backends = Vec::new();
    for ty in list_or_empty(xs, &format!("{home}/device")) {
        for dev in list_or_empty(xs, &format!("{home}/device/{ty}")) {
            if let Ok(Some(b)) = xs.read_opt(&format!("{home}/device/{ty}/{dev}/backend")) {
                let b = String::from_utf8_lossy(&b).into_owned();
                if b.starts_with("/local/domain/") && !b.contains("/../") {
                    backends.push(b);
                }
            }
        }
    }
    for ty in list_or_empty(xs, &format!("/local/domain/{BACKEND_DOMID}/backend")) {
        backends.push(format!(
            "/local/domain/{BACKEND_DOMID}/backend/{ty}/{domid}"
        ));
    }
    let vm = xs
        .read_opt(&format!("{home}/vm"))
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .filter(|v| v.starts_with("/vm/") && !v.contains(".."));
    // Its disks' FUSE connections, while its runtime still lives (aborted
    // below if the runtime hangs in its exit).
    let fuse = crate::resources::domain_fuse_disks(domid);
    let shim_result = control.destroy_domain(domid);
    for b in &backends {
        let _ = xs.rm(b);
    }
    for kind in ["vbd", "qdisk", "vif"] {
        let _ = xs.rm(&format!(
            "/local/domain/{BACKEND_DOMID}/error/backend/{kind}/{domid}"
        ));
    }
    if let Some(vm) = vm {
        let _ = xs.rm(&vm);
    }
    let _ = xs.rm(&home);
    let release = xs.release(domid);
    // The runtime is gone; what the guest still runs dies with its group.
    // Last: killing a group may wait for its processes, and the domain's
    // nodes must be gone as soon as the shim no longer lists it.
    let group_result = crate::resources::destroy_group(domid, &fuse);
    match release {
        Ok(()) => {}
        Err(e) if e.is_enoent() => {}
        Err(e) => return Err(xs_err(format!("release domain {domid}"))(e)),
    }
    shim_result.map_err(shim_err(format!("destroy domain {domid}")))?;
    group_result.map_err(Into::into)
}

/// `xl destroy NAME|DOMID`.
///
/// # Errors
/// [`ToolstackError::NoDomain`], or a shim/xenstore failure.
pub fn destroy(which: &str) -> Result<u16, ToolstackError> {
    let control = shim(false)?;
    let xs = xenstore(false)?;
    let d = find_domain(&control, which)?;
    if d.domid == 0 {
        return Err(ToolstackError::Unsupported(
            "cannot destroy Domain-0".into(),
        ));
    }
    destroy_domid(&control, &xs, d.domid)?;
    Ok(d.domid)
}

/// Destroys domain `domid` as `xl destroy` does (the monitor's
/// `destroy` and `restart` actions).
///
/// # Errors
/// A shim or xenstore failure.
pub fn destroy_by_id(domid: u16) -> Result<(), ToolstackError> {
    let control = shim(false)?;
    let xs = xenstore(false)?;
    destroy_domid(&control, &xs, domid)
}

/// `xl pause` (`pause = true`) or `xl unpause`.
///
/// # Errors
/// [`ToolstackError::NoDomain`], or a shim failure.
pub fn pause(which: &str, pause: bool) -> Result<u16, ToolstackError> {
    let control = shim(false)?;
    let d = find_domain(&control, which)?;
    if d.domid == 0 {
        return Err(ToolstackError::Unsupported(
            "cannot pause or unpause Domain-0".into(),
        ));
    }
    let r = if pause {
        control.pause_domain(d.domid)
    } else {
        control.unpause_domain(d.domid)
    };
    r.map_err(shim_err(format!(
        "{} domain {}",
        if pause { "pause" } else { "unpause" },
        d.domid
    )))?;
    if !pause {
        // `xl create -p` froze the whole domain too.
        let _ = crate::resources::freeze_domain(d.domid, false);
    }
    Ok(d.domid)
}

/// `xl shutdown` (`reason` = poweroff) or `xl reboot` (reboot), as libxl's
/// `libxl_domain_shutdown`/`libxl_domain_reboot`: writes the request to the
/// guest's `control/shutdown`, which its PV drivers watch (our PV runtime
/// does and advertises `control/feature-poweroff`/`feature-reboot`). A
/// PVHVM guest that did not advertise the feature has no PV control
/// interface: with `force` (`-F`, xl's fallback to an ACPI power event)
/// the shim shuts it down instead, the VMM cutting its power; without it,
/// an error. With `wait` (`-w`), returns once the domain has shut down or
/// is gone, printing xl's lines to `out`.
///
/// # Errors
/// [`ToolstackError::NoDomain`], Domain-0, no PV control interface, or a
/// shim/xenstore failure.
pub fn shutdown(
    out: &mut dyn Write,
    which: &str,
    reason: xen_shim_proto::protocol::ShutdownReason,
    force: bool,
    wait: bool,
) -> Result<u16, ToolstackError> {
    use xen_shim_proto::protocol::ShutdownReason;
    let control = shim(false)?;
    let xs = xenstore(false)?;
    let d = find_domain(&control, which)?;
    if d.domid == 0 {
        return Err(ToolstackError::Unsupported(
            "cannot shut down or reboot Domain-0 from here".into(),
        ));
    }
    let (word, feature) = if reason == ShutdownReason::Reboot {
        ("reboot", "feature-reboot")
    } else {
        ("poweroff", "feature-poweroff")
    };
    let home = format!("/local/domain/{}", d.domid);
    let pv_control = xs
        .read_opt(&format!("{home}/control/{feature}"))
        .map_err(xs_err(format!("read {home}/control/{feature}")))?
        .is_some_and(|v| v.starts_with(b"1"));
    if pv_control || d.kind == xen_shim_proto::layout::DomainType::Pv {
        xs.write(&format!("{home}/control/shutdown"), word)
            .map_err(xs_err(format!("write {home}/control/shutdown")))?;
    } else if force {
        control
            .shutdown_domain(d.domid, reason)
            .map_err(shim_err(format!("shut domain {} down", d.domid)))?;
    } else {
        return Err(ToolstackError::Unsupported(format!(
            "domain {}: PV control interface not available (the guest did not write              control/{feature}); use -F to fall back to the hypervisor shutting it down",
            d.domid
        )));
    }
    if wait {
        let _ = writeln!(out, "Waiting for 1 domains");
        loop {
            match same_domain(&control, &d)? {
                None => {
                    let _ = writeln!(out, "Domain {} has been destroyed.", d.domid);
                    break;
                }
                Some(x)
                    if matches!(x.state, DomainState::Shutdown { .. } | DomainState::Crashed) =>
                {
                    let code = shutdown_code(&x).unwrap_or(0);
                    let _ = writeln!(
                        out,
                        "Domain {} has been shut down, reason code {code}",
                        d.domid
                    );
                    break;
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(d.domid)
}

/// Domain `d` as the shim lists it now (`None` once gone; a new domain
/// that reuses its id is another instance).
fn same_domain(control: &Control, d: &DomainInfo) -> Result<Option<DomainInfo>, ToolstackError> {
    Ok(control
        .list_domains()
        .map_err(shim_err("list domains"))?
        .into_iter()
        .find(|x| x.domid == d.domid && x.instance == d.instance))
}

/// How long `xl save` waits for a guest to suspend (libxl waits 60 s).
pub const SUSPEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Xen's suspend protocol for `xl save`, as libxl's
/// `libxl__domain_suspend_common`: when the guest advertised
/// `control/feature-suspend`, writes `suspend` to its `control/shutdown`
/// and waits until the domain has shut down with reason suspend (the
/// guest quiesced its frontends and made `SCHEDOP_shutdown(SHUTDOWN_suspend)`);
/// `Ok(false)` for a guest without the feature (the caller saves it
/// without its cooperation).
///
/// # Errors
/// The guest did not suspend within [`SUSPEND_TIMEOUT`] (the request is
/// taken back if the guest has not taken it), it ended meanwhile, or a
/// shim/xenstore failure.
pub fn suspend_for_save(control: &Control, d: &DomainInfo) -> Result<bool, ToolstackError> {
    use xen_shim_proto::protocol::ShutdownReason;
    let xs = xenstore(false)?;
    let home = format!("/local/domain/{}/control", d.domid);
    let feature = xs
        .read_opt(&format!("{home}/feature-suspend"))
        .map_err(xs_err(format!("read {home}/feature-suspend")))?
        .is_some_and(|v| v.starts_with(b"1"));
    if !feature {
        return Ok(false);
    }
    let node = format!("{home}/shutdown");
    xs.write(&node, "suspend")
        .map_err(xs_err(format!("write {node}")))?;
    let t0 = Instant::now();
    loop {
        match same_domain(control, d)?.map(|x| x.state) {
            Some(DomainState::Shutdown {
                reason: ShutdownReason::Suspend,
            }) => return Ok(true),
            Some(DomainState::Shutdown { .. } | DomainState::Crashed) | None => {
                return Err(ToolstackError::Unsupported(format!(
                    "domain {} ended instead of suspending",
                    d.domid
                )))
            }
            Some(_) if t0.elapsed() > SUSPEND_TIMEOUT => {
                // Taken back unless the guest took it meanwhile.
                if xs.read_opt(&node).ok().flatten().as_deref() == Some(b"suspend".as_slice()) {
                    let _ = xs.write(&node, "");
                }
                return Err(ToolstackError::Unsupported(format!(
                    "domain {} did not suspend within {} s (control/shutdown = suspend)",
                    d.domid,
                    SUSPEND_TIMEOUT.as_secs()
                )));
            }
            // (A millisecond: the wait is part of a migration's downtime.)
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Resumes a suspended domain in place (Xen's `XEN_DOMCTL_resumedomain`:
/// its suspend hypercall returns 1, it goes on with its connections).
///
/// # Errors
/// A shim failure.
pub fn resume_cancelled(control: &Control, domid: u16) -> Result<(), ToolstackError> {
    control
        .resume_domain(domid)
        .map_err(shim_err(format!("resume domain {domid}")))
}

/// `xl list`'s header.
pub const LIST_HEADER: &str =
    "Name                                        ID   Mem VCPUs\tState\tTime(s)";

/// One `xl list` row, in xl's format, with the figures `f`
/// ([`crate::resources::Census::figures`]).
#[must_use]
pub fn list_row(d: &DomainInfo, f: &crate::resources::Figures) -> String {
    let name = if d.domid == 0 {
        "Domain-0"
    } else {
        d.name.as_str()
    };
    format!(
        "{:<40} {:>5} {:>5} {:>5}     {:<6} {:>8.1}",
        name, d.domid, f.mem_mib, d.vcpus, f.flags, f.time_s
    )
}

/// `xl list -v`'s extra header columns.
pub const LIST_VERBOSE_HEADER: &str =
    "   UUID                            Reason-Code\tSecurity Label";

/// The `SHUTDOWN_*` code of a shut down or crashed domain (`xl list -v`'s
/// Reason-Code; a runtime that died without shutting down is a crash).
#[must_use]
pub fn shutdown_code(d: &DomainInfo) -> Option<u32> {
    use xen_shim_proto::protocol::ShutdownReason;
    match d.state {
        DomainState::Shutdown { reason } => Some(reason.code()),
        DomainState::Crashed => Some(ShutdownReason::Crash.code()),
        _ => None,
    }
}

/// The domain's UUID (from `/local/domain/N/vm` = `/vm/<uuid>`; Domain-0's
/// is all zeros, as in Xen).
fn domain_uuid(xs: Option<&Client>, domid: u16) -> String {
    const NIL: &str = "00000000-0000-0000-0000-000000000000";
    if domid == 0 {
        return NIL.into();
    }
    xs.and_then(|xs| {
        xs.read_opt(&format!("/local/domain/{domid}/vm"))
            .ok()
            .flatten()
    })
    .map(|v| String::from_utf8_lossy(&v).into_owned())
    .and_then(|v| v.strip_prefix("/vm/").map(str::to_owned))
    .filter(|u| u.len() == NIL.len())
    .unwrap_or_else(|| NIL.into())
}

/// `xl list [-v] [DOMAIN...]`.
///
/// # Errors
/// A shim failure or an unknown domain.
pub fn list(out: &mut dyn Write, which: &[String], verbose: bool) -> Result<(), ToolstackError> {
    let control = shim(false)?;
    let all = control.list_domains().map_err(shim_err("list domains"))?;
    let domains = if which.is_empty() {
        all.clone()
    } else {
        which
            .iter()
            .map(|w| find_domain(&control, w))
            .collect::<Result<_, _>>()?
    };
    let io = |source| ToolstackError::Io {
        what: "write the listing".into(),
        source,
    };
    let census = if which.is_empty() {
        crate::resources::Census::take()
    } else {
        let ids: Vec<u16> = domains.iter().map(|d| d.domid).collect();
        crate::resources::Census::take_of(Some(&ids))
    };
    let row = |d: &DomainInfo| list_row(d, &census.figures(d, &all));
    if !verbose {
        writeln!(out, "{LIST_HEADER}").map_err(io)?;
        for d in &domains {
            writeln!(out, "{}", row(d)).map_err(io)?;
        }
        return Ok(());
    }
    let xs = xenstore(false).ok();
    writeln!(out, "{LIST_HEADER}{LIST_VERBOSE_HEADER}").map_err(io)?;
    for d in &domains {
        let reason = shutdown_code(d).map_or_else(|| format!("{:>8}", "-"), |c| format!("{c:>8x}"));
        writeln!(
            out,
            "{} {} {reason}",
            row(d),
            domain_uuid(xs.as_ref(), d.domid)
        )
        .map_err(io)?;
    }
    Ok(())
}

/// `xl block-list DOMAIN`: xl's columns.
///
/// # Errors
/// A shim/xenstore failure or an unknown domain.
pub fn block_list(out: &mut dyn Write, which: &str) -> Result<(), ToolstackError> {
    let control = shim(false)?;
    let xs = xenstore(false)?;
    let d = find_domain(&control, which)?;
    let io = |source| ToolstackError::Io {
        what: "write the listing".into(),
        source,
    };
    writeln!(
        out,
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    )
    .map_err(io)?;
    let fe_dir = format!("/local/domain/{}/device/vbd", d.domid);
    let mut devs: Vec<u32> = list_or_empty(&xs, &fe_dir)
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
        let be = rd("backend").unwrap_or_default();
        let be_id = rd("backend-id").unwrap_or_else(|| "-1".into());
        let state = rd("state").unwrap_or_else(|| "-1".into());
        let evtch = rd("event-channel").unwrap_or_else(|| "-1".into());
        let ring = rd("ring-ref").unwrap_or_else(|| "-1".into());
        writeln!(
            out,
            "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
            dev, be_id, dev, state, evtch, ring, be
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(spec: &str, dir: &Path) -> Result<BackendDisk, String> {
        let d = DiskSpec::parse(spec).expect("valid spec");
        disk_target(&d, dir).map_err(|e| e.to_string())
    }

    #[test]
    fn test_disk_target_raw_qcow2_nbd_choose_libxl_backends() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("d.img"), [0u8; 512]).expect("raw");
        let mut q = b"QFI\xfb".to_vec();
        q.resize(512, 0);
        std::fs::write(dir.path().join("d.qcow2"), &q).expect("qcow2");
        let p = dir.path().display().to_string();
        let raw = target("format=raw, vdev=xvda, target=d.img", dir.path()).expect("raw");
        assert_eq!(raw, BackendDisk::vbd(&format!("{p}/d.img"), false));
        let qc = target("format=qcow2, vdev=xvda, target=d.qcow2", dir.path()).expect("qcow2");
        assert_eq!((qc.kind, qc.type_node), ("qdisk", "qdisk"));
        assert_eq!(qc.params, format!("qcow2:{p}/d.qcow2"));
        let nbd = target(
            "format=raw, vdev=xvda, target=nbd+unix:///e?socket=/run/x.sock",
            dir.path(),
        )
        .expect("nbd");
        assert_eq!(nbd.params, "aio:nbd+unix:///e?socket=/run/x.sock");
        let forced = target(
            "format=raw, vdev=xvda, backendtype=qdisk, target=d.img",
            dir.path(),
        )
        .expect("qdisk raw");
        assert_eq!(forced.params, format!("aio:{p}/d.img"));
    }

    #[test]
    fn test_disk_target_rbd_goes_to_qdisk_raw_as_libxl_writes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rbd = target(
            "format=raw, vdev=xvda, access=rw, backendtype=qdisk, \
             target=rbd:rbd/vm0@s:conf=/c/ceph.conf:id=xen",
            dir.path(),
        )
        .expect("rbd");
        assert_eq!((rbd.kind, rbd.type_node), ("qdisk", "qdisk"));
        assert_eq!(rbd.params, "aio:rbd:rbd/vm0@s:conf=/c/ceph.conf:id=xen");
        let e = target("format=qcow2, vdev=xvdb, target=rbd:rbd/vm0", dir.path())
            .expect_err("qcow2 over rbd");
        assert!(e.contains("disk xvdb") && e.contains("RBD"), "{e}");
        let e = target(
            "format=raw, vdev=xvdc, backendtype=phy, target=rbd:rbd/vm0",
            dir.path(),
        )
        .expect_err("phy rbd");
        assert!(e.contains("disk xvdc") && e.contains("phy"), "{e}");
    }

    #[test]
    fn test_disk_target_bad_combinations_name_the_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("d.img"), [0u8; 512]).expect("raw");
        let e = target("format=qcow2, vdev=xvdb, target=d.img", dir.path()).expect_err("magic");
        assert!(
            e.contains("disk xvdb") && e.contains("is not a qcow2 image"),
            "{e}"
        );
        let e = target("format=qcow2, vdev=xvdb, target=nbd://h:1/e", dir.path())
            .expect_err("qcow2 over nbd");
        assert!(e.contains("disk xvdb") && e.contains("NBD"), "{e}");
        let e = target(
            "format=raw, vdev=xvdc, backendtype=phy, target=nbd://h:1/e",
            dir.path(),
        )
        .expect_err("phy nbd");
        assert!(e.contains("disk xvdc") && e.contains("phy"), "{e}");
        let e = target(
            "format=qcow2, vdev=xvdc, backendtype=phy, target=d.img",
            dir.path(),
        )
        .expect_err("phy qcow2");
        assert!(e.contains("phy supports only raw"), "{e}");
    }
}
