//! The RBD engine against a real one-node Ceph cluster
//! (`xen_testhost::ceph`, one per test, stopped and removed on drop):
//! vectored writes and reads, flush, discard, parallel callers, `rbd
//! export` of what was written, a snapshot as a read-only disk; negative: a
//! missing image, a missing pool, an unreachable cluster, a snapshot asked
//! read-write; faults: the cluster frozen (`SIGSTOP`) under I/O, requests
//! fail with `ETIMEDOUT` within `rados_osd_op_timeout` (no caller hangs),
//! then work again once it is back. Needs `ceph-mon`, `ceph-osd`,
//! `ceph-common` and `librbd-dev` (tests/setup-host.sh).

use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_blkback::io::{DiskImage, IoVec, RbdError, RbdImage, RbdTarget};
use xen_blkback::ImageError;
use xen_testhost::ceph::CephCluster;

mod image_io;
use image_io::{pattern, read, write};

const MIB: u64 = 1 << 20;

fn target(c: &CephCluster, spec: &str) -> RbdTarget {
    RbdTarget::parse(&format!("rbd:{spec}:conf={}", c.conf().display())).expect("target")
}

fn errno_of(e: &ImageError) -> Option<i32> {
    match e {
        ImageError::Rbd(RbdError::Io { source, .. }) => source.raw_os_error(),
        _ => None,
    }
}

#[test]
fn test_rbd_write_flush_read_discard_parallel_then_rbd_export_and_snapshot() {
    let c = CephCluster::start(512 * MIB).expect("start the cluster");
    c.create_image("d0", 64).expect("create the image");
    let img: Arc<dyn DiskImage> =
        Arc::new(RbdImage::open(target(&c, "rbd/d0"), false).expect("open"));
    assert_eq!(img.size(), 64 * MIB);
    assert!(!img.readonly());
    assert!(img.describe().starts_with("rbd:rbd/d0:conf="));

    // Written data reads back, across an object boundary (4 MiB objects).
    let mut a = pattern(1, 256 << 10);
    write(&*img, 4 * MIB - (128 << 10), &mut a).expect("write");
    img.flush().expect("flush");
    assert_eq!(
        read(&*img, 4 * MIB - (128 << 10), a.len()).expect("read"),
        a
    );
    // Unwritten parts read as zeros.
    assert!(read(&*img, 10 * MIB, 8192)
        .expect("read")
        .iter()
        .all(|&b| b == 0));
    // Parallel callers, each its own 1 MiB.
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || {
                let mut d = pattern(100 + i, MIB as usize);
                write(&*img, (16 + i) * MIB, &mut d).expect("parallel write");
                assert_eq!(read(&*img, (16 + i) * MIB, d.len()).expect("read"), d);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    // Asynchronous submissions (the device's path): 32 writes in flight,
    // each completing through librbd's callback.
    assert!(img.is_async());
    let (tx, rx) = std::sync::mpsc::channel();
    let mut bufs: Vec<Vec<u8>> = (0..32u64).map(|i| pattern(200 + i, 4096)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let v = [IoVec {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        }];
        let tx = tx.clone();
        // SAFETY: `bufs` is neither moved nor touched until every
        // completion has arrived below.
        unsafe {
            img.submit(
                true,
                &v,
                40 * MIB + i as u64 * 8192,
                Box::new(move |r| {
                    let _ = tx.send((i, r));
                }),
            )
        };
    }
    for _ in 0..32 {
        let (i, r) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("completion");
        r.unwrap_or_else(|e| panic!("async write {i}: {e:?}"));
    }
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(
            &read(&*img, 40 * MIB + i as u64 * 8192, 4096).expect("read")[..],
            &b[..]
        );
    }
    // A write of scattered segments (a request's pages, copied into one
    // buffer before librbd) lands in segment order; the segments are
    // overwritten as soon as it is submitted, which the disk must not see.
    let mut segs: Vec<Vec<u8>> = (0..5u64).map(|i| pattern(300 + i, 4096)).collect();
    segs[2].truncate(512);
    let expected: Vec<u8> = segs.concat();
    let v: Vec<IoVec> = segs
        .iter_mut()
        .map(|b| IoVec {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        })
        .collect();
    // SAFETY: `segs` stays alive (and unmoved) until the completion below.
    unsafe {
        img.submit(
            true,
            &v,
            44 * MIB,
            Box::new(move |r| {
                let _ = tx.send((usize::MAX, r));
            }),
        )
    };
    for b in segs.iter_mut() {
        b.fill(0xee);
    }
    let (_, r) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("completion of the scattered write");
    r.expect("scattered write");
    assert_eq!(
        read(&*img, 44 * MIB, expected.len()).expect("read"),
        expected
    );
    // Discard of whole objects reads back as zeros.
    img.discard(16 * MIB, 4 * MIB).expect("discard");
    assert!(read(&*img, 16 * MIB, MIB as usize)
        .expect("read")
        .iter()
        .all(|&b| b == 0));
    img.flush().expect("flush");

    // Dom0's view: `rbd export` of the image has the data.
    let out = c.dir().join("d0.raw");
    c.rbd(&["export", "rbd/d0", out.to_str().expect("utf-8")])
        .expect("rbd export");
    let exported = std::fs::read(&out).expect("read the export");
    assert_eq!(exported.len() as u64, 64 * MIB);
    let off = (4 * MIB - (128 << 10)) as usize;
    assert_eq!(&exported[off..off + a.len()], &a[..]);
    assert_eq!(
        &exported[(20 * MIB) as usize..(21 * MIB) as usize],
        &pattern(104, MIB as usize)[..]
    );

    // A snapshot is a read-only disk with the data of its time.
    c.rbd(&["snap", "create", "rbd/d0@s1"])
        .expect("snap create");
    let mut b = pattern(7, 4096);
    write(&*img, 4 * MIB - (128 << 10), &mut b).expect("write after the snapshot");
    let e = RbdImage::open(target(&c, "rbd/d0@s1"), false).expect_err("snapshot read-write");
    assert!(matches!(e, RbdError::SnapshotReadOnly(_)), "{e}");
    let snap = RbdImage::open(target(&c, "rbd/d0@s1"), true).expect("open the snapshot");
    assert!(DiskImage::readonly(&snap));
    assert_eq!(
        read(&snap, 4 * MIB - (128 << 10), 4096).expect("read snap"),
        a[..4096]
    );
    let mut w = pattern(8, 4096);
    let e = write(&snap, 0, &mut w).expect_err("write to a snapshot");
    assert_eq!(errno_of(&e), Some(libc::EROFS), "{e:?}");
}

