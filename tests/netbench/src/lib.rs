//! The network benchmark of the PV NIC: `iperf3` between a PV guest and
//! Dom0 through netfront, netback's TAP and a bridge, against `iperf3`
//! across a plain veth pair between two namespaces, in one run.
//!
//! 1. the reference: two fresh network namespaces joined by a veth pair;
//!    `iperf3 -s` in one, the client in the other: TCP one way (`tcp-tx`),
//!    the other way (`tcp-rx`, `-R`), and 64-byte UDP packets at full rate
//!    (`udp64`, `-u -l 64 -b 0`), `--reps` times each;
//! 2. the PV NIC: a private Dom0 (`xen-shimd`, `xenstored`, `backendd`
//!    started inside a fresh "Dom0" namespace with its bridge and address),
//!    one PV guest (`xl create` with a `vif`) whose init runs the same
//!    iperf3 clients against Dom0's server (`tcp-tx` is guest to Dom0);
//! 3. a table and, with `--json`, one JSON line per implementation and
//!    load: median, min and max over the repetitions, the ratio of the
//!    medians against `veth`, and the ratio of each PV sample to the veth
//!    sample taken next to it (`paired_ratios`, and their median).
//!
//! The two are measured interleaved: the guest's init blocks on a FIFO
//! before each client and the run alternates one veth sample and one PV
//! sample (veth first in even repetitions, PV first in odd ones), so that
//! drifts of the machine's load hit both alike.
//!
//! All addresses (10.78.0.0/24, 10.79.0.0/24) exist only in the
//! namespaces the run creates; they are deleted at the end.

mod host;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

pub use host::Host;
use xen_testhost::net::{Daemon as Bg, Netns};

/// `netbench`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "netbench",
    about = "PV network benchmark: iperf3 through netfront/netback against a veth pair"
)]
pub struct Args {
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// A fast run that only checks that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each load.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// The loads to run (comma-separated; default all of [`LOADS`]).
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<String>,
    /// Directory of `xl`, `backendd` and `xen-pvguest` (default: next to
    /// this executable).
    #[arg(long)]
    pub libexec: Option<PathBuf>,
    /// Also compare HTTP downloads: `curl` of `/bytes/N` from a PVHVM
    /// guest booting this kernel (`frontend-drivers/pvhvm-kernel`'s
    /// `netserve`: netfront + smoltcp; needs `/dev/kvm` and `xen-vmm` in
    /// the libexec directory) against the same download from a PV guest
    /// (`python3 -m http.server`), both on one bridge, in the same run.
    #[arg(long)]
    pub pvhvm_kernel: Option<PathBuf>,
    /// Bytes of each HTTP download.
    #[arg(long, default_value_t = 100_000_000)]
    pub http_bytes: u64,
    /// Only the HTTP comparison (skip the iperf3 loads).
    #[arg(long)]
    pub http_only: bool,
}

/// The loads.
pub const LOADS: [&str; 3] = ["tcp-tx", "tcp-rx", "udp64"];

impl Args {
    /// The loads asked for, in [`LOADS`] order (all when none was named).
    pub fn loads(&self) -> Vec<&'static str> {
        LOADS
            .into_iter()
            .filter(|l| self.loads.is_empty() || self.loads.iter().any(|x| x == l))
            .collect()
    }
}

use xen_testhost::stats::paired_ratios;
pub use xen_testhost::stats::spread;

/// The iperf3 client arguments of a load (after `-c HOST`).
pub fn client_args(load: &str, seconds: u32) -> Vec<String> {
    let mut v = vec!["-t".to_owned(), seconds.to_string(), "-J".to_owned()];
    match load {
        "tcp-rx" => v.push("-R".into()),
        "udp64" => v.extend(["-u", "-l", "64", "-b", "0"].map(String::from)),
        _ => {}
    }
    v
}

/// The value of an iperf3 `-J` report: received bits/s (TCP) or
/// received packets/s (UDP).
pub fn parse_iperf_json(load: &str, json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 failed: {e}");
    }
    let end = &v["end"];
    if load == "udp64" {
        let s = &end["sum"];
        let packets = s["packets"].as_f64().context("end.sum.packets")?;
        let lost = s["lost_packets"].as_f64().unwrap_or(0.0);
        let secs = s["seconds"]
            .as_f64()
            .filter(|&x| x > 0.0)
            .context("end.sum.seconds")?;
        Ok((packets - lost) / secs)
    } else {
        end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("end.sum_received.bits_per_second")
    }
}

