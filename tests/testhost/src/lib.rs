//! The private Dom0 of our end-to-end tests and benchmarks.
//!
//! [`Dom0`] runs `xen-shimd` and `xenstored` as threads of the calling
//! process on sockets in a fresh temporary directory (its domains' memory
//! files in a matching directory under `/dev/shm`), and runs the real `xl`
//! with that directory in its environment, so `xl` starts the real
//! `backendd` and guest processes against these private services. Nothing
//! is shared with the host's own services or with other tests, so tests run
//! in parallel. Everything (guests created through it, the `backendd` `xl`
//! started, the services, both directories) is stopped and removed on drop,
//! also when a test panics.
//!
//! [`Xenstored`] is that xenstored alone (also for tests that play the
//! toolstack themselves); [`Dom0::pv_config`] and [`pv_cmdline`] write the
//! PV guest configs of the tests and benchmarks (the runtime's command
//! line in one place).
//!
//! [`ceph`] is the one-node Ceph cluster of the RBD tests.
//!
//! [`build_binaries`] builds the binaries a test needs into its own target
//! directory and profile; [`net`] has the network namespaces, bridges and
//! the hand-started `backendd` of the network tests; [`shim`] is the
//! shim-only Dom0 (no xenstored, no `xl`) of the tests that start guest
//! programs themselves or attach a runtime in the test process; [`term`] is
//! the pty the console tests type on; [`stats`] has the median, spread
//! and paired ratios the benchmarks report; [`twohosts`] is the rig of
//! two complete Dom0 hosts (own network and mount namespaces, one L2
//! segment, a client, an NBD server) of the migration tests; [`fleet`] has
//! what the many-guest runs share (the base image and its qcow2 overlays,
//! backends Connected, the services' memory, descriptors and mappings from
//! `/proc`).

pub mod ceph;
pub mod fleet;
pub mod net;
pub mod shim;
pub mod stats;
pub mod term;
pub mod twohosts;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_shimd::{DaemonConfig, DaemonHandle};
use xenstored::server::{Server, ServerConfig, StopHandle};

/// How long each service gets to start.
pub const STEP: Duration = Duration::from_secs(10);

/// The private services and files of one test or benchmark run; see the
/// [crate docs](crate).
#[derive(Debug)]
pub struct Dom0 {
    /// The run's temporary directory (sockets, `run/`, `console/`, configs).
    pub dir: tempfile::TempDir,
    /// Where the shim keeps the domains' memory files.
    pub mem_dir: PathBuf,
    /// The directory holding `xl`, `backendd` and the guest binaries.
    pub libexec: PathBuf,
    /// The cgroup parent of this run's domains (`XL_CGROUP_PARENT`),
    /// `xen-test-<pid>-<n>` from each hierarchy's root; emptied and removed
    /// on drop.
    pub cgroup_parent: String,
    /// The first domid this Dom0's shim gives out ([`pick_first_domid`]).
    pub first_domid: u16,
    shim: Option<DaemonHandle>,
    xenstored: Option<Xenstored>,
    /// The `xen-supervise` processes of [`Dom0::start_supervised`].
    supervisors: Vec<std::process::Child>,
    guests: Vec<String>,
}

/// A random first domid in `2..=30000` for a private Dom0. Domains' host
/// uid ranges and their runtimes' uids follow from their domids, and these
/// are host-wide: two test stacks whose guests both were domain 1 shared
/// them (one guest's init failed with `EACCES` while the other booted).
#[must_use]
pub fn pick_first_domid() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let n = u16::try_from(h.finish() % 29_999).unwrap_or(0);
    2 + n
}

impl Dom0 {
    /// Starts the shim and xenstored in a temporary directory named
    /// `prefix...`; `libexec` holds the binaries `xl` runs.
    pub fn start(prefix: &str, libexec: &Path) -> Result<Dom0> {
        let mut d = Dom0::empty(prefix, libexec)?;
        d.shim = Some(xen_shimd::spawn(d.shim_config()).context("start xen-shimd")?);
        d.xenstored = Some(Xenstored::start(&d.xenstored_socket(), &d.shim_socket())?);
        Ok(d)
    }

