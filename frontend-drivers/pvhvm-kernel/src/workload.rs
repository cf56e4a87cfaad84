//! The workloads named on the command line.
//!
//! - `hello`: print and power off (boot check);
//! - `selftest` (the default): connect the first `device/vbd` with
//!   `xen-blkfront`, write patterns across the disk, flush, read them back
//!   and verify; prints `disk self-test: PASS` or `disk self-test: FAIL: why`;
//! - `blkload [pattern=randread|seqread|seqwrite] [bs=N] [qd=N] [secs=N]`:
//!   the block load generator (JSON lines as the PV guest's `blkload`);
//! - `hostile`: scribbles on its xenstore and console rings, its blkif ring
//!   and its grant table, then triple-faults;
//! - `fault`: a page fault at CPL3 (reported by the exception handler).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use xen_abi::xen::SHUTDOWN_crash;
use xen_blkfront::{BlkFront, BlkStatus, BlkfrontConfig, FrontState};
use xen_front_platform::{Platform, XBT_NIL};

use crate::platform::{Boot, KPlatform, MemoryPlan};
use crate::{println, BootInfo};

fn arg<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Runs the command line's workload; returns the shutdown reason.
pub fn run(b: &BootInfo) -> Option<u32> {
    let words: Vec<&str> = b.cmdline.split_whitespace().collect();
    let cmd = words.first().copied().unwrap_or("selftest");
    match cmd {
        "hello" => {
            println!("pvhvm-kernel: hello from a PVHVM guest");
            None
        }
        "fault" => crate::arch::page_fault(),
        _ => {
            let t0 = crate::arch::rdtsc();
            let p = match KPlatform::new(
                &Boot {
                    shared_info: b.shared_info,
                    store: b.store,
                    plan: MemoryPlan {
                        first_gfn: b.free_gfn,
                        end_gfn: b.nr_pages,
                    },
                },
                b.time,
            ) {
                Ok(p) => p,
                Err(e) => {
                    println!("pvhvm-kernel: platform: {e}");
                    return Some(SHUTDOWN_crash);
                }
            };
            let _ = t0;
            println!("pvhvm-kernel: domain {} on xenstore", p.domid());
            match cmd {
                "selftest" => selftest(&p),
                "blkload" => blkload(&p, &words[1..]),
                "hostile" => hostile(&p),
                "xenstore" => {
                    let name = p.xs_read(XBT_NIL, "name").unwrap_or_default();
                    println!(
                        "pvhvm-kernel: xenstore name = {}",
                        String::from_utf8_lossy(&name)
                    );
                    None
                }
                other => {
                    println!("pvhvm-kernel: unknown workload \"{other}\"");
                    Some(SHUTDOWN_crash)
                }
            }
        }
    }
}

/// Connects the first vbd.
fn connect<'p>(p: &'p KPlatform) -> Result<BlkFront<'p, KPlatform>, String> {
    let names = p
        .xs_directory(XBT_NIL, "device/vbd")
        .map_err(|e| format!("no device/vbd: {e}"))?;
    let devid: u32 = names
        .iter()
        .filter_map(|n| n.parse().ok())
        .min()
        .ok_or_else(|| String::from("no vbd device"))?;
    let t0 = p.monotonic_ns();
    let mut dev =
        BlkFront::new(p, devid, BlkfrontConfig::default()).map_err(|e| format!("blkfront: {e}"))?;
    let deadline = t0 + 30_000_000_000;
    while dev.state() != FrontState::Connected {
        if let Some(f) = dev.failure() {
            return Err(format!("blkfront failed: {f:?}"));
        }
        if p.monotonic_ns() >= deadline {
            return Err(format!(
                "not connected within 30 s (state {:?})",
                dev.state()
            ));
        }
        match p.xs_read_watch(Some(Duration::from_millis(100))) {
            Ok(Some(ev)) => {
                dev.handle_watch(&ev)
                    .map_err(|e| format!("handshake: {e}"))?;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("xenstore: {e}")),
        }
    }
    let d = dev.disk().copied();
    println!(
        "pvhvm-kernel: vbd {devid} Connected in {} us: {} sectors of {} bytes, ring order {}, persistent {}",
        (p.monotonic_ns() - t0) / 1000,
        d.map_or(0, |d| d.sectors),
        d.map_or(0, |d| d.sector_size),
        dev.ring_page_order(),
        dev.persistent()
    );
    Ok(dev)
}

/// Completions that arrived for other requests than the one waited for.
type Done = alloc::collections::BTreeMap<u64, (BlkStatus, Vec<u8>)>;

