//! Network fixtures: network namespaces, bridges, and a `backendd` started
//! by hand inside a "Dom0" namespace (so its TAPs and bridges are there).
//! Names are unique per test (a prefix, the pid and a tag); the Drop guards
//! remove everything even when a test fails. Addresses are private ranges
//! that exist only inside these namespaces.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{need, run, Dom0};

/// A network namespace, deleted on drop (with everything in it).
#[derive(Debug)]
pub struct Netns {
    /// Its name (`ip netns`).
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (removing a stale one of that name) with
    /// `lo` up.
    pub fn new(name: String) -> Result<Netns> {
        need("ip", "iproute2")?;
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates namespace `<prefix><pid><tag>`, unique to this process.
    pub fn unique(prefix: &str, tag: &str) -> Result<Netns> {
        Netns::new(format!("{prefix}{}{tag}", std::process::id()))
    }

    /// `ip -n NS ARGS...`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
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

    /// Runs `prog args` in the namespace; its output, whatever its status.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Result<Output> {
        self.cmd(prog)
            .args(args)
            .output()
            .with_context(|| format!("run {prog} in {}", self.name))
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

/// A bridge name unique to this process: `<prefix><pid mod 10^6><tag>`
/// (an interface name has at most 15 bytes).
pub fn bridge_name(prefix: &str, tag: &str) -> Result<String> {
    let n = format!("{prefix}{}{tag}", std::process::id() % 1_000_000);
    if n.len() > 15 {
        bail!("bridge name {n} is longer than 15 bytes");
    }
    Ok(n)
}

/// Creates bridge `br` in `ns` with Dom0's address `addr` (a.b.c.d/len), up.
pub fn make_bridge(ns: &Netns, br: &str, addr: &str) -> Result<()> {
    // Multicast snooping with the bridge as querier, as a host with many
    // guests on one bridge wants it: the bridge learns which ports joined
    // which groups and forwards multicast only there. Without a querier it
    // floods every multicast frame (a booting guest's IPv6 duplicate
    // address probes, router solicitations, MLD reports) to every port:
    // each new guest cost every running guest's netback queue and
    // runtime a wake-up per frame.
    ns.ip(&[
        "link",
        "add",
        br,
        "type",
        "bridge",
        "mcast_snooping",
        "1",
        "mcast_querier",
        "1",
    ])?;
    ns.ip(&["addr", "add", addr, "dev", br])?;
    ns.ip(&["link", "set", br, "up"])?;
    Ok(())
}

/// The ports of bridge `br` in `ns`.
pub fn bridge_ports(ns: &Netns, br: &str) -> Result<Vec<String>> {
    let out = ns.ip(&["-o", "link", "show", "master", br])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_owned())
        .collect())
}

/// A child process killed (and reaped) on drop, unless taken back.
#[derive(Debug)]
pub struct Daemon(pub Option<Child>);

impl Daemon {
    /// Guards `child`.
    #[must_use]
    pub fn new(child: Child) -> Daemon {
        Daemon(Some(child))
    }

