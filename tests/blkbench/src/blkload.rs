//! A load generator that drives [`BlkFront`] directly (no FUSE, no
//! [`xen_pvguest::vbd::Vbd`] adapter): the guest side of the block
//! benchmark, run by the `blkload` guest binary ([`crate::guest`]) on the
//! PV guest runtime's library.
//!
//! For each pattern it keeps up to `qd` I/Os of `bs` bytes in flight on the
//! first `device/vbd` for `duration`, and prints one JSON line per
//! pattern (iops, bytes/s, latency p50/p99 from submission to completion)
//! to the guest log. An I/O larger than
//! [`BlkFront::max_request_bytes`] is split into several ring requests and
//! completes when all of them have.
//!
//! The time measured runs from the first submission to the last
//! completion: no new I/O starts after `duration`, the ones in flight then
//! are drained and counted.
//!
//! Offsets: `randread` picks `bs`-aligned offsets uniformly (xorshift);
//! `seqread`/`seqwrite` walk the disk from 0 and wrap at its end.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use xen_blkfront::{BlkStatus, BlkfrontConfig, BlkfrontError, BufferId, RequestTag};
use xen_front_platform::Platform;

use xen_pvguest::pvdisk::{list_vbds, PvdiskError};
use xen_pvguest::vbd::{self, VbdError};

/// Latency samples kept per pattern (bounds memory; later I/Os are counted
/// but not sampled).
const MAX_SAMPLES: usize = 1 << 23;
/// Most I/Os in flight.
const MAX_QD: usize = 1024;
/// Largest I/O size.
const MAX_BS: usize = 16 << 20;
/// How long one wait for the backend sleeps before polling again.
const WAIT_SLICE: Duration = Duration::from_millis(50);
/// How long the generator waits for the backend with nothing completing.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    /// Uniform random reads.
    Randread,
    /// Sequential reads.
    Seqread,
    /// Sequential writes.
    Seqwrite,
    /// Uniform random writes.
    Randwrite,
}

impl Pattern {
    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Randread => "randread",
            Pattern::Seqread => "seqread",
            Pattern::Seqwrite => "seqwrite",
            Pattern::Randwrite => "randwrite",
        }
    }

    /// Whether it writes.
    pub fn is_write(self) -> bool {
        matches!(self, Pattern::Seqwrite | Pattern::Randwrite)
    }
}

/// Why the load generator failed.
#[derive(Debug, thiserror::Error)]
pub enum BlkloadError {
    /// The guest has no vbd or listing them failed.
    #[error("cannot find the guest's disk")]
    Disk(#[from] PvdiskError),
    /// The guest has no vbd.
    #[error("the guest has no vbd device")]
    NoDisk,
    /// Connecting the disk failed.
    #[error("vbd {devid} did not connect")]
    Connect {
        /// The device id.
        devid: u32,
        /// The failure.
        #[source]
        source: VbdError,
    },
    /// The frontend refused or failed a request.
    #[error("the block frontend failed")]
    Front(#[from] BlkfrontError),
    /// The backend failed a request.
    #[error("the backend failed a {what} at byte {offset}")]
    Io {
        /// The pattern's operation.
        what: &'static str,
        /// Byte offset of the I/O.
        offset: u64,
    },
    /// No completion for too long.
    #[error("no completion within {0:?}")]
    Stalled(Duration),
    /// The parameters do not fit the disk.
    #[error("bad load parameters: {0}")]
    BadParams(String),
    /// Writing the report failed.
    #[error("cannot write the report")]
    Output(#[from] std::io::Error),
}

/// One run's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadConfig {
    /// Patterns, run one after the other.
    pub patterns: Vec<Pattern>,
    /// I/O size in bytes (a multiple of the disk's sector size).
    pub bs: usize,
    /// I/Os in flight.
    pub qd: usize,
    /// How long each pattern runs.
    pub duration: Duration,
    /// Bytes each pattern starts at least, however long it takes (a test
    /// that checks every byte of the disk was written asks for one full
    /// pass of it; 0: the duration alone).
    pub min_bytes: u64,
    /// Move the data through the copying API ([`BlkFront::submit_read`]
    /// returning a `Vec`, [`BlkFront::submit_write`] copying one) instead
    /// of registered buffers.
    pub copy: bool,
    /// [`BlkfrontConfig::poll_budget`] of the device.
    pub poll_budget: Duration,
    /// [`BlkfrontConfig::max_queues`] of the device.
    pub queues: u32,
    /// [`BlkfrontConfig::max_indirect_segments`] of the device (`None`:
    /// its default).
    pub max_indirect_segments: Option<u32>,
}

/// One pattern's result.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The pattern.
    pub pattern: Pattern,
    /// I/O size.
    pub bs: usize,
    /// I/Os in flight.
    pub qd: usize,
    /// I/Os completed.
    pub ios: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// I/Os per second.
    pub iops: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Median latency, submission to completion.
    pub p50_ns: u64,
    /// 99th percentile latency.
    pub p99_ns: u64,
    /// Ring requests per I/O.
    pub requests_per_io: usize,
    /// The frontend's largest request.
    pub max_request_bytes: usize,
}

impl LoadReport {
    /// The report as one JSON object (no trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"blkload\":1,\"pattern\":\"{}\",\"bs\":{},\"qd\":{},\"ios\":{},\"seconds\":{:.3},\
             \"iops\":{:.1},\"bytes_per_s\":{:.1},\"p50_ns\":{},\"p99_ns\":{},\
             \"requests_per_io\":{},\"max_request_bytes\":{}}}",
            self.pattern.name(),
            self.bs,
            self.qd,
            self.ios,
            self.seconds,
            self.iops,
            self.bytes_per_s,
            self.p50_ns,
            self.p99_ns,
            self.requests_per_io,
            self.max_request_bytes
        );
        s
    }
}

