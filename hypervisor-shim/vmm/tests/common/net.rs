//! Network fixtures of the PVHVM network tests, over [`xen_testhost::net`]: a private "Dom0"
//! network namespace holding the test's bridge (with Dom0's address) and
//! the `backendd` whose TAPs are ports of it. Names are unique per test
//! (pid + tag); Drop guards remove everything even when a test fails.
//! Addresses are private ranges inside these namespaces only.

use std::time::{Duration, Instant};

use super::Host;
pub use xen_testhost::net::{Daemon, Netns};

/// Fails loudly unless `tool` is installed (from Debian's `package`).
pub fn need(tool: &str, package: &str) {
    xen_testhost::need(tool, package).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A network namespace unique to this test, deleted on drop.
pub fn netns(tag: &str) -> Netns {
    Netns::unique("xsv", tag).unwrap_or_else(|e| panic!("create a namespace: {e:#}"))
}

/// `ip -n NS ARGS...`; its stdout (panics on failure).
pub fn ip(ns: &Netns, args: &[&str]) -> String {
    ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `prog args` in `ns`; its output, whatever its status.
pub fn exec(ns: &Netns, prog: &str, args: &[&str]) -> std::process::Output {
    ns.exec(prog, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A bridge name unique to this test (at most 15 bytes).
pub fn bridge_name(tag: &str) -> String {
    xen_testhost::net::bridge_name("xv", tag).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Creates the bridge in `ns` with Dom0's address `addr` (a.b.c.d/len).
pub fn make_bridge(ns: &Netns, br: &str, addr: &str) {
    xen_testhost::net::make_bridge(ns, br, addr).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The ports of bridge `br` in `ns`.
pub fn bridge_ports(ns: &Netns, br: &str) -> Vec<String> {
    xen_testhost::net::bridge_ports(ns, br).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts `backendd` inside `ns` (so its TAPs and bridges are there), as
/// `xl` would start it; `xl` then finds it through its pid file.
pub fn start_backendd_in(host: &Host, ns: &Netns) -> Daemon {
    xen_testhost::net::start_backendd_in(host, ns, &[]).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The domid of guest `name` (from `xl list`).
pub fn domid(host: &Host, name: &str) -> u16 {
    let out = super::ok("xl list", &host.xl(&["list", name]));
    out.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no domid for {name} in:\n{out}"))
}

/// `/bytes/N`'s body: byte `i` is `b'a' + i % 26`.
pub fn bytes_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `curl` of `http://{ip}/bytes/{n}` from `ns` at 8 MB/s (a download that
/// lasts while the guest is suspended, saved or moved), at most `max_secs`;
/// its output, whatever its status.
pub fn slow_download(ns: &Netns, ip: &str, n: usize, max_secs: u32) -> std::process::Output {
    exec(
        ns,
        "curl",
        &[
            "-sS",
            "--max-time",
            &max_secs.to_string(),
            "--limit-rate",
            "8M",
            &format!("http://{ip}/bytes/{n}"),
        ],
    )
}

/// Panics unless `download` ([`slow_download`]) got all `n` bytes intact;
/// `context` (a log) goes with the failure.
pub fn assert_downloaded(download: &std::process::Output, n: usize, context: &str) {
    assert!(
        download.status.success(),
        "curl: {}\n{context}",
        String::from_utf8_lossy(&download.stderr)
    );
    assert_eq!(download.stdout.len(), n, "bytes received");
    assert!(download.stdout == bytes_body(n), "the body differs");
}

/// Waits until guest `name`'s console log has `needle`; panics after
/// `timeout` with its console log, the VMM's log and backendd's log.
pub fn wait_guest(host: &Host, name: &str, needle: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let l = host.log(name);
        if l.contains(needle) {
            return l;
        }
        if t0.elapsed() >= timeout || l.contains("netserve: FAIL") {
            panic!(
                "guest {name} did not print {needle:?} within {timeout:?}\nconsole log:\n{l}\nVMM log:\n{}\nbackendd log:\n{}",
                host.vmm_log(name),
                std::fs::read_to_string(host.rundir().join("backendd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A PVHVM guest serving HTTP (`netserve`) on a bridge of the test's own
/// "Dom0" namespace: Dom0 is `10.{net}.0.1`, the guest `10.{net}.0.5`.
/// Fields drop in order: backendd before its namespace.
pub struct NetserveGuest {
    /// backendd, inside `ns`.
    pub backendd: Daemon,
    /// The namespace holding the bridge.
    pub ns: Netns,
    /// The guest's name.
    pub name: String,
}

/// Creates a [`NetserveGuest`] named `prefix` + pid (MAC byte `mac`,
/// unique per test) and waits until its `netserve` is up.
pub fn netserve_guest(h: &mut Host, tag: &str, net: u8, prefix: &str, mac: u8) -> NetserveGuest {
    let ns = netns(tag);
    let br = bridge_name(tag);
    make_bridge(&ns, &br, &format!("10.{net}.0.1/24"));
    let backendd = start_backendd_in(h, &ns);
    let pid = std::process::id();
    let name = format!("{prefix}{pid}");
    let mac = format!("00:16:3e:{mac:02x}:{:02x}:05", pid as u8);
    let cfg = h.config_full(
        &name,
        &format!("netserve ip=10.{net}.0.5/24"),
        &[],
        1,
        &[format!("mac={mac}, bridge={br}")],
        super::PRESERVE_ALL,
    );
    super::ok("xl create", &h.create(&name, &cfg));
    wait_guest(
        h,
        &name,
        &format!("netserve: 10.{net}.0.5/24 up"),
        Duration::from_secs(60),
    );
    NetserveGuest { backendd, ns, name }
}
