//! Test harness: a real `xen-shimd` on a unique socket and state directory
//! per test, and real guest runtime processes (`shim-test-peer`) driven over
//! stdin/stdout. Everything is torn down by Drop guards, even on failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xen_shim_dom0::{Control, CreatedDomain};
use xen_shim_proto::protocol::DomainConfig;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running daemon with its own directories.
pub struct Shimd {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub mem_dir: PathBuf,
    pub socket: PathBuf,
    pub extra_args: Vec<String>,
}

fn require_root() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "these tests need root (the daemon's socket is root-only): run them as root"
    );
}

impl Shimd {
    /// Starts a daemon on fresh directories.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a daemon with extra arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("xen-shim-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let mem_dir = PathBuf::from("/dev/shm").join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&mem_dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let socket = dir.join("control.sock");
        let mut s = Shimd {
            child: None,
            dir,
            mem_dir,
            socket,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("open the daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_xen-shimd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--mem-dir")
            .arg(&self.mem_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn xen-shimd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if Control::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("xen-shimd exited early with {st}; log:\n{}", self.log());
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "xen-shimd did not come up; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("daemon running")
    }

    /// Open fds of the daemon.
    pub fn fd_count(&self) -> usize {
        xen_shim_proto::sys::count_fds_of(&self.pid().to_string())
            .expect("read the daemon's /proc fd dir")
    }

    /// Kills the daemon hard (SIGKILL), as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM (it saves state, leaves domains).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signals our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A Dom0 control connection.
    pub fn control(&self) -> Control {
        Control::connect(&self.socket).expect("connect to xen-shimd")
    }

    /// Creates a PV domain with `mem` MiB.
    pub fn create(&self, ctl: &Control, name: &str, mem: u64) -> CreatedDomain {
        ctl.create_domain(&DomainConfig::pv(name, mem))
            .expect("create a domain")
    }

    /// Files of the memory directory.
    pub fn mem_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.mem_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Shimd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- xen-shimd log ({}):\n{}",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.mem_dir);
    }
}

/// A guest runtime process driven line by line.
pub struct Peer {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub domid: u16,
}

impl Peer {
    /// Starts `shim-test-peer` as domain `d`.
    pub fn spawn(socket: &Path, d: &CreatedDomain) -> Self {
        Self::try_spawn(socket, d.domid, &d.token).expect("the peer attaches")
    }

    /// Starts a peer; `Err(first line)` if it could not attach.
    pub fn try_spawn(socket: &Path, domid: u16, token: &str) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shim-test-peer"))
            .env("XEN_SHIM_SOCKET", socket)
            .env("XEN_SHIM_DOMID", domid.to_string())
            .env("XEN_SHIM_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shim-test-peer");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut p = Peer {
            child,
            stdin,
            stdout,
            domid,
        };
        let first = p.read_line();
        if first.starts_with("ok attached") {
            Ok(p)
        } else {
            Err(first)
        }
    }

    fn read_line(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_line(&mut s);
        s.trim_end().to_string()
    }

    /// Runs one command; returns the reply line.
    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("write to the peer");
        self.stdin.flush().expect("flush to the peer");
        self.read_line()
    }

    /// Runs a command that must succeed; returns what follows `ok`.
    pub fn ok(&mut self, c: &str) -> String {
        let r = self.cmd(c);
        assert!(r.starts_with("ok"), "peer command `{c}` failed: {r}");
        r.trim_start_matches("ok").trim().to_string()
    }

    /// Runs a command returning one number.
    pub fn num(&mut self, c: &str) -> u64 {
        let r = self.ok(c);
        r.split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("`{c}` gave {r}"))
    }

    /// The peer's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kills the peer (a guest crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the peer to exit (up to 5 s).
    pub fn wait_exit(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: signals our own child (it may be stopped by a pause).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Dom0 grant-mapper process (`shim-test-peer` in Dom0 mode) driven line
/// by line: `map DOMID REF rw`, `unmap INDEX`... (see `tests/peer/shim-test-peer.rs`).
pub struct Mapper {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Mapper {
    /// Starts a mapper on the daemon at `socket`.
    pub fn spawn(socket: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shim-test-peer"))
            .env("XEN_SHIM_SOCKET", socket)
            .env("XEN_SHIM_PEER_DOM0", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shim-test-peer as a Dom0 mapper");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut m = Mapper {
            child,
            stdin,
            stdout,
        };
        let first = m.read_line();
        assert!(first.starts_with("ok attached 0"), "mapper start: {first}");
        m
    }

    fn read_line(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_line(&mut s);
        s.trim_end().to_string()
    }

    /// Runs one command; returns the reply line.
    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("write to the mapper");
        self.stdin.flush().expect("flush to the mapper");
        self.read_line()
    }

    /// Runs a command that must succeed; returns what follows `ok`.
    pub fn ok(&mut self, c: &str) -> String {
        let r = self.cmd(c);
        assert!(r.starts_with("ok"), "mapper command `{c}` failed: {r}");
        r.trim_start_matches("ok").trim().to_string()
    }

    /// SIGKILLs the mapper and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// Hex encoding for peer commands.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex decoding of peer replies.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
