//! `xl top`: xentop's table of the domains ([`crate::stat`]'s first view).
//!
//! Flags as xentop's: `-d SECONDS` between updates (default 3), `-b` batch
//! (to stdout, no screen, no keys), `-i ITERATIONS`, `-n` a line per vif,
//! `-x` a line per vbd, `-v` the vCPUs' seconds, `-r` the header before
//! each domain, `-f` full names, `-z` Domain-0 first. The columns, their widths and the lines of
//! `-n`/`-x` are xentop's (`xen-utils-4.17`); rows sort by name as
//! xentop's default. CPU(%) is 0.0 in the first table (no earlier sample).
//! A PVHVM domain's vCPUs are its VMM's vCPU threads, each with its own
//! time; a PV domain's are not accounted apart (its one vCPU's time is the
//! domain's; with more, `-v` shows `-`). SSID is always 0 (no XSM/FLASK).
//!
//! The interactive screen (without `-b`) redraws in place on the
//! terminal's alternate screen: the summary lines, the table, the key
//! line; `q`, `Q`, Esc or Ctrl-C quit; `n`, `b`, `v`, `r` toggle the vif
//! lines, the vbd lines, the vCPU lines and the repeated header as in
//! xentop; any other key redraws.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::stat::{cpu_pct, Domain, Node};
use crate::toolstack::ToolstackError;

/// The Xen version the shim stands for (its ABI headers' interface
/// version, 0x040e00) with what it is.
pub const XEN_VERSION: &str = "4.14.0-shim";

/// `xl top`'s settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopOptions {
    /// Seconds between updates.
    pub delay: u32,
    /// Batch mode.
    pub batch: bool,
    /// Tables to print before ending (`None`: until stopped).
    pub iterations: Option<u32>,
    /// A line per vif.
    pub networks: bool,
    /// A line per vbd.
    pub vbds: bool,
    /// The vCPUs' times.
    pub vcpus: bool,
    /// The header before each domain.
    pub repeat_header: bool,
    /// Names not cut to 10 characters.
    pub full_name: bool,
    /// Domain-0 first.
    pub dom0_first: bool,
}

/// `xl top`'s command line (xentop's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Seconds between updates.
    #[arg(short = 'd', long = "delay", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub delay: u32,
    /// Batch mode: the tables to stdout, no screen, no keys.
    #[arg(short = 'b', long = "batch")]
    pub batch: bool,
    /// Tables to show before ending.
    #[arg(short = 'i', long = "iterations",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: Option<u32>,
    /// A line per vif.
    #[arg(short = 'n', long = "networks")]
    pub networks: bool,
    /// A line per vbd.
    #[arg(short = 'x', long = "vbds")]
    pub vbds: bool,
    /// The vCPUs' CPU seconds (PVHVM: each vCPU thread's; PV: one vCPU's
    /// is the domain's, more are not accounted apart: `-`).
    #[arg(short = 'v', long = "vcpus")]
    pub vcpus: bool,
    /// The header before each domain.
    #[arg(short = 'r', long = "repeat-header")]
    pub repeat_header: bool,
    /// Full domain names (not cut to 10 characters).
    #[arg(short = 'f', long = "full-name")]
    pub full_name: bool,
    /// Domain-0 first.
    #[arg(short = 'z', long = "dom0-first")]
    pub dom0_first: bool,
}

impl From<&TopArgs> for TopOptions {
    fn from(a: &TopArgs) -> Self {
        Self {
            delay: a.delay,
            batch: a.batch,
            iterations: a.iterations,
            networks: a.networks,
            vbds: a.vbds,
            vcpus: a.vcpus,
            repeat_header: a.repeat_header,
            full_name: a.full_name,
            dom0_first: a.dom0_first,
        }
    }
}

impl Default for TopOptions {
    fn default() -> Self {
        Self {
            delay: 3,
            batch: false,
            iterations: None,
            networks: false,
            vbds: false,
            vcpus: false,
            repeat_header: false,
            full_name: false,
            dom0_first: false,
        }
    }
}

