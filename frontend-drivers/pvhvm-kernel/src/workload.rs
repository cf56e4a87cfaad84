//! The workloads named on the command line.
//!
//! - `hello`: print and power off (boot check);
//! - `selftest [seed=N]` (the default): connect the first `device/vbd` with
//!   `xen-blkfront`, write patterns across the disk, flush, read them back
//!   and verify; prints `disk self-test: PASS` or `disk self-test: FAIL: why`
//!   (the pattern at byte offset `o` is the little-endian `u64`
//!   `o ^ seed * 0x9E3779B97F4A7C15` every 8 bytes);
//! - `balloon [memtouch] [seed=N]`: connect the first vbd, write every free
//!   page once (`memtouch`: the memory file then holds the guest's RAM, as
//!   after a while of use), run the disk self-test, then again each time
//!   the balloon ([`crate::balloon`]) reaches a new `memory/target` and
//!   after a resume in a new domain (the vbd reconnected), until the
//!   toolstack shuts the domain down;
//! - `balloonhostile [disk]`: the balloon hypercalls a hostile kernel could make
//!   ([`crate::balloon::hostile`]);
//! - `xenstore`: read its own name from xenstore and print it;
//! - `blkload [pattern=randread|seqread|seqwrite] [bs=N] [qd=N] [secs=N]`:
//!   the block load generator (JSON lines as the PV guest's `blkload`);
//! - `hostile`: scribbles on its xenstore and console rings, its blkif ring
//!   and its grant table, then triple-faults;
//! - `fvcompare [bs=N] [secs=N]`: the same sequential writes then reads
//!   (one I/O at a time) through the VMM's emulated PIO disk (every 4 bytes
//!   a trapped port access, like IDE PIO) and through blkfront; one JSON
//!   line per path and direction;
//! - `smp`: brings up vCPU 1 (`vmm_op(vcpu_up)`), which counts to 1000 in
//!   shared memory in its own VMM thread and goes down again;
//! - `netserve ip=A.B.C.D/LEN [gw=A.B.C.D] [vif=N] [disk [seed=N]]
//!   [memfill]`: (`memfill`: first fills the free RAM but 8 MiB with data
//!   it keeps) connects the vif with `xen-netfront` and serves ICMP echo, TCP echo
//!   (port 7) and HTTP/1.0 (port 80: `/` and `/bytes/N`) with `smoltcp`
//!   until destroyed (see [`crate::net`]); with `disk`, also connects the
//!   first vbd and runs the disk self-test once at the start and once
//!   after each resume in a new domain (a migrated server's disk load);
//! - `fault`: a page fault at CPL3 (reported by the exception handler);
//! - `runaway [timeout=S] [pets=N]`: arms a domain watchdog of `S` seconds
//!   (`SCHEDOP_watchdog`, default 1), pets it `N` times (default 3) every
//!   half timeout, then spins at CPL3 forever without a hypercall: the
//!   watchdog shuts the domain down (`SHUTDOWN_watchdog`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use xen_abi::io::xenbus::XenbusState;
use xen_abi::xen::SHUTDOWN_crash;
use xen_blkfront::{BlkFront, BlkStatus, BlkfrontConfig, FrontState};
use xen_front_platform::{Platform, XBT_NIL};

use crate::platform::{Boot, KPlatform, MemoryPlan};
use crate::{println, BootInfo};