    /// The child, no longer killed on drop.
    ///
    /// # Panics
    /// If it was taken already.
    #[must_use]
    pub fn take(mut self) -> Child {
        self.0.take().expect("the daemon's child is still there")
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

/// Starts `prog args` in `ns` in the background, its output discarded
/// (killed on drop).
pub fn spawn_in(ns: &Netns, prog: &str, args: &[&str]) -> Result<Daemon> {
    let c = ns
        .cmd(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {prog} in {}", ns.name))?;
    Ok(Daemon::new(c))
}

/// Waits (up to 10 s) until something listens on TCP `port` in `ns`.
pub fn wait_listen(ns: &Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = ns.exec("ss", &["-Htln", &format!("sport = :{port}")])?;
        if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on port {port} in {}", ns.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ip -o link show dev IF` in `ns` (empty when the interface is missing).
pub fn link(ns: &Netns, ifname: &str) -> String {
    ns.exec("ip", &["-o", "link", "show", "dev", ifname])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits up to `within` until `pred` holds for [`link`]`(ns, ifname)`; the
/// last output and whether it held.
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

/// The largest gap between two successive echo replies in the output of
/// `ping -D` (the downtime a client sees), and the replies counted.
#[must_use]
pub fn largest_ping_gap(ping_stdout: &str) -> (Duration, usize) {
    let stamps: Vec<f64> = ping_stdout
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    (Duration::from_secs_f64(gap.max(0.0)), stamps.len())
}

/// Starts `backendd` inside `ns` as `xl` would start it, with `extra`
/// arguments (its log appended to `<rundir>/backendd.log`, consback's
/// console logs where [`Dom0::guest_log`] reads them); `xl` then finds it
/// through its pid file.
pub fn start_backendd_in(dom0: &Dom0, ns: &Netns, extra: &[&str]) -> Result<Daemon> {
    spawn_backendd_in(dom0, ns, false, extra)
}

/// Starts backendd in `ns` under `xen-supervise`, as `xl` starts it
/// (supervisor pid file `<rundir>/backendd-supervisor.pid`, its log
/// `<rundir>/backendd.log`); waits for backendd's pid file. Killed on drop
/// (the Dom0's drop then stops the orphaned backendd); [`stop_supervisor`]
/// stops both cleanly.
pub fn start_supervised_backendd_in(dom0: &Dom0, ns: &Netns) -> Result<Daemon> {
    spawn_backendd_in(dom0, ns, true, &[])
}

/// backendd (under `xen-supervise` when `supervised`) in `ns` with
/// `extra` arguments, its output appended to `<rundir>/backendd.log`;
/// waits for its pid file.
fn spawn_backendd_in(dom0: &Dom0, ns: &Netns, supervised: bool, extra: &[&str]) -> Result<Daemon> {
    let rundir = dom0.rundir();
    std::fs::create_dir_all(&rundir).context("create the rundir")?;
    let pid_file = rundir.join("backendd.pid");
    let _ = std::fs::remove_file(&pid_file);
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(rundir.join("backendd.log"))
        .context("open backendd.log")?;
    let log2 = log.try_clone().context("dup the log fd")?;
    let backendd = dom0.libexec.join("backendd");
    let mut cmd = if supervised {
        let mut c = ns.cmd(
            dom0.libexec
                .join("xen-supervise")
                .to_str()
                .context("utf-8 path")?,
        );
        c.arg("--name")
            .arg("backendd")
            .arg("--pid-file")
            .arg(rundir.join("backendd-supervisor.pid"))
            .arg("--")
            .arg(&backendd);
        c
    } else {
        ns.cmd(backendd.to_str().context("utf-8 path")?)
    };
    let child = cmd
        .arg("--xenstored")
        .arg(dom0.xenstored_socket())
        .arg("--shim-socket")
        .arg(dom0.shim_socket())
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--log-dir")
        .arg(dom0.console_logdir())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .context("start backendd")?;
    let d = Daemon::new(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dom0.backendd_pid().is_none() {
        if Instant::now() >= deadline {
            bail!(
                "backendd did not write its pid file within 10 s: {}",
                std::fs::read_to_string(rundir.join("backendd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

/// SIGTERM to the supervisor `d` (it stops backendd), then waits for it;
/// its exit status.
pub fn stop_supervisor(d: Daemon) -> Result<std::process::ExitStatus> {
    let pid =
        d.0.as_ref()
            .map(Child::id)
            .context("the supervisor's child")?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("a pid")?);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    d.take().wait().context("wait for xen-supervise")
}

/// SIGKILLs backendd `d` (no clean-up: its TAPs go with its files,
/// xenstore keeps what it wrote), checks it was the one in `dom0`'s pid
/// file, and reaps it; its pid.
pub fn kill_backendd(dom0: &Dom0, d: Daemon) -> Result<i32> {
    // On an early return the guard kills and reaps it.
    let ours = d.0.as_ref().map(Child::id).context("the daemon's child")?;
    let pid = dom0
        .backendd_pid()
        .context("backendd's pid file names a live process")?;
    if u32::try_from(pid).ok() != Some(ours) {
        bail!("the pid file names {pid}, not our backendd {ours}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .context("SIGKILL backendd")?;
    let _ = d.take().wait();
    // A killed backendd leaves its pid file: the next start writes its own.
    let _ = std::fs::remove_file(dom0.rundir().join("backendd.pid"));
    Ok(pid)
}

/// PV guests with NICs, `xl destroy`ed on drop (declare after the
/// [`Dom0`]).
#[derive(Debug)]
pub struct Guests<'h> {
    /// The Dom0 they run on.
    pub dom0: &'h Dom0,
    /// The guests still running.
    pub names: Vec<String>,
}

impl<'h> Guests<'h> {
    /// None yet.
    pub fn new(dom0: &'h Dom0) -> Guests<'h> {
        Guests {
            dom0,
            names: Vec::new(),
        }
    }

    /// `xl create` of a PV guest named `name` (128 MiB) with the vifs
    /// `vifs` (xl.cfg vif specs) and the shell script `script` as its init.
    pub fn create(&mut self, name: &str, vifs: &[String], script: &str) -> Result<()> {
        let vif_list: Vec<String> = vifs.iter().map(|v| format!("'{v}'")).collect();
        let cfg = self.dom0.pv_config(
            name,
            128,
            script,
            &format!("vif = [ {} ]\n", vif_list.join(", ")),
        )?;
        self.dom0.xl_ok(&["create", &cfg])?;
        self.names.push(name.to_owned());
        Ok(())
    }

    /// Waits until the guest's log has `mark`; fails with the logs after
    /// `timeout`, or as soon as the guest failed or shut down.
    pub fn wait_log(&self, name: &str, mark: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.dom0.guest_log(name);
            if log.contains(mark) {
                return Ok(log);
            }
            if Instant::now() >= deadline
                || log.contains("pvguest frontend-failed")
                || log.contains("pvguest shutdown")
            {
                bail!(
                    "guest {name}: no {mark:?} within {timeout:?}\nlog:\n{log}\nbackendd log:\n{}",
                    std::fs::read_to_string(self.dom0.rundir().join("backendd.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The domid of guest `name` (from `xl list`).
    pub fn domid(&self, name: &str) -> Result<u16> {
        self.dom0
            .domid(name)?
            .with_context(|| format!("no domid for {name} in xl list"))
    }

    /// `xl destroy`s guest `name` now.
    /// A guest whose init already ended is gone by itself (its monitor
    /// destroys it, `on_poweroff`): that is not an error.
    pub fn destroy(&mut self, name: &str) -> Result<()> {
        if let Err(e) = self.dom0.xl_ok(&["destroy", name]) {
            if self.dom0.domid(name)?.is_some() {
                return Err(e);
            }
        }
        self.names.retain(|n| n != name);
        Ok(())
    }
}

impl Drop for Guests<'_> {
    fn drop(&mut self) {
        for n in std::mem::take(&mut self.names) {
            let _ = self.dom0.xl(&["destroy", &n]);
        }
    }
}

/// The receiver bitrates (Gbit/s) of the `iperf3 -c` runs in `log`.
pub fn iperf_receiver_gbps(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("receiver"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| x.ends_with("bits/sec"))?;
            let v: f64 = w.get(i.checked_sub(1)?)?.parse().ok()?;
            Some(match w[i].chars().next()? {
                'G' => v,
                'M' => v / 1e3,
                'K' => v / 1e6,
                _ => v / 1e9,
            })
        })
        .collect()
}