fn sh(prog: &str, args: &[&str]) -> Result<()> {
    xen_testhost::run(prog, args).map(drop)
}

fn iperf_server(ns: &Netns, bind: &str) -> Result<Bg> {
    let c = ns
        .cmd("iperf3")
        .args(["-s", "-B", bind])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Bg::new(c))
}

/// The veth reference: two namespaces joined by a veth pair, `iperf3 -s`
/// in the first.
struct Veth {
    // Field order: the server ends before its namespace goes.
    _srv: Bg,
    _a: Netns,
    b: Netns,
}

impl Veth {
    fn new() -> Result<Veth> {
        let pid = std::process::id();
        let a = Netns::new(format!("nbva{pid}"))?;
        let b = Netns::new(format!("nbvb{pid}"))?;
        sh(
            "ip",
            &[
                "link", "add", "nbv0", "netns", &a.name, "type", "veth", "peer", "name", "nbv1",
                "netns", &b.name,
            ],
        )?;
        a.ip(&["addr", "add", "10.78.0.1/24", "dev", "nbv0"])?;
        b.ip(&["addr", "add", "10.78.0.2/24", "dev", "nbv1"])?;
        a.ip(&["link", "set", "nbv0", "up"])?;
        b.ip(&["link", "set", "nbv1", "up"])?;
        let srv = iperf_server(&a, "10.78.0.1")?;
        Ok(Veth {
            _srv: srv,
            _a: a,
            b,
        })
    }

    /// One sample of `load`.
    fn sample(&self, load: &str, seconds: u32) -> Result<f64> {
        let o = self
            .b
            .cmd("iperf3")
            .args(["-c", "10.78.0.1"])
            .args(client_args(load, seconds))
            .output()
            .context("run iperf3 -c")?;
        parse_iperf_json(load, &String::from_utf8_lossy(&o.stdout))
    }
}

/// Starts `backendd` inside `ns` (its TAPs and bridges are there) as `xl`
/// would; `xl` finds it through its pid file.
fn start_backendd(host: &Host, ns: &Netns) -> Result<Bg> {
    xen_testhost::net::start_backendd_in(host, ns, &[])
}

