//! The hostile-frontend harness: a guest domain attached in the test
//! process (a real `xen-pvguest` runtime on a private shim daemon) plays a
//! hand-written netfront (rings, pages and netif requests written by the
//! test); the backend's TAP is real (no bridge).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::*;
use xen_front_platform::{Platform, SharedPages};
use xen_netback::device::{RxSlot, TxRsp};
use xen_netback::request::TxSlot;
use xen_netback::{Dom0Handles, FrontendParams, NetBackend, NetConfig, QueueParams};
use xen_pvguest::runtime::Runtime;
use xen_ring::{FrontRing, SharedRing};
use xen_shim_dom0::Gntdev;
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, ShimDaemon};
use zerocopy::{FromBytes, IntoBytes};

pub const STEP: Duration = Duration::from_secs(10);

pub struct World {
    pub _daemon: ShimDaemon,
    pub handles: Dom0Handles,
    pub rt: Runtime,
}

impl World {
    pub fn start(tag: &str) -> World {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(uid, 0, "these tests need root (shim daemon, TAP devices)");
        let daemon = ShimDaemon::start(tag).expect("the shim daemon starts");
        let control = daemon.control().expect("Dom0 control");
        let gntdev = Arc::new(Gntdev::open(daemon.socket()).expect("gntdev"));
        let created = control
            .create_domain(&DomainConfig::pv(&unique_name(tag), 32))
            .expect("create the guest domain");
        let rt =
            Runtime::start_with(daemon.socket(), created.domid, &created.token).expect("attach");
        let handles = Dom0Handles {
            gntdev,
            socket: daemon.socket().to_path_buf(),
        };
        World {
            _daemon: daemon,
            handles,
            rt,
        }
    }
}

/// A hand-written netfront: rings, 32 tx pages, 64 rx pages.
pub struct Front<'a> {
    pub rt: &'a Runtime,
    pub tx: FrontRing<TxSlot, TxRsp>,
    pub rx: FrontRing<RxSlot, RxSlot>,
    pub tx_ref: grant_ref_t,
    pub rx_ref: grant_ref_t,
    pub port: evtchn_port_t,
    pub pages: SharedPages,
    pub refs: Vec<grant_ref_t>,
    pub rx_pages: SharedPages,
    pub rx_refs: Vec<grant_ref_t>,
    /// The tx ring page (also written directly by the hostile tests).
    pub txp: SharedPages,
}

pub fn ring<Q: xen_ring::RingEntry, R: xen_ring::RingEntry>(p: &SharedPages) -> FrontRing<Q, R> {
    // SAFETY: the pages are never freed (the test process ends first) and
    // only this FrontRing touches them in the guest.
    let mem = unsafe { SharedRing::new(p.as_ptr(), p.len()) }.expect("ring memory");
    FrontRing::init(mem).expect("front ring")
}