    /// Like [`Dom0::start`], but `xen-shimd` and `xenstored` are the
    /// binaries in `libexec` (build them: [`SUPERVISED_BINARIES`]), each
    /// under `xen-supervise` as `xl` starts them (supervisor pid files
    /// `<rundir>/<name>-supervisor.pid`, the services' `<rundir>/<name>.pid`,
    /// logs `<rundir>/<name>.log`; xenstored persists in `<dir>/xenstored-state`):
    /// for the tests that kill them. Stopped through their supervisors on drop.
    pub fn start_supervised(prefix: &str, libexec: &Path) -> Result<Dom0> {
        let mut d = Dom0::empty(prefix, libexec)?;
        let rundir = d.rundir();
        std::fs::create_dir_all(&rundir).context("create the rundir")?;
        let (shim, xs) = (d.shim_socket(), d.xenstored_socket());
        let shim_args: Vec<std::ffi::OsString> = vec![
            "--socket".into(),
            shim.clone().into(),
            "--state-dir".into(),
            d.dir.path().join("shim-state").into(),
            "--mem-dir".into(),
            d.mem_dir.clone().into(),
            "--first-domid".into(),
            d.first_domid.to_string().into(),
        ];
        d.supervise("xen-shimd", &shim_args, true)?;
        wait_until(
            || xen_shim_dom0::Control::connect(&shim).is_ok(),
            "xen-shimd",
        )?;
        let xs_args: Vec<std::ffi::OsString> = vec![
            "-N".into(),
            "--socket".into(),
            xs.clone().into(),
            "--no-ro-socket".into(),
            "-F".into(),
            rundir.join("xenstored.pid").into(),
            "--state-dir".into(),
            d.dir.path().join("xenstored-state").into(),
            "--shim-socket".into(),
            shim.into(),
        ];
        d.supervise("xenstored", &xs_args, false)?;
        wait_until(
            || std::os::unix::net::UnixStream::connect(&xs).is_ok(),
            "xenstored",
        )?;
        Ok(d)
    }

    /// Starts `libexec/<name> args` under `libexec/xen-supervise` as
    /// `xl` does.
    fn supervise(
        &mut self,
        name: &str,
        args: &[std::ffi::OsString],
        child_pid: bool,
    ) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let rundir = self.rundir();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(rundir.join(format!("{name}.log")))
            .context("open the service's log")?;
        let log2 = log.try_clone().context("dup the log fd")?;
        let mut c = Command::new(self.libexec.join("xen-supervise"));
        c.arg("--name")
            .arg(name)
            .arg("--pid-file")
            .arg(rundir.join(format!("{name}-supervisor.pid")));
        if child_pid {
            c.arg("--child-pid-file")
                .arg(rundir.join(format!("{name}.pid")));
        }
        let child = c
            .arg("--")
            .arg(self.libexec.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {name} under xen-supervise"))?;
        self.supervisors.push(child);
        Ok(())
    }

    /// The pid in `<rundir>/<name>.pid` if it is a live process (a
    /// zombie is not).
    pub fn service_pid(&self, name: &str) -> Option<i32> {
        let f = self.rundir().join(format!("{name}.pid"));
        let pid: i32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (!stat.contains(") Z ")).then_some(pid)
    }

