//! The PV disk end to end: `xl create` of a PV guest with a 64 MiB raw
//! image whose `extra=` runs a shell script as the guest's init; the guest
//! runtime connects blkfront to backendd's blkback through xenstore and
//! exposes the disk as `/dev/xvda` (FUSE) in its own mount namespace; the
//! script runs a verified `fio` job on `/dev/xvda`, `mkfs.ext4 /dev/xvda`, mounts it, writes 10 MiB, syncs,
//! unmounts and runs `fsck -n`. Then `xl destroy`, and Dom0 checks the
//! image itself: `fsck -n`, a read-only loop mount and the payload's
//! checksum against the one the guest computed.
//!
//! Private `xen-shimd` and `xenstored` (threads of this process, on
//! temporary sockets), the real `xl`, `backendd` and `xen-pvguest`
//! binaries. Needs root, `/dev/fuse`, loop devices and e2fsprogs
//! (`apt-get install e2fsprogs mount coreutils fio`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_shim::daemon::{DaemonConfig, DaemonHandle};
use xenstored::server::{Server, ServerConfig, StopHandle};

const STEP: Duration = Duration::from_secs(10);
const GUEST_RUN: Duration = Duration::from_secs(180);

fn need(tool: &str, package: &str) {
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
fn libexec() -> PathBuf {
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
struct Host {
    dir: tempfile::TempDir,
    shim: Option<DaemonHandle>,
    xs_stop: StopHandle,
    xs_thread: Option<JoinHandle<()>>,
    mem_dir: PathBuf,
    libexec: PathBuf,
    guest: Option<String>,
}

impl Host {
    fn start() -> Host {
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
            .prefix("pvdisk-e2e-")
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
        }
    }

    fn rundir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn console_logdir(&self) -> PathBuf {
        self.dir.path().join("console")
    }

    fn xl(&self, args: &[&str]) -> Output {
        Command::new(self.libexec.join("xl"))
            .args(args)
            .env(xen_shim::ENV_SOCKET, self.dir.path().join("shim.sock"))
            .env("XENSTORED_PATH", self.dir.path().join("xenstored.sock"))
            .env("XEN_SPLIT_RUNDIR", self.rundir())
            .env("XEN_CONSOLE_LOGDIR", self.console_logdir())
            .env("XL_LIBEXEC_DIR", &self.libexec)
            .output()
            .expect("run xl")
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

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    ok(&format!("{cmd} {args:?}"), &out)
}

/// The guest's log (`$XEN_CONSOLE_LOGDIR/guest-<name>.log`).
fn guest_log(host: &Host, name: &str) -> Option<String> {
    std::fs::read_to_string(host.console_logdir().join(format!("guest-{name}.log"))).ok()
}

#[test]
fn test_xl_create_pv_guest_mkfs_mount_write_fsck_on_xvda_then_dom0_checks_image() {
    // Arrange
    let mut host = Host::start();
    let name = format!("pvdisk{}", std::process::id());
    let img = host.dir.path().join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("create the disk image");
    let sum = host.dir.path().join("guest.sha256");
    let script = host.dir.path().join("init.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n\
             echo guest-init-start\n\
             ls -l /dev/xvda\n\
             fio --name=verify --filename=/dev/xvda --rw=randwrite --bs=4k --size=4M \
             --direct=1 --ioengine=psync --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=terse \
             > /dev/null\n\
             echo guest-fio-ok\n\
             mkfs.ext4 -q -F /dev/xvda\n\
             m=$(mktemp -d)\n\
             mount -o loop /dev/xvda \"$m\"\n\
             dd if=/dev/urandom of=\"$m/payload\" bs=1M count=10 status=none\n\
             (cd \"$m\" && sha256sum payload) > {sum}\n\
             sync\n\
             umount \"$m\"\n\
             rmdir \"$m\"\n\
             fsck.ext4 -n -f /dev/xvda\n\
             echo guest-init-ok\n",
            sum = sum.display()
        ),
    )
    .expect("write the init script");
    run("chmod", &["0755", script.to_str().expect("utf-8 path")]);
    let cfg = host.dir.path().join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = 'pv'\nmemory = 64\nvcpus = 1\n\
             extra = '--frontend disk --timeout-secs 30 --init {}'\n\
             disk = [ 'format=raw, vdev=xvda, access=rw, target=disk.img' ]\n",
            script.display()
        ),
    )
    .expect("write the config");

    // Act: the guest runs its init to the end.
    ok(
        "xl create",
        &host.xl(&["create", cfg.to_str().expect("utf-8 path")]),
    );
    host.guest = Some(name.clone());
    let deadline = Instant::now() + GUEST_RUN;
    let log = loop {
        let log = guest_log(&host, &name).unwrap_or_default();
        if log.contains("pvguest shutdown") || log.contains("frontend-failed") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not finish in {GUEST_RUN:?}; its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let destroyed = host.xl(&["destroy", &name]);
    host.guest = None;

    // Assert: the guest's view.
    assert!(log.contains("pvdisk connected"), "{log}");
    assert!(log.contains("path=/dev/xvda"), "{log}");
    assert!(log.contains("guest-fio-ok"), "{log}");
    assert!(log.contains("guest-init-ok"), "{log}");
    assert!(log.contains("reason=poweroff"), "{log}");
    eprintln!(
        "guest log:\n{log}\nxl destroy: {}",
        String::from_utf8_lossy(&destroyed.stderr)
    );
    // Dom0's view of the image.
    let i = img.to_str().expect("utf-8 path");
    run("fsck.ext4", &["-n", "-f", i]);
    let mnt = host.dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = mnt.to_str().expect("utf-8 path");
    run("mount", &["-o", "loop,ro", i, m]);
    let dom0_sum = Command::new("sha256sum")
        .arg("payload")
        .current_dir(&mnt)
        .output();
    let _ = Command::new("umount").arg(m).status();
    let dom0_sum = ok("sha256sum", &dom0_sum.expect("run sha256sum"));
    let guest_sum = std::fs::read_to_string(&sum).expect("the guest wrote its checksum");
    assert_eq!(dom0_sum, guest_sum);
    let size = std::fs::metadata(&img).expect("stat").len();
    assert_eq!(size, 64 << 20);
}
