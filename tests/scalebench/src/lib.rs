//! The scale benchmark: how many PV guests one Dom0 of this stack holds.
//!
//! [`run`] starts a private Dom0 ([`Dom0::start_supervised`]: `xen-shimd`
//! and `xenstored` as their own processes, so each one's memory is its
//! own), a network namespace with one bridge and `backendd` in it (as the
//! PV NIC tests do), builds one busybox root image (`examples/mkroot.sh`,
//! raw ext4) and then, guest after guest, a qcow2 overlay on it (`qemu-img
//! create -b pv-root.img -F raw`, as clouds provision guests) and `xl
//! create` of a PV guest booting from it (`root=/dev/xvda`, busybox init
//! and a shell on its console) with one NIC on the bridge, until
//! `--guests N` or the first failure. Per guest it measures:
//!
//! - `xl create` (the command's wall time) and `xl create` to devices
//!   Connected (every backend of the domain in xenstore at state 4, the
//!   disk's and the NIC's), and to the guest's shell prompt on its console;
//! - Dom0 memory: RSS of `backendd`, `xenstored` and `xen-shimd`, the PSS
//!   of this guest's runtime (`xen-pvguest`) and its `xl` monitor, and the
//!   guests' memory files under `/dev/shm` (the shim's);
//! - the latency of a xenstore read from Dom0 (median and 99th percentile
//!   of [`XS_READS`] reads) with that many guests up;
//! - the 1-minute load average (the machine is shared);
//!
//! and, with every guest up and idle, each thread's wake-ups a second
//! ([`wakeups`]: the guests' runtimes, their monitors, the services).
//!
//! Where it stops, and why (xl's message, a timeout, the guest's console),
//! is the report's last line. Everything (guests, the namespace and its
//! bridge, the overlays, the services) is removed on return, also after a
//! failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use xen_testhost::fleet::{
    allocated_kib, backends_connected, base_image, libexec_dir, load1, pids_with_cmdline,
    preflight, qcow2_overlay, rss_anon, rss_pss, tail,
};
use xen_testhost::net::{bridge_name, make_bridge, start_backendd_in, Netns};
use xen_testhost::Dom0;
use xenstore_client::{Client, XsOps};

pub mod wakeups;

use wakeups::{Role, Wakeups};

/// How long the guests settle after the last one came up before their
/// wake-ups are counted (their boots' last writes, the first watch events,
/// and their IPv6 start-up: a guest's kernel sends router solicitations 4 s
/// apart, the last about 8 s after its link is up, each flooded by the
/// bridge to every guest). It was 5 s: CI's 4-guest run then counted
/// 12 wake-ups a second per guest where a quiet window has 2.
pub const IDLE_SETTLE: Duration = Duration::from_secs(10);

/// xenstore reads timed per guest.
pub const XS_READS: usize = 200;

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "scalebench",
    about = "PV guests with a qcow2 overlay and a NIC, created until a count or a failure"
)]
pub struct Args {
    /// Guests to create.
    #[arg(long, default_value_t = 4)]
    pub guests: u32,
    /// Each guest's `memory` (MiB).
    #[arg(long, default_value_t = 32)]
    pub memory: u32,
    /// Longest wait for one guest's devices and shell (seconds).
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Print every Kth guest's row (the first and the last always).
    #[arg(long, default_value_t = 1)]
    pub every: u32,
    /// Keep the guests up this long after the last one came up (to look
    /// at them) before destroying them (seconds; the idle wake-ups are
    /// counted before).
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Count every thread's wake-ups over this many seconds once the
    /// guests are up and idle (after [`IDLE_SETTLE`] to settle; 0: not).
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// The directory of `xl`, `xen-supervise`, `backendd`, `xen-pvguest`,
    /// `xen-shimd` and `xenstored` (and `xen-vmm` with `--pvhvm`; default:
    /// this binary's).
    #[arg(long)]
    pub libexec: Option<PathBuf>,
    /// PVHVM guests instead: this kernel (`frontend-drivers/pvhvm-kernel`,
    /// built by `cargo build --release` in its workspace) in a KVM virtual
    /// machine run by `xen-vmm`, serving HTTP on its NIC (`netserve`) after
    /// a self-test of its disk. Needs `/dev/kvm`.
    #[arg(long, value_name = "KERNEL")]
    pub pvhvm: Option<PathBuf>,
}

