//! The private Dom0 of the `xl` end-to-end tests (pvdisk_e2e, backendd_sigkill):
//! `xen-shimd` and `xenstored` as threads of the test process on temporary
//! sockets, the real `xl`, `backendd` and `xen-pvguest` binaries, and
//! helpers to run commands and read a guest's console log. Everything is
//! stopped and removed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use xen_shim::daemon::{DaemonConfig, DaemonHandle};
use xenstored::server::{Server, ServerConfig, StopHandle};

/// Timeout of each set-up step.
pub const STEP: Duration = Duration::from_secs(10);

pub fn need(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is missing: run `apt-get install -y {package}` (or tests/setup-host.sh)"
    );
}

/// Builds `xl` and `backendd` next to our `xen-pvguest` (once).
pub fn libexec() -> PathBuf {
    let pv = PathBuf::from(env!("CARGO_BIN_EXE_xen-pvguest"));
    let profile = pv.parent().expect("<target>/<profile>").to_path_buf();
    let target = profile.parent().expect("<target>").to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "xen-xl",
        "--bin",
        "xl",
        "-p",
        "xen-backendd",
        "--bin",
        "backendd",
    ])
    .arg("--target-dir")
    .arg(&target)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile.file_name() == Some(std::ffi::OsStr::new("release")) {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "building xl and backendd failed: {st}");
    profile
}

/// The private services and files of the test; stopped and removed on
/// drop (also a `backendd` that `xl` started, and the guest).
pub struct Host {
    pub dir: tempfile::TempDir,
    pub shim: Option<DaemonHandle>,
    pub xs_stop: StopHandle,
    pub xs_thread: Option<JoinHandle<()>>,
    pub mem_dir: PathBuf,
    pub libexec: PathBuf,
    /// The guest `xl destroy`s on drop.
    pub guest: Option<String>,
    /// A backendd the test started itself (killed on drop).
    pub backendd: Option<std::process::Child>,
}

impl Host {
    /// Starts the private services; `prefix` names the temporary directory.
    pub fn start(prefix: &str) -> Host {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (shim, FUSE, loop devices): run it as root"
        );
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: load the fuse module (modprobe fuse)"
        );
        for (t, p) in [
            ("mkfs.ext4", "e2fsprogs"),
            ("fsck.ext4", "e2fsprogs"),
            ("losetup", "mount"),
            ("sha256sum", "coreutils"),
            ("fio", "fio"),
        ] {
            need(t, p);
        }
        let libexec = libexec();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        // The guest (root) reads the script; tempdir is 0700 but root.
        let mem_dir =
            PathBuf::from("/dev/shm").join(dir.path().file_name().expect("temp dir has a name"));
        let shim_sock = dir.path().join("shim.sock");
        let shim = xen_shim::daemon::spawn(DaemonConfig {
            socket: shim_sock.clone(),
            state_dir: dir.path().join("shim-state"),
            mem_dir: mem_dir.clone(),
            ..DaemonConfig::default()
        })
        .expect("start xen-shimd");
        let cfg = ServerConfig {
            socket: dir.path().join("xenstored.sock"),
            read_only_socket: false,
            state_dir: None,
            fsync: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let xs_thread = std::thread::spawn(move || {
            let mut s = Server::new(&cfg).expect("xenstored starts");
            xenstored::install_shim(&mut s, &shim_sock).expect("xenstored links to the shim");
            tx.send(s.stop_handle()).expect("the test waits");
            s.run().expect("xenstored runs");
        });
        let xs_stop = rx.recv_timeout(STEP).expect("xenstored started");
        Host {
            dir,
            shim: Some(shim),
            xs_stop,
            xs_thread: Some(xs_thread),
            mem_dir,
            libexec,
            guest: None,
            backendd: None,
        }
    }

    pub fn rundir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn console_logdir(&self) -> PathBuf {
        self.dir.path().join("console")
    }

    /// `xl` with this host's sockets and directories in its environment.
    pub fn xl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.libexec.join("xl"));
        c.args(args)
            .env(xen_shim::ENV_SOCKET, self.dir.path().join("shim.sock"))
            .env("XENSTORED_PATH", self.dir.path().join("xenstored.sock"))
            .env("XEN_SPLIT_RUNDIR", self.rundir())
            .env("XEN_CONSOLE_LOGDIR", self.console_logdir())
            .env("XL_LIBEXEC_DIR", &self.libexec);
        c
    }

    pub fn xl(&self, args: &[&str]) -> Output {
        self.xl_command(args).output().expect("run xl")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(g) = self.guest.take() {
            let _ = self.xl(&["destroy", &g]);
        }
        if let Ok(s) = std::fs::read_to_string(self.rundir().join("backendd.pid")) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        if let Some(mut c) = self.backendd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = self.shim.take() {
            let _ = s.stop();
        }
        self.xs_stop.stop();
        if let Some(t) = self.xs_thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.mem_dir);
    }
}

pub fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    ok(&format!("{cmd} {args:?}"), &out)
}

/// The guest's log (`$XEN_CONSOLE_LOGDIR/guest-<name>.log`).
pub fn guest_log(host: &Host, name: &str) -> Option<String> {
    std::fs::read_to_string(host.console_logdir().join(format!("guest-{name}.log"))).ok()
}
