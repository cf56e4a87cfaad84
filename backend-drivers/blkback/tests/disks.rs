//! blkback serving a guest's rings from a qcow2 image, from an NBD export
//! and from a Ceph RBD image (the same hand-written frontend as
//! `normal.rs`): reads, writes, flush and discard through the ring;
//! `qemu-img check` clean afterwards; an NBD server that goes away fails
//! the device (not the service); the RBD engine's pipeline (transfers in
//! flight across batches, a persistent-grant cache too small for them)
//! writes and reads back every page, which `rbd export` shows. Needs root,
//! qemu-utils (`apt-get install qemu-utils`), and Ceph (`ceph-mon`,
//! `ceph-osd`, `ceph-common`, `librbd-dev`: tests/setup-host.sh).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use xen_abi::io::blkif::*;
use xen_blkback::io::RbdTarget;
use xen_blkback::{BlkBackend, DeviceStatus, DiskConfig, FailureReason, NbdTarget};
use xen_testhost::ceph::CephCluster;

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): apt-get install qemu-utils"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed: {text}");
    text
}

/// `qemu-nbd` on a Unix socket, killed on drop.
struct QemuNbd {
    child: Child,
    uri: String,
}

impl QemuNbd {
    fn start(file: &Path, sock: &Path) -> QemuNbd {
        let child = Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-x",
                "disk",
                "-e",
                "4",
                "--persistent",
                "--discard=unmap",
                "-k",
            ])
            .arg(sock)
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-nbd (apt-get install qemu-utils)");
        let deadline = Instant::now() + Duration::from_secs(20);
        // Listening, not only bound (a connect between bind and listen is
        // refused; `--persistent` outlives the probe).
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(Instant::now() < deadline, "qemu-nbd did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuNbd {
            child,
            uri: format!("nbd+unix:///disk?socket={}", sock.display()),
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes two pages at sector 64, reads them back, flushes, discards the
/// first 64 KiB-aligned cluster and checks it reads as zeros.
fn exercise(w: &World, be: &BlkBackend) {
    let mut f = Front::new(&w.rt, 1, 1, 4);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let a = pattern(1, PAGE);
    let b = pattern(2, PAGE);
    f.write_data(0, 0, &a);
    f.write_data(1, 0, &b);
    let (g0, g1, g2, g3) = (
        f.data_refs[0],
        f.data_refs[1],
        f.data_refs[2],
        f.data_refs[3],
    );
    let wr = f.call(
        0,
        rw(BLKIF_OP_WRITE, 1, 64, &[seg(g0, 0, 7), seg(g1, 0, 7)]),
    );
    assert_eq!(wr.status, BLKIF_RSP_OKAY);
    let fl = f.call(0, flush(2));
    assert_eq!(fl.status, BLKIF_RSP_OKAY);
    let rd = f.call(0, rw(BLKIF_OP_READ, 3, 64, &[seg(g2, 0, 7), seg(g3, 0, 7)]));
    assert_eq!(rd.status, BLKIF_RSP_OKAY);
    assert_eq!(f.read_data(2, 0, PAGE), a);
    assert_eq!(f.read_data(3, 0, PAGE), b);
    // Write at 64 KiB, discard 64 KiB there, read zeros.
    let wr = f.call(0, rw(BLKIF_OP_WRITE, 4, 128, &[seg(g0, 0, 7)]));
    assert_eq!(wr.status, BLKIF_RSP_OKAY);
    let d = f.call(0, discard(5, 128, 128));
    assert_eq!(d.status, BLKIF_RSP_OKAY);
    let rd = f.call(0, rw(BLKIF_OP_READ, 6, 128, &[seg(g2, 0, 7)]));
    assert_eq!(rd.status, BLKIF_RSP_OKAY);
    assert!(f.read_data(2, 0, PAGE).iter().all(|&x| x == 0));
    assert_eq!(dev.status(), DeviceStatus::Running);
    let m = dev.disconnect();
    assert_eq!((m.errors, m.discards), (0, 1));
}

#[test]
fn test_blkback_qcow2_image_through_the_ring_and_qemu_img_check_clean() {
    let w = World::start("bb-qcow2");
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("d.qcow2");
    let ps = p.to_str().expect("utf-8");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", ps, "8M"]);
    let be = BlkBackend::new(DiskConfig::qcow2(&p, false)).expect("open");
    let feats: std::collections::HashMap<_, _> = be.features().into_iter().collect();
    assert_eq!(feats["sectors"], (8u64 << 20 >> 9).to_string());
    assert_eq!(feats["feature-discard"], "1");
    assert_eq!(feats["discard-granularity"], "65536");
    exercise(&w, &be);
    drop(be);
    let check = tool("qemu-img", &["check", ps]);
    assert!(check.contains("No errors were found"), "{check}");
    let data = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0 65536 65536", ps],
    );
    assert!(!data.contains("Pattern verification failed"), "{data}");
}