pub(crate) fn arg<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
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
        "smp" => smp(b),
        "runaway" => runaway(b, &words[1..]),
        "ticker" => ticker(b, &words[1..]),
        _ => {
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
            println!("pvhvm-kernel: domain {} on xenstore", p.domid());
            crate::control::init(&p);
            crate::balloon::init(&p, b.nr_pages);
            let reason = match cmd {
                "selftest" => selftest(&p, &words[1..]),
                "balloon" => balloon(&p, &words[1..]),
                "balloonhostile" => {
                    // With a vbd connected: its ring is a grant-mapped page.
                    let dev = if words.contains(&"disk") {
                        match connect(&p) {
                            Ok(d) => Some(d),
                            Err(why) => {
                                println!("balloon-hostile: FAIL: {why}");
                                return None;
                            }
                        }
                    } else {
                        None
                    };
                    let r = crate::balloon::hostile(&p, b.nr_pages, dev.is_some());
                    drop(dev);
                    r
                }
                "blkload" => blkload(&p, &words[1..]),
                "hostile" => hostile(&p, b),
                "fvcompare" => fvcompare(&p, &words[1..]),
                "netserve" => crate::net::netserve(&p, &words[1..]),
                "hotplug" => crate::hotplug::run(&p, &words[1..]),
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
            };
            // `stay`: the domain stays up after the workload, until the
            // toolstack shuts it down (a request that ended the workload
            // is its reason already).
            match reason {
                None if words.contains(&"stay") => Some(crate::control::wait(&p)),
                r => r,
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
    await_connected(p, &mut dev)?;
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

/// Drives the vbd's handshake until Connected (at most 30 s).
fn await_connected(p: &KPlatform, dev: &mut BlkFront<'_, KPlatform>) -> Result<(), String> {
    let deadline = p.monotonic_ns() + 30_000_000_000;
    while dev.state() != FrontState::Connected {
        if let Some(f) = dev.failure() {
            return Err(format!("blkfront failed: {f:?}"));
        }
        if matches!(
            dev.backend_state(),
            Some(XenbusState::Closing | XenbusState::Closed)
        ) {
            let be = String::from(dev.backend_path());
            let why = p
                .xs_read(XBT_NIL, &format!("{be}/error"))
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            return Err(format!("the backend {be} closed the device {why}"));
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
    Ok(())
}

/// The toolstack's requests between two I/Os (a suspend is carried out
/// there, with the requests before it in flight): a shutdown ends the
/// self-test; after a resume in a new domain (`seen` behind
/// [`crate::control::new_domains`]) the vbd reconnects, re-issuing what
/// was on its ring.
fn between_ios(
    p: &KPlatform,
    dev: &mut BlkFront<'_, KPlatform>,
    seen: &mut u64,
) -> Result<(), SelftestEnd> {
    if let Some(r) = crate::control::poll(p) {
        return Err(SelftestEnd::Stop(r));
    }
    let now = crate::control::new_domains();
    if now != *seen {
        *seen = now;
        let t0 = p.monotonic_ns();
        dev.resume()
            .map_err(|e| format!("resume in the new domain: {e}"))?;
        await_connected(p, dev).map_err(|e| format!("reconnect in the new domain: {e}"))?;
        println!(
            "pvhvm-kernel: vbd {} reconnected in domain {} in {} us ({} requests re-issued so far)",
            dev.devid(),
            p.domid(),
            (p.monotonic_ns() - t0) / 1000,
            dev.stats().reissued
        );
    }
    Ok(())
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
        for c in dev
            .poll_completions()
            .map_err(|e| format!("completions: {e}"))?
        {
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

/// The self-test's data at byte `offset` of the disk with `seed`.
pub(crate) fn pattern(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let v = (offset + 8 * i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = v.to_le_bytes();
        let n = c.len();
        c.copy_from_slice(&b[..n]);
    }
}

/// `selftest [seed=N] [rounds=N]`: `rounds` (default 1) self-tests one
/// after the other on the same connection, seeds `seed`, `seed + 1`...;
/// a shutdown request ends the run between two I/Os.
fn selftest(p: &KPlatform, words: &[&str]) -> Option<u32> {
    let seed: Option<u64> = arg(words, "seed").and_then(|s| s.parse().ok());
    let rounds: u64 = arg(words, "rounds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut dev = match connect(p) {
        Ok(d) => d,
        Err(why) => {
            println!("disk self-test: FAIL: {why}");
            return None;
        }
    };
    for round in 0..rounds {
        let seed = seed.map(|s| s.wrapping_add(round));
        match selftest_inner(p, &mut dev, seed) {
            Ok(summary) => println!("disk self-test: PASS ({summary})"),
            Err(SelftestEnd::Stop(reason)) => return Some(reason),
            Err(SelftestEnd::Fail(why)) => {
                println!("disk self-test: FAIL: {why}");
                return None;
            }
        }
    }
    None
}

/// The disk load of `netserve disk`: the first vbd, self-tested once at
/// the start and once after each resume in a new domain (the vbd
/// reconnected first), seeds `seed`, `seed + 1`...
pub(crate) struct DiskRounds<'p> {
    dev: BlkFront<'p, KPlatform>,
    /// [`crate::control::new_domains`] when the vbd last (re)connected.
    seen: u64,
    seed: u64,
    round: u64,
}

impl<'p> DiskRounds<'p> {
    /// Connects the first vbd.
    pub(crate) fn connect(p: &'p KPlatform, seed: u64) -> Result<Self, String> {
        Ok(DiskRounds {
            dev: connect(p)?,
            seen: crate::control::new_domains(),
            seed,
            round: 0,
        })
    }

    /// Whether the domain changed since the last round (one is due).
    pub(crate) fn due(&self) -> bool {
        self.round == 0 || crate::control::new_domains() != self.seen
    }

    /// Reconnects the vbd if the domain changed, then runs one self-test
    /// and prints its verdict; `Ok(Some(reason))`: the toolstack asked for
    /// a shutdown meanwhile; `Err`: the self-test failed (printed).
    pub(crate) fn round(&mut self, p: &KPlatform) -> Result<Option<u32>, String> {
        let result = between_ios(p, &mut self.dev, &mut self.seen).and_then(|()| {
            selftest_inner(p, &mut self.dev, Some(self.seed.wrapping_add(self.round)))
        });
        self.round += 1;
        match result {
            Ok(summary) => {
                println!("disk self-test: PASS in domain {} ({summary})", p.domid());
                Ok(None)
            }
            Err(SelftestEnd::Stop(reason)) => Ok(Some(reason)),
            Err(SelftestEnd::Fail(why)) => {
                println!("disk self-test: FAIL: {why}");
                Err(format!("disk self-test: {why}"))
            }
        }
    }
}

/// Why a self-test ended early.
enum SelftestEnd {
    /// It failed (the text says why).
    Fail(String),
    /// The toolstack asked for a shutdown with this reason.
    Stop(u32),
}

impl From<String> for SelftestEnd {
    fn from(s: String) -> Self {
        Self::Fail(s)
    }
}

impl From<&str> for SelftestEnd {
    fn from(s: &str) -> Self {
        Self::Fail(String::from(s))
    }
}

/// The `balloon` workload (see the [module docs](self)).
fn balloon(p: &KPlatform, words: &[&str]) -> Option<u32> {
    let seed: Option<u64> = arg(words, "seed").and_then(|s| s.parse().ok());
    let mut dev = match connect(p) {
        Ok(d) => d,
        Err(why) => {
            println!("disk self-test: FAIL: {why}");
            return None;
        }
    };
    if words.contains(&"memtouch") {
        let t0 = p.monotonic_ns();
        let n = p.touch_free_pages();
        println!(
            "balloon: touched {} KiB of free pages in {} us",
            n * 4,
            (p.monotonic_ns() - t0) / 1000
        );
    }
    let mut seen = u64::MAX;
    let mut domains = crate::control::new_domains();
    loop {
        let now = crate::balloon::settled();
        if now != seen {
            seen = now;
            let kib = crate::balloon::current_pages().unwrap_or(0) * 4;
            match selftest_inner(p, &mut dev, seed) {
                Ok(summary) => println!("disk self-test: PASS at {kib} KiB ({summary})"),
                Err(SelftestEnd::Stop(reason)) => return Some(reason),
                Err(SelftestEnd::Fail(why)) => {
                    println!("disk self-test: FAIL at {kib} KiB: {why}");
                    return None;
                }
            }
        }
        // A suspend is carried out here; after a resume in a new domain
        // the vbd reconnects and the self-test runs again.
        let before = domains;
        match between_ios(p, &mut dev, &mut domains) {
            Ok(()) if domains != before => seen = u64::MAX,
            Ok(()) => {}
            Err(SelftestEnd::Stop(reason)) => return Some(reason),
            Err(SelftestEnd::Fail(why)) => {
                println!("disk self-test: FAIL: {why}");
                return None;
            }
        }
        // Sleep on the store port: a watch event (control or balloon)
        // wakes us.
        let port = p.store_port();
        if p.evtchn_poll(&[port], Some(Duration::from_millis(100)))
            .unwrap_or(false)
        {
            let _ = p.evtchn_clear(port);
        }
    }
}

/// Spots of the self-test: `(byte offset, length)`, 64 spread over the
/// disk (first and last included), lengths from one sector to 128 KiB.
/// The data at each is [`pattern`] with the seed.
fn selftest_inner(
    p: &KPlatform,
    dev: &mut BlkFront<'_, KPlatform>,
    seed: Option<u64>,
) -> Result<String, SelftestEnd> {
    let disk = *dev.disk().ok_or("no disk info")?;
    if disk.read_only() {
        return Err("the disk is read-only".into());
    }
    let size = disk.size_bytes();
    let ios = selftest_spots(&disk, dev.max_request_bytes());
    let seed = seed.unwrap_or_else(|| p.monotonic_ns());
    let t0 = p.monotonic_ns();
    let mut seen = crate::control::new_domains();
    let mut tags = Vec::new();
    let mut done = Done::new();
    let mut bytes = 0u64;
    for &(off, len) in &ios {
        between_ios(p, dev, &mut seen)?;
        let mut buf = alloc::vec![0u8; len];
        pattern(&mut buf, off, seed);
        loop {
            match dev.submit_write(off / 512, &buf) {
                Ok(t) => {
                    tags.push(t);
                    break;
                }
                Err(xen_blkfront::BlkfrontError::Busy) if !tags.is_empty() => {
                    let (st, _) = wait_for(dev, &mut done, tags.remove(0))?;
                    if st != BlkStatus::Okay {
                        return Err(format!("a write failed: {st:?}").into());
                    }
                }
                Err(e) => return Err(format!("write at {off}: {e}").into()),
            }
        }
        bytes += len as u64;
    }
    for t in tags.drain(..) {
        let (st, _) = wait_for(dev, &mut done, t)?;
        if st != BlkStatus::Okay {
            return Err(format!("a write failed: {st:?}").into());
        }
    }
    let ft = dev.flush().map_err(|e| format!("flush: {e}"))?;
    let (st, _) = wait_for(dev, &mut done, ft)?;
    if st != BlkStatus::Okay {
        return Err(format!("flush failed: {st:?}").into());
    }
    for &(off, len) in &ios {
        between_ios(p, dev, &mut seen)?;
        let t = dev
            .submit_read(off / 512, len)
            .map_err(|e| format!("read at {off}: {e}"))?;
        let (st, data) = wait_for(dev, &mut done, t)?;
        if st != BlkStatus::Okay {
            return Err(format!("read at {off} failed: {st:?}").into());
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
            )
            .into());
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

/// The self-test's spots on `disk`: 64 `(byte offset, length)` spread
/// over the disk (first and last included), lengths from one sector to
/// 128 KiB (at most `max_request` bytes), written in one batch, flushed,
/// read back.
pub(crate) fn selftest_spots(
    disk: &xen_blkfront::DiskInfo,
    max_request: usize,
) -> Vec<(u64, usize)> {
    let size = disk.size_bytes();
    let ss = u64::from(disk.sector_size);
    let spots = 64u64;
    let mut ios: Vec<(u64, usize)> = Vec::new();
    for i in 0..spots {
        let len = (ss << (i % 9))
            .min(128 * 1024)
            .min(max_request as u64)
            .min(size) as usize;
        let max_off = size - len as u64;
        let off = (max_off * i / (spots - 1)) / ss * ss;
        ios.push((off, len));
    }
    ios
}

/// Xorshift64*, as the PV guest's load generator.
/// Latency samples a blkload pattern keeps (1 MiB of the heap).
const LAT_SAMPLES: usize = 1 << 17;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn blkload(p: &KPlatform, words: &[&str]) -> Option<u32> {
    match blkload_inner(p, words) {
        Ok(stop) => stop,
        Err(why) => {
            println!("blkload: FAIL: {why}");
            Some(SHUTDOWN_crash)
        }
    }
}

/// `blkload [pattern=P[,P...]] [bs=N] [qd=N] [secs=N]`: keeps `qd` I/Os of
/// `bs` bytes in flight for `secs` seconds per pattern and prints one JSON
/// line per pattern in the PV guest's `blkload` format (plus
/// `"guest":"pvhvm"`). An I/O larger than one request is split into
/// several and completes when all of them have (as the PV guest's).
fn blkload_inner(p: &KPlatform, words: &[&str]) -> Result<Option<u32>, String> {
    let num = |k: &str, d: u64| -> Result<u64, String> {
        match arg(words, k) {
            Some(v) => v.parse().map_err(|_| format!("bad {k}={v}")),
            None => Ok(d),
        }
    };
    let bs = num("bs", 4096)? as usize;
    let qd = num("qd", 32)? as usize;
    let secs = num("secs", 5)?;
    let patterns = arg(words, "pattern").unwrap_or("randread");
    if qd == 0 || qd > 1024 {
        return Err(format!("qd {qd} is not in 1..=1024"));
    }
    if bs == 0 || bs > 16 << 20 {
        return Err(format!("bs {bs} is not in 1..=16 MiB"));
    }
    let mut dev = connect(p)?;
    let disk = *dev.disk().ok_or("no disk info")?;
    let ss = disk.sector_size as usize;
    // A shutdown request (control/shutdown) ends the run: the I/Os in
    // flight complete, the pattern's line is printed.
    let mut stop = None;
    if !bs.is_multiple_of(ss) {
        return Err(format!("bs {bs} is not a multiple of the sector size {ss}"));
    }
    let chunk = (dev.max_request_bytes() / ss * ss).max(ss);
    let nchunks = bs.div_ceil(chunk);
    let slots = disk.size_bytes() / bs as u64;
    if slots == 0 {
        return Err(String::from("the disk is smaller than one I/O"));
    }
    for (i, pattern) in patterns.split(',').enumerate() {
        let write = match pattern {
            "randread" | "seqread" => false,
            "seqwrite" => true,
            other => return Err(format!("unknown pattern {other}")),
        };
        let random = pattern == "randread";
        let mut rng = XorShift(0x5EED + i as u64);
        let mut next = 0u64;
        let data = alloc::vec![0xA5u8; bs];
        // I/O slot -> (start ns, requests pending); tag -> slot.
        let mut ios_in: Vec<Option<(u64, usize)>> = alloc::vec![None; qd];
        let mut free: Vec<usize> = (0..qd).rev().collect();
        let mut tags: alloc::collections::BTreeMap<u64, usize> = Default::default();
        // A partly submitted I/O: (slot, byte offset, next chunk).
        let mut partial: Option<(usize, u64, usize)> = None;
        // Latency samples: a fixed reservoir (uniform over all I/Os, so
        // the quantiles stay unbiased), allocated once. The heap is a
        // quarter of the guest's RAM and never coalesces size classes: a
        // growing Vec ran a fast run out of memory.
        let mut lat: Vec<u64> = Vec::with_capacity(LAT_SAMPLES);
        let mut lat_rng = XorShift(0x1A7 + i as u64);
        let start = p.monotonic_ns();
        let end = start + secs * 1_000_000_000;
        let mut last_done = start;
        let mut ios = 0u64;
        let mut inflight = 0usize;
        loop {
            if stop.is_none() {
                stop = crate::control::poll(p);
            }
            let submitting = stop.is_none() && p.monotonic_ns() < end;
            'submit: loop {
                let (si, off, first) = match partial.take() {
                    Some(x) => x,
                    None if !submitting => break,
                    None => match free.pop() {
                        Some(si) => {
                            let slot = if random {
                                rng.next() % slots
                            } else {
                                let s = next;
                                next = (next + 1) % slots;
                                s
                            };
                            ios_in[si] = Some((p.monotonic_ns(), 0));
                            inflight += 1;
                            (si, slot * bs as u64, 0)
                        }
                        None => break,
                    },
                };
                for c in first..nchunks {
                    let o = c * chunk;
                    let len = chunk.min(bs - o);
                    let sector = (off + o as u64) / 512;
                    let r = if write {
                        dev.submit_write(sector, &data[o..o + len])
                    } else {
                        dev.submit_read(sector, len)
                    };
                    match r {
                        Ok(tag) => {
                            tags.insert(tag.0, si);
                            if let Some(io) = ios_in[si].as_mut() {
                                io.1 += 1;
                            }
                        }
                        Err(xen_blkfront::BlkfrontError::Busy) if !tags.is_empty() => {
                            partial = Some((si, off, c));
                            break 'submit;
                        }
                        Err(e) => return Err(format!("submit: {e}")),
                    }
                }
            }
            if inflight == 0 && !submitting {
                break;
            }
            let done = dev
                .poll_completions()
                .map_err(|e| format!("completions: {e}"))?;
            if done.is_empty() {
                dev.wait(Some(Duration::from_millis(50)))
                    .map_err(|e| format!("wait: {e}"))?;
                if p.monotonic_ns() > end + 30_000_000_000 {
                    return Err(String::from("stalled for 30 s"));
                }
                continue;
            }
            let t = p.monotonic_ns();
            for c in done {
                if c.status != BlkStatus::Okay {
                    return Err(format!("an I/O failed: {:?}", c.status));
                }
                dev.give_back_buffer(c.data);
                let Some(si) = tags.remove(&c.tag.0) else {
                    continue;
                };
                let Some(io) = ios_in[si].as_mut() else {
                    continue;
                };
                io.1 = io.1.saturating_sub(1);
                if io.1 == 0 && partial.is_none_or(|(ps, _, _)| ps != si) {
                    if lat.len() < LAT_SAMPLES {
                        lat.push(t - io.0);
                    } else {
                        // Reservoir sampling: keep this one with
                        // probability LAT_SAMPLES / (ios + 1).
                        let j = (lat_rng.next() % (ios + 1)) as usize;
                        if j < LAT_SAMPLES {
                            lat[j] = t - io.0;
                        }
                    }
                    ios += 1;
                    last_done = t;
                    ios_in[si] = None;
                    free.push(si);
                    inflight -= 1;
                }
            }
        }
        lat.sort_unstable();
        let q = |f: u64| -> u64 {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() as u64 - 1) * f / 100) as usize]
            }
        };
        let ns = (last_done - start).max(1);
        let iops = ios as f64 * 1e9 / ns as f64;
        println!(
            "{{\"blkload\":1,\"guest\":\"pvhvm\",\"pattern\":\"{pattern}\",\"bs\":{bs},\"qd\":{qd},\"ios\":{ios},\"seconds\":{:.3},\"iops\":{:.1},\"bytes_per_s\":{:.1},\"p50_ns\":{},\"p99_ns\":{},\"requests_per_io\":{nchunks},\"max_request_bytes\":{}}}",
            ns as f64 / 1e9,
            iops,
            iops * bs as f64,
            q(50),
            q(99),
            dev.max_request_bytes()
        );
        if stop.is_some() {
            break;
        }
    }
    Ok(stop)
}

/// The hostile guest: connects its disk, then scribbles garbage over its
/// blkif ring, its xenstore and console rings and its grant table, rings
/// every doorbell, and triple-faults.
fn hostile(p: &KPlatform, b: &BootInfo) -> Option<u32> {
    let dev = connect(p).ok();
    let ports: Vec<u32> = dev.as_ref().map(|d| d.ports()).unwrap_or_default();
    let mut rng = XorShift(0xBAD_C0DE);
    // The blkif ring: its first page is granted through the first ring
    // reference; find its frame in our grant table and scribble the sring
    // header (req_prod far ahead of rsp_prod) and the slots.
    let devid = dev.as_ref().map_or(51712, |d| d.devid());
    let ring_ref = p
        .xs_read(XBT_NIL, &format!("device/vbd/{devid}/ring-ref0"))
        .or_else(|_| p.xs_read(XBT_NIL, &format!("device/vbd/{devid}/ring-ref")))
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    if let Some(e) = ring_ref.and_then(|r| p.grant_entry_addr(r)) {
        // SAFETY: the entry is ours (identity-mapped grant frame); its
        // frame is one of our RAM pages: scribbling on them is the point.
        unsafe {
            let frame = u64::from(((e + 4) as *const u32).read_volatile());
            let ring = (frame << 12) as *mut u64;
            for i in 0..512 {
                ring.add(i).write_volatile(rng.next());
            }
            (ring as *mut u32).write_volatile(0x7fff_fff0); // req_prod
        }
    }
    for &port in &ports {
        crate::hypercall::doorbell(port);
    }
    println!("hostile: blkif ring scribbled");
    // The xenstore ring: garbage indices and data.
    let store = p.store_page();
    // SAFETY: our own store page; garbage is the point.
    unsafe {
        let w = store as *mut u64;
        for i in 0..512 {
            w.add(i).write_volatile(rng.next());
        }
    }
    crate::hypercall::doorbell(p.store_port());
    // The console ring: garbage indices (out_prod far ahead of out_cons).
    // SAFETY: our own console page.
    unsafe {
        let c = (b.console.0 << 12) as *mut u32;
        c.add(3084 / 4).write_volatile(0x8000_0000);
        c.add(3080 / 4).write_volatile(7);
    }
    crate::hypercall::doorbell(b.console.1);
    // The grant table: every entry of frame 0 beyond the ring's made
    // garbage (permit-access flags, random frames and domids).
    for gref in 16..512u32 {
        if let Some(e) = p.grant_entry_addr(gref) {
            // SAFETY: our own grant frame.
            unsafe { (e as *mut u64).write_volatile(rng.next() | 1) };
        }
    }
    for &port in &ports {
        crate::hypercall::doorbell(port);
    }
    // Doorbells on random ports, and hypercalls with random numbers and
    // arguments (not sched_op, console_io or vmm_op, which would end the
    // run early, block it or flood the log legitimately).
    for _ in 0..2000 {
        crate::hypercall::doorbell((rng.next() % 8192) as u32);
    }
    let mut rejected = 0u32;
    for _ in 0..300 {
        let nr = (rng.next() % 64) as u32;
        if matches!(nr, 18 | 29 | 48) {
            continue;
        }
        let a = [
            rng.next() % 16,
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next(),
        ];
        // SAFETY: deliberately hostile: the VMM must validate every value;
        // pointers into our own memory may be written by it, which is ours
        // to lose.
        let rc = unsafe { crate::hypercall::hypercall(nr, a[0], a[1], a[2], a[3], a[4]) };
        if rc < 0 {
            rejected += 1;
        }
    }
    println!("hostile: random doorbells and hypercalls done ({rejected} rejected)");
    println!("hostile: xenstore ring and grant table scribbled; triple-faulting");
    core::mem::forget(dev);
    crate::arch::triple_fault()
}

/// The emulated PIO disk (`xen_abi::pvhvm::fvdisk`).
mod pio {
    use crate::hypercall::{inl, outb, outl};
    use xen_abi::pvhvm::{fvdisk::*, FVDISK_PORT};

    /// Disk size in sectors (0: no disk).
    pub fn sectors() -> u64 {
        let lo = inl(FVDISK_PORT + SIZE_LO);
        if lo == u32::MAX {
            return 0;
        }
        u64::from(lo) | (u64::from(inl(FVDISK_PORT + SIZE_HI)) << 32)
    }

    fn select(sector: u64) {
        outl(FVDISK_PORT + SECTOR_LO, sector as u32);
        outl(FVDISK_PORT + SECTOR_HI, (sector >> 32) as u32);
    }

    /// Writes one 512-byte sector.
    pub fn write(sector: u64, data: &[u8]) -> bool {
        select(sector);
        for w in data.chunks_exact(4).take(128) {
            outl(
                FVDISK_PORT + DATA,
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
            );
        }
        outb(FVDISK_PORT + COMMAND, CMD_WRITE);
        inl(FVDISK_PORT + STATUS) == STATUS_OK
    }

    /// Reads one 512-byte sector.
    pub fn read(sector: u64, data: &mut [u8]) -> bool {
        select(sector);
        outb(FVDISK_PORT + COMMAND, CMD_READ);
        if inl(FVDISK_PORT + STATUS) != STATUS_OK {
            return false;
        }
        for w in data.chunks_exact_mut(4).take(128) {
            w.copy_from_slice(&inl(FVDISK_PORT + DATA).to_le_bytes());
        }
        true
    }
}

fn fvcompare(p: &KPlatform, words: &[&str]) -> Option<u32> {
    match fvcompare_inner(p, words) {
        Ok(()) => None,
        Err(why) => {
            println!("fvcompare: FAIL: {why}");
            Some(SHUTDOWN_crash)
        }
    }
}

fn report(path: &str, op: &str, bs: usize, ios: u64, ns: u64) {
    let ns = ns.max(1);
    let iops = ios as f64 * 1e9 / ns as f64;
    println!(
        "{{\"fvcompare\":1,\"path\":\"{path}\",\"op\":\"{op}\",\"bs\":{bs},\"ios\":{ios},\"seconds\":{:.3},\"iops\":{:.1},\"bytes_per_s\":{:.1}}}",
        ns as f64 / 1e9,
        iops,
        iops * bs as f64
    );
}

fn fvcompare_inner(p: &KPlatform, words: &[&str]) -> Result<(), String> {
    let bs: usize = arg(words, "bs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let secs: u64 = arg(words, "secs").and_then(|v| v.parse().ok()).unwrap_or(2);
    if bs == 0 || !bs.is_multiple_of(512) {
        return Err(format!("bs {bs} is not a multiple of 512"));
    }
    let per = (bs / 512) as u64;
    let fv = pio::sectors();
    if fv < per {
        return Err(String::from(
            "no emulated disk (xl.cfg: a disk with vdev=hda)",
        ));
    }
    let mut buf = alloc::vec![0u8; bs];
    pattern(&mut buf, 0, 7);
    // PIO: writes, then reads of what was written.
    let mut n_w = 0u64;
    let t0 = p.monotonic_ns();
    let end = t0 + secs * 1_000_000_000;
    while p.monotonic_ns() < end {
        let base = (n_w * per) % (fv - per + 1);
        for (i, s) in buf.chunks(512).enumerate() {
            if !pio::write(base + i as u64, s) {
                return Err(String::from("emulated disk write failed"));
            }
        }
        n_w += 1;
    }
    report("pio", "write", bs, n_w, p.monotonic_ns() - t0);
    let mut rbuf = alloc::vec![0u8; bs];
    let mut n_r = 0u64;
    let t0 = p.monotonic_ns();
    let end = t0 + secs * 1_000_000_000;
    while p.monotonic_ns() < end && n_r < n_w {
        let base = (n_r * per) % (fv - per + 1);
        for (i, s) in rbuf.chunks_mut(512).enumerate() {
            if !pio::read(base + i as u64, s) {
                return Err(String::from("emulated disk read failed"));
            }
        }
        if rbuf != buf {
            return Err(String::from("emulated disk read back other data"));
        }
        n_r += 1;
    }
    report("pio", "read", bs, n_r, p.monotonic_ns() - t0);

    // blkfront: the same I/Os, one at a time.
    let mut dev = connect(p)?;
    let disk = *dev.disk().ok_or("no disk info")?;
    let slots = (disk.size_bytes() / bs as u64).max(1);
    let mut done = Done::new();
    let mut written = 1u64;
    for write in [true, false] {
        let mut n = 0u64;
        let t0 = p.monotonic_ns();
        let end = t0 + secs * 1_000_000_000;
        while p.monotonic_ns() < end {
            // Reads go over what the writes covered.
            let span = if write { slots } else { written.min(slots) };
            let sector = (n % span) * per;
            let tag = if write {
                dev.submit_write(sector, &buf)
            } else {
                dev.submit_read(sector, bs)
            }
            .map_err(|e| format!("submit: {e}"))?;
            let (st, data) = wait_for(&mut dev, &mut done, tag)?;
            if st != BlkStatus::Okay {
                return Err(format!("blkfront I/O failed: {st:?}"));
            }
            if !write && data != buf {
                return Err(String::from("blkfront read back other data"));
            }
            dev.give_back_buffer(data);
            n += 1;
        }
        if write {
            written = n.max(1);
        }
        report(
            "blkfront",
            if write { "write" } else { "read" },
            bs,
            n,
            p.monotonic_ns() - t0,
        );
    }
    Ok(())
}

/// The state and counter vCPU 1 writes (see `arch::ap_entry`).
static SMP_AREA: [core::sync::atomic::AtomicU64; 2] = [
    core::sync::atomic::AtomicU64::new(0),
    core::sync::atomic::AtomicU64::new(0),
];

fn smp(b: &BootInfo) -> Option<u32> {
    use core::sync::atomic::Ordering;
    let area = SMP_AREA.as_ptr() as u64;
    // SAFETY: vmm_op(vcpu_up) starts vCPU 1 at `ap_entry`, which only
    // writes the two words of SMP_AREA (atomics) and needs no stack.
    let rc = unsafe {
        crate::hypercall::hypercall(
            xen_abi::pvhvm::HYPERVISOR_vmm_op,
            xen_abi::pvhvm::VMMOP_vcpu_up,
            1,
            crate::arch::ap_entry as *const () as u64,
            0,
            area,
        )
    };
    if rc != 0 {
        println!("smp: vCPU 1 cannot come up ({rc}): is vcpus >= 2?");
        return None;
    }
    let clock = crate::platform::Clock::new(b.time);
    let t0 = clock.now_ns();
    while SMP_AREA[0].load(Ordering::Acquire) != 2 {
        if clock.now_ns() - t0 > 5_000_000_000 {
            println!(
                "smp: FAIL: vCPU 1 did not finish (state {}, counter {})",
                SMP_AREA[0].load(Ordering::Acquire),
                SMP_AREA[1].load(Ordering::Acquire)
            );
            return Some(SHUTDOWN_crash);
        }
        core::hint::spin_loop();
    }
    println!(
        "smp: vCPU 1 came up in its own thread, counted to {} in {} us and went down",
        SMP_AREA[1].load(Ordering::Acquire),
        (clock.now_ns() - t0) / 1000
    );
    None
}

/// `ticker n=N ms=M`: prints "ticker: tick I" every M ms (SCHEDOP_poll with a
/// deadline, no busy loop), N times, then powers off. Its count lives in guest
/// memory and its clock on the TSC: after `xl save` and `xl restore` the count
/// goes on from where it stopped.
fn ticker(b: &BootInfo, words: &[&str]) -> Option<u32> {
    let n: u64 = arg(words, "n").and_then(|v| v.parse().ok()).unwrap_or(100);
    let ms: u64 = arg(words, "ms").and_then(|v| v.parse().ok()).unwrap_or(100);
    let clock = crate::platform::Clock::new(b.time);
    println!("ticker: {n} ticks every {ms} ms");
    for i in 1..=n {
        let deadline = clock.now_ns() + ms * 1_000_000;
        while clock.now_ns() < deadline {
            crate::hypercall::sched_poll(&[], deadline);
        }
        println!("ticker: tick {i}");
    }
    None
}

fn runaway(b: &BootInfo, words: &[&str]) -> Option<u32> {
    let timeout: u32 = arg(words, "timeout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pets: u32 = arg(words, "pets").and_then(|v| v.parse().ok()).unwrap_or(3);
    let id = crate::hypercall::watchdog(0, timeout);
    if id <= 0 {
        println!("runaway: FAIL: SCHEDOP_watchdog refused a new watchdog ({id})");
        return Some(SHUTDOWN_crash);
    }
    let id = id as u32;
    println!("runaway: watchdog {id} armed ({timeout} s)");
    let clock = crate::platform::Clock::new(b.time);
    let half = u64::from(timeout) * 500_000_000;
    for i in 1..=pets {
        let t0 = clock.now_ns();
        while clock.now_ns() - t0 < half {
            core::hint::spin_loop();
        }
        let rc = crate::hypercall::watchdog(id, timeout);
        if rc != 0 {
            println!("runaway: FAIL: petting watchdog {id} returned {rc}");
            return Some(SHUTDOWN_crash);
        }
        println!("runaway: pet {i} of {pets}");
    }
    println!("runaway: spinning at CPL3 forever");
    let spins = core::sync::atomic::AtomicU64::new(0);
    loop {
        spins.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        core::hint::spin_loop();
    }
}
