//! The private Dom0 of the `xl` end-to-end tests (pvdisk_e2e, backendd_sigkill,
//! ...) on [`xen_testhost::Dom0`]: `xen-shimd` and `xenstored` as threads of
//! the test process, the real `xl`, `backendd` and `xen-pvguest` binaries,
//! and helpers to run commands and read a guest's console log. Everything
//! is stopped and removed on drop.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use xen_testhost::Dom0;

/// Timeout of each set-up step.
pub const STEP: Duration = Duration::from_secs(10);

pub fn need(tool: &str, package: &str) {
    xen_testhost::need(tool, package).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Builds `xl` and `backendd` next to our `xen-pvguest` (once).
pub fn libexec() -> PathBuf {
    let pv = PathBuf::from(env!("CARGO_BIN_EXE_xen-pvguest"));
    let profile = pv.parent().expect("<target>/<profile>");
    xen_testhost::build_binaries(
        profile,
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &xen_testhost::DOM0_BINARIES,
    )
    .expect("build xl and backendd")
}

/// The private services and files of the test (a [`Dom0`], which it
/// dereferences to); stopped and removed on drop (also a `backendd` that
/// `xl` started, and the guest).
pub struct Host {
    pub dom0: Dom0,
    /// The guest `xl destroy`s on drop.
    pub guest: Option<String>,
    /// A backendd the test started itself (killed on drop).
    pub backendd: Option<std::process::Child>,
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
        let dom0 = Dom0::start(prefix, &libexec()).expect("start the private Dom0");
        Host {
            dom0,
            guest: None,
            backendd: None,
        }
    }

    pub fn xl(&self, args: &[&str]) -> Output {
        self.dom0.xl(args).expect("run xl")
    }

    /// A PV guest config `<name>.cfg` whose init is the shell script
    /// `script` (written as `<name>-init.sh`), with `extra_lines` of
    /// xl.cfg (disks, vifs, actions); its path.
    pub fn pv_config(
        &self,
        name: &str,
        memory_mib: u32,
        script: &str,
        extra_lines: &str,
    ) -> String {
        let init = self.dir.path().join(format!("{name}-init.sh"));
        std::fs::write(&init, script).expect("write the init script");
        run("chmod", &["0755", init.to_str().expect("utf-8 path")]);
        let cfg = self
            .dom0
            .write_config(
                name,
                &format!(
                    "name = \"{name}\"\ntype = 'pv'\nmemory = {memory_mib}\nvcpus = 1\n\
                     extra = '--frontend disk --timeout-secs 30 --init {}'\n{extra_lines}",
                    init.display()
                ),
            )
            .expect("write the config");
        cfg.to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(g) = self.guest.take() {
            let _ = self.dom0.xl(&["destroy", &g]);
        }
        if let Some(mut c) = self.backendd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The Dom0 stops the rest when it drops.
    }
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