/// The columns' headers and default widths, xentop's.
const FIELDS: [(&str, usize); 19] = [
    ("NAME", 10),
    ("STATE", 6),
    ("CPU(sec)", 10),
    ("CPU(%)", 6),
    ("MEM(k)", 10),
    ("MEM(%)", 6),
    ("MAXMEM(k)", 10),
    ("MAXMEM(%)", 9),
    ("VCPUS", 5),
    ("NETS", 4),
    ("NETTX(k)", 8),
    ("NETRX(k)", 8),
    ("VBDS", 4),
    ("VBD_OO", 8),
    ("VBD_RD", 8),
    ("VBD_WR", 8),
    ("VBD_RSECT", 10),
    ("VBD_WSECT", 10),
    ("SSID", 4),
];

/// Column indexes whose widths grow with their numbers.
const NAME: usize = 0;
const NET_TX: usize = 10;
const NET_RX: usize = 11;
const VBD_RD: usize = 14;
const VBD_WR: usize = 15;
const VBD_RSECT: usize = 16;
const VBD_WSECT: usize = 17;

/// A domain's vbd totals over the vbds that have counters (xentop's
/// `tot_vbd_reqs`): `None` if it has vbds and none has counters.
#[derive(Debug, Clone, Copy, Default)]
struct VbdTotals {
    oo: u64,
    rd: u64,
    wr: u64,
    rsect: u64,
    wsect: u64,
}

fn vbd_totals(d: &Domain) -> (VbdTotals, bool) {
    let mut t = VbdTotals::default();
    let mut shown = d.vbds.is_empty();
    for c in d.vbds.iter().filter_map(|v| v.counters) {
        shown = true;
        t.oo += c.oo_req;
        t.rd += c.rd_req;
        t.wr += c.wr_req;
        t.rsect += c.rd_sect;
        t.wsect += c.wr_sect;
    }
    (t, shown)
}

fn net_totals(d: &Domain) -> (u64, u64) {
    d.nets.iter().fold((0, 0), |(tx, rx), n| {
        (tx.saturating_add(n.tx_bytes), rx.saturating_add(n.rx_bytes))
    })
}

/// Digits of `n` (xentop's `INT_FIELD_WIDTH(n + 1)`).
fn digits(n: u64) -> usize {
    n.saturating_add(1).to_string().len()
}

/// The domains in xentop's order: by name, case-insensitively (Domain-0
/// first with `dom0_first`).
fn sorted<'a>(node: &'a Node, opts: &TopOptions) -> Vec<&'a Domain> {
    let mut v: Vec<&Domain> = node.domains.iter().collect();
    v.sort_by(|a, b| {
        let key = |d: &Domain| (!(opts.dom0_first && d.domid == 0), d.name.to_lowercase());
        key(a).cmp(&key(b))
    });
    v
}

/// The column widths for these domains.
fn widths(domains: &[&Domain], opts: &TopOptions) -> [usize; 19] {
    let mut w = FIELDS.map(|(_, w)| w);
    for d in domains {
        if opts.full_name {
            w[NAME] = w[NAME].max(d.name.len());
        }
        let (tx, rx) = net_totals(d);
        w[NET_TX] = w[NET_TX].max(digits(tx / 1024));
        w[NET_RX] = w[NET_RX].max(digits(rx / 1024));
        let (t, _) = vbd_totals(d);
        w[VBD_RD] = w[VBD_RD].max(digits(t.rd));
        w[VBD_WR] = w[VBD_WR].max(digits(t.wr));
        w[VBD_RSECT] = w[VBD_RSECT].max(digits(t.rsect));
        w[VBD_WSECT] = w[VBD_WSECT].max(digits(t.wsect));
    }
    w
}