impl<'a> Front<'a> {
    pub fn new(rt: &'a Runtime) -> Front<'a> {
        let p = rt.platform();
        let grant = |pages: &SharedPages, ro: bool| -> Vec<grant_ref_t> {
            (0..pages.count())
                .map(|i| {
                    p.grant_access(0, pages.gfn(i).expect("gfn"), ro)
                        .expect("grant")
                })
                .collect()
        };
        let txp = p.alloc_pages(1).expect("tx ring");
        let rxp = p.alloc_pages(1).expect("rx ring");
        let tx_ref = grant(&txp, false)[0];
        let rx_ref = grant(&rxp, false)[0];
        let pages = p.alloc_pages(32).expect("tx pages");
        let refs = grant(&pages, true);
        let rx_pages = p.alloc_pages(64).expect("rx pages");
        let rx_refs = grant(&rx_pages, false);
        let port = p.evtchn_alloc_unbound(0).expect("port");
        Front {
            rt,
            tx: ring(&txp),
            rx: ring(&rxp),
            tx_ref,
            rx_ref,
            port,
            pages,
            refs,
            rx_pages,
            rx_refs,
            txp,
        }
    }

    pub fn params(&self) -> FrontendParams {
        FrontendParams {
            queues: vec![QueueParams {
                tx_ring_ref: self.tx_ref,
                rx_ring_ref: self.rx_ref,
                evtchn_tx: self.port,
                evtchn_rx: self.port,
            }],
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            csum_ipv4: true,
            csum_ipv6: true,
        }
    }

    pub fn kick(&mut self) {
        self.tx.publish_requests();
        self.rx.publish_requests();
        self.rt.platform().evtchn_notify(self.port).expect("notify");
    }

    pub fn send(&mut self, slots: &[netif_tx_request]) {
        for r in slots {
            let mut s = [0u8; 12];
            s.copy_from_slice(r.as_bytes());
            self.tx.push_request(&s).expect("tx slot");
        }
        self.kick();
    }

    /// Waits for `n` tx responses.
    pub fn tx_responses(&mut self, n: usize) -> Vec<netif_tx_response> {
        let deadline = Instant::now() + STEP;
        let mut v = Vec::new();
        while v.len() < n {
            match self.tx.take_response().expect("tx responses") {
                Some(r) => v.push(netif_tx_response::read_from_bytes(&r).expect("4 bytes")),
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "only {} of {n} tx responses",
                        v.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        v
    }

    pub fn post_rx(&mut self, id: u16, gref: grant_ref_t) {
        let mut s = [0u8; 8];
        s.copy_from_slice(netif_rx_request { id, pad: 0, gref }.as_bytes());
        self.rx.push_request(&s).expect("rx slot");
    }

    pub fn rx_response(&mut self, timeout: Duration) -> Option<netif_rx_response> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.rx.take_response().expect("rx responses") {
                return Some(netif_rx_response::read_from_bytes(&r).expect("8 bytes"));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

pub fn tx(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> netif_tx_request {
    netif_tx_request {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

/// A broadcast Ethernet frame of `len` bytes (an unknown ethertype).
pub fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0x11, 0x22, 0x33]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = i as u8;
    }
    f
}

/// The TAP of a test (unique name, removed when the backend drops).
pub fn backend(tag: &str) -> NetBackend {
    let mut c = NetConfig::new(0, 0);
    c.ifname = format!("nbt{}{tag}", std::process::id() % 100_000);
    c.bridge = None;
    NetBackend::new(c).expect("the TAP comes up")
}

/// Frames the kernel received from the TAP (written by the backend).
pub fn tap_rx_packets(b: &NetBackend) -> u64 {
    let p = format!("/sys/class/net/{}/statistics/rx_packets", b.config().ifname);
    std::fs::read_to_string(&p)
        .expect("statistics")
        .trim()
        .parse()
        .expect("a number")
}

pub fn wait_rx_packets(b: &NetBackend, want: u64) -> u64 {
    let deadline = Instant::now() + STEP;
    loop {
        let n = tap_rx_packets(b);
        if n >= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `f` out of interface `ifname` (so the backend reads it from the TAP).
pub fn inject(ifname: &str, f: &[u8]) {
    let c = std::ffi::CString::new(ifname).expect("name");
    // SAFETY: a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "no interface {ifname}");
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "AF_PACKET socket");
    // SAFETY: zeroed sockaddr_ll is valid; filled below.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_ifindex = idx as i32;
    sa.sll_halen = 6;
    // SAFETY: `f` and `sa` are live for the call; the length is sa's size.
    let n = unsafe {
        libc::sendto(
            fd,
            f.as_ptr().cast(),
            f.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    assert_eq!(
        n,
        f.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// Writes `req_prod` of the tx ring page directly, as a hostile frontend.
pub fn overwrite_req_prod(f: &Front<'_>, prod: u32) {
    f.txp
        .store_u32(0, prod, std::sync::atomic::Ordering::Release)
        .expect("req_prod");
}
