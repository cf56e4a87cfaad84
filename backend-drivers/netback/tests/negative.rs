//! Hostile frontends against netback: a guest domain attached in the test
//! process (a real `xen-pvguest` runtime on a private shim daemon) plays a
//! hand-written netfront: it grants tx and rx rings and pages and writes
//! netif requests itself. The backend's TAP is real (no bridge; the test
//! counts its kernel-side statistics and injects frames with an
//! `AF_PACKET` socket). Bad packets are dropped with error responses
//! while the vif keeps serving; a packet of too many slots or a corrupt
//! producer index fails only that vif, another one keeps working.
//!
//! Needs root (the shim daemon, TAP devices).

use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::netif::*;
use xen_front_platform::{Platform, SharedPages};
use xen_netback::device::{RxSlot, TxRsp};
use xen_netback::request::TxSlot;
use xen_netback::{Dom0Handles, FailureReason, FrontendParams, NetBackend, NetConfig, QueueParams};
use xen_pvguest::runtime::Runtime;
use xen_pvguest::testkit::{unique_name, ShimDaemon};
use xen_ring::{FrontRing, SharedRing};
use xen_shim::dom0::Gntdev;
use xen_shim::protocol::DomainConfig;
use zerocopy::{FromBytes, IntoBytes};

const STEP: Duration = Duration::from_secs(10);

struct World {
    _daemon: ShimDaemon,
    handles: Dom0Handles,
    rt: Runtime,
}

