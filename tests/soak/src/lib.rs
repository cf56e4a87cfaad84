//! The soak with faults: PV guests doing verified I/O for minutes while
//! the Dom0 around them is disturbed, then checks that nothing was lost
//! and nothing leaked (project issue 18, item 3).
//!
//! [`run`] starts a private supervised Dom0 ([`Dom0::start_supervised`]:
//! `xen-shimd` and `xenstored` each under `xen-supervise`), a network
//! namespace with a bridge and `backendd` under its own `xen-supervise` in
//! it, and `--guests N` PV guests, each booting the busybox base image
//! through its own qcow2 overlay with a raw data disk (`xvdb`) and a NIC.
//! Each guest's init is [`GUEST_INIT`] (`/sbin/soak` in the base image):
//! it writes numbered, checksummable 4 KiB records to its data disk with
//! `fsync`, prints `ack N` after each, reads older ones back with
//! `O_DIRECT` and compares them, and serves two checksummed transfers
//! (Dom0 uploads random bytes and gets their sha256 back; Dom0 downloads a
//! blob whose sha256 the guest printed at boot), which a thread in the
//! namespace runs against every guest in turn the whole time.
//!
//! After a warm-up, for `--minutes`: a random Dom0 service (`backendd`,
//! `xenstored`, `xen-shimd`, each in turn in a shuffled order) is
//! SIGKILLed about every `--fault-every` seconds and only its supervisor
//! starts it again (the run waits for the new pid); with `--extra-churn`
//! an extra guest is created, used and destroyed every `--churn-every`
//! seconds and what it leaves is checked; every `--hotplug-every` seconds a
//! disk and a NIC are hot-plugged into a guest and detached again. The
//! services' RSS, descriptors and threads are sampled all along (the
//! series is printed).
//!
//! At the end: every guest must still be reachable (both transfers), the
//! writers are stopped, the guests destroyed and Dom0 checks each data
//! disk against the acks ([`check_records`]: no acknowledged record lost
//! or wrong), and that nothing of any destroyed domain is left
//! ([`leaks_of`]: TAPs, xenstore nodes, memory and grant files in
//! `/dev/shm`, grant ledgers, the services' mappings, cgroups, `xl`
//! monitors), that no grant ledger belongs to a dead mapper, and that each
//! service's RSS and descriptors at the end are within the tolerances of
//! their values after the warm-up (descriptors also back to their value
//! before the first guest). `--self-check` then plants one leak of each
//! kind and one damaged record and fails unless the checks see them.
//! Everything is removed on return, also after a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use xen_testhost::fleet::{
    backends_connected, base_image, fds_threads, libexec_dir, load1, mapped_files,
    pids_with_cmdline, preflight, qcow2_overlay, rss_anon, rss_pss, status_kib, tail,
};
use xen_testhost::net::{
    bridge_name, make_bridge, start_supervised_backendd_in, stop_supervisor, Netns,
};
use xen_testhost::{run as run_cmd, Dom0};
use xenstore_client::{Client, XsOps};

/// The guests' init (`/sbin/soak` in the base image).
pub const GUEST_INIT: &str = include_str!("../guest/soak.sh");

/// The services killed, in the order of [`Sample::services`].
pub const SERVICES: [&str; 3] = ["backendd", "xenstored", "xen-shimd"];

/// Bytes of one record (one slot of the data disk).
pub const RECORD: usize = 4096;
/// Bytes Dom0 uploads to a guest per transfer.
const UPLOAD: usize = 65536;
/// The guests' ports: upload (sha256 back), download (the blob), stop.
const PORT_RX: u16 = 7001;
const PORT_TX: u16 = 7002;
const PORT_STOP: u16 = 7003;
/// vdev numbers (Xen's xvd encoding: 202 << 8 | disk << 4).
const XVDC: u32 = 51744;

/// Command line.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "soak",
    about = "PV guests doing verified I/O while Dom0 services are SIGKILLed, guests come and go and devices are hot-plugged; then checks for lost writes and leaks"
)]
pub struct Args {
    /// Guests doing verified I/O the whole run.
    #[arg(long, default_value_t = 4)]
    pub guests: u32,
    /// Length of the fault phase (minutes; fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Mean seconds between two SIGKILLs (each 0.5-1.5 times this); 0: none.
    #[arg(long, default_value_t = 10.0)]
    pub fault_every: f64,
    /// Create, use and destroy extra guests during the run.
    #[arg(long)]
    pub extra_churn: bool,
    /// Seconds between two extra guests (with `--extra-churn`).
    #[arg(long, default_value_t = 20.0)]
    pub churn_every: f64,
    /// Seconds between two hot-plug rounds (a disk and a NIC attached to a
    /// guest and detached); 0: none.
    #[arg(long, default_value_t = 30.0)]
    pub hotplug_every: f64,
    /// Seconds between two samples of the services' RSS and descriptors.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Seconds of warm-up (guests up and working, no faults) before the
    /// reference sample.
    #[arg(long, default_value_t = 15.0)]
    pub warmup_secs: f64,
    /// Seconds each guest sleeps between two records.
    #[arg(long, default_value_t = 1.0)]
    pub write_pause: f64,
    /// Records slots on each data disk (4 KiB each).
    #[arg(long, default_value_t = 1024)]
    pub slots: u32,
    /// Each guest's `memory` (MiB).
    #[arg(long, default_value_t = 32)]
    pub memory: u32,
    /// Allowed growth of each service's RSS from after the warm-up to the
    /// end (percent), on top of `--rss-slack-mib`.
    #[arg(long, default_value_t = 5.0)]
    pub rss_tolerance_pct: f64,
    /// Allowed RSS growth in MiB on top of the percentage (small services
    /// move by allocator pages).
    #[arg(long, default_value_t = 2.0)]
    pub rss_slack_mib: f64,
    /// Allowed growth of each service's open descriptors (after the
    /// warm-up to the end, and before the first guest to after the last
    /// one is destroyed).
    #[arg(long, default_value_t = 8)]
    pub fd_tolerance: usize,
    /// Seed of the fault schedule (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Longest wait for one guest to come up, and for each end check
    /// (seconds).
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// After the checks passed, plant a leak of each kind and a damaged
    /// record and fail unless the checks find them.
    #[arg(long)]
    pub self_check: bool,
    /// Print the report as JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
    /// The directory of `xl`, `xen-supervise`, `backendd`, `xen-pvguest`,
    /// `xen-shimd` and `xenstored` (default: this binary's).
    #[arg(long)]
    #[serde(skip)]
    pub libexec: Option<PathBuf>,
}

/// One service's figures in a [`Sample`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceSample {
    /// Its pid (0: not running at that moment).
    pub pid: i32,
    /// RSS (KiB).
    pub rss_kib: u64,
    /// Anonymous RSS (KiB).
    pub anon_kib: u64,
    /// RSS without the shared memory it maps (`RssShmem`: for backendd and
    /// xenstored the guests' rings and granted pages, which move with what
    /// the guests do and are counted in `/dev/shm`): its own memory, the
    /// figure the leak check compares (KiB).
    pub own_kib: u64,
    /// Open descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
}

