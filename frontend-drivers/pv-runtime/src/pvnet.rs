//! The guest's PV NICs for ordinary programs: connect every
//! `device/vif/<devid>` (netfront through the xenbus handshake), move the
//! runtime's thread into a private network namespace, expose each NIC
//! there as a TAP interface `eth<N>` (its MAC the vif's, its MTU the
//! backend's, its addresses the vif's `ip=`, read from the backend's `ip`
//! node), and pump frames between the TAP and netfront: `ping`, `iperf3`,
//! `curl` and any server in the guest's namespace run over the split
//! driver.
//!
//! The TAP carries the virtio-net header (`IFF_VNET_HDR`), and its
//! offloads (`TUNSETOFFLOAD`: checksum, TSO4, TSO6) are what netfront
//! negotiated, so the guest kernel hands 64 KiB TCP segments with partial
//! checksums to netfront and back (GSO end to end).
//!
//! Every queue the backend offers is used: the TAP has one queue
//! (`IFF_MULTI_QUEUE` file) per netfront queue, and each queue has two
//! threads: tx reads batches of frames from its TAP queue and queues them
//! on netfront (one publish and at most one notification per batch); rx
//! takes received frames, writes them to its TAP queue without holding the
//! NIC's lock, re-posts the buffers, and polls the ring for an adaptive
//! window before arming the event index and sleeping on the rx port. Each
//! pump masks its own port (split event channels), so a notification
//! wakes the pump itself, not the runtime's event dispatcher first.
//!
//! The link: [`watch_links`] follows each backend's state after
//! `bring_up` (level-triggered: on every watch event, which every thread
//! of the guest sees, and every [`LINK_POLL`] without one): a backend that goes away
//! (Closing, Closed, removed) or restarts (InitWait again, as a killed and
//! restarted backendd) tears netfront's rings down and the TAP's carrier
//! goes off, as Linux netfront's `netif_carrier_off`; netfront offers
//! fresh rings and, once the backend is Connected again, the carrier comes
//! back with the offloads and MTU the new backend negotiated. The TAP, its
//! addresses and routes are never touched: programs in the guest see a
//! link that went down and up. The pumps run under [`run_pump`], which
//! waits for the link while netfront is not connected and starts them
//! again (frames in flight meanwhile are lost, as on any NIC).

use std::fs::{File, OpenOptions};
use std::io;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_abi::event_channel::evtchn_port_t;
use xen_front_platform::{xs_read_string, Platform, XBT_NIL};
use xen_netfront::offload::{self, VnetHdr, VNET_HDR_LEN};
use xen_netfront::{FrontState, Gso, NetFront, NetfrontConfig, NetfrontError, PacketMeta};

use xen_ring::PollWindow;

use crate::line::emit;

/// Most NICs a guest exposes.
const MAX_NICS: usize = 8;
/// Frames read from the TAP per tx batch.
const TX_BATCH: usize = 64;
/// Small frames queued between publications (a big one is published at
/// once).
const PUSH_EVERY: usize = 16;
/// Longest the rx pump polls the ring before sleeping (the window adapts
/// between zero and this).
const RX_SPIN: Duration = Duration::from_micros(50);
/// Longest the tx pump looks at an empty TAP queue before sleeping (the
/// window adapts between zero and this).
const TX_SPIN: Duration = Duration::from_micros(30);
/// Frames received between publications of the re-posted rx pages.
const RX_PUSH_EVERY: usize = 8;
/// Most frames taken per rx round.
const RX_BATCH: usize = 256;
/// Longest sleep of a pump thread waiting for the backend's responses
/// with a full ring (it checks its stop flag after).
const SLEEP: Duration = Duration::from_millis(100);
/// Longest sleep of an idle pump (nothing to send or receive): a stop
/// ([`GuestNic::wake_pumps`]) and a backend change ([`watch_links`] kicks
/// the rx pumps) wake it at once; this is only a safety net. It was
/// [`SLEEP`]: ten wake-ups a second from each pump of every idle guest.
const IDLE_SLEEP: Duration = Duration::from_secs(10);
/// How often [`watch_links`] reads the backends' states without an event
/// (a safety net: every watch event reaches it and it looks at once, a
/// stop wakes it).
pub const LINK_POLL: Duration = Duration::from_secs(30);

