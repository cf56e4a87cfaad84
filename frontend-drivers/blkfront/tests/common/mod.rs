//! A blkback played by the test through the fake platform's `peer_*`
//! methods: it maps the frontend's rings and data pages as domain 0 would,
//! serves requests from an in-memory disk and answers on the ring. Also the
//! pieces a hostile backend needs (raw responses, a corrupted `rsp_prod`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use xen_abi::io::blkif::{
    blkif_request_discard, blkif_request_indirect, blkif_request_segment, blkif_response,
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use xen_blkfront::request::{decode_request, ReqSlot, RspSlot};
use xen_blkfront::{BlkFront, Completion};
use xen_front_platform::fake::{FakeMapping, FakePlatform};
use xen_front_platform::{Platform, XBT_NIL};
use xen_ring::{BackRing, SharedRing};
use zerocopy::{FromBytes, IntoBytes};

/// The guest's domid in these tests.
pub const GUEST: u16 = 1;
/// The device id (xvda).
pub const DEVID: u32 = 51712;

/// What the backend offers.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    pub sectors: u64,
    pub max_ring_page_order: u32,
    pub max_queues: u32,
    pub max_indirect_segments: u32,
    pub persistent: bool,
    pub flush: bool,
    pub discard: bool,
    pub read_only: bool,
    pub sector_size: u32,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            sectors: 8192, // 4 MiB
            max_ring_page_order: 2,
            max_queues: 1,
            max_indirect_segments: 256,
            persistent: true,
            flush: true,
            discard: true,
            read_only: false,
            sector_size: 512,
        }
    }
}

struct BeQueue {
    ring: BackRing<ReqSlot, RspSlot>,
    maps: Vec<FakeMapping>,
    port: u32,
    base: *mut u8,
}

/// The test's blkback.
pub struct FakeBack<'a> {
    pub p: &'a FakePlatform,
    pub fe: String,
    pub be: String,
    pub disk: Vec<u8>,
    pub offer: Offer,
    queues: Vec<BeQueue>,
    persistent: bool,
    pmaps: HashMap<u32, FakeMapping>,
    /// Requests taken and not answered yet (`hold` mode): (queue, request).
    pub held: Vec<(usize, ReqSlot)>,
    pub flushes: u64,
    pub discards: u64,
    pub indirect_seen: u64,
    pub requests_seen: u64,
    pub ring_pages_seen: usize,
    /// Requests answered per queue.
    pub per_queue: Vec<u64>,
}

/// Writes the nodes the toolstack writes (libxl-style) for `vbd` `DEVID`
/// of `GUEST` backed by domain 0.
pub fn toolstack_nodes(p: &FakePlatform) -> (String, String) {
    let fe = format!("/local/domain/{GUEST}/device/vbd/{DEVID}");
    let be = format!("/local/domain/0/backend/vbd/{GUEST}/{DEVID}");
    for (k, v) in [
        (format!("{fe}/backend"), be.clone()),
        (format!("{fe}/backend-id"), "0".into()),
        (format!("{fe}/state"), "1".into()),
        (format!("{fe}/virtual-device"), DEVID.to_string()),
        (format!("{fe}/device-type"), "disk".into()),
        (format!("{be}/frontend"), fe.clone()),
        (format!("{be}/frontend-id"), GUEST.to_string()),
        (format!("{be}/state"), "1".into()),
        (format!("{be}/mode"), "w".into()),
    ] {
        p.xs_write(XBT_NIL, &k, v.as_bytes())
            .expect("toolstack write");
    }
    (fe, be)
}

fn w(p: &FakePlatform, path: &str, v: &str) {
    p.xs_write(XBT_NIL, path, v.as_bytes())
        .expect("backend write");
}

fn r(p: &FakePlatform, path: &str) -> Option<String> {
    p.xs_read(XBT_NIL, path)
        .ok()
        .map(|v| String::from_utf8(v).expect("utf8"))
}

