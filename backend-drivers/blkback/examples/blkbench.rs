//! 4 KiB random reads and writes through blkback's ring, against `pread` /
//! `pwrite` on the same image file in the same run (the reference).
//!
//! Needs root (it runs a private shim daemon in this process). Run:
//! `cargo run --release -p xen-blkback --example blkbench -- [runs] [ops]`.
//! Prints one JSON object per measurement and a summary with medians,
//! min..max and the ring/reference ratio.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use common::*;
use xen_abi::io::blkif::*;

const IMAGE_BYTES: u64 = 64 << 20;
const DEPTH: usize = 32;

fn offsets(n: usize, seed: u64) -> Vec<u64> {
    let pages = IMAGE_BYTES / 4096;
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % pages) * 4096
        })
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

#[repr(C, align(4096))]
struct Page([u8; 4096]);

fn file_run(file: &std::fs::File, offs: &[u64], write: bool) -> f64 {
    let mut buf = Box::new(Page([7u8; 4096]));
    let fd = file.as_raw_fd();
    let t = Instant::now();
    for &o in offs {
        // SAFETY: `buf` is a valid, aligned 4096-byte buffer for the call.
        let r = unsafe {
            if write {
                libc::pwrite(fd, buf.0.as_ptr().cast(), 4096, o as libc::off_t)
            } else {
                libc::pread(fd, buf.0.as_mut_ptr().cast(), 4096, o as libc::off_t)
            }
        };
        assert_eq!(r, 4096, "{}", std::io::Error::last_os_error());
    }
    offs.len() as f64 / t.elapsed().as_secs_f64()
}

fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let ops: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let w = World::start("blkbench");
    let img = Image::new(IMAGE_BYTES);
    img.write_at(0, &pattern(1, IMAGE_BYTES as usize));
    img.file.as_file().sync_all().expect("sync");
    let mk = |io_threads: usize| {
        let mut c = xen_blkback::DiskConfig::raw(img.path(), false);
        c.io_threads = io_threads;
        xen_blkback::BlkBackend::new(c).expect("open the backend")
    };
    let configs = [("blkback-ring-inline", mk(0)), ("blkback-ring-4io", mk(4))];
    let direct = configs[0].1.is_direct();
    let mut f = Front::new(&w.rt, 1, 1, DEPTH);
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let file = o
        .open(img.path())
        .expect("open the image for the reference");
    let mut last = None;
    for (name, write) in [("randread", false), ("randwrite", true)] {
        let mut results: Vec<(&str, Vec<f64>)> = vec![("pread-pwrite", Vec::new())];
        results.extend(configs.iter().map(|(n, _)| (*n, Vec::new())));
        for run in 0..runs {
            let offs = offsets(ops, 0x9e37_79b9 + run as u64);
            let mut v = vec![file_run(&file, &offs, write)];
            for (_, be) in &configs {
                let dev = be
                    .connect(&w.handles, w.domid(), &f.params(false))
                    .expect("connect");
                v.push(ring_run(&mut f, &offs, write));
                last = Some(dev.disconnect());
            }
            for (k, x) in v.into_iter().enumerate() {
                let imp = results[k].0;
                println!(
                    "{{\"bench\":\"blkback\",\"impl\":\"{imp}\",\"mode\":\"{name}\",\"bs\":4096,\"depth\":{DEPTH},\"direct\":{direct},\"run\":{run},\"ops\":{ops},\"iops\":{x:.0}}}"
                );
                results[k].1.push(x);
            }
        }
        let (pm, _, _) = summary(&mut results[0].1.clone());
        for (imp, v) in &mut results {
            let (m, lo, hi) = summary(v);
            eprintln!(
                "{name} 4KiB direct={direct} {imp}: median {m:.0} IOPS ({lo:.0}..{hi:.0}), ratio to pread-pwrite {:.2}",
                m / pm
            );
        }
    }
    let m = last.unwrap_or_default();
    eprintln!(
        "last connection: notifications {} wakeups {} requests {}",
        m.notifications, m.wakeups, m.requests
    );
}