fn header(w: &[usize; 19]) -> String {
    FIELDS
        .iter()
        .zip(w)
        .map(|((h, _), w)| format!("{h:>w$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(d: &Domain, node: &Node, prev: Option<&Node>, w: &[usize; 19], opts: &TopOptions) -> String {
    let name = if opts.full_name {
        format!("{:>w$}", d.name, w = w[NAME])
    } else {
        let cut: String = d.name.chars().take(10).collect();
        format!("{cut:>10}")
    };
    let tot = node.tot_mem_kib.max(1) as f64;
    let (maxmem, maxpct) = match d.max_mem_kib {
        Some(m) => (
            format!("{m:>10}"),
            format!("{:>9.1}", m as f64 / tot * 100.0),
        ),
        None => (format!("{:>10}", "no limit"), format!("{:>9}", "n/a")),
    };
    let (tx, rx) = net_totals(d);
    let (t, shown) = vbd_totals(d);
    let vbd = |v: u64, width: usize| {
        if shown {
            format!("{v:>width$}")
        } else {
            format!("{:>width$}", '-')
        }
    };
    [
        name,
        d.state.xentop(),
        format!("{:>10}", d.cpu_ns / 1_000_000_000),
        format!("{:>6.1}", cpu_pct(prev, node, d)),
        format!("{:>10}", d.mem_kib),
        format!("{:>6.1}", d.mem_kib as f64 / tot * 100.0),
        maxmem,
        maxpct,
        format!("{:>5}", d.vcpus),
        format!("{:>4}", d.nets.len()),
        format!("{:>w$}", tx / 1024, w = w[NET_TX]),
        format!("{:>w$}", rx / 1024, w = w[NET_RX]),
        format!("{:>4}", d.vbds.len()),
        vbd(t.oo, 8),
        vbd(t.rd, w[VBD_RD]),
        vbd(t.wr, w[VBD_WR]),
        vbd(t.rsect, w[VBD_RSECT]),
        vbd(t.wsect, w[VBD_WSECT]),
        format!("{:>4}", 0),
    ]
    .join(" ")
}

/// xentop's `VCPUs(sec):` line (five vCPUs a line).
fn vcpu_lines(d: &Domain) -> Vec<String> {
    let times: Vec<(u32, u64)> = if !d.vcpu_stats.is_empty() {
        d.vcpu_stats.iter().map(|v| (v.id, v.time_ns)).collect()
    } else if d.vcpus == 1 {
        vec![(0, d.cpu_ns)]
    } else {
        return vec!["VCPUs(sec):  -".to_owned()];
    };
    let mut out = String::from("VCPUs(sec): ");
    for (i, (id, ns)) in times.iter().enumerate() {
        if i != 0 && i % 5 == 0 {
            out.push_str("\n        ");
        }
        out.push_str(&format!(" {id:>2}: {:>10}s", ns / 1_000_000_000));
    }
    out.lines().map(str::to_owned).collect()
}

fn net_lines(d: &Domain) -> Vec<String> {
    d.nets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "Net{i} RX: {:>8}bytes {:>8}pkts {:>8}err {:>8}drop  TX: {:>8}bytes {:>8}pkts {:>8}err {:>8}drop",
                n.rx_bytes, n.rx_packets, n.rx_errs, n.rx_drop,
                n.tx_bytes, n.tx_packets, n.tx_errs, n.tx_drop
            )
        })
        .collect()
}

fn vbd_lines(d: &Domain) -> Vec<String> {
    d.vbds
        .iter()
        .map(|v| {
            // Linux's old `MAJOR`/`MINOR` of the device number.
            let details = format!("[{:>2x}:{:>2x}] ", v.devid >> 8, v.devid & 0xff);
            match v.counters {
                Some(c) => format!(
                    "VBD BlkBack {:>4} {details} OO: {:>8}   RD: {:>8}   WR: {:>8}   RSECT: {:>10}   WSECT: {:>10}",
                    v.devid, c.oo_req, c.rd_req, c.wr_req, c.rd_sect, c.wr_sect
                ),
                None => format!(
                    "VBD BlkBack {:>4} {details} OO: {:>8}   RD: {:>8}   WR: {:>8}   RSECT: {:>10}   WSECT: {:>10}",
                    v.devid, '-', '-', '-', '-', '-'
                ),
            }
        })
        .collect()
}

