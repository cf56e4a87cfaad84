//! A netback played by the test through the fake platform's `peer_*`
//! methods: it maps the frontend's tx and rx rings as domain 0 would,
//! takes tx requests (copying the frames out of the granted pages) and
//! writes rx responses into posted pages, or anything a hostile backend
//! writes.
#![allow(dead_code)]

use std::time::Duration;

use xen_abi::io::netif::*;
use xen_front_platform::fake::{FakeMapping, FakePlatform};
use xen_front_platform::{Platform, XBT_NIL};
use xen_netfront::request::{RxSlot, TxRspSlot, TxSlot};
use xen_netfront::NetFront;
use xen_ring::{BackRing, SharedRing};
use zerocopy::{FromBytes, IntoBytes};

pub const GUEST: u16 = 1;
pub const DEVID: u32 = 0;
pub const MAC: &str = "00:16:3e:01:02:03";

fn w(p: &FakePlatform, path: &str, v: &str) {
    p.xs_write(XBT_NIL, path, v.as_bytes())
        .expect("xenstore write");
}

fn r(p: &FakePlatform, path: &str) -> Option<String> {
    p.xs_read(XBT_NIL, path)
        .ok()
        .map(|v| String::from_utf8(v).expect("utf8"))
}

/// Feeds every fired watch to the frontend.
pub fn pump(p: &FakePlatform, f: &mut NetFront<'_, FakePlatform>) {
    for _ in 0..64 {
        match p.xs_read_watch(Some(Duration::ZERO)).expect("read watch") {
            Some(ev) => {
                let _ = f.handle_watch(&ev);
            }
            None => return,
        }
    }
}

/// The test's netback.
pub struct FakeBack<'a> {
    pub p: &'a FakePlatform,
    pub fe: String,
    pub be: String,
    pub tx: Option<BackRing<TxSlot, TxRspSlot>>,
    pub rx: Option<BackRing<RxSlot, RxSlot>>,
    maps: Vec<FakeMapping>,
    pub tx_port: u32,
    pub rx_port: u32,
}

