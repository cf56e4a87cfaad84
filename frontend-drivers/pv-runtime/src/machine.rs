//! The guest machine: the one place that sets up what the guest's programs
//! see (its root file system, its `/dev`, `/proc` and `/sys`, its
//! namespaces) and runs its init as PID 1, as a Linux kernel does after
//! its drivers came up.
//!
//! In the runtime's private mount namespace (where the PV disks are the
//! block files `/dev/xvdX`, [`crate::pvdisk`]), [`boot`]:
//!
//! 1. mounts the root at [`STAGE`]: the `root=` disk through a loop device
//!    over its block file (`losetup`, then `mount`, which probes the file
//!    system type as Linux does unless `rootfstype=` names it; read-only
//!    unless `rw`), or a tmpfs holding the `ramdisk=` archive
//!    ([`crate::initramfs`]);
//! 2. mounts the guest's `/dev` there: a tmpfs with only its devices
//!    (`null`, `zero`, `full`, `random`, `urandom`, `tty`, `ptmx` and its
//!    own `pts`, `shm`, the PV disks `xvd*`, the console `hvc0` /
//!    `console` and `xen/xenbus`, bind mounts of the runtime's);
//!    The root is an idmapped mount ([`idmap_root`]: `open_tree` clone,
//!    `mount_setattr(MOUNT_ATTR_IDMAP)` with the guest's user namespace,
//!    `move_mount`): the image's uid 0 files are guest root's, and what
//!    guest root creates lands in the image owned by uid 0, not by its host
//!    range ([`crate::guestns`]);
//! 3. starts init from a keeper thread whose children are born in the
//!    guest's PID namespace and supervises init until it
//!    ends (init has `PR_SET_PDEATHSIG` = `SIGKILL`: a killed runtime, `xl
//!    destroy`, takes the guest's whole PID namespace with it); init itself
//!    enters the guest's network, UTS (hostname: the domain's `name`), IPC
//!    and cgroup (rooted at the domain's group) namespaces, then its user
//!    namespace as its root, makes a mount namespace there, mounts its own
//!    `/proc` and `/sys`, `pivot_root`s into the root and execs the first
//!    of `init=` or Linux's candidates that exists, with the command
//!    line's arguments and environment, as a session leader on the console;
//! 4. when init ends, unmounts the root and waits for its loop device
//!    (detached right after mounting, so the kernel lets it go with the
//!    file system) to release the block file: every write reached the PV
//!    disk before the disks are closed.
//!
//! How init ends is the domain's shutdown reason ([`end_reason`]): a
//! `reboot(2)` in a PID namespace kills its init with `SIGHUP` (restart)
//! or `SIGINT` (power off, halt); Linux panics when init exits or dies
//! otherwise ("Attempted to kill init!"): here that is a crash. The
//! toolstack's `control/shutdown` requests reach init as the signals
//! busybox's and sysvinit-style inits take ([`request_signal`]), then
//! `SIGKILL` after [`crate::control::GRACE`].
//!
//! Every namespace of the guest is owned by its user namespace
//! ([`crate::guestns`]); the runtime makes its NICs in the guest's network
//! namespace ([`crate::pvnet`]). The guest's devices (its PV disks, its
//! console) are its root's; the rest of `/dev` stays host root's (guest
//! root sees `nobody`, and may read and write only what the modes allow).

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use xen_shim_proto::protocol::ShutdownReason;

use crate::cmdline::{BootParams, INIT_CANDIDATES};
use crate::control::ShutdownControl;
use crate::guestns::{GuestNamespaces, NsFds};
use crate::line::emit;

/// Where the guest's root is mounted in the runtime's mount namespace
/// (inside its private `/dev` tmpfs, so nothing of the host is touched).
pub const STAGE: &str = "/dev/.machine";

/// How long the root's loop device gets to be released after unmounting.
const DETACH_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the machine could not boot.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `root=` names no disk of the domain.
    #[error("cannot open root device {0}: the domain has no such disk")]
    NoRootDevice(String),
    /// `root=` names a partition.
    #[error("root={0}: partitions are not supported; give the whole disk (root=/dev/xvda)")]
    Partition(String),
    /// `root=` is not a `/dev/xvd*` path.
    #[error("root={0}: give the root disk as /dev/xvdX")]
    BadRoot(String),
    /// No root: neither `root=` nor a ramdisk.
    #[error("no root file system: give root=/dev/xvdX or a ramdisk")]
    NoRoot,
    /// The root file system could not be mounted.
    #[error("cannot mount the root file system from {dev}: {why}")]
    MountRoot {
        /// The device.
        dev: String,
        /// What `mount` said.
        why: String,
    },
    /// The ramdisk could not be unpacked.
    #[error("cannot unpack the ramdisk {0}")]
    Ramdisk(String, #[source] crate::initramfs::InitramfsError),
    /// A set-up step failed.
    #[error("cannot {what}")]
    Setup {
        /// The step.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The disks could not be set up for the guest's mounts.
    #[error("cannot set up the guest's disks for mounting")]
    Mountd(#[from] crate::mountd::MountdError),
    /// No init could be run.
    #[error(
        "no working init found (tried {tried}{facts}); see Linux's Documentation/admin-guide/init.rst"
    )]
    NoInit {
        /// What was tried.
        tried: String,
        /// What init's process saw of the last candidate (empty if
        /// nothing was reported): `"; /bin/sh: mode 0755 ..."`.
        facts: String,
        /// The last failure.
        #[source]
        source: io::Error,
    },
}

fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> MachineError {
    let what = what.into();
    move |source| MachineError::Setup { what, source }
}

