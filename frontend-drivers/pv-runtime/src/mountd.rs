//! Mounting on the guest's behalf: guest root mounts its own PV disks
//! (`mount /dev/xvdb /mnt`) although its user namespace may not mount a
//! block file system, as LXD's `security.syscalls.intercept.mount` does.
//!
//! ## The disks as block devices
//!
//! A PV disk is a FUSE block file ([`crate::blockfile`]), which `mount`
//! and `mkfs` would have to put on a loop device, and guest root may not
//! make one. So the runtime (host root, before its jail) attaches a loop
//! device to each disk that is not the root ([`attach_loops`]), keeps it
//! open and marks it autoclear, and the guest's `/dev/xvdX` is a block
//! node of that loop device owned by guest root ([`crate::machine`]):
//! `mkfs.ext2 /dev/xvdb`, `dd`, `blkid` work on it directly. The loop
//! device goes when the guest's mounts and the runtime's descriptor are
//! gone ([`release_loops`]).
//!
//! ## Intercepting `mount(2)`
//!
//! Init installs a seccomp filter before it executes ([`install_filter`]:
//! `SECCOMP_FILTER_FLAG_NEW_LISTENER`, inherited by every guest process)
//! whose `mount` and `mount_setattr` calls (x86-64, x32 and i386 numbers)
//! become user notifications, and passes the listener to the runtime over
//! a socket ([`send_fd`]). The runtime's handler ([`Mountd::serve`], one
//! thread) reads each call's arguments from its memory
//! (`process_vm_readv`: `/proc/PID/mem` is its owner's only) and decides
//! ([`classify`]):
//!
//! - a new mount of a type the runtime mounts needs a caller with
//!   `CAP_SYS_ADMIN` in its user namespace (guest root), as the kernel
//!   would; otherwise `EPERM`;
//! - a file system type of [`OWN_TYPES`] (ext2/3/4, vfat) is mounted by the
//!   runtime when the source, resolved in the guest's root, is the block
//!   node of one of *this domain's* loop devices (compared by device
//!   number, so no path trick names another device): `fsopen` /
//!   `fsconfig` on the runtime's own node of that loop device,
//!   `fsmount` with `MOUNT_ATTR_NODEV` always (the guest writes its disk's
//!   raw blocks, so it could plant a device node there), idmapped to the
//!   guest's user namespace (`mount_setattr(MOUNT_ATTR_IDMAP)`, as its
//!   root; vfat gets `uid=`/`gid=` of guest root instead), then attached
//!   by a short-lived thread that leaves the runtime's shared file system
//!   state (`unshare(CLONE_FS)`), enters the guest's mount namespace and
//!   root and working directory (`setns`, `chroot`), and `move_mount`s it
//!   onto the target. Another source: `EPERM`; options that name host
//!   paths or devices (`journal_path`, `journal_dev`) or panic the host
//!   (`errors=panic`): `EPERM`; otherwise the kernel's errno.
//! - a type the kernel mounts in a user namespace ([`KERNEL_TYPES`]: proc,
//!   sysfs, tmpfs, ...), and bind, move and propagation changes, continue
//!   (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`): the kernel's own user namespace
//!   checks decide them, with the guest's credentials, whatever the guest
//!   changes in its memory meanwhile.
//! - any other type: `ENODEV` (never a host device mount).
//! - a remount without `MS_NODEV`, and every `mount_setattr`, are refused
//!   (`EPERM`, `ENOSYS`: util-linux then falls back to `mount(2)`): they
//!   could clear the `nodev` of a disk mounted here (a mount moved in is
//!   not locked as copied ones are). Decided on the flags, which are
//!   registers the guest cannot change under a continued call.
//!
//! The pid of a notification may be reused once its caller is gone: after
//! reading the memory and after opening the caller's `/proc` files, the
//! notification is checked still pending (`SECCOMP_IOCTL_NOTIF_ID_VALID`).
//! Guest input never panics the handler; one guest's flood queues behind
//! its own handler only (every domain has its runtime).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::guestns::IdRange;

/// The file system types mounted on the guest's behalf (block file
/// systems of its own disks).
pub const OWN_TYPES: &[&str] = &["ext2", "ext3", "ext4", "vfat"];
/// The types the kernel itself lets a user namespace mount: its checks
/// decide them.
pub const KERNEL_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "ramfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "overlay",
    "fuse",
    "binfmt_misc",
    "bpf",
];
/// Mount options refused whatever their value (they name a host path or
/// device), and option strings refused as they are (they panic the host).
const REFUSED_KEYS: &[&str] = &["journal_path", "journal_dev"];
const REFUSED_OPTIONS: &[&str] = &["errors=panic"];

/// The longest path or type string read from the guest (as `PATH_MAX`).
const MAX_STRING: usize = 4096;
/// How long the listener is polled before the stop flag is looked at
/// without a stop descriptor.
const POLL_MS: i32 = 200;
/// The same with one (a safety net: the stop wakes it).
const POLL_IDLE_MS: i32 = 30_000;
/// How long a loop device gets to be released at the end.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const NR_MOUNT_X86_64: u32 = 165;
const NR_MOUNT_I386: u32 = 21;
/// `mount_setattr` has one number on every architecture since 5.12.
const NR_MOUNT_SETATTR: u32 = 442;

