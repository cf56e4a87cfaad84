//! The goals of issue 16 and the rows each benchmark's JSON gives them: per
//! case, ours against the reference of the same invocation as a paired ratio
//! (each sample over the reference sample taken next to it) with its median,
//! min and max, the goal's threshold and whether the run met it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use xen_testhost::stats::{paired_ratios, spread};

/// One goal of the report.
#[derive(Debug, Clone, Copy)]
pub struct Goal {
    /// Its number in the issue.
    pub number: u8,
    /// Short title.
    pub title: &'static str,
    /// The goal as the issue states it.
    pub statement: &'static str,
    /// The invocations ([`crate::bench::BENCHES`]) whose rows it has.
    pub benches: &'static [&'static str],
    /// Parts of the goal no benchmark measures yet.
    pub unmeasured: &'static [&'static str],
}

/// Goals 1-5 (goal 6 is this report).
pub const GOALS: [Goal; 5] = [
    Goal {
        number: 1,
        title: "Rings",
        statement: "xen-ring >= 1.0x of Xen's C `io/ring.h` in every mode; >= 0.8x of rtrb in \
                    chunk mode at every size and capacity (`ringbench`, two pinned threads, \
                    implementations interleaved; pingpong compares p50 round trips).",
        benches: &["ringbench"],
        unmeasured: &[],
    },
    Goal {
        number: 2,
        title: "Network",
        statement: "TCP both ways and 64-byte UDP through the PV NIC >= 0.8x of a veth pair \
                    (`netbench`, iperf3, samples alternated).",
        benches: &["netbench"],
        unmeasured: &[],
    },
    Goal {
        number: 3,
        title: "PVHVM on par with PV",
        statement: "blkfront in the PVHVM guest >= 0.9x of the PV guest's on the three block \
                    loads; HTTP download from the PVHVM guest >= 0.5x of a PV guest's; \
                    `xl create` to disk Connected <= 50 ms (PVHVM) and <= 20 ms (PV).",
        benches: &["blkbench-pvhvm", "netbench-http"],
        unmeasured: &[],
    },
    Goal {
        number: 4,
        title: "Guest filesystems",
        statement: "`fio` inside a PV guest on its PV disk against the same `fio` job in Dom0 on \
                    the image file: >= 0.5x at QD1 and >= 0.8x at QD32.",
        benches: &["blkbench"],
        unmeasured: &[
            "blkbench's guest fio (`fio-guest`: psync, O_DIRECT, QD1 on `/dev/xvda`) is compared \
             with its Dom0 reference `fio-native` (io_uring, buffered, QD32 on the tmpfs image): \
             not the same job, so these ratios understate the goal's.",
            "QD32 (libaio/io_uring) inside the guest, a file on a filesystem mounted from the PV \
             disk, and the same job in Dom0 with O_DIRECT on an ext4 image: no benchmark has \
             these cases yet.",
        ],
    },
    Goal {
        number: 5,
        title: "xenstored",
        statement: "Our xenstored >= 2x Xen's C xenstored through `libxenstore` (the same \
                    client `xs-bench.c`, same run, servers alternated).",
        benches: &["xsbench"],
        unmeasured: &[],
    },
];

/// What a row's value is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Ours over the reference (> 1: ours faster).
    Ratio,
    /// An absolute figure in `unit` (e.g. milliseconds), lower is better.
    Absolute,
}

/// One case of one goal in one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GoalRow {
    /// The goal's number.
    pub goal: u8,
    /// The invocation that measured it.
    pub bench: String,
    /// The report's run (1-based).
    pub run: usize,
    /// The case (load, size, mode...).
    pub case: String,
    /// Our implementation.
    pub ours: String,
    /// The reference (empty for absolute rows).
    pub reference: String,
    /// Unit of `ours_value`/`reference_value`.
    pub unit: String,
    /// Our median.
    pub ours_value: f64,
    /// The reference's median.
    pub reference_value: Option<f64>,
    /// Ratio or absolute.
    pub kind: Kind,
    /// The paired ratios (or the absolute samples).
    pub samples: Vec<f64>,
    /// Whether `samples` pair each of ours with the reference's sample taken
    /// next to it (false: one ratio of the medians).
    pub paired: bool,
    /// Median of `samples`.
    pub median: f64,
    /// Smallest of `samples`.
    pub min: f64,
    /// Largest of `samples`.
    pub max: f64,
    /// The goal's threshold (`None`: shown for context, no goal).
    pub threshold: Option<f64>,
}

