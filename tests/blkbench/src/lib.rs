//! The block benchmark of the PV disk: blkfront in a PV guest against the
//! same load by `fio` (io_uring) on the backing file in Dom0, in one run.
//!
//! 1. a raw image on tmpfs (a private directory under `/dev/shm`), filled;
//! 2. for each repetition: `fio --ioengine=io_uring --direct=0` on the image
//!    for every load (the native reference; tmpfs has no O_DIRECT), then a
//!    PV guest (`xl create`, private `xen-shimd`/`xenstored`, `backendd`)
//!    running the `blkload` guest binary ([`guest`], [`blkload`]) for the
//!    same loads (it prints one JSON line per load to its console log),
//!    then optionally a guest
//!    running `fio --ioengine=psync --direct=1` on its `/dev/xvda` (the FUSE
//!    block file);
//! 3. a table and, with `--json`, one JSON line per implementation and
//!    load: median, min and max over the repetitions, and the ratio of the
//!    medians against `fio-native`.
//!
//! Loads: 4 KiB random read at queue depth 32, 1 MiB sequential read and
//! write at queue depth `--seq-qd`.

pub mod blkload;
mod fio;
pub mod guest;
mod host;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

pub use host::Host;

/// `blkbench`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "blkbench",
    about = "PV block benchmark: blkfront in a PV guest against fio io_uring on the backing file"
)]
pub struct Args {
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A fast run that only checks that everything works (1 repetition,
    /// short runs, small image).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds of each load.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Size of the image, MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Queue depth of the 1 MiB sequential loads.
    #[arg(long, default_value_t = 32)]
    pub seq_qd: usize,
    /// Also run fio (psync, O_DIRECT) inside the guest on /dev/xvda.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub guest_fio: bool,
    /// Seconds of each guest fio load.
    #[arg(long, default_value_t = 2.0)]
    pub guest_fio_seconds: f64,
    /// Directory of `xl`, `backendd` and `xen-pvguest` (default: next to
    /// this executable).
    #[arg(long)]
    pub libexec: Option<PathBuf>,
    /// Also run the same loads in a PVHVM guest booting this kernel
    /// (`frontend-drivers/pvhvm-kernel`; needs `/dev/kvm` and `xen-vmm` in
    /// the libexec directory): rows `pvhvm` (with `ratio_pv`, against the PV
    /// guest's `blkfront`), the `xl create` to disk Connected time, and the
    /// full-virtualization comparison (`fv-pio` against `pvhvm-qd1`).
    #[arg(long)]
    pub pvhvm_kernel: Option<PathBuf>,
    /// Only these loads (comma-separated: randread, randwrite, seqread,
    /// seqwrite; default: all but randwrite, which `--rbd` adds).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip fio in Dom0 (for profiling the guest path alone; no ratios).
    #[arg(long)]
    pub no_native: bool,
    /// The disk is a Ceph RBD image on a one-node cluster of this run
    /// (`xen_testhost::ceph`) instead of a tmpfs file; the reference is
    /// `fio --ioengine=rbd` on the same image (`fio-rbd` rows), and `rbd
    /// bench` rows are added.
    #[arg(long)]
    pub rbd: bool,
    /// librbd's cache (`rbd_cache`) for every RBD client of the run, so
    /// that the rows compare the same settings: blkback's target gets
    /// `:rbd_cache=`, fio's rbd engine a configuration file with `rbd
    /// cache =` under `[client]`, `rbd bench` `--rbd_cache=`. false (the
    /// default) is blkback's own default, QEMU's `cache=none`: a write
    /// completes when the OSD has it. librbd's default is true, whose
    /// `writearound` policy answers a write before the OSD has it (up to
    /// `rbd_cache_max_dirty` bytes): fio's 4 KiB QD32 random writes then
    /// complete in about 0.6 ms at the median instead of 6-12 ms.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub rbd_cache: bool,
    /// Extra arguments of the `blkload` guest (e.g. `--blkload-copy`,
    /// `--poll-us 0`).
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    pub blkload_args: String,
}

/// One load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// `randread`, `seqread` or `seqwrite`.
    pub pattern: &'static str,
    /// I/O size in bytes.
    pub bs: usize,
    /// I/Os in flight.
    pub qd: usize,
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// I/Os per second.
    pub iops: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Median latency.
    pub p50_ns: u64,
    /// 99th percentile latency.
    pub p99_ns: u64,
}

