//! Two complete Dom0 hosts on one machine, for the migration tests.
//!
//! [`TwoHosts`] gives each of two hosts, A and B, its own network
//! namespace and its own mount namespace (held by a sleeping process), in
//! which the stack's default paths are private directories bind-mounted
//! over `/run` (the shim's socket and state, xenstored's socket, `xl`'s run
//! directory), `/var/lib` (xenstored's state), `/var/log` (the console
//! logs) and `/dev/shm` (the domains' memory files), and `/sys` is a sysfs
//! of the host's network namespace (with the machine's cgroup hierarchies
//! bound back). `xl` runs inside a host ([`Host::command`], [`Host::xl`])
//! with no path in its environment, so it starts `xen-shimd`, `xenstored`
//! and `backendd` there exactly as on a real host, on their default paths;
//! its domains' cgroups go under a parent of their own per host.
//!
//! Each host has a bridge, named the same on both (as `xenbr0` is on every
//! Xen host, so a guest's config and save file are valid on either), with
//! the host's address; a veth pair joins the two bridges into one L2
//! segment, and a third namespace, the client, sits on it too. The client
//! namespace runs `nbdkit` serving the files of [`TwoHosts::exports`] as
//! NBD exports ([`TwoHosts::nbd_target`]), which both hosts reach: a
//! guest's disk is shared storage. [`TwoHosts::shared`] is a directory both
//! hosts read and write (save files).
//!
//! Names are unique per test (`x2h-<pid>-<n>` and shorter forms for
//! interfaces). Drop destroys every domain, kills every process left in a
//! host's namespaces (its daemons, its `xl` monitors, its guests), removes
//! the cgroup parents, the namespaces (with their bridges, veths and TAPs)
//! and the directories, also when a test fails; [`TwoHosts::footprint`]
//! lists what it made, so a test can check that nothing is left.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::net::{make_bridge, spawn_in, wait_listen, Daemon, Netns};
use crate::{need, remove_cgroup_parent, shim::unique_name, stdout_of, CGROUP_PARENT_PREFIX};

/// The first three bytes of the segment's IPv4 addresses (a /24 that
/// exists only inside the test's namespaces).
pub const SEGMENT: &str = "10.250.0";
/// The NBD server's TCP port (on the client's address).
pub const NBD_PORT: u16 = 10809;
/// The first part of every name a rig gives (`x2h-<pid>-<n>...`).
const PREFIX: &str = "x2h";
/// How long setting up a host's namespaces may take.
const SETUP: Duration = Duration::from_secs(10);

/// What each host's mount namespace does before it sleeps: private
/// directories over the stack's default paths and a sysfs of the host's
/// network namespace. `$1` is the host's directory, `$2` its `/dev/shm`.
const HOLDER_SCRIPT: &str = r#"set -e
d=$1; shm=$2
mkdir -p "$d/cg" "$d/run" "$d/lib" "$d/log"
mount --rbind /sys/fs/cgroup "$d/cg"
mount -t sysfs sysfs /sys
mount --rbind "$d/cg" /sys/fs/cgroup
umount -R "$d/cg"
mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
mount --bind "$d/run" /run
mount --bind "$d/lib" /var/lib
mount --bind "$d/log" /var/log
mount --bind "$shm" /dev/shm
: > "$d/ready"
exec sleep infinity
"#;

/// One of the two hosts; see the [module docs](self).
#[derive(Debug)]
pub struct Host {
    /// `a` or `b`.
    pub tag: &'static str,
    /// Its network namespace (holding its bridge and, once `xl` started
    /// them, its daemons' TAPs).
    pub netns: Netns,
    /// Its address on the segment (on its bridge).
    pub addr: String,
    /// Its directory as the test process sees it: `run/` is its `/run`,
    /// `lib/` its `/var/lib`, `log/` its `/var/log`.
    pub dir: PathBuf,
    /// What is its `/dev/shm` (a directory of the machine's `/dev/shm`).
    pub shm: PathBuf,
    /// The cgroup parent of its domains (`XL_CGROUP_PARENT`).
    pub cgroup_parent: String,
    /// The directory of `xl` and the binaries it starts.
    pub libexec: PathBuf,
    /// The process holding its mount namespace (in its network namespace).
    holder: Child,
    /// `mnt:[inode]` and `net:[inode]` of the holder.
    ns_ids: (String, String),
    /// Whether [`Host::teardown`] ran.
    torn_down: bool,
}

