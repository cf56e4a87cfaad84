//! Result rows: JSON encoding, the human table and the paired ratios of xen-ring
//! against the references measured interleaved with it.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use xen_testhost::stats::{paired_ratios, spread};

use crate::stats::{median, median_u64, min_max, Sample};
use crate::xen::{Geometry, Limits};
use crate::{Case, Impl, Mode};

/// One result line (one JSON object with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "xen-ring", "io-ring-h", "rtrb" or "crossbeam".
    #[serde(rename = "impl")]
    pub imp: &'static str,
    /// "threads" or "processes".
    pub placement: &'static str,
    /// "stream" or "pingpong".
    pub mode: &'static str,
    /// Request size in bytes.
    pub msg_bytes: usize,
    /// Entries the producer may have in flight (see `capacity_requested`).
    pub capacity: usize,
    /// "single" or "chunk".
    pub batch: &'static str,
    /// Median over the repetitions of messages per second.
    pub msgs_per_s: f64,
    /// Median over the repetitions of eventfd writes (both directions) per message.
    pub notifications_per_msg: f64,
    /// Pingpong: median over repetitions of the per-repetition median round trip
    /// (map-unmap: of one map + unmap).
    pub p50_ns: Option<u64>,
    /// Pingpong: median over repetitions of the per-repetition 99th percentile
    /// (map-unmap: of one map + unmap).
    pub p99_ns: Option<u64>,
    /// Repetitions.
    pub runs: usize,
    /// Slowest repetition.
    pub msgs_per_s_min: f64,
    /// Fastest repetition.
    pub msgs_per_s_max: f64,
    /// Capacity the case asked for (32 or 1024).
    pub capacity_requested: usize,
    /// xen-ring and io-ring-h only: entries of the shared ring (may exceed `capacity`,
    /// the window).
    pub ring_entries: Option<usize>,
    /// xen-ring and io-ring-h only: pages of the shared ring.
    pub ring_pages: Option<usize>,
    /// Response size in bytes (what travels back, if anything does).
    pub rsp_bytes: usize,
    /// "request+response" or "request-only" (reference stream mode).
    pub direction: &'static str,
    /// Median over repetitions of `push_*_and_check_notify() == true` per message,
    /// whether or not acted upon (pingpong busy-polls and never signals).
    pub notify_requested_per_msg: f64,
    /// Messages moved in the median-rate repetition.
    pub msgs: u64,
    /// Involuntary context switches of both sides, summed over all repetitions:
    /// non-zero means another process took a benchmark CPU during the measurement.
    pub preempted: u64,
    /// xen-ring rows of an interleaved group: for every other implementation of the
    /// group, xen-ring's rate divided by that implementation's rate in the same round
    /// of repetitions; for pingpong, the reference's p50 round trip divided by
    /// xen-ring's (`null` on other rows).
    pub paired_ratios: Option<BTreeMap<&'static str, Paired>>,
}

/// Paired ratios of xen-ring against one reference.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    /// Median of `ratios`.
    pub median: f64,
    /// Smallest ratio.
    pub min: f64,
    /// Largest ratio.
    pub max: f64,
    /// One ratio per round of repetitions, in order.
    pub ratios: Vec<f64>,
}

/// Fills `paired_ratios` of the xen-ring row of an interleaved group; `samples[i]`
/// are the repetitions of `rows[i]`, in the order they ran.
pub fn add_paired_ratios(rows: &mut [Row], samples: &[Vec<Sample>]) {
    let rates: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| s.iter().map(Sample::paired_rate).collect())
        .collect();
    let Some(x) = rows.iter().position(|r| r.imp == Impl::XenRing.name()) else {
        return;
    };
    let mut map = BTreeMap::new();
    for (j, row) in rows.iter().enumerate() {
        if j == x {
            continue;
        }
        let ratios = paired_ratios(&rates[x], &rates[j]);
        if let Some((median, min, max)) = spread(&ratios) {
            map.insert(
                row.imp,
                Paired {
                    median,
                    min,
                    max,
                    ratios,
                },
            );
        }
    }
    if !map.is_empty() {
        rows[x].paired_ratios = Some(map);
    }
}