/// Feeds every fired watch to the frontend.
pub fn pump(p: &FakePlatform, f: &mut BlkFront<'_, FakePlatform>) {
    for _ in 0..64 {
        match p.xs_read_watch(Some(Duration::ZERO)).expect("read watch") {
            Some(ev) => {
                let _ = f.handle_watch(&ev);
            }
            None => return,
        }
    }
}

impl<'a> FakeBack<'a> {
    pub fn new(p: &'a FakePlatform, offer: Offer) -> FakeBack<'a> {
        let (fe, be) = toolstack_nodes(p);
        let disk = vec![0u8; (offer.sectors * 512) as usize];
        FakeBack {
            p,
            fe,
            be,
            disk,
            offer,
            queues: Vec::new(),
            persistent: false,
            pmaps: HashMap::new(),
            held: Vec::new(),
            flushes: 0,
            discards: 0,
            indirect_seen: 0,
            requests_seen: 0,
            ring_pages_seen: 0,
            per_queue: Vec::new(),
        }
    }

    pub fn fe_state(&self) -> Option<String> {
        r(self.p, &format!("{}/state", self.fe))
    }

    pub fn fe_node(&self, k: &str) -> Option<String> {
        r(self.p, &format!("{}/{k}", self.fe))
    }

    pub fn set_state(&self, s: &str) {
        w(self.p, &format!("{}/state", self.be), s);
    }

    /// Probe: the transport offer, then InitWait.
    pub fn init_wait(&self) {
        let o = self.offer;
        w(
            self.p,
            &format!("{}/max-ring-page-order", self.be),
            &o.max_ring_page_order.to_string(),
        );
        w(
            self.p,
            &format!("{}/multi-queue-max-queues", self.be),
            &o.max_queues.to_string(),
        );
        self.set_state("2");
    }

    /// Reads the frontend's rings, maps them, binds the ports, writes the
    /// disk's features and goes Connected.
    pub fn connect(&mut self) {
        assert_eq!(
            self.fe_state().as_deref(),
            Some("3"),
            "frontend Initialised"
        );
        let order: u32 = self
            .fe_node("ring-page-order")
            .map_or(0, |s| s.parse().expect("order"));
        let nq: usize = self
            .fe_node("multi-queue-num-queues")
            .map_or(1, |s| s.parse().expect("queues"));
        assert_eq!(self.fe_node("protocol").as_deref(), Some("x86_64-abi"));
        let npages = 1usize << order;
        self.queues.clear();
        for q in 0..nq {
            let prefix = if nq == 1 {
                String::new()
            } else {
                format!("queue-{q}/")
            };
            let grefs: Vec<u32> = if npages == 1 {
                vec![self
                    .fe_node(&format!("{prefix}ring-ref"))
                    .expect("ring-ref")
                    .parse()
                    .expect("gref")]
            } else {
                (0..npages)
                    .map(|i| {
                        self.fe_node(&format!("{prefix}ring-ref{i}"))
                            .expect("ring-refN")
                            .parse()
                            .expect("gref")
                    })
                    .collect()
            };
            let port: u32 = self
                .fe_node(&format!("{prefix}event-channel"))
                .expect("event-channel")
                .parse()
                .expect("port");
            let maps: Vec<FakeMapping> = grefs
                .iter()
                .map(|&g| self.p.peer_map(g, 0, true).expect("map ring"))
                .collect();
            let base = maps[0].as_ptr();
            for (i, m) in maps.iter().enumerate() {
                assert_eq!(
                    m.as_ptr() as usize,
                    base as usize + i * 4096,
                    "contiguous ring"
                );
            }
            // SAFETY: the mapped ring pages stay valid while mapped (the
            // fake refuses to free granted pages, and the mappings pin the
            // grants until `unmap_all`); this BackRing is the only back
            // endpoint on them.
            let mem = unsafe { SharedRing::new(base, npages * 4096) }.expect("shared ring");
            let ring = BackRing::attach(mem).expect("attach");
            self.p.peer_bind(port, 0, 100 + q as u32).expect("bind");
            self.queues.push(BeQueue {
                ring,
                maps,
                port,
                base,
            });
        }
        self.ring_pages_seen = npages;
        self.per_queue = vec![0; nq];
        self.persistent =
            self.offer.persistent && self.fe_node("feature-persistent").as_deref() == Some("1");
        let o = self.offer;
        let b = &self.be;
        w(
            self.p,
            &format!("{b}/sectors"),
            &(o.sectors * 512 / u64::from(o.sector_size)).to_string(),
        );
        w(
            self.p,
            &format!("{b}/sector-size"),
            &o.sector_size.to_string(),
        );
        w(
            self.p,
            &format!("{b}/info"),
            if o.read_only { "4" } else { "0" },
        );
        w(
            self.p,
            &format!("{b}/feature-flush-cache"),
            if o.flush { "1" } else { "0" },
        );
        w(
            self.p,
            &format!("{b}/feature-discard"),
            if o.discard { "1" } else { "0" },
        );
        w(self.p, &format!("{b}/discard-granularity"), "4096");
        w(
            self.p,
            &format!("{b}/feature-persistent"),
            if o.persistent { "1" } else { "0" },
        );
        w(
            self.p,
            &format!("{b}/feature-max-indirect-segments"),
            &o.max_indirect_segments.to_string(),
        );
        self.set_state("4");
    }

    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The backend dies: every mapping goes, its ports close.
    pub fn unmap_all(&mut self) {
        for q in self.queues.drain(..) {
            let _mem = q.ring.into_shared();
            for m in q.maps {
                self.p.peer_unmap(m);
            }
            let _ = self.p.peer_close(q.port);
        }
        for (_, m) in self.pmaps.drain() {
            self.p.peer_unmap(m);
        }
        self.held.clear();
    }

    fn map_data(&mut self, gref: u32, write: bool) -> Option<MapRef> {
        if self.persistent {
            if !self.pmaps.contains_key(&gref) {
                let m = self.p.peer_map(gref, 0, true).ok()?;
                self.pmaps.insert(gref, m);
            }
            Some(MapRef::Persistent(gref))
        } else {
            if !write {
                assert!(
                    self.p.peer_map(gref, 0, true).is_err(),
                    "a write's pages are granted read-only without persistent grants"
                );
            }
            self.p.peer_map(gref, 0, write).ok().map(MapRef::Owned)
        }
    }

    fn with_map<R>(&self, m: &MapRef, f: impl FnOnce(&FakeMapping) -> R) -> R {
        match m {
            MapRef::Persistent(g) => f(&self.pmaps[g]),
            MapRef::Owned(m) => f(m),
        }
    }

    fn release(&self, m: MapRef) {
        if let MapRef::Owned(m) = m {
            self.p.peer_unmap(m);
        }
    }

    /// Executes one request; returns the response.
    pub fn execute(&mut self, slot: &ReqSlot) -> blkif_response {
        self.requests_seen += 1;
        let req = decode_request(slot);
        let mut rsp = blkif_response {
            id: req.id,
            operation: req.operation,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        };
        let (op, sector, segs): (u8, u64, Vec<blkif_request_segment>) = match req.operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE => {
                let n = req.nr_segments as usize;
                if n == 0 || n > 11 {
                    rsp.status = BLKIF_RSP_ERROR;
                    return rsp;
                }
                (req.operation, req.sector_number, req.seg[..n].to_vec())
            }
            BLKIF_OP_INDIRECT => {
                self.indirect_seen += 1;
                let ind = blkif_request_indirect::read_from_bytes(&slot.as_bytes()[..64])
                    .expect("64 bytes");
                rsp.operation = ind.indirect_op;
                let n = ind.nr_segments as usize;
                if n == 0 || n > self.offer.max_indirect_segments as usize {
                    rsp.status = BLKIF_RSP_ERROR;
                    return rsp;
                }
                let pages = n.div_ceil(512);
                let mut segs = Vec::with_capacity(n);
                for (pi, &g) in ind.indirect_grefs[..pages].iter().enumerate() {
                    assert!(
                        self.p.peer_map(g, 0, true).is_err(),
                        "indirect pages are granted read-only"
                    );
                    let Ok(m) = self.p.peer_map(g, 0, false) else {
                        rsp.status = BLKIF_RSP_ERROR;
                        return rsp;
                    };
                    let mut page = vec![0u8; 4096];
                    m.read(0, &mut page);
                    self.p.peer_unmap(m);
                    let in_page = (n - pi * 512).min(512);
                    for i in 0..in_page {
                        segs.push(
                            blkif_request_segment::read_from_bytes(&page[i * 8..i * 8 + 8])
                                .expect("8 bytes"),
                        );
                    }
                }
                (ind.indirect_op, ind.sector_number, segs)
            }
            BLKIF_OP_FLUSH_DISKCACHE | BLKIF_OP_WRITE_BARRIER => {
                if !self.offer.flush {
                    rsp.status = BLKIF_RSP_EOPNOTSUPP;
                } else {
                    self.flushes += 1;
                }
                return rsp;
            }
            BLKIF_OP_DISCARD => {
                let d = blkif_request_discard::read_from_bytes(&slot.as_bytes()[..32])
                    .expect("32 bytes");
                let start = d.sector_number.checked_mul(512);
                let end = d
                    .sector_number
                    .checked_add(d.nr_sectors)
                    .and_then(|e| e.checked_mul(512));
                match (start, end) {
                    (Some(s), Some(e)) if e <= self.disk.len() as u64 && !self.offer.read_only => {
                        self.disk[s as usize..e as usize].fill(0);
                        self.discards += 1;
                    }
                    _ => rsp.status = BLKIF_RSP_ERROR,
                }
                return rsp;
            }
            _ => {
                rsp.status = BLKIF_RSP_ERROR;
                return rsp;
            }
        };
        if op == BLKIF_OP_WRITE && self.offer.read_only {
            rsp.status = BLKIF_RSP_ERROR;
            return rsp;
        }
        // Validate every segment first, then transfer.
        let mut pos = sector * 512;
        let mut plan = Vec::with_capacity(segs.len());
        for s in &segs {
            if s.first_sect > s.last_sect || s.last_sect > 7 {
                rsp.status = BLKIF_RSP_ERROR;
                return rsp;
            }
            let len = (s.last_sect - s.first_sect + 1) as u64 * 512;
            if pos + len > self.disk.len() as u64 {
                rsp.status = BLKIF_RSP_ERROR;
                return rsp;
            }
            plan.push((
                s.gref,
                s.first_sect as usize * 512,
                pos as usize,
                len as usize,
            ));
            pos += len;
        }
        for (gref, off, dpos, len) in plan {
            let Some(m) = self.map_data(gref, op == BLKIF_OP_READ) else {
                rsp.status = BLKIF_RSP_ERROR;
                return rsp;
            };
            if op == BLKIF_OP_READ {
                let data = self.disk[dpos..dpos + len].to_vec();
                self.with_map(&m, |m| m.write(off, &data));
            } else {
                let mut buf = vec![0u8; len];
                self.with_map(&m, |m| m.read(off, &mut buf));
                self.disk[dpos..dpos + len].copy_from_slice(&buf);
            }
            self.release(m);
        }
        rsp
    }

