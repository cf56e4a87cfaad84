//! The figures of the host and its domains, gathered in one pass: Xen's
//! `libxenstat` role. `xl top` ([`crate::top`]) and `xl metrics`
//! ([`crate::metrics`]) are its two views.
//!
//! Sources, one per figure (as `libxenstat` reads the hypervisor, sysfs and
//! `/proc/net/dev`):
//! - the domains, their state, memory and vCPUs: the shim's domain list;
//!   `MAXMEM`: the domain's `memory/static-max` (libxl's node, KiB);
//! - CPU time: the domain's cgroup (`cpuacct`: the PV runtime and
//!   everything the guest runs, or the PVHVM VMM and its vCPU threads),
//!   Domain-0's is the host's less the domains' (as `xl list`,
//!   [`crate::resources::Census`]);
//! - vbds: the `statistics/` nodes backendd writes in each backend
//!   directory (`oo_req`, `rd_req`, `wr_req`, `rd_sect`, `wr_sect`: the
//!   names of Linux blkback's sysfs `statistics/` that `libxenstat` reads);
//!   a vbd without them is shown as `-` (xentop's "error");
//! - vifs: the TAP's own counters (`/sys/class/net/<vif>/statistics`) when
//!   the TAP is in this network namespace, else netback's `statistics/`
//!   nodes; from the domain's side, as `libxenstat` turns them (what the
//!   TAP receives the domain sent).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime};

use xen_shim_proto::protocol::{DomainInfo, DomainState};
use xenstore_client::{Client, XsOps};

use crate::resources::Census;
use crate::toolstack::{self, ToolstackError, BACKEND_DOMID};

/// The backend types of block devices (libxl's `vbd` for raw images,
/// `qdisk` for qcow2 and NBD).
pub const VBD_TYPES: [&str; 2] = ["vbd", "qdisk"];
/// Where the kernel shows an interface's counters.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// A domain's run state as `libxenstat` reports it (several may hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// On a CPU or runnable.
    pub running: bool,
    /// Waiting for an event.
    pub blocked: bool,
    /// Paused by the toolstack.
    pub paused: bool,
    /// Shut down.
    pub shutdown: bool,
    /// Crashed.
    pub crashed: bool,
    /// Being destroyed.
    pub dying: bool,
}

impl State {
    /// From `xl list`'s six flags (`r b p s c d` or `-`, in that order).
    #[must_use]
    pub fn from_flags(flags: &str) -> Self {
        let f: Vec<char> = flags.chars().collect();
        let at = |i: usize, c: char| f.get(i) == Some(&c);
        Self {
            running: at(0, 'r'),
            blocked: at(1, 'b'),
            paused: at(2, 'p'),
            shutdown: at(3, 's'),
            crashed: at(4, 'c'),
            dying: at(5, 'd'),
        }
    }

    /// xentop's STATE column: `d s b c p r` or `-`, in that order.
    #[must_use]
    pub fn xentop(&self) -> String {
        [
            (self.dying, 'd'),
            (self.shutdown, 's'),
            (self.blocked, 'b'),
            (self.crashed, 'c'),
            (self.paused, 'p'),
            (self.running, 'r'),
        ]
        .iter()
        .map(|&(on, c)| if on { c } else { '-' })
        .collect()
    }

    /// One name for the metrics' `state` label, the first that holds of
    /// running, blocked, paused, shutdown, crashed, dying (xentop's
    /// summary order).
    #[must_use]
    pub fn name(&self) -> &'static str {
        if self.running {
            "running"
        } else if self.blocked {
            "blocked"
        } else if self.paused {
            "paused"
        } else if self.shutdown {
            "shutdown"
        } else if self.crashed {
            "crashed"
        } else if self.dying {
            "dying"
        } else {
            "unknown"
        }
    }
}

/// One vbd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vbd {
    /// Device id (`51712` for `xvda`).
    pub devid: u32,
    /// Backend type (`vbd` or `qdisk`).
    pub backend_type: String,
    /// The backend's xenbus state (4: Connected), if readable.
    pub state: Option<u32>,
    /// The backend's error node (the device failed), if any.
    pub error: Option<String>,
    /// The counters; `None` when backendd has published none yet.
    pub counters: Option<VbdCounters>,
}

/// A vbd's counters (`statistics/`, summed over its connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VbdCounters {
    /// Batches that found the ring full (`oo_req`).
    pub oo_req: u64,
    /// Reads (`rd_req`).
    pub rd_req: u64,
    /// Writes (`wr_req`).
    pub wr_req: u64,
    /// Flushes (`f_req`).
    pub f_req: u64,
    /// Discards (`ds_req`).
    pub ds_req: u64,
    /// 512-byte sectors read (`rd_sect`).
    pub rd_sect: u64,
    /// 512-byte sectors written (`wr_sect`).
    pub wr_sect: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Requests answered as unsupported.
    pub unsupported: u64,
    /// Connections of the frontend.
    pub connects: u64,
}

