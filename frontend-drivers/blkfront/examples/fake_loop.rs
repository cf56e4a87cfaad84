//! Cost of the frontend's data path on one thread, against the test
//! backend over the fake platform (no hypervisor, no real I/O): requests/s
//! and MB/s for 4 KiB reads and 128 KiB writes, median and spread of 5
//! runs. Both sides copy through volatile byte accesses, so this is an upper
//! bound of the per-request CPU cost, not a disk benchmark. The reference,
//! measured in the same run, is two plain `copy_from_slice` of each
//! request's bytes (the two copies the path makes: guest buffer to granted
//! page, granted page to the backend's disk).
//!
//! `cargo run --release -p xen-blkfront --example fake_loop`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{connected, run_until, Offer};
use xen_blkfront::BlkfrontConfig;
use xen_front_platform::fake::FakePlatform;

fn run(len: usize, write: bool, total: usize, batch: usize) -> f64 {
    let p = FakePlatform::with_limits(common::GUEST, 16384, 32768);
    let (mut front, mut back) = connected(&p, Offer::default(), BlkfrontConfig::default());
    let data = vec![0x5au8; len];
    let sectors = (len / 512) as u64;
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        for i in 0..batch {
            let sector = (i as u64 * sectors) % (8192 - sectors);
            if write {
                front.submit_write(sector, &data).expect("write");
            } else {
                front.submit_read(sector, len).expect("read");
            }
        }
        done += run_until(&mut front, &mut back, batch).len();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Requests/s of the reference: two plain copies of `len` bytes.
fn reference(len: usize, total: usize) -> f64 {
    let src = vec![0x5au8; len];
    let mut mid = vec![0u8; len];
    let mut disk = vec![0u8; len * 64];
    let start = Instant::now();
    for i in 0..total {
        mid.copy_from_slice(std::hint::black_box(&src));
        let at = (i % 64) * len;
        disk[at..at + len].copy_from_slice(std::hint::black_box(&mid));
    }
    std::hint::black_box(&disk);
    total as f64 / start.elapsed().as_secs_f64()
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(name: &str, len: usize, write: bool, total: usize) {
    let (med, min, max) = median_spread((0..5).map(|_| run(len, write, total, 32)).collect());
    let (rmed, _, _) = median_spread((0..5).map(|_| reference(len, total)).collect());
    println!(
        "{name}: median {med:.0} req/s ({:.1} MB/s), min {min:.0}, max {max:.0}; \
         reference 2x memcpy {rmed:.0} req/s; ratio {:.3}",
        med * len as f64 / 1e6,
        med / rmed
    );
}

fn main() {
    report("read 4 KiB", 4096, false, 20_000);
    report("write 128 KiB", 131_072, true, 2_000);
}
