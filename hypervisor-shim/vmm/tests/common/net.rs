//! Network fixtures of the PVHVM network tests (after
//! `frontend-drivers/pv-runtime/tests/common/nethost.rs`): a private "Dom0"
//! network namespace holding the test's bridge (with Dom0's address) and
//! the `backendd` whose TAPs are ports of it. Names are unique per test
//! (pid + tag); Drop guards remove everything even when a test fails.
//! Addresses are private ranges inside these namespaces only.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Host;

/// Fails loudly unless `tool` is installed (from Debian's `package`).
pub fn need(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is missing: run `apt-get install -y {package}` (or tests/setup-host.sh)"
    );
}

fn run(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    super::ok(&format!("{prog} {}", args.join(" ")), &o)
}

/// A network namespace, deleted on drop (with everything in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        need("ip", "iproute2");
        let name = format!("xsv{}{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        run("ip", &v)
    }

    /// A command inside the namespace.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Runs `prog args` in the namespace; its output.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Output {
        self.cmd(prog)
            .args(args)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A bridge name unique to this test (at most 15 bytes).
pub fn bridge_name(tag: &str) -> String {
    let n = format!("xv{}{tag}", std::process::id() % 1_000_000);
    assert!(n.len() <= 15, "bridge name {n} too long");
    n
}

/// Creates the bridge in `ns` with Dom0's address `addr` (a.b.c.d/len).
pub fn make_bridge(ns: &Netns, br: &str, addr: &str) {
    ns.ip(&["link", "add", br, "type", "bridge"]);
    ns.ip(&["addr", "add", addr, "dev", br]);
    ns.ip(&["link", "set", br, "up"]);
}

/// The ports of bridge `br` in `ns`.
pub fn bridge_ports(ns: &Netns, br: &str) -> Vec<String> {
    let out = ns.ip(&["-o", "link", "show", "master", br]);
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// A child process killed (and reaped) on drop.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `backendd` inside `ns` (so its TAPs and bridges are there), as
/// `xl` would start it; `xl` then finds it through its pid file.
pub fn start_backendd_in(host: &Host, ns: &Netns) -> Daemon {
    let rundir = host.rundir();
    std::fs::create_dir_all(&rundir).expect("create the rundir");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(rundir.join("backendd.log"))
        .expect("open backendd.log");
    let log2 = log.try_clone().expect("dup the log fd");
    let child = ns
        .cmd(host.libexec.join("backendd").to_str().expect("utf-8 path"))
        .arg("--xenstored")
        .arg(host.dir.path().join("xenstored.sock"))
        .arg("--shim-socket")
        .arg(host.dir.path().join("shim.sock"))
        .arg("--pid-file")
        .arg(rundir.join("backendd.pid"))
        .arg("--log-dir")
        .arg(host.console_logdir())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("start backendd");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rundir.join("backendd.pid").exists() {
        assert!(
            Instant::now() < deadline,
            "backendd did not write its pid file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
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
