//! The private Dom0 of the PVHVM end-to-end tests ([`xen_testhost::Dom0`]:
//! `xen-shimd` and `xenstored` as threads of the test process, the real
//! `xl`, `backendd` and `xen-vmm` binaries) and the PVHVM kernel built from
//! `frontend-drivers/pvhvm-kernel`. Everything is stopped and removed on
//! drop. Needs root and `/dev/kvm`: fails loudly without them.
#![allow(dead_code)]

pub mod hotplug;
pub mod net;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use xen_testhost::Dom0;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn profile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xen-vmm"))
        .parent()
        .expect("<target>/<profile>")
        .to_path_buf()
}

/// Builds `xl` and `backendd` next to our `xen-vmm` (once per test binary).
pub fn libexec() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        xen_testhost::build_binaries(&profile_dir(), &root(), &xen_testhost::DOM0_BINARIES)
            .expect("build xl and backendd")
    })
    .clone()
}

/// Builds the PVHVM kernel (`xen_testhost::build_pvhvm_kernel`) once per
/// test binary and returns the ELF's path.
pub fn kernel() -> PathBuf {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        let target = profile_dir().parent().expect("<target>").to_path_buf();
        xen_testhost::build_pvhvm_kernel(&target, &root()).unwrap_or_else(|e| panic!("{e:#}"))
    })
    .clone()
}

/// Fails loudly unless we are root and `/dev/kvm` can be opened.
pub fn require_root_and_kvm() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the PVHVM tests need root (shim daemon, /dev/kvm): run them as root"
    );
    assert!(
        xen_vmm::vm::kvm_available(Path::new("/dev/kvm")),
        "/dev/kvm is missing or cannot be opened: the PVHVM tests need KVM \
         (load kvm / kvm_pvm, and run as root)"
    );
}

/// The private services and files of a test (a [`Dom0`], which it
/// dereferences to) and the kernel its guests boot.
pub struct Host {
    pub dom0: Dom0,
    pub kernel: PathBuf,
}

impl Deref for Host {
    type Target = Dom0;
    fn deref(&self) -> &Dom0 {
        &self.dom0
    }
}

impl DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Dom0 {
        &mut self.dom0
    }
}

/// xl.cfg lines keeping a guest listed when it ends, so that tests can read
/// its final state.
pub const PRESERVE_ALL: &str =
    "on_poweroff = \"preserve\"\non_crash = \"preserve\"\non_watchdog = \"preserve\"\n";

impl Host {
    /// Starts the private services; `prefix` names the temporary directory.
    pub fn start(prefix: &str) -> Host {
        require_root_and_kvm();
        let libexec = libexec();
        let kernel = kernel();
        let dom0 = Dom0::start(prefix, &libexec).expect("start the private Dom0");
        Host { dom0, kernel }
    }

    /// Stops the shim daemon and starts a new one on the same state (a
    /// daemon restart: running domains must survive it).
    pub fn restart_shim(&mut self) {
        self.dom0.restart_shim().expect("restart xen-shimd");
    }

    pub fn xl(&self, args: &[&str]) -> Output {
        self.dom0.xl(args).expect("run xl")
    }

    /// Writes `<name>.cfg` for a PVHVM guest running `extra`, with `disks`
    /// (xl disk specifications), and returns its path.
    pub fn config(&self, name: &str, extra: &str, disks: &[String]) -> PathBuf {
        self.config_vcpus(name, extra, disks, 1)
    }

    /// [`Host::config`] with `vcpus` vCPUs. The domain is kept listed when
    /// it ends (`on_poweroff`, `on_crash`, `on_watchdog` = `preserve`) so
    /// that tests can read its final state; [`Host::config_actions`] sets
    /// other actions.
    pub fn config_vcpus(&self, name: &str, extra: &str, disks: &[String], vcpus: u32) -> PathBuf {
        self.config_actions(name, extra, disks, vcpus, PRESERVE_ALL)
    }

    /// A PVHVM config with `actions` (xl.cfg lines, e.g. `on_crash = ...`;
    /// empty: xl's defaults).
    pub fn config_actions(
        &self,
        name: &str,
        extra: &str,
        disks: &[String],
        vcpus: u32,
        actions: &str,
    ) -> PathBuf {
        self.config_full(name, extra, disks, vcpus, &[], actions)
    }

    /// [`Host::config_actions`] with `vifs` (xl vif specifications).
    pub fn config_full(
        &self,
        name: &str,
        extra: &str,
        disks: &[String],
        vcpus: u32,
        vifs: &[String],
        actions: &str,
    ) -> PathBuf {
        let vif = if vifs.is_empty() {
            String::new()
        } else {
            let v: Vec<String> = vifs.iter().map(|v| format!("'{v}'")).collect();
            format!("vif = [ {} ]\n", v.join(", "))
        };
        let disk = if disks.is_empty() {
            String::new()
        } else {
            let d: Vec<String> = disks.iter().map(|d| format!("'{d}'")).collect();
            format!("disk = [ {} ]\n", d.join(", "))
        };
        let text = format!(
            "name = \"{name}\"\ntype = \"pvh\"\nmemory = 64\nvcpus = {vcpus}\nkernel = \"{}\"\nextra = \"{extra}\"\n{disk}{vif}{actions}",
            self.kernel.display()
        );
        let p = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(&p, text).expect("write the config");
        p
    }