impl World {
    fn start(tag: &str) -> World {
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
struct Front<'a> {
    rt: &'a Runtime,
    tx: FrontRing<TxSlot, TxRsp>,
    rx: FrontRing<RxSlot, RxSlot>,
    tx_ref: grant_ref_t,
    rx_ref: grant_ref_t,
    port: evtchn_port_t,
    pages: SharedPages,
    refs: Vec<grant_ref_t>,
    rx_pages: SharedPages,
    rx_refs: Vec<grant_ref_t>,
    /// The tx ring page (also written directly by the hostile tests).
    txp: SharedPages,
}

fn ring<Q: xen_ring::RingEntry, R: xen_ring::RingEntry>(p: &SharedPages) -> FrontRing<Q, R> {
    // SAFETY: the pages are never freed (the test process ends first) and
    // only this FrontRing touches them in the guest.
    let mem = unsafe { SharedRing::new(p.as_ptr(), p.len()) }.expect("ring memory");
    FrontRing::init(mem).expect("front ring")
}

impl<'a> Front<'a> {
    fn new(rt: &'a Runtime) -> Front<'a> {
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

    fn params(&self) -> FrontendParams {
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

    fn kick(&mut self) {
        self.tx.publish_requests();
        self.rx.publish_requests();
        self.rt.platform().evtchn_notify(self.port).expect("notify");
    }

    fn send(&mut self, slots: &[netif_tx_request]) {
        for r in slots {
            let mut s = [0u8; 12];
            s.copy_from_slice(r.as_bytes());
            self.tx.push_request(&s).expect("tx slot");
        }
        self.kick();
    }

    /// Waits for `n` tx responses.
    fn tx_responses(&mut self, n: usize) -> Vec<netif_tx_response> {
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

    fn post_rx(&mut self, id: u16, gref: grant_ref_t) {
        let mut s = [0u8; 8];
        s.copy_from_slice(netif_rx_request { id, pad: 0, gref }.as_bytes());
        self.rx.push_request(&s).expect("rx slot");
    }

    fn rx_response(&mut self, timeout: Duration) -> Option<netif_rx_response> {
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

fn tx(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> netif_tx_request {
    netif_tx_request {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

/// A broadcast Ethernet frame of `len` bytes (an unknown ethertype).
fn frame(len: usize) -> Vec<u8> {
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
fn backend(tag: &str) -> NetBackend {
    let mut c = NetConfig::new(0, 0);
    c.ifname = format!("nbt{}{tag}", std::process::id() % 100_000);
    c.bridge = None;
    NetBackend::new(c).expect("the TAP comes up")
}

/// Frames the kernel received from the TAP (written by the backend).
fn tap_rx_packets(b: &NetBackend) -> u64 {
    let p = format!("/sys/class/net/{}/statistics/rx_packets", b.config().ifname);
    std::fs::read_to_string(&p)
        .expect("statistics")
        .trim()
        .parse()
        .expect("a number")
}

fn wait_rx_packets(b: &NetBackend, want: u64) -> u64 {
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
fn inject(ifname: &str, f: &[u8]) {
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

#[test]
fn test_netback_valid_packets_reach_the_tap_both_ways() {
    // Arrange
    let w = World::start("nb-ok");
    let be = backend("ok");
    let mut f = Front::new(&w.rt);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let before = tap_rx_packets(&be);
    let pkt = frame(6000);
    f.pages.write(0, &pkt[..4096]).expect("page 0");
    f.pages.write(4096, &pkt[4096..]).expect("page 1");
    for i in 0..20 {
        let g = f.rx_refs[i];
        f.post_rx(i as u16, g);
    }

    // Act: a two-slot packet out; one frame in.
    let (g0, g1) = (f.refs[0], f.refs[1]);
    f.send(&[tx(g0, 0, NETTXF_more_data, 7, 6000), tx(g1, 0, 0, 8, 1904)]);
    let rsps = f.tx_responses(2);
    let after = wait_rx_packets(&be, before + 1);
    let incoming = frame(1000);
    inject(&be.config().ifname, &incoming);
    // The kernel may have queued its own frames (IPv6 MLD) first: take
    // responses until ours, checking each lands in its request's slot.
    let mut r = None;
    for slot in 0..20u16 {
        let x = f.rx_response(STEP).expect("an rx response");
        assert_eq!(
            (x.id, x.offset),
            (slot, 0),
            "rx response in the request's slot"
        );
        if x.status == 1000 {
            r = Some((slot, x));
            break;
        }
    }
    let (slot, r) = r.expect("our frame arrives");

    // Assert
    assert_eq!(
        rsps.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        vec![(7, NETIF_RSP_OKAY), (8, NETIF_RSP_OKAY)]
    );
    assert_eq!(after, before + 1, "the packet reached the TAP");
    assert_eq!(r.flags & NETRXF_more_data, 0);
    let mut got = vec![0u8; 1000];
    f.rx_pages
        .read(usize::from(slot) * 4096, &mut got)
        .expect("rx page");
    assert_eq!(got, incoming);
    assert!(dev.failure().is_none());
    let m = dev.disconnect();
    assert_eq!(m.tx_packets, 1);
    assert!(m.rx_packets >= 1);
}

#[test]
fn test_netback_bad_packets_are_dropped_and_the_vif_keeps_serving() {
    // Arrange
    let w = World::start("nb-bad");
    let be = backend("bad");
    let mut f = Front::new(&w.rt);
    let dev = be
        .connect(&w.handles, w.rt.domid(), &f.params())
        .expect("connect");
    let before = tap_rx_packets(&be);
    f.pages.write(0, &frame(100)).expect("page");
    let g = f.refs[0];

    // Act
    let cases: Vec<(&str, Vec<netif_tx_request>)> = vec![
        ("bad grant", vec![tx(99_999, 0, 0, 1, 100)]),
        ("ungranted ref", vec![tx(g + 5000, 0, 0, 2, 100)]),
        ("crosses the page", vec![tx(g, 4000, 0, 3, 200)]),
        ("shorter than Ethernet", vec![tx(g, 0, 0, 4, 10)]),
        (
            "fragments exceed size",
            vec![tx(g, 0, NETTXF_more_data, 5, 100), tx(g, 0, 0, 6, 200)],
        ),
        (
            "checksum offload on no TCP/UDP",
            vec![tx(g, 0, NETTXF_csum_blank, 7, 100)],
        ),
    ];
    let mut statuses = Vec::new();
    for (what, slots) in &cases {
        f.send(slots);
        let r = f.tx_responses(slots.len());
        statuses.push((*what, r.iter().map(|r| r.status).collect::<Vec<_>>()));
    }
    f.send(&[tx(g, 0, 0, 9, 100)]);
    let good = f.tx_responses(1);

    // Assert
    for (what, st) in &statuses {
        assert!(st.iter().all(|&s| s == NETIF_RSP_ERROR), "{what}: {st:?}");
    }
    assert_eq!((good[0].id, good[0].status), (9, NETIF_RSP_OKAY));
    assert_eq!(
        wait_rx_packets(&be, before + 1),
        before + 1,
        "only the good packet reached the TAP"
    );
    assert!(
        dev.failure().is_none(),
        "dropping packets does not fail the vif"
    );
    let m = dev.disconnect();
    assert_eq!(m.tx_dropped, cases.len() as u64);
}

#[test]
fn test_netback_too_many_slots_or_ring_overflow_fail_only_that_vif() {
    // Arrange: two vifs of the same guest.
    let w = World::start("nb-fatal");
    let (be1, be2, be3) = (backend("f1"), backend("f2"), backend("f3"));
    let mut f1 = Front::new(&w.rt);
    let mut f2 = Front::new(&w.rt);
    let mut f3 = Front::new(&w.rt);
    let d1 = be1
        .connect(&w.handles, w.rt.domid(), &f1.params())
        .expect("connect 1");
    let d2 = be2
        .connect(&w.handles, w.rt.domid(), &f2.params())
        .expect("connect 2");
    let d3 = be3
        .connect(&w.handles, w.rt.domid(), &f3.params())
        .expect("connect 3");
    f3.pages.write(0, &frame(100)).expect("page");
    let before3 = tap_rx_packets(&be3);

    // Act: vif 1 chains 40 slots; vif 2 publishes a producer 1000 ahead.
    let g = f1.refs[0];
    let chain: Vec<netif_tx_request> = (0..40)
        .map(|i| tx(g, 0, NETTXF_more_data, i, 100))
        .collect();
    f1.send(&chain);
    let prod = f2.tx.req_prod_pvt().wrapping_add(1000);
    f2.tx.publish_requests();
    overwrite_req_prod(&f2, prod);
    w.rt.platform().evtchn_notify(f2.port).expect("notify");
    let g3 = f3.refs[0];
    f3.send(&[tx(g3, 0, 0, 1, 100)]);
    let ok3 = f3.tx_responses(1);

    // Assert
    let e1 = d1.wait_failure(STEP).expect("vif 1 fails");
    let e2 = d2.wait_failure(STEP).expect("vif 2 fails");
    assert!(matches!(e1.reason, FailureReason::Fatal(_)), "{e1}");
    assert!(
        matches!(e2.reason, FailureReason::RingOverflow("tx")),
        "{e2}"
    );
    assert_eq!((ok3[0].id, ok3[0].status), (1, NETIF_RSP_OKAY));
    assert_eq!(wait_rx_packets(&be3, before3 + 1), before3 + 1);
    assert!(d3.failure().is_none(), "the other vif keeps working");
    d1.disconnect();
    d2.disconnect();
    d3.disconnect();
}

/// Writes `req_prod` of the tx ring page directly, as a hostile frontend.
fn overwrite_req_prod(f: &Front<'_>, prod: u32) {
    f.txp
        .store_u32(0, prod, std::sync::atomic::Ordering::Release)
        .expect("req_prod");
}