    fn push_rsp(&mut self, q: usize, rsp: &blkif_response) {
        let slot = RspSlot::read_from_bytes(rsp.as_bytes()).expect("16 bytes");
        self.queues[q]
            .ring
            .push_response(&slot)
            .expect("push response");
    }

    fn publish(&mut self, q: usize) {
        if self.queues[q].ring.push_responses_and_check_notify() {
            self.p.peer_notify(self.queues[q].port).expect("notify");
        }
    }

    /// Takes every request on every ring and answers it. Returns how many.
    pub fn serve(&mut self) -> usize {
        let mut n = 0;
        for q in 0..self.queues.len() {
            while let Some(slot) = self.queues[q].ring.take_request().expect("ring ok") {
                let rsp = self.execute(&slot);
                self.push_rsp(q, &rsp);
                self.per_queue[q] += 1;
                n += 1;
            }
            self.publish(q);
        }
        n
    }

    /// Takes up to `max` requests and holds them unanswered (a backend in
    /// the middle of its work). `execute`: carry them out first.
    pub fn take_and_hold(&mut self, max: usize, execute: bool) -> usize {
        let mut n = 0;
        for q in 0..self.queues.len() {
            while n < max {
                let Some(slot) = self.queues[q].ring.take_request().expect("ring ok") else {
                    break;
                };
                if execute {
                    self.execute(&slot);
                }
                self.held.push((q, slot));
                n += 1;
            }
        }
        n
    }

