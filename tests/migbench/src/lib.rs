//! `migbench`: what saving, restoring and live-migrating a PVHVM guest
//! costs, in one run on one machine (issue 14's figures).
//!
//! A private Dom0 ([`xen_testhost::Dom0`]: `xen-shimd` and `xenstored` as
//! threads of this process, the real `xl`, `backendd` and `xen-vmm` next to
//! this binary) with a network namespace holding a bridge and `backendd`.
//! The guests are PVHVM kernels (`frontend-drivers/pvhvm-kernel`) of
//! `--memory-mib` (256) MiB:
//!
//! - `save-restore`: a `netserve memfill` guest (its free RAM but 8 MiB
//!   filled with data it keeps: the memory file holds the whole RAM, no
//!   zero page the stream could skip) is saved with
//!   `xl save` to a file in the run's directory and restored with `xl
//!   restore`, each timed to the command's end (the save includes the
//!   guest's suspend; the restore includes the load, the introduction and
//!   the unpause), against `cp` of its memory file (the shim's, on tmpfs)
//!   to the same directory followed by an `fsync`; throughput is the save
//!   file's size over the time;
//! - `migrate-idle`, `migrate-net`: the same guest live-migrated with `xl
//!   migrate --tcp` to an `xl migrate-receive --listen` on the same Dom0
//!   (Xen allows localhost migration), idle and during an 8 MB/s HTTP
//!   download (checked intact), while the bridge's namespace pings it every
//!   millisecond: the downtime as the client sees it is the largest gap
//!   between two echo replies;
//! - `migrate-disk`: a guest running its disk self-test in rounds (`selftest`:
//!   writes, flushes, reads back) on a raw image, migrated the same way; it
//!   has no network, so its downtime is the one `xl migrate` reports (from
//!   the suspend request to the target's confirmation) and the time the
//!   guest spent inside its suspend hypercall.
//!
//! Each case runs `--reps` times; the table gives the median and the
//! (min..max) spread, the pages sent per round of every repetition, and the
//! load average (the machine may be shared).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_testhost::net::{make_bridge, start_backendd_in, Daemon, Netns};
use xen_testhost::Dom0;

/// The benchmark's cases, in the order they run.
pub const CASES: [&str; 4] = [
    "save-restore",
    "migrate-idle",
    "migrate-net",
    "migrate-disk",
];

/// How long one step may take before the run fails.
const STEP: Duration = Duration::from_secs(120);
/// The guests' subnet in the bridge's namespace (Dom0 is `.1`).
const NET: &str = "10.91.0";
/// Bytes of the download that runs during `migrate-net`.
const DOWNLOAD: usize = 48_000_000;

/// Command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "migbench")]
pub struct Args {
    /// Repetitions of each case.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The guests' memory, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u64,
    /// Only these cases (comma-separated; default all: save-restore,
    /// migrate-idle, migrate-net, migrate-disk).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The directory of `xl`, `xen-supervise`, `backendd`, `xen-vmm`
    /// (default: this binary's).
    #[arg(long)]
    pub libexec: Option<PathBuf>,
    /// The PVHVM kernel (default: built from the workspace this binary was
    /// built from, into `<target>/pvhvm-kernel`).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Copy the run's logs (backendd's, the VMMs', the console logs) into
    /// this directory at the end.
    #[arg(long)]
    pub logs: Option<PathBuf>,
}

/// Median and spread of some samples (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// `None` without samples.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Stat> {
        let v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        let (median, min, max) = xen_testhost::stats::spread(&v)?;
        Some(Stat { median, min, max })
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ({:.0}..{:.0})", self.median, self.min, self.max)
    }
}

/// One row: a figure of a case.
#[derive(Debug, Clone)]
pub struct Row {
    /// The case.
    pub case: String,
    /// What is measured.
    pub what: String,
    /// Its samples' statistics, as text.
    pub value: String,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The rows.
    pub rows: Vec<Row>,
    /// Notes (pages per round, load average).
    pub notes: Vec<String>,
}

impl Report {
    fn add(&mut self, case: &str, what: &str, samples: &[f64], unit: &str) {
        if let Some(s) = Stat::of(samples) {
            self.rows.push(Row {
                case: case.into(),
                what: what.into(),
                value: format!("{s} {unit}"),
            });
        }
    }

    /// The report as a markdown table and notes.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::from("| case | figure | median (min..max) |\n|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(s, "| {} | {} | {} |", r.case, r.what, r.value);
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n{n}");
        }
        s
    }
}

