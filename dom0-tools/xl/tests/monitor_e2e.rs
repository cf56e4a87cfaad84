//! `xl top` and `xl metrics` end to end, on real PV guests under load: a
//! private Dom0 (the real `xl`, `backendd` in the test's own network
//! namespace with a bridge, `xen-pvguest`), one guest running `fio` on its
//! disk and one running `iperf3 --bidir` against Dom0 over its vif.
//!
//! - `xl top -b -i 3 -d 1`: the disk guest's VBD_RD, VBD_WR, VBD_RSECT and
//!   VBD_WSECT and the network guest's NETTX and NETRX grow from table to
//!   table, the other guest's stay 0, and the disk guest's CPU(%) agrees
//!   with its cgroup's CPU accounting over the same seconds;
//! - `xl top` on a pty: the screen shows every domain and `q` ends it;
//! - `xl metrics --listen 127.0.0.1:0`: `promtool check metrics` passes on
//!   its output, and a Prometheus started by the test (own directory,
//!   unique port, 1 s scrapes) returns a rising series of the disk guest's
//!   read sectors from its HTTP query API.
//!
//! Needs root, `/dev/fuse`, fio, iperf3, iproute2 and prometheus
//! (tests/setup-host.sh installs them).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{libexec, require_root};
use xen_testhost::net::{bridge_name, make_bridge, spawn_in, start_backendd_in, Daemon, Netns};
use xen_testhost::term::{wait_exit, Terminal};
use xen_testhost::{need, Dom0};

const T: Duration = Duration::from_secs(60);

/// The private Dom0, its network namespace and bridge, backendd in it, the
/// iperf3 server, and the two loaded guests (destroyed on drop, before
/// the rest).
struct Loaded {
    disk_guest: String,
    net_guest: String,
    _iperf: Daemon,
    _backendd: Daemon,
    host: Dom0,
    _ns: Netns,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.host.destroy_guests();
    }
}

fn wait_log(host: &Dom0, name: &str, mark: &str) {
    host.wait_log(name, mark, T)
        .unwrap_or_else(|e| panic!("{e:#}\nlog of {name}:\n{}", host.guest_log(name)));
}

impl Loaded {
    /// Starts everything; `tag` makes the names unique.
    fn start(tag: &str) -> Self {
        require_root();
        for (tool, pkg) in [("fio", "fio"), ("iperf3", "iperf3"), ("ip", "iproute2")] {
            need(tool, pkg).expect("a tool this test needs");
        }
        let mut host = Dom0::start(&format!("xl-mon-{tag}-"), libexec()).expect("private Dom0");
        let ns = Netns::unique("xmn", tag).expect("network namespace");
        let br = bridge_name("xm", tag).expect("bridge name");
        make_bridge(&ns, &br, "10.79.0.1/24").expect("bridge");
        let backendd = start_backendd_in(&host, &ns, &[]).expect("backendd");
        let iperf = spawn_in(&ns, "iperf3", &["-s", "-B", "10.79.0.1", "-p", "5201"])
            .expect("iperf3 server");
        xen_testhost::net::wait_listen(&ns, 5201).expect("iperf3 listens");
        let pid = std::process::id();
        let (dg, ng) = (format!("{tag}d{pid}"), format!("{tag}n{pid}"));

        let img = host.dir.path().join("load.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .expect("disk image");
        let disk_cfg = host
            .pv_config(
                &dg,
                96,
                "#!/bin/sh\necho fio-start\n\
                 fio --name=load --filename=/dev/xvda --rw=randrw --bs=4k --size=32M \
                 --direct=1 --ioengine=psync --time_based --runtime=300 \
                 --output-format=terse > /dev/null\necho fio-end\nexec sleep 1000\n",
                &format!(
                    "disk = [ 'format=raw, vdev=xvda, access=rw, target={}' ]\n",
                    img.display()
                ),
            )
            .expect("config");
        host.track_guest(&dg);
        host.xl_ok(&["create", &disk_cfg])
            .expect("xl create the disk guest");
        let net_cfg = host
            .pv_config(
                &ng,
                128,
                "#!/bin/sh\necho iperf-start\n\
                 iperf3 -c 10.79.0.1 -p 5201 -t 300 --bidir > /dev/null\n\
                 echo iperf-end\nexec sleep 1000\n",
                &format!(
                    "vif = [ 'mac=00:16:3e:4f:{:02x}:02, bridge={br}, ip=10.79.0.2' ]\n",
                    pid as u8
                ),
            )
            .expect("config");
        host.track_guest(&ng);
        host.xl_ok(&["create", &net_cfg])
            .expect("xl create the network guest");
        wait_log(&host, &dg, "fio-start");
        wait_log(&host, &ng, "iperf-start");
        // Both loads under way (and backendd has published counters).
        std::thread::sleep(Duration::from_secs(2));
        Self {
            disk_guest: dg,
            net_guest: ng,
            _iperf: iperf,
            _backendd: backendd,
            host,
            _ns: ns,
        }
    }
}

/// One table of `xl top -b`: the rows by name, as columns.
fn tables(out: &str) -> Vec<Vec<Vec<String>>> {
    let mut t: Vec<Vec<Vec<String>>> = Vec::new();
    for l in out.lines() {
        if l.trim_start().starts_with("NAME ") {
            t.push(Vec::new());
        } else if let Some(cur) = t.last_mut() {
            cur.push(l.split_whitespace().map(str::to_owned).collect());
        }
    }
    t
}

fn row<'a>(table: &'a [Vec<String>], name: &str) -> &'a [String] {
    table
        .iter()
        .find(|r| r.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in the table {table:?}"))
}