/// Median, min and max of a non-empty series (`None` if empty).
pub use xen_testhost::stats::spread;

/// One result row: an implementation on a load over the repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `fio-native`, `blkfront`, `fio-guest`, `pvhvm`, `pvhvm-qd1` or
    /// `fv-pio`.
    pub imp: &'static str,
    /// The load.
    pub load: Load,
    /// One sample per repetition.
    pub samples: Vec<Sample>,
}

impl Row {
    fn med(&self, f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
        let v: Vec<f64> = self.samples.iter().map(f).collect();
        spread(&v).unwrap_or((0.0, 0.0, 0.0))
    }

    /// The row as one JSON object; `reference` is fio-native's row of the
    /// same load.
    pub fn to_json(&self, reference: Option<&Row>) -> serde_json::Value {
        let (iops, iops_min, iops_max) = self.med(|s| s.iops);
        let (bw, bw_min, bw_max) = self.med(|s| s.bytes_per_s);
        let (p50, _, _) = self.med(|s| s.p50_ns as f64);
        let (p99, _, _) = self.med(|s| s.p99_ns as f64);
        let ratio = reference.and_then(|r| {
            let (ri, _, _) = r.med(|s| s.iops);
            (ri > 0.0).then(|| iops / ri)
        });
        serde_json::json!({
            "impl": self.imp,
            "pattern": self.load.pattern,
            "bs": self.load.bs,
            "qd": self.load.qd,
            "reps": self.samples.len(),
            "iops": iops,
            "iops_min": iops_min,
            "iops_max": iops_max,
            "iops_samples": self.samples.iter().map(|s| s.iops).collect::<Vec<_>>(),
            "bytes_per_s": bw,
            "bytes_per_s_min": bw_min,
            "bytes_per_s_max": bw_max,
            "p50_ns": p50 as u64,
            "p99_ns": p99 as u64,
            "ratio": ratio,
        })
    }
}

fn loads(seq_qd: usize) -> [Load; 4] {
    [
        Load {
            pattern: "randread",
            bs: 4096,
            qd: 32,
        },
        Load {
            pattern: "randwrite",
            bs: 4096,
            qd: 32,
        },
        Load {
            pattern: "seqread",
            bs: 1 << 20,
            qd: seq_qd,
        },
        Load {
            pattern: "seqwrite",
            bs: 1 << 20,
            qd: seq_qd,
        },
    ]
}

/// Parses the guest's `blkload` JSON lines from its console log.
pub fn parse_blkload(log: &str) -> Result<Vec<(String, Sample)>> {
    let mut v = Vec::new();
    for line in log.lines().filter(|l| l.starts_with("{\"blkload\"")) {
        let j: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad blkload line {line}"))?;
        let f = |k: &str| {
            j[k].as_f64()
                .with_context(|| format!("{k} missing in {line}"))
        };
        v.push((
            j["pattern"].as_str().unwrap_or_default().to_owned(),
            Sample {
                iops: f("iops")?,
                bytes_per_s: f("bytes_per_s")?,
                p50_ns: f("p50_ns")? as u64,
                p99_ns: f("p99_ns")? as u64,
            },
        ));
    }
    Ok(v)
}

fn make_image(path: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).context("fill the image")?;
        left -= n as u64;
    }
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(1))
}

