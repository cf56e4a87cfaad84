//! Network fixtures of the PV NIC end-to-end tests: a private "Dom0"
//! network namespace (the test's bridge, with Dom0's address, and the
//! `backendd` whose TAPs are ports of it), guests created with `xl` and
//! destroyed on drop. Names are unique per test (pid + tag); everything
//! is removed by Drop guards even when the test fails. Addresses are
//! private ranges inside these namespaces only.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::xlhost::{guest_log, need, ok, run, Host};

/// A network namespace, deleted on drop (with everything in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        need("ip", "iproute2");
        let name = format!("xsn{}{tag}", std::process::id());
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

    /// Runs `prog args` in the namespace; its output, or the failure.
    pub fn exec(&self, prog: &str, args: &[&str]) -> std::process::Output {
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
    let n = format!("xb{}{tag}", std::process::id() % 1_000_000);
    assert!(n.len() <= 15, "bridge name {n} too long");
    n
}

/// Creates the bridge in `ns` with Dom0's address `addr` (a.b.c.d/len).
pub fn make_bridge(ns: &Netns, br: &str, addr: &str) {
    ns.ip(&["link", "add", br, "type", "bridge"]);
    ns.ip(&["addr", "add", addr, "dev", br]);
    ns.ip(&["link", "set", br, "up"]);
}

/// Starts `backendd` inside `ns` (so its TAPs and bridges are there), as
/// `xl` would start it; `xl` then finds it through its pid file.
pub fn start_backendd_in(host: &mut Host, ns: &Netns) {
    let d = spawn_backendd_in(host, ns, &[]);
    host.backendd = Some(d.take());
}

/// The pid in `<rundir>/backendd.pid`.
pub fn backendd_pid(host: &Host) -> i32 {
    let p = host.rundir().join("backendd.pid");
    let s =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    s.trim()
        .parse()
        .unwrap_or_else(|e| panic!("bad pid in {}: {s:?}: {e}", p.display()))
}

/// SIGKILLs backendd `d` (no clean-up: its TAPs go with its files,
/// xenstore keeps what it wrote) and reaps it; its pid.
pub fn kill_backendd(host: &Host, d: Daemon) -> i32 {
    let mut c = d.take();
    let pid = backendd_pid(host);
    assert_eq!(pid as u32, c.id(), "the pid file names our backendd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL backendd");
    let _ = c.wait();
    // A killed backendd leaves its pid file: the next start writes its own.
    let _ = std::fs::remove_file(host.rundir().join("backendd.pid"));
    pid
}

/// `ip -o link show dev IF` in `ns` (empty when the interface is missing).
pub fn link(ns: &Netns, ifname: &str) -> String {
    let o = ns.exec("ip", &["-o", "link", "show", "dev", ifname]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits up to `within` until `pred` holds for `ip -o link show dev IF` in
/// `ns`; the last output and whether it held.
pub fn wait_link(
    ns: &Netns,
    ifname: &str,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> (String, bool) {
    let deadline = Instant::now() + within;
    loop {
        let l = link(ns, ifname);
        if pred(&l) {
            return (l, true);
        }
        if Instant::now() >= deadline {
            return (l, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `backendd` in `ns` with `extra` arguments, as `xl` would start
/// it (killed on drop of the guard); waits for its pid file.
pub fn spawn_backendd_in(host: &Host, ns: &Netns, extra: &[&str]) -> Daemon {
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
        // consback writes the guests' console logs where the tests read them.
        .arg("--log-dir")
        .arg(host.console_logdir())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("start backendd");
    let d = Daemon(Some(child));
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

/// Guests `xl destroy`ed on drop (declare after the [`Host`]).
pub struct Guests<'h> {
    pub host: &'h Host,
    pub names: Vec<String>,
}

impl Guests<'_> {
    /// `xl create` of a PV guest named `name` with `vif` and an init script.
    pub fn create(&mut self, name: &str, vifs: &[String], script: &str) {
        let host = self.host;
        let init = host.dir.path().join(format!("{name}.sh"));
        std::fs::write(&init, script).expect("write the init script");
        run("chmod", &["0755", init.to_str().expect("utf-8 path")]);
        let cfg = host.dir.path().join(format!("{name}.cfg"));
        let vif_list: Vec<String> = vifs.iter().map(|v| format!("'{v}'")).collect();
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\ntype = 'pv'\nmemory = 128\nvcpus = 1\n\
                 extra = '--frontend disk --timeout-secs 30 --init {}'\n\
                 vif = [ {} ]\n",
                init.display(),
                vif_list.join(", ")
            ),
        )
        .expect("write the config");
        ok(
            "xl create",
            &host.xl(&["create", cfg.to_str().expect("utf-8 path")]),
        );
        self.names.push(name.to_owned());
    }

    /// Waits until the guest's log has `mark` (panics with the logs after
    /// `timeout`, or when the guest failed).
    pub fn wait_log(&self, name: &str, mark: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = guest_log(self.host, name).unwrap_or_default();
            if log.contains(mark) {
                return log;
            }
            if Instant::now() >= deadline
                || log.contains("pvguest frontend-failed")
                || log.contains("pvguest shutdown")
            {
                panic!(
                    "guest {name}: no {mark:?} within {timeout:?}\nlog:\n{log}\nbackendd log:\n{}",
                    std::fs::read_to_string(self.host.rundir().join("backendd.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The domid of guest `name` (from `xl list`).
    pub fn domid(&self, name: &str) -> u16 {
        let out = ok("xl list", &self.host.xl(&["list", name]));
        out.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no domid for {name} in:\n{out}"))
    }

    pub fn destroy(&mut self, name: &str) {
        ok("xl destroy", &self.host.xl(&["destroy", name]));
        self.names.retain(|n| n != name);
    }
}

impl Drop for Guests<'_> {
    fn drop(&mut self) {
        for n in std::mem::take(&mut self.names) {
            let _ = self.host.xl(&["destroy", &n]);
        }
    }
}

/// The ports of bridge `br` in `ns`.
pub fn bridge_ports(ns: &Netns, br: &str) -> Vec<String> {
    let out = ns.ip(&["-o", "link", "show", "master", br]);
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

/// A child process killed on drop.
pub struct Daemon(pub Option<std::process::Child>);

impl Daemon {
    /// The child, no longer killed on drop.
    pub fn take(mut self) -> std::process::Child {
        self.0.take().expect("a child")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `prog args` in `ns` in the background (killed on drop).
pub fn spawn_in(ns: &Netns, prog: &str, args: &[&str]) -> Daemon {
    let c = ns
        .cmd(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"));
    Daemon(Some(c))
}

/// Waits until TCP `port` listens in `ns`.
pub fn wait_listen(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = ns.exec("ss", &["-Htln", &format!("sport = :{port}")]);
        if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The receiver bitrates (Gbit/s) of the `iperf3 -c` runs in `log`.
pub fn iperf_receiver_gbps(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("receiver"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| x.ends_with("bits/sec"))?;
            let v: f64 = w.get(i - 1)?.parse().ok()?;
            Some(match w[i].chars().next()? {
                'G' => v,
                'M' => v / 1e3,
                'K' => v / 1e6,
                _ => v / 1e9,
            })
        })
        .collect()
}