    /// The run directory and nothing running yet.
    fn empty(prefix: &str, libexec: &Path) -> Result<Dom0> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("create a temp dir")?;
        let mem_dir = PathBuf::from("/dev/shm")
            .join(dir.path().file_name().context("the temp dir has a name")?);
        sweep_stale_cgroup_parents();
        let d = Dom0 {
            dir,
            mem_dir,
            libexec: libexec.to_path_buf(),
            cgroup_parent: shim::unique_name(CGROUP_PARENT_PREFIX),
            first_domid: pick_first_domid(),
            shim: None,
            xenstored: None,
            supervisors: Vec::new(),
            guests: Vec::new(),
        };
        Ok(d)
    }

    /// The shim daemon's configuration (the same on a restart).
    pub fn shim_config(&self) -> DaemonConfig {
        DaemonConfig {
            socket: self.shim_socket(),
            state_dir: self.dir.path().join("shim-state"),
            mem_dir: self.mem_dir.clone(),
            first_domid: self.first_domid,
            ..DaemonConfig::default()
        }
    }

    /// Stops the shim daemon and starts a new one on the same state (a
    /// daemon restart: running domains must survive it).
    pub fn restart_shim(&mut self) -> Result<()> {
        if let Some(s) = self.shim.take() {
            s.stop().context("stop xen-shimd")?;
        }
        self.shim = Some(xen_shimd::spawn(self.shim_config()).context("restart xen-shimd")?);
        Ok(())
    }

    /// The run's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The shim daemon's socket.
    pub fn shim_socket(&self) -> PathBuf {
        self.dir.path().join("shim.sock")
    }

    /// xenstored's socket.
    pub fn xenstored_socket(&self) -> PathBuf {
        self.dir.path().join("xenstored.sock")
    }

    /// The `xl` run directory (pid files, backendd's and the VMM's logs).
    pub fn rundir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Where backendd's consback writes the guests' console logs.
    pub fn console_logdir(&self) -> PathBuf {
        self.dir.path().join("console")
    }

    /// `xl ARGS` with this Dom0's sockets and directories in its
    /// environment (to spawn it or add to it).
    pub fn xl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.libexec.join("xl"));
        c.args(args)
            .env(xen_shim_proto::ENV_SOCKET, self.shim_socket())
            .env("XENSTORED_PATH", self.xenstored_socket())
            .env("XEN_SPLIT_RUNDIR", self.rundir())
            .env("XEN_CONSOLE_LOGDIR", self.console_logdir())
            .env("XL_LIBEXEC_DIR", &self.libexec)
            .env("XL_CGROUP_PARENT", &self.cgroup_parent);
        c
    }

    /// The cgroup of guest `domid` that `xl create` made (`None`: none).
    pub fn guest_cgroup(&self, domid: u16) -> Result<Option<xen_cgroup::Cgroup>> {
        let h = xen_cgroup::Hierarchy::detect(&self.cgroup_parent)?;
        for name in h.groups()? {
            if name.strip_prefix(&format!("dom{domid}-")).is_some() {
                return Ok(Some(h.group(&name)?));
            }
        }
        Ok(None)
    }

    /// Starts a Dom0 for the PV guest end-to-end tests: checks that the
    /// machine can run PV guests with disks (root, `/dev/fuse`, the tools
    /// their inits and the checks use), builds `xl` and `backendd` next to
    /// `exe` (a test's `CARGO_BIN_EXE_...`) from the workspace at
    /// `workspace`, and starts the services; `prefix` names the directory.
    pub fn start_for_pv_guests(prefix: &str, exe: &Path, workspace: &Path) -> Result<Dom0> {
        let libexec = Dom0::prepare_pv_guests(exe, workspace)?;
        Dom0::start(prefix, &libexec)
    }

    /// What [`Dom0::start_for_pv_guests`] does before it starts the
    /// services: the checks and the build; returns the directory of the
    /// binaries.
    pub fn prepare_pv_guests(exe: &Path, workspace: &Path) -> Result<PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            bail!("this test needs root (shim, FUSE, loop devices): run it as root");
        }
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse is missing: load the fuse module (modprobe fuse)");
        }
        for (t, p) in [
            ("mkfs.ext4", "e2fsprogs"),
            ("fsck.ext4", "e2fsprogs"),
            ("losetup", "mount"),
            ("sha256sum", "coreutils"),
            ("fio", "fio"),
        ] {
            need(t, p)?;
        }
        let profile = exe.parent().context("<target>/<profile>")?;
        build_binaries(profile, workspace, &DOM0_BINARIES)
    }

    /// [`Dom0::start_for_pv_guests`] and the busybox root images of
    /// `examples/mkroot.sh` ([`mkroot`]) in the run directory's `root/`
    /// (whose path comes second).
    pub fn start_with_root(prefix: &str, exe: &Path, workspace: &Path) -> Result<(Dom0, PathBuf)> {
        let host = Dom0::start_for_pv_guests(prefix, exe, workspace)?;
        let dir = host.dir().join("root");
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        mkroot(workspace, &dir)?;
        Ok((host, dir))
    }

    /// Runs `xl ARGS`; its output, whatever its status.
    pub fn xl(&self, args: &[&str]) -> Result<Output> {
        self.xl_command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", self.libexec.join("xl").display()))
    }

    /// Runs `xl ARGS`; its stdout, or an error with both streams unless it
    /// succeeded.
    pub fn xl_ok(&self, args: &[&str]) -> Result<String> {
        stdout_of(&format!("xl {}", args.join(" ")), &self.xl(args)?)
    }

    /// The domid of guest `name` in `xl list NAME` (`None` if not listed).
    pub fn domid(&self, name: &str) -> Result<Option<u16>> {
        let out = self.xl(&["list", name])?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|d| d.parse().ok()))
    }

    /// Writes the shell script `script` as `<name>-init.sh` (executable)
    /// into the run directory; its path.
    pub fn write_init(&self, name: &str, script: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(format!("{name}-init.sh"));
        std::fs::write(&p, script).with_context(|| format!("write {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", p.display()))?;
        Ok(p)
    }

    /// A PV guest config `<name>.cfg` whose init is the shell script
    /// `script` (written by [`Dom0::write_init`]), with `memory_mib` MiB
    /// and `extra_lines` of xl.cfg (disks, vifs, actions); its path.
    pub fn pv_config(
        &self,
        name: &str,
        memory_mib: u32,
        script: &str,
        extra_lines: &str,
    ) -> Result<String> {
        let init = self.write_init(name, script)?;
        let cfg = self.write_config(
            name,
            &format!(
                "name = \"{name}\"\ntype = 'pv'\nmemory = {memory_mib}\nvcpus = 1\n\
                 extra = '{}'\n{extra_lines}",
                pv_cmdline(&init)
            ),
        )?;
        Ok(cfg.to_str().context("utf-8 temp path")?.to_owned())
    }

    /// Writes `<name>.cfg` with `text` into the run directory; its path.
    pub fn write_config(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    }

    /// `xl create`s guest `name` from config text `cfg` and leaves it
    /// running (destroyed on drop); fails with xl's message.
    pub fn create_guest(&mut self, name: &str, cfg: &str) -> Result<()> {
        let p = self.write_config(name, cfg)?;
        let out = self.xl(&["create", p.to_str().context("utf-8 temp path")?])?;
        // Tracked even when xl failed half-way: destroy removes what it left.
        self.track_guest(name);
        if !out.status.success() {
            bail!(
                "xl create of {name} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Makes `xl destroy NAME` run on drop (for guests created by hand).
    pub fn track_guest(&mut self, name: &str) {
        if !self.guests.iter().any(|g| g == name) {
            self.guests.push(name.to_owned());
        }
    }

    /// No longer `xl destroy`s guest `name` on drop (it is gone).
    pub fn untrack_guest(&mut self, name: &str) {
        self.guests.retain(|g| g != name);
    }

    /// `xl destroy`s guest `name` now (and no longer on drop).
    pub fn destroy_guest(&mut self, name: &str) -> Result<Output> {
        self.guests.retain(|g| g != name);
        self.xl(&["destroy", name])
    }

    /// `xl destroy`s every guest created through this Dom0.
    pub fn destroy_guests(&mut self) {
        for g in std::mem::take(&mut self.guests) {
            let _ = self.xl(&["destroy", &g]);
        }
    }

    /// The console log of guest `name` (empty until consback wrote it).
    pub fn guest_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.console_logdir().join(format!("guest-{name}.log")))
            .unwrap_or_default()
    }

    /// Waits until guest `name`'s console log has one of `needles` (at most
    /// `limit`, polling every `nap`); the log and the needle found.
    pub fn wait_log_any(
        &self,
        name: &str,
        needles: &[&str],
        limit: Duration,
        nap: Duration,
    ) -> Result<(String, usize)> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.guest_log(name);
            if let Some(i) = needles.iter().position(|n| log.contains(n)) {
                return Ok((log, i));
            }
            if Instant::now() >= deadline {
                bail!("guest {name} did not print any of {needles:?} within {limit:?}; its log:\n{log}");
            }
            std::thread::sleep(nap);
        }
    }

    /// Waits until guest `name`'s console log has `needle` (at most
    /// `limit`); the log.
    pub fn wait_log(&self, name: &str, needle: &str, limit: Duration) -> Result<String> {
        self.wait_log_any(name, &[needle], limit, Duration::from_millis(20))
            .map(|(log, _)| log)
    }

    /// The pid of the backendd `xl` started (from its pid file), if alive.
    pub fn backendd_pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.rundir().join("backendd.pid")).ok()?;
        let pid: i32 = s.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The pid of the `xen-supervise` that `xl` started for service `name`
    /// (`backendd`, `xenstored`, `xen-shimd`), if alive (a zombie is not).
    pub fn supervisor_pid(&self, name: &str) -> Option<i32> {
        let f = self.rundir().join(format!("{name}-supervisor.pid"));
        let pid: i32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (!stat.contains(") Z ")).then_some(pid)
    }
}