/// Why the disks could not be set up for the guest.
#[derive(Debug, thiserror::Error)]
pub enum MountdError {
    /// A loop device could not be attached to a disk.
    #[error("cannot attach a loop device to /dev/{disk}: {why}")]
    Loop {
        /// The disk.
        disk: String,
        /// What failed.
        why: String,
    },
    /// A set-up step failed.
    #[error("cannot {what}")]
    Os {
        /// The step.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// A PV disk on a loop device the runtime holds open.
#[derive(Debug)]
pub struct LoopDisk {
    /// The disk's name (`xvdb`).
    pub name: String,
    /// The loop device's number (`st_rdev`).
    pub rdev: u64,
    /// The loop device (`/dev/loopN` in the runtime's namespace).
    pub loopdev: String,
    /// Held open: the device stays attached (and this one) while the
    /// guest runs; closing it lets the autoclear happen.
    _held: std::fs::File,
}

/// Attaches a loop device to each of `disks` (block files `/dev/<name>`)
/// but `root`, held open and set to clear itself when the last user goes
/// (see the [module docs](self)).
///
/// # Errors
/// `losetup` failed or the device cannot be opened.
pub fn attach_loops(disks: &[String], root: Option<&str>) -> Result<Vec<LoopDisk>, MountdError> {
    let mut loops = Vec::new();
    for name in disks.iter().filter(|d| Some(d.as_str()) != root) {
        let fail = |why: String| MountdError::Loop {
            disk: name.clone(),
            why,
        };
        let file = format!("/dev/{name}");
        // A read-only disk makes a read-only loop device (losetup falls
        // back).
        let loopdev = crate::blockfile::attach_free_loop(&file).map_err(fail)?;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&loopdev)
            .or_else(|_| std::fs::File::open(&loopdev));
        let opened = match opened {
            Ok(f) => f,
            Err(e) => {
                let _ = crate::machine::run("losetup", &["-d", &loopdev]);
                return Err(fail(format!("open {loopdev}: {e}")));
            }
        };
        // Busy (we hold it): `-d` marks it autoclear.
        let _ = crate::machine::run("losetup", &["-d", &loopdev]);
        let rdev = opened
            .metadata()
            .map_err(|e| fail(format!("stat {loopdev}: {e}")))?
            .rdev();
        loops.push(LoopDisk {
            name: name.clone(),
            rdev,
            loopdev,
            _held: opened,
        });
    }
    Ok(loops)
}

/// Closes the runtime's loop devices and waits (bounded) until the kernel
/// let go of their block files: every write of the guest's mounts has
/// reached the PV disks then. The guest's mounts must be gone (its
/// processes ended).
pub fn release_loops(loops: Vec<LoopDisk>) {
    let names: Vec<String> = loops.iter().map(|l| l.loopdev.clone()).collect();
    drop(loops);
    for l in names {
        crate::machine::wait_loop_released(&l, RELEASE_TIMEOUT);
    }
}

/// The loop devices of the disks attached while the guest runs
/// ([`crate::hotplug`]), its own disks as much as the boot ones.
static HOT_DISKS: std::sync::Mutex<Vec<(u64, CString)>> = std::sync::Mutex::new(Vec::new());

fn lock_hot() -> std::sync::MutexGuard<'static, Vec<(u64, CString)>> {
    HOT_DISKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes the hot-added disk `l` one the guest may mount.
pub fn add_hot_disk(l: &LoopDisk) {
    if let Ok(c) = CString::new(l.loopdev.as_str()) {
        lock_hot().push((l.rdev, c));
    }
}

/// The guest may no longer mount the loop device `rdev` (its disk is
/// being detached).
pub fn remove_hot_disk(rdev: u64) {
    lock_hot().retain(|(r, _)| *r != rdev);
}

/// The first argument that makes `xen-pvguest` the loop broker
/// ([`broker_main`]), followed by the guest root's host uid and gid.
pub const BROKER_ARG: &str = "--loop-broker";
/// How long a loop device detached by the broker gets to be released.
const BROKER_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The jailed runtime's way to a loop device for a disk attached while
/// the guest runs: it may neither open `/dev/loop-control` nor make a
/// device node, so a helper started before the jail ([`LoopBroker::spawn`],
/// `xen-pvguest --loop-broker UID GID`, host root in the runtime's mount
/// namespace) does [`attach_loops`] for it and passes the loop device back
/// over a socket. It only takes the names of the runtime's own block files
/// (`xvdX`, in its `/dev`, mounted by the runtime's uid:
/// [`broker_own_file`]) and loop device paths; it ends when the runtime
/// closes its socket (the runtime's end).
#[derive(Debug)]
pub struct LoopBroker {
    sock: std::sync::Mutex<Option<OwnedFd>>,
    child: std::sync::Mutex<std::process::Child>,
}

impl LoopBroker {
    /// Starts the broker (before the jail), giving the loop devices' nodes
    /// to `owner` (guest root's host uid and gid) while they are attached.
    ///
    /// # Errors
    /// The socket pair or the process cannot be made.
    pub fn spawn(owner: (u32, u32)) -> Result<Self, MountdError> {
        let (ours, theirs) = listener_pair()?;
        let child = std::process::Command::new("/proc/self/exe")
            .arg(BROKER_ARG)
            .arg(owner.0.to_string())
            .arg(owner.1.to_string())
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(os("start the loop broker"))?;
        Ok(Self {
            sock: std::sync::Mutex::new(Some(ours)),
            child: std::sync::Mutex::new(child),
        })
    }

    fn ask(&self, req: &str) -> Result<(String, Vec<OwnedFd>), MountdError> {
        use std::os::fd::AsFd;
        let sock = self
            .sock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sock = sock
            .as_ref()
            .ok_or_else(|| os("ask the loop broker")(io::ErrorKind::NotConnected.into()))?;
        xen_shim_proto::sys::send_msg(sock.as_fd(), req.as_bytes(), &[])
            .map_err(os("ask the loop broker"))?;
        match xen_shim_proto::sys::recv_msg(sock.as_fd(), false) {
            Ok(Some((data, fds))) => Ok((String::from_utf8_lossy(&data).into_owned(), fds)),
            Ok(None) => Err(os("hear the loop broker")(
                io::ErrorKind::UnexpectedEof.into(),
            )),
            Err(e) => Err(os("hear the loop broker")(e)),
        }
    }