/// Runs the benchmark (see the [crate docs](crate)) and returns the rows.
pub fn measure(args: &Args) -> Result<Vec<Row>> {
    if !nix::unistd::geteuid().is_root() {
        bail!("blkbench needs root (the shim's guests, FUSE in the guest): run it as root");
    }
    let (reps, seconds, size_mib, gfio_secs) = if args.quick {
        (1, 0.3, 64, 0.3)
    } else {
        (
            args.reps.max(1),
            args.seconds,
            args.size_mib.max(8),
            args.guest_fio_seconds,
        )
    };
    let libexec = match &args.libexec {
        Some(d) => d.clone(),
        None => xen_testhost::exe_dir()?,
    };
    // randwrite is measured by default only on RBD (tmpfs's figure is
    // the randread one's); `--only randwrite` asks for it anywhere.
    let loads: Vec<Load> = loads(args.seq_qd.max(1))
        .into_iter()
        .filter(|l| {
            if args.only.is_empty() {
                l.pattern != "randwrite" || args.rbd
            } else {
                args.only.iter().any(|o| o == l.pattern)
            }
        })
        .collect();
    let mut host = Host::start(&libexec)?;
    // The image lives on tmpfs: a private directory under /dev/shm.
    let shm = tempfile::Builder::new()
        .prefix("blkbench-img-")
        .tempdir_in("/dev/shm")
        .context("create a directory in /dev/shm")?;
    let image = shm.path().join("disk.img");
    make_image(&image, size_mib << 20)?;
    // RBD: the image imported into a cluster of this run.
    let ceph = if args.rbd {
        if args.pvhvm_kernel.is_some() {
            bail!("--rbd and --pvhvm-kernel cannot be combined");
        }
        // Paged objects: the cluster's rates do not drift as random writes
        // split memstore's objects (`start_paged`).
        let c = xen_testhost::ceph::CephCluster::start_paged((size_mib << 20) * 3 + (256 << 20))?;
        c.rbd(&["import", image.to_str().context("utf-8 path")?, "rbd/bench"])?;
        std::fs::remove_file(&image).context("remove the imported file")?;
        // fio's rbd engine has no cache option: its configuration file.
        let conf = std::fs::read_to_string(c.conf()).context("read the cluster's ceph.conf")?;
        let client = c.dir().join("client.conf");
        std::fs::write(
            &client,
            format!("{conf}\n[client]\nrbd cache = {}\n", args.rbd_cache),
        )
        .context("write the clients' ceph.conf")?;
        Some((c, client))
    } else {
        None
    };
    let disk = match &ceph {
        Some((c, _)) => format!(
            "format=raw, vdev=xvda, access=rw, backendtype=qdisk, \
             target=rbd:rbd/bench:conf={}:rbd_cache={}",
            c.conf().display(),
            args.rbd_cache
        ),
        None => format!(
            "format=raw, vdev=xvda, access=rw, target={}",
            image.display()
        ),
    };
    let reference_imp = if ceph.is_some() {
        "fio-rbd"
    } else {
        "fio-native"
    };
    let mut native: Vec<Row> = loads
        .iter()
        .map(|&load| Row {
            imp: reference_imp,
            load,
            samples: vec![],
        })
        .collect();
    let mut rbd_bench: Vec<Row> = loads
        .iter()
        .map(|&load| Row {
            imp: "rbd-bench",
            load,
            samples: vec![],
        })
        .collect();
    let mut front: Vec<Row> = loads
        .iter()
        .map(|&load| Row {
            imp: "blkfront",
            load,
            samples: vec![],
        })
        .collect();
    let mut gfio: Vec<Row> = loads
        .iter()
        .map(|&load| Row {
            imp: "fio-guest",
            load: Load { qd: 1, ..load },
            samples: vec![],
        })
        .collect();
    let limit = secs(60.0 + 3.0 * seconds.max(gfio_secs) * 4.0);
    for rep in 0..reps {
        // The references and the guest take turns going first, so that a
        // cluster or host whose rates drift within the run favours neither.
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for references in order {
            if references {
                for (i, load) in loads.iter().enumerate() {
                    if args.no_native {
                        break;
                    }
                    match &ceph {
                        Some((c, client)) => {
                            let a = fio::rbd_args("rbd", "bench", load, secs(seconds));
                            native[i].samples.push(fio::run_ceph(&a, load.bs, client)?);
                            rbd_bench[i].samples.push(rbd_bench_sample(
                                c,
                                load,
                                secs(seconds),
                                args.rbd_cache,
                            )?);
                        }
                        None => {
                            let a = fio::args(&image, load, secs(seconds), "io_uring", false);
                            native[i].samples.push(fio::run(&a, load.bs)?);
                        }
                    }
                }
            } else {
                // blkload runs every load of one block size in one guest.
                for bs in [4096usize, 1 << 20] {
                    let of_bs: Vec<&Load> = loads.iter().filter(|l| l.bs == bs).collect();
                    if of_bs.is_empty() {
                        continue;
                    }
                    let patterns: Vec<&str> = of_bs.iter().map(|l| l.pattern).collect();
                    let qd = of_bs.first().map_or(32, |l| l.qd);
                    let name = format!("blkbench{}r{rep}b{bs}", std::process::id());
                    let extra = format!(
                        "--timeout-secs 30 --pattern {} --bs {bs} --qd {qd} --seconds {seconds} {}",
                        patterns.join(","),
                        args.blkload_args
                    );
                    let blkload = host.libexec.join("blkload");
                    let (log, connected) =
                        host.run_guest_timed(&name, &disk, Some(&blkload), &extra, limit)?;
                    record_guest("pv", connected, &log, &of_bs, &mut front)?;
                }
            }
        }
        if args.guest_fio {
            let script = host.dir().join(format!("fio-r{rep}.sh"));
            let mut body = String::from("#!/bin/sh\nset -e\n");
            for (i, load) in loads.iter().enumerate() {
                let a = fio::args(
                    Path::new("/dev/xvda"),
                    &Load { qd: 1, ..*load },
                    secs(gfio_secs),
                    "psync",
                    true,
                );
                let out = host.dir().join(format!("fio-r{rep}-{i}.json"));
                body.push_str(&format!("fio {} > {}\n", a.join(" "), out.display()));
            }
            body.push_str("echo guest-fio-done\n");
            std::fs::write(&script, body).context("write the guest's fio script")?;
            let st = std::process::Command::new("chmod")
                .arg("0755")
                .arg(&script)
                .status()
                .context("chmod")?;
            if !st.success() {
                bail!("chmod of the guest script failed");
            }
            let name = format!("blkbench{}r{rep}fio", std::process::id());
            let extra = format!("pvguest.timeout=30 init={}", script.display());
            let log = host.run_guest_timed(&name, &disk, None, &extra, limit)?.0;
            if !log.contains("guest-fio-done") {
                bail!("fio in the guest failed; its log:\n{log}");
            }
            for (i, load) in loads.iter().enumerate() {
                let out = host.dir().join(format!("fio-r{rep}-{i}.json"));
                let text = std::fs::read_to_string(&out)
                    .with_context(|| format!("read {}", out.display()))?;
                gfio[i].samples.push(fio::parse(&text, load.bs)?);
            }
        }
    }
    let mut rows = if args.no_native { Vec::new() } else { native };
    if ceph.is_some() && !args.no_native {
        rows.append(&mut rbd_bench);
    }
    rows.append(&mut front);
    if args.guest_fio {
        rows.append(&mut gfio);
    }
    if let Some(kernel) = &args.pvhvm_kernel {
        rows.append(&mut measure_pvhvm(
            &mut host, kernel, &libexec, &image, &loads, reps, seconds, limit,
        )?);
    }
    Ok(rows)
}