fn nix_setup(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> MachineError {
    let what = what.into();
    move |e| MachineError::Setup {
        what,
        source: io::Error::from(e),
    }
}

/// Where the guest's root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// A PV disk, by name (`xvda`: the block file `/dev/xvda`).
    Disk(String),
    /// A `newc` archive unpacked into a tmpfs.
    Ramdisk(PathBuf),
}

/// The guest machine to boot.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// The domain's name: the guest's hostname.
    pub hostname: String,
    /// The root file system.
    pub root: RootSource,
    /// The guest's PV disks: names under `/dev` (`xvda`).
    pub disks: Vec<String>,
    /// The runtime's stdio is the domain's PV console (a pty of its own,
    /// `--console hvc0`), given to guest root; otherwise it is whatever
    /// terminal started the runtime, left as it is.
    pub own_console: bool,
    /// The runtime's `/dev/xen/xenbus` ([`crate::xenbusdev`]), bound at the
    /// same path in the guest's `/dev`.
    pub xenbus: Option<PathBuf>,
    /// The command line.
    pub params: BootParams,
}

/// The root device's disk name (`xvda`) from `root=`.
///
/// # Errors
/// Not `/dev/xvdX`, or a partition.
pub fn root_disk(root: &str) -> Result<String, MachineError> {
    let name = root
        .strip_prefix("/dev/")
        .ok_or_else(|| MachineError::BadRoot(root.to_owned()))?;
    let letters = name
        .strip_prefix("xvd")
        .ok_or_else(|| MachineError::BadRoot(root.to_owned()))?;
    if letters.is_empty() {
        return Err(MachineError::BadRoot(root.to_owned()));
    }
    if letters.bytes().any(|b| b.is_ascii_digit()) {
        return Err(MachineError::Partition(root.to_owned()));
    }
    if !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(MachineError::BadRoot(root.to_owned()));
    }
    Ok(name.to_owned())
}

/// The shutdown reason of an init that ended with `st` (see the [module
/// docs](self)); `None` when it ended like a Linux init that panics the
/// kernel (a crash).
#[must_use]
pub fn end_reason(st: ExitStatus) -> Option<ShutdownReason> {
    match st.signal() {
        Some(s) if s == Signal::SIGHUP as i32 => Some(ShutdownReason::Reboot),
        Some(s) if s == Signal::SIGINT as i32 => Some(ShutdownReason::Poweroff),
        _ => None,
    }
}

/// The signal the toolstack's request is sent to init as: busybox init
/// powers off on `SIGUSR2` and reboots on `SIGTERM` (as does sysvinit's
/// `telinit`-less convention); an init without a handler ignores it and
/// is killed after the grace period.
#[must_use]
pub fn request_signal(r: ShutdownReason) -> Signal {
    match r {
        ShutdownReason::Reboot => Signal::SIGTERM,
        _ => Signal::SIGUSR2,
    }
}

/// Runs `prog args`: its trimmed stdout, or what it said on failure.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What [`mount_root`] set up, to undo.
#[derive(Debug, Default)]
struct Mounted {
    loopdev: Option<String>,
}

fn mount_root(spec: &MachineSpec, out: &mut dyn Write) -> Result<Mounted, MachineError> {
    let stage = Path::new(STAGE);
    std::fs::create_dir_all(stage).map_err(setup(format!("create {STAGE}")))?;
    match &spec.root {
        RootSource::Disk(name) => {
            if !spec.disks.contains(name) {
                return Err(MachineError::NoRootDevice(format!("/dev/{name}")));
            }
            // As Linux, `ro` is the file system's mount option, not the
            // disk's (a guest may remount it rw); a read-only disk makes a
            // read-only loop device (losetup falls back).
            let d = format!("/dev/{name}");
            let loopdev =
                crate::blockfile::attach_free_loop(&d).map_err(|why| MachineError::MountRoot {
                    dev: d.clone(),
                    why,
                })?;
            // `nodev`: the guest writes its root disk's raw blocks and
            // could plant a device node there (the guest's /dev is a tmpfs
            // of its own); the mount copied into its namespace keeps it
            // locked.
            let mut opts = if spec.params.rw {
                "rw,nodev"
            } else {
                "ro,nodev"
            }
            .to_owned();
            if let Some(f) = &spec.params.rootflags {
                opts.push(',');
                opts.push_str(f);
            }
            let types: Vec<Option<&str>> = if spec.params.rootfstype.is_empty() {
                vec![None]
            } else {
                spec.params
                    .rootfstype
                    .iter()
                    .map(|t| Some(t.as_str()))
                    .collect()
            };
            let mut last = String::new();
            for t in types {
                let mut ma = vec!["-o", &opts];
                if let Some(t) = t {
                    ma.extend(["-t", t]);
                }
                ma.extend([loopdev.as_str(), STAGE]);
                match run("mount", &ma) {
                    Ok(_) => {
                        // Detached now: the kernel releases the device when
                        // the file system goes (autoclear), also when the
                        // runtime is killed and nothing unmounts it.
                        let _ = run("losetup", &["-d", &loopdev]);
                        let fstype =
                            run("findmnt", &["-n", "-o", "FSTYPE", STAGE]).unwrap_or_default();
                        if !spec.params.quiet {
                            let _ = emit(
                                out,
                                "pvboot root-mounted",
                                &[
                                    ("dev", d.clone()),
                                    ("loop", loopdev.clone()),
                                    ("fstype", fstype),
                                    ("mode", if spec.params.rw { "rw" } else { "ro" }.into()),
                                ],
                            );
                        }
                        return Ok(Mounted {
                            loopdev: Some(loopdev),
                        });
                    }
                    Err(e) => last = e,
                }
            }
            let _ = run("losetup", &["-d", &loopdev]);
            Err(MachineError::MountRoot { dev: d, why: last })
        }
        RootSource::Ramdisk(path) => {
            mount(
                Some("rootfs"),
                stage,
                Some("tmpfs"),
                MsFlags::MS_NODEV,
                Some("mode=755"),
            )
            .map_err(nix_setup("mount the root tmpfs"))?;
            let f = std::fs::File::open(path).map_err(setup(format!("open {}", path.display())))?;
            let u = crate::initramfs::unpack(io::BufReader::new(f), stage)
                .map_err(|e| MachineError::Ramdisk(path.display().to_string(), e))?;
            if !spec.params.quiet {
                let _ = emit(
                    out,
                    "pvboot ramdisk-unpacked",
                    &[
                        ("entries", u.entries.to_string()),
                        ("bytes", u.bytes.to_string()),
                        ("skipped_devices", u.skipped_devices.to_string()),
                    ],
                );
            }
            Ok(Mounted::default())
        }
    }
}