    /// A loop device on the block file `/dev/<name>`, held open and
    /// autoclear, its node in the runtime's `/dev` guest root's.
    ///
    /// # Errors
    /// The broker refused or failed (its reason).
    pub fn attach(&self, name: &str) -> Result<LoopDisk, MountdError> {
        let fail = |why: String| MountdError::Loop {
            disk: name.to_owned(),
            why,
        };
        let (reply, mut fds) = self.ask(&format!("attach {name}"))?;
        let mut words = reply.split(' ');
        match (words.next(), words.next(), words.next(), fds.pop()) {
            (Some("ok"), Some(rdev), Some(loopdev), Some(fd)) => Ok(LoopDisk {
                name: name.to_owned(),
                rdev: rdev
                    .parse()
                    .map_err(|_| fail(format!("bad broker reply {reply}")))?,
                loopdev: loopdev.to_owned(),
                _held: std::fs::File::from(fd),
            }),
            _ => Err(fail(reply.trim_start_matches("err ").to_owned())),
        }
    }

    /// Whether a file system is mounted on `l` or a program opened it
    /// exclusively (`mkfs`): an `O_EXCL` open of it fails.
    #[must_use]
    pub fn busy(&self, l: &LoopDisk) -> bool {
        !matches!(self.ask(&format!("busy {}", l.loopdev)), Ok((r, _)) if r == "free")
    }

    /// Lets go of `l`: its node is host root's again, the runtime's
    /// descriptor closed (the device clears itself once no mount or
    /// program holds it); waits (bounded) until the kernel released it.
    pub fn release(&self, l: LoopDisk) {
        let loopdev = l.loopdev.clone();
        drop(l);
        let _ = self.ask(&format!("release {loopdev}"));
        crate::machine::wait_loop_released(&loopdev, BROKER_RELEASE_TIMEOUT);
    }
}

impl Drop for LoopBroker {
    fn drop(&mut self) {
        // Its end of the socket closes: it reads end of file and exits.
        self.sock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let _ = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .wait();
    }
}

/// A name the broker takes: `xvd` and lower-case letters.
fn broker_disk_name(name: &str) -> bool {
    name.len() <= 8
        && name
            .strip_prefix("xvd")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase()))
}