    /// Answers the held requests.
    pub fn answer_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (q, slot) in held {
            let rsp = self.execute(&slot);
            self.push_rsp(q, &rsp);
        }
        for q in 0..self.queues.len() {
            self.publish(q);
        }
    }

    /// Pushes a hand-made response on queue `q` and notifies.
    pub fn push_raw(&mut self, q: usize, rsp: blkif_response) {
        self.push_rsp(q, &rsp);
        self.publish(q);
        let _ = self.p.peer_notify(self.queues[q].port);
    }

    /// Writes `rsp_prod` of queue `q`'s ring directly (a hostile backend).
    pub fn write_rsp_prod(&mut self, q: usize, value: u32) {
        let base = self.queues[q].base;
        // SAFETY: base is the mapped first ring page (valid while mapped,
        // see `connect`), 4096-aligned, so base + 8 is an aligned u32
        // inside it; the frontend reads the word atomically too.
        let word = unsafe { AtomicU32::from_ptr(base.add(8).cast::<u32>()) };
        word.store(value, Ordering::Release);
        let _ = self.p.peer_notify(self.queues[q].port);
    }

    /// `req_prod` of queue `q`.
    pub fn req_prod(&self, q: usize) -> u32 {
        let base = self.queues[q].base;
        // SAFETY: as in write_rsp_prod, offset 0.
        let word = unsafe { AtomicU32::from_ptr(base.cast::<u32>()) };
        word.load(Ordering::Acquire)
    }
}