fn check_sys(what: &str, r: libc::c_long) -> Result<libc::c_long, MachineError> {
    if r < 0 {
        return Err(setup(what)(io::Error::last_os_error()));
    }
    Ok(r)
}

/// Makes the root at [`STAGE`] an idmapped mount for the guest's user
/// namespace (see the [module docs](self)): a clone of the mount
/// (`open_tree(OPEN_TREE_CLONE)`), idmapped while still detached
/// (`mount_setattr(MOUNT_ATTR_IDMAP)`), moved over the original, which is
/// detached (the clone holds its file system).
fn idmap_root(ns: &GuestNamespaces) -> Result<(), MachineError> {
    let stage = CString::new(STAGE)
        .map_err(|_| setup("name the stage")(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: open_tree on a NUL-terminated path; the new descriptor is
    // owned right away.
    let tree = unsafe {
        let fd = check_sys(
            "clone the root mount (open_tree)",
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                stage.as_ptr(),
                libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
            ),
        )?;
        OwnedFd::from_raw_fd(fd as RawFd)
    };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.user_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached mount with an empty path, a
    // live attribute struct and its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check_sys("idmap the root mount (mount_setattr, MOUNT_ATTR_IDMAP)", r)?;
    umount2(STAGE, MntFlags::MNT_DETACH).map_err(nix_setup("detach the root's plain mount"))?;
    // SAFETY: move_mount of our detached mount (empty path) onto a
    // NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            stage.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check_sys("attach the idmapped root (move_mount)", r)?;
    Ok(())
}

/// Makes `dir` under the staged root, unless it is there (a read-only
/// root must have it).
fn ensure_dir(dir: &Path) -> Result<(), MachineError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(setup(format!(
        "create {} in the root file system (a read-only root must have it)",
        dir.display()
    )))
}

/// The guest machine's `/dev` while it runs (see [`with_guest_dev`]).
static GUEST_DEV: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);

