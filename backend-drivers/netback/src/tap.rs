//! The Dom0 side of a vif: a TAP device (`/dev/net/tun`, `IFF_TAP |
//! IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`), one file per queue, and
//! the Linux bridge it is a port of (what Xen's `vif-bridge` hotplug
//! script does with `ip link`/`brctl`, done here with the same ioctls).
//! The device lives while one of its queue files is open: closing the
//! last removes the interface and its bridge port.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Errors of the TAP and bridge set-up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// An interface name is empty, too long (15 bytes) or not printable.
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// An ioctl or open failed.
    #[error("{what} failed for {name}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNSETCARRIER` (`_IOW('T', 226, int)`, Linux 5.0).
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const SIOCBRDELIF: libc::c_ulong = 0x89a3;

/// `TUN_F_CSUM`: the reader takes partial checksums.
pub const TUN_F_CSUM: libc::c_uint = 0x01;
/// `TUN_F_TSO4`.
pub const TUN_F_TSO4: libc::c_uint = 0x02;
/// `TUN_F_TSO6`.
pub const TUN_F_TSO6: libc::c_uint = 0x04;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    // The union of `struct ifreq` (24 bytes on x86_64).
    data: [u8; 24],
}

fn ifreq(name: &str) -> Result<IfReq, TapError> {
    check_name(name)?;
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    for (d, s) in r.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

/// Checks an interface name as the kernel's `dev_valid_name` does.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.to_owned()))
    }
}

fn io_err<'a>(what: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> TapError + 'a {
    move |source| TapError::Io {
        what,
        name: name.to_owned(),
        source,
    }
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(fd, req, &mut ifr)`.
fn ioctl_ifr(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes at most a `struct
    // ifreq`, which `IfReq` is (name + 24-byte union, 40 bytes).
    let r = unsafe { libc::ioctl(fd, req, ifr as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether interface `name` exists.
#[must_use]
pub fn exists(name: &str) -> bool {
    // if_nametoindex asks the calling thread's network namespace (sysfs
    // may show another one).
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated string.
    check_name(name).is_ok() && unsafe { libc::if_nametoindex(c.as_ptr()) } != 0
}

/// Whether `name` is a bridge.
#[must_use]
pub fn is_bridge(name: &str) -> bool {
    check_name(name).is_ok()
        && std::path::Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .exists()
}

/// Sets `IFF_UP` on `name`.
pub fn set_up(name: &str) -> Result<(), TapError> {
    let s = ctl_socket().map_err(io_err("socket", name))?;
    let mut r = ifreq(name)?;
    ioctl_ifr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r).map_err(io_err("SIOCGIFFLAGS", name))?;
    let mut flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
    flags |= libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r).map_err(io_err("SIOCSIFFLAGS", name))
}

/// Sets the MTU of `name`.
pub fn set_mtu(name: &str, mtu: u32) -> Result<(), TapError> {
    let s = ctl_socket().map_err(io_err("socket", name))?;
    let mut r = ifreq(name)?;
    r.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
    ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFMTU, &mut r).map_err(io_err("SIOCSIFMTU", name))
}

/// Sets the Ethernet address of `name`.
pub fn set_mac(name: &str, mac: [u8; 6]) -> Result<(), TapError> {
    let s = ctl_socket().map_err(io_err("socket", name))?;
    let mut r = ifreq(name)?;
    // struct sockaddr: sa_family (ARPHRD_ETHER) then the address.
    r.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
    r.data[2..8].copy_from_slice(&mac);
    ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFHWADDR, &mut r).map_err(io_err("SIOCSIFHWADDR", name))
}

/// Creates bridge `name` unless it exists, and sets it up (Xen's
/// `vif-bridge` creates `xenbr0` the same way when it is missing).
pub fn ensure_bridge(name: &str) -> Result<(), TapError> {
    check_name(name)?;
    if !exists(name) {
        let s = ctl_socket().map_err(io_err("socket", name))?;
        let c = CString::new(name).map_err(|_| TapError::BadName(name.to_owned()))?;
        // SAFETY: SIOCBRADDBR reads a NUL-terminated name of at most
        // IFNAMSIZ bytes (checked above).
        let r = unsafe { libc::ioctl(s.as_raw_fd(), SIOCBRADDBR, c.as_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_err("SIOCBRADDBR", name)(e));
            }
        }
    }
    set_up(name)
}