#[test]
fn test_blkback_nbd_export_through_the_ring() {
    let w = World::start("bb-nbd");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("export.raw");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(8 << 20))
        .expect("export file");
    let srv = QemuNbd::start(&file, &dir.path().join("nbd.sock"));
    let t = NbdTarget::parse(&srv.uri).expect("uri");
    let be = BlkBackend::new(DiskConfig::nbd(t, false)).expect("attach");
    assert_eq!(be.sectors(), (8u64 << 20) / 512);
    exercise(&w, &be);
    let on_disk = std::fs::read(&file).expect("read the export");
    assert_eq!(&on_disk[64 * 512..64 * 512 + PAGE], &pattern(1, PAGE)[..]);
}

#[test]
fn test_blkback_nbd_server_gone_fails_only_the_device() {
    let w = World::start("bb-nbd-gone");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("export.raw");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(1 << 20))
        .expect("export file");
    let mut srv = QemuNbd::start(&file, &dir.path().join("nbd.sock"));
    let t = NbdTarget::parse(&srv.uri).expect("uri");
    let mut cfg = DiskConfig::nbd(t, false);
    cfg.io_threads = 0;
    let be = BlkBackend::new(cfg).expect("attach");
    let mut f = Front::new(&w.rt, 1, 1, 1);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(false))
        .expect("connect");
    let g = f.data_refs[0];
    assert_eq!(
        f.call(0, rw(BLKIF_OP_READ, 1, 0, &[seg(g, 0, 7)])).status,
        BLKIF_RSP_OKAY
    );

    // Act: the server goes away; the next request cannot be served.
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let r = f.call(0, rw(BLKIF_OP_READ, 2, 0, &[seg(g, 0, 7)]));

    // Assert: an error answer, and the device fails with the disk's reason.
    assert_eq!(r.status, BLKIF_RSP_ERROR);
    let failure = dev.wait_failure(STEP).expect("the device fails");
    match &failure.reason {
        FailureReason::Disk(msg) => assert!(msg.contains(&srv.uri), "{msg}"),
        other => panic!("unexpected failure {other:?}"),
    }
    dev.disconnect();
}