impl Row {
    /// Summarises the repetitions of `case`.
    pub fn new(case: &Case, geo: &Geometry, samples: &[Sample]) -> Self {
        let rates: Vec<f64> = samples.iter().map(Sample::rate).collect();
        let notif: Vec<f64> = samples.iter().map(Sample::notifications_per_msg).collect();
        let requested: Vec<f64> = samples
            .iter()
            .map(|s| {
                if s.msgs > 0 {
                    s.notify_requested as f64 / s.msgs as f64
                } else {
                    0.0
                }
            })
            .collect();
        let (lo, hi) = min_max(&rates);
        let (p50, p99) = if case.mode != Mode::Stream {
            let p50s: Vec<u64> = samples
                .iter()
                .filter_map(|s| s.latency.map(|l| l.0))
                .collect();
            let p99s: Vec<u64> = samples
                .iter()
                .filter_map(|s| s.latency.map(|l| l.1))
                .collect();
            (Some(median_u64(&p50s)), Some(median_u64(&p99s)))
        } else {
            (None, None)
        };
        let med = median(&rates);
        let msgs = samples
            .iter()
            .min_by(|a, b| (a.rate() - med).abs().total_cmp(&(b.rate() - med).abs()))
            .map_or(0, |s| s.msgs);
        let xen = matches!(case.imp, Impl::XenRing | Impl::IoRingH);
        let one_way = !xen && case.mode == Mode::Stream;
        Row {
            imp: case.imp.name(),
            placement: case.placement.name(),
            mode: case.mode.name(),
            msg_bytes: case.msg_bytes,
            capacity: geo.capacity,
            batch: case.batch.name(),
            msgs_per_s: med,
            notifications_per_msg: median(&notif),
            p50_ns: p50,
            p99_ns: p99,
            runs: samples.len(),
            msgs_per_s_min: lo,
            msgs_per_s_max: hi,
            capacity_requested: case.capacity_requested,
            ring_entries: xen.then_some(geo.ring_entries),
            ring_pages: xen.then_some(geo.pages),
            rsp_bytes: if one_way { 0 } else { geo.rsp_bytes },
            direction: if one_way {
                "request-only"
            } else {
                "request+response"
            },
            notify_requested_per_msg: median(&requested),
            msgs,
            preempted: samples.iter().map(|s| s.preempted).sum(),
            paired_ratios: None,
        }
    }
}

/// Settings line and column titles of the human table.
pub fn print_header(out: &mut impl Write, set: &crate::Settings) -> Result<()> {
    let pin = match set.cores {
        Some((f, b)) => format!("frontend on CPU {f}, backend on CPU {b}"),
        None => "unpinned".to_string(),
    };
    writeln!(
        out,
        "ringbench: {} repetitions of {:.2} s per case, median shown [min..max]; {pin}; spin {} us before blocking",
        set.runs,
        set.duration.as_secs_f64(),
        set.spin.as_micros()
    )?;
    writeln!(
        out,
        "{:<16} {:<9} {:<9} {:>5} {:>5} {:<6} {:>9} {:>21} {:>9} {:>8} {:>8} {:>7}",
        "impl",
        "placement",
        "mode",
        "bytes",
        "cap",
        "batch",
        "Mmsg/s",
        "[min..max]",
        "notif/msg",
        "p50 ns",
        "p99 ns",
        "preempt"
    )?;
    Ok(())
}

/// One line of the human table.
pub fn print_row(out: &mut impl Write, r: &Row) -> Result<()> {
    let ns = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let cap = if r.capacity == r.capacity_requested {
        r.capacity.to_string()
    } else {
        format!("{}*", r.capacity)
    };
    writeln!(
        out,
        "{:<16} {:<9} {:<9} {:>5} {:>5} {:<6} {:>9.2} {:>21} {:>9.3} {:>8} {:>8} {:>7}",
        r.imp,
        r.placement,
        r.mode,
        r.msg_bytes,
        cap,
        r.batch,
        r.msgs_per_s / 1e6,
        format!(
            "[{:.2}..{:.2}]",
            r.msgs_per_s_min / 1e6,
            r.msgs_per_s_max / 1e6
        ),
        r.notifications_per_msg,
        ns(r.p50_ns),
        ns(r.p99_ns),
        r.preempted,
    )?;
    Ok(())
}