/// The services' figures at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first guest was created.
    pub t_s: f64,
    /// What the moment is (`start`, `warm-up`, `run`, `end`, `empty`).
    pub label: String,
    /// backendd, xenstored, xen-shimd.
    pub services: Vec<ServiceSample>,
    /// Guests running.
    pub guests: usize,
    /// 1-minute load average.
    pub load: f64,
}

/// One SIGKILL.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// Seconds since the fault phase began.
    pub t_s: f64,
    /// The service.
    pub service: String,
    /// The pid killed.
    pub old_pid: i32,
    /// The pid its supervisor started (0: none in time).
    pub new_pid: i32,
    /// From the kill to the new pid (ms).
    pub back_ms: f64,
}

/// One extra guest's life.
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    /// Its name.
    pub name: String,
    /// Its domid.
    pub domid: u16,
    /// `xl create` to its init ready (ms).
    pub ready_ms: f64,
    /// `xl destroy` to nothing of it left (ms).
    pub clean_ms: f64,
    /// What went wrong (empty: nothing).
    pub error: String,
}

/// One hot-plug round.
#[derive(Debug, Clone, Serialize)]
pub struct Hotplug {
    /// The guest.
    pub guest: String,
    /// `block-attach` to the backend Connected and the guest's runtime
    /// seeing the disk (ms).
    pub disk_ms: f64,
    /// `network-attach` to the TAP on the bridge (ms).
    pub nic_ms: f64,
    /// What went wrong (empty: nothing).
    pub error: String,
}

/// The network transfers' counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetStats {
    /// Transfers with the right checksum.
    pub ok: u64,
    /// Transfers that did not complete (during a fault: expected).
    pub failed: u64,
    /// Transfers that completed with a wrong checksum (each an error).
    pub mismatches: Vec<String>,
    /// Bytes moved by the transfers that completed.
    pub bytes: u64,
}

/// One guest's disk outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestRecords {
    /// The guest.
    pub name: String,
    /// Records acknowledged on its console.
    pub acked: u32,
    /// The last record it wrote (`soak-stopped N`).
    pub last: u32,
    /// In-guest read-back mismatches (`verify-error`).
    pub verify_errors: u32,
    /// In-guest failed reads or writes (`io-error`).
    pub io_errors: u32,
    /// Dom0's findings on the image (lost or wrong acknowledged records).
    pub lost: Vec<String>,
}

/// The run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was asked.
    pub args: Args,
    /// The schedule's seed.
    pub seed: u64,
    /// The services' series.
    pub samples: Vec<Sample>,
    /// The SIGKILLs.
    pub kills: Vec<Kill>,
    /// The extra guests.
    pub churn: Vec<Churn>,
    /// The hot-plug rounds.
    pub hotplugs: Vec<Hotplug>,
    /// The network transfers.
    pub net: NetStats,
    /// Each guest's records.
    pub records: Vec<GuestRecords>,
    /// Every failed check (empty: the soak passed).
    pub failures: Vec<String>,
    /// What `--self-check` saw.
    pub self_check: Vec<String>,
    /// The device states of each guest whose disk writes stalled (no new
    /// ack for [`STALL_SECS`]) or failed (`io-error`), taken when first
    /// seen ([`Rig::device_states`]).
    #[serde(default)]
    pub stalls: Vec<String>,
    /// Wall time of the whole run (s).
    pub wall_s: f64,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The markdown report: the series, the faults, the outcome.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let a = &self.args;
        let _ = writeln!(
            s,
            "soak: {} guests, {} min, a SIGKILL every ~{} s, extra churn {}, hot-plug every {} s, seed {}; wall {:.0} s\n",
            a.guests, a.minutes, a.fault_every, a.extra_churn, a.hotplug_every, self.seed, self.wall_s
        );
        let _ = writeln!(
            s,
            "| t s | moment | guests | backendd RSS MiB | own | fds | thr | xenstored RSS MiB | own | fds | xen-shimd RSS MiB | own | fds | load |"
        );
        let _ = writeln!(
            s,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for x in &self.samples {
            let sv = |i: usize| x.services.get(i).cloned().unwrap_or_default();
            let (b, xs, sh) = (sv(0), sv(1), sv(2));
            let _ = writeln!(
                s,
                "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                x.t_s,
                x.label,
                x.guests,
                mib(b.rss_kib),
                mib(b.own_kib),
                b.fds,
                b.threads,
                mib(xs.rss_kib),
                mib(xs.own_kib),
                xs.fds,
                mib(sh.rss_kib),
                mib(sh.own_kib),
                sh.fds,
                x.load
            );
        }
        let _ = writeln!(s);
        let mut per: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for k in &self.kills {
            per.entry(&k.service).or_default().push(k.back_ms);
        }
        for (svc, v) in &per {
            let max = v.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "- {svc}: {} SIGKILLs, back after {:.0}-{:.0} ms",
                v.len(),
                v.iter().copied().fold(f64::MAX, f64::min),
                max
            );
        }
        let ready: Vec<f64> = self.churn.iter().map(|c| c.ready_ms).collect();
        let _ = writeln!(
            s,
            "- extra guests: {} created and destroyed ({} failed); create to ready {} ms, destroy to clean max {:.0} ms",
            self.churn.len(),
            self.churn.iter().filter(|c| !c.error.is_empty()).count(),
            range(&ready),
            self.churn.iter().map(|c| c.clean_ms).fold(0.0, f64::max)
        );
        let _ = writeln!(
            s,
            "- hot-plug rounds: {} ({} failed); disk attach {} ms, NIC attach {} ms",
            self.hotplugs.len(),
            self.hotplugs.iter().filter(|h| !h.error.is_empty()).count(),
            range(&self.hotplugs.iter().map(|h| h.disk_ms).collect::<Vec<_>>()),
            range(&self.hotplugs.iter().map(|h| h.nic_ms).collect::<Vec<_>>()),
        );
        let _ = writeln!(
            s,
            "- network: {} checksummed transfers ok ({:.1} MiB), {} cut by faults, {} wrong checksums",
            self.net.ok,
            self.net.bytes as f64 / 1048576.0,
            self.net.failed,
            self.net.mismatches.len()
        );
        let acked: u64 = self.records.iter().map(|r| u64::from(r.acked)).sum();
        let _ = writeln!(
            s,
            "- disk: {acked} records acknowledged by {} guests, {} verify errors in the guests, {} I/O errors, {} lost or wrong on the images",
            self.records.len(),
            self.records.iter().map(|r| r.verify_errors).sum::<u32>(),
            self.records.iter().map(|r| r.io_errors).sum::<u32>(),
            self.records.iter().map(|r| r.lost.len()).sum::<usize>()
        );
        for c in &self.self_check {
            let _ = writeln!(s, "- self-check: {c}");
        }
        for st in &self.stalls {
            let _ = writeln!(s, "- disk stalled: {st}");
        }
        if self.failures.is_empty() {
            let _ = writeln!(s, "- PASSED: every check.");
        } else {
            let _ = writeln!(s, "- FAILED ({}):", self.failures.len());
            for f in &self.failures {
                let _ = writeln!(s, "  - {f}");
            }
        }
        s
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn range(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.0}-{hi:.0}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A guest of the run.
#[derive(Debug, Clone)]
struct Guest {
    name: String,
    domid: u16,
    ip: String,
    data: PathBuf,
    /// sha256 of its blob (`soak-blob` line).
    blob: String,
}

