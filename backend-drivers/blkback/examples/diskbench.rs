//! 4 KiB random reads and writes through blkback's ring (queue depth 32,
//! 4 I/O threads) from three disks holding the same 64 MiB: a raw image, a
//! fully allocated qcow2 image and a `qemu-nbd` export (Unix socket,
//! `--cache=none`, 16 clients) of a raw image. References in the same run:
//! QEMU's own engines on the same files, `qemu-img bench -t none -d 32 -s
//! 4096` with a stride of 7919 pages (qcow2 image; NBD export through QEMU's
//! NBD client), so each ratio compares our qcow2 / NBD client with QEMU's.
//!
//! Needs root (a private shim daemon runs in this process) and qemu-utils.
//! Run: `cargo run --release -p xen-blkback --example diskbench -- [runs] [ops]`.
//! JSON lines on stdout; medians, min..max and ratios on stderr.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use xen_abi::io::blkif::*;
use xen_blkback::{BlkBackend, DiskConfig, NbdTarget};

const IMAGE_BYTES: u64 = 64 << 20;
const DEPTH: usize = 32;
const STRIDE_PAGES: u64 = 7919;

/// The same pseudo-random stride `qemu-img bench -S` walks.
fn offsets(n: usize, start: u64) -> Vec<u64> {
    let pages = IMAGE_BYTES / 4096;
    (0..n as u64)
        .map(|i| ((start + i * STRIDE_PAGES) % pages) * 4096)
        .collect()
}

fn ring_run(f: &mut Front, offs: &[u64], write: bool) -> f64 {
    let op = if write { BLKIF_OP_WRITE } else { BLKIF_OP_READ };
    let t = Instant::now();
    let mut id = 0u64;
    for chunk in offs.chunks(DEPTH) {
        let slots: Vec<Slot> = chunk
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                id += 1;
                rw(op, id, o / 512, &[seg(f.data_refs[i], 0, 7)])
            })
            .collect();
        f.submit(0, &slots);
        let r = f.responses(0, slots.len());
        assert!(r.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{r:?}");
    }
    offs.len() as f64 / t.elapsed().as_secs_f64()
}

/// `qemu-img bench` IOPS on `target`.
fn qemu_bench(fmt: &str, target: &str, ops: usize, start: u64, write: bool) -> f64 {
    let mut args = vec![
        "bench".to_string(),
        "-q".into(),
        "-f".into(),
        fmt.into(),
        "-t".into(),
        "none".into(),
        "-c".into(),
        ops.to_string(),
        "-d".into(),
        DEPTH.to_string(),
        "-s".into(),
        "4096".into(),
        "-S".into(),
        (STRIDE_PAGES * 4096).to_string(),
        "-o".into(),
        (start * 4096).to_string(),
    ];
    if write {
        args.push("-w".into());
    }
    args.push(target.into());
    let t = Instant::now();
    let out = Command::new("qemu-img")
        .args(&args)
        .output()
        .expect("run qemu-img bench (apt-get install qemu-utils)");
    let el = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "qemu-img bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `-q` prints nothing: the wall time includes opening the image (a
    // few ms), which favours our side slightly.
    ops as f64 / el
}

struct Nbd(Child);

impl Drop for Nbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(file: &Path, sock: &Path) -> Nbd {
    let c = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "-x",
            "disk",
            "-e",
            "16",
            "--persistent",
            "--cache=none",
            "-k",
        ])
        .arg(sock)
        .arg(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Listening, not only bound (a connect between bind and listen is
    // refused; `--persistent` outlives the probe).
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nbd(c)
}

fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let ops: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let w = World::start("diskbench");
    let raw = Image::new(IMAGE_BYTES);
    raw.write_at(0, &pattern(1, IMAGE_BYTES as usize));
    raw.file.as_file().sync_all().expect("sync");
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let qcow2 = dir.path().join("d.qcow2");
    let nbd_file = dir.path().join("nbd.raw");
    let q = qcow2.to_str().expect("utf-8");
    let rp = raw.path();
    let r = rp.to_str().expect("utf-8");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", r, q])
        .status()
        .expect("qemu-img convert");
    assert!(st.success());
    std::fs::copy(&rp, &nbd_file).expect("copy the export");
    let sock = dir.path().join("nbd.sock");
    let _srv = qemu_nbd(&nbd_file, &sock);
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    // I/O threads per device: 4 (blkback's default) unless DISKBENCH_IO_THREADS.
    let io_threads: usize = std::env::var("DISKBENCH_IO_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(xen_blkback::DEFAULT_IO_THREADS);
    let open = |c: DiskConfig| {
        let mut c = c;
        c.io_threads = io_threads;
        BlkBackend::new(c).expect("open the backend")
    };
    let disks = [
        ("raw", open(DiskConfig::raw(&rp, false))),
        ("qcow2", open(DiskConfig::qcow2(&qcow2, false))),
        (
            "nbd",
            open(DiskConfig::nbd(NbdTarget::parse(&uri).expect("uri"), false)),
        ),
    ];
    let mut f = Front::new(&w.rt, 1, 1, DEPTH);
    for (mode, write) in [("randread", false), ("randwrite", true)] {
        let names = [
            "blkback-raw",
            "blkback-qcow2",
            "qemu-qcow2",
            "blkback-nbd",
            "qemu-nbd-client",
        ];
        let mut res: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for run in 0..runs {
            let start = run as u64 * 101;
            let offs = offsets(ops, start);
            let mut v = Vec::new();
            for (_, be) in &disks {
                let dev = be
                    .connect(&w.handles, w.domid(), &f.params(false))
                    .expect("connect");
                v.push(ring_run(&mut f, &offs, write));
                dev.disconnect();
            }
            let qq = qemu_bench("qcow2", q, ops, start, write);
            let qn = qemu_bench("raw", &uri, ops, start, write);
            let row = [v[0], v[1], qq, v[2], qn];
            for (k, x) in row.into_iter().enumerate() {
                println!(
                    "{{\"bench\":\"diskbench\",\"impl\":\"{}\",\"mode\":\"{mode}\",\"bs\":4096,\"depth\":{DEPTH},\"run\":{run},\"ops\":{ops},\"iops\":{x:.0}}}",
                    names[k]
                );
                res[k].push(x);
            }
        }
        let meds: Vec<(f64, f64, f64)> = res.iter_mut().map(|v| summary(v)).collect();
        for (k, (m, lo, hi)) in meds.iter().enumerate() {
            let refr = match k {
                1 => format!(", ratio to qemu-qcow2 {:.2}", m / meds[2].0),
                3 => format!(", ratio to qemu-nbd-client {:.2}", m / meds[4].0),
                _ => String::new(),
            };
            eprintln!(
                "{mode} 4KiB {}: median {m:.0} IOPS ({lo:.0}..{hi:.0}), ratio to blkback-raw {:.2}{refr}",
                names[k],
                m / meds[0].0
            );
        }
    }
}