impl VbdCounters {
    /// From `statistics/` names and values; `None` without `rd_req`.
    #[must_use]
    pub fn from_nodes(n: &BTreeMap<String, u64>) -> Option<Self> {
        let g = |k: &str| n.get(k).copied().unwrap_or(0);
        n.contains_key("rd_req").then(|| Self {
            oo_req: g("oo_req"),
            rd_req: g("rd_req"),
            wr_req: g("wr_req"),
            f_req: g("f_req"),
            ds_req: g("ds_req"),
            rd_sect: g("rd_sect"),
            wr_sect: g("wr_sect"),
            errors: g("errors"),
            unsupported: g("unsupported"),
            connects: g("connects"),
        })
    }
}

/// One vif, counted from the domain's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Net {
    /// Device id.
    pub devid: u32,
    /// The TAP's name.
    pub ifname: String,
    /// The backend's xenbus state, if readable.
    pub state: Option<u32>,
    /// The backend's error node, if any.
    pub error: Option<String>,
    /// Bytes the domain received.
    pub rx_bytes: u64,
    /// Packets the domain received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errs: u64,
    /// Packets dropped on the way to the domain.
    pub rx_drop: u64,
    /// Bytes the domain sent.
    pub tx_bytes: u64,
    /// Packets the domain sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errs: u64,
    /// Packets of the domain dropped.
    pub tx_drop: u64,
    /// Connections of the frontend (netback's `connects`).
    pub connects: u64,
}

/// One vCPU of a PVHVM domain: its VMM thread (`xen-vmm-vcpu<N>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vcpu {
    /// vCPU number.
    pub id: u32,
    /// The host CPU it last ran on.
    pub cpu: u32,
    /// Running or runnable (`R`) now.
    pub running: bool,
    /// CPU time, nanoseconds.
    pub time_ns: u64,
}

/// The prefix of a PVHVM VMM's vCPU thread names.
pub const VCPU_THREAD: &str = "xen-vmm-vcpu";

/// A vCPU from its thread's `comm` and `/proc/<tid>/stat` line (`hz`:
/// clock ticks per second); `None` if it is not a vCPU thread.
#[must_use]
pub fn parse_vcpu(comm: &str, stat: &str, hz: u64) -> Option<Vcpu> {
    let id: u32 = comm.trim().strip_prefix(VCPU_THREAD)?.parse().ok()?;
    // The fields after the command (which may hold spaces and `)`).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime 14, stime 15, processor 39.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ticks = num(11)?.saturating_add(num(12)?);
    Some(Vcpu {
        id,
        cpu: u32::try_from(num(36)?).ok()?,
        running: f.first() == Some(&"R"),
        time_ns: ticks.saturating_mul(1_000_000_000) / hz.max(1),
    })
}

/// The vCPUs of the PVHVM domain `domid` (none for a PV domain, whose
/// vCPUs are not threads of their own, or without a group).
fn vcpus_of(domid: u16) -> Vec<Vcpu> {
    let Ok(h) = crate::resources::hierarchy() else {
        return Vec::new();
    };
    let Some(g) = h.groups().ok().and_then(|names| {
        names
            .into_iter()
            .find(|n| crate::resources::group_domid(n) == Some(domid))
            .and_then(|n| h.group(&n).ok())
    }) else {
        return Vec::new();
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let mut v: Vec<Vcpu> = g
        .threads()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|tid| {
            let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
            parse_vcpu(&comm, &stat, hz)
        })
        .collect();
    v.sort_by_key(|c| c.id);
    v
}

/// One domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    /// Domain id.
    pub domid: u16,
    /// Name (`Domain-0` for domain 0).
    pub name: String,
    /// `pv` or `pvhvm`.
    pub kind: String,
    /// Run state.
    pub state: State,
    /// CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Memory, KiB.
    pub mem_kib: u64,
    /// Most memory, KiB (`None`: no limit).
    pub max_mem_kib: Option<u64>,
    /// vCPUs.
    pub vcpus: u32,
    /// Its vifs, by devid.
    pub nets: Vec<Net>,
    /// Its vbds, by devid.
    pub vbds: Vec<Vbd>,
    /// Its xenstore usage against its quotas (`xenstore-control quota
    /// <domid>`: name, used, max), when xenstored reports it.
    pub xenstore_quota: Vec<(String, u64, u64)>,
    /// Its vCPUs one by one (PVHVM domains: the VMM's vCPU threads; empty
    /// for PV domains).
    pub vcpu_stats: Vec<Vcpu>,
}