/// `/bytes/N`'s body (the PVHVM kernel's `netserve`): byte `i` is
/// `b'a' + i % 26`.
pub fn bytes_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// One `curl` download of `url` into /dev/null from `ns`: bytes/s, after
/// checking that `want` bytes came.
fn curl_rate(ns: &Netns, url: &str, want: u64) -> Result<f64> {
    let o = ns
        .cmd("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "300",
            "-w",
            "%{size_download} %{speed_download}",
            url,
        ])
        .output()
        .context("run curl")?;
    let out = String::from_utf8_lossy(&o.stdout);
    let mut w = out.split_whitespace();
    let size: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let speed: f64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    if !o.status.success() || size != want {
        bail!(
            "curl {url}: {} ({size} of {want} bytes) {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(speed)
}

/// The HTTP comparison: a PVHVM guest (`netserve`) and a PV guest
/// (`python3 -m http.server` over the same `/bytes/N` content) on one
/// bridge; `reps` downloads from each, alternating.
fn measure_http(
    args: &Args,
    libexec: &Path,
    kernel: &Path,
    reps: usize,
) -> Result<Vec<(String, Vec<f64>)>> {
    if !libexec.join("xen-vmm").exists() {
        bail!(
            "{} is missing: cargo build --release -p xen-vmm (or pass --libexec)",
            libexec.join("xen-vmm").display()
        );
    }
    let kernel = std::fs::canonicalize(kernel)
        .with_context(|| format!("the PVHVM kernel {}", kernel.display()))?;
    let pid = std::process::id();
    let mut host = Host::start(libexec)?;
    let dom0 = Netns::new(format!("nbh{pid}"))?;
    let br = format!("nbh{}", pid % 1_000_000);
    dom0.ip(&["link", "add", &br, "type", "bridge"])?;
    dom0.ip(&["addr", "add", "10.79.1.1/24", "dev", &br])?;
    dom0.ip(&["link", "set", &br, "up"])?;
    let _bd = start_backendd(&host, &dom0)?;
    let n = args.http_bytes;
    let www = host.dir().join("www");
    std::fs::create_dir_all(www.join("bytes")).context("www dir")?;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(www.join("bytes").join(n.to_string())).context("www file")?,
        );
        let block = bytes_body(26 * 4096);
        let mut left = n;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            f.write_all(&block[..k]).context("write the www file")?;
            left -= k as u64;
        }
        f.flush().context("flush the www file")?;
    }
    let init = host.dir().join("http.sh");
    std::fs::write(
        &init,
        format!(
            "#!/bin/sh
echo http-starting
exec python3 -m http.server 80 --bind 10.79.1.3 --directory {}
",
            www.display()
        ),
    )
    .context("write the init script")?;
    sh("chmod", &["0755", init.to_str().context("utf-8")?])?;
    let (pv, hvm) = (format!("nbhpv{pid}"), format!("nbhvm{pid}"));
    host.create_guest(
        &pv,
        &format!(
            "name = \"{pv}\"\ntype = 'pv'\nmemory = 128\nvcpus = 2\n\
             extra = '{}'\n\
             vif = [ 'mac=00:16:3e:4e:43:03, bridge={br}, ip=10.79.1.3' ]\n",
            xen_testhost::pv_cmdline(&init)
        ),
    )?;
    host.create_guest(
        &hvm,
        &format!(
            "name = \"{hvm}\"\ntype = 'pvh'\nmemory = 64\nvcpus = 1\nkernel = \"{}\"\n\
             extra = 'netserve ip=10.79.1.2/24'\n\
             vif = [ 'mac=00:16:3e:4e:43:02, bridge={br}' ]\n",
            kernel.display()
        ),
    )?;
    host.wait_log(&hvm, "netserve: 10.79.1.2/24 up", Duration::from_secs(30))?;
    // python3's server is up once a small download works.
    let small = format!("http://10.79.1.3/bytes/{n}");
    let mut up = false;
    for _ in 0..100 {
        let o = dom0
            .cmd("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-r",
                "0-0",
                "--max-time",
                "2",
                &small,
            ])
            .output()
            .context("run curl")?;
        if o.status.success() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !up {
        bail!(
            "the PV guest's HTTP server does not answer; its log:\n{}",
            host.guest_log(&pv)
        );
    }
    let mut rows = vec![
        ("pv-python".to_owned(), Vec::new()),
        ("pvhvm-smoltcp".to_owned(), Vec::new()),
    ];
    for _ in 0..reps {
        for (i, ip) in ["10.79.1.3", "10.79.1.2"].iter().enumerate() {
            let r = curl_rate(&dom0, &format!("http://{ip}/bytes/{n}"), n)?;
            rows[i].1.push(r);
        }
    }
    Ok(rows)
}

/// Samples per load of the veth pair and of the PV NIC, interleaved: the
/// guest runs each of its iperf3 clients when the run tells it to (a line
/// in a FIFO it blocks on), so that a veth sample and a PV sample alternate
/// (veth first in even repetitions, PV first in odd ones) and drifts of the
/// machine's load hit both alike.
type Samples = Vec<(String, Vec<f64>)>;