fn lock_guest_dev() -> std::sync::MutexGuard<'static, Option<OwnedFd>> {
    GUEST_DEV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` with the guest machine's `/dev` (shared into the guest's mount
/// namespace: what is mounted there appears in the guest) while a guest
/// machine runs, `None` otherwise (a host-init guest sees the runtime's
/// `/dev`): for the disks attached later ([`crate::hotplug`]). The path is
/// `/proc/self/fd/N` of a descriptor opened at boot: the jailed runtime may
/// not search the guest's root above it (a ramdisk's root is 0700).
pub fn with_guest_dev<T>(f: impl FnOnce(&Path) -> T) -> Option<T> {
    let dev = lock_guest_dev();
    let fd = dev.as_ref()?.as_raw_fd();
    Some(f(Path::new(&format!("/proc/self/fd/{fd}"))))
}

/// Mounts the guest's `/dev` on the staged root (see the [module docs](self)).
fn mount_dev(
    spec: &MachineSpec,
    ns: &GuestNamespaces,
    loops: &[crate::mountd::LoopDisk],
) -> Result<(), MachineError> {
    let dev = Path::new(STAGE).join("dev");
    ensure_dir(&dev)?;
    mount(
        Some("devtmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=1024k"),
    )
    .map_err(nix_setup("mount the guest's /dev"))?;
    // Shared: the guest's mount namespace gets a slave copy, so disks
    // attached later (`crate::hotplug`) appear in it.
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(nix_setup("make the guest's /dev shared"))?;
    crate::jail::give_to_runtime(&dev)
        .map_err(setup("give the guest's /dev to the domain's uid"))?;
    let fd = nix::fcntl::open(
        &dev,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_setup("open the guest's /dev"))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    *lock_guest_dev() = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    let chr = |name: &str, major: u64, minor: u64, mode: u32| {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(nix_setup(format!("mknod /dev/{name}")))?;
        // The mode whatever the umask: guest root has no override on
        // host root's nodes.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(setup(format!("chmod /dev/{name}")))
    };
    chr("null", 1, 3, 0o666)?;
    chr("zero", 1, 5, 0o666)?;
    chr("full", 1, 7, 0o666)?;
    chr("random", 1, 8, 0o666)?;
    chr("urandom", 1, 9, 0o666)?;
    chr("tty", 5, 0, 0o666)?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))
            .map_err(setup(format!("link /dev/{name}")))?;
    }
    for d in ["pts", "shm"] {
        std::fs::create_dir(dev.join(d)).map_err(setup(format!("create /dev/{d}")))?;
    }
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )
    .map_err(nix_setup("mount the guest's /dev/pts"))?;
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(nix_setup("mount the guest's /dev/shm"))?;
    // The disks on loop devices ([`crate::mountd`]): block nodes of guest
    // root (group disk, 6), which it may mkfs and mount.
    for l in loops {
        let p = dev.join(&l.name);
        mknod(&p, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), l.rdev)
            .map_err(nix_setup(format!("mknod /dev/{}", l.name)))?;
        std::os::unix::fs::chown(&p, Some(ns.ids.first), ns.ids.host_id(6))
            .map_err(setup(format!("give /dev/{} to the guest's root", l.name)))?;
    }
    // The other PV disks (the root) and the console: bind mounts of the
    // runtime's files.
    let mut binds: Vec<(String, PathBuf)> = spec
        .disks
        .iter()
        .filter(|d| !loops.iter().any(|l| &l.name == *d))
        .map(|d| (d.clone(), Path::new("/dev").join(d)))
        .collect();
    // The console's pty by its path in this namespace (the fd's own mount
    // is the host namespace's, which cannot be bound from here).
    if nix::unistd::isatty(0).unwrap_or(false) {
        if let Ok(tty) = std::fs::read_link("/proc/self/fd/0") {
            // The domain's own console is its root's (group tty, 5).
            if spec.own_console {
                std::os::unix::fs::chown(&tty, Some(ns.ids.first), ns.ids.host_id(5)).map_err(
                    setup(format!(
                        "give the console {} to the guest's root",
                        tty.display()
                    )),
                )?;
            }
            for n in ["console", "hvc0"] {
                binds.push((n.to_owned(), tty.clone()));
            }
        }
    }
    if let Some(x) = &spec.xenbus {
        std::fs::create_dir(dev.join("xen")).map_err(setup("create /dev/xen"))?;
        binds.push(("xen/xenbus".to_owned(), x.clone()));
    }
    for (name, src) in binds {
        let target = dev.join(&name);
        std::fs::File::create(&target).map_err(setup(format!("create /dev/{name}")))?;
        mount(
            Some(&src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_setup(format!("bind /dev/{name}")))?;
    }
    Ok(())
}

/// Unmounts everything under and at [`STAGE`] (deepest first) and
/// detaches the root's loop device, waiting for the kernel to release it.
fn unmount_root(m: &Mounted) {
    // Its descriptor would keep the guest's /dev busy.
    lock_guest_dev().take();
    let mut targets: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|t| t == STAGE || t.starts_with(&format!("{STAGE}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Err(e) = umount2(t.as_str(), MntFlags::empty()) {
            tracing::warn!(target = %t, error = %e, "cannot unmount; detaching");
            let _ = umount2(t.as_str(), MntFlags::MNT_DETACH);
        }
    }
    if let Some(l) = &m.loopdev {
        // Detached after mounting (autoclear): the ext4 superblock may
        // still be released by the guest's dying mount namespace.
        wait_loop_released(l, DETACH_TIMEOUT);
    }
}

/// Waits (at most `timeout`) until the autoclear loop device `loopdev`
/// lets go of its block file (every write has reached the PV disk then).
pub(crate) fn wait_loop_released(loopdev: &str, timeout: Duration) {
    let name = loopdev.trim_start_matches("/dev/");
    let backing = format!("/sys/block/{name}/loop/backing_file");
    let t0 = Instant::now();
    while Path::new(&backing).exists() && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(20));
    }
    if Path::new(&backing).exists() {
        tracing::warn!(loopdev = %loopdev, "the loop device was not released");
    }
}

/// What init gets, prepared before the fork (no allocation after it).
struct Exec {
    candidates: Vec<CString>,
    argv_tail: Vec<CString>,
    envp: Vec<CString>,
    stage: CString,
    proc_dir: CString,
    sys_dir: CString,
    ns: NsFds,
    /// Init's end of the socket its mount filter's listener goes over
    /// ([`crate::mountd`]).
    listener_sock: RawFd,
    /// The waiter's report pipe (set in the forked waiter): where init's
    /// process reports what it saw of a candidate it could not execute.
    report_fd: RawFd,
}

impl Exec {
    fn new(p: &BootParams, ramdisk: bool, ns: NsFds) -> Result<Self, MachineError> {
        let mut list: Vec<String> = Vec::new();
        if ramdisk {
            list.push(p.rdinit.clone().unwrap_or_else(|| "/init".to_owned()));
        }
        match &p.init {
            // Linux: a requested init that fails is fatal.
            Some(i) => list.push(i.clone()),
            None => list.extend(INIT_CANDIDATES.iter().map(|s| (*s).to_owned())),
        }
        let cs = |s: &str| {
            CString::new(s).map_err(|_| MachineError::Setup {
                what: format!("pass {s:?} to init"),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })
        };
        Ok(Self {
            candidates: list.iter().map(|s| cs(s)).collect::<Result<_, _>>()?,
            argv_tail: p
                .init_args
                .iter()
                .map(|s| cs(s))
                .collect::<Result<_, _>>()?,
            envp: p.init_env.iter().map(|s| cs(s)).collect::<Result<_, _>>()?,
            stage: cs(STAGE)?,
            proc_dir: cs(&format!("{STAGE}/proc"))?,
            sys_dir: cs(&format!("{STAGE}/sys"))?,
            ns,
            listener_sock: -1,
            report_fd: -1,
        })
    }

    fn tried(&self) -> String {
        self.candidates
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The runtime is the guest's kernel: when the domain's memory group runs
/// out, the OOM killer must pick the guest's programs, never the process
/// that serves the guest's disks and devices (as Linux never picks its own
/// kernel). The runtime asks for `oom_score_adj` -1000 (it needs
/// `CAP_SYS_RESOURCE`, which some hosts withhold even from root), and its
/// children start at the other end ([`rank_first_for_oom_in_child`]), which
/// needs no privilege, so the order holds either way.
pub fn shield_runtime_from_oom() -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", b"-1000")
}

/// In a forked child, before exec (async-signal-safe: no allocation): the
/// guest's programs are the OOM killer's first choice in the domain's group
/// (`oom_score_adj` 1000; raising it needs no privilege), among themselves
/// ranked by their size as Linux ranks them.
pub(crate) fn rank_first_for_oom_in_child() -> io::Result<()> {
    // SAFETY: open, write and close on a NUL-terminated literal and a
    // static buffer; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, b"1000".as_ptr().cast(), 4);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != 4 {
            return Err(err);
        }
    }
    Ok(())
}

/// The steps of starting init, as its waiter reports a failure (an index
/// into this table and the errno).
const INIT_STEPS: &[&str] = &[
    "rank the guest first for the OOM killer",
    "enter the guest's network namespace",
    "enter the guest's UTS namespace",
    "enter the guest's IPC namespace",
    "enter the guest's cgroup namespace",
    "enter the guest's user namespace",
    "drop the supplementary groups",
    "become the guest's gid 0",
    "become the guest's root",
    "set the parent-death signal",
    "limit core dumps",
    "make the guest's PID namespace",
    "fork init",
    "set init's parent-death signal",
    "start init's session",
    "make init's mount namespace",
    "make / private",
    "bind the root onto itself",
    "mount the guest's /proc",
    "enter the root",
    "pivot_root into the root",
    "detach the old root",
    "chdir to /",
    "install the mount filter (seccomp user notification)",
    "pass the mount filter's listener to the runtime",
    "exec init",
];

/// A step of [`INIT_STEPS`] that failed, with its error.
type StepError = (usize, io::Error);

/// `r` of step `step`: its errno when negative.
fn step(step: usize, r: libc::c_long) -> Result<(), StepError> {
    if r < 0 {
        Err((step, io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// In init's process (forked by [`init_waiter`], single-threaded, before
/// exec): the steps of init in its namespaces (see the [module
/// docs](self)). Only system calls, no allocation. Returns only on
/// failure.
fn child_exec(e: &Exec) -> StepError {
    let r = (|| -> Result<(), StepError> {
        // SAFETY: plain system calls with NUL-terminated strings that live
        // in `e` (prepared before the fork) and null pointers where the
        // calls take them.
        unsafe {
            // Dies with its waiter.
            step(
                13,
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into(),
            )?;
            step(14, libc::setsid().into())?;
            step(15, libc::unshare(libc::CLONE_NEWNS).into())?;
            // Slave, not private: nothing of the guest's propagates out,
            // but what the runtime mounts in the guest's shared /dev (the
            // disks attached later, `crate::hotplug`) propagates in.
            step(
                16,
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                )
                .into(),
            )?;
            // The root as a mount of this namespace: the copies of the
            // runtime's mounts are locked (the namespace is a less
            // privileged user namespace's) and pivot_root refuses a
            // locked new root; a bind's top is not locked.
            step(
                17,
                libc::mount(
                    e.stage.as_ptr(),
                    e.stage.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
                .into(),
            )?;
            step(
                18,
                libc::mount(
                    c"proc".as_ptr(),
                    e.proc_dir.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
                .into(),
            )?;
            // /sys if the kernel lets us (its own network namespace's
            // view). Not read-only: the namespace's sysfs superblock is
            // shared by its mounts, and one made read-only here would make
            // the kernel refuse guest root a writable one (and guest root
            // writes only what its user namespace owns anyway).
            let _ = libc::mount(
                c"sysfs".as_ptr(),
                e.sys_dir.as_ptr(),
                c"sysfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
            step(19, libc::chdir(e.stage.as_ptr()).into())?;
            // pivot_root(".", "."): the old root stacks under the new one,
            // then goes.
            step(
                20,
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            )?;
            step(21, libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into())?;
            step(22, libc::chdir(c"/".as_ptr()).into())?;
        }
        // The last step before exec: from here every mount(2) of the
        // guest's goes to the runtime.
        let listener = crate::mountd::install_filter().map_err(|err| (23, err))?;
        let sent = crate::mountd::send_fd(e.listener_sock, listener).map_err(|err| (24, err));
        // SAFETY: closes our copy (the runtime has its own now).
        unsafe { libc::close(listener) };
        sent?;
        Ok(())
    })();
    if let Err(err) = r {
        return err;
    }
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    let mut argv: [*const libc::c_char; crate::cmdline::MAX_INIT_STRINGS + 2] =
        [std::ptr::null(); crate::cmdline::MAX_INIT_STRINGS + 2];
    let mut envp: [*const libc::c_char; crate::cmdline::MAX_INIT_STRINGS + 3] =
        [std::ptr::null(); crate::cmdline::MAX_INIT_STRINGS + 3];
    for (slot, s) in argv[1..].iter_mut().zip(&e.argv_tail) {
        *slot = s.as_ptr();
    }
    for (slot, s) in envp.iter_mut().zip(&e.envp) {
        *slot = s.as_ptr();
    }
    for c in &e.candidates {
        argv[0] = c.as_ptr();
        // SAFETY: argv and envp are NULL-terminated arrays (sized one
        // beyond the most strings the command line may carry) of pointers
        // into CStrings that outlive the call.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        last = io::Error::last_os_error();
    }
    if let Some(c) = e.candidates.last() {
        report_exec_facts(e.report_fd, c);
    }
    (INIT_STEPS.len() - 1, last)
}

/// Report tags of what init's process saw of the last candidate it could
/// not execute ([`report_exec_facts`], read by [`ExecFacts`]).
const FACT_TAGS: &[u8] = b"MOGFRSUV";

/// In init's process (system calls only): reports the candidate's mode,
/// owner and group as init sees them (after symbolic links), its mount's
/// flags (`statvfs` `f_flag`: `ST_NOEXEC` is 8), the mode and owner of
/// `/`, and init's own uid and gid: what decides `EACCES` at exec.
fn report_exec_facts(fd: RawFd, path: &std::ffi::CStr) {
    // SAFETY: stat/statvfs into zeroed local structs with a NUL-terminated
    // path; get[ug]id take nothing.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(path.as_ptr(), &mut st) == 0 {
            report(fd, b'M', st.st_mode as i32);
            report(fd, b'O', st.st_uid as i32);
            report(fd, b'G', st.st_gid as i32);
        }
        let mut sf: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut sf) == 0 {
            report(fd, b'F', sf.f_flag as i32);
        }
        let mut root: libc::stat = std::mem::zeroed();
        if libc::stat(c"/".as_ptr(), &mut root) == 0 {
            report(fd, b'R', root.st_mode as i32);
            report(fd, b'S', root.st_uid as i32);
        }
        report(fd, b'U', libc::geteuid() as i32);
        report(fd, b'V', libc::getegid() as i32);
    }
}

/// What [`report_exec_facts`] reported, for the error.
#[derive(Debug, Default)]
struct ExecFacts(Vec<(u8, i32)>);

impl ExecFacts {
    fn get(&self, tag: u8) -> Option<i32> {
        self.0
            .iter()
            .rev()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| *v)
    }

    /// `"; the last: mode 0100755 owner 0:0 on a mount with flags 0x26
    /// (noexec), / mode 040755 owner 0, init as 0:0"`, or empty.
    fn describe(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let mut s = String::from("; the last as init saw it:");
        match (self.get(b'M'), self.get(b'O'), self.get(b'G')) {
            (Some(m), Some(o), Some(g)) => {
                s.push_str(&format!(" mode {m:o} owner {o}:{g}"));
            }
            _ => s.push_str(" cannot stat it"),
        }
        if let Some(f) = self.get(b'F') {
            let noexec = if f & 8 != 0 { " (noexec)" } else { "" };
            s.push_str(&format!(" on a mount with flags {f:#x}{noexec}"));
        }
        if let (Some(m), Some(o)) = (self.get(b'R'), self.get(b'S')) {
            s.push_str(&format!(", / mode {m:o} owner {o}"));
        }
        if let (Some(u), Some(g)) = (self.get(b'U'), self.get(b'V')) {
            s.push_str(&format!(", init as {u}:{g}"));
        }
        s
    }
}