impl Drop for Dom0 {
    fn drop(&mut self) {
        self.destroy_guests();
        // backendd's supervisor first (it stops backendd and does not
        // restart it), then backendd itself if it still runs.
        if let Some(sup) = self.supervisor_pid("backendd") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(sup),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.supervisor_pid("backendd").is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(pid) = self.backendd_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if let Some(s) = self.shim.take() {
            let _ = s.stop();
        }
        drop(self.xenstored.take());
        // xenstored's supervisor, then the shim's: each passes SIGTERM on
        // and waits for its service; SIGKILL to the group after 10 s.
        while let Some(mut c) = self.supervisors.pop() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let group = nix::unistd::Pid::from_raw(-pid.as_raw());
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.mem_dir);
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

/// Polls `ok` until it holds, up to [`STEP`].
fn wait_until(ok: impl Fn() -> bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + STEP;
    while !ok() {
        if Instant::now() >= deadline {
            bail!("{what} did not come up within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The name prefix of the test runs' cgroup parents.
pub const CGROUP_PARENT_PREFIX: &str = "xen-test";

/// Destroys every group under `parent` and removes it (what `xl destroy`
/// left, e.g. after a failed test).
pub(crate) fn remove_cgroup_parent(parent: &str) {
    let Ok(h) = xen_cgroup::Hierarchy::detect(parent) else {
        return;
    };
    for g in h.groups().unwrap_or_default() {
        if let Ok(g) = h.group(&g) {
            if let Err(e) = g.destroy() {
                eprintln!("testhost: cannot destroy the cgroup {}: {e}", g.name());
            }
        }
    }
    if let Err(e) = h.remove_parent() {
        eprintln!("testhost: cannot remove the cgroup parent {parent}: {e}");
    }
}

/// Removes the cgroup parents of test runs whose process is gone (a run
/// killed before its drop), so that nothing of them stays on the host.
pub(crate) fn sweep_stale_cgroup_parents() {
    let Ok(root) = xen_cgroup::Hierarchy::detect("") else {
        return;
    };
    for name in root.groups().unwrap_or_default() {
        let Some(pid) = name
            .strip_prefix(CGROUP_PARENT_PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_cgroup_parent(&name);
        }
    }
}

/// Our xenstored in a thread of this process on a Unix socket, serving
/// domains' rings through the shim daemon at `shim` (no persistence, no
/// fsync); stopped and joined on drop.
#[derive(Debug)]
pub struct Xenstored {
    socket: PathBuf,
    stop: Option<StopHandle>,
    thread: Option<JoinHandle<()>>,
}

impl Xenstored {
    /// Starts it on `socket`; waits (up to [`STEP`]) until it listens.
    pub fn start(socket: &Path, shim: &Path) -> Result<Xenstored> {
        let cfg = ServerConfig {
            socket: socket.to_path_buf(),
            read_only_socket: false,
            state_dir: None,
            fsync: false,
        };
        let shim = shim.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("xenstored".into())
            .spawn(move || {
                let mut s = match Server::new(&cfg) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(format!("xenstored does not start: {e}")));
                        return;
                    }
                };
                if let Err(e) = xenstored::install_shim(&mut s, &shim) {
                    let _ = tx.send(Err(format!("xenstored cannot link to the shim: {e}")));
                    return;
                }
                if tx.send(Ok(s.stop_handle())).is_err() {
                    return;
                }
                if let Err(e) = s.run() {
                    eprintln!("xen-testhost: xenstored failed: {e}");
                }
            })
            .context("start xenstored's thread")?;
        let mut x = Xenstored {
            socket: socket.to_path_buf(),
            stop: None,
            thread: Some(thread),
        };
        match rx.recv_timeout(STEP) {
            Ok(Ok(stop)) => x.stop = Some(stop),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("xenstored did not start within {STEP:?}"),
        }
        Ok(x)
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Builds the binaries `bins` (`(package, binary)` pairs) of the workspace
/// at `workspace` into the target directory and profile that `profile_dir`
/// (`<target>/<profile>`, e.g. the directory of a test's
/// `CARGO_BIN_EXE_...`) belongs to; returns `profile_dir`.
pub fn build_binaries(
    profile_dir: &Path,
    workspace: &Path,
    bins: &[(&str, &str)],
) -> Result<PathBuf> {
    let target = profile_dir
        .parent()
        .context("the profile directory is <target>/<profile>")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]);
    for (pkg, bin) in bins {
        cmd.args(["-p", pkg, "--bin", bin]);
    }
    cmd.arg("--target-dir").arg(target).current_dir(workspace);
    if profile_dir.file_name() == Some(OsStr::new("release")) {
        cmd.arg("--release");
    }
    let st = cmd.status().context("run cargo build")?;
    if !st.success() {
        bail!("building {bins:?} failed: {st}");
    }
    // Whatever umask this process has, keep the binaries executable for
    // the guests' (and everyone's) exec.
    for (_, bin) in bins {
        use std::os::unix::fs::PermissionsExt;
        let p = profile_dir.join(bin);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", p.display()))?;
    }
    Ok(profile_dir.to_path_buf())
}

/// Builds the PVHVM kernel of the workspace at `workspace` (its own
/// workspace, `frontend-drivers/pvhvm-kernel`: `--release`, static
/// relocation) into `<target>/pvhvm-kernel`; returns the ELF's path.
pub fn build_pvhvm_kernel(target: &Path, workspace: &Path) -> Result<PathBuf> {
    let dir = target.join("pvhvm-kernel");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--manifest-path")
        .arg(workspace.join("frontend-drivers/pvhvm-kernel/Cargo.toml"))
        .arg("--target-dir")
        .arg(&dir)
        .env("RUSTFLAGS", "-C relocation-model=static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("run cargo build for the PVHVM kernel")?;
    if !st.success() {
        bail!("building the PVHVM kernel failed: {st}");
    }
    Ok(dir.join("x86_64-unknown-linux-gnu/release/pvhvm-kernel"))
}

/// The kernel command line (`extra =`) of a guest whose init is the
/// program `init` of the host's file system (no `root=`: the runtime's
/// compatibility path for test scripts): the runtime connects the domain's
/// disks and NICs, runs the init with them and powers off when it ends.
pub fn pv_cmdline(init: &Path) -> String {
    format!("pvguest.timeout=30 init={}", init.display())
}

/// `xl`, `backendd` and `xen-supervise` (which `xl` starts each service
/// under), which every Dom0 needs.
pub const DOM0_BINARIES: [(&str, &str); 3] = [
    ("xen-xl", "xl"),
    ("xen-xl", "xen-supervise"),
    ("xen-backendd", "backendd"),
];

/// The services [`Dom0::start_supervised`] runs as processes.
pub const SUPERVISED_BINARIES: [(&str, &str); 2] =
    [("xen-shimd", "xen-shimd"), ("xenstored", "xenstored")];

/// Builds `xl`, `backendd` and `xen-pvguest` next to the binary `exe` (a
/// benchmark's `CARGO_BIN_EXE_...`: same target dir and profile) from the
/// workspace at `workspace`; returns that directory (a benchmark's
/// `--libexec`).
pub fn build_pv_binaries_next_to(exe: &Path, workspace: &Path) -> Result<PathBuf> {
    let profile = exe.parent().context("<target>/<profile>")?;
    let mut bins = DOM0_BINARIES.to_vec();
    bins.push(("xen-pvguest", "xen-pvguest"));
    build_binaries(profile, workspace, &bins)
}

/// Runs `examples/mkroot.sh` of the workspace at `workspace` (a crate's
/// directory there) into `dir`: `pv-root.img` (raw ext4), `pv-root.qcow2`,
/// `pv-root.cpio` (a newc ramdisk).
pub fn mkroot(workspace: &Path, dir: &Path) -> Result<()> {
    need("busybox", "busybox-static")?;
    need("cpio", "cpio")?;
    need("debugfs", "e2fsprogs")?;
    need("qemu-img", "qemu-utils")?;
    let script = workspace.join("../../examples/mkroot.sh");
    let out = Command::new(&script)
        .arg(dir)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    stdout_of("examples/mkroot.sh", &out)?;
    Ok(())
}

/// The 1, 5 and 15 minute load averages of `/proc/loadavg` (`None` if
/// unreadable): benchmarks quote them with their figures.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut v = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([v.next()??, v.next()??, v.next()??])
}

/// Fails unless `tool` is on the PATH, naming Debian's `package`.
pub fn need(tool: &str, package: &str) -> Result<()> {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("{tool} is missing: run `apt-get install -y {package}` (or tests/setup-host.sh)");
    }
    Ok(())
}

/// `out`'s stdout if its command succeeded, else an error with both streams.
pub fn stdout_of(what: &str, out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `prog args` to completion; its stdout, or an error naming it.
pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    stdout_of(&format!("{prog} {}", args.join(" ")), &out)
}

/// The directory of the running executable: where a benchmark's release
/// build put the binaries it starts (its default `--libexec`).
pub fn exe_dir() -> Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("this binary's path")?
        .parent()
        .context("this binary's directory")?
        .to_path_buf())
}