    /// A sparse raw image of `mib` MiB in the test directory.
    pub fn image(&self, name: &str, mib: u64) -> PathBuf {
        let p = self.dir.path().join(name);
        let f = std::fs::File::create(&p).expect("create image");
        f.set_len(mib << 20).expect("size image");
        p
    }

    /// `xl create CFG`; the guest is destroyed on drop.
    pub fn create(&mut self, name: &str, cfg: &Path) -> Output {
        self.dom0.track_guest(name);
        self.xl(&["create", cfg.to_str().expect("utf-8 path")])
    }

    /// The guest's console log.
    pub fn log(&self, name: &str) -> String {
        self.dom0.guest_log(name)
    }

    /// The VMM's own log (its stdout: what the guest wrote with
    /// `CONSOLEIO_write`, as Xen's hypervisor console has it, and the VMM's
    /// reports such as a crash), `<rundir>/pvguest-<name>.log`.
    pub fn vmm_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.rundir().join(format!("pvguest-{name}.log")))
            .unwrap_or_default()
    }

    /// Waits until the guest's console log contains `needle`; panics with
    /// the log after `timeout`.
    pub fn wait_log(&self, name: &str, needle: &str, timeout: Duration) -> String {
        self.wait_in(name, needle, timeout, Self::log)
    }

    /// Waits until the VMM's log contains `needle`; panics with the log
    /// after `timeout`.
    pub fn wait_vmm_log(&self, name: &str, needle: &str, timeout: Duration) -> String {
        self.wait_in(name, needle, timeout, Self::vmm_log)
    }

    fn wait_in(
        &self,
        name: &str,
        needle: &str,
        timeout: Duration,
        read: fn(&Self, &str) -> String,
    ) -> String {
        let t0 = Instant::now();
        loop {
            let l = read(self, name);
            if l.contains(needle) {
                return l;
            }
            assert!(
                t0.elapsed() < timeout,
                "guest {name} did not print {needle:?} within {timeout:?}; log:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `xl list` row of `name` (`None` if not listed).
    pub fn list_row(&self, name: &str) -> Option<String> {
        let out = ok("xl list", &self.xl(&["list"]));
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_owned)
    }

    /// Waits until `xl list` shows `name` with state flag `flag` (`s`, `c`...).
    pub fn wait_state(&self, name: &str, flag: char, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.list_row(name) {
                if r.split_whitespace()
                    .nth(4)
                    .is_some_and(|s| s.contains(flag))
                {
                    return r;
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "{name} not in state {flag} within {timeout:?}: {:?}; log:\n{}",
                self.list_row(name),
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `xenstore-read PATH` on the test's xenstored (Debian's
    /// xenstore-utils; `None`: no such node).
    pub fn xs_read(&self, path: &str) -> Option<String> {
        let out = Command::new("xenstore-read")
            .arg(path)
            .env("XENSTORED_PATH", self.dir.path().join("xenstored.sock"))
            .output()
            .expect("run xenstore-read (xenstore-utils)");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// `xenstore-write PATH VALUE` on the test's xenstored.
    pub fn xs_write(&self, path: &str, value: &str) {
        let out = Command::new("xenstore-write")
            .args([path, value])
            .env("XENSTORED_PATH", self.dir.path().join("xenstored.sock"))
            .output()
            .expect("run xenstore-write (xenstore-utils)");
        ok("xenstore-write", &out);
    }

    /// The log of the domain's monitor (`<rundir>/xl-<name>.log`).
    pub fn monitor_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.rundir().join(format!("xl-{name}.log"))).unwrap_or_default()
    }

    /// Waits until `xl list` no longer shows `name`.
    pub fn wait_gone(&self, name: &str, timeout: Duration) {
        let t0 = Instant::now();
        while let Some(r) = self.list_row(name) {
            assert!(
                t0.elapsed() < timeout,
                "{name} still listed after {timeout:?}: {r}; monitor log:\n{}",
                self.monitor_log(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Xen's own `verify-stream-v2 -f xl` accepts `file` (xen-utils-4.17,
/// tests/setup-host.sh; fails loudly without).
pub fn verify_stream(file: &std::path::Path) {
    let tool = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    assert!(
        std::path::Path::new(tool).exists(),
        "{tool} is missing: run tests/setup-host.sh (xen-utils-4.17)"
    );
    let out = std::process::Command::new("python3")
        .arg(tool)
        .args(["-f", "xl", "-i"])
        .arg(file)
        .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
        .output()
        .expect("run verify-stream-v2");
    assert!(
        out.status.success(),
        "verify-stream-v2 refused {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Disk self-test passes in a guest's log.
pub fn passes(log: &str) -> usize {
    log.matches("disk self-test: PASS").count()
}

/// Waits until guest `name`'s VMM log holds `n` self-test passes; panics
/// on a FAIL, a crash or after `timeout`.
pub fn wait_passes(h: &Host, name: &str, n: usize, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let log = h.vmm_log(name);
        assert!(
            !log.contains("disk self-test: FAIL") && !log.contains("crashed"),
            "{log}"
        );
        if passes(&log) >= n {
            return log;
        }
        assert!(
            t0.elapsed() < timeout,
            "fewer than {n} passes within {timeout:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
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

/// The self-test's data at byte `offset` of the disk (see the kernel's
/// `workload::pattern`).
pub fn pattern(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let v = (offset + 8 * i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = v.to_le_bytes();
        let n = c.len();
        c.copy_from_slice(&b[..n]);
    }
}