/// Takes a `blkload` guest's results: its `xl create` to disk-Connected
/// time into [`CONNECT_TIMES`] (as `kind`), and a sample for each load of
/// `loads` into its row of `rows`.
fn record_guest(
    kind: &'static str,
    connected: Option<Duration>,
    log: &str,
    loads: &[&Load],
    rows: &mut [Row],
) -> Result<()> {
    if let (Some(c), Ok(mut t)) = (connected, CONNECT_TIMES.lock()) {
        t.push((kind, c.as_secs_f64()));
    }
    let got = parse_blkload(log)?;
    for l in loads {
        let s = got
            .iter()
            .find(|(p, _)| p == l.pattern)
            .map(|(_, s)| *s)
            .with_context(|| {
                format!(
                    "the {kind} guest printed no {} result; its log:\n{log}",
                    l.pattern
                )
            })?;
        if let Some(r) = rows.iter_mut().find(|r| r.load == **l) {
            r.samples.push(s);
        }
    }
    Ok(())
}

/// The `xl create` to disk-Connected times of the guests, seconds, with
/// the guest's kind (`pv`, `pvhvm`).
pub static CONNECT_TIMES: std::sync::Mutex<Vec<(&'static str, f64)>> =
    std::sync::Mutex::new(Vec::new());

/// Parses the PVHVM guest's `fvcompare` lines: `(path, op, sample)`.
pub fn parse_fvcompare(log: &str) -> Result<Vec<(String, String, Sample)>> {
    let mut v = Vec::new();
    for line in log.lines().filter(|l| l.starts_with("{\"fvcompare\"")) {
        let j: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad fvcompare line {line}"))?;
        v.push((
            j["path"].as_str().unwrap_or_default().to_owned(),
            j["op"].as_str().unwrap_or_default().to_owned(),
            Sample {
                iops: j["iops"].as_f64().unwrap_or(0.0),
                bytes_per_s: j["bytes_per_s"].as_f64().unwrap_or(0.0),
                p50_ns: 0,
                p99_ns: 0,
            },
        ));
    }
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
fn measure_pvhvm(
    host: &mut Host,
    kernel: &Path,
    libexec: &Path,
    image: &Path,
    loads: &[Load],
    reps: usize,
    seconds: f64,
    limit: Duration,
) -> Result<Vec<Row>> {
    if !libexec.join("xen-vmm").is_file() {
        bail!(
            "xen-vmm is missing in {}: cargo build --release -p xen-vmm",
            libexec.display()
        );
    }
    if !kernel.is_file() {
        bail!("the PVHVM kernel {} does not exist", kernel.display());
    }
    // The guest configs live in a temporary directory: an absolute path.
    let kernel =
        &std::fs::canonicalize(kernel).with_context(|| format!("resolve {}", kernel.display()))?;
    let mut rows: Vec<Row> = loads
        .iter()
        .map(|&load| Row {
            imp: "pvhvm",
            load,
            samples: vec![],
        })
        .collect();
    let fv_load = |pattern| Load {
        pattern,
        bs: 4096,
        qd: 1,
    };
    let mut fv: Vec<Row> = ["fv-pio", "pvhvm-qd1"]
        .iter()
        .flat_map(|&imp| {
            ["seqwrite", "seqread"].map(|p| Row {
                imp,
                load: fv_load(p),
                samples: vec![],
            })
        })
        .collect();
    let fv_image = image.with_file_name("fv.img");
    make_image(&fv_image, 16 << 20)?;
    let secs_u = seconds.ceil().max(1.0) as u64;
    for rep in 0..reps {
        for bs in [4096usize, 1 << 20] {
            let of_bs: Vec<&Load> = loads.iter().filter(|l| l.bs == bs).collect();
            let patterns: Vec<&str> = of_bs.iter().map(|l| l.pattern).collect();
            let qd = of_bs.first().map_or(32, |l| l.qd);
            let name = format!("blkbench{}r{rep}h{bs}", std::process::id());
            let extra = format!(
                "blkload pattern={} bs={bs} qd={qd} secs={secs_u}",
                patterns.join(",")
            );
            let (log, connected) =
                host.run_pvhvm_guest(&name, kernel, image, None, &extra, limit)?;
            record_guest("pvhvm", connected, &log, &of_bs, &mut rows)?;
        }
        let name = format!("blkbench{}r{rep}fv", std::process::id());
        let extra = format!("fvcompare bs=4096 secs={}", secs_u.min(2));
        let (log, _) =
            host.run_pvhvm_guest(&name, kernel, image, Some(&fv_image), &extra, limit)?;
        for (path, op, s) in parse_fvcompare(&log)? {
            let imp = if path == "pio" { "fv-pio" } else { "pvhvm-qd1" };
            let pattern = if op == "write" { "seqwrite" } else { "seqread" };
            if let Some(r) = fv
                .iter_mut()
                .find(|r| r.imp == imp && r.load.pattern == pattern)
            {
                r.samples.push(s);
            }
        }
    }
    rows.append(&mut fv);
    Ok(rows)
}

/// The reference row of `row`'s load (`fio-native`, or `fio-rbd` with
/// `--rbd`).
fn reference<'r>(rows: &'r [Row], row: &Row) -> Option<&'r Row> {
    rows.iter().find(|r| {
        (r.imp == "fio-native" || r.imp == "fio-rbd")
            && r.load.pattern == row.load.pattern
            && r.load.bs == row.load.bs
    })
}