/// What init's waiter reports to the keeper: `P` and init's pid (in the
/// runtime's PID namespace), then `E` and the failed step (index into
/// [`INIT_STEPS`] << 16 | errno) if init could not be started; end of
/// file when init was executed.
fn report(fd: RawFd, tag: u8, value: i32) {
    let mut m = [0u8; 5];
    m[0] = tag;
    m[1..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: five bytes from a live buffer to our pipe end.
    let _ = unsafe { libc::write(fd, m.as_ptr().cast(), m.len()) };
}

/// The waiter's steps, in the process the keeper forked (system calls
/// only; it never returns). The guest's PID namespace must be made from
/// inside its user namespace (so guest root can mount its `/proc`), and a
/// new PID namespace's first process is its PID 1: the waiter enters the
/// guest's namespaces as guest root ([`crate::guestns::enter_as_root`]),
/// makes the PID namespace, forks init into it ([`child_exec`]), reports
/// init's pid and ends as init ends (its exit code, or killed by the same
/// signal: what [`end_reason`] reads).
fn init_waiter(e: &Exec, report_fd: RawFd) -> ! {
    let fail = |(step, err): StepError| -> ! {
        let errno = err.raw_os_error().unwrap_or(libc::EINVAL) & 0xffff;
        report(report_fd, b'E', ((step as i32) << 16) | errno);
        // SAFETY: ends the forked process without the parent's handlers.
        unsafe { libc::_exit(127) }
    };
    // Named for what it is in `ps` and the domain's group (not the
    // runtime it was forked from).
    // SAFETY: prctl with a NUL-terminated literal.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pvguest-waiter".as_ptr(), 0, 0, 0) };
    if let Err(err) = rank_first_for_oom_in_child() {
        fail((0, err));
    }
    if let Err((n, err)) = crate::guestns::enter_as_root(&e.ns) {
        fail((1 + n, err));
    }
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: system calls on live values; the forked child runs
    // child_exec, which only makes system calls on `e`'s memory.
    let init = unsafe {
        // Dies with the keeper thread (set after the credentials
        // changed: a change clears it); never dumps core when it
        // mirrors init's fatal signal.
        let r = step(
            9,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0).into(),
        )
        .and_then(|()| step(10, libc::setrlimit(libc::RLIMIT_CORE, &no_core).into()))
        .and_then(|()| step(11, libc::unshare(libc::CLONE_NEWPID).into()));
        if let Err(err) = r {
            fail(err);
        }
        let pid = libc::fork();
        if pid < 0 {
            fail((12, io::Error::last_os_error()));
        }
        if pid == 0 {
            fail(child_exec(e));
        }
        pid
    };
    report(report_fd, b'P', init);
    // SAFETY: closes our copy of the report pipe; waits for our child;
    // mirrors its end on ourselves.
    unsafe {
        libc::close(report_fd);
        let mut st = 0;
        while libc::waitpid(init, &mut st, 0) < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(st) {
            let sig = libc::WTERMSIG(st);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(st))
    }
}