impl Host {
    /// Makes the namespaces of host `tag` under `root`; `name` is the
    /// test's unique prefix.
    fn new(tag: &'static str, name: &str, root: &Path, libexec: &Path, addr: &str) -> Result<Host> {
        let netns = Netns::new(format!("{name}-{tag}"))?;
        let dir = root.join(tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let shm = PathBuf::from("/dev/shm").join(format!("{name}-{tag}"));
        std::fs::create_dir_all(&shm).with_context(|| format!("create {}", shm.display()))?;
        std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777))
            .with_context(|| format!("chmod {}", shm.display()))?;
        let log = std::fs::File::create(dir.join("holder.log")).context("create holder.log")?;
        let log2 = log.try_clone().context("dup the log fd")?;
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "nsenter"])
            .arg(format!("--net=/run/netns/{}", netns.name))
            .args(["--", "sh", "-c", HOLDER_SCRIPT, "holder"])
            .arg(&dir)
            .arg(&shm)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .context("start the holder of the host's namespaces (unshare, nsenter)")?;
        let mut h = Host {
            tag,
            netns,
            addr: addr.to_owned(),
            dir,
            shm,
            cgroup_parent: unique_name(CGROUP_PARENT_PREFIX),
            libexec: libexec.to_path_buf(),
            holder,
            ns_ids: (String::new(), String::new()),
            torn_down: false,
        };
        let deadline = Instant::now() + SETUP;
        while !h.dir.join("ready").exists() {
            if let Some(st) = h.holder.try_wait().context("wait for the holder")? {
                bail!(
                    "host {tag}: setting up its mount namespace failed ({st}):\n{}",
                    std::fs::read_to_string(h.dir.join("holder.log")).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!("host {tag}: its mount namespace was not ready within {SETUP:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        h.ns_ids = ns_ids(h.holder.id()).context("read the holder's namespaces")?;
        Ok(h)
    }

    /// `prog` to run inside the host (both namespaces), with `xl`'s
    /// environment: no socket or directory variables (the defaults are the
    /// host's own), the libexec directory and the host's cgroup parent.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "-n", "--"])
            .arg(prog)
            .env_remove(xen_shim_proto::ENV_SOCKET)
            .env_remove("XENSTORED_PATH")
            .env_remove("XENSTORED_RUNDIR")
            .env_remove("XEN_SPLIT_RUNDIR")
            .env_remove("XEN_CONSOLE_LOGDIR")
            .env("XL_LIBEXEC_DIR", &self.libexec)
            .env("XL_CGROUP_PARENT", &self.cgroup_parent);
        c
    }

    /// Runs `prog args` inside the host; its output, whatever its status.
    pub fn run_in(&self, prog: &str, args: &[&str]) -> Result<Output> {
        self.command(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {prog} in host {}", self.tag))
    }

    /// Runs `xl ARGS` inside the host; its output, whatever its status.
    pub fn xl(&self, args: &[&str]) -> Result<Output> {
        self.command(self.libexec.join("xl"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run xl in host {}", self.tag))
    }

    /// Runs `xl ARGS` inside the host; its stdout, or an error with both
    /// streams unless it succeeded.
    pub fn xl_ok(&self, args: &[&str]) -> Result<String> {
        stdout_of(
            &format!("xl {} (host {})", args.join(" "), self.tag),
            &self.xl(args)?,
        )
    }

    /// The names of the domains `xl list` shows, Domain-0 left out.
    pub fn domains(&self) -> Result<Vec<String>> {
        let out = self.xl_ok(&["list"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| *n != "Domain-0")
            .map(str::to_owned)
            .collect())
    }

    /// `xl`'s run directory (pid files, the services' and VMMs' logs), as
    /// the test process sees it.
    pub fn rundir(&self) -> PathBuf {
        self.dir.join("run/xen-split")
    }

    /// The console log of guest `name` (empty until consback wrote it).
    pub fn guest_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("log/xen/console/guest-{name}.log")))
            .unwrap_or_default()
    }

    /// The log of `xl`-started service or VMM `file` (`backendd.log`,
    /// `pvguest-<name>.log`...) in the run directory.
    pub fn run_log(&self, file: &str) -> String {
        std::fs::read_to_string(self.rundir().join(file)).unwrap_or_default()
    }

    /// Waits until guest `name`'s console log has `needle`; fails after
    /// `timeout` with its console log, its VMM's log and backendd's.
    pub fn wait_log(&self, name: &str, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.guest_log(name);
            if l.contains(needle) {
                return Ok(l);
            }
            if Instant::now() >= deadline || l.contains(": FAIL") {
                bail!(
                    "host {}: guest {name} did not print {needle:?} within {timeout:?}\n\
                     console log:\n{l}\nVMM log:\n{}\nbackendd log:\n{}",
                    self.tag,
                    self.run_log(&format!("pvguest-{name}.log")),
                    self.run_log("backendd.log")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until guest `name`'s VMM log (`pvguest-<name>.log`: what the
    /// kernel writes with `CONSOLEIO_write`) has `needle`; fails after
    /// `timeout` with it.
    pub fn wait_vmm_log(&self, name: &str, needle: &str, timeout: Duration) -> Result<String> {
        let file = format!("pvguest-{name}.log");
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.run_log(&file);
            if l.contains(needle) {
                return Ok(l);
            }
            if Instant::now() >= deadline || l.contains(": FAIL") || l.contains("crashed") {
                bail!(
                    "host {}: guest {name}'s VMM did not log {needle:?} within {timeout:?}:\n{l}\n\
                     backendd log:\n{}",
                    self.tag,
                    self.run_log("backendd.log")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid in `<rundir>/<file>` if it is a live process (not a zombie).
    pub fn pid_in(&self, file: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.rundir().join(file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (!stat.contains(") Z ")).then_some(pid)
    }

    /// The live pids of the services `xl` started (`xen-shimd`,
    /// `xenstored`, `backendd`) and of their supervisors; fails unless all
    /// six run.
    pub fn service_pids(&self) -> Result<Vec<i32>> {
        let mut pids = Vec::new();
        for s in ["xen-shimd", "xenstored", "backendd"] {
            for f in [format!("{s}-supervisor.pid"), format!("{s}.pid")] {
                pids.push(
                    self.pid_in(&f)
                        .with_context(|| format!("host {}: {f} names no live process", self.tag))?,
                );
            }
        }
        Ok(pids)
    }

    /// SIGKILLs the services `xl` started and their supervisors
    /// (supervisors first, so that none is restarted): the host's Dom0
    /// dies, its guests are left to themselves. Their pids.
    pub fn kill_services(&self) -> Result<Vec<i32>> {
        const FILES: [&str; 6] = [
            "backendd-supervisor.pid",
            "xenstored-supervisor.pid",
            "xen-shimd-supervisor.pid",
            "backendd.pid",
            "xenstored.pid",
            "xen-shimd.pid",
        ];
        let mut killed = Vec::new();
        for f in FILES {
            if let Some(pid) = self.pid_in(f) {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .with_context(|| format!("SIGKILL the process of {f} ({pid})"))?;
                killed.push(pid);
            }
        }
        Ok(killed)
    }

    /// Every process in one of the host's namespaces but its holder.
    pub fn processes(&self) -> Vec<i32> {
        let me = i32::try_from(self.holder.id()).unwrap_or(i32::MAX);
        let mut v = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return v;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok((m, n)) = ns_ids(pid.unsigned_abs()) {
                if m == self.ns_ids.0 || n == self.ns_ids.1 {
                    v.push(pid);
                }
            }
        }
        v
    }

    /// Destroys the host's domains and kills every process in its
    /// namespaces (the holder last); what could not be removed is printed.
    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if matches!(self.holder.try_wait(), Ok(None)) {
            if let Ok(names) = self.domains() {
                for n in names {
                    let _ = self.xl(&["destroy", &n]);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Supervisors first: a service killed under a live supervisor
            // is started again.
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("testhost: host {}: processes left: {pids:?}", self.tag);
                break;
            }
            let _ = self.kill_services();
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.teardown();
        // The namespace (its bridge, veth ends, TAPs) goes with `netns`.
    }
}

/// `mnt:[inode]` and `net:[inode]` of process `pid`.
fn ns_ids(pid: u32) -> std::io::Result<(String, String)> {
    let m = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))?;
    let n = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    Ok((
        m.to_string_lossy().into_owned(),
        n.to_string_lossy().into_owned(),
    ))
}

/// Whether `name` is a rig's (`x2h-<pid>-...`) whose process is gone (a
/// run killed before its drop).
fn dead_run(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes what rigs of runs killed before their drop left: every process
/// in their namespaces (holders, daemons, guests), the namespaces, their
/// `/dev/shm` and temporary directories (their cgroup parents are swept
/// with the other test runs').
fn sweep_stale_rigs() {
    let listed = crate::run("ip", &["netns", "list"]).unwrap_or_default();
    for ns in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        if !dead_run(ns) {
            continue;
        }
        for _ in 0..50 {
            let pids = crate::run("ip", &["netns", "pids", ns]).unwrap_or_default();
            let pids: Vec<i32> = pids.lines().filter_map(|p| p.trim().parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = crate::run("ip", &["netns", "del", ns]) {
            eprintln!("testhost: cannot remove a dead run's namespace {ns}: {e:#}");
        }
    }
    for dir in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if dead_run(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Two hosts, their segment, the client and the NBD server; see the
/// [module docs](self).
#[derive(Debug)]
pub struct TwoHosts {
    /// Host A (`<SEGMENT>.1`).
    pub a: Host,
    /// Host B (`<SEGMENT>.2`).
    pub b: Host,
    /// The client's network namespace (`<SEGMENT>.3`, also the NBD
    /// server's address).
    pub client: Netns,
    /// The bridge's name, the same on both hosts.
    pub bridge: String,
    /// The test's unique name (namespaces, directories, cgroups).
    pub name: String,
    nbd: Option<Daemon>,
    dir: tempfile::TempDir,
}

/// What a [`TwoHosts`] made on the machine, to check that its drop removed
/// it all ([`Footprint::leftovers`]).
#[derive(Debug, Clone)]
pub struct Footprint {
    /// The network namespaces.
    pub netns: Vec<String>,
    /// Processes seen in the hosts' namespaces.
    pub pids: Vec<i32>,
    /// Directories (the test's, the hosts' `/dev/shm`).
    pub dirs: Vec<PathBuf>,
    /// The hosts' cgroup parents.
    pub cgroup_parents: Vec<String>,
    /// The test's unique name, which every interface name it made in the
    /// machine's own namespace would contain.
    pub name: String,
}

impl Footprint {
    /// What is still there, one line each (empty: nothing).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let listed = crate::run("ip", &["netns", "list"]).unwrap_or_default();
        for n in &self.netns {
            if listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n.as_str()))
            {
                left.push(format!("network namespace {n}"));
            }
        }
        for p in &self.pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if !stat.contains(") Z ") {
                    left.push(format!("process {p}: {}", stat.trim()));
                }
            }
        }
        for d in &self.dirs {
            if d.exists() {
                left.push(format!("directory {}", d.display()));
            }
        }
        let groups = xen_cgroup::Hierarchy::detect("")
            .and_then(|h| h.groups())
            .unwrap_or_default();
        for g in &self.cgroup_parents {
            if groups.contains(g) {
                left.push(format!("cgroup parent {g}"));
            }
        }
        let links = crate::run("ip", &["-o", "link"]).unwrap_or_default();
        for l in links.lines().filter(|l| l.contains(&self.name)) {
            left.push(format!("link {l}"));
        }
        left
    }
}

impl TwoHosts {
    /// Sets up both hosts, the segment, the client and `nbdkit` (the
    /// stacks themselves start with the first `xl create` in each host, as
    /// on a real host). `libexec` holds `xl` and what it starts
    /// ([`TWO_HOSTS_BINARIES`]). Needs root, `unshare`/`nsenter`
    /// (util-linux), `ip` and `nbdkit`.
    pub fn start(libexec: &Path) -> Result<TwoHosts> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the two-host rig needs root (namespaces, mounts, cgroups): run it as root");
        }
        need("unshare", "util-linux")?;
        need("nsenter", "util-linux")?;
        need("nbdkit", "nbdkit")?;
        crate::sweep_stale_cgroup_parents();
        sweep_stale_rigs();
        let name = unique_name(PREFIX);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("create the test's directory")?;
        // Interface names have at most 15 bytes: the bridge's and veths'
        // are short, unique per test (pid and counter) inside namespaces
        // that are the test's own anyway.
        let short = name.trim_start_matches(PREFIX).replace('-', "");
        let short = &short[short.len().saturating_sub(9)..];
        let bridge = format!("xbr{short}");
        let a = Host::new("a", &name, dir.path(), libexec, &format!("{SEGMENT}.1"))?;
        let b = Host::new("b", &name, dir.path(), libexec, &format!("{SEGMENT}.2"))?;
        let client = Netns::new(format!("{name}-c"))?;
        let mut t = TwoHosts {
            a,
            b,
            client,
            bridge,
            name,
            nbd: None,
            dir,
        };
        t.wire(short)?;
        std::fs::create_dir_all(t.exports()).context("create the exports directory")?;
        std::fs::create_dir_all(t.shared()).context("create the shared directory")?;
        std::fs::set_permissions(t.shared(), std::fs::Permissions::from_mode(0o755))
            .context("chmod the shared directory")?;
        let exports = t.exports();
        let port = NBD_PORT.to_string();
        let addr = t.client_addr();
        let dir_arg = format!("dir={}", exports.display());
        t.nbd = Some(spawn_in(
            &t.client,
            "nbdkit",
            &["-f", "-i", &addr, "-p", &port, "file", &dir_arg],
        )?);
        wait_listen(&t.client, NBD_PORT)?;
        Ok(t)
    }

    /// The bridges, the veth pair joining them and the client's link.
    fn wire(&self, short: &str) -> Result<()> {
        let br = self.bridge.as_str();
        for h in [&self.a, &self.b] {
            make_bridge(&h.netns, br, &format!("{}/24", h.addr))?;
        }
        let (va, vb) = (format!("va{short}"), format!("vb{short}"));
        self.a.netns.ip(&[
            "link",
            "add",
            &va,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &self.b.netns.name,
        ])?;
        self.a.netns.ip(&["link", "set", &va, "master", br, "up"])?;
        self.b.netns.ip(&["link", "set", &vb, "master", br, "up"])?;
        let (vc, vca) = (format!("vc{short}"), format!("vk{short}"));
        self.client.ip(&[
            "link",
            "add",
            &vc,
            "type",
            "veth",
            "peer",
            "name",
            &vca,
            "netns",
            &self.a.netns.name,
        ])?;
        self.a
            .netns
            .ip(&["link", "set", &vca, "master", br, "up"])?;
        self.client.ip(&[
            "addr",
            "add",
            &format!("{}/24", self.client_addr()),
            "dev",
            &vc,
        ])?;
        self.client.ip(&["link", "set", &vc, "up"])?;
        Ok(())
    }

    /// The client's address (and the NBD server's).
    pub fn client_addr(&self) -> String {
        format!("{SEGMENT}.3")
    }

    /// The test's directory (its hosts' private directories are `a/` and
    /// `b/` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory whose files `nbdkit` exports (by file name).
    pub fn exports(&self) -> PathBuf {
        self.dir.path().join("exports")
    }

    /// A directory both hosts read and write at the same path.
    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// Creates a sparse export `file` of `mib` MiB; its xl disk target
    /// (`nbd://<client>:<port>/<file>`).
    pub fn nbd_export(&self, file: &str, mib: u64) -> Result<String> {
        let p = self.exports().join(file);
        let f = std::fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        f.set_len(mib << 20).context("size the export")?;
        Ok(self.nbd_target(file))
    }

    /// The xl disk target of export `file`.
    pub fn nbd_target(&self, file: &str) -> String {
        format!("nbd://{}:{NBD_PORT}/{file}", self.client_addr())
    }

    /// Starts a one-node Ceph cluster of `size` bytes in the client
    /// namespace, on the client's address, which both hosts reach: shared
    /// RBD storage for the guests' disks (`target=rbd:rbd/IMAGE:conf=...`,
    /// [`crate::ceph::CephCluster::conf`] is under `/tmp`, which the hosts
    /// see). Drop it after the guests using it are gone.
    pub fn start_ceph(&self, size: u64) -> Result<crate::ceph::CephCluster> {
        crate::ceph::CephCluster::start_in(size, Some((&self.client.name, &self.client_addr())))
    }

    /// Runs `prog args` in the client namespace; its output.
    pub fn client_exec(&self, prog: &str, args: &[&str]) -> Result<Output> {
        self.client.exec(prog, args)
    }

    /// Whether `addr` answers one ping from the client within `secs` s.
    pub fn client_pings(&self, addr: &str, secs: u32) -> Result<bool> {
        let w = secs.to_string();
        Ok(self
            .client_exec("ping", &["-c", "1", "-W", &w, addr])?
            .status
            .success())
    }

    /// The machine-wide things made so far (for [`Footprint::leftovers`]
    /// after the drop), with the processes now in the hosts' namespaces.
    pub fn footprint(&self) -> Footprint {
        let mut pids = self.a.processes();
        pids.extend(self.b.processes());
        pids.push(i32::try_from(self.a.holder.id()).unwrap_or(i32::MAX));
        pids.push(i32::try_from(self.b.holder.id()).unwrap_or(i32::MAX));
        if let Some(Some(c)) = self.nbd.as_ref().map(|d| d.0.as_ref()) {
            pids.push(i32::try_from(c.id()).unwrap_or(i32::MAX));
        }
        Footprint {
            netns: vec![
                self.a.netns.name.clone(),
                self.b.netns.name.clone(),
                self.client.name.clone(),
            ],
            pids,
            dirs: vec![
                self.dir.path().to_path_buf(),
                self.a.shm.clone(),
                self.b.shm.clone(),
            ],
            cgroup_parents: vec![self.a.cgroup_parent.clone(), self.b.cgroup_parent.clone()],
            name: self.name.clone(),
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Hosts first (their guests' disks still reach nbdkit), then the
        // NBD server; the namespaces and the directory go with the fields.
        self.a.teardown();
        self.b.teardown();
        drop(self.nbd.take());
    }
}

/// The binaries a two-host test runs inside each host: `xl`, what `xl`
/// starts (`xen-supervise`, `xen-shimd`, `xenstored`, `backendd`) and the
/// VMM of PVHVM guests.
pub const TWO_HOSTS_BINARIES: [(&str, &str); 6] = [
    ("xen-xl", "xl"),
    ("xen-xl", "xen-supervise"),
    ("xen-backendd", "backendd"),
    ("xen-shimd", "xen-shimd"),
    ("xenstored", "xenstored"),
    ("xen-vmm", "xen-vmm"),
];
