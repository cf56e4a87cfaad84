//! `xl metrics --listen ADDR`: [`crate::stat`]'s figures in Prometheus's
//! text format (version 0.0.4) over HTTP, `GET /metrics`, one fresh
//! reading per scrape.
//!
//! Names follow Xen's words with Prometheus's conventions (`_total` for
//! counters, base units): `xen_domain_*{domain, domid}` (CPU seconds,
//! memory, vCPUs, state), `xen_vbd_*{domain, domid, device}` (Xen's vbd
//! `statistics/`: `oo_req`, `rd_req`, `wr_req`, `rd_sect`, `wr_sect`, plus
//! flushes, discards, errors, connects, connected, failed),
//! `xen_vif_*{domain, domid, device, ifname}` from the domain's side,
//! `xen_xenstore_quota_*{domain, domid, quota}` (the domain's xenstore use
//! and limits, `xenstore-control quota`), `xen_node_*` and
//! `xen_daemon_up{daemon}` (shim, xenstored, backendd). Not available:
//! xenstored's connection count and quota hits (xenstored reports them to
//! no client).
//!
//! The server is one thread serving one request at a time (a scrape takes
//! milliseconds); each request is bounded (8 KiB of header, a 5 s read
//! timeout), so a stuck client delays the next scrape by at most that.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::stat::{Domain, Node};
use crate::toolstack::{self, ToolstackError};

/// Longest request header read.
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written: its samples follow its `HELP`/`TYPE`.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

/// A label value escaped as the text format wants (`\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// What the daemons answered while the figures were read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Daemons {
    /// The shim answered.
    pub shim: bool,
    /// xenstored answered.
    pub xenstored: bool,
    /// backendd's pid file names a live process.
    pub backendd: bool,
}