/// Reads one report (see [`report`]); `None` at end of file.
fn read_report(fd: &OwnedFd) -> io::Result<Option<(u8, i32)>> {
    let mut m = [0u8; 5];
    let mut got = 0;
    while got < m.len() {
        // SAFETY: reads into the live rest of `m`.
        let n = unsafe { libc::read(fd.as_raw_fd(), m[got..].as_mut_ptr().cast(), m.len() - got) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(None);
        }
        got += n as usize;
    }
    Ok(Some((m[0], i32::from_ne_bytes([m[1], m[2], m[3], m[4]]))))
}

/// Runs init (see the [module docs](self)) from a keeper thread that forks
/// its waiter ([`init_waiter`]: the runtime's own threads keep their
/// namespaces), which starts init with `PR_SET_PDEATHSIG` = `SIGKILL`
/// (the waiter has it too: when the runtime is killed, `xl destroy`, the
/// guest's whole PID namespace goes with it), and supervises it until it
/// exits. `started` gets init's pid (in the runtime's namespace).
fn run_init(
    exec: Exec,
    ctl: &ShutdownControl,
    started: impl FnOnce(u32),
) -> Result<ExitStatus, MachineError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<u32, MachineError>>();
    std::thread::scope(|s| {
        let keeper = s.spawn(move || -> Option<io::Result<ExitStatus>> {
            let mut exec = exec;
            let r = (|| {
                let (rd, wr) =
                    crate::guestns::cloexec_pipe().map_err(setup("make the init report pipe"))?;
                exec.report_fd = wr.as_raw_fd();
                // SAFETY: the child only makes system calls on memory
                // prepared before the fork (`exec`) and never returns.
                let waiter = unsafe { libc::fork() };
                if waiter < 0 {
                    return Err(setup("fork init's waiter")(io::Error::last_os_error()));
                }
                if waiter == 0 {
                    init_waiter(&exec, wr.as_raw_fd());
                }
                drop(wr);
                let mut facts = ExecFacts::default();
                let failed = |code: i32, facts: &ExecFacts| {
                    let n = usize::try_from(code >> 16).unwrap_or(usize::MAX);
                    let err = io::Error::from_raw_os_error(code & 0xffff);
                    if n + 1 >= INIT_STEPS.len() {
                        MachineError::NoInit {
                            tried: String::new(),
                            facts: facts.describe(),
                            source: err,
                        }
                    } else {
                        setup(format!("start init: {}", INIT_STEPS[n]))(err)
                    }
                };
                let mut init = None;
                loop {
                    match read_report(&rd).map_err(setup("read init's report"))? {
                        Some((b'P', pid)) => init = Some(pid),
                        Some((tag, v)) if FACT_TAGS.contains(&tag) => facts.0.push((tag, v)),
                        Some((_, code)) => {
                            reap(waiter);
                            return Err(failed(code, &facts));
                        }
                        None => break,
                    }
                }
                match init {
                    Some(pid) => Ok((waiter, pid)),
                    None => {
                        reap(waiter);
                        Err(setup("start init")(io::Error::other("init's waiter ended")))
                    }
                }
            })();
            match r {
                Ok((waiter, init)) => {
                    let _ = tx.send(Ok(init.unsigned_abs()));
                    Some(supervise(waiter, init, ctl))
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            }
        });
        let first = rx.recv().unwrap_or_else(|_| {
            Err(MachineError::Setup {
                what: "start init".into(),
                source: io::Error::other("the init keeper thread ended"),
            })
        });
        if let Ok(pid) = &first {
            started(*pid);
        }
        let end = keeper.join();
        first?;
        match end {
            Ok(Some(st)) => st.map_err(setup("wait for init")),
            _ => Err(MachineError::Setup {
                what: "wait for init".into(),
                source: io::Error::other("the init keeper thread panicked"),
            }),
        }
    })
}