/// The table of one update (no summary): xentop's batch output.
#[must_use]
pub fn table(node: &Node, prev: Option<&Node>, opts: &TopOptions) -> Vec<String> {
    let domains = sorted(node, opts);
    let w = widths(&domains, opts);
    let mut out = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        if i == 0 || opts.repeat_header {
            out.push(header(&w));
        }
        out.push(row(d, node, prev, &w, opts));
        if opts.vcpus {
            out.extend(vcpu_lines(d));
        }
        if opts.networks {
            out.extend(net_lines(d));
        }
        if opts.vbds {
            out.extend(vbd_lines(d));
        }
    }
    if domains.is_empty() {
        out.push(header(&w));
    }
    out
}

/// The interactive screen's summary lines (xentop's).
#[must_use]
pub fn summary(node: &Node) -> Vec<String> {
    let count = |f: fn(&Domain) -> bool| node.domains.iter().filter(|d| f(d)).count();
    let used = node.tot_mem_kib.saturating_sub(node.free_mem_kib);
    vec![
        format!("xentop - {}   Xen {XEN_VERSION}", clock(node.wall)),
        format!(
            "{} domains: {} running, {} blocked, {} paused, {} crashed, {} dying, {} shutdown ",
            node.domains.len(),
            count(|d| d.state.running),
            count(|d| !d.state.running && d.state.blocked),
            count(|d| !d.state.running && !d.state.blocked && d.state.paused),
            count(|d| d.state.crashed && !d.state.running && !d.state.blocked && !d.state.paused),
            count(|d| d.state.dying && !d.state.running && !d.state.blocked && !d.state.paused),
            count(|d| d.state.shutdown && !d.state.running && !d.state.blocked && !d.state.paused),
        ),
        format!(
            "Mem: {}k total, {used}k used, {}k free    CPUs: {} @ {}MHz",
            node.tot_mem_kib, node.free_mem_kib, node.nr_cpus, node.cpu_mhz
        ),
    ]
}

/// `HH:MM:SS` of `t` in local time.
fn clock(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tt = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: `tm` is plain data that localtime_r fills; both pointers are
    // valid for the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&tt, &mut tm).is_null() {
            return "??:??:??".into();
        }
        tm
    };
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// `xl top`.
///
/// # Errors
/// The shim does not answer, writing fails, or the interactive screen has
/// no terminal.
pub fn run(out: &mut dyn Write, opts: &TopOptions) -> Result<(), ToolstackError> {
    if opts.batch {
        batch(out, opts)
    } else {
        interactive(out, opts)
    }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ToolstackError + '_ {
    move |source| ToolstackError::Io {
        what: what.to_owned(),
        source,
    }
}

fn batch(out: &mut dyn Write, opts: &TopOptions) -> Result<(), ToolstackError> {
    let mut prev: Option<Node> = None;
    let mut left = opts.iterations;
    loop {
        let node = Node::take()?;
        for l in table(&node, prev.as_ref(), opts) {
            writeln!(out, "{l}").map_err(io("write the table"))?;
        }
        out.flush().map_err(io("write the table"))?;
        prev = Some(node);
        if let Some(n) = left.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_secs(u64::from(opts.delay)));
    }
}

/// The terminal's rows (24 if unknown).
fn terminal_rows() -> usize {
    // SAFETY: `ws` is plain data TIOCGWINSZ fills; the fd is stdout's.
    let ws = unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) != 0 {
            return 24;
        }
        ws
    };
    if ws.ws_row == 0 {
        24
    } else {
        usize::from(ws.ws_row)
    }
}

/// Leaves the alternate screen when dropped (also on errors).
struct AltScreen<'a>(&'a mut dyn Write);

impl Drop for AltScreen<'_> {
    fn drop(&mut self) {
        let _ = self.0.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = self.0.flush();
    }
}

