//! The runtime deprivileged once its guest machine is set up (`xen-jail`),
//! when the toolstack asks for it (`XEN_JAIL=1`, which `xl` sets): from
//! the moment the guest's init (or the idle domain) runs, the runtime is
//! the domain's host uid/gid `0x7F000000 + domid`, keeps only
//! [`RUNTIME_KEPT_CAPS`], has `no_new_privs` and runs under the seccomp
//! allow-list [`RUNTIME_SYSCALLS`] (found with `strace -f` of booted
//! guests; a call outside it prints `xen-jail: seccomp denied syscall N`
//! to the runtime's log, `pvguest-<name>.log`, and kills the runtime with
//! `SIGSYS`, which `xl` sees as the domain crashing).
//!
//! What the runtime keeps doing jailed: serving its FUSE block files and
//! NIC pumps on fds it already holds, its console pty, the xenstore ring,
//! event channels (eventfds and the shim connection it attached with while
//! root: the shim knows it by that connection's credentials and answers it
//! only as its own domain), passing shutdown requests to the guest's init
//! and reporting `SCHEDOP_shutdown`, unmounting the guest's root at the end.
//! What it can no longer do: open any file of another domain or connect to
//! the shim's control socket (both root-only); after a `xen-shimd` restart
//! it reattaches through its domain's own socket
//! ([`xen_shim_proto::domain_socket_dir`]), which takes its uid and an
//! attach as its own domain only.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

use xen_jail::{Cap, Jail, JailError};

use crate::line::emit;

/// The capabilities a jailed runtime keeps, the one list: `CAP_SYS_ADMIN`
/// unmounts the guest's root and block files at the end and mounts the
/// guest's disks on its behalf ([`crate::mountd`]), which also takes
/// `CAP_SYS_PTRACE` (reading the guest caller's arguments from its
/// memory, `process_vm_readv`, opening its namespace, root and working directory:
/// its uid is not the runtime's) and `CAP_SYS_CHROOT` (`setns` into the
/// guest's mount namespace, `chroot` into its root); `CAP_NET_ADMIN` sets
/// the guest NICs' carriers; `CAP_KILL` passes the toolstack's shutdown
/// to the guest's init, whose uid is not the runtime's.
pub const RUNTIME_KEPT_CAPS: &[Cap] = &[
    Cap::SysAdmin,
    Cap::SysPtrace,
    Cap::SysChroot,
    Cap::NetAdmin,
    Cap::Kill,
];

/// The syscalls of a jailed runtime's steady state (besides
/// `xen_jail::BASE_SYSCALLS` and `xen_jail::THREAD_SYSCALLS`).
pub const RUNTIME_SYSCALLS: &[libc::c_long] = &[
    // Files and fds it holds (FUSE, TAP, pty, eventfds, the shim socket).
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_writev,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    // Reattaching through the domain's socket after a shim restart.
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_getsockname,
    libc::SYS_setsockopt,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_splice,
    // The guest's init: waiting for it, passing requests to it.
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    // Mounting the guest's disks on its behalf (crate::mountd).
    libc::SYS_process_vm_readv,
    libc::SYS_openat2,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fchdir,
    libc::SYS_chroot,
    // The end: unmounting the guest's root and block files.
    libc::SYS_umount2,
    // Disks attached while the guest runs (`crate::hotplug`): their block
    // files' FUSE mounts and binds into the guest machine's `/dev`, their
    // mount points made and removed (in `/dev`s the runtime owns:
    // [`give_to_runtime`]).
    libc::SYS_mount,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_prctl,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
];

/// Gives directory `dir` (one of the runtime's own `/dev` tmpfs) to the
/// domain's host uid when a jail is asked for, so that the jailed runtime
/// makes and removes the mount points of disks attached later
/// (`crate::hotplug`); nothing otherwise.
///
/// # Errors
/// The `chown` failed.
pub fn give_to_runtime(dir: &std::path::Path) -> std::io::Result<()> {
    let Ok(domid) = u16::try_from(DOMID.load(Ordering::Acquire)) else {
        return Ok(());
    };
    if !xen_jail::requested() {
        return Ok(());
    }
    let uid = xen_jail::domain_uid(domid);
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
}

static JAILED: AtomicBool = AtomicBool::new(false);
/// A copy of the runtime's stderr from before the console (-1: none).
static LOG_FD: AtomicI32 = AtomicI32::new(-1);
/// The domain this process runs (set at attach); `u32::MAX` before.
static DOMID: AtomicU32 = AtomicU32::new(u32::MAX);

/// Records which domain this runtime attached as (the jail's uid); when a
/// jail is asked for, points the shim's reattach at the domain's own socket
/// (the control socket is root-only).
pub fn attached_as(hv: &xen_shim_guest::Hypervisor) {
    DOMID.store(u32::from(hv.domid()), Ordering::Release);
    // The runtime's log, before the console takes over stdio: where a
    // denied syscall is reported.
    // SAFETY: fcntl duplicating fd 2 (if open) to a fresh fd.
    let log = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    LOG_FD.store(log, Ordering::Release);
    if xen_jail::requested() {
        if let Some(control) = hv.socket_path() {
            hv.set_reattach_socket(
                xen_shim_proto::domain_socket_dir(&control, hv.domid())
                    .join(xen_shim_proto::DOMAIN_SOCKET_NAME),
            );
        }
    }
}

/// Jails the runtime if the toolstack asked ([`xen_jail::ENV_JAIL`]),
/// once (later calls do nothing); the runtime must have attached
/// ([`attached_as`]). A jail that cannot be entered ends the
/// process (exit status 3) after saying why: a runtime the toolstack
/// wanted jailed never runs the guest unjailed.
pub fn after_setup(out: &mut dyn Write) {
    if !xen_jail::requested() || JAILED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(domid) = u16::try_from(DOMID.load(Ordering::Acquire)) else {
        eprintln!("xen-pvguest: cannot jail a runtime that has not attached");
        std::process::exit(3);
    };
    let t0 = std::time::Instant::now();
    match enter(domid) {
        Ok(()) => {
            let uid = xen_jail::domain_uid(domid);
            let us = t0.elapsed().as_micros();
            let _ = emit(
                out,
                "pvguest jailed",
                &[("uid", uid.to_string()), ("us", us.to_string())],
            );
            let _ = out.flush();
        }
        Err(e) => {
            let _ = emit(
                out,
                "pvguest jail-failed",
                &[(
                    "error",
                    xen_diag::ErrorChain(&e).to_string().replace(' ', "_"),
                )],
            );
            let _ = out.flush();
            eprintln!(
                "xen-pvguest: cannot jail the runtime: {}",
                xen_diag::ErrorChain(&e)
            );
            std::process::exit(3);
        }
    }
}

/// Enters the runtime's jail now.
pub fn enter(domid: u16) -> Result<(), JailError> {
    let uid = xen_jail::domain_uid(domid);
    Jail {
        uid,
        gid: uid,
        keep: RUNTIME_KEPT_CAPS,
        syscalls: RUNTIME_SYSCALLS,
        report_fd: Some(LOG_FD.load(Ordering::Acquire)).filter(|&fd| fd >= 0),
        root: None,
    }
    .enter()
}