/// The value at quantile `q` (0..=1) of sorted `v` (nearest rank); 0 when
/// empty.
pub fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let last = v.len() - 1;
    // q is in 0..=1, so the product is in 0..=last.
    let i = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
    v[i.min(last)]
}

/// A small xorshift64* generator (offsets, not cryptography).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Where the next I/O of a pattern goes.
#[derive(Debug, Clone)]
pub struct Offsets {
    pattern: Pattern,
    bs: u64,
    slots: u64,
    next: u64,
    rng: XorShift,
}

impl Offsets {
    /// Offsets of `bs`-byte I/Os on a disk of `size` bytes; `None` if the
    /// disk holds no whole I/O.
    pub fn new(pattern: Pattern, bs: u64, size: u64, seed: u64) -> Option<Self> {
        let slots = size.checked_div(bs).filter(|&n| n > 0)?;
        Some(Offsets {
            pattern,
            bs,
            slots,
            next: 0,
            rng: XorShift::new(seed),
        })
    }

    /// The next byte offset (always `bs`-aligned and inside the disk).
    pub fn next_offset(&mut self) -> u64 {
        let slot = match self.pattern {
            Pattern::Randread | Pattern::Randwrite => self.rng.next_u64() % self.slots,
            Pattern::Seqread | Pattern::Seqwrite => {
                let s = self.next;
                self.next = (self.next + 1) % self.slots;
                s
            }
        };
        slot * self.bs
    }
}

/// An I/O in flight.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    offset: u64,
    pending: usize,
}

