//! Shared fixtures: a private shim daemon served by a thread of the test
//! process, Dom0 handles for the backend, and a guest domain attached in the
//! test process (a real `xen-pvguest` runtime) whose test code plays a
//! hand-written blkfront: it grants a ring and data pages and writes blkif
//! requests into a `FrontRing`.
//!
//! The guest domains are never destroyed (the daemon would signal the
//! attached runtime's pid, which is this test process); each test's daemon
//! and domain go away with the process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::blkif::*;
use xen_blkback::{BlkBackend, DiskConfig, Dom0Handles, FrontendParams, QueueParams};
use xen_front_platform::{Platform, SharedPages};
use xen_pvguest::runtime::Runtime;
use xen_ring::{FrontRing, SharedRing};
use xen_shim_dom0::{Control, Gntdev};
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, ShimDaemon};
use zerocopy::{FromBytes, IntoBytes};

/// Timeout of every step.
pub const STEP: Duration = Duration::from_secs(30);
/// Guest RAM (enough for 16-page rings and 256 data pages).
pub const MEMORY_MIB: u64 = 16;
/// Bytes of a page.
pub const PAGE: usize = 4096;

pub type Slot = [u8; BLKIF_SRING_ENTRY_SIZE];
pub type Rsp = [u8; 16];

/// Root is needed: the shim daemon serves only its own uid and the tests run
/// it as root, as the CI does.
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        uid, 0,
        "these tests run the shim daemon and need root: run them as root (sudo -E tests/run.sh)"
    );
}

/// The daemon, Dom0's handles and one guest runtime attached in-process.
pub struct World {
    pub daemon: ShimDaemon,
    pub control: Control,
    pub handles: Dom0Handles,
    pub rt: Runtime,
}

impl World {
    pub fn start(tag: &str) -> World {
        require_root();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let daemon = ShimDaemon::start(tag).expect("the shim daemon starts");
        let control = daemon.control().expect("Dom0 control connects");
        let gntdev = Arc::new(Gntdev::open(daemon.socket()).expect("gntdev opens"));
        let created = control
            .create_domain(&DomainConfig::pv(&unique_name(tag), MEMORY_MIB))
            .expect("create the guest domain");
        let rt = Runtime::start_with(daemon.socket(), created.domid, &created.token)
            .expect("the guest runtime attaches");
        let handles = Dom0Handles {
            gntdev,
            socket: daemon.socket().to_path_buf(),
        };
        World {
            daemon,
            control,
            handles,
            rt,
        }
    }

    pub fn domid(&self) -> u16 {
        self.rt.domid()
    }
}

/// A temporary raw image of `len` bytes, removed on drop.
pub struct Image {
    pub file: tempfile::NamedTempFile,
}

impl Image {
    pub fn new(len: u64) -> Image {
        let file = tempfile::Builder::new()
            .prefix("blkback-test-")
            .suffix(".img")
            .tempfile_in("/var/tmp")
            .expect("temp image");
        file.as_file().set_len(len).expect("size the image");
        Image { file }
    }

    pub fn path(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }

    pub fn read_at(&self, off: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len];
        self.file
            .as_file()
            .read_exact_at(&mut b, off)
            .expect("read the image");
        b
    }

    pub fn write_at(&self, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        self.file
            .as_file()
            .write_all_at(data, off)
            .expect("write the image");
    }
}

/// One ring of the hand-written frontend.
pub struct FrontQueue {
    pub ring_pages: SharedPages,
    pub ring_refs: Vec<grant_ref_t>,
    pub port: evtchn_port_t,
    pub front: FrontRing<Slot, Rsp>,
}

/// The hand-written frontend: rings and `nr_data` data pages granted
/// read-write to Dom0.
pub struct Front<'a> {
    pub rt: &'a Runtime,
    pub queues: Vec<FrontQueue>,
    pub data: SharedPages,
    pub data_refs: Vec<grant_ref_t>,
}