/// A loop device path the broker takes: `/dev/loopN`.
fn broker_loop_path(p: &str) -> bool {
    p.strip_prefix("/dev/loop")
        .is_some_and(|n| !n.is_empty() && n.len() <= 7 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `/dev/<name>` is the runtime's own block file: the last mount
/// on that point is a whole `xen-blkfront` FUSE file system mounted by the
/// runtime's uid now (its parent's: a jailed runtime's FUSE mounts carry
/// its uid as `user_id`), not a bind of another file (a bind shows the
/// original mount's owner and root), so the broker never gives the runtime
/// a loop device on a file it could not read itself.
fn broker_own_file(name: &str) -> Result<(), String> {
    let ppid = std::os::unix::process::parent_id();
    let status = std::fs::read_to_string(format!("/proc/{ppid}/status"))
        .map_err(|e| format!("read the runtime's status: {e}"))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("the runtime's uid is unknown")?;
    let point = format!("/dev/{name}");
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?;
    let line = info
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(point.as_str()))
        .ok_or_else(|| format!("{point} is not mounted"))?;
    let (fields, tail) = line
        .split_once(" - ")
        .ok_or_else(|| format!("bad mountinfo line for {point}"))?;
    let mut tail = tail.split(' ');
    let (fstype, source, super_opts) = (tail.next(), tail.next(), tail.next().unwrap_or(""));
    let root = fields.split(' ').nth(3);
    let owner = format!("user_id={uid}");
    if matches!(fstype, Some("fuse" | "fuse.pvdisk"))
        && source == Some("xen-blkfront")
        && root == Some("/")
        && super_opts.split(',').any(|o| o == owner)
    {
        Ok(())
    } else {
        Err(format!(
            "{point} is not the runtime's own block file (a whole xen-blkfront FUSE mount with {owner})"
        ))
    }
}

/// The broker's answer to one request (see [`LoopBroker`]).
fn broker_answer(req: &str, owner: (u32, u32)) -> (String, Option<LoopDisk>) {
    let (verb, arg) = req.split_once(' ').unwrap_or((req, ""));
    match verb {
        "attach" if broker_disk_name(arg) => {
            if let Err(e) = broker_own_file(arg) {
                return (format!("err {e}"), None);
            }
            match attach_loops(&[arg.to_owned()], None).map(|mut v| v.pop()) {
                Ok(Some(l)) => {
                    if let Err(e) =
                        std::os::unix::fs::chown(&l.loopdev, Some(owner.0), Some(owner.1))
                    {
                        return (format!("err give {} to guest root: {e}", l.loopdev), None);
                    }
                    (format!("ok {} {}", l.rdev, l.loopdev), Some(l))
                }
                Ok(None) => ("err no loop device".to_owned(), None),
                Err(e) => (format!("err {}", xen_diag::ErrorChain(&e)), None),
            }
        }
        "busy" if broker_loop_path(arg) => {
            let excl = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(arg);
            match excl {
                Ok(_) => ("free".to_owned(), None),
                Err(_) => ("busy".to_owned(), None),
            }
        }
        "release" if broker_loop_path(arg) => {
            let _ = std::os::unix::fs::chown(arg, Some(0), Some(0));
            ("ok".to_owned(), None)
        }
        _ => ("err bad request".to_owned(), None),
    }
}

/// The loop broker's process (`xen-pvguest --loop-broker UID GID`): answers
/// the runtime's requests on its standard input until it closes.
#[must_use]
pub fn broker_main(args: &[String]) -> std::process::ExitCode {
    use std::os::fd::AsFd;
    let owner = match args {
        [u, g] => match (u.parse(), g.parse()) {
            (Ok(u), Ok(g)) => (u, g),
            _ => return std::process::ExitCode::from(2),
        },
        _ => return std::process::ExitCode::from(2),
    };
    let stdin = io::stdin();
    loop {
        let req = match xen_shim_proto::sys::recv_msg(stdin.as_fd(), false) {
            Ok(Some((data, _))) => String::from_utf8_lossy(&data).into_owned(),
            _ => return std::process::ExitCode::SUCCESS,
        };
        let (reply, l) = broker_answer(&req, owner);
        let fds: Vec<RawFd> = l.iter().map(|l| l._held.as_raw_fd()).collect();
        if xen_shim_proto::sys::send_msg(stdin.as_fd(), reply.as_bytes(), &fds).is_err() {
            return std::process::ExitCode::SUCCESS;
        }
        // The runtime holds it now.
        drop(l);
    }
}

/// One BPF instruction.
const fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ_K: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const RET_K: u32 = libc::BPF_RET | libc::BPF_K;
/// `seccomp_data`: `nr` at 0, `arch` at 4.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

/// The guest's filter: `mount` and `mount_setattr` notify, anything else
/// is allowed.
static FILTER: [libc::sock_filter; 13] = [
    /* 0 */ insn(LD_W_ABS, 0, 0, OFF_ARCH),
    /* 1 */ insn(JEQ_K, 0, 5, AUDIT_ARCH_X86_64), // else 7
    /* 2 */ insn(LD_W_ABS, 0, 0, OFF_NR),
    /* 3 */ insn(JEQ_K, 7, 0, NR_MOUNT_X86_64), // 11: notify
    /* 4 */ insn(JEQ_K, 6, 0, NR_MOUNT_X86_64 | X32_SYSCALL_BIT),
    /* 5 */ insn(JEQ_K, 5, 0, NR_MOUNT_SETATTR),
    /* 6 */ insn(JEQ_K, 4, 5, NR_MOUNT_SETATTR | X32_SYSCALL_BIT), // else 12: allow
    /* 7 */ insn(JEQ_K, 0, 4, AUDIT_ARCH_I386), // else 12
    /* 8 */ insn(LD_W_ABS, 0, 0, OFF_NR),
    /* 9 */ insn(JEQ_K, 1, 0, NR_MOUNT_I386),
    /* 10 */ insn(JEQ_K, 0, 1, NR_MOUNT_SETATTR),
    /* 11 */ insn(RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
    /* 12 */ insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
];

/// In init's process (single-threaded, before exec; system calls only):
/// installs the guest's filter (see the [module docs](self)) and returns
/// its listener. Guest root holds `CAP_SYS_ADMIN` in its user namespace,
/// so no `no_new_privs` is needed.
pub(crate) fn install_filter() -> Result<RawFd, io::Error> {
    let prog = libc::sock_fprog {
        len: FILTER.len() as u16,
        filter: FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp with a live program of FILTER.len() instructions.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd as RawFd)
}

/// A socket pair (the runtime's end, init's end) for the listener.
///
/// # Errors
/// The kernel refused.
pub fn listener_pair() -> Result<(OwnedFd, OwnedFd), MountdError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair into a two-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(MountdError::Os {
            what: "make the mount listener's socket pair".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The control buffer of one descriptor.
#[repr(C, align(8))]
struct FdCmsg([u8; 24]);

/// Sends `fd` over `sock` (`SCM_RIGHTS`); system calls only, no
/// allocation (init's process before exec, so not
/// `xen_shim_proto::sys::send_msg`, which allocates its control buffer).
pub(crate) fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), io::Error> {
    let mut byte = [b'L'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut ctl = FdCmsg([0; 24]);
    // SAFETY: a msghdr over live stack buffers; CMSG_* walk the control
    // buffer, which has room for one header and one int (24 bytes).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives the listener init sent (without waiting); `None` if none came.
///
/// # Errors
/// The socket failed.
pub fn recv_fd(sock: &OwnedFd) -> Result<Option<OwnedFd>, MountdError> {
    use std::os::fd::AsFd;
    match xen_shim_proto::sys::recv_msg(sock.as_fd(), true) {
        Ok(Some((_, fds))) => Ok(fds.into_iter().next()),
        Ok(None) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(MountdError::Os {
            what: "receive the mount listener".into(),
            source: e,
        }),
    }
}

/// What the handler answers a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel runs the call as the guest's (its checks decide).
    Continue,
    /// The call fails with this errno.
    Errno(i32),
    /// A mount of one of the guest's disk types: the runtime decides and
    /// performs it.
    Mount,
}

/// The decision on a call's flags and type alone (see the [module
/// docs](self)): `setattr` is a `mount_setattr` call; `fstype` is `None`
/// when the pointer was null (the type is only read when the flags make a
/// new mount).
#[must_use]
pub fn classify(setattr: bool, flags: u64, fstype: Option<&str>) -> Verdict {
    if setattr {
        return Verdict::Errno(libc::ENOSYS);
    }
    let mut flags = flags;
    // mount(2)'s old magic in the high half.
    if flags & 0xffff_0000 == 0xC0ED_0000 {
        flags &= !0xffff_0000;
    }
    if flags & libc::MS_REMOUNT != 0 {
        return if flags & libc::MS_NODEV != 0 {
            Verdict::Continue
        } else {
            Verdict::Errno(libc::EPERM)
        };
    }
    let not_new =
        libc::MS_BIND | libc::MS_MOVE | libc::MS_SHARED | libc::MS_PRIVATE | libc::MS_SLAVE;
    if flags & (not_new | libc::MS_UNBINDABLE) != 0 {
        return Verdict::Continue;
    }
    match fstype {
        None => Verdict::Continue,
        Some(t) if OWN_TYPES.contains(&t) => Verdict::Mount,
        Some(t) if KERNEL_TYPES.contains(&t) => Verdict::Continue,
        Some(_) => Verdict::Errno(libc::ENODEV),
    }
}

/// A mount option as `fsconfig` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOption {
    /// `key`.
    Flag(String),
    /// `key=value`.
    Value(String, String),
}

/// Splits mount(2)'s data string (`a,b=c`) into options; `Err` (EPERM)
/// for an option refused (see the [module docs](self)).
///
/// # Errors
/// `EPERM` for an option that names a host path or device, or panics.
pub fn parse_options(data: &str) -> Result<Vec<MountOption>, i32> {
    let mut v = Vec::new();
    for o in data.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if REFUSED_OPTIONS.contains(&o) {
            return Err(libc::EPERM);
        }
        match o.split_once('=') {
            Some((k, val)) => {
                if REFUSED_KEYS.contains(&k) {
                    return Err(libc::EPERM);
                }
                v.push(MountOption::Value(k.to_owned(), val.to_owned()));
            }
            None => {
                if REFUSED_KEYS.contains(&o) {
                    return Err(libc::EPERM);
                }
                v.push(MountOption::Flag(o.to_owned()));
            }
        }
    }
    Ok(v)
}

/// The mount attributes (`fsmount`) for mount(2) flags: `nodev` always.
#[must_use]
pub fn mount_attrs(flags: u64) -> u64 {
    let mut a = libc::MOUNT_ATTR_NODEV;
    for (f, m) in [
        (libc::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (libc::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (libc::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags & f != 0 {
            a |= m;
        }
    }
    if flags & libc::MS_NOATIME != 0 {
        a |= libc::MOUNT_ATTR_NOATIME;
    } else if flags & libc::MS_STRICTATIME != 0 {
        a |= libc::MOUNT_ATTR_STRICTATIME;
    }
    a
}

/// The handler of the guest's mount calls (see the [module docs](self)).
#[derive(Debug)]
pub struct Mountd {
    listener: OwnedFd,
    /// Each disk's loop device number and its path for `fsconfig` (in the
    /// runtime's namespace; the device is held open, so it stays the one).
    disks: Vec<(u64, CString)>,
    userns: OwnedFd,
    ids: IdRange,
}

fn os(what: &str) -> impl FnOnce(io::Error) -> MountdError + '_ {
    move |source| MountdError::Os {
        what: what.to_owned(),
        source,
    }
}

/// `-1` as the errno of the last call.
fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Closes a raw descriptor on drop.
struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: closes a descriptor this value owns.
            unsafe { libc::close(self.0) };
        }
    }
}

fn check(r: libc::c_long) -> Result<libc::c_long, i32> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

impl Mountd {
    /// A handler on `listener` for the guest's disks `loops`, whose mounts
    /// are idmapped to the user namespace `userns` (a descriptor, dup'ed)
    /// with the ids `ids`.
    ///
    /// # Errors
    /// The descriptor cannot be duplicated.
    pub fn new(
        listener: OwnedFd,
        loops: &[LoopDisk],
        userns: RawFd,
        ids: IdRange,
    ) -> Result<Self, MountdError> {
        // SAFETY: duplicates a descriptor the caller holds open.
        let dup = unsafe { libc::fcntl(userns, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(os("duplicate the user namespace descriptor")(
                io::Error::last_os_error(),
            ));
        }
        let disks = loops
            .iter()
            .map(|l| {
                CString::new(l.loopdev.as_str())
                    .map(|c| (l.rdev, c))
                    .map_err(|_| os("name a loop device")(io::ErrorKind::InvalidInput.into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            listener,
            disks,
            // SAFETY: `dup` is new and ours.
            userns: unsafe { OwnedFd::from_raw_fd(dup) },
            ids,
        })
    }

    /// Answers the guest's calls until `stop` is set or no guest process
    /// is left (the listener hangs up).
    pub fn serve(&self, stop: &AtomicBool) {
        self.serve_until(stop, None);
    }

    /// [`Mountd::serve`] that sleeps until a call or `woken` (readable
    /// once `stop` is set) rather than looking at `stop` every 200 ms.
    pub fn serve_until(&self, stop: &AtomicBool, woken: Option<BorrowedFd<'_>>) {
        let mut served = 0u64;
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: woken.map_or(-1, |w| w.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = if woken.is_some() {
                POLL_IDLE_MS
            } else {
                POLL_MS
            };
            // SAFETY: poll on two live pollfds of a local array (a negative
            // fd is ignored by poll).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n <= 0 {
                continue;
            }
            let pfd = fds[0];
            if pfd.revents == 0 {
                continue;
            }
            if pfd.revents & libc::POLLIN == 0 {
                if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                    break;
                }
                continue;
            }
            // SAFETY: a zeroed plain-data struct.
            let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: the RECV ioctl fills the struct it is given.
            let r = unsafe {
                libc::ioctl(
                    self.listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &mut req as *mut libc::seccomp_notif,
                )
            };
            if r < 0 {
                // ENOENT: the caller went away; EINTR: a signal.
                continue;
            }
            served += 1;
            let answer = self.handle(&req);
            let mut resp = libc::seccomp_notif_resp {
                id: req.id,
                val: 0,
                error: 0,
                flags: 0,
            };
            match answer {
                Ok(Verdict::Continue) => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
                Ok(_) => {}
                Err(e) => resp.error = -e,
            }
            tracing::debug!(pid = req.pid, nr = req.data.nr, ?answer, "guest mount call");
            // SAFETY: the SEND ioctl reads the live response.
            let _ = unsafe {
                libc::ioctl(
                    self.listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &mut resp as *mut libc::seccomp_notif_resp,
                )
            };
        }
        tracing::debug!(served, secs = t0.elapsed().as_secs(), "mount handler ends");
    }

    /// Whether notification `id` is still pending (its caller alive and
    /// waiting).
    fn valid(&self, id: u64) -> Result<(), i32> {
        let mut id = id;
        // SAFETY: the ID_VALID ioctl reads the live u64.
        let r = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &mut id as *mut u64,
            )
        };
        if r < 0 {
            Err(libc::ENOENT)
        } else {
            Ok(())
        }
    }

    /// The answer to one notification: `Ok(Continue)`, `Ok(Mount)` when
    /// the runtime mounted, or the errno.
    fn handle(&self, req: &libc::seccomp_notif) -> Result<Verdict, i32> {
        let nr = req.data.nr as u32 & !X32_SYSCALL_BIT;
        let setattr = nr == NR_MOUNT_SETATTR;
        let wide = req.data.arch == AUDIT_ARCH_X86_64;
        let arg = |i: usize| {
            let a = req.data.args[i];
            if wide {
                a
            } else {
                a & 0xffff_ffff
            }
        };
        let flags = arg(3);
        let new_mount = !setattr
            && flags & (libc::MS_REMOUNT | libc::MS_BIND | libc::MS_MOVE) == 0
            && flags & (libc::MS_SHARED | libc::MS_PRIVATE | libc::MS_SLAVE | libc::MS_UNBINDABLE)
                == 0;
        let pid = libc::pid_t::try_from(req.pid).map_err(|_| libc::ESRCH)?;
        let fstype = if new_mount && arg(2) != 0 {
            Some(read_string(pid, arg(2), 64)?)
        } else {
            None
        };
        let fstype_str = fstype.as_ref().map(|s| s.to_string_lossy());
        match classify(setattr, flags, fstype_str.as_deref()) {
            Verdict::Mount => {}
            v @ (Verdict::Continue | Verdict::Errno(_)) => {
                return match v {
                    Verdict::Errno(e) => Err(e),
                    _ => Ok(v),
                }
            }
        }
        let Some(fstype) = fstype else {
            return Err(libc::EINVAL);
        };
        if arg(0) == 0 || arg(1) == 0 {
            return Err(libc::EFAULT);
        }
        let source = read_string(pid, arg(0), MAX_STRING)?;
        let target = read_string(pid, arg(1), MAX_STRING)?;
        let data = if arg(4) != 0 {
            read_string(pid, arg(4), MAX_STRING)?
        } else {
            CString::default()
        };
        // Only a caller with CAP_SYS_ADMIN in its user namespace (guest
        // root) mounts, as the kernel would ask of it.
        if !has_sys_admin(pid) {
            return Err(libc::EPERM);
        }
        // The memory and status read were the caller's (its pid not
        // reused since).
        self.valid(req.id)?;
        let options = parse_options(&data.to_string_lossy())?;
        let proc = |n: &str| -> Result<Fd, i32> {
            let p = CString::new(format!("/proc/{}/{n}", req.pid)).map_err(|_| libc::EINVAL)?;
            // SAFETY: open of a NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC | if n == "ns/mnt" { 0 } else { libc::O_PATH },
                )
            };
            if fd < 0 {
                Err(last_errno())
            } else {
                Ok(Fd(fd))
            }
        };
        let mntns = proc("ns/mnt")?;
        let root = proc("root")?;
        let cwd = proc("cwd")?;
        self.valid(req.id)?;
        let loopdev = self.own_disk(&source, &root, &cwd)?;
        let mnt = self.make_mount(&fstype, &loopdev, flags, &options)?;
        attach(&mnt, &mntns, &root, &cwd, &target)?;
        Ok(Verdict::Mount)
    }

    /// The runtime's path of the loop device `source` names, resolved in
    /// the caller's root (absolute) or working directory (relative):
    /// `EPERM` unless it is one of this domain's disks.
    fn own_disk(&self, source: &CStr, root: &Fd, cwd: &Fd) -> Result<CString, i32> {
        let absolute = source.to_bytes().first() == Some(&b'/');
        // SAFETY: a zeroed plain-data struct.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT;
        let dir = if absolute { root.0 } else { cwd.0 };
        // SAFETY: openat2 of a NUL-terminated path with a live open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                source.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        let fd = Fd(check(fd)? as RawFd);
        // SAFETY: fstat of a live descriptor into a zeroed struct.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            check(libc::fstat(fd.0, &mut st).into())?;
            st
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFBLK {
            return Err(libc::EPERM);
        }
        self.disks
            .iter()
            .chain(lock_hot().iter())
            .find(|(rdev, _)| *rdev == st.st_rdev)
            .map(|(_, p)| p.clone())
            .ok_or(libc::EPERM)
    }

    /// A detached mount of `loopdev` (see the [module docs](self)).
    fn make_mount(
        &self,
        fstype: &CStr,
        loopdev: &CStr,
        flags: u64,
        options: &[MountOption],
    ) -> Result<Fd, i32> {
        // ext2 and ext3 through the ext4 driver, which mounts them: only
        // its `ext4` type allows an idmapped mount (`mount -t ext2` got
        // EINVAL from `mount_setattr`).
        let driver = match fstype.to_bytes() {
            b"ext2" | b"ext3" => c"ext4",
            _ => fstype,
        };
        // SAFETY: fsopen of a NUL-terminated type name.
        let fs = Fd(check(unsafe {
            libc::syscall(libc::SYS_fsopen, driver.as_ptr(), libc::FSOPEN_CLOEXEC)
        })? as RawFd);
        let set = |cmd: u32, key: Option<&CStr>, value: Option<&CStr>| -> Result<(), i32> {
            // SAFETY: fsconfig with NUL-terminated strings or nulls.
            check(unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.0,
                    cmd,
                    key.map_or(std::ptr::null(), CStr::as_ptr),
                    value.map_or(std::ptr::null(), CStr::as_ptr),
                    0,
                )
            })
            .map(|_| ())
        };
        let cs = |s: &str| CString::new(s).map_err(|_| libc::EINVAL);
        set(libc::FSCONFIG_SET_STRING, Some(c"source"), Some(loopdev))?;
        let vfat = fstype.to_bytes() == b"vfat";
        for o in options {
            match o {
                MountOption::Flag(k) => set(libc::FSCONFIG_SET_FLAG, Some(&cs(k)?), None)?,
                MountOption::Value(k, v) => {
                    // vfat's owner is an option (no idmapped mount): the
                    // guest's ids become its host ids.
                    let v = if vfat && (k == "uid" || k == "gid") {
                        let id = v.parse::<u32>().map_err(|_| libc::EINVAL)?;
                        self.ids.host_id(id).ok_or(libc::EINVAL)?.to_string()
                    } else {
                        v.clone()
                    };
                    set(libc::FSCONFIG_SET_STRING, Some(&cs(k)?), Some(&cs(&v)?))?;
                }
            }
        }
        if vfat {
            let has = |key: &str| {
                options
                    .iter()
                    .any(|o| matches!(o, MountOption::Value(k, _) if k == key))
            };
            let root = cs(&self.ids.first.to_string())?;
            for k in [c"uid", c"gid"] {
                if !has(&k.to_string_lossy()) {
                    set(libc::FSCONFIG_SET_STRING, Some(k), Some(&root))?;
                }
            }
        }
        if flags & libc::MS_RDONLY != 0 {
            set(libc::FSCONFIG_SET_FLAG, Some(c"ro"), None)?;
        }
        for (f, name) in [
            (libc::MS_SYNCHRONOUS, c"sync"),
            (libc::MS_DIRSYNC, c"dirsync"),
            (libc::MS_LAZYTIME, c"lazytime"),
        ] {
            if flags & f != 0 {
                set(libc::FSCONFIG_SET_FLAG, Some(name), None)?;
            }
        }
        set(libc::FSCONFIG_CMD_CREATE, None, None)?;
        // SAFETY: fsmount of our context descriptor.
        let mnt = Fd(check(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.0,
                libc::FSMOUNT_CLOEXEC,
                mount_attrs(flags),
            )
        })? as RawFd);
        if !vfat {
            let attr = libc::mount_attr {
                attr_set: libc::MOUNT_ATTR_IDMAP,
                attr_clr: 0,
                propagation: 0,
                userns_fd: self.userns.as_raw_fd() as u64,
            };
            // SAFETY: mount_setattr on our detached mount (empty path)
            // with a live attribute struct and its size.
            check(unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    mnt.0,
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH,
                    &attr as *const libc::mount_attr,
                    std::mem::size_of::<libc::mount_attr>(),
                )
            })?;
        }
        Ok(mnt)
    }
}

