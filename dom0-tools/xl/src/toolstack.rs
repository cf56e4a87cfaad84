//! The domain verbs over the hypervisor shim (`dom0::Control`) and
//! xenstore: `create`, `list`, `destroy`, `block-list`.

use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xen_shim::dom0::Control;
use xen_shim::layout::PAGE_SIZE;
use xen_shim::protocol::{ControlError, DomainConfig, DomainInfo};
use xenstore_client::{Client, XsClientError, XsOps};

use crate::config::{ConfigError, GuestType, XlConfig};
use crate::daemons::{self, DaemonsError};
use crate::disk::{DiskFormat, DiskSpec};
use crate::xsplan::{self, DomainPlan, XsOp};

/// The backend domain of every device (driver domains are not supported).
pub const BACKEND_DOMID: u16 = 0;
/// How long `create` waits for the runtime to attach.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of the verbs.
#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A host service could not be started.
    #[error(transparent)]
    Daemons(#[from] DaemonsError),
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
    /// The guest runtime exited or did not attach.
    #[error("the guest runtime of domain {domid} did not start (log: {log})")]
    RuntimeFailed {
        /// Domain.
        domid: u16,
        /// The runtime's log.
        log: String,
    },
}

fn shim_err(what: impl Into<String>) -> impl FnOnce(ControlError) -> ToolstackError {
    let what = what.into();
    move |source| ToolstackError::Shim { what, source }
}

fn xs_err(what: impl Into<String>) -> impl FnOnce(XsClientError) -> ToolstackError {
    let what = what.into();
    move |source| ToolstackError::Xenstore { what, source }
}