/// Waits for the completion of `tag`; returns its status and data.
fn wait_for(
    dev: &mut BlkFront<'_, KPlatform>,
    done: &mut Done,
    tag: xen_blkfront::RequestTag,
) -> Result<(BlkStatus, Vec<u8>), String> {
    for _ in 0..600 {
        if let Some(r) = done.remove(&tag.0) {
            return Ok(r);
        }
        for c in dev.poll_completions().map_err(|e| format!("completions: {e}"))? {
            done.insert(c.tag.0, (c.status, c.data));
        }
        if done.contains_key(&tag.0) {
            continue;
        }
        dev.wait(Some(Duration::from_millis(100)))
            .map_err(|e| format!("wait: {e}"))?;
    }
    Err(format!(
        "request {} not completed within 60 s ({:?})",
        tag.0,
        dev.stats()
    ))
}

fn pattern(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let v = (offset + 8 * i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = v.to_le_bytes();
        let n = c.len();
        c.copy_from_slice(&b[..n]);
    }
}

fn selftest(p: &KPlatform) -> Option<u32> {
    match selftest_inner(p) {
        Ok(summary) => {
            println!("disk self-test: PASS ({summary})");
            None
        }
        Err(why) => {
            println!("disk self-test: FAIL: {why}");
            None
        }
    }
}

fn selftest_inner(p: &KPlatform) -> Result<String, String> {
    let mut dev = connect(p)?;
    let disk = *dev.disk().ok_or("no disk info")?;
    if disk.read_only() {
        return Err(String::from("the disk is read-only"));
    }
    let size = disk.size_bytes();
    let ss = u64::from(disk.sector_size);
    // 64 spots spread over the disk (first and last included), sizes from
    // one sector to 128 KiB, written in one batch, flushed, read back.
    let spots = 64u64;
    let mut ios: Vec<(u64, usize)> = Vec::new();
    for i in 0..spots {
        let len = (ss << (i % 9))
            .min(128 * 1024)
            .min(dev.max_request_bytes() as u64)
            .min(size) as usize;
        let max_off = size - len as u64;
        let off = (max_off * i / (spots - 1)) / ss * ss;
        ios.push((off, len));
    }
    let seed = p.monotonic_ns();
    let t0 = p.monotonic_ns();
    let mut tags = Vec::new();
    let mut done = Done::new();
    let mut bytes = 0u64;
    for &(off, len) in &ios {
        let mut buf = alloc::vec![0u8; len];
        pattern(&mut buf, off, seed);
        loop {
            match dev.submit_write(off / 512, &buf) {
                Ok(t) => {
                    tags.push(t);
                    break;
                }
                Err(xen_blkfront::BlkfrontError::Busy) if !tags.is_empty() => {
                    let (st, _) = wait_for(&mut dev, &mut done, tags.remove(0))?;
                    if st != BlkStatus::Okay {
                        return Err(format!("a write failed: {st:?}"));
                    }
                }
                Err(e) => return Err(format!("write at {off}: {e}")),
            }
        }
        bytes += len as u64;
    }
    for t in tags.drain(..) {
        let (st, _) = wait_for(&mut dev, &mut done, t)?;
        if st != BlkStatus::Okay {
            return Err(format!("a write failed: {st:?}"));
        }
    }
    let ft = dev.flush().map_err(|e| format!("flush: {e}"))?;
    let (st, _) = wait_for(&mut dev, &mut done, ft)?;
    if st != BlkStatus::Okay {
        return Err(format!("flush failed: {st:?}"));
    }
    for &(off, len) in &ios {
        let t = dev
            .submit_read(off / 512, len)
            .map_err(|e| format!("read at {off}: {e}"))?;
        let (st, data) = wait_for(&mut dev, &mut done, t)?;
        if st != BlkStatus::Okay {
            return Err(format!("read at {off} failed: {st:?}"));
        }
        let mut want = alloc::vec![0u8; len];
        pattern(&mut want, off, seed);
        if data != want {
            let at = data
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "data mismatch at byte {} of the {len}-byte read at {off}",
                at
            ));
        }
        dev.give_back_buffer(data);
    }
    let us = (p.monotonic_ns() - t0) / 1000;
    Ok(format!(
        "{} writes of {} KiB in total verified across {} MiB, flushed, in {} us",
        ios.len(),
        bytes / 1024,
        size >> 20,
        us
    ))
}

fn blkload(p: &KPlatform, words: &[&str]) -> Option<u32> {
    let _ = (p, words);
    println!("blkload: not implemented yet");
    Some(SHUTDOWN_crash)
}

fn hostile(p: &KPlatform) -> Option<u32> {
    let _ = p;
    crate::arch::triple_fault()
}
