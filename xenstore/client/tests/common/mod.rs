//! Shared test support: builds/locates OUR `xenstored`, runs it on a private
//! socket and state directory, and checks that the Debian tools the
//! compatibility tests drive are installed.
//!
//! Locating the daemon: `$XENSTORED_BIN` if set; otherwise the test runs
//! `cargo build -p xenstored` once per test binary into the same target
//! directory and profile as the test itself (found from the test
//! executable's path, `<target>/<profile>/deps/<test>`), and uses
//! `<target>/<profile>/xenstored`. Cargo's `CARGO_BIN_EXE_*` only covers
//! binaries of the same package, hence this.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Path of our `xenstored`, built if needed.
pub fn xenstored_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("XENSTORED_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("<target> above <profile>");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "xenstored", "--bin", "xenstored"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p xenstored");
        assert!(
            status.success(),
            "cargo build -p xenstored failed: {status}"
        );
        let bin = profile_dir.join("xenstored");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// Panics with the install command when a tool from a Debian package is missing.
pub fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} \
         (tests/setup-host.sh does it: apt-get install -y --no-install-recommends {package})"
    );
}

/// A unique scratch directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "xsc-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Our xenstored on a private socket, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub state: PathBuf,
    // Last, so the directory goes after the process.
    pub dir: TempDir,
}

impl Daemon {
    /// Starts a fresh daemon and waits until its socket accepts.
    pub fn start() -> Self {
        Self::start_in(TempDir::new("xsd"))
    }

    /// Starts a daemon whose files live in `dir` (state kept from a previous run).
    pub fn start_in(dir: TempDir) -> Self {
        let socket = dir.0.join("socket");
        let state = dir.0.join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let log = std::fs::File::create(dir.0.join("xenstored.log")).expect("log file");
        let child = Command::new(xenstored_bin())
            .arg("--socket")
            .arg(&socket)
            .arg("--foreground")
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn xenstored");
        let mut d = Self {
            child,
            socket,
            state,
            dir,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "xenstored exited with {st} before listening; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "xenstored did not listen on {} within 20 s; log:\n{}",
            self.socket.display(),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("xenstored.log")).unwrap_or_default()
    }

    /// A command with `XENSTORED_PATH` pointing at this daemon.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("XENSTORED_PATH", &self.socket)
            .env_remove("XENSTORED_RUNDIR")
            .stdin(Stdio::null());
        c
    }

    /// Stops the daemon, keeping its directory (for restart tests).
    pub fn stop(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` and returns its output, failing the test if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Output as text, for messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