/// The host and its domains at one moment.
#[derive(Debug, Clone)]
pub struct Node {
    /// When it was taken (for rates).
    pub at: Instant,
    /// The same moment on the wall clock.
    pub wall: SystemTime,
    /// Host memory, KiB.
    pub tot_mem_kib: u64,
    /// Memory available to new domains, KiB (`MemAvailable`).
    pub free_mem_kib: u64,
    /// Online CPUs.
    pub nr_cpus: u32,
    /// CPU clock, MHz (0 if unknown).
    pub cpu_mhz: u64,
    /// The domains, by domid.
    pub domains: Vec<Domain>,
}

impl Node {
    /// Reads the host, the shim and xenstore (xenstore is optional: a
    /// host without xenstored shows no devices).
    ///
    /// # Errors
    /// The shim does not answer.
    pub fn take() -> Result<Self, ToolstackError> {
        let control = toolstack::shim(false)?;
        let all = control
            .list_domains()
            .map_err(|source| ToolstackError::Shim {
                what: "list domains".into(),
                source,
            })?;
        let xs = toolstack::xenstore(false).ok();
        Ok(Self::of(&all, xs.as_ref()))
    }

    /// The figures of the domains `all` (with xenstore `xs` if any).
    #[must_use]
    pub fn of(all: &[DomainInfo], xs: Option<&Client>) -> Self {
        let census = Census::take();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mut domains: Vec<Domain> = all.iter().map(|d| domain(d, all, &census, xs)).collect();
        domains.sort_by_key(|d| d.domid);
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
            tot_mem_kib: meminfo_kib(&meminfo, "MemTotal"),
            free_mem_kib: meminfo_kib(&meminfo, "MemAvailable"),
            nr_cpus: online_cpus(),
            cpu_mhz: cpu_mhz(),
            domains,
        }
    }

    /// The domain `domid`.
    #[must_use]
    pub fn domain(&self, domid: u16) -> Option<&Domain> {
        self.domains.iter().find(|d| d.domid == domid)
    }
}

/// CPU(%) of `cur` since `prev` (100 is one CPU), as xentop: 0 without an
/// earlier sample of the same domain.
#[must_use]
pub fn cpu_pct(prev: Option<&Node>, cur: &Node, d: &Domain) -> f64 {
    let Some(p) = prev else {
        return 0.0;
    };
    let Some(old) = p.domain(d.domid) else {
        return 0.0;
    };
    let dt = cur.at.saturating_duration_since(p.at).as_nanos() as f64;
    if dt <= 0.0 {
        return 0.0;
    }
    d.cpu_ns.saturating_sub(old.cpu_ns) as f64 * 100.0 / dt
}

fn domain(d: &DomainInfo, all: &[DomainInfo], census: &Census, xs: Option<&Client>) -> Domain {
    let f = census.figures(d, all);
    let state = match d.state {
        // The shim's flags say "shut down" or "crashed" already; a
        // Dying domain is shown as such whatever its runtime does.
        DomainState::Dying => State {
            dying: true,
            ..State::default()
        },
        _ => State::from_flags(&f.flags),
    };
    let read = |p: &str| -> Option<String> {
        xs?.read_opt(p)
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
    };
    let max_mem_kib = if d.domid == 0 {
        None
    } else {
        Some(
            read(&format!("/local/domain/{}/memory/static-max", d.domid))
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.memory_mib.saturating_mul(1024)),
        )
    };
    let (nets, vbds, xenstore_quota) = match xs {
        Some(xs) if d.domid != 0 => (
            nets(xs, d.domid),
            vbds(xs, d.domid),
            xenstore_quota(xs, d.domid),
        ),
        _ => (Vec::new(), Vec::new(), Vec::new()),
    };
    Domain {
        domid: d.domid,
        name: if d.domid == 0 {
            "Domain-0".into()
        } else {
            d.name.clone()
        },
        kind: format!("{:?}", d.kind).to_lowercase(),
        state,
        cpu_ns: (f.time_s.max(0.0) * 1e9) as u64,
        mem_kib: f.mem_mib.saturating_mul(1024),
        max_mem_kib,
        vcpus: d.vcpus,
        nets,
        vbds,
        xenstore_quota,
        vcpu_stats: if d.kind == xen_shim_proto::layout::DomainType::Pvhvm {
            vcpus_of(d.domid)
        } else {
            Vec::new()
        },
    }
}

