//! The PVHVM guest's disk on Ceph RBD: `xl create` of a `type = "pvh"`
//! guest whose `xvda` is `target=rbd:rbd/IMAGE:conf=...` (`backendtype=qdisk`,
//! as libxl writes it) on a one-node cluster of the test's own
//! (`xen_testhost::ceph`); the kernel's disk self-test passes through
//! blkfront, backendd's blkback and its RBD engine, and Dom0 reads the
//! guest's data back with `rbd export`. Needs root, `/dev/kvm`, `ceph-mon`,
//! `ceph-osd` and `ceph-common`.

mod common;

use std::time::{Duration, Instant};

use common::{ok, pattern, Host};
use xen_testhost::ceph::CephCluster;

const T: Duration = Duration::from_secs(60);

#[test]
fn test_pvhvm_disk_selftest_passes_on_an_rbd_image_and_rbd_export_has_the_data() {
    let mut h = Host::start("pvhvm-rbd-");
    let ceph = CephCluster::start(512 << 20).expect("start the cluster");
    ceph.create_image("pvh", 64).expect("create the image");
    let cfg = h.config(
        "pvh-rbd",
        "selftest seed=42",
        &[format!(
            "format=raw, vdev=xvda, access=rw, backendtype=qdisk, target=rbd:rbd/pvh:conf={}",
            ceph.conf().display()
        )],
    );
    let t0 = Instant::now();
    ok("xl create", &h.create("pvh-rbd", &cfg));
    let log = h.wait_log("pvh-rbd", "disk self-test:", T);
    let elapsed = t0.elapsed();
    assert!(log.contains("disk self-test: PASS"), "log:\n{log}");
    assert!(log.contains("Connected in"), "log:\n{log}");
    eprintln!("xl create to self-test verdict on RBD: {elapsed:?}");
    h.wait_state("pvh-rbd", 's', T);
    // Dom0 reads what the guest wrote from the cluster.
    let out = h.dir.path().join("pvh.raw");
    ceph.rbd(&["export", "rbd/pvh", out.to_str().expect("utf-8")])
        .expect("rbd export");
    let img = std::fs::read(&out).expect("read the export");
    assert_eq!(img.len(), 64 << 20);
    let mut want = vec![0u8; 512];
    pattern(&mut want, 0, 42);
    assert_eq!(&img[..512], &want[..], "sector 0 of the image");
}
