//! The VMM jailed once its VM is built, as Firecracker's jailer does
//! (`xen-jail`), when the toolstack asks (`XEN_JAIL=1`, which `xl` sets):
//! its root becomes its domain's own directory next to the shim's socket
//! ([`xen_shim_proto::domain_socket_dir`]: root's, mode 0711, holding
//! only the domain's socket), it runs as the domain's host uid/gid
//! (`0x7F000000 + domid`) with no capabilities at all, `no_new_privs`, and
//! the seccomp allow-list [`VMM_SYSCALLS`] (a denied call is logged as
//! `xen-jail: seccomp denied syscall N` and kills the VMM with `SIGSYS`;
//! xl sees the domain crash). Everything it uses from then on is an fd it
//! already holds: `/dev/kvm`'s VM and vCPUs, the domain's memory, the
//! emulated disk, the shim connection and event channels; the kernel image
//! was read into guest memory before. After a `xen-shimd` restart it
//! reattaches through `/control.sock`, its domain's socket, the one file
//! its root holds. The domain's cgroup holds it as before (xl puts it there
//! at exec).

use std::path::PathBuf;

use xen_jail::{Jail, JailError};
use xen_shim_guest::Hypervisor;

/// The syscalls of a jailed VMM's steady state (besides
/// `xen_jail::BASE_SYSCALLS` and `xen_jail::THREAD_SYSCALLS`).
pub const VMM_SYSCALLS: &[libc::c_long] = &[
    // KVM_RUN and the other vCPU/VM ioctls, eventfds, the emulated disk,
    // the shim connection.
    libc::SYS_ioctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_writev,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_dup,
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
    // The control socket (`xl save`): its connections, the save file's
    // descriptor received with the command.
    libc::SYS_accept4,
    libc::SYS_accept,
    // Reattaching through /control.sock after a daemon restart.
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_openat,
    // Kicking vCPU threads out of KVM_RUN (tgkill is in the base set).
    libc::SYS_prctl,
    // The balloon: punching pages out of the memory file and allocating
    // them again (`balloon`).
    libc::SYS_fallocate,
];

/// Jails the VMM of the attached domain `hv` if the toolstack asked
/// ([`xen_jail::ENV_JAIL`]); see the [module docs](self).
pub fn enter_if_requested(hv: &Hypervisor) -> Result<bool, JailError> {
    if !xen_jail::requested() {
        return Ok(false);
    }
    let domid = hv.domid();
    let control = hv
        .socket_path()
        .unwrap_or_else(xen_shim_proto::default_socket_path);
    let root: PathBuf = xen_shim_proto::domain_socket_dir(&control, domid);
    let uid = xen_jail::domain_uid(domid);
    Jail {
        uid,
        gid: uid,
        keep: &[],
        syscalls: VMM_SYSCALLS,
        report_fd: None,
        root: Some(&root),
    }
    .enter()?;
    hv.set_reattach_socket(PathBuf::from("/").join(xen_shim_proto::DOMAIN_SOCKET_NAME));
    Ok(true)
}