fn measure_both(args: &Args, libexec: &Path, reps: usize) -> Result<(Samples, Samples)> {
    let pid = std::process::id();
    let veth = Veth::new()?;
    let mut host = Host::start(libexec)?;
    let dom0 = Netns::new(format!("nbd{pid}"))?;
    let br = format!("nbr{}", pid % 1_000_000);
    dom0.ip(&["link", "add", &br, "type", "bridge"])?;
    dom0.ip(&["addr", "add", "10.79.0.1/24", "dev", &br])?;
    dom0.ip(&["link", "set", &br, "up"])?;
    let _bd = start_backendd(&host, &dom0)?;
    let _srv = iperf_server(&dom0, "10.79.0.1")?;
    let dir = host.dir().to_path_buf();
    // The guest blocks reading this FIFO (no CPU) until the run writes
    // a line for its next sample.
    let go = dir.join("go");
    sh("mkfifo", &[go.to_str().context("utf-8")?])?;
    let mut script = String::from("#!/bin/sh\necho netbench-ready\n");
    let mut n = 0usize;
    for load in args.loads() {
        for _ in 0..reps {
            script.push_str(&format!(
                "read go < {dir}/go\n\
                 iperf3 -c 10.79.0.1 {} > {dir}/r.json; \
                 python3 -c 'import sys; print(\"netbench {load}\", open(sys.argv[1]).read().replace(chr(10), \" \"))' {dir}/r.json\n\
                 echo netbench-rep {n} done\n",
                client_args(load, args.seconds).join(" "),
                dir = dir.display()
            ));
            n += 1;
        }
    }
    let init = dir.join("init.sh");
    std::fs::write(&init, script).context("write the init script")?;
    sh("chmod", &["0755", init.to_str().context("utf-8")?])?;
    let name = format!("netbench{pid}");
    let cfg = format!(
        // vcpus = 2: the guest's cgroup gets both host CPUs, as the veth reference has.
        "name = \"{name}\"\ntype = 'pv'\nmemory = 128\nvcpus = 2\n\
         extra = '{}'\n\
         vif = [ 'mac=00:16:3e:4e:42:01, bridge={br}, ip=10.79.0.2' ]\n",
        xen_testhost::pv_cmdline(&init)
    );
    host.create_guest(&name, &cfg)?;
    let fails = ["frontend-failed", "pvguest shutdown"];
    let wait = |needle: &str, limit: Duration| -> Result<String> {
        let (log, which) = host.wait_log_any(
            &name,
            &[needle, fails[0], fails[1]],
            limit,
            Duration::from_millis(20),
        )?;
        if which != 0 {
            bail!("the guest stopped before {needle:?}; its log:\n{log}");
        }
        Ok(log)
    };
    wait("netbench-ready", Duration::from_secs(30))?;
    let limit = Duration::from_secs(u64::from(args.seconds) * 3 + 30);
    let mut vout: Samples = Vec::new();
    let mut n = 0usize;
    for load in args.loads() {
        let mut v = Vec::new();
        for rep in 0..reps {
            let pv_first = rep % 2 == 1;
            if !pv_first {
                v.push(veth.sample(load, args.seconds)?);
                std::thread::sleep(Duration::from_millis(500));
            }
            std::fs::write(&go, format!("{n}\n")).context("write the guest's trigger FIFO")?;
            wait(&format!("netbench-rep {n} done"), limit)?;
            std::thread::sleep(Duration::from_millis(500));
            if pv_first {
                v.push(veth.sample(load, args.seconds)?);
                std::thread::sleep(Duration::from_millis(500));
            }
            n += 1;
        }
        vout.push((load.to_owned(), v));
    }
    let glog = host.guest_log(&name);
    host.destroy_guests();
    let mut out: Samples = args
        .loads()
        .iter()
        .map(|l| ((*l).to_owned(), Vec::new()))
        .collect();
    for line in glog.lines() {
        let Some(rest) = line.strip_prefix("netbench ") else {
            continue;
        };
        let Some((load, json)) = rest.split_once(' ') else {
            continue;
        };
        let v = parse_iperf_json(load, json)
            .with_context(|| format!("the guest's {load} run: {glog}"))?;
        if let Some(e) = out.iter_mut().find(|(l, _)| l == load) {
            e.1.push(v);
        }
    }
    for (l, v) in &out {
        if v.len() != reps {
            bail!(
                "the guest reported {} of {reps} {l} runs; its log:\n{glog}",
                v.len()
            );
        }
    }
    Ok((vout, out))
}

/// The 1-minute load average (other work on the machine skews the figures).
pub fn loadavg() -> f64 {
    xen_testhost::loadavg().map_or(f64::NAN, |l| l[0])
}

/// Runs the benchmark and prints the results.
pub fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("netbench needs root (namespaces, the shim, TAP devices)");
    }
    for t in ["ip", "iperf3", "python3"] {
        sh("sh", &["-c", &format!("command -v {t} > /dev/null")])
            .with_context(|| format!("{t} is missing (tests/setup-host.sh installs it)"))?;
    }
    let libexec = match &args.libexec {
        Some(p) => p.clone(),
        None => xen_testhost::exe_dir()?,
    };
    let (reps, args) = if args.quick {
        (
            1,
            Args {
                seconds: 1,
                ..args.clone()
            },
        )
    } else {
        (args.reps.max(1), args.clone())
    };
    if args.http_only && args.pvhvm_kernel.is_none() {
        bail!("--http-only needs --pvhvm-kernel KERNEL");
    }
    let load_start = loadavg();
    let (veth, pv) = if args.http_only {
        (Vec::new(), Vec::new())
    } else {
        measure_both(&args, &libexec, reps)?
    };
    let load_end = loadavg();
    let http = match &args.pvhvm_kernel {
        Some(k) => {
            sh("sh", &["-c", "command -v curl > /dev/null"])
                .context("curl is missing (tests/setup-host.sh installs it)")?;
            measure_http(&args, &libexec, k, reps)?
        }
        None => Vec::new(),
    };
    print_iperf(&args, reps, &veth, &pv, [load_start, load_end]);
    print_http(&args, reps, &http);
    Ok(())
}