/// One live migration as `xl migrate` and the client saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Move {
    /// Pages of each round.
    pub rounds: Vec<u64>,
    /// `xl migrate`'s "N ms in all".
    pub total_ms: f64,
    /// `xl migrate`'s "N ms from the suspend to the target's confirmation".
    pub suspend_to_confirm_ms: f64,
    /// The steps of that (`migration downtime steps: ...`).
    pub steps: String,
    /// The guest's time inside its suspend hypercall (its "resumed in
    /// domain N after U us").
    pub guest_suspended_ms: f64,
    /// From the guest's resume to its vif reconnected (its "vif N
    /// reconnected, ..., U us after the resume"), for a netserve guest.
    pub vif_after_resume_ms: Option<f64>,
    /// The largest gap between two ping replies (ms), when pinged.
    pub ping_gap_ms: Option<f64>,
}

/// Parses `xl migrate`'s report into a [`Move`] (without the guest's and
/// the client's figures).
///
/// # Errors
/// No `migration successful` line.
pub fn parse_sender(out: &str) -> Result<Move> {
    let rounds = out
        .lines()
        .filter_map(|l| l.strip_prefix("migration round "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    let ok = out
        .lines()
        .find_map(|l| l.strip_prefix("migration successful: "))
        .with_context(|| format!("no `migration successful` in:\n{out}"))?;
    // "... rounds (...), T ms in all, D ms from the suspend to ..."
    let tail = ok.rsplit_once("), ").map_or(ok, |(_, t)| t);
    let mut nums = tail
        .split(", ")
        .filter_map(|p| p.split_whitespace().next()?.parse::<f64>().ok());
    let total_ms = nums.next().context("no total time")?;
    let suspend_to_confirm_ms = nums.next().unwrap_or(f64::NAN);
    let steps = out
        .lines()
        .find_map(|l| l.strip_prefix("migration downtime steps: "))
        .unwrap_or_default()
        .to_owned();
    Ok(Move {
        rounds,
        total_ms,
        suspend_to_confirm_ms,
        steps,
        guest_suspended_ms: f64::NAN,
        vif_after_resume_ms: None,
        ping_gap_ms: None,
    })
}

/// The largest gap (ms) between two successive replies of `ping -D`'s
/// output, and the replies counted.
#[must_use]
pub fn largest_gap(ping_stdout: &str) -> (f64, usize) {
    let (gap, n) = xen_testhost::net::largest_ping_gap(ping_stdout);
    (gap.as_secs_f64() * 1e3, n)
}

/// The netserve guest's "vif N reconnected, mtu M, U us after the resume"
/// (ms), the last one in `log`.
#[must_use]
pub fn vif_after_resume_ms(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_suffix(" us after the resume")?.rsplit(' ').next())
        .and_then(|us| us.parse::<f64>().ok())
        .map(|us| us / 1e3)
}

/// The guest's "resumed in domain N after U us" (ms), the last one in `log`.
#[must_use]
pub fn guest_suspended_ms(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .find_map(|l| {
            l.split_once("pvhvm-kernel: resumed in domain ")?
                .1
                .split_once(" after ")
        })
        .and_then(|(_, r)| r.split_whitespace().next()?.parse::<f64>().ok())
        .map(|us| us / 1e3)
}

fn default_kernel(libexec: &Path) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = libexec
        .parent()
        .context("the binaries are in <target>/<profile>")?;
    xen_testhost::build_pvhvm_kernel(target, &workspace)
}

/// The benchmark's Dom0, network and guests.
struct Bench {
    // Field order: the guests go (Dom0's drop) after backendd and before
    // the namespace.
    _backendd: Daemon,
    dom0: Dom0,
    ns: Netns,
    kernel: PathBuf,
    memory_mib: u64,
    bridge: String,
}

impl Bench {
    fn start(args: &Args) -> Result<Bench> {
        let libexec = match &args.libexec {
            Some(d) => d.clone(),
            None => xen_testhost::exe_dir()?,
        };
        for b in ["xl", "xen-supervise", "backendd", "xen-vmm"] {
            if !libexec.join(b).exists() {
                bail!(
                    "{} is missing: cargo build --release -p migbench -p xen-xl -p xen-backendd \
                     -p xen-vmm --bins (or pass --libexec)",
                    libexec.join(b).display()
                );
            }
        }
        let kernel = match &args.kernel {
            Some(k) => k.clone(),
            None => default_kernel(&libexec)?,
        };
        let dom0 = Dom0::start("migbench-", &libexec)?;
        let ns = Netns::unique("xmb", "b")?;
        let bridge = xen_testhost::net::bridge_name("xm", "b")?;
        make_bridge(&ns, &bridge, &format!("{NET}.1/24"))?;
        let backendd = start_backendd_in(&dom0, &ns, &[])?;
        Ok(Bench {
            _backendd: backendd,
            dom0,
            ns,
            kernel,
            memory_mib: args.memory_mib,
            bridge,
        })
    }

