//! Each domain's own socket (`<control dir>/domains/<domid>/control.sock`,
//! [`xen_shim_proto::domain_socket_dir`]): owned by the domain's jailed uid
//! (`xen_jail::domain_uid`), mode 0600, in a root-owned 0711 directory. The
//! daemon accepts there that uid (or its own) and only an attach as that
//! domain, so a jailed runtime, which cannot reach the root-only control
//! socket, can reattach after a daemon restart and do nothing more. A
//! failure to make it is logged: the domain runs, only a jailed runtime's
//! reattach would fail. The socket and its directory outlive the daemon
//! (a jailed VMM's root is that directory: the next daemon binds the
//! socket again in place) and go with the domain.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{bind, UnixAddr};

use crate::{Daemon, TOKEN_DOMSOCK_BASE};

fn bind_listen(path: &Path, uid: u32) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let io = std::io::Error::from;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io)?;
    let addr = UnixAddr::new(path).map_err(io)?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    bind_owner_only(&sock, &addr).map_err(io)?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listen(&sock, Backlog::new(16).map_err(io)?).map_err(io)?;
    Ok(sock)
}

/// Binds `sock` at `addr` as a socket file only its owner may use (mode
/// 0600 at most), whatever the process's umask: the socket's own inode gets
/// the mode first (`fchmod`), and the kernel creates the file with it (less
/// the umask). No `umask(2)`: it is process-wide, and two threads that set
/// and restore it around their binds at once (two test stacks' shims in one
/// test process creating domains) left 0177 for good, so every file the
/// process and its children made afterwards lost its execute bits (the
/// busybox of the next guest images, which then failed at init's exec with
/// `EACCES`).
///
/// # Errors
/// `fchmod` or `bind` failed.
pub(crate) fn bind_owner_only(sock: &OwnedFd, addr: &UnixAddr) -> nix::Result<()> {
    nix::sys::stat::fchmod(
        sock.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    bind(sock.as_raw_fd(), addr)
}

impl Daemon {
    /// Makes domain `domid`'s own socket and listens on it.
    pub(crate) fn open_domain_socket(&mut self, domid: u16) {
        let dir = xen_shim_proto::domain_socket_dir(&self.cfg.socket, domid);
        let r = (|| -> std::io::Result<OwnedFd> {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
            let sock = bind_listen(
                &dir.join(xen_shim_proto::DOMAIN_SOCKET_NAME),
                xen_jail::domain_uid(domid),
            )?;
            self.epoll
                .add(sock.as_raw_fd(), TOKEN_DOMSOCK_BASE + u64::from(domid))?;
            Ok(sock)
        })();
        match r {
            Ok(sock) => {
                if let Some(old) = self.dom_listeners.insert(domid, sock) {
                    let _ = self.epoll.delete(old.as_raw_fd());
                }
            }
            Err(e) => {
                tracing::warn!(domid, dir = %dir.display(), error = %e, "cannot make the domain's own socket")
            }
        }
    }

    /// Closes domain `domid`'s socket and removes it with its directory.
    pub(crate) fn close_domain_socket(&mut self, domid: u16) {
        if let Some(sock) = self.dom_listeners.remove(&domid) {
            let _ = self.epoll.delete(sock.as_raw_fd());
        }
        let dir = xen_shim_proto::domain_socket_dir(&self.cfg.socket, domid);
        let _ = std::fs::remove_file(dir.join(xen_shim_proto::DOMAIN_SOCKET_NAME));
        let _ = std::fs::remove_dir(&dir);
    }
}