/// Waits for our child `pid` to end.
fn reap(pid: libc::pid_t) {
    let mut st = 0;
    // SAFETY: waits for our own child into a live int.
    while unsafe { libc::waitpid(pid, &mut st, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// Waits for init's waiter (`waiter`, which ends as init ends), passing
/// the toolstack's request to init (`init`: [`request_signal`], then
/// `SIGKILL` after the grace period).
fn supervise(
    waiter: libc::pid_t,
    init: libc::pid_t,
    ctl: &ShutdownControl,
) -> io::Result<ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(init);
    // The waiter's end and the request wake this thread: no polling.
    let pidfd = crate::control::pidfd_open(waiter);
    let mut asked: Option<Instant> = None;
    loop {
        let mut st = 0;
        // SAFETY: polls our own child into a live int.
        let r = unsafe { libc::waitpid(waiter, &mut st, libc::WNOHANG) };
        if r == waiter {
            return Ok(ExitStatus::from_raw(st));
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        match asked {
            None => {
                if let Some(r) = ctl.requested() {
                    let _ = nix::sys::signal::kill(pid, request_signal(r));
                    asked = Some(Instant::now());
                    continue;
                }
                crate::control::wait_exit_or_request(pidfd.as_ref(), Some(ctl), None);
            }
            Some(t) => {
                let left = crate::control::GRACE.saturating_sub(t.elapsed());
                if left.is_zero() {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
                crate::control::wait_exit_or_request(
                    pidfd.as_ref(),
                    None,
                    Some(left.max(Duration::from_millis(100))),
                );
            }
        }
    }
}

/// Boots the machine and runs it until its init ends (see the [module
/// docs](self)); returns the domain's shutdown reason. Writes `pvboot ...`
/// lines to `out` (unless `quiet`).
///
/// # Errors
/// The root cannot be mounted, no init can be started: a Linux kernel
/// panics there (the caller crashes the domain).
pub fn boot(
    spec: &MachineSpec,
    ns: &GuestNamespaces,
    ctl: &ShutdownControl,
    out: &mut dyn Write,
) -> Result<ShutdownReason, MachineError> {
    let mut exec = Exec::new(
        &spec.params,
        matches!(spec.root, RootSource::Ramdisk(_)),
        ns.fds(),
    )?;
    let tried = exec.tried();
    let root_disk = match &spec.root {
        RootSource::Disk(d) => Some(d.as_str()),
        RootSource::Ramdisk(_) => None,
    };
    let (listen_ours, listen_init) = crate::mountd::listener_pair()?;
    exec.listener_sock = listen_init.as_raw_fd();
    let mounted = mount_root(spec, out)?;
    let mut loops = Vec::new();
    let mountd_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Wakes the mount handler at the end (it sleeps until a call).
    let mountd_woken = std::sync::Arc::new(
        nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .ok(),
    );
    let mut mountd_thread = None;
    let r = (|| {
        idmap_root(ns)?;
        loops = crate::mountd::attach_loops(&spec.disks, root_disk)?;
        mount_dev(spec, ns, &loops)?;
        for d in ["proc", "sys"] {
            ensure_dir(&Path::new(STAGE).join(d))?;
        }
        let st = run_init(exec, ctl, |pid| {
            if !spec.params.quiet {
                let _ = emit(
                    out,
                    "pvboot init-started",
                    &[
                        ("hostname", spec.hostname.clone()),
                        ("pid", pid.to_string()),
                    ],
                );
            }
            // The handler of the guest's mount calls (init sent its
            // filter's listener before it executed).
            drop(listen_init);
            let handler = match crate::mountd::recv_fd(&listen_ours).and_then(|l| {
                l.map(|l| crate::mountd::Mountd::new(l, &loops, ns.user_fd(), ns.ids))
                    .transpose()
            }) {
                Ok(Some(m)) => Some(m),
                Ok(None) => {
                    tracing::warn!("init sent no mount listener");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %xen_diag::ErrorChain(&e), "no mount handler");
                    None
                }
            };
            let _ = out.flush();
            // The guest runs: the runtime's set-up is over.
            crate::jail::after_setup(out);
            // The handler starts jailed: no guest mount call is served
            // with the runtime's set-up powers (calls made meanwhile wait
            // in the listener's queue).
            if let Some(m) = handler {
                let stop = std::sync::Arc::clone(&mountd_stop);
                let woken = std::sync::Arc::clone(&mountd_woken);
                mountd_thread = std::thread::Builder::new()
                    .name("mountd".into())
                    .spawn(move || {
                        use std::os::fd::AsFd;
                        m.serve_until(&stop, woken.as_ref().as_ref().map(|e| e.as_fd()))
                    })
                    .map_err(|e| tracing::warn!(error = %e, "cannot start the mount handler"))
                    .ok();
            }
        })
        .map_err(|e| match e {
            MachineError::NoInit { source, facts, .. } => MachineError::NoInit {
                tried: tried.clone(),
                facts,
                source,
            },
            e => e,
        })?;
        let reason = ctl
            .requested()
            .or_else(|| end_reason(st))
            .unwrap_or(ShutdownReason::Crash);
        let _ = emit(
            out,
            "pvboot init-exited",
            &[
                ("status", st.to_string().replace(' ', "_")),
                (
                    "reason",
                    match reason {
                        ShutdownReason::Reboot => "reboot",
                        ShutdownReason::Poweroff => "poweroff",
                        _ => "crash",
                    }
                    .into(),
                ),
            ],
        );
        Ok(reason)
    })();
    mountd_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(w) = mountd_woken.as_ref() {
        let _ = w.write(1);
    }
    if let Some(h) = mountd_thread {
        let _ = h.join();
    }
    crate::mountd::release_loops(loops);
    unmount_root(&mounted);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_root_disk_takes_whole_xvd_disks_only() {
        assert_eq!(root_disk("/dev/xvda").expect("disk"), "xvda");
        assert_eq!(root_disk("/dev/xvdab").expect("disk"), "xvdab");
        assert!(matches!(
            root_disk("/dev/xvda1"),
            Err(MachineError::Partition(_))
        ));
        assert!(matches!(
            root_disk("/dev/sda"),
            Err(MachineError::BadRoot(_))
        ));
        assert!(matches!(root_disk("xvda"), Err(MachineError::BadRoot(_))));
        assert!(matches!(
            root_disk("/dev/xvd"),
            Err(MachineError::BadRoot(_))
        ));
    }

    #[test]
    fn test_end_reason_maps_reboot_signals_and_panics_otherwise() {
        let sig = |s: Signal| ExitStatus::from_raw(s as i32);
        assert_eq!(
            end_reason(sig(Signal::SIGHUP)),
            Some(ShutdownReason::Reboot)
        );
        assert_eq!(
            end_reason(sig(Signal::SIGINT)),
            Some(ShutdownReason::Poweroff)
        );
        assert_eq!(end_reason(sig(Signal::SIGKILL)), None);
        assert_eq!(end_reason(ExitStatus::from_raw(0)), None);
        assert_eq!(end_reason(ExitStatus::from_raw(1 << 8)), None);
    }

    #[test]
    fn test_request_signal_is_what_busybox_init_takes() {
        assert_eq!(request_signal(ShutdownReason::Poweroff), Signal::SIGUSR2);
        assert_eq!(request_signal(ShutdownReason::Reboot), Signal::SIGTERM);
    }
}