enum MapRef {
    Persistent(u32),
    Owned(FakeMapping),
}

/// Handshake to Connected with `offer`.
pub fn connected<'a>(
    p: &'a FakePlatform,
    offer: Offer,
    cfg: xen_blkfront::BlkfrontConfig,
) -> (BlkFront<'a, FakePlatform>, FakeBack<'a>) {
    let mut back = FakeBack::new(p, offer);
    let mut front = BlkFront::new(p, DEVID, cfg).expect("open device");
    pump(p, &mut front);
    back.init_wait();
    pump(p, &mut front);
    back.connect();
    pump(p, &mut front);
    assert_eq!(front.state(), xen_blkfront::FrontState::Connected);
    assert_eq!(back.fe_state().as_deref(), Some("4"));
    (front, back)
}

/// Polls completions and serves until `tags` requests completed (bounded).
pub fn run_until(
    front: &mut BlkFront<'_, FakePlatform>,
    back: &mut FakeBack<'_>,
    want: usize,
) -> Vec<Completion> {
    let mut done = Vec::new();
    for _ in 0..10_000 {
        if done.len() >= want {
            break;
        }
        back.serve();
        done.extend(front.poll_completions().expect("poll"));
    }
    done
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Each request of `tags` completed once, successfully; no other.
pub fn check_exactly_once(done: &[Completion], tags: &HashMap<xen_blkfront::RequestTag, u64>) {
    let mut seen = HashMap::new();
    for c in done {
        assert_eq!(c.status, xen_blkfront::BlkStatus::Okay, "{c:?}");
        assert!(tags.contains_key(&c.tag), "unknown tag {:?}", c.tag);
        assert!(
            seen.insert(c.tag, ()).is_none(),
            "tag {:?} completed twice",
            c.tag
        );
    }
    assert_eq!(seen.len(), tags.len(), "every request completed");
}