/// A backend directory's `statistics/` nodes as numbers.
fn statistics(xs: &Client, be: &str) -> BTreeMap<String, u64> {
    let dir = format!("{be}/statistics");
    let mut m = BTreeMap::new();
    for k in toolstack::list_or_empty(xs, &dir) {
        if let Ok(Some(v)) = xs.read_opt(&format!("{dir}/{k}")) {
            if let Ok(n) = String::from_utf8_lossy(&v).trim().parse::<u64>() {
                m.insert(k, n);
            }
        }
    }
    m
}

fn read_str(xs: &Client, p: &str) -> Option<String> {
    xs.read_opt(p)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
}

/// The backend's error node (`/local/domain/<be>/error/<backend path
/// below the domain>/error`, Xen's `xenbus_dev_fatal`).
fn error_node(xs: &Client, be: &str) -> Option<String> {
    let prefix = format!("/local/domain/{BACKEND_DOMID}/");
    let rest = be.strip_prefix(&prefix)?;
    read_str(xs, &format!("{prefix}error/{rest}/error"))
}

fn devids(xs: &Client, dir: &str) -> Vec<u32> {
    let mut v: Vec<u32> = toolstack::list_or_empty(xs, dir)
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

fn vbds(xs: &Client, domid: u16) -> Vec<Vbd> {
    let mut out = Vec::new();
    for ty in VBD_TYPES {
        let dir = format!("/local/domain/{BACKEND_DOMID}/backend/{ty}/{domid}");
        for devid in devids(xs, &dir) {
            let be = format!("{dir}/{devid}");
            out.push(Vbd {
                devid,
                backend_type: ty.to_owned(),
                state: read_str(xs, &format!("{be}/state")).and_then(|s| s.parse().ok()),
                error: error_node(xs, &be),
                counters: VbdCounters::from_nodes(&statistics(xs, &be)),
            });
        }
    }
    out.sort_by_key(|v| v.devid);
    out
}

fn nets(xs: &Client, domid: u16) -> Vec<Net> {
    let dir = format!("/local/domain/{BACKEND_DOMID}/backend/vif/{domid}");
    devids(xs, &dir)
        .into_iter()
        .map(|devid| {
            let be = format!("{dir}/{devid}");
            let ifname = read_str(xs, &format!("{be}/vifname"))
                .filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
                .unwrap_or_else(|| format!("vif{domid}.{devid}"));
            let st = statistics(xs, &be);
            let mut n = match tap_counters(Path::new(SYS_CLASS_NET), &ifname) {
                Some(n) => n,
                None => netback_counters(&st),
            };
            n.devid = devid;
            n.ifname = ifname;
            n.state = read_str(xs, &format!("{be}/state")).and_then(|s| s.parse().ok());
            n.error = error_node(xs, &be);
            n.connects = st.get("connects").copied().unwrap_or(0);
            n
        })
        .collect()
}

/// The TAP's counters from the domain's side (`sys` is `/sys/class/net`):
/// what the interface received the domain sent.
fn tap_counters(sys: &Path, ifname: &str) -> Option<Net> {
    let dir = sys.join(ifname).join("statistics");
    let g = |k: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(k))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(Net {
        tx_bytes: g("rx_bytes")?,
        tx_packets: g("rx_packets")?,
        tx_errs: g("rx_errors").unwrap_or(0),
        tx_drop: g("rx_dropped").unwrap_or(0),
        rx_bytes: g("tx_bytes")?,
        rx_packets: g("tx_packets")?,
        rx_errs: g("tx_errors").unwrap_or(0),
        rx_drop: g("tx_dropped").unwrap_or(0),
        ..Net::default()
    })
}

/// netback's counters (already named from the guest's side: `tx` is what
/// the guest sent).
fn netback_counters(st: &BTreeMap<String, u64>) -> Net {
    let g = |k: &str| st.get(k).copied().unwrap_or(0);
    Net {
        tx_bytes: g("tx_bytes"),
        tx_packets: g("tx_packets"),
        tx_drop: g("tx_dropped"),
        rx_bytes: g("rx_bytes"),
        rx_packets: g("rx_packets"),
        rx_drop: g("rx_dropped"),
        ..Net::default()
    }
}

/// `xenstore-control quota <domid>`: `name : used (max max)` lines.
fn xenstore_quota(xs: &Client, domid: u16) -> Vec<(String, u64, u64)> {
    let Ok(text) = xs.control("quota", domid.to_string().as_bytes()) else {
        return Vec::new();
    };
    parse_quota_report(&String::from_utf8_lossy(&text))
}