/// Connects to the shim, starting `xen-shimd` if nothing answers.
///
/// # Errors
/// [`ToolstackError::Daemons`] or [`ToolstackError::Shim`].
pub fn shim(start: bool) -> Result<Control, ToolstackError> {
    let socket = xen_shim::default_socket_path();
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
    let shim = xen_shim::default_socket_path();
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

fn apply(xs: &Client, ops: &[XsOp]) -> Result<(), ToolstackError> {
    xs.transaction(|tx| {
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
    })
    .map_err(xs_err("write the domain's nodes"))
}

/// A disk's absolute target, checked: relative paths are taken from the
/// configuration file's directory.
fn disk_target(disk: &DiskSpec, cfg_dir: &Path) -> Result<(PathBuf, bool), ToolstackError> {
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

/// What `create` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Domain id.
    pub domid: u16,
    /// The runtime's pid.
    pub pid: u32,
    /// The runtime's log file.
    pub log: PathBuf,
}

/// `xl create`: the domain in the shim, its xenstore nodes, XS_INTRODUCE,
/// the devices' nodes, `backendd`, then the PV guest runtime as the
/// domain's "kernel". On any failure after the domain exists, it is
/// destroyed again.
///
/// # Errors
/// Any [`ToolstackError`].
pub fn create(cfg_path: &Path, start_daemons: bool) -> Result<Created, ToolstackError> {
    let cfg = XlConfig::load(cfg_path)?;
    if cfg.guest_type != GuestType::Pv {
        return Err(ToolstackError::Unsupported(format!(
            "type \"{}\" is not supported yet (only pv)",
            cfg.guest_type.as_str()
        )));
    }
    let cfg_dir = cfg_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut targets = Vec::new();
    for d in &cfg.disks {
        targets.push(disk_target(d, &cfg_dir)?);
    }
    let runtime = match &cfg.kernel {
        Some(k) => PathBuf::from(k),
        None => daemons::sibling("xen-pvguest")?,
    };
    let control = shim(start_daemons)?;
    let xs = xenstore(start_daemons)?;
    if start_daemons && !(cfg.disks.is_empty() && cfg.vifs.is_empty()) {
        ensure_backendd()?;
    }
    let dc = DomainConfig {
        vcpus: cfg.vcpus,
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
        for (d, (path, blk)) in cfg.disks.iter().zip(&targets) {
            ops.extend(xsplan::vbd_ops(
                domid,
                BACKEND_DOMID,
                d,
                &path.display().to_string(),
                *blk,
            ));
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
        apply(&xs, &ops)?;
        xs.introduce(domid, plan.store.0, plan.store.1)
            .map_err(xs_err(format!("introduce domain {domid}")))?;
        let cmdline = cfg.cmdline.clone().unwrap_or_default();
        write_cmdline(&control, domid, &cmdline)?;
        spawn_runtime(
            &control,
            domid,
            &created.token,
            &cfg.name,
            &runtime,
            &cmdline,
        )
    })();
    if r.is_err() {
        let _ = destroy_domid(&control, &xs, domid);
    }
    r
}

fn spawn_runtime(
    control: &Control,
    domid: u16,
    token: &str,
    name: &str,
    runtime: &Path,
    cmdline: &str,
) -> Result<Created, ToolstackError> {
    // Until the PV console exists, the runtime's output is the guest's
    // console: logged where xenconsoled logs it (truncated per boot).
    let dir = daemons::console_logdir();
    std::fs::create_dir_all(&dir).map_err(|source| ToolstackError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let log = dir.join(format!("guest-{name}.log"));
    let out = std::fs::File::create(&log).map_err(|source| ToolstackError::Io {
        what: format!("create {}", log.display()),
        source,
    })?;
    let err = out.try_clone().map_err(|source| ToolstackError::Io {
        what: "duplicate the log fd".into(),
        source,
    })?;
    let mut child = Command::new(runtime)
        .args(cmdline.split_whitespace())
        .env(xen_shim::ENV_SOCKET, control.socket_path())
        .env(xen_shim::ENV_DOMID, domid.to_string())
        .env(xen_shim::ENV_TOKEN, token)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| ToolstackError::Io {
            what: format!("start {}", runtime.display()),
            source,
        })?;
    let pid = child.id();
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        if let Ok(info) = control.domain_info(domid) {
            if info.pid.is_some() {
                return Ok(Created { domid, pid, log });
            }
        }
        if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ToolstackError::RuntimeFailed {
                domid,
                log: log.display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

fn list_or_empty(xs: &Client, path: &str) -> Vec<String> {
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
    let shim_result = control.destroy_domain(domid);
    for b in &backends {
        let _ = xs.rm(b);
    }
    let _ = xs.rm(&format!(
        "/local/domain/{BACKEND_DOMID}/error/backend/vbd/{domid}"
    ));
    let _ = xs.rm(&format!(
        "/local/domain/{BACKEND_DOMID}/error/backend/vif/{domid}"
    ));
    if let Some(vm) = vm {
        let _ = xs.rm(&vm);
    }
    let _ = xs.rm(&home);
    match xs.release(domid) {
        Ok(()) => {}
        Err(e) if e.is_enoent() => {}
        Err(e) => return Err(xs_err(format!("release domain {domid}"))(e)),
    }
    shim_result.map_err(shim_err(format!("destroy domain {domid}")))
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
    Ok(d.domid)
}

/// CPU seconds of a process (`utime + stime` of `/proc/<pid>/stat`).
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may contain spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let total = ticks(11).saturating_add(ticks(12));
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return 0.0;
    }
    total as f64 / hz as f64
}

/// `xl list`'s header.
pub const LIST_HEADER: &str =
    "Name                                        ID   Mem VCPUs\tState\tTime(s)";

/// One `xl list` row, in xl's format.
#[must_use]
pub fn list_row(d: &DomainInfo) -> String {
    let name = if d.domid == 0 {
        "Domain-0"
    } else {
        d.name.as_str()
    };
    let time = d.pid.map_or(0.0, cpu_seconds);
    format!(
        "{:<40} {:>5} {:>5} {:>5}     {:<6} {:>8.1}",
        name, d.domid, d.memory_mib, d.vcpus, d.flags, time
    )
}

/// `xl list [DOMAIN...]`.
///
/// # Errors
/// A shim failure or an unknown domain.
pub fn list(out: &mut dyn Write, which: &[String]) -> Result<(), ToolstackError> {
    let control = shim(false)?;
    let domains = if which.is_empty() {
        control.list_domains().map_err(shim_err("list domains"))?
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
    writeln!(out, "{LIST_HEADER}").map_err(io)?;
    for d in &domains {
        writeln!(out, "{}", list_row(d)).map_err(io)?;
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