/// `rbd bench` on the image for `load` (its threads as the queue depth),
/// about `runtime` long (`--io-total` from a first guess of the rate),
/// with librbd's cache on or off.
fn rbd_bench_sample(
    c: &xen_testhost::ceph::CephCluster,
    load: &Load,
    runtime: Duration,
    cache: bool,
) -> Result<Sample> {
    let (io_type, pattern) = match load.pattern {
        "randread" => ("read", "rand"),
        "randwrite" => ("write", "rand"),
        "seqread" => ("read", "seq"),
        _ => ("write", "seq"),
    };
    // Rough rates of the one-node cluster (README of tests/ceph-one.sh's
    // origin): 10k IOPS at 4 KiB, 1 GB/s at 1 MiB.
    let rate = if load.bs <= 4096 {
        10_000.0 * load.bs as f64
    } else {
        1e9
    };
    let total = ((rate * runtime.as_secs_f64()) as u64).max(load.bs as u64 * 64);
    let t0 = std::time::Instant::now();
    let cache = format!("--rbd_cache={cache}");
    let out = c.rbd(&[
        &cache,
        "bench",
        "--io-type",
        io_type,
        "--io-pattern",
        pattern,
        "--io-size",
        &load.bs.to_string(),
        "--io-threads",
        &load.qd.to_string(),
        "--io-total",
        &total.to_string(),
        "rbd/bench",
    ])?;
    let wall = t0.elapsed().as_secs_f64();
    parse_rbd_bench(&out, load.bs, wall)
}