/// Why the NICs failed.
#[derive(Debug, thiserror::Error)]
pub enum PvnetError {
    /// Listing `device/vif` failed.
    #[error("cannot list the guest's vif devices")]
    List(#[source] xen_front_platform::PlatformError),
    /// A device did not connect.
    #[error("vif {devid} did not connect (state {state:?})")]
    NotConnected {
        /// The device id.
        devid: u32,
        /// Where it stopped.
        state: FrontState,
    },
    /// netfront failed.
    #[error("vif {devid} failed")]
    Netfront {
        /// The device id.
        devid: u32,
        /// Why.
        #[source]
        source: NetfrontError,
    },
    /// A namespace, TAP or address operation failed.
    #[error("{what} failed")]
    Os {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An `ip` command failed.
    #[error("`ip {0}` failed")]
    Ip(String),
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> PvnetError {
    let what = what.into();
    move |source| PvnetError::Os { what, source }
}

/// The device ids under `device/vif`, sorted.
pub fn list_vifs<P: Platform + ?Sized>(p: &P) -> Result<Vec<u32>, PvnetError> {
    let names = match p.xs_directory(XBT_NIL, "device/vif") {
        Ok(n) => n,
        Err(e) if e.is_xs_enoent() => Vec::new(),
        Err(e) => return Err(PvnetError::List(e)),
    };
    let mut ids: Vec<u32> = names.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort_unstable();
    ids.truncate(MAX_NICS);
    Ok(ids)
}

/// Connects vif `devid` (handshake until Connected, at most `timeout`).
pub fn open<P: Platform + ?Sized>(
    p: &P,
    devid: u32,
    cfg: NetfrontConfig,
    timeout: Duration,
) -> Result<NetFront<'_, P>, PvnetError> {
    let nf_err = |source| PvnetError::Netfront { devid, source };
    let mut dev = NetFront::new(p, devid, cfg).map_err(nf_err)?;
    let deadline = Instant::now() + timeout;
    while dev.state() != FrontState::Connected {
        if Instant::now() >= deadline {
            return Err(PvnetError::NotConnected {
                devid,
                state: dev.state(),
            });
        }
        match p.xs_read_watch(Some(Duration::from_millis(100))) {
            Ok(Some(ev)) => {
                dev.handle_watch(&ev).map_err(nf_err)?;
            }
            // Level-triggered: look again even without an event.
            Ok(None) => dev.backend_changed().map_err(nf_err)?,
            Err(e) => return Err(nf_err(NetfrontError::Platform(e))),
        }
    }
    Ok(dev)
}

// ---------------------------------------------------------------------------
// The guest's TAP.

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNSETCARRIER` (`_IOW('T', 226, int)`, Linux 5.0).
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    for (d, s) in r.name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    r
}

fn ioctl_ifr(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: each request used here reads or writes at most a `struct
    // ifreq` (name + 24-byte union), which `IfReq` is.
    let r = unsafe { libc::ioctl(fd, req, ifr as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A guest-side TAP interface with one file per queue
/// (`IFF_MULTI_QUEUE`: each pump pair reads and writes its own queue).
#[derive(Debug)]
pub struct GuestTap {
    files: Vec<File>,
    name: String,
}

/// Opens one queue of TAP `name` (created by the first).
fn open_tap_queue(name: &str, multi: bool) -> Result<File, PvnetError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(os("open /dev/net/tun"))?;
    let mut r = ifreq(name);
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if multi {
        flags |= IFF_MULTI_QUEUE;
    }
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_ifr(file.as_raw_fd(), TUNSETIFF, &mut r).map_err(os(format!("TUNSETIFF {name}")))?;
    Ok(file)
}

impl GuestTap {
    /// Creates TAP `name` with `queues` queues (at least one) and the
    /// virtio-net header, sets its MAC and MTU and the offloads the reader
    /// (netfront) takes, and sets it up.
    pub fn create(
        name: &str,
        queues: usize,
        mac: [u8; 6],
        mtu: u32,
        offloads: (bool, bool, bool),
    ) -> Result<Self, PvnetError> {
        let queues = queues.max(1);
        let mut files = Vec::with_capacity(queues);
        for _ in 0..queues {
            files.push(open_tap_queue(name, queues > 1)?);
        }
        let fd = files[0].as_raw_fd();
        let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &sz as *const libc::c_int) } < 0 {
            return Err(os("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        let tap = Self {
            files,
            name: name.to_owned(),
        };
        tap.set_offloads(offloads)?;
        let s = ctl_socket().map_err(os("socket"))?;
        let mut r = ifreq(name);
        r.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
        r.data[2..8].copy_from_slice(&mac);
        ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFHWADDR, &mut r)
            .map_err(os(format!("set the MAC of {name}")))?;
        tap.set_mtu(mtu)?;
        set_up(name)?;
        Ok(tap)
    }

    /// `TUNSETOFFLOAD`: what netfront carries (scatter-gather with
    /// checksum offload, TSO4, TSO6).
    pub fn set_offloads(&self, offloads: (bool, bool, bool)) -> Result<(), PvnetError> {
        let (sg, tso4, tso6) = offloads;
        let mut off = 0;
        if sg {
            off |= TUN_F_CSUM;
            if tso4 {
                off |= TUN_F_TSO4;
            }
            if tso6 {
                off |= TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(self.fd(0), TUNSETOFFLOAD, off) } < 0 {
            return Err(os("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sets the interface's MTU.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), PvnetError> {
        let s = ctl_socket().map_err(os("socket"))?;
        let mut r = ifreq(&self.name);
        r.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
        ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFMTU, &mut r)
            .map_err(os(format!("set the MTU of {}", self.name)))
    }

    /// `TUNSETCARRIER`: the link as programs in the guest see it
    /// (`NO-CARRIER` in `ip link` while off).
    pub fn set_carrier(&self, on: bool) -> Result<(), PvnetError> {
        let v: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one int through the pointer, which
        // points at a live local.
        if unsafe { libc::ioctl(self.fd(0), TUNSETCARRIER, &v as *const libc::c_int) } < 0 {
            return Err(os(format!("TUNSETCARRIER {}", self.name))(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The interface name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of queues.
    #[must_use]
    pub fn queues(&self) -> usize {
        self.files.len()
    }

    fn fd(&self, q: usize) -> RawFd {
        self.files[q.min(self.files.len() - 1)].as_raw_fd()
    }

    /// `readv(2)` of one frame of queue `q` into `iov`; `Ok(None)` when
    /// none is queued.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for writes of its length.
    unsafe fn readv_raw(&self, q: usize, iov: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller promises the iovecs are writable.
        let n = unsafe { libc::readv(self.fd(q), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// `writev(2)` of one frame on queue `q`.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads of its length.
    unsafe fn writev_raw(&self, q: usize, iov: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: the caller promises the iovecs are readable.
        let n = unsafe { libc::writev(self.fd(q), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits up to `timeout` for a frame to read on queue `q` or for
    /// `stopped` to become readable; whether a frame is there.
    fn wait_readable_or(&self, q: usize, stopped: &EventFd, timeout: Duration) -> bool {
        let mut fds = [
            libc::pollfd {
                fd: self.fd(q),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stopped.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: two live pollfds in a local array, its length passed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        n > 0 && fds[0].revents & libc::POLLIN != 0
    }

    /// Waits up to `timeout` (zero: just looks) for a frame to read on
    /// queue `q`; whether one is there.
    fn wait_readable(&self, q: usize, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.fd(q),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
        n > 0 && fd.revents & libc::POLLIN != 0
    }
}

fn set_up(name: &str) -> Result<(), PvnetError> {
    let s = ctl_socket().map_err(os("socket"))?;
    let mut r = ifreq(name);
    ioctl_ifr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r)
        .map_err(os(format!("get the flags of {name}")))?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r).map_err(os(format!("set {name} up")))
}

/// Moves the calling thread (and the programs it starts) into a new
/// network namespace with its loopback up.
pub fn private_net_namespace() -> Result<(), PvnetError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| os("unshare(CLONE_NEWNET)")(io::Error::from(e)))?;
    loopback_up()
}

/// Sets the loopback interface of the calling thread's network namespace
/// up (a new namespace's is down).
pub fn loopback_up() -> Result<(), PvnetError> {
    set_up("lo")
}

/// `SIOCSIFNETMASK` (not in the `libc` crate).
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;

/// Linux's `struct in6_ifreq` (`linux/ipv6.h`), for `SIOCSIFADDR` on an
/// IPv6 socket.
#[repr(C)]
struct In6IfReq {
    ifr6_addr: [u8; 16],
    ifr6_prefixlen: u32,
    ifr6_ifindex: libc::c_int,
}

/// Adds `addr` (`a.b.c.d[/len]`, default /24; IPv6 default /64) to `dev`,
/// with `ioctl(2)`s only (a jailed runtime runs no programs: a NIC
/// attached while the guest runs gets its addresses this way too).
pub fn add_address(dev: &str, addr: &str) -> Result<(), PvnetError> {
    let bad = || PvnetError::Ip(format!("addr add {addr} dev {dev}: not an address"));
    let (a, len) = match addr.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| bad())?)),
        None => (addr, None),
    };
    let ip: std::net::IpAddr = a.parse().map_err(|_| bad())?;
    match ip {
        std::net::IpAddr::V4(v4) => {
            let len = len.unwrap_or(24);
            if len > 32 {
                return Err(bad());
            }
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            let s = ctl_socket().map_err(os("socket"))?;
            let sockaddr = |ip: [u8; 4]| {
                let mut d = [0u8; 24];
                d[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                d[4..8].copy_from_slice(&ip);
                d
            };
            let mut r = ifreq(dev);
            r.data = sockaddr(v4.octets());
            ioctl_ifr(s.as_raw_fd(), libc::SIOCSIFADDR, &mut r)
                .map_err(os(format!("add {addr} to {dev}")))?;
            let mut r = ifreq(dev);
            r.data = sockaddr(mask.to_be_bytes());
            ioctl_ifr(s.as_raw_fd(), SIOCSIFNETMASK, &mut r)
                .map_err(os(format!("set the netmask of {addr} on {dev}")))
        }
        std::net::IpAddr::V6(v6) => {
            let len = len.unwrap_or(64);
            if len > 128 {
                return Err(bad());
            }
            // SAFETY: plain socket(2); the result is checked.
            let fd =
                unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(os("socket(AF_INET6)")(io::Error::last_os_error()));
            }
            // SAFETY: a fresh descriptor we own.
            let s = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut r = ifreq(dev);
            ioctl_ifr(s.as_raw_fd(), libc::SIOCGIFINDEX, &mut r)
                .map_err(os(format!("find {dev}")))?;
            let mut req = In6IfReq {
                ifr6_addr: v6.octets(),
                ifr6_prefixlen: len,
                ifr6_ifindex: libc::c_int::from_ne_bytes([
                    r.data[0], r.data[1], r.data[2], r.data[3],
                ]),
            };
            // SAFETY: SIOCSIFADDR on an IPv6 socket reads one `struct
            // in6_ifreq`, which `In6IfReq` is, through the pointer to a
            // live local.
            let rc =
                unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFADDR, &mut req as *mut In6IfReq) };
            if rc < 0 {
                return Err(os(format!("add {addr} to {dev}"))(
                    io::Error::last_os_error(),
                ));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// The NICs.

/// One NIC exposed in the guest: netfront and its TAP.
#[derive(Debug)]
pub struct GuestNic<'p, P: Platform + ?Sized> {
    /// The device id.
    pub devid: u32,
    /// The frontend (shared by the two pump threads).
    pub nf: Mutex<NetFront<'p, P>>,
    /// The guest interface.
    pub tap: GuestTap,
    /// The addresses configured.
    pub addresses: Vec<String>,
    /// Readable once the pumps are to stop ([`GuestNic::wake_pumps`]; never
    /// read): the idle tx pumps sleep on it with their TAP queue.
    stopped: EventFd,
}

impl<'p, P: Platform + ?Sized> GuestNic<'p, P> {
    /// Connects vif `devid` (every queue the backend offers, up to
    /// netfront's maximum) and creates interface `name` for it with the
    /// backend's addresses, in the calling thread's network namespace: the
    /// boot path's NICs ([`bring_up`]) and those attached later
    /// ([`crate::hotplug`]).
    ///
    /// # Errors
    /// The handshake, the TAP or an address failed.
    pub fn connect(
        p: &'p P,
        devid: u32,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, PvnetError> {
        let cfg = NetfrontConfig {
            max_queues: xen_netfront::MAX_QUEUES,
            ..NetfrontConfig::default()
        };
        let nf = open(p, devid, cfg, timeout)?;
        let tap = GuestTap::create(name, nf.queues(), nf.mac(), nf.mtu(), nf.offloads())?;
        let addresses: Vec<String> =
            xs_read_string(p, XBT_NIL, &format!("{}/ip", nf.backend_path()))
                .map(|s| {
                    s.trim_end_matches('\0')
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
        for a in &addresses {
            add_address(name, a)?;
        }
        let stopped =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| os("eventfd")(io::Error::from(e)))?;
        Ok(GuestNic {
            devid,
            nf: Mutex::new(nf),
            tap,
            addresses,
            stopped,
        })
    }

    /// Wakes this NIC's pumps after their stop flag was set: the tx pumps
    /// through [`GuestNic::stopped`], the rx pumps on their ports.
    pub fn wake_pumps(&self) {
        let _ = self.stopped.write(1);
        kick_rx(&lock(&self.nf));
    }

    /// The fields of its `pvnet up` (or `pvnet hotplugged`) line.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let nf = self
            .nf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = nf.mac();
        vec![
            ("devid", self.devid.to_string()),
            ("ifname", self.tap.name().to_owned()),
            (
                "mac",
                format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                ),
            ),
            ("mtu", nf.mtu().to_string()),
            ("queues", nf.queues().to_string()),
            ("ip", self.addresses.join(",")),
            ("offloads", format!("{:?}", nf.offloads())),
        ]
    }
}

/// Connects every vif and creates `eth<N>` for each with its addresses, in
/// the calling thread's network namespace (the caller entered the guest's:
/// [`private_net_namespace`], [`crate::guestns::GuestNamespaces::enter_net`]).
/// Writes `pvnet ...` lines.
pub fn bring_up<'p, P: Platform + ?Sized>(
    p: &'p P,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<Vec<GuestNic<'p, P>>, PvnetError> {
    let ids = list_vifs(p)?;
    let mut nics = Vec::new();
    for (n, &devid) in ids.iter().enumerate() {
        let nic = GuestNic::connect(p, devid, &format!("eth{n}"), timeout)?;
        let _ = emit(out, "pvnet up", &nic.fields());
        nics.push(nic);
    }
    Ok(nics)
}

fn meta_from_vnet(h: &VnetHdr) -> PacketMeta {
    let gso = match h.gso_type & !offload::VNET_GSO_ECN {
        offload::VNET_GSO_TCPV4 => Some(Gso {
            ipv6: false,
            size: h.gso_size,
        }),
        offload::VNET_GSO_TCPV6 => Some(Gso {
            ipv6: true,
            size: h.gso_size,
        }),
        _ => None,
    };
    PacketMeta {
        csum_blank: h.flags & offload::VNET_F_NEEDS_CSUM != 0,
        data_validated: h.flags & offload::VNET_F_DATA_VALID != 0,
        gso,
    }
}

fn vnet_from_meta(m: &PacketMeta, head: &[u8]) -> Option<VnetHdr> {
    let mut h = VnetHdr::default();
    if m.csum_blank || m.gso.is_some() {
        let ci = offload::checksum_info(head)?;
        h.flags = offload::VNET_F_NEEDS_CSUM;
        h.csum_start = ci.start;
        h.csum_offset = ci.offset;
        if let Some(g) = m.gso {
            if !ci.tcp || ci.ipv6 != g.ipv6 {
                return None;
            }
            h.gso_type = if g.ipv6 {
                offload::VNET_GSO_TCPV6
            } else {
                offload::VNET_GSO_TCPV4
            };
            h.gso_size = g.size;
            h.hdr_len = ci.headers_end;
        }
    } else if m.data_validated {
        h.flags = offload::VNET_F_DATA_VALID;
    }
    Some(h)
}

fn lock<'a, T>(m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The tx pump of queue `q` of `nic` (TAP queue `q` to netfront queue
/// `q`) until `stop`: each frame is read from the TAP straight into
/// reserved tx pages (`readv(2)` of the virtio-net header and the pages:
/// no copy in this process).
pub fn tx_loop<P: Platform + ?Sized>(
    nic: &GuestNic<'_, P>,
    q: usize,
    stop: &AtomicBool,
) -> Result<(), PvnetError> {
    let devid = nic.devid;
    let nf_err = |source| PvnetError::Netfront { devid, source };
    // The rings' ports and connection: a reconnect (new rings, new
    // ports) ends this pump with NotConnected and `run_pump` starts it
    // again on the new ones.
    let (conn, (port_tx, port_rx)) = {
        let nf = lock(&nic.nf);
        (nf.connection(), nf.ports(q).unwrap_or((0, 0)))
    };
    let p = nic_platform(&nic.nf);
    own_port(p, port_tx, port_tx == port_rx);
    let mut poll = PollWindow::new(u64::try_from(TX_SPIN.as_nanos()).unwrap_or(u64::MAX));
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(20);
    while !stop.load(Ordering::Relaxed) {
        let mut sent = 0;
        let mut unpushed = 0usize;
        for _ in 0..TX_BATCH {
            let (res, ptrs) = {
                let mut nf = lock(&nic.nf);
                match nf.reserve_tx(q).map_err(nf_err)? {
                    Some(r) => {
                        let ptrs = nf.tx_page_ptrs(&r);
                        (r, ptrs)
                    }
                    None => {
                        // Ring or buffers full: publish, wait for responses.
                        nf.push_tx(q).map_err(nf_err)?;
                        let ready = nf.arm_tx(q).map_err(nf_err)?;
                        if nf.connection() != conn {
                            return Err(nf_err(NetfrontError::NotConnected));
                        }
                        drop(nf);
                        if !ready {
                            let _ = NetFront::<P>::poll_ports(p, &[port_tx], Some(SLEEP));
                        }
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        continue;
                    }
                }
            };
            let mut h = [0u8; VNET_HDR_LEN];
            iov.clear();
            iov.push(libc::iovec {
                iov_base: h.as_mut_ptr().cast(),
                iov_len: h.len(),
            });
            for &ptr in &ptrs {
                iov.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: xen_front_platform::PAGE_SIZE,
                });
            }
            // SAFETY: the header is a live local array; each page pointer is
            // a reserved tx page of PAGE_SIZE bytes, writable and not
            // granted to the backend in any request until committed.
            let r = unsafe { nic.tap.readv_raw(q, &iov) };
            let mut nf = lock(&nic.nf);
            match r {
                Ok(Some(n)) => {
                    let meta = meta_from_vnet(&VnetHdr::decode(&h));
                    let len = n.saturating_sub(VNET_HDR_LEN);
                    match nf.commit_tx(res, len, meta) {
                        Ok(()) => {
                            sent += 1;
                            unpushed += 1;
                            // Publish as we go: the backend writes this
                            // frame while we read the next one.
                            if len > xen_front_platform::PAGE_SIZE || unpushed >= PUSH_EVERY {
                                unpushed = 0;
                                nf.push_tx(q).map_err(nf_err)?;
                            }
                        }
                        // A frame the device cannot carry: dropped.
                        Err(NetfrontError::BadFrame { .. }) => {}
                        Err(e) => return Err(nf_err(e)),
                    }
                }
                Ok(None) => {
                    nf.cancel_tx(res);
                    break;
                }
                Err(e) => {
                    nf.cancel_tx(res);
                    return Err(os("read the guest TAP")(e));
                }
            }
        }
        if sent > 0 {
            let mut nf = lock(&nic.nf);
            nf.push_tx(q).map_err(nf_err)?;
            nf.reap_tx(q).map_err(nf_err)?;
            continue;
        }
        // Nothing queued: look again for an adaptive window (the guest's
        // stack is often about to send: no sleep and wake-up), then sleep.
        let window = Duration::from_nanos(poll.budget_ns());
        if !window.is_zero() {
            let deadline = Instant::now() + window;
            let mut found = false;
            while !found && Instant::now() < deadline {
                found = nic.tap.wait_readable(q, Duration::ZERO);
            }
            if found {
                poll.hit();
                continue;
            }
            poll.miss();
        }
        let slept = Instant::now();
        if nic.tap.wait_readable_or(q, &nic.stopped, IDLE_SLEEP) {
            poll.woke(u64::try_from(slept.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok(())
}

/// Wakes the rx pumps of `nf` (a spurious event on each queue's rx port):
/// before a backend change is handed to netfront, which may close the
/// ports they sleep on, and at a stop.
pub fn kick_rx<P: Platform + ?Sized>(nf: &NetFront<'_, P>) {
    for q in 0..nf.queues() {
        if let Some((_, rx)) = nf.ports(q) {
            nf.platform().evtchn_wake(rx);
        }
    }
}

fn nic_platform<'p, P: Platform + ?Sized>(nf: &Mutex<NetFront<'p, P>>) -> &'p P {
    lock(nf).platform()
}

/// Takes port `port` for the calling pump: masked, its events wake this
/// thread directly (the platform's `SCHEDOP_poll` on a masked port) rather
/// than the runtime's event dispatcher, which then wakes the pump (two
/// cross-CPU wake-ups per notification). A port shared by the tx and rx
/// pumps (no split event channels) stays with the dispatcher.
fn own_port<P: Platform + ?Sized>(p: &P, port: evtchn_port_t, shared: bool) {
    if !shared {
        let _ = p.evtchn_mask(port);
    }
}

/// The rx pump of queue `q` of `nic` (netfront queue `q` to TAP queue
/// `q`) until `stop`: each frame is written to the TAP straight from the
/// rx pages (`writev(2)`), without holding the NIC's lock (the frame is
/// taken, its pages held from the backend until the write is done). With
/// nothing received it polls the ring for an adaptive window
/// ([`PollWindow`]: it shrinks to zero when polling finds nothing, as when
/// the backend shares our CPU) before arming the event index and sleeping
/// on its port.
pub fn rx_loop<P: Platform + ?Sized>(
    nic: &GuestNic<'_, P>,
    q: usize,
    stop: &AtomicBool,
) -> Result<(), PvnetError> {
    let devid = nic.devid;
    let nf_err = |source| PvnetError::Netfront { devid, source };
    // The rings' ports and connection: a reconnect (new rings, new
    // ports) ends this pump with NotConnected and `run_pump` starts it
    // again on the new ones.
    let (conn, (port_tx, port_rx)) = {
        let nf = lock(&nic.nf);
        (nf.connection(), nf.ports(q).unwrap_or((0, 0)))
    };
    let p = nic_platform(&nic.nf);
    own_port(p, port_rx, port_tx == port_rx);
    let mut poll = PollWindow::new(u64::try_from(RX_SPIN.as_nanos()).unwrap_or(u64::MAX));
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(20);
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0usize;
        let mut held = false;
        loop {
            // The lock per frame, only to give the last frame's pages back
            // and take the next: the write to the TAP (which runs the
            // guest's network stack) holds no lock the tx pump needs.
            let fr = {
                let mut nf = lock(&nic.nf);
                if held {
                    nf.release_rx(q).map_err(nf_err)?;
                    if got % RX_PUSH_EVERY == 0 {
                        nf.push_rx(q).map_err(nf_err)?;
                    }
                }
                if got == RX_BATCH {
                    break;
                }
                nf.take_rx(q).map_err(nf_err)?
            };
            let Some(fr) = fr else {
                break;
            };
            held = true;
            got += 1;
            let Some(h) = vnet_from_meta(&fr.meta, fr.head()) else {
                continue;
            };
            let h = h.encode();
            iov.clear();
            iov.push(libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            });
            for f in fr.frags() {
                iov.push(libc::iovec {
                    iov_base: f.ptr as *mut libc::c_void,
                    iov_len: f.len,
                });
            }
            // SAFETY: the header is a live local array and every fragment
            // lies in netfront's rx pages, held from the backend until
            // `release_rx` (and inside the domain's memory, mapped for the
            // life of the process, even if the device were torn down
            // meanwhile); the kernel only reads them. A full TAP queue
            // drops the frame, as a NIC would.
            let _ = unsafe { nic.tap.writev_raw(q, &iov) };
        }
        if got > 0 {
            lock(&nic.nf).push_rx(q).map_err(nf_err)?;
            continue;
        }
        let window = Duration::from_nanos(poll.budget_ns());
        if !window.is_zero() {
            let deadline = Instant::now() + window;
            let mut found = false;
            while !found && Instant::now() < deadline {
                for _ in 0..64 {
                    // `try_lock`: a polling rx pump must not make the tx
                    // pump wait for the lock (a futex sleep and wake-up).
                    if nic.nf.try_lock().is_ok_and(|nf| nf.rx_ready(q)) {
                        found = true;
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if found {
                poll.hit();
                continue;
            }
            poll.miss();
        }
        if lock(&nic.nf).arm_rx(q).map_err(nf_err)? {
            continue;
        }
        if lock(&nic.nf).connection() != conn {
            return Err(nf_err(NetfrontError::NotConnected));
        }
        let slept = Instant::now();
        if NetFront::<P>::poll_ports(p, &[port_rx], Some(IDLE_SLEEP)).unwrap_or(false) {
            poll.woke(u64::try_from(slept.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The link.

/// Runs `pump` (e.g. [`tx_loop`] or [`rx_loop`] of `nic`) until `stop`,
/// across backend reconnects: when it ends because netfront is not
/// connected (the backend went away, or the rings it used were replaced),
/// waits until [`watch_links`] has connected netfront again and starts it
/// anew (it reads the new rings' ports). Other errors, a failed device
/// among them (a hostile backend), end it.
pub fn run_pump<'p, P: Platform + ?Sized>(
    nic: &GuestNic<'p, P>,
    stop: &AtomicBool,
    pump: impl Fn(&GuestNic<'p, P>, &AtomicBool) -> Result<(), PvnetError>,
) -> Result<(), PvnetError> {
    loop {
        match pump(nic, stop) {
            Err(PvnetError::Netfront {
                source: NetfrontError::NotConnected,
                ..
            }) => {}
            r => return r,
        }
        while !lock(&nic.nf).is_connected() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What [`watch_links`] last saw of a NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkSeen {
    up: bool,
    conn: u64,
    failed: bool,
}

/// Follows every NIC's backend until `stop` (see the [module docs](self)):
/// hands each a look at its backend's state (`NetFront::backend_changed`)
/// on every watch event (each thread sees every event of the guest's
/// xenstore connection) and every [`LINK_POLL`] without one; turns each TAP's carrier off while its netfront is not
/// connected and on again, with the renegotiated offloads and MTU, once it
/// is. Writes `pvnet link-down`/`link-up`/`link-failed` lines to the
/// runtime's standard output.
pub fn watch_links<P: Platform + ?Sized>(p: &P, nics: &[GuestNic<'_, P>], stop: &AtomicBool) {
    let mut seen: Vec<LinkSeen> = nics
        .iter()
        .map(|n| {
            let nf = lock(&n.nf);
            LinkSeen {
                up: nf.is_connected(),
                conn: nf.connection(),
                failed: nf.failure().is_some(),
            }
        })
        .collect();
    let state_paths: Vec<String> = nics
        .iter()
        .map(|n| format!("{}/state", lock(&n.nf).backend_path()))
        .collect();
    // The backend states last handed to netfront (outer `None`: not yet).
    let mut last_raw: Vec<Option<Option<Vec<u8>>>> = vec![None; nics.len()];
    // Pages each NIC keeps because a backend still mapped their grants
    // when they were released, as last reported.
    let mut deferred_seen = vec![0usize; nics.len()];
    while !stop.load(Ordering::Relaxed) {
        // Any event is a reason to look at every NIC (level-triggered; an
        // unchanged state costs one read).
        if p.xs_read_watch(Some(LINK_POLL)).is_err() {
            std::thread::sleep(Duration::from_secs(1));
        }
        for _ in 0..64 {
            match p.xs_read_watch(Some(Duration::ZERO)) {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        for (i, (nic, last)) in nics.iter().zip(seen.iter_mut()).enumerate() {
            // Read without the NIC's lock (the pumps keep going); only a
            // changed state goes to netfront, whose reaction depends on
            // nothing else.
            let raw = match p.xs_read(XBT_NIL, &state_paths[i]) {
                Ok(v) => Some(v),
                Err(e) if e.is_xs_enoent() => None,
                Err(_) => continue,
            };
            if last_raw[i].as_ref() == Some(&raw) {
                continue;
            }
            let mut nf = lock(&nic.nf);
            // The rx pumps sleep on ports netfront may now close: they wake,
            // wait for this lock and find the connection changed.
            kick_rx(&nf);
            // Errors: a failed device stays failed (reported below); a
            // xenstore hiccup is retried at the next look.
            if nf.backend_changed().is_ok() || nf.failure().is_some() {
                last_raw[i] = Some(raw);
            }
            let now = LinkSeen {
                up: nf.is_connected(),
                conn: nf.connection(),
                failed: nf.failure().is_some(),
            };
            if now == *last {
                continue;
            }
            let devid = nic.devid.to_string();
            let ifname = nic.tap.name().to_owned();
            if now.failed && !last.failed {
                let why = nf.failure().map(ToString::to_string).unwrap_or_default();
                drop(nf);
                let _ = nic.tap.set_carrier(false);
                emit_unlocked(
                    "pvnet link-failed",
                    &[
                        ("devid", devid),
                        ("ifname", ifname),
                        ("error", why.replace(' ', "_")),
                    ],
                );
            } else if now.up && (!last.up || now.conn != last.conn) {
                let (offloads, mtu) = (nf.offloads(), nf.mtu());
                drop(nf);
                let r = nic
                    .tap
                    .set_offloads(offloads)
                    .and_then(|()| nic.tap.set_mtu(mtu))
                    .and_then(|()| nic.tap.set_carrier(true));
                let mut fields = vec![
                    ("devid", devid),
                    ("ifname", ifname),
                    ("mtu", mtu.to_string()),
                    ("offloads", format!("{offloads:?}").replace(' ', "")),
                ];
                if let Err(e) = r {
                    fields.push(("error", e.to_string().replace(' ', "_")));
                }
                emit_unlocked("pvnet link-up", &fields);
            } else if !now.up && last.up {
                let state = format!("{:?}", nf.state());
                drop(nf);
                let _ = nic.tap.set_carrier(false);
                emit_unlocked(
                    "pvnet link-down",
                    &[("devid", devid), ("ifname", ifname), ("state", state)],
                );
            }
            *last = now;
        }
        // Pages a backend still mapped when netfront released them (a
        // backendd killed with the rings mapped): retried at every look,
        // reported when the count changes (`pvnet deferred`).
        for (nic, seen) in nics.iter().zip(deferred_seen.iter_mut()) {
            let pages = lock(&nic.nf).retry_deferred_pages();
            if pages != *seen {
                *seen = pages;
                emit_unlocked(
                    "pvnet deferred",
                    &[
                        ("devid", nic.devid.to_string()),
                        ("pages", pages.to_string()),
                    ],
                );
            }
        }
    }
}

/// A `tag key=value...` line written straight to file descriptor 1,
/// without `Stdout`'s lock (the runtime's main thread holds it while the
/// guest's init runs).
pub(crate) fn emit_unlocked(tag: &str, fields: &[(&str, String)]) {
    let mut s = String::from(tag);
    for (k, v) in fields {
        s.push_str(&format!(" {k}={v}"));
    }
    s.push('\n');
    let mut b = s.as_bytes();
    while !b.is_empty() {
        match nix::unistd::write(std::io::stdout(), b) {
            Ok(0) | Err(_) => return,
            Ok(n) => b = &b[n..],
        }
    }
}

/// The counters of every queue of `nic`, as `pvnet stats` lines (written
/// when the pumps stop).
pub fn emit_stats<P: Platform + ?Sized>(nic: &GuestNic<'_, P>, out: &mut dyn Write) {
    let nf = lock(&nic.nf);
    for q in 0..nf.queues() {
        let Some(st) = nf.queue_stats(q) else {
            continue;
        };
        let _ = emit(
            out,
            "pvnet stats",
            &[
                ("devid", nic.devid.to_string()),
                ("queue", q.to_string()),
                ("tx_packets", st.tx_packets.to_string()),
                ("tx_bytes", st.tx_bytes.to_string()),
                ("rx_packets", st.rx_packets.to_string()),
                ("rx_bytes", st.rx_bytes.to_string()),
            ],
        );
    }
}
