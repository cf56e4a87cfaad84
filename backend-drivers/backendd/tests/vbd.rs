//! backendd's `vbd` type (xen-blkback) end to end through xenstore: a private
//! shim daemon and xenstored (threads of this process), the service with
//! the real `VbdFactory`, and a guest domain attached in this process whose
//! test code plays blkfront: it grants a ring, publishes `ring-ref`,
//! `event-channel` and its state in xenstore, and sends blkif requests.
//!
//! Needs root (the shim serves only its own uid; guest memory in /dev/shm).
//! The guest domains are never destroyed (the daemon would signal the
//! attached runtime's pid, which is this test process).

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::blkif::*;
use xen_backendd::vbd::VbdFactory;
use xen_front_platform::{Platform, SharedPages};
use xen_pvguest::runtime::Runtime;
use xen_ring::{FrontRing, SharedRing};
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, ShimDaemon};
use xenstore_client::{Client, XsOps};
use zerocopy::{FromBytes, IntoBytes};

mod common;
use common::{Backendd, Xenstored};

const TIMEOUT: Duration = Duration::from_secs(15);
type Slot = [u8; BLKIF_SRING_ENTRY_SIZE];
type Rsp = [u8; 16];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test runs the shim daemon and needs root");
}

/// Everything one test needs; dropped in reverse order.
struct World {
    _svc: Backendd,
    xs: Client,
    rt: Runtime,
    _xsd: Xenstored,
    _shim: ShimDaemon,
    image: tempfile::NamedTempFile,
}

impl World {
    fn start(tag: &str) -> Self {
        require_root();
        let shim = ShimDaemon::start(tag).expect("shim daemon");
        let control = shim.control().expect("control");
        let created = control
            .create_domain(&DomainConfig::pv(&unique_name(tag), 16))
            .expect("create the guest domain");
        let rt = Runtime::start_with(shim.socket(), created.domid, &created.token)
            .expect("runtime attaches");
        let xsd = Xenstored::start("backendd-vbd-");
        let xs = Client::connect_path(&xsd.socket).expect("xenstore");
        let image = tempfile::Builder::new()
            .prefix("backendd-vbd-")
            .suffix(".img")
            .tempfile_in("/var/tmp")
            .expect("image");
        image.as_file().set_len(1 << 20).expect("size");
        let svc_xs = Arc::new(Client::connect_path(&xsd.socket).expect("xenstore"));
        let svc = Backendd::start(
            svc_xs,
            Duration::from_millis(20),
            vec![Arc::new(VbdFactory::new(shim.socket().to_path_buf()))],
        );
        Self {
            _svc: svc,
            xs,
            rt,
            _xsd: xsd,
            _shim: shim,
            image,
        }
    }

    fn domid(&self) -> u16 {
        self.rt.domid()
    }

    fn be(&self) -> String {
        format!("/local/domain/0/backend/vbd/{}/51712", self.domid())
    }

    fn fe(&self) -> String {
        format!("/local/domain/{}/device/vbd/51712", self.domid())
    }

    /// The toolstack's nodes (what `xl create` writes).
    fn add_disk(&self, mode: &str) {
        let (be, fe) = (self.be(), self.fe());
        let params = self.image.path().display().to_string();
        let domid = self.domid().to_string();
        self.xs
            .transaction(|tx| {
                tx.write(&format!("{fe}/backend"), &be)?;
                tx.write(&format!("{fe}/backend-id"), "0")?;
                tx.write(&format!("{fe}/state"), "1")?;
                tx.write(&format!("{be}/frontend"), &fe)?;
                tx.write(&format!("{be}/frontend-id"), &domid)?;
                tx.write(&format!("{be}/online"), "1")?;
                tx.write(&format!("{be}/params"), &params)?;
                tx.write(&format!("{be}/mode"), mode)?;
                tx.write(&format!("{be}/state"), "1")?;
                Ok(())
            })
            .expect("toolstack nodes");
    }