impl GoalRow {
    /// Whether `value` meets this row's goal (`None` without a goal).
    pub fn meets(&self, value: f64) -> Option<bool> {
        self.threshold.map(|t| match self.kind {
            Kind::Ratio => value >= t,
            Kind::Absolute => value <= t,
        })
    }
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn s<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn floats(v: &Value, k: &str) -> Vec<f64> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// A row template; `samples` decide median/min/max.
struct Case<'a> {
    goal: u8,
    case: String,
    ours: &'a str,
    reference: &'a str,
    unit: &'a str,
    ours_value: f64,
    reference_value: Option<f64>,
    threshold: Option<f64>,
}

impl Case<'_> {
    fn ratio(self, bench: &str, run: usize, samples: Vec<f64>, paired: bool) -> Option<GoalRow> {
        self.row(bench, run, Kind::Ratio, samples, paired)
    }

    fn row(
        self,
        bench: &str,
        run: usize,
        kind: Kind,
        samples: Vec<f64>,
        paired: bool,
    ) -> Option<GoalRow> {
        let (median, min, max) = spread(&samples)?;
        Some(GoalRow {
            goal: self.goal,
            bench: bench.into(),
            run,
            case: self.case,
            ours: self.ours.into(),
            reference: self.reference.into(),
            unit: self.unit.into(),
            ours_value: self.ours_value,
            reference_value: self.reference_value,
            kind,
            samples,
            paired,
            median,
            min,
            max,
            threshold: self.threshold,
        })
    }
}

/// The goal rows of one invocation's JSON lines.
pub fn extract(bench: &str, run: usize, lines: &[Value]) -> Vec<GoalRow> {
    match bench {
        "ringbench" => ringbench(run, lines),
        "netbench" => netbench(run, lines),
        "netbench-http" => http(run, lines),
        "blkbench" => blkbench(run, lines),
        "blkbench-pvhvm" => pvhvm_blk(run, lines),
        "xsbench" => xsbench(run, lines),
        _ => Vec::new(),
    }
}

fn ringbench(run: usize, lines: &[Value]) -> Vec<GoalRow> {
    let mut out = Vec::new();
    let key = |r: &Value| {
        (
            s(r, "placement").to_owned(),
            s(r, "mode").to_owned(),
            s(r, "batch").to_owned(),
            r.get("msg_bytes").cloned(),
            r.get("capacity").cloned(),
        )
    };
    for r in lines.iter().filter(|r| s(r, "impl") == "xen-ring") {
        let Some(paired) = r.get("paired_ratios").and_then(Value::as_object) else {
            continue;
        };
        let (mode, batch) = (s(r, "mode"), s(r, "batch"));
        let pingpong = mode == "pingpong";
        let (unit, value) = if pingpong {
            ("ns p50 round trip", f(r, "p50_ns"))
        } else {
            ("msgs/s", f(r, "msgs_per_s"))
        };
        let cap = r.get("capacity").and_then(Value::as_u64).unwrap_or(0);
        let asked = r
            .get("capacity_requested")
            .and_then(Value::as_u64)
            .unwrap_or(cap);
        for (reference, p) in paired {
            let threshold = match (reference.as_str(), batch) {
                ("io-ring-h", _) => Some(1.0),
                ("rtrb", "chunk") => Some(0.8),
                _ => None,
            };
            let ref_row = lines
                .iter()
                .find(|x| s(x, "impl") == reference && key(x) == key(r));
            let ref_value = ref_row.and_then(|x| {
                if pingpong {
                    f(x, "p50_ns")
                } else {
                    f(x, "msgs_per_s")
                }
            });
            let case = format!(
                "{mode} {batch} {} B cap {cap}{}",
                r.get("msg_bytes").and_then(Value::as_u64).unwrap_or(0),
                if asked == cap { "" } else { "*" }
            );
            out.extend(
                Case {
                    goal: 1,
                    case,
                    ours: "xen-ring",
                    reference,
                    unit,
                    ours_value: value.unwrap_or(0.0),
                    reference_value: ref_value,
                    threshold,
                }
                .ratio("ringbench", run, floats(p, "ratios"), true),
            );
        }
    }
    out
}