    fn xl(&self, args: &[&str]) -> Result<String> {
        self.dom0.xl_ok(args)
    }

    fn vmm_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dom0.rundir().join(format!("pvguest-{name}.log")))
            .unwrap_or_default()
    }

    /// Waits until `name`'s VMM log has `needle` `count` times.
    fn wait_vmm(&self, name: &str, needle: &str, count: usize) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let log = self.vmm_log(name);
            if log.matches(needle).count() >= count {
                return Ok(());
            }
            if log.contains("FAIL") || t0.elapsed() > STEP {
                bail!("guest {name}: no {needle:?} (x{count}); its VMM log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Creates a PVHVM guest `name` running `extra` with `lines` more of
    /// xl.cfg.
    fn create(&mut self, name: &str, extra: &str, lines: &str) -> Result<()> {
        let cfg = format!(
            "name = \"{name}\"\ntype = \"pvh\"\nmemory = {}\nvcpus = 1\nkernel = \"{}\"\nextra = \"{extra}\"\n{lines}",
            self.memory_mib,
            self.kernel.display()
        );
        let path = self.dom0.write_config(name, &cfg)?;
        self.dom0.track_guest(name);
        self.xl(&["create", path.to_str().context("a UTF-8 path")?])?;
        Ok(())
    }

    /// A `netserve memfill` guest at `NET.ip`, up.
    fn netserve(&mut self, name: &str, ip: u8) -> Result<String> {
        let addr = format!("{NET}.{ip}");
        let vif = format!(
            "vif = [ 'mac=00:16:3e:5b:{ip:02x}:{:02x}, bridge={}' ]\n",
            std::process::id() as u8,
            self.bridge
        );
        self.create(name, &format!("netserve ip={addr}/24 memfill"), &vif)?;
        self.wait_vmm(name, &format!("netserve: {addr}/24 up"), 1)?;
        // The client's first packets (ARP) reach it.
        let out = self.ns.exec("ping", &["-c", "1", "-W", "5", &addr])?;
        if !out.status.success() {
            bail!("the guest {addr} does not answer a ping");
        }
        Ok(addr)
    }

    /// The memory file of the only guest (the shim's `*.mem`).
    fn memory_file(&self) -> Result<PathBuf> {
        std::fs::read_dir(&self.dom0.mem_dir)
            .context("list the shim's memory directory")?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "mem"))
            .context("no guest memory file")
    }

    /// `save-restore` (see the crate docs).
    fn save_restore(&mut self, reps: usize, report: &mut Report) -> Result<()> {
        let name = "mb-save";
        self.netserve(name, 10)?;
        let file = self.dom0.dir().join("mb-save.save");
        let copy = self.dom0.dir().join("mb-save.cp");
        let (mut save, mut restore, mut cp) = (vec![], vec![], vec![]);
        let (mut save_tp, mut restore_tp, mut cp_tp) = (vec![], vec![], vec![]);
        let mut sizes = Vec::new();
        for rep in 0..reps {
            let mem = self.memory_file()?;
            let t = Instant::now();
            let st = Command::new("cp")
                .arg(&mem)
                .arg(&copy)
                .status()
                .context("run cp")?;
            if !st.success() {
                bail!("cp {} failed: {st}", mem.display());
            }
            std::fs::File::open(&copy)
                .and_then(|f| f.sync_all())
                .context("fsync the copy")?;
            let cp_s = t.elapsed().as_secs_f64();
            let copied = std::fs::metadata(&copy).map_or(0, |m| m.len());
            std::fs::remove_file(&copy).context("remove the copy")?;

            let t = Instant::now();
            self.xl(&["save", name, file.to_str().context("a UTF-8 path")?])?;
            let save_s = t.elapsed().as_secs_f64();
            let size = std::fs::metadata(&file).map_or(0, |m| m.len());
            let t = Instant::now();
            self.xl(&["restore", file.to_str().context("a UTF-8 path")?])?;
            let restore_s = t.elapsed().as_secs_f64();
            // Up again in its new domain before the next repetition.
            self.wait_vmm(name, "netserve: gratuitous ARP sent", 1)?;
            std::fs::remove_file(&file).context("remove the save file")?;
            let mib = |b: u64, s: f64| b as f64 / (1 << 20) as f64 / s;
            save.push(save_s * 1e3);
            restore.push(restore_s * 1e3);
            cp.push(cp_s * 1e3);
            save_tp.push(mib(size, save_s));
            restore_tp.push(mib(size, restore_s));
            cp_tp.push(mib(copied, cp_s));
            sizes.push(format!("{} MiB", size >> 20));
            eprintln!(
                "save-restore {}: save {:.0} ms, restore {:.0} ms, cp {:.0} ms, save file {} MiB",
                rep + 1,
                save_s * 1e3,
                restore_s * 1e3,
                cp_s * 1e3,
                size >> 20
            );
        }
        let c = "save-restore";
        report.add(c, "xl save (suspend included)", &save, "ms");
        report.add(c, "xl restore (to the guest running)", &restore, "ms");
        report.add(c, "cp of the memory file + fsync", &cp, "ms");
        report.add(c, "xl save throughput", &save_tp, "MiB/s");
        report.add(c, "xl restore throughput", &restore_tp, "MiB/s");
        report.add(c, "cp throughput", &cp_tp, "MiB/s");
        report.notes.push(format!(
            "save-restore: save file sizes {}; the save file and the copy in {} ({})",
            sizes.join(", "),
            self.dom0.dir().display(),
            fs_type(self.dom0.dir())
        ));
        self.dom0.destroy_guest(name)?;
        Ok(())
    }

    /// One `xl migrate --tcp` of `name` to a receiver on this Dom0, with a
    /// 1 ms ping of `addr` around it when given; waits until the guest
    /// printed `ready` in its new domain.
    fn migrate(&self, name: &str, addr: Option<&str>, ready: &str) -> Result<Move> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut recv = Reaped(
            self.dom0
                .xl_command(&["migrate-receive", "--listen", &listen])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("start xl migrate-receive")?,
        );
        let err = recv.0.stderr.take().context("the receiver's stderr")?;
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut rlog = String::new();
        loop {
            let l = lines
                .recv_timeout(STEP)
                .with_context(|| format!("the receiver did not listen:\n{rlog}"))?;
            rlog.push_str(&l);
            rlog.push('\n');
            if l.contains("listening on") {
                break;
            }
        }
        // Stopped (SIGINT) once the guest is back; its deadline only bounds
        // a run that fails on the way.
        let ping = match addr {
            Some(a) => Some(Reaped(
                self.ns
                    .cmd("ping")
                    .args(["-n", "-D", "-i", "0.001", "-w", "120", a])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start ping")?,
            )),
            None => None,
        };
        let ping_pid = ping.as_ref().map(|p| p.0.id());
        let ping_out = ping.map(|mut p| {
            let mut out = p.0.stdout.take();
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(o) = out.as_mut() {
                    let _ = std::io::Read::read_to_string(o, &mut s);
                }
                let _ = p.0.wait();
                s
            })
        });
        if ping_out.is_some() {
            std::thread::sleep(Duration::from_millis(1000));
        }
        let sender = self
            .dom0
            .xl_command(&["migrate", "--tcp", name, &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start xl migrate")?;
        let out = output_within(sender, STEP)?;
        let st = recv.0.wait().context("wait for the receiver")?;
        rlog.extend(lines.try_iter().map(|l| l + "\n"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !st.success() {
            bail!(
                "xl migrate: {}\n{text}\nmigrate-receive: {st}\n{rlog}",
                out.status
            );
        }
        // The new VMM's log is a new file (renamed to NAME before the
        // target's confirmation): its first `ready`.
        self.wait_vmm(name, ready, 1)?;
        let mut m = parse_sender(&text)?;
        let log = self.vmm_log(name);
        m.guest_suspended_ms = guest_suspended_ms(&log).unwrap_or(f64::NAN);
        m.vif_after_resume_ms = vif_after_resume_ms(&log);
        for l in log.lines().filter(|l| l.contains(" after ")) {
            eprintln!("  guest: {l}");
        }
        if let (Some(h), Some(pid)) = (ping_out, ping_pid) {
            // Replies on the new domain for half a second, then stop.
            let back = epoch_secs();
            std::thread::sleep(Duration::from_millis(500));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let s = h
                .join()
                .map_err(|_| anyhow::anyhow!("the ping reader panicked"))?;
            let (gap, replies) = largest_gap(&s);
            let last = s
                .lines()
                .rev()
                .filter(|l| l.contains("bytes from"))
                .find_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok());
            if replies < 100 || last.is_none_or(|t| t < back) {
                bail!("ping got {replies} replies, none after the guest was back:\n{s}");
            }
            m.ping_gap_ms = Some(gap);
        }
        Ok(m)
    }

    fn migrations(
        &mut self,
        case: &str,
        reps: usize,
        report: &mut Report,
        mut one: impl FnMut(&mut Bench) -> Result<Move>,
    ) -> Result<()> {
        let mut moves = Vec::new();
        for rep in 0..reps {
            let m = one(self)?;
            eprintln!(
                "{case} {}: {:.0} ms in all, pages per round {:?}, suspend to confirmation {:.0} ms ({}), guest suspended {:.0} ms, vif reconnected {} after the resume, largest ping gap {}",
                rep + 1,
                m.total_ms,
                m.rounds,
                m.suspend_to_confirm_ms,
                m.steps,
                m.guest_suspended_ms,
                m.vif_after_resume_ms
                    .map_or_else(|| "-".into(), |g| format!("{g:.0} ms")),
                m.ping_gap_ms.map_or_else(|| "-".into(), |g| format!("{g:.0} ms"))
            );
            moves.push(m);
        }
        let col = |f: fn(&Move) -> f64| moves.iter().map(f).collect::<Vec<f64>>();
        report.add(case, "xl migrate, in all", &col(|m| m.total_ms), "ms");
        let gaps: Vec<f64> = moves.iter().filter_map(|m| m.ping_gap_ms).collect();
        report.add(case, "downtime: largest 1 ms ping gap", &gaps, "ms");
        report.add(
            case,
            "xl: suspend request to target's confirmation",
            &col(|m| m.suspend_to_confirm_ms),
            "ms",
        );
        report.add(
            case,
            "guest: inside its suspend hypercall",
            &col(|m| m.guest_suspended_ms),
            "ms",
        );
        let vif: Vec<f64> = moves.iter().filter_map(|m| m.vif_after_resume_ms).collect();
        report.add(case, "guest: vif reconnected after its resume", &vif, "ms");
        let rounds: Vec<String> = moves.iter().map(|m| format!("{:?}", m.rounds)).collect();
        report.notes.push(format!(
            "{case}: pages per round (round 0 first, the paused round last) {}; steps of the last: {}",
            rounds.join(" "),
            moves.last().map_or("", |m| m.steps.as_str())
        ));
        Ok(())
    }
}

/// A child killed (if still running) and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `child`'s output; killed after `limit`.
fn output_within(child: Child, limit: Duration) -> Result<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.context("wait for xl"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("xl did not end within {limit:?}")
        }
    }
}