/// The paired ratios of xen-ring against the references (same round of repetitions,
/// median [min..max] over the rounds) and notes.
pub fn print_ratios(out: &mut impl Write, rows: &[Row], limits: &Limits) -> Result<()> {
    let refs = [
        Impl::IoRingH.name(),
        Impl::Rtrb.name(),
        Impl::Crossbeam.name(),
    ];
    let mut header = false;
    for r in rows {
        let Some(p) = &r.paired_ratios else {
            continue;
        };
        if !header {
            writeln!(out)?;
            writeln!(
                out,
                "xen-ring / reference, paired by round of repetitions: median [min..max] \
                 (> 1: xen-ring faster; rtrb and crossbeam streams are one-way):"
            )?;
            writeln!(
                out,
                "  {:<9} {:>5} {:>5} {:<6} {:>22} {:>22} {:>22}",
                "mode", "bytes", "cap", "batch", refs[0], refs[1], refs[2]
            )?;
            header = true;
        }
        let cell = |name: &str| {
            p.get(name).map_or_else(
                || "-".to_string(),
                |q| format!("{:.2} [{:.2}..{:.2}]", q.median, q.min, q.max),
            )
        };
        writeln!(
            out,
            "  {:<9} {:>5} {:>5} {:<6} {:>22} {:>22} {:>22}",
            r.mode,
            r.msg_bytes,
            r.capacity,
            r.batch,
            cell(refs[0]),
            cell(refs[1]),
            cell(refs[2])
        )?;
    }
    let mut capped: Vec<(usize, usize, usize, usize)> = rows
        .iter()
        .filter(|r| r.capacity != r.capacity_requested)
        .map(|r| {
            (
                r.msg_bytes,
                r.capacity_requested,
                r.capacity,
                r.ring_pages.unwrap_or(limits.max_pages),
            )
        })
        .collect();
    capped.sort_unstable();
    capped.dedup_by_key(|c| (c.0, c.1));
    for (bytes, asked, got, pages) in capped {
        writeln!(
            out,
            "* {bytes} B, {asked} asked: xen-ring's SharedRing takes at most {} pages ({pages} used), \
             which hold {got} entries of {bytes} B; every implementation ran with capacity {got}.",
            limits.max_pages
        )?;
    }
    Ok(())
}

/// The shim / eventfd latency ratios (same run, same machine) and the grant map cost.
pub fn print_shim_ratios(out: &mut impl Write, rows: &[Row], set: &crate::Settings) -> Result<()> {
    let find = |imp: &str| rows.iter().find(|r| r.imp == imp);
    let pairs = [
        ("shim-evtchn", "eventfd", "blocking".to_string()),
        (
            "shim-evtchn-poll",
            "eventfd-poll",
            format!("poll {} us before sleeping", set.spin.as_micros()),
        ),
    ];
    let mut header = false;
    for (shim, reference, how) in pairs {
        let (Some(s), Some(e)) = (find(shim), find(reference)) else {
            continue;
        };
        let (Some(sp50), Some(ep50), Some(sp99), Some(ep99)) =
            (s.p50_ns, e.p50_ns, s.p99_ns, e.p99_ns)
        else {
            continue;
        };
        if !header {
            writeln!(out)?;
            writeln!(
                out,
                "shim event channel / bare eventfd, round trip between two processes (goal <= 1.2):"
            )?;
            header = true;
        }
        writeln!(
            out,
            "  {how:<28} p50 {:>6.2}  ({sp50} vs {ep50} ns)   p99 {:>6.2}  ({sp99} vs {ep99} ns)",
            sp50 as f64 / ep50.max(1) as f64,
            sp99 as f64 / ep99.max(1) as f64,
        )?;
    }
    if let Some(g) = find("grant-map") {
        if let (Some(p50), Some(p99)) = (g.p50_ns, g.p99_ns) {
            writeln!(out)?;
            writeln!(
                out,
                "grant map + unmap of one page by Dom0 (no daemon round trip): p50 {p50} ns, p99 {p99} ns"
            )?;
        }
    }
    Ok(())
}