fn print_http(args: &Args, reps: usize, http: &[(String, Vec<f64>)]) {
    if http.is_empty() {
        return;
    }
    let reference = http.first().and_then(|(_, v)| spread(v)).map(|s| s.0);
    if !args.json {
        println!(
            "\nHTTP GET /bytes/{} (curl from Dom0), bytes/s:\n{:<14} {:>14} {:>14} {:>14} {:>8}",
            args.http_bytes, "imp", "median", "min", "max", "ratio"
        );
    }
    for (imp, v) in http {
        let (med, min, max) = spread(v).unwrap_or((0.0, 0.0, 0.0));
        let ratio = reference.filter(|&r| r > 0.0).map(|r| med / r);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": "netbench", "imp": imp, "load": "http-get", "unit": "bytes/s",
                    "bytes": args.http_bytes, "median": med, "min": min, "max": max,
                    "samples": v, "reps": reps, "ratio_to_pv": ratio,
                })
            );
        } else {
            println!(
                "{imp:<14} {med:>14.4e} {min:>14.4e} {max:>14.4e} {:>8}",
                ratio.map_or("-".into(), |r| format!("{r:.3}"))
            );
        }
    }
}

fn print_iperf(
    args: &Args,
    reps: usize,
    veth: &[(String, Vec<f64>)],
    pv: &[(String, Vec<f64>)],
    loads: [f64; 2],
) {
    if veth.is_empty() {
        return;
    }
    let [load_start, load_end] = loads;
    if !args.json {
        println!(
            "load average (1 min) at start {load_start:.2}, after the iperf3 runs {load_end:.2}"
        );
        println!(
            "{:<12} {:<8} {:>14} {:>14} {:>14} {:>8} {:>8}",
            "imp", "load", "median", "min", "max", "ratio", "paired"
        );
    }
    for (imp, rows) in [("veth", veth), ("pv-netfront", pv)] {
        for (load, v) in rows.iter() {
            let (med, min, max) = spread(v).unwrap_or((0.0, 0.0, 0.0));
            let reference = veth.iter().find(|(l, _)| l == load).map(|(_, r)| r);
            let ratio = reference
                .and_then(|r| spread(r))
                .map(|s| s.0)
                .filter(|&r| r > 0.0)
                .map(|r| med / r);
            // Each sample against the veth sample taken next to it.
            let paired: Vec<f64> = reference.map(|r| paired_ratios(v, r)).unwrap_or_default();
            let paired_median = spread(&paired).map(|s| s.0);
            let unit = if load == "udp64" {
                "packets/s"
            } else {
                "bits/s"
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "bench": "netbench", "imp": imp, "load": load, "unit": unit,
                        "median": med, "min": min, "max": max, "samples": v,
                        "seconds": args.seconds, "reps": reps,
                        "ratio_to_veth": ratio,
                        "paired_ratios": paired,
                        "paired_ratio_median": paired_median,
                        "loadavg": [load_start, load_end],
                    })
                );
            } else {
                println!(
                    "{imp:<12} {load:<8} {med:>14.4e} {min:>14.4e} {max:>14.4e} {:>8} {:>8}",
                    ratio.map_or("-".into(), |r| format!("{r:.3}")),
                    paired_median.map_or("-".into(), |r| format!("{r:.3}"))
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_iperf_json_tcp_and_udp() {
        let tcp = r#"{"end":{"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(parse_iperf_json("tcp-tx", tcp).expect("tcp"), 1.5e9);
        let udp = r#"{"end":{"sum":{"packets":1000,"lost_packets":100,"seconds":2.0}}}"#;
        assert_eq!(parse_iperf_json("udp64", udp).expect("udp"), 450.0);
        assert!(parse_iperf_json("tcp-tx", r#"{"error":"x"}"#).is_err());
    }

    #[test]
    fn test_spread_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[]), None);
    }
}