/// One guest's figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based guest number.
    pub n: u32,
    /// Its domid.
    pub domid: u16,
    /// `xl create`'s wall time.
    pub xl_create: Duration,
    /// From `xl create` to every backend Connected.
    pub connected: Duration,
    /// From `xl create` to the shell prompt on its console (a PVHVM
    /// guest: to its network server up, after its disk's self-test).
    pub prompt: Duration,
    /// PSS of this guest's runtime and `xl` monitor (KiB).
    pub guest_pss_kib: u64,
    /// RSS of `backendd` (KiB).
    pub backendd_kib: u64,
    /// Its anonymous part (`RssAnon`, KiB): the rest is mostly the guests'
    /// shared memory it maps (rings, grants), counted in `/dev/shm` too.
    pub backendd_anon_kib: u64,
    /// RSS of `xenstored` (KiB).
    pub xenstored_kib: u64,
    /// RSS of `xen-shimd` (KiB).
    pub shimd_kib: u64,
    /// The guests' memory files in `/dev/shm` (KiB allocated).
    pub shm_kib: u64,
    /// Median xenstore read latency.
    pub xs_p50: Duration,
    /// 99th percentile xenstore read latency.
    pub xs_p99: Duration,
    /// 1-minute load average after this guest.
    pub load: f64,
}

/// The run's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was asked.
    pub args: Args,
    /// Dom0 services' RSS before the first guest (backendd, xenstored,
    /// xen-shimd; KiB).
    pub baseline_kib: [u64; 3],
    /// backendd's `RssAnon` before the first guest (KiB).
    pub baseline_anon_kib: u64,
    /// One row per guest that came up.
    pub rows: Vec<Row>,
    /// Why it stopped before `--guests` (`None`: it did not).
    pub stop: Option<String>,
    /// Time to `xl destroy` every guest.
    pub destroy_all: Duration,
    /// The idle wake-ups (`None`: not counted).
    pub wakeups: Option<Wakeups>,
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

impl Report {
    /// The markdown table, the summary and where it stopped.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| guest | domid | xl create ms | to Connected ms | to shell ms | runtime+monitor PSS MiB | backendd RSS MiB | backendd anon MiB | xenstored RSS MiB | xen-shimd RSS MiB | /dev/shm MiB | xs read p50 µs | xs read p99 µs | load |"
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let last = self.rows.last().map_or(0, |r| r.n);
        let every = self.args.every.max(1);
        for r in &self.rows {
            if r.n != 1 && r.n != last && r.n % every != 0 {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                r.n,
                r.domid,
                ms(r.xl_create),
                ms(r.connected),
                ms(r.prompt),
                mib(r.guest_pss_kib),
                mib(r.backendd_kib),
                mib(r.backendd_anon_kib),
                mib(r.xenstored_kib),
                mib(r.shimd_kib),
                mib(r.shm_kib),
                us(r.xs_p50),
                us(r.xs_p99),
                r.load
            );
        }
        let _ = writeln!(s);
        if let (Some(first), Some(lastr)) = (self.rows.first(), self.rows.last()) {
            let k = self.rows.len().min(8);
            let head = median(self.rows[..k].iter().map(|r| r.connected).collect());
            let tail = median(
                self.rows[self.rows.len() - k..]
                    .iter()
                    .map(|r| r.connected)
                    .collect(),
            );
            let n = self.rows.len() as f64;
            let services = |r: &Row| r.backendd_kib + r.xenstored_kib + r.shimd_kib;
            let base: u64 = self.baseline_kib.iter().sum();
            let per_guest_services = services(lastr).saturating_sub(base) as f64 / n;
            let anon0 = self.baseline_anon_kib;
            let per_guest_anon = lastr.backendd_anon_kib.saturating_sub(anon0) as f64 / n;
            let mean_guest = self.rows.iter().map(|r| r.guest_pss_kib).sum::<u64>() as f64 / n;
            let _ = writeln!(
                s,
                "- {} guests up (asked {}), memory {} MiB each. xl create to Connected: guest 1 {} ms, guest {} {} ms (ratio {:.2}); median of the first {k} {} ms, of the last {k} {} ms (ratio {:.2}).",
                self.rows.len(),
                self.args.guests,
                self.args.memory,
                ms(first.connected),
                lastr.n,
                ms(lastr.connected),
                lastr.connected.as_secs_f64() / first.connected.as_secs_f64().max(1e-9),
                ms(head),
                ms(tail),
                tail.as_secs_f64() / head.as_secs_f64().max(1e-9),
            );
            let _ = writeln!(
                s,
                "- Dom0 memory per guest: {:.2} MiB of services (backendd+xenstored+xen-shimd RSS growth over {} MiB at start, divided by the guests; backendd's anonymous memory {:.2} MiB of it, the rest the guests' shared memory it maps) + {:.2} MiB runtime and monitor PSS + {:.2} MiB of guest memory files in /dev/shm.",
                per_guest_services / 1024.0,
                mib(base),
                per_guest_anon / 1024.0,
                mean_guest / 1024.0,
                lastr.shm_kib as f64 / 1024.0 / n,
            );
        }
        let _ = writeln!(
            s,
            "- xl destroy of all guests: {:.1} s.",
            self.destroy_all.as_secs_f64()
        );
        match &self.stop {
            None => {
                let _ = writeln!(s, "- Stopped: at the asked count.");
            }
            Some(why) => {
                let _ = writeln!(s, "- Stopped: {why}");
            }
        }
        if let Some(w) = &self.wakeups {
            let _ = writeln!(s);
            s.push_str(&w.markdown());
        }
        s
    }
}