/// Makes `port` a port of `bridge`.
pub fn bridge_add_port(bridge: &str, port: &str) -> Result<(), TapError> {
    bridge_port_op(bridge, port, SIOCBRADDIF, "SIOCBRADDIF")
}

fn bridge_port_op(
    bridge: &str,
    port: &str,
    req: libc::c_ulong,
    what: &'static str,
) -> Result<(), TapError> {
    check_name(port)?;
    let c = CString::new(port).map_err(|_| TapError::BadName(port.to_owned()))?;
    // SAFETY: a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io_err("if_nametoindex", port)(io::Error::last_os_error()));
    }
    let s = ctl_socket().map_err(io_err("socket", bridge))?;
    let mut r = ifreq(bridge)?;
    r.data[..4].copy_from_slice(&(idx as i32).to_ne_bytes());
    ioctl_ifr(s.as_raw_fd(), req, &mut r).map_err(io_err(what, bridge))
}

/// Makes `port` a port of `bridge`, also when it already is one (a
/// restarted backend attaching to its predecessor's TAP): a port with a
/// master (`EBUSY`) is taken off `bridge` and added again, and the error
/// stays when it belongs to another bridge (the removal fails).
pub fn ensure_port(bridge: &str, port: &str) -> Result<(), TapError> {
    match bridge_add_port(bridge, port) {
        Err(TapError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
            bridge_port_op(bridge, port, SIOCBRDELIF, "SIOCBRDELIF")?;
            bridge_add_port(bridge, port)
        }
        r => r,
    }
}

/// One queue file of a TAP device.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
}

impl TapQueue {
    /// Opens (creating the device if needed) queue file of TAP `name`,
    /// non-blocking, with the 10-byte virtio-net header.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let mut r = ifreq(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(io_err("open /dev/net/tun", name))?;
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl_ifr(file.as_raw_fd(), TUNSETIFF, &mut r).map_err(io_err("TUNSETIFF", name))?;
        let sz: libc::c_int = crate::offload::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        let rc =
            unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &sz as *const libc::c_int) };
        if rc < 0 {
            return Err(io_err("TUNSETVNETHDRSZ", name)(io::Error::last_os_error()));
        }
        Ok(Self { file })
    }

    /// `TUNSETOFFLOAD`: the offloads (`TUN_F_*`) this reader accepts in
    /// packets it reads (device-wide).
    pub fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let r =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `TUNSETCARRIER`: the device's carrier on or off (device-wide; the
    /// kernel refuses "on" while no queue file is attached). A TAP starts
    /// with its carrier on: netback turns it off until a frontend connects,
    /// as Linux netback's vif has no carrier until `connect`.
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        let v: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one int through the pointer, which
        // points at a live local.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETCARRIER,
                &v as *const libc::c_int,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Whether a packet is queued for reading (`poll(2)` without waiting).
    #[must_use]
    pub fn readable(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, no wait.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & libc::POLLIN != 0
    }

    /// The file descriptor.
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `readv(2)` into a header and a buffer; `Ok(None)` when nothing is
    /// queued.
    pub fn read_packet(&self, hdr: &mut [u8], buf: &mut [u8]) -> io::Result<Option<usize>> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs describe live, writable local buffers.
        let n = unsafe { libc::readv(self.fd(), iov.as_ptr(), 2) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }

    /// `readv(2)` of one packet into `iov`; `Ok(None)` when nothing is
    /// queued.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for writes of its length for
    /// the duration of the call.
    pub unsafe fn read_packet_raw(&self, iov: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller promises the iovecs are writable.
        let n = unsafe { libc::readv(self.fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }

    /// `writev(2)` of one packet.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads of its length for
    /// the duration of the call.
    pub unsafe fn write_packet(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller promises the iovecs are readable.
        let n = unsafe { libc::writev(self.fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_name_rejects_bad_names() {
        assert!(check_name("vif1.0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("0123456789abcdef").is_err());
        assert!(check_name("..").is_err());
    }
}