fn netbench(run: usize, lines: &[Value]) -> Vec<GoalRow> {
    lines
        .iter()
        .filter(|r| s(r, "imp") == "pv-netfront")
        .filter_map(|r| {
            let load = s(r, "load");
            let veth = lines
                .iter()
                .find(|x| s(x, "imp") == "veth" && s(x, "load") == load);
            let what = match load {
                "tcp-tx" => "TCP guest to Dom0",
                "tcp-rx" => "TCP Dom0 to guest",
                "udp64" => "64-byte UDP",
                other => other,
            };
            Case {
                goal: 2,
                case: format!("{load} ({what})"),
                ours: "pv-netfront",
                reference: "veth",
                unit: s(r, "unit"),
                ours_value: f(r, "median").unwrap_or(0.0),
                reference_value: veth.and_then(|v| f(v, "median")),
                threshold: Some(0.8),
            }
            .ratio("netbench", run, floats(r, "paired_ratios"), true)
        })
        .collect()
}

fn http(run: usize, lines: &[Value]) -> Vec<GoalRow> {
    let find = |imp: &str| {
        lines
            .iter()
            .find(|r| s(r, "imp") == imp && s(r, "load") == "http-get")
    };
    let (Some(pv), Some(hvm)) = (find("pv-python"), find("pvhvm-smoltcp")) else {
        return Vec::new();
    };
    // The two downloads alternate sample by sample.
    let ratios = paired_ratios(&floats(hvm, "samples"), &floats(pv, "samples"));
    Case {
        goal: 3,
        case: format!(
            "HTTP download of {} MB (curl in Dom0)",
            hvm.get("bytes").and_then(Value::as_f64).unwrap_or(0.0) / 1e6
        ),
        ours: "pvhvm-smoltcp",
        reference: "pv-python",
        unit: "bytes/s",
        ours_value: f(hvm, "median").unwrap_or(0.0),
        reference_value: f(pv, "median"),
        threshold: Some(0.5),
    }
    .ratio("netbench-http", run, ratios, true)
    .into_iter()
    .collect()
}

/// The blkbench row of `imp` on `r`'s pattern and block size.
fn blk_ref<'l>(lines: &'l [Value], imp: &str, r: &Value) -> Option<&'l Value> {
    lines.iter().find(|x| {
        s(x, "impl") == imp && s(x, "pattern") == s(r, "pattern") && x.get("bs") == r.get("bs")
    })
}

fn blk_case(r: &Value) -> String {
    let bs = r.get("bs").and_then(Value::as_u64).unwrap_or(0);
    let size = if bs >= 1 << 20 {
        format!("{} MiB", bs >> 20)
    } else {
        format!("{} KiB", bs >> 10)
    };
    format!(
        "{} {size} QD{}",
        s(r, "pattern"),
        r.get("qd").and_then(Value::as_u64).unwrap_or(0)
    )
}

/// Paired IOPS ratios of `r` against `reference` (by repetition) when both
/// rows carry their samples, else the ratio of the medians.
fn blk_ratios(r: &Value, reference: &Value) -> (Vec<f64>, bool) {
    let (a, b) = (floats(r, "iops_samples"), floats(reference, "iops_samples"));
    if !a.is_empty() && a.len() == b.len() {
        return (paired_ratios(&a, &b), true);
    }
    match (f(r, "iops"), f(reference, "iops")) {
        (Some(x), Some(y)) if y > 0.0 => (vec![x / y], false),
        _ => (Vec::new(), false),
    }
}

fn blkbench(run: usize, lines: &[Value]) -> Vec<GoalRow> {
    let mut out = Vec::new();
    for r in lines {
        let imp = s(r, "impl");
        let (threshold, label) = if imp.starts_with("fio-guest") {
            let qd = r.get("qd").and_then(Value::as_u64).unwrap_or(0);
            (Some(if qd <= 1 { 0.5 } else { 0.8 }), "fio in the guest")
        } else if imp == "blkfront" {
            (None, "blkfront without FUSE (context)")
        } else {
            continue;
        };
        let Some(native) = blk_ref(lines, "fio-native", r) else {
            continue;
        };
        let (ratios, paired) = blk_ratios(r, native);
        out.extend(
            Case {
                goal: 4,
                case: format!("{label}: {}", blk_case(r)),
                ours: imp,
                reference: "fio-native",
                unit: "IOPS",
                ours_value: f(r, "iops").unwrap_or(0.0),
                reference_value: f(native, "iops"),
                threshold,
            }
            .ratio("blkbench", run, ratios, paired),
        );
    }
    out
}