/// Median and 99th percentile of [`XS_READS`] reads of `path`.
fn xs_latency(xs: &Client, path: &str) -> Result<(Duration, Duration)> {
    let mut v = Vec::with_capacity(XS_READS);
    for _ in 0..XS_READS {
        let t = Instant::now();
        xs.read(path)
            .with_context(|| format!("xenstore read of {path}"))?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok((v[v.len() / 2], v[v.len() * 99 / 100]))
}

/// Runs the benchmark (see the [crate docs](crate)).
pub fn run(args: &Args) -> Result<Report> {
    preflight(
        "scalebench",
        &[
            ("qemu-img", "qemu-utils"),
            ("ip", "iproute2"),
            ("losetup", "mount"),
        ],
    )?;
    // xl takes a relative kernel path from the config's directory.
    let mut args = args.clone();
    if let Some(k) = &args.pvhvm {
        args.pvhvm = Some(std::fs::canonicalize(k).unwrap_or_else(|_| k.clone()));
    }
    let args = &args;
    if let Some(k) = &args.pvhvm {
        if !Path::new("/dev/kvm").exists() {
            bail!("--pvhvm needs /dev/kvm (KVM): load kvm_intel or kvm_amd");
        }
        if !k.is_file() {
            bail!(
                "{} is missing: build the PVHVM kernel (cd frontend-drivers/pvhvm-kernel && \
                 RUSTFLAGS=\"-C relocation-model=static\" cargo build --release --target \
                 x86_64-unknown-linux-gnu --target-dir ../../target/pvhvm-kernel)",
                k.display()
            );
        }
    }
    let libexec = libexec_dir(args.libexec.as_deref(), "scalebench")?;
    if args.pvhvm.is_some() && !libexec.join("xen-vmm").is_file() {
        bail!(
            "{} is missing: build it (cargo build --release -p xen-vmm) or pass --libexec",
            libexec.join("xen-vmm").display()
        );
    }
    let mut host = Dom0::start_supervised("scalebench-", &libexec)?;
    eprintln!(
        "scalebench: run {} in {}",
        std::process::id(),
        host.dir().display()
    );
    let ns = Netns::unique("xsc", "s")?;
    let br = bridge_name("xsb", "s")?;
    make_bridge(&ns, &br, "10.78.255.254/16")?;
    let backendd = start_backendd_in(&host, &ns, &[])?;
    let base = base_image(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &host.dir().join("root"),
    )?;
    let xs = Client::connect_path(host.xenstored_socket()).context("connect to xenstored")?;
    let services = |host: &Dom0| -> [u64; 3] {
        [
            host.backendd_pid().map_or(0, |p| rss_pss(p).0),
            host.service_pid("xenstored").map_or(0, |p| rss_pss(p).0),
            host.service_pid("xen-shimd").map_or(0, |p| rss_pss(p).0),
        ]
    };
    let baseline_kib = services(&host);
    let baseline_anon_kib = host.backendd_pid().map_or(0, rss_anon);
    let mut rows = Vec::new();
    let mut stop = None;
    for n in 1..=args.guests {
        match one_guest(args, &mut host, &xs, &base, &br, n) {
            Ok(mut row) => {
                let [b, x, s] = services(&host);
                row.backendd_kib = b;
                row.xenstored_kib = x;
                row.shimd_kib = s;
                row.shm_kib = allocated_kib(&host.mem_dir);
                row.backendd_anon_kib = host.backendd_pid().map_or(0, rss_anon);
                eprintln!(
                    "scalebench: guest {n} up: connected {} ms, shell {} ms, load {:.2}",
                    ms(row.connected),
                    ms(row.prompt),
                    row.load
                );
                rows.push(row);
            }
            Err(e) => {
                let why = format!("guest {n}: {e:#}");
                eprintln!("scalebench: {why}");
                stop = Some(why);
                break;
            }
        }
    }
    let wakeups = (args.idle_secs > 0 && !rows.is_empty()).then(|| {
        std::thread::sleep(IDLE_SETTLE);
        eprintln!("scalebench: counting wake-ups over {} s", args.idle_secs);
        let procs = idle_processes(&host, &rows);
        wakeups::measure(&procs, rows.len(), Duration::from_secs(args.idle_secs))
    });
    std::thread::sleep(Duration::from_secs(args.hold_secs));
    let t = Instant::now();
    host.destroy_guests();
    let destroy_all = t.elapsed();
    drop(xs);
    drop(backendd);
    drop(host);
    drop(ns);
    Ok(Report {
        args: args.clone(),
        baseline_kib,
        baseline_anon_kib,
        rows,
        stop,
        destroy_all,
        wakeups,
    })
}

/// The guest name of guest `n` of this run.
fn guest_name(n: u32) -> String {
    format!("sc{}g{n}", std::process::id())
}

/// The processes whose wake-ups are counted, by role: each guest's
/// runtime and programs (its cgroup's members), its monitor, the services
/// and their supervisors.
fn idle_processes(host: &Dom0, rows: &[Row]) -> Vec<(Role, i32)> {
    let mut v = Vec::new();
    for r in rows {
        let members = host
            .guest_cgroup(r.domid)
            .ok()
            .flatten()
            .map(|g| g.procs().unwrap_or_default())
            .unwrap_or_default();
        for p in members {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            // The runtime, its init waiter and its loop broker (`exe`: a
            // re-exec of itself), or a PVHVM guest's VMM, are the guest's
            // kernel; the rest its programs.
            let role = if matches!(
                comm.trim(),
                "xen-pvguest" | "pvguest-waiter" | "exe" | "xen-vmm"
            ) {
                Role::Runtime
            } else {
                Role::GuestPrograms
            };
            v.push((role, p));
        }
        let cfg = format!("{}.cfg", guest_name(r.n));
        for p in pids_with_cmdline(&["monitor-domain", &cfg]) {
            v.push((Role::Monitor, p));
        }
    }
    v.extend(host.backendd_pid().map(|p| (Role::Backendd, p)));
    v.extend(host.service_pid("xenstored").map(|p| (Role::Xenstored, p)));
    v.extend(host.service_pid("xen-shimd").map(|p| (Role::Shimd, p)));
    for s in ["xenstored", "xen-shimd", "backendd"] {
        v.extend(host.supervisor_pid(s).map(|p| (Role::Supervisor, p)));
    }
    v
}

/// Creates guest `n` and measures it (the services' memory is filled in by
/// the caller).
fn one_guest(
    args: &Args,
    host: &mut Dom0,
    xs: &Client,
    base: &Path,
    br: &str,
    n: u32,
) -> Result<Row> {
    let name = guest_name(n);
    let overlay = host.dir().join(format!("{name}.qcow2"));
    qcow2_overlay(base, &overlay)?;
    let ip = format!("10.78.{}.{}/16", n / 250, n % 250 + 1);
    let mac = format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (std::process::id() & 0x7f) as u8,
        (n >> 8) as u8,
        n as u8
    );
    let disk = format!(
        "disk = [ 'format=qcow2, vdev=xvda, access=rw, target={}' ]",
        overlay.display()
    );
    let vif = format!("vif = [ 'mac={mac}, bridge={br}, ip={ip}' ]");
    let actions = "on_poweroff = 'destroy'\non_reboot = 'destroy'\non_crash = 'preserve'\n";
    let (cfg, ready_mark) = match &args.pvhvm {
        // The kernel connects its disk (one self-test round) and its NIC
        // and serves until the toolstack stops it.
        Some(kernel) => (
            format!(
                "name = \"{name}\"\ntype = 'pvh'\nmemory = {}\nvcpus = 1\nkernel = \"{}\"\n\
                 extra = 'netserve ip={ip} disk'\n{disk}\n{vif}\n{actions}",
                args.memory,
                kernel.display()
            ),
            format!("netserve: {ip} up"),
        ),
        None => (
            format!(
                "name = \"{name}\"\ntype = 'pv'\nmemory = {}\nvcpus = 1\n\
                 root = '/dev/xvda'\nextra = 'rw console=hvc0'\n{disk}\n{vif}\n{actions}",
                args.memory
            ),
            format!("{name}:/# "),
        ),
    };
    let t0 = Instant::now();
    host.create_guest(&name, &cfg)?;
    let xl_create = t0.elapsed();
    let domid = host
        .domid(&name)?
        .with_context(|| format!("{name} is not in xl list after xl create"))?;
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let (mut connected, mut prompt) = (None, None);
    while connected.is_none() || prompt.is_none() {
        if connected.is_none() && backends_connected(xs, domid, 2)? {
            connected = Some(t0.elapsed());
        }
        if prompt.is_none() {
            let log = host.guest_log(&name);
            if log.contains(&ready_mark) {
                prompt = Some(t0.elapsed());
            } else if log.contains("pvguest frontend-failed")
                || log.contains("pvguest shutdown")
                || log.contains("FAIL")
            {
                bail!(
                    "the guest failed to boot; its console:\n{}\nbackendd's log:\n{}",
                    tail(&log, 20),
                    tail(
                        &std::fs::read_to_string(host.rundir().join("backendd.log"))
                            .unwrap_or_default(),
                        20
                    )
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no {} within {} s; its console:\n{}\nbackendd's log:\n{}",
                if connected.is_none() {
                    "Connected backends"
                } else {
                    "shell prompt"
                },
                args.timeout_secs,
                tail(&host.guest_log(&name), 20),
                tail(
                    &std::fs::read_to_string(host.rundir().join("backendd.log"))
                        .unwrap_or_default(),
                    20
                )
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let guest_pss_kib = host
        .guest_cgroup(domid)?
        .map(|g| g.procs().unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "xen-pvguest" | "xen-vmm"))
        })
        .map(|&p| rss_pss(p).1)
        .sum::<u64>()
        + pids_with_cmdline(&["monitor-domain", &format!("{name}.cfg")])
            .iter()
            .map(|&p| rss_pss(p).1)
            .sum::<u64>();
    let (xs_p50, xs_p99) = xs_latency(xs, &format!("/local/domain/{domid}/name"))?;
    Ok(Row {
        n,
        domid,
        xl_create,
        connected: connected.unwrap_or_default(),
        prompt: prompt.unwrap_or_default(),
        guest_pss_kib,
        backendd_kib: 0,
        backendd_anon_kib: 0,
        xenstored_kib: 0,
        shimd_kib: 0,
        shm_kib: 0,
        xs_p50,
        xs_p99,
        load: load1(),
    })
}