    fn read(&self, p: &str) -> Option<String> {
        self.xs
            .read_opt(p)
            .expect("read")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn wait_be_state(&self, want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let p = format!("{}/state", self.be());
        loop {
            let v = self.read(&p);
            if v.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend state {v:?}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The test's blkfront: one single-page ring and one data page.
struct Front {
    ring_pages: SharedPages,
    ring_ref: grant_ref_t,
    port: u32,
    ring: FrontRing<Slot, Rsp>,
    data: SharedPages,
    data_ref: grant_ref_t,
}

impl Front {
    fn new(rt: &Runtime) -> Self {
        let p = rt.platform();
        let pages = p.alloc_pages(1).expect("ring page");
        let ring_ref = p
            .grant_access(0, pages.gfn(0).expect("gfn"), false)
            .expect("grant ring");
        // SAFETY: the page stays allocated for the life of this value (it is
        // never freed before the test process ends) and only this FrontRing
        // touches it in the guest.
        let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) }.expect("ring memory");
        let ring = FrontRing::init(mem).expect("front ring");
        let port = p.evtchn_alloc_unbound(0).expect("port");
        let data = p.alloc_pages(1).expect("data page");
        let data_ref = p
            .grant_access(0, data.gfn(0).expect("gfn"), false)
            .expect("grant data");
        Self {
            ring_pages: pages,
            ring_ref,
            port,
            ring,
            data,
            data_ref,
        }
    }

    /// Publishes the ring and switches to `state`, as blkfront's
    /// `talk_to_blkback` does.
    fn publish(&self, w: &World, state: &str) {
        let fe = w.fe();
        w.xs.transaction(|tx| {
            tx.write(&format!("{fe}/ring-ref"), self.ring_ref.to_string())?;
            tx.write(&format!("{fe}/event-channel"), self.port.to_string())?;
            tx.write(&format!("{fe}/protocol"), "x86_64-abi")?;
            tx.write(&format!("{fe}/state"), state)?;
            Ok(())
        })
        .expect("frontend nodes");
    }

    fn call(&mut self, rt: &Runtime, slot: &Slot) -> blkif_response {
        self.ring.push_request(slot).expect("room");
        if self.ring.push_requests_and_check_notify() {
            rt.platform().evtchn_notify(self.port).expect("notify");
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(r) = self.ring.take_response().expect("sane ring") {
                return blkif_response::read_from_bytes(&r).expect("16 bytes");
            }
            assert!(Instant::now() < deadline, "no response");
            std::thread::yield_now();
        }
    }

    fn rw(&self, op: u8, id: u64, sector: u64) -> Slot {
        let mut r = blkif_request {
            operation: op,
            nr_segments: 1,
            id,
            sector_number: sector,
            ..Default::default()
        };
        r.seg[0] = blkif_request_segment {
            gref: self.data_ref,
            first_sect: 0,
            last_sect: 7,
            _pad0: 0,
        };
        let mut s = [0u8; BLKIF_SRING_ENTRY_SIZE];
        let b = r.as_bytes();
        s[..b.len()].copy_from_slice(b);
        s
    }
}

#[test]
fn test_vbd_handshake_connects_blkback_and_serves_io() {
    let w = World::start("bkd-vbd-io");
    w.add_disk("w");
    w.wait_be_state("2");
    assert_eq!(
        w.read(&format!("{}/sectors", w.be())).as_deref(),
        Some("2048")
    );
    assert_eq!(w.read(&format!("{}/info", w.be())).as_deref(), Some("0"));
    assert_eq!(
        w.read(&format!("{}/feature-flush-cache", w.be()))
            .as_deref(),
        Some("1")
    );

    let mut f = Front::new(&w.rt);
    f.publish(&w, "3");
    w.wait_be_state("4");

    // A write lands in the image; a read brings it back.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    f.data.write(0, &pattern).expect("fill the data page");
    let r = f.call(&w.rt, &f.rw(BLKIF_OP_WRITE, 1, 16));
    assert_eq!((r.id, r.status), (1, BLKIF_RSP_OKAY));
    let mut on_disk = vec![0u8; 4096];
    w.image
        .as_file()
        .read_exact_at(&mut on_disk, 16 * 512)
        .expect("read image");
    assert_eq!(on_disk, pattern);
    f.data.write(0, &[0u8; 4096]).expect("clear");
    let r = f.call(&w.rt, &f.rw(BLKIF_OP_READ, 2, 16));
    assert_eq!((r.id, r.status), (2, BLKIF_RSP_OKAY));
    let mut back = vec![0u8; 4096];
    f.data.read(0, &mut back).expect("read data page");
    assert_eq!(back, pattern);

    // The frontend closes: Closing, then Closed.
    w.xs.write(&format!("{}/state", w.fe()), "5")
        .expect("write");
    w.wait_be_state("5");
    w.xs.write(&format!("{}/state", w.fe()), "6")
        .expect("write");
    w.wait_be_state("6");
}

#[test]
fn test_vbd_read_only_disk_refuses_writes() {
    let w = World::start("bkd-vbd-ro");
    w.add_disk("r");
    w.wait_be_state("2");
    assert_eq!(
        w.read(&format!("{}/info", w.be())).as_deref(),
        Some(VDISK_READONLY.to_string().as_str())
    );
    let mut f = Front::new(&w.rt);
    f.publish(&w, "4");
    w.wait_be_state("4");
    let r = f.call(&w.rt, &f.rw(BLKIF_OP_WRITE, 7, 0));
    assert_eq!((r.id, r.status), (7, BLKIF_RSP_ERROR));
}

#[test]
fn test_vbd_bad_ring_ref_fails_device_to_closing() {
    let w = World::start("bkd-vbd-badref");
    w.add_disk("w");
    w.wait_be_state("2");
    let fe = w.fe();
    w.xs.transaction(|tx| {
        tx.write(&format!("{fe}/ring-ref"), "999999")?;
        tx.write(&format!("{fe}/event-channel"), "1")?;
        tx.write(&format!("{fe}/state"), "3")?;
        Ok(())
    })
    .expect("frontend nodes");
    w.wait_be_state("5");
    let err = w
        .read(&format!(
            "/local/domain/0/error/backend/vbd/{}/51712/error",
            w.domid()
        ))
        .expect("error node");
    assert!(!err.is_empty());
}

#[test]
fn test_vbd_ring_producer_overflow_closes_only_that_device() {
    let w = World::start("bkd-vbd-overflow");
    w.add_disk("w");
    w.wait_be_state("2");
    let f = Front::new(&w.rt);
    f.publish(&w, "4");
    w.wait_be_state("4");
    // A hostile frontend: req_prod (offset 0 of the shared ring) far past
    // what the ring holds, then a notification.
    f.ring_pages
        .write(0, &1000u32.to_le_bytes())
        .expect("write req_prod");
    w.rt.platform().evtchn_notify(f.port).expect("notify");
    w.wait_be_state("5");
    let err = w
        .read(&format!(
            "/local/domain/0/error/backend/vbd/{}/51712/error",
            w.domid()
        ))
        .expect("error node");
    assert!(err.contains("queue 0 failed"), "{err}");
}

/// Waits until every `statistics/<name>` node of the vbd reads as wanted.
fn wait_statistics(w: &World, want: &[(&str, u64)]) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now: Vec<(&str, Option<u64>)> = want
            .iter()
            .map(|(k, _)| {
                let v = w.read(&format!("{}/statistics/{k}", w.be()));
                (*k, v.and_then(|v| v.parse().ok()))
            })
            .collect();
        if now.iter().zip(want).all(|((_, v), (_, x))| *v == Some(*x)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "statistics {now:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn test_vbd_statistics_count_requests_sectors_and_full_rings() {
    let w = World::start("bkd-vbd-stats");
    w.add_disk("w");
    w.wait_be_state("2");
    let mut f = Front::new(&w.rt);
    f.publish(&w, "3");
    w.wait_be_state("4");
    wait_statistics(&w, &[("rd_req", 0), ("wr_req", 0), ("connects", 1)]);

    // One write and two reads of 8 sectors each.
    let r = f.call(&w.rt, &f.rw(BLKIF_OP_WRITE, 1, 0));
    assert_eq!(r.status, BLKIF_RSP_OKAY);
    for id in 2..4 {
        let r = f.call(&w.rt, &f.rw(BLKIF_OP_READ, id, 8));
        assert_eq!(r.status, BLKIF_RSP_OKAY);
    }
    wait_statistics(
        &w,
        &[
            ("rd_req", 2),
            ("wr_req", 1),
            ("rd_sect", 16),
            ("wr_sect", 8),
            ("oo_req", 0),
        ],
    );

    // A whole ring of reads before one notification: the backend finds
    // the ring full once (Xen's "out of requests").
    let nr = f.ring.nr_ents();
    for i in 0..nr {
        f.ring
            .push_request(&f.rw(BLKIF_OP_READ, 100 + u64::from(i), 0))
            .expect("room");
    }
    assert!(f.ring.is_full());
    f.ring.push_requests_and_check_notify();
    w.rt.platform().evtchn_notify(f.port).expect("notify");
    let deadline = Instant::now() + TIMEOUT;
    let mut answered = 0;
    while answered < nr {
        if let Some(r) = f.ring.take_response().expect("sane ring") {
            let r = blkif_response::read_from_bytes(&r).expect("16 bytes");
            assert_eq!(r.status, BLKIF_RSP_OKAY);
            answered += 1;
        } else {
            assert!(Instant::now() < deadline, "{answered} of {nr} answered");
            std::thread::yield_now();
        }
    }
    let reads = 2 + u64::from(nr);
    wait_statistics(
        &w,
        &[("rd_req", reads), ("rd_sect", reads * 8), ("oo_req", 1)],
    );
}