fn pvhvm_blk(run: usize, lines: &[Value]) -> Vec<GoalRow> {
    let mut out = Vec::new();
    for r in lines {
        if s(r, "metric") == "xl_create_to_disk_connected_ms" {
            let (Some(med), Some(min), Some(max)) = (f(r, "median"), f(r, "min"), f(r, "max"))
            else {
                continue;
            };
            let (ours, case, threshold) = match s(r, "impl") {
                "pv" => ("pv", "`xl create` to disk Connected, PV", 20.0),
                _ => ("pvhvm", "`xl create` to disk Connected, PVHVM", 50.0),
            };
            out.extend(
                Case {
                    goal: 3,
                    case: case.into(),
                    ours,
                    reference: "",
                    unit: "ms",
                    ours_value: med,
                    reference_value: None,
                    threshold: Some(threshold),
                }
                .row(
                    "blkbench-pvhvm",
                    run,
                    Kind::Absolute,
                    vec![min, med, max],
                    false,
                ),
            );
            continue;
        }
        if s(r, "impl") != "pvhvm" {
            continue;
        }
        let Some(pv) = blk_ref(lines, "blkfront", r) else {
            continue;
        };
        let (ratios, paired) = blk_ratios(r, pv);
        out.extend(
            Case {
                goal: 3,
                case: format!("blkfront {}", blk_case(r)),
                ours: "pvhvm",
                reference: "blkfront (PV guest)",
                unit: "IOPS",
                ours_value: f(r, "iops").unwrap_or(0.0),
                reference_value: f(pv, "iops"),
                threshold: Some(0.9),
            }
            .ratio("blkbench-pvhvm", run, ratios, paired),
        );
    }
    out
}