/// Parses `rbd bench`'s summary line: `elapsed: S  ops: N  ops/sec: X
/// bytes/sec: Y` (`wall`: the fallback duration).
pub fn parse_rbd_bench(text: &str, bs: usize, wall: f64) -> Result<Sample> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("elapsed:"))
        .with_context(|| format!("no summary in rbd bench's output:\n{text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let val = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let iops = match val("ops/sec:") {
        Some(x) => x,
        None => val("ops:").context("rbd bench printed no ops")? / wall.max(1e-9),
    };
    // `bytes/sec: 38.9 MiB/s`: the rate in its unit; iops x bs is exact.
    Ok(Sample {
        iops,
        bytes_per_s: iops * bs as f64,
        p50_ns: 0,
        p99_ns: 0,
    })
}

/// The JSON of `row`: its ratio against fio-native, and for the PVHVM
/// rows `ratio_pv`: against the PV guest's blkfront on the same load
/// (`pvhvm`), or against the PVHVM blkfront one I/O at a time (`fv-pio`).
fn row_json(rows: &[Row], row: &Row) -> serde_json::Value {
    let mut j = row.to_json(reference(rows, row));
    let other = match row.imp {
        "pvhvm" => rows
            .iter()
            .find(|r| r.imp == "blkfront" && r.load == row.load),
        "fv-pio" => rows
            .iter()
            .find(|r| r.imp == "pvhvm-qd1" && r.load.pattern == row.load.pattern),
        _ => None,
    };
    if let Some(o) = other {
        let mine = j["iops"].as_f64().unwrap_or(0.0);
        let theirs = o.to_json(None)["iops"].as_f64().unwrap_or(0.0);
        let key = if row.imp == "pvhvm" {
            "ratio_pv"
        } else {
            "ratio_blkfront"
        };
        j[key] = serde_json::json!((theirs > 0.0).then(|| mine / theirs));
    }
    j
}

/// One line per kind of guest: the `xl create` to disk-Connected times.
fn connect_json() -> Vec<serde_json::Value> {
    let Ok(all) = CONNECT_TIMES.lock().map(|t| t.clone()) else {
        return Vec::new();
    };
    ["pv", "pvhvm"]
        .iter()
        .filter_map(|&kind| {
            let t: Vec<f64> = all
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, s)| *s)
                .collect();
            let (med, min, max) = spread(&t)?;
            Some(serde_json::json!({
                "impl": kind,
                "metric": "xl_create_to_disk_connected_ms",
                "samples": t.len(),
                "median": med * 1e3,
                "min": min * 1e3,
                "max": max * 1e3,
            }))
        })
        .collect()
}