impl<'a> Front<'a> {
    pub fn new(rt: &'a Runtime, nr_queues: usize, ring_pages: usize, nr_data: usize) -> Front<'a> {
        let p = rt.platform();
        let mut queues = Vec::new();
        for _ in 0..nr_queues {
            let pages = p.alloc_pages(ring_pages).expect("ring pages");
            let refs: Vec<grant_ref_t> = (0..ring_pages)
                .map(|i| {
                    p.grant_access(0, pages.gfn(i).expect("gfn"), false)
                        .expect("grant a ring page")
                })
                .collect();
            // SAFETY: the pages stay allocated for the life of this value
            // (they are never freed: the test process ends first) and only
            // this FrontRing touches them in the guest.
            let mem = unsafe { SharedRing::new(pages.as_ptr(), pages.len()) }.expect("ring memory");
            let front = FrontRing::init(mem).expect("front ring");
            let port = p.evtchn_alloc_unbound(0).expect("unbound port");
            queues.push(FrontQueue {
                ring_pages: pages,
                ring_refs: refs,
                port,
                front,
            });
        }
        let data = p.alloc_pages(nr_data).expect("data pages");
        let data_refs = (0..nr_data)
            .map(|i| {
                p.grant_access(0, data.gfn(i).expect("gfn"), false)
                    .expect("grant a data page")
            })
            .collect();
        Front {
            rt,
            queues,
            data,
            data_refs,
        }
    }

    /// The parameters a frontend would write in xenstore.
    pub fn params(&self, persistent: bool) -> FrontendParams {
        FrontendParams {
            queues: self
                .queues
                .iter()
                .map(|q| QueueParams {
                    ring_refs: q.ring_refs.clone(),
                    event_channel: q.port,
                })
                .collect(),
            persistent,
        }
    }

    /// Pushes slots on queue `q` and notifies if the backend asked.
    pub fn submit(&mut self, q: usize, slots: &[Slot]) {
        let fq = &mut self.queues[q];
        for s in slots {
            fq.front.push_request(s).expect("ring has room");
        }
        if fq.front.push_requests_and_check_notify() {
            self.rt
                .platform()
                .evtchn_notify(fq.port)
                .expect("notify the backend");
        }
    }

    /// Waits for `n` responses on queue `q`.
    pub fn responses(&mut self, q: usize, n: usize) -> Vec<blkif_response> {
        let deadline = Instant::now() + STEP;
        let mut out = Vec::with_capacity(n);
        let fq = &mut self.queues[q];
        while out.len() < n {
            match fq.front.take_response().expect("response ring sane") {
                Some(r) => out.push(blkif_response::read_from_bytes(&r).expect("16 bytes")),
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "only {} of {n} responses arrived",
                        out.len()
                    );
                    std::thread::yield_now();
                }
            }
        }
        out
    }

    /// Submits one slot and waits for its response.
    pub fn call(&mut self, q: usize, slot: Slot) -> blkif_response {
        self.submit(q, &[slot]);
        self.responses(q, 1)[0]
    }

    pub fn write_data(&self, page: usize, off: usize, bytes: &[u8]) {
        self.data
            .write(page * PAGE + off, bytes)
            .expect("data page write");
    }

    pub fn read_data(&self, page: usize, off: usize, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.data
            .read(page * PAGE + off, &mut b)
            .expect("data page read");
        b
    }
}

pub fn seg(gref: grant_ref_t, first: u8, last: u8) -> blkif_request_segment {
    blkif_request_segment {
        gref,
        first_sect: first,
        last_sect: last,
        _pad0: 0,
    }
}

pub fn slot_of<T: IntoBytes + zerocopy::Immutable>(v: &T) -> Slot {
    let mut s = [0u8; BLKIF_SRING_ENTRY_SIZE];
    let b = v.as_bytes();
    s[..b.len()].copy_from_slice(b);
    s
}

/// A direct read/write request.
pub fn rw(op: u8, id: u64, sector: u64, segs: &[blkif_request_segment]) -> Slot {
    let mut r = blkif_request {
        operation: op,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    r.seg[..segs.len()].copy_from_slice(segs);
    slot_of(&r)
}

pub fn flush(id: u64) -> Slot {
    slot_of(&blkif_request_other {
        operation: BLKIF_OP_FLUSH_DISKCACHE,
        id,
        ..Default::default()
    })
}

pub fn discard(id: u64, sector: u64, nr_sectors: u64) -> Slot {
    slot_of(&blkif_request_discard {
        operation: BLKIF_OP_DISCARD,
        id,
        sector_number: sector,
        nr_sectors,
        ..Default::default()
    })
}

pub fn indirect(op: u8, id: u64, sector: u64, count: u16, pages: &[grant_ref_t]) -> Slot {
    let mut r = blkif_request_indirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: count,
        id,
        sector_number: sector,
        ..Default::default()
    };
    r.indirect_grefs[..pages.len()].copy_from_slice(pages);
    slot_of(&r)
}

/// A byte pattern unique to (`tag`, position).
pub fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag) ^ ((i >> 8) as u8))
        .collect()
}

/// Opens a backend on `image`.
pub fn backend(image: &Image, readonly: bool) -> BlkBackend {
    BlkBackend::new(DiskConfig::raw(image.path(), readonly)).expect("open the backend")
}