/// The run's fixed parts.
struct Rig {
    args: Args,
    host: Dom0,
    ns: Netns,
    br: String,
    base: PathBuf,
    /// Every domid created, with its name (the leak checks' list).
    created: Vec<(u16, String)>,
}

/// How long a guest's acks may stand still before its devices' states are
/// taken (a write normally takes well under a second; a service restart
/// a few).
pub const STALL_SECS: u64 = 20;

/// The xenstore keys of a device's backend and frontend that tell who
/// waits for whom.
const DEVICE_KEYS: [&str; 6] = [
    "state",
    "online",
    "hotplug-status",
    "ring-ref",
    "event-channel",
    "multi-queue-num-queues",
];

impl Rig {
    /// Guest `g`'s devices as xenstore has them now: per backend kind and
    /// device, the backend's and the frontend's [`DEVICE_KEYS`] (`-`:
    /// absent), one line each.
    fn device_states(&self, g: &Guest) -> String {
        let xs = match self.xs() {
            Ok(xs) => xs,
            Err(e) => return format!("xenstore unreachable: {e:#}"),
        };
        let mut out = Vec::new();
        for kind in ["vbd", "qdisk", "vif", "console"] {
            let base = format!("/local/domain/0/backend/{kind}/{}", g.domid);
            for dev in xs.directory(&base).unwrap_or_default() {
                let be = format!("{base}/{dev}");
                let fe = xs
                    .read_string(&format!("{be}/frontend"))
                    .unwrap_or_else(|_| format!("/local/domain/{}/device/{kind}/{dev}", g.domid));
                let keys = |path: &str| {
                    DEVICE_KEYS
                        .iter()
                        .filter_map(|k| {
                            xs.read_string(&format!("{path}/{k}"))
                                .ok()
                                .map(|v| format!("{k}={v}"))
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                out.push(format!(
                    "{kind}/{dev}: backend [{}] frontend [{}]",
                    keys(&be),
                    keys(&fe)
                ));
            }
        }
        out.join("; ")
    }

    /// A fresh xenstored connection (one across a xenstored SIGKILL would
    /// be dead).
    fn xs(&self) -> Result<Client> {
        Client::connect_path(self.host.xenstored_socket()).context("connect to xenstored")
    }

    fn service_pid(&self, name: &str) -> Option<i32> {
        if name == "backendd" {
            self.host.backendd_pid()
        } else {
            self.host.service_pid(name)
        }
    }

    fn sample(&self, t0: Instant, label: &str, guests: usize) -> Sample {
        let services = SERVICES
            .iter()
            .map(|s| match self.service_pid(s) {
                Some(pid) => {
                    let (fds, threads) = fds_threads(pid);
                    ServiceSample {
                        pid,
                        rss_kib: rss_pss(pid).0,
                        anon_kib: rss_anon(pid),
                        own_kib: rss_pss(pid).0.saturating_sub(status_kib(pid, "RssShmem:")),
                        fds,
                        threads,
                    }
                }
                None => ServiceSample::default(),
            })
            .collect();
        Sample {
            t_s: t0.elapsed().as_secs_f64(),
            label: label.into(),
            services,
            guests,
            load: load1(),
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.host.rundir().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Creates guest number `n` named `name` and waits until its init is
    /// ready (backends Connected, `soak-ready` on its console).
    fn create(&mut self, name: &str, n: u32) -> Result<Guest> {
        let dir = self.host.dir().to_path_buf();
        let overlay = dir.join(format!("{name}.qcow2"));
        qcow2_overlay(&self.base, &overlay)?;
        let data = dir.join(format!("{name}-data.img"));
        std::fs::File::create(&data)
            .and_then(|f| f.set_len(u64::from(self.args.slots) * RECORD as u64))
            .with_context(|| format!("create {}", data.display()))?;
        let ip = format!("10.79.{}.{}", n / 250, n % 250 + 1);
        let mac = mac(n);
        let cfg = format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = {}\nvcpus = 1\n\
             root = '/dev/xvda'\n\
             extra = 'rw console=hvc0 init=/sbin/soak soak_slots={} soak_pause={}'\n\
             disk = [ 'format=qcow2, vdev=xvda, access=rw, target={}', \
             'format=raw, vdev=xvdb, access=rw, target={}' ]\n\
             vif = [ 'mac={mac}, bridge={}, ip={ip}/16' ]\n\
             on_poweroff = 'destroy'\non_reboot = 'destroy'\non_crash = 'preserve'\n",
            self.args.memory,
            self.args.slots,
            self.args.write_pause,
            overlay.display(),
            data.display(),
            self.br
        );
        let t0 = Instant::now();
        let created = self.host.create_guest(name, &cfg);
        let domid = self.host.domid(name)?;
        if let Some(d) = domid {
            self.created.push((d, name.to_owned()));
        }
        created?;
        let domid = domid.with_context(|| format!("{name} is not in xl list after xl create"))?;
        let deadline = t0 + Duration::from_secs(self.args.timeout_secs);
        loop {
            check_interrupted()?;
            let log = self.host.guest_log(name);
            if log.contains("soak-ready")
                && self
                    .xs()
                    .and_then(|xs| backends_connected(&xs, domid, 3))
                    .unwrap_or(false)
            {
                let blob = log
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("soak-blob "))
                    .context("no soak-blob line before soak-ready")?
                    .trim()
                    .to_owned();
                return Ok(Guest {
                    name: name.to_owned(),
                    domid,
                    ip,
                    data,
                    blob,
                });
            }
            if log.contains("pvguest frontend-failed")
                || log.contains("pvguest shutdown")
                || Instant::now() >= deadline
            {
                bail!(
                    "guest {name} did not come up within {} s; its console:\n{}\nbackendd's log:\n{}",
                    self.args.timeout_secs,
                    tail(&log, 30),
                    tail(&self.log("backendd"), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs `service` and waits for its supervisor's new one.
    fn kill(&self, service: &str, t0: Instant) -> Result<Kill> {
        let old = self
            .service_pid(service)
            .with_context(|| format!("{service} is not running before its SIGKILL"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("SIGKILL {service} ({old})"))?;
        let t = Instant::now();
        let new = loop {
            if let Some(p) = self.service_pid(service).filter(|&p| p != old) {
                break p;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!(
                    "no new {service} within 10 s of the SIGKILL of {old}; its log:\n{}",
                    tail(&self.log(service), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Kill {
            t_s: t0.elapsed().as_secs_f64(),
            service: service.into(),
            old_pid: old,
            new_pid: new,
            back_ms: ms(t.elapsed()),
        })
    }

    /// Waits until all three services run (after a kill, backendd may be
    /// in its supervisor's back-off).
    fn services_up(&self, within: Duration) -> Result<()> {
        let t = Instant::now();
        while SERVICES.iter().any(|s| self.service_pid(s).is_none()) {
            if t.elapsed() > within {
                bail!(
                    "not every service runs {within:?} on: {:?}",
                    SERVICES.map(|s| self.service_pid(s))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// One extra guest: created, both transfers, destroyed, checked clean.
    fn churn(&mut self, k: u32) -> Churn {
        let name = format!("soakx{}n{k}", std::process::id());
        let mut c = Churn {
            name: name.clone(),
            domid: 0,
            ready_ms: 0.0,
            clean_ms: 0.0,
            error: String::new(),
        };
        let t = Instant::now();
        let g = match self.create(&name, 1000 + k) {
            Ok(g) => g,
            Err(e) => {
                c.error = format!("create: {e:#}");
                let _ = self.host.destroy_guest(&name);
                return c;
            }
        };
        c.domid = g.domid;
        c.ready_ms = ms(t.elapsed());
        if let Err(e) = in_netns(&self.ns.name, || transfer(&g)) {
            c.error = format!("transfer: {e:#}");
        }
        let t = Instant::now();
        if let Err(e) = self.host.destroy_guest(&name).and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                bail!("xl destroy: {}", String::from_utf8_lossy(&o.stderr))
            }
        }) {
            c.error = format!("{e:#}");
            return c;
        }
        let left = self.wait_clean(&[(g.domid, name)], &[]);
        c.clean_ms = ms(t.elapsed());
        if !left.is_empty() {
            c.error = format!("left behind: {left:?}");
        }
        c
    }

    /// Waits (up to the timeout) until [`leaks_of`] finds nothing for
    /// `gone` (domid, name) except domids in `live`; what is still left.
    fn wait_clean(&self, gone: &[(u16, String)], live: &[u16]) -> Vec<String> {
        let t = Instant::now();
        loop {
            let left: Vec<String> = gone
                .iter()
                .filter(|(d, _)| !live.contains(d))
                .flat_map(|(d, n)| leaks_of(self, *d, n))
                .collect();
            if left.is_empty() || t.elapsed() > Duration::from_secs(self.args.timeout_secs.min(20))
            {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A disk and a NIC hot-plugged into `g` and detached again.
    fn hotplug(&self, g: &Guest, round: u32) -> Hotplug {
        let mut h = Hotplug {
            guest: g.name.clone(),
            disk_ms: 0.0,
            nic_ms: 0.0,
            error: String::new(),
        };
        if let Err(e) = self.hotplug_inner(g, round, &mut h) {
            h.error = format!("{e:#}");
            // Leave nothing attached for the end checks.
            let _ = self.host.xl(&["block-detach", &g.name, "xvdc", "--force"]);
            let _ = self.host.xl(&["network-detach", &g.name, "1"]);
        }
        h
    }

    fn hotplug_inner(&self, g: &Guest, round: u32, h: &mut Hotplug) -> Result<()> {
        let img = self.host.dir().join(format!("hot{round}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(1 << 20))
            .context("create the hot-plugged disk")?;
        let be = format!("/local/domain/0/backend/vbd/{}/{XVDC}", g.domid);
        let marks = format!("pvdisk hotplugged devid={XVDC} vdev=xvdc");
        let before = self.host.guest_log(&g.name).matches(&marks).count();
        let xs = self.xs()?;
        let t = Instant::now();
        self.host.xl_ok(&[
            "block-attach",
            &g.name,
            &format!("format=raw, vdev=xvdc, access=rw, target={}", img.display()),
        ])?;
        wait_for(Duration::from_secs(30), "the hot-plugged disk", || {
            xs.read_string(&format!("{be}/state")).unwrap_or_default() == "4"
                && self.host.guest_log(&g.name).matches(&marks).count() > before
        })?;
        h.disk_ms = ms(t.elapsed());
        self.host.xl_ok(&["block-detach", &g.name, "xvdc"])?;
        wait_for(
            Duration::from_secs(30),
            "the detached disk's nodes gone",
            || xs.read(&be).is_err(),
        )?;
        let _ = std::fs::remove_file(&img);
        let mac = mac(3000 + round);
        let tap = format!("vif{}.1", g.domid);
        let t = Instant::now();
        self.host.xl_ok(&[
            "network-attach",
            &g.name,
            &format!("bridge={}", self.br),
            &format!("mac={mac}"),
            &format!("ip=10.79.200.{}", round % 250 + 1),
        ])?;
        wait_for(Duration::from_secs(30), "the hot-plugged NIC's TAP", || {
            !xen_testhost::net::link(&self.ns, &tap).is_empty()
        })?;
        h.nic_ms = ms(t.elapsed());
        self.host.xl_ok(&["network-detach", &g.name, &mac])?;
        let vif_be = format!("/local/domain/0/backend/vif/{}/1", g.domid);
        wait_for(Duration::from_secs(30), "the detached NIC gone", || {
            xen_testhost::net::link(&self.ns, &tap).is_empty() && xs.read(&vif_be).is_err()
        })?;
        Ok(())
    }
}

/// Set by SIGINT or SIGTERM: the run stops at its next wait and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM stop the run cleanly (guests destroyed,
/// services stopped, namespace removed) instead of killing it.
fn catch_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { sigaction(sig, &act) }.with_context(|| format!("catch {sig}"))?;
    }
    Ok(())
}

/// Fails once the run was interrupted.
fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted (SIGINT or SIGTERM)");
    }
    Ok(())
}

fn mac(n: u32) -> String {
    format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (std::process::id() & 0x7f) as u8 | 0x80,
        (n >> 8) as u8,
        n as u8
    )
}

fn wait_for(within: Duration, what: &str, ok: impl Fn() -> bool) -> Result<()> {
    let t = Instant::now();
    while !ok() {
        check_interrupted()?;
        if t.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs `f` on a thread in network namespace `ns` (`/run/netns/NS`); the
/// calling thread's namespace is untouched.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the transfer thread panicked"))?
    })
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("open /run/netns/{ns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {ns}"))?;
    Ok(())
}

/// The sha256 (hex) of `data` (`sha256sum`).
fn sha256(data: &[u8]) -> Result<String> {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run sha256sum")?;
    let mut stdin = c.stdin.take().context("sha256sum's stdin")?;
    let written = stdin.write_all(data);
    drop(stdin);
    let out = c.wait_with_output().context("wait for sha256sum")?;
    written.context("feed sha256sum")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Why a transfer did not pass.
#[derive(Debug)]
enum TransferError {
    /// It did not complete (connect, timeout, reset).
    Cut(String),
    /// It completed with a wrong checksum.
    Mismatch(String),
}

/// Both transfers with `g` (the caller is in the namespace): upload with
/// the sha256 back, download of the blob; the bytes moved.
fn transfer_once(g: &Guest) -> std::result::Result<u64, TransferError> {
    let cut = |what: &str, e: std::io::Error| TransferError::Cut(format!("{what}: {e}"));
    let connect = |port: u16| -> std::io::Result<TcpStream> {
        let addr: SocketAddr = format!("{}:{port}", g.ip)
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_write_timeout(Some(Duration::from_secs(15)))?;
        Ok(s)
    };
    let mut data = vec![0u8; UPLOAD];
    fastrand::fill(&mut data);
    let want = sha256(&data).map_err(|e| TransferError::Cut(format!("{e:#}")))?;
    let mut s = connect(PORT_RX).map_err(|e| cut("upload connect", e))?;
    s.write_all(&data).map_err(|e| cut("upload", e))?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| cut("upload shutdown", e))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| cut("upload reply", e))?;
    if reply.trim().is_empty() {
        return Err(TransferError::Cut("upload: empty reply".into()));
    }
    if reply.trim() != want {
        return Err(TransferError::Mismatch(format!(
            "{}: upload of {UPLOAD} bytes with sha256 {want}, the guest's {}",
            g.name,
            reply.trim()
        )));
    }
    let mut s = connect(PORT_TX).map_err(|e| cut("download connect", e))?;
    let mut blob = Vec::new();
    s.read_to_end(&mut blob).map_err(|e| cut("download", e))?;
    let got = sha256(&blob).map_err(|e| TransferError::Cut(format!("{e:#}")))?;
    if blob.is_empty() {
        return Err(TransferError::Cut("download: nothing".into()));
    }
    if got != g.blob {
        return Err(TransferError::Mismatch(format!(
            "{}: downloaded {} bytes with sha256 {got}, the guest's blob has {}",
            g.name,
            blob.len(),
            g.blob
        )));
    }
    Ok((UPLOAD + blob.len()) as u64)
}

/// [`transfer_once`] as an error (a cut one too).
fn transfer(g: &Guest) -> Result<u64> {
    transfer_once(g).map_err(|e| anyhow::anyhow!("{}: {e:?}", g.name))
}

/// The namespace thread: transfers with every guest in turn until `stop`.
fn net_worker(
    ns: String,
    guests: Vec<Guest>,
    stats: Arc<Mutex<NetStats>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    enter_netns(&ns)?;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && !guests.is_empty() {
        let g = &guests[i % guests.len()];
        let r = transfer_once(g);
        let mut st = stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match r {
            Ok(b) => {
                st.ok += 1;
                st.bytes += b;
            }
            Err(TransferError::Cut(_)) => st.failed += 1,
            Err(TransferError::Mismatch(m)) => st.mismatches.push(m),
        }
        drop(st);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Stops and joins the namespace thread on drop.
struct Worker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Worker {
    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the network thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// What is left of destroyed domain `domid` (named `name`) in `rig`: one
/// line per leak (empty: nothing).
fn leaks_of(rig: &Rig, domid: u16, name: &str) -> Vec<String> {
    let mut v = Vec::new();
    // The shim and xl.
    if let Ok(c) = xen_shim_dom0::Control::connect(&rig.host.shim_socket()) {
        if let Ok(ds) = c.list_domains() {
            if ds.iter().any(|d| d.domid == domid) {
                v.push(format!("domain {domid}: still a shim domain"));
            }
        }
    }
    // xenstore.
    let xs = match rig.xs() {
        Ok(xs) => xs,
        Err(e) => {
            v.push(format!("domain {domid}: xenstore not checked: {e:#}"));
            return v;
        }
    };
    for p in [format!("/local/domain/{domid}"), format!("/libxl/{domid}")] {
        if xs.read(&p).is_ok() {
            v.push(format!("domain {domid}: xenstore node {p}"));
        }
    }
    for kind in xs.directory("/local/domain/0/backend").unwrap_or_default() {
        let p = format!("/local/domain/0/backend/{kind}/{domid}");
        if xs.read(&p).is_ok() {
            v.push(format!("domain {domid}: xenstore node {p}"));
        }
    }
    // TAPs.
    if let Ok(links) = rig.ns.ip(&["-o", "link"]) {
        let pfx = format!("vif{domid}.");
        for l in links.lines() {
            if let Some(ifname) = l.split(':').nth(1).map(str::trim) {
                let ifname = ifname.split('@').next().unwrap_or(ifname);
                if ifname.starts_with(&pfx) {
                    v.push(format!("domain {domid}: TAP {ifname}"));
                }
            }
        }
    }
    // Memory, active-grant, dirty-log files and grant ledgers.
    let pfx = format!("dom{domid}-");
    for d in [rig.host.mem_dir.clone(), rig.host.mem_dir.join("grants")] {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&pfx) {
                v.push(format!("domain {domid}: file {}", e.path().display()));
            }
        }
    }
    // The services' mappings of its files.
    let mem = rig.host.mem_dir.display().to_string();
    for s in SERVICES {
        if let Some(pid) = rig.service_pid(s) {
            for f in mapped_files(pid) {
                let base = f.rsplit('/').next().unwrap_or("");
                if f.starts_with(&mem) && base.starts_with(&pfx) {
                    v.push(format!("domain {domid}: {s} maps {f}"));
                }
            }
        }
    }
    // Its cgroup and xl's monitor.
    if let Ok(Some(g)) = rig.host.guest_cgroup(domid) {
        v.push(format!("domain {domid}: cgroup {g:?}"));
    }
    let monitors = pids_with_cmdline(&["monitor-domain", &format!("{name} ")]);
    if !monitors.is_empty() {
        v.push(format!("domain {domid}: xl monitors {monitors:?}"));
    }
    v
}

/// Grant ledgers whose owner (the pid in the name) is dead: pins a dead
/// mapper still holds.
fn dead_ledgers(rig: &Rig) -> Vec<String> {
    std::fs::read_dir(rig.host.mem_dir.join("grants"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid: i32 = n.split('.').nth(1)?.parse().ok()?;
            (!Path::new(&format!("/proc/{pid}")).exists())
                .then(|| format!("grant ledger {n} of dead mapper {pid}"))
        })
        .collect()
}

/// The acked records, the last one written and the in-guest error counts
/// from guest `name`'s console log.
fn parse_log(name: &str, log: &str) -> GuestRecords {
    let mut r = GuestRecords {
        name: name.into(),
        ..GuestRecords::default()
    };
    for l in log.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("ack ").and_then(|n| n.parse::<u32>().ok()) {
            r.acked = r.acked.max(n);
        } else if let Some(n) = l.strip_prefix("soak-stopped ").and_then(|n| n.parse().ok()) {
            r.last = n;
        } else if l.starts_with("verify-error") {
            r.verify_errors += 1;
        } else if l.starts_with("io-error") {
            r.io_errors += 1;
        }
    }
    r
}

/// The record `seq` of guest `name` (what the guest's `rec` writes).
pub fn record(name: &str, seq: u32) -> Vec<u8> {
    let line = format!("soakrec {name} {seq}\n");
    line.bytes().cycle().take(RECORD).collect()
}

/// Checks the data disk `image` of guest `name` (with `slots` slots)
/// against its acks: every record acknowledged (all of `1..=acked`) is in
/// its slot, or a later one of that slot is; every record found is exactly
/// what was written. Returns the findings (empty: all there).
pub fn check_records(
    image: &Path,
    name: &str,
    slots: u32,
    acked: u32,
    last: u32,
) -> Result<Vec<String>> {
    let data = std::fs::read(image).with_context(|| format!("read {}", image.display()))?;
    let mut bad = Vec::new();
    for slot in 0..slots {
        let off = slot as usize * RECORD;
        let Some(block) = data.get(off..off + RECORD) else {
            bad.push(format!("{name}: slot {slot} is past the image's end"));
            continue;
        };
        // The newest acknowledged record of this slot.
        let want = if acked >= slot.max(1) {
            Some(acked - (acked - slot) % slots)
        } else {
            None
        }
        .filter(|&s| s >= 1 && s % slots == slot);
        if block.iter().all(|&b| b == 0) {
            if let Some(s) = want {
                bad.push(format!(
                    "{name}: acknowledged record {s} lost (slot {slot} is empty)"
                ));
            }
            continue;
        }
        let head = String::from_utf8_lossy(&block[..block.len().min(64)]).into_owned();
        let seq = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(&format!("soakrec {name} ")))
            .and_then(|n| n.parse::<u32>().ok());
        let Some(seq) = seq else {
            bad.push(format!(
                "{name}: slot {slot} holds no record of it: {head:?}"
            ));
            continue;
        };
        if block != record(name, seq).as_slice() {
            bad.push(format!("{name}: record {seq} in slot {slot} is damaged"));
        }
        // The record after the last acknowledged one may be there: its
        // write can land and still fail (a flush error, the guest's retry).
        if seq % slots != slot || (last > 0 && seq > last + 1) {
            bad.push(format!(
                "{name}: slot {slot} holds record {seq}, never written there"
            ));
        }
        if let Some(s) = want {
            if seq < s {
                bad.push(format!(
                    "{name}: acknowledged record {s} lost (slot {slot} holds the older {seq})"
                ));
            }
        }
    }
    Ok(bad)
}

/// The schedule of the fault phase.
struct Schedule {
    rng: fastrand::Rng,
    deck: Vec<&'static str>,
}

impl Schedule {
    fn next_service(&mut self) -> &'static str {
        if self.deck.is_empty() {
            self.deck = SERVICES.to_vec();
            self.rng.shuffle(&mut self.deck);
        }
        self.deck.pop().unwrap_or("backendd")
    }

    fn jitter(&mut self, mean: f64) -> Duration {
        Duration::from_secs_f64(mean * (0.5 + self.rng.f64()))
    }
}

/// Runs the soak (see the [crate docs](crate)).
pub fn run(args: &Args) -> Result<Report> {
    preflight(
        "soak",
        &[
            ("qemu-img", "qemu-utils"),
            ("ip", "iproute2"),
            ("debugfs", "e2fsprogs"),
            ("sha256sum", "coreutils"),
        ],
    )?;
    if args.guests == 0 || args.slots == 0 {
        bail!("--guests and --slots must be at least 1");
    }
    let libexec = libexec_dir(args.libexec.as_deref(), "soak")?;
    catch_signals()?;
    let wall = Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let host = Dom0::start_supervised("soak-", &libexec)?;
    eprintln!(
        "soak: run {} in {}, seed {seed}",
        std::process::id(),
        host.dir().display()
    );
    let ns = Netns::unique("xso", "k")?;
    let br = bridge_name("xsk", "k")?;
    make_bridge(&ns, &br, "10.79.255.254/16")?;
    let supervisor = start_supervised_backendd_in(&host, &ns)?;
    let base = base_image(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &host.dir().join("root"),
    )?;
    install_init(&host, &base)?;
    let mut rig = Rig {
        args: args.clone(),
        host,
        ns,
        br,
        base,
        created: Vec::new(),
    };
    let result = soak(&mut rig, seed, wall);
    // After a failure the logs outlive the run's directory.
    if !result.as_ref().is_ok_and(Report::passed) {
        match keep_logs(&rig.host) {
            Ok(dir) => eprintln!("soak: logs kept in {}", dir.display()),
            Err(e) => eprintln!("soak: keeping the logs failed: {e:#}"),
        }
    }
    // Whatever happened: guests down, then the services, the namespace.
    rig.host.destroy_guests();
    if let Err(e) = stop_supervisor(supervisor) {
        eprintln!("soak: stopping backendd's supervisor: {e:#}");
    }
    result
}

/// Copies the run's logs (the services', xl's, the runtimes' and the
/// guests' consoles) to `<tmp>/soak-<pid>-logs`; that directory.
fn keep_logs(host: &Dom0) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("soak-{}-logs", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for src in [host.rundir(), host.console_logdir()] {
        for e in std::fs::read_dir(&src).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                std::fs::copy(&p, dir.join(e.file_name()))
                    .with_context(|| format!("copy {}", p.display()))?;
            }
        }
    }
    Ok(dir)
}

/// Writes [`GUEST_INIT`] as `/sbin/soak` (mode 0755) into the base image.
fn install_init(host: &Dom0, base: &Path) -> Result<()> {
    let script = host.dir().join("soak-init.sh");
    std::fs::write(&script, GUEST_INIT).context("write the guest init")?;
    let img = base.to_str().context("utf-8 path")?;
    run_cmd(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("write {} /sbin/soak", script.display()),
            img,
        ],
    )?;
    run_cmd("debugfs", &["-w", "-R", "sif /sbin/soak mode 0100755", img])?;
    let out = run_cmd("debugfs", &["-R", "stat /sbin/soak", img])?;
    if !out.contains("Mode:  0755") && !out.contains("Mode: 0755") {
        bail!("/sbin/soak in the base image is not mode 0755: {out}");
    }
    Ok(())
}

fn soak(rig: &mut Rig, seed: u64, wall: Instant) -> Result<Report> {
    let args = rig.args.clone();
    let mut failures = Vec::new();
    let mut samples = Vec::new();
    let t0 = Instant::now();
    samples.push(rig.sample(t0, "start", 0));
    let mut guests = Vec::new();
    for n in 1..=args.guests {
        let name = format!("soak{}g{n}", std::process::id());
        guests.push(rig.create(&name, n)?);
        eprintln!("soak: guest {n} up, load {:.1}", load1());
    }
    let stats = Arc::new(Mutex::new(NetStats::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut worker = Worker {
        stop: stop.clone(),
        handle: Some({
            let (ns, g, st) = (rig.ns.name.clone(), guests.clone(), stats.clone());
            std::thread::spawn(move || net_worker(ns, g, st, stop))
        }),
    };
    let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup_secs);
    while Instant::now() < warm_end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    samples.push(rig.sample(t0, "warm-up", guests.len()));
    let warm = samples.len() - 1;

    // The fault phase.
    let mut sched = Schedule {
        rng: fastrand::Rng::with_seed(seed),
        deck: Vec::new(),
    };
    let phase = Instant::now();
    let end = phase + Duration::from_secs_f64(args.minutes * 60.0);
    let mut next_fault = (args.fault_every > 0.0).then(|| phase + sched.jitter(args.fault_every));
    let mut next_churn = args
        .extra_churn
        .then(|| phase + Duration::from_secs_f64(args.churn_every / 2.0));
    let mut next_hot = (args.hotplug_every > 0.0)
        .then(|| phase + Duration::from_secs_f64(args.hotplug_every / 2.0));
    let mut next_sample = phase + Duration::from_secs_f64(args.sample_every);
    let (mut kills, mut churn, mut hotplugs) = (Vec::new(), Vec::new(), Vec::new());
    // Per guest: its last ack and since when; whether its states were taken.
    let mut progress: Vec<(u32, Instant, bool)> =
        guests.iter().map(|_| (0, Instant::now(), false)).collect();
    let mut stalls = Vec::new();
    let mut next_watch = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        check_interrupted()?;
        let now = Instant::now();
        if next_fault.is_some_and(|t| now >= t) {
            let svc = sched.next_service();
            match rig.kill(svc, phase) {
                Ok(k) => {
                    eprintln!(
                        "soak: {:.0} s: SIGKILL {svc} {} -> {} in {:.0} ms",
                        k.t_s, k.old_pid, k.new_pid, k.back_ms
                    );
                    kills.push(k);
                }
                Err(e) => failures.push(format!("fault: {e:#}")),
            }
            next_fault = Some(Instant::now() + sched.jitter(args.fault_every));
        } else if next_churn.is_some_and(|t| now >= t) {
            let c = rig.churn(churn.len() as u32 + 1);
            eprintln!(
                "soak: extra guest {} (domid {}): ready {:.0} ms, clean {:.0} ms {}",
                c.name, c.domid, c.ready_ms, c.clean_ms, c.error
            );
            if !c.error.is_empty() {
                failures.push(format!("extra guest {}: {}", c.name, c.error));
            }
            churn.push(c);
            next_churn = Some(Instant::now() + Duration::from_secs_f64(args.churn_every));
        } else if next_hot.is_some_and(|t| now >= t) {
            let g = &guests[hotplugs.len() % guests.len()];
            let h = rig.hotplug(g, hotplugs.len() as u32 + 1);
            eprintln!(
                "soak: hot-plug into {}: disk {:.0} ms, NIC {:.0} ms {}",
                h.guest, h.disk_ms, h.nic_ms, h.error
            );
            if !h.error.is_empty() {
                failures.push(format!("hot-plug into {}: {}", h.guest, h.error));
            }
            hotplugs.push(h);
            next_hot = Some(Instant::now() + Duration::from_secs_f64(args.hotplug_every));
        } else if now >= next_sample {
            samples.push(rig.sample(t0, "run", guests.len()));
            next_sample = now + Duration::from_secs_f64(args.sample_every);
        } else if now >= next_watch {
            watch_stalls(rig, &guests, &mut progress, phase, &mut stalls);
            next_watch = now + Duration::from_secs(5);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    watch_stalls(rig, &guests, &mut progress, phase, &mut stalls);
    // The end: services up, every guest reachable, the end sample.
    let within = Duration::from_secs(args.timeout_secs);
    if let Err(e) = rig.services_up(within) {
        failures.push(format!("{e:#}"));
    }
    worker.finish()?;
    // Every guest within one deadline (round after round over those not
    // reached yet), so that a dead fleet costs the timeout once.
    let t = Instant::now();
    let mut left: Vec<&Guest> = guests.iter().collect();
    let mut last_cut = BTreeMap::new();
    while !left.is_empty() && t.elapsed() < within {
        check_interrupted()?;
        let mut still = Vec::new();
        for g in left {
            match in_netns(&rig.ns.name, || Ok(transfer_once(g)))? {
                Ok(_) => {}
                Err(TransferError::Mismatch(m)) => failures.push(format!("wrong checksum: {m}")),
                Err(TransferError::Cut(c)) => {
                    last_cut.insert(g.name.clone(), c);
                    still.push(g);
                }
            }
        }
        left = still;
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for g in left {
        failures.push(format!(
            "{}: not reachable within {within:?}: {}",
            g.name,
            last_cut.get(&g.name).map_or("", String::as_str)
        ));
    }
    std::thread::sleep(Duration::from_secs_f64(args.sample_every.min(5.0)));
    samples.push(rig.sample(t0, "end", guests.len()));
    let endi = samples.len() - 1;
    compare(
        &args,
        &samples[warm],
        &samples[endi],
        "after the warm-up",
        true,
        &mut failures,
    );
    // Stop the writers (one deadline for all); all records acknowledged by
    // then are final.
    for g in &guests {
        let r = in_netns(&rig.ns.name, || {
            let addr: SocketAddr = format!("{}:{PORT_STOP}", g.ip).parse()?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            let mut out = String::new();
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        if let Err(e) = r {
            failures.push(format!("{}: cannot stop its writer: {e:#}", g.name));
        }
    }
    let stopped = |g: &Guest| rig.host.guest_log(&g.name).contains("soak-stopped");
    let _ = wait_for(within, "the writers to stop", || guests.iter().all(stopped));
    check_interrupted()?;
    for g in guests.iter().filter(|g| !stopped(g)) {
        failures.push(format!(
            "{}: its writer did not stop within {within:?}",
            g.name
        ));
    }
    let mut records: Vec<GuestRecords> = guests
        .iter()
        .map(|g| parse_log(&g.name, &rig.host.guest_log(&g.name)))
        .collect();
    for g in &guests {
        let _ = rig.host.destroy_guest(&g.name);
    }
    // Nothing of any domain left; no pins of dead mappers.
    let created = rig.created.clone();
    for l in rig.wait_clean(&created, &[]) {
        failures.push(format!("leak: {l}"));
    }
    for l in dead_ledgers(rig) {
        failures.push(format!("leak: {l}"));
    }
    if let Ok(links) = rig.ns.ip(&["-o", "link"]) {
        for l in links.lines().filter(|l| l.contains(": vif")) {
            failures.push(format!("leak: TAP left: {l}"));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    samples.push(rig.sample(t0, "empty", 0));
    compare(
        &args,
        &samples[0],
        &samples[samples.len() - 1],
        "before the first guest",
        false,
        &mut failures,
    );
    // The disks.
    for (g, r) in guests.iter().zip(records.iter_mut()) {
        match check_records(&g.data, &g.name, args.slots, r.acked, r.last) {
            Ok(lost) => r.lost = lost,
            Err(e) => r.lost = vec![format!("{e:#}")],
        }
        if r.acked == 0 {
            failures.push(format!("{}: no record acknowledged", g.name));
        }
        if r.verify_errors > 0 || r.io_errors > 0 {
            failures.push(format!(
                "{}: {} verify errors, {} I/O errors in the guest",
                g.name, r.verify_errors, r.io_errors
            ));
        }
        for l in &r.lost {
            failures.push(l.clone());
        }
    }
    let net = stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for m in &net.mismatches {
        failures.push(format!("network: {m}"));
    }
    if net.ok == 0 {
        failures.push("network: no transfer completed".into());
    }
    let mut self_check = Vec::new();
    if args.self_check && failures.is_empty() {
        if let Err(e) = plant_and_find(rig, &guests, &records, &mut self_check) {
            failures.push(format!("self-check: {e:#}"));
        }
    }
    Ok(Report {
        args,
        seed,
        samples,
        kills,
        churn,
        hotplugs,
        net,
        records,
        failures,
        self_check,
        stalls,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// Takes the device states ([`Rig::device_states`]) of each guest whose
/// acks stood still for [`STALL_SECS`] or which printed an `io-error`,
/// once per guest, into `stalls` (and prints them): who waits for whom
/// when a disk stops being answered.
fn watch_stalls(
    rig: &Rig,
    guests: &[Guest],
    progress: &mut [(u32, Instant, bool)],
    phase: Instant,
    stalls: &mut Vec<String>,
) {
    for (g, p) in guests.iter().zip(progress.iter_mut()) {
        if p.2 {
            continue;
        }
        let log = rig.host.guest_log(&g.name);
        let r = parse_log(&g.name, &log);
        if r.acked != p.0 {
            p.0 = r.acked;
            p.1 = Instant::now();
        }
        let still = p.1.elapsed() >= Duration::from_secs(STALL_SECS);
        if !still && r.io_errors == 0 {
            continue;
        }
        p.2 = true;
        let why = if r.io_errors > 0 {
            "io-error".to_owned()
        } else {
            format!("no ack for {STALL_SECS} s")
        };
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("ack ") && !l.trim().is_empty())
            .rev()
            .take(4)
            .collect();
        let line = format!(
            "{:.0} s: {} (domid {}) {why} after ack {}: {} | last lines: {}",
            phase.elapsed().as_secs_f64(),
            g.name,
            g.domid,
            r.acked,
            rig.device_states(g),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
        eprintln!("soak: stall: {line}");
        stalls.push(line);
    }
}

/// Compares each service's figures at `end` with `reference`: RSS growth
/// (when `rss`) and descriptor growth within the tolerances.
fn compare(
    args: &Args,
    reference: &Sample,
    end: &Sample,
    what: &str,
    rss: bool,
    failures: &mut Vec<String>,
) {
    for (i, s) in SERVICES.iter().enumerate() {
        let (Some(a), Some(b)) = (reference.services.get(i), end.services.get(i)) else {
            continue;
        };
        if a.pid == 0 || b.pid == 0 {
            failures.push(format!("{s}: not running at a sample ({what})"));
            continue;
        }
        if b.fds > a.fds + args.fd_tolerance {
            failures.push(format!(
                "{s}: {} open descriptors at the {}, {} {what} (tolerance {})",
                b.fds, end.label, a.fds, args.fd_tolerance
            ));
        }
        let limit =
            a.own_kib as f64 * (1.0 + args.rss_tolerance_pct / 100.0) + args.rss_slack_mib * 1024.0;
        if rss && b.own_kib as f64 > limit {
            failures.push(format!(
                "{s}: own RSS (without shared memory) {} MiB at the {}, {} MiB {what} (tolerance {}% + {} MiB)",
                mib(b.own_kib),
                end.label,
                mib(a.own_kib),
                args.rss_tolerance_pct,
                args.rss_slack_mib
            ));
        }
    }
}

/// `--self-check`: plants a leak of each kind for a destroyed domain and
/// damages one acknowledged record, and fails unless the checks find each.
fn plant_and_find(
    rig: &Rig,
    guests: &[Guest],
    records: &[GuestRecords],
    seen: &mut Vec<String>,
) -> Result<()> {
    let (g, r) = guests
        .iter()
        .zip(records)
        .find(|(_, r)| r.acked > 0)
        .context("no guest with an acknowledged record")?;
    let d = g.domid;
    // A xenstore node, a TAP and a memory file of the destroyed domain.
    let xs = rig.xs()?;
    xs.write(&format!("/local/domain/{d}/soak-planted"), b"1")
        .context("plant a xenstore node")?;
    let tap = format!("vif{d}.0");
    rig.ns.ip(&["link", "add", &tap, "type", "bridge"])?;
    let file = rig.host.mem_dir.join(format!("dom{d}-0.mem"));
    std::fs::write(&file, b"").context("plant a memory file")?;
    let found = leaks_of(rig, d, &g.name);
    let _ = xs.rm(&format!("/local/domain/{d}"));
    let _ = rig.ns.ip(&["link", "del", &tap]);
    let _ = std::fs::remove_file(&file);
    for want in ["xenstore node", "TAP", "file"] {
        let hit = found
            .iter()
            .find(|l| l.contains(want))
            .with_context(|| format!("the planted {want} was not found: {found:?}"))?;
        seen.push(format!("found the planted {want}: {hit}"));
    }
    // One acknowledged record damaged on a copy of the image.
    let copy = rig.host.dir().join("self-check.img");
    std::fs::copy(&g.data, &copy).context("copy a data image")?;
    let slot = r.acked % rig.args.slots;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .context("open the copy")?;
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(u64::from(slot) * RECORD as u64 + 100))?;
    f.write_all(b"X")?;
    drop(f);
    let bad = check_records(&copy, &g.name, rig.args.slots, r.acked, r.last)?;
    let _ = std::fs::remove_file(&copy);
    let hit = bad
        .first()
        .with_context(|| format!("the damaged record {} was not found", r.acked))?;
    seen.push(format!("found the damaged record: {hit}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(records: &[(u32, u32)], slots: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let mut data = vec![0u8; slots as usize * RECORD];
        for &(slot, seq) in records {
            let off = slot as usize * RECORD;
            data[off..off + RECORD].copy_from_slice(&record("g", seq));
        }
        std::fs::write(f.path(), data).expect("write the image");
        f
    }

    #[test]
    fn test_check_records_finds_lost_damaged_and_misplaced_records_and_allows_the_one_in_flight() {
        // Slots 0..4, records 1..=5 acknowledged (5 overwrote slot 1 after 1).
        let all = [(1, 5), (2, 2), (3, 3), (0, 4)];
        let ok = image(&all, 4);
        assert_eq!(
            check_records(ok.path(), "g", 4, 5, 5).expect("read"),
            Vec::<String>::new()
        );
        // Record 6 in flight (written, never acknowledged): allowed.
        let inflight = image(&[(1, 5), (2, 6), (3, 3), (0, 4)], 4);
        assert!(check_records(inflight.path(), "g", 4, 5, 5)
            .expect("read")
            .is_empty());
        // Record 5 lost: slot 1 still holds 1.
        let lost = image(&[(1, 1), (2, 2), (3, 3), (0, 4)], 4);
        let bad = check_records(lost.path(), "g", 4, 5, 5).expect("read");
        assert!(
            bad.iter().any(|b| b.contains("acknowledged record 5 lost")),
            "{bad:?}"
        );
        // Record 7 was never written.
        let future = image(&[(1, 5), (2, 2), (3, 7), (0, 4)], 4);
        let bad = check_records(future.path(), "g", 4, 5, 5).expect("read");
        assert!(bad.iter().any(|b| b.contains("never written")), "{bad:?}");
    }
}