#[test]
fn test_rbd_missing_image_pool_and_unreachable_cluster_fail_clearly() {
    let c = CephCluster::start(256 * MIB).expect("start the cluster");
    let msg = |e: RbdError| xen_diag::ErrorChain(&e).to_string();
    let e = msg(RbdImage::open(target(&c, "rbd/nothere"), false).expect_err("missing image"));
    assert!(
        e.contains("rbd_open(rbd/nothere)") && e.contains("No such file"),
        "{e}"
    );
    let e = msg(RbdImage::open(target(&c, "nopool/x"), false).expect_err("missing pool"));
    assert!(
        e.contains("pool nopool") && e.contains("No such file"),
        "{e}"
    );
    // A configuration naming a monitor nobody listens on: refused in
    // `client_mount_timeout` (set short here), not hung.
    let dead = c.dir().join("dead.conf");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::write(
        &dead,
        format!(
            "[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\n\
             auth cluster required = none\nauth service required = none\n"
        ),
    )
    .expect("write the conf");
    let t = RbdTarget::parse(&format!(
        "rbd:rbd/x:conf={}:client_mount_timeout=3",
        dead.display()
    ))
    .expect("target");
    let t0 = Instant::now();
    let e = msg(RbdImage::open(t, false).expect_err("unreachable cluster"));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(
        e.contains("rados_connect") && e.contains("is the cluster up"),
        "{e}"
    );
    let e = msg(RbdImage::open(
        RbdTarget::parse("rbd:rbd/x:conf=/nonexistent/ceph.conf").expect("t"),
        false,
    )
    .expect_err("missing conf"));
    assert!(
        e.contains("rados_conf_read_file(/nonexistent/ceph.conf)"),
        "{e}"
    );
}

#[test]
fn test_rbd_cluster_frozen_under_io_fails_in_op_timeout_then_works_again() {
    let mut c = CephCluster::start(256 * MIB).expect("start the cluster");
    c.create_image("f0", 32).expect("create the image");
    let t = RbdTarget::parse(&format!(
        "rbd:rbd/f0:conf={}:rados_osd_op_timeout=3:rados_mon_op_timeout=3",
        c.conf().display()
    ))
    .expect("target");
    let img: Arc<dyn DiskImage> = Arc::new(RbdImage::open(t, false).expect("open"));
    let mut a = pattern(3, 65536);
    write(&*img, 0, &mut a).expect("write before");
    img.flush().expect("flush before");

    c.freeze().expect("freeze the cluster");
    // Callers in flight while the cluster is gone: each returns an error
    // within the timeout (plus slack), none hangs.
    let t0 = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || {
                let mut d = pattern(50 + i, 65536);
                let w = write(&*img, (1 + i) * MIB, &mut d);
                let r = read(&*img, 0, 4096);
                (w, r)
            })
        })
        .collect();
    for th in threads {
        let (w, r) = th.join().expect("thread");
        let w = w.expect_err("write while frozen");
        let r = r.expect_err("read while frozen");
        assert_eq!(errno_of(&w), Some(libc::ETIMEDOUT), "{w:?}");
        assert_eq!(errno_of(&r), Some(libc::ETIMEDOUT), "{r:?}");
    }
    let f = img.flush();
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(30),
        "callers waited {waited:?}"
    );
    eprintln!("frozen cluster: requests failed after {waited:?} ({f:?})");

    c.thaw().expect("thaw the cluster");
    // New I/O works once the cluster is back, and data written before the
    // outage is intact.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut b = pattern(9, 65536);
    loop {
        match write(&*img, 2 * MIB, &mut b) {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no I/O after thaw: {e:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    img.flush().expect("flush after");
    assert_eq!(read(&*img, 0, a.len()).expect("read after"), a);
    assert_eq!(read(&*img, 2 * MIB, b.len()).expect("read after"), b);
    drop(img);
    c.stop();
}