fn num(r: &[String], col: usize) -> f64 {
    r.get(col)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("column {col} of {r:?} is not a number"))
}

// Columns of a guest's row (its MAXMEM is a number).
const CPU_PCT: usize = 3;
const NETS: usize = 9;
const NETTX: usize = 10;
const NETRX: usize = 11;
const VBDS: usize = 12;
const VBD_RD: usize = 14;
const VBD_WR: usize = 15;
const VBD_RSECT: usize = 16;
const VBD_WSECT: usize = 17;

#[test]
fn test_xl_top_batch_shows_each_guests_disk_and_network_load_and_its_cpu() {
    let l = Loaded::start("tb");
    let (dg, ng) = (l.disk_guest.as_str(), l.net_guest.as_str());
    let domid = l
        .host
        .domid(dg)
        .expect("xl list")
        .expect("disk guest listed");
    let group = l
        .host
        .guest_cgroup(domid)
        .expect("cgroups")
        .expect("the guest's cgroup");

    let c0 = group.cpu_time().expect("cpu time");
    let w0 = Instant::now();
    let out = l
        .host
        .xl_ok(&["top", "-b", "-i", "3", "-d", "1"])
        .expect("xl top");
    let wall = w0.elapsed();
    let used = group.cpu_time().expect("cpu time").saturating_sub(c0);
    eprintln!("{out}");

    let t = tables(&out);
    assert_eq!(t.len(), 3, "three tables:\n{out}");
    for table in &t {
        assert!(table.iter().any(|r| r[0] == "Domain-0"), "{out}");
    }
    let series = |name: &str, col: usize| -> Vec<f64> {
        t.iter().map(|table| num(row(table, name), col)).collect()
    };
    for col in [VBD_RD, VBD_WR, VBD_RSECT, VBD_WSECT] {
        let s = series(dg, col);
        assert!(
            s.windows(2).all(|w| w[1] > w[0]),
            "{dg}: column {col} does not grow: {s:?}\n{out}"
        );
        assert!(series(ng, col).iter().all(|v| *v == 0.0), "{out}");
    }
    // NETTX/NETRX count whole KiB of a light load: one 1 s interval may
    // not add one (CI here saw 116, 116, 117), so they never fall and grow
    // over the run.
    for col in [NETTX, NETRX] {
        let s = series(ng, col);
        assert!(
            s.windows(2).all(|w| w[1] >= w[0]) && s.last() > s.first(),
            "{ng}: column {col} does not grow: {s:?}\n{out}"
        );
        assert!(series(dg, col).iter().all(|v| *v == 0.0), "{out}");
    }
    assert_eq!(num(row(&t[0], dg), VBDS), 1.0);
    assert_eq!(num(row(&t[0], dg), NETS), 0.0);
    assert_eq!(num(row(&t[0], ng), NETS), 1.0);

    // CPU(%): 0 in the first table (no earlier sample), then the group's
    // share of a CPU over the run.
    let pct = series(dg, CPU_PCT);
    assert_eq!(pct[0], 0.0, "{out}");
    let shown = (pct[1] + pct[2]) / 2.0;
    let cgroup = used.as_secs_f64() / wall.as_secs_f64() * 100.0;
    eprintln!("disk guest CPU(%): xl top {pct:?}, its cgroup over the run {cgroup:.1}");
    assert!(
        (shown - cgroup).abs() <= 10.0_f64.max(0.35 * cgroup),
        "xl top says {shown:.1} %, the cgroup {cgroup:.1} %"
    );
    assert!(shown > 1.0, "fio keeps the guest busy: {pct:?}");
}

#[test]
fn test_xl_top_screen_in_a_pty_shows_every_domain_and_quits_on_q() {
    let l = Loaded::start("ts");
    let cmd = l.host.xl_command(&["top", "-d", "1"]);
    let (mut term, mut child) = Terminal::spawn(cmd).expect("xl top on a pty");
    term.limit = Duration::from_secs(20);
    term.expect("xentop - ").expect("the summary line");
    for name in ["Domain-0", &l.disk_guest, &l.net_guest] {
        term.expect(name).expect("every domain is on the screen");
    }
    term.expect("3 domains: ").expect("the domain count");
    // Redrawn in place: the screen is cleared and homed before each frame.
    let first = term.mark();
    term.expect_from(first, "\x1b[H\x1b[2J")
        .expect("a second frame");
    term.type_bytes(b"q").expect("type q");
    let st = wait_exit(&mut child, Duration::from_secs(10)).expect("xl top ends on q");
    assert!(st.success(), "{st}\n{}", term.text());
    // The alternate screen is left.
    term.expect("\x1b[?1049l")
        .expect("xl top leaves the alternate screen");
}