fn interactive(out: &mut dyn Write, opts: &TopOptions) -> Result<(), ToolstackError> {
    // SAFETY: isatty has no memory-safety preconditions.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return Err(ToolstackError::Unsupported(
            "xl top needs a terminal for its screen; use -b for batch output".into(),
        ));
    }
    let _raw = crate::console::RawMode::enter();
    let screen = AltScreen(out);
    screen
        .0
        .write_all(b"\x1b[?1049h\x1b[?25l")
        .map_err(io("set up the screen"))?;
    let mut opts = *opts;
    let mut prev: Option<Node> = None;
    let mut left = opts.iterations;
    loop {
        let node = Node::take()?;
        let rows = terminal_rows().saturating_sub(1).max(1);
        let mut lines = summary(&node);
        lines.extend(table(&node, prev.as_ref(), &opts));
        lines.truncate(rows);
        let mut frame = String::from("\x1b[H\x1b[2J");
        for l in &lines {
            frame.push_str(l);
            frame.push_str("\r\n");
        }
        frame.push_str(&format!(
            "\x1b[{};3HDelay  Networks  vBds  VCPUs  Repeat header  Quit",
            rows + 1
        ));
        screen
            .0
            .write_all(frame.as_bytes())
            .map_err(io("draw the screen"))?;
        screen.0.flush().map_err(io("draw the screen"))?;
        prev = Some(node);
        if let Some(n) = left.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                return Ok(());
            }
        }
        match wait_key(Duration::from_secs(u64::from(opts.delay)))? {
            // Esc as xentop; Ctrl-C too (raw mode takes away its signal).
            Some(b'q' | b'Q' | 0x1b | 0x03) => return Ok(()),
            Some(b'n' | b'N') => opts.networks ^= true,
            Some(b'b' | b'B') => opts.vbds ^= true,
            Some(b'r' | b'R') => opts.repeat_header ^= true,
            Some(b'v' | b'V') => opts.vcpus ^= true,
            _ => {}
        }
    }
}