/// Seconds since the epoch (`ping -D`'s clock).
fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr().context("its address")?.port())
}

fn fs_type(p: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the benchmark (see the [crate docs](crate)).
///
/// # Errors
/// Not root, a missing binary or tool, or any step failing.
pub fn run(args: &Args) -> Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!("migbench needs root (the shim, /dev/kvm, namespaces): run it as root");
    }
    xen_testhost::need("ping", "iputils-ping")?;
    xen_testhost::need("curl", "curl")?;
    for c in &args.only {
        if !CASES.contains(&c.as_str()) {
            bail!("unknown case {c:?} (cases: {})", CASES.join(", "));
        }
    }
    let want = |c: &str| args.only.is_empty() || args.only.iter().any(|o| o == c);
    let reps = args.reps.max(1);
    let mut b = Bench::start(args)?;
    let mut report = Report::default();
    report
        .notes
        .push(format!("load average at the start: {}", loadavg()));
    if want("save-restore") {
        b.save_restore(reps, &mut report)?;
    }
    if want("migrate-idle") || want("migrate-net") {
        let name = "mb-net";
        let addr = b.netserve(name, 20)?;
        let ready = "netserve: gratuitous ARP sent";
        if want("migrate-idle") {
            b.migrations("migrate-idle", reps, &mut report, |b| {
                b.migrate(name, Some(&addr), ready)
            })?;
        }
        if want("migrate-net") {
            b.migrations("migrate-net", reps, &mut report, |b| {
                let url = format!("http://{addr}/bytes/{DOWNLOAD}");
                let curl =
                    b.ns.cmd("curl")
                        .args(["-sS", "--max-time", "60", "--limit-rate", "8M", &url])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .context("start curl")?;
                std::thread::sleep(Duration::from_millis(500));
                let m = b.migrate(name, Some(&addr), ready);
                // (Waited for whatever the move did: it ends by --max-time.)
                let out = output_within(curl, STEP)?;
                let m = m?;
                if !out.status.success()
                    || out.stdout.len() != DOWNLOAD
                    || !out
                        .stdout
                        .iter()
                        .enumerate()
                        .all(|(i, &c)| c == b'a' + (i % 26) as u8)
                {
                    bail!(
                        "the download across the move is not intact ({} bytes): {}",
                        out.stdout.len(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(m)
            })?;
        }
        b.dom0.destroy_guest(name)?;
    }
    if want("migrate-disk") {
        let name = "mb-disk";
        let img = b.dom0.dir().join("mb-disk.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .context("create the disk image")?;
        let disk = format!(
            "disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
            img.display()
        );
        b.create(name, "selftest rounds=1000000", &disk)?;
        b.wait_vmm(name, "disk self-test: PASS", 1)?;
        b.migrations("migrate-disk", reps, &mut report, |b| {
            b.migrate(name, None, "reconnected in domain")
        })?;
        b.dom0.destroy_guest(name)?;
    }
    report
        .notes
        .push(format!("load average at the end: {}", loadavg()));
    if let Some(dir) = &args.logs {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for from in [b.dom0.rundir(), b.dom0.console_logdir()] {
            for e in std::fs::read_dir(&from).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    if let Some(f) = p.file_name() {
                        std::fs::copy(&p, dir.join(f))
                            .with_context(|| format!("copy {}", p.display()))?;
                    }
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_sender_reads_rounds_and_times() {
        let out = "migration round 0: 65000 pages in 900 ms\nmigration round 1: 40 pages in 1 ms\n\
                   migration downtime steps: suspend 3.0 ms, last round 9.0 ms\n\
                   migration successful: 65100 pages in 2 rounds (65000 40), 1200 ms in all, 45 ms from the suspend to the target's confirmation\n";
        let m = parse_sender(out).expect("parsed");
        assert_eq!(m.rounds, vec![65000, 40]);
        assert_eq!(m.total_ms, 1200.0);
        assert_eq!(m.suspend_to_confirm_ms, 45.0);
        assert_eq!(m.steps, "suspend 3.0 ms, last round 9.0 ms");
    }

    #[test]
    fn test_parse_sender_without_success_fails() {
        assert!(parse_sender("migration round 0: 5 pages in 1 ms\n").is_err());
    }

    #[test]
    fn test_largest_gap_of_ping_stamps() {
        let out = "PING x\n[100.000] 64 bytes from x: icmp_seq=1\n[100.001] 64 bytes from x: icmp_seq=2\n\
                   [100.051] 64 bytes from x: icmp_seq=3\n[100.052] 64 bytes from x: icmp_seq=4\n";
        let (gap, n) = largest_gap(out);
        assert_eq!(n, 4);
        assert!((gap - 50.0).abs() < 0.01, "{gap}");
    }

    #[test]
    fn test_guest_suspended_ms_takes_the_last_resume() {
        let log = "pvhvm-kernel: resumed in domain 2 after 90000 us: x\n\
                   pvhvm-kernel: resumed in domain 3 after 45000 us: grant table\n";
        assert_eq!(guest_suspended_ms(log), Some(45.0));
        assert_eq!(guest_suspended_ms("nothing"), None);
    }

    #[test]
    fn test_vif_after_resume_ms_of_the_reconnect_line() {
        let log = "netserve: vif 0 reconnected, mtu 1500\n\
                   netserve: vif 0 reconnected, mtu 1500, 34567 us after the resume\n";
        assert_eq!(vif_after_resume_ms(log), Some(34.567));
        assert_eq!(
            vif_after_resume_ms("netserve: vif 0 reconnected, mtu 1500\n"),
            None
        );
    }

    #[test]
    fn test_stat_median_and_spread() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[1.0, 3.0]).map(|s| s.median), Some(2.0));
        assert!(Stat::of(&[]).is_none());
        assert!(Stat::of(&[f64::NAN]).is_none());
    }
}