/// Parses xenstored's per-domain quota report.
#[must_use]
pub fn parse_quota_report(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let (used, max) = rest.split_once("(max")?;
            let max = max.trim().trim_end_matches(')').trim();
            Some((
                name.trim().to_owned(),
                used.trim().parse().ok()?,
                max.parse().ok()?,
            ))
        })
        .collect()
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

fn online_cpus() -> u32 {
    std::fs::read_to_string(crate::resources::ONLINE_CPUS)
        .ok()
        .and_then(|t| xen_cgroup::CpuSet::parse(&t).ok())
        .map_or(1, |s| u32::try_from(s.len()).unwrap_or(u32::MAX))
}

fn cpu_mhz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "cpu MHz")
                    .then(|| v.trim().parse::<f64>().ok())
                    .flatten()
            })
        })
        .map_or(0, |m| m as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_state_xentop_order_is_dsbcpr() {
        let s = State::from_flags("-b----");
        assert_eq!(s.xentop(), "--b---");
        assert_eq!(State::from_flags("r-----").xentop(), "-----r");
        assert_eq!(State::from_flags("--p---").xentop(), "----p-");
        assert_eq!(State::from_flags("---s--").name(), "shutdown");
        assert_eq!(State::from_flags("").xentop(), "------");
    }

    #[test]
    fn test_vbd_counters_need_rd_req() {
        let mut m = BTreeMap::new();
        m.insert("wr_req".to_owned(), 3);
        assert_eq!(VbdCounters::from_nodes(&m), None);
        m.insert("rd_req".to_owned(), 2);
        m.insert("rd_sect".to_owned(), 16);
        let c = VbdCounters::from_nodes(&m).expect("counters");
        assert_eq!((c.rd_req, c.wr_req, c.rd_sect, c.oo_req), (2, 3, 16, 0));
    }

    #[test]
    fn test_tap_counters_swap_to_the_domains_side() {
        let dir = tempfile::tempdir().expect("temp dir");
        let st = dir.path().join("vif3.0/statistics");
        std::fs::create_dir_all(&st).expect("mkdir");
        for (k, v) in [
            ("rx_bytes", 1000),
            ("rx_packets", 10),
            ("tx_bytes", 2000),
            ("tx_packets", 20),
            ("tx_dropped", 1),
        ] {
            std::fs::write(st.join(k), format!("{v}\n")).expect("write");
        }
        let n = tap_counters(dir.path(), "vif3.0").expect("counters");
        assert_eq!((n.tx_bytes, n.tx_packets), (1000, 10));
        assert_eq!((n.rx_bytes, n.rx_packets, n.rx_drop), (2000, 20, 1));
        assert!(tap_counters(dir.path(), "vif9.0").is_none());
    }

    #[test]
    fn test_parse_quota_report_reads_used_and_max() {
        let r = "Domain 3:\nnodes            :       12 (max     1000)\nwatches          :        2 (max      128)\n";
        assert_eq!(
            parse_quota_report(r),
            vec![
                ("nodes".to_owned(), 12, 1000),
                ("watches".to_owned(), 2, 128)
            ]
        );
        assert!(parse_quota_report("garbage\n: (max x)").is_empty());
    }

    #[test]
    fn test_parse_vcpu_reads_time_cpu_and_state_of_vcpu_threads() {
        // utime 150 + stime 50 ticks at 100 Hz: 2 s; processor 1.
        let stat = "4242 (xen-vmm-vcpu1) R 1 2 3 0 -1 4194560 10 0 0 0 150 50 0 0 20 0 4 0                     100 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let v = parse_vcpu("xen-vmm-vcpu1\n", stat, 100).expect("a vCPU");
        assert_eq!(
            v,
            Vcpu {
                id: 1,
                cpu: 1,
                running: true,
                time_ns: 2_000_000_000
            }
        );
        assert_eq!(parse_vcpu("xen-vmm-watchdog", stat, 100), None);
        assert_eq!(parse_vcpu("xen-vmm-vcpu0", "garbage", 100), None);
        // A command with spaces and parentheses.
        let odd = "7 (a) b) S 1 2 3 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0";
        assert_eq!(
            parse_vcpu("xen-vmm-vcpu0", odd, 100).map(|v| v.time_ns),
            Some(100_000_000)
        );
    }

    #[test]
    fn test_meminfo_kib_reads_the_key() {
        let m = "MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    8192 kB\n";
        assert_eq!(meminfo_kib(m, "MemTotal"), 16384);
        assert_eq!(meminfo_kib(m, "MemAvailable"), 8192);
        assert_eq!(meminfo_kib(m, "Nope"), 0);
    }
}