/// `xl metrics` on a free port; the child and its base URL.
fn start_metrics(host: &Dom0) -> (Daemon, String) {
    let mut child = host
        .xl_command(&["metrics", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start xl metrics");
    let stdout = child.stdout.take().expect("stdout");
    let d = Daemon::new(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("xl metrics says where it listens");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (d, url)
}

/// `GET url` (HTTP/1.1, `Connection: close`): the status line and body.
fn http(url: &str) -> std::io::Result<(String, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    std::io::Write::write_all(
        &mut s,
        format!("GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

/// `GET url`, which must answer 200; the body.
fn http_get(url: &str) -> String {
    let (status, body) = http(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET {url}: {status}\n{body}"
    );
    body
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn test_xl_metrics_passes_promtool_and_prometheus_sees_read_sectors_rise() {
    need("promtool", "prometheus").expect("promtool");
    need("prometheus", "prometheus").expect("prometheus");
    let l = Loaded::start("tm");
    let dg = l.disk_guest.as_str();
    let (_metrics, url) = start_metrics(&l.host);

    // promtool on the endpoint's output.
    let t0 = Instant::now();
    let text = http_get(&url);
    eprintln!(
        "one scrape of xl metrics (3 domains, 2 devices): {:?}, {} bytes, {} samples",
        t0.elapsed(),
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    assert!(
        text.contains(&format!("xen_vbd_read_sectors_total{{domain=\"{dg}\"")),
        "{text}"
    );
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A Prometheus scraping it every second.
    let dir = tempfile::tempdir().expect("prometheus dir");
    let target = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("host:port");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: xl\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus.yml");
    let port = free_port();
    let prom = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("start prometheus");
    let _prom = Daemon::new(prom);

    let query =
        format!("/api/v1/query?query=xen_vbd_read_sectors_total%7Bdomain%3D%22{dg}%22%7D%5B30s%5D");
    let deadline = Instant::now() + T;
    let values = loop {
        let body = http(&format!("http://127.0.0.1:{port}{query}"))
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v = range_values(&body);
        if v.len() >= 4 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no series of 4 samples; last answer {body}\nprometheus log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("Prometheus: {dg}'s read sectors {values:?}");
    assert!(
        values.windows(2).all(|w| w[1] >= w[0]) && values.last() > values.first(),
        "not a rising series: {values:?}"
    );
}

/// The sample values of a range-vector answer of Prometheus's query API
/// (`"values":[[t,"v"],...]`).
fn range_values(body: &str) -> Vec<f64> {
    let Some(i) = body.find("\"values\":[") else {
        return Vec::new();
    };
    body[i + 10..]
        .split(']')
        .take_while(|s| !s.is_empty())
        .filter_map(|pair| {
            let v = pair.rsplit(',').next()?.trim().trim_matches('"');
            v.parse().ok()
        })
        .collect()
}

/// `xl metrics` with nothing to talk to (no shim, no xenstored): a
/// well-formed exposition saying so, and hostile requests get an error
/// without stopping the server.
#[test]
fn test_xl_metrics_without_daemons_and_hostile_requests() {
    need("promtool", "prometheus").expect("promtool");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(libexec().join("xl"))
        .args(["metrics", "--listen", "127.0.0.1:0"])
        .env(xen_shim_proto::ENV_SOCKET, dir.path().join("no-shim.sock"))
        .env("XENSTORED_PATH", dir.path().join("no-xenstored.sock"))
        .env("XEN_SPLIT_RUNDIR", dir.path())
        .env(
            "XL_CGROUP_PARENT",
            format!("xl-metrics-none-{}", std::process::id()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start xl metrics");
    let stdout = child.stdout.take().expect("stdout");
    let _d = Daemon::new(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("xl metrics says where it listens");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let hostport = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("host:port")
        .to_owned();

    // Hostile requests: an endless header, garbage, another path, POST.
    let raw = |bytes: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(&hostport).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = std::io::Write::write_all(&mut s, bytes);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.lines().next().unwrap_or("").to_owned()
    };
    let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 20_000));
    assert!(raw(&long).contains(" 431 "));
    assert!(raw(b"\x00\xff garbage\r\n\r\n").contains(" 400 "));
    assert!(raw(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n").contains(" 404 "));
    assert!(raw(b"POST /metrics HTTP/1.1\r\n\r\n").contains(" 405 "));
    // A client that sends nothing and goes away.
    drop(std::net::TcpStream::connect(&hostport).expect("connect"));

    // Still serving: the daemons are down, the format is valid.
    let text = http_get(&url);
    for d in ["xen-shimd", "xenstored", "backendd"] {
        assert!(
            text.contains(&format!("xen_daemon_up{{daemon=\"{d}\"}} 0\n")),
            "{text}"
        );
    }
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