#[test]
fn test_blkback_rbd_pipeline_across_batches_with_a_small_grant_cache_then_rbd_export() {
    // Arrange: an RBD disk whose persistent-grant cache holds 8 pages, a
    // one-page ring (32 slots) and 96 data pages, persistent grants on.
    let w = World::start("bb-rbd-pipe");
    let c = CephCluster::start(512 << 20).expect("start the cluster");
    c.create_image("p", 16).expect("create the image");
    let t = RbdTarget::parse(&format!("rbd:rbd/p:conf={}", c.conf().display())).expect("target");
    let mut cfg = DiskConfig::rbd(t, false);
    cfg.max_persistent_grants = 8;
    let be = BlkBackend::new(cfg).expect("attach");
    let mut f = Front::new(&w.rt, 1, 1, 96);
    let dev = be
        .connect(&w.handles, w.domid(), &f.params(true))
        .expect("connect");
    // Page i is written at sector 16 * i (not adjacent: no merging).
    let data = |i: usize| pattern(i as u8, PAGE);
    let write = |f: &Front, i: usize| {
        f.write_data(i, 0, &data(i));
        rw(
            BLKIF_OP_WRITE,
            i as u64,
            16 * i as u64,
            &[seg(f.data_refs[i], 0, 7)],
        )
    };

    // Act: a full ring of writes; half answered, 16 more join while the
    // rest are in flight; then every page read back into other pages.
    let first: Vec<Slot> = (0..32).map(|i| write(&f, i)).collect();
    f.submit(0, &first);
    let mut answers = f.responses(0, 16);
    let more: Vec<Slot> = (32..48).map(|i| write(&f, i)).collect();
    f.submit(0, &more);
    answers.extend(f.responses(0, 32));
    let reads: Vec<Slot> = (0..48)
        .map(|i| {
            rw(
                BLKIF_OP_READ,
                100 + i as u64,
                16 * i as u64,
                &[seg(f.data_refs[48 + i], 0, 7)],
            )
        })
        .collect();
    f.submit(0, &reads[..32]);
    answers.extend(f.responses(0, 16));
    f.submit(0, &reads[32..]);
    answers.extend(f.responses(0, 32));
    // What the reads brought (their pages are reused below).
    let read_back: Vec<bool> = (0..48)
        .map(|i| f.read_data(48 + i, 0, PAGE) == data(i))
        .collect();
    // Adjacent writes published one by one (as a frontend splitting a
    // large write does): batches may merge them; one read of all 8 pages.
    for k in 0..8usize {
        f.write_data(k, 0, &data(200 + k));
        let s = rw(
            BLKIF_OP_WRITE,
            300 + k as u64,
            4096 + 8 * k as u64,
            &[seg(f.data_refs[k], 0, 7)],
        );
        f.submit(0, &[s]);
    }
    answers.extend(f.responses(0, 8));
    let segs: Vec<_> = (0..8).map(|k| seg(f.data_refs[88 + k], 0, 7)).collect();
    answers.push(f.call(0, rw(BLKIF_OP_READ, 400, 4096, &segs)));
    let fl = f.call(0, flush(500));

    // Assert: every request answered once, OK; the pages read back; the
    // cache stayed within its 8 pages.
    let mut ids: Vec<u64> = answers.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let want: Vec<u64> = (0..48)
        .chain(100..148)
        .chain(300..308)
        .chain([400])
        .collect();
    assert_eq!(ids, want);
    assert!(answers.iter().all(|r| r.status == BLKIF_RSP_OKAY));
    assert_eq!(fl.status, BLKIF_RSP_OKAY);
    for (i, ok) in read_back.iter().enumerate() {
        assert!(ok, "page {i} read back");
    }
    for k in 0..8usize {
        assert!(
            f.read_data(88 + k, 0, PAGE) == data(200 + k),
            "adjacent page {k} read back"
        );
    }
    let held = dev.metrics().persistent_grants;
    assert!((1..=8).contains(&held), "{held} persistent grants held");
    let m = dev.disconnect();
    assert_eq!((m.writes, m.reads, m.errors, m.flushes), (56, 49, 0, 1));
    assert_eq!(m.persistent_grants, 0, "every grant unmapped at disconnect");
    drop(be);
    // Dom0's view: `rbd export` has every page.
    let out = c.dir().join("p.raw");
    c.rbd(&["export", "rbd/p", out.to_str().expect("utf-8")])
        .expect("rbd export");
    let exported = std::fs::read(&out).expect("read the export");
    for i in 0..48 {
        let off = 16 * 512 * i;
        assert!(
            exported[off..off + PAGE] == data(i)[..],
            "exported page {i}"
        );
    }
    for k in 0..8usize {
        let off = (4096 + 8 * k) * 512;
        assert!(
            exported[off..off + PAGE] == data(200 + k)[..],
            "exported adjacent page {k}"
        );
    }
}