/// A key typed within `delay` (`None`: none came, or end of input).
fn wait_key(delay: Duration) -> Result<Option<u8>, ToolstackError> {
    let stdin = std::io::stdin();
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {
                let mut b = [0u8; 1];
                return match nix::unistd::read(libc::STDIN_FILENO, &mut b) {
                    Ok(1) => Ok(Some(b[0])),
                    // End of input: nothing more will come; quit.
                    Ok(_) => Ok(Some(b'q')),
                    Err(nix::errno::Errno::EINTR) => Ok(None),
                    Err(e) => Err(ToolstackError::Io {
                        what: "read the keyboard".into(),
                        source: e.into(),
                    }),
                };
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(ToolstackError::Io {
                    what: "wait for the keyboard".into(),
                    source: e.into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stat::{Net, State, Vbd, VbdCounters};

    fn dom(domid: u16, name: &str) -> Domain {
        Domain {
            domid,
            name: name.into(),
            kind: "pv".into(),
            state: State::from_flags("-b----"),
            cpu_ns: 12_500_000_000,
            mem_kib: 131_072,
            max_mem_kib: Some(131_072),
            vcpus: 1,
            nets: Vec::new(),
            vbds: Vec::new(),
            xenstore_quota: Vec::new(),
            vcpu_stats: Vec::new(),
        }
    }

    fn node(domains: Vec<Domain>) -> Node {
        Node {
            at: Instant::now(),
            wall: std::time::SystemTime::now(),
            tot_mem_kib: 1_048_576,
            free_mem_kib: 524_288,
            nr_cpus: 2,
            cpu_mhz: 2000,
            domains,
        }
    }

    /// xentop 4.17's `-b` header line, byte for byte.
    const XENTOP_HEADER: &str = "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID";

    #[test]
    fn test_table_header_is_xentops() {
        let t = table(&node(vec![dom(1, "a")]), None, &TopOptions::default());
        assert_eq!(t[0], XENTOP_HEADER);
    }

    #[test]
    fn test_table_row_has_xentops_columns_and_sorts_by_name() {
        let mut d0 = dom(0, "Domain-0");
        d0.max_mem_kib = None;
        let mut g = dom(3, "guest-with-a-long-name");
        g.vbds.push(Vbd {
            devid: 51712,
            backend_type: "vbd".into(),
            counters: Some(VbdCounters {
                rd_req: 5,
                wr_req: 2,
                rd_sect: 40,
                wr_sect: 16,
                oo_req: 1,
                ..VbdCounters::default()
            }),
            ..Vbd::default()
        });
        g.nets.push(Net {
            tx_bytes: 4096,
            rx_bytes: 2048,
            ..Net::default()
        });
        let n = node(vec![g, d0]);
        let opts = TopOptions {
            networks: true,
            vbds: true,
            ..TopOptions::default()
        };
        let t = table(&n, None, &opts);
        assert_eq!(
            t[1],
            "  Domain-0 --b---         12    0.0     131072   12.5   no limit       n/a     1    0        0        0    0        0        0        0          0          0    0"
        );
        assert_eq!(
            t[2],
            "guest-with --b---         12    0.0     131072   12.5     131072      12.5     1    1        4        2    1        1        5        2         40         16    0"
        );
        assert_eq!(
            t[3],
            "Net0 RX:     2048bytes        0pkts        0err        0drop  TX:     4096bytes        0pkts        0err        0drop"
        );
        assert_eq!(
            t[4],
            "VBD BlkBack 51712 [ca: 0]  OO:        1   RD:        5   WR:        2   RSECT:         40   WSECT:         16"
        );
        // Columns line up with the header.
        assert_eq!(t[0].len(), t[1].len());
        assert_eq!(t[0].len(), t[2].len());
    }

    #[test]
    fn test_table_vbds_without_counters_show_dashes_and_cpu_pct_uses_prev() {
        let mut g = dom(3, "g");
        g.vbds.push(Vbd {
            devid: 51712,
            ..Vbd::default()
        });
        let mut prev = node(vec![g.clone()]);
        prev.at = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .expect("monotonic clock past 2 s");
        g.cpu_ns += 1_000_000_000;
        let cur = node(vec![g]);
        let t = table(&cur, Some(&prev), &TopOptions::default());
        let f: Vec<&str> = t[1].split_whitespace().collect();
        let pct: f64 = f[3].parse().expect("CPU(%)");
        assert!((45.0..=50.5).contains(&pct), "{pct}");
        assert_eq!(&f[13..18], ["-", "-", "-", "-", "-"]);
    }

    #[test]
    fn test_widths_grow_with_large_numbers() {
        let mut g = dom(3, "g");
        g.vbds.push(Vbd {
            devid: 51712,
            counters: Some(VbdCounters {
                rd_sect: 123_456_789_012,
                ..VbdCounters::default()
            }),
            ..Vbd::default()
        });
        let t = table(&node(vec![g]), None, &TopOptions::default());
        assert_eq!(t[0].len(), t[1].len());
        assert!(t[0].contains("   VBD_RSECT "), "{}", t[0]);
    }

    #[test]
    fn test_vcpu_lines_are_xentops() {
        let mut d = dom(4, "hvm");
        d.vcpus = 6;
        d.vcpu_stats = (0..6)
            .map(|id| crate::stat::Vcpu {
                id,
                cpu: 0,
                running: false,
                time_ns: u64::from(id) * 1_000_000_000,
            })
            .collect();
        assert_eq!(
            vcpu_lines(&d),
            vec![
                "VCPUs(sec):   0:          0s  1:          1s  2:          2s  3:          3s  4:          4s",
                "          5:          5s",
            ]
        );
        let pv = dom(1, "pv");
        assert_eq!(vcpu_lines(&pv), vec!["VCPUs(sec):   0:         12s"]);
    }

    #[test]
    fn test_summary_counts_states() {
        let mut p = dom(2, "p");
        p.state = State::from_flags("--p---");
        let s = summary(&node(vec![dom(1, "a"), p]));
        assert_eq!(
            s[1],
            "2 domains: 0 running, 1 blocked, 1 paused, 0 crashed, 0 dying, 0 shutdown "
        );
        assert!(s[2]
            .starts_with("Mem: 1048576k total, 524288k used, 524288k free    CPUs: 2 @ 2000MHz"));
    }
}