/// The exposition of `node` (and the daemons' health).
#[must_use]
pub fn render(node: &Node, daemons: Daemons) -> String {
    let mut s = String::new();
    let ds = &node.domains;
    let dl = |d: &Domain| (d.name.clone(), d.domid.to_string());

    let mut f = family(
        &mut s,
        "xen_daemon_up",
        "gauge",
        "Whether the host service answered (1) or not (0).",
    );
    for (name, up) in [
        ("xen-shimd", daemons.shim),
        ("xenstored", daemons.xenstored),
        ("backendd", daemons.backendd),
    ] {
        f.sample(&[("daemon", name)], f64::from(u8::from(up)));
    }
    family(
        &mut s,
        "xen_node_memory_total_bytes",
        "gauge",
        "Host memory.",
    )
    .sample(&[], node.tot_mem_kib as f64 * 1024.0);
    family(
        &mut s,
        "xen_node_memory_free_bytes",
        "gauge",
        "Host memory available to new domains.",
    )
    .sample(&[], node.free_mem_kib as f64 * 1024.0);
    family(&mut s, "xen_node_cpus", "gauge", "Online CPUs of the host.")
        .sample(&[], f64::from(node.nr_cpus));
    family(
        &mut s,
        "xen_node_domains",
        "gauge",
        "Domains, Domain-0 included.",
    )
    .sample(&[], ds.len() as f64);

    type DomainGet = fn(&Domain) -> Option<f64>;
    let per_domain: [(&'static str, &str, &str, DomainGet); 5] = [
        (
            "xen_domain_cpu_seconds_total",
            "counter",
            "CPU time of the domain (its cgroup's).",
            |d| Some(d.cpu_ns as f64 / 1e9),
        ),
        (
            "xen_domain_memory_bytes",
            "gauge",
            "Memory of the domain.",
            |d| Some(d.mem_kib as f64 * 1024.0),
        ),
        (
            "xen_domain_memory_max_bytes",
            "gauge",
            "Most memory the domain may have (absent: no limit).",
            |d| d.max_mem_kib.map(|m| m as f64 * 1024.0),
        ),
        ("xen_domain_vcpus", "gauge", "vCPUs of the domain.", |d| {
            Some(f64::from(d.vcpus))
        }),
        (
            "xen_domain_devices",
            "gauge",
            "Block and network devices of the domain.",
            |d| Some((d.vbds.len() + d.nets.len()) as f64),
        ),
    ];
    for (name, kind, help, get) in per_domain {
        let mut f = family(&mut s, name, kind, help);
        for d in ds {
            if let Some(v) = get(d) {
                let (n, id) = dl(d);
                f.sample(&[("domain", &n), ("domid", &id)], v);
            }
        }
    }
    let mut f = family(
        &mut s,
        "xen_domain_state",
        "gauge",
        "1 for the domain's state (xentop's order of precedence).",
    );
    for d in ds {
        let (n, id) = dl(d);
        f.sample(
            &[("domain", &n), ("domid", &id), ("state", d.state.name())],
            1.0,
        );
    }

    type VbdGet = fn(&crate::stat::Vbd) -> Option<f64>;
    let per_vbd: [(&'static str, &str, &str, VbdGet); 12] = [
        (
            "xen_vbd_out_of_requests_total",
            "counter",
            "Times the backend found the ring full (Xen's oo_req).",
            |v| v.counters.map(|c| c.oo_req as f64),
        ),
        (
            "xen_vbd_read_requests_total",
            "counter",
            "Read requests served (rd_req).",
            |v| v.counters.map(|c| c.rd_req as f64),
        ),
        (
            "xen_vbd_write_requests_total",
            "counter",
            "Write requests served (wr_req).",
            |v| v.counters.map(|c| c.wr_req as f64),
        ),
        (
            "xen_vbd_flush_requests_total",
            "counter",
            "Flushes served (f_req).",
            |v| v.counters.map(|c| c.f_req as f64),
        ),
        (
            "xen_vbd_discard_requests_total",
            "counter",
            "Discards served (ds_req).",
            |v| v.counters.map(|c| c.ds_req as f64),
        ),
        (
            "xen_vbd_read_sectors_total",
            "counter",
            "512-byte sectors read (rd_sect).",
            |v| v.counters.map(|c| c.rd_sect as f64),
        ),
        (
            "xen_vbd_write_sectors_total",
            "counter",
            "512-byte sectors written (wr_sect).",
            |v| v.counters.map(|c| c.wr_sect as f64),
        ),
        (
            "xen_vbd_errors_total",
            "counter",
            "Requests answered with an error.",
            |v| v.counters.map(|c| c.errors as f64),
        ),
        (
            "xen_vbd_unsupported_total",
            "counter",
            "Requests answered as not supported.",
            |v| v.counters.map(|c| c.unsupported as f64),
        ),
        (
            "xen_vbd_connects_total",
            "counter",
            "Times the frontend connected (reconnects are the excess over 1).",
            |v| v.counters.map(|c| c.connects as f64),
        ),
        (
            "xen_vbd_connected",
            "gauge",
            "1 when the backend is Connected (xenbus state 4).",
            |v| Some(f64::from(u8::from(v.state == Some(4)))),
        ),
        (
            "xen_vbd_failed",
            "gauge",
            "1 when the backend failed the device (its error node).",
            |v| Some(f64::from(u8::from(v.error.is_some()))),
        ),
    ];
    for (name, kind, help, get) in per_vbd {
        let mut f = family(&mut s, name, kind, help);
        for d in ds {
            let (n, id) = dl(d);
            for v in &d.vbds {
                if let Some(x) = get(v) {
                    let dev = v.devid.to_string();
                    f.sample(&[("domain", &n), ("domid", &id), ("device", &dev)], x);
                }
            }
        }
    }

    type NetGet = fn(&crate::stat::Net) -> f64;
    let per_vif: [(&'static str, &str, &str, NetGet); 11] = [
        (
            "xen_vif_rx_bytes_total",
            "counter",
            "Bytes the domain received.",
            |n| n.rx_bytes as f64,
        ),
        (
            "xen_vif_rx_packets_total",
            "counter",
            "Packets the domain received.",
            |n| n.rx_packets as f64,
        ),
        (
            "xen_vif_rx_errors_total",
            "counter",
            "Receive errors.",
            |n| n.rx_errs as f64,
        ),
        (
            "xen_vif_rx_dropped_total",
            "counter",
            "Packets dropped on the way to the domain.",
            |n| n.rx_drop as f64,
        ),
        (
            "xen_vif_tx_bytes_total",
            "counter",
            "Bytes the domain sent.",
            |n| n.tx_bytes as f64,
        ),
        (
            "xen_vif_tx_packets_total",
            "counter",
            "Packets the domain sent.",
            |n| n.tx_packets as f64,
        ),
        (
            "xen_vif_tx_errors_total",
            "counter",
            "Transmit errors.",
            |n| n.tx_errs as f64,
        ),
        (
            "xen_vif_tx_dropped_total",
            "counter",
            "Packets of the domain dropped.",
            |n| n.tx_drop as f64,
        ),
        (
            "xen_vif_connects_total",
            "counter",
            "Times the frontend connected.",
            |n| n.connects as f64,
        ),
        (
            "xen_vif_connected",
            "gauge",
            "1 when the backend is Connected (xenbus state 4).",
            |n| f64::from(u8::from(n.state == Some(4))),
        ),
        (
            "xen_vif_failed",
            "gauge",
            "1 when the backend failed the device (its error node).",
            |n| f64::from(u8::from(n.error.is_some())),
        ),
    ];
    for (name, kind, help, get) in per_vif {
        let mut f = family(&mut s, name, kind, help);
        for d in ds {
            let (n, id) = dl(d);
            for v in &d.nets {
                let dev = v.devid.to_string();
                f.sample(
                    &[
                        ("domain", &n),
                        ("domid", &id),
                        ("device", &dev),
                        ("ifname", &v.ifname),
                    ],
                    get(v),
                );
            }
        }
    }

    for (name, help, used) in [
        (
            "xen_xenstore_quota_used",
            "The domain's xenstore use of each quota (xenstore-control quota).",
            true,
        ),
        (
            "xen_xenstore_quota_limit",
            "The domain's xenstore quota limits.",
            false,
        ),
    ] {
        let mut f = family(&mut s, name, "gauge", help);
        for d in ds {
            let (n, id) = dl(d);
            for (q, u, m) in &d.xenstore_quota {
                let v = if used { *u } else { *m };
                f.sample(&[("domain", &n), ("domid", &id), ("quota", q)], v as f64);
            }
        }
    }
    s
}

/// Reads the figures and the daemons' health now.
///
/// # Errors
/// Never for a missing daemon (that is `xen_daemon_up 0`); the shim's
/// absence gives an exposition without domains.
#[must_use]
pub fn scrape() -> String {
    let xs = toolstack::xenstore(false).ok();
    let backendd = crate::daemons::pidfile_alive(&crate::daemons::rundir().join("backendd.pid"));
    let (node, shim) = match toolstack::shim(false)
        .ok()
        .and_then(|c| c.list_domains().ok())
    {
        Some(all) => (Node::of(&all, xs.as_ref()), true),
        None => (Node::of(&[], xs.as_ref()), false),
    };
    render(
        &node,
        Daemons {
            shim,
            xenstored: xs.is_some(),
            backendd,
        },
    )
}

/// `xl metrics --listen ADDR`: serves until killed; prints the bound
/// address (`listening on ...`) to `out` first (port 0 picks one).
///
/// # Errors
/// The address cannot be bound.
pub fn serve(out: &mut dyn Write, addr: SocketAddr) -> Result<(), ToolstackError> {
    let listener = TcpListener::bind(addr).map_err(|source| ToolstackError::Io {
        what: format!("listen on {addr}"),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ToolstackError::Io {
        what: "read the bound address".into(),
        source,
    })?;
    let _ = writeln!(out, "listening on http://{local}/metrics");
    let _ = out.flush();
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                if let Err(e) = answer(c) {
                    log_failure(&e);
                }
            }
            Err(e) => log_failure(&e),
        }
    }
    Ok(())
}

/// Logs a failed request to stderr, rate-limited (clients are not trusted).
fn log_failure(e: &std::io::Error) {
    static LOG: xen_diag::LogLimiter = xen_diag::LogLimiter::new(5, Duration::from_secs(60));
    if LOG.allow() {
        eprintln!("xl metrics: a request failed: {e}");
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    BadMethod,
    BadRequest,
}

/// Routes a request's first line.
fn route(request_line: &str) -> Route {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::BadRequest;
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Route::BadRequest;
    }
    if method != "GET" && method != "HEAD" {
        return Route::BadMethod;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        Some("/") => Route::Index,
        _ => Route::NotFound,
    }
}

fn answer(mut c: TcpStream) -> std::io::Result<()> {
    c.set_read_timeout(Some(READ_TIMEOUT))?;
    c.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= MAX_REQUEST {
            return respond(
                &mut c,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too long\n",
                false,
            );
        }
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let first = text.lines().next().unwrap_or("");
    let head = first.starts_with("HEAD ");
    match route(first) {
        Route::Metrics => {
            let body = scrape();
            respond(&mut c, "200 OK", CONTENT_TYPE, body.as_bytes(), head)
        }
        Route::Index => respond(
            &mut c,
            "200 OK",
            "text/html; charset=utf-8",
            b"<html><body><a href=\"/metrics\">metrics</a></body></html>\n",
            head,
        ),
        Route::NotFound => respond(&mut c, "404 Not Found", "text/plain", b"not found\n", head),
        Route::BadRequest => respond(
            &mut c,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
            false,
        ),
        Route::BadMethod => respond(
            &mut c,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        ),
    }
}

fn respond(
    c: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let h = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(h.as_bytes())?;
    if !head {
        c.write_all(body)?;
    }
    c.flush()
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::stat::{Net, State, Vbd, VbdCounters};

    fn node() -> Node {
        let mut g = Domain {
            domid: 3,
            name: "we\"ird\\name".into(),
            kind: "pv".into(),
            state: State::from_flags("r-----"),
            cpu_ns: 1_500_000_000,
            mem_kib: 1024,
            max_mem_kib: Some(2048),
            vcpus: 2,
            nets: vec![Net {
                devid: 0,
                ifname: "vif3.0".into(),
                rx_bytes: 10,
                tx_bytes: 20,
                state: Some(4),
                ..Net::default()
            }],
            vbds: vec![Vbd {
                devid: 51712,
                backend_type: "vbd".into(),
                state: Some(4),
                error: None,
                counters: Some(VbdCounters {
                    rd_req: 5,
                    rd_sect: 40,
                    connects: 1,
                    ..VbdCounters::default()
                }),
            }],
            xenstore_quota: vec![("nodes".into(), 12, 1000)],
            vcpu_stats: Vec::new(),
        };
        let mut d0 = g.clone();
        d0.domid = 0;
        d0.name = "Domain-0".into();
        d0.max_mem_kib = None;
        d0.nets.clear();
        d0.vbds.clear();
        d0.xenstore_quota.clear();
        g.state = State::from_flags("-b----");
        Node {
            at: Instant::now(),
            wall: SystemTime::now(),
            tot_mem_kib: 4096,
            free_mem_kib: 2048,
            nr_cpus: 2,
            cpu_mhz: 0,
            domains: vec![d0, g],
        }
    }

    #[test]
    fn test_render_has_families_and_domain_labels() {
        let t = render(
            &node(),
            Daemons {
                shim: true,
                xenstored: true,
                backendd: false,
            },
        );
        assert!(t.contains("# TYPE xen_domain_cpu_seconds_total counter\n"));
        assert!(
            t.contains("xen_domain_cpu_seconds_total{domain=\"Domain-0\",domid=\"0\"} 1.5\n"),
            "{t}"
        );
        assert!(t.contains("xen_vbd_read_sectors_total{domain=\"we\\\"ird\\\\name\",domid=\"3\",device=\"51712\"} 40\n"), "{t}");
        assert!(t.contains("xen_vif_tx_bytes_total{domain=\"we\\\"ird\\\\name\",domid=\"3\",device=\"0\",ifname=\"vif3.0\"} 20\n"));
        assert!(t.contains("xen_daemon_up{daemon=\"backendd\"} 0\n"));
        assert!(
            t.contains("xen_domain_state{domain=\"Domain-0\",domid=\"0\",state=\"running\"} 1\n")
        );
        assert!(t.contains("xen_xenstore_quota_limit{domain=\"we\\\"ird\\\\name\",domid=\"3\",quota=\"nodes\"} 1000\n"));
        // Domain-0 has no limit: no sample.
        assert!(!t.contains("xen_domain_memory_max_bytes{domain=\"Domain-0\""));
        // Every family is declared once.
        let types: Vec<&str> = t.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }

    #[test]
    fn test_route_only_get_metrics_and_index() {
        assert_eq!(route("GET /metrics HTTP/1.1"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1"), Route::Metrics);
        assert_eq!(route("HEAD / HTTP/1.0"), Route::Index);
        assert_eq!(route("GET /etc/passwd HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::BadMethod);
        assert_eq!(route(""), Route::BadRequest);
        assert_eq!(route("\0\u{fffd} garbage"), Route::BadRequest);
        assert_eq!(route("GET metrics HTTP/1.1"), Route::BadRequest);
    }

    #[test]
    fn test_number_prints_integers_plainly() {
        assert_eq!(number(40.0), "40");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(0.0), "0");
    }
}