/// `mount -o loop[,OPTS] FILE DIR`, retried for up to 5 s while mount says
/// the loop device is busy: right after an `umount` of a loop mount of the
/// same file the kernel is still detaching its (autoclear) loop device,
/// which `mount` finds and reuses, and the mount fails with `EBUSY`
/// ("already mounted or mount point busy").
pub fn mount_loop(file: &str, dir: &str, opts: &str) -> Result<()> {
    let o = if opts.is_empty() {
        "loop".to_owned()
    } else {
        format!("loop,{opts}")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("mount")
            .args(["-o", &o, file, dir])
            .output()
            .context("cannot run mount")?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains("already mounted or mount point busy") || Instant::now() >= deadline {
            bail!("mount -o {o} {file} {dir} failed ({}): {err}", out.status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks from `/proc/<pid>/task/*/status` that every thread of process
/// `pid` (a domain's runtime or VMM) is jailed as domain `domid`'s
/// (`xen_jail`): the domain's uid and gid, exactly the `kept`
/// capabilities (effective, permitted, bounding; no ambient),
/// `NoNewPrivs: 1` and `Seccomp: 2`.
pub fn assert_jailed(pid: u32, domid: u16, kept: &[xen_jail::Cap]) -> Result<()> {
    let uid = xen_jail::domain_uid(domid);
    let want = xen_jail::Confinement::mask(kept);
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("list the threads of {pid}"))?
    {
        let Some(tid) = t?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let c = match xen_jail::Confinement::of(pid, Some(tid)) {
            Ok(c) => c,
            // A thread that ended meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("status of {pid}/{tid}")),
        };
        if c.uids != [uid; 4]
            || c.gids != [uid; 4]
            || c.cap_eff != want
            || c.cap_prm != want
            || c.cap_bnd != want
            || c.cap_amb != 0
            || !c.no_new_privs
            || c.seccomp != 2
        {
            bail!("thread {tid} of {pid} is not jailed as domain {domid} (uid {uid}, caps {want:#x}): {c:?}");
        }
        threads += 1;
    }
    if threads == 0 {
        bail!("process {pid} has no threads to check");
    }
    Ok(())
}