fn xsbench(run: usize, lines: &[Value]) -> Vec<GoalRow> {
    let mut out = Vec::new();
    for (metric, what, unit) in [
        (
            "xs-bench.pairs_per_s",
            "libxenstore write+read pairs/s",
            "pairs/s",
        ),
        (
            "xs-bench.tx_per_s",
            "libxenstore transactions/s",
            "transactions/s",
        ),
    ] {
        let row = |server: &str| {
            lines
                .iter()
                .find(|r| s(r, "metric") == metric && s(r, "server") == server)
        };
        let (Some(ours), Some(c)) = (row("ours"), row("c-xenstored")) else {
            continue;
        };
        let ratios = paired_ratios(&floats(ours, "values"), &floats(c, "values"));
        out.extend(
            Case {
                goal: 5,
                case: what.into(),
                ours: "xenstored (ours)",
                reference: "C xenstored",
                unit,
                ours_value: f(ours, "median").unwrap_or(0.0),
                reference_value: f(c, "median"),
                threshold: Some(2.0),
            }
            .ratio("xsbench", run, ratios, true),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_ringbench_rows_get_thresholds_by_reference_and_batch() {
        let lines = vec![
            json!({"impl":"xen-ring","placement":"threads","mode":"stream","batch":"chunk",
                   "msg_bytes":112,"capacity":512,"capacity_requested":1024,"msgs_per_s":2e6,
                   "paired_ratios":{"io-ring-h":{"median":1.1,"min":1.0,"max":1.2,"ratios":[1.0,1.1,1.2]},
                                    "rtrb":{"median":0.7,"min":0.6,"max":0.8,"ratios":[0.6,0.7,0.8]}}}),
            json!({"impl":"rtrb","placement":"threads","mode":"stream","batch":"chunk",
                   "msg_bytes":112,"capacity":512,"msgs_per_s":3e6,"paired_ratios":null}),
        ];
        let rows = extract("ringbench", 1, &lines);
        assert_eq!(rows.len(), 2);
        let io = rows
            .iter()
            .find(|r| r.reference == "io-ring-h")
            .expect("io");
        assert_eq!(io.threshold, Some(1.0));
        assert_eq!(io.meets(io.median), Some(true));
        assert_eq!(io.case, "stream chunk 112 B cap 512*");
        let rt = rows.iter().find(|r| r.reference == "rtrb").expect("rtrb");
        assert_eq!((rt.threshold, rt.median), (Some(0.8), 0.7));
        assert_eq!(rt.reference_value, Some(3e6));
        assert_eq!(rt.meets(rt.median), Some(false));
    }

    #[test]
    fn test_netbench_and_http_rows_use_paired_samples() {
        let lines = vec![
            json!({"imp":"veth","load":"tcp-tx","unit":"bits/s","median":2e10}),
            json!({"imp":"pv-netfront","load":"tcp-tx","unit":"bits/s","median":1e10,
                   "paired_ratios":[0.5,0.6,0.4]}),
        ];
        let rows = extract("netbench", 2, &lines);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].median, rows[0].min, rows[0].max), (0.5, 0.4, 0.6));
        assert_eq!((rows[0].run, rows[0].reference_value), (2, Some(2e10)));
        let http = vec![
            json!({"imp":"pv-python","load":"http-get","samples":[100.0,200.0],"median":150.0,"bytes":5}),
            json!({"imp":"pvhvm-smoltcp","load":"http-get","samples":[50.0,20.0],"median":35.0,"bytes":5}),
        ];
        let rows = extract("netbench-http", 1, &http);
        assert_eq!(rows[0].samples, vec![0.5, 0.1]);
        assert_eq!(rows[0].meets(rows[0].median), Some(false));
    }

    #[test]
    fn test_blkbench_pairs_iops_samples_or_falls_back_to_medians() {
        let lines = vec![
            json!({"impl":"fio-native","pattern":"randread","bs":4096,"qd":32,"iops":100.0,
                   "iops_samples":[100.0,200.0]}),
            json!({"impl":"fio-guest","pattern":"randread","bs":4096,"qd":1,"iops":30.0,
                   "iops_samples":[30.0,100.0]}),
            json!({"impl":"blkfront","pattern":"randread","bs":4096,"qd":32,"iops":90.0}),
        ];
        let rows = extract("blkbench", 1, &lines);
        let g = rows.iter().find(|r| r.ours == "fio-guest").expect("guest");
        assert!(g.paired);
        assert_eq!((g.min, g.max, g.threshold), (0.3, 0.5, Some(0.5)));
        let b = rows
            .iter()
            .find(|r| r.ours == "blkfront")
            .expect("blkfront");
        assert!(!b.paired);
        assert_eq!((b.median, b.threshold, b.meets(0.1)), (0.9, None, None));
    }

    #[test]
    fn test_pvhvm_rows_and_connect_time_is_absolute() {
        let lines = vec![
            json!({"impl":"blkfront","pattern":"seqread","bs":1048576,"qd":32,"iops":100.0}),
            json!({"impl":"pvhvm","pattern":"seqread","bs":1048576,"qd":32,"iops":95.0}),
            json!({"impl":"pvhvm","metric":"xl_create_to_disk_connected_ms","median":40.0,
                   "min":38.0,"max":70.0,"samples":3}),
        ];
        let rows = extract("blkbench-pvhvm", 1, &lines);
        assert_eq!(rows.len(), 2);
        let c = rows
            .iter()
            .find(|r| r.kind == Kind::Absolute)
            .expect("connect");
        assert_eq!((c.median, c.min, c.max), (40.0, 38.0, 70.0));
        assert_eq!(c.meets(c.median), Some(true));
        assert_eq!(c.meets(51.0), Some(false));
        let r = rows.iter().find(|r| r.kind == Kind::Ratio).expect("ratio");
        assert_eq!(
            (r.case.as_str(), r.median),
            ("blkfront seqread 1 MiB QD32", 0.95)
        );
    }

    #[test]
    fn test_xsbench_pairs_values_of_ours_and_c() {
        let lines = vec![
            json!({"metric":"xs-bench.pairs_per_s","server":"c-xenstored","median":10.0,"values":[10.0,20.0]}),
            json!({"metric":"xs-bench.pairs_per_s","server":"ours","median":30.0,"values":[30.0,20.0]}),
        ];
        let rows = extract("xsbench", 1, &lines);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].samples, vec![3.0, 1.0]);
        assert_eq!(rows[0].median, 2.0);
        assert_eq!(rows[0].meets(2.0), Some(true));
    }

    #[test]
    fn test_unknown_bench_or_garbage_gives_no_rows() {
        assert!(extract("nope", 1, &[json!({"impl":"xen-ring"})]).is_empty());
        assert!(extract("ringbench", 1, &[json!({"impl":"xen-ring"}), json!(3)]).is_empty());
    }
}