/// Connects the guest's first vbd and runs every pattern of `cfg` on it,
/// printing one JSON line per pattern to `out`.
pub fn run_load<P: Platform + ?Sized>(
    p: &P,
    cfg: &LoadConfig,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<Vec<LoadReport>, BlkloadError> {
    if cfg.qd == 0 || cfg.qd > MAX_QD {
        return Err(BlkloadError::BadParams(format!(
            "qd {} is not in 1..={MAX_QD}",
            cfg.qd
        )));
    }
    if cfg.bs == 0 || cfg.bs > MAX_BS {
        return Err(BlkloadError::BadParams(format!(
            "bs {} is not in 1..={MAX_BS}",
            cfg.bs
        )));
    }
    let devid = *list_vbds(p)?.first().ok_or(BlkloadError::NoDisk)?;
    let bcfg = BlkfrontConfig {
        poll_budget: cfg.poll_budget,
        max_queues: cfg.queues,
        max_indirect_segments: cfg
            .max_indirect_segments
            .unwrap_or(BlkfrontConfig::default().max_indirect_segments),
        ..BlkfrontConfig::default()
    };
    let opened = Instant::now();
    let mut dev = vbd::open(p, devid, bcfg, timeout)
        .map_err(|source| BlkloadError::Connect { devid, source })?;
    let disk = *dev.disk().ok_or(BlkfrontError::NotConnected)?;
    // The host times `xl create` to this line (as the PVHVM kernel's).
    writeln!(
        out,
        "blkload: vbd {devid} Connected in {} us: {} sectors of {} bytes",
        opened.elapsed().as_micros(),
        disk.sectors,
        disk.sector_size
    )?;
    out.flush()?;
    let ss = disk.sector_size as usize;
    if ss == 0 || cfg.bs % ss != 0 {
        return Err(BlkloadError::BadParams(format!(
            "bs {} is not a multiple of the sector size {ss}",
            cfg.bs
        )));
    }
    let chunk = dev.max_request_bytes().max(ss);
    let mut reports = Vec::new();
    for (i, &pattern) in cfg.patterns.iter().enumerate() {
        let seed = 0x5EED_u64.wrapping_add(i as u64);
        let mut offs =
            Offsets::new(pattern, cfg.bs as u64, disk.size_bytes(), seed).ok_or_else(|| {
                BlkloadError::BadParams(format!(
                    "bs {} exceeds the disk of {} bytes",
                    cfg.bs,
                    disk.size_bytes()
                ))
            })?;
        let r = run_pattern(&mut dev, pattern, cfg, chunk, &mut offs)?;
        writeln!(out, "{}", r.to_json())?;
        out.flush()?;
        reports.push(r);
    }
    Ok(reports)
}

fn run_pattern<P: Platform + ?Sized>(
    dev: &mut xen_blkfront::BlkFront<'_, P>,
    pattern: Pattern,
    cfg: &LoadConfig,
    chunk: usize,
    offs: &mut Offsets,
) -> Result<LoadReport, BlkloadError> {
    let data = vec![0xA5u8; cfg.bs];
    let nchunks = cfg.bs.div_ceil(chunk);
    // Registered buffers: one per chunk of each slot, filled once for
    // writes (as fio fills its buffers once).
    let mut bufs: Vec<BufferId> = Vec::new();
    if !cfg.copy {
        for _ in 0..cfg.qd {
            for c in 0..nchunks {
                let len = chunk.min(cfg.bs - c * chunk);
                let b = dev.alloc_buffer(len)?;
                if pattern.is_write() {
                    dev.buffer_write(b, 0, &data[..len])?;
                }
                bufs.push(b);
            }
        }
    }
    let r = drive(dev, pattern, cfg, chunk, offs, &data, &bufs);
    for b in bufs {
        let _ = dev.free_buffer(b);
    }
    let (ios, seconds, mut lat) = r?;
    lat.sort_unstable();
    Ok(LoadReport {
        pattern,
        bs: cfg.bs,
        qd: cfg.qd,
        ios,
        seconds,
        iops: ios as f64 / seconds,
        bytes_per_s: (ios as f64) * (cfg.bs as f64) / seconds,
        p50_ns: quantile(&lat, 0.50),
        p99_ns: quantile(&lat, 0.99),
        requests_per_io: nchunks,
        max_request_bytes: chunk,
    })
}

/// Runs one pattern; returns the I/Os done, the seconds measured and the
/// latency samples.
fn drive<P: Platform + ?Sized>(
    dev: &mut xen_blkfront::BlkFront<'_, P>,
    pattern: Pattern,
    cfg: &LoadConfig,
    chunk: usize,
    offs: &mut Offsets,
    data: &[u8],
    bufs: &[BufferId],
) -> Result<(u64, f64, Vec<u64>), BlkloadError> {
    let what = pattern.name();
    let nchunks = cfg.bs.div_ceil(chunk);
    let mut slots: Vec<Option<Slot>> = vec![None; cfg.qd];
    let mut free: Vec<usize> = (0..cfg.qd).rev().collect();
    // Request tag -> slot.
    let mut tags: HashMap<RequestTag, usize> = HashMap::with_capacity(cfg.qd * nchunks);
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut ios = 0u64;
    // A partly submitted I/O (ring full): its slot and next chunk.
    let mut partial: Option<(usize, usize)> = None;
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut last_progress = Instant::now();
    // When the last I/O completed: the run is measured from `start` to
    // here (new I/Os stop at `end`, those in flight then are drained).
    let mut last_done = start;
    let mut inflight = 0usize;
    // Bytes of the I/Os started (for `min_bytes`).
    let mut started = 0u64;
    loop {
        let now = Instant::now();
        let submitting = now < end || started < cfg.min_bytes;
        // Submit until qd I/Os are in flight or the ring is full.
        // After the end only a partly submitted I/O is finished.
        'submit: loop {
            let (si, first) = match partial.take() {
                Some(x) => x,
                None if !submitting => break,
                None => match free.pop() {
                    Some(si) => {
                        let offset = offs.next_offset();
                        slots[si] = Some(Slot {
                            start: Instant::now(),
                            offset,
                            pending: 0,
                        });
                        inflight += 1;
                        started += cfg.bs as u64;
                        (si, 0)
                    }
                    None => break,
                },
            };
            let Some(slot) = slots[si].as_mut() else {
                break;
            };
            for c in first..nchunks {
                let off = c * chunk;
                let len = chunk.min(cfg.bs - off);
                let byte = slot.offset + off as u64;
                let sector = byte / 512;
                let r = match (pattern, bufs.get(si * nchunks + c)) {
                    (Pattern::Randread | Pattern::Seqread, Some(&b)) => {
                        dev.submit_read_buffer(sector, b)
                    }
                    (Pattern::Seqwrite | Pattern::Randwrite, Some(&b)) => {
                        dev.submit_write_buffer(sector, b)
                    }
                    (Pattern::Randread | Pattern::Seqread, None) => dev.submit_read(sector, len),
                    (Pattern::Seqwrite | Pattern::Randwrite, None) => {
                        dev.submit_write(sector, &data[off..off + len])
                    }
                };
                match r {
                    Ok(tag) => {
                        tags.insert(tag, si);
                        slot.pending += 1;
                    }
                    Err(BlkfrontError::Busy) if !tags.is_empty() => {
                        partial = Some((si, c));
                        break 'submit;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if inflight == 0 && !submitting {
            break;
        }
        let done = dev.poll_completions()?;
        if done.is_empty() {
            if last_progress.elapsed() > STALL_TIMEOUT {
                return Err(BlkloadError::Stalled(STALL_TIMEOUT));
            }
            dev.wait(Some(WAIT_SLICE))?;
            continue;
        }
        let t = Instant::now();
        last_progress = t;
        for c in done {
            let Some(si) = tags.remove(&c.tag) else {
                continue;
            };
            let Some(slot) = slots[si].as_mut() else {
                continue;
            };
            if c.status != BlkStatus::Okay {
                return Err(BlkloadError::Io {
                    what,
                    offset: slot.offset,
                });
            }
            slot.pending = slot.pending.saturating_sub(1);
            dev.give_back_buffer(c.data);
            let complete = slot.pending == 0 && partial.is_none_or(|(p, _)| p != si);
            if complete {
                let ns = u64::try_from(t.duration_since(slot.start).as_nanos()).unwrap_or(u64::MAX);
                if lat.len() < MAX_SAMPLES {
                    lat.push(ns);
                }
                ios += 1;
                last_done = t;
                slots[si] = None;
                free.push(si);
                inflight -= 1;
            }
        }
    }
    let seconds = last_done.duration_since(start).as_secs_f64().max(1e-9);
    Ok((ios, seconds, lat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_offsets_seq_wraps_at_disk_end() {
        // Arrange
        let mut o = Offsets::new(Pattern::Seqread, 4096, 3 * 4096 + 100, 1).expect("fits");
        // Act
        let v: Vec<u64> = (0..4).map(|_| o.next_offset()).collect();
        // Assert
        assert_eq!(v, [0, 4096, 8192, 0]);
    }

    #[test]
    fn test_offsets_random_stay_aligned_inside_disk() {
        let mut o = Offsets::new(Pattern::Randread, 4096, 1 << 20, 7).expect("fits");
        for _ in 0..10_000 {
            let x = o.next_offset();
            assert_eq!(x % 4096, 0);
            assert!(x + 4096 <= 1 << 20);
        }
    }

    #[test]
    fn test_offsets_disk_smaller_than_bs_is_refused() {
        assert!(Offsets::new(Pattern::Seqwrite, 1 << 20, 4096, 1).is_none());
    }

    #[test]
    fn test_quantile_of_sorted_samples_picks_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 51);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn test_report_json_has_the_documented_keys() {
        let r = LoadReport {
            pattern: Pattern::Randread,
            bs: 4096,
            qd: 32,
            ios: 10,
            seconds: 1.0,
            iops: 10.0,
            bytes_per_s: 40960.0,
            p50_ns: 5,
            p99_ns: 9,
            requests_per_io: 1,
            max_request_bytes: 131072,
        };
        let j = r.to_json();
        for k in [
            "\"pattern\":\"randread\"",
            "\"bs\":4096",
            "\"qd\":32",
            "\"iops\":10.0",
            "\"bytes_per_s\":40960.0",
            "\"p50_ns\":5",
            "\"p99_ns\":9",
        ] {
            assert!(j.contains(k), "{k} missing in {j}");
        }
    }
}