/// Whether process `pid`'s effective capabilities (`CapEff` of
/// `/proc/PID/status`) hold `CAP_SYS_ADMIN`.
fn has_sys_admin(pid: libc::pid_t) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << xen_jail::Cap::SysAdmin as u32) != 0)
}

/// Reads a NUL-terminated string of at most `max` bytes at `addr` of the
/// caller `pid`'s memory (`process_vm_readv`, as `/proc/PID/mem` reads
/// it, without the file's owner-only mode: `CAP_SYS_PTRACE` is enough), a
/// chunk at a time within a page: `EFAULT` if unreadable, `ENAMETOOLONG`
/// if longer.
fn read_string(pid: libc::pid_t, addr: u64, max: usize) -> Result<CString, i32> {
    const PAGE: u64 = 4096;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let mut at = addr;
    while buf.len() < max {
        let len = (chunk.len() as u64).min(PAGE - at % PAGE) as usize;
        let local = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: usize::try_from(at).map_err(|_| libc::EFAULT)? as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: reads into our live buffer of `len` bytes; the remote
        // address is only the kernel's to check.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(if n < 0 && last_errno() == libc::ESRCH {
                libc::ESRCH
            } else {
                libc::EFAULT
            });
        }
        let got = &chunk[..n as usize];
        if let Some(end) = got.iter().position(|&b| b == 0) {
            buf.extend_from_slice(&got[..end]);
            return CString::new(buf).map_err(|_| libc::EINVAL);
        }
        buf.extend_from_slice(got);
        at = at.checked_add(n as u64).ok_or(libc::EFAULT)?;
    }
    Err(libc::ENAMETOOLONG)
}

