//! Network fixtures of the PV NIC end-to-end tests: a private "Dom0"
//! network namespace (the test's bridge, with Dom0's address, and the
//! `backendd` whose TAPs are ports of it), guests created with `xl` and
//! destroyed on drop. Names are unique per test (pid + tag); everything
//! is removed by Drop guards even when the test fails. Addresses are
//! private ranges inside these namespaces only.
#![allow(dead_code)]

use std::ops::Deref;
use std::process::Output;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use xen_testhost::net::{link, wait_link, Daemon};

pub use crate::xlhost::backendd_pid;
use crate::xlhost::{guest_log, ok, run, Host};

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// A network namespace unique to this test, deleted on drop (with
/// everything in it); [`xen_testhost::net::Netns`] with panicking helpers.
pub struct Netns(pub xen_testhost::net::Netns);

impl Deref for Netns {
    type Target = xen_testhost::net::Netns;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        Netns(xen_testhost::net::Netns::unique("xsn", tag).unwrap_or_else(|e| fail(e)))
    }

    /// `ip -n NS ARGS...`; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).unwrap_or_else(|e| fail(e))
    }

    /// Runs `prog args` in the namespace; its output, whatever its status.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Output {
        self.0.exec(prog, args).unwrap_or_else(|e| fail(e))
    }
}

/// A bridge name unique to this test (at most 15 bytes).
pub fn bridge_name(tag: &str) -> String {
    xen_testhost::net::bridge_name("xb", tag).unwrap_or_else(|e| fail(e))
}

/// Creates the bridge in `ns` with Dom0's address `addr` (a.b.c.d/len).
pub fn make_bridge(ns: &Netns, br: &str, addr: &str) {
    xen_testhost::net::make_bridge(ns, br, addr).unwrap_or_else(|e| fail(e));
}

/// Starts `backendd` inside `ns` (so its TAPs and bridges are there), as
/// `xl` would start it; `xl` then finds it through its pid file.
pub fn start_backendd_in(host: &mut Host, ns: &Netns) {
    let d = spawn_backendd_in(host, ns, &[]);
    host.backendd = Some(d.take());
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

/// Starts `backendd` in `ns` with `extra` arguments, as `xl` would start
/// it (killed on drop of the guard); waits for its pid file.
pub fn spawn_backendd_in(host: &Host, ns: &Netns, extra: &[&str]) -> Daemon {
    xen_testhost::net::start_backendd_in(host, ns, extra).unwrap_or_else(|e| fail(e))
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
    xen_testhost::net::bridge_ports(ns, br).unwrap_or_else(|e| fail(e))
}

/// Starts `prog args` in `ns` in the background (killed on drop).
pub fn spawn_in(ns: &Netns, prog: &str, args: &[&str]) -> Daemon {
    xen_testhost::net::spawn_in(ns, prog, args).unwrap_or_else(|e| fail(e))
}

/// Waits until TCP `port` listens in `ns`.
pub fn wait_listen(ns: &Netns, port: u16) {
    xen_testhost::net::wait_listen(ns, port).unwrap_or_else(|e| fail(e));
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