/// Runs the benchmark and prints the table (or the JSON lines).
pub fn run(args: &Args) -> Result<()> {
    let rows = measure(args)?;
    if args.json {
        for r in &rows {
            println!("{}", row_json(&rows, r));
        }
        for c in connect_json() {
            println!("{c}");
        }
        return Ok(());
    }
    println!(
        "{:<11} {:<9} {:>8} {:>3} {:>12} {:>22} {:>11} {:>9} {:>9} {:>6}",
        "impl", "pattern", "bs", "qd", "iops", "(min..max)", "MB/s", "p50_us", "p99_us", "ratio"
    );
    for r in &rows {
        let j = row_json(&rows, r);
        let g = |k: &str| j[k].as_f64().unwrap_or(0.0);
        println!(
            "{:<11} {:<9} {:>8} {:>3} {:>12.0} {:>22} {:>11.1} {:>9.1} {:>9.1} {:>6}",
            r.imp,
            r.load.pattern,
            r.load.bs,
            r.load.qd,
            g("iops"),
            format!("({:.0}..{:.0})", g("iops_min"), g("iops_max")),
            g("bytes_per_s") / 1e6,
            g("p50_ns") / 1e3,
            g("p99_ns") / 1e3,
            j["ratio"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.3}")),
        );
        for k in ["ratio_pv", "ratio_blkfront"] {
            if let Some(x) = j[k].as_f64() {
                println!("{:>11} {k} = {x:.3}", "");
            }
        }
    }
    for c in connect_json() {
        println!(
            "{}: xl create to disk Connected: median {:.1} ms ({:.1}..{:.1}) over {} guests",
            c["impl"].as_str().unwrap_or("?"),
            c["median"].as_f64().unwrap_or(0.0),
            c["min"].as_f64().unwrap_or(0.0),
            c["max"].as_f64().unwrap_or(0.0),
            c["samples"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_spread_of_odd_and_even_series_gives_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn test_parse_blkload_lines_among_guest_log_are_found() {
        // Arrange
        let log = "pvguest ready domid=1\n\
                   {\"blkload\":1,\"pattern\":\"randread\",\"iops\":10.0,\"bytes_per_s\":40960.0,\"p50_ns\":5,\"p99_ns\":9}\n\
                   pvguest shutdown reason=poweroff\n";
        // Act
        let v = parse_blkload(log).expect("parses");
        // Assert
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, "randread");
        assert_eq!(v[0].1.p99_ns, 9);
    }

    #[test]
    fn test_parse_rbd_bench_summary_line() {
        let out = "bench  type read io_size 4096 io_threads 32 bytes 40960000 pattern random\n\
                     SEC       OPS   OPS/SEC   BYTES/SEC\n\
                       1      9000   9000.50  36.9 MiB/s\n\
                   elapsed: 1   ops: 10000   ops/sec: 9500.25   bytes/sec: 38.9 MiB/s\n";
        let s = parse_rbd_bench(out, 4096, 1.0).expect("parses");
        assert_eq!(s.iops, 9500.25);
        assert_eq!(s.bytes_per_s, 9500.25 * 4096.0);
        assert!(parse_rbd_bench("rbd: error", 4096, 1.0).is_err());
    }

    #[test]
    fn test_row_json_ratio_is_against_the_reference_median() {
        let load = loads(32)[0];
        let s = |iops| Sample {
            iops,
            bytes_per_s: iops * 4096.0,
            p50_ns: 1,
            p99_ns: 2,
        };
        let native = Row {
            imp: "fio-native",
            load,
            samples: vec![s(100.0), s(200.0), s(300.0)],
        };
        let front = Row {
            imp: "blkfront",
            load,
            samples: vec![s(50.0), s(100.0), s(150.0)],
        };
        let j = front.to_json(Some(&native));
        assert_eq!(j["ratio"].as_f64(), Some(0.5));
        assert_eq!(j["iops_min"].as_f64(), Some(50.0));
    }
}
