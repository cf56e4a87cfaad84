//! The private Dom0 of one benchmark run: `xen-shimd` and `xenstored` as
//! threads of this process on temporary sockets, the real `xl` (which
//! starts `backendd`) and `xen-pvguest` binaries. Everything is stopped and
//! removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xen_shim::daemon::{DaemonConfig, DaemonHandle};
use xenstored::server::{Server, ServerConfig, StopHandle};

/// How long the private xenstored gets to start.
const STEP: Duration = Duration::from_secs(10);

/// The binaries a run needs next to each other.
pub const BINARIES: [&str; 3] = ["xl", "backendd", "xen-pvguest"];

/// The private services; see the [module docs](self).
#[derive(Debug)]
pub struct Host {
    dir: tempfile::TempDir,
    shim: Option<DaemonHandle>,
    xs_stop: Option<StopHandle>,
    xs_thread: Option<JoinHandle<()>>,
    mem_dir: PathBuf,
    libexec: PathBuf,
    guest: Option<String>,
}

impl Host {
    /// Starts the shim and xenstored; `libexec` holds [`BINARIES`].
    pub fn start(libexec: &Path) -> Result<Host> {
        for b in BINARIES {
            if !libexec.join(b).exists() {
                bail!(
                    "{} is missing: cargo build --release -p xen-xl -p xen-backendd -p xen-pvguest \
                     (or pass --libexec)",
                    libexec.join(b).display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("netbench-")
            .tempdir()
            .context("create a temp dir")?;
        let mem_dir = PathBuf::from("/dev/shm")
            .join(dir.path().file_name().context("the temp dir has a name")?);
        let shim_sock = dir.path().join("shim.sock");
        let shim = xen_shim::daemon::spawn(DaemonConfig {
            socket: shim_sock.clone(),
            state_dir: dir.path().join("shim-state"),
            mem_dir: mem_dir.clone(),
            ..DaemonConfig::default()
        })
        .context("start xen-shimd")?;
        let cfg = ServerConfig {
            socket: dir.path().join("xenstored.sock"),
            read_only_socket: false,
            state_dir: None,
            fsync: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let xs_thread = std::thread::spawn(move || {
            let mut s = match Server::new(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("netbench: xenstored does not start: {e}");
                    return;
                }
            };
            if let Err(e) = xenstored::install_shim(&mut s, &shim_sock) {
                eprintln!("netbench: xenstored cannot link to the shim: {e}");
                return;
            }
            if tx.send(s.stop_handle()).is_err() {
                return;
            }
            if let Err(e) = s.run() {
                eprintln!("netbench: xenstored failed: {e}");
            }
        });
        let mut host = Host {
            dir,
            shim: Some(shim),
            xs_stop: None,
            xs_thread: Some(xs_thread),
            mem_dir,
            libexec: libexec.to_path_buf(),
            guest: None,
        };
        host.xs_stop = Some(rx.recv_timeout(STEP).context("xenstored did not start")?);
        Ok(host)
    }

    /// The run's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `xl` run directory (pid files, backendd's log).
    pub fn rundir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Where the guests' console logs go (`XEN_CONSOLE_LOGDIR` of `xl`
    /// and of `backendd`, whose consback writes them).
    pub fn console_logdir(&self) -> PathBuf {
        self.dir.path().join("console")
    }

    /// The console log of guest `name`.
    pub fn guest_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.console_logdir().join(format!("guest-{name}.log")))
            .unwrap_or_default()
    }

    /// Runs `xl` against the private services.
    pub fn xl(&self, args: &[&str]) -> Result<Output> {
        Command::new(self.libexec.join("xl"))
            .args(args)
            .env(xen_shim::ENV_SOCKET, self.dir.path().join("shim.sock"))
            .env("XENSTORED_PATH", self.dir.path().join("xenstored.sock"))
            .env("XEN_SPLIT_RUNDIR", self.rundir())
            .env("XEN_CONSOLE_LOGDIR", self.console_logdir())
            .env("XL_LIBEXEC_DIR", &self.libexec)
            .output()
            .context("run xl")
    }

    /// The directory of the binaries.
    pub fn libexec(&self) -> &Path {
        &self.libexec
    }

    /// `xl create`s guest `name` from config text `cfg`, waits until it
    /// shut down (or `limit`), destroys it and returns its console log.
    pub fn run_guest(&mut self, name: &str, cfg: &str, limit: Duration) -> Result<String> {
        let path = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(&path, cfg).context("write the guest config")?;
        let cfg_s = path.to_str().context("utf-8 temp path")?;
        let out = self.xl(&["create", cfg_s])?;
        if !out.status.success() {
            bail!(
                "xl create failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.guest = Some(name.to_owned());
        let deadline = Instant::now() + limit;
        let log = loop {
            let log = self.guest_log(name);
            if log.contains("pvguest shutdown") || log.contains("frontend-failed") {
                break log;
            }
            if Instant::now() >= deadline {
                self.destroy_guest();
                bail!("the guest did not finish within {limit:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.destroy_guest();
        if log.contains("frontend-failed") {
            bail!("the guest failed; its log:\n{log}");
        }
        Ok(log)
    }

    fn destroy_guest(&mut self) {
        if let Some(g) = self.guest.take() {
            let _ = self.xl(&["destroy", &g]);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.destroy_guest();
        if let Ok(s) = std::fs::read_to_string(self.rundir().join("backendd.pid")) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        if let Some(s) = self.shim.take() {
            let _ = s.stop();
        }
        if let Some(s) = self.xs_stop.take() {
            s.stop();
        }
        if let Some(t) = self.xs_thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.mem_dir);
    }
}