/// Attaches the detached mount `mnt` at `target` as the caller sees it: a
/// thread of its own (its own file system state: `unshare(CLONE_FS)`)
/// enters the caller's mount namespace, root and working directory, and
/// `move_mount`s it there; the thread ends right after.
fn attach(mnt: &Fd, mntns: &Fd, root: &Fd, cwd: &Fd, target: &CStr) -> Result<(), i32> {
    let (m, ns, r, c) = (mnt.0, mntns.0, root.0, cwd.0);
    let target = target.to_owned();
    let h = std::thread::Builder::new()
        .name("mountd-attach".into())
        .spawn(move || -> Result<(), i32> {
            // SAFETY: system calls on descriptors the caller keeps open
            // until this thread is joined, and NUL-terminated strings.
            unsafe {
                check(libc::unshare(libc::CLONE_FS).into())?;
                check(libc::setns(ns, libc::CLONE_NEWNS).into())?;
                check(libc::fchdir(r).into())?;
                check(libc::chroot(c".".as_ptr()).into())?;
                check(libc::fchdir(c).into())?;
                check(libc::syscall(
                    libc::SYS_move_mount,
                    m,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                ))?;
            }
            Ok(())
        })
        .map_err(|_| libc::EAGAIN)?;
    h.join().unwrap_or(Err(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_classify_mounts_own_types_continues_kernel_ones_and_refuses_others() {
        assert_eq!(classify(false, 0, Some("ext4")), Verdict::Mount);
        assert_eq!(
            classify(false, libc::MS_RDONLY, Some("vfat")),
            Verdict::Mount
        );
        assert_eq!(classify(false, 0, Some("tmpfs")), Verdict::Continue);
        assert_eq!(classify(false, 0, Some("proc")), Verdict::Continue);
        assert_eq!(
            classify(false, 0, Some("xfs")),
            Verdict::Errno(libc::ENODEV)
        );
        assert_eq!(classify(false, 0, Some("")), Verdict::Errno(libc::ENODEV));
        assert_eq!(classify(false, 0, None), Verdict::Continue);
        // Binds and propagation: the kernel's.
        assert_eq!(
            classify(false, libc::MS_BIND, Some("ext4")),
            Verdict::Continue
        );
        assert_eq!(
            classify(false, libc::MS_PRIVATE | libc::MS_REC, None),
            Verdict::Continue
        );
        // The old magic is ignored as the kernel does.
        assert_eq!(classify(false, 0xC0ED_0000, Some("ext2")), Verdict::Mount);
        // Remounts must keep nodev; mount_setattr is not offered.
        assert_eq!(
            classify(false, libc::MS_REMOUNT | libc::MS_BIND, None),
            Verdict::Errno(libc::EPERM)
        );
        assert_eq!(
            classify(false, libc::MS_REMOUNT | libc::MS_NODEV, Some("ext4")),
            Verdict::Continue
        );
        assert_eq!(classify(true, 0, None), Verdict::Errno(libc::ENOSYS));
    }

    #[test]
    fn test_parse_options_refuses_host_paths_and_panics() {
        assert_eq!(
            parse_options("noatime, data=ordered,,").expect("ok"),
            vec![
                MountOption::Flag("noatime".into()),
                MountOption::Value("data".into(), "ordered".into())
            ]
        );
        assert_eq!(parse_options("journal_path=/dev/sda"), Err(libc::EPERM));
        assert_eq!(parse_options("ro,journal_dev=2049"), Err(libc::EPERM));
        assert_eq!(parse_options("errors=panic"), Err(libc::EPERM));
        assert!(parse_options("errors=remount-ro").is_ok());
        assert!(parse_options("").expect("empty").is_empty());
    }

    #[test]
    fn test_broker_takes_only_xvd_names_and_loop_paths() {
        assert!(broker_disk_name("xvdb"));
        assert!(broker_disk_name("xvdaa"));
        for bad in [
            "xvd",
            "xvdB",
            "xvdb/../x",
            "../xvdb",
            "sda",
            "xvdb ",
            "xvdabcdef",
        ] {
            assert!(!broker_disk_name(bad), "{bad}");
        }
        assert!(broker_loop_path("/dev/loop0"));
        assert!(broker_loop_path("/dev/loop123"));
        for bad in [
            "/dev/loop",
            "/dev/loop0/../sda",
            "/dev/sda",
            "/dev/loopx",
            "loop0",
        ] {
            assert!(!broker_loop_path(bad), "{bad}");
        }
        let owner = (1, 1);
        for req in [
            "",
            "attach",
            "attach ../../etc/passwd",
            "busy /etc/shadow",
            "rm -rf",
        ] {
            let (reply, l) = broker_answer(req, owner);
            assert_eq!(reply, "err bad request", "{req}");
            assert!(l.is_none());
        }
    }

    #[test]
    fn test_mount_attrs_always_nodev() {
        assert_eq!(mount_attrs(0), libc::MOUNT_ATTR_NODEV);
        let a = mount_attrs(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOATIME);
        assert_eq!(
            a,
            libc::MOUNT_ATTR_NODEV
                | libc::MOUNT_ATTR_RDONLY
                | libc::MOUNT_ATTR_NOSUID
                | libc::MOUNT_ATTR_NOATIME
        );
    }

    #[test]
    fn test_filter_jumps_land_in_the_program() {
        for (i, ins) in FILTER.iter().enumerate() {
            if ins.code as u32 == JEQ_K {
                assert!(i + 1 + (ins.jt as usize) < FILTER.len(), "jt of {i}");
                assert!(i + 1 + (ins.jf as usize) < FILTER.len(), "jf of {i}");
            }
        }
        assert_eq!(FILTER[11].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(FILTER[12].k, libc::SECCOMP_RET_ALLOW);
    }
}