impl<'a> FakeBack<'a> {
    /// The toolstack's nodes for vif 0 of the guest, then InitWait with
    /// the features Linux netback offers.
    pub fn new(p: &'a FakePlatform) -> FakeBack<'a> {
        let fe = format!("/local/domain/{GUEST}/device/vif/{DEVID}");
        let be = format!("/local/domain/0/backend/vif/{GUEST}/{DEVID}");
        for (k, v) in [
            (format!("{fe}/backend"), be.clone()),
            (format!("{fe}/backend-id"), "0".into()),
            (format!("{fe}/state"), "1".into()),
            (format!("{fe}/handle"), "0".into()),
            (format!("{fe}/mac"), MAC.into()),
            (format!("{be}/frontend"), fe.clone()),
            (format!("{be}/frontend-id"), GUEST.to_string()),
            (format!("{be}/state"), "1".into()),
        ] {
            w(p, &k, &v);
        }
        FakeBack {
            p,
            fe,
            be,
            tx: None,
            rx: None,
            maps: Vec::new(),
            tx_port: 0,
            rx_port: 0,
        }
    }

    pub fn fe_node(&self, k: &str) -> Option<String> {
        r(self.p, &format!("{}/{k}", self.fe))
    }

    pub fn set_state(&self, s: &str) {
        w(self.p, &format!("{}/state", self.be), s);
    }

    pub fn init_wait(&self) {
        for (k, v) in [
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("feature-rx-copy", "1"),
            ("feature-split-event-channels", "1"),
            ("multi-queue-max-queues", "1"),
            ("mtu", "1500"),
        ] {
            w(self.p, &format!("{}/{k}", self.be), v);
        }
        self.set_state("2");
    }

    fn map_ring(&mut self, key: &str) -> SharedRing {
        let gref: u32 = self.fe_node(key).expect(key).parse().expect("gref");
        let m = self.p.peer_map(gref, 0, true).expect("map the ring");
        // SAFETY: the fake page stays allocated while the test runs; the
        // mapping is kept in `maps` for the back ring's life.
        let s = unsafe { SharedRing::new(m.as_ptr(), 4096) }.expect("ring");
        self.maps.push(m);
        s
    }

    /// Maps the rings, binds the ports, goes Connected.
    pub fn connect(&mut self) {
        assert_eq!(
            self.fe_node("state").as_deref(),
            Some("3"),
            "netfront offers its rings (Initialised)"
        );
        assert_eq!(self.fe_node("request-rx-copy").as_deref(), Some("1"));
        assert_eq!(self.fe_node("feature-rx-notify").as_deref(), Some("1"));
        let tx = self.map_ring("tx-ring-ref");
        let rx = self.map_ring("rx-ring-ref");
        self.tx = Some(BackRing::attach(tx).expect("tx back ring"));
        self.rx = Some(BackRing::attach(rx).expect("rx back ring"));
        self.tx_port = self
            .fe_node("event-channel-tx")
            .expect("split tx port")
            .parse()
            .expect("port");
        self.rx_port = self
            .fe_node("event-channel-rx")
            .expect("split rx port")
            .parse()
            .expect("port");
        self.p.peer_bind(self.tx_port, 0, 100).expect("bind tx");
        self.p.peer_bind(self.rx_port, 0, 101).expect("bind rx");
        self.set_state("4");
    }

    /// Takes every published tx request.
    pub fn tx_requests(&mut self) -> Vec<TxSlot> {
        let ring = self.tx.as_mut().expect("connected");
        let mut v = Vec::new();
        while let Some(s) = ring.take_request().expect("tx ring") {
            v.push(s);
        }
        v
    }

    /// Copies a tx request's data out of its granted page.
    pub fn tx_data(&self, req: &netif_tx_request, len: usize) -> Vec<u8> {
        let m = self.p.peer_map(req.gref, 0, false).expect("map a tx page");
        let mut b = vec![0u8; len];
        m.read(usize::from(req.offset), &mut b);
        self.p.peer_unmap(m);
        b
    }

    pub fn tx_respond(&mut self, id: u16, status: i16) {
        let ring = self.tx.as_mut().expect("connected");
        let mut s = [0u8; 4];
        s.copy_from_slice(netif_tx_response { id, status }.as_bytes());
        ring.push_response(&s).expect("tx response");
        ring.publish_responses();
    }

    /// Delivers `frame` into the posted rx pages (one response per page).
    pub fn rx_deliver(&mut self, frame: &[u8], flags: u16) {
        let chunks: Vec<&[u8]> = frame.chunks(4096).collect();
        for (i, c) in chunks.iter().enumerate() {
            let ring = self.rx.as_mut().expect("connected");
            let req = ring
                .take_request()
                .expect("rx ring")
                .expect("a posted rx request");
            let req = netif_rx_request::read_from_bytes(&req).expect("8 bytes");
            let m = self.p.peer_map(req.gref, 0, true).expect("map an rx page");
            m.write(0, c);
            self.p.peer_unmap(m);
            let mut f = if i == 0 { flags } else { 0 };
            if i + 1 < chunks.len() {
                f |= NETRXF_more_data;
            }
            self.rx_raw(netif_rx_response {
                id: req.id,
                offset: 0,
                flags: f,
                status: c.len() as i16,
            });
        }
        self.rx.as_mut().expect("connected").publish_responses();
    }

    /// Pushes one raw rx response (taking a request for its slot).
    pub fn rx_raw(&mut self, rsp: netif_rx_response) {
        let ring = self.rx.as_mut().expect("connected");
        if ring.pending_responses() == 0 {
            ring.take_request()
                .expect("rx ring")
                .expect("a posted rx request");
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(rsp.as_bytes());
        ring.push_response(&s).expect("rx response");
    }

    /// The backend goes away without unmapping (the grants stay pinned)
    /// or writing to xenstore, as a killed backendd; its ring mappings,
    /// for a test to unmap later (a backend slow to let go) or to drop
    /// (FakeMapping has no Drop: they stay mapped, as a dead process's).
    pub fn crash(&mut self) -> Vec<FakeMapping> {
        self.tx = None;
        self.rx = None;
        core::mem::take(&mut self.maps)
    }

    /// Overwrites `rsp_prod` of the rx ring (a hostile backend).
    pub fn corrupt_rx_rsp_prod(&self, v: u32) {
        let m = &self.maps[1];
        m.write(8, &v.to_ne_bytes());
    }
}

/// A frontend connected to `b`.
pub fn connected<'a>(p: &'a FakePlatform, b: &mut FakeBack<'a>) -> NetFront<'a, FakePlatform> {
    let mut f = NetFront::new(p, DEVID, xen_netfront::NetfrontConfig::default()).expect("new");
    b.init_wait();
    pump(p, &mut f);
    b.connect();
    pump(p, &mut f);
    assert!(f.is_connected(), "state {:?}", f.state());
    f
}

/// A test frame of `len` bytes.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(5) ^ seed).collect()
}

/// One frame each way over the connected rings of `b`.
pub fn exchange(f: &mut NetFront<'_, FakePlatform>, b: &mut FakeBack<'_>, seed: u8) {
    let out = frame(1000, seed);
    assert!(f
        .transmit(0, &out, xen_netfront::PacketMeta::default())
        .expect("transmit"));
    f.push_tx(0).expect("push");
    let slots = b.tx_requests();
    assert_eq!(slots.len(), 1, "one tx request");
    let req = netif_tx_request::read_from_prefix(&slots[0])
        .expect("req")
        .0;
    assert_eq!(b.tx_data(&req, 1000), out, "the frame reaches the backend");
    b.tx_respond(req.id, NETIF_RSP_OKAY);
    assert_eq!(f.reap_tx(0).expect("reap"), 1);
    let inc = frame(1500, seed ^ 0xff);
    b.rx_deliver(&inc, 0);
    let mut buf = vec![0u8; xen_netfront::MAX_FRAME];
    let (n, _) = f.receive(0, &mut buf).expect("receive").expect("a frame");
    assert_eq!(&buf[..n], &inc[..], "the frame reaches the frontend");
    f.push_rx(0).expect("repost");
}
